//! Training and evaluation prompts, and the answers the model gives them — all produced by the
//! engine's own forward pass through an [`OfflineRunner`].
//!
//! Prompts come from a file or, with no text at hand, from the model itself: stories sampled from
//! the beginning-of-sequence token with a seed and cut at a random length, the paper's recipe for
//! pre-training text ("truncate at a random point"). Answers are the model's greedy continuation
//! with the full cache, the target the lookahead module learns to anticipate.

use std::ops::RangeInclusive;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::KvCacheDtype;
use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::runner::OfflineRunner;
use crate::sampling::{Sampler, SamplingParams};

/// Sequences generated at once: enough to amortise a pass over a tiny model's weights.
const CONCURRENCY: usize = 16;

/// A prompt and the model's full-cache greedy answer to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
}

/// Draws `count` prompts from `model` itself: each is sampled (temperature 1) from `start`
/// (usually the BOS token) with its own seed derived from `seed`, until an EOS or the longest
/// allowed length, then cut at a uniformly drawn length in `lengths`. Drafts that end before the
/// shortest allowed length are dropped and redrawn. `on_prompt` reports progress.
///
/// Fails when `lengths` does not fit the model or too many drafts in a row end early (the model
/// cannot write prompts this long), and with the runner's errors.
pub fn sample_prompts(
    model: &Model,
    start: &[u32],
    count: usize,
    seed: u64,
    lengths: RangeInclusive<usize>,
    mut on_prompt: impl FnMut(),
) -> Result<Vec<Vec<u32>>> {
    let (shortest, longest) = (*lengths.start(), *lengths.end());
    if start.is_empty()
        || shortest < start.len()
        || shortest > longest
        || longest > model.config.max_model_len
    {
        return Err(EngineError::InvalidParameter {
            field: "prompt lengths",
            message: format!(
                "need {} <= shortest <= longest <= max_model_len {}, got {shortest}..={longest}",
                start.len().max(1),
                model.config.max_model_len
            ),
        });
    }
    let mut runner = OfflineRunner::cpu(
        model,
        16,
        CONCURRENCY * (longest + 16),
        KvCacheDtype::F32,
        None,
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let eos = model.eos_token_ids();
    let mut prompts = Vec::with_capacity(count);
    let mut failed_waves = 0;
    while prompts.len() < count {
        let wave = CONCURRENCY.min(count - prompts.len());
        let samplers = (0..wave)
            .map(|_| {
                let params = SamplingParams {
                    seed: Some(rng.random()),
                    ..SamplingParams::default()
                };
                Sampler::new(params, start, model.config.vocab_size)
            })
            .collect::<Result<Vec<_>>>()?;
        let starts = vec![start.to_vec(); wave];
        let drafts =
            runner.generate(&starts, samplers, longest - start.len(), &eos, wave, || {})?;
        let before = prompts.len();
        for draft in drafts {
            let story: Vec<u32> = start
                .iter()
                .chain(draft.iter().take_while(|t| !eos.contains(t)))
                .copied()
                .collect();
            if story.len() >= shortest {
                let cut = rng.random_range(shortest..=story.len().min(longest));
                prompts.push(story[..cut].to_vec());
                on_prompt();
            }
        }
        failed_waves = if prompts.len() == before {
            failed_waves + 1
        } else {
            0
        };
        if failed_waves >= 8 {
            return Err(EngineError::InvalidParameter {
                field: "prompt lengths",
                message: format!(
                    "the model ended {} drafts in a row before {shortest} tokens",
                    8 * CONCURRENCY
                ),
            });
        }
    }
    Ok(prompts)
}

/// Pairs each prompt with the model's greedy answer under the full cache: up to `answer_tokens`
/// tokens, ending early at an EOS (kept, since the answer's attention includes it). Prompts whose
/// answer would run past `max_model_len` are refused. `on_answer` reports progress.
pub fn greedy_answers(
    model: &Model,
    prompts: Vec<Vec<u32>>,
    answer_tokens: usize,
    mut on_answer: impl FnMut(),
) -> Result<Vec<Example>> {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if let Some(p) = prompts
        .iter()
        .find(|p| p.is_empty() || p.len() + answer_tokens > model.config.max_model_len)
    {
        return Err(EngineError::InvalidParameter {
            field: "prompt",
            message: format!(
                "a prompt of {} tokens plus a {answer_tokens}-token answer does not fit in max_model_len {} (or is empty)",
                p.len(),
                model.config.max_model_len
            ),
        });
    }
    let mut runner = OfflineRunner::cpu(
        model,
        16,
        CONCURRENCY * (longest + answer_tokens + 16),
        KvCacheDtype::F32,
        None,
    )?;
    let samplers = prompts
        .iter()
        .map(|p| Sampler::new(SamplingParams::greedy(), p, model.config.vocab_size))
        .collect::<Result<Vec<_>>>()?;
    let answers = runner.generate(
        &prompts,
        samplers,
        answer_tokens,
        &model.eos_token_ids(),
        CONCURRENCY,
        &mut on_answer,
    )?;
    Ok(prompts
        .into_iter()
        .zip(answers)
        .map(|(prompt, answer)| Example { prompt, answer })
        .collect())
}
