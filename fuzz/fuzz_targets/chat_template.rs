//! libFuzzer entry for `glimpse_engine::fuzz::chat_template`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| glimpse_engine::fuzz::chat_template(data));
