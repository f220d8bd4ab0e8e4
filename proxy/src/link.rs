//! One proxied distribution connection as a sans-IO state machine.
//!
//! A link has two legs: **down**, the connection a dialling node opened to distgate, and
//! **up**, the connection distgate opens to the node that was dialled. The link is fed the bytes
//! each leg delivered (`on_bytes`) and answers with what to write to each leg — borrowed ranges
//! of the input when a frame passes unchanged, owned bytes for handshake messages — plus events
//! (dial the target, link up, close with a reason). It holds no sockets and reads no clock: time
//! is passed in, so it is tested with byte vectors and fuzzed.
//!
//! Handshake sequencing (distgate plays the target towards down and the dialler towards up):
//!
//! ```text
//!  down (node A)                 distgate                      up (node B)
//!  send_name N(flagsA,crA,A) ──▶           ── dial ──▶
//!                                          send_name N(flagsA∩S, crA, A) ──▶
//!                               ◀── status ─┤◀── sok / nok / not_allowed / alive / named
//!                                          ◀── challenge N(flagsB, chB, crB, B)
//!  ◀── challenge N(F, chD, crB, B)     F = flagsA∩S∩flagsB, so both legs negotiate F
//!  challenge_reply r(chA, dig) ──▶ check dig = md5(cookieDown, chD)
//!                                          r(chU, md5(cookieUp, chB)) ──▶
//!                                          ◀── a(dig)   check dig = md5(cookieUp, chU)
//!  ◀── a(md5(cookieDown, chA))
//!  frames ⇄ codec ⇄ frames
//! ```
//! S is the set of flags distgate's codec understands, without `PUBLISHED` when the link is
//! hidden (`LinkParams::hidden`): then neither node sees the other's `PUBLISHED`, and each
//! treats the connection as hidden. Both still negotiate F: `PUBLISHED` says what the sender
//! is, so taking it out of what both receive changes F by that bit on both sides alike.
//! Down learns B's real name and creation, so pids stay valid; a wrong cookie on either side
//! fails that side's digest and no link comes up.

use crate::handshake::{self, flag, Challenge, SendName};
use crate::policy::{self, FrameAct, LinkPolicy};
use distgate_codec::frame::{split, Split};
use distgate_codec::message::{Decoder, FragLimits};
use distgate_codec::term::Limits;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The connection the dialling node opened to distgate.
    Down,
    /// The connection distgate opened to the dialled node.
    Up,
}

impl Leg {
    /// Index of the leg in per-leg arrays: down 0, up 1 (also the direction of the frames
    /// read from it: 0 is down→up).
    pub fn index(self) -> usize {
        match self {
            Leg::Down => 0,
            Leg::Up => 1,
        }
    }

    pub fn other(self) -> Leg {
        match self {
            Leg::Down => Leg::Up,
            Leg::Up => Leg::Down,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Leg::Down => "down",
            Leg::Up => "up",
        }
    }
}

/// A cookie: compared and hashed, never printed.
#[derive(Clone)]
pub struct Cookie(Arc<[u8]>);

impl Cookie {
    pub fn new(bytes: &[u8]) -> Self {
        Cookie(bytes.into())
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Bounds for one link, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct LinkLimits {
    pub max_frame: usize,
    pub handshake_timeout: Duration,
    /// A leg silent for this long is dead (nodes tick at a quarter of net_ticktime).
    pub tick_timeout: Duration,
    pub term: Limits,
    pub fragments: FragLimits,
}

impl Default for LinkLimits {
    fn default() -> Self {
        LinkLimits {
            max_frame: 128 << 20,
            handshake_timeout: Duration::from_secs(10),
            tick_timeout: Duration::from_secs(75),
            term: Limits::default(),
            fragments: FragLimits::default(),
        }
    }
}

/// What a link is for: who may dial whom, with which cookies.
#[derive(Debug, Clone)]
pub struct LinkParams {
    pub id: u64,
    /// The node down asked EPMD for (its alive name, without `@host`); up must present a
    /// name with exactly this alive part.
    pub target: String,
    pub down_cookie: Cookie,
    pub up_cookie: Cookie,
    pub limits: LinkLimits,
    /// The route's policy handles (none: frames are decoded and forwarded, not judged).
    pub policy: LinkPolicy,
    /// The link is hidden: `PUBLISHED` is cleared from the flags distgate presents on both
    /// legs (the send_name to up, the challenge to down), so each node sees the other as a
    /// hidden node (`nodes(hidden)`, not `nodes()`, and no `global` sync between them).
    pub hidden: bool,
    /// The target's cluster's `nodes`: up's full name must match them (EPMD only saw the
    /// alive part). `None`: any.
    pub target_nodes: Option<std::sync::Arc<crate::nodes::NodeFilter>>,
}

/// Why a link closed. Labels are stable metric labels; `detail` is for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub label: &'static str,
    pub leg: Option<Leg>,
    pub detail: String,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.leg {
            Some(l) => write!(f, "{} ({} leg): {}", self.label, l.name(), self.detail),
            None => write!(f, "{}: {}", self.label, self.detail),
        }
    }
}

/// Something the driver must do or know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Connect the up leg now.
    DialUp,
    /// Both handshakes completed.
    Established { down_name: String, up_name: String, flags: u64 },
    /// Close both legs (after flushing what was queued, when `flush` is set).
    Close { reason: CloseReason, flush: bool },
}

/// A piece to write to a leg: a range of the input slice just handed in, or owned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    Input(Range<usize>),
    Owned(Vec<u8>),
}

/// The link's answer to one call. Writes are in order per leg.
#[derive(Debug, Default)]
pub struct Output {
    pub writes: Vec<(Leg, Chunk)>,
    pub events: Vec<Event>,
    /// Frames forwarded per direction in this call (for metrics).
    pub frames: [u64; 2],
    /// Of those, frames streamed (see [`Decoder::set_streaming`]).
    pub streamed: [u64; 2],
    /// Answers the link held back behind a frame streaming to their receiver (see
    /// `Link::back`), for metrics.
    pub held: u64,
}

impl Output {
    pub fn clear(&mut self) {
        self.writes.clear();
        self.events.clear();
        self.frames = [0; 2];
        self.streamed = [0; 2];
        self.held = 0;
    }
    fn owned(&mut self, leg: Leg, bytes: Vec<u8>) {
        self.writes.push((leg, Chunk::Owned(bytes)));
    }
}

enum State {
    AwaitSendName,
    AwaitUpConnect { sn: SendName },
    AwaitUpStatus { sn: SendName },
    /// up said `alive`: down must answer `strue` / `sfalse`.
    AwaitDownAliveAnswer { sn: SendName },
    AwaitUpChallenge { sn: SendName },
    AwaitDownReply { sn: SendName, up: Challenge, down_challenge: u32 },
    AwaitDownComplement { sn: SendName, up: Challenge, down_challenge: u32 },
    AwaitUpAck { sn: SendName, up: Challenge, down_their: u32, up_challenge: u32 },
    Forwarding,
    Closed,
}

/// One proxied connection. See the module docs.
pub struct Link {
    params: LinkParams,
    state: State,
    started: Instant,
    last_rx: [Instant; 2],
    /// One decoder per direction: index 0 decodes down→up, 1 up→down.
    decoders: Option<Box<[Decoder; 2]>>,
    /// Policy state per direction (same indices), when the link has any policy handle.
    policy: Option<Box<[policy::Direction; 2]>>,
    negotiated: u64,
    /// The close event was emitted (the state is taken out while a message is handled, so
    /// the state alone cannot say).
    close_sent: bool,
    /// Per direction: bytes of a streamed frame still to come, which pass as they arrive
    /// without being looked at (the body of the message's final binary; see `forward`).
    opaque: [usize; 2],
    /// Per direction: the frame at the front was found not streamable; wait for all of it.
    whole: [bool; 2],
    /// Per leg written to: frames the link built for that leg (a policy's reply to a sender)
    /// while a streamed frame from the other leg was passing to it. They wait for the rest
    /// of that frame: written in its middle, they would cut it.
    deferred: [Vec<u8>; 2],
}

/// Write the run of passing input that started at `run_start` and ends at `pos` (offsets in
/// the slice at `base` of the caller's buffer) to `dst`, as one range: one write, no copy.
fn end_run(out: &mut Output, dst: Leg, base: usize, run_start: &mut Option<usize>, pos: usize) {
    if let Some(s) = run_start.take() {
        out.writes.push((dst, Chunk::Input(base + s..base + pos)));
    }
}

/// Most bytes of answers (a policy's replies to a sender) held for a frame streaming to that
/// sender (see `Link::back`): about 7 000 refused spawn requests' replies.
pub const MAX_DEFERRED: usize = 1 << 20;

/// A frame at least this long that is not all here yet is looked at for streaming: shorter
/// ones are cheaper to wait for.
const STREAM_MIN: usize = 16 << 10;
/// Bytes of a frame's start enough to decide whether it streams (its headers, control and
/// the payload up to the final binary's body); with this many here and no decision, the link
/// waits for the whole frame instead of asking again on every read.
const STREAM_DECIDE: usize = 4 << 10;

impl Link {
    pub fn new(params: LinkParams, now: Instant) -> Self {
        Link {
            params,
            state: State::AwaitSendName,
            started: now,
            last_rx: [now; 2],
            decoders: None,
            policy: None,
            negotiated: 0,
            close_sent: false,
            opaque: [0; 2],
            whole: [false; 2],
            deferred: [Vec::new(), Vec::new()],
        }
    }

    /// The largest frame this link accepts (its limits are fixed when it opens; a reload
    /// changes those of later links only).
    pub fn max_frame(&self) -> usize {
        self.params.limits.max_frame
    }

    pub fn id(&self) -> u64 {
        self.params.id
    }

    pub fn is_forwarding(&self) -> bool {
        matches!(self.state, State::Forwarding)
    }

    pub fn is_closed(&self) -> bool {
        self.close_sent
    }

    /// Bytes that arrive next on `leg` and pass to the other leg as they are, without being
    /// looked at: the rest of a streamed frame (see [`Decoder::set_streaming`]). A driver
    /// that can move bytes between sockets without reading them (splice) may move up to
    /// this many and report them with [`Link::on_passed`]; one that cannot just hands them
    /// to [`Link::on_bytes`] like any others.
    pub fn opaque_pending(&self, leg: Leg) -> usize {
        if matches!(self.state, State::Forwarding) {
            self.opaque[leg.index()]
        } else {
            0
        }
    }

    /// Whether a frame's start has gone out to one leg while the rest of it is still to come
    /// from the other (a frame streamed as it arrives). A stopping driver waits for that frame
    /// to end before it closes the link: cut there, its receiver would lose the message that
    /// was already on its way.
    pub fn mid_frame(&self) -> bool {
        matches!(self.state, State::Forwarding) && self.opaque.iter().any(|&n| n > 0)
    }

    /// The driver moved `n` (at most [`Link::opaque_pending`]) bytes from `leg` to the other
    /// leg itself. When that ends the frame, answers held back for it (see `Link::back`) are
    /// in `out`, to be written behind it.
    pub fn on_passed(&mut self, leg: Leg, n: usize, now: Instant, out: &mut Output) {
        let i = leg.index();
        self.last_rx[i] = now;
        self.opaque[i] -= n.min(self.opaque[i]);
        if self.opaque[i] == 0 && matches!(self.state, State::Forwarding) {
            self.flush_deferred(leg.other(), out);
        }
    }

    /// Flags both legs negotiated (0 before the handshake completes).
    pub fn flags(&self) -> u64 {
        self.negotiated
    }

    /// The flags distgate may present on either leg: those its codec understands, without
    /// `PUBLISHED` on a hidden link.
    fn offerable(&self) -> u64 {
        if self.params.hidden {
            flag::SUPPORTED & !flag::PUBLISHED
        } else {
            flag::SUPPORTED
        }
    }

    fn close(&mut self, out: &mut Output, label: &'static str, leg: Option<Leg>, detail: impl Into<String>, flush: bool) {
        self.state = State::Closed;
        if !self.close_sent {
            self.close_sent = true;
            out.events.push(Event::Close { reason: CloseReason { label, leg, detail: detail.into() }, flush });
        }
    }

    /// The up leg's TCP connection is established.
    pub fn on_up_connected(&mut self, now: Instant, out: &mut Output) {
        self.last_rx[Leg::Up.index()] = now;
        let State::AwaitUpConnect { sn } = std::mem::replace(&mut self.state, State::Closed) else {
            self.close(out, "internal", Some(Leg::Up), "connected in the wrong state", false);
            return;
        };
        // Offer up only what down offered and distgate understands.
        let mut b = Vec::new();
        let offered = SendName { flags: sn.flags & self.offerable(), creation: sn.creation, name: sn.name.clone() };
        offered.encode(sn.creation.unwrap_or(0), &mut b);
        out.owned(Leg::Up, b);
        self.state = State::AwaitUpStatus { sn };
    }

    /// The up leg could not be connected.
    pub fn on_up_connect_failed(&mut self, detail: &str, out: &mut Output) {
        // Tell the dialler the target is not there, as a node would for a refused name.
        let mut b = Vec::new();
        handshake::encode_status(b"nok", &mut b);
        out.owned(Leg::Down, b);
        self.close(out, "upstream_unreachable", Some(Leg::Up), detail.to_string(), true);
    }

    /// A leg was closed by its peer (or failed).
    pub fn on_closed(&mut self, leg: Leg, detail: &str, out: &mut Output) {
        let label = if self.is_forwarding() { "peer_closed" } else { "handshake_peer_closed" };
        self.close(out, label, Some(leg), detail.to_string(), false);
    }

    /// Time passed: handshake deadline and dead-peer detection.
    pub fn on_timer(&mut self, now: Instant, out: &mut Output) {
        match self.state {
            State::Closed => {}
            State::Forwarding => {
                for leg in [Leg::Down, Leg::Up] {
                    if now.duration_since(self.last_rx[leg.index()]) > self.params.limits.tick_timeout {
                        self.close(out, "tick_timeout", Some(leg), format!("no traffic (not even ticks) for {:?}", self.params.limits.tick_timeout), false);
                        return;
                    }
                }
            }
            _ => {
                if now.duration_since(self.started) > self.params.limits.handshake_timeout {
                    let leg = match self.state {
                        State::AwaitSendName | State::AwaitDownAliveAnswer { .. } | State::AwaitDownReply { .. } | State::AwaitDownComplement { .. } => Leg::Down,
                        _ => Leg::Up,
                    };
                    self.close(out, "handshake_timeout", Some(leg), format!("handshake not complete after {:?}", self.params.limits.handshake_timeout), false);
                }
            }
        }
    }

    /// The earliest instant `on_timer` could act.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Forwarding => {
                let oldest = self.last_rx[0].min(self.last_rx[1]);
                Some(oldest + self.params.limits.tick_timeout)
            }
            _ => Some(self.started + self.params.limits.handshake_timeout),
        }
    }

    /// Bytes arrived on `leg`; `buf` is everything received on it and not yet consumed.
    /// Returns how many bytes of `buf` were consumed; the rest must be handed in again with
    /// more data appended. Writes in `out` that borrow (`Chunk::Input`) refer to `buf`.
    pub fn on_bytes(&mut self, leg: Leg, buf: &[u8], now: Instant, out: &mut Output) -> usize {
        self.last_rx[leg.index()] = now;
        let mut pos = 0;
        loop {
            if matches!(self.state, State::Closed) {
                return buf.len();
            }
            if matches!(self.state, State::Forwarding) {
                // Frames the decoder streamed in this call, for metrics.
                let streamed = |l: &Self| l.decoders.as_ref().map_or(0, |d| d[leg.index()].streamed());
                let before = streamed(self);
                let used = self.forward(leg, &buf[pos..], pos, now, out);
                out.streamed[leg.index()] += streamed(self) - before;
                return pos + used;
            }
            let Some((msg, used)) = handshake::split(&buf[pos..]) else {
                if buf.len() - pos > 4096 {
                    self.close(out, "handshake_garbage", Some(leg), "oversized handshake message", false);
                    return buf.len();
                }
                return pos;
            };
            pos += used;
            if let Err(e) = self.handshake_msg(leg, msg, out) {
                self.close(out, "handshake_error", Some(leg), e.to_string(), false);
                return buf.len();
            }
        }
    }

    fn handshake_msg(&mut self, leg: Leg, msg: &[u8], out: &mut Output) -> Result<(), handshake::HandshakeError> {
        let bad = |what: &str| Err(handshake::HandshakeError(what.to_string()));
        let state = std::mem::replace(&mut self.state, State::Closed);
        match (state, leg) {
            (State::AwaitSendName, Leg::Down) => {
                let sn = SendName::parse(msg)?;
                if sn.flags & flag::HANDSHAKE_23 == 0 {
                    // Pre-OTP-23 dialler: no creation in the handshake, and OTP 25 targets refuse
                    // it anyway. Answer as OTP 25 would.
                    let mut b = Vec::new();
                    handshake::encode_status(b"not_allowed", &mut b);
                    out.owned(Leg::Down, b);
                    self.close(out, "not_allowed", Some(Leg::Down), format!("{} lacks HANDSHAKE_23", sn.name), true);
                    return Ok(());
                }
                self.state = State::AwaitUpConnect { sn };
                out.events.push(Event::DialUp);
                Ok(())
            }
            (State::AwaitUpStatus { sn }, Leg::Up) => {
                if msg.first() != Some(&b's') {
                    return bad("expected status ('s') from the target");
                }
                let text = &msg[1..];
                // Relay the status verbatim: down must see what the real target said.
                let mut b = Vec::new();
                handshake::frame(&mut b, msg);
                out.owned(Leg::Down, b);
                match text {
                    b"ok" | b"ok_simultaneous" => self.state = State::AwaitUpChallenge { sn },
                    b"alive" => self.state = State::AwaitDownAliveAnswer { sn },
                    t if t.starts_with(b"named:") => self.state = State::AwaitUpChallenge { sn },
                    b"nok" | b"not_allowed" => {
                        let why = String::from_utf8_lossy(text).into_owned();
                        self.close(out, "refused_by_target", Some(Leg::Up), format!("target answered {why}"), true);
                    }
                    other => {
                        let why = String::from_utf8_lossy(other).into_owned();
                        self.close(out, "handshake_error", Some(Leg::Up), format!("unknown status {why:?}"), true);
                    }
                }
                Ok(())
            }
            (State::AwaitDownAliveAnswer { sn }, Leg::Down) => {
                let mut b = Vec::new();
                handshake::frame(&mut b, msg);
                out.owned(Leg::Up, b);
                match msg {
                    b"strue" => self.state = State::AwaitUpChallenge { sn },
                    b"sfalse" => self.close(out, "alive_declined", Some(Leg::Down), "dialler declined (already connected)", true),
                    _ => return bad("expected strue/sfalse"),
                }
                Ok(())
            }
            (State::AwaitUpChallenge { sn }, Leg::Up) => {
                let up = Challenge::parse(msg)?;
                let alive = up.name.split('@').next().unwrap_or("");
                if alive != self.params.target {
                    return Err(handshake::HandshakeError(format!(
                        "target presented itself as {} but {} was dialled",
                        up.name, self.params.target
                    )));
                }
                if let Some(f) = self.params.target_nodes.as_ref().filter(|f| !f.knows(&up.name)) {
                    self.close(out, "target_not_in_nodes", Some(Leg::Up), format!("{} is not in its cluster's nodes {f}", up.name), false);
                    return Ok(());
                }
                let Some(down_challenge) = handshake::random_challenge() else {
                    return bad("no entropy source for a challenge");
                };
                // Up negotiates its own flags ∩ what it was offered (sn.flags ∩ offerable): this.
                // Down is presented exactly this, so it negotiates this too. PUBLISHED, taken out
                // of both on a hidden link, says what the sender is, not what it can decode.
                let negotiated = sn.flags & self.offerable() & up.flags;
                let mut b = Vec::new();
                Challenge { flags: negotiated, challenge: down_challenge, creation: up.creation, name: up.name.clone() }
                    .encode(&mut b);
                out.owned(Leg::Down, b);
                self.negotiated = negotiated;
                self.state = if sn.creation.is_none() {
                    State::AwaitDownComplement { sn, up, down_challenge }
                } else {
                    State::AwaitDownReply { sn, up, down_challenge }
                };
                Ok(())
            }
            (State::AwaitDownComplement { mut sn, up, down_challenge }, Leg::Down) => {
                let (_high, creation) = handshake::parse_complement(msg)?;
                sn.creation = Some(creation);
                self.state = State::AwaitDownReply { sn, up, down_challenge };
                Ok(())
            }
            (State::AwaitDownReply { sn, up, down_challenge }, Leg::Down) => {
                let (their, dig) = handshake::parse_reply(msg)?;
                let want = handshake::digest(self.params.down_cookie.bytes(), down_challenge);
                if !handshake::digest_eq(&dig, &want) {
                    self.close(out, "bad_cookie", Some(Leg::Down), format!("{} answered the challenge with the wrong cookie", sn.name), false);
                    return Ok(());
                }
                let Some(up_challenge) = handshake::random_challenge() else {
                    return bad("no entropy source for a challenge");
                };
                let mut b = Vec::new();
                let d = handshake::digest(self.params.up_cookie.bytes(), up.challenge);
                handshake::encode_reply(up_challenge, &d, &mut b);
                out.owned(Leg::Up, b);
                self.state = State::AwaitUpAck { sn, up, down_their: their, up_challenge };
                Ok(())
            }
            (State::AwaitUpAck { sn, up, down_their, up_challenge }, Leg::Up) => {
                let dig = handshake::parse_ack(msg)?;
                let want = handshake::digest(self.params.up_cookie.bytes(), up_challenge);
                if !handshake::digest_eq(&dig, &want) {
                    self.close(out, "bad_cookie", Some(Leg::Up), format!("{} acknowledged with the wrong cookie", up.name), false);
                    return Ok(());
                }
                let mut b = Vec::new();
                handshake::encode_ack(&handshake::digest(self.params.down_cookie.bytes(), down_their), &mut b);
                out.owned(Leg::Down, b);
                let l = self.params.limits;
                let mut decoders = Box::new([Decoder::new(l.term, l.fragments), Decoder::new(l.term, l.fragments)]);
                // Without a policy nothing needs whole messages: stream what can be streamed.
                // (Where the route has a policy handle, its direction decides per frame.)
                for d in decoders.iter_mut() {
                    d.set_streaming(true);
                }
                self.decoders = Some(decoders);
                let p = &self.params.policy;
                if !p.is_empty() {
                    // The sender of each direction, for the pid of a stand-in message.
                    let down = policy::wire::Sender { node: sn.name.clone(), creation: sn.creation.unwrap_or(0) };
                    let up_sender = policy::wire::Sender { node: up.name.clone(), creation: up.creation };
                    let dir = |i: usize, s| policy::Direction::new(p.dirs[i].clone(), p.stats.clone(), self.params.id, i, s, l.term);
                    self.policy = Some(Box::new([dir(0, down), dir(1, up_sender)]));
                }
                self.state = State::Forwarding;
                out.events.push(Event::Established { down_name: sn.name, up_name: up.name, flags: self.negotiated });
                Ok(())
            }
            (s, l) => {
                let expected = match s {
                    State::AwaitSendName => "send_name from down",
                    State::AwaitUpConnect { .. } => "nothing before the target is connected",
                    State::AwaitUpStatus { .. } => "the target's status",
                    State::AwaitDownAliveAnswer { .. } => "down's answer to alive",
                    State::AwaitUpChallenge { .. } => "the target's challenge",
                    State::AwaitDownReply { .. } | State::AwaitDownComplement { .. } => "down's challenge reply",
                    State::AwaitUpAck { .. } => "the target's challenge ack",
                    State::Forwarding | State::Closed => "no handshake message",
                };
                Err(handshake::HandshakeError(format!("unexpected message from {} leg while waiting for {expected}", l.name())))
            }
        }
    }

    /// Forward every complete frame of `buf` (at offset `base` of the caller's slice) to the
    /// other leg, each parsed by the codec on the way and, where a policy applies, judged.
    /// Frames that pass go out as ranges of the input; a frame the policy replaces goes out as
    /// owned bytes in its place, so order is kept. Returns bytes consumed.
    fn forward(&mut self, leg: Leg, buf: &[u8], base: usize, now: Instant, out: &mut Output) -> usize {
        let mut pos = 0;
        let dst = leg.other();
        let i = leg.index();
        let mut run_start = None::<usize>;
        let max = self.params.limits.max_frame;
        // The rest of a streamed frame goes first, as it is.
        if self.opaque[i] > 0 {
            pos = self.opaque[i].min(buf.len());
            self.opaque[i] -= pos;
            run_start = Some(0);
            if self.opaque[i] == 0 && !self.deferred[dst.index()].is_empty() {
                // That frame is complete at dst: what waited for it goes right behind it.
                end_run(out, dst, base, &mut run_start, pos);
                self.flush_deferred(dst, out);
            }
        }
        while pos < buf.len() {
            match split(&buf[pos..], max) {
                Ok(Split::Need(_)) => {
                    // Forward the start of a large frame now when the rest of it needs no
                    // look (cut-through): no waiting for, holding or copying the whole frame.
                    if let Some(len) = self.streamable(i, &buf[pos..]) {
                        match self.decoders.as_mut().map(|d| d[i].decode_partial(&buf[pos + 4..], len)) {
                            Some(Ok(true)) => {
                                run_start.get_or_insert(pos);
                                self.opaque[i] = len - (buf.len() - pos - 4);
                                pos = buf.len();
                                out.frames[i] += 1;
                            }
                            Some(Ok(false)) | None => self.whole[i] = buf.len() - pos - 4 >= STREAM_DECIDE,
                            Some(Err(e)) => {
                                end_run(out, dst, base, &mut run_start, pos);
                                self.close(out, "bad_frame", Some(leg), format!("frame at stream offset +{pos}: {e}"), true);
                                return buf.len();
                            }
                        }
                    }
                    break;
                }
                Ok(Split::Tick) => {
                    run_start.get_or_insert(pos);
                    pos += 4;
                    out.frames[i] += 1;
                }
                Ok(Split::Frame { len }) => {
                    self.whole[i] = false;
                    let frame = &buf[pos + 4..pos + 4 + len];
                    let decoders = self.decoders.as_mut().expect("decoders exist while forwarding");
                    let act = match self.policy.as_mut() {
                        Some(dirs) => dirs[i].frame(&mut decoders[i], frame, now),
                        None => decoders[i].decode(frame).map(|_| FrameAct::Forward),
                    };
                    let act = match act {
                        Ok(a) => a,
                        Err(e) => {
                            // Flush what was already accepted, then close: nothing allowed is lost.
                            end_run(out, dst, base, &mut run_start, pos);
                            self.close(out, "bad_frame", Some(leg), format!("frame at stream offset +{pos}: {e}"), true);
                            return buf.len();
                        }
                    };
                    if act != FrameAct::Forward {
                        end_run(out, dst, base, &mut run_start, pos);
                    }
                    match act {
                        FrameAct::Forward => {
                            run_start.get_or_insert(pos);
                        }
                        FrameAct::Absorb => {}
                        FrameAct::Replace { forward, back } => {
                            if !forward.is_empty() {
                                out.owned(dst, forward);
                            }
                            if let Some(b) = back {
                                if !self.back(leg, b, out) {
                                    let detail = format!("more than {MAX_DEFERRED} bytes of answers held for a frame streaming to the {} leg", leg.name());
                                    self.close(out, "reply_backlog", Some(leg), detail, true);
                                    return buf.len();
                                }
                            }
                        }
                        FrameAct::Close { reason, back } => {
                            if let Some(b) = back {
                                // Held back behind a frame streaming to leg, it is lost with
                                // the link: the rest of that frame will not be read now.
                                self.back(leg, b, out);
                            }
                            self.close(out, "policy", Some(leg), reason, true);
                            return buf.len();
                        }
                    }
                    pos += 4 + len;
                    out.frames[i] += 1;
                }
                Err(e) => {
                    end_run(out, dst, base, &mut run_start, pos);
                    self.close(out, "frame_too_large", Some(leg), e.to_string(), true);
                    return buf.len();
                }
            }
        }
        // Consecutive frames go out as one contiguous range: one write, no copy.
        end_run(out, dst, base, &mut run_start, pos);
        pos
    }

    /// Write frames the link built to `leg`, the sender of the frame they answer; unless a
    /// streamed frame from the other leg is passing to `leg` (its start written, its rest
    /// still to come): then after that frame. False when that would hold more than
    /// [`MAX_DEFERRED`] bytes: the link must close (memory is bounded by the link, not by
    /// how many refused requests a peer sends while a frame to it is slow to arrive).
    fn back(&mut self, leg: Leg, bytes: Vec<u8>, out: &mut Output) -> bool {
        if self.opaque[leg.other().index()] > 0 {
            let held = &mut self.deferred[leg.index()];
            if held.len() + bytes.len() > MAX_DEFERRED {
                return false;
            }
            held.extend_from_slice(&bytes);
            out.held += 1;
        } else {
            self.flush_deferred(leg, out);
            out.owned(leg, bytes);
        }
        true
    }

    /// Write what was held back for `leg`, once no streamed frame is passing to it.
    fn flush_deferred(&mut self, leg: Leg, out: &mut Output) {
        if self.opaque[leg.other().index()] == 0 && !self.deferred[leg.index()].is_empty() {
            out.owned(leg, std::mem::take(&mut self.deferred[leg.index()]));
        }
    }

    /// The declared data length of the incomplete frame at the front of `rest`, when it is
    /// worth asking the decoder whether it streams: no policy judging this direction now (a
    /// policy judges whole messages), a large frame, its length here, and not already
    /// refused.
    fn streamable(&mut self, i: usize, rest: &[u8]) -> Option<usize> {
        if self.whole[i] || self.policy.as_mut().is_some_and(|d| !d[i].unjudged()) {
            return None;
        }
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        (len >= STREAM_MIN && rest.len() > 4).then_some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distgate_codec::message::Framing;

    fn params() -> LinkParams {
        LinkParams {
            id: 1,
            target: "b".into(),
            down_cookie: Cookie::new(b"down"),
            up_cookie: Cookie::new(b"up"),
            limits: LinkLimits::default(),
            policy: LinkPolicy::default(),
            hidden: false,
            target_nodes: None,
        }
    }

    fn owned(out: &Output, leg: Leg) -> Vec<u8> {
        out.writes
            .iter()
            .filter(|(l, _)| *l == leg)
            .flat_map(|(_, c)| match c {
                Chunk::Owned(b) => b.clone(),
                Chunk::Input(_) => panic!("no input ranges during the handshake"),
            })
            .collect()
    }

    const FLAGS: u64 = 0x0000000d07df7fbc;

    /// Drive a full handshake with fake peers; returns the link and down's/up's view.
    fn handshake(down_cookie: &[u8], up_cookie: &[u8]) -> (Link, Output, Vec<Event>) {
        handshake_with(params(), down_cookie, up_cookie)
    }

    fn handshake_with(params: LinkParams, down_cookie: &[u8], up_cookie: &[u8]) -> (Link, Output, Vec<Event>) {
        let now = Instant::now();
        let mut l = Link::new(params, now);
        let mut out = Output::default();
        let mut b = Vec::new();
        SendName { flags: FLAGS, creation: Some(11), name: "a@h".into() }.encode(11, &mut b);
        assert_eq!(l.on_bytes(Leg::Down, &b, now, &mut out), b.len());
        assert_eq!(out.events, vec![Event::DialUp]);
        out.clear();
        l.on_up_connected(now, &mut out);
        let sent = owned(&out, Leg::Up);
        let sn = SendName::parse(handshake::split(&sent).unwrap().0).unwrap();
        assert_eq!((sn.name.as_str(), sn.creation), ("a@h", Some(11)));
        out.clear();
        // Up: status ok + challenge, in one read.
        let mut b = Vec::new();
        handshake::encode_status(b"ok", &mut b);
        Challenge { flags: FLAGS | flag::PUBLISHED, challenge: 777, creation: 99, name: "b@h".into() }.encode(&mut b);
        assert_eq!(l.on_bytes(Leg::Up, &b, now, &mut out), b.len());
        let to_down = owned(&out, Leg::Down);
        let (st, n) = handshake::split(&to_down).unwrap();
        assert_eq!(st, b"sok");
        let ch = Challenge::parse(handshake::split(&to_down[n..]).unwrap().0).unwrap();
        assert_eq!((ch.name.as_str(), ch.creation, ch.flags), ("b@h", 99, FLAGS & flag::SUPPORTED));
        out.clear();
        // Down replies with its cookie.
        let mut b = Vec::new();
        handshake::encode_reply(555, &handshake::digest(down_cookie, ch.challenge), &mut b);
        l.on_bytes(Leg::Down, &b, now, &mut out);
        if l.is_closed() {
            let ev = out.events.clone();
            return (l, out, ev);
        }
        let to_up = owned(&out, Leg::Up);
        let (their, dig) = handshake::parse_reply(handshake::split(&to_up).unwrap().0).unwrap();
        assert!(handshake::digest_eq(&dig, &handshake::digest(b"up", 777)));
        out.clear();
        let mut b = Vec::new();
        handshake::encode_ack(&handshake::digest(up_cookie, their), &mut b);
        // A frame right behind the ack, in the same read.
        b.extend_from_slice(&[0, 0, 0, 0]);
        let used = l.on_bytes(Leg::Up, &b, now, &mut out);
        assert_eq!(used, b.len());
        let ev = out.events.clone();
        (l, out, ev)
    }

    #[test]
    fn both_legs_complete_with_their_own_cookies() {
        let (l, out, ev) = handshake(b"down", b"up");
        assert!(l.is_forwarding(), "{ev:?}");
        let to_down: Vec<_> = out.writes.iter().filter(|(leg, _)| *leg == Leg::Down).collect();
        // The ack for down, then the tick forwarded as a range of the input.
        assert!(matches!(&to_down[0].1, Chunk::Owned(a) if a[2] == b'a' && handshake::parse_ack(&a[2..]).unwrap() == handshake::digest(b"down", 555)));
        assert!(matches!(&to_down[1].1, Chunk::Input(r) if r.len() == 4));
        assert!(matches!(&ev[0], Event::Established { down_name, up_name, .. } if down_name == "a@h" && up_name == "b@h"));
    }

    /// Two published nodes (both send `PUBLISHED`) through a link: the flags distgate presents
    /// to up (send_name) and to down (challenge), and the flags each node then negotiates as OTP
    /// does (its own ∩ what it was presented), with the flags the link reports.
    fn presented_flags(hidden: bool) -> (u64, u64, [u64; 3]) {
        let now = Instant::now();
        let mut l = Link::new(LinkParams { hidden, ..params() }, now);
        let mut out = Output::default();
        let (down_own, up_own) = (FLAGS | flag::PUBLISHED, FLAGS | flag::PUBLISHED);
        let mut b = Vec::new();
        SendName { flags: down_own, creation: Some(11), name: "a@h".into() }.encode(11, &mut b);
        l.on_bytes(Leg::Down, &b, now, &mut out);
        out.clear();
        l.on_up_connected(now, &mut out);
        let to_up = SendName::parse(handshake::split(&owned(&out, Leg::Up)).unwrap().0).unwrap().flags;
        out.clear();
        let mut b = Vec::new();
        handshake::encode_status(b"ok", &mut b);
        Challenge { flags: up_own, challenge: 777, creation: 99, name: "b@h".into() }.encode(&mut b);
        l.on_bytes(Leg::Up, &b, now, &mut out);
        let to_down_bytes = owned(&out, Leg::Down);
        let n = handshake::split(&to_down_bytes).unwrap().1;
        let ch = Challenge::parse(handshake::split(&to_down_bytes[n..]).unwrap().0).unwrap();
        let to_down = ch.flags;
        out.clear();
        let mut b = Vec::new();
        handshake::encode_reply(555, &handshake::digest(b"down", ch.challenge), &mut b);
        l.on_bytes(Leg::Down, &b, now, &mut out);
        let (their, _) = handshake::parse_reply(handshake::split(&owned(&out, Leg::Up)).unwrap().0).unwrap();
        out.clear();
        let mut b = Vec::new();
        handshake::encode_ack(&handshake::digest(b"up", their), &mut b);
        l.on_bytes(Leg::Up, &b, now, &mut out);
        assert!(l.is_forwarding(), "{:?}", out.events);
        (to_up, to_down, [down_own & to_down, up_own & to_up, l.flags()])
    }

    #[test]
    fn a_hidden_link_presents_no_published_flag_on_either_leg() {
        let (to_up, to_down, [down, up, link]) = presented_flags(true);
        assert_eq!(to_up & flag::PUBLISHED, 0, "send_name to up: {to_up:#x}");
        assert_eq!(to_down & flag::PUBLISHED, 0, "challenge to down: {to_down:#x}");
        assert_eq!((down, up), (link, link), "both nodes negotiate the flags the link reports");
        assert_eq!(link, FLAGS & flag::SUPPORTED, "only PUBLISHED is taken away");
        // Not hidden: both legs carry PUBLISHED, and both nodes still negotiate the same flags.
        let (to_up, to_down, [down, up, link]) = presented_flags(false);
        assert_ne!(to_up & flag::PUBLISHED, 0, "send_name to up: {to_up:#x}");
        assert_ne!(to_down & flag::PUBLISHED, 0, "challenge to down: {to_down:#x}");
        assert_eq!((down, up), (link, link));
        assert_eq!(link, (FLAGS | flag::PUBLISHED) & flag::SUPPORTED);
    }

    #[test]
    fn wrong_cookie_on_either_side_refuses_the_link() {
        let (l, _, ev) = handshake(b"s3cr3t-c00kie", b"up");
        assert!(l.is_closed());
        assert!(matches!(&ev[0], Event::Close { reason, .. } if reason.label == "bad_cookie" && reason.leg == Some(Leg::Down)));
        let (l, _, ev) = handshake(b"down", b"s3cr3t-c00kie");
        assert!(l.is_closed());
        assert!(matches!(&ev[0], Event::Close { reason, .. } if reason.label == "bad_cookie" && reason.leg == Some(Leg::Up)));
        // The cookie itself never appears in a reason.
        for e in ev {
            assert!(!format!("{e:?}").contains("s3cr3t"));
        }
    }

    /// EPMD matched only the alive part `b` of the route's `nodes`; the host part is judged
    /// on the name the target presents.
    #[test]
    fn a_target_outside_its_clusters_nodes_is_refused_on_its_full_name() {
        let filter = |p: &str| {
            let pats = [distgate_config::NodePattern::parse(p).unwrap()];
            Some(std::sync::Arc::new(crate::nodes::NodeFilter::new(&pats).unwrap()))
        };
        let (l, _, ev) = handshake_with(LinkParams { target_nodes: filter("b*@h"), ..params() }, b"down", b"up");
        assert!(l.is_forwarding(), "{ev:?}");
        let now = Instant::now();
        let mut l = Link::new(LinkParams { target_nodes: filter("b@other"), ..params() }, now);
        let mut out = Output::default();
        let mut b = Vec::new();
        SendName { flags: FLAGS, creation: Some(11), name: "a@h".into() }.encode(11, &mut b);
        l.on_bytes(Leg::Down, &b, now, &mut out);
        l.on_up_connected(now, &mut out);
        out.clear();
        let mut b = Vec::new();
        handshake::encode_status(b"ok", &mut b);
        Challenge { flags: FLAGS | flag::PUBLISHED, challenge: 777, creation: 99, name: "b@h".into() }.encode(&mut b);
        l.on_bytes(Leg::Up, &b, now, &mut out);
        assert!(l.is_closed());
        assert!(
            matches!(&out.events[..], [Event::Close { reason, .. }] if reason.label == "target_not_in_nodes" && reason.leg == Some(Leg::Up) && reason.detail.contains("b@h")),
            "{:?}",
            out.events
        );
        // Down got the status, never a challenge.
        assert_eq!(owned(&out, Leg::Down), b"\0\x03sok");
    }

    #[test]
    fn garbage_and_timeouts_close_with_reasons() {
        let now = Instant::now();
        let mut l = Link::new(params(), now);
        let mut out = Output::default();
        l.on_bytes(Leg::Down, &[0, 3, b'x', b'y', b'z'], now, &mut out);
        assert!(matches!(&out.events[0], Event::Close { reason, .. } if reason.label == "handshake_error"));
        let mut l = Link::new(params(), now);
        let mut out = Output::default();
        l.on_timer(now + Duration::from_secs(11), &mut out);
        assert!(matches!(&out.events[0], Event::Close { reason, .. } if reason.label == "handshake_timeout"));
    }

    #[test]
    fn oversized_and_malformed_frames_close_only_after_flushing_good_ones() {
        let (mut l, _, _) = handshake(b"down", b"up");
        let now = Instant::now();
        let mut out = Output::default();
        // A tick, then a frame that is not a distribution message.
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(&[0, 0, 0, 2, 99, 99]);
        l.on_bytes(Leg::Down, &b, now, &mut out);
        assert_eq!(out.writes, vec![(Leg::Up, Chunk::Input(0..4))]);
        assert!(matches!(&out.events[0], Event::Close { reason, flush: true } if reason.label == "bad_frame"));
    }

    /// `131 68 0 Control [Payload]` with its length.
    fn dist_frame(control: &[u8], payload: Option<&[u8]>) -> Vec<u8> {
        let mut d = vec![131, 68, 0];
        d.extend_from_slice(control);
        d.extend_from_slice(payload.unwrap_or_default());
        let mut f = (d.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&d);
        f
    }

    fn reg_send(name: &str) -> Vec<u8> {
        use crate::policy::wire::{encode_int, encode_pid};
        let mut c = vec![104, 4];
        encode_int(6, &mut c);
        encode_pid("a@h", 1, 0, 11, &mut c);
        distgate_codec::rewrite::encode_atom("", &mut c);
        distgate_codec::rewrite::encode_atom(name, &mut c);
        dist_frame(&c, Some(&[106]))
    }

    /// Link parameters whose down→up direction has a route handle holding the policy
    /// `[policy.p]` with this body (or no policy), and an empty registry on both sides.
    fn policy_params(body: Option<&str>) -> LinkParams {
        let p = body.map(|b| Arc::new(crate::policy::Compiled::parse("p", b).unwrap()));
        let reg = Arc::new(crate::registry::Registry::new("r"));
        let h = Arc::new(crate::policy::RouteHandle::new("a", "b", p, reg.clone(), reg));
        LinkParams { policy: LinkPolicy { dirs: [Some(h), None], stats: None }, ..params() }
    }

    /// The bytes `out` writes to `leg`, resolving input ranges against `input`.
    fn written(out: &Output, leg: Leg, input: &[u8]) -> Vec<u8> {
        out.writes
            .iter()
            .filter(|(l, _)| *l == leg)
            .flat_map(|(_, c)| match c {
                Chunk::Owned(b) => b.clone(),
                Chunk::Input(r) => input[r.clone()].to_vec(),
            })
            .collect()
    }

    /// A large message ending in a binary is forwarded as it arrives (its first bytes before
    /// the rest are here), the rest passes unlooked-at through `on_bytes` or is reported moved
    /// by the driver (`on_passed`), and the frames after it are parsed as usual: the output
    /// is the input, byte for byte.
    #[test]
    fn a_large_message_ending_in_a_binary_is_forwarded_as_it_arrives() {
        let mut payload = vec![104, 2, 119, 2, b'o', b'k', 109];
        payload.extend_from_slice(&(100_000u32).to_be_bytes());
        payload.extend((0..100_000u32).map(|i| i as u8));
        let mut c = vec![104, 4];
        crate::policy::wire::encode_int(6, &mut c);
        crate::policy::wire::encode_pid("a@h", 1, 0, 11, &mut c);
        distgate_codec::rewrite::encode_atom("", &mut c);
        distgate_codec::rewrite::encode_atom("sink", &mut c);
        let big = dist_frame(&c, Some(&payload));
        let mut stream = big.clone();
        stream.extend_from_slice(&reg_send("after"));
        stream.extend_from_slice(&[0, 0, 0, 0]);

        // A route whose handle holds no policy (as every route of a config file has, so that a
        // reload can add one) streams like a route without a handle.
        for (passed_by_driver, with_handle) in [(false, false), (true, false), (false, true)] {
            let p = if with_handle { policy_params(None) } else { params() };
            let (mut l, _, _) = handshake_with(p, b"down", b"up");
            let now = Instant::now();
            let mut sent = Vec::new();
            let mut frames = 0;
            // 1000-byte reads; what the link leaves unconsumed is handed in again.
            let mut pending: Vec<u8> = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let opaque = l.opaque_pending(Leg::Down);
                if passed_by_driver && opaque > 0 && pending.is_empty() {
                    // The driver moves opaque bytes itself (splice).
                    let n = opaque.min(7_000).min(stream.len() - at);
                    sent.extend_from_slice(&stream[at..at + n]);
                    l.on_passed(Leg::Down, n, now, &mut Output::default());
                    at += n;
                    continue;
                }
                let n = 1000.min(stream.len() - at);
                pending.extend_from_slice(&stream[at..at + n]);
                at += n;
                let mut out = Output::default();
                let used = l.on_bytes(Leg::Down, &pending, now, &mut out);
                assert!(out.events.is_empty(), "{:?}", out.events);
                sent.extend_from_slice(&written(&out, Leg::Up, &pending));
                frames += out.frames[0];
                pending.drain(..used);
                if at == 1000 {
                    // The first read of the big frame already went out, all of it.
                    assert_eq!(sent.len(), 1000, "cut-through");
                    assert_eq!(l.opaque_pending(Leg::Down), big.len() - 1000);
                }
                // Mid-frame exactly while the big frame's start is out and its rest is not.
                assert_eq!(l.mid_frame(), at > 4 && sent.len() < big.len(), "at {at}");
            }
            assert!(!l.mid_frame());
            assert!(pending.is_empty());
            assert_eq!(sent, stream, "driver passes: {passed_by_driver}");
            assert_eq!(frames, 3);
        }
    }

    /// A streamed message that runs past its final binary (one byte more in its last
    /// fragment than the binary declared) closes the link as a bad frame, naming the extra
    /// byte, after the fragments that were allowed went out; a message before it is not lost.
    #[test]
    fn a_streamed_message_longer_than_its_binary_closes_the_link_after_what_passed() {
        let mut c = vec![104, 4];
        crate::policy::wire::encode_int(6, &mut c);
        crate::policy::wire::encode_pid("a@h", 1, 0, 11, &mut c);
        distgate_codec::rewrite::encode_atom("", &mut c);
        distgate_codec::rewrite::encode_atom("sink", &mut c);
        let mut body = vec![0];
        body.extend_from_slice(&c);
        body.extend_from_slice(&[104, 2, 119, 2, b'o', b'k', 109]);
        body.extend_from_slice(&(40_000u32).to_be_bytes());
        body.extend(std::iter::repeat_n(5u8, 40_000));
        body.push(0); // past the binary's end
        // Two fragments of sequence 9, cut as the rewriter re-emits messages.
        let mut stream = reg_send("before");
        let half = body.len().div_ceil(2);
        distgate_codec::rewrite::emit(Framing::Fragmented { seq: 9, fragments: 2 }, &body, half, &mut stream);
        let first_end = reg_send("before").len() + 4 + 18 + half;
        for with_handle in [false, true] {
            let p = if with_handle { policy_params(None) } else { params() };
            let (mut l, _, _) = handshake_with(p, b"down", b"up");
            let mut out = Output::default();
            assert_eq!(l.on_bytes(Leg::Down, &stream, Instant::now(), &mut out), stream.len());
            // The message before and the first fragment went out; the bad one did not.
            assert_eq!(out.writes, vec![(Leg::Up, Chunk::Input(0..first_end))], "handle: {with_handle}");
            assert!(
                matches!(&out.events[..], [Event::Close { reason, flush: true }]
                    if reason.label == "bad_frame" && reason.leg == Some(Leg::Down) && reason.detail.contains("1 byte")),
                "{:?}",
                out.events
            );
            assert!(l.is_closed());
        }
    }

    /// Under a policy, a fragmented message ending in a binary is judged on its first
    /// fragment and streamed: a fun in its control (SEND's unused field) is replaced in a
    /// re-emitted first fragment, and the continuations pass as they came, so the receiver
    /// reassembles the edited control and the intact binary.
    #[test]
    fn a_streamed_message_is_judged_on_its_first_fragment_and_edited_there() {
        use crate::policy::wire::{encode_int, encode_pid};
        let (mut l, _, _) = handshake_with(policy_params(Some("unknown_fun = \"replace\"\n")), b"down", b"up");
        // SEND {2, Fun, To} with a local fun of module m (unknown to the target).
        let mut c = vec![104, 3];
        encode_int(2, &mut c);
        let mut fun = vec![112, 0, 0, 0, 0, 1];
        fun.extend_from_slice(&[7; 16]);
        fun.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        distgate_codec::rewrite::encode_atom("m", &mut fun);
        encode_int(0, &mut fun);
        encode_int(0, &mut fun);
        encode_pid("a@h", 1, 0, 11, &mut fun);
        let size = fun.len() as u32 - 1;
        fun[1..5].copy_from_slice(&size.to_be_bytes());
        c.extend_from_slice(&fun);
        encode_pid("b@h", 2, 0, 99, &mut c);
        // Payload {ok, <<100 000 bytes>>}, the message cut into 3 fragments.
        let mut body = vec![0];
        body.extend_from_slice(&c);
        body.extend_from_slice(&[104, 2, 119, 2, b'o', b'k', 109]);
        body.extend_from_slice(&(100_000u32).to_be_bytes());
        body.extend((0..100_000u32).map(|i| (i % 251) as u8));
        // Three fragments of sequence 5.
        let mut stream = Vec::new();
        distgate_codec::rewrite::emit(Framing::Fragmented { seq: 5, fragments: 3 }, &body, body.len().div_ceil(3), &mut stream);
        let mut out = Output::default();
        assert_eq!(l.on_bytes(Leg::Down, &stream, Instant::now(), &mut out), stream.len());
        assert!(out.events.is_empty(), "{:?}", out.events);
        assert_eq!(out.streamed[0], 3, "all three fragments streamed");
        // The first fragment is replaced; the continuations are ranges of the input.
        assert!(matches!(out.writes[0], (Leg::Up, Chunk::Owned(_))), "{:?}", out.writes[0]);
        assert!(out.writes[1..].iter().all(|w| matches!(w, (Leg::Up, Chunk::Input(_)))));
        let sent = written(&out, Leg::Up, &stream);
        // The receiver's view: one message, the fun replaced by the marker, the binary intact.
        let mut dec = Decoder::default();
        let mut got = None;
        for item in distgate_codec::frame::Frames::new(&sent, 1 << 20) {
            if let distgate_codec::message::Decoded::Message(m) = dec.decode(item.unwrap().data.unwrap()).unwrap() {
                let ctl = &m.bytes[m.control_range.clone()];
                assert!(!ctl.contains(&112), "no NEW_FUN_EXT left in the control");
                assert!(ctl.windows(20).any(|w| w == b"distgate_blocked_fun"), "the marker is there");
                let p = m.payload.clone().unwrap();
                got = Some(m.bytes[p.start + 11..p.end].to_vec());
            }
        }
        assert_eq!(got.expect("the message completes"), body[body.len() - 100_000..]);
    }

    #[test]
    fn policy_verdicts_replace_frames_in_place_and_answers_go_back_to_the_sender() {
        let with_policy = policy_params(Some("[policy.p.control]\nreg_send_allow = [\"ok_*\"]\nspawn_allow = []\n"));
        let (mut l, _, _) = handshake_with(with_policy, b"down", b"up");
        assert!(l.is_forwarding());
        let spawn = spawn_os_cmd();
        let frames = [reg_send("ok_1"), reg_send("denied"), reg_send("ok_2"), spawn, reg_send("ok_3")];
        let mut buf = Vec::new();
        let mut at = Vec::new();
        for f in &frames {
            at.push(buf.len()..buf.len() + f.len());
            buf.extend_from_slice(f);
        }
        let mut out = Output::default();
        assert_eq!(l.on_bytes(Leg::Down, &buf, Instant::now(), &mut out), buf.len());
        assert!(out.events.is_empty(), "{:?}", out.events);
        // Passing frames stay ranges of the input; the denied message (whose header defines
        // nothing) is left out; the refused spawn request is answered on the down leg.
        assert_eq!(out.writes.len(), 4, "{:?}", out.writes);
        assert_eq!(out.writes[0], (Leg::Up, Chunk::Input(at[0].clone())));
        assert_eq!(out.writes[1], (Leg::Up, Chunk::Input(at[2].clone())));
        let Chunk::Owned(reply) = &out.writes[2].1 else { panic!("{:?}", out.writes[2]) };
        assert_eq!(out.writes[2].0, Leg::Down);
        let mut dec = Decoder::default();
        let distgate_codec::message::Decoded::Message(m) = dec.decode(&reply[4..]).unwrap() else { panic!() };
        assert_eq!(m.control.op(), 31);
        assert_eq!(out.writes[3], (Leg::Up, Chunk::Input(at[4].clone())));
        assert_eq!(out.frames[0], 5);
        // The other direction has no policy: forwarded as it came.
        let mut out = Output::default();
        let f = reg_send("denied");
        l.on_bytes(Leg::Up, &f, Instant::now(), &mut out);
        assert_eq!(out.writes, vec![(Leg::Down, Chunk::Input(0..f.len()))]);
        // on_deny = "close": what passed before is flushed, then the link closes.
        let with_policy = policy_params(Some("[policy.p.control]\nreg_send_allow = [\"ok_*\"]\non_deny = \"close\"\n"));
        let (mut l, _, _) = handshake_with(with_policy, b"down", b"up");
        let mut out = Output::default();
        let buf = [reg_send("ok_1"), reg_send("denied"), reg_send("ok_2")].concat();
        assert_eq!(l.on_bytes(Leg::Down, &buf, Instant::now(), &mut out), buf.len());
        assert_eq!(out.writes, vec![(Leg::Up, Chunk::Input(at[0].clone()))]);
        assert!(matches!(&out.events[0], Event::Close { reason, flush: true } if reason.label == "policy" && reason.detail.contains("reg_send_allow")));
        assert!(l.is_closed());
    }

    /// A spawn request of os:cmd/1 from down (frame, length included).
    fn spawn_os_cmd() -> Vec<u8> {
        use crate::policy::wire::{encode_int, encode_pid, encode_ref};
        let mut c = vec![104, 6];
        encode_int(29, &mut c);
        encode_ref("a@h", 11, &[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3], &mut c);
        encode_pid("a@h", 5, 0, 11, &mut c);
        encode_pid("a@h", 6, 0, 11, &mut c);
        c.extend_from_slice(&[104, 3]);
        distgate_codec::rewrite::encode_atom("os", &mut c);
        distgate_codec::rewrite::encode_atom("cmd", &mut c);
        encode_int(1, &mut c);
        c.push(106);
        dist_frame(&c, Some(&[106]))
    }

    /// A link whose policy refuses every spawn request from down, with a 100 000-byte up→down
    /// message ending in a binary (and a tick) of which the first 1000 bytes have passed
    /// (cut-through): returns the link, that frame, and a spawn request from down.
    fn streaming_to_down() -> (Link, Vec<u8>, Vec<u8>) {
        use crate::policy::wire::{encode_int, encode_pid};
        let with_policy = policy_params(Some("[policy.p.control]\nspawn_allow = []\n"));
        let (mut l, _, _) = handshake_with(with_policy, b"down", b"up");
        let mut payload = vec![104, 2, 119, 2, b'o', b'k', 109];
        payload.extend_from_slice(&(100_000u32).to_be_bytes());
        payload.extend((0..100_000u32).map(|i| i as u8));
        let mut c = vec![104, 4];
        encode_int(6, &mut c);
        encode_pid("b@h", 1, 0, 99, &mut c);
        distgate_codec::rewrite::encode_atom("", &mut c);
        distgate_codec::rewrite::encode_atom("sink", &mut c);
        let big = [dist_frame(&c, Some(&payload)), vec![0, 0, 0, 0]].concat();
        let mut out = Output::default();
        assert_eq!(l.on_bytes(Leg::Up, &big[..1000], Instant::now(), &mut out), 1000);
        assert_eq!(out.writes, vec![(Leg::Down, Chunk::Input(0..1000))], "cut-through");
        (l, big, spawn_os_cmd())
    }

    /// A reply the policy sends back to down (a refused spawn request's answer) while a large
    /// up→down frame is streaming to down (its start written, its rest still to come) waits
    /// for the rest of that frame: written in its middle it would cut the frame and corrupt
    /// the stream down receives.
    #[test]
    fn a_reply_to_the_sender_waits_for_a_frame_streaming_to_it() {
        let (mut l, big, spawn) = streaming_to_down();
        let now = Instant::now();
        // Down sends a spawn request the policy refuses.
        let mut out = Output::default();
        assert_eq!(l.on_bytes(Leg::Down, &spawn, now, &mut out), spawn.len());
        assert!(out.events.is_empty(), "{:?}", out.events);
        assert!(out.writes.iter().all(|(leg, _)| *leg != Leg::Down), "nothing written into the streaming frame: {:?}", out.writes);
        assert_eq!(out.held, 1, "counted as held");
        // The rest of the big frame arrives (and the tick behind it): it passes, then the
        // reply, then the tick.
        let rest = &big[1000..];
        let mut out = Output::default();
        assert_eq!(l.on_bytes(Leg::Up, rest, now, &mut out), rest.len());
        let to_down = written(&out, Leg::Down, rest);
        let body_end = big.len() - 1000 - 4;
        assert_eq!(&to_down[..body_end], &rest[..body_end]);
        let mut dec = Decoder::default();
        let reply = &to_down[body_end..to_down.len() - 4];
        let distgate_codec::message::Decoded::Message(m) = dec.decode(&reply[4..]).unwrap() else { panic!("{reply:?}") };
        assert_eq!(m.control.op(), 31, "the spawn reply");
        assert_eq!(&to_down[to_down.len() - 4..], &[0, 0, 0, 0]);
    }

    /// The same when the driver moves the rest of that frame itself (splice, `on_passed`):
    /// the reply comes out of the call that reports the frame's last byte passed, not only
    /// on the next read of either leg (which may never come).
    #[test]
    fn a_reply_held_for_a_frame_the_driver_passes_comes_out_when_it_ends() {
        let (mut l, big, spawn) = streaming_to_down();
        let now = Instant::now();
        let mut out = Output::default();
        assert_eq!(l.on_bytes(Leg::Down, &spawn, now, &mut out), spawn.len());
        assert!(out.writes.iter().all(|(leg, _)| *leg != Leg::Down), "{:?}", out.writes);
        let rest = l.opaque_pending(Leg::Up);
        assert_eq!(rest, big.len() - 1000 - 4, "the frame's rest, not the tick behind it");
        let mut out = Output::default();
        l.on_passed(Leg::Up, rest - 1, now, &mut out);
        assert!(out.writes.is_empty(), "one byte still to come: {:?}", out.writes);
        l.on_passed(Leg::Up, 1, now, &mut out);
        let [(Leg::Down, Chunk::Owned(reply))] = &out.writes[..] else { panic!("{:?}", out.writes) };
        let mut dec = Decoder::default();
        let distgate_codec::message::Decoded::Message(m) = dec.decode(&reply[4..]).unwrap() else { panic!("{reply:?}") };
        assert_eq!(m.control.op(), 31, "the spawn reply");
    }

    /// Answers held for a frame streaming to their leg are bounded: a peer that keeps sending
    /// refused requests while that frame is slow to arrive loses its link (a logged reason),
    /// and distgate's memory stays within `MAX_DEFERRED`.
    #[test]
    fn answers_held_for_a_streaming_frame_are_bounded() {
        let (mut l, _big, spawn) = streaming_to_down();
        let now = Instant::now();
        // A batch of requests per read, as a flooding peer would send them.
        let batch = spawn.repeat(100);
        let mut requests = 0;
        let closed = loop {
            let mut out = Output::default();
            l.on_bytes(Leg::Down, &batch, now, &mut out);
            assert!(out.writes.iter().all(|(leg, _)| *leg != Leg::Down), "nothing written into the streaming frame");
            if let Some(Event::Close { reason, .. }) = out.events.first() {
                break reason.clone();
            }
            requests += 100;
            assert!(requests < 100_000, "never bounded");
        };
        assert_eq!((closed.label, closed.leg), ("reply_backlog", Some(Leg::Down)), "{}", closed.detail);
        assert!(l.deferred[0].len() <= MAX_DEFERRED && l.deferred[1].is_empty());
        // Held until the bound, not refused early: every reply is far smaller than 1 KiB.
        assert!(requests >= MAX_DEFERRED / 1024, "closed after {requests} requests");
    }
}
