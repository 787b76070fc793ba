//! Sampling: turns a row of logits into the next token (placeholder until the sampling module lands).
