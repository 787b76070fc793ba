//! The one request validator, for every wire format (TGI's `router/src/validation.rs`). A request
//! as a wire carries it ([`RawRequest`]: knobs optional) or as an in-process caller builds it
//! ([`GenerationRequest`]: everything set) becomes a [`ValidRequest`] here and nowhere else:
//! sampling resolved against the model's `generation_config.json`, the KV policy against the
//! server's default and the loaded lookahead module, every limit checked. Refusals are
//! [`RequestError`]s naming the field, the limit and the value. The engine loop takes only
//! [`ValidRequest`]s; it must not know any wire format, and this module must not know the loop.

use glimpse_engine::config::GenerationConfig;
use glimpse_engine::eviction::{EvictionPolicy, LookaheadMismatch, PolicyKind, PolicyKnobs};
use glimpse_engine::sampling::SamplingParams;

use crate::error::RequestError;

/// When a sequence stops, besides running out of `max_tokens`.
#[derive(Debug, Clone, PartialEq)]
pub struct StopConditions {
    /// Generated tokens at most (≥ 1).
    pub max_tokens: usize,
    /// EOS, stop tokens and stop strings are ignored before this many tokens.
    pub min_tokens: usize,
    /// Text that ends generation; it is cut from the output.
    pub stop_strings: Vec<String>,
    /// Extra token ids that end generation (kept in the output, like EOS).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating through the model's EOS tokens.
    pub ignore_eos: bool,
}

impl Default for StopConditions {
    fn default() -> Self {
        Self {
            max_tokens: 16,
            min_tokens: 0,
            stop_strings: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// A generation request as an in-process caller builds it: a tokenized prompt and how to sample
/// and stop, not yet validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopConditions,
    pub skip_special_tokens: bool,
    /// KV eviction for this request; `None` takes the engine's default policy.
    pub kv_cache: Option<EvictionPolicy>,
}

/// A request the [`Validator`] accepted: every limit checked and the KV policy resolved. Only the
/// validator makes one, so the engine loop trusts it.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub(crate) prompt_ids: Vec<u32>,
    pub(crate) sampling: SamplingParams,
    pub(crate) stop: StopConditions,
    pub(crate) skip_special_tokens: bool,
    /// The request's policy, or the engine's default; checked against the loaded module.
    pub(crate) policy: EvictionPolicy,
}

impl ValidRequest {
    /// When the request stops.
    pub fn stop(&self) -> &StopConditions {
        &self.stop
    }
}

/// A generation request as a wire format carries it: a tokenized prompt, every setting optional.
/// Unset settings take the model's or the server's defaults in [`Validator::validate_raw`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawRequest {
    pub prompt_ids: Vec<u32>,
    pub sampling: RawSampling,
    /// `None`: as many tokens as the model's length leaves after the prompt.
    pub max_tokens: Option<usize>,
    pub min_tokens: usize,
    pub stop_strings: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// `None`: skipped.
    pub skip_special_tokens: Option<bool>,
    /// `None`: the engine's default policy.
    pub kv_cache: Option<RawPolicy>,
}

/// Sampling settings as a wire carries them; unset ones take `generation_config.json`'s values,
/// then [`SamplingParams::default`]'s.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RawSampling {
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    /// Log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
}

/// The default-sampling rule [`Validator::resolve_sampling`] applies, for `--help` of the commands
/// that take requests.
pub const SAMPLING_DEFAULTS_HELP: &str = "Default sampling (the same for `glimpse generate`, gRPC \
     and HTTP; vLLM's rule): a setting the request leaves unset takes the model's \
     generation_config.json value (temperature, top_k, top_p), else temperature 1, top_k 0, top_p \
     1, min_p 0, no penalties and a random seed.";

/// Where a resolved sampling setting came from, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingSource {
    Request,
    GenerationConfig,
    BuiltIn,
}

impl std::fmt::Display for SettingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Request => "request",
            Self::GenerationConfig => "generation_config.json",
            Self::BuiltIn => "built-in default",
        })
    }
}

/// The request's value, else the model's, else the built-in one; with where it came from.
fn pick<T>(request: Option<T>, model: Option<T>, built_in: T) -> (T, SettingSource) {
    match (request, model) {
        (Some(v), _) => (v, SettingSource::Request),
        (None, Some(v)) => (v, SettingSource::GenerationConfig),
        (None, None) => (built_in, SettingSource::BuiltIn),
    }
}

/// Where each setting of a [`ResolvedSampling`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplingSources {
    pub temperature: SettingSource,
    pub top_k: SettingSource,
    pub top_p: SettingSource,
    pub min_p: SettingSource,
    pub repetition_penalty: SettingSource,
    pub presence_penalty: SettingSource,
    pub frequency_penalty: SettingSource,
}

/// Sampling settings with their sources; displays as `temperature=1 (built-in default), ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSampling {
    pub params: SamplingParams,
    pub sources: SamplingSources,
}

impl std::fmt::Display for ResolvedSampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (p, from) = (&self.params, &self.sources);
        write!(
            f,
            "temperature={} ({}), top_k={} ({}), top_p={} ({}), min_p={} ({}), \
             repetition_penalty={} ({}), presence_penalty={} ({}), frequency_penalty={} ({}), ",
            p.temperature,
            from.temperature,
            p.top_k,
            from.top_k,
            p.top_p,
            from.top_p,
            p.min_p,
            from.min_p,
            p.repetition_penalty,
            from.repetition_penalty,
            p.presence_penalty,
            from.presence_penalty,
            p.frequency_penalty,
            from.frequency_penalty,
        )?;
        match p.seed {
            Some(seed) => write!(f, "seed={seed} (request)"),
            None => f.write_str("seed=random (built-in default)"),
        }
    }
}

/// A KV policy as a wire carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RawPolicy {
    /// `None`: the engine's default policy, knobs and all.
    pub kind: Option<PolicyKind>,
    /// `None`: the engine's default budget.
    pub budget: Option<usize>,
    /// Knobs the request sets; `beta` and `num_tokens` are the validator's to fill.
    pub knobs: PolicyKnobs,
    /// PyramidKV's β, a whole number carried as a float (kvpress takes an int).
    pub beta: Option<f32>,
}

/// Limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub vocab_size: usize,
    pub max_model_len: usize,
    pub eviction: EvictionSettings,
    pub input: InputLimits,
}

/// Bounds on what one request may ask the server to read and the engine to check per token, each
/// a `glimpse serve` flag. Refusals name the flag, the limit and the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Bytes of a text prompt, or of a chat's roles and contents, checked before any tokenizing
    /// or template rendering (`--max-prompt-bytes`).
    pub max_prompt_bytes: usize,
    /// Stop strings per request (`--max-stop-strings`).
    pub max_stop_strings: usize,
    /// Bytes of one stop string (`--max-stop-string-bytes`).
    pub max_stop_string_bytes: usize,
    /// Stop token ids per request (`--max-stop-token-ids`).
    pub max_stop_token_ids: usize,
}

impl InputLimits {
    /// The default `--max-prompt-bytes` is this many bytes per token of the model's length: far
    /// above what real text takes per token, far below what stalls a tokenizer.
    pub const PROMPT_BYTES_PER_TOKEN: usize = 32;

    /// The defaults for a model of `max_model_len` tokens.
    pub fn for_model_len(max_model_len: usize) -> Self {
        Self {
            max_prompt_bytes: Self::PROMPT_BYTES_PER_TOKEN.saturating_mul(max_model_len),
            max_stop_strings: 16,
            max_stop_string_bytes: 256,
            max_stop_token_ids: 64,
        }
    }

    /// Refuses a prompt of `bytes` bytes past `--max-prompt-bytes`, naming `field`.
    pub fn check_prompt_bytes(
        &self,
        field: &'static str,
        bytes: usize,
    ) -> Result<(), RequestError> {
        if bytes > self.max_prompt_bytes {
            return Err(RequestError::invalid(
                field,
                format!(
                    "the prompt is {bytes} bytes; the limit is {} bytes (--max-prompt-bytes)",
                    self.max_prompt_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Refuses stop lists past their limits.
    fn check_stop(&self, stop: &StopConditions) -> Result<(), RequestError> {
        let count = |field: &'static str, what: &str, got: usize, limit: usize, flag: &str| {
            if got > limit {
                return Err(RequestError::invalid(
                    field,
                    format!("at most {limit} {what} are allowed ({flag}), got {got}"),
                ));
            }
            Ok(())
        };
        count(
            "stop",
            "stop strings",
            stop.stop_strings.len(),
            self.max_stop_strings,
            "--max-stop-strings",
        )?;
        count(
            "stop_token_ids",
            "stop token ids",
            stop.stop_token_ids.len(),
            self.max_stop_token_ids,
            "--max-stop-token-ids",
        )?;
        let long = stop
            .stop_strings
            .iter()
            .enumerate()
            .find(|(_, s)| s.len() > self.max_stop_string_bytes);
        if let Some((i, long)) = long {
            return Err(RequestError::invalid(
                "stop",
                format!(
                    "stop string {i} is {} bytes; the limit is {} bytes (--max-stop-string-bytes)",
                    long.len(),
                    self.max_stop_string_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl RequestLimits {
    /// Refuses the first id of `ids` outside the vocabulary, naming `field`.
    pub fn check_vocabulary(&self, field: &'static str, ids: &[u32]) -> Result<(), RequestError> {
        match ids.iter().find(|&&t| t as usize >= self.vocab_size) {
            Some(bad) => Err(RequestError::invalid(
                field,
                format!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    self.vocab_size
                ),
            )),
            None => Ok(()),
        }
    }
}

/// KV eviction settings of the whole engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvictionSettings {
    /// The policy of requests that name none.
    pub default_policy: EvictionPolicy,
    /// The budget of requests that name a policy but no budget.
    pub default_budget: usize,
    /// Lookahead tokens of the loaded LookaheadKV module; `None` when no module is loaded, so
    /// the lookahead policy is refused.
    pub lookahead_tokens: Option<usize>,
}

impl EvictionSettings {
    /// Whether requests may name `kind` (LookaheadKV needs a loaded module).
    pub fn supports(&self, kind: PolicyKind) -> bool {
        kind != PolicyKind::Lookahead || self.lookahead_tokens.is_some()
    }
}

/// Turns requests into [`ValidRequest`]s against one engine's limits and one model's defaults.
#[derive(Debug, Clone)]
pub struct Validator {
    limits: RequestLimits,
    generation_defaults: GenerationConfig,
}

impl Validator {
    pub fn new(limits: RequestLimits, generation_defaults: GenerationConfig) -> Self {
        Self {
            limits,
            generation_defaults,
        }
    }

    /// Limits every request is checked against.
    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// The same validator with other input limits (the server's flags).
    pub fn with_input_limits(self, input: InputLimits) -> Self {
        Self {
            limits: RequestLimits {
                input,
                ..self.limits
            },
            ..self
        }
    }

    /// Resolves a wire request's unset settings, then validates it as [`Self::validate`] does.
    pub fn validate_raw(&self, raw: RawRequest) -> Result<ValidRequest, RequestError> {
        let kv_cache = raw.kv_cache.map(|p| self.policy(p)).transpose()?;
        let room = self
            .limits
            .max_model_len
            .saturating_sub(raw.prompt_ids.len())
            .max(1);
        self.validate(GenerationRequest {
            sampling: self.resolve_sampling(raw.sampling).params,
            stop: StopConditions {
                max_tokens: raw.max_tokens.unwrap_or(room),
                min_tokens: raw.min_tokens,
                stop_strings: raw.stop_strings,
                stop_token_ids: raw.stop_token_ids,
                ignore_eos: raw.ignore_eos,
            },
            prompt_ids: raw.prompt_ids,
            skip_special_tokens: raw.skip_special_tokens.unwrap_or(true),
            kv_cache,
        })
    }

    /// Checks a request against the limits and resolves its policy (the default when it names
    /// none), which must suit the loaded lookahead module.
    pub fn validate(&self, request: GenerationRequest) -> Result<ValidRequest, RequestError> {
        self.check_limits(&request)?;
        let policy = self.resolve_policy(request.kv_cache)?;
        Ok(ValidRequest {
            prompt_ids: request.prompt_ids,
            sampling: request.sampling,
            stop: request.stop,
            skip_special_tokens: request.skip_special_tokens,
            policy,
        })
    }

    /// Sampling as vLLM resolves it: each unset setting takes `generation_config.json`'s value
    /// (temperature, top_k, top_p), else [`SamplingParams::default`]'s (temperature 1). Every
    /// wire format and `glimpse generate` resolve here; the sources say where each value came from.
    pub fn resolve_sampling(&self, s: RawSampling) -> ResolvedSampling {
        let (model, fallback) = (&self.generation_defaults, SamplingParams::default());
        let (temperature, temperature_from) =
            pick(s.temperature, model.temperature, fallback.temperature);
        let model_top_k = model.top_k.map(|k| k as u32);
        let (top_k, top_k_from) = pick(s.top_k, model_top_k, fallback.top_k);
        let (top_p, top_p_from) = pick(s.top_p, model.top_p, fallback.top_p);
        let (min_p, min_p_from) = pick(s.min_p, None, fallback.min_p);
        let (repetition_penalty, repetition_penalty_from) =
            pick(s.repetition_penalty, None, fallback.repetition_penalty);
        let (presence_penalty, presence_penalty_from) =
            pick(s.presence_penalty, None, fallback.presence_penalty);
        let (frequency_penalty, frequency_penalty_from) =
            pick(s.frequency_penalty, None, fallback.frequency_penalty);
        ResolvedSampling {
            params: SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                repetition_penalty,
                presence_penalty,
                frequency_penalty,
                seed: s.seed,
                logprobs: s.logprobs,
            },
            sources: SamplingSources {
                temperature: temperature_from,
                top_k: top_k_from,
                top_p: top_p_from,
                min_p: min_p_from,
                repetition_penalty: repetition_penalty_from,
                presence_penalty: presence_penalty_from,
                frequency_penalty: frequency_penalty_from,
            },
        }
    }

    /// The request's policy: unset knobs take the policy's defaults (its constructor), the
    /// lookahead token count the loaded module's, an unset budget the server's.
    fn policy(&self, raw: RawPolicy) -> Result<EvictionPolicy, RequestError> {
        let settings = self.limits.eviction;
        let default = settings.default_policy;
        let policy = match raw.kind {
            None => default.policy,
            Some(kind) => kind.with_knobs(PolicyKnobs {
                // Like every knob, β is ignored by the policies without one, malformed or not.
                beta: match kind {
                    PolicyKind::PyramidKv => beta(raw.beta)?,
                    _ => None,
                },
                num_tokens: settings.lookahead_tokens,
                ..raw.knobs
            }),
        };
        let budget = match (raw.budget, raw.kind) {
            (Some(budget), _) => budget,
            (None, None) if default.budget > 0 => default.budget,
            (None, _) => settings.default_budget,
        };
        Ok(EvictionPolicy { policy, budget })
    }

    /// The request's policy (or the default), checked against what this engine can run.
    fn resolve_policy(
        &self,
        requested: Option<EvictionPolicy>,
    ) -> Result<EvictionPolicy, RequestError> {
        let policy = requested.unwrap_or(self.limits.eviction.default_policy);
        policy.validate().map_err(RequestError::from_engine)?;
        policy
            .check_lookahead_module(self.limits.eviction.lookahead_tokens)
            .map_err(|mismatch| match mismatch {
                LookaheadMismatch::NotLoaded => RequestError::NotConfigured {
                    message: "the lookahead policy needs a lookahead module; this server was started without one (--lookahead-module)".into(),
                },
                LookaheadMismatch::TokenCount { .. } => {
                    RequestError::invalid("kv_cache.num_tokens", mismatch.to_string())
                }
            })?;
        Ok(policy)
    }

    /// Everything that does not depend on the engine's momentary state.
    fn check_limits(&self, request: &GenerationRequest) -> Result<(), RequestError> {
        let limits = self.limits;
        let invalid =
            |field: &'static str, message: String| Err(RequestError::invalid(field, message));
        if request.prompt_ids.is_empty() {
            return invalid("prompt", "the prompt has no tokens".into());
        }
        limits.check_vocabulary("prompt", &request.prompt_ids)?;
        let stop = &request.stop;
        if stop.max_tokens == 0 {
            return invalid("max_tokens", "must be at least 1, got 0".into());
        }
        if stop.min_tokens > stop.max_tokens {
            return invalid(
                "min_tokens",
                format!(
                    "must not exceed max_tokens ({}), got {}",
                    stop.max_tokens, stop.min_tokens
                ),
            );
        }
        limits.input.check_stop(stop)?;
        if stop.stop_strings.iter().any(String::is_empty) {
            return invalid("stop", "stop strings must not be empty".into());
        }
        limits.check_vocabulary("stop_token_ids", &stop.stop_token_ids)?;
        request
            .sampling
            .validate()
            .map_err(RequestError::from_engine)?;
        let total = request.prompt_ids.len() + stop.max_tokens;
        if total > limits.max_model_len {
            return Err(RequestError::TooLong {
                message: format!(
                    "prompt ({} tokens) + max_tokens ({}) = {total} exceeds the model's maximum length of {} tokens",
                    request.prompt_ids.len(),
                    stop.max_tokens,
                    limits.max_model_len
                ),
            });
        }
        Ok(())
    }
}

/// PyramidKV's β is a whole number of steps; the wire carries a float.
fn beta(raw: Option<f32>) -> Result<Option<usize>, RequestError> {
    match raw {
        None => Ok(None),
        Some(b) if b >= 1.0 && b.fract() == 0.0 && b <= 1e6 => Ok(Some(b as usize)),
        Some(b) => Err(RequestError::invalid(
            "kv_cache.beta",
            format!("must be a whole number of at least 1, got {b}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use glimpse_engine::eviction::{Policy, Pool};

    use super::*;

    fn validator(lookahead_tokens: Option<usize>) -> Validator {
        let limits = RequestLimits {
            vocab_size: 512,
            max_model_len: 512,
            eviction: EvictionSettings {
                default_budget: 64,
                lookahead_tokens,
                ..EvictionSettings::default()
            },
            input: InputLimits::for_model_len(512),
        };
        let defaults = GenerationConfig {
            temperature: Some(0.5),
            ..GenerationConfig::default()
        };
        Validator::new(limits, defaults)
    }

    fn raw(kv_cache: Option<RawPolicy>) -> RawRequest {
        RawRequest {
            prompt_ids: vec![1, 2, 3],
            kv_cache,
            ..RawRequest::default()
        }
    }

    #[test]
    fn unset_settings_take_the_model_and_policy_defaults() {
        let valid = validator(None)
            .validate_raw(raw(Some(RawPolicy {
                kind: Some(PolicyKind::PyramidKv),
                knobs: PolicyKnobs {
                    pool: Some(Pool::Avg),
                    ..PolicyKnobs::default()
                },
                ..RawPolicy::default()
            })))
            .unwrap();
        assert_eq!(valid.sampling.temperature, 0.5);
        assert_eq!(valid.sampling.top_p, SamplingParams::default().top_p);
        assert_eq!(valid.stop.max_tokens, 509, "the room the prompt leaves");
        let Policy::PyramidKv { pool, .. } = valid.policy.policy else {
            panic!("{:?}", valid.policy);
        };
        assert_eq!(
            valid.policy.policy,
            Policy::pyramidkv().with_knobs(PolicyKnobs {
                pool: Some(pool),
                ..PolicyKnobs::default()
            })
        );
        assert_eq!((pool, valid.policy.budget), (Pool::Avg, 64));
    }

    #[test]
    fn each_sampling_setting_says_whether_the_request_the_model_or_the_built_in_set_it() {
        let resolved = validator(None).resolve_sampling(RawSampling {
            top_p: Some(0.9),
            seed: Some(7),
            ..RawSampling::default()
        });
        assert_eq!(
            resolved.sources.temperature,
            SettingSource::GenerationConfig
        );
        assert_eq!(resolved.sources.top_p, SettingSource::Request);
        assert_eq!(resolved.sources.top_k, SettingSource::BuiltIn);
        let shown = resolved.to_string();
        for part in [
            "temperature=0.5 (generation_config.json)",
            "top_p=0.9 (request)",
            "top_k=0 (built-in default)",
            "seed=7 (request)",
        ] {
            assert!(shown.contains(part), "{shown}");
        }
    }

    #[test]
    fn lookahead_takes_the_module_token_count_or_is_refused_without_one() {
        let lookahead = raw(Some(RawPolicy {
            kind: Some(PolicyKind::Lookahead),
            ..RawPolicy::default()
        }));
        let valid = validator(Some(16)).validate_raw(lookahead.clone()).unwrap();
        assert!(matches!(
            valid.policy.policy,
            Policy::Lookahead { num_tokens: 16, .. }
        ));
        assert!(matches!(
            validator(None).validate_raw(lookahead),
            Err(RequestError::NotConfigured { .. })
        ));
    }

    #[test]
    fn a_fractional_beta_is_refused_naming_it() {
        let error = validator(None)
            .validate_raw(raw(Some(RawPolicy {
                kind: Some(PolicyKind::PyramidKv),
                beta: Some(2.5),
                ..RawPolicy::default()
            })))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid `kv_cache.beta`: must be a whole number of at least 1, got 2.5"
        );
    }

    #[test]
    fn stop_lists_past_their_limits_are_refused_naming_the_flag() {
        let refused = |stop_strings: Vec<String>, stop_token_ids: Vec<u32>| {
            validator(None)
                .validate_raw(RawRequest {
                    stop_strings,
                    stop_token_ids,
                    ..raw(None)
                })
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused(vec!["x".into(); 100_000], Vec::new()),
            "invalid `stop`: at most 16 stop strings are allowed (--max-stop-strings), got 100000"
        );
        assert_eq!(
            refused(vec!["x".repeat(300)], Vec::new()),
            "invalid `stop`: stop string 0 is 300 bytes; the limit is 256 bytes (--max-stop-string-bytes)"
        );
        assert_eq!(
            refused(Vec::new(), vec![1; 65]),
            "invalid `stop_token_ids`: at most 64 stop token ids are allowed (--max-stop-token-ids), got 65"
        );
    }
}
