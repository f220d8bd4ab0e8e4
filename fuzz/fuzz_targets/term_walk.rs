//! Any bytes as a versioned term (compressed included): walk, collect funs (with views and
//! without, which must agree), print, and an identity rewrite must be byte-identical whenever
//! the walk succeeds.
#![no_main]
use distgate_codec::term::{versioned_body, Limits, Skip, Walker};
use distgate_codec::{fun, print, rewrite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_depth: 10_000, max_inflated: 1 << 20 };
    let mut scratch = Vec::new();
    let Ok(body) = versioned_body(data, &mut scratch, limits.max_inflated) else { return };
    let mut w = Walker::new(limits);
    // Collecting funs with views and without them: the same checks (the same error, at the
    // same offset), the same funs; a view read again is the view, a key the view's.
    let (mut sites, mut spans) = (Vec::new(), Vec::new());
    let with = fun::collect(&mut w, body, 0..body.len(), fun::Part::Payload, &mut sites);
    let without = fun::collect_spans(&mut w, body, 0..body.len(), fun::Part::Payload, &mut spans);
    assert_eq!(with, without);
    if with.is_ok() {
        assert_eq!(spans, sites.iter().map(fun::FunSite::span).collect::<Vec<_>>());
        for (span, site) in spans.iter().zip(&sites) {
            assert_eq!(span.site(body, None).as_ref(), Ok(site));
            assert_eq!(span.key(body), site.kind.key());
        }
    }
    let Ok(end) = w.walk(body, 0, &mut Skip) else { return };
    let mut funs = Vec::new();
    fun::collect(&mut w, body, 0..end, fun::Part::Payload, &mut funs).expect("walked once, walks again");
    let mut out = Vec::new();
    rewrite::apply(&body[..end], &funs, &[], &mut out).expect("identity rewrite");
    assert_eq!(out, &body[..end]);
    let _ = print::format_term(body, 0, &(), &mut w);
});
