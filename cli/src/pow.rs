//! The C library's `pow`, defined here so that `concurio` does not load `libm.so`.
//!
//! `pow` is the only symbol the binary takes from `libm.so.6` (indicatif's progress-rate
//! estimate calls it). Loading that library costs every process its mapping, its
//! relocations and its IFUNC resolvers, about 60 µs of a ~1 ms `concurio run` cache hit
//! (issue 11, point 6; measured side by side with and without it). With `pow` defined in
//! the executable, the linker (which links with `--as-needed`) drops `libm.so`. The
//! definition is the `libm` crate's, the Rust port of musl's, maintained by the Rust
//! project; an executable's symbol also wins over a shared library's, so if `libm.so`
//! comes back for another symbol, every `pow` call still gets this one.

/// `double pow(double x, double y)`.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    use super::pow;

    #[test]
    fn pow_gives_the_c_library_results() {
        assert_eq!(pow(2.0, 10.0), 1024.0);
        assert_eq!(pow(10.0, -2.0), 0.01);
        assert_eq!(pow(9.0, 0.5), 3.0);
        assert_eq!(pow(0.0, 0.0), 1.0);
        assert_eq!(pow(f64::NAN, 0.0), 1.0);
        assert_eq!(pow(2.0, f64::INFINITY), f64::INFINITY);
        assert_eq!(pow(0.5, f64::INFINITY), 0.0);
        assert!(pow(-8.0, 1.0 / 3.0).is_nan());
        assert_eq!(pow(-2.0, 3.0), -8.0);
        // The bits glibc gives (Python: 1.5 ** 2.5).
        assert_eq!(
            pow(1.5, 2.5).to_bits(),
            2.755_675_960_631_075_2_f64.to_bits()
        );
    }
}
