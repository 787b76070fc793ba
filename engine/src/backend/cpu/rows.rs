//! The layout of one forward pass's flat rows per sequence, and the side buffer that holds the
//! lookahead rows' keys and values (which never enter the cache, docs/design.md §3).

use std::ops::Range;

use super::attention::ExtraKv;
use super::evict::PendingEviction;

/// One sequence's rows in the flat batch: its tokens, then its lookahead rows if it evicts
/// with LookaheadKV in this pass.
pub struct SequenceRows {
    pub first_row: usize,
    pub num_tokens: usize,
    pub num_lookahead: usize,
    /// The sequence's slot in [`LookaheadKv`] (meaningful when `num_lookahead > 0`).
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

    /// Prompt length of an evicting sequence: lookahead positions start there.
    pub fn prompt_len(&self) -> usize {
        self.eviction
            .as_ref()
            .map_or(0, |pending| pending.prompt_len())
    }
}

/// Keys and values of the current layer's lookahead rows, per evicting sequence: head-major for
/// attention, laid out like a cache block of `capacity` slots (values
/// `[num_kv_heads][capacity][head_dim]`, keys transposed `[num_kv_heads][head_dim][capacity]`), and
/// keys also row-major `[capacity, num_kv_heads, head_dim]` as eviction scoring takes them.
#[derive(Default)]
pub struct LookaheadKv {
    capacity: usize,
    num_kv_heads: usize,
    head_dim: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    key_rows: Vec<f32>,
}

impl LookaheadKv {
    /// Sizes the buffer for `num_sequences` sequences of `capacity` lookahead rows.
    pub fn reset(
        &mut self,
        num_sequences: usize,
        capacity: usize,
        num_kv_heads: usize,
        head_dim: usize,
    ) {
        (self.capacity, self.num_kv_heads, self.head_dim) = (capacity, num_kv_heads, head_dim);
        let len = num_sequences * capacity * num_kv_heads * head_dim;
        self.keys.resize(len, 0.0);
        self.values.resize(len, 0.0);
        self.key_rows.resize(len, 0.0);
    }

    fn per_sequence(&self) -> usize {
        self.capacity * self.num_kv_heads * self.head_dim
    }

    /// Stores lookahead row `row` of sequence `index` (`k`, `v`: `[num_kv_heads · head_dim]`).
    pub fn write(&mut self, index: usize, row: usize, k: &[f32], v: &[f32]) {
        let (d, base) = (self.head_dim, index * self.per_sequence());
        for head in 0..self.num_kv_heads {
            let head_start = base + head * self.capacity * d;
            let at = head_start + row * d;
            self.values[at..at + d].copy_from_slice(&v[head * d..(head + 1) * d]);
            let key_column = self.keys[head_start + row..]
                .iter_mut()
                .step_by(self.capacity);
            for (dst, &src) in key_column.zip(&k[head * d..(head + 1) * d]) {
                *dst = src;
            }
        }
        let at = base + row * self.num_kv_heads * d;
        self.key_rows[at..at + k.len()].copy_from_slice(k);
    }

    /// The first `count` lookahead keys and values of sequence `index`, for attention.
    pub fn extra(&self, index: usize, count: usize) -> ExtraKv<'_> {
        let span = index * self.per_sequence()..(index + 1) * self.per_sequence();
        ExtraKv {
            keys_t: &self.keys[span.clone()],
            values: &self.values[span],
            capacity: self.capacity,
            count,
        }
    }

    /// All lookahead keys of sequence `index`, row-major, for scoring.
    pub fn key_rows(&self, index: usize) -> &[f32] {
        &self.key_rows[index * self.per_sequence()..(index + 1) * self.per_sequence()]
    }
}
