#![no_main]
//! See `tollgate::fuzz::redis_slots` (src/fuzz.rs) for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzz::redis_slots(data));
