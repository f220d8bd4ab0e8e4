//! testkit::corpus against real erl.

use std::collections::HashMap;

use distgate_testkit::corpus::{
    binary_to_term_canonical, binary_to_term_canonical_many, binary_to_term_w,
    binary_to_term_w_many, random_terms, term_from_expr, VARIANTS,
};

#[test]
fn corpus_has_every_variant_and_round_trips_through_erl() {
    let start = std::time::Instant::now();
    let terms = random_terms(42, 500);
    eprintln!("corpus: {} entries in {:?}", terms.len(), start.elapsed());

    let mut per_variant: HashMap<&str, usize> = HashMap::new();
    for t in &terms {
        assert!(!t.w.is_empty(), "empty ~w for term {}", t.index);
        assert_eq!(
            t.bytes.first(),
            Some(&131),
            "term {} {}",
            t.index,
            t.variant
        );
        *per_variant.entry(t.variant.as_str()).or_default() += 1;
    }
    for v in VARIANTS {
        assert!(
            per_variant.get(v).copied().unwrap_or(0) >= 500,
            "{v}: {per_variant:?}"
        );
    }
    // Plenty of both: opaque terms, and plain ones whose text is comparable.
    let opaque = terms.iter().filter(|t| t.has_opaque).count();
    assert!(
        opaque * 100 >= terms.len() * 15,
        "{opaque} of {} opaque",
        terms.len()
    );
    assert!(
        opaque * 2 <= terms.len(),
        "{opaque} of {} opaque",
        terms.len()
    );
    // A few fixed edge cases are present.
    for w in [
        "-0.0",
        "'hello world'",
        "'A'",
        "''",
        "[1,2|3]",
        "<<1:1>>",
        "fun lists:map/2",
    ] {
        assert!(terms.iter().any(|t| t.w == w), "missing {w}");
    }
    // minor_version 0 writes old text floats (FLOAT_EXT, tag 99).
    let f = terms
        .iter()
        .find(|t| t.w == "1.5" && t.variant == "minor_version_0")
        .unwrap();
    assert_eq!(f.bytes[1], 99);
    // Same seed, same terms (opaque ones aside: pids, refs, ports are new).
    let again = random_terms(42, 120);
    assert_eq!(again.len(), 120 * VARIANTS.len());
    for (a, b) in again.iter().zip(&terms).filter(|(a, _)| !a.has_opaque) {
        assert_eq!(a.w, b.w);
    }

    // Large maps are where w and w_canonical differ; the corpus has them.
    assert!(terms.iter().any(|t| t.w != t.w_canonical));
    assert!(terms
        .iter()
        .all(|t| t.w == t.w_canonical || t.w.starts_with("#{") || t.w.contains("#{")));

    // A fresh erl decodes every entry. Unless the term holds pids/ports/refs/
    // funs (~w shows other nodes' identifiers by a VM-local node index), the
    // canonical text must match, and so must plain ~w when no large map is
    // involved (a large map prints in the decoding VM's own hash order).
    let bytes: Vec<&[u8]> = terms.iter().map(|t| t.bytes.as_slice()).collect();
    let canonical = binary_to_term_canonical_many(&bytes);
    let plain = binary_to_term_w_many(&bytes);
    for ((t, c), p) in terms.iter().zip(&canonical).zip(&plain) {
        let (c, p) = match (c, p) {
            (Ok(c), Ok(p)) => (c, p),
            (Err(e), _) | (_, Err(e)) => {
                panic!(
                    "term {} {}: erl cannot decode its own bytes: {e}",
                    t.index, t.variant
                )
            }
        };
        if !t.has_opaque {
            assert_eq!(c, &t.w_canonical, "term {} {}", t.index, t.variant);
            if t.w == t.w_canonical {
                assert_eq!(p, &t.w, "term {} {}", t.index, t.variant);
            }
        }
    }
}

#[test]
fn one_off_terms_and_decoding() {
    let bytes = term_from_expr("{a, 1.5, <<1:3>>, \"héllo\"}", "[]");
    assert_eq!(bytes[..3], [131, 104, 4]);
    assert_eq!(
        binary_to_term_w(&bytes).as_deref(),
        Ok("{a,1.5,<<1:3>>,[104,233,108,108,111]}")
    );
    let compressed = term_from_expr("lists:duplicate(1000, x)", "[compressed]");
    assert_eq!(compressed[..2], [131, 80]);
    assert_eq!(
        term_from_expr("'Ω'", "[{minor_version, 2}]"),
        [131, 119, 2, 0xCE, 0xA9]
    );

    let big_map = term_from_expr(
        "maps:from_list([{{k, N}, N} || N <- lists:seq(1, 40)])",
        "[]",
    );
    let c = binary_to_term_canonical(&big_map).unwrap();
    assert!(c.starts_with("#{{k,1} => 1,{k,2} => 2,"), "{c}");

    let err = binary_to_term_w(&[131, 255]).unwrap_err();
    assert!(err.contains("badarg"), "{err}");
    let err = binary_to_term_w(&[131, 97, 1, 0]).unwrap_err();
    assert!(err.contains("trailing"), "{err}");
}
