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

use distgate_codec::control::{op, op_name, Control};
use distgate_codec::fun::{FunKind, FunSite};
use distgate_codec::message::Message;
use distgate_codec::rewrite::{encode_export, Edit};
use distgate_codec::tag;
use distgate_codec::term::{read_tuple, NewFun, Skip, Term, Walker};
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
    /// `{Tag, M, F, A, …}` at `at` with the given tags: (tag, M, F, length of A).
    fn call_mfa(&mut self, at: usize, tags: &[&[u8]]) -> Option<CallTarget<'a>> {
        let (n, first) = self.tuple(at)?;
        if n < 4 {
            return None;
        }
        let (t, m_at) = self.atom(first)?;
        if !tags.contains(&&*t) {
            return None;
        }
        let (m, f_at) = self.atom(m_at)?;
        let (f, a_at) = self.atom(f_at)?;
        let a = self.list_len(a_at).and_then(|n| u8::try_from(n).ok());
        Some((m, f, a))
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
            if *name == *b"rex" {
                // The rpc server: judged by rpc_allow, never reg_send_allow.
                if !p.rpc_allow.is_any() && !features_request(&mut peek) {
                    let call = msg.payload.clone().and_then(|pl| {
                        let (kind, req) = peek.gen_request(pl.start)?;
                        let tags: &[&[u8]] = if kind == "$gen_call" { &[b"call", b"block_call"] } else { &[b"cast"] };
                        peek.call_mfa(req, tags)
                    });
                    match call {
                        Some((m, f, a)) if p.rpc_allow.allows(&m, &f, a) => {}
                        Some((m, f, a)) => {
                            let s = format!("{}:{}", text(&m), mfa_text(&f, a));
                            return Some(deny(p, "rpc_allow", text(&m), s));
                        }
                        None => return Some(deny(p, "rpc_allow", text(&name), "unrecognised message to rex".into())),
                    }
                }
            } else if p.untrusted && UNTRUSTED_NAMES.contains(&&*name) {
                let s = format!("message to {}", text(&name));
                return Some(deny(p, "untrusted:registered_name", text(&name), s));
            } else if p.untrusted && *name == *b"net_kernel" && is_auth(&mut peek) {
                // net_adm:ping: allowed by the preset (it answers yes or no, nothing else).
            } else if !p.reg_send_allow.allows(&name) {
                let s = format!("message to {}", text(&name));
                return Some(deny(p, "reg_send_allow", text(&name), s));
            }
        }
        _ => {}
    }
    if p.untrusted && carries_message(op) {
        if let Some(pl) = msg.payload.clone() {
            if let Some((rule, subject)) = dangerous_shape(&mut peek, pl.start) {
                return Some(deny(p, rule, String::new(), subject.into()));
            }
        }
    }
    None
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

/// The payload shapes the `untrusted` preset refuses in any message, to any process.
fn dangerous_shape(peek: &mut Peek<'_, '_, '_>, at: usize) -> Option<(&'static str, &'static str)> {
    // Every shape is a 3- or 4-tuple starting with an atom: most payloads are ruled out by
    // their first three bytes.
    let b = peek.msg.bytes;
    if b.get(at) != Some(&tag::SMALL_TUPLE)
        || !matches!(b.get(at + 1), Some(3 | 4))
        || !matches!(b.get(at + 2), Some(&(tag::SMALL_ATOM_UTF8 | tag::ATOM_UTF8 | tag::SMALL_ATOM | tag::ATOM | tag::ATOM_CACHE_REF)))
    {
        return None;
    }
    let (n, first) = (b[at + 1] as u32, at + 2);
    let (tag, next) = peek.atom(first)?;
    match (&*tag, n) {
        // sys: get_state, replace_state (runs a fun), change_code, suspend, terminate …
        (b"system", 3) => Some(("untrusted:system_message", "{system,From,Request}")),
        (b"io_request", 4) => Some(("untrusted:io_request", "{io_request,From,ReplyAs,Request}")),
        // code_server's protocol: load_binary, add_path, purge, …
        (b"code_call", 3) => Some(("untrusted:code_loading", "{code_call,Pid,Request}")),
        (b"$gen_call", 3) => {
            let req = peek.skip(next)?;
            let (_, first) = peek.tuple(req)?;
            let (t, _) = peek.atom(first)?;
            match &*t {
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

/// Whether `memo` (synced to the policy and target snapshot at hand) remembers `site` as
/// passed. A hit means exactly this module text and MD5 (a local fun), or module, function
/// and arity (an export fun), passed against this snapshot and policy: `atom_bytes` is
/// `atom_text`'s bytes whenever the latter exists, and only passes of resolved names are
/// remembered. Old-style funs are never remembered.
#[inline]
pub(crate) fn remembered(memo: &FunMemo, msg: &Message<'_>, site: &FunSite<'_>) -> bool {
    match site.kind {
        FunKind::New(nf) => atom_bytes(&msg.refs, &nf.module).is_some_and(|b| memo.local_passed(&b, nf.uniq)),
        FunKind::Export(e) => atom_bytes(&msg.refs, &e.module)
            .zip(atom_bytes(&msg.refs, &e.function))
            .is_some_and(|(mb, fb)| memo.export_passed(&mb, &fb, e.arity)),
        FunKind::Old(_) => false,
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
                    if memo.as_deref().is_some_and(|m| remembered(m, msg, site)) {
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
                    if memo.as_deref().is_some_and(|m| remembered(m, msg, site)) {
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
