#![no_main]
//! See `tollgate::fuzz::ratelimit_fields` (src/fuzz.rs) for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzz::ratelimit_fields(data));
