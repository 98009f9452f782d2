#![no_main]
//! See `tollgate::fuzz::forwarded` (src/fuzz.rs) for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzz::forwarded(data));
