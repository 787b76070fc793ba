//! Tokenization, chat templates and incremental detokenization (placeholder until the module lands).
