// Each target uses part of the harness.
#![allow(dead_code)]
//! A driver for a `distgate::link::Link` as the real ones (`proxy/src/driver`) use it: per-leg
//! pending buffers handed in again with more bytes appended, drained by what the link
//! consumed, and its writes carried out in order. It checks every answer against what a
//! driver relies on (see `Harness::apply`) and keeps, per leg, the bytes written to it.
use distgate::link::{Chunk, Event, Leg, Link, Output};
use std::time::Instant;

/// Bytes handed in per leg before the run stops: the link may hold up to a frame of them in
/// the pending buffer, so this bounds the harness's memory.
pub const FEED_CAP: usize = 1 << 20;

pub struct Harness {
    pub link: Link,
    pub now: Instant,
    /// Received on each leg and not yet consumed by the link (index: `Leg::index`).
    pub pending: [Vec<u8>; 2],
    /// Bytes handed in per leg so far (for `FEED_CAP`).
    pub fed: [usize; 2],
    /// A Close event was seen.
    pub closed: bool,
    /// The link asked for the up leg to be dialled and the driver has not answered yet.
    pub dial_pending: bool,
    /// The up leg's connection exists (bytes may arrive on it).
    pub up_connected: bool,
    pub established: bool,
    out: Output,
}

/// One write as the driver carries it out: the leg and the bytes, and whether the link owned
/// them (built them itself) or borrowed them from the input.
pub struct Write<'a> {
    pub leg: Leg,
    pub bytes: &'a [u8],
    pub owned: bool,
}

impl Harness {
    pub fn new(link: Link, now: Instant) -> Self {
        Harness {
            link,
            now,
            pending: [Vec::new(), Vec::new()],
            fed: [0; 2],
            closed: false,
            dial_pending: false,
            up_connected: false,
            established: false,
            out: Output::default(),
        }
    }

    /// `bytes` arrived on `leg`: append them to what is pending there and hand it all in.
    /// False when the leg's feed cap is reached (nothing is handed in).
    pub fn feed(&mut self, leg: Leg, bytes: &[u8], sink: &mut dyn FnMut(Write<'_>)) -> bool {
        let i = leg.index();
        if self.fed[i] + bytes.len() > FEED_CAP {
            return false;
        }
        self.fed[i] += bytes.len();
        self.pending[i].extend_from_slice(bytes);
        self.out.clear();
        let buf = std::mem::take(&mut self.pending[i]);
        let used = self.link.on_bytes(leg, &buf, self.now, &mut self.out);
        assert!(used <= buf.len(), "consumed {used} of {} bytes", buf.len());
        self.apply(Some((leg, &buf, used)), sink);
        self.pending[i] = buf;
        self.pending[i].drain(..used);
        true
    }

    /// The driver moved `n` opaque bytes (`Link::opaque_pending`) of `leg` to the other leg
    /// itself, as a splicing driver does (the caller has delivered them). What the link
    /// writes then (answers held for that frame) goes to `sink`.
    pub fn pass(&mut self, leg: Leg, n: usize, sink: &mut dyn FnMut(Write<'_>)) {
        assert!(n <= self.link.opaque_pending(leg));
        self.fed[leg.index()] += n;
        self.out.clear();
        self.link.on_passed(leg, n, self.now, &mut self.out);
        self.apply(None, sink);
    }

    /// The up connection is established (after `Event::DialUp`).
    pub fn connect_up(&mut self, sink: &mut dyn FnMut(Write<'_>)) {
        self.dial_pending = false;
        self.up_connected = true;
        self.out.clear();
        self.link.on_up_connected(self.now, &mut self.out);
        self.apply(None, sink);
    }

    /// The up connection failed (after `Event::DialUp`).
    pub fn fail_up(&mut self, sink: &mut dyn FnMut(Write<'_>)) {
        self.dial_pending = false;
        self.out.clear();
        self.link.on_up_connect_failed("refused", &mut self.out);
        self.apply(None, sink);
    }

    /// Check one answer and carry it out. `input`: the leg and slice just handed in, and
    /// how much of it the link consumed.
    fn apply(&mut self, input: Option<(Leg, &[u8], usize)>, sink: &mut dyn FnMut(Write<'_>)) {
        if self.closed {
            // The driver closes both legs on Close: nothing may be written after it.
            assert!(self.out.writes.is_empty(), "writes after Close: {:?}", self.out.writes);
        }
        for (dst, chunk) in &self.out.writes {
            let w = match chunk {
                Chunk::Owned(b) => Write { leg: *dst, bytes: b, owned: true },
                Chunk::Input(r) => {
                    let Some((src, buf, used)) = input else { panic!("input range {r:?} without input") };
                    // A range of the slice just handed in, of bytes the link consumed (an
                    // unconsumed byte is handed in again and would be written twice),
                    // passing to the other leg.
                    assert!(r.start <= r.end && r.end <= used, "range {r:?}, consumed {used} of {}", buf.len());
                    assert_eq!(*dst, src.other(), "input range written back to its own leg");
                    Write { leg: *dst, bytes: &buf[r.clone()], owned: false }
                }
            };
            if w.leg == Leg::Up {
                // Nothing can be written to a leg that is not connected.
                assert!(self.up_connected, "write to up before it was connected");
            }
            sink(w);
        }
        for ev in &self.out.events {
            match ev {
                Event::DialUp => {
                    assert!(!self.dial_pending && !self.up_connected, "second DialUp");
                    self.dial_pending = true;
                }
                Event::Established { .. } => {
                    assert!(!self.established, "second Established");
                    self.established = true;
                }
                Event::Close { .. } => {
                    assert!(!self.closed, "second Close");
                    self.closed = true;
                }
            }
        }
        assert_eq!(self.closed, self.link.is_closed());
    }
}
