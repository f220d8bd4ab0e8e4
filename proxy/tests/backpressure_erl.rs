//! Backpressure with real nodes: when the receiving node stops reading, distgate stops reading
//! the sender instead of buffering without bound, and once the receiver resumes every message
//! arrives, in order. Also: a hidden node's link stays hidden through distgate.

use distgate::driver::DriverKind;
use distgate::link::{Cookie, LinkLimits};
use distgate::runtime::{Runtime, SideSpec, Spec};
use distgate_testkit::{Node, NodeOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const COOKIE: &str = "backpressure_cookie";
const BUDGET: usize = 256 * 1024;

fn start() -> Runtime {
    let lo = IpAddr::from([127, 0, 0, 1]);
    let side = |name: &str| SideSpec {
        name: name.into(),
        cookie: Cookie::new(COOKIE.as_bytes()),
        epmd_listen: Some(SocketAddr::new(lo, 0)),
        upstream_epmd: Vec::new(),
        proxy_ip: lo,
        hidden: false,
        nodes: None,
        node_ports: None,
    };
    Runtime::start(Spec {
        sides: vec![side("a"), side("b")],
        routes: vec![(0, 1), (1, 0)],
        limits: LinkLimits::default(),
        link_buffer: BUDGET,
        threads: 1,
        driver: DriverKind::Poll,
        epmd_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(5),
        mirror_check: Duration::from_secs(10),
        scheduling: distgate::runtime::Scheduling::Normal,
        policies: Default::default(),
        registries: Default::default(),
    })
    .unwrap()
}

fn node(prefix: &str, rt: &Runtime, side: &str, extra: &[&str]) -> Node {
    Node::start_with(
        prefix,
        NodeOptions {
            cookie: COOKIE.into(),
            epmd_port: Some(rt.responder_addr(side).unwrap().port()),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            ..NodeOptions::default()
        },
    )
}

fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap().success());
}

#[test]
fn a_stopped_receiver_pauses_the_sender_and_nothing_is_lost() {
    let rt = start();
    let a = node("bpa", &rt, "a", &[]);
    let b = node("bpb", &rt, "b", &[]);
    a.eval(&format!("B = {}.", b.atom()));
    b.eval("register(dg_sum, spawn(fun() -> L = fun Loop(N, Last) -> receive {get, F} -> F ! {n, N, Last}, Loop(N, Last); {I, Bin} when I =:= Last + 1, is_binary(Bin) -> Loop(N + 1, I) end end, L(0, 0) end)).");
    assert_eq!(a.eval("net_adm:ping(B)."), "pong");
    let stats = rt.stats();
    // Stop B's whole VM: it reads nothing from its socket.
    signal(b.os_pid(), "STOP");
    // 400 × 64 KiB = 25 MiB, far over the 256 KiB per-link budget, sent from a process of its own.
    a.eval("Sender = spawn(fun() -> Bin = binary:copy(<<1>>, 65536), [{dg_sum, B} ! {I, Bin} || I <- lists:seq(1, 400)] end).");
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.backpressure_pauses.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "distgate never paused the sender");
        std::thread::sleep(Duration::from_millis(20));
    }
    // While paused, what distgate holds stays near the budget (one read past it at most), far
    // below the 25 MiB sent: the rest waits in the sender's own buffers.
    let forwarded = stats.bytes[0].load(Ordering::Relaxed);
    assert!(forwarded < 25 << 20, "{forwarded} bytes forwarded while the receiver was stopped");
    signal(b.os_pid(), "CONT");
    assert_eq!(
        b.eval("W = fun Wait(0) -> timeout; Wait(K) -> dg_sum ! {get, self()}, receive {n, 400, 400} -> all_in_order; {n, _, _} -> receive after 50 -> Wait(K - 1) end end end, W(600)."),
        "all_in_order"
    );
    assert_eq!(a.eval("nodes()."), format!("[{}]", b.atom()), "the link stayed up throughout");
}

#[test]
fn a_hidden_node_stays_hidden_through_distgate() {
    let rt = start();
    let h = node("hid", &rt, "a", &["-hidden"]);
    let b = node("vis", &rt, "b", &[]);
    assert_eq!(h.eval(&format!("net_adm:ping({}).", b.atom())), "pong");
    assert_eq!(b.eval("nodes()."), "[]", "a hidden node is not in nodes()");
    assert_eq!(b.eval("nodes(hidden)."), format!("[{}]", h.atom()));
}
