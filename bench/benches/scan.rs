//! Each fast path in `distgate_codec::scan` against its scalar twin, on the inputs it exists for.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use distgate_bench::load_corpus;
use distgate_codec::scan;
use distgate_codec::term::{Atom, Term, Visitor, Walker};

/// Every atom text in the term-heavy corpus, as the walker sees them.
fn atoms() -> Vec<Vec<u8>> {
    struct A(Vec<Vec<u8>>);
    impl<'a> Visitor<'a> for A {
        fn enter(&mut self, _at: usize, t: &Term<'a>) -> distgate_codec::Result<()> {
            if let Term::Atom(Atom::Utf8(b) | Atom::Latin1(b)) = t {
                self.0.push(b.to_vec());
            }
            Ok(())
        }
    }
    let (buf, ranges) = load_corpus("term-heavy.etf");
    let mut a = A(Vec::new());
    let mut w = Walker::default();
    for r in ranges {
        w.walk(&buf[r.start + 1..r.end], 0, &mut a).unwrap();
    }
    // Add the long and non-ASCII atoms real systems have (module names, Unicode atoms).
    a.0.push(b"Elixir.MyApp.Accounts.UserSessionSupervisor".to_vec());
    a.0.push("données_utilisateur_€".as_bytes().to_vec());
    a.0
}

fn utf8(c: &mut Criterion) {
    let atoms = atoms();
    let bytes: usize = atoms.iter().map(|a| a.len()).sum();
    let mut g = c.benchmark_group("atom-utf8");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("swar+std", |b| b.iter(|| atoms.iter().filter_map(|a| scan::utf8_atom_chars(black_box(a))).sum::<usize>()));
    g.bench_function("scalar", |b| b.iter(|| atoms.iter().filter_map(|a| scan::utf8_atom_chars_scalar(black_box(a))).sum::<usize>()));
    g.finish();
}

fn ascii_window(c: &mut Criterion) {
    // The walker's fast path checks UTF-8 atom text inside the 16-byte window it has already
    // loaded: here each atom's first 16 bytes, zero-padded, as such windows.
    let windows: Vec<u128> = atoms()
        .iter()
        .map(|a| {
            let mut w = [0u8; 16];
            let n = a.len().min(16);
            w[..n].copy_from_slice(&a[..n]);
            u128::from_le_bytes(w)
        })
        .collect();
    let mut g = c.benchmark_group("atom-ascii-window");
    g.throughput(Throughput::Bytes(16 * windows.len() as u64));
    g.bench_function("trailing-zeros", |b| b.iter(|| windows.iter().map(|&w| scan::ascii_run(black_box(w))).sum::<usize>()));
    g.bench_function("scalar", |b| b.iter(|| windows.iter().map(|&w| scan::ascii_run_scalar(black_box(w))).sum::<usize>()));
    g.finish();
}

fn fun_prefilter(c: &mut Criterion) {
    // A message body with no fun tag: the case the prefilter exists for (the whole buffer is
    // scanned). Bytes 112/113/117 are replaced so the scan must read to the end.
    let (buf, _) = load_corpus("binary-heavy.etf");
    let clean: Vec<u8> = buf.iter().map(|&b| if matches!(b, 112 | 113 | 117) { 0 } else { b }).collect();
    let mut g = c.benchmark_group("fun-prefilter");
    g.throughput(Throughput::Bytes(clean.len() as u64));
    g.bench_function("memchr3", |b| b.iter(|| scan::may_contain_fun(black_box(&clean))));
    g.bench_function("scalar", |b| b.iter(|| scan::may_contain_fun_scalar(black_box(&clean))));
    g.finish();
}

criterion_group!(benches, utf8, ascii_window, fun_prefilter);
criterion_main!(benches);
