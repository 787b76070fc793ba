//! libFuzzer entry for `glimpse_server::fuzz::RequestTarget::grpc_request`, with the bundled stories260K.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use glimpse_server::fuzz::RequestTarget;

static TARGET: LazyLock<RequestTarget> = LazyLock::new(|| {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let template = std::fs::read_to_string(root.join("scripts/openai-python/chat_template.jinja"))
        .expect("the chat template fixture reads");
    RequestTarget::new(
        &root.join("models/stories260K"),
        &template,
        &root.join("models/stories260K-lookahead/lookahead.safetensors"),
    )
    .expect("the bundled stories260K and its lookahead module load")
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| TARGET.grpc_request(data));
