//! Glimpse engine: the model runtime every other crate stands on.
//!
//! It loads a Hugging Face model folder ([`model::Model`]), runs the Llama-family forward pass over a
//! paged KV cache for a varlen batch of sequences ([`backend::Backend`]), samples
//! ([`sampling`]), and turns token ids back into streamed text ([`tokenizer`]). It also owns the KV
//! eviction policies ([`eviction`]) and the LookaheadKV module they can score with ([`lookahead`]),
//! and that module's training ([`train`]), because all three work on the model's own activations;
//! offline jobs drive sequences through a backend with [`runner`]. It knows nothing of
//! scheduling policy, the network or metrics exporters: callers hand it a [`batch::ForwardBatch`] and
//! get logits back.

pub mod backend;
pub mod batch;
pub mod config;
pub mod error;
pub mod eviction;
#[doc(hidden)]
pub mod fuzz;
pub mod hub;
pub mod loader;
pub mod lookahead;
pub mod math;
pub mod model;
pub mod runner;
pub mod sampling;
#[cfg(test)]
mod test_util;
pub mod tokenizer;
pub mod train;

pub use error::{EngineError, Result};
