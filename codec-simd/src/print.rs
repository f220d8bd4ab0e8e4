//! `~w` printing (in progress).
