//! Glimpse scheduler: pure bookkeeping for continuous batching (no tensors, threads or clocks).
