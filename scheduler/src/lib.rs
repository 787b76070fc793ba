//! Glimpse scheduler: pure bookkeeping for continuous batching (no tensors, threads or clocks).
//!
//! Owns: the KV block pool ([`BlockAllocator`]), each sequence's [`BlockTable`], sequence
//! states and the continuous-batching policy ([`Scheduler`]): chunked prefill under a token
//! budget, FCFS admission, preemption by recompute, the accounting of KV eviction (a
//! sequence may keep fewer cache entries than the positions it consumed) and automatic prefix
//! caching over hashes of full blocks ([`BlockHasher`]). Must not know: the model, tensors,
//! devices or the server.
//!
//! The caller drives it: [`Scheduler::add`] requests, then each step [`Scheduler::schedule`]
//! → run the [`Plan`] → [`Scheduler::update`]; [`Scheduler::abort`] and
//! [`Scheduler::apply_eviction`] between steps.
//!
//! ```
//! use glimpse_scheduler::{Request, Scheduler, SchedulerConfig, SeqId, SeqOutput, StepResult};
//!
//! let mut scheduler = Scheduler::new(SchedulerConfig::default())?;
//! scheduler.add(Request { id: SeqId(7), num_prompt_tokens: 100, max_tokens: 2, last_chunk: Default::default(), block_hashes: Vec::new() })?;
//! while scheduler.has_unfinished() {
//!     let plan = scheduler.schedule();
//!     // The engine runs `plan` here: each chunk's tokens go to positions `first_position..`
//!     // and cache entries `first_cache_entry..` of `scheduler.block_table(seq)`.
//!     let sampled = plan.prefills.iter().filter(|c| c.is_last_chunk).map(|c| c.seq);
//!     let outputs = sampled
//!         .chain(plan.decodes.iter().map(|d| d.seq))
//!         .map(|seq| SeqOutput { seq, appended_tokens: 1, finish: None })
//!         .collect();
//!     scheduler.update(&StepResult { outputs })?;
//! }
//! assert_eq!(scheduler.allocator().num_used(), 0);
//! # Ok::<(), glimpse_scheduler::SchedulerError>(())
//! ```

mod block_allocator;
mod block_table;
mod config;
mod error;
mod ids;
mod plan;
mod pool_sizing;
mod prefix_cache;
mod scheduler;
mod sequence;

pub use block_allocator::BlockAllocator;
pub use block_table::BlockTable;
pub use config::SchedulerConfig;
pub use error::{Result, SchedulerError};
pub use ids::{BlockId, SeqId};
pub use plan::{
    DecodeStep, FinishedSeq, Plan, PrefillChunk, PrefixCacheStats, SeqOutput, StepResult,
};
pub use pool_sizing::{KvPoolSize, num_blocks_for_budget};
pub use prefix_cache::{BlockHash, BlockHasher};
pub use scheduler::{EvictionOutcome, Scheduler};
pub use sequence::{EvictionBound, FinishReason, LastChunk, Request, SeqStatus, SequenceInfo};
