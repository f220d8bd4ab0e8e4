//! `distgate-bench`: the latency/throughput rig of issue 7. See `bench/RESULTS.md`.
//!
//! ```sh
//! cargo run --release -p distgate-bench --bin distgate-bench -- --install
//! cargo run --release -p distgate-bench --bin distgate-bench -- --quick
//! ```

use clap::Parser;
use distgate_bench::etf::PayloadKind;
use distgate_bench::load::Scenario;
use distgate_bench::rig::{self, Nodes, RigConfig};
use distgate_bench::targets::Target;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "distgate-bench", about = "Side-by-side latency and throughput: direct, distgate, HAProxy, socat; Rust and real OTP nodes")]
struct Args {
    /// Targets, comma-separated: direct, distgate-mio, distgate-uring, distgate-mio+policy, distgate-mio+batch, haproxy, socat.
    #[arg(long, value_delimiter = ',', default_value = "direct,distgate-mio,distgate-uring,distgate-mio+policy,distgate-mio+batch,haproxy,socat")]
    targets: Vec<String>,
    /// Scenarios: ping-pong, flood.
    #[arg(long, value_delimiter = ',', default_value = "ping-pong,flood")]
    scenarios: Vec<String>,
    /// Payloads: 100B, 1KB, 64KiB, 1MiB, fun.
    #[arg(long, value_delimiter = ',', default_value = "100B,1KB,64KiB,1MiB,fun")]
    payloads: Vec<String>,
    /// Connection counts for the Rust → Rust cells (cells with a real node use one).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    conns: Vec<usize>,
    /// Which nodes: rust (Rust → Rust sink), erl (real → real), rust-erl (Rust → real sink).
    #[arg(long, value_delimiter = ',', default_value = "rust,erl,rust-erl")]
    nodes: Vec<String>,
    /// Repetitions (interleaved across targets).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seconds per cell.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Stop each cell after this many messages per connection instead of after --seconds.
    #[arg(long)]
    messages: Option<u64>,
    /// Rust node: pass-through framing, 1 MiB as one frame (default: dist header + fragments).
    #[arg(long)]
    no_fragments: bool,
    /// distgate data-plane threads.
    #[arg(long, default_value_t = 2)]
    distgate_threads: usize,
    /// Install haproxy and socat with apt-get when missing.
    #[arg(long)]
    install: bool,
    /// Short run: 100B, 64KiB and 1MiB; 1 connection; 2 repetitions of 0.5 s.
    #[arg(long)]
    quick: bool,
    /// Output directory (results.json, report.md, latency.svg, throughput.svg).
    #[arg(long, default_value = "target/distgate-bench")]
    out: PathBuf,
    /// Also write the report into this RESULTS.md, replacing its "Latest rig run" section.
    #[arg(long)]
    results_md: Option<PathBuf>,
    /// Do not run: re-render report.md, the plots and --results-md from DIR/results.json.
    #[arg(long, value_name = "DIR")]
    render: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() {
    let a = Args::parse();
    if let Some(dir) = &a.render {
        let r = distgate_bench::report::Report::load(&dir.join("results.json")).unwrap_or_else(|e| {
            eprintln!("distgate-bench: {e}");
            std::process::exit(1)
        });
        let mut r = r;
        if let Err(e) = distgate_bench::report::write_all(&mut r, dir) {
            eprintln!("distgate-bench: {e}");
            std::process::exit(1);
        }
        finish(r, dir, a.results_md.as_deref());
        return;
    }
    let parse_all = |v: &[String], what: &str, f: &dyn Fn(&str) -> bool| {
        for x in v {
            if !f(x) {
                eprintln!("unknown {what}: {x}");
                std::process::exit(2);
            }
        }
    };
    parse_all(&a.targets, "target", &|s| Target::parse(s).is_some());
    parse_all(&a.scenarios, "scenario", &|s| Scenario::parse(s).is_some());
    parse_all(&a.payloads, "payload", &|s| PayloadKind::parse(s).is_some());
    parse_all(&a.nodes, "nodes", &|s| Nodes::parse(s).is_some());
    let mut cfg = RigConfig {
        targets: a.targets.iter().filter_map(|s| Target::parse(s)).collect(),
        scenarios: a.scenarios.iter().filter_map(|s| Scenario::parse(s)).collect(),
        payloads: a.payloads.iter().filter_map(|s| PayloadKind::parse(s)).collect(),
        conns: a.conns.clone(),
        nodes: a.nodes.iter().filter_map(|s| Nodes::parse(s)).collect(),
        reps: a.reps.max(1),
        seconds: a.seconds,
        max_msgs: a.messages,
        fragments: !a.no_fragments,
        distgate_threads: a.distgate_threads.max(1),
        install: a.install,
        progress: !a.no_progress,
        out: a.out.clone(),
        command: std::iter::once("distgate-bench".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" "),
    };
    if a.quick {
        cfg.payloads = vec![PayloadKind::Small, PayloadKind::Bin64k, PayloadKind::Bin1m];
        cfg.conns = vec![1];
        cfg.reps = 2;
        cfg.seconds = 0.5;
    }
    match rig::run(&cfg) {
        Ok(r) => finish(r, &cfg.out, a.results_md.as_deref()),
        Err(e) => {
            eprintln!("distgate-bench: {e}");
            std::process::exit(1);
        }
    }
}

fn finish(r: distgate_bench::report::Report, out: &std::path::Path, results_md: Option<&std::path::Path>) {
    println!("{}", r.markdown);
    println!("written: {}/{{results.json,report.md,latency.svg,throughput.svg}}", out.display());
    if let Some(p) = results_md {
        if let Err(e) = distgate_bench::report::update_results_md(p, &r, out) {
            eprintln!("{}: {e}", p.display());
            std::process::exit(1);
        }
        println!("updated {}", p.display());
    }
}
