//! A fresh link fed hostile bytes on both legs from the first byte: the input is a script
//! of ops, each one byte and then, for a read, that many bytes of data.
//!
//! - `0xFF`: the up connection fails (when the link asked to dial);
//! - `0xFE` / `0xFD`: the harness appends the *right* handshake answer of down (challenge
//!   reply, with down's cookie) / up (challenge ack, with up's cookie) to that leg's next
//!   read, computed from what the link wrote: the link's challenges are random, so a fuzzer
//!   could not answer them itself, and the states after them would stay unreached;
//! - otherwise: bit 0 picks the leg (1: up), bits 1..=6 the read's length (0..=63, capped by
//!   what is left). A read on up first completes a pending dial (`on_up_connected`); before
//!   the link asked to dial, up has no connection and the read is skipped.
//!
//! Checked (see `common::link`): `consumed <= buf.len()`, input ranges within the bytes
//! consumed and written to the other leg, no write to up before it is connected, no write
//! after Close, at most one of each event; and while the link is not forwarding, everything it
//! writes is whole handshake messages (2-byte length and body), owned. No panic anywhere.
#![no_main]
use distgate::handshake::{self, Challenge};
use distgate::link::{Cookie, Leg, Link, LinkLimits, LinkParams};
use distgate::policy::LinkPolicy;
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

#[path = "common/link.rs"]
mod common;
use common::{Harness, Write};

const DOWN_COOKIE: &[u8] = b"down";
const UP_COOKIE: &[u8] = b"up";

/// What the harness learnt from the link's handshake messages, to answer them rightly.
#[derive(Default)]
struct Seen {
    /// Bytes written to each leg while handshaking, not yet a whole message.
    partial: [Vec<u8>; 2],
    /// The last challenge the link sent down, and the last challenge it sent up in its reply.
    down_challenge: Option<u32>,
    up_challenge: Option<u32>,
    /// An input range (a forwarded frame) was written to the leg.
    frames: [bool; 2],
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let params = LinkParams {
        id: 1,
        target: "b".into(),
        down_cookie: Cookie::new(DOWN_COOKIE),
        up_cookie: Cookie::new(UP_COOKIE),
        limits: LinkLimits::default(),
        policy: LinkPolicy::default(),
        hidden: false,
        target_nodes: None,
    };
    let mut h = Harness::new(Link::new(params, now), now);
    let mut seen = Seen::default();
    // A right answer waiting to go out with the leg's next read.
    let mut extra: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut pos = 0;
    while pos < data.len() {
        let op = data[pos];
        pos += 1;
        let forwarding_before = h.established;
        let mut sink = |w: Write<'_>| {
            if forwarding_before {
                return; // frames, once the link forwards: link_forwarding checks those
            }
            // The call that completes the handshake may forward frames right behind the
            // last handshake message: input ranges (checked below to come only with
            // Established). Only the handshake messages before them are parsed.
            let i = w.leg.index();
            if !w.owned || seen.frames[i] {
                seen.frames[i] = true;
                return;
            }
            let p = &mut seen.partial[i];
            p.extend_from_slice(w.bytes);
            while let Some((msg, used)) = handshake::split(p) {
                match (w.leg, msg.first()) {
                    (Leg::Down, Some(b'N')) => {
                        if let Ok(c) = Challenge::parse(msg) {
                            seen.down_challenge = Some(c.challenge);
                        }
                    }
                    (Leg::Up, Some(b'r')) => {
                        if let Ok((c, _)) = handshake::parse_reply(msg) {
                            seen.up_challenge = Some(c);
                        }
                    }
                    _ => {}
                }
                p.drain(..used);
            }
            // An owned write is whole messages: no message is left cut.
            assert!(p.is_empty(), "a partial handshake message written to {:?}", w.leg);
        };
        match op {
            0xFF => {
                if h.dial_pending && !h.closed {
                    h.fail_up(&mut sink);
                }
            }
            0xFE => {
                if let Some(c) = seen.down_challenge {
                    handshake::encode_reply(0x5eed, &handshake::digest(DOWN_COOKIE, c), &mut extra[0]);
                }
            }
            0xFD => {
                if let Some(c) = seen.up_challenge {
                    handshake::encode_ack(&handshake::digest(UP_COOKIE, c), &mut extra[1]);
                }
            }
            _ => {
                let leg = if op & 1 == 0 { Leg::Down } else { Leg::Up };
                let n = ((op >> 1) as usize & 63).min(data.len() - pos);
                let chunk = &data[pos..pos + n];
                pos += n;
                if leg == Leg::Up && h.dial_pending && !h.closed {
                    h.connect_up(&mut sink);
                }
                if leg == Leg::Up && !h.up_connected {
                    continue; // no up connection yet: nothing can arrive on it
                }
                let mut bytes = std::mem::take(&mut extra[leg.index()]);
                bytes.extend_from_slice(chunk);
                if !h.feed(leg, &bytes, &mut sink) {
                    break;
                }
            }
        }
        // Frames pass only once both handshakes completed.
        assert!(h.established || seen.frames == [false; 2], "a frame forwarded before Established");
    }
});
