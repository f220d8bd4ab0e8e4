//! `distgate etf print`: one term, or a captured stream frame by frame.

use distgate_codec::control::op_name;
use distgate_codec::frame::Frames;
use distgate_codec::message::{Decoded, Decoder, Framing, Refs};
use distgate_codec::print::{self, AtomRefs};
use distgate_codec::Walker;
use std::io::Write;

/// A capture of real OTP 25 traffic (one direction, after the handshake), recorded by the
/// test suite's relay between two nodes: atom-cache refs, a fragmented 1 MB message, funs,
/// spawn requests, monitors. Regenerate with `cargo test -p distgate --test sample -- --ignored`.
pub const SAMPLE: &[u8] = include_bytes!("../samples/rich-a2b.dist");

/// Frames larger than this are refused when printing (the proxy's limit is configurable).
const MAX_FRAME: usize = 128 << 20;

struct MsgRefs<'r, 'a>(&'r Refs<'a>);
impl AtomRefs for MsgRefs<'_, '_> {
    fn resolve(&self, idx: u8) -> Option<&str> {
        self.0.resolve(idx)
    }
}

pub fn print_term(bytes: &[u8], name: &str, out: &mut dyn Write) -> Result<(), String> {
    let text = print::format_versioned(bytes).map_err(|e| format!("{name}: {e}"))?;
    writeln!(out, "{text}").map_err(|e| e.to_string())
}

/// Cut a printed term to `max` characters (0: no limit), saying how much was left out, so a
/// 1 MB binary does not become a 4 MB line.
fn elide(mut s: String, max: usize) -> String {
    if max == 0 || s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let more = s.len() - cut;
    s.truncate(cut);
    s.push_str(&format!("…(+{more} chars)"));
    s
}

pub fn print_frames(bytes: &[u8], name: &str, max_width: usize, out: &mut dyn Write) -> Result<(), String> {
    let mut dec = Decoder::default();
    let mut w = Walker::default();
    for (n, item) in Frames::new(bytes, MAX_FRAME).enumerate() {
        let item = item.map_err(|e| format!("{name}: frame {n}: {e}"))?;
        let Some(data) = item.data else {
            writeln!(out, "{n} @{}: tick", item.offset).map_err(|e| e.to_string())?;
            continue;
        };
        let line = match dec.decode(data).map_err(|e| format!("{name}: frame {n} (stream byte {}): {e}", item.offset))? {
            Decoded::Tick => "tick".to_string(),
            Decoded::Fragment { seq, frag_id } => format!("fragment seq={seq} id={frag_id} ({} bytes)", data.len()),
            // The printer decodes whole messages (streaming is off); kept for completeness.
            Decoded::Streamed { frag_id, .. } => format!("streamed fragment id={frag_id} ({} bytes)", data.len()),
            Decoded::Message(m) => {
                let refs = MsgRefs(&m.refs);
                w.set_cache_refs(m.refs.table().map(|t| t.nrefs));
                let (ctl, _) = print::format_term(m.bytes, m.control_range.start, &refs, &mut w)
                    .map_err(|e| format!("{name}: frame {n}: control: {e}"))?;
                let framing = match m.framing {
                    Framing::PassThrough => "pass-through".to_string(),
                    Framing::DistHeader => "dist-header".to_string(),
                    Framing::Fragmented { seq, fragments } => format!("fragmented seq={seq} fragments={fragments}"),
                    Framing::StreamStart { seq, frag_id } => format!("stream start seq={seq} id={frag_id}"),
                };
                let nrefs = m.refs.table().map(|t| t.nrefs).unwrap_or(0);
                let mut line = format!("{} {framing} refs={nrefs} control={}", op_name(m.control.op()), elide(ctl, max_width));
                if let Some(p) = m.payload.clone() {
                    let (pl, _) = print::format_term(m.bytes, p.start, &refs, &mut w)
                        .map_err(|e| format!("{name}: frame {n}: payload: {e}"))?;
                    line.push_str(" payload=");
                    line.push_str(&elide(pl, max_width));
                }
                line
            }
        };
        writeln!(out, "{n} @{}: {line}", item.offset).map_err(|e| e.to_string())?;
    }
    Ok(())
}
