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

struct Collect<'v, 'a> {
    out: &'v mut Vec<FunSite<'a>>,
    /// Indices (into `out`) of funs whose free variables are being walked.
    open: Vec<usize>,
    part: Part,
}

impl<'a> Visitor<'a> for Collect<'_, 'a> {
    #[inline]
    fn enter(&mut self, at: usize, term: &Term<'a>) -> Result<()> {
        let kind = match *term {
            Term::NewFun(f) => FunKind::New(f),
            Term::OldFun(f) => FunKind::Old(f),
            Term::Export(e) => FunKind::Export(e),
            _ => return Ok(()),
        };
        let nesting = self.open.len() as u32;
        self.out.push(FunSite { at, end: at, kind, nesting, part: self.part });
        if term.children() > 0 {
            self.open.push(self.out.len() - 1);
        }
        Ok(())
    }
    #[inline]
    fn leave(&mut self, at: usize, end: usize) {
        if let Some(&i) = self.open.last() {
            if self.out[i].at == at {
                self.out[i].end = end;
                self.open.pop();
                return;
            }
        }
        if let Some(last) = self.out.last_mut() {
            if last.at == at && last.end == at {
                last.end = end;
            }
        }
    }
}

/// Append every fun in the term at `range` of `buf` to `out`. Skips the walk when the bytes
/// cannot contain a fun tag at all ([`crate::scan::may_contain_fun`]).
pub fn collect<'a>(w: &mut Walker, buf: &'a [u8], range: Range<usize>, part: Part, out: &mut Vec<FunSite<'a>>) -> Result<()> {
    if !crate::scan::may_contain_fun(&buf[range.clone()]) {
        return Ok(());
    }
    let mut c = Collect { out, open: Vec::new(), part };
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
