//! The `[[cluster]]` keys that shape what distgate exposes, with real OTP nodes:
//! `node_ports` (the range proxy ports are bound in, and what happens when it is full) and
//! `upstream_epmd` as a list (a name that does not resolve, an address with nothing
//! listening, two real epmds).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use distgate::epmd;
use distgate_testkit::daemon::{free_port, sample, scrape, wait_listening, Daemon};
use distgate_testkit::{Node, NodeOptions, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_distgate");
const COOKIE_A: &str = "cluster_keys_cookie_a";
const COOKIE_B: &str = "cluster_keys_cookie_b";
const T: Duration = Duration::from_secs(10);

/// A real `epmd` on a port of its own, killed on drop.
struct Epmd(Child, u16);

impl Epmd {
    fn start() -> Epmd {
        let port = free_port();
        let epmd = Epmd(Command::new("epmd").args(["-port", &port.to_string()]).spawn().expect("epmd starts"), port);
        wait_listening(port, "epmd");
        epmd
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.1))
    }
}

impl Drop for Epmd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
