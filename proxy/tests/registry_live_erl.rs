//! The live registry source against real OTP nodes: distgate joins as a hidden node, lists the
//! loaded modules with their MD5s, fetches object code for the versions it does not know, and
//! sees a new version after `code:load_binary` once refreshed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distgate::handshake::flag;
use distgate::registry::live::{self, Etf, LiveAddr, LiveError, LiveLimits, PidExt, RefExt, Session};
use distgate::registry::{LoadErrorKind, LoadReport, Limits, Md5, Registry, SnapshotBuilder, Source};
use distgate_config::Cookie;
use distgate_testkit::erl;
use distgate_testkit::{Node, NodeOptions, TempDir};

const COOKIE: &str = "live_registry_cookie";

const V1: &str = r#"
-module(dg_live).
-export([f/1, g/0, make/0]).
f(X) -> fun(Y) -> X + Y end.
g() -> fun() -> ok end.
make() -> [f(1), g(), fun(P, Q) -> [P, Q] end].
"#;

const V2: &str = r#"
-module(dg_live).
-export([f/1, g/0, make/0, extra/0]).
f(X) -> fun(Y) -> X * Y end.
g() -> fun() -> ok end.
make() -> [f(1), g(), fun(P, Q) -> [P, Q] end].
extra() -> fun(Z) -> {Z} end.
"#;

fn compile(dir: &std::path::Path, src: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("dg_live.erl");
    std::fs::write(&file, src).unwrap();
    erl::compile(&[&file], dir).unwrap();
    std::fs::remove_file(&file).unwrap();
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn md5_hex(s: &str) -> Md5 {
    unhex(s.trim_matches(|c| c == '<' || c == '>' || c == '"')).try_into().unwrap()
}

fn cookie(c: &str) -> Cookie {
    Cookie::new(c).unwrap()
}

fn own_name(tag: &str) -> String {
    format!("{}@127.0.0.1", erl::unique_name(&format!("dglive_{tag}")))
}

fn node_with(prefix: &str, opts: NodeOptions) -> Node {
    Node::start_with(prefix, NodeOptions { cookie: COOKIE.into(), ..opts })
}

fn live(node: &Node, addr: LiveAddr, own: &str) -> Source {
    Source::Live { node: node.name().into(), addr, cookie: cookie(COOKIE), own_name: own.into() }
}

/// `(new_uniq, new_index, name)` of each fun in `expr` (a list of funs), as the node says.
fn fun_infos(node: &Node, expr: &str) -> Vec<(Md5, u32, String)> {
    let text = node.eval(&format!(
        "lists:flatten([io_lib:format(\"~s ~b ~s;\", \
           [binary:encode_hex(element(2, erlang:fun_info(F, new_uniq))), \
            element(2, erlang:fun_info(F, new_index)), \
            element(2, erlang:fun_info(F, name))]) || F <- {expr}])"
    ));
    text.trim_matches('"')
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let f: Vec<&str> = s.split(' ').collect();
            (md5_hex(f[0]), f[1].parse().unwrap(), f[2].to_string())
        })
        .collect()
}

/// Every loaded module with `M:module_info(md5)`, asked on the node.
fn loaded_on_node(node: &Node) -> Vec<(String, Md5)> {
    let text = node.eval(
        "lists:flatten([io_lib:format(\"~s ~s;\", [M, binary:encode_hex(M:module_info(md5))]) \
           || {M, _} <- lists:sort(code:all_loaded())])",
    );
    text.trim_matches('"')
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (m, h) = s.split_once(' ').unwrap();
            (m.to_string(), md5_hex(h))
        })
        .collect()
}

fn errors(r: &LoadReport) -> Vec<String> {
    r.errors.iter().map(|e| e.to_string()).collect()
}

/// The report's only errors may be the one naming preloaded modules whose built-in copy is not
/// the `.beam` in the erts ebin directory (Debian's erlang-base rebuilds those files). Returns
/// those modules, after checking they are all in `erlang:pre_loaded()` on the node.
fn preloaded_only(r: &LoadReport, node: &Node) -> Vec<String> {
    let mut pre = Vec::new();
    for e in &r.errors {
        match &e.kind {
            LoadErrorKind::Live(LiveError::Preloaded { modules }) => pre.extend(modules.iter().cloned()),
            _ => panic!("unexpected error: {e}\n{:#?}", errors(r)),
        }
    }
    assert!(r.errors.len() <= 1, "{:#?}", errors(r));
    let on_node = node.eval("erlang:pre_loaded()");
    for m in &pre {
        assert!(on_node.trim_matches(|c| c == '[' || c == ']').split(',').any(|x| x == m), "{m} is not preloaded: {on_node}");
    }
    pre
}

#[test]
fn live_source_learns_loaded_versions_and_a_reloaded_one() {
    let tmp = TempDir::new("dg_registry_live");
    let (d1, d2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    compile(&d1, V1);
    compile(&d2, V2);
    let node = node_with("dglv", NodeOptions { extra_args: vec!["-pa".into(), d1.display().to_string()], ..NodeOptions::default() });
    assert_eq!(node.eval("code:ensure_loaded(dg_live)"), "{module,dg_live}");
    let md5_v1 = md5_hex(&node.eval("binary:encode_hex(dg_live:module_info(md5))"));

    let reg = Arc::new(Registry::new("live"));
    let own = own_name("a");
    let sources = vec![live(&node, LiveAddr::Direct(node.addr()), &own)];
    let t = Instant::now();
    let report = reg.refresh(&sources, &Limits::default());
    eprintln!("first refresh: {:?}, {} files, {} added", t.elapsed(), report.files, report.added);
    let unknown = preloaded_only(&report, &node);
    eprintln!("preloaded without matching object code: {unknown:?}");

    // Every module the node has loaded, with the MD5 the node reports for it.
    let snap = reg.load();
    let on_node = loaded_on_node(&node);
    assert!(on_node.len() > 50, "{}", on_node.len());
    for (m, md5) in &on_node {
        if !unknown.contains(m) {
            assert!(snap.knows(m, md5).is_some(), "{m} {} not known", distgate_codec::beam::hex(md5));
        }
    }
    assert!(snap.knows("lists", &on_node.iter().find(|(m, _)| m == "lists").unwrap().1).is_some());
    assert_eq!(report.files, on_node.len() - unknown.len(), "object code fetched once per version");
    assert_eq!(report.added, report.files);
    let v1 = snap.knows("dg_live", &md5_v1).expect("dg_live v1");
    assert_eq!(v1.origin.as_ref(), format!("{}:{}", node.name(), d1.join("dg_live.beam").display()));
    assert!(v1.exports("make", 0) && !v1.exports("extra", 0));
    // Funs made on the node find their lambda in the table fetched live.
    let funs = fun_infos(&node, "dg_live:make()");
    assert_eq!(funs.len(), 3);
    for (uniq, index, name) in &funs {
        assert_eq!(uniq, &md5_v1);
        let l = snap.lambda("dg_live", uniq, *index).unwrap_or_else(|| panic!("lambda {index}"));
        assert_eq!(&*l.name, name);
    }
    drop(snap);

    // A refresh that finds nothing new fetches no object code.
    let again = reg.refresh(&sources, &Limits::default());
    assert_eq!(preloaded_only(&again, &node), unknown);
    assert_eq!((again.files, again.added), (0, 0));

    // Version 2, loaded from a file outside the code path: code:get_object_code/1 still
    // finds version 1 there, so the client reads the file code:which/1 names.
    let v2_file = d2.join("dg_live.beam").display().to_string();
    let load = node.eval(&format!(
        "{{ok, B}} = file:read_file({f}), code:load_binary(dg_live, {f}, B)",
        f = erl::string_literal(&v2_file)
    ));
    assert_eq!(load, "{module,dg_live}");
    let md5_v2 = md5_hex(&node.eval("binary:encode_hex(dg_live:module_info(md5))"));
    assert_ne!(md5_v1, md5_v2);
    assert!(reg.load().knows("dg_live", &md5_v2).is_none(), "not before a refresh");

    // Refresh on demand through a refresher (long interval: only the first and this one).
    let refresher = live::spawn_refresher(Arc::clone(&reg), sources.clone(), Duration::from_secs(3600)).unwrap();
    let r = refresher.refresh_now().expect("the refresher runs");
    preloaded_only(&r, &node);
    assert_eq!((r.files, r.added), (1, 1), "only the new version is fetched");
    let snap = reg.load();
    let v2 = snap.knows("dg_live", &md5_v2).expect("version 2 after refresh_now");
    assert_eq!(v2.origin.as_ref(), format!("{}:{v2_file}", node.name()));
    assert!(v2.exports("extra", 0));
    assert!(snap.knows("dg_live", &md5_v1).is_some(), "refresh keeps version 1");
    for (uniq, index, name) in fun_infos(&node, "[dg_live:extra() | dg_live:make()]") {
        assert_eq!(uniq, md5_v2);
        assert_eq!(&*snap.lambda("dg_live", &uniq, index).expect("v2 lambda").name, name);
    }
    // reload: what the node has now, without the old version; nothing fetched again.
    drop(snap);
    drop(refresher);
    let r = reg.reload(&sources, &Limits::default());
    preloaded_only(&r, &node);
    assert_eq!(r.files, 0, "versions known before are reused");
    assert!(reg.load().knows("dg_live", &md5_v1).is_none());
    assert!(reg.load().knows("dg_live", &md5_v2).is_some());
}

#[test]
fn the_node_sees_a_hidden_node_and_answers_through_rex() {
    let node = node_with("dglh", NodeOptions::default());
    let own = own_name("h");
    let mut s = Session::connect(node.name(), &LiveAddr::Direct(node.addr()), &cookie(COOKIE), &own, &LiveLimits::default())
        .expect("handshake");
    assert_eq!(s.peer(), node.name());
    assert_eq!(s.flags() & flag::PUBLISHED, 0);
    let own_atom = erl::atom_literal(&own);
    // The node sends its challenge ack before it sets the connection up (dist_util: ack,
    // then setnode and nodeup), so it may list us a moment after `connect` returned.
    let t = Instant::now();
    while node.eval(&format!("lists:member({own_atom}, nodes(hidden))")) != "true" {
        assert!(t.elapsed() < Duration::from_secs(30), "the node never listed us in nodes(hidden)");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(node.eval(&format!("lists:member({own_atom}, nodes())")), "false");
    assert_eq!(node.eval(&format!("lists:member({own_atom}, nodes(connected))")), "true");

    // A call with arguments of every kind the encoder writes, echoed back by the node.
    let pid = PidExt { node: &own, id: 1, serial: 0, creation: 5 };
    let rf = RefExt { node: &own, creation: 5, ids: [9, 8, 7] };
    let args = Etf::List(vec![
        Etf::Atom("a"),
        Etf::Atom("ünï"),
        Etf::Int(-1),
        Etf::Int(1 << 40),
        Etf::Binary(b"bin"),
        Etf::Tuple(vec![Etf::Pid(pid), Etf::Ref(rf)]),
        Etf::Export { module: "lists", function: "map", arity: 2 },
    ]);
    // The node decodes them and encodes them again (term_to_binary): the same term.
    let mut ours = Vec::new();
    args.encode(&mut ours);
    let ours = distgate_codec::print::format_versioned(&[&[131u8][..], &ours].concat()).unwrap();
    let theirs = s
        .call("erlang", "term_to_binary", vec![args.clone()], |r, at| r.binary(at).map(<[u8]>::to_vec).ok_or_else(|| r.show(at)))
        .unwrap_or_else(|e| panic!("{e}\n{}", node.output()));
    assert_eq!(distgate_codec::print::format_versioned(&theirs).unwrap(), ours);
    let flat = s
        .call("lists", "flatten", vec![Etf::List(vec![Etf::Atom("x"), Etf::List(vec![Etf::Int(b'y' as i64)])])], |r, at| {
            Ok(r.show(at))
        })
        .unwrap();
    assert_eq!(flat, "[x,121]");

    // {badrpc, _} is an error naming the call, not a panic.
    let e = s.call("no_such_module", "f", vec![], |_, _| Ok(())).unwrap_err();
    assert!(matches!(e, LiveError::Rpc { .. }), "{e}");
    assert!(e.to_string().starts_with("no_such_module:f/0 failed on the node: {'EXIT',{undef,"), "{e}");

    // Gone after close.
    s.close();
    let gone = format!("lists:member({own_atom}, nodes(connected))");
    let t = Instant::now();
    while node.eval(&gone) != "false" {
        assert!(t.elapsed() < Duration::from_secs(30), "still connected");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn encoded_terms_decode_in_erl() {
    let pid = PidExt { node: "dg@127.0.0.1", id: 1, serial: 2, creation: 7 };
    let rf = RefExt { node: "dg@127.0.0.1", creation: 7, ids: [1, 2, 3] };
    let cases: Vec<(Etf<'_>, &str)> = vec![
        (Etf::Atom("ok"), "ok"),
        (Etf::Atom(""), "''"),
        (Etf::Atom("ünï"), "ünï"),
        (Etf::Int(0), "0"),
        (Etf::Int(255), "255"),
        (Etf::Int(256), "256"),
        (Etf::Int(-1), "-1"),
        (Etf::Int(i32::MIN as i64), "-2147483648"),
        (Etf::Int(1 << 40), "1099511627776"),
        (Etf::Int(i64::MIN), "-9223372036854775808"),
        (Etf::Int(i64::MAX), "9223372036854775807"),
        (Etf::Binary(b"ab"), "<<97,98>>"),
        (Etf::List(vec![]), "[]"),
        (Etf::List(vec![Etf::Int(1), Etf::Atom("a")]), "[1,a]"),
        (Etf::Tuple(vec![]), "{}"),
        (Etf::Tuple(vec![Etf::Int(1); 256]), ""),
        (Etf::Export { module: "erlang", function: "get_module_info", arity: 2 }, "fun erlang:get_module_info/2"),
        (Etf::Pid(pid), ""),
        (Etf::Ref(rf), ""),
    ];
    let bytes: Vec<Vec<u8>> = cases.iter().map(|(t, _)| t.to_versioned()).collect();
    let got = distgate_testkit::corpus::binary_to_term_w_many(&bytes);
    for ((t, want), got) in cases.iter().zip(got) {
        let got = got.unwrap_or_else(|e| panic!("{t:?}: erl refuses it: {e}"));
        if !want.is_empty() {
            assert_eq!(&got, want, "{t:?}");
        }
    }
}

#[test]
fn epmd_lookup_and_atom_cache_frames() {
    // A real epmd on its own port; the node registers there.
    let epmd_port = distgate_testkit::daemon::free_port();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _epmd = Kill(std::process::Command::new("epmd").args(["-port", &epmd_port.to_string()]).spawn().expect("epmd starts"));
    distgate_testkit::daemon::wait_listening(epmd_port, "epmd");
    let node = node_with("dgle", NodeOptions { epmd_port: Some(epmd_port), ..NodeOptions::default() });
    let via = LiveAddr::Epmd(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), epmd_port));
    // The evals below load modules of their own (printing): load them before listing.
    loaded_on_node(&node);

    // With the atom cache negotiated the node sends 131 68 frames (and fragments for large
    // replies); the codec's decoder reads them.
    let limits = LiveLimits { flags: live::LIVE_FLAGS | flag::DIST_HDR_ATOM_CACHE, ..LiveLimits::default() };
    let own = own_name("e");
    let mut s = Session::connect(node.name(), &via, &cookie(COOKIE), &own, &limits).expect("via epmd");
    assert_ne!(s.flags() & flag::DIST_HDR_ATOM_CACHE, 0);
    let mut b = SnapshotBuilder::new();
    let mut report = LoadReport::default();
    live::load_from(&mut s, &mut b, None, &Limits::default(), &mut report).expect("load");
    let unknown = preloaded_only(&report, &node);
    let stats = s.stats();
    eprintln!("atom cache session: {stats:?}");
    assert_eq!(stats.pass_through, 0);
    assert!(stats.dist_header + stats.fragmented == stats.calls + stats.ignored, "{stats:?}");
    assert!(stats.fragmented > 0 && stats.fragments > stats.fragmented, "large replies come in fragments: {stats:?}");
    s.close();
    let snap = b.build();
    for (m, md5) in loaded_on_node(&node) {
        assert!(snap.knows(&m, &md5).is_some() || unknown.contains(&m), "{m}");
    }

    // The default flags (FRAGMENTS, no atom cache): headers without cache refs both ways.
    let mut s = Session::connect(node.name(), &via, &cookie(COOKIE), &own, &LiveLimits::default()).expect("again");
    let mods = s.loaded_modules().unwrap();
    assert!(mods.iter().any(|(m, _)| m == "lists"));
    let stats = s.stats();
    assert!(stats.dist_header >= 2 && stats.pass_through == 0, "{stats:?}");
    s.close();

    // Neither: pass-through frames only, large replies in one frame.
    let limits = LiveLimits { flags: live::LIVE_FLAGS & !flag::FRAGMENTS, ..LiveLimits::default() };
    let mut s = Session::connect(node.name(), &via, &cookie(COOKIE), &own, &limits).expect("pass-through");
    let mods = s.loaded_modules().unwrap();
    let code = s.object_code(&["lists", "gen_server", "no_such_module"]).unwrap();
    assert_eq!(code.len(), 3);
    let (bin, file) = code[0].as_ref().expect("lists");
    assert!(bin.len() > 30_000 && file.ends_with("/lists.beam"), "{} {file}", bin.len());
    assert!(code[1].is_some() && code[2].is_none());
    let md5 = mods.iter().find(|(m, _)| m == "lists").unwrap().1;
    assert_eq!(distgate_codec::beam::module_md5(bin, 64 << 20).unwrap(), ("lists".to_string(), md5));
    let stats = s.stats();
    assert!(stats.pass_through >= 3 && stats.dist_header == 0 && stats.fragmented == 0, "{stats:?}");
    s.close();

    // A name the epmd does not know.
    let e = Session::connect("nobody@127.0.0.1", &via, &cookie(COOKIE), &own, &LiveLimits::default()).unwrap_err();
    assert!(matches!(e, LiveError::NotRegistered { .. }), "{e}");
}

#[test]
fn a_wrong_cookie_is_a_clear_error() {
    let node = node_with("dglc", NodeOptions::default());
    let reg = Registry::new("live");
    let src = Source::Live {
        node: node.name().into(),
        addr: LiveAddr::Direct(node.addr()),
        cookie: cookie("not_the_cookie"),
        own_name: own_name("c"),
    };
    let report = reg.refresh(std::slice::from_ref(&src), &Limits::default());
    assert_eq!(report.errors.len(), 1, "{:#?}", errors(&report));
    let e = &report.errors[0];
    // BadCookie, not Timeout: the node closed the connection on our reply, and the session
    // said so at once rather than waiting out its read timeout (which would be a Timeout).
    // (No wall-clock bound: this test took 9 s in all on a loaded host.)
    assert!(matches!(&e.kind, LoadErrorKind::Live(LiveError::BadCookie { .. })), "{e}");
    let text = e.to_string();
    assert!(text.starts_with(&format!("live {}: wrong cookie for {}", node.name(), node.name())), "{text}");
    assert!(!text.contains("not_the_cookie") && !format!("{src:?}").contains("not_the_cookie"));
    assert_eq!(reg.load().module_count(), 0);

    // Nothing listening: a connect error, promptly.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let src = Source::Live { node: node.name().into(), addr: LiveAddr::Direct(closed), cookie: cookie(COOKIE), own_name: own_name("c") };
    let report = reg.refresh(&[src], &Limits::default());
    assert!(matches!(&report.errors[0].kind, LoadErrorKind::Live(LiveError::Connect { .. })), "{}", report.errors[0]);
}

#[test]
fn ticks_are_answered_during_a_long_call() {
    // net_ticktime 2: the node ticks every half second while it has nothing to send, and
    // drops a connection it has heard nothing on for 2 s. A 5 s call only survives if every
    // tick is answered.
    let node = node_with("dglt", NodeOptions { extra_args: vec!["-kernel".into(), "net_ticktime".into(), "2".into()], ..NodeOptions::default() });
    let own = own_name("t");
    let mut s = Session::connect(node.name(), &LiveAddr::Direct(node.addr()), &cookie(COOKIE), &own, &LiveLimits::default())
        .expect("handshake");
    let r = s.call("timer", "sleep", vec![Etf::Int(5000)], |r, at| r.atom(at).ok_or_else(|| r.show(at))).unwrap();
    assert_eq!(r, "ok");
    assert!(s.stats().ticks >= 3, "{:?}", s.stats());
    assert_eq!(node.eval(&format!("lists:member({}, nodes(hidden))", erl::atom_literal(&own))), "true");

    // A call slower than the call timeout is a timeout, not a hang: it ends long before the
    // node would answer (the sleep is far longer than the timeout, so a loaded host cannot
    // blur the two).
    let mut s = Session::connect(
        node.name(),
        &LiveAddr::Direct(node.addr()),
        &cookie(COOKIE),
        &own_name("t2"),
        &LiveLimits { call_timeout: Duration::from_millis(700), ..LiveLimits::default() },
    )
    .unwrap();
    let t = Instant::now();
    let e = s.call("timer", "sleep", vec![Etf::Int(60_000)], |_, _| Ok(())).unwrap_err();
    assert!(matches!(e, LiveError::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(e.to_string().contains("timer:sleep/1"), "{e}");
}

#[test]
fn the_refresher_runs_on_its_interval_and_stops_on_drop() {
    let tmp = TempDir::new("dg_registry_refresher");
    let dir = tmp.path().join("ebin");
    std::fs::create_dir_all(&dir).unwrap();
    let reg = Arc::new(Registry::new("interval"));
    let r = live::spawn_refresher(Arc::clone(&reg), vec![Source::Dir(dir.clone())], Duration::from_millis(100)).unwrap();
    // A module appears in the directory: a later tick of the interval picks it up.
    compile(&dir, V1);
    let t = Instant::now();
    while reg.load().lookup("dg_live").is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "no refresh on the interval");
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = r.refresh_now().unwrap();
    assert!(report.ok() && report.files == 1 && report.added == 0, "{:?}", errors(&report));
    // Dropped: the thread is joined and refreshes no more.
    drop(r);
    compile(&tmp.path().join("other"), V2);
    std::fs::rename(tmp.path().join("other/dg_live.beam"), dir.join("dg_live2.beam")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(reg.load().lookup("dg_live").len(), 1);
}
