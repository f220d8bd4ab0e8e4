//! testkit::erl against the real tools.

use std::time::Duration;

use distgate_testkit::erl::{self, ErlError};
use distgate_testkit::TempDir;

#[test]
fn eval_returns_stdout_and_halts() {
    let out = erl::eval(r#"io:format("~p~n", [lists:sum([1, 2, 3])])."#);
    assert_eq!(out.trim(), "6");
    // The testkit modules are on the code path.
    let out = erl::eval("io:format(\"~p\", [code:which(dg_epmd) =/= non_existing])");
    assert_eq!(out, "true");
}

#[test]
fn eval_reports_exceptions() {
    match erl::try_eval("erlang:error(boom)", Duration::from_secs(60)) {
        Err(ErlError::Raised { message, .. }) => assert!(message.contains("boom"), "{message}"),
        other => panic!("expected Raised, got {other:?}"),
    }
}

#[test]
fn eval_times_out_instead_of_hanging() {
    match erl::try_eval("timer:sleep(infinity)", Duration::from_secs(3)) {
        Err(ErlError::Timeout { .. }) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[test]
fn compile_builds_a_loadable_module() {
    let dir = TempDir::new("dg_compile");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("dg_tmp_mod.erl"),
        "-module(dg_tmp_mod).\n-export([f/0]).\nf() -> 42.\n",
    )
    .unwrap();
    let ebin = dir.path().join("ebin");
    erl::compile(&[&src], &ebin).expect("erlc");
    assert!(ebin.join("dg_tmp_mod.beam").is_file());
    let path = erl::string_literal(ebin.to_str().unwrap());
    let out = erl::eval(&format!(
        "code:add_patha({path}), io:format(\"~p\", [dg_tmp_mod:f()])"
    ));
    assert_eq!(out, "42");

    std::fs::write(src.join("broken.erl"), "-module(broken).\nf( -> .\n").unwrap();
    let err = erl::compile(&[src.join("broken.erl")], &ebin).unwrap_err();
    assert!(err.contains("broken.erl"), "{err}");
}

#[test]
fn unique_names_are_unique() {
    let names: std::collections::HashSet<String> =
        (0..1000).map(|_| erl::unique_name("n")).collect();
    assert_eq!(names.len(), 1000);
}
