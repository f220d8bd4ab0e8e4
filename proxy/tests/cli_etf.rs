//! `distgate etf print`: one term exactly as erl's `~w`, a captured stream frame by frame, and
//! clear errors (with the byte offset) for bad input.

use distgate_testkit::{binary_to_term_w, term_from_expr, TempDir};
use std::process::Command;

fn distgate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_distgate")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn prints_a_term_made_by_erl_exactly_as_w() {
    let dir = TempDir::new("dg_cli_etf");
    let expr = "{ok, [1, 2.5, -7, 1 bsl 70], #{a => <<\"x\">>, 'B c' => [{}]}, <<1:3>>, \"str\"}";
    let bytes = term_from_expr(expr, "[compressed]");
    let f = dir.path().join("t.bin");
    std::fs::write(&f, &bytes).unwrap();
    let (ok, out, err) = distgate(&["etf", "print", f.to_str().unwrap()]);
    assert!(ok, "{err}");
    // What erl itself prints for these bytes.
    let want = binary_to_term_w(&bytes).unwrap();
    assert_eq!(out.trim_end(), want);
    assert!(want.starts_with("{ok,[1,2.5,-7,1180591620717411303424],#{"), "{want}");
}

#[test]
fn prints_the_bundled_capture_frame_by_frame() {
    let (ok, out, err) = distgate(&["etf", "print", "--sample"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() > 40, "{}", lines.len());
    assert!(lines.iter().any(|l| l.contains("SPAWN_REQUEST") && l.contains("erpc")));
    assert!(lines.iter().any(|l| l.contains("REG_SEND fragmented") && l.contains("fragments=17")));
    assert!(lines.iter().any(|l| l.contains("#Fun<dg_scenario.")), "funs are shown");
    // Cache refs are resolved: the atoms batch shows atom text, never a bare ref.
    assert!(lines.iter().any(|l| l.contains("payload={atoms,[dg_atom_1,")));
}

#[test]
fn bad_input_says_where_and_why() {
    let dir = TempDir::new("dg_cli_bad");
    let f = dir.path().join("bad.bin");
    std::fs::write(&f, [131, 104, 2, 97, 1, 200]).unwrap();
    let (ok, _, err) = distgate(&["etf", "print", f.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("bad.bin") && err.contains("at byte") && err.contains("unknown term tag 200"), "{err}");
    // A stream cut in the middle of a frame.
    std::fs::write(&f, [0, 0, 0, 0, 0, 0, 0, 9, 112]).unwrap();
    let (ok, out, err) = distgate(&["etf", "print", "--frames", f.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("tick"), "the complete frames before the cut are printed: {out}");
    assert!(err.contains("frame 1") && err.contains("input ends early"), "{err}");
}
