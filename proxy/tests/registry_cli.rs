//! `distgate registry md5` and `registry show` as a user runs them: output checked against
//! erl's `beam_lib:md5/1`, bad files reported on stderr by name, the exit status.

use distgate_testkit::daemon::Epmd;
use std::path::Path;
use std::process::Command;

use distgate_testkit::erl;
use distgate_testkit::TempDir;

fn distgate(args: &[&str]) -> (String, String, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_distgate")).args(args).output().expect("run distgate");
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap(), out.status.code())
}

fn setup(dir: &Path) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (m, body) in [("dg_cli_a", "a() -> fun(X) -> X end."), ("dg_cli_b", "b() -> ok.")] {
        std::fs::write(src.join(format!("{m}.erl")), format!("-module({m}).\n-export([{}/0]).\n{body}\n", &m[7..])).unwrap();
    }
    erl::compile(&[&src], &dir.join("ebin/nested")).unwrap();
    std::fs::write(dir.join("ebin/broken.beam"), b"FOR1\0\0\0\x10BEAMAtU8\0\0\x01\0").unwrap();
}

#[test]
fn md5_prints_module_and_md5_like_beam_lib_and_reports_bad_files() {
    let tmp = TempDir::new("dg_reg_cli");
    setup(tmp.path());
    let ebin = tmp.path().join("ebin");
    let expected = erl::eval(&format!(
        "io:format(\"~s\", [[begin {{ok, {{M, D}}}} = beam_lib:md5(F), \
           [atom_to_list(M), \" \", string:lowercase(binary:encode_hex(D)), \"\\n\"] end \
         || F <- lists:sort(filelib:wildcard({}))]])",
        erl::string_literal(&ebin.join("nested/*.beam").display().to_string())
    ));
    assert_eq!(expected.lines().count(), 2);

    let (out, err, code) = distgate(&["registry", "md5", ebin.to_str().unwrap()]);
    assert_eq!(out, expected, "stdout: module md5, sorted by path");
    assert_eq!(code, Some(1), "a bad file makes the exit status non-zero");
    let broken = ebin.join("broken.beam").display().to_string();
    assert!(err.contains(&broken) && err.contains("chunk \"AtU8\""), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Only good files: status 0. A single file works as well as a directory.
    let (out, err, code) = distgate(&["registry", "md5", ebin.join("nested").to_str().unwrap()]);
    assert_eq!((out.as_str(), err.as_str(), code), (expected.as_str(), "", Some(0)));
    let (out, _, code) = distgate(&["registry", "md5", ebin.join("nested/dg_cli_b.beam").to_str().unwrap()]);
    assert_eq!((out.as_str(), code), (expected.lines().nth(1).map(|l| format!("{l}\n")).unwrap().as_str(), Some(0)));
    let (_, err, code) = distgate(&["registry", "md5", "/no/such/path"]);
    assert!(err.contains("/no/such/path"), "{err}");
    assert_eq!(code, Some(1));
}

#[test]
fn show_lists_versions_and_writes_a_cache_that_shows_the_same() {
    let tmp = TempDir::new("dg_reg_show");
    setup(tmp.path());
    let ebin = tmp.path().join("ebin");
    let cache = tmp.path().join("reg.cache");
    let (out, err, code) =
        distgate(&["registry", "show", "--dir", ebin.to_str().unwrap(), "--write-cache", cache.to_str().unwrap()]);
    assert_eq!(code, Some(1), "broken.beam is an error: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("cluster default: 2 modules, 2 versions"), "{out}");
    assert_eq!(lines[1], "dg_cli_a");
    assert!(lines[2].contains("  lambdas 1  exports 3  ") && lines[2].ends_with("dg_cli_a.beam"), "{out}");
    assert_eq!(lines[3], "dg_cli_b");
    assert!(lines[4].contains("  lambdas 0  exports 3  "), "{out}");

    let (out2, err2, code2) = distgate(&["registry", "show", "--cache", cache.to_str().unwrap()]);
    assert_eq!((err2.as_str(), code2), ("", Some(0)));
    assert_eq!(out2.lines().skip(1).collect::<Vec<_>>(), lines[1..], "the cache shows what the scan showed");

    std::fs::write(&cache, b"DGREGCF\n garbage").unwrap();
    let (_, err3, code3) = distgate(&["registry", "show", "--cache", cache.to_str().unwrap()]);
    assert_eq!(code3, Some(1));
    assert!(err3.contains("reg.cache: registry cache ignored"), "{err3}");
}

#[test]
fn show_c_prints_each_clusters_configured_sources_and_asks_live_nodes() {
    let tmp = TempDir::new("dg_reg_show_c");
    setup(tmp.path());
    let ebin = tmp.path().join("ebin/nested");
    // A module only the live node has: compiled elsewhere, loaded on the node from there.
    let live_src = tmp.path().join("live");
    std::fs::create_dir_all(&live_src).unwrap();
    std::fs::write(live_src.join("dg_cli_live.erl"), "-module(dg_cli_live).\n-export([l/0]).\nl() -> fun() -> live end.\n").unwrap();
    erl::compile(&[live_src.join("dg_cli_live.erl")], &live_src).unwrap();
    let epmd = Epmd::start();
    let node = distgate_testkit::Node::start_with(
        "dgshowc",
        distgate_testkit::NodeOptions {
            cookie: "show_c_cookie".into(),
            epmd_port: Some(epmd.1),
            extra_args: vec!["-pa".into(), live_src.display().to_string()],
            ..Default::default()
        },
    );
    assert_eq!(node.eval("code:ensure_loaded(dg_cli_live)."), "{module,dg_cli_live}");
    let md5 = node.eval("string:lowercase(binary_to_list(binary:encode_hex(dg_cli_live:module_info(md5)))).");
    let md5 = md5.trim_matches('"');
    let cfg = tmp.path().join("distgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[cluster]]\nname = \"a\"\ncookie = \"x\"\nlisten = \"127.0.0.1:1\"\nregistry = {{ dirs = [\"{}\"] }}\n\n\
             [[cluster]]\nname = \"b\"\ncookie = \"show_c_cookie\"\nlisten = \"127.0.0.1:2\"\nupstream_epmd = \"127.0.0.1:{}\"\n\
             registry = {{ live = true }}\n\n[registry]\nnode_name = \"dgshow\"\n",
            ebin.display(),
            epmd.1
        ),
    )
    .unwrap();
    let (out, err, code) = distgate(&["registry", "show", "-c", cfg.to_str().unwrap()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("cluster a: 2 modules, 2 versions (from dir {})", ebin.display()), "{out}");
    assert_eq!(lines[1], "dg_cli_a");
    let b = lines.iter().position(|l| l.starts_with("cluster b: ")).expect("cluster b");
    assert_eq!(b, 5, "a's listing, then b's: {out}");
    let b_head = lines[b];
    assert!(b_head.contains(&format!("(from live {} (127.0.0.1:{}) as dgshow@", node.alive(), node.port())), "{b_head}");
    // b: what the node has loaded (lists among them), and the live-only module from the node.
    let at = lines.iter().position(|l| *l == "dg_cli_live").unwrap_or_else(|| panic!("{out}"));
    assert!(lines[at + 1].starts_with(&format!("  {md5}  lambdas 1  ")), "{}", lines[at + 1]);
    assert!(lines[at + 1].ends_with(&format!("{}:{}", node.name(), live_src.join("dg_cli_live.beam").display())), "{}", lines[at + 1]);
    assert!(lines[b..].contains(&"lists"));
    // Errors name the cluster; the only one allowed is the preloaded modules' (Debian's OTP
    // ships .beam files for them that differ from the built-in copies).
    for l in err.lines() {
        assert!(l.starts_with(&format!("distgate: cluster b: live {}: ", node.name())) && l.contains("preloaded"), "{err}");
    }
    assert_eq!(code, Some(if err.is_empty() { 0 } else { 1 }), "{err}");
    assert!(!out.contains("show_c_cookie") && !err.contains("show_c_cookie"));

    // A wrong cookie: b's listing is empty, the error says so, the status is 1.
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("show_c_cookie", "not_the_cookie")).unwrap();
    let (out, err, code) = distgate(&["registry", "show", "-c", cfg.to_str().unwrap()]);
    assert!(out.lines().any(|l| l.starts_with("cluster b: 0 modules, 0 versions")), "{out}");
    assert!(err.contains(&format!("distgate: cluster b: live {}: wrong cookie for {}", node.alive(), node.name())), "{err}");
    assert!(!err.contains("not_the_cookie"));
    assert_eq!(code, Some(1));

    // -c with --dir is refused by the argument parser.
    let (_, err, code) = distgate(&["registry", "show", "-c", cfg.to_str().unwrap(), "--dir", "/tmp"]);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn show_without_arguments_lists_the_embedded_defaults_clusters() {
    let (out, err, code) = distgate(&["registry", "show"]);
    assert_eq!((out.as_str(), err.as_str(), code), ("cluster local: 0 modules, 0 versions (from nothing)\n", "", Some(0)));
}
