//! Varlen forward batches.
