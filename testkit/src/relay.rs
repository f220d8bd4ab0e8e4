//! A recording TCP relay for Erlang distribution connections.
//!
//! [`Relay::start`] listens on `127.0.0.1:0`; each accepted connection (from
//! the dialling node, "A") is relayed to the target (the accepting node,
//! "B") byte for byte, in both directions, on two plain threads. Everything
//! is recorded and split at the end of the handshake:
//!
//! * handshake messages carry a 2-byte length: A→B send_name (`N`/`n`),
//!   maybe a status answer (`s`), complement (`c`), challenge_reply (`r`);
//!   B→A status (`s`), challenge (`N`), challenge_ack (`a`);
//! * each direction switches to 4-byte-length frames right after its last
//!   handshake message: A→B after `r`, B→A after `a`.
//!
//! The relay only observes; it never alters or delays a byte beyond a copy.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What one relayed connection carried. "a" is the dialler, "b" the target.
/// Each vector holds raw bytes, length prefixes included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    /// Post-handshake A→B bytes: 4-byte-length frames (length 0 = tick).
    pub a_to_b: Vec<u8>,
    /// Post-handshake B→A bytes: 4-byte-length frames (length 0 = tick).
    pub b_to_a: Vec<u8>,
    /// A→B handshake messages, each with its 2-byte length.
    pub handshake_a_to_b: Vec<u8>,
    /// B→A handshake messages, each with its 2-byte length.
    pub handshake_b_to_a: Vec<u8>,
}

impl Capture {
    /// The A→B frames (payloads without their length; ticks are empty).
    pub fn frames_a_to_b(&self) -> Result<Vec<&[u8]>, FrameError> {
        split_frames(&self.a_to_b)
    }

    /// The B→A frames (payloads without their length; ticks are empty).
    pub fn frames_b_to_a(&self) -> Result<Vec<&[u8]>, FrameError> {
        split_frames(&self.b_to_a)
    }

    /// The A→B handshake messages (without their length; first byte = tag).
    pub fn handshake_messages_a_to_b(&self) -> Result<Vec<&[u8]>, FrameError> {
        split_handshake(&self.handshake_a_to_b)
    }

    /// The B→A handshake messages (without their length; first byte = tag).
    pub fn handshake_messages_b_to_a(&self) -> Result<Vec<&[u8]>, FrameError> {
        split_handshake(&self.handshake_b_to_a)
    }
}

/// A length prefix that promises more bytes than there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// Offset of the offending length prefix.
    pub offset: usize,
    /// Bytes the prefix (plus the prefix itself) claims.
    pub needed: usize,
    /// Bytes actually left from `offset`.
    pub available: usize,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "truncated frame at offset {}: needs {} bytes, {} left",
            self.offset, self.needed, self.available
        )
    }
}

impl std::error::Error for FrameError {}

/// Splits 4-byte-length frames, requiring them to end exactly at the end.
pub fn split_frames(bytes: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    split_prefixed(bytes, 4)
}

/// Splits 2-byte-length handshake messages, requiring an exact end.
pub fn split_handshake(bytes: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    split_prefixed(bytes, 2)
}

fn split_prefixed(bytes: &[u8], width: usize) -> Result<Vec<&[u8]>, FrameError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let available = bytes.len() - pos;
        let err = |needed| FrameError {
            offset: pos,
            needed,
            available,
        };
        if available < width {
            return Err(err(width));
        }
        let len = bytes[pos..pos + width]
            .iter()
            .fold(0usize, |n, &b| n << 8 | b as usize);
        if available - width < len {
            return Err(err(width + len));
        }
        out.push(&bytes[pos + width..pos + width + len]);
        pos += width + len;
    }
    Ok(out)
}

/// Which way bytes flow, and the handshake tag after which that direction
/// switches to 4-byte frames.
#[derive(Clone, Copy, Debug)]
enum Dir {
    AToB,
    BToA,
}

impl Dir {
    fn last_handshake_tag(self) -> u8 {
        match self {
            Dir::AToB => b'r', // challenge_reply
            Dir::BToA => b'a', // challenge_ack
        }
    }
}

/// Per-connection recording state.
#[derive(Default)]
struct Conn {
    capture: Capture,
    /// Per direction (index: A→B 0, B→A 1): parse offset into the handshake
    /// bytes, and whether the direction has switched to frames.
    hs_pos: [usize; 2],
    framed: [bool; 2],
    /// Per direction: copying finished (EOF or error).
    done: [bool; 2],
}

impl Conn {
    fn record(&mut self, dir: Dir, data: &[u8]) {
        let i = dir as usize;
        let (hs, post) = match dir {
            Dir::AToB => (&mut self.capture.handshake_a_to_b, &mut self.capture.a_to_b),
            Dir::BToA => (&mut self.capture.handshake_b_to_a, &mut self.capture.b_to_a),
        };
        if self.framed[i] {
            post.extend_from_slice(data);
            return;
        }
        // Still in the handshake: append, then walk the complete 2-byte
        // messages; once the direction's last one is seen, whatever follows
        // it is the start of the framed stream.
        hs.extend_from_slice(data);
        let mut pos = self.hs_pos[i];
        while hs.len() - pos >= 2 {
            let len = u16::from_be_bytes([hs[pos], hs[pos + 1]]) as usize;
            if hs.len() - pos - 2 < len {
                break;
            }
            let tag = if len > 0 { Some(hs[pos + 2]) } else { None };
            pos += 2 + len;
            if tag == Some(dir.last_handshake_tag()) {
                post.extend_from_slice(&hs[pos..]);
                hs.truncate(pos);
                self.framed[i] = true;
                break;
            }
        }
        self.hs_pos[i] = pos;
    }
}

#[derive(Default)]
struct State {
    conns: Vec<Conn>,
    /// Clones of every live socket, so dropping the relay can cut them.
    sockets: Vec<TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A copier thread cannot leave State half-updated in a way that
        // matters to a reader, so recover from poisoning.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running relay. Dropping it stops accepting and cuts live connections.
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on `127.0.0.1:0` and relays every accepted connection to
    /// `target`.
    pub fn start(target: SocketAddr) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let acceptor = thread::spawn(move || accept_loop(listener, target, s));
        Ok(Relay {
            addr,
            target,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where to dial the relay.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// Snapshot of connection `index` (in accept order) so far.
    pub fn capture(&self, index: usize) -> Option<Capture> {
        self.shared
            .lock()
            .conns
            .get(index)
            .map(|c| c.capture.clone())
    }

    /// Snapshots of all connections so far.
    pub fn captures(&self) -> Vec<Capture> {
        self.shared
            .lock()
            .conns
            .iter()
            .map(|c| c.capture.clone())
            .collect()
    }

    /// Whether both directions of connection `index` have finished.
    pub fn is_closed(&self, index: usize) -> bool {
        self.shared
            .lock()
            .conns
            .get(index)
            .is_some_and(|c| c.done == [true, true])
    }

    /// Waits until at least `n` connections were accepted; false on timeout.
    pub fn wait_for_connections(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |st| st.conns.len() >= n)
    }

    /// Waits until at least one connection was accepted and every accepted
    /// connection is closed in both directions; false on timeout.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |st| {
            !st.conns.is_empty() && st.conns.iter().all(|c| c.done == [true, true])
        })
    }

    fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if cond(&st) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = match self.shared.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // accept() has no timeout: wake it with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        for s in self.shared.lock().sockets.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(a) = incoming else {
            // E.g. out of file descriptors: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        // Dial the target only now, so each capture is one A↔B connection.
        let b = match TcpStream::connect_timeout(&target, Duration::from_secs(10)) {
            Ok(b) => b,
            Err(_) => {
                let _ = a.shutdown(Shutdown::Both);
                let mut st = shared.lock();
                st.conns.push(Conn {
                    done: [true, true],
                    ..Conn::default()
                });
                shared.changed.notify_all();
                continue;
            }
        };
        // Distribution traffic is latency-sensitive (ticks, handshakes).
        let _ = a.set_nodelay(true);
        let _ = b.set_nodelay(true);
        let clones = (a.try_clone(), b.try_clone(), a.try_clone(), b.try_clone());
        let (Ok(a_read), Ok(b_write), Ok(a_keep), Ok(b_keep)) = clones else {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
            continue;
        };
        let index = {
            let mut st = shared.lock();
            st.conns.push(Conn::default());
            st.sockets.push(a_keep);
            st.sockets.push(b_keep);
            shared.changed.notify_all();
            st.conns.len() - 1
        };
        let s1 = Arc::clone(&shared);
        let s2 = Arc::clone(&shared);
        thread::spawn(move || copy(a_read, b_write, Dir::AToB, index, s1));
        thread::spawn(move || copy(b, a, Dir::BToA, index, s2));
    }
}

/// Copies `from` → `to`, recording, until EOF or an error on either side;
/// then half-closes `to` so the peer sees the same EOF the relay saw.
fn copy(mut from: TcpStream, mut to: TcpStream, dir: Dir, index: usize, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 64 * 1024];
    let clean_eof = loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        };
        {
            let mut st = shared.lock();
            if let Some(c) = st.conns.get_mut(index) {
                c.record(dir, &buf[..n]);
            }
            shared.changed.notify_all();
        }
        if to.write_all(&buf[..n]).is_err() {
            break false;
        }
    };
    if clean_eof {
        let _ = to.shutdown(Shutdown::Write);
    } else {
        // A reset or write failure: tear down both sides, like a dead link.
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    }
    let mut st = shared.lock();
    if let Some(c) = st.conns.get_mut(index) {
        c.done[dir as usize] = true;
    }
    shared.changed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg2(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn handshake_split_byte_by_byte() {
        // A→B: send_name, challenge_reply, then a tick and a frame; fed one
        // byte at a time to exercise partial messages.
        let mut stream = msg2(b"Nname");
        stream.extend(msg2(b"r1234digest"));
        let post = [0, 0, 0, 0, 0, 0, 0, 2, 112, 131];
        stream.extend_from_slice(&post);
        let mut c = Conn::default();
        for b in &stream {
            c.record(Dir::AToB, std::slice::from_ref(b));
        }
        assert_eq!(c.capture.a_to_b, post);
        assert_eq!(c.capture.handshake_messages_a_to_b().unwrap().len(), 2);
        assert_eq!(
            c.capture.frames_a_to_b().unwrap(),
            vec![&[][..], &[112, 131][..]]
        );

        // B→A in one chunk: status, challenge, ack, frame.
        let mut stream = msg2(b"sok");
        stream.extend(msg2(b"Nchallenge"));
        stream.extend(msg2(b"adigest"));
        stream.extend_from_slice(&[0, 0, 0, 1, 9]);
        let mut c = Conn::default();
        c.record(Dir::BToA, &stream);
        assert_eq!(c.capture.b_to_a, [0, 0, 0, 1, 9]);
        assert_eq!(c.capture.handshake_messages_b_to_a().unwrap().len(), 3);
    }

    #[test]
    fn frames_must_end_exactly() {
        assert!(split_frames(&[0, 0, 0, 2, 1]).is_err());
        assert!(split_frames(&[0, 0]).is_err());
        assert_eq!(split_frames(&[]).unwrap().len(), 0);
    }
}
