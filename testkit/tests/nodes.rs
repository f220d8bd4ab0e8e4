//! testkit::node: real nodes without an epmd daemon.

use std::time::Duration;

use distgate_testkit::node::{EvalError, Node, NodeOptions};

#[test]
fn node_starts_and_evals() {
    let node = Node::start("evals");
    assert!(node.port() > 0);
    assert!(node.name().ends_with("@127.0.0.1"));
    assert_eq!(node.eval("node()"), node.atom());
    assert_eq!(node.eval("1 + 1."), "2");
    assert_eq!(node.eval("dg_epmd:listen_port()"), node.port().to_string());
    assert_eq!(
        node.eval("erlang:system_info(creation)"),
        node.creation().to_string()
    );
    // Bindings carry over; multi-line and unicode text survive the channel.
    // (~tp shows Latin-1 lists as strings: the default printable range.)
    node.eval("X = \"héllo\n\", Y = 'Ω'.");
    assert_eq!(node.eval("{length(X), X, Y}"), "{6,\"héllo\\n\",'Ω'}");
    // Printed output does not confuse the channel; it lands in the log.
    assert_eq!(node.eval("io:format(\"partial line\"), ok"), "ok");
    assert!(node.output().contains("partial line"));
    // Errors come back as errors; the node survives them.
    match node.try_eval("1 = 2") {
        Err(EvalError::Raised(m)) => assert!(m.contains("badmatch"), "{m}"),
        other => panic!("{other:?}"),
    }
    match node.try_eval("exit(self(), kill), ok") {
        Err(EvalError::Raised(m)) => assert!(m.contains("killed"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(node.try_eval("foo("), Err(EvalError::Raised(_))));
    assert!(matches!(
        node.try_eval_timeout("timer:sleep(1500)", Duration::from_millis(200)),
        Err(EvalError::Timeout(_))
    ));
    // The late answer to the timed-out eval is skipped, not taken as ours.
    assert_eq!(node.eval("after_timeout"), "after_timeout");
}

#[test]
fn options_are_applied() {
    let node = Node::start_with(
        "opts",
        NodeOptions {
            creation: Some(1234567),
            cookie: "other_cookie".into(),
            ..Default::default()
        },
    );
    assert_eq!(node.creation(), 1234567);
    assert_eq!(node.eval("erlang:get_cookie()"), "other_cookie");
}

#[test]
fn two_nodes_ping_each_other_through_dg_epmd() {
    let a = Node::start("pa");
    let b = Node::start("pb");
    // Without a port for b, a cannot reach it: there is no epmd to ask.
    assert_eq!(a.eval(&format!("net_adm:ping({})", b.atom())), "pang");

    a.set_peer_port(b.alive(), b.port());
    assert_eq!(a.eval(&format!("net_adm:ping({})", b.atom())), "pong");
    assert_eq!(a.eval("nodes()"), format!("[{}]", b.atom()));
    assert_eq!(b.eval("nodes()"), format!("[{}]", a.atom()));

    // b dials a on a fresh connection too, once it has seen the old one go (until then it
    // would count the dying connection as connected).
    a.eval(&format!("erlang:disconnect_node({})", b.atom()));
    assert_eq!(
        b.eval("W = fun Wait(0) -> nodes(); Wait(K) -> case nodes() of [] -> []; _ -> timer:sleep(20), Wait(K - 1) end end, W(1500)"),
        "[]"
    );
    assert!(b.connect(&a));
    assert_eq!(b.eval(&format!("net_adm:ping({})", a.atom())), "pong");
    assert_eq!(
        b.eval(&format!("erpc:call({}, erlang, node, [])", a.atom())),
        a.atom()
    );
}

#[test]
fn drop_kills_and_stop_halts() {
    let node = Node::start("drop");
    let pid = node.os_pid();
    drop(node);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie_or_gone(pid));

    let mut node = Node::start("stop");
    let status = node.stop(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(node.try_eval("1"), Err(EvalError::NodeDown));
}

fn is_zombie_or_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2) == Some("Z"),
        Err(_) => true,
    }
}
