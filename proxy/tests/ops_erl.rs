//! The `distgate` binary as an operator runs it: `run -c FILE`, real nodes through it,
//! `/metrics` scraped and checked against the traffic sent, SIGHUP with a broken and then a
//! changed file, SIGTERM draining and bringing nodedown.

use distgate_testkit::daemon::{Epmd, free_port, sample, scrape, thread_policies, Daemon};
use distgate_testkit::{Node, NodeOptions, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_distgate");

/// Two clusters a and b (their own cookies and responders), `middle` (routes, policies), the
/// metrics address and two mio threads, written to `distgate.toml` in `dir`.
fn write_config(dir: &TempDir, ea: u16, eb: u16, metrics: u16, middle: &str) -> std::path::PathBuf {
    let text = format!(
        "[[cluster]]\nname = \"a\"\ncookie = \"ops_cookie_a\"\nlisten = \"127.0.0.1:{ea}\"\n\n\
         [[cluster]]\nname = \"b\"\ncookie = \"ops_cookie_b\"\nlisten = \"127.0.0.1:{eb}\"\n\n\
         {middle}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n[runtime]\nthreads = 2\ndriver = \"mio\"\n"
    );
    let p = dir.path().join("distgate.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn config(dir: &TempDir, ea: u16, eb: u16, metrics: u16, route: bool) -> std::path::PathBuf {
    write_config(dir, ea, eb, metrics, if route { "[[route]]\nfrom = \"a\"\nto = \"b\"\n" } else { "" })
}

#[test]
fn run_with_a_file_metrics_reload_and_sigterm() {
    let dir = TempDir::new("dg_ops");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let cfg = config(&dir, ea, eb, mp, true);
    let mut dg = Daemon::start(BIN, &cfg);
    let a = Node::start_with("oa", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    let b = Node::start_with("ob", NodeOptions { cookie: "ops_cookie_b".into(), epmd_port: Some(eb), ..NodeOptions::default() });
    a.eval(&format!("B = {}.", b.atom()));
    b.eval("register(dg_count, spawn(fun() -> L = fun Loop(N) -> receive {get, F} -> F ! {n, N}, Loop(N); _ -> Loop(N + 1) end end, L(0) end)).");
    // 200 messages of 10 000 bytes each: at least 2 MB must show up as forwarded bytes.
    assert_eq!(
        a.eval("Bin = binary:copy(<<7>>, 10000), [{dg_count, B} ! Bin || _ <- lists:seq(1, 200)], {dg_count, B} ! {get, self()}, receive {n, N} -> N after 30000 -> timeout end."),
        "200"
    );
    // Three 200 KB binaries: OTP sends each in 4 fragments, and distgate streams them.
    assert_eq!(
        a.eval("Big = binary:copy(<<8>>, 200000), [{dg_count, B} ! {big, Big} || _ <- [1, 2, 3]], {dg_count, B} ! {get, self()}, receive {n, N2} -> N2 after 30000 -> timeout end."),
        "203"
    );
    let m = scrape(mp);
    assert_eq!(sample(&m, "distgate_links_total{event=\"established\"}"), 1.0, "{m}");
    assert!(sample(&m, "distgate_frames_streamed_total{direction=\"down_to_up\"}") >= 12.0, "{m}");
    assert_eq!(sample(&m, "distgate_links{state=\"open\"}"), 1.0);
    assert!(sample(&m, "distgate_bytes_total{direction=\"down_to_up\"}") >= 2_000_000.0);
    assert!(sample(&m, "distgate_frames_total{direction=\"down_to_up\"}") >= 200.0);
    assert!(sample(&m, "distgate_frame_seconds_count") >= 1.0);
    assert_eq!(sample(&m, "distgate_driver{driver=\"mio\"}"), 1.0);

    // SIGHUP with a broken file: the running configuration stays, and says why.
    std::fs::write(&cfg, "[[cluster]]\nname = \"a\"\ntreads = 2\n").unwrap();
    dg.signal("HUP");
    let l = dg.wait_for("SIGHUP: invalid configuration");
    assert!(l.contains("treads"), "{l}");
    assert_eq!(a.eval("rpc:call(B, erlang, node, [])."), b.atom(), "the link survived");

    // SIGHUP with the route removed: the clusters are cut apart. The established link is
    // closed (nodedown), its port refuses connections, new lookups find nothing.
    let b_name = b.atom().trim_matches('\'').split('@').next().unwrap().to_string();
    let port = a.eval(&format!("{{port, P, _}} = erl_epmd:port_please(\"{b_name}\", \"127.0.0.1\"), P."));
    let port: u16 = port.parse().unwrap_or_else(|_| panic!("port_please: {port}"));
    config(&dir, ea, eb, mp, false);
    dg.signal("HUP");
    dg.wait_for("SIGHUP: configuration reloaded");
    let gone = "W = fun Wait(0) -> nodes(); Wait(K) -> case nodes() of [] -> []; _ -> receive after 50 -> Wait(K - 1) end end end, W(600).";
    assert_eq!(a.eval(gone), "[]", "the link is closed");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    assert_eq!(std::io::Read::read(&mut s, &mut [0u8; 16]).unwrap_or(0), 0, "the removed route's port closes at once");
    let m = scrape(mp);
    assert_eq!(sample(&m, "distgate_link_close_total{reason=\"route_removed\"}"), 1.0, "{m}");
    assert_eq!(sample(&m, "distgate_events_total{event=\"refused:route_removed\"}"), 1.0, "{m}");
    let c = Node::start_with("oc", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    assert_eq!(c.eval(&format!("net_adm:ping({}).", b.atom())), "pang", "no route any more for new links");
    // Put back: the same port serves again.
    config(&dir, ea, eb, mp, true);
    dg.signal("HUP");
    dg.wait_for("SIGHUP: configuration reloaded");
    assert_eq!(a.eval("net_adm:ping(B)."), "pong", "the route is back");

    // SIGTERM: the link is closed (nodedown on both sides) and distgate exits cleanly.
    dg.signal("TERM");
    let status = dg.wait();
    assert!(status.success(), "{status:?}");
    assert_eq!(a.eval(gone), "[]");
    assert_eq!(b.eval(gone), "[]");
}

/// A config whose route a → b is judged by a policy letting REG_SENDs reach only `allowed`
/// (and the names nodes use among themselves when they meet).
fn policy_config(dir: &TempDir, ea: u16, eb: u16, metrics: u16, allowed: &[&str]) -> std::path::PathBuf {
    let names: Vec<String> = allowed.iter().chain(&["net_kernel", "global_*"]).map(|n| format!("\"{n}\"")).collect();
    let middle = format!(
        "[[route]]\nfrom = \"a\"\nto = \"b\"\npolicy = \"gate\"\n\n[policy.gate.control]\nreg_send_allow = [{}]\n",
        names.join(", ")
    );
    write_config(dir, ea, eb, metrics, &middle)
}

/// Issue 6: SIGHUP under traffic changes what the policy lets through on the open link; the
/// link is neither dropped nor re-made, and the traffic flowing meanwhile arrives whole and
/// in order.
#[test]
fn reload_under_traffic_changes_a_policy_outcome_with_no_link_dropped() {
    let dir = TempDir::new("dg_ops_reload");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let cfg = policy_config(&dir, ea, eb, mp, &["dg_count"]);
    let mut dg = Daemon::start(BIN, &cfg);
    let a = Node::start_with("ra", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    let b = Node::start_with("rb", NodeOptions { cookie: "ops_cookie_b".into(), epmd_port: Some(eb), ..NodeOptions::default() });
    a.eval(&format!("B = {}.", b.atom()));
    // dg_count checks that {seq, N} arrive as 1, 2, 3, …; dg_other keeps what it gets.
    b.eval(
        "register(dg_count, spawn(fun() -> L = fun Loop(N, Ok) -> receive \
           {seq, M} -> Loop(M, Ok andalso M =:= N + 1); \
           {sync, F} -> F ! synced, Loop(N, Ok); \
           {get, F} -> F ! {count, N, Ok}, Loop(N, Ok) end end, L(0, true) end)).",
    );
    b.eval("register(dg_other, spawn(fun() -> L = fun Loop(Got) -> receive {get, F} -> F ! {other, lists:reverse(Got)}, Loop(Got); X -> Loop([X | Got]) end end, L([]) end)).");
    assert_eq!(a.eval("net_adm:ping(B)."), "pong");
    // A watcher on A that would see the link go down, and a pump sending {seq, N} every ms.
    a.eval("register(watch, spawn(fun() -> monitor_node(B, true), L = fun Loop(Downs) -> receive {get, F} -> F ! {downs, Downs}, Loop(Downs); {nodedown, _} = D -> Loop([D | Downs]) end end, L([]) end)).");
    a.eval("register(pump, spawn(fun() -> P = fun Loop(N) -> receive {stop, F} -> F ! {sent, N} after 1 -> {dg_count, B} ! {seq, N + 1}, Loop(N + 1) end end, P(0) end)).");
    // Sent to dg_other, then a sync through dg_count on the same link: when the sync is
    // answered, what dg_other will ever get of it is in its mailbox.
    let probe = |tag: &str| {
        let r = a.eval(&format!("{{dg_other, B}} ! {tag}, {{dg_count, B}} ! {{sync, self()}}, receive synced -> ok after 30000 -> timeout end."));
        assert_eq!(r, "ok");
        // Bindings persist from one eval to the next: a fresh variable per probe.
        b.eval(&format!("dg_other ! {{get, self()}}, receive {{other, Got_{tag}}} -> Got_{tag} after 30000 -> timeout end."))
    };
    assert_eq!(probe("before"), "[]", "refused by the first policy");

    // An invalid file (an unknown key in the policy) is refused as a whole: the old policy
    // keeps judging.
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("reg_send_allow", "reg_send_alow")).unwrap();
    dg.signal("HUP");
    let l = dg.wait_for("SIGHUP: invalid configuration");
    assert!(l.contains("reg_send_alow"), "{l}");
    assert_eq!(probe("still"), "[]", "still refused: the old policy stays");

    policy_config(&dir, ea, eb, mp, &["dg_count", "dg_other"]);
    dg.signal("HUP");
    dg.wait_for("SIGHUP: configuration reloaded");
    assert_eq!(probe("later"), "[later]", "let through by the reloaded policy, on the same link");

    let sent = a.eval("pump ! {stop, self()}, receive {sent, N} -> N after 30000 -> timeout end.");
    let sent: u64 = sent.parse().unwrap_or_else(|_| panic!("pump: {sent}"));
    assert!(sent > 0);
    let got = b.eval(&format!(
        "W = fun Wait(0) -> dg_count ! {{get, self()}}, receive C -> C end; \
                 Wait(K) -> dg_count ! {{get, self()}}, receive {{count, {sent}, _}} = C -> C; _ -> receive after 20 -> Wait(K - 1) end end end, W(1500)."
    ));
    assert_eq!(got, format!("{{count,{sent},true}}"), "every message of the pump, in order");
    assert_eq!(a.eval("watch ! {get, self()}, receive {downs, D} -> D end."), "[]", "no nodedown on A");
    let m = scrape(mp);
    assert_eq!(sample(&m, "distgate_links_total{event=\"established\"}"), 1.0, "one link, never re-made");
    assert_eq!(sample(&m, "distgate_links{state=\"open\"}"), 1.0);
    assert_eq!(sample(&m, "distgate_policy_actions_total{action=\"drop\"}"), 2.0, "only the two refused probes were dropped\n{m}");
}

/// `[log] format = "json"`: every line distgate logs is one JSON object with a level, a
/// timestamp and the message, so a log shipper can parse it; the cookie never shows.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = TempDir::new("dg_ops_json");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let cfg = config(&dir, ea, eb, mp, true);
    let text = std::fs::read_to_string(&cfg).unwrap() + "\n[log]\nformat = \"json\"\n";
    std::fs::write(&cfg, text).unwrap();
    let mut dg = Daemon::start(BIN, &cfg);
    // A broken reload logs an error with the reasons (file, line, column), as JSON too.
    std::fs::write(&cfg, "[[cluster]]\nname = \"a\"\ntreads = 2\n").unwrap();
    dg.signal("HUP");
    dg.wait_for("SIGHUP: invalid configuration");
    let lines = dg.log().to_vec();
    assert!(lines.len() >= 2, "{lines:?}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
        assert!(!l.contains("ops_cookie"), "a cookie in the log: {l}");
    }
    let warn = lines.iter().find(|l| l.contains("SIGHUP: invalid configuration")).unwrap();
    let v: serde_json::Value = serde_json::from_str(warn).unwrap();
    assert_eq!(v["level"], "ERROR", "{warn}");
    assert!(warn.contains("distgate.toml:3:1") && warn.contains("treads"), "{warn}");
}

/// Text logs going to a pipe (journald, a file, a log shipper) carry no terminal colour codes.
#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    let dir = TempDir::new("dg_ops_plain");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let mut dg = Daemon::start(BIN, &config(&dir, ea, eb, mp, true));
    let log = dg.log();
    assert!(log.iter().any(|l| l.contains("INFO distgate") && l.contains("distgate running")), "{log:?}");
    assert!(!log.iter().any(|l| l.contains('\x1b')), "escape codes in {log:?}");
}

/// `[log] level` is applied at start and changed by a SIGHUP: at `warn` the informational
/// start-up lines are not written; after a reload to `info`, the reload's own line is.
#[test]
fn a_reload_changes_the_log_level() {
    let dir = TempDir::new("dg_ops_level");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let cfg = config(&dir, ea, eb, mp, true);
    let base = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{base}\n[log]\nlevel = \"warn\"\n")).unwrap();
    let mut dg = Daemon::start_at_configured_level(BIN, &cfg, mp);
    assert!(!dg.log().iter().any(|l| l.contains("distgate running")), "info lines at level warn: {:?}", dg.log());
    std::fs::write(&cfg, format!("{base}\n[log]\nlevel = \"info\"\n")).unwrap();
    dg.signal("HUP");
    dg.wait_for("SIGHUP: configuration reloaded");
    assert!(!dg.log().iter().any(|l| l.contains("distgate running")), "the start-up line is not written late");
}

/// A SIGHUP that rotates cluster b's cookie: a node of a reaches a b node that runs with the
/// new cookie (distgate's handshake towards b uses it), while the link opened before keeps
/// working. Real nodes on both sides.
#[test]
fn a_reload_rotates_a_clusters_cookie_for_new_links() {
    let dir = TempDir::new("dg_ops_cookie");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let cfg = config(&dir, ea, eb, mp, true);
    let mut dg = Daemon::start(BIN, &cfg);
    let a = Node::start_with("ra", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    let b = Node::start_with("rb", NodeOptions { cookie: "ops_cookie_b".into(), epmd_port: Some(eb), ..NodeOptions::default() });
    assert_eq!(a.eval(&format!("net_adm:ping({}).", b.atom())), "pong");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("ops_cookie_b", "ops_cookie_b_rotated");
    std::fs::write(&cfg, text).unwrap();
    dg.signal("HUP");
    dg.wait_for("SIGHUP: configuration reloaded");
    let b2 = Node::start_with("rb2", NodeOptions { cookie: "ops_cookie_b_rotated".into(), epmd_port: Some(eb), ..NodeOptions::default() });
    assert_eq!(a.eval(&format!("net_adm:ping({}).", b2.atom())), "pong", "distgate answers b2 with b's new cookie");
    assert_eq!(a.eval(&format!("rpc:call({}, erlang, node, []).", b.atom())), b.atom(), "the link from before the reload still works");
}

/// A SIGHUP that moves cluster b's `upstream_epmd` to another real epmd: distgate resolves a
/// b node registered only there for a node of a, while the link to the b node found through
/// the old epmd keeps working.
#[test]
fn a_reload_swaps_a_clusters_upstream_epmd_for_new_lookups() {
    let dir = TempDir::new("dg_ops_upstream");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let (e1, e2) = (Epmd::start(), Epmd::start());
    let cfg = config(&dir, ea, eb, mp, true);
    // b's nodes register with a real epmd, not with distgate's responder for b.
    let (base, listen_b) = (std::fs::read_to_string(&cfg).unwrap(), format!("listen = \"127.0.0.1:{eb}\"\n"));
    let with_upstream = |port: u16| std::fs::write(&cfg, base.replace(&listen_b, &format!("{listen_b}upstream_epmd = \"127.0.0.1:{port}\"\n"))).unwrap();
    with_upstream(e1.1);
    let mut dg = Daemon::start(BIN, &cfg);
    let a = Node::start_with("ua", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    let b1 = Node::start_with("ub1", NodeOptions { cookie: "ops_cookie_b".into(), epmd_port: Some(e1.1), ..NodeOptions::default() });
    assert_eq!(a.eval(&format!("net_adm:ping({}).", b1.atom())), "pong", "b1 found through the first epmd");
    // b2 registers with the second epmd only: the first one never hears of it.
    let b2 = Node::start_with("ub2", NodeOptions { cookie: "ops_cookie_b".into(), epmd_port: Some(e2.1), ..NodeOptions::default() });
    with_upstream(e2.1);
    dg.signal("HUP");
    dg.wait_for("SIGHUP: configuration reloaded");
    assert_eq!(a.eval(&format!("net_adm:ping({}).", b2.atom())), "pong", "b2 found through the new upstream epmd");
    assert_eq!(a.eval(&format!("rpc:call({}, erlang, node, []).", b1.atom())), b1.atom(), "the link from before the reload still works");
}

/// A SIGHUP that connects two clusters that were not connected: a node of a reaches b, and
/// the new route's policy judges that link (a REG_SEND to a name it does not allow is
/// dropped, one it allows arrives).
#[test]
fn a_reload_that_adds_a_route_with_a_policy_judges_its_links() {
    let dir = TempDir::new("dg_ops_add_route");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let cfg = config(&dir, ea, eb, mp, false);
    let mut dg = Daemon::start(BIN, &cfg);
    let a = Node::start_with("na", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    let b = Node::start_with("nb", NodeOptions { cookie: "ops_cookie_b".into(), epmd_port: Some(eb), ..NodeOptions::default() });
    assert_eq!(a.eval(&format!("net_adm:ping({}).", b.atom())), "pang", "no route yet");
    policy_config(&dir, ea, eb, mp, &["dg_count"]);
    dg.signal("HUP");
    dg.wait_for("SIGHUP: configuration reloaded");
    b.eval("register(dg_other, spawn(fun() -> L = fun Loop(Got) -> receive {get, F} -> F ! {other, lists:reverse(Got)}, Loop(Got); X -> Loop([X | Got]) end end, L([]) end)).");
    b.eval("register(dg_count, spawn(fun() -> L = fun Loop() -> receive {sync, F} -> F ! synced, Loop() end end, L() end)).");
    a.eval(&format!("B = {}.", b.atom()));
    assert_eq!(a.eval("net_adm:ping(B)."), "pong", "the added route is in force");
    // Refused by the policy, then a sync through an allowed name on the same link: once it
    // is answered, whatever dg_other will ever get of the first is in its mailbox.
    let r = a.eval("{dg_other, B} ! refused, {dg_count, B} ! {sync, self()}, receive synced -> ok after 30000 -> timeout end.");
    assert_eq!(r, "ok");
    assert_eq!(b.eval("dg_other ! {get, self()}, receive {other, Got} -> Got after 30000 -> timeout end."), "[]", "judged by the new route's policy");
    assert_eq!(sample(&scrape(mp), "distgate_policy_actions_total{action=\"drop\"}"), 1.0);
}

/// A SIGHUP whose file also adds a cluster (which needs a restart) still applies the rest:
/// here cluster b's rotated cookie.
#[test]
fn a_reload_that_adds_a_cluster_still_applies_the_rest() {
    let dir = TempDir::new("dg_ops_add_cluster");
    let (ea, eb, mp, ec) = (free_port(), free_port(), free_port(), free_port());
    let cfg = config(&dir, ea, eb, mp, true);
    let mut dg = Daemon::start(BIN, &cfg);
    let a = Node::start_with("ca", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    let text = std::fs::read_to_string(&cfg).unwrap().replace("ops_cookie_b", "ops_cookie_b_rotated");
    let text = format!("[[cluster]]\nname = \"c\"\ncookie = \"ops_cookie_c\"\nlisten = \"127.0.0.1:{ec}\"\n\n{text}");
    std::fs::write(&cfg, text).unwrap();
    dg.signal("HUP");
    let l = dg.wait_for("needs a restart");
    assert!(l.contains("cluster 'c' (added)"), "{l}");
    dg.wait_for("SIGHUP: configuration reloaded");
    let b = Node::start_with("cb", NodeOptions { cookie: "ops_cookie_b_rotated".into(), epmd_port: Some(eb), ..NodeOptions::default() });
    assert_eq!(a.eval(&format!("net_adm:ping({}).", b.atom())), "pong", "b's new cookie is in force");
}

/// Mirrors follow a reload: a route added from b (whose nodes use a real epmd) to a puts a's
/// registered node into that epmd, where b's nodes find it and dial it through distgate;
/// taking the node out of a's `nodes` withdraws it; putting it back mirrors it again; and a
/// mirror lost with a restarted epmd is made again.
#[test]
fn a_reload_adds_and_withdraws_mirrors() {
    let dir = TempDir::new("dg_ops_mirrors");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let e = Epmd::start();
    let listen_a = format!("listen = \"127.0.0.1:{ea}\"\n");
    let listen_b = format!("listen = \"127.0.0.1:{eb}\"\n");
    let write = |route: bool, a_nodes: &str| {
        let cfg = config(&dir, ea, eb, mp, false);
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text = text.replace(&listen_b, &format!("{listen_b}upstream_epmd = \"127.0.0.1:{}\"\n", e.1));
        let text = text.replace(&listen_a, &format!("{listen_a}{a_nodes}"));
        let text = if route { text.replace("[metrics]", "[[route]]\nfrom = \"b\"\nto = \"a\"\n\n[metrics]") } else { text };
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let cfg = write(false, "");
    let mut dg = Daemon::start(BIN, &cfg);
    let a = Node::start_with("ma1", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    let b = Node::start_with("mb1", NodeOptions { cookie: "ops_cookie_b".into(), epmd_port: Some(e.1), ..NodeOptions::default() });
    // What b's epmd lists: whether a's node is there (b's own always is).
    let alive = |n: &Node| n.atom().trim_matches('\'').split('@').next().unwrap().to_string();
    let (alive_a, alive_b) = (alive(&a), alive(&b));
    let listed = |alive: &str| b.eval("[N || {N, _} <- element(2, net_adm:names())].").contains(&format!("\"{alive}\""));
    let mirrored = || {
        assert!(listed(&alive_b), "b's own node is in its epmd");
        listed(&alive_a)
    };
    assert!(!mirrored(), "no route from b to a: a's node is not in b's epmd");
    let reload = |dg: &mut Daemon| {
        dg.signal("HUP");
        dg.wait_for("SIGHUP: configuration reloaded");
    };
    write(true, "");
    reload(&mut dg);
    assert!(mirrored(), "the added route mirrors a's node into b's epmd");
    assert_eq!(b.eval(&format!("net_adm:ping({}).", a.atom())), "pong", "b dials a through the mirror");
    write(true, "nodes = [\"other*@*\"]\n");
    reload(&mut dg);
    assert!(!mirrored(), "a node taken out of a's nodes is withdrawn");
    write(true, "");
    reload(&mut dg);
    assert!(mirrored(), "and mirrored again when it is back");
    // b's epmd restarts (empty): the next reload makes the mirror it dropped again.
    let port = e.1;
    drop(e);
    let _e = Epmd::start_on(port);
    assert!(!listed(&alive_a), "a new epmd knows nothing");
    reload(&mut dg);
    assert!(listed(&alive_a), "a mirror its epmd dropped is made again");
}

/// Between reloads the mirror keeper (`[runtime] mirror_check`) makes again the mirrors an
/// upstream EPMD could not take (it was down when the node registered) or dropped (it
/// restarted), with no reload and no new registration.
#[test]
fn the_mirror_keeper_makes_missing_mirrors_again() {
    let dir = TempDir::new("dg_ops_keeper");
    let (ea, eb, mp, up) = (free_port(), free_port(), free_port(), free_port());
    let cfg = config(&dir, ea, eb, mp, false);
    let listen_b = format!("listen = \"127.0.0.1:{eb}\"\n");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(&listen_b, &format!("{listen_b}upstream_epmd = \"127.0.0.1:{up}\"\n"));
    let text = text.replace("[metrics]", "[[route]]\nfrom = \"b\"\nto = \"a\"\n\n[metrics]");
    std::fs::write(&cfg, format!("{text}mirror_check = \"200ms\"\n")).unwrap();
    let _dg = Daemon::start(BIN, &cfg);
    // a registers while b's upstream epmd is down: the mirror cannot be made now.
    let a = Node::start_with("ka1", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    let until = |what: &str, cond: &dyn Fn() -> bool| {
        let t0 = std::time::Instant::now();
        while !cond() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(30), "{what}: not within 30 s");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    until("the failed attempt is counted", &|| {
        distgate_testkit::daemon::sample_or(&scrape(mp), "distgate_events_total{event=\"mirror_failed\"}").is_some_and(|n| n >= 1.0)
    });
    let e = Epmd::start_on(up);
    let b = Node::start_with("kb1", NodeOptions { cookie: "ops_cookie_b".into(), epmd_port: Some(up), ..NodeOptions::default() });
    let alive_a = a.atom().trim_matches('\'').split('@').next().unwrap().to_string();
    let listed = || b.eval("[N || {N, _} <- element(2, net_adm:names())].").contains(&format!("\"{alive_a}\""));
    until("mirrored once b's epmd is up", &listed);
    assert_eq!(b.eval(&format!("net_adm:ping({}).", a.atom())), "pong", "b dials a through the mirror");
    // b's epmd restarts, empty: the keeper registers a's node in it again.
    drop(e);
    let _e = Epmd::start_on(up);
    until("mirrored again after b's epmd restarted", &listed);
    let m = scrape(mp);
    assert!(sample(&m, "distgate_events_total{event=\"mirror_lost\"}") >= 1.0, "{m}");
}

/// Waits until both cores have logged that they run under `which` (their lines may come
/// before or after the one the last wait stopped at).
fn cores_set(dg: &mut Daemon, which: &str) {
    let count = |dg: &mut Daemon| dg.log().iter().filter(|l| l.contains("core scheduling set") && l.contains(which)).count();
    while count(dg) < 2 {
        dg.wait_for("core scheduling set");
    }
}

/// `[runtime] scheduling = "batch"` puts the data-plane threads (and only those) under
/// `SCHED_BATCH`; a SIGHUP back to the default puts them under `SCHED_OTHER` again, while the
/// proxy keeps forwarding.
#[test]
fn scheduling_batch_applies_to_the_cores_and_a_reload_undoes_it() {
    let dir = TempDir::new("dg_ops_sched");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let cfg = config(&dir, ea, eb, mp, true);
    let base = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{base}scheduling = \"batch\"\n")).unwrap();
    let mut dg = Daemon::start(BIN, &cfg);
    cores_set(&mut dg, "batch");
    assert_eq!(thread_policies(dg.pid(), "core-"), [3, 3], "both cores under SCHED_BATCH");
    assert_eq!(thread_policies(dg.pid(), "distgate"), [0], "the main thread keeps SCHED_OTHER");
    let a = Node::start_with("sa", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    let b = Node::start_with("sb", NodeOptions { cookie: "ops_cookie_b".into(), epmd_port: Some(eb), ..NodeOptions::default() });
    assert_eq!(a.eval(&format!("net_adm:ping({}).", b.atom())), "pong");
    std::fs::write(&cfg, &base).unwrap();
    dg.signal("HUP");
    dg.wait_for("SIGHUP: configuration reloaded");
    cores_set(&mut dg, "normal");
    assert_eq!(thread_policies(dg.pid(), "core-"), [0, 0], "both cores back under SCHED_OTHER");
    assert_eq!(a.eval(&format!("rpc:call({}, erlang, node, []).", b.atom())), b.atom(), "the link still forwards");
}
