//! Bytes the policy puts on the wire: marker terms, the stand-in that keeps a dropped
//! message's atom-cache header, SPAWN_REPLY errors, and re-encodings of a message with every
//! atom-cache reference written inline.
//!
//! Everything here encodes atoms inline (`SMALL_ATOM_UTF8_EXT`), never as cache references:
//! what is inserted into a stream must not depend on, or change, the receiver's atom cache
//! except where a header is deliberately carried over.

use std::borrow::Cow;
use std::ops::Range;

use distgate_codec::control::Field;
use distgate_codec::fun::{FunKind, FunSite};
use distgate_codec::message::{Message, Refs};
use distgate_codec::rewrite::{encode_atom, Edit};
use distgate_codec::tag;
use distgate_codec::term::{Atom, Pid, Term, Visitor, Walker};

/// The atom every marker term starts with.
pub const MARKER: &str = "distgate_blocked_fun";

/// The text of an atom of `msg` (cache references resolved). `None` for a reference the
/// message's header does not define (the decoder has already refused those).
pub fn atom_text<'a>(refs: &Refs<'a>, a: &Atom<'a>) -> Option<Cow<'a, str>> {
    match *a {
        Atom::Utf8(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
        Atom::Latin1(b) if b.is_ascii() => std::str::from_utf8(b).ok().map(Cow::Borrowed),
        Atom::Latin1(b) => Some(Cow::Owned(b.iter().map(|&c| c as char).collect())),
        Atom::CacheRef(i) => refs.resolve(i).map(Cow::Borrowed),
    }
}

/// The text of an atom of `msg` as UTF-8 bytes, without validating it again (the decoder
/// has): what the control rules compare, on every message.
#[inline]
pub fn atom_bytes<'a>(refs: &Refs<'a>, a: &Atom<'a>) -> Option<Cow<'a, [u8]>> {
    match *a {
        Atom::Utf8(b) => Some(Cow::Borrowed(b)),
        Atom::Latin1(b) if b.is_ascii() => Some(Cow::Borrowed(b)),
        Atom::Latin1(b) => Some(Cow::Owned(b.iter().map(|&c| c as char).collect::<String>().into_bytes())),
        Atom::CacheRef(i) => refs.resolve(i).map(|t| Cow::Borrowed(t.as_bytes())),
    }
}

/// Integers are written as the codec writes them.
pub use distgate_codec::rewrite::encode_int;

/// A pid (NEW_PID_EXT) with its node atom inline.
pub fn encode_pid(node: &str, id: u32, serial: u32, creation: u32, out: &mut Vec<u8>) {
    out.push(tag::NEW_PID);
    encode_atom(node, out);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&serial.to_be_bytes());
    out.extend_from_slice(&creation.to_be_bytes());
}

/// A reference (NEWER_REFERENCE_EXT) with its node atom inline; `ids` as on the wire.
pub fn encode_ref(node: &str, creation: u32, ids: &[u8], out: &mut Vec<u8>) {
    out.push(tag::NEWER_REFERENCE);
    out.extend_from_slice(&((ids.len() / 4) as u16).to_be_bytes());
    encode_atom(node, out);
    out.extend_from_slice(&creation.to_be_bytes());
    out.extend_from_slice(ids);
}

fn encode_binary(b: &[u8], out: &mut Vec<u8>) {
    out.push(tag::BINARY);
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

/// The marker replacing a local fun: `{distgate_blocked_fun, Module, Index, UniqHex}` where
/// `Index` is the NEW_FUN_EXT Index (an integer) and `UniqHex` the module MD5 the fun was
/// made by, as a 32-character lowercase hex binary.
pub fn marker_local(module: &str, index: u32, uniq: &[u8; 16]) -> Vec<u8> {
    let mut out = vec![tag::SMALL_TUPLE, 4];
    encode_atom(MARKER, &mut out);
    encode_atom(module, &mut out);
    encode_int(index as i64, &mut out);
    encode_binary(hex(uniq).as_bytes(), &mut out);
    out
}

/// The marker replacing an old-style FUN_EXT: `{distgate_blocked_fun, Module, OldIndex,
/// OldUniq}`, both integers.
pub fn marker_old(module: &str, index: i64, uniq: i64) -> Vec<u8> {
    let mut out = vec![tag::SMALL_TUPLE, 4];
    encode_atom(MARKER, &mut out);
    encode_atom(module, &mut out);
    encode_int(index, &mut out);
    encode_int(uniq, &mut out);
    out
}

/// The marker replacing an export fun: `{distgate_blocked_fun, Module, Function, Arity}`
/// (the third element is an atom, where a local fun's marker has an integer).
pub fn marker_export(module: &str, function: &str, arity: u8) -> Vec<u8> {
    let mut out = vec![tag::SMALL_TUPLE, 4];
    encode_atom(MARKER, &mut out);
    encode_atom(module, &mut out);
    encode_atom(function, &mut out);
    encode_int(arity as i64, &mut out);
    out
}

/// The sending node, for the pid in a stand-in message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sender {
    pub node: String,
    pub creation: u32,
}

/// Whether an atom-cache header (starting at its NumberOfAtomCacheRefs byte) defines at least
/// one new cache entry. A header that only refers to existing entries changes nothing on the
/// receiver, so a message carrying it can be dropped outright.
pub fn header_defines_entries(hdr: &[u8]) -> bool {
    let n = hdr.first().copied().unwrap_or(0) as usize;
    (0..n).any(|i| hdr.get(1 + i / 2).is_some_and(|b| (b >> ((i & 1) * 4)) & 0x08 != 0))
}

fn push_frame(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// The harmless message standing in for a dropped one (one frame, length included): the
/// dropped message's atom-cache header as it was, then `{6, Sender, '', undefined}` (a
/// REG_SEND to the name `undefined`, which no process can register, so the receiver discards
/// it) with the payload `[]`. The receiver applies the header exactly where it would have
/// applied the original's, so every later message that uses those cache entries decodes.
pub fn stand_in(header: &[u8], sender: &Sender, out: &mut Vec<u8>) {
    let mut body = vec![tag::SMALL_TUPLE, 4];
    encode_int(6, &mut body);
    encode_pid(&sender.node, 0, 0, sender.creation, &mut body);
    encode_atom("", &mut body);
    encode_atom("undefined", &mut body);
    body.push(tag::NIL);
    push_frame(out, &[&[tag::VERSION, tag::DIST_HEADER], header, &body]);
}

/// One frame carrying a control message without payload and without atom-cache entries:
/// `112 131 Control` when the link does not use the atom cache, `131 68 0 Control` when it
/// does (a header with no refs touches no cache entry).
pub fn control_frame(pass_through: bool, control: &[u8], out: &mut Vec<u8>) {
    if pass_through {
        push_frame(out, &[&[tag::PASS_THROUGH, tag::VERSION], control]);
    } else {
        push_frame(out, &[&[tag::VERSION, tag::DIST_HEADER, 0], control]);
    }
}

/// `{31, ReqId, To, 0, Reason}` (SPAWN_REPLY, no version byte), with the request's reference
/// and the caller's pid re-encoded with inline atoms. erts answers a spawn request it refuses
/// the same way (flags 0, an atom as result); the caller receives
/// `{spawn_reply, ReqId, error, Reason}` (`erpc:call` raises `{erpc, Reason}`, `rpc:call`
/// returns `{badrpc, {'EXIT', Reason}}`).
pub fn spawn_reply(refs: &Refs<'_>, req_id: &Field<'_>, to: &Pid<'_>, reason: &str) -> Option<Vec<u8>> {
    let distgate_codec::control::FieldTerm::Ref(r) = req_id.term else { return None };
    let mut out = vec![tag::SMALL_TUPLE, 5];
    encode_int(31, &mut out);
    encode_ref(&atom_text(refs, &r.node)?, r.creation, r.ids, &mut out);
    encode_pid(&atom_text(refs, &to.node)?, to.id, to.serial, to.creation, &mut out);
    encode_int(0, &mut out);
    encode_atom(reason, &mut out);
    Some(out)
}

/// Why an edit list could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEdits(pub usize);

/// Apply `edits` to `buf` into `out` (cleared first), patching the Size of every NEW_FUN_EXT
/// in `funs` that encloses an edit: what `distgate_codec::rewrite::apply` does, in
/// O((funs + edits) · log edits) instead of O(funs · edits), since a message may carry a
/// great many funs and (when its atoms are inlined) a great many edits. Edits are sorted in
/// place; they must not overlap or straddle a fun's boundary.
pub fn apply(buf: &[u8], funs: &[FunSite<'_>], edits: &mut [Edit], out: &mut Vec<u8>) -> Result<(), BadEdits> {
    out.clear();
    edits.sort_by_key(|e| e.range.start);
    for w in edits.windows(2) {
        if w[0].range.end > w[1].range.start {
            return Err(BadEdits(w[1].range.start));
        }
    }
    if let Some(e) = edits.last() {
        if e.range.end > buf.len() {
            return Err(BadEdits(e.range.start));
        }
    }
    // prefix[i]: total length change of edits[..i].
    let mut prefix = Vec::with_capacity(edits.len() + 1);
    prefix.push(0i64);
    for e in edits.iter() {
        let last = *prefix.last().unwrap_or(&0);
        prefix.push(last + e.bytes.len() as i64 - e.range.len() as i64);
    }
    let first_at_or_after = |pos: usize| edits.partition_point(|e| e.range.start < pos);
    let mut patches: Vec<(usize, u32)> = Vec::new();
    for f in funs {
        let FunKind::New(nf) = f.kind else { continue };
        // An edit starting at or before the fun's tag either covers the whole fun (the fun
        // is replaced, its Size goes with it), ends before it, or straddles its start.
        let before = edits.partition_point(|e| e.range.start <= f.at);
        if before > 0 {
            let e = &edits[before - 1];
            if e.range.end >= f.end {
                continue;
            }
            if e.range.end > f.at {
                return Err(BadEdits(e.range.start));
            }
        }
        let counted = nf.size_at + 4..f.end;
        let lo = first_at_or_after(counted.start);
        if lo > before {
            return Err(BadEdits(edits[before].range.start)); // inside the tag or Size
        }
        let hi = first_at_or_after(counted.end);
        if hi > lo && edits[hi - 1].range.end > counted.end {
            return Err(BadEdits(edits[hi - 1].range.start));
        }
        let delta = prefix[hi] - prefix[lo];
        if delta != 0 {
            let size = u32::try_from(nf.size as i64 + delta).map_err(|_| BadEdits(nf.size_at))?;
            patches.push((nf.size_at, size));
        }
    }
    patches.sort_unstable();
    let total = prefix.last().copied().unwrap_or(0);
    out.reserve((buf.len() as i64 + total).max(0) as usize);
    let mut pos = 0;
    let mut pi = 0;
    for e in edits.iter() {
        while pi < patches.len() && patches[pi].0 < e.range.start {
            let (at, v) = patches[pi];
            out.extend_from_slice(&buf[pos..at]);
            out.extend_from_slice(&v.to_be_bytes());
            pos = at + 4;
            pi += 1;
        }
        out.extend_from_slice(&buf[pos..e.range.start]);
        out.extend_from_slice(&e.bytes);
        pos = e.range.end;
    }
    for &(at, v) in &patches[pi..] {
        out.extend_from_slice(&buf[pos..at]);
        out.extend_from_slice(&v.to_be_bytes());
        pos = at + 4;
    }
    out.extend_from_slice(&buf[pos..]);
    Ok(())
}

/// Bytes taken by the atom at `at` (inline or a cache reference).
fn atom_len(buf: &[u8], at: usize) -> usize {
    let b = |i: usize| buf.get(i).copied().unwrap_or(0) as usize;
    match b(at) as u8 {
        tag::ATOM_CACHE_REF => 2,
        tag::SMALL_ATOM_UTF8 | tag::SMALL_ATOM => 2 + b(at + 1),
        _ => 3 + (b(at + 1) << 8 | b(at + 2)),
    }
}

fn int_len(buf: &[u8], at: usize) -> usize {
    if buf.get(at) == Some(&tag::SMALL_INTEGER) {
        2
    } else {
        5
    }
}

fn pid_len(buf: &[u8], at: usize) -> usize {
    1 + atom_len(buf, at + 1) + if buf.get(at) == Some(&tag::NEW_PID) { 12 } else { 9 }
}

/// Collects where every atom-cache reference of a term lies: standalone atoms, and the atoms
/// inside pids, ports, references, funs and export funs.
struct CacheRefs<'a, 'o> {
    buf: &'a [u8],
    out: &'o mut Vec<(usize, u8)>,
}

impl CacheRefs<'_, '_> {
    fn at(&mut self, pos: usize, a: &Atom<'_>) {
        if let Atom::CacheRef(i) = a {
            self.out.push((pos, *i));
        }
    }
}

impl<'a> Visitor<'a> for CacheRefs<'a, '_> {
    fn enter(&mut self, at: usize, term: &Term<'a>) -> distgate_codec::Result<()> {
        match term {
            Term::Atom(a) => self.at(at, a),
            Term::Pid(p) => self.at(at + 1, &p.node),
            Term::Port(p) => self.at(at + 1, &p.node),
            Term::Ref(r) => self.at(if r.tag == tag::REFERENCE { at + 1 } else { at + 3 }, &r.node),
            Term::NewFun(f) => {
                self.at(f.module_at, &f.module);
                let buf = self.buf;
                let mut q = f.module_at + atom_len(buf, f.module_at);
                q += int_len(buf, q);
                q += int_len(buf, q);
                self.at(q + 1, &f.pid.node);
            }
            Term::OldFun(f) => {
                let pid_at = at + 5;
                let module_at = pid_at + pid_len(self.buf, pid_at);
                self.at(pid_at + 1, &f.pid.node);
                self.at(module_at, &f.module);
            }
            Term::Export(e) => {
                let fun_at = at + 1 + atom_len(self.buf, at + 1);
                self.at(at + 1, &e.module);
                self.at(fun_at, &e.function);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Add to `edits` what makes `msg` independent of the atom cache: its header replaced by an
/// empty one (`0`) and every atom-cache reference in control and payload replaced by the atom
/// written inline, except inside ranges `edits` already replaces. Used for a fragmented
/// message re-emitted at its end, where the cache state its own header set up may since have
/// been changed by later messages.
pub fn inline_atoms(w: &mut Walker, msg: &Message<'_>, edits: &mut Vec<Edit>) -> distgate_codec::Result<()> {
    let Some(header) = msg.header.clone() else { return Ok(()) };
    let mut found = Vec::new();
    w.set_cache_refs(msg.refs.table().map(|t| t.nrefs));
    let mut ranges: Vec<Range<usize>> = vec![msg.control_range.clone()];
    ranges.extend(msg.payload.clone());
    for r in ranges {
        let mut v = CacheRefs { buf: msg.bytes, out: &mut found };
        w.walk(msg.bytes, r.start, &mut v)?;
    }
    let mut skip: Vec<Range<usize>> = edits.iter().map(|e| e.range.clone()).collect();
    skip.sort_by_key(|r| r.start);
    let covered = |pos: usize| {
        let i = skip.partition_point(|r| r.start <= pos);
        i > 0 && skip[i - 1].end > pos
    };
    for (pos, idx) in found {
        if covered(pos) {
            continue;
        }
        let text = msg.refs.resolve(idx).unwrap_or("");
        let mut bytes = Vec::with_capacity(text.len() + 3);
        encode_atom(text, &mut bytes);
        edits.push(Edit { range: pos..pos + 2, bytes });
    }
    edits.push(Edit { range: header, bytes: vec![0] });
    Ok(())
}
