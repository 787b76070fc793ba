//! Parity with Hugging Face `transformers`: prefill logits and 16 greedy decode steps through the
//! paged cache match the committed references (scripts/fixtures/make_parity_fixtures.py) within
//! 1e-4, for block sizes 1, 7 and 16, alone, chunked, and as a varlen batch of 3 sequences.

mod support;

use glimpse_engine::batch::LogitsRequest;
use glimpse_engine::model::Model;
use glimpse_engine::runner::{OfflineRunner, RunnerSequence};
use support::*;

const TOLERANCE: f32 = 1e-4;
const BLOCK_SIZES: [usize; 3] = [1, 7, 16];

/// Decodes the reference greedy ids one by one, comparing every logits row.
fn check_decode(
    runner: &mut OfflineRunner,
    seqs: &mut [RunnerSequence],
    refs: &[PromptReference],
    label: &str,
) {
    for step in 0..refs[0].greedy_ids.len() {
        // Row 0 of the reference is the last prefill row, already checked by the caller.
        if step > 0 {
            let inputs: Vec<[u32; 1]> = refs.iter().map(|r| [r.greedy_ids[step - 1]]).collect();
            let mut work: Vec<_> = seqs
                .iter_mut()
                .zip(&inputs)
                .map(|(s, t)| (s, &t[..], LogitsRequest::Last))
                .collect();
            runner.step(&mut work).unwrap();
        }
        for (i, r) in refs.iter().enumerate() {
            let row = runner.output().last_row(i);
            let diff = max_abs_diff(row, &r.decode_logits[step]);
            assert!(
                diff < TOLERANCE,
                "{label}: prompt {i} decode step {step}: max diff {diff}"
            );
            assert_eq!(
                argmax(row),
                r.greedy_ids[step],
                "{label}: prompt {i} step {step}"
            );
        }
    }
}

#[test]
fn each_prompt_alone_matches_transformers_for_every_block_size() {
    for name in FIXTURES {
        let model = Model::load(&fixture_dir(name)).unwrap();
        let refs = load_references(&fixture_dir(name));
        for bs in BLOCK_SIZES {
            for (i, r) in refs.iter().enumerate() {
                let label = format!("{name} bs={bs} prompt {i}");
                let (mut runner, mut seq) = prefilled_runner(&model, bs, 128, &r.prompt);
                for (pos, want) in r.prefill_logits.iter().enumerate() {
                    let diff = max_abs_diff(runner.output().row(0, pos), want);
                    assert!(
                        diff < TOLERANCE,
                        "{label}: prefill position {pos}: max diff {diff}"
                    );
                }
                check_decode(
                    &mut runner,
                    std::slice::from_mut(&mut seq),
                    std::slice::from_ref(r),
                    &label,
                );
            }
        }
    }
}

#[test]
fn a_varlen_batch_of_three_matches_transformers() {
    for name in FIXTURES {
        let model = Model::load(&fixture_dir(name)).unwrap();
        let refs = load_references(&fixture_dir(name));
        for bs in BLOCK_SIZES {
            let label = format!("{name} bs={bs} batch");
            let mut runner = scrambled_runner(&model, bs, 256, None);
            let mut seqs: Vec<_> = refs.iter().map(|_| RunnerSequence::default()).collect();
            let mut work: Vec<_> = seqs
                .iter_mut()
                .zip(&refs)
                .map(|(s, r)| (s, &r.prompt[..], LogitsRequest::Last))
                .collect();
            runner.step(&mut work).unwrap();
            for (i, r) in refs.iter().enumerate() {
                let diff = max_abs_diff(
                    runner.output().last_row(i),
                    r.prefill_logits.last().unwrap(),
                );
                assert!(
                    diff < TOLERANCE,
                    "{label}: prompt {i} prefill: max diff {diff}"
                );
            }
            check_decode(&mut runner, &mut seqs, &refs, &label);
        }
    }
}

#[test]
fn chunked_prefill_matches_one_shot_prefill() {
    let name = "qwen3_qknorm";
    let model = Model::load(&fixture_dir(name)).unwrap();
    let refs = load_references(&fixture_dir(name));
    let r = refs.iter().max_by_key(|r| r.prompt.len()).unwrap();
    for bs in BLOCK_SIZES {
        let mut runner = scrambled_runner(&model, bs, 128, None);
        let mut seq = RunnerSequence::default();
        let mut start = 0;
        for chunk in [3, 9, 1, 100] {
            let end = (start + chunk).min(r.prompt.len());
            runner
                .step(&mut [(&mut seq, &r.prompt[start..end], LogitsRequest::All)])
                .unwrap();
            for (j, pos) in (start..end).enumerate() {
                let diff = max_abs_diff(runner.output().row(0, j), &r.prefill_logits[pos]);
                assert!(
                    diff < TOLERANCE,
                    "bs={bs} chunked prefill position {pos}: max diff {diff}"
                );
            }
            start = end;
        }
        assert_eq!(start, r.prompt.len());
    }
}
