//! The load generator: ping-pong and flood from Rust nodes to the Rust sink, over N
//! connections (a thread and a node name per connection).

use crate::etf::{self, PayloadKind};
use crate::node::{reg_send, DistConn, NodeConfig, Sink, ECHO, FLOOD};
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
}

/// Run one Rust cell against `addr` (the sink directly or a proxy in front of it).
#[allow(clippy::too_many_arguments)]
pub fn run_rust(
    addr: SocketAddr,
    sink: &Sink,
    tag: &str,
    scenario: Scenario,
    payload: PayloadKind,
    conns: usize,
    stop: Stop,
    cookie: &str,
    fragments: bool,
) -> Measured {
    let before = sink.stats.flood_msgs.load(Ordering::SeqCst);
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut threads = Vec::new();
    for i in 0..conns {
        let cfg = NodeConfig::new(&format!("rl_{tag}_{i}@127.0.0.1"), cookie, fragments);
        let b = barrier.clone();
        threads.push(
            thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || one_conn(addr, cfg, i as u32 + 1, scenario, payload, stop, &b))
                .expect("thread"),
        );
    }
    barrier.wait();
    let results: Vec<ConnResult> = threads.into_iter().map(|t| t.join().unwrap_or_else(|_| failed("load thread panicked"))).collect();
    let mut m = Measured { payload_bytes: payload.encode("x").len() as u64 + 1, ..Measured::default() };
    for r in results {
        m.msgs += r.msgs;
        m.elapsed = m.elapsed.max(r.elapsed);
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
    if scenario == Scenario::Flood {
        m.sink_msgs = Some(sink.stats.flood_msgs.load(Ordering::SeqCst) - before);
    }
    m.errors.extend(sink.take_errors());
    m
}

fn failed(e: &str) -> ConnResult {
    ConnResult { msgs: 0, elapsed: Duration::ZERO, hist: None, framing: String::new(), error: Some(e.to_string()) }
}

fn one_conn(addr: SocketAddr, cfg: NodeConfig, id: u32, scenario: Scenario, payload: PayloadKind, stop: Stop, barrier: &Barrier) -> ConnResult {
    let conn = DistConn::connect(addr, &cfg);
    barrier.wait();
    let mut c = match conn {
        Ok(c) => c,
        Err(e) => return failed(&format!("connect {addr}: {e}")),
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let framing = c.framing().to_string();
    let r = match scenario {
        Scenario::PingPong => ping_pong(&mut c, &cfg, id, payload, stop),
        Scenario::Flood => flood(&mut c, &cfg, id, payload, stop),
    };
    c.shutdown();
    match r {
        Ok((msgs, elapsed, hist)) => ConnResult { msgs, elapsed, hist, framing, error: None },
        Err(e) => ConnResult { msgs: 0, elapsed: Duration::ZERO, hist: None, framing, error: Some(e) },
    }
}

type Run = Result<(u64, Duration, Option<Histogram<u64>>), String>;

/// Send one message to the echo and wait for it; returns the round trip.
fn round_trip(c: &mut DistConn, frames: &mut [u8], payload_at: usize, seq: u32) -> Result<Duration, String> {
    etf::stamp(&mut frames[payload_at..], seq);
    let t0 = Instant::now();
    c.write_all(frames).map_err(|e| format!("send: {e}"))?;
    let got = c.recv(|m, _| m.payload.clone().and_then(|r| etf::seq_of(&m.bytes[r]))).map_err(|e| format!("recv: {e}"))?;
    let rtt = t0.elapsed();
    if got != Some(seq) {
        return Err(format!("echo out of order: sent {seq}, got {got:?}"));
    }
    Ok(rtt)
}

fn ping_pong(c: &mut DistConn, cfg: &NodeConfig, id: u32, payload: PayloadKind, stop: Stop) -> Run {
    let ctrl = reg_send(&cfg.name, id, cfg.creation, ECHO);
    let body = payload.encode(&cfg.name);
    let mut frames = Vec::new();
    let at = c.encode(&ctrl, &body, &mut frames);
    let mut seq = 0u32;
    // A few untimed round trips: connection warm-up (TCP windows, caches).
    for _ in 0..10 {
        seq += 1;
        round_trip(c, &mut frames, at, seq)?;
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
        seq = seq.wrapping_add(1);
        let rtt = round_trip(c, &mut frames, at, seq)?;
        hist.saturating_record(rtt.as_nanos() as u64);
        n += 1;
    }
    Ok((n, t0.elapsed(), Some(hist)))
}

fn flood(c: &mut DistConn, cfg: &NodeConfig, id: u32, payload: PayloadKind, stop: Stop) -> Run {
    let ctrl = reg_send(&cfg.name, id, cfg.creation, FLOOD);
    let body = payload.encode(&cfg.name);
    // A batch of whole messages of at least 256 KiB, written with one call.
    let mut batch = Vec::new();
    let mut k = 0u64;
    while batch.len() < 256 << 10 {
        c.encode(&ctrl, &body, &mut batch);
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
    // The echo of a last small message comes back after every flood message was read.
    let done_ctrl = reg_send(&cfg.name, id, cfg.creation, ECHO);
    let done = PayloadKind::Small.encode(&cfg.name);
    let mut frames = Vec::new();
    let at = c.encode(&done_ctrl, &done, &mut frames);
    round_trip(c, &mut frames, at, 0xD0_4E)?;
    Ok((n, t0.elapsed(), None))
}
