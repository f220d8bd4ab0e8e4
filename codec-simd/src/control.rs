//! Control messages: the `{Op, …}` tuple at the head of every distribution message, decoded
//! into a typed enum, with each field's extent so policy can look at (or replace) it.

use crate::error::{DistErrorKind, Error, Result};
use crate::term::{Atom, Pid, Reference, Term, Visitor, Walker};

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

impl<'a> FieldTerm<'a> {
    fn of(term: &Term<'a>, tag: u8) -> FieldTerm<'a> {
        match *term {
            Term::Pid(p) => FieldTerm::Pid(p),
            Term::Atom(a) => FieldTerm::Atom(a),
            Term::SmallInt(v) => FieldTerm::Int(v as i64),
            Term::Int(v) => FieldTerm::Int(v as i64),
            Term::Ref(r) => FieldTerm::Ref(r),
            Term::Tuple(n) => FieldTerm::Tuple(n),
            _ => FieldTerm::Other(tag),
        }
    }
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

/// Collects the top-level elements of the control tuple (at most 8) and, for a SPAWN_REQUEST,
/// the elements of its `{M, F, A}` tuple.
struct Collect<'a> {
    depth: u32,
    top: [Option<Field<'a>>; 8],
    n: usize,
    /// Elements of the 5th top-level element when it is a tuple (SPAWN_REQUEST's MFA).
    inner: [Option<Field<'a>>; 3],
    inner_n: usize,
    in_mfa: bool,
    root: Option<Term<'a>>,
    buf: &'a [u8],
}

impl Collect<'_> {
    /// The tag byte of the term the walk reports at `at` (always in the buffer).
    fn tag_at(&self, at: usize) -> u8 {
        self.buf.get(at).copied().unwrap_or(0)
    }
}

impl<'a> Visitor<'a> for Collect<'a> {
    #[inline]
    fn enter(&mut self, at: usize, term: &Term<'a>) -> Result<()> {
        match self.depth {
            0 => self.root = Some(*term),
            1 => {
                if self.n < self.top.len() {
                    self.top[self.n] = Some(Field { at, end: at, term: FieldTerm::of(term, self.tag_at(at)) });
                }
                self.in_mfa = self.n == 4 && matches!(term, Term::Tuple(3));
                self.n += 1;
            }
            2 if self.in_mfa => {
                if self.inner_n < 3 {
                    self.inner[self.inner_n] = Some(Field { at, end: at, term: FieldTerm::of(term, self.tag_at(at)) });
                }
                self.inner_n += 1;
            }
            _ => {}
        }
        self.depth += 1;
        Ok(())
    }
    #[inline]
    fn leave(&mut self, _at: usize, end: usize) {
        self.depth -= 1;
        match self.depth {
            1 => {
                if let Some(Some(f)) = self.top.get_mut(self.n - 1) {
                    f.end = end;
                }
            }
            2 if self.in_mfa => {
                if let Some(Some(f)) = self.inner.get_mut(self.inner_n - 1) {
                    f.end = end;
                }
            }
            _ => {}
        }
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

/// Decode the control term at `at` in `buf`. Returns the control and its end offset.
pub fn decode<'a>(w: &mut Walker, buf: &'a [u8], at: usize) -> Result<(Control<'a>, usize)> {
    let mut c = Collect {
        depth: 0,
        top: [None; 8],
        n: 0,
        inner: [None; 3],
        inner_n: 0,
        in_mfa: false,
        root: None,
        buf,
    };
    let end = w.walk(buf, at, &mut c)?;
    let arity = match c.root {
        Some(Term::Tuple(n)) if n >= 1 => n as usize,
        _ => return Err(bad(at, "not a non-empty tuple")),
    };
    let f = |i: usize| c.top.get(i).copied().flatten().ok_or(bad(at, "too few elements"));
    let pid = |i: usize| -> Result<Pid<'a>> {
        let fl = f(i)?;
        fl.as_pid().ok_or(bad(fl.at, "expected a pid"))
    };
    let op_field = f(0)?;
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
    use Control as C;
    let ctl = match op {
        op::LINK => C::Link { from: pid(1)?, to: pid(2)? },
        op::SEND => C::Send { unused: f(1)?, to: f(2)? },
        op::EXIT => C::Exit { from: pid(1)?, to: pid(2)?, reason: f(3)? },
        op::UNLINK => C::Unlink { from: pid(1)?, to: pid(2)? },
        op::NODE_LINK => C::NodeLink,
        op::REG_SEND => C::RegSend { from: pid(1)?, unused: f(2)?, to_name: f(3)? },
        op::GROUP_LEADER => C::GroupLeader { from: pid(1)?, to: pid(2)? },
        op::EXIT2 => C::Exit2 { from: pid(1)?, to: pid(2)?, reason: f(3)? },
        op::SEND_TT => C::SendTt { unused: f(1)?, to: f(2)?, token: f(3)? },
        op::EXIT_TT => C::ExitTt { from: pid(1)?, to: pid(2)?, token: f(3)?, reason: f(4)? },
        op::REG_SEND_TT => C::RegSendTt { from: pid(1)?, unused: f(2)?, to_name: f(3)?, token: f(4)? },
        op::EXIT2_TT => C::Exit2Tt { from: pid(1)?, to: pid(2)?, token: f(3)?, reason: f(4)? },
        op::MONITOR_P => C::MonitorP { from: pid(1)?, to: f(2)?, reference: f(3)? },
        op::DEMONITOR_P => C::DemonitorP { from: pid(1)?, to: f(2)?, reference: f(3)? },
        op::MONITOR_P_EXIT => C::MonitorPExit { from: f(1)?, to: pid(2)?, reference: f(3)?, reason: f(4)? },
        op::SEND_SENDER => C::SendSender { from: pid(1)?, to: f(2)? },
        op::SEND_SENDER_TT => C::SendSenderTt { from: pid(1)?, to: f(2)?, token: f(3)? },
        op::PAYLOAD_EXIT => C::PayloadExit { from: pid(1)?, to: pid(2)? },
        op::PAYLOAD_EXIT_TT => C::PayloadExitTt { from: pid(1)?, to: pid(2)?, token: f(3)? },
        op::PAYLOAD_EXIT2 => C::PayloadExit2 { from: pid(1)?, to: pid(2)? },
        op::PAYLOAD_EXIT2_TT => C::PayloadExit2Tt { from: pid(1)?, to: pid(2)?, token: f(3)? },
        op::PAYLOAD_MONITOR_P_EXIT => C::PayloadMonitorPExit { from: f(1)?, to: pid(2)?, reference: f(3)? },
        op::SPAWN_REQUEST | op::SPAWN_REQUEST_TT => {
            let mfa = f(4)?;
            if c.inner_n != 3 || !matches!(mfa.term, FieldTerm::Tuple(3)) {
                return Err(bad(mfa.at, "spawn_request MFA is not a 3-tuple"));
            }
            let m = c.inner[0].ok_or(bad(mfa.at, "MFA"))?;
            let fu = c.inner[1].ok_or(bad(mfa.at, "MFA"))?;
            C::SpawnRequest {
                req_id: f(1)?,
                from: pid(2)?,
                group_leader: pid(3)?,
                mfa,
                module: m.as_atom().ok_or(bad(m.at, "spawn module is not an atom"))?,
                function: fu.as_atom().ok_or(bad(fu.at, "spawn function is not an atom"))?,
                arity: c.inner[2].ok_or(bad(mfa.at, "MFA"))?,
                opts: f(5)?,
                token: if op == op::SPAWN_REQUEST_TT { Some(f(6)?) } else { None },
            }
        }
        op::SPAWN_REPLY | op::SPAWN_REPLY_TT => {
            C::SpawnReply {
                req_id: f(1)?,
                to: pid(2)?,
                flags: f(3)?,
                result: f(4)?,
                token: if op == op::SPAWN_REPLY_TT { Some(f(5)?) } else { None },
            }
        }
        op::ALIAS_SEND => C::AliasSend { from: pid(1)?, alias: f(2)?, token: None },
        op::ALIAS_SEND_TT => C::AliasSend { from: pid(1)?, alias: f(2)?, token: Some(f(3)?) },
        op::UNLINK_ID => C::UnlinkId { id: f(1)?, from: pid(2)?, to: pid(3)? },
        op::UNLINK_ID_ACK => C::UnlinkIdAck { id: f(1)?, from: pid(2)?, to: pid(3)? },
        op::ALTACT_SIG_SEND => {
            C::AltactSigSend { fields: [c.top[1], c.top[2], c.top[3], c.top[4]] }
        }
        other => return Err(Error::dist(op_field.at, DistErrorKind::UnknownOp(other as u64))),
    };
    Ok((ctl, end))
}
