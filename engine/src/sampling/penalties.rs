//! Token-occurrence bookkeeping for one sequence and the penalties computed from it.
//!
//! Conventions (as vLLM; HF has no presence/frequency penalty):
//! - the repetition penalty (Keskar et al. 2019, CTRL; HF `RepetitionPenaltyLogitsProcessor`)
//!   applies once to every token seen in the prompt *or* the output;
//! - presence and frequency penalties (OpenAI) count only generated tokens.
//!
//! Order within this step, as vLLM's `apply_penalties`: repetition, then frequency, then presence.
//! Counts are kept sparsely (one entry per distinct token seen), so a sequence costs memory in
//! proportion to what it has seen, not to the vocabulary.

use std::collections::HashMap;

use super::filters::Candidate;
use super::params::SamplingParams;

/// How often one token occurred in a sequence so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Occurrences {
    in_prompt: bool,
    generated: u32,
}

/// The three penalties of one sequence and the occurrence counts they read.
pub(crate) struct Penalties {
    repetition: f32,
    presence: f32,
    frequency: f32,
    seen: HashMap<u32, Occurrences>,
}

impl Penalties {
    /// Counts `prompt_ids` for the repetition penalty. Ids must be below the vocabulary size
    /// (the caller checks).
    pub(crate) fn new(params: &SamplingParams, prompt_ids: &[u32]) -> Self {
        let mut seen = HashMap::with_capacity(prompt_ids.len() + 64);
        for &id in prompt_ids {
            seen.entry(id).or_insert(Occurrences::default()).in_prompt = true;
        }
        Self {
            repetition: params.repetition_penalty,
            presence: params.presence_penalty,
            frequency: params.frequency_penalty,
            seen,
        }
    }

    /// Counts one generated token. Amortised O(1); the map grows only on a token not seen before.
    pub(crate) fn record(&mut self, id: u32) {
        self.seen.entry(id).or_default().generated += 1;
    }

    /// Applies the penalties to `candidates`, which must hold the whole vocabulary in id order
    /// (`candidates[id].id == id`). Touches only the tokens seen so far.
    pub(crate) fn apply(&self, candidates: &mut [Candidate]) {
        for (&id, occ) in &self.seen {
            let candidate = &mut candidates[id as usize];
            debug_assert_eq!(candidate.id, id, "penalties need candidates in id order");
            candidate.weight = self.penalised(candidate.weight, *occ);
        }
    }

    fn penalised(&self, logit: f32, occ: Occurrences) -> f32 {
        let mut logit = if logit < 0.0 {
            logit * self.repetition
        } else {
            logit / self.repetition
        };
        logit -= self.frequency * occ.generated as f32;
        if occ.generated > 0 {
            logit -= self.presence;
        }
        logit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(logits: &[f32]) -> Vec<Candidate> {
        let mut out = Vec::new();
        super::super::filters::fill(&mut out, logits);
        out
    }

    fn weights(c: &[Candidate]) -> Vec<f32> {
        c.iter().map(|c| c.weight).collect()
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits_once() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let p = Penalties::new(&params, &[0, 1, 1, 1]);
        let mut c = identity(&[4.0, -4.0, 4.0]);
        p.apply(&mut c);
        assert_eq!(weights(&c), vec![2.0, -8.0, 4.0]);
    }

    #[test]
    fn presence_and_frequency_count_only_generated_tokens() {
        let params = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..Default::default()
        };
        let mut p = Penalties::new(&params, &[0, 1]);
        p.record(1);
        p.record(2);
        p.record(2);
        let mut c = identity(&[1.0, 1.0, 1.0, 1.0]);
        p.apply(&mut c);
        // token 0: prompt only; token 1: generated once; token 2: generated twice.
        assert_eq!(
            weights(&c),
            vec![1.0, 1.0 - 0.25 - 0.5, 1.0 - 0.5 - 0.5, 1.0]
        );
    }

    #[test]
    fn repetition_applies_before_frequency_and_presence() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 1.0,
            frequency_penalty: 1.0,
            ..Default::default()
        };
        let mut p = Penalties::new(&params, &[]);
        p.record(0);
        let mut c = identity(&[3.0]);
        p.apply(&mut c);
        assert_eq!(weights(&c), vec![3.0 / 2.0 - 1.0 - 1.0]);
    }
}
