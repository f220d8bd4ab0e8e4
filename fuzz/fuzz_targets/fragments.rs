//! Fragment sequences: the input is cut into frames by a 2-byte length each, and each frame is
//! prefixed with `131 69`/`131 70` and a small sequence id so interleavings are reached often.
#![no_main]
use distgate_codec::message::{Decoder, FragLimits};
use distgate_codec::term::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cap = 64 * 1024;
    let mut d = Decoder::new(Limits::default(), FragLimits { max_bytes: cap, max_sequences: 4 });
    let mut pos = 0;
    let mut frame = Vec::new();
    while pos + 4 <= data.len() {
        let kind = data[pos];
        let seq = (data[pos + 1] & 3) as u64;
        let frag = (data[pos + 2] & 7) as u64;
        let len = (data[pos + 3] as usize).min(data.len() - pos - 4);
        let chunk = &data[pos + 4..pos + 4 + len];
        pos += 4 + len;
        frame.clear();
        frame.extend_from_slice(&[131, if kind & 1 == 0 { 69 } else { 70 }]);
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.extend_from_slice(&frag.to_be_bytes());
        frame.extend_from_slice(chunk);
        let _ = d.decode(&frame);
        assert!(d.buffered() <= cap);
        assert!(d.in_flight() <= 4);
    }
});
