//! Test support for distgate: drive real Erlang/OTP nodes.
//!
//! Requires `erl` and `erlc` (Debian: `apt-get install erlang-nox`); tests
//! using the kit panic with that hint when they are missing.
//!
//! * [`erl`] — find the tools, `erl -eval`, `erlc`, unique names, and the
//!   kit's own Erlang modules (`erl/*.erl`, compiled on first use).
//! * [`node`] — a running node ([`node::Node`]) without an epmd daemon
//!   (`dg_epmd`), controlled by evaluating expressions over its stdin.
//! * [`relay`] — a recording TCP relay that splits a distribution
//!   connection into handshake and framed stream, per direction.
//! * [`capture`] — one call to record a scripted A→B exchange, plus
//!   [`capture::RICH_SCENARIO`].
//! * [`daemon`] — the `distgate` binary run with a config file, its log
//!   lines as readiness signals, signals, `/metrics` scraped.
//! * [`corpus`] — random terms encoded by erl, and asking erl to decode.
//!
//! Everything is std-only and every wait has a deadline: a hang becomes a
//! test failure with the nodes' output, never a stuck test run.

pub mod capture;
pub mod corpus;
pub mod daemon;
pub mod erl;
pub mod node;
pub mod relay;
mod util;

pub use capture::{capture_scenario, run_scenario, ScenarioRun, RICH_SCENARIO};
pub use corpus::{
    binary_to_term_canonical, binary_to_term_w, random_terms, term_from_expr, CorpusTerm,
};
pub use node::{Node, NodeOptions};
pub use relay::{Capture, Relay};
pub use util::TempDir;
