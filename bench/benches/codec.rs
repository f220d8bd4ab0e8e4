//! The codec against itself and against eetf on the same bytes.
//!
//! - `walk/*`: distgate's walker over every term of a corpus (validate + measure, no copies);
//! - `funs/*`: the walk plus collecting fun sites (what policy runs per message);
//! - `eetf/*`: eetf decoding the same terms into owned values (the comparison the issue asks
//!   for: an allocating decoder is what a proxy without an in-place walker would use);
//! - `stream/sample`: the full per-direction decoder (frames, atom cache, fragments, control)
//!   over the bundled capture of real OTP traffic.
//!
//! Throughput is reported in bytes of input per second.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use distgate_bench::load_corpus;
use distgate_codec::frame::Frames;
use distgate_codec::message::{Decoded, Decoder};
use distgate_codec::term::{Skip, Walker};
use distgate_codec::fun;

fn corpora(c: &mut Criterion) {
    for name in ["term-heavy", "binary-heavy"] {
        let (buf, ranges) = load_corpus(&format!("{name}.etf"));
        let bytes: usize = ranges.iter().map(|r| r.len()).sum();
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut w = Walker::default();
        g.bench_function("walk", |b| {
            b.iter(|| {
                for r in &ranges {
                    // Skip the version byte: the walker starts at the term.
                    let end = w.walk(&buf[r.start + 1..r.end], 0, &mut Skip).unwrap();
                    black_box(end);
                }
            })
        });
        let mut funs = Vec::new();
        g.bench_function("walk+funs", |b| {
            b.iter(|| {
                for r in &ranges {
                    funs.clear();
                    let t = &buf[r.start + 1..r.end];
                    fun::collect(&mut w, t, 0..t.len(), fun::Part::Payload, &mut funs).unwrap();
                    black_box(funs.len());
                }
            })
        });
        g.bench_function("eetf-decode", |b| {
            b.iter(|| {
                for r in &ranges {
                    let t = eetf::Term::decode(&buf[r.clone()]).unwrap();
                    black_box(t);
                }
            })
        });
        g.finish();
    }
}

fn stream(c: &mut Criterion) {
    let sample = include_bytes!("../../proxy/samples/rich-a2b.dist");
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Bytes(sample.len() as u64));
    g.bench_function("sample-decode", |b| {
        b.iter(|| {
            let mut d = Decoder::default();
            for item in Frames::new(sample, 128 << 20) {
                if let Some(data) = item.unwrap().data {
                    if let Decoded::Message(m) = d.decode(data).unwrap() {
                        black_box(m.control_range.end);
                    }
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, corpora, stream);
criterion_main!(benches);
