//! Helpers shared by the crate's unit tests.

/// Deterministic values in `[-0.5, 0.5)` from a 32-bit xorshift seeded by `seed`: test inputs
/// that are reproducible without a random-number crate.
pub fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

/// The bundled stories260K model's configuration.
pub fn stories260k_config() -> crate::config::ModelConfig {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stories260K");
    crate::config::ModelConfig::from_file(&dir.join("config.json"))
        .expect("the bundled config loads")
}
