//! A link past a valid handshake, with a policy judging the down→up direction, fed hostile
//! post-handshake bytes on both legs.
//!
//! Input: `[k] [n:32] [opts] [k op bytes] [payload]` (`k` mod 32). The payload is two
//! streams: down's (its first `n` bytes, at most all of it) and up's (the rest). The ops, used in turn (cycling), each
//! hand the next bytes of one leg's stream to the link: bit 0 the leg (1: up; a leg whose
//! stream is used up yields to the other), bits 1..=3 the read's length (see `SIZES`), bit 4
//! lets the driver move a streamed frame's opaque rest itself (`on_passed`, as a splicing
//! driver does) instead of handing it in. `opts` bit 0 picks the policy (see `POLICIES`), bit
//! 1 has the same policy judge up→down too (otherwise that direction forwards unjudged, so it
//! streams large frames as they arrive: cut-through).
//!
//! Checked, beyond what `common::link` checks of every answer: what is written to each leg is
//! a sequence of distribution frames (4-byte length and data; ticks) that a receiving node
//! decodes without error (a fresh `Decoder` per leg, streaming on, fed every whole frame); and
//! every owned write (a frame the link built: a policy's replacement, a reply to the sender) is
//! whole frames, written at a frame boundary of its leg, never inside a frame that is passing.
#![no_main]
use distgate::handshake::{self, Challenge, SendName};
use distgate::link::{Cookie, Event, Leg, Link, LinkLimits, LinkParams, Output};
use distgate::policy::wire::atom_text;
use distgate::policy::{Compiled, LinkPolicy, RouteHandle};
use distgate::registry::{ModuleVersion, Registry, SnapshotBuilder};
use distgate_codec::frame::{split, Split};
use distgate_codec::fun::{self, FunKind};
use distgate_codec::message::{Decoded, Decoder};
use distgate_codec::term::Walker;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

#[path = "common/link.rs"]
mod common;
use common::{Harness, Write};

/// Read lengths an op picks from: single bytes and cut headers up to more than a 64 KiB
/// fragment at once.
const SIZES: [usize; 8] = [1, 3, 17, 100, 1000, 4096, 20_000, 70_000];

/// The flags both fake peers offer (an OTP 25 node's).
const FLAGS: u64 = 0x0000000d07df7fbc;

/// The untrusted preset with fun rewriting and allow-lists (the capture's traffic passes
/// most of them); and a stricter one whose denials close the link.
const POLICIES: [&str; 2] = [
    "audit_per_second = 0\npreset = \"untrusted\"\nunknown_fun = \"rewrite\"\nunknown_export = \"replace\"\n\
     [policy.p.control]\nreg_send_allow = [\"net_kernel\", \"global_name_server\", \"dg_*\", \"ok_*\"]\n\
     spawn_allow = [\"dg_scenario:*\", \"erlang:apply/2\"]\nrpc_allow = [\"erlang:node/0\", \"dg_scenario:*\"]\n",
    "audit_per_second = 0\nunknown_fun = \"drop\"\nunknown_export = \"close\"\n\
     [policy.p.control]\nreg_send_allow = [\"net_kernel\", \"dg_*\"]\nspawn_allow = []\non_deny = \"close\"\n",
];

struct Fixture {
    policies: Vec<Arc<Compiled>>,
    /// The target's registry: every other module version the capture's funs name, so some of
    /// its funs are known and some are not.
    registry: Arc<Registry>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let policies = POLICIES.iter().map(|p| Arc::new(Compiled::parse("p", p).expect("policy parses"))).collect();
        let sample: &[u8] = include_bytes!("../../proxy/samples/rich-a2b.dist");
        let mut b = SnapshotBuilder::new();
        let mut dec = Decoder::default();
        let mut w = Walker::default();
        let mut n = 0;
        for item in distgate_codec::frame::Frames::new(sample, 1 << 20) {
            let Some(frame) = item.ok().and_then(|i| i.data) else { continue };
            let Ok(Decoded::Message(m)) = dec.decode(frame) else { continue };
            let mut funs = Vec::new();
            if fun::message_funs(&mut w, &m, &mut funs).is_err() {
                continue;
            }
            for site in funs {
                let text = |a| atom_text(&m.refs, &a).map(|t| t.into_owned()).unwrap_or_default();
                let v = match site.kind {
                    FunKind::New(nf) => ModuleVersion::new(text(nf.module).into(), *nf.uniq, vec![], [], "fuzz".into()),
                    FunKind::Export(e) => ModuleVersion::new(text(e.module).into(), [0; 16], vec![], [(text(e.function).into(), e.arity)], "fuzz".into()),
                    FunKind::Old(_) => continue,
                };
                n += 1;
                if n % 2 == 0 {
                    b.add(v);
                }
            }
        }
        let registry = Registry::new("b");
        registry.store(b.build());
        Fixture { policies, registry: Arc::new(registry) }
    })
}

/// The handshake messages `out` wrote to `leg` (all owned during the handshake).
fn handshake_msgs(out: &Output, leg: Leg) -> Vec<Vec<u8>> {
    let mut bytes = Vec::new();
    for (l, c) in &out.writes {
        if let (true, distgate::link::Chunk::Owned(b)) = (*l == leg, c) {
            bytes.extend_from_slice(b);
        }
    }
    let mut msgs = Vec::new();
    let mut at = 0;
    while let Some((m, used)) = handshake::split(&bytes[at..]) {
        msgs.push(m.to_vec());
        at += used;
    }
    msgs
}

/// A link driven through a valid handshake (as `handshake_with` in link.rs's tests does):
/// down `a@h` with cookie `down`, up `b@h` with cookie `up`.
fn established(policy: LinkPolicy, now: Instant) -> Link {
    let params = LinkParams {
        id: 1,
        target: "b".into(),
        down_cookie: Cookie::new(b"down"),
        up_cookie: Cookie::new(b"up"),
        limits: LinkLimits::default(),
        policy,
        hidden: false,
        target_nodes: None,
    };
    let mut l = Link::new(params, now);
    let mut out = Output::default();
    let mut b = Vec::new();
    SendName { flags: FLAGS, creation: Some(11), name: "a@h".into() }.encode(11, &mut b);
    l.on_bytes(Leg::Down, &b, now, &mut out);
    assert_eq!(out.events, vec![Event::DialUp]);
    out.clear();
    l.on_up_connected(now, &mut out);
    out.clear();
    let mut b = Vec::new();
    handshake::encode_status(b"ok", &mut b);
    Challenge { flags: FLAGS, challenge: 777, creation: 99, name: "b@h".into() }.encode(&mut b);
    l.on_bytes(Leg::Up, &b, now, &mut out);
    let msgs = handshake_msgs(&out, Leg::Down);
    let ch = Challenge::parse(&msgs[1]).expect("the link's challenge");
    out.clear();
    let mut b = Vec::new();
    handshake::encode_reply(555, &handshake::digest(b"down", ch.challenge), &mut b);
    l.on_bytes(Leg::Down, &b, now, &mut out);
    let msgs = handshake_msgs(&out, Leg::Up);
    let (their, _) = handshake::parse_reply(&msgs[0]).expect("the link's reply");
    out.clear();
    let mut b = Vec::new();
    handshake::encode_ack(&handshake::digest(b"up", their), &mut b);
    l.on_bytes(Leg::Up, &b, now, &mut out);
    assert!(l.is_forwarding(), "{:?}", out.events);
    l
}

/// A node at the end of one leg: everything written to the leg, cut into frames and decoded.
struct Receiver {
    leg: Leg,
    /// Written and not yet a whole frame.
    buf: Vec<u8>,
    dec: Decoder,
    /// The first frame this node could not decode.
    error: Option<String>,
    frames: usize,
}

impl Receiver {
    fn new(leg: Leg) -> Self {
        let l = LinkLimits::default();
        let mut dec = Decoder::new(l.term, l.fragments);
        dec.set_streaming(true);
        Receiver { leg, buf: Vec::new(), dec, error: None, frames: 0 }
    }

    fn push(&mut self, w: Write<'_>) {
        if w.owned {
            // A frame the link built goes between frames, and is whole frames itself.
            assert!(self.buf.is_empty(), "owned write to {:?} inside a frame ({} bytes of it written)", self.leg, self.buf.len());
            let mut at = 0;
            while at < w.bytes.len() {
                match split(&w.bytes[at..], u32::MAX as usize) {
                    Ok(s @ (Split::Tick | Split::Frame { .. })) => at += s.consumed(),
                    other => panic!("owned write to {:?} is not whole frames: {other:?} at {at}", self.leg),
                }
            }
        }
        self.buf.extend_from_slice(w.bytes);
        let mut at = 0;
        loop {
            match split(&self.buf[at..], u32::MAX as usize) {
                Ok(Split::Need(_)) => break,
                Ok(Split::Tick) => at += 4,
                Ok(Split::Frame { len }) => {
                    let frame = &self.buf[at + 4..at + 4 + len];
                    if self.error.is_none() {
                        if let Err(e) = self.dec.decode(frame) {
                            self.error = Some(format!("frame {} ({len} bytes) written to {:?}: {e}", self.frames, self.leg));
                        }
                    }
                    self.frames += 1;
                    at += 4 + len;
                }
                Err(e) => panic!("{e}"),
            }
        }
        self.buf.drain(..at);
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let k = data[0] as usize % 32;
    let n = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let opts = data[5];
    let Some(ctrl) = data.get(6..6 + k) else { return };
    // No ops: reads of 1000 bytes, down and up in turn.
    let ctrl: &[u8] = if ctrl.is_empty() { &[0x08, 0x09] } else { ctrl };
    let payload = &data[6 + k..];
    let cut = n.min(payload.len());
    let streams = [&payload[..cut], &payload[cut..]];

    let f = fixture();
    let now = Instant::now();
    let policy = f.policies[(opts & 1) as usize].clone();
    let h = Arc::new(RouteHandle::new("a", "b", Some(policy), f.registry.clone(), f.registry.clone()));
    let up_dir = (opts & 2 != 0).then(|| h.clone());
    let link = established(LinkPolicy { dirs: [Some(h), up_dir], stats: None }, now);
    let mut hs = Harness::new(link, now);
    hs.up_connected = true;
    hs.established = true;
    let mut rx = [Receiver::new(Leg::Down), Receiver::new(Leg::Up)];
    let mut at = [0usize; 2];
    for &op in ctrl.iter().cycle() {
        let mut leg = if op & 1 == 0 { Leg::Down } else { Leg::Up };
        if at[leg.index()] == streams[leg.index()].len() {
            leg = leg.other();
        }
        let i = leg.index();
        let left = streams[i].len() - at[i];
        if left == 0 {
            break; // both streams used up
        }
        let size = SIZES[((op >> 1) & 7) as usize].min(left);
        let chunk = &streams[i][at[i]..at[i] + size];
        let opaque = hs.link.opaque_pending(leg);
        if op & 0x10 != 0 && opaque > 0 && hs.pending[i].is_empty() {
            // The driver splices the opaque bytes straight to the other leg.
            let n = opaque.min(size);
            rx[leg.other().index()].push(Write { leg: leg.other(), bytes: &chunk[..n], owned: false });
            let mut sink = |w: Write<'_>| rx[w.leg.index()].push(w);
            hs.pass(leg, n, &mut sink);
            at[i] += n;
        } else {
            let mut sink = |w: Write<'_>| rx[w.leg.index()].push(w);
            if !hs.feed(leg, chunk, &mut sink) {
                break;
            }
            at[i] += size;
        }
        for r in &rx {
            // What the link forwarded, a node must be able to decode.
            if let Some(e) = &r.error {
                panic!("{e} (link closed: {})", hs.closed);
            }
        }
    }
});
