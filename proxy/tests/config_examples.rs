//! The real `distgate check` binary on every shipped configuration: the examples in
//! deploy/examples/, the configurations embedded in the Kubernetes manifests, the embedded
//! default, and the golden error cases (whose exact stderr it must reproduce).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_distgate");

/// The workspace root (this crate is `proxy/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn check(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).arg("check").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run distgate check")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("distgate-config-examples-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_passes_check() {
    let examples = examples();
    let names: Vec<_> = examples.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in ["dc-sidecar-a.toml", "dc-sidecar-b.toml", "policy-gateway.toml", "bench-rig.toml"] {
        assert!(names.iter().any(|n| n == want), "deploy/examples/{want} missing: {names:?}");
    }
    for ex in &examples {
        let rel = ex.strip_prefix(root()).unwrap().to_str().unwrap();
        let out = check(&root(), &["-c", rel], &[]);
        assert!(out.status.success(), "{rel}:\n{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{rel}: ok\n"));
        assert!(out.stderr.is_empty(), "{rel}: {}", text(&out.stderr));
    }
}

#[test]
fn the_examples_pair_up() {
    // The DC pair is two halves of one deployment: each side's remote cluster reaches the
    // other side's WAN responder, and both use the same WAN cookie file.
    let a = distgate_config::load(root().join("deploy/examples/dc-sidecar-a.toml")).unwrap();
    let b = distgate_config::load(root().join("deploy/examples/dc-sidecar-b.toml")).unwrap();
    let (a_remote, b_remote) = (a.cluster("dc2").unwrap(), b.cluster("dc1").unwrap());
    assert_eq!(a_remote.cookie, b_remote.cookie);
    assert_eq!(a_remote.upstream_epmd[0].port, b_remote.listen.port());
    assert_eq!(b_remote.upstream_epmd[0].port, a_remote.listen.port());
    assert!(a.connected("dc1", "dc2") && b.connected("dc1", "dc2"));
}

/// The `distgate.toml: |` block of a Kubernetes manifest, unindented.
fn configmap_toml(manifest: &str) -> String {
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "distgate.toml: |").skip(1).peekable();
    let indent = lines.peek().map(|l| l.len() - l.trim_start().len()).expect("a distgate.toml block");
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or("").to_string() + "\n")
        .collect()
}

#[test]
fn kubernetes_configmaps_pass_check() {
    let dir = scratch("k8s");
    for manifest in ["deploy/k8s/gateway.yaml", "deploy/k8s/sidecar.yaml"] {
        let toml = configmap_toml(&std::fs::read_to_string(root().join(manifest)).unwrap());
        assert!(toml.contains("[[cluster]]"), "{manifest}: {toml}");
        let file = dir.join(Path::new(manifest).file_stem().unwrap()).with_extension("toml");
        std::fs::write(&file, &toml).unwrap();
        let out = check(&root(), &["-c", file.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{manifest}'s ConfigMap:\n{}", text(&out.stderr));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn embedded_default_passes_check() {
    let out = check(&root(), &[], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "<embedded default>: ok\n");

    // The constant, written out, is an ordinary configuration file.
    let dir = scratch("default");
    let file = dir.join("default.toml");
    std::fs::write(&file, distgate_config::EMBEDDED_DEFAULT).unwrap();
    let out = check(&root(), &["-c", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(distgate_config::load(&file).unwrap(), distgate_config::Config::embedded_default());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_broken_file_fails_with_its_position() {
    let dir = scratch("broken");
    let file = dir.join("broken.toml");
    std::fs::write(
        &file,
        "[[cluster]]\nname = \"a\"\ncookie_file = \"/c\"\nlisten = \"127.0.0.1:4370\"\n\n[runtime]\ntreads = 4\n",
    )
    .unwrap();
    let shown = file.to_str().unwrap();
    let out = check(&root(), &["-c", shown], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: unknown key 'treads' in [runtime] at {shown}:7:1 — did you mean 'threads'?\n{shown}: 1 error\n"
        )
    );

    let out = check(&root(), &["-c", dir.join("absent.toml").to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn golden_cases_through_the_binary() {
    // Run from config/ so the paths in the .err files (tests/golden/…) are the ones shown.
    let config_dir = root().join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(config_dir.join("tests/golden")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let rel = format!("tests/golden/{}", path.file_name().unwrap().to_str().unwrap());
        let expected = std::fs::read_to_string(path.with_extension("err")).unwrap();
        let count = expected.lines().count();
        let out = check(&config_dir, &["-c", &rel], &[]);
        assert_eq!(out.status.code(), Some(1), "{rel}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr, format!("{expected}{rel}: {count} error{}\n", if count == 1 { "" } else { "s" }), "{rel}");
        assert!(!stderr.contains("HUSH") && !text(&out.stdout).contains("HUSH"), "{rel}: a cookie was printed");
        n += 1;
    }
    assert!(n >= 10, "only {n} golden cases");
}

#[test]
fn cookies_flag_reads_the_secrets() {
    let rel = "deploy/examples/bench-rig.toml";
    let env = [("DISTGATE_BENCH_COOKIE_A", "bench-cookie-a"), ("DISTGATE_BENCH_COOKIE_B", "bench-cookie-b")];
    let out = check(&root(), &["--cookies", "-c", rel], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = Command::new(BIN)
        .current_dir(root())
        .args(["check", "--cookies", "-c", rel])
        .env("DISTGATE_BENCH_COOKIE_A", "bench-cookie-a")
        .env_remove("DISTGATE_BENCH_COOKIE_B")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: cluster[1].cookie_env: environment variable DISTGATE_BENCH_COOKIE_B is not set at {rel}:15:14\n"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("bench-cookie-a"), "{stderr}");

    // A cookie that Erlang would refuse is reported without being printed.
    let out = check(&root(), &["--cookies", "-c", rel], &[env[0], ("DISTGATE_BENCH_COOKIE_B", "bench\u{7}secret")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!text(&out.stderr).contains("secret"), "{}", text(&out.stderr));
}

/// `run --threads` takes what `[runtime] threads` takes (1 to 1024) and refuses the rest
/// before anything starts, naming the flag.
#[test]
fn run_refuses_a_thread_count_out_of_range() {
    for bad in ["0", "1025", "many"] {
        let out = Command::new(BIN).args(["run", "--threads", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--threads {bad}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("'--threads <THREADS>'") && stderr.contains(bad), "{stderr}");
    }
}
