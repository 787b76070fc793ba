//! The device-neutral bookkeeping of one forward pass, shared by every backend: where each
//! sequence's rows sit in the flat batch ([`SequenceRows`], [`plan_sequences`]) and one evicting
//! sequence's progress through the layers ([`PendingEviction`]: its budgets, scoring plan and the
//! selections made so far, reported as a [`SequenceEviction`] at the end of the pass). How a
//! layer is scored, selected and compacted is each backend's own (`run_layer` of the CPU's
//! `evict` module, the CUDA backend's `evict` module).

use std::ops::Range;
use std::time::Duration;

use crate::batch::{ForwardBatch, SequenceEviction};
use crate::eviction::{LayerSelection, PromptEviction, ScoringPlan};

/// One sequence's rows in the flat batch: its tokens, then its lookahead rows if it evicts
/// with LookaheadKV in this pass.
pub struct SequenceRows {
    pub first_row: usize,
    pub num_tokens: usize,
    pub num_lookahead: usize,
    /// The sequence's index among the sequences with lookahead rows in this pass (meaningful
    /// when `num_lookahead > 0`).
    pub lookahead_index: usize,
    /// Scoring and selection under way in this pass, if the sequence evicts.
    pub eviction: Option<PendingEviction>,
}

impl SequenceRows {
    /// Rows of the lookahead tokens.
    pub fn lookahead_rows(&self) -> Range<usize> {
        let start = self.first_row + self.num_tokens;
        start..start + self.num_lookahead
    }

    /// Every row of the sequence: its tokens, then its lookahead rows.
    pub fn rows(&self) -> Range<usize> {
        self.first_row..self.first_row + self.num_tokens + self.num_lookahead
    }

    /// Prompt length of an evicting sequence: lookahead positions start there.
    pub fn prompt_len(&self) -> usize {
        self.eviction
            .as_ref()
            .map_or(0, |pending| pending.prompt_len())
    }
}

/// Lays out the flat batch of a model of `num_layers` layers into `sequences` (cleared first):
/// each sequence's token rows, followed by its lookahead rows if it evicts with LookaheadKV.
/// Returns the number of sequences with lookahead rows.
pub fn plan_sequences(
    batch: &ForwardBatch<'_>,
    num_layers: usize,
    sequences: &mut Vec<SequenceRows>,
) -> usize {
    sequences.clear();
    let (mut next_row, mut num_lookahead_sequences) = (0, 0);
    for seq in &batch.sequences {
        let eviction = seq
            .eviction
            .and_then(|policy| policy.for_prompt(seq.num_entries_after()))
            .map(|prompt| PendingEviction::new(prompt, num_layers));
        let num_lookahead = eviction.as_ref().map_or(0, PendingEviction::lookahead_rows);
        sequences.push(SequenceRows {
            first_row: next_row,
            num_tokens: seq.token_ids.len(),
            num_lookahead,
            lookahead_index: num_lookahead_sequences,
            eviction,
        });
        next_row += seq.token_ids.len() + num_lookahead;
        num_lookahead_sequences += usize::from(num_lookahead > 0);
    }
    num_lookahead_sequences
}

/// One sequence's eviction while the pass runs through the layers.
pub struct PendingEviction {
    pub prompt: PromptEviction,
    pub layer_budgets: Vec<usize>,
    pub scoring: Option<ScoringPlan>,
    selections: Vec<LayerSelection>,
    pub times: EvictionTimes,
}

/// Time spent in each step of one sequence's eviction during a pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct EvictionTimes {
    pub scoring: Duration,
    pub selection: Duration,
    pub compaction: Duration,
}

impl EvictionTimes {
    fn total(&self) -> Duration {
        self.scoring + self.selection + self.compaction
    }
}

impl std::ops::AddAssign for EvictionTimes {
    fn add_assign(&mut self, other: Self) {
        self.scoring += other.scoring;
        self.selection += other.selection;
        self.compaction += other.compaction;
    }
}

impl PendingEviction {
    /// Starts evicting `prompt` from a model of `num_layers` layers.
    pub fn new(prompt: PromptEviction, num_layers: usize) -> Self {
        Self {
            prompt,
            layer_budgets: prompt.layer_budgets(num_layers),
            scoring: prompt.scoring_plan(),
            selections: Vec::with_capacity(num_layers),
            times: EvictionTimes::default(),
        }
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt.prompt_len()
    }

    /// Lookahead rows the pass must append after the prompt (0 unless LookaheadKV).
    pub fn lookahead_rows(&self) -> usize {
        self.scoring.map_or(0, |plan| plan.extra_rows())
    }

    /// Rows of the flat batch whose queries score, for a sequence whose `num_tokens` token rows
    /// start at `first_row` (empty when the policy needs no scores).
    pub fn scoring_rows(&self, first_row: usize, num_tokens: usize) -> Range<usize> {
        let end = first_row + num_tokens;
        self.scoring
            .map_or(end..end, |plan| plan.query_rows(first_row, num_tokens))
    }

    /// Records the next layer's selection (layers complete in order).
    pub fn push_selection(&mut self, selection: LayerSelection) {
        self.selections.push(selection);
    }

    /// Time spent so far in each step.
    pub fn times(&self) -> EvictionTimes {
        self.times
    }

    /// The report of a finished pass for batch sequence `sequence`.
    pub fn finish(self, sequence: usize) -> SequenceEviction {
        let layer_kept: Vec<usize> = self
            .selections
            .iter()
            .map(|layer| layer.kept.iter().map(Vec::len).max().unwrap_or(0))
            .collect();
        SequenceEviction {
            sequence,
            prompt_len: self.prompt.prompt_len(),
            kept_entries: layer_kept.iter().copied().max().unwrap_or(0),
            layer_kept,
            selections: self.selections,
            time: self.times.total(),
        }
    }
}
