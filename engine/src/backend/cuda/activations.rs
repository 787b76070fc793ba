//! Where one step's activations sit in the device's one f32 step buffer (and the bf16 buffer the
//! GEMM inputs are rounded into): every offset follows from the model's widths, the rows of the
//! flat batch (`T`) and the logits rows (`R`), so a step asks for one allocation, reused from the
//! previous step once it is large enough.

use crate::config::ModelConfig;

/// Offsets (in f32 elements) of each activation of a step, and the buffers' lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationLayout {
    /// Residual stream `[T, hidden]`.
    pub hidden: usize,
    /// Normalised sub-layer input `[T, hidden]`.
    pub normed: usize,
    /// Fused `[T, (H + 2·KV)·D]`, rows `[q | k | v]`.
    pub qkv: usize,
    /// Attention output `[T, H·D]`.
    pub attention: usize,
    /// `[T, 2·I]`, rows `[gate | up]`.
    pub gate_up: usize,
    /// `[T, I]`.
    pub activated: usize,
    /// LoRA's `x·Aᵀ` of the lookahead rows, `[T, 3·rank]` (at most three stacked targets).
    pub low_rank: usize,
    /// `[T]` ones: the left factor of the bias GEMM.
    pub ones: usize,
    /// Final hidden states of the logits rows, then their normalised copy, `[R, hidden]` each.
    pub logits_hidden: usize,
    pub logits_normed: usize,
    /// `[R, vocab]`.
    pub logits: usize,
    /// Elements of the f32 buffer.
    pub len: usize,
    /// Elements of the bf16 buffer: the widest GEMM input of any row.
    pub rounded_len: usize,
}

impl ActivationLayout {
    /// The layout for `rows` rows, `logits_rows` of them wanting logits, and LoRA adapters of
    /// `lora_rank` (0 without a module).
    pub fn new(c: &ModelConfig, rows: usize, logits_rows: usize, lora_rank: usize) -> Self {
        let q_width = c.num_heads * c.head_dim;
        let mut next = 0;
        let mut take = |len: usize| {
            let at = next;
            next += len;
            at
        };
        let hidden = take(rows * c.hidden_size);
        let normed = take(rows * c.hidden_size);
        let qkv = take(rows * c.qkv_width());
        let attention = take(rows * q_width);
        let gate_up = take(rows * 2 * c.intermediate_size);
        let activated = take(rows * c.intermediate_size);
        let low_rank = take(rows * 3 * lora_rank);
        let ones = take(rows);
        let logits_hidden = take(logits_rows * c.hidden_size);
        let logits_normed = take(logits_rows * c.hidden_size);
        let logits = take(logits_rows * c.vocab_size);
        let widest = c.hidden_size.max(q_width).max(c.intermediate_size);
        Self {
            hidden,
            normed,
            qkv,
            attention,
            gate_up,
            activated,
            low_rank,
            ones,
            logits_hidden,
            logits_normed,
            logits,
            len: next,
            rounded_len: rows.max(logits_rows) * widest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::stories260k_config;

    #[test]
    fn activations_are_laid_end_to_end_without_overlap() {
        let c = stories260k_config();
        let (t, r, rank) = (7, 2, 4);
        let l = ActivationLayout::new(&c, t, r, rank);
        let spans = [
            (l.hidden, t * c.hidden_size),
            (l.normed, t * c.hidden_size),
            (l.qkv, t * c.qkv_width()),
            (l.attention, t * c.num_heads * c.head_dim),
            (l.gate_up, t * 2 * c.intermediate_size),
            (l.activated, t * c.intermediate_size),
            (l.low_rank, t * 3 * rank),
            (l.ones, t),
            (l.logits_hidden, r * c.hidden_size),
            (l.logits_normed, r * c.hidden_size),
            (l.logits, r * c.vocab_size),
        ];
        assert_eq!(spans[0].0, 0);
        for pair in spans.windows(2) {
            assert_eq!(pair[0].0 + pair[0].1, pair[1].0);
        }
        assert_eq!(l.logits + r * c.vocab_size, l.len);
        assert!(l.rounded_len >= t * c.intermediate_size && l.rounded_len >= t * c.hidden_size);
    }
}
