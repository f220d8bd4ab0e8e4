//! Differential tests against real erl: thousands of random terms made by `term_to_binary`
//! (plain, compressed, minor versions 0, 1, 2), each of which must walk cleanly to its last
//! byte, survive an identity rewrite byte for byte, and print exactly as erl's `~w`.

use distgate_codec::fun::{self, FunKind};
use distgate_codec::rewrite::{self, Edit};
use distgate_codec::term::{versioned_body, Limits, Skip, Walker};
use distgate_codec::print;
use distgate_testkit::{random_terms, CorpusTerm};

fn corpus() -> Vec<CorpusTerm> {
    // 800 terms × 5 encodings = 4000 encoded terms; the first ~100 are erl's edge cases.
    let terms = random_terms(20261121, 800);
    assert!(terms.len() >= 4000, "erl produced only {} terms", terms.len());
    terms
}

#[test]
fn erl_terms_walk_rewrite_and_print() {
    let terms = corpus();
    let mut w = Walker::new(Limits::default());
    let mut scratch = Vec::new();
    let mut out = Vec::new();
    let (mut printed, mut with_funs, mut compressed) = (0, 0, 0);
    let mut failures = Vec::new();
    for t in &terms {
        let ctx = |what: &str| format!("term {} ({}): {what}: ~w = {:.200}", t.index, t.variant, t.w);
        if t.bytes.get(1) == Some(&80) {
            compressed += 1;
        }
        let body = match versioned_body(&t.bytes, &mut scratch, 64 << 20) {
            Ok(b) => b,
            Err(e) => {
                failures.push(ctx(&format!("body: {e}")));
                continue;
            }
        };
        if let Err(e) = w.walk_exact(body, 0, &mut Skip) {
            failures.push(ctx(&format!("walk: {e}")));
            continue;
        }
        // Identity rewrite: every fun replaced by its own bytes, plus no-edit.
        let mut funs = Vec::new();
        fun::collect(&mut w, body, 0..body.len(), fun::Part::Payload, &mut funs).unwrap();
        if !funs.is_empty() {
            with_funs += 1;
        }
        let edits: Vec<Edit> = funs
            .iter()
            .filter(|f| f.nesting == 0)
            .map(|f| Edit { range: f.range(), bytes: body[f.range()].to_vec() })
            .collect();
        rewrite::apply(body, &funs, &edits, &mut out).unwrap();
        if out != body {
            failures.push(ctx("identity rewrite changed bytes"));
        }
        for f in &funs {
            if let FunKind::New(nf) = f.kind {
                assert_eq!(nf.size_at + nf.size as usize, f.end, "{}", ctx("fun extent"));
            }
        }
        if !t.has_opaque {
            match print::format_versioned(&t.bytes) {
                Ok(s) if s == t.w => printed += 1,
                Ok(s) => failures.push(ctx(&format!("printed {s:.200}"))),
                Err(e) => failures.push(ctx(&format!("print: {e}"))),
            }
        }
    }
    assert!(failures.is_empty(), "{} failures, first ones:\n{}", failures.len(), failures[..failures.len().min(10)].join("\n"));
    // The corpus must really cover what it claims to, or this test proves little.
    assert!(printed >= 2500, "only {printed} terms compared with erl's ~w");
    assert!(with_funs >= 20, "only {with_funs} terms with funs");
    assert!(compressed >= 100, "only {compressed} compressed terms");
}
