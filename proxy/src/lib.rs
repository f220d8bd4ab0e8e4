//! distgate: a proxy for Erlang distribution traffic.
//!
//! The binary (`main.rs`) is a thin command line over these modules.

pub mod etf;
