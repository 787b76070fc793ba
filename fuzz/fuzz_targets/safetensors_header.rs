//! libFuzzer entry for `glimpse_engine::fuzz::safetensors_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glimpse_engine::fuzz::safetensors_header(data));
