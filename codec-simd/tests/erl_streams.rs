//! Real streams: traffic between two real nodes, captured by a relay, decoded frame by frame.
//! Every byte must be accounted for, every atom-cache ref resolved, every fragment reassembled.

use distgate_codec::control::{op, op_name, Control};
use distgate_codec::frame::Frames;
use distgate_codec::fun::{self, FunKind};
use distgate_codec::message::{Decoded, Decoder, Framing, Message};
use distgate_codec::term::{Atom, Term, Visitor, Walker};
use distgate_testkit::{run_scenario, RICH_SCENARIO};
use std::collections::BTreeSet;

#[derive(Default)]
struct Stats {
    frames: usize,
    ticks: usize,
    messages: usize,
    fragments: usize,
    fragmented_messages: Vec<(u64, usize)>,
    refs_resolved: usize,
    new_entries: usize,
    ops: BTreeSet<u8>,
    new_funs: usize,
    export_funs: usize,
    largest_binary: usize,
    spawn_mfas: Vec<String>,
}

/// Resolves every ATOM_CACHE_REF through the message's refs, failing on any it cannot.
struct CheckRefs<'m, 'a> {
    msg: &'m Message<'a>,
    resolved: usize,
    largest_binary: usize,
}
impl<'a> Visitor<'a> for CheckRefs<'_, 'a> {
    fn enter(&mut self, at: usize, t: &Term<'a>) -> distgate_codec::Result<()> {
        let mut check = |a: &Atom| {
            if let Atom::CacheRef(i) = a {
                assert!(self.msg.refs.resolve(*i).is_some(), "ref {i} at {at} unresolved");
                self.resolved += 1;
            }
        };
        match t {
            Term::Atom(a) => check(a),
            Term::Pid(p) => check(&p.node),
            Term::Ref(r) => check(&r.node),
            Term::Port(p) => check(&p.node),
            Term::Export(e) => {
                check(&e.module);
                check(&e.function)
            }
            Term::NewFun(f) => {
                check(&f.module);
                check(&f.pid.node)
            }
            Term::Binary(b) => self.largest_binary = self.largest_binary.max(b.len()),
            _ => {}
        }
        Ok(())
    }
}

fn decode_direction(bytes: &[u8], st: &mut Stats) {
    let mut dec = Decoder::default();
    let mut w = Walker::default();
    let mut consumed = 0;
    for item in Frames::new(bytes, 128 << 20) {
        let item = item.expect("frame boundaries");
        st.frames += 1;
        consumed = item.offset + 4 + item.data.map_or(0, |d| d.len());
        let Some(data) = item.data else {
            st.ticks += 1;
            continue;
        };
        match dec.decode(data).unwrap_or_else(|e| panic!("frame at stream byte {}: {e}", item.offset)) {
            Decoded::Tick => st.ticks += 1,
            Decoded::Fragment { .. } => st.fragments += 1,
            Decoded::Streamed { .. } => panic!("streaming is off: nothing is streamed"),
            Decoded::Message(m) => {
                st.messages += 1;
                assert_eq!(m.op, m.control.op(), "the op read while decoding is the variant's");
                st.ops.insert(m.op);
                if let Some(t) = m.refs.table() {
                    st.new_entries += (0..t.nrefs).filter(|&i| t.is_new(i as u8)).count();
                }
                if let Framing::Fragmented { fragments, .. } = m.framing {
                    if fragments > 1 {
                        st.fragments += 1;
                        st.fragmented_messages.push((fragments, m.bytes.len()));
                    }
                }
                // The control and payload fill the message exactly (the decoder checks the
                // payload ends at the last byte; the control must end where the payload starts).
                let end = m.payload.as_ref().map_or(m.bytes.len(), |p| p.end);
                assert_eq!(end, m.bytes.len());
                let mut v = CheckRefs { msg: &m, resolved: 0, largest_binary: 0 };
                w.set_cache_refs(m.refs.table().map(|t| t.nrefs));
                w.walk(m.bytes, m.control_range.start, &mut v).unwrap();
                if let Some(p) = &m.payload {
                    w.walk(m.bytes, p.start, &mut v).unwrap();
                }
                st.refs_resolved += v.resolved;
                st.largest_binary = st.largest_binary.max(v.largest_binary);
                if let Control::SpawnRequest { module, function, .. } = m.control {
                    let name = |a: Atom| match a {
                        Atom::CacheRef(i) => m.refs.resolve(i).unwrap_or("?").to_string(),
                        other => String::from_utf8_lossy(other.bytes().unwrap_or(b"?")).into_owned(),
                    };
                    st.spawn_mfas.push(format!("{}:{}", name(module), name(function)));
                }
                let mut funs = Vec::new();
                fun::message_funs(&mut w, &m, &mut funs).unwrap();
                for f in &funs {
                    match f.kind {
                        FunKind::New(_) => st.new_funs += 1,
                        FunKind::Export(_) => st.export_funs += 1,
                        FunKind::Old(_) => {}
                    }
                }
            }
        }
    }
    assert_eq!(consumed, bytes.len(), "every byte of the stream belongs to a frame");
    assert_eq!(dec.buffered(), 0, "no fragment left half-assembled");
    assert_eq!(dec.in_flight(), 0);
}

#[test]
fn rich_traffic_between_real_nodes_decodes_completely() {
    let run = run_scenario(RICH_SCENARIO);
    let cap = &run.capture;
    assert!(!cap.a_to_b.is_empty() && !cap.b_to_a.is_empty(), "nothing captured");

    let mut a2b = Stats::default();
    decode_direction(&cap.a_to_b, &mut a2b);
    let mut b2a = Stats::default();
    decode_direction(&cap.b_to_a, &mut b2a);
    let names = |s: &Stats| s.ops.iter().map(|&o| op_name(o)).collect::<Vec<_>>().join(" ");
    eprintln!(
        "a→b: {} frames, {} messages, ops [{}], {} refs resolved, {} new entries, {} funs + {} export funs, fragmented {:?}, spawns {:?}",
        a2b.frames, a2b.messages, names(&a2b), a2b.refs_resolved, a2b.new_entries, a2b.new_funs,
        a2b.export_funs, a2b.fragmented_messages, a2b.spawn_mfas
    );
    eprintln!("b→a: {} frames, {} messages, ops [{}]", b2a.frames, b2a.messages, names(&b2a));

    // The atom cache was really exercised: entries defined, and refs used far more often.
    assert!(a2b.new_entries >= 300, "only {} new cache entries", a2b.new_entries);
    assert!(a2b.refs_resolved > a2b.new_entries, "refs were not reused");
    // The 1 MiB binary arrived in 64 KiB fragments and was reassembled whole.
    assert!(a2b.fragmented_messages.iter().any(|&(n, len)| n >= 16 && len >= 1 << 20), "{:?}", a2b.fragmented_messages);
    assert!(a2b.largest_binary >= 1 << 20);
    for o in [op::REG_SEND, op::SPAWN_REQUEST, op::MONITOR_P, op::DEMONITOR_P, op::LINK, op::PAYLOAD_EXIT2, op::UNLINK_ID] {
        assert!(a2b.ops.contains(&o), "no {} from A: {}", op_name(o), names(&a2b));
    }
    assert!(b2a.ops.contains(&op::SPAWN_REPLY), "no SPAWN_REPLY from B: {}", names(&b2a));
    assert!(a2b.spawn_mfas.iter().any(|m| m == "erpc:execute_call"), "{:?}", a2b.spawn_mfas);
    assert!(a2b.new_funs >= 3 && a2b.export_funs >= 1, "funs: {} local, {} export", a2b.new_funs, a2b.export_funs);
}

/// Regenerates the bundled sample capture used by `distgate` with no arguments and by the
/// stream benchmark: `cargo test -p distgate-codec --test erl_streams -- --ignored`.
#[test]
#[ignore]
fn regenerate_bundled_sample() {
    let run = run_scenario(RICH_SCENARIO);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../proxy/samples/rich-a2b.dist");
    std::fs::write(path, &run.capture.a_to_b).unwrap();
    eprintln!("wrote {} bytes to {path}", run.capture.a_to_b.len());
}
