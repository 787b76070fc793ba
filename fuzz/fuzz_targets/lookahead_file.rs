//! libFuzzer entry for `glimpse_engine::fuzz::LookaheadTarget`, against the bundled stories260K.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use glimpse_engine::fuzz::LookaheadTarget;

static TARGET: LazyLock<LookaheadTarget> = LazyLock::new(|| {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stories260K");
    LookaheadTarget::new(&model).expect("the bundled stories260K loads")
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| TARGET.run(data));
