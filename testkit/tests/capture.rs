//! testkit::relay and testkit::capture against real nodes.

use distgate_testkit::capture::{run_scenario, RICH_SCENARIO};
use distgate_testkit::relay::{split_frames, Capture};

/// Handshake tags, in order, per direction.
fn tags(messages: &[&[u8]]) -> Vec<u8> {
    messages
        .iter()
        .map(|m| m.first().copied().unwrap_or(0))
        .collect()
}

fn check_common(c: &Capture) {
    let hs_ab = c.handshake_messages_a_to_b().expect("A→B handshake splits");
    let hs_ba = c.handshake_messages_b_to_a().expect("B→A handshake splits");
    assert_eq!(
        tags(&hs_ab),
        b"Nr",
        "A→B handshake: send_name, challenge_reply"
    );
    assert_eq!(
        tags(&hs_ba),
        b"sNa",
        "B→A handshake: status, challenge, challenge_ack"
    );
    assert_eq!(&hs_ba[0][1..], b"ok");

    assert!(!c.a_to_b.is_empty() && !c.b_to_a.is_empty());
    for (dir, bytes) in [("A→B", &c.a_to_b), ("B→A", &c.b_to_a)] {
        let frames = split_frames(bytes).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let data: Vec<_> = frames.iter().filter(|f| !f.is_empty()).collect();
        assert!(!data.is_empty(), "{dir}: only ticks");
        // DIST_HDR_ATOM_CACHE is negotiated between OTP nodes: every message
        // starts 131 68 (normal header) or 131 69/70 (fragments).
        for f in &data {
            assert!(
                f[0] == 131 && matches!(f[1], 68..=70),
                "{dir}: frame starts {:?}",
                &f[..2]
            );
        }
    }
}

#[test]
fn simple_scenario_is_captured() {
    let run = run_scenario("pong = net_adm:ping(B), {dg_sink, B} ! hello, ok");
    assert_eq!(run.result, "ok");
    assert_eq!(run.connections, 1);
    check_common(&run.capture);
}

#[test]
fn rich_scenario_is_captured() {
    let start = std::time::Instant::now();
    let run = run_scenario(RICH_SCENARIO);
    eprintln!(
        "rich scenario: {:?}, A→B {} bytes, B→A {} bytes",
        start.elapsed(),
        run.capture.a_to_b.len(),
        run.capture.b_to_a.len()
    );
    assert!(run.result.contains("sink_count => 11"), "{}", run.result);
    assert_eq!(run.connections, 1);
    let c = &run.capture;
    check_common(c);

    let frames = c.frames_a_to_b().unwrap();
    // The 1 MiB binary went as a fragmented message: a first fragment
    // (131 69) and continuations (131 70), none over 64 KiB + headers.
    let first = frames.iter().filter(|f| f.len() > 1 && f[1] == 69).count();
    let cont = frames.iter().filter(|f| f.len() > 1 && f[1] == 70).count();
    assert!(
        first >= 1 && cont >= 15,
        "fragments: {first} first, {cont} continuations"
    );
    assert!(frames.iter().all(|f| f.len() <= 64 * 1024 + 4096));
    assert!(c.a_to_b.len() > 1 << 20);
    // Atom text of new cache entries travels in the headers.
    let window = b"dg_atom_300";
    assert!(c.a_to_b.windows(window.len()).any(|w| w == window));
}

/// The control message operation of a framed dist message (the first
/// element of the control tuple), skipping the atom-cache header. `None`
/// for ticks and fragment continuations. Test-only and minimal: it trusts
/// OTP's own output.
fn control_op(frame: &[u8]) -> Option<u8> {
    let rest = match frame {
        [131, 68, rest @ ..] => rest,
        [131, 69, rest @ ..] => rest.get(16..)?.strip_prefix(&[68])?, // SeqId, FragId
        _ => return None,
    };
    let (&num_refs, mut rest) = rest.split_first()?;
    if num_refs > 0 {
        let flag_len = num_refs as usize / 2 + 1;
        let flags = rest.get(..flag_len)?;
        rest = &rest[flag_len..];
        let long_atoms = (flags[num_refs as usize / 2] >> (4 * (num_refs as usize % 2))) & 1 == 1;
        for i in 0..num_refs as usize {
            let nibble = (flags[i / 2] >> (4 * (i % 2))) & 0xF;
            rest = rest.get(1..)?; // internal index
            if nibble & 8 != 0 {
                let (len, skip) = if long_atoms {
                    (
                        u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize,
                        2,
                    )
                } else {
                    (*rest.first()? as usize, 1)
                };
                rest = rest.get(skip + len..)?;
            }
        }
    }
    match rest {
        [104, _arity, 97, op, ..] => Some(*op),
        _ => None,
    }
}

#[test]
fn rich_scenario_covers_the_control_messages() {
    let c = run_scenario(RICH_SCENARIO).capture;
    let ops = |frames: Vec<&[u8]>| {
        let mut v: Vec<u8> = frames.iter().filter_map(|f| control_op(f)).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let a_ops = ops(c.frames_a_to_b().unwrap());
    let b_ops = ops(c.frames_b_to_a().unwrap());
    eprintln!("A→B ops {a_ops:?}, B→A ops {b_ops:?}");
    // A→B: LINK, REG_SEND, EXIT2 (as PAYLOAD_EXIT2), MONITOR_P, DEMONITOR_P,
    // SEND_SENDER, SPAWN_REQUEST, UNLINK_ID.
    for op in [1, 6, 19, 20, 22, 26, 29, 35] {
        assert!(a_ops.contains(&op), "A→B lacks op {op}: {a_ops:?}");
    }
    // B→A: SEND_SENDER replies, EXIT over the link (PAYLOAD_EXIT), the
    // firing monitor (PAYLOAD_MONITOR_P_EXIT), SPAWN_REPLY, UNLINK_ID_ACK.
    for op in [22, 24, 28, 31, 36] {
        assert!(b_ops.contains(&op), "B→A lacks op {op}: {b_ops:?}");
    }
}
