//! The term walker: one pass over External Term Format bytes, in place.
//!
//! The walker reads a term starting at an offset of a borrowed `&[u8]` and reports every
//! subterm, in pre-order, to a [`Visitor`] as a [`Term`] view that borrows from the input (atom
//! text, binary bytes, bignum digits). Each subterm's exact byte extent is reported by
//! [`Visitor::leave`]. Nothing is copied and nothing is allocated per term.
//!
//! Why iterative: a peer controls nesting depth, and `[[[[…]]]]` a million deep is a few
//! megabytes of input. Recursion would overflow the thread's stack; instead the walker keeps an
//! explicit stack of open containers, bounded by [`Limits::max_depth`] and reused between walks
//! (it grows to the deepest term seen, never past the limit).
//!
//! Why counts are checked first: every element takes at least one byte, so a declared count
//! larger than the bytes left is an error before anything is reserved or iterated.
//!
//! Speed: a visitor names the tags it wants ([`Visitor::wants`]); the rest are measured, not
//! viewed, by a table-driven fast path (`skip_header`), and a walk that wants no container's
//! extent (validation, fun collection) runs without the stack at all (`Walker::skim`).

use crate::error::{Error, ErrorKind, Result};
use crate::scan;
use crate::tag;

/// An atom as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atom<'a> {
    /// `ATOM_EXT` / `SMALL_ATOM_EXT`: Latin-1 text.
    Latin1(&'a [u8]),
    /// `ATOM_UTF8_EXT` / `SMALL_ATOM_UTF8_EXT`: UTF-8 text (validated).
    Utf8(&'a [u8]),
    /// `ATOM_CACHE_REF`: index into the current message's atom-cache ref list.
    CacheRef(u8),
}

impl<'a> Atom<'a> {
    /// The raw text bytes, if the atom is inline.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Atom::Latin1(b) | Atom::Utf8(b) => Some(b),
            Atom::CacheRef(_) => None,
        }
    }
    /// True when the inline text equals `s` (UTF-8). Latin-1 text is compared by code point.
    pub fn is(&self, s: &str) -> bool {
        match *self {
            Atom::Utf8(b) => b == s.as_bytes(),
            Atom::Latin1(b) => {
                if b.is_ascii() {
                    b == s.as_bytes()
                } else {
                    s.chars().map(|c| c as u32).eq(b.iter().map(|&c| c as u32))
                }
            }
            Atom::CacheRef(_) => false,
        }
    }
}

/// A pid (`PID_EXT` or `NEW_PID_EXT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pid<'a> {
    pub node: Atom<'a>,
    pub id: u32,
    pub serial: u32,
    pub creation: u32,
    /// `PID_EXT` (8-bit creation) or `NEW_PID_EXT`.
    pub new: bool,
}

/// A port (`PORT_EXT`, `NEW_PORT_EXT` or `V4_PORT_EXT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port<'a> {
    pub node: Atom<'a>,
    pub id: u64,
    pub creation: u32,
    pub tag: u8,
}

/// A reference (`REFERENCE_EXT`, `NEW_REFERENCE_EXT` or `NEWER_REFERENCE_EXT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference<'a> {
    pub node: Atom<'a>,
    pub creation: u32,
    /// The id words, 4 bytes each, big-endian, as on the wire.
    pub ids: &'a [u8],
    pub tag: u8,
}

/// A local fun (`NEW_FUN_EXT`). Its free variables follow as `num_free` child terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewFun<'a> {
    /// Offset of the 4-byte Size field (tag offset + 1).
    pub size_at: usize,
    /// Declared Size: bytes from the Size field to the end of the fun.
    pub size: u32,
    pub arity: u8,
    /// The defining module's MD5.
    pub uniq: &'a [u8; 16],
    /// Index into the module's lambda table (`FunT`).
    pub index: u32,
    pub num_free: u32,
    pub module: Atom<'a>,
    /// Offset of the module atom.
    pub module_at: usize,
    pub old_index: i64,
    pub old_uniq: i64,
    pub pid: Pid<'a>,
    /// Offset where the free variables start (end of the fun when `num_free` is 0).
    pub free_at: usize,
}

/// An old-style fun (`FUN_EXT`), not produced by modern OTP but still decodable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldFun<'a> {
    pub num_free: u32,
    pub pid: Pid<'a>,
    pub module: Atom<'a>,
    pub index: i64,
    pub uniq: i64,
    pub free_at: usize,
}

/// An external fun `fun M:F/A` (`EXPORT_EXT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export<'a> {
    pub module: Atom<'a>,
    pub function: Atom<'a>,
    pub arity: u8,
}

/// One decoded term header. Containers report how many child terms follow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Term<'a> {
    SmallInt(u8),
    Int(i32),
    /// `NEW_FLOAT_EXT`.
    Float(f64),
    /// `FLOAT_EXT`: 31 bytes of `printf("%.20e")` text, NUL padded (the NULs trimmed here).
    OldFloat { text: &'a [u8], value: f64 },
    Atom(Atom<'a>),
    /// A bignum: magnitude in little-endian bytes.
    Big { negative: bool, digits: &'a [u8] },
    Pid(Pid<'a>),
    Port(Port<'a>),
    Ref(Reference<'a>),
    /// A tuple of `arity` children.
    Tuple(u32),
    Nil,
    /// `STRING_EXT`: a list of small integers, as bytes.
    String(&'a [u8]),
    /// `LIST_EXT`: `len` element children followed by one tail child.
    List(u32),
    /// A map: `arity` key/value pairs, so `2 * arity` children (key, value, key, value …).
    Map(u32),
    Binary(&'a [u8]),
    /// A bitstring: `bits` (1..=8) significant bits in the last byte.
    BitBinary { bytes: &'a [u8], bits: u8 },
    /// A local fun; `num_free` children follow.
    NewFun(NewFun<'a>),
    /// An old fun; `num_free` children follow.
    OldFun(OldFun<'a>),
    Export(Export<'a>),
}

impl Term<'_> {
    /// Number of child terms that follow this term's header.
    #[inline]
    pub fn children(&self) -> u64 {
        match *self {
            Term::Tuple(n) => n as u64,
            Term::List(n) => n as u64 + 1,
            Term::Map(n) => 2 * n as u64,
            Term::NewFun(f) => f.num_free as u64,
            Term::OldFun(f) => f.num_free as u64,
            _ => 0,
        }
    }
}

/// Receives the walk. Default methods do nothing, so a visitor implements only what it needs;
/// with a concrete type everything is inlined and an empty visitor costs nothing.
pub trait Visitor<'a> {
    /// Which terms this visitor is shown, by tag byte. `enter` and `leave` are called only for
    /// terms whose tag it wants; every term is still fully validated, and children of an
    /// unwanted container are still offered. The default wants every term.
    ///
    /// Why: building a [`Term`] view costs more than skipping a term, and most walks need few
    /// or no views ([`Skip`] wants none, fun collection only the three fun tags). With a
    /// concrete visitor this inlines to a constant or a compare, and unwanted terms take the
    /// walker's lean path. Keep it pure (the same answer for a tag every time: enter and leave
    /// are paired by asking again) and cheap (it is asked for every term).
    #[inline(always)]
    fn wants(_tag: u8) -> bool {
        true
    }
    /// A term starts at `at` (its tag byte). Children, if any, follow.
    #[inline]
    fn enter(&mut self, _at: usize, _term: &Term<'a>) -> Result<()> {
        Ok(())
    }
    /// The term that started at `at` (and all its children) ends at `end` (exclusive).
    #[inline]
    fn leave(&mut self, _at: usize, _end: usize) {}
}

/// A visitor that does nothing: walking with it validates and measures.
pub struct Skip;
impl Visitor<'_> for Skip {
    #[inline(always)]
    fn wants(_tag: u8) -> bool {
        false
    }
}

/// Bounds on what a walk may use; set from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open containers at once. Each costs 16 bytes of walker stack.
    pub max_depth: usize,
    /// Largest uncompressed size accepted for a compressed (`131 80`) term.
    pub max_inflated: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 100_000, max_inflated: 64 << 20 }
    }
}

/// An open container on the walker's stack.
#[derive(Clone, Copy)]
struct Open {
    /// Offset of the container's tag byte (so a closing NEW_FUN_EXT can re-read its Size).
    start: usize,
    /// Children not yet complete.
    remaining: usize,
}

/// A reusable walker. Keep one per link direction: its stack is allocated once.
pub struct Walker {
    stack: Vec<Open>,
    limits: Limits,
    /// How many atom-cache refs the current message header carries; `None` outside a
    /// distribution message, where `ATOM_CACHE_REF` is invalid.
    cache_refs: Option<u16>,
}

impl Default for Walker {
    fn default() -> Self {
        Walker::new(Limits::default())
    }
}

#[inline(always)]
fn truncated(at: usize, need: usize, have: usize) -> Error {
    Error::new(at, ErrorKind::Truncated { need: need - have.min(need) })
}

#[inline(always)]
fn bytes_at(buf: &[u8], at: usize, n: usize) -> Result<&[u8]> {
    match buf.get(at..at.wrapping_add(n)) {
        Some(s) if at.checked_add(n).is_some() => Ok(s),
        _ => Err(truncated(at, n, buf.len().saturating_sub(at))),
    }
}
#[inline(always)]
pub(crate) fn u8_at(buf: &[u8], at: usize) -> Result<u8> {
    buf.get(at).copied().ok_or_else(|| truncated(at, 1, 0))
}
#[inline(always)]
pub(crate) fn u16_at(buf: &[u8], at: usize) -> Result<u16> {
    let b = bytes_at(buf, at, 2)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}
#[inline(always)]
pub(crate) fn u32_at(buf: &[u8], at: usize) -> Result<u32> {
    let b = bytes_at(buf, at, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}
#[inline(always)]
pub(crate) fn u64_at(buf: &[u8], at: usize) -> Result<u64> {
    let b = bytes_at(buf, at, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_be_bytes(a))
}

/// Check that `count` items of at least `min_each` bytes can fit in what remains after `at`.
#[inline(always)]
fn check_count(buf: &[u8], at: usize, what: &'static str, count: u64, min_each: u64) -> Result<()> {
    let left = buf.len().saturating_sub(at) as u64;
    if count.saturating_mul(min_each) > left {
        return Err(Error::new(at, ErrorKind::BadCount { what, count }));
    }
    Ok(())
}

impl Walker {
    pub fn new(limits: Limits) -> Self {
        Walker { stack: Vec::new(), limits, cache_refs: None }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Allow `ATOM_CACHE_REF` indices below `n` (the current message's ref count), or forbid
    /// them entirely with `None`.
    pub fn set_cache_refs(&mut self, n: Option<u16>) {
        self.cache_refs = n;
    }

    /// Walk exactly one term (no version byte) starting at `at`. Returns its end offset.
    pub fn walk<'a, V: Visitor<'a>>(&mut self, buf: &'a [u8], at: usize, v: &mut V) -> Result<usize> {
        // A walk that needs no container's extent can skim; see `skim` for when that is.
        // Fewer than two bytes per allowed level: no nesting here can reach the limit.
        if buf.len().saturating_sub(at) / 2 < self.limits.max_depth {
            if let Some(done) = self.skim(buf, at, v) {
                return done;
            }
        }
        self.walk_nested(buf, at, v)
    }

    /// The walk without a stack, for a visitor shown no container: one count of terms still to
    /// read (each term adds its children and takes itself off), done when it reaches zero.
    ///
    /// Why: the stack walk branches twice per term on the shape of the data (does this term
    /// open a container? does it close one?), and those branches are about as unpredictable as
    /// the data. Here the only per-term branches are ones that nearly always go the same way.
    ///
    /// What it gives up, and why that loses nothing:
    /// - container extents: only a visitor that wants a container needs them, and a term the
    ///   visitor wants is walked on its own with the stack (the visitor is told of it and of
    ///   what it wants inside, in the order the full walk would), then skimming goes on after
    ///   it; a visitor that wants one of the fast path's tags does not skim at all;
    /// - the NEW_FUN_EXT Size check, made when the fun closes: a fun is walked with the stack
    ///   too, so a message carrying funs is no longer walked twice;
    /// - the depth limit: `walk` skims only when `max_depth` containers could not fit in the
    ///   bytes (each header is at least two), so the limit cannot be reached.
    ///
    /// Every other check is the stack walk's, in the same order, so an error here is the error
    /// the stack walk would report.
    fn skim<'a, V: Visitor<'a>>(&mut self, buf: &'a [u8], at: usize, v: &mut V) -> Option<Result<usize>> {
        let refs = self.cache_refs;
        let fast_refs = refs.unwrap_or(0) as u64;
        // Whether the visitor wants any tag the fast path measures. This folds to a constant
        // for a concrete visitor; when false (`Skip`, fun collection) the per-term question
        // moves off the fast path, to the terms it hands on.
        // (A fold, not `any`: with no early exit the loop unrolls and folds away.)
        let wants_fast = FAST_TAGS.iter().fold(false, |any, &(t, _)| any | V::wants(t));
        // Such a visitor wants terms everywhere: the stack walk suits it (and skimming must
        // never hand over to the full walk once the visitor has been told of a term).
        if wants_fast {
            return None;
        }
        let mut pending: u64 = 1;
        let mut pos = at;
        // One term: the fast path, or what it hands on.
        let mut step = |pos: usize, tag: u8, w: u128| match skip_header(tag, w, pos, buf.len(), fast_refs) {
            Some(h) => Ok(h),
            None => self.skim_other(buf, pos, tag, w, v),
        };
        // While the tag and the 16 bytes after it are in the buffer: one bounds check per term,
        // and the window is read where it lies.
        while let Some(c) = buf.get(pos..).and_then(|b| b.first_chunk::<17>()) {
            let [tag, ref w @ ..] = *c;
            let (next, children) = match step(pos, tag, u128::from_le_bytes(*w)) {
                Ok(h) => h,
                Err(e) => return Some(Err(e)),
            };
            pos = next;
            // At most the bytes left, so no overflow.
            pending = pending + children - 1;
            if pending == 0 {
                return Some(Ok(pos));
            }
        }
        // The last 16 bytes: the window is shifted out of one load of them (see `Tail`).
        // Why a loop of its own: in one loop the choice of source was a branch per term (and
        // a call at the end of every buffer) or, made a select, on the path from one term to
        // the next.
        let tail = Tail::new(buf);
        loop {
            let Some(&tag) = buf.get(pos) else { return Some(Err(truncated(pos, 1, 0))) };
            let (next, children) = match step(pos, tag, tail.window(pos)) {
                Ok(h) => h,
                Err(e) => return Some(Err(e)),
            };
            pos = next;
            pending = pending + children - 1;
            if pending == 0 {
                return Some(Ok(pos));
            }
        }
    }

    /// A term the skim's fast path does not settle: the same checks as the stack walk.
    #[inline(never)]
    fn skim_other<'a, V: Visitor<'a>>(&mut self, buf: &'a [u8], pos: usize, tag: u8, w: u128, v: &mut V) -> Result<(usize, u64)> {
        if let Some(h) = skip_node_term(tag, w, pos, buf.len(), self.cache_refs.unwrap_or(0) as u64) {
            return Ok(h);
        }
        if V::wants(tag) || tag == tag::NEW_FUN || tag == tag::FUN {
            // A term the visitor wants, or a fun (its Size is checked when it closes): walk
            // that term alone with the stack — the visitor hears of it and of what it wants
            // inside, in order — then skim on after it.
            return Ok((self.walk_nested(buf, pos, v)?, 0));
        }
        let (next, n) = header(buf, pos, self.cache_refs).map(|(t, next)| (next, t.children()))?;
        // Every child takes at least one byte: reject impossible counts up front.
        // (The fast path checked this itself.)
        check_count(buf, next, "container", n, 1)?;
        Ok((next, n))
    }

    /// The walk with a stack of open containers: every term's extent, for any visitor.
    fn walk_nested<'a, V: Visitor<'a>>(&mut self, buf: &'a [u8], at: usize, v: &mut V) -> Result<usize> {
        let refs = self.cache_refs;
        let fast_refs = refs.unwrap_or(0) as u64;
        let max_depth = self.limits.max_depth;
        let stack = &mut self.stack;
        stack.clear();
        let tail = Tail::new(buf);
        // The innermost open container lives in a local (a register in the hot loop); the stack
        // holds the ones around it. The sentinel stands for the caller: one child, the root.
        // So `stack.len()` is the number of open containers.
        let mut cur = Open { start: usize::MAX, remaining: 1 };
        let mut pos = at;
        loop {
            let start = pos;
            let Some(&tag) = buf.get(pos) else { return Err(truncated(pos, 1, 0)) };
            let children = if V::wants(tag) {
                let (term, next) = header_inline(buf, pos, refs)?;
                v.enter(start, &term)?;
                pos = next;
                term.children()
            } else if let Some((next, n)) = {
                let w = tail.after(buf, pos);
                skip_header(tag, w, pos, buf.len(), fast_refs).or_else(|| skip_node_term(tag, w, pos, buf.len(), fast_refs))
            } {
                pos = next;
                n
            } else {
                let (next, n) = header_cold(buf, pos, refs)?;
                pos = next;
                n
            };
            if children > 0 {
                // Every child takes at least one byte: reject impossible counts up front.
                check_count(buf, pos, "container", children, 1)?;
                if stack.len() >= max_depth {
                    return Err(Error::new(start, ErrorKind::TooDeep { limit: max_depth }));
                }
                stack.push(cur);
                // The count fits: it is at most the bytes left.
                cur = Open { start, remaining: children as usize };
                continue;
            }
            if V::wants(tag) {
                v.leave(start, pos);
            }
            // Close every container whose last child this was.
            loop {
                cur.remaining -= 1;
                if cur.remaining > 0 {
                    break;
                }
                let Some(parent) = stack.pop() else { return Ok(pos) };
                let tag = buf[cur.start];
                if tag == tag::NEW_FUN {
                    fun_end_check(buf, cur.start, pos)?;
                }
                if V::wants(tag) {
                    v.leave(cur.start, pos);
                }
                cur = parent;
            }
        }
    }

    /// For a term of which only a prefix `buf[at..]` is here yet: when, read in order, its
    /// last term is a `BINARY_EXT` whose body runs past the end of `buf`, the offset where that
    /// body starts and its declared length. Everything before the body has then been checked
    /// as the full walk checks it, and the body (any bytes) ends the term.
    ///
    /// Why: a large binary is most of the bytes of a large message, and the last thing in it
    /// (`{tag, Bin}`, `{'$gen_cast', {data, Bin}}`). Knowing this from the first bytes lets a
    /// link forward the message as it arrives (and a fragmented one fragment by fragment)
    /// instead of holding and copying it whole, without giving up any check: a binary's body
    /// has nothing to check.
    ///
    /// `None` whenever that is not certain: the term ends within `buf`, a header is cut off,
    /// a fun (checked when it closes) or anything invalid comes first, or more containers
    /// open than `max_depth` (counted, not nested: this walk keeps no stack). The caller then
    /// waits for the whole term and walks it the usual way, which reports any error.
    pub fn open_tail(&self, buf: &[u8], at: usize) -> Option<(usize, u64)> {
        let refs = self.cache_refs;
        // Terms still to read, as in `skim`.
        let mut pending: u64 = 1;
        let mut opened = 0usize;
        let mut pos = at;
        loop {
            let tag = *buf.get(pos)?;
            if tag == tag::BINARY {
                let len = u32_at(buf, pos + 1).ok()? as u64;
                let body = pos + 5;
                if body as u64 + len > buf.len() as u64 {
                    return (pending == 1).then_some((body, len));
                }
            }
            if tag == tag::NEW_FUN || tag == tag::FUN {
                return None;
            }
            let (term, next) = header(buf, pos, refs).ok()?;
            let kids = term.children();
            if kids > 0 {
                opened += 1;
                if opened > self.limits.max_depth {
                    return None;
                }
            }
            // Each term takes at least one byte, so at most `buf.len()` rounds, and a
            // child count is at most 2^33: no overflow.
            pending = pending + kids - 1;
            if pending == 0 {
                return None;
            }
            pos = next;
        }
    }

    /// Walk one term and require it to end exactly at the end of `buf`.
    pub fn walk_exact<'a, V: Visitor<'a>>(&mut self, buf: &'a [u8], at: usize, v: &mut V) -> Result<()> {
        let end = self.walk(buf, at, v)?;
        if end != buf.len() {
            return Err(Error::new(end, ErrorKind::Trailing { extra: buf.len() - end }));
        }
        Ok(())
    }

    /// Read an atom in any encoding (a pid's node, a fun's module, …).
    #[inline]
    pub fn read_atom<'a>(&self, buf: &'a [u8], at: usize) -> Result<(Atom<'a>, usize)> {
        read_atom(buf, at, self.cache_refs)
    }

    /// Decode the header of the term at `at`: its view and the offset right after the header
    /// (where its children, if any, start).
    #[inline]
    pub fn read_header<'a>(&self, buf: &'a [u8], at: usize) -> Result<(Term<'a>, usize)> {
        header(buf, at, self.cache_refs)
    }

    /// Read a pid (`NEW_PID_EXT` or `PID_EXT`); anything else is `ExpectedPid`.
    #[inline]
    pub fn read_pid<'a>(&self, buf: &'a [u8], at: usize) -> Result<(Pid<'a>, usize)> {
        read_pid(buf, at, self.cache_refs)
    }

    /// Walk one term (no views) that sits `outer` containers deep in a larger term walked
    /// piece by piece: the depth limit counts those containers too, so the limit holds as if
    /// the whole term had been walked at once.
    pub fn walk_inside(&mut self, buf: &[u8], at: usize, outer: usize) -> Result<usize> {
        let limits = self.limits;
        self.limits.max_depth = limits.max_depth.saturating_sub(outer);
        let done = self.walk(buf, at, &mut Skip);
        self.limits = limits;
        done.map_err(|mut e| {
            if let ErrorKind::TooDeep { limit } = &mut e.kind {
                *limit = limits.max_depth;
            }
            e
        })
    }
}

/// A tuple's header at `at`: its arity and where its first element starts, or `None` when the
/// term there is not a tuple. For readers that want a tuple's shape without a view (control
/// decoding, policy peeks).
#[inline]
pub fn read_tuple(buf: &[u8], at: usize) -> Result<Option<(u32, usize)>> {
    Ok(match u8_at(buf, at)? {
        tag::SMALL_TUPLE => Some((u8_at(buf, at + 1)? as u32, at + 2)),
        tag::LARGE_TUPLE => Some((u32_at(buf, at + 1)?, at + 5)),
        _ => None,
    })
}

/// The atom at `at` of a buffer a walk has already checked (text valid, cache index in
/// range): only its structure read, nothing validated again; `None` when no atom is there or
/// it does not fit in `buf`. For readers that come back to walked bytes (a fun's key, a
/// policy's shape checks) and must not pay for the checks twice.
#[inline(always)]
pub fn walked_atom(buf: &[u8], at: usize) -> Option<(Atom<'_>, usize)> {
    let text = |len_at: usize, len: usize| buf.get(len_at..len_at + len);
    Some(match *buf.get(at)? {
        tag::ATOM_CACHE_REF => (Atom::CacheRef(*buf.get(at + 1)?), at + 2),
        tag::SMALL_ATOM_UTF8 => {
            let n = *buf.get(at + 1)? as usize;
            (Atom::Utf8(text(at + 2, n)?), at + 2 + n)
        }
        tag::SMALL_ATOM => {
            let n = *buf.get(at + 1)? as usize;
            (Atom::Latin1(text(at + 2, n)?), at + 2 + n)
        }
        t @ (tag::ATOM_UTF8 | tag::ATOM) => {
            let n = u16::from_be_bytes(*buf.get(at + 1..)?.first_chunk::<2>()?) as usize;
            let b = text(at + 3, n)?;
            (if t == tag::ATOM_UTF8 { Atom::Utf8(b) } else { Atom::Latin1(b) }, at + 3 + n)
        }
        _ => return None,
    })
}

/// Read an atom in any encoding (a pid's node, a fun's module, …).
#[inline]
fn read_atom<'a>(buf: &'a [u8], at: usize, cache_refs: Option<u16>) -> Result<(Atom<'a>, usize)> {
    let t = u8_at(buf, at)?;
    let (len, text_at, utf8) = match t {
        tag::SMALL_ATOM_UTF8 => (u8_at(buf, at + 1)? as usize, at + 2, true),
        tag::ATOM_UTF8 => (u16_at(buf, at + 1)? as usize, at + 3, true),
        tag::SMALL_ATOM => (u8_at(buf, at + 1)? as usize, at + 2, false),
        tag::ATOM => (u16_at(buf, at + 1)? as usize, at + 3, false),
        tag::ATOM_CACHE_REF => {
            let idx = u8_at(buf, at + 1)?;
            match cache_refs {
                Some(n) if (idx as u16) < n => return Ok((Atom::CacheRef(idx), at + 2)),
                n => {
                    return Err(Error::new(
                        at,
                        ErrorKind::BadAtomCacheRef { index: idx, refs: n.unwrap_or(0) },
                    ))
                }
            }
        }
        other => return Err(Error::new(at, ErrorKind::ExpectedAtom(other))),
    };
    let text = bytes_at(buf, text_at, len)?;
    if utf8 {
        let chars = scan::utf8_atom_chars(text).ok_or(Error::new(text_at, ErrorKind::InvalidUtf8Atom))?;
        if chars > 255 {
            return Err(Error::new(at, ErrorKind::AtomTooLong { chars }));
        }
        Ok((Atom::Utf8(text), text_at + len))
    } else {
        if len > 255 {
            return Err(Error::new(at, ErrorKind::AtomTooLong { chars: len }));
        }
        Ok((Atom::Latin1(text), text_at + len))
    }
}

/// An integer field inside a fun (SMALL_INTEGER or INTEGER).
#[inline]
fn read_int(buf: &[u8], at: usize) -> Result<(i64, usize)> {
    match u8_at(buf, at)? {
        tag::SMALL_INTEGER => Ok((u8_at(buf, at + 1)? as i64, at + 2)),
        tag::INTEGER => Ok((u32_at(buf, at + 1)? as i32 as i64, at + 5)),
        other => Err(Error::new(at, ErrorKind::ExpectedInteger(other))),
    }
}

#[inline]
fn read_pid<'a>(buf: &'a [u8], at: usize, cache_refs: Option<u16>) -> Result<(Pid<'a>, usize)> {
    let t = u8_at(buf, at)?;
    if t != tag::NEW_PID && t != tag::PID {
        return Err(Error::new(at, ErrorKind::ExpectedPid(t)));
    }
    let (node, p) = read_atom(buf, at + 1, cache_refs)?;
    let id = u32_at(buf, p)?;
    let serial = u32_at(buf, p + 4)?;
    if t == tag::NEW_PID {
        Ok((Pid { node, id, serial, creation: u32_at(buf, p + 8)?, new: true }, p + 12))
    } else {
        Ok((Pid { node, id, serial, creation: u8_at(buf, p + 8)? as u32, new: false }, p + 9))
    }
}

/// Decode the header of the term at `at`: its view and the offset right after the header
/// (where its children, if any, start).
#[inline]
pub(crate) fn header<'a>(buf: &'a [u8], at: usize, cache_refs: Option<u16>) -> Result<(Term<'a>, usize)> {
    header_inline(buf, at, cache_refs)
}

/// [`header`], inlined where a view is handed to a visitor (`walk_nested`): called, its
/// result came back through memory and was copied field by field into the visitor's, loads of
/// stores just made, which the CPU could not forward (a fifth of the collecting walk's time on
/// messages carrying funs).
#[inline(always)]
fn header_inline<'a>(buf: &'a [u8], at: usize, cache_refs: Option<u16>) -> Result<(Term<'a>, usize)> {
    let t = u8_at(buf, at)?;
    let p = at + 1;
    Ok(match t {
        tag::SMALL_INTEGER => (Term::SmallInt(u8_at(buf, p)?), p + 1),
        tag::INTEGER => (Term::Int(u32_at(buf, p)? as i32), p + 4),
        tag::NEW_FLOAT => (Term::Float(f64::from_bits(u64_at(buf, p)?)), p + 8),
        tag::SMALL_ATOM_UTF8 | tag::ATOM_UTF8 | tag::SMALL_ATOM | tag::ATOM | tag::ATOM_CACHE_REF => {
            let (a, next) = read_atom(buf, at, cache_refs)?;
            (Term::Atom(a), next)
        }
        tag::SMALL_TUPLE => (Term::Tuple(u8_at(buf, p)? as u32), p + 1),
        tag::LARGE_TUPLE => (Term::Tuple(u32_at(buf, p)?), p + 4),
        tag::NIL => (Term::Nil, p),
        tag::STRING => {
            let n = u16_at(buf, p)? as usize;
            (Term::String(bytes_at(buf, p + 2, n)?), p + 2 + n)
        }
        tag::LIST => (Term::List(u32_at(buf, p)?), p + 4),
        tag::MAP => (Term::Map(u32_at(buf, p)?), p + 4),
        tag::BINARY => {
            let n = u32_at(buf, p)? as usize;
            check_count(buf, p + 4, "binary length", n as u64, 1)?;
            (Term::Binary(bytes_at(buf, p + 4, n)?), p + 4 + n)
        }
        tag::BIT_BINARY => {
            let n = u32_at(buf, p)? as usize;
            let bits = u8_at(buf, p + 4)?;
            if !(1..=8).contains(&bits) || (n == 0) {
                // OTP never encodes an empty bitstring with this tag; 0 bits is invalid.
                return Err(Error::new(p + 4, ErrorKind::BadBits(bits)));
            }
            check_count(buf, p + 5, "bit binary length", n as u64, 1)?;
            (Term::BitBinary { bytes: bytes_at(buf, p + 5, n)?, bits }, p + 5 + n)
        }
        tag::SMALL_BIG => {
            let n = u8_at(buf, p)? as usize;
            let sign = u8_at(buf, p + 1)?;
            (Term::Big { negative: sign != 0, digits: bytes_at(buf, p + 2, n)? }, p + 2 + n)
        }
        tag::LARGE_BIG => {
            let n = u32_at(buf, p)? as usize;
            check_count(buf, p + 5, "bignum length", n as u64, 1)?;
            let sign = u8_at(buf, p + 4)?;
            (Term::Big { negative: sign != 0, digits: bytes_at(buf, p + 5, n)? }, p + 5 + n)
        }
        tag::NEW_PID | tag::PID => {
            let (pid, next) = read_pid(buf, at, cache_refs)?;
            (Term::Pid(pid), next)
        }
        tag::PORT | tag::NEW_PORT | tag::V4_PORT => {
            let (node, q) = read_atom(buf, p, cache_refs)?;
            let (port, next) = match t {
                tag::PORT => (Port { node, id: u32_at(buf, q)? as u64, creation: u8_at(buf, q + 4)? as u32, tag: t }, q + 5),
                tag::NEW_PORT => (Port { node, id: u32_at(buf, q)? as u64, creation: u32_at(buf, q + 4)?, tag: t }, q + 8),
                _ => (Port { node, id: u64_at(buf, q)?, creation: u32_at(buf, q + 8)?, tag: t }, q + 12),
            };
            (Term::Port(port), next)
        }
        tag::REFERENCE => {
            let (node, q) = read_atom(buf, p, cache_refs)?;
            let ids = bytes_at(buf, q, 4)?;
            let creation = u8_at(buf, q + 4)? as u32;
            (Term::Ref(Reference { node, creation, ids, tag: t }), q + 5)
        }
        tag::NEW_REFERENCE | tag::NEWER_REFERENCE => {
            let len = u16_at(buf, p)?;
            if len == 0 || len > 5 {
                return Err(Error::new(p, ErrorKind::BadRefLen(len)));
            }
            let (node, q) = read_atom(buf, p + 2, cache_refs)?;
            let (creation, q) = if t == tag::NEWER_REFERENCE {
                (u32_at(buf, q)?, q + 4)
            } else {
                (u8_at(buf, q)? as u32, q + 1)
            };
            let ids = bytes_at(buf, q, 4 * len as usize)?;
            (Term::Ref(Reference { node, creation, ids, tag: t }), q + 4 * len as usize)
        }
        tag::NEW_FUN => {
            let size = u32_at(buf, p)?;
            check_count(buf, p, "fun size", size as u64, 1)?;
            let arity = u8_at(buf, p + 4)?;
            let uniq: &[u8; 16] = bytes_at(buf, p + 5, 16)?
                .try_into()
                .map_err(|_| truncated(p + 5, 16, 0))?;
            let index = u32_at(buf, p + 21)?;
            let num_free = u32_at(buf, p + 25)?;
            let module_at = p + 29;
            let (module, q) = read_atom(buf, module_at, cache_refs)?;
            let (old_index, q) = read_int(buf, q)?;
            let (old_uniq, q) = read_int(buf, q)?;
            let (pid, q) = read_pid(buf, q, cache_refs)?;
            let f = NewFun {
                size_at: p,
                size,
                arity,
                uniq,
                index,
                num_free,
                module,
                module_at,
                old_index,
                old_uniq,
                pid,
                free_at: q,
            };
            if num_free == 0 && p + size as usize != q {
                return Err(Error::new(at, ErrorKind::FunSizeMismatch { declared: size, actual: q - p }));
            }
            (Term::NewFun(f), q)
        }
        tag::FUN => {
            let num_free = u32_at(buf, p)?;
            let (pid, q) = read_pid(buf, p + 4, cache_refs)?;
            let (module, q) = read_atom(buf, q, cache_refs)?;
            let (index, q) = read_int(buf, q)?;
            let (uniq, q) = read_int(buf, q)?;
            (Term::OldFun(OldFun { num_free, pid, module, index, uniq, free_at: q }), q)
        }
        tag::EXPORT => {
            let (module, q) = read_atom(buf, p, cache_refs)?;
            let (function, q) = read_atom(buf, q, cache_refs)?;
            match u8_at(buf, q)? {
                tag::SMALL_INTEGER => {}
                other => return Err(Error::new(q, ErrorKind::ExpectedInteger(other))),
            }
            let arity = u8_at(buf, q + 1)?;
            (Term::Export(Export { module, function, arity }), q + 2)
        }
        tag::FLOAT => {
            let raw = bytes_at(buf, p, 31)?;
            let text = match memchr::memchr(0, raw) {
                Some(n) => &raw[..n],
                None => raw,
            };
            let value = core::str::from_utf8(text)
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .ok_or(Error::new(p, ErrorKind::BadFloat))?;
            (Term::OldFloat { text, value }, p + 31)
        }
        tag::LOCAL => return Err(Error::new(at, ErrorKind::LocalExtRefused)),
        other => return Err(Error::new(at, ErrorKind::UnknownTag(other))),
    })
}

/// The header as the walk needs it, for terms reached through the general decoder: the offset
/// after the header and the child count. Cold: only rare tags, funs, and inputs the fast path
/// declines (non-ASCII atoms, errors) come here.
#[cold]
#[inline(never)]
fn header_cold(buf: &[u8], at: usize, cache_refs: Option<u16>) -> Result<(usize, u64)> {
    let (term, next) = header(buf, at, cache_refs)?;
    Ok((next, term.children()))
}

/// A NEW_FUN_EXT with free variables has just closed at `end`: its Size must say so.
#[inline]
fn fun_end_check(buf: &[u8], start: usize, end: usize) -> Result<()> {
    // Already read (and bounded by the bytes left) when the fun was entered.
    let size = u32_at(buf, start + 1)?;
    if start + 1 + size as usize != end {
        return Err(Error::new(start, ErrorKind::FunSizeMismatch { declared: size, actual: end - (start + 1) }));
    }
    Ok(())
}

/// How the fast path measures one tag's header (see [`skip_header`]). Every header it handles
/// is `base` fixed bytes (tag included), then as many bytes of text or digits as a big-endian
/// length field right after the tag says, if it has one. Let `y` be the first 8 bytes after
/// the tag, big-endian, shifted right by one (63 bits): a field of `width` bytes is exactly
/// `y >> (63 - 8 * width)`, so one shift gives the variable part (a shift of 63 gives 0, for a
/// tag whose field counts children or that has none).
///
/// A pid or reference with an `ATOM_EXT` node is measured the same way: its "field" runs from
/// the tag through the atom's length (`100, 0, len` for a pid; `0, 3, 100, 0, len` for a
/// reference), and `base` (wrapping) takes off what the bytes before the length add, once
/// [`Count::want`] has checked they are what it assumes.
#[derive(Clone, Copy)]
#[repr(C)]
struct Len {
    base: u64,
    shift: u8,
}

/// The other half of a tag's entry: its child count and what its field and text must satisfy.
/// Kept apart from [`Len`] because nothing here is on the path from one term's offset to the
/// next.
#[derive(Clone, Copy)]
#[repr(C)]
struct Count {
    /// The field is `f = x >> field_shift`, with `x` the first 4 bytes after the tag,
    /// big-endian (32: no field; 24: a u8; 16: a u16; 0: a u32).
    field_shift: u8,
    /// Children: `kids_base + kids_mul * f`.
    kids_base: u8,
    kids_mul: u8,
    /// 1 for UTF-8 atoms: every byte after the tag, through the end of the text, must be ASCII
    /// (and in the window). 0 otherwise.
    ascii: u8,
    /// `f ^ want` must be below `bound`: an atom's 255 bytes (`want` 0); a pid's or reference's
    /// fixed bytes before its node atom's length (`bound` 1: equal). 0 for a tag left to the
    /// general decoder. (ATOM_CACHE_REF's bound is the message's ref count instead.)
    want: u32,
    bound: u32,
    _pad: u32,
}

/// One tag's entries: fixed bytes, the field's width in bytes (0 to 4), whether the field
/// counts bytes that follow (else children, or nothing), children as
/// `kids_base + kids_mul * field`, and whether it is a UTF-8 atom (see [`Count`]).
const fn entry(base: u8, width: u32, bytes: bool, kids_base: u8, kids_mul: u8, utf8: bool) -> (Len, Count) {
    let shift = if bytes { 63 - 8 * width } else { 63 };
    (
        Len { base: base as u64, shift: shift as u8 },
        Count {
            field_shift: (32 - 8 * width) as u8,
            kids_base,
            kids_mul,
            ascii: utf8 as u8,
            want: 0,
            bound: u32::MAX,
            _pad: 0,
        },
    )
}

/// An atom's entry: at most 255 bytes of text.
const fn atom_entry(base: u8, width: u32, utf8: bool) -> (Len, Count) {
    let (l, mut c) = entry(base, width, true, 0, 0, utf8);
    c.bound = 256;
    (l, c)
}

/// A pid's or reference's entry, for an `ATOM_EXT` node: `prefix` (`n` bytes, big-endian)
/// between the tag and the atom, `fixed` bytes after the atom's text. Its field is the prefix,
/// the atom's tag and its two length bytes; it must read `prefix, 100, 0` but for the length.
const fn node_entry(prefix: u64, n: u32, fixed: u64) -> (Len, Count) {
    let known = (prefix << 16) | ((tag::ATOM as u64) << 8);
    (
        Len { base: (1 + n as u64 + 3 + fixed).wrapping_sub(known << 8), shift: (63 - 8 * (n + 3)) as u8 },
        Count {
            field_shift: (32 - 8 * (n + 2)) as u8,
            kids_base: 0,
            kids_mul: 0,
            ascii: 0,
            want: known as u32,
            bound: 1,
            _pad: 0,
        },
    )
}

/// The tags the fast path measures, with their entries.
const FAST_TAGS: [(u8, (Len, Count)); 18] = [
    (tag::SMALL_INTEGER, entry(2, 0, false, 0, 0, false)),
    (tag::INTEGER, entry(5, 0, false, 0, 0, false)),
    (tag::NEW_FLOAT, entry(9, 0, false, 0, 0, false)),
    (tag::NIL, entry(1, 0, false, 0, 0, false)),
    (tag::SMALL_TUPLE, entry(2, 1, false, 0, 1, false)),
    (tag::LARGE_TUPLE, entry(5, 4, false, 0, 1, false)),
    (tag::LIST, entry(5, 4, false, 1, 1, false)),
    (tag::MAP, entry(5, 4, false, 0, 2, false)),
    (tag::STRING, entry(3, 2, true, 0, 0, false)),
    (tag::BINARY, entry(5, 4, true, 0, 0, false)),
    (tag::SMALL_BIG, entry(3, 1, true, 0, 0, false)),
    (tag::ATOM, atom_entry(3, 2, false)),
    (tag::SMALL_ATOM, atom_entry(2, 1, false)),
    (tag::SMALL_ATOM_UTF8, atom_entry(2, 1, true)),
    (tag::ATOM_UTF8, atom_entry(3, 2, true)),
    // The index is the field; its bound is the walk's.
    (tag::ATOM_CACHE_REF, entry(2, 1, false, 0, 0, false)),
    // Node atom, then id, serial and creation. Other node atoms: `skip_node_term`.
    (tag::NEW_PID, node_entry(0, 0, 12)),
    // Three id words (what OTP sends for `make_ref()`), node atom, creation, the words.
    (tag::NEWER_REFERENCE, node_entry(3, 2, 4 + 4 * 3)),
];

/// The fast path's tables, by tag byte.
static FAST: ([Len; 256], [Count; 256]) = {
    let mut slow = entry(0, 0, false, 0, 0, false);
    slow.1.bound = 0;
    let mut len = [slow.0; 256];
    let mut count = [slow.1; 256];
    let mut i = 0;
    while i < FAST_TAGS.len() {
        let (tag, (l, c)) = FAST_TAGS[i];
        len[tag as usize] = l;
        count[tag as usize] = c;
        i += 1;
    }
    (len, count)
};

/// The walk's fast path: for the term at `pos` (of a buffer ending at `end`) with tag `tag`,
/// followed by the 16 bytes `w`, the offset after its header and its number of children,
/// without building a view. Covers the tags that make up nearly all real traffic.
///
/// `None` means "not settled here" — a rarer tag, a bound that does not hold, text that needs
/// the full UTF-8 check — and the walk then asks [`skip_node_term`] and [`header`], which
/// decodes everything and produces the exact error. So this never decides an error; it must
/// only never accept what `header` refuses, and agree with it on what it accepts (the
/// differential tests below check both on valid, truncated and corrupted input).
///
/// Why tables rather than a `match`: the tag sequence of real data is close to random, so a
/// jump table's indirect branch mispredicts on most terms. Here the common tags share one
/// branch-free path, pids and references included. And the path from one term's offset to the
/// next — which no out-of-order execution can overlap, as each term starts where the last
/// ended — is short: load the tag, look it up, shift, add. (The tag is its own load, not a
/// byte of the window, and `pos + base` is added before the field is: each saves a cycle on
/// that path.)
///
/// Why a window: every fixed header field lies in the 16 bytes after the tag, so they are read
/// from one load with no bounds check each, and the single check at the end — the header and a
/// byte per child within `end` — covers them all. Near the end the window is zero-padded; a
/// field read from the padding lies past the end, so the term cannot fit.
#[inline(always)]
fn skip_header(tag: u8, w: u128, pos: usize, end: usize, refs: u64) -> Option<(usize, u64)> {
    let (l, c) = (FAST.0[tag as usize], FAST.1[tag as usize]);
    let y = (w as u64).swap_bytes() >> 1;
    let x = (w as u32).swap_bytes() as u64;
    // `pos + base` does not wait for the field; only the last add does. (Wrapping: a pid's
    // base is "negative", and its sum means nothing until `want` has matched.)
    let next = (pos as u64).wrapping_add(l.base).wrapping_add(y >> l.shift);
    let f = x >> c.field_shift;
    let kids = c.kids_base as u64 + f * c.kids_mul as u64;
    // A cache ref's index is bounded by the message's ref count, an atom's length by 255.
    let bound = if tag == tag::ATOM_CACHE_REF { refs } else { c.bound as u64 };
    // A UTF-8 atom's bytes after the tag (length and text) must all be ASCII: then its text is
    // valid UTF-8 of as many characters as bytes. Every other tag checks an empty span. The
    // first byte with its high bit set (16 if none) bounds the span, which also keeps the text
    // in the window. Branch-free on purpose: term_to_binary since OTP 26, and every node's
    // distribution encoder for atoms not in the cache, send atoms this way, interleaved with
    // everything else. (Cache refs, the usual atom in distribution traffic, are here for the
    // same reason.)
    let span = next.wrapping_sub(pos as u64 + 1) & (c.ascii as u64).wrapping_neg();
    let ascii = scan::ascii_run(w) as u64;
    // The header, and a byte for each child at least (the walk's count check, made here so
    // that it is one compare with the bound).
    ((f ^ c.want as u64) < bound && span <= ascii && next + kids <= end as u64).then_some((next as usize, kids))
}

/// A pid or reference the table does not measure (its node atom is not `ATOM_EXT`, or a
/// reference has other than three words), measured without a view: the offset after it and
/// no children, or `None` for [`header`]. Out of line: such terms are rarer, and the walk's
/// fast path stays a straight line.
#[inline(never)]
fn skip_node_term(tag: u8, w: u128, pos: usize, end: usize, refs: u64) -> Option<(usize, u64)> {
    let len = node_term_len(tag, w, refs);
    let next = pos as u64 + len;
    (len != 0 && next <= end as u64).then_some((next as usize, 0))
}

/// The length of a pid or reference whose bytes after the tag are `w`, or 0 when it cannot be
/// settled without the general decoder: a node atom that needs the full check, a word count
/// OTP never sends, or any other tag. None of these terms has children.
#[inline(always)]
fn node_term_len(tag: u8, w: u128, refs: u64) -> u64 {
    match tag {
        // Node atom, then id, serial and creation.
        tag::NEW_PID => skip_atom(w, 16, refs).map_or(0, |atom| 1 + atom as u64 + 12),
        // Word count (1..=5), node atom, creation, the id words.
        tag::NEWER_REFERENCE => {
            let words = (w as u16).swap_bytes() as u64;
            if !(1..=5).contains(&words) {
                return 0;
            }
            skip_atom(w >> 16, 14, refs).map_or(0, |atom| 3 + atom as u64 + 4 + 4 * words)
        }
        _ => 0,
    }
}

/// The fast path reads each header through a window: the 16 bytes after its tag (see
/// [`skip_header`]). Within 17 bytes of the end of the buffer the window is the buffer's last
/// 16 bytes, read once per walk and shifted down in a register, with zeros shifted in past the
/// end.
///
/// Why a shift and not a zero-padded copy of those bytes: a load from a copy just stored
/// straddles the stores that made it, which the CPU cannot forward, and the walk stalled on
/// it at the end of every term.
struct Tail {
    /// Offset of the byte before the first of `last`'s (so a tag at `at` has all of `last` as
    /// its window); -1, wrapped, for a buffer of 16 bytes or fewer.
    at: usize,
    /// The buffer's last 16 bytes, little-endian (zero-padded if it is shorter).
    last: u128,
}

impl Tail {
    #[inline]
    fn new(buf: &[u8]) -> Tail {
        match buf.last_chunk::<16>() {
            Some(c) => Tail { at: buf.len().wrapping_sub(17), last: u128::from_le_bytes(*c) },
            None => Tail::short(buf),
        }
    }

    #[cold]
    #[inline(never)]
    fn short(buf: &[u8]) -> Tail {
        let mut last = [0u8; 16];
        last[..buf.len()].copy_from_slice(buf);
        Tail { at: usize::MAX, last: u128::from_le_bytes(last) }
    }

    /// The 16 bytes after the tag at `pos`, little-endian (byte 0 is the first after the tag).
    #[inline(always)]
    fn after(&self, buf: &[u8], pos: usize) -> u128 {
        match buf.get(pos + 1..).and_then(|b| b.first_chunk::<16>()) {
            Some(c) => u128::from_le_bytes(*c),
            None => self.padded(pos),
        }
    }

    /// Out of line so that the choice above stays a branch (right nearly always) rather than
    /// becoming a select on the path from one term to the next.
    #[cold]
    #[inline(never)]
    fn padded(&self, pos: usize) -> u128 {
        self.window(pos)
    }

    /// The window of a tag at `pos` in the buffer's last 17 bytes. Past the 16 bytes after the
    /// tag's is zeros: a field read there lies past the end, so the term cannot fit.
    #[inline(always)]
    fn window(&self, pos: usize) -> u128 {
        // 0 to 16 bytes of `last` lie before the window (16: the tag is the last byte).
        let k = pos.wrapping_sub(self.at).min(16) as u32;
        self.last.checked_shr(8 * k).unwrap_or(0)
    }
}

/// True when the window's first `at + n` bytes — an atom's tag and length, then its `n` bytes
/// of text — lie within its first `real` bytes (those read from the input: a window shifted
/// down to a nested atom has fewer) and are ASCII. (All-ASCII text of at most 255 bytes is
/// valid UTF-8 of at most 255 characters; text that runs past the window, rare for an atom,
/// goes to the full check. The tag and length bytes are ASCII whenever the text fits.)
#[inline(always)]
fn ascii_in_window(w: u128, real: usize, at: usize, n: u64) -> bool {
    at as u64 + n <= real.min(scan::ascii_run(w)) as u64
}

/// Length of the atom at the front of the window `w`, whose first `real` bytes are input (a
/// pid's or reference's window shifted down to its node atom), for the fast path: inline atoms
/// whose text needs no check beyond its bounds (Latin-1 up to 255 bytes; UTF-8 that is all
/// ASCII and lies in the window) and cache refs in range. Anything else is `None`, for
/// [`read_atom`]. The tag and length bytes are always among the real ones (`real` >= 4).
#[inline(always)]
fn skip_atom(w: u128, real: usize, refs: u64) -> Option<usize> {
    let b1 = (w >> 8) as u8 as usize;
    let be16 = ((w >> 8) as u16).swap_bytes() as usize;
    match w as u8 {
        tag::ATOM => (be16 <= 255).then_some(3 + be16),
        tag::SMALL_ATOM => Some(2 + b1),
        tag::SMALL_ATOM_UTF8 => ascii_in_window(w, real, 2, b1 as u64).then_some(2 + b1),
        tag::ATOM_UTF8 => (be16 <= 255 && ascii_in_window(w, real, 3, be16 as u64)).then_some(3 + be16),
        tag::ATOM_CACHE_REF => ((b1 as u64) < refs).then_some(2),
        _ => None,
    }
}

/// A versioned term's body: borrowed when plain, inflated into `scratch` when compressed.
/// Offsets reported for an inflated term are relative to the inflated bytes.
pub fn versioned_body<'a>(buf: &'a [u8], scratch: &'a mut Vec<u8>, max_inflated: usize) -> Result<&'a [u8]> {
    let v = u8_at(buf, 0)?;
    if v != tag::VERSION {
        return Err(Error::new(0, ErrorKind::BadVersion(v)));
    }
    if u8_at(buf, 1)? != tag::COMPRESSED {
        return Ok(&buf[1..]);
    }
    let declared = u32_at(buf, 2)? as usize;
    crate::inflate::inflate_exact(&buf[6..], declared, max_inflated, scratch).map_err(|e| e.shifted(6))?;
    Ok(&scratch[..])
}

/// Walk a whole versioned term (`131 …`, possibly compressed) with a fresh default walker.
/// Convenience for tools and tests; the forwarding path keeps its own [`Walker`].
pub fn walk_versioned(buf: &[u8], limits: Limits) -> Result<()> {
    let mut scratch = Vec::new();
    let body = versioned_body(buf, &mut scratch, limits.max_inflated)?;
    let mut w = Walker::new(limits);
    w.walk_exact(body, 0, &mut Skip)
}

#[cfg(test)]
mod tests {
    //! The fast path against the general decoder: whatever [`skip_header`] accepts, [`header`]
    //! must accept with the same length and child count, and a walk that takes the fast path
    //! must end (or fail) exactly where one that builds every view does.

    use super::*;
    use proptest::prelude::*;

    /// Wants every term, so the walk never takes the fast path.
    struct All;
    impl Visitor<'_> for All {}

    fn fast_tags() -> Vec<u8> {
        FAST_TAGS.iter().map(|&(t, _)| t).collect()
    }
    const ATOM_TAGS: &[u8] = &[tag::ATOM, tag::SMALL_ATOM, tag::SMALL_ATOM_UTF8, tag::ATOM_UTF8, tag::ATOM_CACHE_REF];

    /// Header-ish bytes: small numbers (plausible lengths), atom tags (a pid's node), anything.
    fn head_byte() -> impl Strategy<Value = u8> {
        prop_oneof![0u8..16, proptest::sample::select(ATOM_TAGS), any::<u8>()]
    }
    /// Text-ish bytes: mostly ASCII, sometimes not.
    fn text_byte() -> impl Strategy<Value = u8> {
        prop_oneof![4 => b'a'..=b'z', 1 => any::<u8>()]
    }

    fn agree(bytes: &[u8], refs: Option<u16>) -> std::result::Result<(), TestCaseError> {
        let Some((&tag, after)) = bytes.split_first() else { return Ok(()) };
        let mut window = [0u8; 16];
        let n = after.len().min(16);
        window[..n].copy_from_slice(&after[..n]);
        let (w, fast_refs) = (u128::from_le_bytes(window), refs.unwrap_or(0) as u64);
        // The table, and what the walk asks when the table declines a pid or reference.
        let fast = [skip_header(tag, w, 0, bytes.len(), fast_refs), skip_node_term(tag, w, 0, bytes.len(), fast_refs)];
        for (len, kids) in fast.into_iter().flatten() {
            let r = header(bytes, 0, refs);
            prop_assert!(r.is_ok(), "fast path accepted {:?} (refs {:?}), header says {:?}", bytes, refs, r);
            let (term, next) = r.unwrap();
            prop_assert_eq!((next, term.children()), (len, kids), "{:?}", bytes);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn fast_path_never_accepts_what_header_refuses(
            tag in prop_oneof![3 => proptest::sample::select(fast_tags()), 1 => any::<u8>()],
            head in proptest::collection::vec(head_byte(), 0..8),
            text in proptest::collection::vec(text_byte(), 0..48),
            cut in any::<prop::sample::Index>(),
            refs in proptest::option::of(0u16..4),
        ) {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&head);
            bytes.extend_from_slice(&text);
            let cut = cut.index(bytes.len() + 1);
            agree(&bytes[..cut], refs)?;
            // And with the same bytes followed by more: the window then reaches past the term.
            bytes.extend_from_slice(&[0x80; 20]);
            agree(&bytes, refs)?;
        }

        #[test]
        fn walks_with_and_without_views_agree(
            bytes in proptest::collection::vec(prop_oneof![
                3 => proptest::sample::select(fast_tags()), 2 => 0u8..8, 2 => b'a'..=b'z', 1 => any::<u8>()
            ], 0..64),
            refs in proptest::option::of(0u16..4),
            max_depth in prop_oneof![1usize..40, Just(100_000)],
        ) {
            // Small depth limits too: whether `Skip` may skim depends on the limit.
            let mut w = Walker::new(Limits { max_depth, ..Limits::default() });
            w.set_cache_refs(refs);
            prop_assert_eq!(w.walk(&bytes, 0, &mut Skip), w.walk(&bytes, 0, &mut All));
        }
    }

    /// Records what a fun-collecting visitor is told: enters and leaves of the fun tags.
    #[derive(Default, Debug, PartialEq)]
    struct FunEvents(Vec<(bool, usize, usize)>);
    impl Visitor<'_> for FunEvents {
        fn wants(tag: u8) -> bool {
            matches!(tag, tag::NEW_FUN | tag::FUN | tag::EXPORT)
        }
        fn enter(&mut self, at: usize, _term: &Term<'_>) -> Result<()> {
            self.0.push((true, at, 0));
            Ok(())
        }
        fn leave(&mut self, at: usize, end: usize) {
            self.0.push((false, at, end));
        }
    }

    proptest! {
        /// Skimming with funs walked on their own gives what the whole stack walk gives: the
        /// same end or error, and the visitor told the same things in the same order.
        #[test]
        fn skimming_around_funs_agrees_with_the_stack_walk(
            bytes in proptest::collection::vec(prop_oneof![
                3 => proptest::sample::select(fast_tags()), 2 => Just(tag::NEW_FUN), 1 => Just(tag::EXPORT),
                2 => 0u8..8, 1 => b'a'..=b'z', 1 => any::<u8>()
            ], 0..96),
            refs in proptest::option::of(0u16..4),
        ) {
            let mut w = Walker::default();
            w.set_cache_refs(refs);
            let (mut a, mut b) = (FunEvents::default(), FunEvents::default());
            let skimmed = w.walk(&bytes, 0, &mut a);
            let full = w.walk_nested(&bytes, 0, &mut b);
            prop_assert_eq!(&skimmed, &full);
            if full.is_ok() {
                prop_assert_eq!(a, b);
            }
        }
    }

    /// A term with funs in free variables, inside containers, between other terms: skimmed
    /// and stack-walked alike.
    #[test]
    fn skimming_around_real_funs_agrees_with_the_stack_walk() {
        // {[1, F], 7} with F = a NEW_FUN closing over fun m:f/1 and a small tuple.
        let mut f = vec![112, 0, 0, 0, 0, 1];
        f.extend_from_slice(&[7; 16]);
        f.extend_from_slice(&3u32.to_be_bytes());
        f.extend_from_slice(&2u32.to_be_bytes());
        f.extend_from_slice(&[119, 1, b'm', 97, 0, 98, 0, 0, 0, 9, 88, 119, 3, b'n', b'@', b'h', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[113, 119, 1, b'm', 119, 1, b'f', 97, 1, 104, 1, 97, 5]);
        let size = (f.len() - 1) as u32;
        f[1..5].copy_from_slice(&size.to_be_bytes());
        let mut b = vec![104, 2, 108, 0, 0, 0, 2, 97, 1];
        b.extend_from_slice(&f);
        b.extend_from_slice(&[106, 97, 7]);
        let mut w = Walker::default();
        let (mut x, mut y) = (FunEvents::default(), FunEvents::default());
        assert_eq!(w.walk(&b, 0, &mut x), Ok(b.len()));
        assert_eq!(w.walk_nested(&b, 0, &mut y), Ok(b.len()));
        assert_eq!(x.0.len(), 4, "{x:?}");
        assert_eq!(x, y);
        // A wrong Size is refused the same way.
        b[9 + 4] ^= 1;
        assert_eq!(w.walk(&b, 0, &mut Skip), w.walk_nested(&b, 0, &mut Skip));
        assert!(w.walk(&b, 0, &mut Skip).is_err());
    }

    /// Nesting right at the depth limit: the walk without a stack must never be what decides.
    #[test]
    fn depth_limit_holds_with_and_without_views() {
        for max_depth in 1..10 {
            for n in 0..14 {
                for (open, close) in [(&[104u8, 1][..], &[][..]), (&[108, 0, 0, 0, 1][..], &[106][..])] {
                    let mut b = Vec::new();
                    (0..n).for_each(|_| b.extend_from_slice(open));
                    b.push(106);
                    (0..n).for_each(|_| b.extend_from_slice(close));
                    let mut w = Walker::new(Limits { max_depth, ..Limits::default() });
                    let (skim, full) = (w.walk(&b, 0, &mut Skip), w.walk(&b, 0, &mut All));
                    assert_eq!(skim, full, "depth {n}, limit {max_depth}");
                    assert_eq!(full.is_err(), n > max_depth);
                }
            }
        }
    }

    /// Atoms, alone or as a pid's or reference's node (references of every word count, valid
    /// or not), with ASCII text but for at most one byte anywhere (inside the window, at its
    /// edge, past it), of every length around the window, and two-byte lengths over 255.
    #[test]
    fn fast_path_agrees_on_atom_text_at_every_offset() {
        let outers = [None, Some((tag::NEW_PID, 0))].into_iter().chain((0..=6).map(|k| Some((tag::NEWER_REFERENCE, k))));
        for outer in outers {
            for atom in ATOM_TAGS.iter().copied() {
                for n in 0..24usize {
                    for high in (0..n).map(Some).chain([None]) {
                        for byte in [0x80, 0xc3, 0xff] {
                            let mut b = Vec::new();
                            match outer {
                                Some((tag::NEWER_REFERENCE, words)) => b.extend_from_slice(&[tag::NEWER_REFERENCE, 0, words]),
                                Some((t, _)) => b.push(t),
                                None => {}
                            }
                            b.push(atom);
                            if matches!(atom, tag::ATOM | tag::ATOM_UTF8) {
                                // The high length byte: 0, or (once per length) 1 for 256 + n.
                                b.push(u8::from(high == Some(0) && byte == 0xff));
                            }
                            b.push(n as u8);
                            let text_at = b.len();
                            b.extend(std::iter::repeat_n(b'a', n));
                            if let Some(k) = high {
                                b[text_at + k] = byte;
                            }
                            // Creation, ids, and then some: every fixed field is there.
                            b.extend_from_slice(&[0; 24]);
                            for refs in [None, Some(3)] {
                                agree(&b, refs).unwrap();
                                // Cut anywhere: the node atom's text and the fixed fields.
                                if high.is_none() && byte == 0x80 {
                                    (0..b.len()).try_for_each(|cut| agree(&b[..cut], refs)).unwrap();
                                }
                            }
                            // What OTP 25 sends takes the table's path, not only a correct one.
                            if atom == tag::ATOM && high.is_none() && matches!(outer, Some((tag::NEW_PID, _) | (tag::NEWER_REFERENCE, 3))) {
                                let mut w = [0u8; 16];
                                w.copy_from_slice(&b[1..17]);
                                assert!(skip_header(b[0], u128::from_le_bytes(w), 0, b.len(), 0).is_some(), "{b:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every tag byte, every length field of interest, with and without text after it.
    #[test]
    fn fast_path_agrees_on_every_tag() {
        for t in 0..=255u8 {
            let heads = [
                [0, 0, 0, 0],
                [0, 0, 0, 1],
                [0, 1, 0, 0],
                [0, 0, 1, 0],
                [1, 0, 0, 0],
                [0, 0, 0, 3],
                [0, 3, 0, 1],
                [0, 5, 0, 1],
                [0, 6, 0, 1],
                [0, 0xff, 0, 0],
                [1, 1, 0, 0],
                [0xff, 0xff, 0xff, 0xff],
                [0, 0, 0xff, 0],
                [0, 1, 0, 1],
            ];
            for head in heads {
                for atom in ATOM_TAGS.iter().copied().chain([0, 97]) {
                    for fill in [b'a', 0xc3, 0] {
                        for n in (0..40).chain([254, 255, 256, 257, 258, 300, 511, 512, 513]) {
                            let mut bytes = vec![t];
                            bytes.extend_from_slice(&head);
                            bytes.extend(std::iter::repeat_n(fill, n));
                            for at in [1, 3] {
                                if at < bytes.len() {
                                    let mut b = bytes.clone();
                                    b[at] = atom;
                                    for refs in [None, Some(0), Some(2)] {
                                        agree(&b, refs).unwrap();
                                    }
                                }
                            }
                            agree(&bytes, None).unwrap();
                        }
                    }
                }
            }
        }
    }
}
