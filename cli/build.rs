//! Links the `concurio` binary as a position-dependent executable on Linux: a PIE's
//! thousands of relative relocations are applied at every start, dirtying pages, and a
//! cache hit is mostly process start-up (issue 11, point 6). Only the binary is affected.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
