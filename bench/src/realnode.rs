//! The real-node scenario: two OTP nodes from the testkit, a sender and a sink, running
//! `dg_bench_load` (bench/erl). The sender is repointed at each target in turn (its
//! `dg_epmd` reads the sink's port from the environment), so one pair of nodes serves every
//! target and the repetitions interleave.

use crate::etf::PayloadKind;
use crate::load::{new_hist, Measured, Scenario, Stop};
use distgate_testkit::{Node, NodeOptions, TempDir};
use std::time::Duration;

const SOURCE: &str = include_str!("../erl/dg_bench_load.erl");

pub struct ErlPair {
    pub sender: Node,
    pub sink: Node,
    dir: TempDir,
    /// The port the sender currently dials for the sink.
    routed: Option<u16>,
    runs: u64,
    /// connect_node attempts that returned false and were retried.
    pub connect_retries: u64,
}

/// Whether `erl` is installed (the real-node scenario needs it).
pub fn erl_available() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("erl").is_file() && d.join("erlc").is_file()))
        .unwrap_or(false)
}

impl ErlPair {
    pub fn start(cookie: &str) -> Result<ErlPair, String> {
        let dir = TempDir::new("dg_bench_erl");
        let src = dir.path().join("dg_bench_load.erl");
        std::fs::write(&src, SOURCE).map_err(|e| e.to_string())?;
        distgate_testkit::erl::compile(&[&src], dir.path())?;
        let opts = || NodeOptions {
            cookie: cookie.to_string(),
            extra_args: vec!["-pa".into(), dir.path().display().to_string()],
            eval_timeout: Duration::from_secs(180),
            ..NodeOptions::default()
        };
        let sink = Node::start_with("bsink", opts());
        let sender = Node::start_with("bsend", opts());
        sink.try_eval("dg_bench_load:start_sink().").map_err(|e| format!("sink: {e}"))?;
        sender.eval(&format!("Sink = {}.", sink.atom()));
        Ok(ErlPair { sender, sink, dir, routed: None, runs: 0, connect_retries: 0 })
    }

    /// Make the sender's next connection to the sink go to `port` (the sink itself or a
    /// proxy in front of it), dropping the current connection, and connect.
    pub fn route_to(&mut self, port: u16) -> Result<(), String> {
        if self.routed == Some(port) {
            return Ok(());
        }
        self.sender.try_eval("erlang:disconnect_node(Sink), ok.").map_err(|e| e.to_string())?;
        // The sink notices the old connection's end on its own; wait until it has, so the new
        // connection is not refused as a duplicate.
        let wait = format!(
            "W = fun Wait(0) -> still_connected; Wait(N) -> case lists:member({}, nodes(connected)) of \
             true -> timer:sleep(10), Wait(N - 1); false -> ok end end, W(300).",
            self.sender.atom()
        );
        self.sink.try_eval(&wait).map_err(|e| e.to_string())?;
        self.sender.set_peer_port(self.sink.alive(), port);
        // A refused attempt (the sink still finishing the old connection) is retried a few
        // times; every retry is counted in the report.
        let mut last = String::new();
        for attempt in 0..5 {
            if attempt > 0 {
                self.connect_retries += 1;
                std::thread::sleep(Duration::from_millis(100 * attempt));
            }
            match self.sender.try_eval("net_kernel:connect_node(Sink).") {
                Ok(t) if t == "true" => {
                    self.routed = Some(port);
                    return Ok(());
                }
                Ok(t) => last = t,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("sender could not connect to the sink through port {port}: {last} (5 attempts)"))
    }

    pub fn run(&mut self, scenario: Scenario, payload: PayloadKind, stop: Stop) -> Measured {
        let max: i64 = stop.max_msgs.map_or(-1, |m| m as i64);
        let ms = stop.duration.as_millis().max(1);
        let kind = format!("'{}'", payload.erl_atom());
        self.runs += 1;
        let mut m = Measured { framing: "OTP (atom cache, fragments)".into(), ..Measured::default() };
        match scenario {
            Scenario::PingPong => {
                let file = self.dir.path().join(format!("rtt-{}.bin", self.runs));
                let expr = format!("dg_bench_load:pingpong(Sink, {kind}, {max}, {ms}, {:?}).", file.display().to_string());
                match self.sender.try_eval(&expr) {
                    Ok(t) => match ints(&t).as_slice() {
                        [count, elapsed, size] => {
                            m.msgs = *count as u64;
                            m.elapsed = Duration::from_nanos(*elapsed as u64);
                            m.payload_bytes = *size as u64;
                            let mut h = new_hist();
                            if let Ok(b) = std::fs::read(&file) {
                                for c in b.chunks_exact(8) {
                                    h.saturating_record(u64::from_be_bytes(c.try_into().unwrap()));
                                }
                            }
                            let _ = std::fs::remove_file(&file);
                            m.hist = Some(h);
                        }
                        _ => m.errors.push(format!("pingpong returned {t}")),
                    },
                    Err(e) => m.errors.push(format!("pingpong: {e}")),
                }
            }
            Scenario::Flood => {
                let expr = format!("dg_bench_load:flood(Sink, {kind}, {max}, {ms}).");
                match self.sender.try_eval(&expr) {
                    Ok(t) => match ints(&t).as_slice() {
                        [sent, elapsed, size, count] => {
                            m.msgs = *sent as u64;
                            m.elapsed = Duration::from_nanos(*elapsed as u64);
                            m.payload_bytes = *size as u64;
                            m.sink_msgs = Some(*count as u64);
                        }
                        _ => m.errors.push(format!("flood returned {t}")),
                    },
                    Err(e) => m.errors.push(format!("flood: {e}")),
                }
            }
        }
        if !m.errors.is_empty() {
            // A failed run may leave the link in any state: reconnect next time.
            self.routed = None;
        }
        m
    }
}

/// The integers of a flat tuple printed by `~0tp`, e.g. `{1,2,3}`.
fn ints(t: &str) -> Vec<i64> {
    t.trim().trim_start_matches('{').trim_end_matches('}').split(',').filter_map(|x| x.trim().parse().ok()).collect()
}
