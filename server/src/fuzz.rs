//! Fuzz targets for what clients send the server: an OpenAI JSON body through the HTTP API's
//! conversion (completions and chat) and a `glimpse.v1.GenerateRequest` protobuf through the gRPC
//! conversion, each then through the one [`Validator`] — the same functions the handlers call,
//! with the bundled model's tokenizer and limits. Each takes arbitrary bytes and must return
//! normally: any input either becomes a [`ValidRequest`] or a [`RequestError`], never a panic
//! or an arithmetic overflow. A request that passes must keep the validator's promises (stated
//! on [`RequestTarget::check`]).
//!
//! `fuzz/` (cargo-fuzz, libFuzzer) drives these for coverage-guided runs; the server's
//! `tests/fuzz_corpus.rs` replays the committed corpora and seeded mutations of them under
//! `cargo test` (as the engine's parsers are, [`glimpse_engine::fuzz`]). Not part of the
//! server's API.

use std::path::Path;
use std::sync::Arc;

use glimpse_engine::eviction::EvictionPolicy;
use glimpse_engine::lookahead::LookaheadModule;
use glimpse_engine::model::Model;
use glimpse_engine::tokenizer::Tokenizer;
use glimpse_proto::v1;
use prost::Message;

use crate::error::RequestError;
use crate::http::{Endpoint, Plan};
use crate::prompt::PromptWork;
use crate::validation::{EvictionSettings, InputLimits, RequestLimits, ValidRequest, Validator};

/// The server's request path without a socket or an engine: the model's tokenizer (with a chat
/// template, so chats render), its limits and generation defaults, and a runtime for the
/// tokenizer pool. Built once, for many inputs.
pub struct RequestTarget {
    runtime: tokio::runtime::Runtime,
    prompts: PromptWork,
    validator: Validator,
}

/// The model name HTTP bodies may give in `model`.
const MODEL_NAME: &str = "stories260K";

impl RequestTarget {
    /// The target the fuzzers and the corpus replay use: the bundled stories260K below the
    /// repository root `root`, the OpenAI check's chat template and the bundled lookahead module.
    ///
    /// # Panics
    /// When those files do not load: a broken checkout, not an input.
    pub fn bundled(root: &Path) -> Self {
        let template =
            std::fs::read_to_string(root.join("scripts/openai-python/chat_template.jinja"))
                .expect("the chat template fixture reads");
        Self::new(
            &root.join("models/stories260K"),
            &template,
            &root.join("models/stories260K-lookahead/lookahead.safetensors"),
        )
        .expect("the bundled stories260K and its lookahead module load")
    }

    /// Loads the model in `model_dir` with `chat_template` as its template and the LookaheadKV
    /// module file `lookahead` (so that requests naming the lookahead policy get past it); fails
    /// as loading them fails.
    pub fn new(
        model_dir: &Path,
        chat_template: &str,
        lookahead: &Path,
    ) -> glimpse_engine::Result<Self> {
        let model = Model::load(model_dir)?;
        let mut tokenizer = Tokenizer::from_dir(model_dir)?;
        tokenizer.set_chat_template(chat_template)?;
        let lookahead_tokens = LookaheadModule::load(lookahead, &model)?.num_tokens;
        let max_model_len = model.config.max_model_len;
        let eviction = EvictionSettings {
            default_policy: EvictionPolicy::default(),
            default_budget: 256,
            lookahead_tokens: Some(lookahead_tokens),
        };
        let limits = RequestLimits {
            vocab_size: model.config.vocab_size,
            max_model_len,
            eviction,
            input: InputLimits::for_model_len(max_model_len),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        Ok(Self {
            runtime,
            prompts: PromptWork::new(Arc::new(tokenizer), limits, 1),
            validator: Validator::new(limits, model.generation.clone()),
        })
    }

    /// An HTTP request body, as `POST /v1/completions` and as `POST /v1/chat/completions` take it.
    pub fn http_body(&self, data: &[u8]) {
        for endpoint in [Endpoint::Completions, Endpoint::Chat] {
            let plan: Result<Plan, RequestError> =
                self.runtime
                    .block_on(crate::http::plan(endpoint, data, MODEL_NAME, &self.prompts));
            if let Ok(plan) = plan {
                assert!(plan.n >= 1, "a plan has at least one choice");
                self.check(self.validator.validate_raw(plan.raw));
            }
        }
    }

    /// A `GenerateRequest` message's bytes, as tonic hands them to the Generate handler.
    pub fn grpc_request(&self, data: &[u8]) {
        let Ok(mut raw) = v1::GenerateRequest::decode(data) else {
            return;
        };
        let request = self.runtime.block_on(crate::grpc::engine_request(
            &mut raw,
            &self.prompts,
            &self.validator,
        ));
        self.check(request);
    }

    /// A request the validator accepts keeps its promises: token ids inside the vocabulary, at
    /// least one token to generate, a prompt that leaves room in the model's length, and stop
    /// lists within their limits.
    fn check(&self, request: Result<ValidRequest, RequestError>) {
        let Ok(request) = request else {
            return;
        };
        let limits = self.validator.limits();
        let in_vocabulary = |ids: &[u32]| ids.iter().all(|&t| (t as usize) < limits.vocab_size);
        assert!(
            in_vocabulary(&request.prompt_ids),
            "prompt ids in the vocabulary"
        );
        let stop = request.stop();
        assert!(stop.max_tokens >= 1, "at least one token to generate");
        assert!(
            request.prompt_ids.len() < limits.max_model_len,
            "the prompt leaves room for a token"
        );
        assert!(stop.stop_strings.len() <= limits.input.max_stop_strings);
        assert!(stop.stop_token_ids.len() <= limits.input.max_stop_token_ids);
        assert!(
            stop.stop_strings
                .iter()
                .all(|s| s.len() <= limits.input.max_stop_string_bytes)
        );
    }
}
