//! `glimpse eval`: how much of a full-cache answer survives each KV eviction policy at each
//! budget. Every policy answers the same prompts greedily; each answer is compared token by
//! token and distribution by distribution with the full-cache answer, beside the share of
//! attention mass the policy kept and what it costs in prefill time.

pub mod accuracy;
pub mod report;
pub mod run;
