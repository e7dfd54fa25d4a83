//! Fuzzes the record decoder: never panics; what it accepts encodes back (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbx_concurio::__fuzz::record(data);
});
