//! libFuzzer entry for `glimpse_server::fuzz::RequestTarget::http_body`, with the bundled stories260K.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use glimpse_server::fuzz::RequestTarget;

static TARGET: LazyLock<RequestTarget> =
    LazyLock::new(|| RequestTarget::bundled(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")));

libfuzzer_sys::fuzz_target!(|data: &[u8]| TARGET.http_body(data));
