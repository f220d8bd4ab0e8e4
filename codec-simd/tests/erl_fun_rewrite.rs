//! A local fun rewritten to an export fun (`fun M:F/A`) and handed to a real node with
//! `binary_to_term` is `fun M:F/A` there and callable — also when the rewritten fun sits in
//! the free variables of another fun, whose Size the rewriter must fix.

use distgate_codec::fun::{self, FunKind};
use distgate_codec::rewrite::{self, Edit};
use distgate_codec::term::{Skip, Walker};
use distgate_testkit::erl;
use distgate_testkit::{Node, NodeOptions, TempDir};

const MODULE: &str = r#"
-module(dg_rw).
-export([double/1, make/0, make_nested/0]).
double(X) -> X * 2.
%% In OTP 25 `fun double/1` is a local fun whose lambda entry names double/1 itself.
make() -> fun double/1.
%% A closure whose free variable is that local fun.
make_nested() -> F = fun double/1, fun(Y) -> F(Y) + 1 end.
"#;

fn bytes_literal(b: &[u8]) -> String {
    let items: Vec<String> = b.iter().map(|x| x.to_string()).collect();
    format!("<<{}>>", items.join(","))
}

#[test]
fn local_fun_rewritten_to_export_is_callable_on_a_real_node() {
    let dir = TempDir::new("dg_rw");
    let src = dir.path().join("dg_rw.erl");
    std::fs::write(&src, MODULE).unwrap();
    erl::compile(&[&src], dir.path()).unwrap();
    let node = Node::start_with(
        "dgrw",
        NodeOptions { extra_args: vec!["-pa".into(), dir.path().display().to_string()], ..NodeOptions::default() },
    );
    // term_to_binary on the node itself: real NEW_FUN_EXT bytes from real compiled code.
    let hex = node.eval(
        "T = {wrapped, dg_rw:make(), [dg_rw:make_nested()]}, \
         lists:flatten([io_lib:format(\"~2.16.0b\", [X]) || <<X>> <= term_to_binary(T)]).",
    );
    let hex = hex.trim_matches('"');
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    assert_eq!(bytes[0], 131);
    let body = &bytes[1..];

    let mut w = Walker::default();
    let mut funs = Vec::new();
    fun::collect(&mut w, body, 0..body.len(), fun::Part::Payload, &mut funs).unwrap();
    // make() at top level, make_nested()'s closure, and the fun in its free variables.
    let locals: Vec<_> = funs.iter().filter(|f| matches!(f.kind, FunKind::New(_))).collect();
    assert_eq!(locals.len(), 3, "{funs:#?}");
    let nested = locals.iter().filter(|f| f.nesting == 1).count();
    assert_eq!(nested, 1, "one fun must sit inside another's free variables");

    // Rewrite every fun without free variables (the two `fun double/1`) to `fun dg_rw:double/1`.
    let mut export = Vec::new();
    rewrite::encode_export("dg_rw", "double", 1, &mut export);
    let edits: Vec<Edit> = locals
        .iter()
        .filter(|f| matches!(f.kind, FunKind::New(nf) if nf.num_free == 0))
        .map(|f| Edit { range: f.range(), bytes: export.clone() })
        .collect();
    assert_eq!(edits.len(), 2);
    let mut out = vec![131];
    let mut body_out = Vec::new();
    rewrite::apply(body, &funs, &edits, &mut body_out).unwrap();
    out.extend_from_slice(&body_out);
    assert!(out.len() < bytes.len(), "an export fun is shorter than the local fun it replaces");
    // Our own walker accepts the result (it checks every fun's Size against its extent).
    w.walk_exact(&body_out, 0, &mut Skip).unwrap();

    let r = node.eval(&format!(
        "{{wrapped, F, [G]}} = binary_to_term({}), \
         {{lists:flatten(io_lib:format(\"~w\", [F])), erlang:fun_info(F, type), F(21), G(21)}}.",
        bytes_literal(&out)
    ));
    assert_eq!(r, "{\"fun dg_rw:double/1\",{type,external},42,43}");
}

#[test]
fn overlapping_or_straddling_edits_are_refused() {
    let mut w = Walker::default();
    // {fun-with-one-free-var, ok}: an edit crossing the fun's end (half inside, half outside)
    // cannot produce a valid fun.
    let mut f = vec![104, 2, 112, 0, 0, 0, 0, 1];
    f.extend_from_slice(&[9; 16]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 119, 1, b'm', 97, 0, 97, 0]);
    f.extend_from_slice(&[88, 119, 1, b'n', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[104, 2, 97, 1, 97, 2]);
    let size = (f.len() - 3) as u32;
    f[3..7].copy_from_slice(&size.to_be_bytes());
    f.extend_from_slice(&[119, 2, b'o', b'k']);
    w.walk_exact(&f, 0, &mut Skip).unwrap();
    let mut funs = Vec::new();
    fun::collect(&mut w, &f, 0..f.len(), fun::Part::Payload, &mut funs).unwrap();
    let fun_end = funs[0].end;
    let mut out = Vec::new();
    let straddle = [Edit { range: fun_end - 2..fun_end + 2, bytes: vec![106] }];
    assert!(rewrite::apply(&f, &funs, &straddle, &mut out).is_err());
    let overlap = [Edit { range: 2..5, bytes: vec![] }, Edit { range: 4..6, bytes: vec![] }];
    assert!(rewrite::apply(&f, &funs, &overlap, &mut out).is_err());
    // Replacing the free variable {1,2} by [] shrinks the fun by 5 bytes: Size follows.
    let inner = fun_end - 6..fun_end;
    rewrite::apply(&f, &funs, &[Edit { range: inner, bytes: vec![106] }], &mut out).unwrap();
    w.walk_exact(&out, 0, &mut Skip).unwrap();
    assert_eq!(u32::from_be_bytes(out[3..7].try_into().unwrap()), size - 5);
}
