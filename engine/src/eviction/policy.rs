//! Eviction policy configuration: which policies exist ([`PolicyKind::ALL`], their names), their
//! knobs and defaults and the budget, validated once, independent of any prompt (STYLE rule 2).
//! Then, per prompt: whether it is evicted at all ([`EvictionPolicy::for_prompt`], the one place
//! that decides) and, for a [`PromptEviction`], what its last chunk and the backend must compute
//! ([`ScoringPlan`]). Adding a policy touches this module (and the wire enums that name it),
//! nothing that only runs policies.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::error::{EngineError, Result};

use super::pooling::{Pool, Pooling};
use super::scoring::QueryReduction;

/// Which prompt entries a policy looks at, with its knobs. Defaults (constructors below) are
/// docs/design.md §4's, the LookaheadKV paper's baseline settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Keep the whole prompt.
    Full,
    /// StreamingLLM: the first `sinks` entries plus the most recent ones. No position shift: kept
    /// keys keep the rotation of their original positions.
    StreamingLlm { sinks: usize },
    /// SnapKV: the last `window` prompt queries' softmax over the prompt keys, summed over the
    /// window, 1-D pooled (odd `kernel`, padding `kernel / 2`, stride 1); the window is always kept.
    SnapKv {
        window: usize,
        kernel: usize,
        pool: Pool,
    },
    /// PyramidKV: SnapKV scores with a per-layer budget decreasing linearly with depth
    /// (see [`super::pyramid::pyramid_budgets`]).
    PyramidKv {
        window: usize,
        kernel: usize,
        pool: Pool,
        beta: usize,
    },
    /// LookaheadKV: the mean over `num_tokens` lookahead queries of their softmax attention to the
    /// prompt keys; the last `window` prompt entries are kept as well when `window > 0`.
    Lookahead { num_tokens: usize, window: usize },
}

/// The policies by name, without their knobs: what a CLI flag, a metric label or a wire enum
/// names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    Full,
    StreamingLlm,
    SnapKv,
    PyramidKv,
    Lookahead,
}

impl PolicyKind {
    /// Every policy, in the order listings show them.
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::Full,
        PolicyKind::StreamingLlm,
        PolicyKind::SnapKv,
        PolicyKind::PyramidKv,
        PolicyKind::Lookahead,
    ];

    /// The policy's name, as flags take it and metrics label it
    /// (`glimpse_kv_evicted_tokens_total{policy}`).
    pub const fn name(self) -> &'static str {
        match self {
            PolicyKind::Full => "full",
            PolicyKind::StreamingLlm => "streaming_llm",
            PolicyKind::SnapKv => "snapkv",
            PolicyKind::PyramidKv => "pyramidkv",
            PolicyKind::Lookahead => "lookahead",
        }
    }

    /// The policy with its defaults (the constructors of [`Policy`]), each knob given in `knobs`
    /// overriding its default; knobs the policy does not have are ignored.
    pub fn with_knobs(self, knobs: PolicyKnobs) -> Policy {
        let defaults = match self {
            PolicyKind::Full => Policy::Full,
            PolicyKind::StreamingLlm => Policy::streaming_llm(),
            PolicyKind::SnapKv => Policy::snapkv(),
            PolicyKind::PyramidKv => Policy::pyramidkv(),
            PolicyKind::Lookahead => Policy::lookahead(),
        };
        defaults.with_knobs(knobs)
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = EngineError;

    /// A policy by its [`name`](PolicyKind::name); the error lists the names.
    fn from_str(name: &str) -> Result<Self> {
        PolicyKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = PolicyKind::ALL.iter().map(|k| k.name()).collect();
                invalid(
                    "eviction.policy",
                    format!("must be one of {}, got `{name}`", names.join(", ")),
                )
            })
    }
}

/// Knobs a request or a flag may set; `None` keeps the policy's default
/// ([`PolicyKind::with_knobs`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyKnobs {
    pub sinks: Option<usize>,
    pub window: Option<usize>,
    pub kernel: Option<usize>,
    pub pool: Option<Pool>,
    pub beta: Option<usize>,
    /// Lookahead tokens: the loaded module's, never the client's.
    pub num_tokens: Option<usize>,
}

impl Policy {
    /// StreamingLLM with 4 sinks.
    pub const fn streaming_llm() -> Self {
        Policy::StreamingLlm { sinks: 4 }
    }

    /// SnapKV with window 32 and max-pool kernel 7.
    pub const fn snapkv() -> Self {
        Policy::SnapKv {
            window: 32,
            kernel: 7,
            pool: Pool::Max,
        }
    }

    /// PyramidKV with SnapKV's defaults and β = 20.
    pub const fn pyramidkv() -> Self {
        let Policy::SnapKv {
            window,
            kernel,
            pool,
        } = Policy::snapkv()
        else {
            unreachable!()
        };
        Policy::PyramidKv {
            window,
            kernel,
            pool,
            beta: 20,
        }
    }

    /// LookaheadKV with the paper's 32 lookahead tokens and no window.
    pub const fn lookahead() -> Self {
        Policy::Lookahead {
            num_tokens: crate::lookahead::DEFAULT_NUM_TOKENS,
            window: 0,
        }
    }

    /// Which policy this is, without its knobs.
    pub const fn kind(&self) -> PolicyKind {
        match self {
            Policy::Full => PolicyKind::Full,
            Policy::StreamingLlm { .. } => PolicyKind::StreamingLlm,
            Policy::SnapKv { .. } => PolicyKind::SnapKv,
            Policy::PyramidKv { .. } => PolicyKind::PyramidKv,
            Policy::Lookahead { .. } => PolicyKind::Lookahead,
        }
    }

    /// The policy's name as metrics label it (`glimpse_kv_evicted_tokens_total{policy}`).
    pub const fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// This policy with each knob given in `knobs` replacing its own.
    pub fn with_knobs(self, knobs: PolicyKnobs) -> Self {
        match self {
            Policy::Full => Policy::Full,
            Policy::StreamingLlm { sinks } => Policy::StreamingLlm {
                sinks: knobs.sinks.unwrap_or(sinks),
            },
            Policy::SnapKv {
                window,
                kernel,
                pool,
            } => Policy::SnapKv {
                window: knobs.window.unwrap_or(window),
                kernel: knobs.kernel.unwrap_or(kernel),
                pool: knobs.pool.unwrap_or(pool),
            },
            Policy::PyramidKv {
                window,
                kernel,
                pool,
                beta,
            } => Policy::PyramidKv {
                window: knobs.window.unwrap_or(window),
                kernel: knobs.kernel.unwrap_or(kernel),
                pool: knobs.pool.unwrap_or(pool),
                beta: knobs.beta.unwrap_or(beta),
            },
            Policy::Lookahead { num_tokens, window } => Policy::Lookahead {
                num_tokens: knobs.num_tokens.unwrap_or(num_tokens),
                window: knobs.window.unwrap_or(window),
            },
        }
    }

    /// Entries at the end of the prompt that are always kept.
    pub const fn window(&self) -> usize {
        match *self {
            Policy::Full | Policy::StreamingLlm { .. } => 0,
            Policy::SnapKv { window, .. }
            | Policy::PyramidKv { window, .. }
            | Policy::Lookahead { window, .. } => window,
        }
    }
}

/// A policy with its budget: the number of prompt entries kept per (layer, KV head), window
/// included (for PyramidKV, the per-layer average).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvictionPolicy {
    pub policy: Policy,
    pub budget: usize,
}

impl Default for EvictionPolicy {
    /// No eviction.
    fn default() -> Self {
        EvictionPolicy {
            policy: Policy::Full,
            budget: 0,
        }
    }
}

/// Which queries score the prompt, as the backend must provide them to
/// [`super::scoring::score_prompt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoringQueries {
    /// The last `window` prompt rows' queries ([`super::scoring::QueryRows::PromptSuffix`]).
    PromptWindow { window: usize },
    /// The lookahead rows' queries, appended after the prompt
    /// ([`super::scoring::QueryRows::AfterPrompt`]).
    Lookahead { num_tokens: usize },
}

/// What scoring a policy needs for one prompt: the same for every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoringPlan {
    pub queries: ScoringQueries,
    /// Leading prompt entries that get a score; the rest (the window) are kept unconditionally.
    pub scored_entries: usize,
    pub reduction: QueryReduction,
    pub pooling: Option<Pooling>,
}

impl ScoringPlan {
    /// Prompt tokens the last prefill chunk must hold: SnapKV and PyramidKV score with the
    /// queries of the last `window` prompt tokens, which exist only in the pass computing them.
    pub const fn min_last_chunk_tokens(&self) -> usize {
        match self.queries {
            ScoringQueries::PromptWindow { window } => window,
            ScoringQueries::Lookahead { .. } => 0,
        }
    }

    /// Rows the last chunk's pass appends after the prompt: LookaheadKV's lookahead rows.
    pub const fn extra_rows(&self) -> usize {
        match self.queries {
            ScoringQueries::PromptWindow { .. } => 0,
            ScoringQueries::Lookahead { num_tokens } => num_tokens,
        }
    }

    /// Rows of a flat batch whose queries score, for a last chunk whose `num_tokens` token rows
    /// start at `first_row` and are followed by its [`extra_rows`](Self::extra_rows).
    pub fn query_rows(&self, first_row: usize, num_tokens: usize) -> Range<usize> {
        let end = first_row + num_tokens;
        end - self.min_last_chunk_tokens()..end + self.extra_rows()
    }
}

/// Why a policy cannot run with the lookahead module at hand (see
/// [`EvictionPolicy::check_lookahead_module`]); each caller turns it into its own error kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookaheadMismatch {
    /// LookaheadKV without a loaded module.
    #[error("lookahead needs a lookahead module, and none is loaded")]
    NotLoaded,
    /// The module's token count differs from the policy's.
    #[error("the loaded lookahead module has {loaded} tokens, got {requested}")]
    TokenCount { loaded: usize, requested: usize },
}

impl EvictionPolicy {
    /// Whether the policy can run with a loaded lookahead module of `loaded_tokens` tokens
    /// (`None`: no module). Only LookaheadKV needs one.
    pub fn check_lookahead_module(
        &self,
        loaded_tokens: Option<usize>,
    ) -> std::result::Result<(), LookaheadMismatch> {
        let Policy::Lookahead { num_tokens, .. } = self.policy else {
            return Ok(());
        };
        match loaded_tokens {
            None => Err(LookaheadMismatch::NotLoaded),
            Some(loaded) if loaded != num_tokens => Err(LookaheadMismatch::TokenCount {
                loaded,
                requested: num_tokens,
            }),
            Some(_) => Ok(()),
        }
    }

    /// Checks the knobs against each other, whatever the prompt. Errors name the field, the limit
    /// and the value given.
    pub fn validate(&self) -> Result<()> {
        let budget = self.budget;
        match self.policy {
            Policy::Full => return Ok(()),
            _ if budget == 0 => {
                return Err(invalid(
                    "eviction.budget",
                    "must be at least 1, got 0".into(),
                ));
            }
            Policy::StreamingLlm { sinks } => below_budget("eviction.sinks", sinks, budget)?,
            Policy::SnapKv { window, kernel, .. } => {
                window_and_kernel(window, kernel, budget)?;
            }
            Policy::PyramidKv {
                window,
                kernel,
                beta,
                ..
            } => {
                window_and_kernel(window, kernel, budget)?;
                if beta == 0 {
                    return Err(invalid("eviction.beta", "must be at least 1, got 0".into()));
                }
            }
            Policy::Lookahead { num_tokens, window } => {
                if num_tokens == 0 {
                    return Err(invalid(
                        "eviction.num_tokens",
                        "must be at least 1, got 0".into(),
                    ));
                }
                below_budget("eviction.window", window, budget)?;
            }
        }
        Ok(())
    }

    /// The most entries an eviction under this policy keeps in any layer, whatever the prompt
    /// (`None` under [`Policy::Full`]): the budget, or under PyramidKV `2·budget`, a bound on its
    /// largest layer budget `2B − B/β` (see [`super::pyramid::pyramid_budgets`]). Prefix caching
    /// reserves this many entries of fresh blocks to compact into (docs/design.md §7).
    pub fn max_kept_entries(&self) -> Option<usize> {
        match self.policy {
            Policy::Full => None,
            Policy::PyramidKv { .. } => Some(2 * self.budget.max(1)),
            _ => Some(self.budget.max(1)),
        }
    }

    /// The eviction of a prompt of `prompt_len` entries, or `None` when the prompt is kept whole:
    /// under [`Policy::Full`] and when it is no longer than the budget. The one place that
    /// decides whether a prompt is evicted at all.
    pub fn for_prompt(&self, prompt_len: usize) -> Option<PromptEviction> {
        let evicted = !matches!(self.policy, Policy::Full) && prompt_len > self.budget;
        evicted.then_some(PromptEviction {
            policy: *self,
            prompt_len,
        })
    }
}

/// A policy applied to one prompt it evicts (from [`EvictionPolicy::for_prompt`]): the prompt is
/// longer than the budget and the policy is not [`Policy::Full`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptEviction {
    pub(super) policy: EvictionPolicy,
    pub(super) prompt_len: usize,
}

impl PromptEviction {
    /// Entries of the prompt, all of which the cache holds when the eviction runs.
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Entries kept per KV head in each of `num_layers` layers: the budget everywhere except under
    /// PyramidKV.
    pub fn layer_budgets(&self, num_layers: usize) -> Vec<usize> {
        let budget = self.policy.budget;
        match self.policy.policy {
            Policy::PyramidKv { window, beta, .. } => {
                super::pyramid::pyramid_budgets(budget, window, beta, self.prompt_len, num_layers)
            }
            _ => vec![budget; num_layers],
        }
    }

    /// What the backend must score for this prompt, or `None` when the policy needs no scores
    /// (StreamingLLM).
    pub fn scoring_plan(&self) -> Option<ScoringPlan> {
        let policy = self.policy.policy;
        let window = policy.window();
        let scored_entries = self.prompt_len - window;
        match policy {
            Policy::Full | Policy::StreamingLlm { .. } => None,
            Policy::SnapKv { kernel, pool, .. } | Policy::PyramidKv { kernel, pool, .. } => {
                Some(ScoringPlan {
                    queries: ScoringQueries::PromptWindow { window },
                    scored_entries,
                    reduction: QueryReduction::Sum,
                    pooling: Some(Pooling { pool, kernel }),
                })
            }
            Policy::Lookahead { num_tokens, .. } => Some(ScoringPlan {
                queries: ScoringQueries::Lookahead { num_tokens },
                scored_entries,
                reduction: QueryReduction::Mean,
                pooling: None,
            }),
        }
    }
}

fn invalid(field: &'static str, message: String) -> EngineError {
    EngineError::InvalidParameter { field, message }
}

fn below_budget(field: &'static str, value: usize, budget: usize) -> Result<()> {
    if value >= budget {
        return Err(invalid(
            field,
            format!("must be below the budget ({budget}), got {value}"),
        ));
    }
    Ok(())
}

fn window_and_kernel(window: usize, kernel: usize, budget: usize) -> Result<()> {
    if window == 0 {
        return Err(invalid(
            "eviction.window",
            "must be at least 1 (the window's queries score the prompt), got 0".into(),
        ));
    }
    below_budget("eviction.window", window, budget)?;
    if kernel.is_multiple_of(2) {
        return Err(invalid(
            "eviction.kernel",
            format!("must be odd (padding kernel/2 keeps the length), got {kernel}"),
        ));
    }
    Ok(())
}
