//! Any bytes as a `.beam` file: gzip or not, the container, the atom table (all three forms),
//! every table. Parsing must return (never panic), and when it succeeds every accessor must
//! work: every atom index the tables hold resolves, and the MD5 can be computed.
#![no_main]
use distgate_codec::beam::{self, Beam};
use libfuzzer_sys::fuzz_target;

/// Chunk ids the reader cares about, plus two it skips.
const IDS: [&[u8; 4]; 12] =
    [b"AtU8", b"Atom", b"Code", b"StrT", b"ImpT", b"ExpT", b"FunT", b"LitT", b"LocT", b"Meta", b"Line", b"Dbgi"];

/// A well-formed container from `(id, length, bytes…)` triples, so the table parsers see deep
/// input without a seed corpus (the raw half of the inputs exercises the container itself).
fn assemble(mut d: &[u8]) -> Vec<u8> {
    let mut body = b"BEAM".to_vec();
    while d.len() >= 2 {
        let id = IDS[d[0] as usize % IDS.len()];
        let len = (d[1] as usize).min(d.len() - 2);
        body.extend_from_slice(id);
        body.extend_from_slice(&(len as u32).to_be_bytes());
        body.extend_from_slice(&d[2..2 + len]);
        body.resize(body.len().div_ceil(4) * 4, 0);
        d = &d[2 + len..];
    }
    let mut out = b"FOR1".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let assembled;
    let file: &[u8] = if mode & 1 == 0 {
        rest
    } else {
        assembled = assemble(rest);
        &assembled
    };
    let mut scratch = Vec::new();
    let Ok(img) = beam::image(file, &mut scratch, 1 << 20) else { return };
    let Ok(b) = Beam::parse(img) else { return };
    let _ = b.md5();
    assert!(!b.atoms().is_empty());
    let _ = b.module();
    for e in b.exports().chain(b.locals()) {
        assert!(b.atom(e.function).is_some());
        assert!(e.arity <= beam::MAX_ARITY);
    }
    for l in b.lambdas() {
        assert!(b.atom(l.function).is_some());
    }
    for i in b.imports() {
        assert!(b.atom(i.module).is_some() && b.atom(i.function).is_some());
    }
});
