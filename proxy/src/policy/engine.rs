//! The judgement of one message: pure, no I/O, no clock.
//!
//! Input: a decoded [`Message`], its [`FunSite`]s, the registry snapshots of the target (and,
//! for rewrites, the source) cluster, and the route's [`Compiled`] policy. Output: a
//! [`Judgement`], the [`Verdict`] plus a [`Finding`] per non-pass decision for the audit.
//!
//! Order: control rules first (a denied message is not forwarded, so its funs do not
//! matter), then every fun, control and payload alike, in the order they appear.

use std::borrow::Cow;
use std::sync::Arc;

use distgate_codec::control::{op, op_name, Control, Field, FieldTerm};
use distgate_codec::fun::{FunKey, FunKind, FunSite, FunSpan};
use distgate_codec::message::{Message, Refs};
use distgate_codec::rewrite::{encode_export, Edit};
use distgate_codec::tag;
use distgate_codec::term::{read_tuple, walked_atom, Atom, NewFun, Skip, Term, Walker};
use distgate_config::{DenyAction, FunAction};

use super::compile::{Compiled, UNTRUSTED_NAMES};
use super::memo::FunMemo;
use super::wire::{self, atom_bytes, atom_text};
use crate::registry::Snapshot;

/// The atom a refused spawn request is answered with.
pub const DENIED_REASON: &str = "distgate_denied";

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward unchanged.
    Pass,
    /// Forward with these byte ranges of [`Message::bytes`] replaced (funs rewritten to
    /// `fun M:F/A`, or replaced by the marker term).
    Edits(Vec<Edit>),
    /// Do not forward (a stand-in carries its atom-cache header).
    Drop,
    /// Do not forward, and answer the sender with this control message (a SPAWN_REPLY
    /// error for a refused SPAWN_REQUEST; control term bytes without version byte).
    Reply(Vec<u8>),
    /// Close the link, after sending `reply` (if any) to the sender.
    Close { reason: String, reply: Option<Vec<u8>> },
}

impl Verdict {
    /// Stable name for audit lines and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Edits(_) => "edit",
            Verdict::Drop => "drop",
            Verdict::Reply(_) => "reply",
            Verdict::Close { .. } => "close",
        }
    }
}

/// One non-pass decision, for the audit line and the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which rule decided: `unknown_fun`, `unknown_export`, `rewrite_fallback`, `op`,
    /// `spawn_allow`, `rpc_allow`, `reg_send_allow`, `untrusted:…`.
    pub rule: &'static str,
    /// The module the decision is about (a fun's module, a spawned or called module, or a
    /// registered name).
    pub module: String,
    /// What exactly: `#Fun<m.3.9f…>` (a local fun: module, index, uniq), `fun m:f/1`,
    /// `m:f/2` for a call, `{system,…}` for a shape.
    pub subject: String,
    /// `rewrite`, `replace`, `drop`, `close`, `pass` (a rewrite fell back to pass), `deny`.
    pub action: &'static str,
    /// More detail when there is any (the lambda's name, the rewrite's target).
    pub detail: Option<String>,
}

/// A verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
}

impl Judgement {
    pub fn pass() -> Judgement {
        Judgement { verdict: Verdict::Pass, findings: Vec::new() }
    }
}

/// The registries a judgement consults.
#[derive(Clone, Copy)]
pub struct Registries<'s> {
    /// The target cluster's: which module versions it runs, what it exports.
    pub target: &'s Snapshot,
    /// The sending cluster's: what a fun's lambda is (name, free variables). Needed only to
    /// rewrite, so it is fetched only then.
    pub source: &'s dyn Fn() -> Option<Arc<Snapshot>>,
}

/// Judge `msg`. `funs` are its fun sites (`distgate_codec::fun::message_funs`); `regs` may be
/// `None` only when `funs` is empty. `w` is a scratch walker for looking into payloads.
pub fn judge<'a>(p: &Compiled, msg: &Message<'a>, funs: &[FunSite<'a>], regs: Option<Registries<'_>>, w: &mut Walker) -> Judgement {
    judge_memo(p, msg, funs, regs, w, None)
}

/// [`judge`], skipping the funs `memo` remembers as passed and remembering those that pass.
/// The memo is used only when it was synced ([`FunMemo::sync`]) to exactly `p` and the
/// target snapshot of `regs`; the judgement is the same either way.
pub fn judge_memo<'a>(
    p: &Compiled,
    msg: &Message<'a>,
    funs: &[FunSite<'a>],
    regs: Option<Registries<'_>>,
    w: &mut Walker,
    memo: Option<&mut FunMemo>,
) -> Judgement {
    if !p.control_open {
        if let Some(j) = judge_control(p, msg, w) {
            return j;
        }
    }
    judge_funs_memo(p, msg, funs, regs, memo)
}

/// The fun half of [`judge_memo`], for a message whose control rules passed already.
pub(crate) fn judge_funs_memo<'a>(
    p: &Compiled,
    msg: &Message<'a>,
    funs: &[FunSite<'a>],
    regs: Option<Registries<'_>>,
    memo: Option<&mut FunMemo>,
) -> Judgement {
    match regs {
        Some(regs) if !funs.is_empty() => judge_funs(p, msg, funs, regs, memo.and_then(|m| m.valid_for(regs.target, p))),
        _ => Judgement::pass(),
    }
}

// ---------------------------------------------------------------------------------------
// Control messages

/// Ops whose payload is a message delivered to a process's mailbox.
fn carries_message(op: u8) -> bool {
    matches!(
        op,
        op::SEND | op::SEND_TT | op::REG_SEND | op::REG_SEND_TT | op::SEND_SENDER | op::SEND_SENDER_TT | op::ALIAS_SEND | op::ALIAS_SEND_TT
    )
}

/// A call's module, function and arity (the length of its argument list, when a list).
type CallTarget<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>, Option<u8>);

/// Small readers over a payload, for recognising shapes without decoding whole terms.
struct Peek<'w, 'a, 'm> {
    w: &'w mut Walker,
    msg: &'m Message<'a>,
}

impl<'a> Peek<'_, 'a, '_> {
    fn header(&mut self, at: usize) -> Option<(Term<'a>, usize)> {
        self.w.read_header(self.msg.bytes, at).ok()
    }
    /// A tuple at `at`: its arity and where its first element starts. (Read without a term
    /// view, as `atom` below: these run on every message under the untrusted preset, and a
    /// full view costs more than the shape check itself.)
    fn tuple(&mut self, at: usize) -> Option<(u32, usize)> {
        read_tuple(self.msg.bytes, at).ok().flatten()
    }
    /// An atom at `at`: its text (UTF-8 bytes) and where it ends.
    fn atom(&mut self, at: usize) -> Option<(Cow<'a, [u8]>, usize)> {
        let (a, next) = self.w.read_atom(self.msg.bytes, at).ok()?;
        Some((atom_bytes(&self.msg.refs, &a)?, next))
    }
    /// Where the term at `at` ends.
    fn skip(&mut self, at: usize) -> Option<usize> {
        self.w.walk(self.msg.bytes, at, &mut Skip).ok()
    }
    /// The length of the list at `at` (a proper list's element count; a string's length).
    fn list_len(&mut self, at: usize) -> Option<u32> {
        match self.header(at)? {
            (Term::Nil, _) => Some(0),
            (Term::List(n), _) => Some(n),
            (Term::String(s), _) => Some(s.len() as u32),
            _ => None,
        }
    }
    /// The elements' starts of a list of exactly `n` elements at `at`.
    fn list_elems(&mut self, at: usize, n: u32, out: &mut [usize; 4]) -> Option<()> {
        let (Term::List(len), mut next) = self.header(at)? else { return None };
        if len != n || n as usize > out.len() {
            return None;
        }
        for slot in out.iter_mut().take(n as usize) {
            *slot = next;
            next = self.skip(next)?;
        }
        Some(())
    }
    /// `{'$gen_call', From, Request}` or `{'$gen_cast', Request}`: the request's start.
    fn gen_request(&mut self, at: usize) -> Option<(&'static str, usize)> {
        let (n, first) = self.tuple(at)?;
        let (tag, next) = self.atom(first)?;
        match (&*tag, n) {
            (b"$gen_call", 3) => Some(("$gen_call", self.skip(next)?)),
            (b"$gen_cast", 2) => Some(("$gen_cast", next)),
            _ => None,
        }
    }
}

/// Atom bytes as text, for findings.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A denied control message.
fn deny(p: &Compiled, rule: &'static str, module: String, subject: String) -> Judgement {
    let (verdict, action) = match p.on_deny {
        DenyAction::Drop => (Verdict::Drop, "drop"),
        DenyAction::Close => (Verdict::Close { reason: format!("policy {}: {rule}: {subject}", p.name), reply: None }, "close"),
    };
    Judgement { verdict, findings: vec![Finding { rule, module, subject, action, detail: None }] }
}

/// The control rules alone: `Some` with the judgement when they deny, `None` when they pass.
pub(crate) fn judge_control<'a>(p: &Compiled, msg: &Message<'a>, w: &mut Walker) -> Option<Judgement> {
    let op = msg.op;
    if !p.op_allowed(op) {
        return Some(deny(p, "op", String::new(), op_name(op).to_string()));
    }
    w.set_cache_refs(msg.refs.table().map(|t| t.nrefs));
    let mut peek = Peek { w, msg };
    // Addressed to a registered name: rex's by `judge_name`, any other's never reaches rex.
    let mut named = false;
    let mut altact_message = false;
    match &msg.control {
        Control::SpawnRequest { module, function, arity, req_id, from, .. } => {
            let m = atom_bytes(&msg.refs, module).unwrap_or(Cow::Borrowed(b""));
            let f = atom_bytes(&msg.refs, function).unwrap_or(Cow::Borrowed(b""));
            let a = arity.as_int().and_then(|a| u8::try_from(a).ok());
            let denied = if *m == *b"erpc" && (*f == *b"execute_call" || *f == *b"execute_cast") {
                // erpc (and rpc, which runs on erpc since OTP 23): judge what is called.
                // execute_call/4 takes [Ref, M, F, A]; execute_call/3 and execute_cast/3
                // take [M, F, A].
                let target = msg.payload.clone().and_then(|pl| {
                    let mut at = [0usize; 4];
                    let skip = if a == Some(4) { 1 } else { 0 };
                    peek.list_elems(pl.start, 3 + skip as u32, &mut at)?;
                    let (im, _) = peek.atom(at[skip])?;
                    let (if_, _) = peek.atom(at[skip + 1])?;
                    let ia = peek.list_len(at[skip + 2]).and_then(|n| u8::try_from(n).ok());
                    Some((im, if_, ia))
                });
                match target {
                    Some((im, if_, ia)) if p.rpc_allow.allows(&im, &if_, ia) => None,
                    Some((im, if_, ia)) => Some(("rpc_allow", text(&im), mfa_text(&if_, ia))),
                    None if p.rpc_allow.is_any() => None,
                    None => Some(("rpc_allow", text(&m), "unrecognised erpc arguments".to_string())),
                }
            } else if !p.spawn_allow.allows(&m, &f, a) {
                Some(("spawn_allow", text(&m), mfa_text(&f, a)))
            } else {
                None
            };
            if let Some((rule, module, what)) = denied {
                let subject = format!("{module}:{what}");
                let reply = wire::spawn_reply(&msg.refs, req_id, from, DENIED_REASON);
                let (verdict, action) = match (p.on_deny, reply) {
                    (DenyAction::Close, reply) => {
                        (Verdict::Close { reason: format!("policy {}: {rule}: spawn of {subject}", p.name), reply }, "close")
                    }
                    (DenyAction::Drop, Some(r)) => (Verdict::Reply(r), "deny"),
                    (DenyAction::Drop, None) => (Verdict::Drop, "drop"),
                };
                return Some(Judgement { verdict, findings: vec![Finding { rule, module, subject, action, detail: None }] });
            }
        }
        Control::RegSend { to_name, .. } | Control::RegSendTt { to_name, .. } => {
            let name = to_name.as_atom().and_then(|a| atom_bytes(&msg.refs, &a)).unwrap_or(Cow::Borrowed(b""));
            named = true;
            if let Some(j) = judge_name(p, &mut peek, &name) {
                return Some(j);
            }
        }
        Control::AltactSigSend { fields } => {
            // OTP 28's send of a message or an exit signal (flag EXIT) to a pid, an alias or
            // (flag NAME) a registered name: a name is judged as a reg_send's, the payload of a
            // message as any message's. erts takes an atom `To` only with NAME, and only the
            // flags' low byte (of a bignum too); flags that cannot be read count as a message.
            let flags = fields[0].as_ref().and_then(|f| altact_flags(&mut peek, f));
            altact_message = flags.is_none_or(|f| f & ALTACT_EXIT == 0);
            if let Some(to) = fields[2].as_ref().and_then(|f| f.as_atom()) {
                let name = atom_bytes(&msg.refs, &to).unwrap_or(Cow::Borrowed(b""));
                named = true;
                if let Some(j) = judge_name(p, &mut peek, &name) {
                    return Some(j);
                }
            }
        }
        _ => {}
    }
    // By shape, in any encoding: the untrusted preset's shapes whatever the destination; rex's
    // requests in whatever is sent to a pid or an alias (a partner may learn pids: rex's own is
    // in the features question it sends when nodes meet). A message to a registered name other
    // than `rex` cannot reach rex (a process has one name at most), so a gen_server's own
    // `stop` call by name, say, is not taken for rex's.
    let rpc = !named && !p.rpc_allow.is_any();
    if (p.untrusted || rpc) && (carries_message(op) || altact_message) {
        if let Some(pl) = msg.payload.clone() {
            return payload_shape(p, &mut peek, pl.start, rpc);
        }
    }
    None
}

/// The rules for a message to the registered name `name` (a reg_send, or an ALTACT_SIG_SEND
/// to a name): `Some` with the denial.
fn judge_name(p: &Compiled, peek: &mut Peek<'_, '_, '_>, name: &[u8]) -> Option<Judgement> {
    if name == b"rex" {
        // The rpc server: judged by rpc_allow, never reg_send_allow. Everything is judged
        // here (the payload checks need not look again for rex's requests): a request rex
        // acts on by its allow-list, rex's own features question passes, anything else is
        // refused.
        if !p.rpc_allow.is_any() && !features_request(peek) {
            return match peek.msg.payload.clone().and_then(|pl| rex_request(peek, pl.start)) {
                Some(req) => judge_rex(p, req),
                None => Some(deny(p, "rpc_allow", text(name), "unrecognised message to rex".into())),
            };
        }
    } else if p.untrusted && UNTRUSTED_NAMES.contains(&name) {
        let s = format!("message to {}", text(name));
        return Some(deny(p, "untrusted:registered_name", text(name), s));
    } else if p.untrusted && name == b"net_kernel" && is_auth(peek) {
        // net_adm:ping: allowed by the preset (it answers yes or no, nothing else).
    } else if !p.reg_send_allow.allows(name) {
        let s = format!("message to {}", text(name));
        return Some(deny(p, "reg_send_allow", text(name), s));
    }
    None
}

/// ALTACT_SIG_SEND's flag bit for an exit signal (erts `ERTS_DOP_ALTACT_SIG_FLG_EXIT`); the
/// others: 1 priority, 2 token, 4 alias, 8 name.
const ALTACT_EXIT: u8 = 1 << 4;

/// The low byte of ALTACT_SIG_SEND's flags, as erts reads it: of a non-negative integer, or
/// of a non-negative bignum. `None` for anything else (which erts refuses).
fn altact_flags(peek: &mut Peek<'_, '_, '_>, f: &Field<'_>) -> Option<u8> {
    match f.term {
        FieldTerm::Int(v) if v >= 0 => Some(v as u8),
        FieldTerm::Int(_) => None,
        _ => match peek.header(f.at)?.0 {
            Term::Big { negative: false, digits } => digits.first().copied(),
            _ => None,
        },
    }
}

fn mfa_text(f: &[u8], a: Option<u8>) -> String {
    match a {
        Some(a) => format!("{}/{a}", text(f)),
        None => text(f),
    }
}

/// `{Pid, features_request}`: rex asking the remote rex which rpc features it has (OTP 23+
/// sends it when a node comes up; the answer is a feature list).
fn features_request(peek: &mut Peek<'_, '_, '_>) -> bool {
    let Some(pl) = peek.msg.payload.clone() else { return false };
    (|| {
        let (2, first) = peek.tuple(pl.start)? else { return None };
        let second = peek.skip(first)?;
        let (t, _) = peek.atom(second)?;
        (*t == *b"features_request").then_some(())
    })()
    .is_some()
}

/// `{'$gen_call', From, {is_auth, Node}}`: net_adm:ping's question.
fn is_auth(peek: &mut Peek<'_, '_, '_>) -> bool {
    let Some(pl) = peek.msg.payload.clone() else { return false };
    (|| {
        let ("$gen_call", req) = peek.gen_request(pl.start)? else { return None };
        let (2, first) = peek.tuple(req)? else { return None };
        let (t, _) = peek.atom(first)?;
        (*t == *b"is_auth").then_some(())
    })()
    .is_some()
}

/// The text of the atom at `at`, as its inline bytes or its cache entry's, and where the atom
/// ends; `None` when the term there is not an atom. Neither validated nor converted from
/// Latin-1: only for comparing with ASCII names, whose bytes are the same in every atom
/// encoding (and no other text has them). Cheaper than [`Peek::atom`], for the checks every
/// message goes through.
#[inline]
fn raw_atom<'a>(msg: &Message<'a>, at: usize) -> Option<(&'a [u8], usize)> {
    let (a, next) = walked_atom(msg.bytes, at)?;
    let text = match a {
        Atom::Utf8(b) | Atom::Latin1(b) => b,
        Atom::CacheRef(i) => msg.refs.resolve(i)?.as_bytes(),
    };
    Some((text, next))
}

/// Where the atom at `at` ends (its text not looked up: a node name in a pid, say).
#[inline]
fn atom_end(b: &[u8], at: usize) -> Option<usize> {
    walked_atom(b, at).map(|(_, end)| end)
}

/// Where the term at `at` ends, read directly for the scalars a message's first element
/// usually is (an integer, an atom, a pid, a reference, `[]`, a binary); `None` for any other
/// term, which the caller walks. (The decoder walked the whole payload, so its lengths hold.)
#[inline]
fn skip_scalar(b: &[u8], at: usize) -> Option<usize> {
    let u32_at = |i: usize| Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize);
    let end = match *b.get(at)? {
        tag::SMALL_INTEGER => at + 2,
        tag::INTEGER => at + 5,
        tag::NIL => at + 1,
        tag::NEW_PID => atom_end(b, at + 1)? + 12,
        tag::NEWER_REFERENCE => {
            let words = usize::from(u16::from_be_bytes([*b.get(at + 1)?, *b.get(at + 2)?]));
            atom_end(b, at + 3)? + 4 + 4 * words
        }
        tag::BINARY => at + 5 + u32_at(at + 1)?,
        _ => atom_end(b, at)?,
    };
    (end <= b.len()).then_some(end)
}

/// Where the term at `at` ends: read directly for a scalar or a tuple or list of at most
/// four scalars (a call's `From` is `{Pid, Ref}` or `{Pid, [alias | Ref]}`), walked
/// otherwise.
#[inline]
fn skip_term(peek: &mut Peek<'_, '_, '_>, at: usize) -> Option<usize> {
    let b = peek.msg.bytes;
    let shallow = || {
        let (count, mut p) = match *b.get(at)? {
            tag::SMALL_TUPLE => (usize::from(*b.get(at + 1)?), at + 2),
            // The elements and the tail.
            tag::LIST => (u32::from_be_bytes(b.get(at + 1..at + 5)?.try_into().ok()?) as usize + 1, at + 5),
            _ => return skip_scalar(b, at),
        };
        if count > 4 {
            return None;
        }
        for _ in 0..count {
            p = skip_scalar(b, p)?;
        }
        Some(p)
    };
    match shallow() {
        Some(end) => Some(end),
        None => peek.skip(at),
    }
}

/// The tuple at `at`, in either encoding (`SMALL_TUPLE_EXT` or `LARGE_TUPLE_EXT`, which erts
/// decodes alike, whatever the arity): its arity and where its first element starts.
#[inline]
fn any_tuple(peek: &mut Peek<'_, '_, '_>, at: usize) -> Option<(u32, usize)> {
    let b = peek.msg.bytes;
    match *b.get(at)? {
        tag::SMALL_TUPLE => Some((u32::from(*b.get(at + 1)?), at + 2)),
        tag::LARGE_TUPLE => peek.tuple(at),
        _ => None,
    }
}

/// A request rex (the rpc server of `rpc.erl`) acts on, recognised by its shape.
enum RexReq<'a> {
    /// `{call | block_call | cast, M, F, Args, GroupLeader}`: runs `apply(M, F, Args)`.
    Call(CallTarget<'a>),
    /// The same with a module or function that is not an atom.
    Malformed,
    /// `{From, {sbcast, Name, Msg}}` or `{From, {send, Name, Msg}}`: rex sends `Msg` (or
    /// `{From, Msg}`) on to `Name`, a name or pid of its node or of any other, past every
    /// name and shape rule.
    Relay(&'static str),
    /// `{'$gen_call', From, stop}`: rex stops, and `kernel_sup` (one_for_all, no restarts)
    /// with it: the node halts.
    Stop,
}

/// The request rex would act on in the payload at `at`, if any. The shapes of OTP's rex
/// (`rpc.erl`, OTP 23 to 28) that do something:
/// - `{'$gen_call', From, {call | block_call, M, F, Args, GL}}` (`rpc:call` to a node
///   without erpc, `rpc:block_call`);
/// - `{'$gen_cast', {cast, M, F, Args, GL}}` (`rpc:cast` to a node without erpc,
///   `rpc:eval_everywhere`);
/// - `{From, {call, M, F, Args, GL}}` (handle_info, for hidden C nodes);
/// - `{From, {sbcast, Name, Msg}}`, `{From, {send, Name, Msg}}` (`rpc:sbcast`,
///   `rpc:multi_server_call`: relays).
///
/// - `{'$gen_call', From, stop}`: stops rex, and the node with it.
///
/// `From` may be any term. Arities are exact, as rex's clauses match them; anything else rex
/// ignores.
fn rex_request<'a>(peek: &mut Peek<'_, 'a, '_>, at: usize) -> Option<RexReq<'a>> {
    match any_tuple(peek, at)? {
        (2, first) => rex_pair(peek, first),
        (3, first) => match raw_atom(peek.msg, first)? {
            (b"$gen_call", next) => {
                let req = skip_term(peek, next)?;
                rex_call(peek, req)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The request of a `{'$gen_call', From, Request}`, at `at`.
#[inline]
fn rex_call<'a>(peek: &mut Peek<'_, 'a, '_>, at: usize) -> Option<RexReq<'a>> {
    match raw_atom(peek.msg, at) {
        Some((b"stop", _)) => Some(RexReq::Stop),
        _ => rex_inner(peek, at, &[b"call", b"block_call"], false),
    }
}

/// A 2-tuple whose first element is at `first`: `{'$gen_cast', Request}` or `{From, Request}`.
#[inline]
fn rex_pair<'a>(peek: &mut Peek<'_, 'a, '_>, first: usize) -> Option<RexReq<'a>> {
    // `From` is any term: its end read directly when it is a scalar, else walked.
    let req = match peek.msg.bytes.get(first) {
        Some(&(tag::SMALL_ATOM_UTF8 | tag::ATOM_CACHE_REF | tag::ATOM_UTF8 | tag::SMALL_ATOM | tag::ATOM)) => match raw_atom(peek.msg, first)? {
            (b"$gen_cast", next) => return rex_inner(peek, next, &[b"cast"], false),
            (_, next) => next,
        },
        _ => skip_term(peek, first)?,
    };
    rex_inner(peek, req, &[b"call"], true)
}

/// `{Tag, M, F, Args, GL}` with `Tag` in `calls`, or (`relays`) `{sbcast | send, Name, Msg}`.
#[inline]
fn rex_inner<'a>(peek: &mut Peek<'_, 'a, '_>, at: usize, calls: &[&[u8]], relays: bool) -> Option<RexReq<'a>> {
    let (n, first) = any_tuple(peek, at)?;
    if !(n == 5 || relays && n == 3) {
        return None;
    }
    let (t, next) = raw_atom(peek.msg, first)?;
    if n == 5 {
        if !calls.contains(&t) {
            return None;
        }
        let call = (|| {
            let (m, f_at) = peek.atom(next)?;
            let (f, a_at) = peek.atom(f_at)?;
            let a = peek.list_len(a_at).and_then(|n| u8::try_from(n).ok());
            Some((m, f, a))
        })();
        return Some(call.map_or(RexReq::Malformed, RexReq::Call));
    }
    match t {
        b"sbcast" => Some(RexReq::Relay("{From,{sbcast,Name,Msg}}")),
        b"send" => Some(RexReq::Relay("{From,{send,Name,Msg}}")),
        _ => None,
    }
}

/// A rex request judged by `rpc_allow`: `Some` with the denial.
fn judge_rex(p: &Compiled, req: RexReq<'_>) -> Option<Judgement> {
    match req {
        RexReq::Call((m, f, a)) if p.rpc_allow.allows(&m, &f, a) => None,
        RexReq::Call((m, f, a)) => {
            let s = format!("{}:{}", text(&m), mfa_text(&f, a));
            Some(deny(p, "rpc_allow", text(&m), s))
        }
        RexReq::Malformed => Some(deny(p, "rpc_allow", "rex".into(), "rpc request whose module or function is not an atom".into())),
        RexReq::Relay(what) => Some(deny(p, "rpc_allow", "rex".into(), format!("{what}: rex sends Msg on to Name"))),
        RexReq::Stop => Some(deny(p, "rpc_allow", "rex".into(), "{'$gen_call',From,stop}: rex stops, and the node with it".into())),
    }
}

/// The payload checks of every message, whatever its destination: the `untrusted` preset's
/// dangerous shapes, and (`rpc`: `rpc_allow` restricts something) rex's requests. Every
/// shape is a tuple of 2 to 4 elements, so most payloads are ruled out by their first two
/// bytes, and each arity is looked into only as far as some shape of it needs.
#[inline]
fn payload_shape(p: &Compiled, peek: &mut Peek<'_, '_, '_>, at: usize, rpc: bool) -> Option<Judgement> {
    let (n, first) = any_tuple(peek, at)?;
    match n {
        2 if rpc => rex_pair(peek, first).and_then(|req| judge_rex(p, req)),
        // (No 4-tuple is a rex request.)
        3 | 4 if n == 3 || p.untrusted => {
            let (lead, next) = raw_atom(peek.msg, first)?;
            // `{'$gen_call', From, Request}`: where `Request` starts, for both checks.
            let call = if n == 3 && lead == b"$gen_call" { skip_term(peek, next) } else { None };
            if p.untrusted {
                if let Some((rule, subject)) = dangerous_shape(peek, lead, n, call) {
                    return Some(deny(p, rule, String::new(), subject.into()));
                }
            }
            match call {
                Some(req) if rpc => rex_call(peek, req).and_then(|req| judge_rex(p, req)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The payload shapes the `untrusted` preset refuses in any message, to any process: a 3- or
/// 4-tuple (`n`) whose first element is the atom `lead`; `call` is where a `$gen_call`'s
/// request starts.
#[inline]
fn dangerous_shape(peek: &mut Peek<'_, '_, '_>, lead: &[u8], n: u32, call: Option<usize>) -> Option<(&'static str, &'static str)> {
    match (lead, n) {
        // sys: get_state, replace_state (runs a fun), change_code, suspend, terminate …
        (b"system", 3) => Some(("untrusted:system_message", "{system,From,Request}")),
        (b"io_request", 4) => Some(("untrusted:io_request", "{io_request,From,ReplyAs,Request}")),
        // code_server's protocol: load_binary, add_path, purge, …
        (b"code_call", 3) => Some(("untrusted:code_loading", "{code_call,Pid,Request}")),
        (b"$gen_call", 3) => {
            let (_, first) = any_tuple(peek, call?)?;
            let (t, _) = raw_atom(peek.msg, first)?;
            match t {
                b"start_child" | b"restart_child" | b"terminate_child" | b"delete_child" => {
                    Some(("untrusted:supervisor_child_call", "{'$gen_call',From,{start_child|restart_child|terminate_child|delete_child,…}}"))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Funs

fn fun_action_name(a: FunAction) -> &'static str {
    match a {
        FunAction::Pass => "pass",
        FunAction::Rewrite => "rewrite",
        FunAction::Replace => "replace",
        FunAction::Drop => "drop",
        FunAction::Close => "close",
    }
}

/// The export a local fun can become: provably the same function, and one the target has.
fn rewrite_target(p: &Compiled, nf: &NewFun<'_>, module: &str, regs: Registries<'_>) -> Result<(String, String, u8), &'static str> {
    if nf.num_free != 0 {
        return Err("the fun has free variables");
    }
    let source = (regs.source)();
    let version = source.as_deref().and_then(|s| s.knows(module, nf.uniq)).ok_or("the source registry does not know this module version")?;
    let lambda = version.lambda(nf.index).ok_or("no such lambda in the module version")?;
    if lambda.num_free != 0 || lambda.fun_arity() != Some(nf.arity as u32) {
        return Err("the lambda does not match the fun");
    }
    let fun_arity = u8::try_from(lambda.arity).map_err(|_| "arity over 255")?;
    let (m, f, a) = if let Some(t) = p.mapping(module, &lambda.name, fun_arity) {
        if t.arity != Some(nf.arity) {
            return Err("the fun_map target has another arity");
        }
        (t.module.clone(), t.function.clone(), nf.arity)
    } else if !lambda.name.starts_with('-') && version.exports(&lambda.name, lambda.arity) {
        // OTP 25+: `fun foo/1` of a local function is a local fun whose lambda is foo/1.
        (module.to_string(), lambda.name.to_string(), nf.arity)
    } else {
        return Err("the lambda is not an exported function and has no fun_map entry");
    };
    // The target must have it, when its registry knows the module at all.
    if !regs.target.lookup(&m).is_empty() && !regs.target.exported_anywhere(&m, &f, a as u32) {
        return Err("the target does not export the rewrite's function");
    }
    Ok((m, f, a))
}

/// One fun the target cannot run, and what the policy says about it.
struct Case<'a> {
    rule: &'static str,
    module: Cow<'a, str>,
    subject: String,
    action: FunAction,
    /// The marker term, for `replace`.
    marker: Vec<u8>,
    /// For `rewrite`: the export fun's bytes, or why there is none.
    rewrite: Option<Result<Vec<u8>, &'static str>>,
}

/// The message-level effect of one fun decision.
enum Effect {
    None,
    Edit(Vec<u8>),
    Drop,
    Close,
}

/// Whether `memo` (synced to the policy and target snapshot at hand) remembers the fun `key`
/// names as passed. A hit means exactly this module text and MD5 (a local fun), or module,
/// function and arity (an export fun), passed against this snapshot and policy: `atom_bytes`
/// is `atom_text`'s bytes whenever the latter exists, and only passes of resolved names are
/// remembered. (Old-style funs have no key: they are never remembered.)
pub(crate) fn remembered(memo: &FunMemo, msg: &Message<'_>, key: FunKey<'_>) -> bool {
    match key {
        FunKey::Local { module, uniq } => atom_bytes(&msg.refs, &module).is_some_and(|b| memo.local_passed(&b, uniq)),
        FunKey::Export { module, function, arity } => atom_bytes(&msg.refs, &module)
            .zip(atom_bytes(&msg.refs, &function))
            .is_some_and(|(mb, fb)| memo.export_passed(&mb, &fb, arity)),
    }
}

/// [`remembered`] for a fun of `msg` as collected (its key read from its header), on the
/// forwarding path: inline, and the text borrowed where it lies (see [`borrowed_text`]), with
/// anything else left to [`remembered`].
///
/// Why the span and not its key: a key handed on to an out-of-line call was built in memory
/// up front, byte by byte, and read back as words, which the CPU cannot forward (a stall on
/// every fun).
#[inline(always)]
pub(crate) fn span_remembered(memo: &FunMemo, msg: &Message<'_>, span: &FunSpan) -> bool {
    let refs = &msg.refs;
    match span.key(msg.bytes) {
        Some(FunKey::Local { module, uniq }) => match borrowed_text(refs, module) {
            Some(m) => memo.local_passed(m, uniq),
            None => span_remembered_cold(memo, msg, span),
        },
        Some(FunKey::Export { module, function, arity }) => match (borrowed_text(refs, module), borrowed_text(refs, function)) {
            (Some(m), Some(f)) => memo.export_passed(m, f, arity),
            _ => span_remembered_cold(memo, msg, span),
        },
        None => false,
    }
}

#[cold]
#[inline(never)]
fn span_remembered_cold(memo: &FunMemo, msg: &Message<'_>, span: &FunSpan) -> bool {
    span.key(msg.bytes).is_some_and(|k| remembered(memo, msg, k))
}

/// An atom's text as UTF-8 bytes when they lie in the message or the atom cache as they are
/// (every atom but non-ASCII Latin-1, and a cache ref the message does not define): what
/// [`atom_bytes`] gives then, with no `Cow` to build and drop.
#[inline(always)]
fn borrowed_text<'a>(refs: &Refs<'a>, a: Atom<'a>) -> Option<&'a [u8]> {
    match a {
        Atom::Utf8(b) => Some(b),
        Atom::Latin1(b) if b.is_ascii() => Some(b),
        Atom::CacheRef(i) => refs.resolve(i).map(str::as_bytes),
        Atom::Latin1(_) => None,
    }
}

fn judge_funs<'a>(p: &Compiled, msg: &Message<'a>, funs: &[FunSite<'a>], regs: Registries<'_>, mut memo: Option<&mut FunMemo>) -> Judgement {
    let mut edits: Vec<Edit> = Vec::new();
    let mut findings: Vec<Finding> = Vec::new();
    let mut drop = false;
    let mut close: Option<String> = None;
    for site in funs {
        // Inside a fun already replaced (sites come in pre-order, edits by start)?
        if edits.last().is_some_and(|e| e.range.start <= site.at && site.end <= e.range.end) {
            continue;
        }
        let Case { rule, module, subject, action, marker, rewrite } = match site.kind {
                FunKind::New(nf) => {
                    if memo.as_deref().is_some_and(|m| site.kind.key().is_some_and(|k| remembered(m, msg, k))) {
                        continue;
                    }
                    let text = atom_text(&msg.refs, &nf.module);
                    let resolved = text.is_some();
                    let module = text.unwrap_or(Cow::Borrowed(""));
                    let known = regs.target.knows(&module, nf.uniq).is_some();
                    let action = if known { FunAction::Pass } else { p.unknown_fun_for(&module) };
                    if action == FunAction::Pass {
                        if let Some(m) = memo.as_deref_mut().filter(|_| resolved) {
                            m.remember_local(module.as_bytes(), nf.uniq);
                        }
                        continue;
                    }
                    let subject = format!("#Fun<{module}.{}.{}>", nf.index, wire::hex(nf.uniq));
                    let marker = wire::marker_local(&module, nf.index, nf.uniq);
                    let rw = (action == FunAction::Rewrite).then(|| {
                        rewrite_target(p, &nf, &module, regs).map(|(m, f, a)| {
                            let mut b = Vec::new();
                            encode_export(&m, &f, a, &mut b);
                            b
                        })
                    });
                    Case { rule: "unknown_fun", module, subject, action, marker, rewrite: rw }
                }
                FunKind::Old(of) => {
                    let module = atom_text(&msg.refs, &of.module).unwrap_or(Cow::Borrowed(""));
                    let action = p.unknown_fun_for(&module);
                    if action == FunAction::Pass {
                        continue;
                    }
                    let subject = format!("#Fun<{module}.{}.{}>", of.index, of.uniq);
                    let marker = wire::marker_old(&module, of.index, of.uniq);
                    let rw = (action == FunAction::Rewrite).then_some(Err("an old-style fun names no lambda"));
                    Case { rule: "unknown_fun", module, subject, action, marker, rewrite: rw }
                }
                FunKind::Export(e) => {
                    if memo.as_deref().is_some_and(|m| site.kind.key().is_some_and(|k| remembered(m, msg, k))) {
                        continue;
                    }
                    let (mt, ft) = (atom_text(&msg.refs, &e.module), atom_text(&msg.refs, &e.function));
                    let resolved = mt.is_some() && ft.is_some();
                    let module = mt.unwrap_or(Cow::Borrowed(""));
                    let function = ft.unwrap_or(Cow::Borrowed(""));
                    // Judged only when the target's registry knows the module.
                    let judged = !regs.target.lookup(&module).is_empty() && !regs.target.exported_anywhere(&module, &function, e.arity as u32);
                    let action = if judged { p.unknown_export_for(&module) } else { FunAction::Pass };
                    if action == FunAction::Pass {
                        if let Some(m) = memo.as_deref_mut().filter(|_| resolved) {
                            m.remember_export(module.as_bytes(), function.as_bytes(), e.arity);
                        }
                        continue;
                    }
                    let subject = format!("fun {module}:{function}/{}", e.arity);
                    let marker = wire::marker_export(&module, &function, e.arity);
                    let rw = (action == FunAction::Rewrite).then_some(Err("an export fun is already fun M:F/A"));
                    Case { rule: "unknown_export", module, subject, action, marker, rewrite: rw }
                }
            };
        let (rule, action, effect, detail) = match (action, rewrite) {
            (FunAction::Rewrite, Some(Ok(bytes))) => {
                let detail = print_export(&bytes);
                ("unknown_fun", FunAction::Rewrite, Effect::Edit(bytes), detail)
            }
            (FunAction::Rewrite, Some(Err(why))) => {
                let fb = p.rewrite_fallback;
                let effect = match fb {
                    FunAction::Replace => Effect::Edit(marker),
                    FunAction::Drop => Effect::Drop,
                    FunAction::Close => Effect::Close,
                    FunAction::Pass | FunAction::Rewrite => Effect::None,
                };
                ("rewrite_fallback", fb, effect, Some(why.to_string()))
            }
            (FunAction::Replace, _) => (rule, action, Effect::Edit(marker), None),
            (FunAction::Drop, _) => (rule, action, Effect::Drop, None),
            (FunAction::Close, _) => (rule, action, Effect::Close, None),
            (FunAction::Pass | FunAction::Rewrite, _) => (rule, action, Effect::None, None),
        };
        match effect {
            Effect::Edit(bytes) => edits.push(Edit { range: site.range(), bytes }),
            Effect::Drop => drop = true,
            Effect::Close => {
                close.get_or_insert_with(|| format!("policy {}: {rule}: {subject}", p.name));
            }
            Effect::None => {}
        }
        findings.push(Finding { rule, module: module.into_owned(), subject, action: fun_action_name(action), detail });
    }
    let verdict = if let Some(reason) = close {
        Verdict::Close { reason, reply: None }
    } else if drop {
        Verdict::Drop
    } else if !edits.is_empty() {
        Verdict::Edits(edits)
    } else {
        Verdict::Pass
    };
    Judgement { verdict, findings }
}

/// `fun m:f/1` for the audit line, from EXPORT_EXT bytes with inline atoms.
fn print_export(b: &[u8]) -> Option<String> {
    let w = Walker::default();
    match w.read_header(b, 0).ok()?.0 {
        Term::Export(e) => {
            let t = |a: distgate_codec::term::Atom<'_>| a.bytes().map(|b| String::from_utf8_lossy(b).into_owned());
            Some(format!("fun {}:{}/{}", t(e.module)?, t(e.function)?, e.arity))
        }
        _ => None,
    }
}
