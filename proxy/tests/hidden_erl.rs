//! `[[cluster]] hidden` with real OTP nodes: with cluster b hidden, a link between a node of a
//! and a node of b is hidden on both nodes, whichever dials (each lists the other in
//! `nodes(hidden)`, not `nodes()`, and `global` does not sync across it), and calls still work
//! both ways. With b not hidden (the default) the same link is a normal one, which is what
//! shows the test can tell the two apart.

use distgate::driver::DriverKind;
use distgate::runtime::{Runtime, Spec};
use distgate_testkit::daemon::free_port;
use distgate_testkit::{Node, NodeOptions};

const COOKIE_A: &str = "hidden_cookie_a";
const COOKIE_B: &str = "hidden_cookie_b";

/// distgate with clusters a and b (b hidden or not) routed both ways, each with its own
/// responder and cookie, from a configuration file's text as `distgate run` reads it.
fn start(driver: DriverKind, b_hidden: bool) -> Runtime {
    let name = match driver {
        DriverKind::Uring => "io_uring",
        _ => "mio",
    };
    let text = format!(
        r#"[[cluster]]
name = "a"
cookie = "{COOKIE_A}"
listen = "127.0.0.1:{ea}"

[[cluster]]
name = "b"
cookie = "{COOKIE_B}"
listen = "127.0.0.1:{eb}"
hidden = {b_hidden}

[[route]]
from = "a"
to = "b"

[[route]]
from = "b"
to = "a"

[runtime]
threads = 1
driver = "{name}"
"#,
        ea = free_port(),
        eb = free_port(),
    );
    let cfg = distgate_config::parse(&text, "hidden.toml").unwrap_or_else(|e| panic!("{e}"));
    let rt = Runtime::start(Spec::from_config(&cfg).unwrap()).expect("distgate starts");
    assert_eq!(rt.driver(), driver, "the requested driver runs");
    rt
}

fn node(prefix: &str, rt: &Runtime, side: &str, cookie: &str) -> Node {
    let epmd = rt.responder_addr(side).expect("responder").port();
    Node::start_with(prefix, NodeOptions { cookie: cookie.into(), epmd_port: Some(epmd), ..NodeOptions::default() })
}

/// Node `a` of cluster a and node `b` of cluster b, connected by a ping from `a` (or from `b`
/// when `b_dials`): what each lists in `nodes()` and `nodes(hidden)`, checked against `hidden`;
/// calls both ways; and whether a's `global` sees a name registered on b.
fn check(d: DriverKind, b_hidden: bool, b_dials: bool) {
    let what = format!("{d:?}, b hidden: {b_hidden}, b dials: {b_dials}");
    let rt = start(d, b_hidden);
    let a = node("ha", &rt, "a", COOKIE_A);
    let b = node("hb", &rt, "b", COOKIE_B);
    a.eval(&format!("B = {}.", b.atom()));
    b.eval(&format!("A = {}.", a.atom()));
    // Registered before the link exists: global syncs it over a normal link only.
    b.eval("yes = global:register_name(dg_hidden_b, spawn(fun() -> receive stop -> ok end end)).");
    let (dialler, peer) = if b_dials { (&b, "A") } else { (&a, "B") };
    assert_eq!(dialler.eval(&format!("net_adm:ping({peer}).")), "pong", "{what}");
    let listed = |n: &Node| format!("[{}]", n.atom());
    let not_listed = "[]";
    if b_hidden {
        assert_eq!(b.eval("nodes()."), not_listed, "{what}: b lists a in nodes()");
        assert_eq!(b.eval("nodes(hidden)."), listed(&a), "{what}");
        assert_eq!(a.eval("nodes()."), not_listed, "{what}: a lists b in nodes()");
        assert_eq!(a.eval("nodes(hidden)."), listed(&b), "{what}");
    } else {
        assert_eq!(b.eval("nodes()."), listed(&a), "{what}");
        assert_eq!(b.eval("nodes(hidden)."), not_listed, "{what}");
        assert_eq!(a.eval("nodes()."), listed(&b), "{what}");
        assert_eq!(a.eval("nodes(hidden)."), not_listed, "{what}");
    }
    // Calls work both ways either way.
    assert_eq!(a.eval("rpc:call(B, erlang, node, [])."), b.atom(), "{what}");
    assert_eq!(b.eval("rpc:call(A, erlang, node, [])."), a.atom(), "{what}");
    // global: both sides agree on the link's kind, so a sync ends on both, and b's name reaches
    // a over a normal link only.
    b.eval("ok = global:sync().");
    let seen = a.eval("ok = global:sync(), global:whereis_name(dg_hidden_b) =/= undefined.");
    assert_eq!(seen, if b_hidden { "false" } else { "true" }, "{what}: a's global sees b's name");
}

#[test]
fn links_into_a_hidden_cluster_are_hidden_on_both_nodes_whichever_dials() {
    for d in [DriverKind::Poll, DriverKind::Uring] {
        check(d, true, false);
        check(d, true, true);
    }
}

#[test]
fn links_into_a_cluster_that_is_not_hidden_are_normal() {
    check(DriverKind::Poll, false, false);
    check(DriverKind::Poll, false, true);
}
