#![no_main]
//! See `tollgate::fuzz::server_said` (src/fuzz.rs) for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzz::server_said(data));
