//! Any bytes as a post-handshake stream: split into frames, decode each (atom cache,
//! fragments, control), collect funs (during the decode, checked against a separate walk).
//! The same frames also go through a streaming decoder (`set_streaming`), each first offered
//! as a prefix to `decode_partial`. Errors are fine; panics and runaway memory are not.
#![no_main]
use distgate_codec::frame::{split, Split};
use distgate_codec::message::{Decoded, Decoder, FragLimits};
use distgate_codec::term::Limits;
use distgate_codec::fun;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::new(
        Limits { max_depth: 10_000, max_inflated: 1 << 20 },
        FragLimits { max_bytes: 1 << 20, max_sequences: 16 },
    );
    let mut st = Decoder::new(
        Limits { max_depth: 10_000, max_inflated: 1 << 20 },
        FragLimits { max_bytes: 1 << 20, max_sequences: 16 },
    );
    st.set_streaming(true);
    let mut streaming_ok = true;
    let mut pos = 0;
    let mut w = distgate_codec::Walker::default();
    while pos < data.len() {
        match split(&data[pos..], 1 << 20) {
            Ok(Split::Need(_)) | Err(_) => break,
            Ok(s @ Split::Tick) => pos += s.consumed(),
            Ok(s @ Split::Frame { len }) => {
                let frame = &data[pos + 4..pos + 4 + len];
                pos += s.consumed();
                if streaming_ok {
                    // A prefix whose length the input picks (its first byte), then, unless
                    // that decided the frame, the whole frame.
                    let k = (frame.first().copied().unwrap_or(0) as usize * 7) % (len + 1);
                    streaming_ok = match st.decode_partial(&frame[..k], len) {
                        Ok(true) => true,
                        Ok(false) => st.decode(frame).is_ok(),
                        Err(_) => false,
                    };
                    assert!(st.buffered() <= 1 << 20);
                }
                let mut collected = Vec::new();
                match d.decode_collecting(frame, Some(&mut collected)) {
                    Ok(Decoded::Message(m)) => {
                        // The funs the decoder collected in its own walk are exactly the
                        // payload's funs a separate walk finds, their views read again
                        // exactly the views that walk built, and their keys those views'.
                        let mut funs = Vec::new();
                        if fun::message_funs(&mut w, &m, &mut funs).is_ok() {
                            let payload: Vec<_> = funs.iter().filter(|f| f.part == fun::Part::Payload).copied().collect();
                            let spans: Vec<_> = payload.iter().map(fun::FunSite::span).collect();
                            assert_eq!(spans, collected);
                            for (span, site) in collected.iter().zip(&payload) {
                                assert_eq!(span.site_in(&m).as_ref(), Ok(site));
                                assert_eq!(span.key(m.bytes), site.kind.key());
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        assert!(d.buffered() <= 1 << 20);
    }
});
