//! Library side of the `glimpse` binary.

pub mod bench;
