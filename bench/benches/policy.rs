//! The policy engine's per-frame cost: the same frames through one link direction with the
//! policy off and on.
//!
//! - `off`: what a link does without a policy handle: decode every frame (atom cache,
//!   fragments, control) and forward it;
//! - `no-policy`: a route whose policy handle is empty (one atomic load more per frame);
//! - `control`: allow-lists for registered names, spawns and rpc consulted on every message
//!   (everything in the inputs is allowed); fun actions all `pass`, so funs are not looked at;
//! - `funs`: `unknown_fun`/`unknown_export = "replace"` with a target registry that knows
//!   every module version the traffic's funs come from: every message walked for funs, every
//!   fun looked up, all pass (the pass path);
//! - `untrusted`: the `untrusted` preset with the same lists, which also peeks into every
//!   message payload for the dangerous shapes.
//!
//! With a policy on, a fragmented message is held until complete and re-emitted (one copy),
//! unless it ends in a binary: then it is judged on its first fragment and streamed, as the
//! link does without a policy (the capture's 1 MiB message is one of those).
//!
//! `POLICY_AB=1 cargo bench -p distgate-bench --bench policy` instead runs the variants
//! interleaved, round after round, and prints each one's median time per pass and its ratio
//! to `off`: on a busy machine that comparison is steadier than criterion's, which measures
//! one variant after the other. `POLICY_PROFILE=INPUT:VARIANT[:PASSES]` runs one variant on
//! one input only (for `perf record` or `perf stat`).
//!
//! Inputs: the bundled capture of real OTP traffic (`proxy/samples/rich-a2b.dist`: atom cache,
//! a 1 MiB message in 17 fragments, funs, spawn requests, monitors), the term-heavy and
//! binary-heavy corpora, each term sent as the payload of a REG_SEND, and `fun-flood`: what
//! the load generator's fun flood sends (2 000 SEND and REG_SEND messages, each carrying the
//! `fun` payload: a local fun with free variables and an export fun). Throughput is bytes of
//! frames per second.

use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, Criterion, Throughput};
use distgate::policy::wire::{atom_text, Sender};
use distgate::policy::{Compiled, Direction, FrameAct, RouteHandle};
use distgate::registry::{ModuleVersion, Registry, SnapshotBuilder};
use distgate::handshake::flag;
use distgate_bench::etf::{stamp, PayloadKind};
use distgate_bench::load_corpus;
use distgate_bench::node::{encode_message, reg_send, send_to_pid};
use distgate_codec::frame::Frames;
use distgate_codec::fun::{self, FunKind};
use distgate_codec::message::{Decoded, Decoder};
use distgate_codec::rewrite::encode_atom;
use distgate_codec::term::{Limits, Walker};

/// Allow-lists of the kind an operator writes, which everything in the inputs passes.
const LISTS: &str = "reg_send_allow = [\"net_kernel\", \"global_name_server\", \"dg_*\"]\n\
    spawn_allow = [\"dg_scenario:*\", \"erlang:apply/2\"]\nrpc_allow = [\"erlang:node/0\", \"dg_scenario:*\"]\n";
const FUNS: &str = "unknown_fun = \"replace\"\nunknown_export = \"replace\"\n";

fn control() -> String {
    format!("[policy.p.control]\n{LISTS}")
}
fn untrusted() -> String {
    format!("preset = \"untrusted\"\n[policy.p.control]\n{LISTS}")
}

/// `131 68 0 {6, Pid, '', dg_sink} Term`: a corpus term as a REG_SEND payload.
fn reg_send_frame(term_body: &[u8]) -> Vec<u8> {
    let mut v = vec![131, 68, 0, 104, 4, 97, 6, 88];
    encode_atom("bench@127.0.0.1", &mut v);
    v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7]);
    encode_atom("", &mut v);
    encode_atom("dg_sink", &mut v);
    v.extend_from_slice(term_body);
    v
}

/// The load generator's flood of `kind` payloads (`fun`, `1KB`): `n` messages, REG_SENDs and
/// SENDs in turn, each with its own sequence number (frames without their length prefix).
fn flood(kind: PayloadKind, n: u32) -> Vec<Vec<u8>> {
    let node = "load@127.0.0.1";
    let flags = flag::DIST_HDR_ATOM_CACHE | flag::FRAGMENTS;
    let mut payload = kind.encode(node);
    let mut seq = 0;
    (0..n)
        .map(|i| {
            let ctrl = if i % 2 == 0 { reg_send(node, 1, 7, "dg_flood") } else { send_to_pid("sink@127.0.0.1", 40, 0, 3) };
            stamp(&mut payload, i);
            let mut f = Vec::new();
            encode_message(flags, &mut seq, &ctrl, &payload, &mut f);
            f.split_off(4)
        })
        .collect()
}

/// A registry that knows every module version (and export) the frames' funs name.
fn registry_for(frames: &[&[u8]]) -> Arc<Registry> {
    let mut b = SnapshotBuilder::new();
    let mut dec = Decoder::default();
    let mut w = Walker::default();
    for f in frames {
        let Ok(Decoded::Message(m)) = dec.decode(f) else { continue };
        let mut funs = Vec::new();
        fun::message_funs(&mut w, &m, &mut funs).unwrap();
        for site in funs {
            let text = |a| atom_text(&m.refs, &a).unwrap().into_owned();
            let v = match site.kind {
                FunKind::New(nf) => ModuleVersion::new(text(nf.module).into(), *nf.uniq, vec![], [], "bench".into()),
                FunKind::Export(e) => {
                    ModuleVersion::new(text(e.module).into(), [0; 16], vec![], [(text(e.function).into(), e.arity)], "bench".into())
                }
                FunKind::Old(_) => continue,
            };
            b.add(v);
        }
    }
    let r = Registry::new("bench");
    r.store(b.build());
    Arc::new(r)
}

fn handle(policy: Option<&str>, registry: Arc<Registry>) -> Arc<RouteHandle> {
    let p = policy.map(|b| Arc::new(Compiled::parse("p", &format!("audit_per_second = 0\n{b}")).unwrap()));
    Arc::new(RouteHandle::new("a", "b", p, registry.clone(), registry))
}

fn direction(h: &Arc<RouteHandle>) -> Direction {
    Direction::new(Some(h.clone()), None, 1, 0, Sender { node: "bench@127.0.0.1".into(), creation: 7 }, Limits::default())
}

fn variants() -> [(&'static str, Option<String>); 4] {
    [("no-policy", None), ("control", Some(control())), ("funs", Some(FUNS.to_string())), ("untrusted", Some(untrusted()))]
}

/// One pass over `frames` through a fresh decoder (and direction, when `h` is given).
/// A direction's decoder as a link sets it up: streaming on (a message ending in a binary
/// passes fragment by fragment; see `Decoder::set_streaming`).
fn link_decoder() -> Decoder {
    let mut d = Decoder::default();
    d.set_streaming(true);
    d
}

fn pass(frames: &[&[u8]], h: Option<&Arc<RouteHandle>>, now: Instant) {
    let mut dec = link_decoder();
    match h {
        None => {
            for f in frames {
                black_box(dec.decode(f).is_ok());
            }
        }
        Some(h) => {
            let mut d = direction(h);
            for f in frames {
                black_box(d.frame(&mut dec, f, now).is_ok());
            }
        }
    }
}

fn bench_frames(c: &mut Criterion, group: &str, frames: &[&[u8]]) {
    let bytes: usize = frames.iter().map(|f| f.len() + 4).sum();
    let registry = registry_for(frames);
    let mut g = c.benchmark_group(format!("policy/{group}"));
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("off", |b| {
        b.iter(|| {
            let mut dec = link_decoder();
            for f in frames {
                black_box(dec.decode(f).is_ok());
            }
        })
    });
    let now = Instant::now();
    for (name, policy) in variants() {
        let h = handle(policy.as_deref(), registry.clone());
        // Every frame passes (checked once, outside the measurement).
        let mut d = direction(&h);
        let mut dec = link_decoder();
        for f in frames {
            let act = d.frame(&mut dec, f, now).unwrap();
            assert!(matches!(act, FrameAct::Forward | FrameAct::Absorb | FrameAct::Replace { back: None, .. }), "{name}: {act:?}");
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut dec = link_decoder();
                let mut d = direction(&h);
                for f in frames {
                    black_box(d.frame(&mut dec, f, now).is_ok());
                }
            })
        });
    }
    g.finish();
}

/// The inputs: (group, frame data).
fn inputs() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let sample = include_bytes!("../../proxy/samples/rich-a2b.dist");
    let all: Vec<Vec<u8>> = Frames::new(sample, 128 << 20).filter_map(|i| i.unwrap().data.map(<[u8]>::to_vec)).collect();
    // The same capture without its fragmented 1 MiB message: the cost per ordinary message.
    let whole: Vec<Vec<u8>> = all.iter().filter(|f| !matches!(f[..2], [131, 69] | [131, 70])).cloned().collect();
    let mut out = vec![("sample", all), ("sample-unfragmented", whole)];
    for name in ["term-heavy", "binary-heavy"] {
        let (buf, ranges) = load_corpus(&format!("{name}.etf"));
        out.push((name, ranges.iter().map(|r| reg_send_frame(&buf[r.start + 1..r.end])).collect()));
    }
    out.push(("fun-flood", flood(PayloadKind::Fun, 2000)));
    out.push(("1KB-flood", flood(PayloadKind::Mixed, 2000)));
    out
}

fn policy(c: &mut Criterion) {
    for (name, owned) in inputs() {
        let frames: Vec<&[u8]> = owned.iter().map(|v| v.as_slice()).collect();
        bench_frames(c, name, &frames);
    }
}

/// The interleaved comparison (see the module docs).
fn ab() {
    const ROUNDS: usize = 300;
    let now = Instant::now();
    println!("{:<20} {:>12} {:>12} {:>12} {:>12} {:>12}", "input", "off", "no-policy", "control", "funs", "untrusted");
    for (name, owned) in inputs() {
        let frames: Vec<&[u8]> = owned.iter().map(|v| v.as_slice()).collect();
        let registry = registry_for(&frames);
        let handles: Vec<Option<Arc<RouteHandle>>> =
            std::iter::once(None).chain(variants().iter().map(|(_, p)| Some(handle(p.as_deref(), registry.clone())))).collect();
        let mut times = vec![Vec::with_capacity(ROUNDS); handles.len()];
        for round in 0..ROUNDS {
            // Rotate the order so no variant always runs right after another.
            for k in 0..handles.len() {
                let v = (round + k) % handles.len();
                let t = Instant::now();
                pass(&frames, handles[v].as_ref(), now);
                times[v].push(t.elapsed());
            }
        }
        let medians: Vec<f64> = times
            .iter_mut()
            .map(|t| {
                t.sort();
                t[t.len() / 2].as_secs_f64() * 1e6
            })
            .collect();
        let mut line = format!("{name:<20} {:>10.1}µs", medians[0]);
        for m in &medians[1..] {
            line.push_str(&format!(" {:>6.1}µs {:>+4.0}%", m, (m / medians[0] - 1.0) * 100.0));
        }
        println!("{line}");
    }
}

/// `POLICY_PROFILE=INPUT:VARIANT[:PASSES]` (e.g. `fun-flood:funs`, `sample:off`): only that
/// variant on that input, PASSES times (default 2 000), for a profiler or `perf stat`.
fn profile(which: &str) {
    let mut it = which.split(':');
    let (Some(input), Some(variant)) = (it.next(), it.next()) else { panic!("POLICY_PROFILE=INPUT:VARIANT[:PASSES]") };
    let passes: usize = it.next().map_or(2000, |n| n.parse().expect("PASSES"));
    let (_, owned) = inputs().into_iter().find(|(n, _)| *n == input).expect("no such input");
    let frames: Vec<&[u8]> = owned.iter().map(|v| v.as_slice()).collect();
    let h = match variant {
        "off" => None,
        v => {
            let p = variants().into_iter().find(|(n, _)| *n == v).expect("no such variant").1;
            Some(handle(p.as_deref(), registry_for(&frames)))
        }
    };
    let now = Instant::now();
    for _ in 0..passes {
        pass(&frames, h.as_ref(), now);
    }
}

criterion_group!(benches, policy);

fn main() {
    if let Ok(which) = std::env::var("POLICY_PROFILE") {
        profile(&which);
        return;
    }
    if std::env::var_os("POLICY_AB").is_some() {
        ab();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
