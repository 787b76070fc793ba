//! [`Sampler`]: the sampling state of one sequence and the step that turns its logit row into a
//! token.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::filters::{self, Candidate};
use super::kernels;
use super::logprobs::{self, TokenLogprob};
use super::params::SamplingParams;
use super::penalties::Penalties;
use crate::error::{EngineError, Result};

/// What one sampling step produced.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    /// The chosen token.
    pub token_id: u32,
    /// Its log probability under the raw model distribution (`log_softmax` of the unprocessed
    /// logits), whatever penalties, temperature or filters chose it; `None` unless the request
    /// asked for log probabilities (`logprobs: Some(_)`).
    pub logprob: Option<f32>,
    /// The `logprobs` most likely tokens of the raw distribution, most likely first (ties: lowest
    /// id first); empty when `logprobs` is `None` or `Some(0)`. May or may not contain the chosen
    /// token.
    pub top_logprobs: Vec<TokenLogprob>,
}

/// The sampling state of one sequence: its parameters, its own random stream, the token counts
/// its penalties read, and scratch reused by every step.
///
/// Each sequence draws from its own ChaCha8 stream, advanced only by its own steps (one `f64` per
/// non-greedy step, none per greedy step), so a seeded sequence yields the same tokens whatever
/// else shares its batch, and samplers of one batch may run on different threads (`Send`). The
/// sampler records every token it returns for the penalties; a token chosen elsewhere must not be
/// fed back.
///
/// Memory: 8 bytes per vocabulary entry of scratch, allocated on the first step that needs it
/// (never for greedy decoding without penalties), plus one small entry per distinct token seen
/// when a penalty is active. Deliberately not `Clone`: a copy would repeat this sequence's random
/// stream.
pub struct Sampler {
    params: SamplingParams,
    vocab_size: usize,
    rng: ChaCha8Rng,
    /// `None` when every penalty is neutral: nothing is counted or applied.
    penalties: Option<Penalties>,
    /// The candidate list of the current step, `vocab_size` capacity once first used.
    candidates: Vec<Candidate>,
}

impl std::fmt::Debug for Sampler {
    /// Parameters and sizes only: the scratch holds a whole vocabulary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("params", &self.params)
            .field("vocab_size", &self.vocab_size)
            .field("penalised", &self.penalties.is_some())
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// A sampler for a sequence whose prompt is `prompt_ids`, over a vocabulary of `vocab_size`.
    ///
    /// Fails with [`EngineError::InvalidParameter`] when `params` is out of range, the vocabulary
    /// is empty, or a prompt id is not below `vocab_size`.
    pub fn new(params: SamplingParams, prompt_ids: &[u32], vocab_size: usize) -> Result<Self> {
        params.validate()?;
        if vocab_size == 0 || vocab_size > u32::MAX as usize {
            return Err(EngineError::InvalidParameter {
                field: "vocab_size",
                message: format!("must be in [1, {}], got {vocab_size}", u32::MAX),
            });
        }
        if let Some(bad) = prompt_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(EngineError::InvalidParameter {
                field: "prompt_token_ids",
                message: format!(
                    "every id must be below the vocabulary size {vocab_size}, got {bad}"
                ),
            });
        }
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        let penalties = params
            .has_penalties()
            .then(|| Penalties::new(&params, prompt_ids));
        Ok(Self {
            params,
            vocab_size,
            rng,
            penalties,
            candidates: Vec::new(),
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from this sequence's logit row (`[vocab_size]`) and records it for
    /// the penalties.
    ///
    /// Processing order (as HF `generate`): penalties → temperature → top-k → top-p → min-p →
    /// draw. Temperature 0 is greedy: the argmax of the penalised row (lowest id among ties),
    /// found in one pass when no penalty is active, with no random draw.
    ///
    /// Panics if `logits.len() != vocab_size` (a caller bug). NaN logits count as `-inf`; a row
    /// with no finite entry gives token 0 when greedy and a uniform draw otherwise.
    pub fn sample(&mut self, logits: &[f32]) -> SampledToken {
        self.check_row(logits);
        let token_id = if self.params.is_greedy() {
            self.greedy_token(logits)
        } else {
            self.prepare_candidates(logits);
            let u = self.rng.random::<f64>();
            filters::draw(&self.candidates, u)
        };
        if let Some(penalties) = &mut self.penalties {
            penalties.record(token_id);
        }
        let Some(n) = self.params.logprobs else {
            return SampledToken {
                token_id,
                logprob: None,
                top_logprobs: Vec::new(),
            };
        };
        let log_sum_exp = logprobs::log_sum_exp(logits);
        SampledToken {
            token_id,
            logprob: Some(logits[token_id as usize] - log_sum_exp),
            top_logprobs: logprobs::top_n(logits, n, log_sum_exp),
        }
    }

    /// Writes into `out` (resized to `vocab_size`) the probability of each token at the next
    /// step: the distribution [`Sampler::sample`] would draw from, zero for filtered tokens (one-hot
    /// on the argmax when greedy). Draws nothing and records nothing.
    ///
    /// Panics if `logits.len() != vocab_size` (a caller bug).
    pub fn distribution(&mut self, logits: &[f32], out: &mut Vec<f32>) {
        self.check_row(logits);
        out.clear();
        out.resize(self.vocab_size, 0.0);
        if self.params.is_greedy() {
            let id = self.greedy_token(logits);
            out[id as usize] = 1.0;
            return;
        }
        self.prepare_candidates(logits);
        filters::normalize(&mut self.candidates);
        for c in &self.candidates {
            out[c.id as usize] = c.weight;
        }
    }

    fn check_row(&self, logits: &[f32]) {
        assert_eq!(
            logits.len(),
            self.vocab_size,
            "a logit row must have one entry per vocabulary token"
        );
    }

    /// Leaves in `candidates` the tokens that survive every filter, weighted by their (not
    /// necessarily normalised) probability.
    fn prepare_candidates(&mut self, logits: &[f32]) {
        let candidates = &mut self.candidates;
        filters::fill(candidates, logits);
        if let Some(penalties) = &self.penalties {
            penalties.apply(candidates);
        }
        filters::top_k(candidates, self.params.top_k as usize);
        let total = filters::softmax(candidates, self.params.temperature);
        filters::top_p(candidates, self.params.top_p, total);
        filters::min_p(candidates, self.params.min_p);
    }

    /// Argmax after penalties (lowest id among ties): one pass over the row without penalties;
    /// with them, a copy of the row is penalised first.
    fn greedy_token(&mut self, logits: &[f32]) -> u32 {
        let Some(penalties) = &self.penalties else {
            return kernels::argmax(logits);
        };
        filters::fill(&mut self.candidates, logits);
        penalties.apply(&mut self.candidates);
        let mut best = self.candidates[0];
        for c in &self.candidates[1..] {
            if c.weight > best.weight {
                best = *c;
            }
        }
        best.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_can_move_to_worker_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Sampler>();
    }

    #[test]
    fn debug_output_leaves_out_the_scratch() {
        let mut sampler = Sampler::new(SamplingParams::default(), &[], 50_000).unwrap();
        sampler.sample(&vec![0.0; 50_000]);
        assert!(format!("{sampler:?}").len() < 1000);
    }

    #[test]
    fn greedy_picks_the_lowest_argmax_and_consumes_no_randomness() {
        let params = SamplingParams {
            seed: Some(5),
            ..SamplingParams::greedy()
        };
        let mut greedy = Sampler::new(params, &[], 4).unwrap();
        let untouched = greedy.rng.clone();
        for _ in 0..3 {
            assert_eq!(greedy.sample(&[0.1, 2.0, -1.0, 2.0]).token_id, 1);
        }
        assert_eq!(greedy.rng, untouched);
    }

    #[test]
    fn a_sampling_step_consumes_exactly_one_draw() {
        let params = SamplingParams {
            seed: Some(5),
            top_p: 0.5,
            ..SamplingParams::default()
        };
        let mut sampler = Sampler::new(params, &[], 4).unwrap();
        let mut expected = sampler.rng.clone();
        sampler.sample(&[0.1, 2.0, -1.0, 2.0]);
        expected.random::<f64>();
        assert_eq!(sampler.rng, expected);
    }
}
