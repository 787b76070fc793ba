//! LookaheadKV's promise to the prompt (docs/design.md §3), checked on the private cache: the lookahead
//! rows change nothing but the selection, with f32, bf16 and Q8_0 weights and f32, bf16 and fp8
//! KV pools (the adapters stay f32 on every weights dtype); and prefix
//! caching's promise to shared blocks: an eviction into fresh blocks writes nothing else, in f32,
//! bf16 and fp8 pools. Also the refusals of impossible eviction requests, and the fp8 pool's
//! calibration.

use std::path::PathBuf;
use std::sync::Arc;

use super::CpuBackend;
use super::kv_cache::CpuKvCache;
use crate::backend::Backend;
use crate::batch::{ForwardBatch, ForwardOutput, LogitsRequest, SequenceInput};
use crate::config::{DtypeChoice, KvCacheDtype, Quantization};
use crate::error::EngineError;
use crate::eviction::{EvictionPolicy, Policy};
use crate::lookahead::{LookaheadModule, RandomInit};
use crate::model::Model;

const BLOCK_SIZE: usize = 16;
const NUM_BLOCKS: usize = 12;

fn model() -> Model {
    model_as(DtypeChoice::Auto, Quantization::None)
}

fn model_as(dtype: DtypeChoice, quantize: Quantization) -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/stories260K");
    Model::load_quantized(&dir, dtype, quantize).expect("bundled model")
}

fn module(model: &Model, seed: u64) -> Arc<LookaheadModule> {
    let identity = model.identity().expect("identity");
    let init = RandomInit {
        seed,
        ..RandomInit::default()
    };
    Arc::new(LookaheadModule::random(&model.config, identity, init))
}

fn prompt(len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| 3 + (i * 37 + 11) % 500).collect()
}

/// Blocks of the sequence, deliberately out of order.
const TABLE: [u32; 6] = [7, 2, 9, 0, 5, 11];

fn prefill(
    backend: &mut CpuBackend,
    tokens: &[u32],
    eviction: Option<EvictionPolicy>,
) -> crate::Result<ForwardOutput> {
    prefill_into(backend, tokens, eviction, None)
}

/// [`prefill`] whose eviction compacts into the blocks `compact_into` (see
/// [`SequenceInput::compact_into`]).
fn prefill_into(
    backend: &mut CpuBackend,
    tokens: &[u32],
    eviction: Option<EvictionPolicy>,
    compact_into: Option<&[u32]>,
) -> crate::Result<ForwardOutput> {
    let batch = ForwardBatch {
        sequences: vec![SequenceInput {
            token_ids: tokens,
            first_position: 0,
            first_cache_entry: 0,
            block_table: &TABLE,
            logits: LogitsRequest::Last,
            eviction,
            compacted: None,
            compact_into,
        }],
    };
    let mut out = ForwardOutput::default();
    backend.forward(&batch, &mut out)?;
    Ok(out)
}

fn lookahead(budget: usize) -> EvictionPolicy {
    EvictionPolicy {
        policy: Policy::lookahead(),
        budget,
    }
}

#[test]
fn lookahead_rows_change_nothing_but_the_selection() {
    for (dtype, quantize, kv_dtype) in [
        (DtypeChoice::F32, Quantization::None, KvCacheDtype::F32),
        (DtypeChoice::Bf16, Quantization::None, KvCacheDtype::F32),
        (DtypeChoice::F32, Quantization::None, KvCacheDtype::Bf16),
        (DtypeChoice::F32, Quantization::None, KvCacheDtype::Fp8),
        (DtypeChoice::F32, Quantization::Int8, KvCacheDtype::F32),
    ] {
        lookahead_rows_change_nothing_but_the_selection_in(model_as(dtype, quantize), kv_dtype);
    }
}

fn lookahead_rows_change_nothing_but_the_selection_in(model: Model, kv_dtype: KvCacheDtype) {
    let dtype = model.dtype;
    let tokens = prompt(80);
    let module = module(&model, 3);
    let backend = |module| CpuBackend::new(&model, BLOCK_SIZE, NUM_BLOCKS, kv_dtype, Some(module));
    let mut evicting = backend(Arc::clone(&module)).unwrap();
    let mut plain = backend(module).unwrap();

    let with = prefill(&mut evicting, &tokens, Some(lookahead(24))).unwrap();
    let without = prefill(&mut plain, &tokens, None).unwrap();
    assert_eq!(
        with.last_row(0),
        without.last_row(0),
        "{dtype}, {kv_dtype} KV: the first token's logits must not depend on the lookahead rows"
    );
    assert!(without.evictions.is_empty());
    let [report] = with.evictions.as_slice() else {
        panic!("one eviction report expected, got {:?}", with.evictions);
    };
    assert_eq!((report.prompt_len, report.kept_entries), (80, 24));

    // Compacting the plain run's cache with the same selection must give the evicting run's
    // pool bit for bit, every block included: no lookahead K/V anywhere, prompt K/V untouched.
    for (layer, selection) in report.selections.iter().enumerate() {
        plain.cache.compact(layer, &TABLE, &TABLE, &selection.kept);
    }
    let (keys, values) = evicting.cache.raw();
    let (want_keys, want_values) = plain.cache.raw();
    assert!(
        keys == want_keys && values == want_values,
        "{dtype}, {kv_dtype} KV: pools differ"
    );
}

#[test]
fn the_adapters_steer_the_selection() {
    let model = model();
    let tokens = prompt(80);
    let selections = |seed| {
        let mut backend = CpuBackend::new(
            &model,
            BLOCK_SIZE,
            NUM_BLOCKS,
            KvCacheDtype::F32,
            Some(module(&model, seed)),
        )
        .unwrap();
        let out = prefill(&mut backend, &tokens, Some(lookahead(24))).unwrap();
        out.evictions[0].selections.clone()
    };
    assert_ne!(
        selections(1),
        selections(2),
        "different lookahead modules should keep different entries"
    );
}

#[test]
fn impossible_evictions_are_refused_before_anything_runs() {
    let model = model();
    let tokens = prompt(80);
    let mut backend =
        CpuBackend::new(&model, BLOCK_SIZE, NUM_BLOCKS, KvCacheDtype::F32, None).unwrap();
    let no_module = prefill(&mut backend, &tokens, Some(lookahead(24))).unwrap_err();
    assert!(
        matches!(
            no_module,
            EngineError::InvalidParameter {
                field: "eviction.policy",
                ..
            }
        ),
        "{no_module}"
    );

    // SnapKV scores with the last 32 prompt queries: a last chunk of 8 tokens cannot.
    let snapkv = EvictionPolicy {
        policy: Policy::snapkv(),
        budget: 48,
    };
    prefill(&mut backend, &tokens[..72], None).unwrap();
    let batch = ForwardBatch {
        sequences: vec![SequenceInput {
            token_ids: &tokens[72..],
            first_position: 72,
            first_cache_entry: 72,
            block_table: &TABLE,
            logits: LogitsRequest::Last,
            eviction: Some(snapkv),
            compacted: None,
            compact_into: None,
        }],
    };
    let error = backend
        .forward(&batch, &mut ForwardOutput::default())
        .unwrap_err();
    assert!(error.to_string().contains("scoring window"), "{error}");

    let zero_budget = EvictionPolicy {
        policy: Policy::snapkv(),
        budget: 0,
    };
    let error = prefill(&mut backend, &tokens, Some(zero_budget)).unwrap_err();
    assert!(
        matches!(
            error,
            EngineError::InvalidParameter {
                field: "eviction.budget",
                ..
            }
        ),
        "{error}"
    );
}

/// Keys (head_dim values) and value of `entry` of KV head `head` in `layer`, read through
/// `table`.
fn entry_bits(
    cache: &CpuKvCache,
    layer: usize,
    table: &[u32],
    head: usize,
    entry: usize,
) -> Vec<f32> {
    let bs = cache.geometry().block_size;
    cache.entry(layer, table[entry / bs] as usize, head, entry % bs)
}

/// The bits of `block` in every layer, keys then values.
fn block_bits(cache: &CpuKvCache, block: u32) -> Vec<f32> {
    let (keys, values) = cache.raw();
    let stride = cache.block_stride();
    let layer_len = cache.geometry().num_blocks * stride;
    let mut bits = Vec::new();
    for pool in [keys, values] {
        for layer_start in (0..pool.len()).step_by(layer_len) {
            let start = layer_start + block as usize * stride;
            bits.extend_from_slice(&pool[start..start + stride]);
        }
    }
    bits
}

/// Prefix caching's promise to shared blocks (docs/design.md §7): an eviction told to compact
/// into fresh blocks writes those blocks only — every other block of the pool, the prompt's
/// included, holds the bits of a prefill that never evicted — and the fresh blocks hold exactly
/// the entries an in-place compaction keeps; in f32, bf16 and fp8 pools.
#[test]
fn compacting_into_fresh_blocks_writes_no_other_block() {
    for kv_dtype in [KvCacheDtype::F32, KvCacheDtype::Bf16, KvCacheDtype::Fp8] {
        compacting_into_fresh_blocks_writes_no_other_block_in(kv_dtype);
    }
}

fn compacting_into_fresh_blocks_writes_no_other_block_in(kv_dtype: KvCacheDtype) {
    const INTO: [u32; 4] = [1, 3, 10, 4];
    let model = model();
    let tokens = prompt(80);
    let policies = [
        Policy::streaming_llm(),
        Policy::snapkv(),
        Policy::PyramidKv {
            window: 8,
            kernel: 7,
            pool: crate::eviction::Pool::Max,
            beta: 2,
        },
        Policy::lookahead(),
    ];
    for policy in policies {
        let policy = EvictionPolicy { policy, budget: 40 };
        let backend = || {
            let module = Some(module(&model, 5));
            CpuBackend::new(&model, BLOCK_SIZE, NUM_BLOCKS, kv_dtype, module).unwrap()
        };
        let (mut in_place, mut fresh, mut untouched) = (backend(), backend(), backend());
        let evicted = prefill(&mut in_place, &tokens, Some(policy)).unwrap();
        let out = prefill_into(&mut fresh, &tokens, Some(policy), Some(&INTO)).unwrap();
        prefill(&mut untouched, &tokens, None).unwrap();

        assert_eq!(
            out.last_row(0),
            evicted.last_row(0),
            "{kv_dtype} KV, {policy:?}"
        );
        let (got, want) = (&out.evictions[0], &evicted.evictions[0]);
        assert_eq!(
            (&got.selections, &got.layer_kept),
            (&want.selections, &want.layer_kept),
            "{kv_dtype} KV, {policy:?}"
        );
        for block in (0..NUM_BLOCKS as u32).filter(|b| !INTO.contains(b)) {
            assert!(
                block_bits(&fresh.cache, block) == block_bits(&untouched.cache, block),
                "{kv_dtype} KV, {policy:?}: {block} was written"
            );
        }
        for (layer, selection) in out.evictions[0].selections.iter().enumerate() {
            for (head, kept) in selection.kept.iter().enumerate() {
                for entry in 0..kept.len() {
                    assert!(
                        entry_bits(&fresh.cache, layer, &INTO, head, entry)
                            == entry_bits(&in_place.cache, layer, &TABLE, head, entry),
                        "{kv_dtype} KV, {policy:?}: layer {layer} head {head} entry {entry}"
                    );
                }
            }
        }
    }
}

#[test]
fn blocks_to_compact_into_that_overlap_the_prompt_are_refused() {
    let model = model();
    let tokens = prompt(80);
    let mut backend =
        CpuBackend::new(&model, BLOCK_SIZE, NUM_BLOCKS, KvCacheDtype::F32, None).unwrap();
    let streaming = EvictionPolicy {
        policy: Policy::streaming_llm(),
        budget: 24,
    };
    let error =
        prefill_into(&mut backend, &tokens, Some(streaming), Some(&TABLE[..2])).unwrap_err();
    assert!(error.to_string().contains("compact into"), "{error}");
}

/// An fp8 pool's scales are calibrated alike by every backend (they depend on the model alone),
/// are powers of two, and differ between heads and between keys and values.
#[test]
fn fp8_scales_are_calibrated_alike_every_time() {
    let model = model();
    let scales = || {
        let backend = CpuBackend::new(&model, BLOCK_SIZE, NUM_BLOCKS, KvCacheDtype::Fp8, None);
        let backend = backend.unwrap();
        (0..model.config.num_layers)
            .flat_map(|l| {
                let head = backend.cache.head_scales(l);
                [head.keys.to_vec(), head.values.to_vec()]
            })
            .collect::<Vec<_>>()
    };
    let first = scales();
    assert_eq!(first, scales());
    let all: Vec<f32> = first.concat();
    for &scale in &all {
        assert!(
            scale > 0.0 && scale.to_bits() & 0x7F_FFFF == 0,
            "{scale} is a power of two"
        );
    }
    assert!(
        all.iter().any(|&s| s != all[0]),
        "{all:?}: calibrated per head"
    );
}

/// fp8 calibrates on text tokenized with the model's tokenizer; a model folder without one
/// (the parity fixtures) is refused, naming the flag.
#[test]
fn an_fp8_pool_needs_the_models_tokenizer_and_says_so() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_qknorm");
    let model = Model::load(&dir).expect("fixture model");
    let err = CpuBackend::new(&model, BLOCK_SIZE, NUM_BLOCKS, KvCacheDtype::Fp8, None)
        .err()
        .expect("no tokenizer.json");
    let message = err.to_string();
    assert!(
        message.contains("kv_cache_dtype") && message.contains("tokenizer"),
        "{message}"
    );
}
