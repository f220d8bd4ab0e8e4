//! Finding every fun in a message: NEW_FUN_EXT (local), FUN_EXT (old local) and EXPORT_EXT
//! (`fun M:F/A`), wherever it sits — control or payload, inside tuples, lists, maps, or the
//! free variables of another fun — with its byte extent and decoded fields.
//!
//! Two forms: a [`FunSite`] carries the fun's full view; a [`FunSpan`] only where it lies and
//! its tag, from which [`FunSpan::key`] reads the names that identify its code and
//! [`FunSpan::site`] builds the full view when it is needed. Why both: the policy's common
//! case (every fun remembered as passed) needs only the names, and building and copying the
//! views (a pid, old index and uniq, offsets: 152 bytes a fun) was most of what collecting
//! funs cost on top of the walk.

use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::tag;
use crate::term::{walked_atom, Atom, Export, NewFun, OldFun, Term, Visitor, Walker};
use core::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FunKind<'a> {
    New(NewFun<'a>),
    Old(OldFun<'a>),
    Export(Export<'a>),
}

impl<'a> FunKind<'a> {
    /// The names that identify the fun's code (see [`FunKey`]); `None` for an old-style fun.
    pub fn key(&self) -> Option<FunKey<'a>> {
        match *self {
            FunKind::New(f) => Some(FunKey::Local { module: f.module, uniq: f.uniq }),
            FunKind::Export(e) => Some(FunKey::Export { module: e.module, function: e.function, arity: e.arity }),
            FunKind::Old(_) => None,
        }
    }
}

/// What identifies a fun's code: a local fun's module and MD5 (the module version its lambda
/// lives in), or an export fun's module, function and arity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunKey<'a> {
    Local { module: Atom<'a>, uniq: &'a [u8; 16] },
    Export { module: Atom<'a>, function: Atom<'a>, arity: u8 },
}

/// Which part of the message a fun was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Control,
    Payload,
}

/// One fun: where it lies (`at..end`, offsets into the walked buffer) and what it says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FunSite<'a> {
    pub at: usize,
    pub end: usize,
    pub kind: FunKind<'a>,
    /// How many funs enclose this one (0: not inside another fun's free variables).
    pub nesting: u32,
    pub part: Part,
}

impl FunSite<'_> {
    pub fn range(&self) -> Range<usize> {
        self.at..self.end
    }

    /// The same fun without its view.
    pub fn span(&self) -> FunSpan {
        let tag = match self.kind {
            FunKind::New(_) => tag::NEW_FUN,
            FunKind::Old(_) => tag::FUN,
            FunKind::Export(_) => tag::EXPORT,
        };
        FunSpan { at: self.at, end: self.end, tag, nesting: self.nesting, part: self.part }
    }
}

/// One fun as [`collect_spans`] finds it: a [`FunSite`] without the view. Its offsets are into
/// the buffer that was walked; its methods must be given that buffer, and they read the fun's
/// header there again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunSpan {
    pub at: usize,
    pub end: usize,
    /// The fun's tag: [`tag::NEW_FUN`], [`tag::FUN`] or [`tag::EXPORT`].
    pub tag: u8,
    /// How many funs enclose this one (0: not inside another fun's free variables).
    pub nesting: u32,
    pub part: Part,
}

impl FunSpan {
    pub fn range(&self) -> Range<usize> {
        self.at..self.end
    }

    /// The full view, as [`collect`] would have built it: the fun's header read again from
    /// `buf` (the walked buffer) with the walk's atom-cache ref count. Bytes the walk accepted
    /// read the same again, so this fails only when given another buffer.
    pub fn site<'a>(&self, buf: &'a [u8], cache_refs: Option<u16>) -> Result<FunSite<'a>> {
        let term = crate::term::header(buf, self.at, cache_refs)?.0;
        let mut site = FunSite::fun(self.at, &term, self.nesting, self.part).ok_or(Error::new(self.at, ErrorKind::UnknownTag(self.tag)))?;
        site.set_end(self.end);
        Ok(site)
    }

    /// [`FunSpan::site`] for a fun of `msg` (whose bytes were walked).
    pub fn site_in<'a>(&self, msg: &Message<'a>) -> Result<FunSite<'a>> {
        self.site(msg.bytes, msg.refs.table().map(|t| t.nrefs))
    }

    /// The names that identify the fun's code, read straight from `buf` (the walked buffer):
    /// what `self.site(buf, ..)?.kind.key()` gives, without reading the rest of the header
    /// (the pid, the old index and uniq) or checking the text again (the walk did). `None` for
    /// an old-style fun, or when `buf` is not the walked buffer and the bytes do not fit.
    ///
    /// NEW_FUN_EXT: tag, Size (4), Arity (1), Uniq (16) at +6, Index (4), NumFree (4), Module
    /// at +30. EXPORT_EXT: tag, Module at +1, Function, then SMALL_INTEGER_EXT Arity.
    ///
    /// Inlined, with the atoms: called, each result came back through memory and was
    /// reloaded before the stores had landed (a stall per atom on the policy's hot path).
    #[inline(always)]
    pub fn key<'a>(&self, buf: &'a [u8]) -> Option<FunKey<'a>> {
        match self.tag {
            tag::NEW_FUN => {
                let uniq = buf.get(self.at + 6..)?.first_chunk::<16>()?;
                let (module, _) = walked_atom(buf, self.at + 30)?;
                Some(FunKey::Local { module, uniq })
            }
            tag::EXPORT => {
                let (module, next) = walked_atom(buf, self.at + 1)?;
                let (function, next) = walked_atom(buf, next)?;
                match buf.get(next..next + 2)? {
                    &[tag::SMALL_INTEGER, arity] => Some(FunKey::Export { module, function, arity }),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// What a collecting walk records of each fun: a [`FunSite`] or a [`FunSpan`].
pub(crate) trait Record<'a>: Sized {
    /// The record of the fun `term` at `at`, or `None` for a term that is not a fun.
    fn fun(at: usize, term: &Term<'a>, nesting: u32, part: Part) -> Option<Self>;
    fn set_end(&mut self, end: usize);
}

impl<'a> Record<'a> for FunSite<'a> {
    #[inline(always)]
    fn fun(at: usize, term: &Term<'a>, nesting: u32, part: Part) -> Option<Self> {
        let kind = match *term {
            Term::NewFun(f) => FunKind::New(f),
            Term::OldFun(f) => FunKind::Old(f),
            Term::Export(e) => FunKind::Export(e),
            _ => return None,
        };
        Some(FunSite { at, end: at, kind, nesting, part })
    }
    #[inline(always)]
    fn set_end(&mut self, end: usize) {
        self.end = end;
    }
}

impl<'a> Record<'a> for FunSpan {
    /// Only the variant is looked at: with the header read inlined into the walk, the view's
    /// fields are never stored (the reads that validate them still happen).
    #[inline(always)]
    fn fun(at: usize, term: &Term<'a>, nesting: u32, part: Part) -> Option<Self> {
        let tag = match term {
            Term::NewFun(_) => tag::NEW_FUN,
            Term::OldFun(_) => tag::FUN,
            Term::Export(_) => tag::EXPORT,
            _ => return None,
        };
        Some(FunSpan { at, end: at, tag, nesting, part })
    }
    #[inline(always)]
    fn set_end(&mut self, end: usize) {
        self.end = end;
    }
}

pub(crate) struct Collect<'v, R> {
    out: &'v mut Vec<R>,
    /// Indices (into `out`) of the funs entered and not yet left, innermost last.
    open: OpenStack,
    part: Part,
}

impl<'v, R> Collect<'v, R> {
    /// A visitor appending the funs of the walked term to `out` (the decoder uses it for
    /// [`crate::message::Decoder::decode_collecting`]).
    pub(crate) fn new(out: &'v mut Vec<R>, part: Part) -> Self {
        Collect { out, open: OpenStack::default(), part }
    }
}

/// A stack of indices that lives inline up to [`OpenStack::INLINE`] deep (funs in the free
/// variables of funs nest that deep rarely): a walk that meets a fun allocates nothing.
#[derive(Default)]
struct OpenStack {
    inline: [usize; OpenStack::INLINE],
    len: usize,
    spill: Vec<usize>,
}

impl OpenStack {
    const INLINE: usize = 8;

    #[inline]
    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn push(&mut self, i: usize) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = i,
            None => self.spill.push(i),
        }
        self.len += 1;
    }

    #[inline]
    fn pop(&mut self) -> Option<usize> {
        self.len = self.len.checked_sub(1)?;
        match self.inline.get(self.len) {
            Some(&i) => Some(i),
            None => self.spill.pop(),
        }
    }
}

impl<'a, R: Record<'a>> Visitor<'a> for Collect<'_, R> {
    /// Only funs are of interest: every other term is walked (and validated) on the walker's
    /// lean path, with no view built and no call here. So enter and leave come in nested
    /// pairs for funs alone, and `open` is exactly the chain of enclosing funs.
    #[inline(always)]
    fn wants(tag: u8) -> bool {
        matches!(tag, tag::NEW_FUN | tag::FUN | tag::EXPORT)
    }
    #[inline]
    fn enter(&mut self, at: usize, term: &Term<'a>) -> Result<()> {
        let nesting = self.open.len() as u32;
        match R::fun(at, term, nesting, self.part) {
            Some(r) => {
                self.open.push(self.out.len());
                self.out.push(r);
            }
            // Not shown (see `wants`); kept paired all the same.
            None => self.open.push(usize::MAX),
        }
        Ok(())
    }
    #[inline]
    fn leave(&mut self, _at: usize, end: usize) {
        if let Some(r) = self.open.pop().and_then(|i| self.out.get_mut(i)) {
            r.set_end(end);
        }
    }
}

/// Append every fun in the term at `range` of `buf` to `out`.
///
/// No prefilter: this used to skip the walk when no fun tag byte (112, 113, 117) occurs in the
/// range ([`crate::scan::may_contain_fun`]), but those are the letters p, q and u, so nearly
/// every real message has one (95% of the term-heavy corpus, all of the binary-heavy one); and
/// with only funs wanted the walk costs what a plain validating walk does. The scan cost more
/// than it saved (term-heavy walk+funs 19% slower with it, binary-heavy 67%).
pub fn collect<'a>(w: &mut Walker, buf: &'a [u8], range: Range<usize>, part: Part, out: &mut Vec<FunSite<'a>>) -> Result<()> {
    w.walk(buf, range.start, &mut Collect::new(out, part))?;
    Ok(())
}

/// [`collect`], recording each fun's [`FunSpan`] only: the same walk, the same checks and
/// errors, the same funs in the same order.
pub fn collect_spans(w: &mut Walker, buf: &[u8], range: Range<usize>, part: Part, out: &mut Vec<FunSpan>) -> Result<()> {
    w.walk(buf, range.start, &mut Collect::new(out, part))?;
    Ok(())
}

/// Every fun in a decoded message, control first, then payload.
pub fn message_funs<'a>(w: &mut Walker, msg: &Message<'a>, out: &mut Vec<FunSite<'a>>) -> Result<()> {
    w.set_cache_refs(msg.refs.table().map(|t| t.nrefs));
    collect(w, msg.bytes, msg.control_range.clone(), Part::Control, out)?;
    if let Some(p) = &msg.payload {
        collect(w, msg.bytes, p.clone(), Part::Payload, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atom(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&[119, s.len() as u8]);
        out.extend_from_slice(s.as_bytes());
    }

    fn export(out: &mut Vec<u8>, m: &str, f: &str, arity: u8) {
        out.push(113);
        atom(out, m);
        atom(out, f);
        out.extend_from_slice(&[97, arity]);
    }

    /// A NEW_FUN_EXT whose free variables are written by `free` (`n` of them).
    fn new_fun(out: &mut Vec<u8>, n: u32, free: impl FnOnce(&mut Vec<u8>)) {
        let start = out.len();
        out.extend_from_slice(&[112, 0, 0, 0, 0, 1]);
        out.extend_from_slice(&[7; 16]);
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(&n.to_be_bytes());
        atom(out, "m");
        out.extend_from_slice(&[97, 0, 98, 0, 0, 0, 9]);
        out.push(88);
        atom(out, "n@h");
        out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        free(out);
        let size = (out.len() - start - 1) as u32;
        out[start + 1..start + 5].copy_from_slice(&size.to_be_bytes());
    }

    /// Funs at several depths, inside containers and inside each other's free variables: each
    /// is found once, with its exact extent and how many funs enclose it.
    #[test]
    fn nested_funs_have_extents_and_nesting() {
        // {ok, [F1 | fun m:f/1], #{k => F3}} where F1 closes over (fun a:b/0, F2), F2 over 42.
        let mut b = vec![104, 3];
        atom(&mut b, "ok");
        b.extend_from_slice(&[108, 0, 0, 0, 1]);
        let f1 = b.len();
        let (mut e1, mut f2, mut f2_end) = (0, 0, 0);
        new_fun(&mut b, 2, |b| {
            e1 = b.len();
            export(b, "a", "b", 0);
            f2 = b.len();
            new_fun(b, 1, |b| b.extend_from_slice(&[97, 42]));
            f2_end = b.len();
        });
        let f1_end = b.len();
        let e2 = b.len();
        export(&mut b, "m", "f", 1);
        let e2_end = b.len();
        b.extend_from_slice(&[116, 0, 0, 0, 1]);
        atom(&mut b, "k");
        let f3 = b.len();
        new_fun(&mut b, 0, |_| {});
        let f3_end = b.len();

        let mut w = Walker::default();
        let mut out = Vec::new();
        collect(&mut w, &b, 0..b.len(), Part::Payload, &mut out).unwrap();
        let got: Vec<_> = out.iter().map(|s| (s.at, s.end, s.nesting)).collect();
        assert_eq!(got, [(f1, f1_end, 0), (e1, f2, 1), (f2, f2_end, 1), (e2, e2_end, 0), (f3, f3_end, 0)]);
        assert!(matches!(out[0].kind, FunKind::New(f) if f.num_free == 2));
        assert!(matches!(out[1].kind, FunKind::Export(e) if e.module.is("a") && e.arity == 0));
    }

    /// Funs nested deeper than the inline stack of open funs: extents and nesting still right.
    #[test]
    fn deeply_nested_funs() {
        fn nest(b: &mut Vec<u8>, depth: u32, starts: &mut Vec<(usize, usize)>) {
            let at = b.len();
            let i = starts.len();
            starts.push((at, 0));
            if depth == 0 {
                new_fun(b, 0, |_| {});
            } else {
                new_fun(b, 1, |b| nest(b, depth - 1, starts));
            }
            starts[i].1 = b.len();
        }
        let mut b = Vec::new();
        let mut starts = Vec::new();
        nest(&mut b, 13, &mut starts);
        let mut w = Walker::default();
        let mut out = Vec::new();
        collect(&mut w, &b, 0..b.len(), Part::Payload, &mut out).unwrap();
        let got: Vec<_> = out.iter().map(|s| (s.at, s.end, s.nesting)).collect();
        let want: Vec<_> = starts.iter().enumerate().map(|(d, &(at, end))| (at, end, d as u32)).collect();
        assert_eq!(got, want);
    }

    /// Funs collected by the decoder during its own payload walk are exactly what a separate
    /// walk of the payload finds; a payload without funs (but with fun tag bytes) gives none.
    #[test]
    fn the_decoder_collects_payload_funs_in_its_own_walk() {
        use crate::message::{Decoded, Decoder};
        let frame_with = |payload: &dyn Fn(&mut Vec<u8>)| {
            // Pass-through, SEND {2, '', Pid}, then the payload.
            let mut f = vec![112, 131, 104, 3, 97, 2, 119, 0, 88];
            atom(&mut f, "n@h");
            f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 131]);
            payload(&mut f);
            f
        };
        let funs = frame_with(&|b| {
            b.extend_from_slice(&[104, 3, 97, 112]);
            new_fun(b, 2, |b| {
                export(b, "a", "b", 0);
                new_fun(b, 1, |b| b.extend_from_slice(&[97, 42]));
            });
            b.extend_from_slice(&[116, 0, 0, 0, 1]);
            atom(b, "k");
            export(b, "m", "f", 1);
        });
        // 112 and 113 (p, q) as integers: fun tag bytes that are not funs.
        let none = frame_with(&|b| b.extend_from_slice(&[104, 2, 97, 112, 97, 113]));
        let mut dec = Decoder::default();
        let mut got = Vec::new();
        assert!(matches!(dec.decode_collecting(&none, Some(&mut got)).unwrap(), Decoded::Message(_)));
        assert!(got.is_empty());
        let mut got = Vec::new();
        let Decoded::Message(m) = dec.decode_collecting(&funs, Some(&mut got)).unwrap() else { panic!("not a message") };
        let (mut w, mut whole) = (Walker::default(), Vec::new());
        collect(&mut w, m.bytes, m.payload.clone().unwrap(), Part::Payload, &mut whole).unwrap();
        assert_eq!(whole.len(), 4);
        assert_eq!(got, whole.iter().map(FunSite::span).collect::<Vec<_>>());
        let views: Vec<_> = got.iter().map(|s| s.site_in(&m).unwrap()).collect();
        assert_eq!(views, whole);
    }

    /// A NEW_FUN_EXT without free variables whose module atom is `module` (encoded), with
    /// this uniq.
    fn new_fun_mod(out: &mut Vec<u8>, module: &[u8], uniq: u8) {
        let start = out.len();
        out.extend_from_slice(&[112, 0, 0, 0, 0, 1]);
        out.extend_from_slice(&[uniq; 16]);
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(module);
        out.extend_from_slice(&[97, 0, 98, 0, 0, 0, 9]);
        out.push(88);
        atom(out, "n@h");
        out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        let size = (out.len() - start - 1) as u32;
        out[start + 1..start + 5].copy_from_slice(&size.to_be_bytes());
    }

    /// Funs naming their modules and functions in every atom encoding, an old-style fun, and
    /// funs inside funs, as a list (cache refs valid below 3).
    fn every_encoding() -> Vec<u8> {
        let encodings: [&[u8]; 6] = [
            &[119, 3, b'a', b'b', b'c'],
            &[118, 0, 3, b'a', b'b', b'd'],
            &[115, 3, b'a', b'b', 0xe9],
            &[100, 0, 2, b'a', b'b'],
            &[82, 2],
            &[119, 0],
        ];
        let mut items: Vec<Vec<u8>> = Vec::new();
        for (i, m) in encodings.iter().enumerate() {
            let mut b = Vec::new();
            new_fun_mod(&mut b, m, i as u8);
            items.push(b);
            for f in encodings {
                let mut b = vec![113];
                b.extend_from_slice(m);
                b.extend_from_slice(f);
                b.extend_from_slice(&[97, i as u8]);
                items.push(b);
            }
        }
        // FUN_EXT: NumFree 1, pid, module, index, uniq, then its free variable (an export).
        let mut old = vec![117, 0, 0, 0, 1, 88];
        atom(&mut old, "n@h");
        old.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        atom(&mut old, "old");
        old.extend_from_slice(&[97, 4, 98, 0, 0, 1, 0]);
        export(&mut old, "x", "y", 2);
        items.push(old);
        let mut outer = Vec::new();
        new_fun(&mut outer, 2, |b| {
            export(b, "a", "b", 0);
            new_fun(b, 1, |b| b.extend_from_slice(&[82, 1]));
        });
        items.push(outer);
        let mut b = vec![108];
        b.extend_from_slice(&(items.len() as u32).to_be_bytes());
        for i in items {
            b.extend_from_slice(&i);
        }
        b.push(106);
        b
    }

    /// A span's view, read again, is the view the eager walk built, and its key (read
    /// straight from the bytes) the view's key: in every atom encoding, at every nesting.
    #[test]
    fn spans_rebuild_the_eager_views_and_keys() {
        let b = every_encoding();
        let mut w = Walker::default();
        w.set_cache_refs(Some(3));
        let (mut sites, mut spans) = (Vec::new(), Vec::new());
        collect(&mut w, &b, 0..b.len(), Part::Control, &mut sites).unwrap();
        collect_spans(&mut w, &b, 0..b.len(), Part::Control, &mut spans).unwrap();
        assert_eq!(sites.len(), 6 + 36 + 2 + 3);
        assert_eq!(spans, sites.iter().map(FunSite::span).collect::<Vec<_>>());
        for (span, site) in spans.iter().zip(&sites) {
            assert_eq!(span.site(&b, Some(3)).as_ref(), Ok(site));
            assert_eq!(span.key(&b), site.kind.key(), "{site:?}");
            assert_eq!(span.key(&b).is_none(), matches!(site.kind, FunKind::Old(_)));
        }
        // The keys tell the encodings apart (Latin-1 from UTF-8 text, one cache ref from
        // another): no two of the first 42 funs share one.
        let keys: Vec<_> = spans[..42].iter().filter_map(|s| s.key(&b)).collect();
        assert_eq!(keys.len(), 42);
        for (i, k) in keys.iter().enumerate() {
            assert!(!keys[..i].contains(k), "{k:?}");
        }
    }

    /// Collecting spans checks what collecting sites does: on every truncation and on bytes
    /// changed anywhere, the same error at the same offset, or the same funs.
    #[test]
    fn spans_and_sites_fail_alike() {
        let good = every_encoding();
        let mut inputs: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        for at in 0..good.len() {
            for x in [0x00, 0x01, 0x80, 0xff] {
                let mut b = good.clone();
                b[at] = if x == 0x01 { b[at].wrapping_add(1) } else { x };
                inputs.push(b);
            }
        }
        let mut w = Walker::default();
        w.set_cache_refs(Some(3));
        let mut errors = 0;
        for b in &inputs {
            let (mut sites, mut spans) = (Vec::new(), Vec::new());
            let r1 = collect(&mut w, b, 0..b.len(), Part::Payload, &mut sites);
            let r2 = collect_spans(&mut w, b, 0..b.len(), Part::Payload, &mut spans);
            assert_eq!(r1, r2, "{b:?}");
            errors += r1.is_err() as usize;
            if r1.is_ok() {
                assert_eq!(spans, sites.iter().map(FunSite::span).collect::<Vec<_>>());
                for (span, site) in spans.iter().zip(&sites) {
                    assert_eq!(span.site(b, Some(3)).as_ref(), Ok(site));
                    assert_eq!(span.key(b), site.kind.key());
                }
            }
        }
        assert!(errors > good.len(), "the corruptions are caught ({errors})");
    }
}
