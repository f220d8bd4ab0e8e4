//! Streaming (`Decoder::set_streaming`, `Decoder::decode_partial`): messages whose last term is
//! a binary pass frame by frame, and large frames before all their bytes are here, with the
//! same checks and the same atom-cache effects as the whole-message decode.

use distgate_codec::error::{DistErrorKind, ErrorKind};
use distgate_codec::frame::Frames;
use distgate_codec::message::{Decoded, Decoder};

const SAMPLE: &[u8] = include_bytes!("../../proxy/samples/rich-a2b.dist");

fn pid(out: &mut Vec<u8>) {
    out.extend_from_slice(&[88, 119, 3]);
    out.extend_from_slice(b"a@h");
    out.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1]);
}

/// REG_SEND `{6, Pid, '', dst}` (no atom-cache refs) and its payload.
fn control() -> Vec<u8> {
    let mut c = vec![104, 4, 97, 6];
    pid(&mut c);
    c.extend_from_slice(&[119, 0, 119, 3]);
    c.extend_from_slice(b"dst");
    c
}

/// `{ok, <<n bytes>>}`, or `[<<n bytes>>]` when `tail_last` is false (the binary is followed
/// by the list's tail, so it is not the message's last term).
fn payload(n: usize, tail_last: bool) -> Vec<u8> {
    let mut p = if tail_last { vec![104, 2, 119, 2, b'o', b'k'] } else { vec![108, 0, 0, 0, 1] };
    p.push(109);
    p.extend_from_slice(&(n as u32).to_be_bytes());
    p.extend((0..n).map(|i| (i * 7) as u8));
    if !tail_last {
        p.push(106);
    }
    p
}

fn frame(data: &[u8]) -> Vec<u8> {
    let mut f = (data.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(data);
    f
}

/// A message cut into `pieces` fragments of sequence `seq`: frames with their lengths.
fn fragmented(seq: u64, body: &[u8], pieces: usize) -> Vec<Vec<u8>> {
    let step = body.len().div_ceil(pieces);
    body.chunks(step)
        .enumerate()
        .map(|(i, chunk)| {
            let frag_id = (pieces - i) as u64;
            let mut d = vec![131, if i == 0 { 69 } else { 70 }];
            d.extend_from_slice(&seq.to_be_bytes());
            d.extend_from_slice(&frag_id.to_be_bytes());
            d.extend_from_slice(chunk);
            frame(&d)
        })
        .collect()
}

/// The body of a fragmented message: an empty atom-cache header, control, payload.
fn message_body(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(&control());
    b.extend_from_slice(payload);
    b
}

fn streaming() -> Decoder {
    let mut d = Decoder::default();
    d.set_streaming(true);
    d
}

#[test]
fn a_fragmented_message_ending_in_a_binary_streams_without_buffering() {
    let frames = fragmented(9, &message_body(&payload(200_000, true)), 4);
    let mut d = streaming();
    for (i, f) in frames.iter().enumerate() {
        match d.decode(&f[4..]).unwrap() {
            Decoded::Streamed { seq, frag_id, message } => {
                assert_eq!((seq, frag_id), (Some(9), 4 - i as u64));
                // The first fragment shows the message as far as it goes: the control, and
                // the payload up to the binary's body.
                assert_eq!(message.is_some(), i == 0);
                if let Some(m) = message {
                    assert_eq!((m.op, m.control.op()), (6, 6));
                    assert_eq!(m.bytes[m.control_range.clone()], control()[..]);
                    let p = m.payload.expect("payload start");
                    assert_eq!(m.bytes[p.start..p.start + 7], [104, 2, 119, 2, b'o', b'k', 109]);
                    assert_eq!(p.end, m.bytes.len());
                }
            }
            _ => panic!("fragment {i} was not streamed"),
        }
        assert_eq!(d.buffered(), 0, "nothing is held");
        assert_eq!(d.in_flight(), if i < 3 { 1 } else { 0 });
    }
    // The same frames without streaming: held, then one whole message.
    let mut d = Decoder::default();
    let last = frames.len() - 1;
    for (i, f) in frames.iter().enumerate() {
        let got = d.decode(&f[4..]).unwrap();
        assert_eq!(matches!(got, Decoded::Message(_)), i == last);
    }
}

#[test]
fn a_binary_that_is_not_the_last_term_is_held_and_decoded_whole() {
    let frames = fragmented(3, &message_body(&payload(100_000, false)), 3);
    let mut d = streaming();
    for (i, f) in frames.iter().enumerate() {
        let got = d.decode(&f[4..]).unwrap();
        assert!(!matches!(got, Decoded::Streamed { .. }), "fragment {i} must not stream");
        if i == 2 {
            assert!(matches!(got, Decoded::Message(_)));
        } else {
            assert!(d.buffered() > 0);
        }
    }
}

#[test]
fn a_fun_before_the_binary_is_not_streamed() {
    // {Fun, Bin} where Fun is a NEW_FUN_EXT: funs are checked when they close, so the
    // message is held and decoded whole.
    let mut p = vec![104, 2];
    // Tag, Size, Arity 1, Uniq, Index 0, NumFree 0, Module m, OldIndex 0, OldUniq 0, Pid.
    let mut fun = vec![112, 0, 0, 0, 0, 1];
    fun.extend_from_slice(&[0; 16]);
    fun.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 119, 1, b'm', 97, 0, 97, 0]);
    pid(&mut fun);
    // Size counts itself and everything after it.
    let size = fun.len() as u32 - 1;
    fun[1..5].copy_from_slice(&size.to_be_bytes());
    p.extend_from_slice(&fun);
    p.push(109);
    p.extend_from_slice(&(70_000u32).to_be_bytes());
    p.extend(std::iter::repeat_n(1u8, 70_000));
    let frames = fragmented(5, &message_body(&p), 2);
    let mut d = streaming();
    assert!(!matches!(d.decode(&frames[0][4..]).unwrap(), Decoded::Streamed { .. }));
    // Held, and valid: the whole message decodes when its last fragment arrives.
    assert!(d.buffered() > 0);
    assert!(matches!(d.decode(&frames[1][4..]).unwrap(), Decoded::Message(_)));
}

#[test]
fn a_streamed_sequence_checks_its_continuations_against_the_binary() {
    let body = message_body(&payload(30_000, true));
    // One byte too many in the last fragment: the message continues past its last term.
    let mut frames = fragmented(1, &body, 3);
    let last = frames.last_mut().unwrap();
    last.push(0);
    let n = last.len() as u32 - 4;
    last[..4].copy_from_slice(&n.to_be_bytes());
    let mut d = streaming();
    for f in &frames[..2] {
        assert!(matches!(d.decode(&f[4..]).unwrap(), Decoded::Streamed { .. }));
    }
    let e = d.decode(&frames[2][4..]).err().expect("trailing byte refused");
    assert!(matches!(e.kind, ErrorKind::Trailing { extra: 1 }), "{e}");

    // The last fragment one byte short: the binary is cut off.
    let mut short = body.clone();
    short.pop();
    let frames = fragmented(2, &short, 3);
    let mut d = streaming();
    for f in &frames[..2] {
        d.decode(&f[4..]).unwrap();
    }
    let e = d.decode(&frames[2][4..]).err().expect("short message refused");
    assert!(matches!(e.kind, ErrorKind::Truncated { need: 1 }), "{e}");
    assert_eq!(d.in_flight(), 0);

    // Out of order.
    let frames = fragmented(4, &body, 3);
    let mut d = streaming();
    d.decode(&frames[0][4..]).unwrap();
    let e = d.decode(&frames[2][4..]).err().expect("skipped fragment refused");
    assert!(matches!(e.kind, ErrorKind::Dist(DistErrorKind::FragmentOutOfOrder { expected: 2, got: 1, .. })), "{e}");
}

#[test]
fn a_large_frame_is_decided_from_its_first_bytes() {
    // 131 68 with one new atom-cache entry (slot 5 = 'hello'), control REG_SEND, payload
    // {ok, Bin}: decided from the first 100 bytes; the entry is in the cache afterwards.
    let mut data = vec![131, 68, 1, 0x08, 5, 5];
    data.extend_from_slice(b"hello");
    data.extend_from_slice(&control());
    data.extend_from_slice(&payload(100_000, true));
    let mut d = streaming();
    assert!(d.decode_partial(&data[..100], data.len()).unwrap());
    // A later message that refers to the slot through the cache decodes as 'hello'.
    let mut next = vec![131, 68, 1, 0x00, 5];
    let mut c = vec![104, 4, 97, 6];
    pid(&mut c);
    c.extend_from_slice(&[119, 0, 82, 0]); // ToName = cache ref 0 → slot 5
    next.extend_from_slice(&c);
    next.extend_from_slice(&[97, 1]);
    match d.decode(&next).unwrap() {
        Decoded::Message(m) => assert_eq!(m.refs.resolve(0), Some("hello")),
        _ => panic!("expected a message"),
    }

    // Too little to decide (the binary's header is not here yet), or not streaming: wait.
    let mut d = streaming();
    assert!(!d.decode_partial(&data[..20], data.len()).unwrap());
    let mut d = Decoder::default();
    assert!(!d.decode_partial(&data[..100], data.len()).unwrap());
    // A binary that ends before the frame does (something follows it): wait for all of it.
    let mut d = streaming();
    assert!(!d.decode_partial(&data[..100], data.len() + 1).unwrap());
}

#[test]
fn every_prefix_of_a_first_fragment_agrees_with_the_whole() {
    let frames = fragmented(7, &message_body(&payload(50_000, true)), 2);
    let f = &frames[0][4..];
    let mut decided = 0;
    for k in 0..f.len() {
        let mut d = streaming();
        if d.decode_partial(&f[..k], f.len()).unwrap() {
            decided += 1;
            // Decided early: the continuation must then complete it.
            assert!(matches!(d.decode(&frames[1][4..]).unwrap(), Decoded::Streamed { frag_id: 1, .. }), "prefix {k}");
            assert_eq!(d.in_flight(), 0);
        } else {
            // Not decided: the decoder is unchanged, and the whole frame decodes as usual.
            assert_eq!(d.in_flight(), 0, "prefix {k}");
        }
    }
    // Decided from the first byte of the binary's body on, and not before.
    let header = 18 + message_body(&[]).len() + 6 + 5;
    assert_eq!(decided, f.len() - header, "decided at every prefix that reaches the body");
}

/// The real capture (atom cache, a 1 MiB message in 17 fragments, funs, spawns): with
/// streaming on, every whole message decodes to the same op and control bytes, the atom
/// cache stays in step (later messages resolve their refs identically), and the 1 MiB message
/// is streamed rather than held.
#[test]
fn the_real_capture_decodes_the_same_with_streaming() {
    let whole = |streaming: bool| {
        let mut d = Decoder::default();
        d.set_streaming(streaming);
        let mut msgs = Vec::new();
        let mut streamed = 0;
        let mut max_buffered = 0;
        for item in Frames::new(SAMPLE, 128 << 20) {
            let Some(data) = item.unwrap().data else { continue };
            match d.decode(data).unwrap() {
                Decoded::Message(m) => {
                    let refs: Vec<Option<String>> = (0..m.refs.table().map_or(0, |t| t.nrefs))
                        .map(|i| m.refs.resolve(i as u8).map(str::to_owned))
                        .collect();
                    msgs.push((m.control.op(), m.bytes[m.control_range.clone()].to_vec(), refs));
                }
                Decoded::Streamed { .. } => streamed += 1,
                _ => {}
            }
            max_buffered = max_buffered.max(d.buffered());
        }
        (msgs, streamed, max_buffered)
    };
    let (plain, none, held) = whole(false);
    let (streamed_msgs, streamed, held_streaming) = whole(true);
    assert_eq!(none, 0);
    assert!(held > 1 << 20, "the capture's large message is fragmented");
    assert!(streamed >= 17, "the 1 MiB message streams: {streamed} frames");
    assert!(held_streaming < held / 16, "streaming holds little: {held_streaming} vs {held}");
    // Every message but the streamed one, in the same order, decoding the same.
    assert_eq!(streamed_msgs.len() + 1, plain.len());
    let mut it = plain.iter().filter(|m| !streamed_msgs.contains(m));
    let missing = it.next().expect("the streamed message");
    assert!(it.next().is_none(), "exactly one message differs");
    let mut rest = plain.iter().filter(|m| *m != missing);
    assert!(streamed_msgs.iter().all(|m| Some(m) == rest.next()));
}
