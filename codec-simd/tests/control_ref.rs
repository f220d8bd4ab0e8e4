//! The control decoder against a reference: the decoder as it was before it read the control
//! element by element (one walk with a visitor shown every term, kept here verbatim). On
//! generated controls of every op, well-formed or not, and on every prefix and single-byte
//! corruption of them, both must agree: the same control and end offset, or both an error.
//! (Which error may differ when bytes are wrong in two ways: the reference walked everything
//! before checking the op and shapes, the decoder checks as it reads.)

use distgate_codec::control::{self, arity_of, op, Control, Field, FieldTerm};
use distgate_codec::fun;
use distgate_codec::term::{Pid, Term, Visitor, Walker};
use distgate_codec::{DistErrorKind, Error, Result};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

fn bad(at: usize, why: &'static str) -> Error {
    Error::dist(at, DistErrorKind::BadControl(why))
}

fn field_term<'a>(term: &Term<'a>, tag: u8) -> FieldTerm<'a> {
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
                    self.top[self.n] = Some(Field { at, end: at, term: field_term(term, self.tag_at(at)) });
                }
                self.in_mfa = self.n == 4 && matches!(term, Term::Tuple(3));
                self.n += 1;
            }
            2 if self.in_mfa => {
                if self.inner_n < 3 {
                    self.inner[self.inner_n] = Some(Field { at, end: at, term: field_term(term, self.tag_at(at)) });
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

/// Decode the control term at `at` in `buf`. Returns the control and its end offset.
fn reference_decode<'a>(w: &mut Walker, buf: &'a [u8], at: usize) -> Result<(Control<'a>, usize)> {
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

/// An element of a generated control.
#[derive(Debug, Clone)]
enum E {
    Int(u8),
    BigInt(i32),
    Pid(u8),
    OldPid,
    Atom(String),
    CacheRef(u8),
    Ref(u8),
    Tuple(Vec<E>),
    List(Vec<E>),
    Bin(Vec<u8>),
    Fun(Vec<E>),
    Raw(Vec<u8>),
}

fn atom(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&[119, s.len() as u8]);
    out.extend_from_slice(s.as_bytes());
}

fn encode(e: &E, out: &mut Vec<u8>) {
    match e {
        E::Int(v) => out.extend_from_slice(&[97, *v]),
        E::BigInt(v) => {
            out.push(98);
            out.extend_from_slice(&v.to_be_bytes());
        }
        E::Pid(n) => {
            out.push(88);
            atom(out, "a@h");
            out.extend_from_slice(&[0, 0, 0, *n, 0, 0, 0, 1, 0, 0, 0, 7]);
        }
        E::OldPid => {
            out.push(103);
            out.extend_from_slice(&[100, 0, 3]);
            out.extend_from_slice(b"b@h");
            out.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 0, 2]);
        }
        E::Atom(s) => atom(out, s),
        E::CacheRef(i) => out.extend_from_slice(&[82, *i]),
        E::Ref(words) => {
            out.extend_from_slice(&[90, 0, *words]);
            atom(out, "a@h");
            out.extend_from_slice(&[0, 0, 0, 7]);
            for w in 0..*words {
                out.extend_from_slice(&[0, 0, 1, w]);
            }
        }
        E::Tuple(v) => {
            out.extend_from_slice(&[104, v.len() as u8]);
            v.iter().for_each(|e| encode(e, out));
        }
        E::List(v) => {
            if v.is_empty() {
                out.push(106);
                return;
            }
            out.push(108);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            v.iter().for_each(|e| encode(e, out));
            out.push(106);
        }
        E::Bin(b) => {
            out.push(109);
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        E::Fun(free) => {
            let mut body = vec![1];
            body.extend_from_slice(&[7; 16]);
            body.extend_from_slice(&0u32.to_be_bytes());
            body.extend_from_slice(&(free.len() as u32).to_be_bytes());
            atom(&mut body, "m");
            body.extend_from_slice(&[97, 0, 98, 0, 0, 0, 5]);
            encode(&E::Pid(1), &mut body);
            free.iter().for_each(|e| encode(e, &mut body));
            out.push(112);
            out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            out.extend_from_slice(&body);
        }
        E::Raw(b) => out.extend_from_slice(b),
    }
}

fn leaf() -> impl Strategy<Value = E> {
    prop_oneof![
        any::<u8>().prop_map(E::Int),
        any::<i32>().prop_map(E::BigInt),
        any::<u8>().prop_map(E::Pid),
        Just(E::OldPid),
        "[a-z_]{0,12}".prop_map(E::Atom),
        (0u8..4).prop_map(E::CacheRef),
        (0u8..7).prop_map(E::Ref),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(E::Bin),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(E::Raw),
    ]
}

fn element() -> impl Strategy<Value = E> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(E::Tuple),
            prop::collection::vec(inner.clone(), 0..4).prop_map(E::List),
            prop::collection::vec(inner, 0..3).prop_map(E::Fun),
        ]
    })
}

/// The shapes OTP sends for an op (pids where pids go, an `{M, F, A}` for spawns), so that the
/// generated controls decode often enough to compare values; any element may be replaced.
fn control_of(op: u8) -> impl Strategy<Value = Vec<E>> {
    let n = arity_of(op).unwrap_or(4).saturating_sub(1);
    (prop::collection::vec(element(), n..=n), prop::collection::vec(any::<bool>(), n..=n), 0u8..4).prop_map(
        move |(random, keep, m)| {
            (0..n)
                .map(|i| {
                    if keep[i] {
                        return random[i].clone();
                    }
                    match (op, i) {
                        (op::SPAWN_REQUEST | op::SPAWN_REQUEST_TT, 3) => E::Tuple(vec![
                            E::Atom("m".into()),
                            E::Atom("f".into()),
                            E::Int(m),
                        ]),
                        (_, _) if i % 2 == 0 => E::Pid(i as u8),
                        _ => E::Atom("name".into()),
                    }
                })
                .collect()
        },
    )
}

fn frame() -> impl Strategy<Value = (Vec<u8>, u16)> {
    let ops = (1u8..=38).prop_flat_map(|op| (Just(op), control_of(op), any::<bool>(), 0u8..3, any::<u16>()));
    ops.prop_map(|(op, rest, large, extra, refs)| {
        let mut out = vec![0xAA];
        let arity = rest.len() as u32 + 1 + u32::from(extra == 2);
        if large {
            out.push(105);
            out.extend_from_slice(&arity.to_be_bytes());
        } else {
            out.extend_from_slice(&[104, arity as u8]);
        }
        out.extend_from_slice(&[97, op]);
        rest.iter().for_each(|e| encode(e, &mut out));
        if extra == 2 {
            encode(&E::Int(1), &mut out);
        }
        out.extend_from_slice(&[106]);
        (out, refs % 4)
    })
}

fn agree(buf: &[u8], refs: Option<u16>) -> std::result::Result<(), TestCaseError> {
    let mut a = Walker::default();
    let mut b = Walker::default();
    a.set_cache_refs(refs);
    b.set_cache_refs(refs);
    let new = control::decode_with_op(&mut a, buf, 1);
    let old = reference_decode(&mut b, buf, 1);
    match (new, old) {
        (Ok((c, op, end)), Ok(o)) => {
            // The op read while decoding is the one the variant stands for.
            prop_assert_eq!(op, c.op());
            let n = (c, end);
            prop_assert_eq!(n, o);
            // A control said to hold no fun holds none.
            let mut funs = Vec::new();
            fun::collect(&mut b, buf, 1..n.1, fun::Part::Control, &mut funs).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(funs.is_empty() || n.0.may_hold_fun(), "{} funs in {:?}", funs.len(), n.0);
        }
        (Err(_), Err(_)) => {}
        (n, o) => prop_assert!(false, "decoder {:?}, reference {:?} on {:?}", n, o, buf),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn agrees_with_the_reference((buf, refs) in frame()) {
        let refs = (refs > 0).then_some(refs);
        agree(&buf, refs)?;
        // Every prefix: truncated inside any element.
        for cut in 1..buf.len() {
            agree(&buf[..cut], refs)?;
        }
    }

    #[test]
    fn agrees_on_corrupted_bytes((buf, refs) in frame(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut buf = buf;
        let i = 1 + at.index(buf.len() - 1);
        buf[i] = byte;
        agree(&buf, (refs > 0).then_some(refs))?;
    }
}

#[test]
fn decodes_what_it_generates() {
    // The generator must produce decodable controls, or the comparison above says little.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut ok, mut no_fun, mut with_fun) = (0, 0, 0);
    for _ in 0..2000 {
        let (buf, _) = frame().new_tree(&mut runner).unwrap().current();
        let mut w = Walker::default();
        w.set_cache_refs(Some(4));
        if let Ok((c, end)) = control::decode(&mut w, &buf, 1) {
            ok += 1;
            no_fun += !c.may_hold_fun() as u32;
            let mut funs = Vec::new();
            fun::collect(&mut w, &buf, 1..end, fun::Part::Control, &mut funs).unwrap();
            with_fun += !funs.is_empty() as u32;
        }
    }
    assert!(ok > 200, "only {ok} of 2000 generated controls decode");
    // Both sides of `may_hold_fun` are exercised by the comparison above.
    assert!(no_fun > 50 && with_fun > 20, "{no_fun} controls without a possible fun, {with_fun} with funs, of {ok}");
}

#[test]
fn the_depth_limit_counts_the_control_tuple() {
    use distgate_codec::term::Limits;
    use distgate_codec::ErrorKind;
    // {6, Pid, [[...[]]] (k lists deep), name}: the control tuple and k lists are k + 1
    // containers, against a limit of 3.
    for k in 0..6 {
        let mut nested = E::List(vec![]);
        for _ in 0..k {
            nested = E::List(vec![nested]);
        }
        let mut buf = vec![0xAA, 104, 4, 97, op::REG_SEND];
        for e in [E::Pid(1), nested, E::Atom("name".into())] {
            encode(&e, &mut buf);
        }
        let limits = Limits { max_depth: 3, ..Limits::default() };
        let (mut a, mut b) = (Walker::new(limits), Walker::new(limits));
        let new = control::decode(&mut a, &buf, 1).map(|(c, end)| (format!("{c:?}"), end));
        let old = reference_decode(&mut b, &buf, 1).map(|(c, end)| (format!("{c:?}"), end));
        assert_eq!(new, old, "{k} lists deep");
        // The innermost `[]` is NIL, not a container; the k lists around it are.
        let containers = 1 + k;
        match new {
            Ok(_) => assert!(containers <= 3, "{k} lists deep passed"),
            Err(e) => {
                assert!(containers > 3, "{k} lists deep: {e:?}");
                assert_eq!(e.kind, ErrorKind::TooDeep { limit: 3 }, "{k} lists deep");
            }
        }
    }
}

#[test]
fn a_spawn_request_mfa_in_a_large_tuple_header_is_read() {
    // OTP sends SMALL_TUPLE_EXT, but LARGE_TUPLE_EXT with arity 3 is the same term.
    let ctl = E::Tuple(vec![
        E::Int(op::SPAWN_REQUEST),
        E::Ref(3),
        E::Pid(1),
        E::Pid(2),
        E::Raw(vec![105, 0, 0, 0, 3, 119, 1, b'm', 119, 1, b'f', 97, 1]),
        E::List(vec![]),
    ]);
    let mut buf = vec![0xAA];
    encode(&ctl, &mut buf);
    let (mut a, mut b) = (Walker::default(), Walker::default());
    let new = control::decode(&mut a, &buf, 1).expect("decodes");
    assert_eq!(Ok(new), reference_decode(&mut b, &buf, 1));
    let Control::SpawnRequest { module, function, .. } = new.0 else { panic!("{:?}", new.0) };
    assert!(module.is("m") && function.is("f"));
}
