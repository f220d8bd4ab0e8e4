//! distgate benchmarks.
