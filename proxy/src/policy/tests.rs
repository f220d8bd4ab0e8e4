//! The engine and the direction state on hand-built messages: every verdict, funs in every
//! place a fun can be, control rules and the `untrusted` preset entry by entry, stand-ins,
//! replies, fragmented messages held and re-emitted, reload, dry-run.

use std::sync::Arc;
use std::time::Instant;

use distgate_codec::frame::Frames;
use distgate_codec::fun;
use distgate_codec::message::{Decoded, Decoder, Message, Refs};
use distgate_codec::print::{self, AtomRefs};
use distgate_codec::rewrite::{encode_atom, encode_export};
use distgate_codec::term::{Limits, Walker};

use super::direction::{Direction, FrameAct};
use super::engine::{judge, Judgement, Registries, Verdict, DENIED_REASON};
use super::wire::{self, Sender};
use super::{Compiled, RouteHandle};
use crate::registry::{Lambda, ModuleVersion, Registry, Snapshot, SnapshotBuilder};
use crate::stats::Stats;

// ---- terms ------------------------------------------------------------------------------

fn atom(s: &str) -> Vec<u8> {
    let mut v = Vec::new();
    encode_atom(s, &mut v);
    v
}
fn cref(i: u8) -> Vec<u8> {
    vec![82, i]
}
fn int(n: i64) -> Vec<u8> {
    let mut v = Vec::new();
    wire::encode_int(n, &mut v);
    v
}
fn tuple(items: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![104, items.len() as u8];
    items.iter().for_each(|i| v.extend_from_slice(i));
    v
}
fn list(items: &[Vec<u8>]) -> Vec<u8> {
    if items.is_empty() {
        return vec![106];
    }
    let mut v = vec![108];
    v.extend_from_slice(&(items.len() as u32).to_be_bytes());
    items.iter().for_each(|i| v.extend_from_slice(i));
    v.push(106);
    v
}
fn map(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut v = vec![116];
    v.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
    for (k, x) in pairs {
        v.extend_from_slice(k);
        v.extend_from_slice(x);
    }
    v
}
fn bin(b: &[u8]) -> Vec<u8> {
    let mut v = vec![109];
    v.extend_from_slice(&(b.len() as u32).to_be_bytes());
    v.extend_from_slice(b);
    v
}
/// A pid whose node atom is given as encoded bytes (inline or a cache ref).
fn pid_with(node: &[u8], id: u32) -> Vec<u8> {
    let mut v = vec![88];
    v.extend_from_slice(node);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(&7u32.to_be_bytes());
    v
}
fn pid(id: u32) -> Vec<u8> {
    pid_with(&atom("a@h"), id)
}
fn reference(node: &[u8]) -> Vec<u8> {
    let mut v = vec![90, 0, 3];
    v.extend_from_slice(node);
    v.extend_from_slice(&7u32.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
    v
}
/// A NEW_FUN_EXT; `module` as encoded atom bytes.
fn new_fun(module: &[u8], uniq: [u8; 16], index: u32, arity: u8, free: &[Vec<u8>]) -> Vec<u8> {
    let mut rest = vec![arity];
    rest.extend_from_slice(&uniq);
    rest.extend_from_slice(&index.to_be_bytes());
    rest.extend_from_slice(&(free.len() as u32).to_be_bytes());
    rest.extend_from_slice(module);
    rest.extend_from_slice(&int(index as i64));
    rest.extend_from_slice(&int(12345));
    rest.extend_from_slice(&pid(1));
    free.iter().for_each(|f| rest.extend_from_slice(f));
    let mut v = vec![112];
    v.extend_from_slice(&((rest.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(&rest);
    v
}
fn export(m: &str, f: &str, a: u8) -> Vec<u8> {
    let mut v = Vec::new();
    encode_export(m, f, a, &mut v);
    v
}

// ---- frames -----------------------------------------------------------------------------

/// An atom-cache header: `(slot, Some(text))` defines a new entry, `(slot, None)` refers to
/// an existing one.
fn header(entries: &[(u16, Option<&str>)]) -> Vec<u8> {
    let n = entries.len();
    if n == 0 {
        return vec![0];
    }
    let mut flags = vec![0u8; n / 2 + 1];
    for (i, (slot, text)) in entries.iter().enumerate() {
        let nib = ((slot / 256) as u8) | if text.is_some() { 8 } else { 0 };
        flags[i / 2] |= nib << ((i & 1) * 4);
    }
    let mut v = vec![n as u8];
    v.extend_from_slice(&flags);
    for (slot, text) in entries {
        v.push((slot % 256) as u8);
        if let Some(t) = text {
            v.push(t.len() as u8);
            v.extend_from_slice(t.as_bytes());
        }
    }
    v
}
/// Frame data (no length): `131 68 Header Control [Payload]`.
fn data(hdr: &[u8], ctl: &[u8], payload: Option<&[u8]>) -> Vec<u8> {
    let mut v = vec![131, 68];
    v.extend_from_slice(hdr);
    v.extend_from_slice(ctl);
    if let Some(p) = payload {
        v.extend_from_slice(p);
    }
    v
}
/// The same message cut into fragments (frame data each) of sequence `seq`.
fn fragments(seq: u64, hdr: &[u8], ctl: &[u8], payload: &[u8], cut: usize) -> Vec<Vec<u8>> {
    let mut body = hdr.to_vec();
    body.extend_from_slice(ctl);
    body.extend_from_slice(payload);
    let chunks: Vec<&[u8]> = body.chunks(cut).collect();
    let n = chunks.len() as u64;
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = vec![131, if i == 0 { 69 } else { 70 }];
            v.extend_from_slice(&seq.to_be_bytes());
            v.extend_from_slice(&(n - i as u64).to_be_bytes());
            v.extend_from_slice(c);
            v
        })
        .collect()
}
fn with_len(d: &[u8]) -> Vec<u8> {
    let mut v = (d.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(d);
    v
}

fn reg_send(name: &[u8]) -> Vec<u8> {
    tuple(&[int(6), pid(1), atom(""), name.to_vec()])
}
fn send() -> Vec<u8> {
    tuple(&[int(2), atom(""), pid(9)])
}
fn spawn_request(m: &str, f: &str, arity: u8) -> Vec<u8> {
    tuple(&[int(29), reference(&atom("a@h")), pid(1), pid(2), tuple(&[atom(m), atom(f), int(arity as i64)]), list(&[])])
}

// ---- printing what a receiver would see --------------------------------------------------

struct R<'r, 'a>(&'r Refs<'a>);
impl AtomRefs for R<'_, '_> {
    fn resolve(&self, idx: u8) -> Option<&str> {
        self.0.resolve(idx)
    }
}

fn show(m: &Message<'_>) -> String {
    let mut w = Walker::default();
    w.set_cache_refs(m.refs.table().map(|t| t.nrefs));
    let (c, _) = print::format_term(m.bytes, m.control_range.start, &R(&m.refs), &mut w).unwrap();
    match m.payload.clone() {
        Some(p) => format!("{c} {}", print::format_term(m.bytes, p.start, &R(&m.refs), &mut w).unwrap().0),
        None => c,
    }
}

/// Every message of a stream (frames with lengths), decoded by a fresh decoder, as the
/// receiving node would.
fn receive(stream: &[u8], dec: &mut Decoder) -> Vec<String> {
    let mut out = Vec::new();
    for item in Frames::new(stream, 1 << 30) {
        let Some(d) = item.unwrap().data else { continue };
        if let Decoded::Message(m) = dec.decode(d).unwrap_or_else(|e| panic!("receiver cannot decode: {e}")) {
            out.push(show(&m));
        }
    }
    out
}

/// The atom-cache header of the first fragment of sequence `seq` in a stream.
fn first_fragment_header(stream: &[u8], seq: u64) -> Vec<u8> {
    for item in Frames::new(stream, 1 << 30) {
        let Some(d) = item.unwrap().data else { continue };
        if d[..2] == [131, 69] && d[2..10] == seq.to_be_bytes() {
            let body = &d[18..];
            return body[..distgate_codec::message::header_len(body).unwrap()].to_vec();
        }
    }
    panic!("no first fragment of {seq}")
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// How `~w` prints a binary of this text.
fn printed_bin(text: &str) -> String {
    let bytes: Vec<String> = text.bytes().map(|b| b.to_string()).collect();
    format!("<<{}>>", bytes.join(","))
}

// ---- registries and policies --------------------------------------------------------------

const V1: [u8; 16] = [1; 16];
const V2: [u8; 16] = [2; 16];
const SAME: [u8; 16] = [3; 16];

fn version(module: &str, md5: [u8; 16], lambdas: &[(&str, u32, u32, u32)], exports: &[(&str, u8)]) -> ModuleVersion {
    let lambdas = lambdas
        .iter()
        .map(|&(name, arity, index, num_free)| Lambda { name: name.into(), arity, index, num_free, old_uniq: 0 })
        .collect();
    ModuleVersion::new(module.into(), md5, lambdas, exports.iter().map(|&(f, a)| (Box::<str>::from(f), a)), "test".into())
}

fn registry(versions: Vec<ModuleVersion>) -> Arc<Registry> {
    let r = Registry::new("t");
    let mut b = SnapshotBuilder::new();
    for v in versions {
        b.add(v);
    }
    r.store(b.build());
    Arc::new(r)
}

/// m v1 on the sending side: lambda 0 is `fun f/1` itself, 1 an anonymous fun, 2 a closure
/// with one free variable; `shared` is the same version on both sides.
fn source() -> Arc<Registry> {
    registry(vec![
        version("m", V1, &[("f", 1, 0, 0), ("-anon/0-fun-0-", 1, 1, 0), ("-clo/1-fun-0-", 2, 2, 1)], &[("f", 1), ("g", 1)]),
        version("shared", SAME, &[("-wrap/1-fun-0-", 2, 0, 1)], &[("wrap", 1)]),
    ])
}
/// m v2 on the target: exports f/1 and g/1 but not h/0.
fn target() -> Arc<Registry> {
    registry(vec![
        version("m", V2, &[("f", 1, 0, 0)], &[("f", 1), ("g", 1)]),
        version("shared", SAME, &[("-wrap/1-fun-0-", 2, 0, 1)], &[("wrap", 1)]),
    ])
}

fn policy(text: &str) -> Compiled {
    Compiled::parse("p", &format!("audit_per_second = 0\n{text}")).unwrap_or_else(|e| panic!("{e}"))
}

/// Judge one frame's message; returns the judgement and, for edits, the edited message as
/// the receiver would print it.
fn run(p: &Compiled, frame: &[u8]) -> (Judgement, Option<String>) {
    let (src, dst) = (source(), target());
    let (s, t) = (src.snapshot(), dst.load());
    let mut dec = Decoder::default();
    let Decoded::Message(m) = dec.decode(frame).unwrap() else { panic!("not a message") };
    let mut w = Walker::default();
    let mut funs = Vec::new();
    fun::message_funs(&mut w, &m, &mut funs).unwrap();
    let source = || Some(s.clone());
    let regs = Registries { target: &t, source: &source };
    let j = judge(p, &m, &funs, Some(regs), &mut w);
    let edited = match &j.verdict {
        Verdict::Edits(e) => {
            let mut edits = e.clone();
            let mut body = Vec::new();
            wire::apply(m.bytes, &funs, &mut edits, &mut body).unwrap();
            let mut out = Vec::new();
            distgate_codec::rewrite::emit(m.framing, &body, usize::MAX, &mut out);
            // Decode the rewritten frame with a decoder in the state the original left.
            let mut again = Decoder::default();
            let Decoded::Message(m2) = again.decode(&out[4..]).unwrap() else { panic!() };
            Some(show(&m2))
        }
        _ => None,
    };
    (j, edited)
}

fn payload_msg(payload: &[u8]) -> Vec<u8> {
    data(&header(&[]), &reg_send(&atom("sink")), Some(payload))
}

fn local_f() -> Vec<u8> {
    new_fun(&atom("m"), V1, 0, 1, &[])
}

// ---- funs -----------------------------------------------------------------------------------

#[test]
fn messages_without_funs_or_with_known_funs_pass() {
    let p = policy("unknown_fun = \"close\"\n");
    let (j, _) = run(&p, &payload_msg(&tuple(&[atom("hello"), bin(b"pqu"), int(113)])));
    assert_eq!(j, Judgement::pass());
    // A fun of a version the target runs.
    let known = new_fun(&atom("shared"), SAME, 0, 1, &[int(5)]);
    let (j, _) = run(&p, &payload_msg(&list(&[known])));
    assert_eq!(j, Judgement::pass());
}

#[test]
fn unknown_fun_actions() {
    let msg = payload_msg(&tuple(&[atom("call"), local_f()]));
    let (j, _) = run(&policy(""), &msg);
    assert_eq!(j, Judgement::pass(), "the default is pass");

    let (j, edited) = run(&policy("unknown_fun = \"replace\"\n"), &msg);
    assert!(matches!(j.verdict, Verdict::Edits(_)));
    assert_eq!(j.findings[0].rule, "unknown_fun");
    assert_eq!(j.findings[0].action, "replace");
    assert_eq!(j.findings[0].subject, format!("#Fun<m.0.{}>", "01".repeat(16)));
    let marker = format!("{{distgate_blocked_fun,m,0,{}}}", printed_bin(&"01".repeat(16)));
    assert_eq!(edited.unwrap(), format!("{{6,#Pid<'a@h'.1.0.7>,'',sink}} {{call,{marker}}}"));

    let (j, _) = run(&policy("unknown_fun = \"drop\"\n"), &msg);
    assert_eq!(j.verdict, Verdict::Drop);
    let (j, _) = run(&policy("unknown_fun = \"close\"\n"), &msg);
    assert!(matches!(&j.verdict, Verdict::Close { reason, reply: None } if reason.contains("#Fun<m.0.")), "{j:?}");
}

#[test]
fn rewrite_when_the_lambda_is_an_exported_function() {
    let (j, edited) = run(&policy("unknown_fun = \"rewrite\"\n"), &payload_msg(&tuple(&[atom("call"), local_f()])));
    assert_eq!(j.findings[0].action, "rewrite");
    assert_eq!(j.findings[0].detail.as_deref(), Some("fun m:f/1"));
    assert_eq!(edited.unwrap(), "{6,#Pid<'a@h'.1.0.7>,'',sink} {call,fun m:f/1}");
}

#[test]
fn rewrite_falls_back_when_not_provably_the_same_function() {
    let anon = new_fun(&atom("m"), V1, 1, 1, &[]);
    let closure = new_fun(&atom("m"), V1, 2, 1, &[int(42)]);
    let unknown_version = new_fun(&atom("m"), [9; 16], 0, 1, &[]);
    for (fun, why) in [
        (anon.clone(), "not an exported function"),
        (closure, "free variables"),
        (unknown_version, "source registry does not know"),
    ] {
        let (j, edited) = run(&policy("unknown_fun = \"rewrite\"\n"), &payload_msg(&fun));
        assert_eq!(j.findings[0].rule, "rewrite_fallback");
        assert_eq!(j.findings[0].action, "replace", "the default fallback");
        assert!(j.findings[0].detail.as_ref().unwrap().contains(why), "{j:?}");
        assert!(edited.unwrap().contains("distgate_blocked_fun"));
    }
    let (j, _) = run(&policy("unknown_fun = \"rewrite\"\nrewrite_fallback = \"drop\"\n"), &payload_msg(&anon));
    assert_eq!(j.verdict, Verdict::Drop);
    let (j, _) = run(&policy("unknown_fun = \"rewrite\"\nrewrite_fallback = \"pass\"\n"), &payload_msg(&anon));
    assert_eq!(j.verdict, Verdict::Pass);
    assert_eq!(j.findings[0].action, "pass", "a failed rewrite is audited even when it passes");
    // An explicit mapping makes the anonymous fun rewritable.
    let p = policy("unknown_fun = \"rewrite\"\n[policy.p.fun_map]\n\"m:'-anon/0-fun-0-'\" = \"m:g/1\"\n");
    let (j, edited) = run(&p, &payload_msg(&anon));
    assert_eq!(j.findings[0].action, "rewrite");
    assert_eq!(edited.unwrap(), "{6,#Pid<'a@h'.1.0.7>,'',sink} fun m:g/1");
    // ... but not to a function the target does not export.
    let p = policy("unknown_fun = \"rewrite\"\n[policy.p.fun_map]\n\"m:'-anon/0-fun-0-'\" = \"m:h/1\"\n");
    let (j, _) = run(&p, &payload_msg(&anon));
    assert_eq!(j.findings[0].rule, "rewrite_fallback");
    assert!(j.findings[0].detail.as_ref().unwrap().contains("does not export"));
}

#[test]
fn module_overrides_pick_the_action() {
    let p = policy("unknown_fun = \"close\"\n[policy.p.modules]\n\"m\" = { unknown_fun = \"replace\" }\n");
    let (j, _) = run(&p, &payload_msg(&local_f()));
    assert!(matches!(j.verdict, Verdict::Edits(_)));
    let other = new_fun(&atom("other"), V1, 0, 0, &[]);
    let (j, _) = run(&p, &payload_msg(&other));
    assert!(matches!(j.verdict, Verdict::Close { .. }));
}

#[test]
fn funs_anywhere_maps_free_variables_control_and_cache_refs() {
    let p = policy("unknown_fun = \"rewrite\"\n");
    // Deep in a map inside a list inside a tuple.
    let deep = tuple(&[atom("x"), list(&[map(&[(atom("k"), map(&[(int(1), local_f())]))])])]);
    let (_, edited) = run(&p, &payload_msg(&deep));
    assert_eq!(edited.unwrap(), "{6,#Pid<'a@h'.1.0.7>,'',sink} {x,[#{k => #{1 => fun m:f/1}}]}");
    // In the free variables of a fun the target knows: only the inner one is rewritten and
    // the outer fun's Size follows (the receiver's walker checks it).
    let outer = new_fun(&atom("shared"), SAME, 0, 1, &[tuple(&[local_f(), atom("pad")])]);
    let (j, edited) = run(&p, &payload_msg(&outer));
    assert_eq!(j.findings.len(), 1);
    assert!(edited.unwrap().contains("#Fun<shared.0.12345>"));
    let Verdict::Edits(mut e) = j.verdict else { panic!() };
    let (mut dec, mut w, mut funs, mut out) = (Decoder::default(), Walker::default(), Vec::new(), Vec::new());
    let frame = payload_msg(&outer);
    let Decoded::Message(m) = dec.decode(&frame).unwrap() else { panic!() };
    fun::message_funs(&mut w, &m, &mut funs).unwrap();
    wire::apply(m.bytes, &funs, &mut e, &mut out).unwrap();
    assert_eq!(count(&out, &export("m", "f", 1)), 1);
    assert_eq!(count(&out, &local_f()), 0);
    // The module atom through the atom cache.
    let frame = data(&header(&[(300, Some("m"))]), &reg_send(&atom("sink")), Some(&new_fun(&cref(0), V1, 0, 1, &[])));
    let (j, edited) = run(&p, &frame);
    assert_eq!(j.findings[0].module, "m");
    assert_eq!(edited.unwrap(), "{6,#Pid<'a@h'.1.0.7>,'',sink} fun m:f/1");
    // In a control message: an exit reason.
    let exit = tuple(&[int(3), pid(1), pid(2), tuple(&[atom("badfun"), local_f()])]);
    let (_, edited) = run(&p, &data(&header(&[]), &exit, None));
    assert_eq!(edited.unwrap(), "{3,#Pid<'a@h'.1.0.7>,#Pid<'a@h'.2.0.7>,{badfun,fun m:f/1}}");
    // An unknown outer fun replaced whole: its unknown inner fun is not edited separately.
    let outer = new_fun(&atom("m"), V1, 2, 1, &[local_f()]);
    let (j, edited) = run(&policy("unknown_fun = \"replace\"\n"), &payload_msg(&outer));
    assert_eq!(j.findings.len(), 1);
    assert!(edited.unwrap().ends_with(&format!("{{distgate_blocked_fun,m,2,{}}}", printed_bin(&"01".repeat(16)))));
}

#[test]
fn export_funs_the_target_does_not_export() {
    let p = policy("unknown_export = \"replace\"\n");
    let (j, _) = run(&p, &payload_msg(&export("m", "g", 1)));
    assert_eq!(j, Judgement::pass(), "exported by the target");
    let (j, _) = run(&p, &payload_msg(&export("unknown_module", "x", 1)));
    assert_eq!(j, Judgement::pass(), "the registry does not know the module: not judged");
    let (j, edited) = run(&p, &payload_msg(&list(&[export("m", "h", 0)])));
    assert_eq!(j.findings[0].rule, "unknown_export");
    assert_eq!(j.findings[0].subject, "fun m:h/0");
    assert_eq!(edited.unwrap(), "{6,#Pid<'a@h'.1.0.7>,'',sink} [{distgate_blocked_fun,m,h,0}]");
    let (j, _) = run(&policy("unknown_export = \"rewrite\"\n"), &payload_msg(&export("m", "h", 0)));
    assert_eq!(j.findings[0].rule, "rewrite_fallback");
}

#[test]
fn the_worst_decision_wins() {
    let msg = payload_msg(&tuple(&[local_f(), new_fun(&atom("other"), V1, 0, 0, &[])]));
    let p = policy("unknown_fun = \"replace\"\n[policy.p.modules]\n\"other\" = { unknown_fun = \"drop\" }\n");
    let (j, _) = run(&p, &msg);
    assert_eq!(j.verdict, Verdict::Drop);
    assert_eq!(j.findings.len(), 2);
}

// ---- control --------------------------------------------------------------------------------

#[test]
fn ops_allowed_and_denied() {
    let link = data(&header(&[]), &tuple(&[int(1), pid(1), pid(2)]), None);
    let p = policy("[policy.p.control]\ndeny_ops = [\"link\"]\n");
    let (j, _) = run(&p, &link);
    assert_eq!(j.verdict, Verdict::Drop);
    assert_eq!((j.findings[0].rule, j.findings[0].subject.as_str()), ("op", "LINK"));
    let p = policy("[policy.p.control]\ndeny_ops = [\"link\"]\non_deny = \"close\"\n");
    assert!(matches!(run(&p, &link).0.verdict, Verdict::Close { .. }));
    let p = policy("[policy.p.control]\nallow_ops = [\"send\", \"reg_send\"]\n");
    assert_eq!(run(&p, &link).0.verdict, Verdict::Drop);
    assert_eq!(run(&p, &payload_msg(&atom("hi"))).0.verdict, Verdict::Pass);
    let gl = data(&header(&[]), &tuple(&[int(7), pid(1), pid(2)]), None);
    assert_eq!(run(&policy("preset = \"untrusted\"\n"), &gl).0.verdict, Verdict::Drop, "group_leader under untrusted");
    assert_eq!(run(&policy(""), &gl).0.verdict, Verdict::Pass);
}

#[test]
fn denied_spawn_requests_are_answered() {
    let p = policy("[policy.p.control]\nspawn_allow = [\"lists:*\"]\n");
    let ok = data(&header(&[]), &spawn_request("lists", "seq", 2), Some(&list(&[int(1), int(2)])));
    assert_eq!(run(&p, &ok).0.verdict, Verdict::Pass);
    // The request's reference and caller through the atom cache: the reply has them inline.
    let ctl = tuple(&[int(29), reference(&cref(0)), pid_with(&cref(0), 1), pid(2), tuple(&[atom("os"), atom("cmd"), int(1)]), list(&[])]);
    let frame = data(&header(&[(5, Some("a@h"))]), &ctl, Some(&list(&[bin(b"echo x")])));
    let (j, _) = run(&p, &frame);
    let Verdict::Reply(reply) = &j.verdict else { panic!("{j:?}") };
    assert_eq!((j.findings[0].rule, j.findings[0].subject.as_str(), j.findings[0].action), ("spawn_allow", "os:cmd/1", "deny"));
    let mut out = Vec::new();
    wire::control_frame(false, reply, &mut out);
    let mut receiver = Decoder::default();
    assert_eq!(
        receive(&out, &mut receiver),
        vec![format!("{{31,#Ref<'a@h'.7.3.2.1>,#Pid<'a@h'.1.0.7>,0,{DENIED_REASON}}}")]
    );
    // Without the atom cache, the reply goes pass-through.
    let mut out = Vec::new();
    wire::control_frame(true, reply, &mut out);
    assert_eq!(&out[4..6], &[112, 131]);
    assert_eq!(receive(&out, &mut Decoder::default()).len(), 1);
    // on_deny = close: the reply is still sent, then the link closes.
    let p = policy("[policy.p.control]\nspawn_allow = []\non_deny = \"close\"\n");
    assert!(matches!(run(&p, &frame).0.verdict, Verdict::Close { reply: Some(_), .. }));
}

fn erpc_call(m: &str, f: &str, args: &[Vec<u8>]) -> Vec<u8> {
    let payload = list(&[reference(&atom("a@h")), atom(m), atom(f), list(args)]);
    data(&header(&[]), &spawn_request("erpc", "execute_call", 4), Some(&payload))
}

#[test]
fn rpc_through_erpc_and_rex_by_allow_list() {
    let p = policy("[policy.p.control]\nrpc_allow = [\"m:*\", \"erlang:node/0\"]\nspawn_allow = []\n");
    // erpc is judged by rpc_allow, not spawn_allow.
    assert_eq!(run(&p, &erpc_call("m", "f", &[int(1)])).0.verdict, Verdict::Pass);
    assert_eq!(run(&p, &erpc_call("erlang", "node", &[])).0.verdict, Verdict::Pass);
    let (j, _) = run(&p, &erpc_call("erlang", "node", &[int(1)]));
    assert!(matches!(j.verdict, Verdict::Reply(_)));
    let (j, _) = run(&p, &erpc_call("os", "cmd", &[bin(b"echo x")]));
    assert_eq!((j.findings[0].rule, j.findings[0].subject.as_str()), ("rpc_allow", "os:cmd/1"));
    // erpc:cast: execute_cast/3 with [M, F, A].
    let cast = data(&header(&[]), &spawn_request("erpc", "execute_cast", 3), Some(&list(&[atom("os"), atom("cmd"), list(&[bin(b"x")])])));
    assert!(matches!(run(&p, &cast).0.verdict, Verdict::Reply(_)));
    // rex: {'$gen_call', From, {call, M, F, A, GL}} and {'$gen_cast', {cast, M, F, A, GL}}.
    let from = tuple(&[pid(1), reference(&atom("a@h"))]);
    let rex_call = |m: &str, f: &str| {
        payload_to("rex", &tuple(&[atom("$gen_call"), from.clone(), tuple(&[atom("call"), atom(m), atom(f), list(&[]), pid(3)])]))
    };
    assert_eq!(run(&p, &rex_call("m", "f")).0.verdict, Verdict::Pass);
    let (j, _) = run(&p, &rex_call("os", "cmd"));
    assert_eq!((j.verdict, j.findings[0].rule), (Verdict::Drop, "rpc_allow"));
    let rex_cast = payload_to("rex", &tuple(&[atom("$gen_cast"), tuple(&[atom("cast"), atom("os"), atom("cmd"), list(&[]), pid(3)])]));
    assert_eq!(run(&p, &rex_cast).0.verdict, Verdict::Drop);
    assert_eq!(run(&p, &payload_to("rex", &atom("junk"))).0.verdict, Verdict::Drop, "unrecognised messages to rex");
    // rex's own feature question when nodes meet.
    assert_eq!(run(&p, &payload_to("rex", &tuple(&[pid(1), atom("features_request")]))).0.verdict, Verdict::Pass);
    // Without rpc_allow (and without the preset) rpc is open.
    assert_eq!(run(&policy(""), &rex_call("os", "cmd")).0.verdict, Verdict::Pass);
}

fn payload_to(name: &str, payload: &[u8]) -> Vec<u8> {
    data(&header(&[]), &reg_send(&atom(name)), Some(payload))
}

#[test]
fn reg_send_by_registered_name() {
    let p = policy("[policy.p.control]\nreg_send_allow = [\"dg_*\", \"logger\"]\n");
    assert_eq!(run(&p, &payload_to("dg_sink", &atom("x"))).0.verdict, Verdict::Pass);
    assert_eq!(run(&p, &payload_to("logger", &atom("x"))).0.verdict, Verdict::Pass);
    let (j, _) = run(&p, &payload_to("net_kernel", &atom("x")));
    assert_eq!((j.verdict, j.findings[0].rule, j.findings[0].module.as_str()), (Verdict::Drop, "reg_send_allow", "net_kernel"));
    // The name through the atom cache.
    let frame = data(&header(&[(9, Some("dg_sink"))]), &reg_send(&cref(0)), Some(&atom("x")));
    assert_eq!(run(&p, &frame).0.verdict, Verdict::Pass);
}

#[test]
fn the_untrusted_preset_entry_by_entry() {
    let p = policy("preset = \"untrusted\"\n[policy.p.control]\nreg_send_allow = [\"*\"]\nspawn_allow = [\"m:f/1\"]\n");
    let from = tuple(&[pid(1), reference(&atom("a@h"))]);
    let gen_call = |req: Vec<u8>| tuple(&[atom("$gen_call"), from.clone(), req]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("system message", tuple(&[atom("system"), from.clone(), atom("get_state")]), "untrusted:system_message"),
        ("replace_state", tuple(&[atom("system"), from.clone(), tuple(&[atom("replace_state"), local_f()])]), "untrusted:system_message"),
        ("start_child", gen_call(tuple(&[atom("start_child"), tuple(&[atom("id")])])), "untrusted:supervisor_child_call"),
        ("restart_child", gen_call(tuple(&[atom("restart_child"), atom("id")])), "untrusted:supervisor_child_call"),
        ("terminate_child", gen_call(tuple(&[atom("terminate_child"), atom("id")])), "untrusted:supervisor_child_call"),
        ("delete_child", gen_call(tuple(&[atom("delete_child"), atom("id")])), "untrusted:supervisor_child_call"),
        ("io request", tuple(&[atom("io_request"), pid(1), atom("ref"), tuple(&[atom("put_chars"), atom("unicode"), bin(b"x")])]), "untrusted:io_request"),
        ("code_server call", tuple(&[atom("code_call"), pid(1), tuple(&[atom("load_binary"), atom("m"), atom("f"), bin(b"")])]), "untrusted:code_loading"),
    ];
    for (what, payload, rule) in &cases {
        // To a registered name, and to a pid (SEND).
        let (j, _) = run(&p, &payload_to("some_server", payload));
        assert_eq!((&j.verdict, j.findings[0].rule), (&Verdict::Drop, *rule), "{what} by name");
        let (j, _) = run(&p, &data(&header(&[]), &send(), Some(payload)));
        assert_eq!((&j.verdict, j.findings[0].rule), (&Verdict::Drop, *rule), "{what} to a pid");
        // Without the preset, the same shapes pass.
        assert_eq!(run(&policy(""), &payload_to("some_server", payload)).0.verdict, Verdict::Pass, "{what}");
    }
    // Harmless calls pass.
    assert_eq!(run(&p, &payload_to("some_server", &gen_call(tuple(&[atom("which_children")])))).0.verdict, Verdict::Pass);
    assert_eq!(run(&p, &payload_to("some_server", &gen_call(atom("get")))).0.verdict, Verdict::Pass);
    // Names that stop the node or load code, whatever reg_send_allow says.
    for name in ["init", "code_server", "erl_prim_loader"] {
        let (j, _) = run(&p, &payload_to(name, &tuple(&[atom("stop"), atom("stop")])));
        assert_eq!(j.findings[0].rule, "untrusted:registered_name", "{name}");
    }
    // Absent allow-lists allow nothing under the preset...
    let bare = policy("preset = \"untrusted\"\n");
    assert_eq!(run(&bare, &payload_to("some_server", &atom("x"))).0.verdict, Verdict::Drop);
    assert!(matches!(run(&bare, &data(&header(&[]), &spawn_request("m", "f", 1), Some(&list(&[int(1)])))).0.verdict, Verdict::Reply(_)));
    assert!(matches!(run(&bare, &erpc_call("erlang", "node", &[])).0.verdict, Verdict::Reply(_)));
    // ... except net_adm:ping's question to net_kernel.
    let ping = payload_to("net_kernel", &gen_call(tuple(&[atom("is_auth"), atom("a@h")])));
    assert_eq!(run(&bare, &ping).0.verdict, Verdict::Pass);
    assert_eq!(run(&bare, &payload_to("net_kernel", &gen_call(tuple(&[atom("connect"), atom("x")])))).0.verdict, Verdict::Drop);
    // spawn of an allowed MFA passes; of anything else, refused with a reply.
    assert_eq!(run(&p, &data(&header(&[]), &spawn_request("m", "f", 1), Some(&list(&[int(1)])))).0.verdict, Verdict::Pass);
    assert!(matches!(run(&p, &data(&header(&[]), &spawn_request("erlang", "apply", 2), Some(&list(&[local_f(), list(&[])])))).0.verdict, Verdict::Reply(_)));
}

// ---- the direction: stand-ins, held fragments, reload, dry-run ----------------------------------

fn direction(p: Option<Compiled>, stats: Option<Arc<Stats>>) -> (Direction, Arc<RouteHandle>) {
    let h = Arc::new(RouteHandle::new("a", "b", p.map(Arc::new), source(), target()));
    let sender = Sender { node: "a@h".into(), creation: 7 };
    (Direction::new(Some(h.clone()), stats, 1, 0, sender, Limits::default()), h)
}

/// Feed frame data through a direction; returns what it forwards (frames with lengths) and
/// what it sends back.
fn feed(d: &mut Direction, dec: &mut Decoder, frames: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>, Option<String>) {
    let (mut fwd, mut back) = (Vec::new(), Vec::new());
    for f in frames {
        match d.frame(dec, f, Instant::now()).unwrap() {
            FrameAct::Forward => fwd.extend_from_slice(&with_len(f)),
            FrameAct::Absorb => {}
            FrameAct::Replace { forward, back: b } => {
                fwd.extend_from_slice(&forward);
                back.extend_from_slice(&b.unwrap_or_default());
            }
            FrameAct::Close { reason, back: b } => {
                back.extend_from_slice(&b.unwrap_or_default());
                return (fwd, back, Some(reason));
            }
        }
    }
    (fwd, back, None)
}

/// 200 atoms the dropped message introduces; the next message uses them all as old refs.
fn many_atoms() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let names: Vec<String> = (0..200).map(|i| format!("dg_atom_{i}")).collect();
    let defs: Vec<(u16, Option<&str>)> = names.iter().enumerate().map(|(i, n)| (i as u16 * 7 % 2048, Some(n.as_str()))).collect();
    let olds: Vec<(u16, Option<&str>)> = defs.iter().map(|(s, _)| (*s, None)).collect();
    let atoms: Vec<Vec<u8>> = (0..200).map(|i| cref(i as u8)).collect();
    (header(&defs), header(&olds), list(&atoms), tuple(&[atom("after"), list(&atoms)]))
}

#[test]
fn a_dropped_message_leaves_its_atom_cache_entries_behind() {
    let stats = Arc::new(Stats::default());
    let (mut d, _) = direction(Some(policy("unknown_fun = \"drop\"\n")), Some(stats.clone()));
    let (defs, olds, atoms, after) = many_atoms();
    let dropped = data(&defs, &reg_send(&atom("sink")), Some(&tuple(&[local_f(), atoms])));
    let later = data(&olds, &reg_send(&atom("sink")), Some(&after));
    let (fwd, back, closed) = feed(&mut d, &mut Decoder::default(), &[dropped, later]);
    assert!(back.is_empty() && closed.is_none());
    let got = receive(&fwd, &mut Decoder::default());
    assert_eq!(got.len(), 2, "the stand-in and the later message");
    assert_eq!(got[0], "{6,#Pid<'a@h'.0.0.7>,'',undefined} []");
    assert!(got[1].starts_with("{6,#Pid<'a@h'.1.0.7>,'',sink} {'after',[dg_atom_0,dg_atom_1,"), "{}", got[1]);
    assert!(got[1].ends_with("dg_atom_199]}"));
    assert_eq!(stats.get("policy:drop"), 1);
    // A dropped message whose header defines nothing needs no stand-in.
    let (mut d, _) = direction(Some(policy("unknown_fun = \"drop\"\n")), None);
    let (fwd, _, _) = feed(&mut d, &mut Decoder::default(), &[payload_msg(&local_f())]);
    assert!(fwd.is_empty());
}

#[test]
fn a_fun_in_a_control_field_is_found_on_the_link_path() {
    // A peer may put a fun in any free-form control field (here REG_SEND's unused one); the
    // link path skips the control's fun walk only when every field was read as a pid, atom,
    // integer or reference (`Control::may_hold_fun`).
    let stats = Arc::new(Stats::default());
    let (mut d, _) = direction(Some(policy("unknown_fun = \"drop\"\n")), Some(stats.clone()));
    let with_fun = data(&header(&[]), &tuple(&[int(6), pid(1), local_f(), atom("sink")]), Some(&atom("hello")));
    let plain = data(&header(&[]), &reg_send(&atom("sink")), Some(&atom("after")));
    let (fwd, back, closed) = feed(&mut d, &mut Decoder::default(), &[with_fun, plain]);
    assert!(back.is_empty() && closed.is_none());
    assert_eq!(receive(&fwd, &mut Decoder::default()), vec!["{6,#Pid<'a@h'.1.0.7>,'',sink} 'after'"]);
    assert_eq!(stats.get("policy:drop"), 1);
}

#[test]
fn a_denied_spawn_request_is_dropped_and_answered() {
    let (mut d, _) = direction(Some(policy("[policy.p.control]\nspawn_allow = []\n")), None);
    let req = data(&header(&[(1, Some("os")), (2, Some("cmd"))]), &spawn_request("os", "cmd", 1), Some(&list(&[bin(b"echo x")])));
    let (fwd, back, _) = feed(&mut d, &mut Decoder::default(), &[req]);
    assert_eq!(receive(&fwd, &mut Decoder::default()), vec!["{6,#Pid<'a@h'.0.0.7>,'',undefined} []"]);
    assert_eq!(receive(&back, &mut Decoder::default()), vec![format!("{{31,#Ref<'a@h'.7.3.2.1>,#Pid<'a@h'.1.0.7>,0,{DENIED_REASON}}}")]);
}

#[test]
fn fragmented_messages_are_held_judged_and_re_emitted_with_atoms_inline() {
    let (defs, olds, atoms, after) = many_atoms();
    // Before the sequence: slot 1500 is defined as early_atom.
    let pre = data(&header(&[(1500, Some("early_atom"))]), &reg_send(&atom("sink")), Some(&cref(0)));
    // The big message's header defines 200 new entries and refers to slot 1500 (ref 200).
    let mut big_hdr_entries: Vec<(u16, Option<&str>)> = Vec::new();
    let names: Vec<String> = (0..200).map(|i| format!("dg_atom_{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        big_hdr_entries.push((i as u16 * 7 % 2048, Some(n.as_str())));
    }
    big_hdr_entries.push((1500, None));
    assert_eq!(header(&big_hdr_entries[..200]), defs);
    let big = vec![7u8; 300_000];
    let payload = tuple(&[bin(&big), local_f(), atoms.clone(), new_fun(&atom("shared"), SAME, 0, 1, &[local_f()]), cref(200)]);
    let frags = fragments(77, &header(&big_hdr_entries), &reg_send(&atom("sink")), &payload, 65_536);
    assert!(frags.len() > 4);
    // Another message in the middle of the sequence, using the entries its first fragment
    // defined; then one redefining slot 0 (dg_atom_0's) and slot 1500 before the sequence
    // ends; after it, one using both slots.
    let middle = data(&olds, &reg_send(&atom("sink")), Some(&after));
    let redefine = data(
        &header(&[(0, Some("something_else")), (1500, Some("late_atom"))]),
        &reg_send(&atom("sink")),
        Some(&tuple(&[cref(0), cref(1)])),
    );
    let after_all = data(&header(&[(0, None), (1500, None)]), &reg_send(&atom("sink")), Some(&tuple(&[cref(0), cref(1)])));
    let mut stream = vec![pre, frags[0].clone(), frags[1].clone(), middle, redefine];
    stream.extend(frags[2..].iter().cloned());
    stream.push(after_all);

    // Without a policy: forwarded as is. The reference for what the receiver must see.
    let (mut plain, _) = direction(None, None);
    let (fwd, _, _) = feed(&mut plain, &mut Decoder::default(), &stream);
    let expected = receive(&fwd, &mut Decoder::default());
    assert_eq!(expected.len(), 5);
    assert!(expected[3].ends_with(",early_atom}"), "the big one keeps the meaning its header had");
    assert!(expected[4].ends_with("{something_else,late_atom}"));

    // With a pass-everything policy: the same messages, the big one when its last fragment
    // arrives, a stand-in where its first fragment was.
    let (mut d, _) = direction(Some(policy("")), None);
    let (fwd, _, _) = feed(&mut d, &mut Decoder::default(), &stream);
    assert_eq!(d.held(), 0);
    let mut got = receive(&fwd, &mut Decoder::default());
    assert_eq!(got.remove(1), "{6,#Pid<'a@h'.0.0.7>,'',undefined} []", "the stand-in for the first fragment");
    assert_eq!(got, expected, "same messages, same order, same atoms");
    // Headers defining entries went by meanwhile: the re-emission has its atoms inline.
    assert_eq!(first_fragment_header(&fwd, 77), vec![0]);

    // Rewriting: the funs inside (one nested in a known fun) become fun m:f/1.
    let (mut d, _) = direction(Some(policy("unknown_fun = \"rewrite\"\n")), None);
    let (fwd, _, _) = feed(&mut d, &mut Decoder::default(), &stream);
    let mut got = receive(&fwd, &mut Decoder::default());
    got.remove(1);
    assert_eq!(got[..3], expected[..3]);
    assert_eq!(got[4], expected[4]);
    let big_one = &got[3];
    assert!(big_one.contains(",fun m:f/1,[dg_atom_0,"), "{}", &big_one[big_one.len() - 3000..]);
    assert!(big_one.ends_with("#Fun<shared.0.12345>,early_atom}"));
    // `~w` does not print free variables: count the export funs in the bytes (the top-level
    // one and the one inside the known fun's free variables).
    assert_eq!(count(&fwd, &export("m", "f", 1)), 2);
    // Re-emitted as fragments of at most 64 KiB under the original sequence id.
    let mut n = 0;
    for item in Frames::new(&fwd, 1 << 30) {
        let d = item.unwrap().data.unwrap();
        assert!(d.len() <= 18 + 65_536);
        if d[1] == 69 || d[1] == 70 {
            assert_eq!(u64::from_be_bytes(d[2..10].try_into().unwrap()), 77);
            n += 1;
        }
    }
    assert!(n >= 5, "{n} fragments");

    // Dropping it: only the stand-in was forwarded for it.
    let (mut d, _) = direction(Some(policy("unknown_fun = \"drop\"\n")), None);
    let (fwd, _, _) = feed(&mut d, &mut Decoder::default(), &stream);
    let mut got = receive(&fwd, &mut Decoder::default());
    got.remove(1);
    assert_eq!(got, [&expected[..3], &expected[4..]].concat());
}

#[test]
fn reload_applies_from_the_next_frame_and_dry_run_forwards_unchanged() {
    let stats = Arc::new(Stats::default());
    let (mut d, h) = direction(None, Some(stats.clone()));
    let mut dec = Decoder::default();
    let msg = payload_msg(&local_f());
    assert_eq!(d.frame(&mut dec, &msg, Instant::now()).unwrap(), FrameAct::Forward);
    h.store(Some(Arc::new(policy("unknown_fun = \"replace\"\n"))));
    assert!(matches!(d.frame(&mut dec, &msg, Instant::now()).unwrap(), FrameAct::Replace { .. }));
    h.store(Some(Arc::new(policy("unknown_fun = \"replace\"\ndry_run = true\n"))));
    assert_eq!(d.frame(&mut dec, &msg, Instant::now()).unwrap(), FrameAct::Forward);
    assert_eq!((stats.get("policy:replace"), stats.get("policy:dry_run:replace")), (1, 1));
    // Dry-run does not hold fragments either.
    let frags = fragments(5, &header(&[]), &reg_send(&atom("sink")), &tuple(&[bin(&[0; 100_000]), local_f()]), 65_536);
    for f in &frags {
        assert_eq!(d.frame(&mut dec, f, Instant::now()).unwrap(), FrameAct::Forward);
    }
    assert_eq!(stats.get("policy:dry_run:replace"), 2, "judged when complete");
    h.store(None);
    assert_eq!(d.frame(&mut dec, &msg, Instant::now()).unwrap(), FrameAct::Forward);
}

#[test]
fn a_sequence_held_when_the_policy_is_removed_is_still_re_emitted() {
    let (mut d, h) = direction(Some(policy("")), None);
    let mut dec = Decoder::default();
    let frags = fragments(9, &header(&[(4, Some("hello"))]), &reg_send(&atom("sink")), &tuple(&[bin(&[1; 70_000]), cref(0)]), 65_536);
    let (fwd0, _, _) = feed(&mut d, &mut dec, &frags[..1]);
    h.store(None);
    let (fwd1, _, _) = feed(&mut d, &mut dec, &frags[1..]);
    let mut all = fwd0;
    all.extend_from_slice(&fwd1);
    let got = receive(&all, &mut Decoder::default());
    assert_eq!(got.len(), 2);
    assert!(got[1].ends_with(",hello}"), "{}", &got[1][got[1].len() - 20..]);
    // Nothing changed the receiver's cache meanwhile: the message goes with its own header.
    assert_eq!(first_fragment_header(&fwd1, 9), header(&[(4, Some("hello"))]));
}

#[test]
fn audit_lines_are_json() {
    let p = policy("unknown_fun = \"replace\"\n");
    let (j, _) = run(&p, &payload_msg(&local_f()));
    let site = super::audit::Site { link: 3, route: "a->b", direction: "down->up" };
    let line = super::audit::line(&p, &site, 6, &j, 0, false);
    assert_eq!(
        line,
        format!(
            "{{\"link\":3,\"route\":\"a->b\",\"direction\":\"down->up\",\"policy\":\"p\",\"op\":\"REG_SEND\",\
             \"rule\":\"unknown_fun\",\"module\":\"m\",\"fun\":\"#Fun<m.0.{}>\",\"action\":\"replace\",\
             \"message\":\"edit\",\"dry_run\":false}}",
            "01".repeat(16)
        )
    );
}

#[test]
fn many_funs_and_many_edits_in_one_message() {
    // 20,000 unknown funs in one message, each judged and rewritten. (No wall-clock bound: a
    // shared host makes one meaningless. A quadratic rewrite would show as this test turning
    // slow, and in the policy bench.)
    let funs: Vec<Vec<u8>> = (0..20_000).map(|_| local_f()).collect();
    let msg = payload_msg(&list(&funs));
    let (j, edited) = run(&policy("unknown_fun = \"rewrite\"\n"), &msg);
    assert_eq!(j.findings.len(), 20_000);
    assert!(edited.unwrap().matches("fun m:f/1").count() == 20_000);
}

#[test]
fn snapshot_type_is_what_the_registry_serves() {
    // The engine takes snapshots as the registry hands them out.
    let r = target();
    let s: &Snapshot = &r.load();
    assert!(s.knows("m", &V2).is_some());
}

// ---- the memo of passed funs ------------------------------------------------------------------

fn is_replace(a: &FrameAct) -> bool {
    matches!(a, FrameAct::Replace { back: None, .. })
}

/// A snapshot of `versions`, stored in the handle's target registry (a refresh).
fn refresh_target(h: &RouteHandle, versions: Vec<ModuleVersion>) {
    let mut b = SnapshotBuilder::new();
    for v in versions {
        b.add(v);
    }
    h.target.load().store(b.build());
}

#[test]
fn a_remembered_pass_does_not_outlive_a_registry_refresh() {
    let (mut d, h) = direction(Some(policy("unknown_fun = \"replace\"\nunknown_export = \"replace\"\n")), None);
    let mut dec = Decoder::default();
    let known = payload_msg(&tuple(&[new_fun(&atom("shared"), SAME, 0, 1, &[int(5)]), export("m", "f", 1)]));
    let now = Instant::now();
    assert_eq!(d.frame(&mut dec, &known, now).unwrap(), FrameAct::Forward);
    assert_eq!(d.memo_len(), 2, "both funs remembered");
    assert_eq!(d.frame(&mut dec, &known, now).unwrap(), FrameAct::Forward);
    // The target no longer runs that version of `shared`, and m no longer exports f/1.
    refresh_target(&h, vec![version("m", V2, &[], &[("g", 1)]), version("shared", V1, &[], &[("wrap", 1)])]);
    let act = d.frame(&mut dec, &known, now).unwrap();
    assert!(is_replace(&act), "{act:?}");
    let FrameAct::Replace { forward, .. } = act else { unreachable!() };
    let got = receive(&forward, &mut Decoder::default());
    assert!(got[0].contains("{distgate_blocked_fun,shared,0,") && got[0].contains("{distgate_blocked_fun,m,f,1}"), "{got:?}");
    // And back: passes again.
    refresh_target(&h, vec![version("m", V2, &[], &[("f", 1)]), version("shared", SAME, &[], &[])]);
    assert_eq!(d.frame(&mut dec, &known, now).unwrap(), FrameAct::Forward);
    // Another registry altogether (a reload that re-read the clusters).
    h.store_registries(source(), registry(vec![version("shared", V1, &[], &[])]));
    assert!(is_replace(&d.frame(&mut dec, &known, now).unwrap()));
}

#[test]
fn a_remembered_pass_does_not_outlive_a_policy_reload() {
    // m v1 is unknown to the target; `pass` lets it through (and is remembered). Funs are
    // looked at because an export fun could be replaced.
    let (mut d, h) = direction(Some(policy("unknown_fun = \"pass\"\nunknown_export = \"replace\"\n")), None);
    let mut dec = Decoder::default();
    let msg = payload_msg(&local_f());
    let now = Instant::now();
    assert_eq!(d.frame(&mut dec, &msg, now).unwrap(), FrameAct::Forward);
    assert_eq!(d.memo_len(), 1);
    h.store(Some(Arc::new(policy("unknown_fun = \"replace\"\n"))));
    assert!(is_replace(&d.frame(&mut dec, &msg, now).unwrap()));
    // A module rule decides: remembered as passed, then the rule changes.
    h.store(Some(Arc::new(policy("unknown_fun = \"replace\"\n[policy.p.modules]\n\"m\" = { unknown_fun = \"pass\" }\n"))));
    assert_eq!(d.frame(&mut dec, &msg, now).unwrap(), FrameAct::Forward);
    assert_eq!(d.frame(&mut dec, &msg, now).unwrap(), FrameAct::Forward);
    h.store(Some(Arc::new(policy("unknown_fun = \"drop\"\n[policy.p.modules]\n\"n\" = { unknown_fun = \"pass\" }\n"))));
    assert_eq!(d.frame(&mut dec, &msg, now).unwrap(), FrameAct::Absorb);
    // Export funs likewise.
    let exp = payload_msg(&export("m", "h", 0));
    h.store(Some(Arc::new(policy("unknown_export = \"pass\"\nunknown_fun = \"replace\"\n"))));
    assert_eq!(d.frame(&mut dec, &exp, now).unwrap(), FrameAct::Forward);
    assert_eq!(d.memo_len(), 1);
    h.store(Some(Arc::new(policy("unknown_export = \"replace\"\n"))));
    assert!(is_replace(&d.frame(&mut dec, &exp, now).unwrap()));
}

#[test]
fn a_remembered_fun_passes_nothing_else_with_it() {
    // Messages whose funs are all remembered are forwarded without the full judgement; the
    // control rules still apply to them, and a fun not remembered is still judged.
    let text = "unknown_fun = \"replace\"\nunknown_export = \"replace\"\n[policy.p.control]\nreg_send_allow = [\"sink\"]\n";
    let (mut d, _h) = direction(Some(policy(text)), None);
    let mut dec = Decoder::default();
    let known = tuple(&[new_fun(&atom("shared"), SAME, 0, 1, &[int(5)]), export("m", "f", 1)]);
    let now = Instant::now();
    assert_eq!(d.frame(&mut dec, &payload_msg(&known), now).unwrap(), FrameAct::Forward);
    assert_eq!(d.memo_len(), 2, "both funs remembered");
    assert_eq!(d.frame(&mut dec, &payload_msg(&known), now).unwrap(), FrameAct::Forward);
    // The same funs to a name the allow-list does not hold: dropped.
    let to_other = data(&header(&[]), &reg_send(&atom("other")), Some(&known));
    assert_eq!(d.frame(&mut dec, &to_other, now).unwrap(), FrameAct::Absorb);
    // A remembered fun beside one the target does not know: that one is replaced, the
    // remembered one kept.
    let mixed = tuple(&[new_fun(&atom("shared"), SAME, 0, 1, &[int(5)]), local_f()]);
    let act = d.frame(&mut dec, &payload_msg(&mixed), now).unwrap();
    let FrameAct::Replace { forward, .. } = act else { panic!("{act:?}") };
    let got = receive(&forward, &mut Decoder::default());
    assert!(got[0].contains("{distgate_blocked_fun,m,0,") && !got[0].contains("{distgate_blocked_fun,shared"), "{got:?}");
}

#[test]
fn the_memo_keys_funs_by_their_module_text_not_their_bytes() {
    // The same fun bytes (module as atom-cache ref 0), with ref 0 naming `shared`, then `m`.
    let (mut d, _h) = direction(Some(policy("unknown_fun = \"replace\"\n")), None);
    let mut dec = Decoder::default();
    let fun = new_fun(&cref(0), SAME, 0, 1, &[]);
    let now = Instant::now();
    let first = data(&header(&[(300, Some("shared"))]), &reg_send(&atom("sink")), Some(&fun));
    assert_eq!(d.frame(&mut dec, &first, now).unwrap(), FrameAct::Forward);
    assert_eq!(d.memo_len(), 1);
    let second = data(&header(&[(300, Some("m"))]), &reg_send(&atom("sink")), Some(&fun));
    assert!(is_replace(&d.frame(&mut dec, &second, now).unwrap()));
    // A Latin-1 atom and a UTF-8 one with the same text are the same module.
    let latin1 = {
        let mut v = vec![115, 6];
        v.extend_from_slice(b"shared");
        v
    };
    let third = payload_msg(&new_fun(&latin1, SAME, 0, 1, &[]));
    assert_eq!(d.frame(&mut dec, &third, now).unwrap(), FrameAct::Forward);
}

/// The forwarding path's probe (a fun's key read from its bytes, its text borrowed where it
/// lies) claims a hit exactly when the general path's does, and exactly for the funs whose
/// module text and MD5 (or module, function and arity) were remembered: never for a fun
/// differing in a byte of either, in any atom encoding, cache refs included.
#[test]
fn the_forwarding_probe_hits_exactly_what_was_remembered() {
    use super::engine::{remembered, span_remembered};
    use super::memo::FunMemo;
    let raw_export = |m: &[u8], f: &[u8], a: u8| {
        let mut v = vec![113];
        v.extend_from_slice(m);
        v.extend_from_slice(f);
        v.extend_from_slice(&[97, a]);
        v
    };
    let small = |t: u8, text: &[u8]| {
        let mut v = vec![t, text.len() as u8];
        v.extend_from_slice(text);
        v
    };
    let long = |t: u8, text: &[u8]| {
        let mut v = vec![t];
        v.extend_from_slice(&(text.len() as u16).to_be_bytes());
        v.extend_from_slice(text);
        v
    };
    // MD5s that look like MD5s (uniform ones all fall in one slot).
    let md5 = |seed: u8| -> [u8; 16] { std::array::from_fn(|i| seed.wrapping_mul(97).wrapping_add((i as u8).wrapping_mul(29)) ^ 0x5a) };
    let (ua, ub, uc) = (md5(1), md5(2), md5(3));
    let mut uniq_off = ua;
    uniq_off[15] ^= 1;
    // Every way of writing `shared` (refs 0 and 3 name it), and modules that are not it.
    let shared = [small(119, b"shared"), long(118, b"shared"), small(115, b"shared"), long(100, b"shared"), cref(0), cref(3)];
    let others = [small(119, b"sharee"), small(119, b"share"), small(119, b"shared_"), cref(1), small(115, b"Shared")];
    // `é` in Latin-1 is the UTF-8 text `é`; `Ã©` in Latin-1 is not.
    let e_latin1 = small(115, &[0xe9]);
    let e_utf8 = small(119, "é".as_bytes());
    let not_e = small(115, &[0xc3, 0xa9]);
    let mut funs = Vec::new();
    for m in shared.iter().chain(&others).chain([&e_latin1, &e_utf8, &not_e]) {
        funs.push(new_fun(m, ua, 0, 1, &[]));
        funs.push(new_fun(m, uniq_off, 0, 1, &[]));
        funs.push(new_fun(m, uc, 0, 1, &[]));
        funs.push(new_fun(m, ub, 0, 1, &[]));
        for f in [small(119, b"f"), cref(2), small(119, b"g"), small(119, b"dshared"), e_latin1.clone()] {
            for a in [1, 2] {
                funs.push(raw_export(m, &f, a));
            }
        }
    }
    // `sh` + `aredf`: the split between the names counts.
    funs.push(raw_export(&small(119, b"sh"), &small(119, b"aredf"), 1));
    let hdr = header(&[(300, Some("shared")), (301, Some("m")), (302, Some("f")), (303, Some("shared"))]);
    let frame = data(&hdr, &reg_send(&atom("sink")), Some(&list(&funs)));
    let (p, t) = (policy("unknown_fun = \"replace\"\n"), target().snapshot());
    let mut memo = FunMemo::default();
    memo.sync(&t, &p);
    memo.remember_local(b"shared", &ua);
    // (Another MD5: local funs are slotted by it, and one would evict the other.)
    memo.remember_local("é".as_bytes(), &ub);
    memo.remember_export(b"shared", b"f", 1);
    memo.remember_export("é".as_bytes(), "é".as_bytes(), 2);
    assert_eq!(memo.len(), 4, "no two share a slot");
    let mut dec = Decoder::default();
    let mut spans = Vec::new();
    let Decoded::Message(m) = dec.decode_collecting(&frame, Some(&mut spans)).unwrap() else { panic!("not a message") };
    assert_eq!(spans.len(), funs.len());
    let mut hits = 0;
    for span in &spans {
        let site = span.site_in(&m).unwrap();
        let key = site.kind.key().unwrap();
        let text = |a| wire::atom_text(&m.refs, &a).unwrap().into_owned();
        let want = match site.kind {
            fun::FunKind::New(nf) => (text(nf.module), *nf.uniq) == ("shared".into(), ua) || (text(nf.module), *nf.uniq) == ("é".into(), ub),
            fun::FunKind::Export(e) => {
                (text(e.module), text(e.function), e.arity) == ("shared".into(), "f".into(), 1)
                    || (text(e.module), text(e.function), e.arity) == ("é".into(), "é".into(), 2)
            }
            fun::FunKind::Old(_) => unreachable!(),
        };
        assert_eq!(remembered(&memo, &m, key), want, "{site:?}");
        assert_eq!(span_remembered(&memo, &m, span), want, "{site:?}");
        hits += want as usize;
    }
    // `shared` 6 ways (local, and export f/1 with f inline or ref 2), `é` 2 ways (local),
    // and é:é/2 from both Latin-1 and UTF-8 `é` modules.
    assert_eq!(hits, 6 + 6 * 2 + 2 + 2);
}

#[test]
fn judging_with_the_memo_gives_the_same_judgements() {
    use super::engine::judge_memo;
    use super::memo::FunMemo;
    let frames = [
        payload_msg(&tuple(&[atom("call"), local_f()])),
        payload_msg(&list(&[new_fun(&atom("shared"), SAME, 0, 1, &[int(5)]), local_f(), export("m", "g", 1)])),
        payload_msg(&tuple(&[export("m", "h", 0), export("unknown_module", "x", 1), export("m", "f", 1)])),
        payload_msg(&new_fun(&atom("m"), V2, 0, 1, &[local_f()])),
        payload_msg(&new_fun(&atom("shared"), SAME, 0, 1, &[tuple(&[local_f(), atom("pad")])])),
        data(&header(&[(300, Some("m"))]), &reg_send(&atom("sink")), Some(&new_fun(&cref(0), V1, 0, 1, &[]))),
    ];
    for text in [
        "unknown_fun = \"replace\"\nunknown_export = \"replace\"\n",
        "unknown_fun = \"rewrite\"\nunknown_export = \"drop\"\n",
        "unknown_fun = \"pass\"\n[policy.p.modules]\n\"m\" = { unknown_fun = \"close\", unknown_export = \"replace\" }\n",
    ] {
        let p = policy(text);
        let (src, dst) = (source(), target());
        let (s, t) = (src.snapshot(), dst.snapshot());
        let source = || Some(s.clone());
        let mut memo = FunMemo::default();
        memo.sync(&t, &p);
        for round in 0..3 {
            for f in &frames {
                let mut dec = Decoder::default();
                let Decoded::Message(m) = dec.decode(f).unwrap() else { panic!() };
                let mut w = Walker::default();
                let mut funs = Vec::new();
                fun::message_funs(&mut w, &m, &mut funs).unwrap();
                let regs = Registries { target: &t, source: &source };
                let plain = judge(&p, &m, &funs, Some(regs), &mut w);
                let memoised = judge_memo(&p, &m, &funs, Some(regs), &mut w, Some(&mut memo));
                assert_eq!(plain, memoised, "{text} round {round}");
            }
        }
        assert!(!memo.is_empty());
    }
}

/// Route directions naming the same policy share one compiled policy, so its audit budget
/// is per policy (docs/policy.md), not per direction.
#[test]
fn directions_naming_one_policy_share_it_and_its_audit_budget() {
    let text = "[[cluster]]\nname = \"a\"\ncookie = \"x\"\nlisten = \"127.0.0.1:1\"\n\
                [[cluster]]\nname = \"b\"\ncookie = \"y\"\nlisten = \"127.0.0.1:2\"\n\
                [[cluster]]\nname = \"c\"\ncookie = \"z\"\nlisten = \"127.0.0.1:3\"\n\
                [[route]]\nfrom = \"a\"\nto = \"b\"\npolicy = \"p\"\n\
                [[route]]\nfrom = \"c\"\nto = \"b\"\npolicy = \"p\"\n\
                [[route]]\nfrom = \"b\"\nto = \"a\"\npolicy = \"q\"\n\
                [policy.p]\naudit_per_second = 1\n[policy.q]\naudit_per_second = 1\n";
    let cfg = distgate_config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let regs: Vec<Arc<Registry>> = ["a", "b", "c"].iter().map(|n| Arc::new(Registry::new(n))).collect();
    let t = super::PolicyTable::from_config(&cfg, &regs);
    let policy = |f, to| t.get(f, to).and_then(|h| h.current()).unwrap_or_else(|| panic!("{f} -> {to} has a policy"));
    let (ab, cb, ba) = (policy(0, 1), policy(2, 1), policy(1, 0));
    assert!(Arc::ptr_eq(&ab, &cb), "a -> b and c -> b both name p");
    assert!(!Arc::ptr_eq(&ab, &ba), "b -> a names q");
    let now = std::time::Instant::now();
    assert!(ab.audit.allow(now));
    assert!(!cb.audit.allow(now), "p's one line this second was spent by a -> b");
    assert!(ba.audit.allow(now), "q has its own budget");
}

/// A fragmented message that began while no policy applied has had its first fragments
/// forwarded as they came: if a reload brings a policy before its last fragment, that one
/// passes too, unjudged (docs/policy.md), whatever the policy would do with the whole; the
/// messages after it are judged.
#[test]
fn a_sequence_begun_unjudged_completes_unjudged_under_a_new_policy() {
    for action in ["replace", "drop", "close"] {
        let (mut d, h) = direction(None, None);
        let mut dec = Decoder::default();
        let payload = tuple(&[bin(&[0; 100_000]), local_f()]);
        let frags = fragments(5, &header(&[]), &reg_send(&atom("sink")), &payload, 65_536);
        let (last, first) = frags.split_last().unwrap_or_else(|| panic!("fragments"));
        let (fwd, back, closed) = feed(&mut d, &mut dec, first);
        assert!(back.is_empty() && closed.is_none());
        assert_eq!(fwd, first.iter().flat_map(|f| with_len(f)).collect::<Vec<u8>>());
        h.store(Some(Arc::new(policy(&format!("unknown_fun = \"{action}\"\n")))));
        assert_eq!(d.frame(&mut dec, last, Instant::now()).unwrap(), FrameAct::Forward, "{action}: the last fragment as it came");
        // The next message, whole, is judged.
        let next = data(&header(&[]), &reg_send(&atom("sink")), Some(&payload));
        assert_ne!(d.frame(&mut dec, &next, Instant::now()).unwrap(), FrameAct::Forward, "{action}: the next message is judged");
    }
}

// ---- shapes in every encoding, rex's requests to any process ---------------------------------

/// A tuple as LARGE_TUPLE_EXT (erts decodes it as it decodes SMALL_TUPLE_EXT, whatever the
/// arity).
fn large(items: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![105];
    v.extend_from_slice(&(items.len() as u32).to_be_bytes());
    items.iter().for_each(|i| v.extend_from_slice(i));
    v
}
/// An atom in one of its inline encodings: ATOM_EXT (100), SMALL_ATOM_EXT (115), ATOM_UTF8_EXT
/// (118), SMALL_ATOM_UTF8_EXT (119).
fn atom_as(tag: u8, s: &str) -> Vec<u8> {
    let mut v = vec![tag];
    match tag {
        100 | 118 => v.extend_from_slice(&(s.len() as u16).to_be_bytes()),
        _ => v.push(s.len() as u8),
    }
    v.extend_from_slice(s.as_bytes());
    v
}
/// STRING_EXT: a list of small integers.
fn string(s: &str) -> Vec<u8> {
    let mut v = vec![107];
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

/// Every control op that delivers a message to a process, with a pid, alias or name as the
/// destination (the registered name is `some_server`).
fn message_ops() -> Vec<(&'static str, Vec<u8>)> {
    let token = tuple(&[int(1), int(2), int(3), pid(4), int(5)]);
    vec![
        ("SEND", send()),
        ("SEND_TT", tuple(&[int(12), atom(""), pid(9), token.clone()])),
        ("SEND_SENDER", tuple(&[int(22), pid(1), pid(9)])),
        ("SEND_SENDER_TT", tuple(&[int(23), pid(1), pid(9), token.clone()])),
        ("ALIAS_SEND", tuple(&[int(33), pid(1), reference(&atom("b@h"))])),
        ("ALIAS_SEND_TT", tuple(&[int(34), pid(1), reference(&atom("b@h")), token.clone()])),
        ("REG_SEND", reg_send(&atom("some_server"))),
        ("REG_SEND_TT", tuple(&[int(16), pid(1), atom(""), atom("some_server"), token])),
    ]
}

#[test]
fn untrusted_shapes_are_refused_in_every_tuple_and_atom_encoding() {
    let p = policy("preset = \"untrusted\"\n[policy.p.control]\nreg_send_allow = [\"*\"]\n");
    let from = tuple(&[pid(1), reference(&atom("a@h"))]);
    // (what, outer tuple's elements after its tag atom, the tag, the rule)
    let shapes: Vec<(&str, &str, Vec<Vec<u8>>, &str)> = vec![
        ("system message", "system", vec![from.clone(), atom("get_state")], "untrusted:system_message"),
        ("io request", "io_request", vec![pid(1), atom("ref"), tuple(&[atom("get_line"), string("> ")])], "untrusted:io_request"),
        ("code_server call", "code_call", vec![pid(1), tuple(&[atom("add_path"), atom("last"), string("/tmp")])], "untrusted:code_loading"),
        ("start_child", "$gen_call", vec![from.clone(), large(&[atom("start_child"), atom("spec")])], "untrusted:supervisor_child_call"),
    ];
    for (what, tag, rest, rule) in &shapes {
        // The tag atom in every encoding, as an inline atom or through the atom cache.
        let mut tags: Vec<(String, Vec<u8>, Vec<u8>)> =
            [100u8, 115, 118, 119].iter().map(|&t| (format!("atom tag {t}"), header(&[]), atom_as(t, tag))).collect();
        tags.push(("atom cache ref".into(), header(&[(3, Some(tag))]), cref(0)));
        for (enc, hdr, tag_bytes) in &tags {
            let mut items = vec![tag_bytes.clone()];
            items.extend(rest.iter().cloned());
            for (tuple_enc, payload) in [("SMALL_TUPLE", tuple(&items)), ("LARGE_TUPLE", large(&items))] {
                for (op, ctl) in message_ops() {
                    let (j, _) = run(&p, &data(hdr, &ctl, Some(&payload)));
                    assert_eq!(j.verdict, Verdict::Drop, "{what}, {enc}, {tuple_enc}, {op}");
                    assert_eq!(j.findings[0].rule, *rule, "{what}, {enc}, {tuple_enc}, {op}");
                }
            }
        }
    }
    // The supervisor request itself as a SMALL_TUPLE inside a LARGE_TUPLE $gen_call, too.
    let payload = large(&[atom("$gen_call"), from.clone(), tuple(&[atom_as(100, "delete_child"), atom("id")])]);
    assert_eq!(run(&p, &data(&header(&[]), &send(), Some(&payload))).0.findings[0].rule, "untrusted:supervisor_child_call");
    // Large tuples of other shapes, and the same tags in tuples of other arities, pass.
    for payload in [
        large(&[atom("system"), from.clone()]),
        large(&[atom("hello"), from.clone(), atom("get_state")]),
        large(&[atom("$gen_call"), from.clone(), large(&[atom("which_children")])]),
        large(&(0..300).map(int).collect::<Vec<_>>()),
        large(&[]),
    ] {
        assert_eq!(run(&p, &data(&header(&[]), &send(), Some(&payload))).0, Judgement::pass());
    }
}

#[test]
fn rex_requests_are_judged_by_rpc_allow_by_shape_to_any_process() {
    let from = tuple(&[pid(1), reference(&atom("a@h"))]);
    let gen_call = |req: Vec<u8>| tuple(&[atom("$gen_call"), from.clone(), req]);
    let gen_cast = |req: Vec<u8>| tuple(&[atom("$gen_cast"), req]);
    let mfa = |tag: &str, m: &str, f: &str, args: Vec<u8>| tuple(&[atom(tag), atom(m), atom(f), args, atom("user")]);
    let os_cmd = || list(&[string("id")]);
    // (what, payload, the finding's subject)
    let refused: Vec<(&str, Vec<u8>, &str)> = vec![
        ("rpc:call to an old node", gen_call(mfa("call", "os", "cmd", os_cmd())), "os:cmd/1"),
        ("rpc:block_call", gen_call(mfa("block_call", "os", "cmd", os_cmd())), "os:cmd/1"),
        ("rpc:cast", gen_cast(mfa("cast", "os", "cmd", os_cmd())), "os:cmd/1"),
        ("handle_info call, pid From", tuple(&[pid(1), mfa("call", "os", "cmd", os_cmd())]), "os:cmd/1"),
        ("handle_info call, any From", tuple(&[int(0), mfa("call", "os", "cmd", os_cmd())]), "os:cmd/1"),
        ("handle_info call, atom From", tuple(&[atom("x"), mfa("call", "os", "cmd", os_cmd())]), "os:cmd/1"),
        ("Args as a string", gen_call(mfa("call", "os", "cmd", string("ab"))), "os:cmd/2"),
        ("Args empty", gen_call(mfa("call", "init", "stop", list(&[]))), "init:stop/0"),
        (
            "large tuples at both levels, atoms in other encodings",
            large(&[
                atom_as(100, "$gen_call"),
                from.clone(),
                large(&[atom_as(115, "call"), atom_as(118, "os"), atom_as(100, "cmd"), os_cmd(), atom("user")]),
            ]),
            "os:cmd/1",
        ),
        ("a large rex cast", large(&[atom("$gen_cast"), large(&[atom("cast"), atom("os"), atom("cmd"), os_cmd(), atom("user")])]), "os:cmd/1"),
        (
            "a module that is not an atom",
            gen_call(tuple(&[atom("call"), tuple(&[atom("os")]), atom("cmd"), os_cmd(), atom("user")])),
            "rpc request whose module or function is not an atom",
        ),
        (
            "rpc:sbcast relay",
            tuple(&[pid(1), tuple(&[atom("sbcast"), atom("init"), tuple(&[atom("stop"), atom("stop")])])]),
            "{From,{sbcast,Name,Msg}}: rex sends Msg on to Name",
        ),
        ("rex's stop (the node halts)", gen_call(atom("stop")), "{'$gen_call',From,stop}: rex stops, and the node with it"),
        ("rex's stop, large", large(&[atom("$gen_call"), from.clone(), atom_as(100, "stop")]), "{'$gen_call',From,stop}: rex stops, and the node with it"),
        (
            "rpc:multi_server_call relay",
            tuple(&[pid(1), large(&[atom("send"), atom("code_server"), atom("x")])]),
            "{From,{send,Name,Msg}}: rex sends Msg on to Name",
        ),
    ];
    // Shapes rex does not act on, and ordinary gen_server traffic: they pass.
    let passed: Vec<(&str, Vec<u8>)> = vec![
        ("an allowed call", gen_call(mfa("call", "erlang", "node", list(&[])))),
        ("an allowed call, large", large(&[atom("$gen_call"), from.clone(), large(&[atom("call"), atom("erlang"), atom("node"), list(&[]), atom("user")])])),
        ("an allowed handle_info call", tuple(&[pid(1), mfa("call", "erlang", "node", list(&[]))])),
        ("a gen_server call of another shape", gen_call(tuple(&[atom("call"), atom("foo")]))),
        ("a send request to a gen_server", gen_call(tuple(&[atom("send"), atom("a"), atom("b")]))),
        ("a call request to a gen_server", gen_call(tuple(&[atom("call"), atom("a"), atom("b"), atom("c")]))),
        ("a plain call", gen_call(atom("get"))),
        ("a stop cast", gen_cast(atom("stop"))),
        ("a stop message", tuple(&[pid(1), atom("stop")])),
        ("a stop request of another shape", gen_call(tuple(&[atom("stop"), atom("normal")]))),
        ("a cast request in a call", gen_call(mfa("cast", "os", "cmd", os_cmd()))),
        ("a call request in a cast", gen_cast(mfa("call", "os", "cmd", os_cmd()))),
        ("a six-tuple call", tuple(&[pid(1), tuple(&[atom("call"), atom("os"), atom("cmd"), os_cmd(), atom("user"), atom("x")])])),
        ("a four-tuple send", tuple(&[pid(1), tuple(&[atom("send"), atom("a"), atom("b"), atom("c")])])),
        ("a reply", tuple(&[reference(&atom("a@h")), tuple(&[atom("ok"), int(1)])])),
        ("rex's features question", tuple(&[pid(1), atom("features_request")])),
        ("a three-tuple", tuple(&[atom("data"), pid(1), mfa("call", "os", "cmd", os_cmd())])),
        ("not a tuple", list(&[mfa("call", "os", "cmd", os_cmd())])),
    ];
    for (name, p) in [
        ("rpc_allow", policy("[policy.p.control]\nrpc_allow = [\"erlang:node/0\"]\n")),
        ("untrusted", policy("preset = \"untrusted\"\n[policy.p.control]\nreg_send_allow = [\"*\"]\nrpc_allow = [\"erlang:node/0\"]\n")),
    ] {
        for (op, ctl) in message_ops() {
            // To another registered name the message cannot reach rex: rex's shapes pass.
            let named = op.starts_with("REG_SEND");
            for (what, payload, subject) in &refused {
                let (j, _) = run(&p, &data(&header(&[]), &ctl, Some(payload)));
                if named {
                    assert_eq!(j, Judgement::pass(), "{name}: {what} by {op} to some_server");
                    continue;
                }
                assert_eq!(j.verdict, Verdict::Drop, "{name}: {what} by {op}");
                assert_eq!((j.findings[0].rule, j.findings[0].subject.as_str()), ("rpc_allow", *subject), "{name}: {what} by {op}");
            }
            for (what, payload) in &passed {
                assert_eq!(run(&p, &data(&header(&[]), &ctl, Some(payload))).0, Judgement::pass(), "{name}: {what} by {op}");
            }
        }
    }
    // The atom cache: `call` and `os` as references.
    let p = policy("[policy.p.control]\nrpc_allow = [\"erlang:node/0\"]\n");
    let payload = gen_call(tuple(&[cref(0), cref(1), atom("cmd"), os_cmd(), atom("user")]));
    let (j, _) = run(&p, &data(&header(&[(7, Some("call")), (8, Some("os"))]), &send(), Some(&payload)));
    assert_eq!((j.verdict, j.findings[0].subject.as_str()), (Verdict::Drop, "os:cmd/1"));
    // Without rpc_allow (and without the preset), rpc is open, by pid or by name.
    for (what, payload, _) in &refused {
        assert_eq!(run(&policy(""), &data(&header(&[]), &send(), Some(payload))).0, Judgement::pass(), "{what}");
        assert_eq!(run(&policy("[policy.p.control]\nspawn_allow = []\n"), &payload_to("rex", payload)).0, Judgement::pass(), "{what}");
    }
    // To rex by name, every shape above is judged the same way; anything else is refused.
    for (what, payload, subject) in &refused {
        let (j, _) = run(&p, &payload_to("rex", payload));
        assert_eq!((j.verdict, j.findings[0].subject.as_str()), (Verdict::Drop, *subject), "{what} to rex");
    }
    for (what, payload) in &passed[..3] {
        assert_eq!(run(&p, &payload_to("rex", payload)).0, Judgement::pass(), "{what} to rex");
    }
    for (what, payload) in &passed[3..] {
        let expect = if *what == "rex's features question" { Verdict::Pass } else { Verdict::Drop };
        assert_eq!(run(&p, &payload_to("rex", payload)).0.verdict, expect, "{what} to rex");
    }
}

/// The review's reproductions, one bypass each (each passed before the fix).
#[test]
fn a_large_tuple_system_message_to_a_pid_is_refused() {
    let p = policy("preset = \"untrusted\"\n[policy.p.control]\nreg_send_allow = [\"*\"]\n");
    let sys = large(&[atom("system"), tuple(&[pid(1), reference(&atom("a@h"))]), atom("get_state")]);
    let (j, _) = run(&p, &data(&header(&[]), &send(), Some(&sys)));
    assert_eq!((j.verdict, j.findings[0].rule), (Verdict::Drop, "untrusted:system_message"));
}

#[test]
fn a_large_tuple_io_request_to_a_pid_is_refused() {
    let p = policy("preset = \"untrusted\"\n[policy.p.control]\nreg_send_allow = [\"*\"]\n");
    let io = large(&[atom("io_request"), pid(1), atom("r"), tuple(&[atom("put_chars"), atom("unicode"), bin(b"x")])]);
    let (j, _) = run(&p, &data(&header(&[]), &send(), Some(&io)));
    assert_eq!((j.verdict, j.findings[0].rule), (Verdict::Drop, "untrusted:io_request"));
}

#[test]
fn a_rex_call_sent_to_rexs_pid_is_judged_by_rpc_allow() {
    let p = policy("preset = \"untrusted\"\n[policy.p.control]\nreg_send_allow = [\"*\"]\n");
    let from = tuple(&[pid(1), reference(&atom("a@h"))]);
    let call = tuple(&[atom("$gen_call"), from, tuple(&[atom("call"), atom("os"), atom("cmd"), list(&[bin(b"id")]), atom("user")])]);
    let (j, _) = run(&p, &data(&header(&[]), &send(), Some(&call)));
    assert_eq!((j.verdict, j.findings[0].rule, j.findings[0].subject.as_str()), (Verdict::Drop, "rpc_allow", "os:cmd/1"));
    // By name, as before.
    assert_eq!(run(&p, &payload_to("rex", &call)).0.verdict, Verdict::Drop);
}

/// `{From, {call, M, F, Args, GL}}` (rex's handle_info) with every kind of `From`: the end of
/// `From` is read directly for scalars and short tuples or lists of them, walked otherwise, and
/// either way the request after it is found.
#[test]
fn a_rex_request_after_any_kind_of_from_is_found() {
    let p = policy("[policy.p.control]\nrpc_allow = [\"erlang:node/0\"]\n");
    let req = tuple(&[atom("call"), atom("os"), atom("cmd"), list(&[string("id")]), atom("user")]);
    let froms: Vec<(&str, Vec<u8>)> = vec![
        ("small integer", int(7)),
        ("integer", int(1 << 20)),
        ("negative integer", int(-5)),
        ("big integer", vec![110, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("float", vec![70, 64, 9, 33, 251, 84, 68, 45, 24]),
        ("[]", list(&[])),
        ("pid", pid(3)),
        ("pid, node through the cache", pid_with(&cref(0), 3)),
        ("reference", reference(&atom("a@h"))),
        ("reference, node through the cache", reference(&cref(0))),
        ("binary", bin(b"abc")),
        ("atom through the cache", cref(0)),
        ("atom, ATOM_EXT", atom_as(100, "x")),
        ("{Pid, Ref}", tuple(&[pid(1), reference(&atom("a@h"))])),
        ("{Pid, [alias | Ref]}", tuple(&[pid(1), {
            let mut v = vec![108, 0, 0, 0, 1];
            v.extend_from_slice(&atom("alias"));
            v.extend_from_slice(&reference(&atom("a@h")));
            v
        }])),
        ("string", string("from")),
        ("a long tuple", tuple(&(0..9).map(int).collect::<Vec<_>>())),
        ("a nested term", tuple(&[list(&[tuple(&[pid(1), map(&[(atom("k"), bin(b"v"))])])]), large(&[int(1)])])),
        ("a map", map(&[(int(1), pid(2))])),
        ("a fun", export("erlang", "node", 0)),
    ];
    for (what, from) in &froms {
        let frame = data(&header(&[(5, Some("a@h"))]), &send(), Some(&tuple(&[from.clone(), req.clone()])));
        let (j, _) = run(&p, &frame);
        assert_eq!((j.verdict, j.findings[0].subject.as_str()), (Verdict::Drop, "os:cmd/1"), "From: {what}");
        let frame = data(&header(&[(5, Some("a@h"))]), &send(), Some(&tuple(&[atom("$gen_call"), from.clone(), req.clone()])));
        assert_eq!(run(&p, &frame).0.verdict, Verdict::Drop, "$gen_call From: {what}");
    }
}

/// ALTACT_SIG_SEND (op 37, OTP 28): `{37, Flags, From, To}` or `{37, Flags, From, To, Token}`.
fn altact(flags: Vec<u8>, to: Vec<u8>) -> Vec<u8> {
    tuple(&[int(37), flags, pid(1), to])
}

#[test]
fn altact_sig_send_to_a_name_is_judged_as_a_reg_send_and_its_message_as_any_message() {
    const PRIO: i64 = 1;
    const ALIAS: i64 = 4;
    const NAME: i64 = 8;
    const EXIT: i64 = 16;
    let p = policy("preset = \"untrusted\"\n[policy.p.control]\nreg_send_allow = [\"dg_*\"]\nrpc_allow = [\"erlang:node/0\"]\n");
    let from = tuple(&[pid(1), reference(&atom("a@h"))]);
    let rex_call = |m: &str, f: &str| tuple(&[atom("$gen_call"), from.clone(), tuple(&[atom("call"), atom(m), atom(f), list(&[]), atom("user")])]);
    let system = large(&[atom("system"), from.clone(), atom("get_state")]);
    let judge = |ctl: Vec<u8>, payload: &[u8]| run(&p, &data(&header(&[]), &ctl, Some(payload))).0;
    let rule = |j: Judgement| (j.verdict, j.findings.first().map(|f| f.rule));
    // To a registered name: the name rules of a reg_send.
    assert_eq!(rule(judge(altact(int(NAME), atom("rex")), &rex_call("os", "cmd"))), (Verdict::Drop, Some("rpc_allow")));
    assert_eq!(judge(altact(int(NAME), atom("rex")), &rex_call("erlang", "node")), Judgement::pass());
    assert_eq!(judge(altact(int(NAME), atom("rex")), &tuple(&[pid(1), atom("features_request")])), Judgement::pass());
    assert_eq!(rule(judge(altact(int(NAME), atom("rex")), &atom("junk"))), (Verdict::Drop, Some("rpc_allow")));
    assert_eq!(rule(judge(altact(int(NAME | PRIO), atom("init")), &tuple(&[atom("stop"), atom("stop")]))), (Verdict::Drop, Some("untrusted:registered_name")));
    assert_eq!(rule(judge(altact(int(NAME), atom("other")), &atom("x"))), (Verdict::Drop, Some("reg_send_allow")));
    assert_eq!(judge(altact(int(NAME), atom("dg_sink")), &atom("x")), Judgement::pass());
    // rex's shapes to another name: not rex's (a gen_server's own stop call, say); to a pid,
    // they may be.
    let stop = tuple(&[atom("$gen_call"), from.clone(), atom("stop")]);
    assert_eq!(judge(altact(int(NAME), atom("dg_sink")), &stop), Judgement::pass());
    assert_eq!(judge(altact(int(NAME), atom("dg_sink")), &rex_call("os", "cmd")), Judgement::pass());
    assert_eq!(rule(judge(altact(int(0), pid(9)), &stop)), (Verdict::Drop, Some("rpc_allow")));
    let ping = tuple(&[atom("$gen_call"), from.clone(), tuple(&[atom("is_auth"), atom("a@h")])]);
    assert_eq!(judge(altact(int(NAME), atom("net_kernel")), &ping), Judgement::pass());
    // An exit signal to a name, too (`exit(rex, kill)` stops the node).
    assert_eq!(rule(judge(altact(int(NAME | EXIT), atom("rex")), &atom("kill"))), (Verdict::Drop, Some("rpc_allow")));
    assert_eq!(rule(judge(altact(int(NAME | EXIT), atom("init")), &atom("kill"))), (Verdict::Drop, Some("untrusted:registered_name")));
    // The message's shape, to a name, an alias or a pid.
    assert_eq!(rule(judge(altact(int(NAME), atom("dg_sink")), &system)), (Verdict::Drop, Some("untrusted:system_message")));
    assert_eq!(rule(judge(altact(int(ALIAS | PRIO), reference(&atom("b@h"))), &system)), (Verdict::Drop, Some("untrusted:system_message")));
    assert_eq!(rule(judge(altact(int(0), pid(9)), &rex_call("os", "cmd"))), (Verdict::Drop, Some("rpc_allow")));
    let with_token = tuple(&[int(37), int(2), pid(1), pid(9), atom("token")]);
    assert_eq!(rule(judge(with_token, &system)), (Verdict::Drop, Some("untrusted:system_message")));
    assert_eq!(judge(altact(int(ALIAS), reference(&atom("b@h"))), &tuple(&[reference(&atom("b@h")), atom("ok")])), Judgement::pass());
    // An exit signal's reason is no message: not judged by shape.
    assert_eq!(judge(altact(int(EXIT), pid(9)), &system), Judgement::pass());
    // Flags as a bignum: erts reads their low byte (here NAME), and so does distgate.
    let big_name = vec![110, 9, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1];
    assert_eq!(rule(judge(altact(big_name, atom("init")), &atom("x"))), (Verdict::Drop, Some("untrusted:registered_name")));
    let big_exit = vec![110, 1, 0, 16];
    assert_eq!(judge(altact(big_exit, pid(9)), &system), Judgement::pass());
    // Flags erts refuses (negative): judged as a message.
    assert_eq!(rule(judge(altact(int(-1), pid(9)), &system)), (Verdict::Drop, Some("untrusted:system_message")));
    // Without the preset or an rpc_allow, nothing here is looked at.
    assert_eq!(run(&policy(""), &data(&header(&[]), &altact(int(NAME), atom("rex")), Some(&rex_call("os", "cmd")))).0, Judgement::pass());
}

// ---- documented behaviour: old-style funs, rewrite_fallback = close, suppressed audit lines ----

/// An old-style FUN_EXT (pre-R8 encoding): `117 NumFree Pid Module Index Uniq Free…`.
fn old_fun(module: &str, index: i64, uniq: i64, free: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![117];
    v.extend_from_slice(&(free.len() as u32).to_be_bytes());
    v.extend_from_slice(&pid(1));
    v.extend_from_slice(&atom(module));
    v.extend_from_slice(&int(index));
    v.extend_from_slice(&int(uniq));
    free.iter().for_each(|f| v.extend_from_slice(f));
    v
}

#[test]
fn old_style_funs_get_the_unknown_fun_action_and_are_never_rewritten() {
    let msg = payload_msg(&tuple(&[atom("old"), old_fun("m", 3, 123456, &[int(1)])]));
    // Pass by default, whatever the registries say (an old fun names no module version).
    assert_eq!(run(&policy(""), &msg).0, Judgement::pass());
    // replace: the marker {distgate_blocked_fun, Module, OldIndex, OldUniq}, integers.
    let (j, edited) = run(&policy("unknown_fun = \"replace\"\n"), &msg);
    assert_eq!((j.findings[0].rule, j.findings[0].action, j.findings[0].subject.as_str()), ("unknown_fun", "replace", "#Fun<m.3.123456>"));
    assert_eq!(edited.unwrap(), "{6,#Pid<'a@h'.1.0.7>,'',sink} {old,{distgate_blocked_fun,m,3,123456}}");
    // drop, close, and a module rule.
    assert_eq!(run(&policy("unknown_fun = \"drop\"\n"), &msg).0.verdict, Verdict::Drop);
    assert!(matches!(run(&policy("unknown_fun = \"close\"\n"), &msg).0.verdict, Verdict::Close { .. }));
    let p = policy("unknown_fun = \"close\"\n[policy.p.modules]\n\"m\" = { unknown_fun = \"pass\" }\n");
    assert_eq!(run(&p, &msg).0, Judgement::pass());
    // rewrite: never possible, so rewrite_fallback decides (replace by default, or drop).
    let (j, edited) = run(&policy("unknown_fun = \"rewrite\"\n"), &msg);
    assert_eq!((j.findings[0].rule, j.findings[0].action), ("rewrite_fallback", "replace"));
    assert_eq!(j.findings[0].detail.as_deref(), Some("an old-style fun names no lambda"));
    assert!(edited.unwrap().ends_with("{old,{distgate_blocked_fun,m,3,123456}}"));
    let (j, _) = run(&policy("unknown_fun = \"rewrite\"\nrewrite_fallback = \"drop\"\n"), &msg);
    assert_eq!((j.verdict, j.findings[0].action), (Verdict::Drop, "drop"));
}

#[test]
fn rewrite_fallback_close_closes_the_link_naming_the_fun() {
    let anon = new_fun(&atom("m"), V1, 1, 1, &[]);
    let p = policy("unknown_fun = \"rewrite\"\nrewrite_fallback = \"close\"\n");
    let (j, _) = run(&p, &payload_msg(&tuple(&[atom("x"), anon])));
    assert_eq!((j.findings[0].rule, j.findings[0].action), ("rewrite_fallback", "close"));
    let Verdict::Close { reason, reply: None } = &j.verdict else { panic!("{j:?}") };
    assert!(reason.contains("policy p: rewrite_fallback: #Fun<m.1."), "{reason}");
    // A fun that can be rewritten still is.
    let (j, _) = run(&p, &payload_msg(&local_f()));
    assert!(matches!(j.verdict, Verdict::Edits(_)), "{j:?}");
    // On the link path: the direction closes the link.
    let (mut d, _) = direction(Some(p), None);
    let (fwd, _, closed) = feed(&mut d, &mut Decoder::default(), &[payload_msg(&new_fun(&atom("m"), V1, 1, 1, &[]))]);
    assert!(fwd.is_empty());
    assert!(closed.is_some_and(|r| r.contains("rewrite_fallback")));
}

#[test]
fn audit_lines_over_the_budget_are_counted_as_suppressed() {
    let stats = Arc::new(Stats::default());
    let p = |per_second: u32| Compiled::parse("p", &format!("audit_per_second = {per_second}\nunknown_fun = \"replace\"\n")).unwrap_or_else(|e| panic!("{e}"));
    // One line a second: of five decisions in the same second (two in one message), one is
    // logged and four suppressed; all five are counted.
    // (One instant for every frame: the budget is per second of the clock.)
    let frames =
        vec![payload_msg(&local_f()), payload_msg(&local_f()), payload_msg(&tuple(&[local_f(), local_f()])), payload_msg(&local_f())];
    let judge_all = |per_second: u32, stats: &Arc<Stats>| {
        let (mut d, _) = direction(Some(p(per_second)), Some(stats.clone()));
        let (mut dec, now) = (Decoder::default(), Instant::now());
        for f in &frames {
            assert!(matches!(d.frame(&mut dec, f, now).unwrap(), FrameAct::Replace { .. }));
        }
    };
    judge_all(1, &stats);
    assert_eq!(stats.get("policy:replace"), 5);
    assert_eq!(stats.get("policy:audit_suppressed"), 4);
    // audit_per_second = 0: no lines at all, so nothing counts as suppressed.
    let stats = Arc::new(Stats::default());
    judge_all(0, &stats);
    assert_eq!(stats.get("policy:replace"), 5);
    assert_eq!(stats.get("policy:audit_suppressed"), 0);
}
