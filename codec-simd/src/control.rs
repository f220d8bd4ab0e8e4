//! Control messages: the `{Op, …}` tuple at the head of every distribution message, decoded
//! into a typed enum, with each field's extent so policy can look at (or replace) it.

use crate::error::{DistErrorKind, Error, Result};
use crate::tag;
use crate::term::{read_tuple, u32_at, u8_at, Atom, Pid, Reference, Term, Walker};

/// One element of the control tuple: its header view and its byte extent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field<'a> {
    pub at: usize,
    pub end: usize,
    pub term: FieldTerm<'a>,
}

/// A control field's header, as far as anything reads one: the kinds OTP puts in control
/// tuples. Anything else (a fun, a list, a binary, a reason of any shape) is just its tag
/// byte; its extent is the field's.
///
/// Why not a [`Term`]: a `Term` is as large as its largest variant (a fun's view, 128 bytes),
/// and a decoded control holds up to seven fields, moved with the message it belongs to on
/// every frame; this keeps a field at 72 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldTerm<'a> {
    Pid(Pid<'a>),
    Atom(Atom<'a>),
    Int(i64),
    Ref(Reference<'a>),
    Tuple(u32),
    /// Any other term: its tag byte.
    Other(u8),
}

impl<'a> Field<'a> {
    pub fn as_pid(&self) -> Option<Pid<'a>> {
        match self.term {
            FieldTerm::Pid(p) => Some(p),
            _ => None,
        }
    }
    pub fn as_atom(&self) -> Option<Atom<'a>> {
        match self.term {
            FieldTerm::Atom(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self.term {
            FieldTerm::Int(v) => Some(v),
            _ => None,
        }
    }
}

/// Control op numbers (OTP `dist.h`).
pub mod op {
    pub const LINK: u8 = 1;
    pub const SEND: u8 = 2;
    pub const EXIT: u8 = 3;
    pub const UNLINK: u8 = 4;
    pub const NODE_LINK: u8 = 5;
    pub const REG_SEND: u8 = 6;
    pub const GROUP_LEADER: u8 = 7;
    pub const EXIT2: u8 = 8;
    pub const SEND_TT: u8 = 12;
    pub const EXIT_TT: u8 = 13;
    pub const REG_SEND_TT: u8 = 16;
    pub const EXIT2_TT: u8 = 18;
    pub const MONITOR_P: u8 = 19;
    pub const DEMONITOR_P: u8 = 20;
    pub const MONITOR_P_EXIT: u8 = 21;
    pub const SEND_SENDER: u8 = 22;
    pub const SEND_SENDER_TT: u8 = 23;
    pub const PAYLOAD_EXIT: u8 = 24;
    pub const PAYLOAD_EXIT_TT: u8 = 25;
    pub const PAYLOAD_EXIT2: u8 = 26;
    pub const PAYLOAD_EXIT2_TT: u8 = 27;
    pub const PAYLOAD_MONITOR_P_EXIT: u8 = 28;
    pub const SPAWN_REQUEST: u8 = 29;
    pub const SPAWN_REQUEST_TT: u8 = 30;
    pub const SPAWN_REPLY: u8 = 31;
    pub const SPAWN_REPLY_TT: u8 = 32;
    pub const ALIAS_SEND: u8 = 33;
    pub const ALIAS_SEND_TT: u8 = 34;
    pub const UNLINK_ID: u8 = 35;
    pub const UNLINK_ID_ACK: u8 = 36;
    pub const ALTACT_SIG_SEND: u8 = 37;
}

/// The name OTP's documentation uses for an op (for logs, audit lines and `etf print`).
pub fn op_name(op: u8) -> &'static str {
    match op {
        op::LINK => "LINK",
        op::SEND => "SEND",
        op::EXIT => "EXIT",
        op::UNLINK => "UNLINK",
        op::NODE_LINK => "NODE_LINK",
        op::REG_SEND => "REG_SEND",
        op::GROUP_LEADER => "GROUP_LEADER",
        op::EXIT2 => "EXIT2",
        op::SEND_TT => "SEND_TT",
        op::EXIT_TT => "EXIT_TT",
        op::REG_SEND_TT => "REG_SEND_TT",
        op::EXIT2_TT => "EXIT2_TT",
        op::MONITOR_P => "MONITOR_P",
        op::DEMONITOR_P => "DEMONITOR_P",
        op::MONITOR_P_EXIT => "MONITOR_P_EXIT",
        op::SEND_SENDER => "SEND_SENDER",
        op::SEND_SENDER_TT => "SEND_SENDER_TT",
        op::PAYLOAD_EXIT => "PAYLOAD_EXIT",
        op::PAYLOAD_EXIT_TT => "PAYLOAD_EXIT_TT",
        op::PAYLOAD_EXIT2 => "PAYLOAD_EXIT2",
        op::PAYLOAD_EXIT2_TT => "PAYLOAD_EXIT2_TT",
        op::PAYLOAD_MONITOR_P_EXIT => "PAYLOAD_MONITOR_P_EXIT",
        op::SPAWN_REQUEST => "SPAWN_REQUEST",
        op::SPAWN_REQUEST_TT => "SPAWN_REQUEST_TT",
        op::SPAWN_REPLY => "SPAWN_REPLY",
        op::SPAWN_REPLY_TT => "SPAWN_REPLY_TT",
        op::ALIAS_SEND => "ALIAS_SEND",
        op::ALIAS_SEND_TT => "ALIAS_SEND_TT",
        op::UNLINK_ID => "UNLINK_ID",
        op::UNLINK_ID_ACK => "UNLINK_ID_ACK",
        op::ALTACT_SIG_SEND => "ALTACT_SIG_SEND",
        _ => "UNKNOWN",
    }
}

/// A decoded control message. Fields keep their extents; pids are typed where OTP always
/// sends a pid, other fields (names, reasons, tokens, refs) are [`Field`]s.
#[derive(Debug, Clone, Copy, PartialEq)]
// Variants are borrowed views of one message, decoded per frame into a local: boxing the
// large ones would allocate per message.
#[allow(clippy::large_enum_variant)]
pub enum Control<'a> {
    Link { from: Pid<'a>, to: Pid<'a> },
    Send { unused: Field<'a>, to: Field<'a> },
    Exit { from: Pid<'a>, to: Pid<'a>, reason: Field<'a> },
    Unlink { from: Pid<'a>, to: Pid<'a> },
    NodeLink,
    RegSend { from: Pid<'a>, unused: Field<'a>, to_name: Field<'a> },
    GroupLeader { from: Pid<'a>, to: Pid<'a> },
    Exit2 { from: Pid<'a>, to: Pid<'a>, reason: Field<'a> },
    SendTt { unused: Field<'a>, to: Field<'a>, token: Field<'a> },
    ExitTt { from: Pid<'a>, to: Pid<'a>, token: Field<'a>, reason: Field<'a> },
    RegSendTt { from: Pid<'a>, unused: Field<'a>, to_name: Field<'a>, token: Field<'a> },
    Exit2Tt { from: Pid<'a>, to: Pid<'a>, token: Field<'a>, reason: Field<'a> },
    /// `to` is a pid or a registered name.
    MonitorP { from: Pid<'a>, to: Field<'a>, reference: Field<'a> },
    DemonitorP { from: Pid<'a>, to: Field<'a>, reference: Field<'a> },
    MonitorPExit { from: Field<'a>, to: Pid<'a>, reference: Field<'a>, reason: Field<'a> },
    SendSender { from: Pid<'a>, to: Field<'a> },
    SendSenderTt { from: Pid<'a>, to: Field<'a>, token: Field<'a> },
    PayloadExit { from: Pid<'a>, to: Pid<'a> },
    PayloadExitTt { from: Pid<'a>, to: Pid<'a>, token: Field<'a> },
    PayloadExit2 { from: Pid<'a>, to: Pid<'a> },
    PayloadExit2Tt { from: Pid<'a>, to: Pid<'a>, token: Field<'a> },
    PayloadMonitorPExit { from: Field<'a>, to: Pid<'a>, reference: Field<'a> },
    /// `mfa` is the `{M, F, Arity}` tuple; `module`/`function`/`arity` are its elements.
    SpawnRequest {
        req_id: Field<'a>,
        from: Pid<'a>,
        group_leader: Pid<'a>,
        mfa: Field<'a>,
        module: Atom<'a>,
        function: Atom<'a>,
        arity: Field<'a>,
        opts: Field<'a>,
        token: Option<Field<'a>>,
    },
    SpawnReply { req_id: Field<'a>, to: Pid<'a>, flags: Field<'a>, result: Field<'a>, token: Option<Field<'a>> },
    AliasSend { from: Pid<'a>, alias: Field<'a>, token: Option<Field<'a>> },
    UnlinkId { id: Field<'a>, from: Pid<'a>, to: Pid<'a> },
    UnlinkIdAck { id: Field<'a>, from: Pid<'a>, to: Pid<'a> },
    /// OTP 28: `{37, FlagsAndPrio, SenderPid, To[, Token]}`; the fields are kept raw.
    AltactSigSend { fields: [Option<Field<'a>>; 4] },
}

impl Control<'_> {
    pub fn op(&self) -> u8 {
        use Control::*;
        match self {
            Link { .. } => op::LINK,
            Send { .. } => op::SEND,
            Exit { .. } => op::EXIT,
            Unlink { .. } => op::UNLINK,
            NodeLink => op::NODE_LINK,
            RegSend { .. } => op::REG_SEND,
            GroupLeader { .. } => op::GROUP_LEADER,
            Exit2 { .. } => op::EXIT2,
            SendTt { .. } => op::SEND_TT,
            ExitTt { .. } => op::EXIT_TT,
            RegSendTt { .. } => op::REG_SEND_TT,
            Exit2Tt { .. } => op::EXIT2_TT,
            MonitorP { .. } => op::MONITOR_P,
            DemonitorP { .. } => op::DEMONITOR_P,
            MonitorPExit { .. } => op::MONITOR_P_EXIT,
            SendSender { .. } => op::SEND_SENDER,
            SendSenderTt { .. } => op::SEND_SENDER_TT,
            PayloadExit { .. } => op::PAYLOAD_EXIT,
            PayloadExitTt { .. } => op::PAYLOAD_EXIT_TT,
            PayloadExit2 { .. } => op::PAYLOAD_EXIT2,
            PayloadExit2Tt { .. } => op::PAYLOAD_EXIT2_TT,
            PayloadMonitorPExit { .. } => op::PAYLOAD_MONITOR_P_EXIT,
            SpawnRequest { token: None, .. } => op::SPAWN_REQUEST,
            SpawnRequest { token: Some(_), .. } => op::SPAWN_REQUEST_TT,
            SpawnReply { token: None, .. } => op::SPAWN_REPLY,
            SpawnReply { token: Some(_), .. } => op::SPAWN_REPLY_TT,
            AliasSend { token: None, .. } => op::ALIAS_SEND,
            AliasSend { token: Some(_), .. } => op::ALIAS_SEND_TT,
            UnlinkId { .. } => op::UNLINK_ID,
            UnlinkIdAck { .. } => op::UNLINK_ID_ACK,
            AltactSigSend { .. } => op::ALTACT_SIG_SEND,
        }
    }

    /// False when no element of the control can hold a fun: every one was read as a pid,
    /// atom, integer or reference. True when some element is anything else (a tuple, a list,
    /// a fun, …): it may, and only a walk of it can tell.
    ///
    /// Why: a policy that judges funs must look in the control too, where a peer may put one
    /// in any free-form field; this spares that walk (and a scan, which atom text such as a
    /// node name containing `p`, `q` or `u`, the fun tags' bytes, defeats) on nearly every
    /// message.
    pub fn may_hold_fun(&self) -> bool {
        use Control::*;
        let fields: [Option<&Field<'_>>; 4] = match self {
            Link { .. } | Unlink { .. } | NodeLink | GroupLeader { .. } | PayloadExit { .. } | PayloadExit2 { .. } => {
                [None; 4]
            }
            Send { unused, to } => [Some(unused), Some(to), None, None],
            SendTt { unused, to, token } => [Some(unused), Some(to), Some(token), None],
            Exit { reason, .. } | Exit2 { reason, .. } => [Some(reason), None, None, None],
            RegSend { unused, to_name, .. } => [Some(unused), Some(to_name), None, None],
            ExitTt { token, reason, .. } | Exit2Tt { token, reason, .. } => [Some(token), Some(reason), None, None],
            RegSendTt { unused, to_name, token, .. } => [Some(unused), Some(to_name), Some(token), None],
            MonitorP { to, reference, .. } | DemonitorP { to, reference, .. } => [Some(to), Some(reference), None, None],
            MonitorPExit { from, reference, reason, .. } => [Some(from), Some(reference), Some(reason), None],
            SendSender { to, .. } => [Some(to), None, None, None],
            SendSenderTt { to, token, .. } => [Some(to), Some(token), None, None],
            PayloadExitTt { token, .. } | PayloadExit2Tt { token, .. } => [Some(token), None, None, None],
            PayloadMonitorPExit { from, reference, .. } => [Some(from), Some(reference), None, None],
            // The MFA tuple's elements are the module and function atoms and `arity`.
            SpawnRequest { req_id, arity, opts, token, .. } => [Some(req_id), Some(arity), Some(opts), token.as_ref()],
            SpawnReply { req_id, flags, result, token, .. } => [Some(req_id), Some(flags), Some(result), token.as_ref()],
            AliasSend { alias, token, .. } => [Some(alias), token.as_ref(), None, None],
            UnlinkId { id, .. } | UnlinkIdAck { id, .. } => [Some(id), None, None, None],
            AltactSigSend { fields } => [fields[0].as_ref(), fields[1].as_ref(), fields[2].as_ref(), fields[3].as_ref()],
        };
        fields.iter().flatten().any(|f| matches!(f.term, FieldTerm::Tuple(_) | FieldTerm::Other(_)))
    }

    /// Whether a payload term follows the control term for this op.
    pub fn has_payload(op: u8) -> Option<bool> {
        Some(match op {
            op::SEND | op::REG_SEND | op::SEND_TT | op::REG_SEND_TT | op::SEND_SENDER
            | op::SEND_SENDER_TT | op::PAYLOAD_EXIT | op::PAYLOAD_EXIT_TT | op::PAYLOAD_EXIT2
            | op::PAYLOAD_EXIT2_TT | op::PAYLOAD_MONITOR_P_EXIT | op::SPAWN_REQUEST
            | op::SPAWN_REQUEST_TT | op::ALIAS_SEND | op::ALIAS_SEND_TT => true,
            op::LINK | op::EXIT | op::UNLINK | op::NODE_LINK | op::GROUP_LEADER | op::EXIT2
            | op::EXIT_TT | op::EXIT2_TT | op::MONITOR_P | op::DEMONITOR_P | op::MONITOR_P_EXIT
            | op::SPAWN_REPLY | op::SPAWN_REPLY_TT | op::UNLINK_ID | op::UNLINK_ID_ACK => false,
            // ALTACT_SIG_SEND carries a payload unless it is an exit-less signal; decided by
            // the bytes that follow, not the op.
            _ => return None,
        })
    }
}

/// Tuple arity OTP sends for each op (`None`: unknown op, or variable as for ALTACT_SIG_SEND).
pub fn arity_of(op: u8) -> Option<usize> {
    Some(match op {
        op::NODE_LINK => 1,
        op::LINK | op::SEND | op::UNLINK | op::GROUP_LEADER | op::SEND_SENDER | op::PAYLOAD_EXIT
        | op::PAYLOAD_EXIT2 | op::ALIAS_SEND => 3,
        op::EXIT | op::REG_SEND | op::EXIT2 | op::SEND_TT | op::MONITOR_P | op::DEMONITOR_P
        | op::SEND_SENDER_TT | op::PAYLOAD_EXIT_TT | op::PAYLOAD_EXIT2_TT
        | op::PAYLOAD_MONITOR_P_EXIT | op::ALIAS_SEND_TT | op::UNLINK_ID | op::UNLINK_ID_ACK => 4,
        op::EXIT_TT | op::REG_SEND_TT | op::EXIT2_TT | op::MONITOR_P_EXIT | op::SPAWN_REPLY => 5,
        op::SPAWN_REQUEST | op::SPAWN_REPLY_TT => 6,
        op::SPAWN_REQUEST_TT => 7,
        _ => return None,
    })
}

fn bad(at: usize, why: &'static str) -> Error {
    Error::dist(at, DistErrorKind::BadControl(why))
}

/// One element of the control tuple at `at`, `depth` containers deep: its header view when it
/// is a kind [`FieldTerm`] keeps, and its extent.
///
/// Why element by element rather than one walk with a visitor that wants every term: a control
/// is a handful of scalars (op, pids, a name) and sometimes one large term (an exit reason, a
/// token). Reading the scalars directly and skimming the rest costs a fraction of building a
/// view of every subterm, and this runs for every message a link carries.
#[inline(always)]
fn field<'a>(w: &mut Walker, buf: &'a [u8], at: usize, depth: usize) -> Result<Field<'a>> {
    let t = u8_at(buf, at)?;
    let (term, end) = match t {
        tag::NEW_PID | tag::PID => {
            let (p, end) = w.read_pid(buf, at)?;
            (FieldTerm::Pid(p), end)
        }
        tag::SMALL_ATOM_UTF8 | tag::ATOM_UTF8 | tag::SMALL_ATOM | tag::ATOM | tag::ATOM_CACHE_REF => {
            let (a, end) = w.read_atom(buf, at)?;
            (FieldTerm::Atom(a), end)
        }
        tag::SMALL_INTEGER => (FieldTerm::Int(u8_at(buf, at + 1)? as i64), at + 2),
        tag::INTEGER => (FieldTerm::Int(u32_at(buf, at + 1)? as i32 as i64), at + 5),
        tag::NEW_REFERENCE | tag::NEWER_REFERENCE | tag::REFERENCE => match w.read_header(buf, at)? {
            (Term::Ref(r), end) => (FieldTerm::Ref(r), end),
            // `read_header` reads these tags as references or fails.
            _ => (FieldTerm::Other(t), w.walk_inside(buf, at, depth)?),
        },
        _ => {
            let term = read_tuple(buf, at)?.map_or(FieldTerm::Other(t), |(n, _)| FieldTerm::Tuple(n));
            (term, w.walk_inside(buf, at, depth)?)
        }
    };
    Ok(Field { at, end, term })
}

/// The control tuple's elements after the op, read in order.
struct Elements<'w, 'a> {
    w: &'w mut Walker,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Elements<'_, 'a> {
    #[inline(always)]
    fn next(&mut self) -> Result<Field<'a>> {
        let f = field(self.w, self.buf, self.pos, 1)?;
        self.pos = f.end;
        Ok(f)
    }

    /// A SPAWN_REQUEST's `{M, F, Arity}`: the tuple and its three elements.
    fn mfa(&mut self) -> Result<(Field<'a>, [Field<'a>; 3])> {
        let (w, buf, at) = (&mut *self.w, self.buf, self.pos);
        let Some((3, first)) = read_tuple(buf, at)? else {
            // Walked first, so that bad bytes inside are reported as such.
            w.walk_inside(buf, at, 1)?;
            return Err(bad(at, "spawn_request MFA is not a 3-tuple"));
        };
        let m = field(w, buf, first, 2)?;
        let f = field(w, buf, m.end, 2)?;
        let a = field(w, buf, f.end, 2)?;
        self.pos = a.end;
        Ok((Field { at, end: a.end, term: FieldTerm::Tuple(3) }, [m, f, a]))
    }
}

/// Decode the control term at `at` in `buf`. Returns the control and its end offset.
#[inline(always)]
pub fn decode<'a>(w: &mut Walker, buf: &'a [u8], at: usize) -> Result<(Control<'a>, usize)> {
    decode_with_op(w, buf, at).map(|(c, _, end)| (c, end))
}

/// [`decode`], also returning the op as read (what [`Control::op`] gives, without its match
/// over every variant: on the forwarding path that match was an indirect jump per message).
#[inline(always)]
pub fn decode_with_op<'a>(w: &mut Walker, buf: &'a [u8], at: usize) -> Result<(Control<'a>, u8, usize)> {
    let Some((arity, first)) = read_tuple(buf, at)? else {
        w.walk_inside(buf, at, 0)?;
        return Err(bad(at, "not a non-empty tuple"));
    };
    let arity = arity as usize;
    if arity == 0 {
        return Err(bad(at, "not a non-empty tuple"));
    }
    let op_field = field(w, buf, first, 1)?;
    let op = match op_field.as_int() {
        Some(v) if (0..=255).contains(&v) => v as u8,
        Some(v) => return Err(Error::dist(op_field.at, DistErrorKind::UnknownOp(v as u64))),
        None => return Err(bad(op_field.at, "op is not an integer")),
    };
    match arity_of(op) {
        Some(n) if n == arity => {}
        Some(_) => return Err(bad(at, "wrong number of elements for the op")),
        None if op == op::ALTACT_SIG_SEND && (4..=5).contains(&arity) => {}
        None if op == op::ALTACT_SIG_SEND => return Err(bad(at, "wrong number of elements for the op")),
        None => return Err(Error::dist(op_field.at, DistErrorKind::UnknownOp(op as u64))),
    }
    // The elements after the op, in order (struct fields below are evaluated as written).
    let mut e = Elements { w, buf, pos: op_field.end };
    let pid = |fl: Field<'a>| -> Result<Pid<'a>> { fl.as_pid().ok_or(bad(fl.at, "expected a pid")) };
    use Control as C;
    let ctl = match op {
        op::LINK => C::Link { from: pid(e.next()?)?, to: pid(e.next()?)? },
        op::SEND => C::Send { unused: e.next()?, to: e.next()? },
        op::EXIT => C::Exit { from: pid(e.next()?)?, to: pid(e.next()?)?, reason: e.next()? },
        op::UNLINK => C::Unlink { from: pid(e.next()?)?, to: pid(e.next()?)? },
        op::NODE_LINK => C::NodeLink,
        op::REG_SEND => C::RegSend { from: pid(e.next()?)?, unused: e.next()?, to_name: e.next()? },
        op::GROUP_LEADER => C::GroupLeader { from: pid(e.next()?)?, to: pid(e.next()?)? },
        op::EXIT2 => C::Exit2 { from: pid(e.next()?)?, to: pid(e.next()?)?, reason: e.next()? },
        op::SEND_TT => C::SendTt { unused: e.next()?, to: e.next()?, token: e.next()? },
        op::EXIT_TT => C::ExitTt { from: pid(e.next()?)?, to: pid(e.next()?)?, token: e.next()?, reason: e.next()? },
        op::REG_SEND_TT => C::RegSendTt { from: pid(e.next()?)?, unused: e.next()?, to_name: e.next()?, token: e.next()? },
        op::EXIT2_TT => C::Exit2Tt { from: pid(e.next()?)?, to: pid(e.next()?)?, token: e.next()?, reason: e.next()? },
        op::MONITOR_P => C::MonitorP { from: pid(e.next()?)?, to: e.next()?, reference: e.next()? },
        op::DEMONITOR_P => C::DemonitorP { from: pid(e.next()?)?, to: e.next()?, reference: e.next()? },
        op::MONITOR_P_EXIT => C::MonitorPExit { from: e.next()?, to: pid(e.next()?)?, reference: e.next()?, reason: e.next()? },
        op::SEND_SENDER => C::SendSender { from: pid(e.next()?)?, to: e.next()? },
        op::SEND_SENDER_TT => C::SendSenderTt { from: pid(e.next()?)?, to: e.next()?, token: e.next()? },
        op::PAYLOAD_EXIT => C::PayloadExit { from: pid(e.next()?)?, to: pid(e.next()?)? },
        op::PAYLOAD_EXIT_TT => C::PayloadExitTt { from: pid(e.next()?)?, to: pid(e.next()?)?, token: e.next()? },
        op::PAYLOAD_EXIT2 => C::PayloadExit2 { from: pid(e.next()?)?, to: pid(e.next()?)? },
        op::PAYLOAD_EXIT2_TT => C::PayloadExit2Tt { from: pid(e.next()?)?, to: pid(e.next()?)?, token: e.next()? },
        op::PAYLOAD_MONITOR_P_EXIT => C::PayloadMonitorPExit { from: e.next()?, to: pid(e.next()?)?, reference: e.next()? },
        op::SPAWN_REQUEST | op::SPAWN_REQUEST_TT => {
            let req_id = e.next()?;
            let from = pid(e.next()?)?;
            let group_leader = pid(e.next()?)?;
            let (mfa, [m, fu, arity]) = e.mfa()?;
            C::SpawnRequest {
                req_id,
                from,
                group_leader,
                mfa,
                module: m.as_atom().ok_or(bad(m.at, "spawn module is not an atom"))?,
                function: fu.as_atom().ok_or(bad(fu.at, "spawn function is not an atom"))?,
                arity,
                opts: e.next()?,
                token: if op == op::SPAWN_REQUEST_TT { Some(e.next()?) } else { None },
            }
        }
        op::SPAWN_REPLY | op::SPAWN_REPLY_TT => {
            C::SpawnReply {
                req_id: e.next()?,
                to: pid(e.next()?)?,
                flags: e.next()?,
                result: e.next()?,
                token: if op == op::SPAWN_REPLY_TT { Some(e.next()?) } else { None },
            }
        }
        op::ALIAS_SEND => C::AliasSend { from: pid(e.next()?)?, alias: e.next()?, token: None },
        op::ALIAS_SEND_TT => C::AliasSend { from: pid(e.next()?)?, alias: e.next()?, token: Some(e.next()?) },
        op::UNLINK_ID => C::UnlinkId { id: e.next()?, from: pid(e.next()?)?, to: pid(e.next()?)? },
        op::UNLINK_ID_ACK => C::UnlinkIdAck { id: e.next()?, from: pid(e.next()?)?, to: pid(e.next()?)? },
        op::ALTACT_SIG_SEND => {
            let fields = [Some(e.next()?), Some(e.next()?), Some(e.next()?), if arity == 5 { Some(e.next()?) } else { None }];
            C::AltactSigSend { fields }
        }
        other => return Err(Error::dist(op_field.at, DistErrorKind::UnknownOp(other as u64))),
    };
    Ok((ctl, op, e.pos))
}
