//! The `[[cluster]]` keys that shape what distgate exposes, with real OTP nodes: `nodes`
//! (lookups, mirrors, NAMES, the handshake, a reload, the live registry), `node_ports` (the
//! range proxy ports are bound in, and what happens when it is full) and `upstream_epmd` as a
//! list (a name that does not resolve, an address with nothing listening, two real epmds).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use distgate::epmd;
use distgate::registry::Md5;
use distgate::runtime::{Runtime, Spec};
use distgate_testkit::daemon::{Epmd, free_port, sample, scrape, Daemon};
use distgate_testkit::{erl, Node, NodeOptions, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_distgate");
const COOKIE_A: &str = "cluster_keys_cookie_a";
const COOKIE_B: &str = "cluster_keys_cookie_b";
const T: Duration = Duration::from_secs(10);

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Clusters a and b (the given extra keys for each), routes both ways, metrics and two mio
/// threads (so proxy ports are SO_REUSEPORT groups), written to `distgate.toml` in `dir`.
fn write_config(dir: &Path, ea: u16, a_keys: &str, eb: u16, b_keys: &str, metrics: u16) -> PathBuf {
    let text = format!(
        "[[cluster]]\nname = \"a\"\ncookie = \"{COOKIE_A}\"\nlisten = \"127.0.0.1:{ea}\"\n{a_keys}\n\n\
         [[cluster]]\nname = \"b\"\ncookie = \"{COOKIE_B}\"\nlisten = \"127.0.0.1:{eb}\"\n{b_keys}\n\n\
         [[route]]\nfrom = \"a\"\nto = \"b\"\n\n[[route]]\nfrom = \"b\"\nto = \"a\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n[runtime]\nthreads = 2\ndriver = \"mio\"\n"
    );
    let p = dir.join("distgate.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn node(prefix: &str, cookie: &str, epmd: u16) -> Node {
    Node::start_with(prefix, NodeOptions { cookie: cookie.into(), epmd_port: Some(epmd), ..NodeOptions::default() })
}

fn ping(from: &Node, to: &Node) -> String {
    from.eval(&format!("net_adm:ping({}).", to.atom()))
}

fn names(epmd: SocketAddr) -> Vec<String> {
    epmd::names(epmd, T).unwrap().into_iter().map(|(n, _)| n).collect()
}

#[test]
fn nodes_outside_a_clusters_nodes_are_not_proxied_mirrored_or_listed() {
    let dir = TempDir::new("dg_cluster_nodes");
    let up_a = Epmd::start();
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let a_keys = format!("upstream_epmd = \"{}\"", up_a.addr());
    let cfg = write_config(dir.path(), ea, &a_keys, eb, "nodes = [\"allowed*@127.0.0.1\"]", mp);
    let mut dg = Daemon::start(BIN, &cfg);

    // b's nodes register with b's responder; a's mirrors of them go into a's epmd.
    let other = node("other", COOKIE_B, eb);
    let l = dg.wait_for("not in the cluster's nodes: not mirrored");
    assert!(l.contains(other.alive()), "{l}");
    let allowed = node("allowed", COOKIE_B, eb);
    let l = dg.wait_for("registration mirrored upstream");
    assert!(l.contains(allowed.alive()), "{l}");
    let mirrored = epmd::names(up_a.addr(), T).unwrap();
    assert!(mirrored.iter().any(|(n, p)| n == allowed.alive() && *p != allowed.port()), "{mirrored:?}");
    assert!(!mirrored.iter().any(|(n, _)| n == other.alive()), "{mirrored:?}");

    // A node of a registered with a's epmd finds only the mirrored one.
    let a1 = node("ka1", COOKIE_A, up_a.1);
    assert_eq!(ping(&a1, &allowed), "pong");
    assert_eq!(ping(&a1, &other), "pang");
    // One registered with a's responder asks distgate: the same.
    let a2 = node("ka2", COOKIE_A, ea);
    assert!(epmd::port_please(lo(ea), other.alive(), T).unwrap().is_none());
    assert!(epmd::port_please(lo(ea), allowed.alive(), T).unwrap().is_some());
    assert_eq!(ping(&a2, &allowed), "pong");
    assert_eq!(ping(&a2, &other), "pang");
    let listed = names(lo(ea));
    assert!(listed.iter().any(|n| n == allowed.alive()) && !listed.iter().any(|n| n == other.alive()), "{listed:?}");
    // Within b, nodes reach each other as ever.
    assert_eq!(ping(&allowed, &other), "pong");
}

#[test]
fn a_reload_changes_nodes_for_lookups_listings_and_handshakes() {
    let dir = TempDir::new("dg_cluster_nodes_reload");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let cfg = write_config(dir.path(), ea, "", eb, "nodes = [\"allowed*@127.0.0.1\"]", mp);
    let mut dg = Daemon::start(BIN, &cfg);
    let allowed = node("allowed", COOKIE_B, eb);
    let a1 = node("ra1", COOKIE_A, ea);
    assert_eq!(ping(&a1, &allowed), "pong");
    let reload = |dg: &mut Daemon, from: &str, to: &str| {
        std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace(from, to)).unwrap();
        dg.signal("HUP");
        dg.wait_for("SIGHUP: configuration reloaded");
    };

    // Other names: the proxy port opened before is neither given out nor listed.
    reload(&mut dg, "allowed*@127.0.0.1", "nobody*@*");
    assert!(epmd::port_please(lo(ea), allowed.alive(), T).unwrap().is_none());
    assert!(!names(lo(ea)).iter().any(|n| n == allowed.alive()));
    let a2 = node("ra2", COOKIE_A, ea);
    assert_eq!(ping(&a2, &allowed), "pang");
    // Another host: EPMD sees only the alive name, the handshake the full one.
    reload(&mut dg, "nobody*@*", "allowed*@127.0.0.2");
    assert!(epmd::port_please(lo(ea), allowed.alive(), T).unwrap().is_some());
    assert_eq!(ping(&a2, &allowed), "pang");
    assert!(sample(&scrape(mp), "distgate_link_close_total{reason=\"target_not_in_nodes\"}") >= 1.0);
    // And back.
    reload(&mut dg, "allowed*@127.0.0.2", "allowed*@*");
    assert_eq!(ping(&a2, &allowed), "pong");
}

#[test]
fn node_ports_bind_proxy_ports_in_the_range_and_a_full_range_fails_the_lookup() {
    use socket2::{Domain, Socket, Type};
    let dir = TempDir::new("dg_cluster_node_ports");
    // Another process's SO_REUSEPORT listener on the range's first port: skipped, not joined.
    let squatter = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    squatter.set_reuse_port(true).unwrap();
    squatter.bind(&lo(0).into()).unwrap();
    squatter.listen(8).unwrap();
    let first = squatter.local_addr().unwrap().as_socket().unwrap().port();
    let last = first.saturating_add(9);
    // b's range is one port.
    let only = free_port();
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let cfg = write_config(
        dir.path(),
        ea,
        &format!("node_ports = \"{first}-{last}\""),
        eb,
        &format!("node_ports = \"{only}\""),
        mp,
    );
    let mut dg = Daemon::start(BIN, &cfg);
    let a1 = node("pa1", COOKIE_A, ea);
    let a2 = node("pa2", COOKIE_A, ea);
    let b1 = node("pb1", COOKIE_B, eb);

    let p = epmd::port_please(lo(ea), b1.alive(), T).unwrap().expect("b1 through a proxy port").port;
    assert!(p > first && p <= last, "{p} in {first}-{last}, not the squatter's");
    assert_eq!(ping(&a1, &b1), "pong");

    let p = epmd::port_please(lo(eb), a1.alive(), T).unwrap().expect("a1 through b's only port").port;
    assert_eq!(p, only);
    assert_eq!(ping(&b1, &a1), "pong");
    // Routes stay: a second node of a finds b's range full.
    assert!(epmd::port_please(lo(eb), a2.alive(), T).unwrap().is_none());
    let l = dg.wait_for("cannot open a proxy port");
    assert!(l.contains(&format!("every port of node_ports {only}-{only} is in use")), "{l}");
    assert_eq!(ping(&b1, &a2), "pang");
    assert!(sample(&scrape(mp), "distgate_events_total{event=\"route_open_failed\"}") >= 1.0);
}

#[test]
fn upstream_epmds_are_asked_in_turn_and_each_reachable_one_gets_the_mirrors() {
    let dir = TempDir::new("dg_cluster_upstreams");
    let (e1, e2) = (Epmd::start(), Epmd::start());
    let dead = free_port();
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    // A name that does not resolve, nothing listening, then two hosts' epmds.
    let b_keys = format!("upstream_epmd = [\"no-such-host.invalid:4369\", \"127.0.0.1:{dead}\", \"{}\", \"{}\"]", e1.addr(), e2.addr());
    let cfg = write_config(dir.path(), ea, "", eb, &b_keys, mp);
    let _dg = Daemon::start(BIN, &cfg);
    let b1 = node("ub1", COOKIE_B, e1.1);
    let b2 = node("ub2", COOKIE_B, e2.1);
    let a1 = node("ua1", COOKIE_A, ea);
    // a1 is mirrored into both epmds: each of b's nodes dials it through its own.
    for e in [&e1, &e2] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !names(e.addr()).iter().any(|n| n == a1.alive()) {
            assert!(Instant::now() < deadline, "a1 never mirrored into {}: {:?}", e.addr(), names(e.addr()));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(ping(&b1, &a1), "pong");
    assert_eq!(ping(&b2, &a1), "pong");
    // Lookups go on past the epmd that does not know the name (a fresh node of a: a1 is
    // linked to both already).
    let a2 = node("ua2", COOKIE_A, ea);
    assert_eq!(ping(&a2, &b1), "pong");
    assert_eq!(ping(&a2, &b2), "pong");
    let m = scrape(mp);
    assert!(sample(&m, "distgate_events_total{event=\"upstream_epmd_unresolved\"}") >= 1.0, "{m}");
    assert!(sample(&m, "distgate_events_total{event=\"upstream_epmd_unreachable\"}") >= 1.0, "{m}");
}

fn md5_of(node: &Node, module: &str) -> Md5 {
    let hex = node.eval(&format!("binary_to_list(binary:encode_hex({module}:module_info(md5)))."));
    let hex = hex.trim_matches('"');
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

#[test]
fn a_live_registry_asks_only_the_nodes_distgate_knows() {
    let dir = TempDir::new("dg_cluster_nodes_registry");
    let code = |v: &str| {
        let d = dir.path().join(v);
        erl::compile_source(&d, "m", &format!("-module(m).\n-export([version/0]).\nversion() -> {v}.\n")).unwrap();
        d
    };
    let (d1, d2) = (code("v1"), code("v2"));
    let (ea, eb) = (free_port(), free_port());
    let text = format!(
        "[[cluster]]\nname = \"a\"\ncookie = \"{COOKIE_A}\"\nlisten = \"127.0.0.1:{ea}\"\n\n\
         [[cluster]]\nname = \"b\"\ncookie = \"{COOKIE_B}\"\nlisten = \"127.0.0.1:{eb}\"\nnodes = [\"allowed*@*\"]\n\
         registry = {{ live = true }}\n\n[[route]]\nfrom = \"a\"\nto = \"b\"\n\n\
         [registry]\nrefresh_interval = \"1h\"\nnode_name = \"dgck\"\n\n[runtime]\nthreads = 1\ndriver = \"mio\"\n"
    );
    let cfg = distgate_config::parse(&text, "cluster_keys.toml").unwrap_or_else(|e| panic!("{e}"));
    let rt = Runtime::start(Spec::from_config(&cfg).unwrap()).expect("distgate starts");
    let with = |prefix: &str, code: &Path| {
        let extra_args = vec!["-pa".into(), code.display().to_string()];
        Node::start_with(prefix, NodeOptions { cookie: COOKIE_B.into(), epmd_port: Some(eb), extra_args, ..NodeOptions::default() })
    };
    let allowed = with("allowed", &d1);
    let other = with("other", &d2);
    assert_eq!(allowed.eval("m:version()."), "v1");
    assert_eq!(other.eval("m:version()."), "v2");
    let report = rt.registries().refresh_now("b").expect("b has a refresher");
    assert!(!report.errors.iter().any(|e| e.to_string().contains(other.alive())), "{:?}", report.errors);
    let reg = rt.registries().registry("b").unwrap();
    assert!(reg.load().knows("m", &md5_of(&allowed, "m")).is_some(), "the known node was asked");
    assert!(reg.load().knows("m", &md5_of(&other, "m")).is_none(), "the other was not");
    rt.shutdown();
}
