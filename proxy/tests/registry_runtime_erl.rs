//! The registry's configured sources running inside the proxy, with real OTP nodes: a
//! configuration whose cluster `b` has `registry.live = true` (its node found through
//! distgate's own responder, joined as the hidden node `[registry] node_name@host`), a policy
//! judging a → b, and the registry learning what node b loads — on demand from the forwarding
//! path (a fun b's registry did not know) and on reload (SIGHUP) — so that the same fun that
//! was replaced first passes once b runs its version. Then the cache file makes a restart warm,
//! a start does not wait for a live EPMD that does not answer, distgate's own registrations in
//! a cluster's EPMD are not taken for its nodes, and the binary's /metrics shows the registry
//! sizes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use distgate::registry::{cache, Md5, Registry};
use distgate::runtime::{Runtime, Spec};
use distgate_testkit::daemon::{Epmd, free_port, sample, scrape, Daemon};
use distgate_testkit::erl;
use distgate_testkit::{Node, NodeOptions, TempDir};

const COOKIE_A: &str = "rt_registry_cookie_a";
const COOKIE_B: &str = "rt_registry_cookie_b";

fn m_source(v: &str) -> String {
    format!(
        r#"-module(m).
-export([version/0, anon/0]).
version() -> {v}.
anon() -> fun(X) -> {{{v}_anon, X}} end.
"#
    )
}

fn compile(dir: &Path, module: &str, src: &str) {
    erl::compile_source(dir, module, src).unwrap();
}

fn md5_of(node: &Node, module: &str) -> Md5 {
    let hex = node.eval(&format!("binary_to_list(binary:encode_hex({module}:module_info(md5)))."));
    let hex = hex.trim_matches('"');
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

/// Polls `reg` until it knows (module, md5); a refresh that never comes fails the test.
fn wait_known(reg: &Registry, module: &str, md5: &Md5, what: &str) {
    let t = Instant::now();
    while reg.load().knows(module, md5).is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "{what}: the registry never learnt {module}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Dirs {
    _tmp: TempDir,
    a: PathBuf,
    b: PathBuf,
    common: PathBuf,
    cache: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = TempDir::new("dg_registry_runtime");
    let (a, b, common) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("common"));
    compile(&a, "m", &m_source("v1"));
    compile(&b, "m", &m_source("v2"));
    compile(&common, "dgt", erl::DGT);
    let cache = tmp.path().join("registry.cache");
    Dirs { _tmp: tmp, a, b, common, cache }
}

/// a's registry: its build of m and dgt. b's: dgt, and live (its node, through the
/// responder). Only a → b is judged; an unknown fun is replaced by the marker.
fn config(d: &Dirs, ea: u16, eb: u16, b_upstream: Option<SocketAddr>) -> distgate_config::Config {
    let up = b_upstream.map(|u| format!("upstream_epmd = \"{u}\"\n")).unwrap_or_default();
    let text = format!(
        r#"[[cluster]]
name = "a"
cookie = "{COOKIE_A}"
listen = "127.0.0.1:{ea}"
registry = {{ dirs = ["{da}", "{common}"] }}

[[cluster]]
name = "b"
cookie = "{COOKIE_B}"
listen = "127.0.0.1:{eb}"
{up}registry = {{ dirs = ["{common}"], live = true }}

[[route]]
from = "a"
to = "b"
policy = "p"

[policy.p]
unknown_fun = "replace"

[registry]
cache_file = "{cache}"
refresh_interval = "1h"
node_name = "dgrt"

[runtime]
threads = 2
driver = "mio"
"#,
        da = d.a.display(),
        common = d.common.display(),
        cache = d.cache.display(),
    );
    distgate_config::parse(&text, "registry_runtime.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn node(prefix: &str, cookie: &str, epmd: u16, code: &Path, common: &Path) -> Node {
    let extra_args = vec!["-pa".into(), code.display().to_string(), "-pa".into(), common.display().to_string()];
    Node::start_with(prefix, NodeOptions { cookie: cookie.into(), epmd_port: Some(epmd), extra_args, ..NodeOptions::default() })
}

#[test]
fn a_fun_b_did_not_know_is_replaced_then_passes_once_bs_live_registry_learns_its_version() {
    let d = dirs();
    let (ea, eb) = (free_port(), free_port());
    let cfg = config(&d, ea, eb, None);
    let rt = Runtime::start(Spec::from_config(&cfg).unwrap()).expect("distgate starts");
    let reg_b = rt.registries().registry("b").expect("b's registry");
    assert!(rt.policies().handles().any(|h| h.from == "a" && h.to == "b"), "a -> b is judged");
    // The refresher's first refresh (at start) finds no node: the 1 h interval is far off.
    // It runs on the refresher's thread, so wait for it (the directories were loaded
    // synchronously: one refresh) before b's node exists and could be found by it.
    let t = Instant::now();
    while reg_b.refresh_counts().0 < 2 {
        assert!(t.elapsed() < Duration::from_secs(30), "b's refresher never did its first refresh");
        std::thread::sleep(Duration::from_millis(20));
    }
    let a = node("rra", COOKIE_A, ea, &d.a, &d.common);
    let b = node("rrb", COOKIE_B, eb, &d.b, &d.common);
    a.eval(&format!("B = {}.", b.atom()));
    b.eval("ok = dgt:sink(dg_sink).");
    assert_eq!(a.eval("net_adm:ping(B)."), "pong");
    assert_eq!(b.eval("m:version()."), "v2");
    let (v1, v2) = (md5_of(&a, "m"), md5_of(&b, "m"));
    assert_ne!(v1, v2);
    assert!(reg_b.load().knows("m", &v2).is_none(), "b's node has not been asked yet");
    assert!(reg_b.load().knows("dgt", &md5_of(&b, "dgt")).is_some(), "from b's directory, at start");

    // 1. A fun of m v1 from a: b's registry does not know v1, so the fun is replaced, and
    //    the forwarding path asks b's registry for a refresh, which joins b's node.
    a.eval("{dg_sink, B} ! {first, m:anon()}.");
    let r = b.eval("[{first, F1}] = dgt:wait(dg_sink, 1, 30000), F1.");
    assert!(r.starts_with("{distgate_blocked_fun,m,"), "replaced: {r}");
    assert_eq!(rt.stats().get("policy:replace"), 1);
    wait_known(&reg_b, "m", &v2, "the unknown-fun trigger");
    let snap = reg_b.load();
    let learnt = snap.knows("m", &v2).unwrap();
    assert_eq!(learnt.origin.as_ref(), format!("{}:{}", b.name(), d.b.join("m.beam").display()), "from b's node");
    assert!(snap.knows("m", &v1).is_none(), "b does not run v1");
    assert!(snap.lookup("lists").len() == 1, "every module b has loaded");
    drop(snap);

    // 2. b loads v1. A reload with the same configuration (what SIGHUP does) refreshes b's
    //    registry — the same registry object, still in the link's handle.
    let v1_file = d.a.join("m.beam").display().to_string();
    let load = b.eval(&format!("{{ok, Bin}} = file:read_file({f}), code:load_binary(m, {f}, Bin).", f = erl::string_literal(&v1_file)));
    assert_eq!(load, "{module,m}");
    assert_eq!(md5_of(&b, "m"), v1);
    rt.reload(&Spec::from_config(&cfg).unwrap());
    assert!(Arc::ptr_eq(&rt.registries().registry("b").unwrap(), &reg_b), "kept across the reload");
    wait_known(&reg_b, "m", &v1, "the reload");
    let (refreshes, _) = reg_b.refresh_counts();
    assert!(refreshes >= 4, "start (dirs), start (live, no node), the trigger, the reload: {refreshes}");

    // 3. The same fun now passes, and b runs it.
    let links = rt.stats().links_established.load(std::sync::atomic::Ordering::Relaxed);
    a.eval("{dg_sink, B} ! {second, m:anon()}.");
    let r = b.eval("[_, {second, F2}] = dgt:wait(dg_sink, 2, 30000), dgt:call(F2, 21).");
    assert_eq!(r, "{v1_anon,21}");
    assert_eq!(rt.stats().get("policy:replace"), 1, "not replaced this time");
    assert_eq!(rt.stats().links_established.load(std::sync::atomic::Ordering::Relaxed), links, "same link");

    // The cache holds both clusters, b with both versions of m learnt live. The refresher
    // writes it after it has stored the snapshot the test saw, so the test waits for it.
    let t = Instant::now();
    let sections = loop {
        let sections = cache::read_clusters(&d.cache, 1 << 30).expect("cache written");
        let b_has_both = sections
            .iter()
            .find(|s| s.cluster == "b")
            .is_some_and(|sb| [v1, v2].iter().all(|md5| sb.versions.iter().any(|v| &*v.module == "m" && v.md5 == *md5)));
        if b_has_both {
            break sections;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the cache never got both versions of m in b's section");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(sections.iter().any(|s| s.cluster == "a"));
    drop(a);
    drop(b);
    rt.shutdown();

    // 4. A restart is warm: with no node of b running, its registry knows what b ran, from
    //    the cache, as soon as the runtime has started.
    let rt = Runtime::start(Spec::from_config(&cfg).unwrap()).expect("distgate restarts");
    let reg_b = rt.registries().registry("b").unwrap();
    for md5 in [v1, v2] {
        assert!(reg_b.load().knows("m", &md5).is_some(), "warm from the cache");
    }
    rt.shutdown();
}

#[test]
fn start_does_not_wait_for_a_live_cluster_s_epmd() {
    let d = dirs();
    // An EPMD that takes the NAMES request and answers only when the test says so.
    let epmd = TcpListener::bind("127.0.0.1:0").unwrap();
    let epmd_addr = epmd.local_addr().unwrap();
    let (release, released) = mpsc::channel::<()>();
    let (asked, was_asked) = mpsc::channel::<()>();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = epmd.accept().unwrap();
        let mut req = [0u8; 3];
        s.read_exact(&mut req).unwrap();
        assert_eq!(req, [0, 1, 110], "NAMES");
        asked.send(()).unwrap();
        released.recv().unwrap();
        // Our port, no names.
        s.write_all(&u32::from(epmd_addr.port()).to_be_bytes()).unwrap();
    });
    let cfg = config(&d, free_port(), free_port(), Some(epmd_addr));
    let rt = Runtime::start(Spec::from_config(&cfg).unwrap()).expect("distgate starts");
    let reg_b = rt.registries().registry("b").unwrap();
    // Started, with b's directory loaded, while the live refresh waits for the EPMD.
    was_asked.recv_timeout(Duration::from_secs(30)).expect("the refresher asks the EPMD");
    assert_eq!(reg_b.refresh_counts().0, 1, "only the load at start is done");
    assert_eq!(reg_b.load().module_count(), 1, "dgt, from the directory");
    release.send(()).unwrap();
    fake.join().unwrap();
    let t = Instant::now();
    while reg_b.refresh_counts().0 < 2 {
        assert!(t.elapsed() < Duration::from_secs(30), "the live refresh never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(reg_b.refresh_counts().1, 0, "an empty cluster is not an error");
    rt.shutdown();
}

#[test]
fn a_live_cluster_is_not_asked_through_distgates_own_mirrors() {
    // b's nodes register with a real epmd (b's upstream). a's node registers with distgate,
    // which mirrors it into b's epmd at a proxy port so b's nodes can dial it: NAMES there
    // lists it too, and asking it would fill b's registry with a's versions.
    let d = dirs();
    let epmd = Epmd::start();
    let epmd_addr = SocketAddr::from(([127, 0, 0, 1], epmd.1));
    let (ea, eb) = (free_port(), free_port());
    let rt = Runtime::start(Spec::from_config(&config(&d, ea, eb, Some(epmd_addr))).unwrap()).expect("distgate starts");
    let a = node("rma", COOKIE_A, ea, &d.a, &d.common);
    let b = node("rmb", COOKIE_B, epmd.1, &d.b, &d.common);
    assert_eq!(a.eval("m:version()."), "v1");
    assert_eq!(b.eval("m:version()."), "v2");
    let (v1, v2) = (md5_of(&a, "m"), md5_of(&b, "m"));
    let t = Instant::now();
    loop {
        let names = distgate::epmd::names(epmd_addr, Duration::from_secs(5)).unwrap();
        if names.iter().any(|(n, p)| n == a.alive() && *p != a.port()) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "a is never mirrored into b's epmd: {names:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = rt.registries().refresh_now("b").expect("b has a refresher");
    for e in &report.errors {
        assert!(!e.to_string().contains(a.alive()), "{e}");
    }
    let reg_b = rt.registries().registry("b").unwrap();
    assert!(reg_b.load().knows("m", &v2).is_some(), "b's own node was asked");
    assert!(reg_b.load().knows("m", &v1).is_none(), "a's node was not asked as if it were b's");
    rt.shutdown();
}

// ---- the binary --------------------------------------------------------------------------------

#[test]
fn metrics_show_registry_sizes_and_sighup_refreshes() {
    let d = dirs();
    let mp = free_port();
    let text = format!(
        "[[cluster]]\nname = \"a\"\ncookie = \"c_a\"\nlisten = \"127.0.0.1:{}\"\nregistry = {{ dirs = [\"{}\"] }}\n\n\
         [[cluster]]\nname = \"b\"\ncookie = \"c_b\"\nlisten = \"127.0.0.1:{}\"\n\n\
         [[route]]\nfrom = \"a\"\nto = \"b\"\n\n[registry]\ncache_file = \"{}\"\nrefresh_interval = \"1h\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:{mp}\"\n\n[runtime]\nthreads = 1\ndriver = \"mio\"\n",
        free_port(),
        d.common.display(),
        free_port(),
        d.cache.display()
    );
    let cfg = d.common.parent().unwrap().join("distgate.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut dg = Daemon::start(env!("CARGO_BIN_EXE_distgate"), &cfg);
    let m = scrape(mp);
    assert_eq!(sample(&m, "distgate_registry_modules{cluster=\"a\"}"), 1.0, "dgt: {m}");
    assert_eq!(sample(&m, "distgate_registry_versions{cluster=\"a\"}"), 1.0);
    assert_eq!(sample(&m, "distgate_registry_refreshes_total{cluster=\"a\"}"), 1.0);
    assert_eq!(sample(&m, "distgate_registry_refresh_errors_total{cluster=\"a\"}"), 0.0);
    assert_eq!(sample(&m, "distgate_registry_modules{cluster=\"b\"}"), 0.0);
    assert_eq!(sample(&m, "distgate_registry_refreshes_total{cluster=\"b\"}"), 0.0, "b has no sources");

    // A new module and a broken file in a's directory; SIGHUP refreshes (same file, same
    // sources: the same registry, refreshed).
    compile(&d.common, "m", &m_source("v9"));
    std::fs::write(d.common.join("broken.beam"), b"FOR1 not really").unwrap();
    dg.signal("HUP");
    dg.wait_for("registry refreshed: new versions");
    let m = scrape(mp);
    assert_eq!(sample(&m, "distgate_registry_modules{cluster=\"a\"}"), 2.0, "{m}");
    assert_eq!(sample(&m, "distgate_registry_versions{cluster=\"a\"}"), 2.0);
    assert_eq!(sample(&m, "distgate_registry_refreshes_total{cluster=\"a\"}"), 2.0);
    assert_eq!(sample(&m, "distgate_registry_refresh_errors_total{cluster=\"a\"}"), 1.0, "broken.beam");
    // The cache was written after that refresh; `registry show --cache` reads it.
    let out = Command::new(env!("CARGO_BIN_EXE_distgate"))
        .args(["registry", "show", "--cache"])
        .arg(&d.cache)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(listing.starts_with("cluster default: 2 modules, 2 versions"), "{listing}");
    assert!(listing.lines().any(|l| l == "m") && listing.lines().any(|l| l == "dgt"), "{listing}");
}
