//! Finding every fun in a message: NEW_FUN_EXT (local), FUN_EXT (old local) and EXPORT_EXT
//! (`fun M:F/A`), wherever it sits — control or payload, inside tuples, lists, maps, or the
//! free variables of another fun — with its byte extent and decoded fields.

use crate::error::Result;
use crate::message::Message;
use crate::term::{Export, NewFun, OldFun, Term, Visitor, Walker};
use core::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FunKind<'a> {
    New(NewFun<'a>),
    Old(OldFun<'a>),
    Export(Export<'a>),
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
}

pub(crate) struct Collect<'v, 'a> {
    out: &'v mut Vec<FunSite<'a>>,
    /// Indices (into `out`) of the funs entered and not yet left, innermost last.
    open: OpenStack,
    part: Part,
}

impl<'v, 'a> Collect<'v, 'a> {
    /// A visitor appending the funs of the walked term to `out` (the decoder uses it for
    /// [`crate::message::Decoder::decode_collecting`]).
    pub(crate) fn new(out: &'v mut Vec<FunSite<'a>>, part: Part) -> Self {
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

impl<'a> Visitor<'a> for Collect<'_, 'a> {
    /// Only funs are of interest: every other term is walked (and validated) on the walker's
    /// lean path, with no view built and no call here. So enter and leave come in nested
    /// pairs for funs alone, and `open` is exactly the chain of enclosing funs.
    #[inline(always)]
    fn wants(tag: u8) -> bool {
        matches!(tag, crate::tag::NEW_FUN | crate::tag::FUN | crate::tag::EXPORT)
    }
    #[inline]
    fn enter(&mut self, at: usize, term: &Term<'a>) -> Result<()> {
        let kind = match *term {
            Term::NewFun(f) => FunKind::New(f),
            Term::OldFun(f) => FunKind::Old(f),
            Term::Export(e) => FunKind::Export(e),
            // Not shown (see `wants`); kept paired all the same.
            _ => {
                self.open.push(usize::MAX);
                return Ok(());
            }
        };
        let nesting = self.open.len() as u32;
        self.open.push(self.out.len());
        self.out.push(FunSite { at, end: at, kind, nesting, part: self.part });
        Ok(())
    }
    #[inline]
    fn leave(&mut self, _at: usize, end: usize) {
        if let Some(site) = self.open.pop().and_then(|i| self.out.get_mut(i)) {
            site.end = end;
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
    let mut c = Collect::new(out, part);
    w.walk(buf, range.start, &mut c)?;
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
        assert_eq!(got, whole);
    }
}
