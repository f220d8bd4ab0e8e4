//! distgate-codec: the Erlang External Term Format and distribution framing, decoded in place.
//!
//! Pure functions and sans-IO state over `&[u8]`: no sockets, no clocks, no allocation on the
//! walk path. Layers, bottom up:
//! - [`term`]: the iterative term walker (every tag, borrowed views, exact extents);
//! - [`frame`]: the 4-byte-length stream splitter (ticks included);
//! - [`atom_cache`]: the `131 68` distribution header and the per-direction 2048-slot cache;
//! - [`fragment`]: `131 69` / `131 70` fragment headers and reassembly under a byte cap;
//! - [`control`]: the control message as a typed enum, and the payload's extent;
//! - [`fun`]: every NEW_FUN_EXT / EXPORT_EXT in a message with its offsets and fields;
//! - [`rewrite`]: a new frame from an old one with byte ranges replaced, lengths fixed;
//! - [`print`]: `io_lib:format("~w", …)`-exact printing;
//! - [`scan`]: memchr/SWAR fast paths with their scalar twins.

pub mod atom_cache;
pub mod beam;
pub mod control;
pub mod error;
pub mod frame;
pub mod fun;
pub mod inflate;
pub mod message;
pub mod print;
pub mod rewrite;
pub mod scan;
pub mod tag;
pub mod term;

pub use error::{DistErrorKind, Error, ErrorKind, Result};
pub use term::{Atom, Limits, Term, Visitor, Walker};
