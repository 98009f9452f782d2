#![no_main]
//! See `tollgate::fuzz::durations` (src/fuzz.rs) for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzz::durations(data));
