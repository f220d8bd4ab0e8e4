//! Policy with real OTP nodes: two clusters running different versions of a module `m`
//! (two builds by erlc), a registry per cluster built from those builds, and distgate between
//! them judging the A → B direction.
//!
//! Each test starts its own distgate and nodes. Node A has `m` v1 loaded, node B `m` v2; both
//! have `dgt` (test helpers, one build, so the same MD5 on both sides: funs of `dgt` are known
//! to B's registry). B keeps what it receives in registered "sink" processes and the test
//! reads them there, over the node's control channel, not over distribution.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use distgate::driver::DriverKind;
use distgate::link::{Cookie, LinkLimits};
use distgate::policy::{Compiled, PolicyTable, RouteHandle};
use distgate::registry::{Limits, Registry, Source};
use distgate::runtime::{Runtime, SideSpec, Spec};
use distgate_testkit::erl;
use distgate_testkit::{Node, NodeOptions, TempDir};

const COOKIE_A: &str = "policy_cookie_a";
const COOKIE_B: &str = "policy_cookie_b";

/// The two versions differ in what they return, so a call says which version ran.
fn m_source(v: &str) -> String {
    format!(
        r#"-module(m).
-export([f/1, g/1, export_like/0, anon/0, closure/1, version/0]).
version() -> {v}.
f(X) -> {{{v}, X}}.
g(X) -> {{{v}_g, X}}.
%% OTP 25+: a local fun whose lambda entry names f/1 itself.
export_like() -> fun f/1.
anon() -> fun(X) -> {{{v}_anon, X}} end.
closure(Y) -> fun(X) -> {{{v}_closure, X, Y}} end.
"#
    )
}

struct Setup {
    rt: Runtime,
    a: Node,
    b: Node,
    handle: Arc<RouteHandle>,
    _dir: TempDir,
}

fn compile(dir: &std::path::Path, module: &str, src: &str) {
    erl::compile_source(dir, module, src).unwrap();
}

fn registry(name: &str, dirs: &[&std::path::Path]) -> Arc<Registry> {
    let r = Registry::new(name);
    let sources: Vec<Source> = dirs.iter().map(|d| Source::Dir(d.to_path_buf())).collect();
    let report = r.refresh(&sources, &Limits::default());
    assert!(report.ok(), "{:?}", report.errors);
    Arc::new(r)
}

/// A `[policy.p]` body compiled as distgate compiles a configured one.
fn policy(body: &str) -> Arc<Compiled> {
    Arc::new(Compiled::parse("p", body).unwrap_or_else(|e| panic!("{e}")))
}

fn setup(policy_body: Option<&str>) -> Setup {
    capture_audit();
    let dir = TempDir::new("dg_policy_erl");
    let (da, db, common) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("common"));
    compile(&da, "m", &m_source("v1"));
    compile(&db, "m", &m_source("v2"));
    compile(&common, "dgt", erl::DGT);
    let (ra, rb) = (registry("a", &[&da, &common]), registry("b", &[&db, &common]));
    let handle = Arc::new(RouteHandle::new("a", "b", policy_body.map(policy), ra.clone(), rb.clone()));
    let mut table = PolicyTable::default();
    table.insert(0, 1, handle.clone());
    table.insert(1, 0, Arc::new(RouteHandle::new("b", "a", None, rb, ra)));
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    let side = |name: &str, cookie: &str| SideSpec {
        name: name.into(),
        cookie: Cookie::new(cookie.as_bytes()),
        epmd_listen: Some(std::net::SocketAddr::new(lo, 0)),
        upstream_epmd: Vec::new(),
        proxy_ip: lo,
        hidden: false,
        nodes: None,
        node_ports: None,
    };
    let spec = Spec {
        sides: vec![side("a", COOKIE_A), side("b", COOKIE_B)],
        routes: vec![(0, 1), (1, 0)],
        limits: LinkLimits { handshake_timeout: Duration::from_secs(10), ..LinkLimits::default() },
        link_buffer: 4 << 20,
        threads: 2,
        driver: DriverKind::Poll,
        epmd_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(5),
        mirror_check: Duration::from_secs(10),
        scheduling: distgate::runtime::Scheduling::Normal,
        policies: table,
        registries: Default::default(),
    };
    let rt = Runtime::start(spec).expect("distgate starts");
    let node = |prefix: &str, side: &str, cookie: &str, code: &std::path::Path| {
        let epmd = rt.responder_addr(side).unwrap().port();
        let extra_args = vec!["-pa".into(), code.display().to_string(), "-pa".into(), common.display().to_string()];
        Node::start_with(prefix, NodeOptions { cookie: cookie.into(), epmd_port: Some(epmd), extra_args, ..NodeOptions::default() })
    };
    let a = node("pola", "a", COOKIE_A, &da);
    let b = node("polb", "b", COOKIE_B, &db);
    a.eval(&format!("B = {}.", b.atom()));
    b.eval("ok = dgt:sink(dg_sink).");
    // Connect first: messages sent while a connection is still being set up are encoded
    // without atom-cache references, and the tests want the cache in use.
    assert_eq!(a.eval("net_adm:ping(B)."), "pong");
    assert_eq!(a.eval("m:version()."), "v1");
    assert_eq!(b.eval("m:version()."), "v2");
    Setup { rt, a, b, handle, _dir: dir }
}

// ---- audit lines, captured from tracing -------------------------------------------------------

static AUDIT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct AuditWriter;
impl Write for AuditWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        AUDIT.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_audit() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("distgate::audit=warn"))
            .with_writer(|| AuditWriter)
            .with_ansi(false)
            .try_init();
    });
}

/// Audit lines (their JSON objects) mentioning `needle`.
fn audit_lines(needle: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&AUDIT.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    text.lines().filter(|l| l.contains(needle)).filter_map(|l| l.find('{').map(|i| l[i..].to_string())).collect()
}

/// How long B's sink waits for messages to arrive (a deadline: it returns as soon as they do).
const WAIT_MS: u32 = 30_000;

/// Send from A to B's sink, wait for `n` messages there, and evaluate `then` on B with the
/// messages bound to `Got`.
fn deliver(s: &Setup, send: &str, n: usize, then: &str) -> String {
    s.a.eval(send);
    s.b.eval(&format!("Got = dgt:wait(dg_sink, {n}, {WAIT_MS}), {then}"))
}

// ---- tests -------------------------------------------------------------------------------------

#[test]
fn pass_lets_the_fun_through_and_b_raises_badfun() {
    // The risk distgate exists for: v1's fun reaches a node running v2.
    let s = setup(Some("unknown_fun = \"pass\"\n"));
    let r = deliver(&s, "{dg_sink, B} ! {msg, m:export_like()}.", 1, "[{msg, F}] = Got, dgt:call(F, 21).");
    assert!(r.starts_with("{caught,error,{badfun,"), "{r}");
    assert_eq!(s.rt.stats().get("policy:rewrite"), 0);
}

#[test]
fn rewrite_sends_fun_m_f_1_which_runs_bs_version_and_reload_applies_to_the_open_link() {
    let s = setup(Some("[policy.p.modules]\n\"m\" = { unknown_fun = \"rewrite\" }\n"));
    let r = deliver(
        &s,
        "{dg_sink, B} ! {msg, m:export_like()}.",
        1,
        "[{msg, F}] = Got, {lists:flatten(io_lib:format(\"~w\", [F])), erlang:fun_info(F, type), dgt:call(F, 21)}.",
    );
    assert_eq!(r, "{\"fun m:f/1\",{type,external},{v2,21}}");
    assert_eq!(s.rt.stats().get("policy:rewrite"), 1);
    let line = &audit_lines("\"action\":\"rewrite\"")[0];
    assert!(line.contains("\"route\":\"a->b\"") && line.contains("\"op\":\"REG_SEND\"") && line.contains("\"module\":\"m\""), "{line}");
    assert!(line.contains("\"detail\":\"fun m:f/1\""), "{line}");
    // Not provably the same function: the anonymous fun and the closure get the fallback
    // (replace, by default).
    let r = s.b.eval("[{msg, _}] = dgt:wait(dg_sink, 1, 0), ok.");
    assert_eq!(r, "ok");
    s.a.eval("{dg_sink, B} ! {anon, m:anon()}, {dg_sink, B} ! {closure, m:closure(7)}.");
    let r = s.b.eval("[_, {anon, X}, {closure, Y}] = dgt:wait(dg_sink, 3, 30000), {element(1, X), element(1, Y)}.");
    assert_eq!(r, "{distgate_blocked_fun,distgate_blocked_fun}");
    // A reload: the open link applies the new policy from its next frame.
    let links = s.rt.stats().links_established.load(std::sync::atomic::Ordering::Relaxed);
    s.handle.store(Some(policy("unknown_fun = \"pass\"\n")));
    s.a.eval("{dg_sink, B} ! {again, m:export_like()}.");
    let r = s.b.eval("{again, F2} = lists:last(dgt:wait(dg_sink, 4, 30000)), element(1, dgt:call(F2, 1)).");
    assert_eq!(r, "caught");
    assert_eq!(s.rt.stats().links_established.load(std::sync::atomic::Ordering::Relaxed), links, "same link");
}

#[test]
fn drop_skips_the_message_and_later_ones_reuse_its_atoms() {
    let s = setup(Some("[policy.p.modules]\n\"m\" = { unknown_fun = \"drop\" }\n"));
    // 300 atoms first introduced by the dropped message; the next messages use them all
    // (through the atom cache, as references to entries the dropped message defined).
    s.a.eval(
        "Atoms = dgt:atoms(\"dg_drop_atom\", 300), \
         {dg_sink, B} ! {dropped, m:export_like(), Atoms}, \
         {dg_sink, B} ! {kept, Atoms}, \
         {dg_sink, B} ! {kept_too, lists:reverse(Atoms)}.",
    );
    let r = s.b.eval(
        // Delivered in order: had the dropped message arrived, it would head the list.
        "[{kept, L1}, {kept_too, L2}] = dgt:wait(dg_sink, 2, 30000), \
         {L1 =:= dgt:atoms(\"dg_drop_atom\", 300), L2 =:= lists:reverse(L1)}.",
    );
    assert_eq!(r, "{true,true}");
    assert_eq!(s.a.eval("nodes()."), format!("[{}]", s.b.atom()), "the link stayed up");
    assert_eq!(s.rt.stats().get("policy:drop"), 1);
    assert_eq!(s.rt.stats().get("close:bad_frame"), 0);
}

#[test]
fn replace_delivers_the_marker_naming_the_fun() {
    let s = setup(Some("unknown_fun = \"replace\"\n"));
    let md5 = s.a.eval("string:lowercase(binary_to_list(binary:encode_hex(m:module_info(md5)))).");
    let index = s.a.eval("{new_index, I} = erlang:fun_info(m:export_like(), new_index), I.");
    let r = deliver(&s, "{dg_sink, B} ! {msg, [#{k => m:export_like()}]}.", 1, "[{msg, [#{k := M}]}] = Got, M.");
    assert_eq!(r, format!("{{distgate_blocked_fun,m,{index},<<{md5}>>}}"));
    assert_eq!(s.rt.stats().get("policy:replace"), 1);
}

#[test]
fn a_denied_spawn_request_gets_an_error_promptly_and_allowed_ones_run() {
    let s = setup(Some("[policy.p.control]\nspawn_allow = [\"dgt:*\"]\n"));
    // Promptly: distgate answers the request itself; had it only dropped it, no reply would
    // come before the link went down. (A deadline, not a measured duration: the host may be
    // loaded.)
    let r = s.a.eval(
        "R = erlang:spawn_request(B, os, cmd, [\"echo x\"], [monitor]), \
         receive {spawn_reply, R, Res, Why} -> {Res, Why} \
         after 30000 -> timeout end.",
    );
    assert_eq!(r, "{error,distgate_denied}");
    // spawn/4 to another node waits for the reply and raises its error.
    assert_eq!(s.a.eval("try spawn(B, os, cmd, [\"echo x\"]) catch error:E4 -> E4 end."), "distgate_denied");
    // spawn/2 of a fun is a spawn_request of erlang:apply/2: refused too.
    let r = s.a.eval("R2 = erlang:spawn_request(B, fun() -> ok end, []), receive {spawn_reply, R2, Res2, W2} -> {Res2, W2} after 30000 -> timeout end.");
    assert_eq!(r, "{error,distgate_denied}");
    let r = s.a.eval(
        "R3 = erlang:spawn_request(B, dgt, call, [fun erlang:node/1, self()], []), \
         receive {spawn_reply, R3, ok, P3} -> node(P3) after 30000 -> timeout end.",
    );
    assert_eq!(r, s.b.atom());
    assert_eq!(s.rt.stats().get("policy:deny"), 3);
    assert!(audit_lines("\"rule\":\"spawn_allow\"").iter().any(|l| l.contains("\"fun\":\"os:cmd/1\"")));
    assert_eq!(s.a.eval("nodes()."), format!("[{}]", s.b.atom()));
}

#[test]
fn the_untrusted_preset_blocks_rpc_and_dangerous_messages_and_allows_listed_erpc() {
    // (setup's net_adm:ping passes: the preset allows net_kernel's is_auth.)
    let s = setup(Some("preset = \"untrusted\"\n[policy.p.control]\nrpc_allow = [\"m:*\"]\nreg_send_allow = [\"dg_*\"]\n"));
    // Promptly: with a 30 s timeout the call would give {badrpc, timeout} had distgate only
    // dropped the request (a deadline, not a measured duration: the host may be loaded).
    let r = s.a.eval("rpc:call(B, os, cmd, [\"echo x\"], 30000).");
    assert_eq!(r, "{badrpc,{'EXIT',distgate_denied}}");
    assert_eq!(s.a.eval("erpc:call(B, m, f, [1])."), "{v2,1}");
    assert_eq!(s.a.eval("try erpc:call(B, erlang, node, []) catch error:E -> E end."), "{erpc,distgate_denied}");
    // sys messages, io requests and supervisor child calls never reach a process, whatever
    // reg_send_allow says; plain messages do; names outside the allow-list get nothing.
    s.b.eval("ok = dgt:sink(other_name).");
    s.a.eval(
        "{dg_sink, B} ! {system, {self(), make_ref()}, get_state}, \
         {dg_sink, B} ! {io_request, self(), make_ref(), {put_chars, unicode, <<\"x\">>}}, \
         {dg_sink, B} ! {'$gen_call', {self(), make_ref()}, {start_child, {id, {os, cmd, [\"x\"]}, temporary, 1, worker, []}}}, \
         {other_name, B} ! not_allowed, \
         {dg_sink, B} ! plain.",
    );
    assert_eq!(s.b.eval("dgt:wait(dg_sink, 1, 30000)."), "[plain]");
    // `not_allowed` went out before `plain` on the same link, so had it been forwarded it
    // would be in other_name's mailbox by now, ahead of the request for what it holds.
    assert_eq!(s.b.eval("dgt:wait(other_name, 0, 0)."), "[]");
    let labels = s.rt.stats().labelled();
    assert!(labels.get("policy:drop").copied().unwrap_or(0) >= 4, "{labels:?}");
    assert_eq!(labels.get("policy:deny").copied(), Some(2), "{labels:?}");
    for rule in ["untrusted:system_message", "untrusted:io_request", "untrusted:supervisor_child_call", "reg_send_allow", "rpc_allow"] {
        assert!(!audit_lines(&format!("\"rule\":\"{rule}\"")).is_empty(), "{rule}");
    }
}

#[test]
fn funs_deep_in_maps_in_free_variables_and_in_a_fragmented_message() {
    let s = setup(Some("[policy.p.modules]\n\"m\" = { unknown_fun = \"rewrite\" }\n"));
    // Deep in maps and lists.
    let r = deliver(
        &s,
        "{dg_sink, B} ! #{k => [{x, #{deep => m:export_like()}}]}.",
        1,
        "[#{k := [{x, #{deep := F}}]}] = Got, dgt:call(F, 21).",
    );
    assert_eq!(r, "{v2,21}");
    // In the free variables of a fun B knows (dgt is the same build on both sides): only the
    // inner fun is rewritten, and the outer fun's Size is fixed.
    s.a.eval("{dg_sink, B} ! {wrapped, dgt:wrap(m:export_like())}.");
    let r = s.b.eval("{wrapped, W} = lists:last(dgt:wait(dg_sink, 2, 30000)), dgt:call(W, 21).");
    assert_eq!(r, "{wrapped,{v2,21}}");
    // In a message over 1 MB (OTP sends it in 64 KiB fragments), with atoms it introduces,
    // which the next message reuses.
    s.a.eval(
        "Big = binary:copy(<<\"0123456789abcdef\">>, 100000), Atoms = dgt:atoms(\"dg_big_atom\", 250), \
         {dg_sink, B} ! {big, Big, m:export_like(), Atoms}, {dg_sink, B} ! {after_big, Atoms}.",
    );
    let r = s.b.eval(
        "[{big, Bin, F3, A3}, {after_big, A4}] = lists:nthtail(2, dgt:wait(dg_sink, 4, 30000)), \
         {byte_size(Bin), erlang:md5(Bin) =:= erlang:md5(binary:copy(<<\"0123456789abcdef\">>, 100000)), \
          dgt:call(F3, 21), A3 =:= dgt:atoms(\"dg_big_atom\", 250), A4 =:= A3}.",
    );
    assert_eq!(r, "{1600000,true,{v2,21},true,true}");
    assert_eq!(s.rt.stats().get("policy:rewrite"), 3);
    assert_eq!(s.a.eval("nodes()."), format!("[{}]", s.b.atom()));
}

#[test]
fn dry_run_decides_and_audits_but_forwards_unchanged() {
    let s = setup(Some("dry_run = true\nunknown_fun = \"replace\"\n"));
    let r = deliver(&s, "{dg_sink, B} ! {msg, m:export_like()}.", 1, "[{msg, F}] = Got, element(1, dgt:call(F, 21)).");
    assert_eq!(r, "caught", "forwarded unchanged: B raises badfun");
    assert_eq!(s.rt.stats().get("policy:dry_run:replace"), 1);
    assert_eq!(s.rt.stats().get("policy:replace"), 0);
    assert!(audit_lines("\"dry_run\":true").iter().any(|l| l.contains("\"action\":\"replace\"")));
}

#[test]
fn a_large_message_ending_in_a_binary_is_judged_on_its_first_fragment_and_streamed() {
    let s = setup(Some("preset = \"untrusted\"\n[policy.p.control]\nreg_send_allow = [\"dg_*\"]\n"));
    let streamed = || s.rt.stats().streamed[0].load(std::sync::atomic::Ordering::Relaxed);
    let before = streamed();
    // An io_request (refused by the preset) of 1.5 MB, its last term a binary, carrying 200
    // atoms it introduces; then a message that uses those atoms, then an allowed 1.5 MB
    // message. The first is dropped on its first fragment (its ~23 fragments with it), the
    // others arrive, in order, the big one intact.
    s.a.eval(
        "Atoms = dgt:atoms(\"dg_stream_atom\", 200), Big = crypto:strong_rand_bytes(1500000), \
         {dg_sink, B} ! {io_request, self(), Atoms, {put_chars, unicode, Big}}, \
         {dg_sink, B} ! {kept, Atoms}, \
         {dg_sink, B} ! {big, erlang:md5(Big), Big}.",
    );
    let r = s.b.eval(
        "[{kept, L}, {big, M, Bin}] = dgt:wait(dg_sink, 2, 30000), \
         {L =:= dgt:atoms(\"dg_stream_atom\", 200), M =:= erlang:md5(Bin), byte_size(Bin)}.",
    );
    assert_eq!(r, "{true,true,1500000}");
    // Both big messages streamed (no fragment held), and the link stayed up.
    assert!(streamed() - before >= 40, "{} frames streamed", streamed() - before);
    // (The preset also drops some of the nodes' own background traffic: count this one by
    // its audit line.)
    let audit = audit_lines("\"rule\":\"untrusted:io_request\"");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(audit[0].contains("\"action\":\"drop\""), "{}", audit[0]);
    assert_eq!(s.rt.stats().get("close:bad_frame"), 0);
    assert_eq!(s.a.eval("nodes()."), format!("[{}]", s.b.atom()));
}

#[test]
fn rex_requests_sent_to_rexs_pid_are_judged_by_rpc_allow_and_other_gen_server_calls_pass() {
    let s = setup(Some("preset = \"untrusted\"\n[policy.p.control]\nrpc_allow = [\"erlang:node/0\"]\nreg_send_allow = [\"dg_*\"]\n"));
    // A learns two pids on B: rex's (as a partner does when nodes meet: rex asks A's rex for
    // its features, and that message carries its pid) and a gen_server-like echo process's.
    // B sends them (the b -> a direction has no policy).
    s.a.eval("ok = dgt:sink(dg_sink).");
    s.b.eval(
        "Echo = spawn(fun Loop() -> receive {'$gen_call', F, R} -> gen:reply(F, {echo, R}), Loop() end end), \
         true = register(dg_echo, Echo).",
    );
    s.b.eval(&format!("{{dg_sink, {}}} ! {{pids, whereis(rex), Echo}}.", s.a.atom()));
    s.a.eval("[{pids, Rex, Echo}] = dgt:wait(dg_sink, 1, 30000).");
    assert_eq!(s.a.eval("node(Rex) =:= B andalso node(Echo) =:= B."), "true");
    // rpc:call's rex protocol, to rex's pid: os:cmd is not in rpc_allow, so the request is
    // dropped and the call times out (the short timeout is the test's; distgate sends nothing
    // back for a dropped message).
    let r = s.a.eval("catch gen_server:call(Rex, {call, os, cmd, [\"echo hi\"], user}, 2000).");
    assert!(r.starts_with("{'EXIT',{timeout,{gen_server,call,"), "{r}");
    let r = s.a.eval("catch gen_server:call(Rex, {block_call, os, cmd, [\"echo hi\"], user}, 2000).");
    assert!(r.starts_with("{'EXIT',{timeout,"), "{r}");
    // rex's stop request would halt B (rex is a permanent child of kernel_sup, which gives up).
    let r = s.a.eval("catch gen_server:call(Rex, stop, 2000).");
    assert!(r.starts_with("{'EXIT',{timeout,"), "{r}");
    // A listed function runs.
    assert_eq!(s.a.eval("gen_server:call(Rex, {call, erlang, node, [], user}, 30000)."), s.b.atom());
    // The other ways into rex, each of which would make B's dg_sink hear of it: a cast, the
    // handle_info call, and the relays. Then a plain message, and (rex handling its messages
    // in order) an allowed call after them, so anything forwarded would have run by its reply.
    s.a.eval(
        "gen_server:cast(Rex, {cast, erlang, send, [dg_sink, cast_ran], user}), \
         Rex ! {self(), {call, erlang, send, [dg_sink, info_call_ran], user}}, \
         Rex ! {self(), {sbcast, dg_sink, sbcast_relayed}}, \
         Rex ! {self(), {send, dg_sink, send_relayed}}, \
         {dg_sink, B} ! plain.",
    );
    assert_eq!(s.a.eval("gen_server:call(Rex, {call, erlang, node, [], user}, 30000)."), s.b.atom());
    // Not a readiness wait: what is checked is an absence, which cannot be awaited. rex runs
    // each request in a process of its own, whose order is not guaranteed, so a forwarded
    // request's send gets this long to land; a correct distgate passes however long it is.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.b.eval("dgt:wait(dg_sink, 1, 30000)."), "[plain]");
    // gen_server calls of other shapes to other processes pass, by pid and by name.
    for req in ["{call, foo, bar}", "{send, a, b}", "{call, os, cmd, [\"x\"]}", "{sbcast, dg_sink, x}", "get_state"] {
        assert_eq!(s.a.eval(&format!("gen_server:call(Echo, {req}, 30000).")), format!("{{echo,{}}}", s.a.eval(&format!("{req}."))), "{req}");
        assert_eq!(s.a.eval(&format!("gen_server:call({{dg_echo, B}}, {req}, 30000).")), format!("{{echo,{}}}", s.a.eval(&format!("{req}."))));
    }
    // rex's shapes by name to another process: they cannot reach rex, so they pass (a
    // gen_server's own stop call, say); to that process's pid, the shape is refused.
    for req in ["stop", "{call, os, cmd, [\"x\"], user}"] {
        assert_eq!(s.a.eval(&format!("gen_server:call({{dg_echo, B}}, {req}, 30000).")), format!("{{echo,{}}}", s.a.eval(&format!("{req}."))), "{req} by name");
        let r = s.a.eval(&format!("catch gen_server:call(Echo, {req}, 2000)."));
        assert!(r.starts_with("{'EXIT',{timeout,"), "{req} by pid: {r}");
    }
    let refused = audit_lines("\"rule\":\"rpc_allow\"");
    for subject in ["os:cmd/1", "erlang:send/2", "{From,{sbcast,Name,Msg}}", "{From,{send,Name,Msg}}", "rex stops"] {
        assert!(refused.iter().any(|l| l.contains(subject) && !l.contains("\"op\":\"REG_SEND\"")), "{subject}: {refused:?}");
    }
    assert_eq!(s.a.eval("nodes()."), format!("[{}]", s.b.atom()));
}

/// Answers distgate makes itself (here the error replies to refused spawn requests) while a
/// large message streams towards their receiver wait for the end of that message's frame:
/// written into its middle, they would cut it. B floods A with 1 MiB binaries (unjudged
/// direction: streamed) while A keeps sending refused spawn requests, ten at a time; every request gets its
/// error, every binary arrives intact and in order, the link stays up, and some answers were
/// indeed held (`distgate_events_total{event="reply_held"}`).
#[test]
fn answers_to_a_sender_wait_for_the_frame_streaming_to_it() {
    let s = setup(Some("[policy.p.control]\nspawn_allow = [\"dgt:*\"]\n"));
    let streamed = || s.rt.stats().streamed[1].load(std::sync::atomic::Ordering::Relaxed);
    let before = streamed();
    // A's collector checks order and content, and says `done` when all 40 came (in a
    // persistent term: each eval runs in a process of its own).
    s.a.eval(
        "register(dg_coll, spawn(fun() -> \
           C = fun Loop(I) when I > 40 -> persistent_term:put(dg_coll, done); \
                   Loop(I) -> receive {big, I, Md5, Bin} when is_binary(Bin) -> \
                                          case erlang:md5(Bin) of Md5 -> Loop(I + 1); _ -> persistent_term:put(dg_coll, {corrupt, I}) end; \
                                      Other -> persistent_term:put(dg_coll, {unexpected, I, Other}) end end, \
           C(1) end)).",
    );
    s.b.eval(&format!(
        "A = {}, Bin = crypto:strong_rand_bytes(1 bsl 20), Md5 = erlang:md5(Bin), \
         spawn(fun() -> [{{dg_coll, A}} ! {{big, I, Md5, Bin}} || I <- lists:seq(1, 40)] end), ok.",
        s.a.atom()
    ));
    // Refused requests, one after the other, until the collector is done (or 40 s passed).
    let r = s.a.eval(
        "Until = erlang:monotonic_time(millisecond) + 40000, \
         Ask = fun Ask(N) -> \
            Rs = [erlang:spawn_request(B, os, cmd, [\"true\"], []) || _ <- lists:seq(1, 10)], \
            Got = [receive {spawn_reply, R, error, distgate_denied} -> ok after 30000 -> no_reply end || R <- Rs], \
            case {lists:usort(Got), persistent_term:get(dg_coll, running), erlang:monotonic_time(millisecond) > Until} of \
                {[ok], running, false} -> Ask(N + 10); \
                {[ok], What, _} -> {What, N + 10}; \
                {Bad, _, _} -> {Bad, N} end end, \
         Ask(0).",
    );
    let (what, asked) = r.trim_matches(|c| c == '{' || c == '}').split_once(',').expect("{What, N}");
    assert_eq!(what, "done", "{r}");
    assert!(asked.parse::<u32>().unwrap() > 0, "{r}");
    assert!(streamed() - before >= 40, "{} frames streamed to A", streamed() - before);
    assert!(s.rt.stats().get("reply_held") > 0, "no answer waited for a streaming frame (asked {asked})");
    assert_eq!(s.rt.stats().get("close:bad_frame"), 0);
    assert_eq!(s.a.eval("nodes()."), format!("[{}]", s.b.atom()));
}
