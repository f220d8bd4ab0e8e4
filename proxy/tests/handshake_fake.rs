//! Handshake corner cases with fake peers written here (real nodes rarely produce them on
//! demand): the target's `nok` (simultaneous connect lost) and `not_allowed` reach the dialler
//! verbatim and no link comes up; `alive` lets the dialler answer, and its answer reaches the
//! target; a target presenting another name is refused; a target that cannot be reached gets
//! the dialler a `nok`, whether the connect fails later (refused) or at once (unroutable).

use distgate::driver::{self, DriverKind};
use distgate::epmd::{self, NodeInfo};
use distgate::handshake::{self, Challenge, SendName};
use distgate::link::{Cookie, LinkLimits};
use distgate::runtime::{Route, Runtime, SideSpec, Spec};
use distgate::stats::Stats;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CA: &[u8] = b"fake_cookie_a";
const CB: &[u8] = b"fake_cookie_b";
const FLAGS: u64 = 0x0000000d07df7fbc;

fn lo() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn start() -> Runtime {
    start_on(DriverKind::Poll)
}

fn start_on(driver: DriverKind) -> Runtime {
    start_with(driver, Duration::from_secs(5))
}

fn start_with(driver: DriverKind, drain_timeout: Duration) -> Runtime {
    Runtime::start(spec(driver, drain_timeout, CA, CB)).unwrap()
}

/// Two clusters, a and b, that may dial each other, with these cookies.
fn spec(driver: DriverKind, drain_timeout: Duration, ca: &[u8], cb: &[u8]) -> Spec {
    let side = |name: &str, c: &[u8]| SideSpec {
        name: name.into(),
        cookie: Cookie::new(c),
        epmd_listen: Some(SocketAddr::new(lo(), 0)),
        upstream_epmd: Vec::new(),
        proxy_ip: lo(),
        hidden: false,
        nodes: None,
        node_ports: None,
    };
    Spec {
        sides: vec![side("a", ca), side("b", cb)],
        routes: vec![(0, 1), (1, 0)],
        limits: LinkLimits { handshake_timeout: Duration::from_secs(10), ..LinkLimits::default() },
        link_buffer: 1 << 20,
        threads: 1,
        driver,
        epmd_timeout: Duration::from_secs(10),
        drain_timeout,
        mirror_check: Duration::from_secs(10),
        scheduling: distgate::runtime::Scheduling::Normal,
        policies: Default::default(),
        registries: Default::default(),
    }
}

/// Reads 2-byte-length handshake messages.
struct Msgs {
    s: TcpStream,
    buf: Vec<u8>,
}
impl Msgs {
    fn new(s: TcpStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Msgs { s, buf: Vec::new() }
    }
    /// The next message, or `None` when the peer closed.
    fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some((m, n)) = handshake::split(&self.buf) {
                let m = m.to_vec();
                self.buf.drain(..n);
                return Some(m);
            }
            let mut b = [0u8; 1024];
            match self.s.read(&mut b) {
                Ok(0) | Err(_) => return None,
                Ok(k) => self.buf.extend_from_slice(&b[..k]),
            }
        }
    }
    fn send(&mut self, body: &[u8]) {
        let mut out = Vec::new();
        handshake::frame(&mut out, body);
        self.s.write_all(&out).unwrap();
    }
}

/// A fake target node `alive` of cluster B: registered with B's responder, listening.
fn fake_target(rt: &Runtime, alive: &str) -> (TcpListener, TcpStream) {
    fake_target_on(rt, "b", alive)
}

/// A fake target node `alive` of cluster `side`: registered with its responder, listening.
fn fake_target_on(rt: &Runtime, side: &str, alive: &str) -> (TcpListener, TcpStream) {
    let l = TcpListener::bind((lo(), 0)).unwrap();
    let info = NodeInfo { port: l.local_addr().unwrap().port(), node_type: 77, protocol: 0, highest: 6, lowest: 6, name: alive.into(), extra: vec![] };
    let (reg, _creation) = epmd::alive2(rt.responder_addr(side).unwrap(), &info, Duration::from_secs(5)).unwrap();
    (l, reg)
}

/// A fake dialler of cluster A: asks A's responder for `alive` and sends its send_name.
fn dial(rt: &Runtime, alive: &str) -> Msgs {
    let port = epmd::port_please(rt.responder_addr("a").unwrap(), alive, Duration::from_secs(5)).unwrap().unwrap().port;
    let mut m = Msgs::new(TcpStream::connect((lo(), port)).unwrap());
    let mut out = Vec::new();
    SendName { flags: FLAGS, creation: Some(77), name: "dialler@127.0.0.1".into() }.encode(77, &mut out);
    m.s.write_all(&out).unwrap();
    m
}

fn accept(l: &TcpListener) -> Msgs {
    let (s, _) = l.accept().unwrap();
    let mut m = Msgs::new(s);
    let sn = SendName::parse(&m.next().unwrap()).unwrap();
    assert_eq!((sn.name.as_str(), sn.creation), ("dialler@127.0.0.1", Some(77)), "the dialler's own identity is relayed");
    assert_eq!(sn.flags, FLAGS & handshake::flag::SUPPORTED);
    m
}

#[test]
fn refusals_from_the_target_reach_the_dialler_verbatim() {
    let rt = start();
    for status in [&b"nok"[..], b"not_allowed"] {
        let alive = format!("t{}", status.len());
        let (l, _reg) = fake_target(&rt, &alive);
        let mut d = dial(&rt, &alive);
        let mut t = accept(&l);
        let mut s = vec![b's'];
        s.extend_from_slice(status);
        t.send(&s);
        assert_eq!(d.next().unwrap(), s);
        assert_eq!(d.next(), None, "closed after the refusal");
        assert_eq!(t.next(), None);
    }
    assert_eq!(rt.stats().links_established.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(rt.stats().get("close:refused_by_target") >= 2);
}

#[test]
fn alive_is_answered_by_the_dialler_and_the_link_completes() {
    let rt = start();
    let (l, _reg) = fake_target(&rt, "talive");
    let mut d = dial(&rt, "talive");
    let mut t = accept(&l);
    t.send(b"salive");
    assert_eq!(d.next().unwrap(), b"salive");
    d.send(b"strue");
    assert_eq!(t.next().unwrap(), b"strue", "the dialler's answer reaches the target");
    // The rest of a normal handshake, with the real cookies of each side.
    challenge_to_ack(&mut d, &mut t, "talive", FLAGS | 1, CA, CB);
    // Frames now flow: a tick from each side arrives at the other.
    d.s.write_all(&[0, 0, 0, 0]).unwrap();
    let mut tick = [9u8; 4];
    t.s.read_exact(&mut tick).unwrap();
    assert_eq!(tick, [0; 4]);
}

#[test]
fn a_target_presenting_another_name_is_refused() {
    let rt = start();
    let (l, _reg) = fake_target(&rt, "tname");
    let mut d = dial(&rt, "tname");
    let mut t = accept(&l);
    t.send(b"sok");
    let mut ch = Vec::new();
    Challenge { flags: FLAGS, challenge: 1, creation: 9, name: "impostor@127.0.0.1".into() }.encode(&mut ch);
    t.s.write_all(&ch).unwrap();
    assert_eq!(d.next().unwrap(), b"sok");
    assert_eq!(d.next(), None, "no challenge from an impostor reaches the dialler");
    assert!(rt.stats().get("close:handshake_error") >= 1);
}

/// A target registered with B's responder whose port no longer listens: the connect is refused
/// after it was started. The dialler hears `nok`, as it would from a node that refused it, and
/// the close is counted under its own reason.
#[test]
fn a_refused_connect_to_the_target_gets_the_dialler_nok() {
    for d in [DriverKind::Poll, DriverKind::Uring] {
        let rt = start_on(d);
        let (l, _reg) = fake_target(&rt, "tgone");
        drop(l);
        let mut m = dial(&rt, "tgone");
        assert_eq!(m.next().as_deref(), Some(&b"snok"[..]), "{d:?}");
        assert_eq!(m.next(), None, "{d:?}: closed after the nok");
        wait_for(&rt.stats(), |s| s.get("close:upstream_unreachable") == 1, &format!("{d:?}: the close counted"));
        assert_eq!(rt.stats().links_established.load(Ordering::Relaxed), 0);
    }
}

/// A core serving one hand-made route whose target fails to connect at once: a non-blocking
/// connect to the broadcast address is refused by the call itself (ENETUNREACH), which a node's
/// address from EPMD never is on loopback.
fn unroutable_core(d: DriverKind) -> (Vec<driver::CoreHandle>, Arc<Stats>, SocketAddr) {
    let stats = Arc::new(Stats::default());
    let limits = LinkLimits { handshake_timeout: Duration::from_secs(10), ..LinkLimits::default() };
    let (_, cores, _joins) = driver::start(d, 1, limits, 1 << 20, stats.clone()).unwrap();
    let l = TcpListener::bind((lo(), 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let route = Route {
        from: 0,
        to: 1,
        alive: "tsync".into(),
        port: addr.port(),
        target: Mutex::new(SocketAddr::new(IpAddr::from([255, 255, 255, 255]), 9)),
        down_cookie: Mutex::new(Cookie::new(CA)),
        up_cookie: Mutex::new(Cookie::new(CB)),
        policy: Default::default(),
        hidden: Default::default(),
        open: std::sync::atomic::AtomicBool::new(true),
        target_nodes: Mutex::new(None),
    };
    cores[0].listen(l, Arc::new(route)).unwrap();
    (cores, stats, addr)
}

fn wait_for(stats: &Stats, done: impl Fn(&Stats) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(stats) {
        assert!(Instant::now() < deadline, "{what}: {:?}", stats.labelled());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads until the peer closes; a read that times out instead fails the test (the link was
/// left open).
fn read_to_close(s: &mut TcpStream, what: &str) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset) => got,
        Err(e) => panic!("{what}: the socket was not closed ({e}); read {got:?}"),
    }
}

/// On a core serving the unroutable route, a dialler sends its send_name followed by `then`,
/// and reads until distgate closes: what it read, and the core's counters once the link is
/// counted closed.
fn unroutable_exchange(d: DriverKind, then: &[u8]) -> (Vec<u8>, Arc<Stats>) {
    let (cores, stats, addr) = unroutable_core(d);
    let mut s = TcpStream::connect(addr).unwrap();
    let mut out = Vec::new();
    SendName { flags: FLAGS, creation: Some(77), name: "dialler@127.0.0.1".into() }.encode(77, &mut out);
    out.extend_from_slice(then);
    s.write_all(&out).unwrap();
    let got = read_to_close(&mut s, &format!("{d:?}"));
    wait_for(&stats, |s| s.links_closed.load(Ordering::Relaxed) == 1, &format!("{d:?}: the link counted closed"));
    for c in &cores {
        c.shutdown(Duration::ZERO);
    }
    (got, stats)
}

/// `Spec::scheduling` on both drivers: the core threads run under `SCHED_BATCH` (policy 3)
/// once started with it, under `SCHED_OTHER` (0) again after a reload to `Normal`. (The cores
/// apply it from their command queue: polled, with a deadline.)
#[test]
fn the_cores_take_the_scheduling_policy_at_start_and_on_reload() {
    use distgate::runtime::Scheduling;
    use distgate_testkit::daemon::thread_policies;
    let until = |d: DriverKind, want: u32| {
        let t0 = Instant::now();
        while thread_policies(std::process::id(), "core-") != [want] {
            assert!(t0.elapsed() < Duration::from_secs(10), "{d:?}: cores at {:?}, not {want}", thread_policies(std::process::id(), "core-"));
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    for d in [DriverKind::Poll, DriverKind::Uring] {
        let mut s = spec(d, Duration::from_secs(5), CA, CB);
        s.scheduling = Scheduling::Batch;
        let rt = Runtime::start(s).unwrap();
        until(d, 3);
        rt.reload(&spec(d, Duration::from_secs(5), CA, CB));
        until(d, 0);
        drop(rt);
    }
}

#[test]
fn a_connect_that_fails_at_once_gets_the_dialler_nok() {
    for d in [DriverKind::Poll, DriverKind::Uring] {
        let (got, stats) = unroutable_exchange(d, b"");
        let mut nok = Vec::new();
        handshake::encode_status(b"nok", &mut nok);
        assert_eq!(got, nok, "{d:?}");
        assert_eq!(stats.get("close:upstream_unreachable"), 1, "{d:?}: {:?}", stats.labelled());
    }
}

/// A send_name and garbage in one read: the link closes on the garbage, and the dial the
/// send_name asked for is not made (with mio, a dial failing at once used to drop the close
/// behind it, and the dialler's socket stayed open).
#[test]
fn a_send_name_and_garbage_in_one_read_close_the_link_without_a_dial() {
    for d in [DriverKind::Poll, DriverKind::Uring] {
        let mut garbage = Vec::new();
        handshake::frame(&mut garbage, b"Xgarbage");
        let (got, stats) = unroutable_exchange(d, &garbage);
        assert_eq!(got, b"", "{d:?}: nothing sent, closed");
        assert_eq!(stats.get("close:handshake_error"), 1, "{d:?}: {:?}", stats.labelled());
        assert_eq!(stats.get("close:upstream_unreachable"), 0, "{d:?}: no dial was made");
    }
}

/// A fake dialler and fake target with a link between them through distgate, both handshakes
/// done; and the target's EPMD registration (it ends when dropped).
fn established(rt: &Runtime, alive: &str) -> (Msgs, Msgs, TcpStream) {
    established_with(rt, alive, CA, CB)
}

/// [`established`] with the cookies distgate is expected to use: `ca` towards the dialler,
/// `cb` towards the target (each fake peer checks distgate's digest).
fn established_with(rt: &Runtime, alive: &str, ca: &[u8], cb: &[u8]) -> (Msgs, Msgs, TcpStream) {
    let (l, reg) = fake_target(rt, alive);
    let (d, t) = link_to(rt, alive, &l, ca, cb);
    (d, t, reg)
}

/// A link through distgate to the fake target listening on `l`, both handshakes done.
fn link_to(rt: &Runtime, alive: &str, l: &TcpListener, ca: &[u8], cb: &[u8]) -> (Msgs, Msgs) {
    let mut d = dial(rt, alive);
    let mut t = accept(l);
    t.send(b"sok");
    assert_eq!(d.next().unwrap(), b"sok");
    challenge_to_ack(&mut d, &mut t, alive, FLAGS, ca, cb);
    (d, t)
}

/// The handshake from the target's challenge to the dialler's ack. Each fake peer checks
/// distgate's digests: `ca` towards the dialler, `cb` towards the target.
fn challenge_to_ack(d: &mut Msgs, t: &mut Msgs, alive: &str, flags: u64, ca: &[u8], cb: &[u8]) {
    let name = format!("{alive}@127.0.0.1");
    let mut ch = Vec::new();
    Challenge { flags, challenge: 4242, creation: 9, name: name.clone() }.encode(&mut ch);
    t.s.write_all(&ch).unwrap();
    let c = Challenge::parse(&d.next().unwrap()).unwrap();
    assert_eq!((c.name, c.creation), (name, 9), "the target's real name and creation");
    let mut r = Vec::new();
    handshake::encode_reply(31337, &handshake::digest(ca, c.challenge), &mut r);
    d.s.write_all(&r).unwrap();
    let (their, dig) = handshake::parse_reply(&t.next().unwrap()).unwrap();
    assert_eq!(dig, handshake::digest(cb, 4242), "distgate answers the target's challenge with its cluster's cookie");
    let mut a = Vec::new();
    handshake::encode_ack(&handshake::digest(cb, their), &mut a);
    t.s.write_all(&a).unwrap();
    let ack = handshake::parse_ack(&d.next().unwrap()).unwrap();
    assert_eq!(ack, handshake::digest(ca, 31337), "distgate acknowledges the dialler with its cluster's cookie");
}

/// Frame `i` of the drain tests: a REG_SEND whose payload is a 64 KiB binary of byte `i`.
fn numbered_frame(i: u8) -> Vec<u8> {
    let mut body = vec![131, 68, 0, 104, 4, 97, 6, 88];
    distgate_codec::rewrite::encode_atom("dialler@127.0.0.1", &mut body);
    body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 77]);
    distgate_codec::rewrite::encode_atom("", &mut body);
    distgate_codec::rewrite::encode_atom("sink", &mut body);
    body.push(109);
    body.extend_from_slice(&(64u32 << 10).to_be_bytes());
    body.extend(std::iter::repeat_n(i, 64 << 10));
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// A link whose target stops reading while the dialler floods it, until distgate holds a
/// full link buffer for the target (it stopped reading the dialler). Returns the target's end,
/// the proxy port the dialler used and the target's registration (the dialler keeps writing
/// from a thread until its writes fail).
fn stalled_link(rt: &Runtime, alive: &str) -> (Msgs, u16, TcpStream) {
    // A stalled link pauses its dialler once: the target never reads, so its queue never
    // drains below half.
    let pauses = rt.stats().backpressure_pauses.load(Ordering::Relaxed);
    let (d, t, reg) = established(rt, alive);
    let port = d.s.peer_addr().unwrap().port();
    let mut ds = d.s;
    std::thread::spawn(move || {
        ds.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        for i in 0..=255u8 {
            if ds.write_all(&numbered_frame(i)).is_err() {
                return;
            }
        }
        // Stay connected until distgate closes this leg: the link must end by the shutdown,
        // not by its dialler leaving.
        let _ = ds.read(&mut [0u8; 1]);
    });
    wait_for(&rt.stats(), |s| s.backpressure_pauses.load(Ordering::Relaxed) > pauses, "the target's queue full");
    (t, port, reg)
}

/// What the target of a [`stalled_link`] read: whole numbered frames, in order, from the
/// first. Returns how many bytes.
fn assert_numbered_frames(got: &[u8], what: &str) -> usize {
    let (mut at, mut n) = (0, 0usize);
    while at < got.len() {
        let want = numbered_frame(n as u8);
        assert!(got.len() - at >= want.len(), "{what}: frame {n} cut short at the close");
        assert!(got[at..at + want.len()] == want[..], "{what}: frame {n} differs");
        at += want.len();
        n += 1;
    }
    at
}

/// On shutdown, a link keeps flushing what distgate holds for a peer that reads slowly for as
/// long as `drain_timeout` allows (here an hour: longer than any fixed grace), and the peer
/// then gets whole frames, in order, and the close. Meanwhile nothing new is accepted.
#[test]
fn shutdown_drains_queued_frames_for_the_configured_time() {
    for d in [DriverKind::Poll, DriverKind::Uring] {
        let rt = start_with(d, Duration::from_secs(3600));
        let stats = rt.stats();
        let (mut t, port, _reg) = stalled_link(&rt, "tdrain");
        let stopping = std::thread::spawn(move || rt.shutdown());
        // Not a timing assertion on distgate's speed: a stop that gave up after a fixed grace
        // (5 s before drain_timeout was honoured) would be over by now.
        std::thread::sleep(Duration::from_secs(6));
        assert!(!stopping.is_finished(), "{d:?}: stopped while frames were still queued");
        assert!(TcpStream::connect((lo(), port)).is_err(), "{d:?}: the proxy port still accepts while stopping");
        assert_eq!(stats.links_closed.load(Ordering::Relaxed), 0, "{d:?}");
        // The target reads again: every frame distgate held arrives whole and in order.
        t.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        match t.s.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{d:?}: no close after the drain ({e})"),
        }
        let at = assert_numbered_frames(&got, &format!("{d:?}"));
        assert!(at >= 1 << 20, "{d:?}: only {at} bytes arrived; distgate held a full 1 MiB link buffer");
        stopping.join().unwrap();
        assert_eq!(stats.get("close:shutdown"), 1, "{d:?}: {:?}", stats.labelled());
    }
}

/// With no drain time, shutdown closes a link at once even though its peer never reads.
#[test]
fn shutdown_without_drain_time_closes_a_stalled_link() {
    for d in [DriverKind::Poll, DriverKind::Uring] {
        let rt = start_with(d, Duration::ZERO);
        let stats = rt.stats();
        let _stalled = stalled_link(&rt, "tnodrain");
        let stopping = std::thread::spawn(move || rt.shutdown());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stopping.is_finished() {
            assert!(Instant::now() < deadline, "{d:?}: shutdown waited for a peer that never reads");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stats.get("close:shutdown"), 1, "{d:?}: {:?}", stats.labelled());
    }
}

/// Draining is per link: on shutdown, a link with nothing queued and no frame streaming is
/// closed at once, towards both of its peers, while another on the same core still has a
/// full queue for a target that does not read; that one is closed once the target reads
/// it all.
#[test]
fn shutdown_closes_an_idle_link_while_a_stalled_one_drains() {
    for d in [DriverKind::Poll, DriverKind::Uring] {
        // One core (the spec's `threads = 1`) holds both links; the drain time is an hour.
        let rt = start_with(d, Duration::from_secs(3600));
        let stats = rt.stats();
        let (mut t, _port, _reg) = stalled_link(&rt, "tbusy");
        let (mut di, mut ti, _reg_idle) = established(&rt, "tidle");
        let stopping = std::thread::spawn(move || rt.shutdown());
        assert_eq!(read_to_close(&mut di.s, &format!("{d:?}: the idle link's dialler")), b"", "{d:?}");
        assert_eq!(read_to_close(&mut ti.s, &format!("{d:?}: the idle link's target")), b"", "{d:?}");
        // The stalled link cannot have closed: its target has read nothing and the drain time
        // is an hour.
        assert_eq!(stats.links_closed.load(Ordering::Relaxed), 1, "{d:?}: only the idle link closed");
        assert_eq!(stats.get("close:shutdown"), 1, "{d:?}: {:?}", stats.labelled());
        assert!(!stopping.is_finished(), "{d:?}: stopped while frames were still queued");
        // The target reads again: what distgate held arrives whole, then the close.
        let got = read_to_close(&mut t.s, &format!("{d:?}: the stalled link's target"));
        let at = assert_numbered_frames(&got, &format!("{d:?}"));
        assert!(at >= 1 << 20, "{d:?}: only {at} bytes arrived; distgate held a full 1 MiB link buffer");
        stopping.join().unwrap();
        assert_eq!(stats.links_closed.load(Ordering::Relaxed), 2, "{d:?}");
        assert_eq!(stats.get("close:shutdown"), 2, "{d:?}: {:?}", stats.labelled());
    }
}

/// The sum of `close:*` counters.
fn closes_counted(stats: &Stats) -> u64 {
    stats.labelled().iter().filter(|(k, _)| k.starts_with("close:")).map(|(_, n)| n).sum()
}

/// A link's close is counted once, under its first reason: a link that closed with a flush
/// (here a frame over the limit from a target that reads nothing) is not counted again when
/// that flush times out, nor when distgate stops while it is still flushing. The close
/// reasons then add up to the closed links.
#[test]
fn every_close_is_counted_once_under_its_first_reason() {
    let over_the_limit = [0xff; 4];
    for d in [DriverKind::Poll, DriverKind::Uring] {
        let rt = start_with(d, Duration::ZERO);
        let stats = rt.stats();
        let closed = |n: u64| move |s: &Stats| s.links_closed.load(Ordering::Relaxed) == n;
        // An ordinary end: the dialler leaves.
        let (d1, mut t1, _r1) = established(&rt, "tpeer");
        drop(d1);
        read_to_close(&mut t1.s, &format!("{d:?}: the target of the link its dialler left"));
        wait_for(&stats, closed(1), &format!("{d:?}: peer_closed counted"));
        // Closed with a flush towards a target that never reads: the flush times out.
        let (mut t2, _, _r2) = stalled_link(&rt, "tflush");
        t2.s.write_all(&over_the_limit).unwrap();
        wait_for(&stats, |s| s.get("close:frame_too_large") == 1, &format!("{d:?}: the close counted"));
        wait_for(&stats, closed(2), &format!("{d:?}: the link dropped when its flush timed out"));
        assert_eq!(stats.get("flush_timeout"), 1, "{d:?}: {:?}", stats.labelled());
        // The same, still flushing when distgate stops.
        let (mut t3, _, _r3) = stalled_link(&rt, "tcut");
        t3.s.write_all(&over_the_limit).unwrap();
        wait_for(&stats, |s| s.get("close:frame_too_large") == 2, &format!("{d:?}: the close counted"));
        // Open and idle when distgate stops.
        let (_d4, _t4, _r4) = established(&rt, "tstop");
        rt.shutdown();
        assert_eq!(stats.links_closed.load(Ordering::Relaxed), 4, "{d:?}");
        assert_eq!(stats.get("close:shutdown"), 1, "{d:?}: only the idle link closed by the stop: {:?}", stats.labelled());
        assert_eq!(stats.get("close:peer_closed"), 1, "{d:?}: {:?}", stats.labelled());
        assert_eq!(closes_counted(&stats), 4, "{d:?}: every close counted once: {:?}", stats.labelled());
    }
}

/// A reload swaps each cluster's cookie for the handshakes that follow, on a proxy port opened
/// before it too; a link established before it keeps forwarding.
#[test]
fn a_reload_changes_the_cookies_of_later_handshakes() {
    let rt = start();
    let (l, _reg) = fake_target(&rt, "tcookie");
    let (mut d1, mut t1) = link_to(&rt, "tcookie", &l, CA, CB);
    rt.reload(&spec(DriverKind::Poll, Duration::from_secs(5), b"rotated_a", b"rotated_b"));
    let (_d2, _t2) = link_to(&rt, "tcookie", &l, b"rotated_a", b"rotated_b");
    // The first link still forwards: a tick each way.
    d1.s.write_all(&[0, 0, 0, 0]).unwrap();
    t1.s.write_all(&[0, 0, 0, 0]).unwrap();
    let mut tick = [9u8; 4];
    t1.s.read_exact(&mut tick).unwrap();
    d1.s.read_exact(&mut tick).unwrap();
    assert_eq!(tick, [0; 4]);
    assert_eq!(rt.stats().get("close:bad_cookie"), 0);
}

/// A reload's limits apply to links accepted after it: a 64 KiB frame still passes on a link
/// from before a reload to a 16 KiB frame limit, and closes a link from after it.
#[test]
fn a_reload_changes_the_limits_of_later_links() {
    for d in [DriverKind::Poll, DriverKind::Uring] {
        let rt = start_on(d);
        let (l, _reg) = fake_target(&rt, "tlimit");
        let (mut d1, mut t1) = link_to(&rt, "tlimit", &l, CA, CB);
        let mut small = spec(d, Duration::from_secs(5), CA, CB);
        small.limits.max_frame = 16 << 10;
        rt.reload(&small);
        // The core takes the new limits from its command queue; the link after it is accepted
        // later on the same core, so it gets them.
        let (mut d2, _t2) = link_to(&rt, "tlimit", &l, CA, CB);
        let frame = numbered_frame(1);
        d1.s.write_all(&frame).unwrap();
        let mut got = vec![0u8; frame.len()];
        t1.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        t1.s.read_exact(&mut got).unwrap();
        assert!(got == frame, "{d:?}: the older link forwards a frame over the new limit");
        d2.s.write_all(&frame).unwrap();
        wait_for(&rt.stats(), |s| s.get("close:frame_too_large") == 1, &format!("{d:?}: the newer link refuses it"));
    }
}

/// Through distgate, from a fake dialler of cluster `from` to the fake target `alive` of the
/// other cluster, listening on `l`, both published (`PUBLISHED` in what each sends): the flags
/// distgate presents to the target (its send_name) and to the dialler (its challenge). The
/// handshake goes no further.
fn presented_flags(rt: &Runtime, from: &str, alive: &str, l: &TcpListener) -> (u64, u64) {
    let published = FLAGS | handshake::flag::PUBLISHED;
    let port = epmd::port_please(rt.responder_addr(from).unwrap(), alive, Duration::from_secs(5)).unwrap().unwrap().port;
    let mut d = Msgs::new(TcpStream::connect((lo(), port)).unwrap());
    let mut out = Vec::new();
    SendName { flags: published, creation: Some(77), name: "dialler@127.0.0.1".into() }.encode(77, &mut out);
    d.s.write_all(&out).unwrap();
    let mut t = Msgs::new(l.accept().unwrap().0);
    let to_target = SendName::parse(&t.next().unwrap()).unwrap().flags;
    t.send(b"sok");
    let mut ch = Vec::new();
    Challenge { flags: published, challenge: 4242, creation: 9, name: format!("{alive}@127.0.0.1") }.encode(&mut ch);
    t.s.write_all(&ch).unwrap();
    assert_eq!(d.next().unwrap(), b"sok");
    let to_dialler = Challenge::parse(&d.next().unwrap()).unwrap().flags;
    (to_target, to_dialler)
}

/// With cluster b hidden, distgate presents no `PUBLISHED` on either leg of a link between a
/// and b, whichever side dials, though both peers send it (every other flag passes as before).
/// A reload making b not hidden gives the next links on the same proxy ports `PUBLISHED` on
/// both legs; one making it hidden again takes it away again.
#[test]
fn links_with_a_hidden_cluster_present_no_published_flag_on_either_leg() {
    let spec_b_hidden = |hidden: bool| {
        let mut s = spec(DriverKind::Poll, Duration::from_secs(5), CA, CB);
        s.sides[1].hidden = hidden;
        s
    };
    let rt = Runtime::start(spec_b_hidden(true)).unwrap();
    let (lb, _rb) = fake_target_on(&rt, "b", "thid_b");
    let (la, _ra) = fake_target_on(&rt, "a", "thid_a");
    let hidden = FLAGS & handshake::flag::SUPPORTED & !handshake::flag::PUBLISHED;
    let published = (FLAGS | handshake::flag::PUBLISHED) & handshake::flag::SUPPORTED;
    for (b_hidden, want) in [(true, hidden), (false, published), (true, hidden)] {
        rt.reload(&spec_b_hidden(b_hidden));
        for (from, alive, l) in [("a", "thid_b", &lb), ("b", "thid_a", &la)] {
            let (to_target, to_dialler) = presented_flags(&rt, from, alive, l);
            assert_eq!(to_target, want, "b hidden: {b_hidden}; {from} dials: send_name to the target {to_target:#x}");
            assert_eq!(to_dialler, want, "b hidden: {b_hidden}; {from} dials: challenge to the dialler {to_dialler:#x}");
        }
    }
}

/// A reload that removes the only route between the two clusters closes the link between them
/// (`route_removed`, both peers see EOF) and its port refuses connections; a reload putting
/// the route back opens the same port again. Both drivers.
#[test]
fn a_reload_removing_the_route_closes_its_links_and_refuses_new_ones() {
    for d in [DriverKind::Poll, DriverKind::Uring] {
        let rt = start_on(d);
        let (l, _reg) = fake_target(&rt, "tcut");
        let port = epmd::port_please(rt.responder_addr("a").unwrap(), "tcut", Duration::from_secs(5)).unwrap().unwrap().port;
        let (mut dl, mut tl) = link_to(&rt, "tcut", &l, CA, CB);
        let mut cut = spec(d, Duration::from_secs(5), CA, CB);
        cut.routes.clear();
        rt.reload(&cut);
        read_to_close(&mut dl.s, &format!("{d:?}: the dialler's leg"));
        read_to_close(&mut tl.s, &format!("{d:?}: the target's leg"));
        wait_for(&rt.stats(), |s| s.get("close:route_removed") == 1, &format!("{d:?}: counted"));
        let mut s = TcpStream::connect((lo(), port)).unwrap();
        read_to_close(&mut s, &format!("{d:?}: a connection to the removed route's port"));
        wait_for(&rt.stats(), |s| s.get("refused:route_removed") == 1, &format!("{d:?}: refused, counted"));
        rt.reload(&spec(d, Duration::from_secs(5), CA, CB));
        let (mut d2, mut t2) = link_to(&rt, "tcut", &l, CA, CB);
        let frame = numbered_frame(1);
        d2.s.write_all(&frame).unwrap();
        let mut got = vec![0u8; frame.len()];
        t2.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        t2.s.read_exact(&mut got).unwrap();
        assert!(got == frame, "{d:?}: the route is back on the same port");
    }
}

/// A `spawn_request` of `erlang:apply/2` (frame with its length): `131 68`, an empty cache
/// header, `{29, Ref, From, GroupLeader, {erlang, apply, 2}, []}`, the argument list `[]`.
fn spawn_request_frame(n: u32) -> Vec<u8> {
    let atom = |s: &str, v: &mut Vec<u8>| {
        v.extend_from_slice(&[119, s.len() as u8]);
        v.extend_from_slice(s.as_bytes());
    };
    let pid = |id: u32, v: &mut Vec<u8>| {
        v.push(88);
        atom("dialler@127.0.0.1", v);
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 77]);
    };
    let mut v = vec![131, 68, 0, 104, 6, 97, 29, 90, 0, 3];
    atom("dialler@127.0.0.1", &mut v);
    v.extend_from_slice(&77u32.to_be_bytes());
    v.extend_from_slice(&n.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    pid(1, &mut v);
    pid(2, &mut v);
    v.extend_from_slice(&[104, 3]);
    atom("erlang", &mut v);
    atom("apply", &mut v);
    v.extend_from_slice(&[97, 2, 106, 106]);
    let mut f = (v.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&v);
    f
}

/// A dialler that floods `spawn_request`s the policy denies and reads none of the answers
/// (SPAWN_REPLY errors distgate writes back to it) is no longer read once those answers
/// exceed the link's budget: its writes block, distgate's memory stays bounded. When it
/// reads again, every request has its answer. Both drivers.
#[test]
fn answers_a_peer_does_not_read_stop_distgate_reading_it() {
    for d in [DriverKind::Poll, DriverKind::Uring] {
        let mut s = spec(d, Duration::from_secs(5), CA, CB);
        let deny = distgate::policy::Compiled::parse("p", "[policy.p.control]\nspawn_allow = [\"nothing:here\"]\n").unwrap();
        let reg = |n: &str| Arc::new(distgate::registry::Registry::new(n));
        s.policies.insert(0, 1, Arc::new(distgate::policy::RouteHandle::new("a", "b", Some(Arc::new(deny)), reg("a"), reg("b"))));
        let rt = Runtime::start(s).unwrap();
        let (mut dl, _tl, _reg) = established(&rt, "tflood");
        // Far more answers than the socket buffers and the 1 MiB budget hold, unless distgate
        // stops reading: then a write blocks (times out) long before.
        dl.s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let one = spawn_request_frame(0).len();
        let mut sent = 0u32;
        let blocked = loop {
            if sent as usize * one > 256 << 20 {
                break false;
            }
            let batch: Vec<u8> = (sent..sent + 1000).flat_map(spawn_request_frame).collect();
            match dl.s.write_all(&batch) {
                Ok(()) => sent += 1000,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break true,
                Err(e) => panic!("{d:?}: {e}"),
            }
        };
        assert!(blocked, "{d:?}: distgate kept reading {sent} requests whose answers nobody read");
        assert!(rt.stats().backpressure_pauses.load(Ordering::Relaxed) >= 1, "{d:?}");
        assert_eq!(rt.stats().get("close:reply_backlog") + rt.stats().links_closed.load(Ordering::Relaxed), 0, "{d:?}: the link stays");
        // Reading the answers lets distgate read the rest: one answer per request written
        // whole (the last batch may have been cut; those requests are not counted).
        dl.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut replies = 0u32;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while replies < sent {
            let n = dl.s.read(&mut chunk).unwrap_or_else(|e| panic!("{d:?}: after {replies} answers of {sent}: {e}"));
            assert!(n > 0, "{d:?}: closed after {replies} answers");
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while let Some(len) = buf.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize) {
                let Some(frame) = buf.get(at + 4..at + 4 + len) else { break };
                // SPAWN_REPLY: `{31, …}` after `131 68 <header>`.
                assert!(frame.windows(3).any(|w| w == [104, 5, 97]) && frame.windows(2).any(|w| w == [97, 31]), "{d:?}: {frame:?}");
                replies += 1;
                at += 4 + len;
            }
            buf.drain(..at);
        }
    }
}
