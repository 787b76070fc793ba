//! docs/design.md §7 "prefix caching is invisible": documents shared by several questions give
//! every request the same tokens with prefix caching on as with it off — greedy and seeded
//! sampling, the full cache and every eviction policy (whose compaction then goes into fresh
//! blocks while the document's blocks stay cached), with a roomy pool and with one so small that
//! requests are preempted and cached blocks reclaimed — on the bundled stories260K, the
//! retrieval model and fixture models; on stories260K also with a bf16 KV pool, whose compaction
//! copies bf16 entries. The CPU kernels are batch-invariant, so a cached block
//! holds the bits a recomputation would write.

mod common;

use common::{repo, run, sampling};

use std::path::Path;
use std::sync::Arc;

use glimpse_engine::backend::{Device, create_backend};
use glimpse_engine::config::KvCacheDtype;
use glimpse_engine::eviction::{EvictionPolicy, Policy, Pool};
use glimpse_engine::lookahead::{LookaheadModule, RandomInit};
use glimpse_engine::model::Model;
use glimpse_engine::tokenizer::Tokenizer;
use glimpse_server::engine_loop::{
    BatchLimits, EngineCore, EvictionSettings, GenerationRequest, StopConditions,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BLOCK_SIZE: usize = 4;
const DOCUMENTS: usize = 2;
const QUESTIONS: usize = 3;
const DOCUMENT_TOKENS: usize = 70;
const MAX_TOKENS: usize = 12;

struct Setup {
    model: Model,
    tokenizer: Arc<Tokenizer>,
    module: Arc<LookaheadModule>,
    kv_dtype: KvCacheDtype,
}

impl Setup {
    /// `model_dir` with the tokenizer of `tokenizer_dir` (fixture models have none; outputs
    /// are compared as token ids), a random lookahead module and an f32 KV pool.
    fn new(model_dir: &Path, tokenizer_dir: &Path) -> Self {
        let model = Model::load(model_dir).unwrap();
        let identity = model.identity().unwrap();
        let module = LookaheadModule::random(&model.config, identity, RandomInit::default());
        Self {
            tokenizer: Arc::new(Tokenizer::from_dir(tokenizer_dir).unwrap()),
            module: Arc::new(module),
            model,
            kv_dtype: KvCacheDtype::F32,
        }
    }

    fn core(&self, num_blocks: usize, limits: BatchLimits) -> EngineCore {
        let module = Some(Arc::clone(&self.module));
        let backend = create_backend(
            Device::Cpu,
            &self.model,
            BLOCK_SIZE,
            num_blocks,
            self.kv_dtype,
            module,
        )
        .unwrap();
        let eviction = EvictionSettings {
            lookahead_tokens: Some(self.module.num_tokens),
            ..EvictionSettings::default()
        };
        EngineCore::new(
            &self.model,
            Arc::clone(&self.tokenizer),
            backend,
            limits,
            eviction,
        )
        .unwrap()
    }
}

fn policies() -> [EvictionPolicy; 5] {
    let policy = |policy| EvictionPolicy { policy, budget: 48 };
    [
        EvictionPolicy::default(),
        policy(Policy::streaming_llm()),
        policy(Policy::snapkv()),
        // β = 2 with a small window makes the per-layer budgets really differ.
        policy(Policy::PyramidKv {
            window: 8,
            kernel: 7,
            pool: Pool::Max,
            beta: 2,
        }),
        policy(Policy::lookahead()),
    ]
}

/// Each document followed by each of its questions, questions of the documents interleaved.
fn doc_qa(vocab: u32, policy: EvictionPolicy, sampled: bool) -> Vec<GenerationRequest> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let documents: Vec<Vec<u32>> = (0..DOCUMENTS)
        .map(|_| {
            (0..DOCUMENT_TOKENS)
                .map(|_| rng.random_range(3..vocab))
                .collect()
        })
        .collect();
    let mut requests = Vec::new();
    for question in 0..QUESTIONS {
        for document in &documents {
            let len = rng.random_range(1..14);
            let mut prompt_ids = document.clone();
            prompt_ids.extend((0..len).map(|_| rng.random_range(3..vocab)));
            let seed = 1000 + requests.len() as u64;
            requests.push(GenerationRequest {
                prompt_ids,
                sampling: sampling(sampled, seed),
                stop: StopConditions {
                    max_tokens: MAX_TOKENS + question,
                    ignore_eos: true,
                    ..StopConditions::default()
                },
                skip_special_tokens: true,
                kv_cache: Some(policy),
            });
        }
    }
    requests
}

fn check_prefix_caching_is_invisible(setup: &Setup, sampled: bool) {
    let vocab = setup.model.config.vocab_size as u32;
    let limits = |enable_prefix_caching| BatchLimits {
        enable_prefix_caching,
        ..BatchLimits::default()
    };
    let tight = |enable_prefix_caching| {
        let limits = BatchLimits {
            max_num_batched_tokens: 64,
            ..limits(enable_prefix_caching)
        };
        setup.core(40, limits)
    };
    let mut tight_preempted = 0;
    for policy in policies() {
        let requests = doc_qa(vocab, policy, sampled);
        // One request per step: a document's first request is computed, and its blocks
        // published, before the next one arrives.
        let off = run(&mut setup.core(512, limits(false)), &requests, 1);
        assert_eq!(off.hit_tokens, 0);
        let on = run(&mut setup.core(512, limits(true)), &requests, 1);
        assert!(on.hit_tokens > 0, "{policy:?}: no prefix hit");
        assert_eq!(on.outputs, off.outputs, "{policy:?}: roomy pool");
        // All at once, chunked, into a pool of about two requests: preemption, and reclaiming
        // cached blocks. A preempted request that evicts evicts again over prompt + generated
        // tokens when recomputed, so its output depends on where it was preempted, cache or
        // not: the tight runs are compared with each other.
        let tight_off = run(&mut tight(false), &requests, requests.len());
        let tight_on = run(&mut tight(true), &requests, requests.len());
        tight_preempted += tight_on.preemptions;
        assert_eq!(
            tight_on.outputs, tight_off.outputs,
            "{policy:?}: tight pool"
        );
        if policy.policy == Policy::Full {
            assert_eq!(tight_on.outputs, off.outputs, "{policy:?}: tight pool");
        }
    }
    assert!(tight_preempted > 0, "the tight pool was meant to preempt");
}

fn stories260k() -> Setup {
    let dir = repo().join("models/stories260K");
    Setup::new(&dir, &dir)
}

#[test]
fn greedy_outputs_are_the_same_with_prefix_caching_on_and_off_on_stories260k() {
    check_prefix_caching_is_invisible(&stories260k(), false);
}

#[test]
fn seeded_sampling_is_the_same_with_prefix_caching_on_and_off_on_stories260k() {
    check_prefix_caching_is_invisible(&stories260k(), true);
}

#[test]
fn greedy_outputs_are_the_same_with_prefix_caching_on_and_off_on_stories260k_with_bf16_kv() {
    let setup = Setup {
        kv_dtype: KvCacheDtype::Bf16,
        ..stories260k()
    };
    check_prefix_caching_is_invisible(&setup, false);
}

#[test]
fn greedy_outputs_are_the_same_with_prefix_caching_on_and_off_on_stories260k_with_fp8_kv() {
    let setup = Setup {
        kv_dtype: KvCacheDtype::Fp8,
        ..stories260k()
    };
    check_prefix_caching_is_invisible(&setup, false);
}

fn retrieval() -> Setup {
    let dir = repo().join("models/retrieval-byte-6l");
    Setup::new(&dir, &dir)
}

#[test]
fn greedy_outputs_are_the_same_with_prefix_caching_on_and_off_on_the_retrieval_model() {
    check_prefix_caching_is_invisible(&retrieval(), false);
}

#[test]
fn seeded_sampling_is_the_same_with_prefix_caching_on_and_off_on_the_retrieval_model() {
    check_prefix_caching_is_invisible(&retrieval(), true);
}

#[test]
fn outputs_are_the_same_with_prefix_caching_on_and_off_on_fixture_models() {
    for fixture in ["qwen3_qknorm", "llama_gqa"] {
        let dir = repo().join("engine/tests/fixtures").join(fixture);
        let setup = Setup::new(&dir, &repo().join("models/stories260K"));
        check_prefix_caching_is_invisible(&setup, false);
        check_prefix_caching_is_invisible(&setup, true);
    }
}
