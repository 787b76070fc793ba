//! KV eviction end to end through the CPU backend, on real weights (docs/design.md §3–§4).
//!
//! **Masked equivalence** ("eviction is exact about what it keeps"). For every policy, on models
//! with 1, 2 and 4 query heads per KV head, block sizes 1, 4 and 16 (blocks handed out in a
//! scrambled order) and one- or two-chunk prefill, a prompt is prefilled with the policy. The
//! driver then keeps only the first `ceil(kept_entries / block_size)` blocks of the sequence and
//! hands the rest to another sequence that overwrites them, and a few tokens are decoded greedily
//! on the compacted cache at positions `prompt_len + generated`. Every logits row must equal,
//! within [`TOLERANCE`], what a dense reference forward computes when the decode tokens attend,
//! per (layer, KV head), to exactly the prompt positions the engine reports as kept plus every
//! decode position, with true RoPE positions; and the same reference with a single kept entry
//! swapped for an evicted one must be told apart, so the tolerance is known to resolve one
//! misplaced entry. The reference ([`Reference`]) is plain loops over the model's public weights
//! with f64 accumulation: it shares no kernel, paging or eviction code with the engine. The first
//! token's logits, computed before anything is evicted, must equal the reference's full-cache
//! logits. Prompts within the budget, and the `full` policy, must not be evicted at all.
//!
//! Parity of the selections with kvpress is in `kvpress_parity.rs`.

mod support;

use std::sync::Arc;

use glimpse_engine::batch::LogitsRequest;
use glimpse_engine::config::ModelConfig;
use glimpse_engine::eviction::{EvictionPolicy, LayerSelection, Policy, Pool};
use glimpse_engine::loader::CheckpointTensor;
use glimpse_engine::lookahead::{LookaheadModule, RandomInit};
use glimpse_engine::model::{LinearWeights, Model, ModelWeights, RopeTables};
use glimpse_engine::runner::{Evicted, OfflineRunner, RunnerSequence};
use glimpse_scheduler::BlockId;
use support::*;

/// Largest absolute difference of logits allowed against the reference: docs/design.md §3's f32 parity
/// tolerance. The engine's f32 arithmetic alone (no eviction at all) differs from the f64
/// reference by up to about 2e-5 on these models (logits up to about 15), so 1e-5 would fail on
/// rounding; a single misplaced kept entry moves the logits by 2.5e-3 or more, which every
/// masked-equivalence run checks is still resolved (`Diffs::one_entry_off`).
const TOLERANCE: f32 = 1e-4;
const PROMPT_LEN: usize = 80;
const BUDGET: usize = 32;
const DECODE_STEPS: usize = 6;
const BLOCK_SIZES: [usize; 3] = [1, 4, 16];

// ---------------------------------------------------------------------------------------------
// Masked equivalence
// ---------------------------------------------------------------------------------------------

#[test]
fn stories260k_group_of_2_decodes_as_the_masked_full_cache() {
    masked_equivalence("stories260K", 2);
}

#[test]
fn llama3_rope_tied_group_of_4_decodes_as_the_masked_full_cache() {
    masked_equivalence("llama3_rope_tied", 4);
}

#[test]
fn qwen3_qknorm_group_of_2_decodes_as_the_masked_full_cache() {
    masked_equivalence("qwen3_qknorm", 2);
}

#[test]
fn llama_linear_rope_without_gqa_decodes_as_the_masked_full_cache() {
    masked_equivalence("llama_linear_rope", 1);
}

#[test]
fn qwen2_bias_group_of_2_decodes_as_the_masked_full_cache() {
    masked_equivalence("qwen2_bias", 2);
}

#[test]
fn prompts_within_the_budget_and_the_full_policy_are_not_evicted() {
    let model = load_model("llama3_rope_tied");
    let module = lookahead_module(&model);
    let within = pseudo_random_prompt(model.config.vocab_size, BUDGET, 7);
    let long = pseudo_random_prompt(model.config.vocab_size, PROMPT_LEN, 7);
    let full = [
        ("full", EvictionPolicy::default()),
        (
            "full budget 8",
            EvictionPolicy {
                policy: Policy::Full,
                budget: 8,
            },
        ),
    ];
    let cases = evicting_policies()
        .into_iter()
        .map(|(label, policy)| (label, policy, &within))
        .chain(full.map(|(label, policy)| (label, policy, &long)));
    for (label, policy, prompt) in cases {
        let (reference, full_logits) = Reference::after_prompt(&model, prompt);
        let mut worst: f32 = 0.0;
        for block_size in BLOCK_SIZES {
            let label = format!("{label} prompt {} bs={block_size}", prompt.len());
            let run = run_engine(&model, &module, prompt, policy, block_size, None);
            assert!(run.eviction.is_none(), "{label}: evicted");
            let diffs = compare_with_reference(&reference, &full_logits, &run);
            let diff = diffs.first.max(diffs.decode);
            assert!(diff < TOLERANCE, "{label}: max |Δ logits| {diff}");
            worst = worst.max(diff);
        }
        eprintln!(
            "{label}, prompt {}: not evicted, max |Δ logits| {worst:.1e}",
            prompt.len()
        );
    }
}

/// The policies of the masked-equivalence tests: every policy, budget 32 of an 80-token prompt.
fn evicting_policies() -> Vec<(&'static str, EvictionPolicy)> {
    let snapkv = |pool| Policy::SnapKv {
        window: 8,
        kernel: 7,
        pool,
    };
    [
        ("streaming_llm", Policy::streaming_llm()),
        ("snapkv max", snapkv(Pool::Max)),
        ("snapkv avg", snapkv(Pool::Avg)),
        (
            // β = 2 with a window of 8: per-layer budgets 48 down to 16 (asserted below).
            "pyramidkv β=2",
            Policy::PyramidKv {
                window: 8,
                kernel: 7,
                pool: Pool::Avg,
                beta: 2,
            },
        ),
        ("lookahead", Policy::lookahead()),
        (
            "lookahead window 8",
            Policy::Lookahead {
                num_tokens: 32,
                window: 8,
            },
        ),
    ]
    .into_iter()
    .map(|(label, policy)| {
        let policy = EvictionPolicy {
            policy,
            budget: BUDGET,
        };
        policy.validate().expect("test policy is valid");
        (label, policy)
    })
    .collect()
}

/// Every evicting policy on `name` (whose GQA group must be `group`), for every block size; the
/// selection must not depend on the block size, and decoding must match the masked reference.
fn masked_equivalence(name: &str, group: usize) {
    let model = load_model(name);
    let c = &model.config;
    assert_eq!(c.group_size(), group, "{name}: GQA group");
    let module = lookahead_module(&model);
    let prompt = pseudo_random_prompt(c.vocab_size, PROMPT_LEN, 1);
    let (reference, full_logits) = Reference::after_prompt(&model, &prompt);
    for (label, policy) in evicting_policies() {
        let budgets = policy
            .for_prompt(PROMPT_LEN)
            .expect("the prompt exceeds the budget")
            .layer_budgets(c.num_layers);
        if let Policy::PyramidKv { .. } = policy.policy {
            assert!(
                budgets.windows(2).all(|pair| pair[0] > pair[1]),
                "{name}: PyramidKV budgets {budgets:?} must decrease with depth"
            );
        }
        let mut worst: Option<Diffs> = None;
        let mut first_selection: Option<Vec<LayerSelection>> = None;
        for block_size in BLOCK_SIZES {
            // Block size 4 also splits the prefill: the eviction rides on the second chunk, which
            // starts in the middle of a block.
            let first_chunk = (block_size == 4).then_some(45);
            let label = format!("{name} {label} bs={block_size} first chunk {first_chunk:?}");
            let run = run_engine(&model, &module, &prompt, policy, block_size, first_chunk);
            let evicted = run
                .eviction
                .as_ref()
                .expect("the prompt exceeds the budget");
            let report = &evicted.report;
            assert_eq!(report.layer_kept, budgets, "{label}");
            assert_eq!(Some(&report.kept_entries), budgets.iter().max(), "{label}");
            check_selection_shape(&report.selections, &budgets, c, &label);
            match &first_selection {
                None => first_selection = Some(report.selections.clone()),
                Some(first) => assert_eq!(&report.selections, first, "{label}: selection"),
            }
            let diffs = compare_with_reference(&reference, &full_logits, &run);
            assert!(
                diffs.first < TOLERANCE,
                "{label}: first token's logits differ from the full cache's by {}",
                diffs.first
            );
            assert!(
                diffs.decode < TOLERANCE,
                "{label}: decode logits differ from the masked reference by {}",
                diffs.decode
            );
            assert!(
                diffs.one_entry_off > 10.0 * TOLERANCE,
                "{label}: one misplaced entry moves the logits by only {}",
                diffs.one_entry_off
            );
            worst = Some(worst.map_or(diffs, |w| w.worst(diffs)));
        }
        let worst = worst.unwrap();
        eprintln!(
            "{name} {label}: max |Δ logits| first token {:.1e}, decode {:.1e}; one entry off {:.1e}",
            worst.first, worst.decode, worst.one_entry_off
        );
    }
}

/// Each layer keeps, per KV head, exactly its budget of distinct prompt positions, ascending.
fn check_selection_shape(
    selections: &[LayerSelection],
    budgets: &[usize],
    c: &ModelConfig,
    label: &str,
) {
    assert_eq!(selections.len(), c.num_layers, "{label}");
    for (layer, (selection, &budget)) in selections.iter().zip(budgets).enumerate() {
        assert_eq!(
            selection.kept.len(),
            c.num_kv_heads,
            "{label} layer {layer}"
        );
        for kept in &selection.kept {
            assert_eq!(kept.len(), budget, "{label} layer {layer}");
            assert!(kept.windows(2).all(|pair| pair[0] < pair[1]), "{label}");
            assert!(kept.iter().all(|&p| p < PROMPT_LEN), "{label}");
        }
    }
}

/// What the engine produced for one prompt.
struct EngineRun {
    /// The logits of the last prompt row: the first token is sampled from them.
    first_logits: Vec<f32>,
    eviction: Option<Evicted>,
    prompt_len: usize,
    /// Decode steps: the token fed and the logits row it produced.
    decoded: Vec<(u32, Vec<f32>)>,
}

/// Prefills `prompt` with `policy` (in two chunks when `first_chunk` is given), then decodes
/// `DECODE_STEPS` greedy tokens. After an eviction, the sequence keeps only the blocks that hold
/// its `kept_entries`; another sequence takes the freed blocks and overwrites them before the
/// decode, so reading them would show.
fn run_engine(
    model: &Model,
    module: &Arc<LookaheadModule>,
    prompt: &[u32],
    policy: EvictionPolicy,
    block_size: usize,
    first_chunk: Option<usize>,
) -> EngineRun {
    let num_blocks = 2 * (prompt.len() + DECODE_STEPS).div_ceil(block_size) + 2;
    let mut runner = scrambled_runner(model, block_size, num_blocks, Some(Arc::clone(module)));
    let mut seq = RunnerSequence::default();
    let split = first_chunk.unwrap_or(0);
    if split > 0 {
        runner
            .step(&mut [(&mut seq, &prompt[..split], LogitsRequest::None)])
            .unwrap();
    }
    let eviction = runner
        .prefill_evicting(&mut seq, &prompt[split..], LogitsRequest::Last, policy)
        .unwrap();
    let first_logits = runner.output().last_row(0).to_vec();
    let held = eviction
        .as_ref()
        .map_or(prompt.len(), |e| e.report.kept_entries);
    // The sequence holds exactly the blocks of its entries, ceil(held / block_size), and decoding
    // only appends blocks after them.
    let geometry = *runner.geometry();
    assert_eq!(seq.num_cached(), held);
    assert_eq!(geometry.blocks_for(held), held.div_ceil(block_size));
    assert_eq!(seq.block_table().len(), geometry.blocks_for(held));
    let kept_blocks = seq.block_table().to_vec();
    if let Some(evicted) = &eviction {
        assert_eq!(
            evicted.released_blocks.len(),
            prompt.len().div_ceil(block_size) - held.div_ceil(block_size)
        );
        assert!(
            !evicted.released_blocks.is_empty(),
            "eviction freed no block"
        );
        overwrite_blocks(
            &mut runner,
            &evicted.released_blocks,
            model.config.vocab_size,
        );
    }
    let mut decoded = Vec::with_capacity(DECODE_STEPS);
    let mut token = argmax(&first_logits);
    for _ in 0..DECODE_STEPS {
        runner
            .step(&mut [(&mut seq, &[token], LogitsRequest::Last)])
            .unwrap();
        let logits = runner.output().last_row(0).to_vec();
        decoded.push((token, logits));
        token = argmax(&decoded.last().unwrap().1);
    }
    // Positions kept counting from the prompt; entries continued after the compacted prefix.
    assert_eq!(seq.tokens.len(), prompt.len() + DECODE_STEPS);
    assert_eq!(seq.num_cached(), held + DECODE_STEPS);
    assert!(seq.block_table().starts_with(&kept_blocks));
    assert_eq!(
        seq.block_table().len(),
        geometry.blocks_for(held + DECODE_STEPS)
    );
    EngineRun {
        first_logits,
        eviction,
        prompt_len: prompt.len(),
        decoded,
    }
}

/// Has a new sequence take exactly `blocks` (next in line in the pool) and fill them with K/V of
/// other tokens.
fn overwrite_blocks(runner: &mut OfflineRunner, blocks: &[BlockId], vocab_size: usize) {
    let mut other = RunnerSequence::default();
    let block_size = runner.geometry().block_size;
    let tokens = pseudo_random_prompt(vocab_size, blocks.len() * block_size, 99);
    runner
        .step(&mut [(&mut other, &tokens, LogitsRequest::None)])
        .unwrap();
    let (mut got, mut want) = (other.block_table().to_vec(), blocks.to_vec());
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "the other sequence took the freed blocks");
}

/// Largest absolute logits differences between a run and the reference.
#[derive(Debug, Clone, Copy)]
struct Diffs {
    /// The first token's logits against the full-cache reference.
    first: f32,
    /// Every decode step's logits against the reference masked to what the run kept.
    decode: f32,
    /// The decode logits against a reference masked with one kept entry swapped for an evicted
    /// one: how far a single misplaced entry moves the logits, i.e. what the test can resolve
    /// (infinite without eviction).
    one_entry_off: f32,
}

impl Diffs {
    /// The worst of two runs: the largest mismatches, the smallest resolution.
    fn worst(self, other: Diffs) -> Diffs {
        Diffs {
            first: self.first.max(other.first),
            decode: self.decode.max(other.decode),
            one_entry_off: self.one_entry_off.min(other.one_entry_off),
        }
    }
}

/// Compares a run with `reference` (which holds the whole prompt and gave `full_logits` for its
/// last row).
fn compare_with_reference(
    reference: &Reference<'_>,
    full_logits: &[f32],
    run: &EngineRun,
) -> Diffs {
    let first = max_abs_diff(&run.first_logits, full_logits);
    let Some(evicted) = &run.eviction else {
        return Diffs {
            first,
            decode: decode_diff(reference, run, &Mask::Causal),
            one_entry_off: f32::INFINITY,
        };
    };
    let kept = &evicted.report.selections;
    let one_off = swap_one_entry(kept, run.prompt_len);
    let masked = |selections| Mask::Kept {
        prompt_len: run.prompt_len,
        selections,
    };
    Diffs {
        first,
        decode: decode_diff(reference, run, &masked(kept)),
        one_entry_off: decode_diff(reference, run, &masked(&one_off)),
    }
}

/// Feeds the run's decode tokens to a copy of `reference` under `mask`; returns the largest
/// difference of the logits.
fn decode_diff(reference: &Reference<'_>, run: &EngineRun, mask: &Mask<'_>) -> f32 {
    let mut reference = reference.clone();
    run.decoded
        .iter()
        .map(|(token, logits)| max_abs_diff(logits, &reference.step(*token, mask)))
        .fold(0.0, f32::max)
}

/// `selections` with the first kept entry of the last layer's first KV head replaced by the
/// first evicted one.
fn swap_one_entry(selections: &[LayerSelection], prompt_len: usize) -> Vec<LayerSelection> {
    let mut selections = selections.to_vec();
    let kept = &mut selections.last_mut().unwrap().kept[0];
    let evicted = (0..prompt_len).find(|p| !kept.contains(p)).unwrap();
    kept.remove(0);
    kept.push(evicted);
    kept.sort_unstable();
    selections
}

// ---------------------------------------------------------------------------------------------
// The dense reference
// ---------------------------------------------------------------------------------------------

/// Which cached positions a token attends to, besides its own.
enum Mask<'a> {
    /// Every earlier position.
    Causal,
    /// Prompt positions only where `selections[layer].kept[kv_head]` lists them; every position
    /// from `prompt_len` on.
    Kept {
        prompt_len: usize,
        selections: &'a [LayerSelection],
    },
}

impl Mask<'_> {
    fn attends(&self, layer: usize, kv_head: usize, position: usize) -> bool {
        match self {
            Mask::Causal => true,
            Mask::Kept {
                prompt_len,
                selections,
            } => {
                position >= *prompt_len
                    || selections[layer].kept[kv_head]
                        .binary_search(&position)
                        .is_ok()
            }
        }
    }
}

/// The oracle: a dense forward pass, one token at a time, over the model's checkpoint tensors
/// (widened to f32, unfused) with plain loops, accumulating in f64. It keeps every position's keys and values (RoPE'd at their
/// true positions) and never forgets any; a [`Mask`] says which ones a token attends to.
#[derive(Clone)]
struct Reference<'m> {
    config: &'m ModelConfig,
    weights: &'m ModelWeights,
    rope: Arc<RopeTables>,
    /// `[layer][position]`: keys and values, `[num_kv_heads · head_dim]` each.
    keys: Vec<Vec<Vec<f32>>>,
    values: Vec<Vec<Vec<f32>>>,
}

impl<'m> Reference<'m> {
    /// The reference after running `prompt` with full causal attention, and the logits of its last
    /// row.
    fn after_prompt(model: &'m Model, prompt: &[u32]) -> (Self, Vec<f32>) {
        let c = &model.config;
        let mut reference = Reference {
            config: c,
            weights: &model.weights,
            rope: Arc::new(
                RopeTables::new(&c.rope, c.head_dim, c.max_model_len).expect("RoPE tables fit"),
            ),
            keys: vec![Vec::new(); c.num_layers],
            values: vec![Vec::new(); c.num_layers],
        };
        let mut logits = Vec::new();
        for &token in prompt {
            logits = reference.step(token, &Mask::Causal);
        }
        (reference, logits)
    }

    /// Runs `token` at the next position and returns its logits.
    fn step(&mut self, token: u32, mask: &Mask<'_>) -> Vec<f32> {
        let (c, w) = (self.config, self.weights);
        let (d, eps) = (c.head_dim, c.rms_norm_eps);
        let position = self.keys[0].len();
        let mut x = row(&w.embed_tokens, token as usize);
        for (l, lw) in w.layers.iter().enumerate() {
            let normed = rms_norm(&x, &lw.input_layernorm.to_f32(), eps);
            let (mut q, mut k) = (matvec(&lw.q_proj, &normed), matvec(&lw.k_proj, &normed));
            let v = matvec(&lw.v_proj, &normed);
            for (heads, norm) in [(&mut q, &lw.q_norm), (&mut k, &lw.k_norm)] {
                let norm = norm.as_ref().map(CheckpointTensor::to_f32);
                for head in heads.chunks_mut(d) {
                    if let Some(norm) = &norm {
                        let normed = rms_norm(head, norm, eps);
                        head.copy_from_slice(&normed);
                    }
                    self.rope.rotate(head, position);
                }
            }
            self.keys[l].push(k);
            self.values[l].push(v);
            let group = c.group_size();
            let attention: Vec<f32> = q
                .chunks(d)
                .enumerate()
                .flat_map(|(head, qh)| {
                    let kv_head = head / group;
                    let visible =
                        (0..=position).filter(|&p| p == position || mask.attends(l, kv_head, p));
                    self.attend(l, kv_head, qh, visible)
                })
                .collect();
            add(&mut x, &matvec(&lw.o_proj, &attention));
            let normed = rms_norm(&x, &lw.post_attention_layernorm.to_f32(), eps);
            let (gate, up) = (matvec(&lw.gate_proj, &normed), matvec(&lw.up_proj, &normed));
            let activated: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32)
                .collect();
            add(&mut x, &matvec(&lw.down_proj, &activated));
        }
        let normed = rms_norm(&x, &w.norm.to_f32(), eps);
        match &w.lm_head {
            Some(lm_head) => matvec(lm_head, &normed),
            None => (0..w.embed_tokens.shape()[0])
                .map(|token| dot(&row(&w.embed_tokens, token), &normed) as f32)
                .collect(),
        }
    }

    /// Softmax attention of one query head over the cached `positions` of `kv_head` in `layer`.
    fn attend(
        &self,
        layer: usize,
        kv_head: usize,
        q: &[f32],
        positions: impl Iterator<Item = usize>,
    ) -> Vec<f32> {
        let d = q.len();
        let head = kv_head * d..(kv_head + 1) * d;
        let positions: Vec<usize> = positions.collect();
        let scale = 1.0 / (d as f64).sqrt();
        let scores: Vec<f64> = positions
            .iter()
            .map(|&p| dot(q, &self.keys[layer][p][head.clone()]) * scale)
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = weights.iter().sum();
        let mut out = vec![0.0f64; d];
        for (&p, weight) in positions.iter().zip(&weights) {
            for (o, &v) in out.iter_mut().zip(&self.values[layer][p][head.clone()]) {
                *o += weight / sum * v as f64;
            }
        }
        out.into_iter().map(|o| o as f32).collect()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Row `j` of a checkpoint matrix, widened to f32.
fn row(matrix: &CheckpointTensor, j: usize) -> Vec<f32> {
    let mut out = Vec::new();
    matrix.rows_to_f32(j..j + 1, &mut out);
    out
}

/// `W·x + b` for an `[out, in]` weight.
fn matvec(linear: &LinearWeights, x: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), linear.in_features());
    let bias = linear.bias.as_ref().map(CheckpointTensor::to_f32);
    (0..linear.out_features())
        .map(|o| {
            let bias = bias.as_ref().map_or(0.0, |b| b[o] as f64);
            (dot(&row(&linear.weight, o), x) + bias) as f32
        })
        .collect()
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mean_square = dot(x, x) / x.len() as f64;
    let scale = 1.0 / (mean_square + eps as f64).sqrt();
    x.iter()
        .zip(weight)
        .map(|(&v, &w)| (w as f64 * v as f64 * scale) as f32)
        .collect()
}

fn add(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, &v)| *a += v);
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// A fixture model, or the bundled stories260K.
fn load_model(name: &str) -> Model {
    let dir = match name {
        "stories260K" => repo_root().join("models/stories260K"),
        _ => fixture_dir(name),
    };
    Model::load(&dir).unwrap()
}

/// A seeded random LookaheadKV module for `model` (non-zero LoRA `B`, so the adapters act).
fn lookahead_module(model: &Model) -> Arc<LookaheadModule> {
    let module = LookaheadModule::random(
        &model.config,
        model.identity().unwrap(),
        RandomInit::default(),
    );
    assert!(module.layers[0].q.b.iter().any(|&b| b != 0.0));
    Arc::new(module)
}
