//! Whatever the text, checking it never panics, and every error it reports is one line with a
//! position inside the file. Inputs are the shipped examples with random edits: close enough to
//! a real configuration to reach deep into the schema, broken in ways nobody wrote a test for.

use proptest::prelude::*;

const EXAMPLES: &[&str] = &[
    include_str!("../../deploy/examples/policy-gateway.toml"),
    include_str!("../../deploy/examples/dc-sidecar-a.toml"),
    include_str!("../../deploy/examples/bench-rig.toml"),
    include_str!("../src/default.toml"),
    include_str!("golden/cookie-never-printed.toml"),
];

/// Pieces that mean something in TOML or in the schema's grammars.
const PIECES: &[&str] = &[
    "[", "]", "[[", "]]", "{", "}", "=", "\"", "'", ",", ".", "\n", " ", "#", "*", ":", "/", "-", "0", "9",
    "99999999999999999999", "\"10s\"", "\"64KiB\"", "true", "cluster", "route", "policy", "runtime", "limits",
    "cookie", "listen", "threads", "é", "\t", "\\", "\"\"\"",
];

#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, piece: usize },
    DuplicateLine { line: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), any::<usize>()).prop_map(|(at, piece)| Edit::Insert { at, piece }),
        any::<usize>().prop_map(|line| Edit::DuplicateLine { line }),
    ]
}

fn apply(src: &str, edits: &[Edit]) -> String {
    let mut s = src.to_string();
    for e in edits {
        let boundary = |s: &String, at: usize| {
            let mut at = at % (s.len() + 1);
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            at
        };
        match *e {
            Edit::Delete { at, len } => {
                let a = boundary(&s, at);
                let b = boundary(&s, (a + len).min(s.len()));
                s.replace_range(a..b.max(a), "");
            }
            Edit::Insert { at, piece } => {
                let a = boundary(&s, at);
                s.insert_str(a, PIECES[piece % PIECES.len()]);
            }
            Edit::DuplicateLine { line } => {
                let lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let i = line % lines.len();
                    let mut v: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                    v.insert(i, v[i].clone());
                    s = v.join("\n");
                }
            }
        }
    }
    s
}

/// The values written under a `cookie` key of a `[[cluster]]`, in the edited text as the TOML
/// parser sees it (an edit can make a cookie out of any string, or a key out of a cookie).
fn inline_cookies(src: &str) -> Vec<String> {
    use toml::de::{DeTable, DeValue};
    let (root, _) = DeTable::parse_recoverable(src);
    let mut out = Vec::new();
    for (k, v) in root.get_ref().iter() {
        if let (true, DeValue::Array(items)) = (k.get_ref() == "cluster", v.get_ref()) {
            for item in items.iter() {
                if let DeValue::Table(t) = item.get_ref() {
                    for (k, v) in t.iter() {
                        if let (true, DeValue::String(s)) = (k.get_ref() == "cookie", v.get_ref()) {
                            // Only the test data's secrets: an edit can also make a cookie of
                            // a word like "cluster", which messages contain for other reasons.
                            if s.contains("HUSH") {
                                out.push(s.to_string());
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_cookie_case_has_cookies() {
    assert!(inline_cookies(EXAMPLES[4]).len() >= 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn edited_examples_check_cleanly(which in 0..EXAMPLES.len(), edits in prop::collection::vec(edit(), 1..6)) {
        let src = apply(EXAMPLES[which], &edits);
        let lines = src.split('\n').count();
        if let Err(errors) = distgate_config::parse(&src, "x.toml") {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                prop_assert!(e.line >= 1 && e.line <= lines, "{e} (file has {lines} lines)");
                prop_assert!(e.column >= 1, "{e}");
                let line = e.to_string();
                prop_assert!(!line.contains('\n'), "{line:?}");
                for secret in inline_cookies(&src) {
                    prop_assert!(!line.contains(&secret), "{line}");
                }
            }
        }
    }
}
