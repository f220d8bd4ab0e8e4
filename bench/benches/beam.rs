//! The BEAM reader over every `.beam` of the installed OTP (what a registry scan of the OTP lib
//! dir costs in CPU, files already in memory): parse only, parse + the name of every lambda and
//! export (atom lookups, as the registry makes), and parse + module MD5.
//!
//! The OTP root comes from `DISTGATE_OTP_ROOT`, else `erl`'s `code:root_dir()`, else
//! `/usr/lib/erlang`. The end-to-end number (walk, read, parse, MD5, one thread per core) is
//! `time distgate registry md5 /usr/lib/erlang`; see `bench/RESULTS.md`.

use std::path::{Path, PathBuf};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use distgate_codec::beam::{self, Beam};

fn otp_root() -> PathBuf {
    if let Some(r) = std::env::var_os("DISTGATE_OTP_ROOT") {
        return r.into();
    }
    let from_erl = std::process::Command::new("erl")
        .args(["-noshell", "-eval", "io:format(\"~s\", [code:root_dir()]), halt()."])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    PathBuf::from(from_erl.unwrap_or_else(|| "/usr/lib/erlang".into()))
}

/// Every .beam below `dir` (iterative walk).
fn beams(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "beam") {
                out.push(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
            }
        }
    }
    out
}

fn otp(c: &mut Criterion) {
    let root = otp_root();
    let files = beams(&root);
    assert!(!files.is_empty(), "no .beam files under {}", root.display());
    let bytes: usize = files.iter().map(|f| f.len()).sum();
    let mut g = c.benchmark_group(format!("beam-otp-{}-files", files.len()));
    g.sample_size(20);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("parse", |b| {
        let mut scratch = Vec::new();
        b.iter(|| {
            let mut lambdas = 0;
            for f in &files {
                let img = beam::image(black_box(f), &mut scratch, beam::DEFAULT_MAX_IMAGE).expect("OTP beam");
                let m = Beam::parse(img).expect("OTP beam");
                lambdas += m.lambdas().len() + m.exports().len();
            }
            lambdas
        })
    });
    // What the registry takes of each version besides the MD5: every lambda's and export's name.
    g.bench_function("parse+names", |b| {
        let mut scratch = Vec::new();
        b.iter(|| {
            let mut chars = 0;
            for f in &files {
                let img = beam::image(black_box(f), &mut scratch, beam::DEFAULT_MAX_IMAGE).expect("OTP beam");
                let m = Beam::parse(img).expect("OTP beam");
                let names = m.lambdas().map(|l| l.function).chain(m.exports().map(|e| e.function));
                chars += names.map(|i| m.atom(i).map_or(0, str::len)).sum::<usize>();
            }
            chars
        })
    });
    g.bench_function("parse+md5", |b| {
        let mut scratch = Vec::new();
        b.iter(|| {
            let mut x = 0u8;
            for f in &files {
                let img = beam::image(black_box(f), &mut scratch, beam::DEFAULT_MAX_IMAGE).expect("OTP beam");
                x ^= Beam::parse(img).expect("OTP beam").md5()[0];
            }
            x
        })
    });
    g.finish();
}

criterion_group!(benches, otp);
criterion_main!(benches);
