//! libFuzzer entry for `glimpse_engine::fuzz::config_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glimpse_engine::fuzz::config_json(data));
