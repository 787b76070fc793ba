//! Running the evaluation: each prompt answered greedily with the full cache, then under every
//! policy × budget, through the engine's own forward pass, eviction and compaction
//! ([`OfflineRunner`]).
//!
//! Per prompt and (policy, budget):
//! - **agreement**: the fraction of the full-cache greedy answer's positions where the evicted
//!   run's greedy answer has the same token, and the first position where they differ;
//! - **KL**: teacher-forced along the full-cache answer, `KL(full ‖ evicted)` of the next-token
//!   distributions, in nats per token;
//! - **attention recall**: the share of the ground-truth attention mass (the full-cache answer's
//!   attention to the prompt, [`AttentionTarget`]) that the kept entries carry, averaged over
//!   layers and KV heads;
//! - **prefill time** of the prompt with the policy (scoring, selection and compaction included),
//!   from which the report takes the TTFT overhead against the full cache;
//! - the **greedy answers** themselves, which the caller scores against expected answers when the
//!   prompts carry them ([`super::accuracy`]).

use std::sync::Arc;
use std::time::Instant;

use glimpse_engine::Result;
use glimpse_engine::backend::Device;
use glimpse_engine::batch::LogitsRequest;
use glimpse_engine::config::KvCacheDtype;
use glimpse_engine::eviction::{EvictionPolicy, LayerSelection, Policy};
use glimpse_engine::lookahead::LookaheadModule;
use glimpse_engine::model::Model;
use glimpse_engine::runner::{OfflineRunner, RunnerSequence};
use glimpse_engine::sampling::{argmax, log_sum_exp};
use glimpse_engine::train::{AttentionTarget, FrozenModel, Precision};

use super::report::{EvalRow, KeptLikeF32};

/// Block size of every KV pool of the evaluation: the same for the reference and the candidates,
/// since attention's online softmax groups keys by block and another size can move last bits.
const BLOCK_SIZE: usize = 16;

/// A policy family evaluated at every budget.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Label in the report (e.g. `snapkv`, `lookahead (no LoRA)`).
    pub label: String,
    pub kind: CandidateKind,
}

/// What a candidate evicts with.
#[derive(Debug, Clone)]
pub enum CandidateKind {
    /// A policy without a module; SnapKV's and PyramidKV's window is capped at half the budget,
    /// since a window must stay below the budget (docs/design.md §4 defaults otherwise).
    Baseline(Policy),
    /// LookaheadKV with this module, keeping the last `window` prompt entries too (capped at
    /// half the budget like the baselines' windows; 0: none, the paper's default).
    Lookahead {
        module: Arc<LookaheadModule>,
        window: usize,
    },
}

impl Candidate {
    /// The policy at `budget`.
    pub fn policy(&self, budget: usize) -> EvictionPolicy {
        let mut policy = match &self.kind {
            CandidateKind::Baseline(policy) => *policy,
            CandidateKind::Lookahead { module, window } => Policy::Lookahead {
                num_tokens: module.num_tokens,
                window: *window,
            },
        };
        match &mut policy {
            Policy::SnapKv { window, .. } | Policy::PyramidKv { window, .. } => {
                *window = (*window).min(budget / 2).max(1);
            }
            Policy::Lookahead { window, .. } => *window = (*window).min(budget / 2),
            _ => {}
        }
        EvictionPolicy { policy, budget }
    }
}

/// Sums over prompts for one (candidate, budget).
#[derive(Default, Clone)]
struct Accumulator {
    agreement: f64,
    first_divergence: f64,
    kl: f64,
    recall: f64,
    prefill_seconds: Vec<f64>,
    kept: KeptSums,
}

/// Sums comparing a run's kept entries with an f32-KV run's, over (layer, KV head) sets.
#[derive(Default, Clone)]
struct KeptSums {
    sets: usize,
    equal_sets: usize,
    f32_entries: usize,
    shared_entries: usize,
}

impl KeptSums {
    fn add(&mut self, got: &[LayerSelection], f32_kept: &[LayerSelection]) {
        let heads = |s: &[LayerSelection]| -> Vec<Vec<usize>> {
            s.iter().flat_map(|layer| layer.kept.clone()).collect()
        };
        for (got, want) in heads(got).iter().zip(&heads(f32_kept)) {
            self.sets += 1;
            self.equal_sets += usize::from(got == want);
            self.f32_entries += want.len();
            self.shared_entries += want.iter().filter(|e| got.binary_search(e).is_ok()).count();
        }
    }

    fn finish(&self) -> Option<KeptLikeF32> {
        (self.sets > 0).then(|| KeptLikeF32 {
            equal_sets: self.equal_sets as f64 / self.sets as f64,
            shared_entries: self.shared_entries as f64 / self.f32_entries.max(1) as f64,
        })
    }
}

/// How long each evicted greedy answer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictedLength {
    /// Exactly as long as the full-cache answer, so agreement compares position by position.
    LikeFullCache,
    /// Until an end-of-sequence token or `answer_tokens`, whatever the full cache answered:
    /// exact-answer accuracy must not inherit the full-cache answer's length.
    OwnStop,
}

/// The greedy answers to one prompt.
pub struct PromptAnswers {
    pub full: Vec<u32>,
    /// `[candidate][budget]`, in the order given to [`evaluate`].
    pub evicted: Vec<Vec<Vec<u32>>>,
}

/// What [`evaluate`] measured.
pub struct Evaluation {
    /// In candidate order, budgets in the given order within each.
    pub rows: Vec<EvalRow>,
    /// Per budget, the recall of keeping the top entries by the answer's own attention.
    pub oracle_recall: Vec<(usize, f64)>,
    /// Per prompt, in order.
    pub answers: Vec<PromptAnswers>,
}

/// How every prompt is answered.
#[derive(Debug, Clone, Copy)]
pub struct RunSettings {
    /// Longest greedy answer, in tokens.
    pub answer_tokens: usize,
    pub evicted_length: EvictedLength,
    /// What the candidates' KV pools store (the full-cache reference's is the device's widest,
    /// [`KvCacheDtype::widest_on`]).
    pub kv_dtype: KvCacheDtype,
}

/// Evaluates `candidates` at `budgets` on `prompts`; `on_prompt` reports progress. With no
/// candidate only the full-cache answers are produced (for exact-answer accuracy).
pub fn evaluate(
    model: &Model,
    device: Device,
    prompts: &[Vec<u32>],
    candidates: &[Candidate],
    budgets: &[usize],
    settings: RunSettings,
    mut on_prompt: impl FnMut(),
) -> Result<Evaluation> {
    let RunSettings {
        answer_tokens,
        evicted_length,
        kv_dtype,
    } = settings;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let entries = longest + answer_tokens + BLOCK_SIZE;
    let reference_dtype = KvCacheDtype::widest_on(device);
    // First, so a device that cannot run fails before the CPU reference model is built.
    let mut full_runner = OfflineRunner::on(
        device,
        model,
        BLOCK_SIZE,
        2 * entries,
        reference_dtype,
        None,
    )?;
    // the answer's attention is compared with what the policies keep: nothing to compare without one
    let frozen = (!candidates.is_empty())
        .then(|| FrozenModel::load(model, Precision::F32, longest + answer_tokens))
        .transpose()?;
    let mut runners = candidates
        .iter()
        .map(|c| {
            let module = match &c.kind {
                CandidateKind::Lookahead { module, .. } => Some(module.clone()),
                CandidateKind::Baseline(_) => None,
            };
            OfflineRunner::on(device, model, BLOCK_SIZE, 2 * entries, kv_dtype, module)
        })
        .collect::<Result<Vec<_>>>()?;
    // LookaheadKV's selections at a compact KV dtype are compared with its f32-KV selections.
    let mut f32_runners = candidates
        .iter()
        .map(|c| match &c.kind {
            CandidateKind::Lookahead { module, .. } if kv_dtype != reference_dtype => {
                let module = Some(module.clone());
                OfflineRunner::on(
                    device,
                    model,
                    BLOCK_SIZE,
                    2 * entries,
                    reference_dtype,
                    module,
                )
                .map(Some)
            }
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let eos = model.eos_token_ids();
    let mut full_seconds = Vec::with_capacity(prompts.len());
    let mut sums = vec![vec![Accumulator::default(); budgets.len()]; candidates.len()];
    let mut oracle = vec![0.0; budgets.len()];
    let mut answers = Vec::with_capacity(prompts.len());

    for prompt in prompts {
        let full = full_cache_answer(&mut full_runner, prompt, answer_tokens, &eos)?;
        full_seconds.push(full.prefill_seconds);
        let ground_truth = match &frozen {
            Some(frozen) => {
                AttentionTarget::compute(frozen, prompt, &full.answer)?.ground_truth()?
            }
            None => Vec::new(),
        };
        for (sum, &budget) in oracle.iter_mut().zip(budgets) {
            *sum += oracle_recall(&ground_truth, budget);
        }
        let length = match evicted_length {
            EvictedLength::LikeFullCache => Stop::After(full.answer.len()),
            EvictedLength::OwnStop => Stop::AtEosOrAfter(answer_tokens, &eos),
        };
        let mut evicted = vec![Vec::with_capacity(budgets.len()); candidates.len()];
        for (c, candidate) in candidates.iter().enumerate() {
            for (b, &budget) in budgets.iter().enumerate() {
                let policy = candidate.policy(budget);
                let run = evicted_run(&mut runners[c], prompt, &full, policy, length)?;
                let acc = &mut sums[c][b];
                acc.agreement += run.agreement;
                acc.first_divergence += run.first_divergence as f64;
                acc.kl += run.kl;
                acc.recall += run
                    .selections
                    .as_deref()
                    .map_or(1.0, |s| attention_recall(s, &ground_truth));
                acc.prefill_seconds.push(run.prefill_seconds);
                if let (Some(f32_runner), Some(got)) = (&mut f32_runners[c], &run.selections) {
                    let mut seq = RunnerSequence::default();
                    let f32_run =
                        f32_runner.prefill_evicting(&mut seq, prompt, LogitsRequest::Last, policy);
                    f32_runner.release(&mut seq);
                    if let Some(f32_run) = f32_run? {
                        acc.kept.add(got, &f32_run.report.selections);
                    }
                }
                evicted[c].push(run.answer);
            }
        }
        answers.push(PromptAnswers {
            full: full.answer,
            evicted,
        });
        on_prompt();
    }

    let n = prompts.len().max(1) as f64;
    let full_median = median(&mut full_seconds);
    let mut rows = Vec::new();
    for (candidate, per_budget) in candidates.iter().zip(sums) {
        for (&budget, mut acc) in budgets.iter().zip(per_budget) {
            rows.push(EvalRow {
                policy: candidate.label.clone(),
                budget,
                agreement: acc.agreement / n,
                first_divergence: acc.first_divergence / n,
                kl: acc.kl / n,
                recall: acc.recall / n,
                ttft_overhead: median(&mut acc.prefill_seconds) / full_median - 1.0,
                accuracy: None,
                kept_like_f32: acc.kept.finish(),
            });
        }
    }
    let oracle_recall = match frozen {
        Some(_) => budgets
            .iter()
            .zip(oracle)
            .map(|(&budget, sum)| (budget, sum / n))
            .collect(),
        None => Vec::new(),
    };
    Ok(Evaluation {
        rows,
        oracle_recall,
        answers,
    })
}

/// The full-cache reference for one prompt.
struct FullAnswer {
    answer: Vec<u32>,
    /// Log-probabilities of the next token before each answer token, `[answer.len()][vocab]`.
    log_probs: Vec<Vec<f32>>,
    prefill_seconds: f64,
}

fn full_cache_answer(
    runner: &mut OfflineRunner,
    prompt: &[u32],
    answer_tokens: usize,
    eos: &[u32],
) -> Result<FullAnswer> {
    let mut seq = RunnerSequence::default();
    let result = full_cache_decode(runner, &mut seq, prompt, answer_tokens, eos);
    runner.release(&mut seq);
    result
}

fn full_cache_decode(
    runner: &mut OfflineRunner,
    seq: &mut RunnerSequence,
    prompt: &[u32],
    answer_tokens: usize,
    eos: &[u32],
) -> Result<FullAnswer> {
    let started = Instant::now();
    runner.step(&mut [(&mut *seq, prompt, LogitsRequest::Last)])?;
    let prefill_seconds = started.elapsed().as_secs_f64();
    let mut answer = Vec::new();
    let mut log_probs = Vec::new();
    loop {
        let row = runner.output().last_row(0);
        let token = argmax(row);
        log_probs.push(log_softmax(row));
        answer.push(token);
        if answer.len() >= answer_tokens || eos.contains(&token) {
            break;
        }
        runner.step(&mut [(&mut *seq, &[token], LogitsRequest::Last)])?;
    }
    Ok(FullAnswer {
        answer,
        log_probs,
        prefill_seconds,
    })
}

/// Where a greedy answer under eviction stops.
#[derive(Clone, Copy)]
enum Stop<'a> {
    After(usize),
    AtEosOrAfter(usize, &'a [u32]),
}

impl Stop<'_> {
    fn done(self, answer: &[u32]) -> bool {
        match self {
            Stop::After(n) => answer.len() >= n,
            Stop::AtEosOrAfter(n, eos) => {
                answer.len() >= n || answer.last().is_some_and(|t| eos.contains(t))
            }
        }
    }
}

/// One (policy, budget) on one prompt.
struct EvictedRun {
    answer: Vec<u32>,
    agreement: f64,
    first_divergence: usize,
    kl: f64,
    /// What eviction kept; `None` when the prompt was left whole.
    selections: Option<Vec<LayerSelection>>,
    prefill_seconds: f64,
}

/// A greedy answer under eviction.
struct GreedyRun {
    answer: Vec<u32>,
    selections: Option<Vec<LayerSelection>>,
    prefill_seconds: f64,
}

fn evicted_run(
    runner: &mut OfflineRunner,
    prompt: &[u32],
    full: &FullAnswer,
    policy: EvictionPolicy,
    stop: Stop,
) -> Result<EvictedRun> {
    let mut seq = RunnerSequence::default();
    let greedy = greedy_under(runner, &mut seq, prompt, policy, stop);
    runner.release(&mut seq);
    let greedy = greedy?;
    let kl = teacher_forced_kl(runner, &mut seq, prompt, policy, full);
    runner.release(&mut seq);

    let m = full.answer.len();
    let pairs = || greedy.answer.iter().zip(&full.answer);
    Ok(EvictedRun {
        agreement: pairs().filter(|(a, b)| a == b).count() as f64 / m.max(1) as f64,
        first_divergence: pairs().position(|(a, b)| a != b).unwrap_or(m),
        kl: kl?,
        selections: greedy.selections,
        prefill_seconds: greedy.prefill_seconds,
        answer: greedy.answer,
    })
}

fn greedy_under(
    runner: &mut OfflineRunner,
    seq: &mut RunnerSequence,
    prompt: &[u32],
    policy: EvictionPolicy,
    stop: Stop,
) -> Result<GreedyRun> {
    let started = Instant::now();
    let report = runner.prefill_evicting(seq, prompt, LogitsRequest::Last, policy)?;
    let prefill_seconds = started.elapsed().as_secs_f64();
    let mut answer = Vec::new();
    loop {
        let token = argmax(runner.output().last_row(0));
        answer.push(token);
        if stop.done(&answer) {
            break;
        }
        runner.step(&mut [(&mut *seq, &[token], LogitsRequest::Last)])?;
    }
    Ok(GreedyRun {
        answer,
        selections: report.map(|evicted| evicted.report.selections),
        prefill_seconds,
    })
}

/// Mean `KL(full ‖ evicted)` per answer token, feeding the full-cache answer: row 0 comes from
/// the prefill, the others from one pass over the answer.
fn teacher_forced_kl(
    runner: &mut OfflineRunner,
    seq: &mut RunnerSequence,
    prompt: &[u32],
    policy: EvictionPolicy,
    full: &FullAnswer,
) -> Result<f64> {
    let m = full.answer.len();
    runner.prefill_evicting(seq, prompt, LogitsRequest::Last, policy)?;
    let mut kl = kl_divergence(&full.log_probs[0], runner.output().last_row(0));
    if m > 1 {
        runner.step(&mut [(&mut *seq, &full.answer[..m - 1], LogitsRequest::All)])?;
        for i in 1..m {
            kl += kl_divergence(&full.log_probs[i], runner.output().row(0, i - 1));
        }
    }
    Ok(kl / m.max(1) as f64)
}

/// Mean over layers and KV heads of the ground-truth mass on the kept entries.
fn attention_recall(selections: &[LayerSelection], ground_truth: &[Vec<Vec<f32>>]) -> f64 {
    let mut total = 0.0;
    let mut heads = 0;
    for (layer, truth) in selections.iter().zip(ground_truth) {
        for (kept, row) in layer.kept.iter().zip(truth) {
            total += kept.iter().map(|&j| row[j] as f64).sum::<f64>();
            heads += 1;
        }
    }
    total / heads.max(1) as f64
}

/// The recall of the best possible selection: per layer and KV head, the `budget` largest
/// ground-truth entries (all of them for a prompt within budget).
fn oracle_recall(ground_truth: &[Vec<Vec<f32>>], budget: usize) -> f64 {
    let mut total = 0.0;
    let mut heads = 0;
    for row in ground_truth.iter().flatten() {
        let mut sorted = row.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        total += sorted.iter().take(budget).map(|&x| x as f64).sum::<f64>();
        heads += 1;
    }
    total / heads.max(1) as f64
}

/// `row − log_sum_exp(row)`, by the sampler's own kernel.
fn log_softmax(row: &[f32]) -> Vec<f32> {
    let log_sum = log_sum_exp(row);
    row.iter().map(|&x| x - log_sum).collect()
}

/// `KL(p ‖ q)` for `p` given as log-probabilities and `q` as raw logits.
fn kl_divergence(p_log: &[f32], q_logits: &[f32]) -> f64 {
    let q_log = log_softmax(q_logits);
    p_log
        .iter()
        .zip(&q_log)
        .map(|(&lp, &lq)| (lp as f64).exp() * (lp - lq) as f64)
        .sum()
}

/// The median of `values` (NaN when empty): the middle value, or halfway between the two middle
/// ones, as `glimpse bench` interpolates its percentiles.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let Some(last) = values.len().checked_sub(1) else {
        return f64::NAN;
    };
    let (low, high) = (values[last / 2], values[last.div_ceil(2)]);
    low + (high - low) * 0.5
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_value_or_halfway_between_the_two_middle_ones() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [0.5]), 0.5);
        assert!(median(&mut []).is_nan());
    }
}
