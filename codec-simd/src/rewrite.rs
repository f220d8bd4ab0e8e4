//! Building a new message from an old one with byte ranges replaced.
//!
//! Replacing a term by another of a different length changes the lengths of what encloses it.
//! In the External Term Format only two things declare byte lengths that can enclose a term:
//! a NEW_FUN_EXT's `Size` (when the edit lies in its free variables) and the frame itself.
//! Tuple arities, list lengths and map sizes count terms, and one term replaced by one term
//! keeps them. So a rewrite is: splice the edits, patch every enclosing fun's Size, and
//! re-frame. The atom-cache header is copied as it was: the refs it defines are still defined on
//! the receiver, whether or not the new body uses them; new atoms are encoded inline.

use crate::error::{DistErrorKind, Error, ErrorKind, Result};
use crate::fun::{FunKind, FunSite};
use crate::message::{Framing, Message};
use crate::tag;
use core::ops::Range;

/// Replace `range` (offsets into the buffer the funs were found in) with `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub range: Range<usize>,
    pub bytes: Vec<u8>,
}

/// Why a rewrite was refused.
fn overlap(at: usize) -> Error {
    Error::dist(at, DistErrorKind::BadControl("overlapping edits"))
}

/// Apply `edits` to `buf` into `out` (cleared first), patching the Size of every NEW_FUN_EXT in
/// `funs` that encloses an edit. `funs` must list every NEW_FUN_EXT of `buf` that can enclose an
/// edit (what [`crate::fun::collect`] returns). Edits may come in any order but must not overlap.
pub fn apply(buf: &[u8], funs: &[FunSite<'_>], edits: &[Edit], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    // Order edits by start without reordering the caller's slice.
    let mut order: Vec<usize> = (0..edits.len()).collect();
    order.sort_by_key(|&i| edits[i].range.start);
    for w in order.windows(2) {
        if edits[w[0]].range.end > edits[w[1]].range.start {
            return Err(overlap(edits[w[1]].range.start));
        }
    }
    // Size patches: (offset of the Size field, new value).
    let mut patches: Vec<(usize, u32)> = Vec::new();
    for f in funs {
        let FunKind::New(nf) = f.kind else { continue };
        let mut delta: i64 = 0;
        let mut replaced = false;
        // Everything after the Size field is counted by it.
        let counted = nf.size_at + 4..f.end;
        for e in edits {
            let r = &e.range;
            if r.start <= f.at && f.end <= r.end {
                replaced = true; // the fun itself is replaced: its Size goes with it
                break;
            }
            if r.end <= f.at || r.start >= f.end {
                continue; // disjoint
            }
            if counted.start <= r.start && r.end <= counted.end {
                delta += e.bytes.len() as i64 - r.len() as i64;
            } else {
                // Straddles the fun's boundary or its tag/Size: no valid fun can result.
                return Err(overlap(r.start));
            }
        }
        if replaced || delta == 0 {
            continue;
        }
        let size = nf.size as i64 + delta;
        let size = u32::try_from(size).map_err(|_| Error::new(nf.size_at, ErrorKind::FunSizeMismatch { declared: nf.size, actual: 0 }))?;
        patches.push((nf.size_at, size));
    }
    patches.sort_unstable();
    let mut pos = 0;
    let mut pi = 0;
    let total: i64 = edits.iter().map(|e| e.bytes.len() as i64 - e.range.len() as i64).sum();
    out.reserve((buf.len() as i64 + total).max(0) as usize);
    let flush_patches = |upto: usize, pos: &mut usize, out: &mut Vec<u8>, pi: &mut usize| {
        while *pi < patches.len() && patches[*pi].0 + 4 <= upto {
            let (at, v) = patches[*pi];
            if at >= *pos {
                out.extend_from_slice(&buf[*pos..at]);
                out.extend_from_slice(&v.to_be_bytes());
                *pos = at + 4;
            }
            *pi += 1;
        }
    };
    for &i in &order {
        let e = &edits[i];
        if e.range.end > buf.len() {
            return Err(Error::new(buf.len(), ErrorKind::Truncated { need: e.range.end - buf.len() }));
        }
        flush_patches(e.range.start, &mut pos, out, &mut pi);
        out.extend_from_slice(&buf[pos..e.range.start]);
        out.extend_from_slice(&e.bytes);
        pos = e.range.end;
    }
    flush_patches(buf.len(), &mut pos, out, &mut pi);
    out.extend_from_slice(&buf[pos..]);
    Ok(())
}

/// Encode an integer in its smallest form: SMALL_INTEGER_EXT, INTEGER_EXT or SMALL_BIG_EXT.
pub fn encode_int(v: i64, out: &mut Vec<u8>) {
    if (0..=255).contains(&v) {
        out.extend_from_slice(&[tag::SMALL_INTEGER, v as u8]);
    } else if let Ok(i) = i32::try_from(v) {
        out.push(tag::INTEGER);
        out.extend_from_slice(&i.to_be_bytes());
    } else {
        let mag = v.unsigned_abs().to_le_bytes();
        let n = 8 - mag.iter().rev().take_while(|&&b| b == 0).count();
        out.extend_from_slice(&[tag::SMALL_BIG, n as u8, (v < 0) as u8]);
        out.extend_from_slice(&mag[..n]);
    }
}

/// Encode an atom inline (SMALL_ATOM_UTF8_EXT, or ATOM_UTF8_EXT past 255 bytes).
pub fn encode_atom(text: &str, out: &mut Vec<u8>) {
    let b = text.as_bytes();
    if b.len() <= 255 {
        out.push(tag::SMALL_ATOM_UTF8);
        out.push(b.len() as u8);
    } else {
        out.push(tag::ATOM_UTF8);
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(b);
}

/// Encode `fun M:F/A` (EXPORT_EXT) with inline atoms.
pub fn encode_export(module: &str, function: &str, arity: u8, out: &mut Vec<u8>) {
    out.push(tag::EXPORT);
    encode_atom(module, out);
    encode_atom(function, out);
    out.push(tag::SMALL_INTEGER);
    out.push(arity);
}

/// Re-emit a rewritten message (`body`: the message bytes as laid out in [`Message::bytes`],
/// header included) as frames with their 4-byte lengths, appended to `out`.
///
/// Pass-through and `131 68` messages become one frame of the same kind. A fragmented message
/// is cut into fragments of at most `max_fragment` data bytes under its original sequence id
/// (FragIds counting down to 1), or, with `max_fragment = usize::MAX`, one `131 68` frame. The
/// start of a streamed message becomes one first fragment with its own sequence and id.
pub fn emit(framing: Framing, body: &[u8], max_fragment: usize, out: &mut Vec<u8>) {
    let frame = |out: &mut Vec<u8>, prefix: &[u8], data: &[u8]| {
        out.extend_from_slice(&((prefix.len() + data.len()) as u32).to_be_bytes());
        out.extend_from_slice(prefix);
        out.extend_from_slice(data);
    };
    match framing {
        Framing::PassThrough => frame(out, &[tag::PASS_THROUGH], body),
        Framing::DistHeader => frame(out, &[tag::VERSION, tag::DIST_HEADER], body),
        Framing::Fragmented { .. } if max_fragment == usize::MAX => frame(out, &[tag::VERSION, tag::DIST_HEADER], body),
        Framing::Fragmented { seq, .. } => {
            let max = max_fragment.max(1);
            let n = body.len().div_ceil(max).max(1) as u64;
            for (i, chunk) in body.chunks(max).enumerate() {
                frame(out, &fragment_prefix(i == 0, seq, n - i as u64), chunk);
            }
            if body.is_empty() {
                frame(out, &fragment_prefix(true, seq, 1), &[]);
            }
        }
        Framing::StreamStart { seq, frag_id } => frame(out, &fragment_prefix(true, seq, frag_id), body),
    }
}

/// A fragment's header: `131 69` (first) or `131 70`, then SeqId and FragId.
fn fragment_prefix(first: bool, seq: u64, frag_id: u64) -> [u8; 18] {
    let mut prefix = [0u8; 18];
    prefix[0] = tag::VERSION;
    prefix[1] = if first { tag::DIST_FRAG_HEADER } else { tag::DIST_FRAG_CONT };
    prefix[2..10].copy_from_slice(&seq.to_be_bytes());
    prefix[10..18].copy_from_slice(&frag_id.to_be_bytes());
    prefix
}

/// Rewrite a decoded message and re-emit it as frames (see [`emit`]).
pub fn rewrite_message(msg: &Message<'_>, funs: &[FunSite<'_>], edits: &[Edit], max_fragment: usize, scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<()> {
    apply(msg.bytes, funs, edits, scratch)?;
    emit(msg.framing, scratch, max_fragment, out);
    Ok(())
}

#[cfg(test)]
mod encode_tests {
    use super::*;

    /// Every form `encode_int` picks reads back as the same integer, in the smallest form.
    #[test]
    fn integers_read_back_in_their_smallest_form() {
        let cases: [(i64, u8); 9] = [
            (0, tag::SMALL_INTEGER),
            (255, tag::SMALL_INTEGER),
            (256, tag::INTEGER),
            (-1, tag::INTEGER),
            (i32::MIN as i64, tag::INTEGER),
            (i32::MAX as i64 + 1, tag::SMALL_BIG),
            (-(i32::MAX as i64) - 2, tag::SMALL_BIG),
            (i64::MAX, tag::SMALL_BIG),
            (i64::MIN, tag::SMALL_BIG),
        ];
        for (v, want_tag) in cases {
            let mut b = vec![tag::VERSION];
            encode_int(v, &mut b);
            assert_eq!(b[1], want_tag, "{v}");
            assert_eq!(crate::print::format_versioned(&b).unwrap(), v.to_string(), "{v}");
        }
    }
}
