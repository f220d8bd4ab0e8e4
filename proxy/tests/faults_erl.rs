//! Hostile and broken peers lose only their own link. A real node pair keeps talking through
//! the same distgate while a fake peer (written here, in Rust) sends garbage, stalls in the
//! middle of the handshake, or sends an oversized or malformed frame (or a streamed message
//! longer than its final binary) after a real handshake.

use distgate::driver::DriverKind;
use distgate::epmd;
use distgate::handshake::{self, Challenge, SendName};
use distgate::link::{Cookie, LinkLimits};
use distgate::runtime::{Runtime, SideSpec, Spec};
use distgate_testkit::{Node, NodeOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const COOKIE_A: &str = "faults_cookie_a";
const COOKIE_B: &str = "faults_cookie_b";
const MAX_FRAME: usize = 1 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a hostile connection may take to be closed (a deadline, not a measurement).
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

fn lo() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn start() -> Runtime {
    let side = |name: &str, cookie: &str| SideSpec {
        name: name.into(),
        cookie: Cookie::new(cookie.as_bytes()),
        epmd_listen: Some(SocketAddr::new(lo(), 0)),
        upstream_epmd: Vec::new(),
        proxy_ip: lo(),
        hidden: false,
        nodes: None,
        node_ports: None,
    };
    Runtime::start(Spec {
        sides: vec![side("a", COOKIE_A), side("b", COOKIE_B)],
        routes: vec![(0, 1), (1, 0)],
        // Every handshake here, the real pair's and the fake diallers' to real B, must finish
        // within it on a loaded host too; the stalled one below waits it out.
        limits: LinkLimits { handshake_timeout: HANDSHAKE_TIMEOUT, max_frame: MAX_FRAME, ..LinkLimits::default() },
        link_buffer: 4 << 20,
        threads: 2,
        driver: DriverKind::Poll,
        epmd_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(5),
        mirror_check: Duration::from_secs(10),
        scheduling: distgate::runtime::Scheduling::Normal,
        policies: Default::default(),
        registries: Default::default(),
    })
    .expect("distgate starts")
}

fn node(prefix: &str, rt: &Runtime, side: &str, cookie: &str) -> Node {
    let epmd = rt.responder_addr(side).unwrap().port();
    Node::start_with(prefix, NodeOptions { cookie: cookie.into(), epmd_port: Some(epmd), ..NodeOptions::default() })
}

/// The proxy port for node `alive` of B, as a dialler of A would get it.
fn proxy_port(rt: &Runtime, alive: &str) -> u16 {
    epmd::port_please(rt.responder_addr("a").unwrap(), alive, Duration::from_secs(5)).unwrap().expect("B's node is known").port
}

/// Read until the peer closes; panics if it stays open past `limit`.
fn expect_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("connection still open after {:?}: {e}", start.elapsed()),
        }
    }
}

/// A fake node `name` of cluster A that completes the handshake through distgate to `target`.
/// Each fake has a name of its own: B drops a closed link's connection when its VM gets to it,
/// and until then answers a new handshake under the same name with `alive`, not `ok`.
fn fake_dialler(port: u16, target: &str, name: &str) -> TcpStream {
    let mut s = TcpStream::connect(SocketAddr::new(lo(), port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    let me = SendName { flags: 0x0000000d07df7fbc, creation: Some(4242), name: name.into() };
    me.encode(4242, &mut out);
    s.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let next = |s: &mut TcpStream, buf: &mut Vec<u8>| -> Vec<u8> {
        loop {
            if let Some((m, n)) = handshake::split(buf) {
                let m = m.to_vec();
                buf.drain(..n);
                return m;
            }
            let mut b = [0u8; 1024];
            let k = s.read(&mut b).expect("handshake reply");
            assert!(k > 0, "distgate closed during the handshake");
            buf.extend_from_slice(&b[..k]);
        }
    };
    assert_eq!(next(&mut s, &mut buf), b"sok");
    let ch = Challenge::parse(&next(&mut s, &mut buf)).unwrap();
    assert_eq!(ch.name, target, "distgate relays the target's real name");
    let mut out = Vec::new();
    handshake::encode_reply(99, &handshake::digest(COOKIE_A.as_bytes(), ch.challenge), &mut out);
    s.write_all(&out).unwrap();
    let ack = next(&mut s, &mut buf);
    assert_eq!(handshake::parse_ack(&ack).unwrap(), handshake::digest(COOKIE_A.as_bytes(), 99));
    s
}

/// The real pair still works.
fn pair_still_fine(a: &Node, b: &Node) {
    assert_eq!(a.eval("rpc:call(B, erlang, node, [])."), b.atom());
}

#[test]
fn hostile_peers_lose_only_their_own_link() {
    let rt = start();
    let a = node("fa", &rt, "a", COOKIE_A);
    let b = node("fb", &rt, "b", COOKIE_B);
    a.eval(&format!("B = {}.", b.atom()));
    assert_eq!(a.eval("net_adm:ping(B)."), "pong");
    // Record any nodedown of B on A from now on.
    a.eval("Mon = spawn(fun() -> ok = net_kernel:monitor_nodes(true), L = fun Loop(D) -> receive {get, F} -> F ! {downs, D}, Loop(D); {nodedown, N} -> Loop([N | D]); _ -> Loop(D) end end, L([]) end).");
    let downs = "Mon ! {get, self()}, receive {downs, D} -> D after 30000 -> timeout end.";
    let port = proxy_port(&rt, b.alive());
    let stats = rt.stats();

    // 1. Garbage instead of a handshake.
    let mut g = TcpStream::connect(SocketAddr::new(lo(), port)).unwrap();
    g.write_all(b"\x00\x05HELLO this is not erlang").unwrap();
    expect_closed(&mut g, CLOSE_DEADLINE);
    assert!(stats.get("close:handshake_error") >= 1, "{:?}", stats.labelled());

    // 2. A stall in the middle of send_name: closed by the handshake timeout.
    let mut st = TcpStream::connect(SocketAddr::new(lo(), port)).unwrap();
    st.write_all(&[0, 40, b'N', 0, 0]).unwrap();
    expect_closed(&mut st, HANDSHAKE_TIMEOUT + CLOSE_DEADLINE);
    assert!(stats.get("close:handshake_timeout") >= 1, "{:?}", stats.labelled());

    // 3. A real handshake, then an oversized frame: that link closes, with a reason.
    let mut big = fake_dialler(port, b.name(), "fake_big@127.0.0.1");
    big.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes()).unwrap();
    expect_closed(&mut big, CLOSE_DEADLINE);
    assert!(stats.get("close:frame_too_large") >= 1, "{:?}", stats.labelled());

    // 4. A real handshake, a tick (passes), then a frame that is not a distribution message.
    let mut bad = fake_dialler(port, b.name(), "fake_bad@127.0.0.1");
    bad.write_all(&[0, 0, 0, 0, 0, 0, 0, 3, 131, 68, 9]).unwrap();
    expect_closed(&mut bad, CLOSE_DEADLINE);
    assert!(stats.get("close:bad_frame") >= 1, "{:?}", stats.labelled());

    // 5. A real handshake, then a fragmented message ending in a 100 kB binary (streamed:
    // its first fragment is forwarded at once) whose last fragment runs one byte past the
    // binary: that link closes as a bad frame (the unit test in link.rs checks the reason).
    let bad_frames = stats.get("close:bad_frame");
    let mut long = fake_dialler(port, b.name(), "fake_long@127.0.0.1");
    let mut body = vec![0, 104, 4];
    distgate::policy::wire::encode_int(6, &mut body);
    distgate::policy::wire::encode_pid("fake_long@127.0.0.1", 1, 0, 1, &mut body);
    distgate_codec::rewrite::encode_atom("", &mut body);
    distgate_codec::rewrite::encode_atom("nobody", &mut body);
    body.extend_from_slice(&[104, 2, 119, 2, b'o', b'k', 109]);
    body.extend_from_slice(&100_000u32.to_be_bytes());
    body.extend(std::iter::repeat_n(7u8, 100_000));
    body.push(0);
    // Two fragments of sequence 77, cut as the rewriter re-emits messages.
    let mut frames = Vec::new();
    let framing = distgate_codec::message::Framing::Fragmented { seq: 77, fragments: 2 };
    distgate_codec::rewrite::emit(framing, &body, body.len().div_ceil(2), &mut frames);
    long.write_all(&frames).unwrap();
    expect_closed(&mut long, CLOSE_DEADLINE);
    assert_eq!(stats.get("close:bad_frame"), bad_frames + 1, "{:?}", stats.labelled());

    // 6. Garbage to the EPMD responder: that connection ends, the responder keeps answering.
    let mut e = TcpStream::connect(rt.responder_addr("a").unwrap()).unwrap();
    e.write_all(&[0, 3, 250, 1, 2]).unwrap();
    expect_closed(&mut e, CLOSE_DEADLINE);
    assert!(stats.get("epmd_bad_request") >= 1);
    assert_eq!(proxy_port(&rt, b.alive()), port);

    // The real pair saw none of it.
    assert_eq!(a.eval(downs), "[]", "the real link never went down");
    pair_still_fine(&a, &b);
    // The fake nodes' links to B came up and went down on B's side, each on its own.
    assert_eq!(b.eval("nodes()."), format!("[{}]", a.atom()));
}
