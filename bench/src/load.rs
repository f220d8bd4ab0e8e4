//! The load generator: ping-pong and flood from Rust nodes to the Rust sink, over N
//! connections (a thread and a node name per connection).

use crate::etf::{self, PayloadKind};
use crate::node::{reg_send, DistConn, NodeConfig, Sink, ECHO, FLOOD};
use distgate_codec::term::{Skip, Walker};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// One message in flight per connection; the sink echoes it; round-trip latency.
    PingPong,
    /// As many messages as the connection takes; throughput.
    Flood,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::PingPong => "ping-pong",
            Scenario::Flood => "flood",
        }
    }
    pub fn parse(s: &str) -> Option<Scenario> {
        match s {
            "ping-pong" | "pingpong" | "ping_pong" => Some(Scenario::PingPong),
            "flood" => Some(Scenario::Flood),
            _ => None,
        }
    }
}

/// When a cell stops: after `duration`, or after `max_msgs` messages per connection.
#[derive(Debug, Clone, Copy)]
pub struct Stop {
    pub duration: Duration,
    pub max_msgs: Option<u64>,
}

/// What one cell (one scenario × payload × connections × target, one repetition) measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Messages delivered (ping-pong: round trips).
    pub msgs: u64,
    /// Size of the payload term (`term_to_binary` size, version byte included).
    pub payload_bytes: u64,
    pub elapsed: Duration,
    /// Round-trip times in nanoseconds (ping-pong only).
    pub hist: Option<Histogram<u64>>,
    /// Messages the sink counted, when it can tell (flood).
    pub sink_msgs: Option<u64>,
    pub framing: String,
    pub errors: Vec<String>,
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("histogram bounds")
}

struct ConnResult {
    msgs: u64,
    elapsed: Duration,
    hist: Option<Histogram<u64>>,
    framing: String,
    error: Option<String>,
    /// What the sink said it counted (real sink: the `{count, N}` answer).
    sink_count: Option<u64>,
}

/// Which sink the Rust load generator talks to, and so which message protocol.
#[derive(Clone, Copy)]
pub enum SinkProto<'a> {
    /// The Rust sink: REG_SEND to `dg_echo` (echoed) / `dg_flood` (counted).
    Rust(&'a Sink),
    /// A real node's `dg_sink` (bench/erl): `{ping, From, P}` → `{pong, P}`, `{flood, P}`,
    /// `{done, From}` → `{count, N}`.
    Erl,
}

/// Run one Rust cell against `addr` (the sink directly or a proxy in front of it).
#[allow(clippy::too_many_arguments)]
pub fn run_rust(
    addr: SocketAddr,
    sink: SinkProto<'_>,
    tag: &str,
    scenario: Scenario,
    payload: PayloadKind,
    conns: usize,
    stop: Stop,
    cookie: &str,
    fragments: bool,
) -> Measured {
    let before = match sink {
        SinkProto::Rust(s) => s.stats.flood_msgs.load(Ordering::SeqCst),
        SinkProto::Erl => 0,
    };
    let erl = matches!(sink, SinkProto::Erl);
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut threads = Vec::new();
    for i in 0..conns {
        let cfg = NodeConfig::new(&format!("rl_{tag}_{i}@127.0.0.1"), cookie, fragments);
        let b = barrier.clone();
        threads.push(
            thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || one_conn(addr, cfg, i as u32 + 1, erl, scenario, payload, stop, &b))
                .expect("thread"),
        );
    }
    barrier.wait();
    // Wall time from the common start to the last connection's end: with more connections
    // than cores, threads start their own clocks late, so the longest per-connection time
    // would understate the run (and overstate msg/s) — 1000 connections on 2 cores did.
    let start = Instant::now();
    let results: Vec<ConnResult> = threads.into_iter().map(|t| t.join().unwrap_or_else(|_| failed("load thread panicked"))).collect();
    let wall = start.elapsed();
    let mut m = Measured { payload_bytes: payload.encode("x").len() as u64 + 1, ..Measured::default() };
    let mut counted = 0;
    for r in results {
        counted += r.sink_count.unwrap_or(0);
        m.msgs += r.msgs;
        m.elapsed = m.elapsed.max(r.elapsed).max(wall);
        if m.framing.is_empty() {
            m.framing = r.framing;
        }
        if let Some(e) = r.error {
            m.errors.push(e);
        }
        if let Some(h) = r.hist {
            match &mut m.hist {
                Some(all) => all.add(&h).expect("same bounds"),
                None => m.hist = Some(h),
            }
        }
    }
    match sink {
        SinkProto::Rust(s) => {
            if scenario == Scenario::Flood {
                m.sink_msgs = Some(s.stats.flood_msgs.load(Ordering::SeqCst) - before);
            }
            m.errors.extend(s.take_errors());
        }
        SinkProto::Erl => {
            if scenario == Scenario::Flood {
                m.sink_msgs = Some(counted);
            }
        }
    }
    m
}

fn failed(e: &str) -> ConnResult {
    ConnResult { msgs: 0, elapsed: Duration::ZERO, hist: None, framing: String::new(), error: Some(e.to_string()), sink_count: None }
}

#[allow(clippy::too_many_arguments)]
fn one_conn(addr: SocketAddr, cfg: NodeConfig, id: u32, erl: bool, scenario: Scenario, payload: PayloadKind, stop: Stop, barrier: &Barrier) -> ConnResult {
    let conn = DistConn::connect(addr, &cfg);
    barrier.wait();
    let mut c = match conn {
        Ok(c) => c,
        Err(e) => return failed(&format!("connect {addr}: {e}")),
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let framing = c.framing().to_string();
    let p = Proto { erl, name: cfg.name.clone(), id, creation: cfg.creation };
    let r = match scenario {
        Scenario::PingPong => ping_pong(&mut c, &p, payload, stop),
        Scenario::Flood => flood(&mut c, &p, payload, stop),
    };
    c.shutdown();
    match r {
        Ok((msgs, elapsed, hist, sink_count)) => ConnResult { msgs, elapsed, hist, framing, error: None, sink_count },
        Err(e) => ConnResult { msgs: 0, elapsed: Duration::ZERO, hist: None, framing, error: Some(e), sink_count: None },
    }
}

/// The messages of one connection, for the Rust sink or a real node's `dg_sink`.
struct Proto {
    erl: bool,
    name: String,
    id: u32,
    creation: u32,
}

impl Proto {
    fn pid(&self, out: &mut Vec<u8>) {
        etf::pid(out, &self.name, self.id, 0, self.creation);
    }
    /// A ping: control, payload, and where `{Seq, Body}` starts in the payload.
    fn ping(&self, body: &[u8]) -> (Vec<u8>, Vec<u8>, usize) {
        if !self.erl {
            return (reg_send(&self.name, self.id, self.creation, ECHO), body.to_vec(), 0);
        }
        let mut p = Vec::new();
        etf::tuple(&mut p, 3);
        etf::atom(&mut p, "ping");
        self.pid(&mut p);
        let at = p.len();
        p.extend_from_slice(body);
        (reg_send(&self.name, self.id, self.creation, ERL_SINK), p, at)
    }
    fn flood(&self, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        if !self.erl {
            return (reg_send(&self.name, self.id, self.creation, FLOOD), body.to_vec());
        }
        let mut p = Vec::new();
        etf::tuple(&mut p, 2);
        etf::atom(&mut p, "flood");
        p.extend_from_slice(body);
        (reg_send(&self.name, self.id, self.creation, ERL_SINK), p)
    }
    /// The sequence number of an echo (`{Seq, Body}`, or `{pong, {Seq, Body}}` from a real
    /// node, whose atoms may be atom-cache refs and whose small integers are SMALL_INTEGER_EXT).
    fn echoed_seq(&self, w: &mut Walker, b: &[u8]) -> Option<u32> {
        let at = if self.erl { second_of_pair(w, b)? } else { 0 };
        if b.get(at..at + 2)? != [104, 2] {
            return None;
        }
        int_at(b, at + 2).map(|v| v as u32)
    }
}

/// The registered name of the real sink process.
const ERL_SINK: &str = "dg_sink";

/// Offset of the second element of a 2-tuple at the start of `b`.
fn second_of_pair(w: &mut Walker, b: &[u8]) -> Option<usize> {
    if b.get(..2)? != [104, 2] {
        return None;
    }
    w.walk(b, 2, &mut Skip).ok()
}

fn int_at(b: &[u8], at: usize) -> Option<i64> {
    match *b.get(at)? {
        97 => Some(*b.get(at + 1)? as i64),
        98 => Some(i32::from_be_bytes(b.get(at + 1..at + 5)?.try_into().ok()?) as i64),
        _ => None,
    }
}

fn walker() -> Walker {
    let mut w = Walker::default();
    // Real nodes use atom-cache refs inside payloads too.
    w.set_cache_refs(Some(256));
    w
}

type Run = Result<(u64, Duration, Option<Histogram<u64>>, Option<u64>), String>;

/// Send one ping and wait for its echo; returns the round trip.
fn round_trip(c: &mut DistConn, p: &Proto, w: &mut Walker, frames: &mut [u8], seq_at: usize, seq: u32) -> Result<Duration, String> {
    etf::stamp(&mut frames[seq_at..], seq);
    let t0 = Instant::now();
    c.write_all(frames).map_err(|e| format!("send: {e}"))?;
    let got = c.recv(|m, _| m.payload.clone().and_then(|r| p.echoed_seq(w, &m.bytes[r]))).map_err(|e| format!("recv: {e}"))?;
    let rtt = t0.elapsed();
    if got != Some(seq) {
        return Err(format!("echo out of order: sent {seq}, got {got:?}"));
    }
    Ok(rtt)
}

fn ping_pong(c: &mut DistConn, p: &Proto, payload: PayloadKind, stop: Stop) -> Run {
    let body = payload.encode(&p.name);
    let (ctrl, msg, body_at) = p.ping(&body);
    let mut frames = Vec::new();
    let at = c.encode(&ctrl, &msg, &mut frames) + body_at;
    let mut w = walker();
    let mut seq = 0u32;
    // A few untimed round trips: connection warm-up (TCP windows, caches).
    for _ in 0..10 {
        seq += 1;
        round_trip(c, p, &mut w, &mut frames, at, seq)?;
    }
    let mut hist = new_hist();
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        match stop.max_msgs {
            Some(m) if n >= m => break,
            None if t0.elapsed() >= stop.duration => break,
            _ => {}
        }
        seq = (seq + 1) & 0x7fff_ffff;
        let rtt = round_trip(c, p, &mut w, &mut frames, at, seq)?;
        hist.saturating_record(rtt.as_nanos() as u64);
        n += 1;
    }
    Ok((n, t0.elapsed(), Some(hist), None))
}

fn flood(c: &mut DistConn, p: &Proto, payload: PayloadKind, stop: Stop) -> Run {
    let body = payload.encode(&p.name);
    let (ctrl, msg) = p.flood(&body);
    // A batch of whole messages of at least 256 KiB, written with one call.
    let mut batch = Vec::new();
    let mut k = 0u64;
    while batch.len() < 256 << 10 {
        c.encode(&ctrl, &msg, &mut batch);
        k += 1;
    }
    let per_msg = batch.len() / k as usize;
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        if let Some(m) = stop.max_msgs {
            if n >= m {
                break;
            }
            let j = k.min(m - n);
            c.write_all(&batch[..j as usize * per_msg]).map_err(|e| format!("send: {e}"))?;
            n += j;
        } else {
            if t0.elapsed() >= stop.duration {
                break;
            }
            c.write_all(&batch).map_err(|e| format!("send: {e}"))?;
            n += k;
        }
    }
    let mut w = walker();
    let mut frames = Vec::new();
    if !p.erl {
        // The echo of a last small message comes back after every flood message was read.
        let (ctrl, msg, body_at) = p.ping(&PayloadKind::Small.encode(&p.name));
        let at = c.encode(&ctrl, &msg, &mut frames) + body_at;
        round_trip(c, p, &mut w, &mut frames, at, 0xD0_4E)?;
        return Ok((n, t0.elapsed(), None, None));
    }
    // {done, From} → {count, N}: the real sink's count of flood messages.
    let mut done = Vec::new();
    etf::tuple(&mut done, 2);
    etf::atom(&mut done, "done");
    p.pid(&mut done);
    c.encode(&reg_send(&p.name, p.id, p.creation, ERL_SINK), &done, &mut frames);
    c.write_all(&frames).map_err(|e| format!("send: {e}"))?;
    let count = c
        .recv(|m, _| m.payload.clone().and_then(|r| {
            let b = &m.bytes[r];
            second_of_pair(&mut w, b).and_then(|at| int_at(b, at))
        }))
        .map_err(|e| format!("recv: {e}"))?;
    Ok((n, t0.elapsed(), None, count.map(|c| c as u64)))
}
