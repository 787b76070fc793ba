//! Parity on a second real, trained model: the long-context retrieval model (models/retrieval-byte-6l,
//! bf16 weights, byte-level vocabulary) on a 1024-token held-out needle prompt matches `transformers`
//! (scripts/fixtures/make_retrieval_reference.py) within 1e-4 at the last 16 prompt positions, and
//! greedy decoding through the paged cache gives the same 8 tokens.

mod support;

use glimpse_engine::batch::LogitsRequest;
use glimpse_engine::model::Model;
use safetensors::SafeTensors;
use support::*;

#[test]
fn retrieval_model_matches_transformers_on_a_long_needle_prompt() {
    let model = Model::load(&repo_root().join("models/retrieval-byte-6l")).unwrap();
    let bytes = std::fs::read(fixture_dir("retrieval_byte_6l_reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> Vec<u32> {
        let t = reference.tensor(name).unwrap();
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect()
    };
    let prompt = ints("prompt_ids");
    let greedy = ints("greedy_ids");
    let last_logits = reference.tensor("last_logits").unwrap();
    let vocab = last_logits.shape()[1];
    let rows: Vec<f32> = last_logits
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();

    let mut driver = PagedDriver::new(&model, 16, 128);
    let mut seq = driver.new_sequence();
    driver.step(&mut [(&mut seq, &prompt[..], LogitsRequest::All)]);
    let first = prompt.len() - 16;
    for (i, want) in rows.chunks(vocab).enumerate() {
        let diff = max_abs_diff(driver.output.row(0, first + i), want);
        assert!(diff < 1e-4, "position {}: max diff {diff}", first + i);
    }
    let mut generated = vec![argmax(driver.output.last_row(0))];
    while generated.len() < greedy.len() {
        let next = [*generated.last().unwrap()];
        driver.step(&mut [(&mut seq, &next[..], LogitsRequest::Last)]);
        generated.push(argmax(driver.output.last_row(0)));
    }
    assert_eq!(generated, greedy);
}
