//! Terms and their external-format encodings, produced (and checked) by real
//! `erl`, for codec tests.
//!
//! Each call starts one `erl` (about a second); data goes through files in
//! a private temp dir, so sizes and bytes are unrestricted.

use std::time::Duration;

use crate::erl::{self, string_literal};
use crate::util::TempDir;

/// The encodings produced for every term, in file order:
/// `term_to_binary(T)`, `term_to_binary(T, [compressed])`, and with
/// `{minor_version, 1}`, `{minor_version, 2}`, `{minor_version, 0}` (old
/// FLOAT_EXT text floats). (OTP 25's default is minor version 1, so
/// `default` and `minor_version_1` are equal there; OTP 26+ defaults to 2.)
pub const VARIANTS: [&str; 5] = [
    "default",
    "compressed",
    "minor_version_1",
    "minor_version_2",
    "minor_version_0",
];

/// Generating a corpus of a few thousand terms takes seconds; allow for load.
const TIMEOUT: Duration = Duration::from_secs(300);

/// One encoding of one term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusTerm {
    /// Which term (0-based); all variants of a term share it.
    pub index: usize,
    /// One of [`VARIANTS`].
    pub variant: String,
    /// The external format, starting with 131.
    pub bytes: Vec<u8>,
    /// `lists:flatten(io_lib:format("~w", [T]))` as UTF-8, printed by the
    /// VM that made `bytes` (the pairs of a map with more than 32 keys come
    /// in that VM's hash order, which matches the order in `bytes`).
    pub w: String,
    /// Like `w`, but with map pairs always in key order. Equal to `w` unless
    /// the term holds a map with more than 32 keys. Unlike `w`, this text is
    /// the same whichever VM prints it: in OTP 25 a large map's hash order
    /// differs between VM instances, so compare with
    /// [`binary_to_term_canonical`] rather than [`binary_to_term_w`] when
    /// handing bytes to another erl.
    pub w_canonical: String,
    /// The term contains a pid, port, reference or fun.
    pub has_opaque: bool,
}

/// `count` terms from erl's `dg_gen` (seeded with `seed`, so the same
/// arguments give the same terms), each in every one of [`VARIANTS`]: the
/// result has `count * VARIANTS.len()` entries, grouped by term.
///
/// The first ~100 terms are fixed edge cases covering every tag erl emits
/// (integers at each size boundary, bignums over 255 bytes, special floats
/// including -0.0 and subnormals, Latin-1/UTF-8/empty/255-character atoms,
/// STRING_EXT at its 65535 limit and beyond, improper lists, 256-element
/// tuples, flat and hash maps, bitstrings, local and external pids, ports
/// (incl. V4_PORT_EXT), references, local funs with and without free
/// variables, export funs, deep nesting); the rest are random, half of them
/// allowed to contain opaque values (pids, ports, refs, funs): typically a
/// quarter of all entries have `has_opaque`, the rest are plain.
pub fn random_terms(seed: u64, count: usize) -> Vec<CorpusTerm> {
    let dir = TempDir::new("dg_corpus");
    let file = dir.path().join("corpus.bin");
    let path = path_literal(&file);
    erl::try_eval(
        &format!("dg_gen:write_corpus({seed}, {count}, {path})"),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("testkit: generating the corpus failed: {e}"));
    let data = std::fs::read(&file)
        .unwrap_or_else(|e| panic!("testkit: cannot read {}: {e}", file.display()));
    parse_corpus(&data).unwrap_or_else(|e| panic!("testkit: malformed corpus file: {e}"))
}

/// `term_to_binary(Expr, Opts)` computed by erl. `expr` is an Erlang
/// expression (final `.` optional; funs in it are erl_eval closures), `opts`
/// an Erlang list such as `"[]"`, `"[compressed]"` or
/// `"[{minor_version, 2}]"`. Panics with erl's message on failure.
pub fn term_from_expr(expr: &str, opts: &str) -> Vec<u8> {
    let dir = TempDir::new("dg_t2b");
    let (e, o, out) = (
        dir.path().join("expr"),
        dir.path().join("opts"),
        dir.path().join("out"),
    );
    write(&e, expr.as_bytes());
    write(&o, opts.as_bytes());
    let call = format!(
        "dg_util:term_from_expr_file({}, {}, {})",
        path_literal(&e),
        path_literal(&o),
        path_literal(&out)
    );
    erl::try_eval(&call, TIMEOUT)
        .unwrap_or_else(|err| panic!("testkit: term_from_expr({expr:?}, {opts:?}): {err}"));
    std::fs::read(&out)
        .unwrap_or_else(|err| panic!("testkit: cannot read {}: {err}", out.display()))
}

/// Asks erl to decode `bytes` with `binary_to_term/2` and returns the `~w`
/// text of the term, or the error (`"error:badarg"`, or `"trailing bytes:
/// ..."` when the bytes continue past the end of the term). Maps with more
/// than 32 keys print in the decoding VM's hash order: see
/// [`binary_to_term_canonical`].
pub fn binary_to_term_w(bytes: &[u8]) -> Result<String, String> {
    binary_to_term_w_many(&[bytes])
        .pop()
        .unwrap_or_else(|| Err("no result from erl".into()))
}

/// [`binary_to_term_w`] for many inputs with a single erl run (results in
/// input order).
pub fn binary_to_term_w_many<B: AsRef<[u8]>>(items: &[B]) -> Vec<Result<String, String>> {
    decode_in_erl(items, "w")
}

/// Like [`binary_to_term_w`] but returns the text in the form of
/// [`CorpusTerm::w_canonical`] (map pairs in key order), which does not
/// depend on the VM.
pub fn binary_to_term_canonical(bytes: &[u8]) -> Result<String, String> {
    binary_to_term_canonical_many(&[bytes])
        .pop()
        .unwrap_or_else(|| Err("no result from erl".into()))
}

/// [`binary_to_term_canonical`] for many inputs with a single erl run.
pub fn binary_to_term_canonical_many<B: AsRef<[u8]>>(items: &[B]) -> Vec<Result<String, String>> {
    decode_in_erl(items, "canonical")
}

/// One erl run: `dg_util:b2t_w_file/3` with `style` `w` or `canonical`.
fn decode_in_erl<B: AsRef<[u8]>>(items: &[B], style: &str) -> Vec<Result<String, String>> {
    let dir = TempDir::new("dg_b2t");
    let (input, out) = (dir.path().join("in"), dir.path().join("out"));
    let mut data = Vec::new();
    for item in items {
        let item = item.as_ref();
        let len = u32::try_from(item.len()).expect("testkit: a term over 4 GiB");
        data.extend_from_slice(&len.to_be_bytes());
        data.extend_from_slice(item);
    }
    write(&input, &data);
    let call = format!(
        "dg_util:b2t_w_file({}, {}, {style})",
        path_literal(&input),
        path_literal(&out)
    );
    erl::try_eval(&call, TIMEOUT).unwrap_or_else(|e| panic!("testkit: binary_to_term in erl: {e}"));
    let answer = std::fs::read(&out)
        .unwrap_or_else(|e| panic!("testkit: cannot read {}: {e}", out.display()));
    let results =
        parse_b2t(&answer).unwrap_or_else(|e| panic!("testkit: malformed erl answer: {e}"));
    assert_eq!(
        results.len(),
        items.len(),
        "testkit: erl answered for a different number of terms"
    );
    results
}

fn write(path: &std::path::Path, data: &[u8]) {
    std::fs::write(path, data)
        .unwrap_or_else(|e| panic!("testkit: cannot write {}: {e}", path.display()));
}

fn path_literal(p: &std::path::Path) -> String {
    let s = p
        .to_str()
        .unwrap_or_else(|| panic!("testkit: temp path is not UTF-8: {}", p.display()));
    string_literal(s)
}

/// Bounds-checked big-endian reader over erl's output files.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| format!("need {n} bytes at offset {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn text(&mut self, n: usize) -> Result<String, String> {
        let at = self.pos;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| format!("bad UTF-8 at offset {at}"))
    }

    fn at_end(&self) -> bool {
        self.pos == self.data.len()
    }
}

/// See `erl/dg_gen.erl` for the format.
fn parse_corpus(data: &[u8]) -> Result<Vec<CorpusTerm>, String> {
    let mut c = Cursor { data, pos: 0 };
    if c.take(4)? != b"DGC1" {
        return Err("bad magic".into());
    }
    let mut out = Vec::new();
    let mut index = 0;
    while !c.at_end() {
        let has_opaque = c.u8()? != 0;
        let wlen = c.u32()?;
        let w = c.text(wlen)?;
        let clen = c.u32()?;
        let w_canonical = if clen == 0 { w.clone() } else { c.text(clen)? };
        let variants = c.u8()?;
        for _ in 0..variants {
            let vlen = c.u8()? as usize;
            let variant = c.text(vlen)?;
            let blen = c.u32()?;
            let bytes = c.take(blen)?.to_vec();
            out.push(CorpusTerm {
                index,
                variant,
                bytes,
                w: w.clone(),
                w_canonical: w_canonical.clone(),
                has_opaque,
            });
        }
        index += 1;
    }
    Ok(out)
}

/// Status:8 Len:32 Text per input, see `erl/dg_util.erl`.
fn parse_b2t(data: &[u8]) -> Result<Vec<Result<String, String>>, String> {
    let mut c = Cursor { data, pos: 0 };
    let mut out = Vec::new();
    while !c.at_end() {
        let status = c.u8()?;
        let len = c.u32()?;
        let text = c.text(len)?;
        out.push(if status == 0 { Ok(text) } else { Err(text) });
    }
    Ok(out)
}
