//! Real OTP nodes in two clusters with different cookies, talking through distgate.
//!
//! Each test starts its own distgate (in-process, responders on ephemeral ports) and its own
//! nodes, which use OTP's own EPMD client pointed at distgate's responder (`ERL_EPMD_PORT`), so
//! nothing in the nodes knows about distgate. Tests run in parallel.

use distgate::driver::DriverKind;
use distgate::link::{Cookie, LinkLimits};
use distgate::runtime::{Runtime, SideSpec, Spec};
use distgate_testkit::{Node, NodeOptions};
use distgate_testkit::daemon::free_port;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const COOKIE_A: &str = "cookie_of_cluster_a";
const COOKIE_B: &str = "cookie_of_cluster_b";

fn lo() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn side(name: &str, cookie: &str, upstream: Option<SocketAddr>) -> SideSpec {
    SideSpec {
        name: name.into(),
        cookie: Cookie::new(cookie.as_bytes()),
        epmd_listen: if upstream.is_none() { Some(SocketAddr::new(lo(), 0)) } else { None },
        upstream_epmd: upstream.into_iter().map(Into::into).collect(),
        proxy_ip: lo(),
        hidden: false,
        nodes: None,
        node_ports: None,
    }
}

fn spec(driver: DriverKind, sides: Vec<SideSpec>) -> Spec {
    Spec {
        sides,
        routes: vec![(0, 1), (1, 0)],
        limits: LinkLimits { handshake_timeout: Duration::from_secs(10), ..LinkLimits::default() },
        link_buffer: 4 << 20,
        threads: 2,
        driver,
        epmd_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(5),
        mirror_check: Duration::from_secs(10),
        scheduling: distgate::runtime::Scheduling::Normal,
        policies: Default::default(),
        registries: Default::default(),
    }
}

/// distgate with clusters A and B, each registering with its own responder.
fn two_clusters(driver: DriverKind) -> Runtime {
    let rt = Runtime::start(spec(driver, vec![side("a", COOKIE_A, None), side("b", COOKIE_B, None)])).expect("distgate starts");
    assert_eq!(rt.driver(), driver, "the requested driver runs");
    rt
}

fn node(prefix: &str, rt: &Runtime, side: &str, cookie: &str) -> Node {
    let epmd = rt.responder_addr(side).expect("responder").port();
    Node::start_with(prefix, NodeOptions { cookie: cookie.into(), epmd_port: Some(epmd), ..NodeOptions::default() })
}

/// Every test runs on both drivers, one after the other.
fn drivers() -> Vec<DriverKind> {
    vec![DriverKind::Poll, DriverKind::Uring]
}

#[test]
fn ping_rpc_erpc_spawn_global_pg_both_ways() {
    for d in drivers() {
        let rt = two_clusters(d);
        let a = node("pa", &rt, "a", COOKIE_A);
        let b = node("pb", &rt, "b", COOKIE_B);
        a.eval(&format!("B = {}.", b.atom()));
        b.eval(&format!("A = {}.", a.atom()));
        assert_eq!(a.eval("net_adm:ping(B)."), "pong", "{d:?}");
        // rpc and erpc both ways; the node names are the real ones.
        assert_eq!(a.eval("rpc:call(B, erlang, node, [])."), b.atom());
        assert_eq!(b.eval("erpc:call(A, erlang, node, [])."), a.atom());
        assert_eq!(b.eval("rpc:call(A, lists, reverse, [[1,2,3]])."), "[3,2,1]");
        // spawn on the remote node, with a fun made here (an erl_eval closure).
        assert_eq!(
            a.eval("Me = self(), P = spawn(B, fun() -> Me ! {self(), node()} end), receive {P, N} -> N after 30000 -> timeout end."),
            b.atom()
        );
        // global: a name registered on B is seen on A.
        b.eval("yes = global:register_name(dg_global_b, spawn(fun() -> receive stop -> ok end end)).");
        assert_eq!(a.eval("global:sync(), node(global:whereis_name(dg_global_b))."), b.atom());
        // pg: a member joined on A is seen on B.
        a.eval("pg:start_link(), Member = spawn(fun() -> receive stop -> ok end end), ok = pg:join(dg_group, Member).");
        b.eval("pg:start_link().");
        assert_eq!(
            b.eval("F = fun Wait(0) -> timeout; Wait(N) -> case pg:get_members(dg_group) of [P] -> node(P); _ -> timer:sleep(50), Wait(N - 1) end end, F(600)."),
            a.atom()
        );
        // The link is one real connection per direction pair: both see each other.
        assert_eq!(a.eval("nodes()."), format!("[{}]", b.atom()));
        assert!(rt.stats().links_established.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    }
}

#[test]
fn monitors_links_exit_reasons_funs_big_binaries_and_order() {
    for d in drivers() {
        monitors_links_exit_reasons_funs_big_binaries_and_order_on(d);
    }
}

fn monitors_links_exit_reasons_funs_big_binaries_and_order_on(d: DriverKind) {
    let rt = two_clusters(d);
    let a = node("ma", &rt, "a", COOKIE_A);
    let b = node("mb", &rt, "b", COOKIE_B);
    a.eval(&format!("B = {}.", b.atom()));
    // A monitor's DOWN reason crosses back intact.
    assert_eq!(
        a.eval("P = spawn(B, fun() -> receive go -> exit({custom_reason, [1,2,3]}) end end), R = erlang:monitor(process, P), P ! go, receive {'DOWN', R, process, P, Why} -> Why after 30000 -> timeout end."),
        "{custom_reason,[1,2,3]}"
    );
    // A link's exit signal too.
    assert_eq!(
        a.eval("process_flag(trap_exit, true), L = spawn_link(B, fun() -> receive go -> exit(linked_reason) end end), L ! go, receive {'EXIT', L, Why2} -> Why2 after 30000 -> timeout end."),
        "linked_reason"
    );
    // A 10 MB binary (fragmented by OTP into 64 KiB pieces) arrives whole.
    assert_eq!(
        a.eval("Bin = crypto:strong_rand_bytes(10000000), erpc:call(B, erlang, md5, [Bin]) =:= erlang:md5(Bin)."),
        "true"
    );
    // A 3 MB binary as the last term of a message is streamed (forwarded fragment by
    // fragment as it arrives, not held whole) and arrives whole, twice in a row.
    let streamed = |rt: &distgate::runtime::Runtime| rt.stats().streamed[0].load(std::sync::atomic::Ordering::Relaxed);
    let before = streamed(&rt);
    b.eval("register(dg_md5, spawn(fun() -> L = fun Loop() -> receive {From, Bin} -> From ! {md5, erlang:md5(Bin)}, Loop() end end, L() end)).");
    assert_eq!(
        a.eval("[begin Big2 = crypto:strong_rand_bytes(3000000), {dg_md5, B} ! {self(), Big2}, receive {md5, M} -> M =:= erlang:md5(Big2) after 20000 -> timeout end end || _ <- [1, 2]]."),
        "[true,true]"
    );
    // OTP cuts 3 MB into about 46 fragments of 64 KiB.
    assert!(streamed(&rt) - before >= 80, "{d:?}: {} frames streamed", streamed(&rt) - before);
    // 100,000 messages, in order, none lost.
    b.eval("register(dg_seq, spawn(fun() -> Loop = fun L(N) -> receive {n, N} -> L(N + 1); {done, From} -> From ! {count, N} end end, Loop(0) end)).");
    assert_eq!(
        a.eval("[{dg_seq, B} ! {n, I} || I <- lists:seq(0, 99999)], {dg_seq, B} ! {done, self()}, receive {count, C} -> C after 60000 -> timeout end."),
        "100000"
    );
    // A fun sent in a message and called remotely.
    b.eval("register(dg_caller, spawn(fun() -> receive {F, Arg, From} -> From ! {result, F(Arg)} end end)).");
    assert_eq!(a.eval("{dg_caller, B} ! {fun(X) -> X * 7 end, 6, self()}, receive {result, R6} -> R6 after 30000 -> timeout end."), "42");
}

#[test]
fn wrong_cookie_on_either_side_is_refused_and_counted() {
    for d in drivers() {
        wrong_cookie_on_either_side_is_refused_and_counted_on(d);
    }
}

fn wrong_cookie_on_either_side_is_refused_and_counted_on(d: DriverKind) {
    let rt = two_clusters(d);
    // a's cookie is wrong for cluster A's side: distgate's digest check on the down leg fails.
    let a = node("ca", &rt, "a", "not_the_cookie_of_a");
    let b = node("cb", &rt, "b", COOKIE_B);
    assert_eq!(a.eval(&format!("net_adm:ping({}).", b.atom())), "pang");
    assert_eq!(b.eval("nodes()."), "[]", "B never saw a link");
    let stats = rt.stats();
    assert!(stats.get("close:bad_cookie") >= 1, "{:?}", stats.labelled());
    // b's cookie is wrong for B: the up leg's digest check fails.
    let rt2 = two_clusters(d);
    let a2 = node("ca2", &rt2, "a", COOKIE_A);
    let b2 = node("cb2", &rt2, "b", "not_the_cookie_of_b");
    assert_eq!(a2.eval(&format!("net_adm:ping({}).", b2.atom())), "pang");
    assert_eq!(a2.eval("nodes()."), "[]");
    assert!(rt2.stats().get("close:bad_cookie") + rt2.stats().get("close:handshake_peer_closed") >= 1, "{:?}", rt2.stats().labelled());
}

#[test]
fn stopping_distgate_brings_nodedown_and_a_new_one_reconnects() {
    for d in drivers() {
        stopping_distgate_brings_nodedown_and_a_new_one_reconnects_on(d);
    }
}

fn stopping_distgate_brings_nodedown_and_a_new_one_reconnects_on(d: DriverKind) {
    // B's nodes are registered with a real epmd (the standard one, on its own port), so they
    // stay findable while distgate is down.
    let epmd_port = free_port();
    let mut epmd = std::process::Command::new("epmd")
        .args(["-port", &epmd_port.to_string()])
        .spawn()
        .expect("epmd (from erlang-base) starts");
    distgate_testkit::daemon::wait_listening(epmd_port, "epmd");
    let b = Node::start_with("kb", NodeOptions { cookie: COOKIE_B.into(), epmd_port: Some(epmd_port), ..NodeOptions::default() });
    let up = Some(SocketAddr::new(lo(), epmd_port));
    let rt = Runtime::start(spec(d, vec![side("a", COOKIE_A, None), side("b", COOKIE_B, up)])).unwrap();
    assert_eq!(rt.driver(), d);
    let resp = rt.responder_addr("a").unwrap();
    let a = Node::start_with("ka", NodeOptions { cookie: COOKIE_A.into(), epmd_port: Some(resp.port()), ..NodeOptions::default() });
    a.eval(&format!("B = {}.", b.atom()));
    assert_eq!(a.eval("net_adm:ping(B)."), "pong");
    // Each eval runs in a fresh process, so a long-lived one collects the node events.
    let watcher = "Mon = spawn(fun() -> ok = net_kernel:monitor_nodes(true), \
                   L = fun Loop(Ev) -> receive {get, From} -> From ! {events, Ev}, Loop(Ev); E -> Loop([E | Ev]) end end, L([]) end).";
    let saw_down = |peer: &str| {
        format!(
            "W = fun Wait(0) -> still_up; Wait(N) -> Mon ! {{get, self()}}, \
             receive {{events, Ev}} -> case lists:member({{nodedown, {peer}}}, Ev) of true -> down; \
             false -> receive after 100 -> Wait(N - 1) end end end end, W(300)."
        )
    };
    a.eval(watcher);
    b.eval(watcher);
    drop(rt);
    assert_eq!(a.eval(&saw_down(&b.atom())), "down");
    assert_eq!(b.eval(&saw_down(&a.atom())), "down");
    // A new distgate on the same responder address: the next send reconnects.
    let mut s = spec(d, vec![side("a", COOKIE_A, None), side("b", COOKIE_B, up)]);
    s.sides[0].epmd_listen = Some(resp);
    let rt2 = Runtime::start(s).unwrap();
    assert_eq!(a.eval("rpc:call(B, erlang, node, [])."), b.atom());
    drop(rt2);
    let _ = epmd.kill();
    let _ = epmd.wait();
}


fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap().success());
}

/// Poll `expr` on `node` (every 100 ms, up to 30 s) until it evaluates to `want`.
fn eventually(node: &Node, expr: &str, want: &str) -> String {
    node.eval(&format!(
        "W = fun Wait(0) -> timeout; Wait(N) -> case ({expr}) of {want} -> {want}; _ -> timer:sleep(100), Wait(N - 1) end end, W(300)."
    ))
}

/// Poll `cond` (every 20 ms, up to 30 s) until it holds: for counters bumped by distgate's
/// threads after the socket event a node already reacted to.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_node_killed_mid_transfer_loses_only_its_own_link() {
    for d in drivers() {
        let rt = two_clusters(d);
        let a = node("xa", &rt, "a", COOKIE_A);
        let mut b = node("xb", &rt, "b", COOKIE_B);
        let c = node("xc", &rt, "b", COOKIE_B);
        a.eval(&format!("B = {}, C = {}.", b.atom(), c.atom()));
        assert_eq!(a.eval("{net_adm:ping(B), net_adm:ping(C)}."), "{pong,pong}", "{d:?}");
        // A floods B with 64 KiB binaries; B dies in the middle, with sends in flight.
        a.eval("spawn(fun() -> Bin = binary:copy(<<1>>, 65536), [{nobody, B} ! {I, Bin} || I <- lists:seq(1, 2000)] end).");
        b.kill();
        assert_eq!(eventually(&a, "lists:member(B, nodes())", "false"), "false", "{d:?}: A sees B go down");
        // The link to C, on the same distgate, is untouched and still carries traffic.
        assert_eq!(a.eval("rpc:call(C, erlang, node, [])."), c.atom(), "{d:?}");
        assert_eq!(a.eval("Big = crypto:strong_rand_bytes(3000000), erpc:call(C, erlang, md5, [Big]) =:= erlang:md5(Big)."), "true");
        // The mio driver counts a closed link after it has shut both sockets down, so A can
        // see B go down a moment before the count moves.
        let stats = rt.stats();
        wait_until(&format!("{d:?}: no link counted as closed"), || stats.links_closed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    }
}

#[test]
fn stopping_with_a_stalled_receiver_drains_for_a_bounded_time_then_closes() {
    for d in drivers() {
        let rt = two_clusters(d);
        let a = node("sa", &rt, "a", COOKIE_A);
        let b = node("sb", &rt, "b", COOKIE_B);
        a.eval(&format!("B = {}.", b.atom()));
        assert_eq!(a.eval("net_adm:ping(B)."), "pong", "{d:?}");
        a.eval(&format!("{{ok, _}} = {{ok, spawn(fun() -> ok = net_kernel:monitor_nodes(true), receive {{nodedown, {}}} -> ok end end)}}.", b.atom()));
        // B's VM stops reading; A sends far more than the kernel and distgate will buffer, so
        // distgate's queue towards B cannot drain when it is told to stop.
        signal(b.os_pid(), "STOP");
        a.eval("spawn(fun() -> Bin = binary:copy(<<1>>, 65536), [{nobody, B} ! {I, Bin} || I <- lists:seq(1, 400)] end).");
        let stats = rt.stats();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stats.backpressure_pauses.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "{d:?}: distgate never paused the sender");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Shutdown returns (after its bounded drain) although the queue never empties...
        drop(rt);
        assert!(stats.get("close:shutdown") >= 1, "{d:?}: {:?}", stats.labelled());
        // ...and both nodes see the link gone.
        assert_eq!(eventually(&a, "lists:member(B, nodes())", "false"), "false", "{d:?}");
        signal(b.os_pid(), "CONT");
        assert_eq!(eventually(&b, "nodes()", "[]"), "[]", "{d:?}");
    }
}
