//! distgate: a proxy for Erlang distribution traffic.
//!
//! The binary (`main.rs`) is a thin command line over these modules.

pub mod etf;
pub mod fasthash;
pub mod driver;
pub mod epmd;
pub mod handshake;
pub mod link;
pub mod nodes;
pub mod policy;
pub mod runtime;
pub mod stats;
pub mod registry;
pub mod metrics;
