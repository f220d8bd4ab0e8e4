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
impl Visitor<'_> for Skip {}

/// Bounds on what a walk may use; set from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open containers at once. Each costs 24 bytes of walker stack.
    pub max_depth: usize,
    /// Largest uncompressed size accepted for a compressed (`131 80`) term.
    pub max_inflated: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 100_000, max_inflated: 64 << 20 }
    }
}

#[derive(Clone, Copy)]
struct Open {
    start: usize,
    /// Children not yet complete.
    remaining: u64,
    /// For NEW_FUN_EXT: where Size says the fun ends, checked when it closes. 0 otherwise.
    fun_end: usize,
    /// For NEW_FUN_EXT: the declared size, for the error message.
    fun_size: u32,
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
        self.stack.clear();
        let mut pos = at;
        loop {
            let start = pos;
            let (term, next) = self.read_header(buf, pos)?;
            pos = next;
            v.enter(start, &term)?;
            let children = term.children();
            if children > 0 {
                // Every child takes at least one byte: reject impossible counts up front.
                check_count(buf, pos, "container", children, 1)?;
                if self.stack.len() >= self.limits.max_depth {
                    return Err(Error::new(start, ErrorKind::TooDeep { limit: self.limits.max_depth }));
                }
                let (fun_end, fun_size) = match term {
                    Term::NewFun(f) => (f.size_at + f.size as usize, f.size),
                    _ => (0, 0),
                };
                self.stack.push(Open { start, remaining: children, fun_end, fun_size });
                continue;
            }
            v.leave(start, pos);
            // Close every container whose last child this was.
            loop {
                let Some(top) = self.stack.last_mut() else { return Ok(pos) };
                top.remaining -= 1;
                if top.remaining > 0 {
                    break;
                }
                let open = *top;
                self.stack.pop();
                if open.fun_end != 0 && open.fun_end != pos {
                    return Err(Error::new(
                        open.start,
                        ErrorKind::FunSizeMismatch {
                            declared: open.fun_size,
                            actual: pos - (open.start + 1),
                        },
                    ));
                }
                v.leave(open.start, pos);
            }
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
        let t = u8_at(buf, at)?;
        let (len, text_at, utf8) = match t {
            tag::SMALL_ATOM_UTF8 => (u8_at(buf, at + 1)? as usize, at + 2, true),
            tag::ATOM_UTF8 => (u16_at(buf, at + 1)? as usize, at + 3, true),
            tag::SMALL_ATOM => (u8_at(buf, at + 1)? as usize, at + 2, false),
            tag::ATOM => (u16_at(buf, at + 1)? as usize, at + 3, false),
            tag::ATOM_CACHE_REF => {
                let idx = u8_at(buf, at + 1)?;
                match self.cache_refs {
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
    fn read_int(&self, buf: &[u8], at: usize) -> Result<(i64, usize)> {
        match u8_at(buf, at)? {
            tag::SMALL_INTEGER => Ok((u8_at(buf, at + 1)? as i64, at + 2)),
            tag::INTEGER => Ok((u32_at(buf, at + 1)? as i32 as i64, at + 5)),
            other => Err(Error::new(at, ErrorKind::ExpectedInteger(other))),
        }
    }

    #[inline]
    fn read_pid<'a>(&self, buf: &'a [u8], at: usize) -> Result<(Pid<'a>, usize)> {
        let t = u8_at(buf, at)?;
        if t != tag::NEW_PID && t != tag::PID {
            return Err(Error::new(at, ErrorKind::ExpectedPid(t)));
        }
        let (node, p) = self.read_atom(buf, at + 1)?;
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
    pub fn read_header<'a>(&self, buf: &'a [u8], at: usize) -> Result<(Term<'a>, usize)> {
        let t = u8_at(buf, at)?;
        let p = at + 1;
        Ok(match t {
            tag::SMALL_INTEGER => (Term::SmallInt(u8_at(buf, p)?), p + 1),
            tag::INTEGER => (Term::Int(u32_at(buf, p)? as i32), p + 4),
            tag::NEW_FLOAT => (Term::Float(f64::from_bits(u64_at(buf, p)?)), p + 8),
            tag::SMALL_ATOM_UTF8 | tag::ATOM_UTF8 | tag::SMALL_ATOM | tag::ATOM | tag::ATOM_CACHE_REF => {
                let (a, next) = self.read_atom(buf, at)?;
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
                let (pid, next) = self.read_pid(buf, at)?;
                (Term::Pid(pid), next)
            }
            tag::PORT | tag::NEW_PORT | tag::V4_PORT => {
                let (node, q) = self.read_atom(buf, p)?;
                let (port, next) = match t {
                    tag::PORT => (Port { node, id: u32_at(buf, q)? as u64, creation: u8_at(buf, q + 4)? as u32, tag: t }, q + 5),
                    tag::NEW_PORT => (Port { node, id: u32_at(buf, q)? as u64, creation: u32_at(buf, q + 4)?, tag: t }, q + 8),
                    _ => (Port { node, id: u64_at(buf, q)?, creation: u32_at(buf, q + 8)?, tag: t }, q + 12),
                };
                (Term::Port(port), next)
            }
            tag::REFERENCE => {
                let (node, q) = self.read_atom(buf, p)?;
                let ids = bytes_at(buf, q, 4)?;
                let creation = u8_at(buf, q + 4)? as u32;
                (Term::Ref(Reference { node, creation, ids, tag: t }), q + 5)
            }
            tag::NEW_REFERENCE | tag::NEWER_REFERENCE => {
                let len = u16_at(buf, p)?;
                if len == 0 || len > 5 {
                    return Err(Error::new(p, ErrorKind::BadRefLen(len)));
                }
                let (node, q) = self.read_atom(buf, p + 2)?;
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
                let (module, q) = self.read_atom(buf, module_at)?;
                let (old_index, q) = self.read_int(buf, q)?;
                let (old_uniq, q) = self.read_int(buf, q)?;
                let (pid, q) = self.read_pid(buf, q)?;
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
                let (pid, q) = self.read_pid(buf, p + 4)?;
                let (module, q) = self.read_atom(buf, q)?;
                let (index, q) = self.read_int(buf, q)?;
                let (uniq, q) = self.read_int(buf, q)?;
                (Term::OldFun(OldFun { num_free, pid, module, index, uniq, free_at: q }), q)
            }
            tag::EXPORT => {
                let (module, q) = self.read_atom(buf, p)?;
                let (function, q) = self.read_atom(buf, q)?;
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
