#![no_main]
//! See `tollgate::fuzz::x_forwarded_for` (src/fuzz.rs) for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzz::x_forwarded_for(data));
