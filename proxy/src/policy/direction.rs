//! The policy side of one link direction: what the [`crate::link::Link`] asks for every frame
//! it decodes while forwarding.
//!
//! Frames that pass are forwarded as they came (the link keeps forwarding input ranges, no
//! copy). A message with a non-pass verdict is replaced by owned frames, in place, so order
//! is kept. Fragmented messages are held while a policy applies (the decoder reassembles them
//! under its `FragLimits`), because a verdict needs the whole message:
//!
//! - when the first fragment arrives, a stand-in carrying its atom-cache header is forwarded
//!   in its place (only if the header defines new cache entries), so the receiver's cache
//!   changes exactly where the sender changed it, and later messages that use those entries
//!   decode whatever the held message turns into;
//! - continuations are absorbed;
//! - when the last one arrives the message is judged and, unless dropped, re-emitted in
//!   64 KiB fragments under its sequence id. OTP delivers a fragmented message when its last
//!   fragment arrives, and that is where it is re-emitted. If no frame forwarded meanwhile
//!   changed the receiver's atom cache, its own header still means what it meant and is sent
//!   again as it was (re-defining entries with the values they already have); otherwise every
//!   atom is written inline under an empty header, since later headers may have reused the
//!   cache slots it referred to.
//!
//! A sequence that began while no policy applied (or in dry-run) is forwarded fragment by
//! fragment as before, unjudged if it completes under a policy; one that began under a
//! policy is re-emitted even if the policy is removed meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use distgate_codec::fun::{self, FunSite, FunSpan};
use distgate_codec::message::{self, Decoded, Decoder, Framing, Message};
use distgate_codec::rewrite::{self, Edit};
use distgate_codec::term::{Limits, Walker};

use super::audit::{self, Site};
use super::compile::Compiled;
use super::engine::{self, Registries, Verdict};
use super::memo::FunMemo;
use crate::registry::{Registry, Snapshot};
use super::wire::{self, Sender};
use super::RouteHandle;
use crate::stats::Stats;

/// Largest fragment distgate emits when it re-emits a fragmented message (OTP cuts at 64 KiB).
pub const MAX_FRAGMENT: usize = 64 << 10;

/// What to do with one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameAct {
    /// Forward the frame as it came.
    Forward,
    /// Forward nothing (a held fragment, or a dropped message that needs no stand-in).
    Absorb,
    /// Forward `forward` (frames, lengths included; may be empty) instead of the frame, and
    /// write `back` (frames) to the leg the frame came from.
    Replace { forward: Vec<u8>, back: Option<Vec<u8>> },
    /// Write `back` to the leg the frame came from, then close the link.
    Close { reason: String, back: Option<Vec<u8>> },
}

/// Reuse a `Vec<FunSite>`'s allocation for another message's lifetime. The vector is empty,
/// so no element changes lifetime; std collects a `vec::IntoIter` of a same-layout type in
/// place, keeping the allocation.
fn recycle<'b>(mut v: Vec<FunSite<'_>>) -> Vec<FunSite<'b>> {
    v.clear();
    v.into_iter().map(|_| -> FunSite<'b> { unreachable!("the vector is empty") }).collect()
}

/// One direction of one link.
pub struct Direction {
    handle: Option<Arc<RouteHandle>>,
    stats: Option<Arc<Stats>>,
    link: u64,
    name: &'static str,
    route: String,
    sender: Sender,
    /// Sequences held while they are reassembled, each with the cache epoch after its
    /// stand-in.
    held: Vec<(u64, u64)>,
    /// Streamed sequences whose message was dropped at its first fragment: their later
    /// fragments are absorbed.
    dropping: Vec<u64>,
    /// Bumped whenever a frame forwarded in this direction defines atom-cache entries (the
    /// receiver's cache changes).
    cache_epoch: u64,
    walker: Walker,
    /// The message's funs, as collected (where each lies), reused from message to message.
    funs: Vec<FunSpan>,
    /// Their full views, built only for the general path (see `message`).
    views: Vec<FunSite<'static>>,
    /// The policy last seen on the handle, and the handle's generation then.
    current: Option<Arc<Compiled>>,
    seen: u64,
    scratch: Vec<u8>,
    /// Funs recently passed under `current` and the target's current snapshot; emptied when
    /// either changes.
    memo: FunMemo,
    /// The target registry's snapshot as last loaded (see [`TargetView`]).
    target: Option<TargetView>,
}

/// A target snapshot kept by a link direction, and what tells it is still current: the
/// handle's registries generation and the registry's store count when it was loaded.
///
/// Why not load it from the handle per message: that is two `ArcSwap` loads (the registry,
/// then its snapshot), each a compare-and-swap on a debt slot and its release; on fun-heavy
/// traffic they were a tenth of the judging. Checking the two counters is two plain loads,
/// and the snapshot's reference count is touched only when it changed.
struct TargetView {
    registries: u64,
    registry: Arc<Registry>,
    stores: u64,
    snapshot: Arc<Snapshot>,
}

/// The target's current snapshot through `view`, reloaded only when the handle swapped its
/// registries or the registry stored a new snapshot since.
///
/// Inlined, and checked in place: taking the view out and putting it back was a move of it
/// through memory on every message.
#[inline(always)]
fn current_target<'v>(view: &'v mut Option<TargetView>, h: &RouteHandle) -> &'v Arc<Snapshot> {
    let registries = h.registries.load(Ordering::Acquire);
    if !matches!(view, Some(v) if v.registries == registries && v.registry.stores() == v.stores) {
        *view = Some(load_target(h, registries));
    }
    // Always `Some` here; the closure only spares an `unwrap`.
    &view.get_or_insert_with(|| load_target(h, registries)).snapshot
}

#[cold]
#[inline(never)]
fn load_target(h: &RouteHandle, registries: u64) -> TargetView {
    let registry = h.target.load_full();
    // The count before the snapshot: a store in between makes the next check reload.
    let stores = registry.stores();
    let snapshot = registry.snapshot();
    TargetView { registries, registry, stores, snapshot }
}

impl Direction {
    /// `index` 0 is down→up (frames from the dialling node), 1 is up→down. `sender` is the
    /// node whose frames this direction carries.
    pub fn new(handle: Option<Arc<RouteHandle>>, stats: Option<Arc<Stats>>, link: u64, index: usize, sender: Sender, limits: Limits) -> Direction {
        let route = handle.as_ref().map(|h| format!("{}->{}", h.from, h.to)).unwrap_or_default();
        Direction {
            handle,
            stats,
            link,
            name: if index == 0 { "down->up" } else { "up->down" },
            route,
            sender,
            held: Vec::new(),
            dropping: Vec::new(),
            cache_epoch: 0,
            walker: Walker::new(limits),
            funs: Vec::new(),
            views: Vec::new(),
            scratch: Vec::new(),
            current: None,
            seen: u64::MAX,
            memo: FunMemo::default(),
            target: None,
        }
    }

    /// Sequences being held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Funs remembered as passed (tests).
    #[cfg(test)]
    pub(crate) fn memo_len(&self) -> usize {
        self.memo.len()
    }

    /// The policy in force: this direction's own Arc, refreshed when the handle's generation
    /// moved (a reload), so from the next frame on.
    fn refresh(&mut self) {
        if let Some(h) = &self.handle {
            let g = h.generation.load(Ordering::Acquire);
            if g != self.seen {
                self.current = h.policy.load_full();
                self.seen = g;
                // What passed under the old policy may not pass under the new one.
                self.memo.clear();
            }
        }
    }

    /// True when frames pass unjudged now: no policy applies and no sequence is held or
    /// being dropped. The link may then forward a large frame before all of it is here.
    pub fn unjudged(&mut self) -> bool {
        self.refresh();
        self.current.is_none() && self.held.is_empty() && self.dropping.is_empty()
    }

    /// Decode `frame` with `dec` (this direction's decoder) and decide what to forward.
    pub fn frame(&mut self, dec: &mut Decoder, frame: &[u8], now: Instant) -> distgate_codec::Result<FrameAct> {
        self.refresh();
        let current = self.current.take();
        let r = self.frame_with(current.as_deref(), dec, frame, now);
        self.current = current;
        r
    }

    fn frame_with(&mut self, policy: Option<&Compiled>, dec: &mut Decoder, frame: &[u8], now: Instant) -> distgate_codec::Result<FrameAct> {
        // A message ending in a binary streams: it passes fragment by fragment, not held,
        // judged (below) on its first fragment, which holds everything of it but the
        // binary's bytes.
        let unjudged = policy.is_none() && self.held.is_empty() && self.dropping.is_empty();
        dec.set_streaming(true);
        if unjudged {
            dec.decode(frame)?;
            return Ok(FrameAct::Forward);
        }
        let first_fragment = frame.get(..2) == Some(&[131, 69][..]);
        // When the policy looks at funs, the decoder collects the payload's during the walk
        // it does anyway: no second walk.
        let payload_funs = policy.is_some_and(|p| p.funs_matter);
        let mut funs = std::mem::take(&mut self.funs);
        funs.clear();
        // Matched in place: a decoded message is a large value, not worth moving.
        let decoded = dec.decode_collecting(frame, payload_funs.then_some(&mut funs));
        let decoded = match &decoded {
            Ok(d) => d,
            Err(e) => {
                let e = *e;
                self.funs = funs;
                return Err(e);
            }
        };
        match decoded {
            Decoded::Tick => Ok(FrameAct::Forward),
            // The start of a streamed message: judged now, on everything but its final
            // binary's bytes (no fun can hide in those).
            &Decoded::Streamed { seq: Some(seq), message: Some(ref msg), .. } => {
                // Its header reaches the receiver as it is or on a stand-in.
                self.cache_epoch += msg.refs.table().is_some_and(|t| t.defines_entries()) as u64;
                let act = self.message(msg, policy, None, now, &mut funs, true, Some(seq));
                self.funs = funs;
                act
            }
            // A later fragment of a streamed message: it follows its first fragment's fate.
            &Decoded::Streamed { seq, frag_id, .. } => {
                let dropping = seq.and_then(|s| self.dropping.iter().position(|&d| d == s));
                if let Some(i) = dropping.filter(|_| frag_id == 1) {
                    self.dropping.swap_remove(i);
                }
                Ok(if dropping.is_some() { FrameAct::Absorb } else { FrameAct::Forward })
            }
            &Decoded::Fragment { seq, .. } if !first_fragment => {
                Ok(if self.held.iter().any(|h| h.0 == seq) { FrameAct::Absorb } else { FrameAct::Forward })
            }
            &Decoded::Fragment { seq, .. } => {
                let body = &frame[18..];
                let hdr = &body[..message::header_len(body)?];
                let defines = wire::header_defines_entries(hdr);
                // Forwarded as it is, or replaced by a stand-in carrying the same header: the
                // receiver's cache changes here either way.
                self.cache_epoch += defines as u64;
                if policy.is_none_or(|p| p.dry_run) {
                    return Ok(FrameAct::Forward);
                }
                self.held.push((seq, self.cache_epoch));
                if !defines {
                    return Ok(FrameAct::Absorb);
                }
                let mut forward = Vec::new();
                wire::stand_in(hdr, &self.sender, &mut forward);
                Ok(FrameAct::Replace { forward, back: None })
            }
            Decoded::Message(msg) => {
                let held = match msg.framing {
                    Framing::Fragmented { seq, fragments } if fragments > 1 => match self.held.iter().position(|h| h.0 == seq) {
                        Some(i) => Some(self.held.swap_remove(i).1 == self.cache_epoch),
                        // Not held: it began while no policy applied (or in dry-run), and its
                        // earlier fragments were forwarded as they came; the receiver completes
                        // it from this one, so it passes too. A dry run judges it (to audit; it
                        // forwards anyway); any other policy that applies now must not: it
                        // could only replace or drop this last fragment and leave the receiver
                        // a broken sequence.
                        None if policy.is_some_and(|p| p.dry_run) => None,
                        None => {
                            self.funs = funs;
                            return Ok(FrameAct::Forward);
                        }
                    },
                    _ => {
                        // A whole message: its header (if it defines entries) reaches the
                        // receiver as it is or on a stand-in, unless the link closes.
                        self.cache_epoch += msg.refs.table().is_some_and(|t| t.defines_entries()) as u64;
                        None
                    }
                };
                let act = self.message(msg, policy, held, now, &mut funs, payload_funs, None);
                self.funs = funs;
                if self.scratch.capacity() > 1 << 20 {
                    self.scratch = Vec::new();
                }
                act
            }
        }
    }

    /// `held`: `Some(cache_unchanged)` for a held sequence that just completed.
    /// `funs` holds the payload's funs when the decoder collected them (`payload_funs`).
    /// `streamed`: `Some(seq)` for the first fragment of a streamed message (see
    /// `Decoded::Streamed`): its fate is its later fragments' too.
    #[allow(clippy::too_many_arguments)]
    fn message<'a>(
        &mut self,
        msg: &Message<'a>,
        policy: Option<&Compiled>,
        held: Option<bool>,
        now: Instant,
        funs: &mut Vec<FunSpan>,
        payload_funs: bool,
        streamed: Option<u64>,
    ) -> distgate_codec::Result<FrameAct> {
        let Some(p) = policy else {
            return match held {
                Some(unchanged) => self.reemit(msg, unchanged, Vec::new()),
                None => Ok(FrameAct::Forward),
            };
        };
        // Funs are looked at when an action could apply to them, and for a held message,
        // whose re-emission may patch their Size.
        let collected = if held.is_some() || p.funs_matter {
            collect_funs(&mut self.walker, msg, funs, payload_funs)
        } else {
            Ok(())
        };
        let funs = &*funs;
        // The control rules, once: a denial is the judgement (as in `engine::judge_memo`).
        let denied = match collected {
            Ok(()) if !p.control_open => engine::judge_control(p, msg, &mut self.walker),
            _ => None,
        };
        // The common cases on the forwarding path: a whole message without funs, or whose
        // funs all passed recently (the memo). When the control rules pass too, it is
        // forwarded as it came — what the general path below would conclude (no finding, so
        // nothing to audit or refresh, dry-run or not) — without that path's set-up. Anything
        // else (a denial, a fun not remembered) goes on to the general path.
        if held.is_none() && collected.is_ok() && denied.is_none() {
            if funs.is_empty() {
                return Ok(FrameAct::Forward);
            }
            if let Some(h) = &self.handle {
                let target = current_target(&mut self.target, h);
                self.memo.sync(target, p);
                // Each fun's names read straight from its header: no view is built.
                if funs.iter().all(|f| engine::span_remembered(&self.memo, msg, f)) {
                    return Ok(FrameAct::Forward);
                }
            }
        }
        self.judge(msg, p, held, now, funs, collected, denied, streamed)
    }

    /// The general path of [`Direction::message`]: findings, audit, edits, drops, replies.
    /// Out of line: its set-up (a large stack frame, the funs' views) is paid only by the
    /// messages that take it, not by every message the fast path above forwards.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn judge<'a>(
        &mut self,
        msg: &Message<'a>,
        p: &Compiled,
        held: Option<bool>,
        now: Instant,
        funs: &[FunSpan],
        collected: distgate_codec::Result<()>,
        denied: Option<engine::Judgement>,
        streamed: Option<u64>,
    ) -> distgate_codec::Result<FrameAct> {
        // Out of `self` while the closure below borrows it.
        let mut view = self.target.take();
        let mut views = recycle(std::mem::take(&mut self.views));
        let result = collected.and_then(|()| {
            // The funs' full views: the judgement needs them for its findings, markers and
            // rewrites, and a re-emission for the Size fields it patches.
            for f in funs {
                views.push(f.site_in(msg)?);
            }
            let funs = &views[..];
            // The registries are consulted only for funs (a policy implies a handle), the
            // source's only to rewrite.
            let handle = self.handle.as_ref().filter(|_| !funs.is_empty());
            let target = handle.map(|h| current_target(&mut view, h));
            let source = || handle.map(|h| h.source.load().snapshot());
            if let Some(t) = &target {
                self.memo.sync(t, p);
            }
            let regs = target.as_ref().map(|t| Registries { target: t, source: &source });
            let j = match denied {
                Some(j) => j,
                None => engine::judge_funs_memo(p, msg, funs, regs, Some(&mut self.memo)),
            };
            // A fun the target lacks may be one it loaded since its last refresh.
            if let Some(h) = handle.filter(|_| j.findings.iter().any(|f| matches!(f.rule, "unknown_fun" | "unknown_export" | "rewrite_fallback"))) {
                h.target_lacks_fun(now);
            }
            if !j.findings.is_empty() {
                let site = Site { link: self.link, route: &self.route, direction: self.name };
                audit::record(p, self.stats.as_deref(), &site, msg.op, &j, p.dry_run, now);
            }
            if p.dry_run {
                return match held {
                    Some(unchanged) => self.reemit_with(msg, unchanged, funs, Vec::new()),
                    None => Ok(FrameAct::Forward),
                };
            }
            let back = |ctl: Vec<u8>| {
                let mut b = Vec::new();
                wire::control_frame(msg.framing == Framing::PassThrough, &ctl, &mut b);
                b
            };
            // A streamed message is dropped with the fragments still to come. (An edit
            // re-emits only its first fragment: its framing says so.)
            if let Some(seq) = streamed.filter(|_| matches!(j.verdict, Verdict::Drop | Verdict::Reply(_))) {
                self.dropping.push(seq);
            }
            Ok(match (j.verdict, held) {
                (Verdict::Pass, Some(unchanged)) => self.reemit_with(msg, unchanged, funs, Vec::new())?,
                (Verdict::Pass, None) => FrameAct::Forward,
                (Verdict::Edits(edits), Some(unchanged)) => self.reemit_with(msg, unchanged, funs, edits)?,
                (Verdict::Edits(mut edits), None) => {
                    if wire::apply(msg.bytes, funs, &mut edits, &mut self.scratch).is_err() {
                        return Ok(internal_close());
                    }
                    let mut forward = Vec::with_capacity(self.scratch.len() + 32);
                    rewrite::emit(msg.framing, &self.scratch, MAX_FRAGMENT, &mut forward);
                    FrameAct::Replace { forward, back: None }
                }
                (Verdict::Drop, _) => self.dropped(msg, held.is_some(), None),
                (Verdict::Reply(ctl), _) => self.dropped(msg, held.is_some(), Some(back(ctl))),
                (Verdict::Close { reason, reply }, _) => FrameAct::Close { reason, back: reply.map(back) },
            })
        });
        self.target = view;
        self.views = recycle(views);
        result
    }

    /// A dropped message: nothing, or the stand-in carrying its header (already sent for a
    /// held one).
    fn dropped(&self, msg: &Message<'_>, held: bool, back: Option<Vec<u8>>) -> FrameAct {
        let mut forward = Vec::new();
        if let (false, Some(h)) = (held, msg.header.clone()) {
            let hdr = &msg.bytes[h];
            if wire::header_defines_entries(hdr) {
                wire::stand_in(hdr, &self.sender, &mut forward);
            }
        }
        if forward.is_empty() && back.is_none() {
            FrameAct::Absorb
        } else {
            FrameAct::Replace { forward, back }
        }
    }

    fn reemit(&mut self, msg: &Message<'_>, unchanged: bool, edits: Vec<Edit>) -> distgate_codec::Result<FrameAct> {
        let mut funs = Vec::new();
        if !unchanged {
            fun::message_funs(&mut self.walker, msg, &mut funs)?;
        }
        self.reemit_with(msg, unchanged, &funs, edits)
    }

    /// A held message, re-emitted in fragments: with its own header when the receiver's cache
    /// has not changed since its stand-in, else with its atoms inline (see the module docs).
    fn reemit_with(&mut self, msg: &Message<'_>, unchanged: bool, funs: &[FunSite<'_>], mut edits: Vec<Edit>) -> distgate_codec::Result<FrameAct> {
        let body: &[u8] = if unchanged && edits.is_empty() {
            msg.bytes
        } else {
            if !unchanged {
                wire::inline_atoms(&mut self.walker, msg, &mut edits)?;
            }
            if wire::apply(msg.bytes, funs, &mut edits, &mut self.scratch).is_err() {
                return Ok(internal_close());
            }
            &self.scratch
        };
        let mut forward = Vec::with_capacity(body.len() + (body.len() / MAX_FRAGMENT + 1) * 22);
        rewrite::emit(msg.framing, body, MAX_FRAGMENT, &mut forward);
        Ok(FrameAct::Replace { forward, back: None })
    }
}

/// Every fun of `msg`, like `fun::message_funs`, in the order they appear, walking only what
/// can hold one. The payload's funs are already in `out` when the decoder collected them
/// (`payload_collected`); otherwise a payload of at most 512 bytes is walked only when a fun
/// tag byte occurs in it, larger ones always (the walk steps over a binary at once, where
/// memchr would read every byte of it). The control term (small, a fun there rare) is walked
/// only when one of its elements could hold a fun (`Control::may_hold_fun`: not every one was
/// read as a pid, atom, integer or reference) and a fun tag byte occurs in it; its funs go
/// first.
fn collect_funs(w: &mut Walker, msg: &Message<'_>, out: &mut Vec<FunSpan>, payload_collected: bool) -> distgate_codec::Result<()> {
    const SMALL: usize = 512;
    let may_hold = |r: &std::ops::Range<usize>| distgate_codec::scan::may_contain_fun(&msg.bytes[r.clone()]);
    w.set_cache_refs(msg.refs.table().map(|t| t.nrefs));
    if !payload_collected {
        if let Some(p) = msg.payload.as_ref().filter(|p| p.len() > SMALL || may_hold(p)) {
            fun::collect_spans(w, msg.bytes, p.clone(), fun::Part::Payload, out)?;
        }
    }
    if msg.control.may_hold_fun() && may_hold(&msg.control_range) {
        let before = out.len();
        fun::collect_spans(w, msg.bytes, msg.control_range.clone(), fun::Part::Control, out)?;
        let n = out.len() - before;
        out.rotate_right(n);
    }
    Ok(())
}

/// The edits the engine made could not be applied: never expected (they are whole terms);
/// closing is the only safe answer.
fn internal_close() -> FrameAct {
    FrameAct::Close { reason: "internal: a policy rewrite could not be applied".into(), back: None }
}
