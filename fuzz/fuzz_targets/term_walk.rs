//! Any bytes as a versioned term (compressed included): walk, collect funs, print, and an
//! identity rewrite must be byte-identical whenever the walk succeeds.
#![no_main]
use distgate_codec::term::{versioned_body, Limits, Skip, Walker};
use distgate_codec::{fun, print, rewrite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_depth: 10_000, max_inflated: 1 << 20 };
    let mut scratch = Vec::new();
    let Ok(body) = versioned_body(data, &mut scratch, limits.max_inflated) else { return };
    let mut w = Walker::new(limits);
    let Ok(end) = w.walk(body, 0, &mut Skip) else { return };
    let mut funs = Vec::new();
    fun::collect(&mut w, body, 0..end, fun::Part::Payload, &mut funs).expect("walked once, walks again");
    let mut out = Vec::new();
    rewrite::apply(&body[..end], &funs, &[], &mut out).expect("identity rewrite");
    assert_eq!(out, &body[..end]);
    let _ = print::format_term(body, 0, &(), &mut w);
});
