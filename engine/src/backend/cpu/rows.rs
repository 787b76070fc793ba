//! The side buffer that holds the lookahead rows' keys and values of the CPU forward pass (they
//! never enter the cache, docs/design.md §3).

use super::attention::ExtraKv;

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
