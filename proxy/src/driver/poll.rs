//! The mio (epoll) driver: one thread per core, edge-triggered, no locks on the forwarding path.
//!
//! Per leg: a read buffer (grown up to one maximum frame, never past it) and a write queue.
//! Frames that pass unchanged are written straight from the read buffer to the other socket;
//! only what the kernel does not take at once is copied into the other leg's queue. When that
//! queue holds more than the per-link budget, the driver stops reading the leg that feeds it
//! (backpressure) and resumes once the queue drains below half.

use super::{Cmd, CoreHandle};
use crate::link::{Chunk, Event, Leg, Link, LinkLimits, Output};
use crate::runtime::Route;
use crate::stats::Stats;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAKER: Token = Token(usize::MAX);
/// Smallest free space to read into; buffers start at this size.
const READ_CHUNK: usize = 64 * 1024;
/// Largest read: a leg whose reads keep filling the space offered reads up to this much per
/// call (fewer calls, and the partial frame left at the end of a read is moved to the front
/// once per this many bytes, not once per 64 KiB frame); it falls back as reads come short.
const READ_MAX: usize = 512 * 1024;

struct LegIo {
    sock: Option<TcpStream>,
    connected: bool,
    /// Read buffer, always initialised to its full length (zeroed once when it grows, not on
    /// every read); `filled` bytes at its front are data.
    rbuf: Vec<u8>,
    filled: usize,
    /// Free space offered to the next read: READ_CHUNK ..= the core's read cap.
    read_size: usize,
    wq: Vec<u8>,
    wq_off: usize,
    /// Not read because the other leg's queue is full.
    paused: bool,
}

impl LegIo {
    fn new(sock: Option<TcpStream>, connected: bool) -> Self {
        LegIo { sock, connected, rbuf: Vec::new(), filled: 0, read_size: READ_CHUNK, wq: Vec::new(), wq_off: 0, paused: false }
    }
    fn queued(&self) -> usize {
        self.wq.len() - self.wq_off
    }
}

struct Conn {
    link: Link,
    legs: [LegIo; 2],
    route: Arc<Route>,
    /// Set when the link asked to close after flushing.
    closing: bool,
    /// When `closing` began: a peer that never reads cannot hold the link open past
    /// `CLOSE_FLUSH`.
    closing_since: Option<Instant>,
}

enum Slot {
    Listener(TcpListener, Arc<Route>),
    Conn(Box<Conn>),
    Free,
}

struct Core {
    id: usize,
    poll: Poll,
    slots: Vec<Slot>,
    free: Vec<usize>,
    limits: LinkLimits,
    link_buffer: usize,
    stats: Arc<Stats>,
    out: Output,
    next_link: u64,
    stopping: Option<Instant>,
    /// How long, once stopping, links may take to flush their queues (`[runtime] drain_timeout`).
    drain: Duration,
}

/// Tokens: slot index × 4 + kind (0 listener, 1 down leg, 2 up leg).
fn token(slot: usize, kind: usize) -> Token {
    Token(slot * 4 + kind)
}

pub fn spawn(id: usize, limits: LinkLimits, link_buffer: usize, stats: Arc<Stats>) -> io::Result<(CoreHandle, JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = channel();
    let core = Core {
        id,
        poll,
        slots: Vec::new(),
        free: Vec::new(),
        limits,
        link_buffer,
        stats,
        out: Output::default(),
        next_link: (id as u64) << 48,
        stopping: None,
        drain: Duration::ZERO,
    };
    let j = std::thread::Builder::new().name(format!("core-{id}")).spawn(move || core.run(rx))?;
    Ok((CoreHandle::new(tx, waker), j))
}

impl Core {
    fn alloc(&mut self, s: Slot) -> usize {
        super::alloc_slot(&mut self.slots, &mut self.free, s)
    }

    fn run(mut self, rx: Receiver<Cmd>) {
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        loop {
            let timeout = if self.stopping.is_some() { Duration::from_millis(20) } else { Duration::from_millis(250) };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(core = self.id, error = %e, "poll failed; core stops");
                    for i in 0..self.slots.len() {
                        self.cut(i, "internal", &format!("its core stopped: poll failed: {e}"));
                    }
                    return;
                }
            }
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    continue;
                }
                let (slot, kind) = (t.0 / 4, t.0 % 4);
                match kind {
                    0 => self.accept(slot),
                    1 | 2 => {
                        let leg = if kind == 1 { Leg::Down } else { Leg::Up };
                        if ev.is_writable() {
                            self.writable(slot, leg);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.readable(slot, leg);
                        }
                    }
                    _ => {}
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(Cmd::Listen(l, route)) => self.add_listener(l, route),
                    Ok(Cmd::Limits(limits, link_buffer)) => (self.limits, self.link_buffer) = (limits, link_buffer),
                    Ok(Cmd::Scheduling(s)) => super::apply_scheduling(&self.stats, self.id, s),
                    Ok(Cmd::Shutdown(drain)) => self.begin_stop(drain),
                    Ok(Cmd::CloseUnrouted) => {
                        for i in 0..self.slots.len() {
                            if matches!(&self.slots[i], Slot::Conn(c) if !c.route.open.load(Ordering::Acquire)) {
                                self.cut(i, "route_removed", super::ROUTE_REMOVED);
                            }
                        }
                    }
                    Err(TryRecvError::Disconnected) => self.begin_stop(Duration::ZERO),
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            if now.duration_since(last_tick) >= Duration::from_millis(250) {
                last_tick = now;
                self.timers(now);
            }
            if let Some(since) = self.stopping {
                // Each link is closed once it is idle: nothing queued towards either peer (so
                // nothing is left to flush) and no frame streaming through it (see
                // `Link::mid_frame`); the others keep draining until they are, or until the
                // drain time is up. A link already closing is only waiting for its flush.
                let over = now.duration_since(since) >= self.drain;
                let mut open = false;
                for i in 0..self.slots.len() {
                    let Slot::Conn(c) = &self.slots[i] else { continue };
                    if over || (!c.link.mid_frame() && c.legs.iter().all(|l| l.queued() == 0)) {
                        self.cut(i, "shutdown", "distgate is stopping");
                    } else {
                        open = true;
                    }
                }
                if !open {
                    return;
                }
            }
        }
    }

    fn begin_stop(&mut self, drain: Duration) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        self.drain = drain;
        // Stop accepting: listeners go first, links drain.
        for i in 0..self.slots.len() {
            if let Slot::Listener(l, _) = &mut self.slots[i] {
                let _ = self.poll.registry().deregister(l);
                self.slots[i] = Slot::Free;
                self.free.push(i);
            }
        }
    }

    fn add_listener(&mut self, l: std::net::TcpListener, route: Arc<Route>) {
        if self.stopping.is_some() {
            return;
        }
        let mut l = TcpListener::from_std(l);
        let slot = self.alloc(Slot::Free);
        if let Err(e) = self.poll.registry().register(&mut l, token(slot, 0), Interest::READABLE) {
            tracing::error!(core = self.id, error = %e, "cannot register a proxy port");
            self.free.push(slot);
            return;
        }
        self.slots[slot] = Slot::Listener(l, route);
    }

    fn accept(&mut self, slot: usize) {
        loop {
            let Slot::Listener(l, route) = &self.slots[slot] else { return };
            let route = route.clone();
            let (mut sock, peer) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(core = self.id, error = %e, "accept failed");
                    return;
                }
            };
            if !route.open.load(Ordering::Acquire) {
                super::refuse_unrouted(&self.stats, self.id, &route.alive, Some(peer));
                continue;
            }
            let _ = sock.set_nodelay(true);
            self.next_link += 1;
            let params = route.link_params(self.next_link, self.limits);
            let c = self.alloc(Slot::Free);
            if let Err(e) = self.poll.registry().register(&mut sock, token(c, 1), Interest::READABLE | Interest::WRITABLE) {
                tracing::warn!(error = %e, "cannot register a connection");
                self.free.push(c);
                continue;
            }
            Stats::add(&self.stats.links_accepted, 1);
            Stats::add(&self.stats.links_open, 1);
            tracing::debug!(core = self.id, link = params.id, %peer, node = %route.alive, "link accepted");
            let link = Link::new(params, Instant::now());
            self.slots[c] = Slot::Conn(Box::new(Conn {
                link,
                legs: [LegIo::new(Some(sock), true), LegIo::new(None, false)],
                route,
                closing: false,
                closing_since: None,
            }));
        }
    }

    fn readable(&mut self, slot: usize, leg: Leg) {
        let budget = self.link_buffer;
        // Reads stay within a quarter of the per-link budget (two legs, two directions).
        let read_max = (budget / 4).clamp(READ_CHUNK, READ_MAX);
        let i = leg.index();
        loop {
            let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
            if super::over_budget(c.legs[1 - i].queued(), c.legs[i].queued(), budget) {
                if !c.legs[i].paused {
                    c.legs[i].paused = true;
                    Stats::add(&self.stats.backpressure_pauses, 1);
                }
                return;
            }
            let max_buf = c.link.max_frame() + 4;
            let io = &mut c.legs[i];
            if !io.connected {
                return;
            }
            let Some(sock) = io.sock.as_mut() else { return };
            // Make room: `read_size` free, growing only while a frame or a busy leg needs it.
            if io.rbuf.len() - io.filled < io.read_size {
                let want = (io.filled + io.read_size).min(max_buf.max(io.read_size));
                if want <= io.filled {
                    return; // full at the maximum: the link refuses such a frame itself
                }
                if want > io.rbuf.len() {
                    io.rbuf.resize(want, 0);
                }
            }
            let filled = io.filled;
            let offered = io.rbuf.len() - filled;
            let r = sock.read(&mut io.rbuf[filled..]);
            self.out.clear();
            match r {
                Ok(0) => {
                    c.link.on_closed(leg, "connection closed by peer", &mut self.out);
                    self.apply(slot, leg);
                    return;
                }
                Ok(n) => {
                    let t0 = Instant::now();
                    io.filled += n;
                    // A read that took all it was offered: the sender is ahead, read more at
                    // once next time; one that came back under a quarter: fall back.
                    if n == offered {
                        io.read_size = (io.read_size * 2).min(read_max);
                    } else if n < io.read_size / 4 {
                        io.read_size = (io.read_size / 2).max(READ_CHUNK);
                    }
                    let used = c.link.on_bytes(leg, &c.legs[i].rbuf[..c.legs[i].filled], t0, &mut self.out);
                    let frames = self.out.frames[i];
                    Stats::add(&self.stats.frames[i], frames);
                    Stats::add(&self.stats.streamed[i], self.out.streamed[i]);
                    self.stats.count_n("reply_held", self.out.held);
                    self.apply(slot, leg);
                    if frames > 0 {
                        self.stats.frame_time.observe(t0.elapsed().as_secs_f64());
                    }
                    let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
                    let io = &mut c.legs[i];
                    let used = used.min(io.filled);
                    // Only a partial frame left after whole ones moves to the front.
                    if used > 0 && used < io.filled {
                        io.rbuf.copy_within(used..io.filled, 0);
                    }
                    io.filled -= used;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    c.link.on_closed(leg, &e.to_string(), &mut self.out);
                    self.apply(slot, leg);
                    return;
                }
            }
        }
    }

    fn writable(&mut self, slot: usize, leg: Leg) {
        let now = Instant::now();
        let i = leg.index();
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        let io = &mut c.legs[i];
        if leg == Leg::Up && !io.connected {
            let Some(sock) = io.sock.as_ref() else { return };
            self.out.clear();
            match sock.take_error() {
                Ok(None) if sock.peer_addr().is_ok() => {
                    io.connected = true;
                    c.link.on_up_connected(now, &mut self.out);
                }
                Ok(Some(e)) | Err(e) => c.link.on_up_connect_failed(&e.to_string(), &mut self.out),
                Ok(None) => return, // not connected yet
            }
            self.apply(slot, Leg::Up);
            // The target may already have spoken.
            self.readable(slot, Leg::Up);
            return;
        }
        if let Err(e) = flush(io) {
            if c.closing {
                // Already closing: nothing more can be delivered on this leg.
                self.drop_conn(slot);
                return;
            }
            self.out.clear();
            c.link.on_closed(leg, &e.to_string(), &mut self.out);
            self.apply(slot, leg);
            return;
        }
        if c.closing && c.legs.iter().all(|l| l.queued() == 0) {
            self.drop_conn(slot);
            return;
        }
        // Resume the legs the queues were throttling.
        for l in [leg.other(), leg] {
            let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
            let j = l.index();
            if c.legs[j].paused && super::may_resume(c.legs[1 - j].queued(), c.legs[j].queued(), self.link_buffer) {
                c.legs[j].paused = false;
                self.readable(slot, l);
            }
        }
    }

    /// Carry out `self.out`: writes (borrowing from `src`'s read buffer) and events.
    fn apply(&mut self, slot: usize, src: Leg) {
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        let mut failed: Option<(Leg, String)> = None;
        for (dst, chunk) in self.out.writes.drain(..) {
            let (a, b) = c.legs.split_at_mut(1);
            let (s, d) = if dst.index() == 0 { (&b[0], &mut a[0]) } else { (&a[0], &mut b[0]) };
            let bytes: &[u8] = match &chunk {
                Chunk::Input(r) => match s.rbuf[..s.filled].get(r.clone()) {
                    Some(b) => b,
                    None => continue,
                },
                Chunk::Owned(v) => v,
            };
            let _ = src;
            Stats::add(&self.stats.bytes[dst.other().index()], bytes.len() as u64);
            if let Err(e) = write_or_queue(d, bytes) {
                failed = Some((dst, e.to_string()));
            }
        }
        let events: Vec<Event> = self.out.events.drain(..).collect();
        if let Some((leg, e)) = failed {
            c.link.on_closed(leg, &e, &mut self.out);
        }
        let mut events = events;
        events.append(&mut self.out.events);
        for ev in events {
            // Fetched per event: carrying out one (a failed dial) may have closed the link.
            let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
            match ev {
                // The same read closed the link (a send_name, then garbage): no dial.
                Event::DialUp if c.link.is_closed() => {}
                Event::DialUp => {
                    let target = *c.route.target.lock().unwrap_or_else(|p| p.into_inner());
                    let failed = match TcpStream::connect(target) {
                        Ok(mut s) => {
                            let _ = s.set_nodelay(true);
                            match self.poll.registry().register(&mut s, token(slot, 2), Interest::READABLE | Interest::WRITABLE) {
                                Ok(()) => {
                                    c.legs[1] = LegIo::new(Some(s), false);
                                    None
                                }
                                Err(e) => Some(e.to_string()),
                            }
                        }
                        Err(e) => Some(format!("{target}: {e}")),
                    };
                    if let Some(e) = failed {
                        // What the link answers (a status to down, the close) is carried out
                        // now; the events after this one still are, below, unless it closed.
                        let mut o = Output::default();
                        c.link.on_up_connect_failed(&e, &mut o);
                        self.out = o;
                        self.apply(slot, Leg::Up);
                    }
                }
                Event::Established { down_name, up_name, flags } => {
                    super::on_established(&self.stats, self.id, c.link.id(), &down_name, &up_name, flags);
                }
                Event::Close { reason, flush: want_flush } => {
                    super::on_close(&self.stats, self.id, c.link.id(), &c.route.alive, &reason);
                    for l in c.legs.iter_mut() {
                        let _ = flush(l);
                    }
                    if want_flush && c.legs.iter().any(|l| l.queued() > 0 && l.sock.is_some()) {
                        c.closing = true;
                        c.closing_since = Some(Instant::now());
                    } else {
                        self.drop_conn(slot);
                        return;
                    }
                }
            }
        }
    }

    /// Close a link for a reason of the core's own (stopping, failing): counted under `label`
    /// unless it already closed with a flush (counted then); see `super::on_cut`.
    fn cut(&mut self, slot: usize, label: &'static str, detail: &str) {
        let Some(Slot::Conn(c)) = self.slots.get(slot) else { return };
        let flushing = c.closing.then(|| c.legs.iter().map(LegIo::queued).sum());
        super::on_cut(&self.stats, self.id, c.link.id(), &c.route.alive, flushing, label, detail);
        self.drop_conn(slot);
    }

    /// Tear a link down. Its close was counted already (`super::on_close`, `super::on_cut`).
    fn drop_conn(&mut self, slot: usize) {
        let s = std::mem::replace(&mut self.slots[slot], Slot::Free);
        if let Slot::Conn(mut c) = s {
            // Counted before the sockets shut, as the io_uring driver does: a peer that sees
            // the close never reads metrics that have not caught up with it.
            Stats::add(&self.stats.links_closed, 1);
            self.stats.links_open.fetch_sub(1, Ordering::Relaxed);
            for l in c.legs.iter_mut() {
                if let Some(mut s) = l.sock.take() {
                    let _ = flush_sock(&mut s, &l.wq[l.wq_off..]);
                    let _ = self.poll.registry().deregister(&mut s);
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            }
            self.free.push(slot);
        } else {
            self.slots[slot] = s;
        }
    }

    fn timers(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { continue };
            if c.closing_since.is_some_and(|t| now.duration_since(t) > super::CLOSE_FLUSH) {
                super::on_flush_timeout(&self.stats, self.id, c.link.id(), &c.route.alive, c.legs.iter().map(LegIo::queued).sum());
                self.drop_conn(slot);
                continue;
            }
            c.legs.iter_mut().for_each(trim);
            if c.link.next_deadline().is_some_and(|d| d <= now) {
                self.out.clear();
                c.link.on_timer(now, &mut self.out);
                self.apply(slot, Leg::Down);
            }
        }
    }
}

/// Write what the kernel takes now; queue the rest.
fn write_or_queue(d: &mut LegIo, bytes: &[u8]) -> io::Result<()> {
    let mut off = 0;
    if d.queued() == 0 && d.connected {
        if let Some(s) = d.sock.as_mut() {
            while off < bytes.len() {
                match s.write(&bytes[off..]) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "peer closed")),
                    Ok(n) => off += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    if off < bytes.len() {
        if d.wq_off > 0 && d.wq_off == d.wq.len() {
            d.wq.clear();
            d.wq_off = 0;
        }
        d.wq.extend_from_slice(&bytes[off..]);
    }
    Ok(())
}

/// Write queued bytes until the kernel says stop.
fn flush(io: &mut LegIo) -> io::Result<()> {
    if !io.connected {
        return Ok(());
    }
    let Some(s) = io.sock.as_mut() else { return Ok(()) };
    while io.wq_off < io.wq.len() {
        match s.write(&io.wq[io.wq_off..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "peer closed")),
            Ok(n) => io.wq_off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if io.wq_off == io.wq.len() {
        io.wq.clear();
        io.wq_off = 0;
    }
    Ok(())
}

/// Give back the memory a burst made a leg take, once it is idle: its read buffer back to one
/// chunk once reads came short again, its empty queue's buffer released.
///
/// Why on the timer and not as soon as a buffer empties: under a steady flood a leg's
/// buffers empty and fill again many times a second, and each time memory given back was
/// taken again, as fresh pages the kernel had to fault in and zero (a fifth of the driver's
/// time in a 64 KiB flood between real nodes).
fn trim(io: &mut LegIo) {
    if io.filled == 0 && io.read_size == READ_CHUNK && io.rbuf.len() > 2 * READ_CHUNK {
        io.rbuf = vec![0; READ_CHUNK];
    }
    if io.queued() == 0 && io.wq.capacity() > 4 * READ_CHUNK {
        io.wq = Vec::new();
    }
}

fn flush_sock(s: &mut TcpStream, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        match s.write(b) {
            Ok(0) => break,
            Ok(n) => b = &b[n..],
            Err(_) => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leg a burst grew keeps its buffers while they are in use and gives them back on the
    /// timer once idle.
    #[test]
    fn an_idle_leg_gives_back_what_a_burst_grew() {
        let mut io = LegIo::new(None, true);
        io.rbuf = vec![0; READ_MAX];
        io.read_size = READ_MAX;
        io.wq = vec![7; 8 * READ_CHUNK];
        // Busy: reads still large, bytes still queued.
        trim(&mut io);
        assert_eq!((io.rbuf.len(), io.wq.len()), (READ_MAX, 8 * READ_CHUNK));
        // Reads came short again and the queue was written: back to one chunk each.
        io.read_size = READ_CHUNK;
        io.wq.clear();
        trim(&mut io);
        assert_eq!(io.rbuf.len(), READ_CHUNK);
        assert!(io.wq.capacity() <= READ_CHUNK, "{}", io.wq.capacity());
    }
}
