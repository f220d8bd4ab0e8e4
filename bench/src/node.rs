//! A Rust distribution node: the load generator and the sink.
//!
//! It does the version-6 handshake itself on both sides (connect: `send_name` → status →
//! challenge → reply → ack; accept: the mirror image), with the cookie digests of
//! [`distgate::handshake`], and then speaks framed distribution messages:
//!
//! - **pass-through** framing (`112 131 Control 131 Payload`) when `DIST_HDR_ATOM_CACHE` is not
//!   negotiated: every message is one frame, 1 MiB included;
//! - **distribution header** framing (`131 68 0 Control Payload`, an atom-cache header with no
//!   refs) when it is, and with `FRAGMENTS` a message over [`FRAGMENT_SIZE`] is sent as OTP
//!   sends it: `131 69 Seq FragId=N 0 …` then `131 70 Seq FragId=N-1 …` down to 1.
//!
//! Incoming frames are decoded by the codec's [`Decoder`] (atom cache and fragment reassembly
//! included), so whatever arrives is checked, whichever framing the peer uses. Ticks are
//! answered with ticks. The node never uses atom-cache refs when it sends, so it does not need
//! an outgoing cache.
//!
//! The node is hidden (no `PUBLISHED` flag): real nodes it talks to do not try to sync
//! `global` with it.

use crate::etf;
use distgate::epmd::{self, NodeInfo};
use distgate::handshake::{self, flag, Challenge, SendName};
use distgate_codec::control::Control;
use distgate_codec::frame::{split, Split};
use distgate_codec::message::{Decoded, Decoder, Message};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Bytes of message data per fragment (OTP uses 64 KiB pieces too).
pub const FRAGMENT_SIZE: usize = 64 << 10;

/// Largest frame the node accepts.
pub const MAX_FRAME: usize = 256 << 20;

/// The flags the node offers. `hdr_and_fragments` adds `DIST_HDR_ATOM_CACHE | FRAGMENTS`.
pub fn offered_flags(hdr_and_fragments: bool) -> u64 {
    let base = flag::MANDATORY_25
        | flag::DIST_MONITOR
        | flag::DIST_MONITOR_NAME
        | flag::SMALL_ATOM_TAGS
        | flag::UTF8_ATOMS
        | flag::SEND_SENDER
        | flag::BIG_SEQTRACE_LABELS
        | flag::EXIT_PAYLOAD
        | flag::UNLINK_ID
        | flag::MANDATORY_25_DIGEST
        | flag::UNICODE_IO
        | flag::SPAWN
        | flag::V4_NC
        | flag::ALIAS;
    if hdr_and_fragments {
        base | flag::DIST_HDR_ATOM_CACHE | flag::FRAGMENTS
    } else {
        base
    }
}

/// Who this node is.
#[derive(Clone)]
pub struct NodeConfig {
    /// Full name, `alive@host`.
    pub name: String,
    pub cookie: Vec<u8>,
    pub creation: u32,
    pub flags: u64,
    pub handshake_timeout: Duration,
}

impl NodeConfig {
    pub fn new(name: &str, cookie: &str, fragments: bool) -> NodeConfig {
        let mut c = [0u8; 4];
        let _ = getrandom_fill(&mut c);
        NodeConfig {
            name: name.to_string(),
            cookie: cookie.as_bytes().to_vec(),
            creation: (u32::from_be_bytes(c) | 0x100).max(4),
            flags: offered_flags(fragments),
            handshake_timeout: Duration::from_secs(10),
        }
    }
    pub fn alive(&self) -> &str {
        self.name.split('@').next().unwrap_or(&self.name)
    }
}

fn getrandom_fill(b: &mut [u8]) -> Option<()> {
    // A challenge-grade random number is only needed for challenges; distgate's helper gives
    // one u32 at a time.
    for chunk in b.chunks_mut(4) {
        let r = handshake::random_challenge()?.to_be_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    Some(())
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_hs(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// One established distribution connection.
pub struct DistConn {
    stream: TcpStream,
    /// The peer's full name and creation, from the handshake.
    pub peer: String,
    pub peer_creation: u32,
    /// The negotiated flags (ours ∩ theirs).
    pub flags: u64,
    pub me: String,
    pub my_creation: u32,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    decoder: Decoder,
    next_frag_seq: u64,
    /// Ticks received (and answered).
    pub ticks: u64,
}

impl DistConn {
    /// Dial `addr` and do the connect side of the handshake.
    pub fn connect(addr: SocketAddr, cfg: &NodeConfig) -> io::Result<DistConn> {
        // Many connections at once can overflow a listener's backlog (EAGAIN on loopback):
        // retry a few times before calling it a failure.
        let mut tries = 0;
        let mut s = loop {
            match TcpStream::connect_timeout(&addr, cfg.handshake_timeout) {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < 50 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(cfg.handshake_timeout))?;
        let mut out = Vec::new();
        SendName { flags: cfg.flags, creation: Some(cfg.creation), name: cfg.name.clone() }.encode(cfg.creation, &mut out);
        s.write_all(&out)?;
        let status = read_hs(&mut s)?;
        match status.as_slice() {
            b"sok" | b"sok_simultaneous" => {}
            other => return Err(bad(format!("handshake status {:?}", String::from_utf8_lossy(other)))),
        }
        let ch = Challenge::parse(&read_hs(&mut s)?).map_err(|e| bad(e.0))?;
        let mine = handshake::random_challenge().ok_or_else(|| bad("no entropy"))?;
        out.clear();
        handshake::encode_reply(mine, &handshake::digest(&cfg.cookie, ch.challenge), &mut out);
        s.write_all(&out)?;
        let ack = handshake::parse_ack(&read_hs(&mut s)?).map_err(|e| bad(e.0))?;
        if !handshake::digest_eq(&ack, &handshake::digest(&cfg.cookie, mine)) {
            return Err(bad("the peer's ack digest is wrong (cookie mismatch)"));
        }
        Ok(DistConn::established(s, ch.name, ch.creation, cfg.flags & ch.flags, cfg))
    }

    /// The accept side of the handshake on an accepted socket.
    pub fn accept(mut s: TcpStream, cfg: &NodeConfig) -> io::Result<DistConn> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(cfg.handshake_timeout))?;
        let sn = SendName::parse(&read_hs(&mut s)?).map_err(|e| bad(e.0))?;
        let mut out = Vec::new();
        let mut peer_creation = sn.creation;
        handshake::encode_status(b"ok", &mut out);
        let mine = handshake::random_challenge().ok_or_else(|| bad("no entropy"))?;
        Challenge { flags: cfg.flags, challenge: mine, creation: cfg.creation, name: cfg.name.clone() }.encode(&mut out);
        s.write_all(&out)?;
        let mut msg = read_hs(&mut s)?;
        if msg.first() == Some(&b'c') {
            // The old 'n' send_name is followed by a complement carrying the creation.
            let (_flags_hi, cr) = handshake::parse_complement(&msg).map_err(|e| bad(e.0))?;
            peer_creation = Some(cr);
            msg = read_hs(&mut s)?;
        }
        let (theirs, digest) = handshake::parse_reply(&msg).map_err(|e| bad(e.0))?;
        if !handshake::digest_eq(&digest, &handshake::digest(&cfg.cookie, mine)) {
            return Err(bad(format!("{} sent a wrong digest (cookie mismatch)", sn.name)));
        }
        out.clear();
        handshake::encode_ack(&handshake::digest(&cfg.cookie, theirs), &mut out);
        s.write_all(&out)?;
        Ok(DistConn::established(s, sn.name, peer_creation.unwrap_or(0), cfg.flags & sn.flags, cfg))
    }

    fn established(s: TcpStream, peer: String, peer_creation: u32, flags: u64, cfg: &NodeConfig) -> DistConn {
        let _ = s.set_read_timeout(None);
        DistConn {
            stream: s,
            peer,
            peer_creation,
            flags,
            me: cfg.name.clone(),
            my_creation: cfg.creation,
            rbuf: vec![0; 256 << 10],
            rstart: 0,
            rend: 0,
            decoder: Decoder::new(Default::default(), distgate_codec::message::FragLimits { max_bytes: MAX_FRAME, max_sequences: 64 }),
            next_frag_seq: 1,
            ticks: 0,
        }
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(t)
    }

    /// Whether messages go out with the distribution header (and fragments).
    pub fn framing(&self) -> &'static str {
        match (self.flags & flag::DIST_HDR_ATOM_CACHE != 0, self.flags & flag::FRAGMENTS != 0) {
            (true, true) => "dist-header+fragments",
            (true, false) => "dist-header",
            _ => "pass-through",
        }
    }

    /// Append the frames of one message (control and payload terms without version bytes).
    /// Returns where the payload term starts in `out` (inside the first frame).
    pub fn encode(&mut self, ctrl: &[u8], payload: &[u8], out: &mut Vec<u8>) -> usize {
        encode_message(self.flags, &mut self.next_frag_seq, ctrl, payload, out)
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Read until one whole message arrives and hand it to `f` (with the peer's name). Ticks
    /// are answered on the way; fragments are reassembled by the decoder.
    pub fn recv<R>(&mut self, f: impl FnOnce(&Message<'_>, &str) -> R) -> io::Result<R> {
        loop {
            // Split what is buffered.
            while self.rend > self.rstart {
                let avail = &self.rbuf[self.rstart..self.rend];
                match split(avail, MAX_FRAME).map_err(|e| bad(e.to_string()))? {
                    Split::Need(n) => {
                        let want = self.rend - self.rstart + n;
                        if want > self.rbuf.len() - self.rstart {
                            // Make room: move the partial frame to the front, grow if needed.
                            self.rbuf.copy_within(self.rstart..self.rend, 0);
                            self.rend -= self.rstart;
                            self.rstart = 0;
                            if want > self.rbuf.len() {
                                self.rbuf.resize(want.next_power_of_two(), 0);
                            }
                        }
                        break;
                    }
                    Split::Tick => {
                        self.rstart += 4;
                        self.ticks += 1;
                        self.stream.write_all(&[0, 0, 0, 0])?;
                    }
                    Split::Frame { len } => {
                        let at = self.rstart + 4;
                        self.rstart = at + len;
                        let frame = &self.rbuf[at..at + len];
                        match self.decoder.decode(frame).map_err(|e| bad(format!("from {}: {e}", self.peer)))? {
                            Decoded::Tick | Decoded::Fragment { .. } | Decoded::Streamed { .. } => {}
                            Decoded::Message(m) => return Ok(f(&m, &self.peer)),
                        }
                    }
                }
            }
            if self.rstart == self.rend {
                self.rstart = 0;
                self.rend = 0;
            }
            let n = self.stream.read(&mut self.rbuf[self.rend..])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} closed the connection", self.peer)));
            }
            self.rend += n;
        }
    }
}

/// Frame one message for a connection with negotiated `flags`. See the module docs.
pub fn encode_message(flags: u64, frag_seq: &mut u64, ctrl: &[u8], payload: &[u8], out: &mut Vec<u8>) -> usize {
    let start = out.len();
    if flags & flag::DIST_HDR_ATOM_CACHE == 0 {
        let len = 1 + 1 + ctrl.len() + 1 + payload.len();
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&[112, 131]);
        out.extend_from_slice(ctrl);
        out.push(131);
        let at = out.len();
        out.extend_from_slice(payload);
        return at;
    }
    let total = ctrl.len() + payload.len();
    if flags & flag::FRAGMENTS == 0 || total <= FRAGMENT_SIZE {
        let len = 3 + total;
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&[131, 68, 0]);
        out.extend_from_slice(ctrl);
        let at = out.len();
        out.extend_from_slice(payload);
        return at;
    }
    // Fragments: the concatenation ctrl ++ payload cut into FRAGMENT_SIZE pieces.
    let seq = *frag_seq;
    *frag_seq += 1;
    let n = total.div_ceil(FRAGMENT_SIZE) as u64;
    let mut payload_at = 0;
    let mut pos = 0usize;
    for i in 0..n {
        let frag_id = n - i;
        let take = FRAGMENT_SIZE.min(total - pos);
        let hdr = if i == 0 { 2 + 8 + 8 + 1 } else { 2 + 8 + 8 };
        out.extend_from_slice(&((hdr + take) as u32).to_be_bytes());
        out.extend_from_slice(&[131, if i == 0 { 69 } else { 70 }]);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&frag_id.to_be_bytes());
        if i == 0 {
            out.push(0);
        }
        // Copy [pos, pos + take) of ctrl ++ payload.
        let mut p = pos;
        let end = pos + take;
        while p < end {
            if p < ctrl.len() {
                let e = end.min(ctrl.len());
                out.extend_from_slice(&ctrl[p..e]);
                p = e;
            } else {
                if p == ctrl.len() {
                    payload_at = out.len();
                }
                out.extend_from_slice(&payload[p - ctrl.len()..end - ctrl.len()]);
                p = end;
            }
        }
        pos = end;
    }
    debug_assert!(payload_at > start);
    payload_at
}

/// `{6, From, '', ToName}`: REG_SEND.
pub fn reg_send(from_node: &str, from_id: u32, creation: u32, to_name: &str) -> Vec<u8> {
    let mut c = Vec::new();
    etf::tuple(&mut c, 4);
    etf::small_int(&mut c, 6);
    etf::pid(&mut c, from_node, from_id, 0, creation);
    etf::atom(&mut c, "");
    etf::atom(&mut c, to_name);
    c
}

/// `{2, '', To}`: SEND.
pub fn send_to_pid(node: &str, id: u32, serial: u32, creation: u32) -> Vec<u8> {
    let mut c = Vec::new();
    etf::tuple(&mut c, 3);
    etf::small_int(&mut c, 2);
    etf::atom(&mut c, "");
    etf::pid(&mut c, node, id, serial, creation);
    c
}

/// The registered names the Rust sink answers to.
pub const ECHO: &str = "dg_echo";
pub const FLOOD: &str = "dg_flood";

/// What the sink saw, across all its connections.
#[derive(Default)]
pub struct SinkStats {
    pub connections: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Connections closed before sending anything (readiness probes of the proxies).
    pub probes: AtomicU64,
    pub flood_msgs: AtomicU64,
    pub flood_bytes: AtomicU64,
    pub echoed: AtomicU64,
    pub errors: Mutex<Vec<String>>,
}

/// The Rust sink: accepts distribution connections, echoes messages sent to [`ECHO`] back to
/// their sender (same payload), counts messages sent to [`FLOOD`].
pub struct Sink {
    pub addr: SocketAddr,
    pub cfg: NodeConfig,
    pub stats: Arc<SinkStats>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sink {
    pub fn start(cfg: NodeConfig) -> io::Result<Sink> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let stats = Arc::new(SinkStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st, sp) = (cfg.clone(), stats.clone(), stop.clone());
        let thread = thread::Builder::new().name("sink-accept".into()).spawn(move || {
            for conn in l.incoming() {
                if sp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(s) = conn else { continue };
                let (c, st) = (c.clone(), st.clone());
                let _ = thread::Builder::new().name("sink-conn".into()).spawn(move || serve(s, &c, &st));
            }
        })?;
        Ok(Sink { addr, cfg, stats, stop, thread: Some(thread) })
    }

    /// Register with an EPMD (real or distgate's responder) under this node's alive name; the
    /// registration lasts while the returned stream is open.
    pub fn register(&self, epmd_addr: SocketAddr) -> io::Result<TcpStream> {
        register_node(epmd_addr, self.cfg.alive(), self.addr.port(), epmd::HIDDEN_NODE)
    }

    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.stats.errors.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// ALIVE2 for `alive` listening on `port` (any node: the Rust sink, or a real node started
/// without an EPMD of its own).
pub fn register_node(epmd_addr: SocketAddr, alive: &str, port: u16, node_type: u8) -> io::Result<TcpStream> {
    let info = NodeInfo { port, node_type, protocol: 0, highest: 6, lowest: 5, name: alive.to_string(), extra: vec![] };
    epmd::alive2(epmd_addr, &info, Duration::from_secs(5)).map(|(s, _creation)| s)
}

fn serve(s: TcpStream, cfg: &NodeConfig, st: &SinkStats) {
    let mut peek = [0u8; 1];
    match s.peek(&mut peek) {
        Ok(0) | Err(_) => {
            st.probes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(_) => {}
    }
    let mut c = match DistConn::accept(s, cfg) {
        Ok(c) => c,
        Err(e) => {
            st.handshake_failures.fetch_add(1, Ordering::Relaxed);
            st.errors.lock().unwrap_or_else(|p| p.into_inner()).push(format!("sink handshake: {e}"));
            return;
        }
    };
    st.connections.fetch_add(1, Ordering::Relaxed);
    let mut reply = Vec::with_capacity(1 << 16);
    let flags = c.flags;
    let mut frag_seq = 1u64;
    // Counted locally and published before every reply and at the end, so connections do
    // not contend on the shared counters per message, and a flood's count is complete when
    // the echo that ends it goes out.
    let (mut msgs, mut bytes) = (0u64, 0u64);
    let publish = |msgs: &mut u64, bytes: &mut u64| {
        st.flood_msgs.fetch_add(std::mem::take(msgs), Ordering::SeqCst);
        st.flood_bytes.fetch_add(std::mem::take(bytes), Ordering::SeqCst);
    };
    loop {
        reply.clear();
        let r = c.recv(|m, peer| {
            let (from, to_name) = match m.control {
                Control::RegSend { from, to_name, .. } => (Some(from), to_name.as_atom()),
                Control::SendSender { from, to, .. } => (Some(from), to.as_atom()),
                _ => (None, None),
            };
            let payload = m.payload.clone().map(|r| &m.bytes[r]).unwrap_or(&[]);
            match (from, to_name) {
                (Some(p), Some(n)) if n.is(ECHO) => {
                    let node = p.node.bytes().and_then(|b| std::str::from_utf8(b).ok()).unwrap_or(peer);
                    let ctrl = send_to_pid(node, p.id, p.serial, p.creation);
                    encode_message(flags, &mut frag_seq, &ctrl, payload, &mut reply);
                    st.echoed.fetch_add(1, Ordering::Relaxed);
                }
                (_, Some(n)) if n.is(FLOOD) => {
                    msgs += 1;
                    bytes += payload.len() as u64 + 1;
                }
                _ => {}
            }
        });
        if !reply.is_empty() || r.is_err() {
            publish(&mut msgs, &mut bytes);
        }
        match r {
            Ok(()) => {
                if !reply.is_empty() && c.write_all(&reply).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(e) => {
                st.errors.lock().unwrap_or_else(|p| p.into_inner()).push(format!("sink: {e}"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_reassemble_in_the_codec() {
        let ctrl = reg_send("a@h", 1, 5, ECHO);
        let payload = etf::PayloadKind::Bin1m.encode("a@h");
        for fl in [offered_flags(true), offered_flags(false)] {
            let mut out = Vec::new();
            let mut seq = 9;
            let at = encode_message(fl, &mut seq, &ctrl, &payload, &mut out);
            assert_eq!(&out[at..at + 7], &payload[..7]);
            let mut d = Decoder::new(Default::default(), Default::default());
            let mut p = 0;
            let mut got = None;
            let mut frames = 0;
            while p < out.len() {
                let Split::Frame { len } = split(&out[p..], MAX_FRAME).unwrap() else { panic!() };
                frames += 1;
                if let Decoded::Message(m) = d.decode(&out[p + 4..p + 4 + len]).unwrap() {
                    got = Some(m.payload.clone().map(|r| m.bytes[r].to_vec()).unwrap());
                }
                p += 4 + len;
            }
            assert_eq!(got.unwrap(), payload);
            assert_eq!(frames, if fl & flag::FRAGMENTS != 0 { 17 } else { 1 });
        }
    }
}
