#![no_main]
//! See `tollgate::fuzz::retry_after` (src/fuzz.rs) for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzz::retry_after(data));
