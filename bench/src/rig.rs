//! The run: sinks, targets, the cell matrix with interleaved repetitions, a progress bar, and
//! the samples that [`crate::report`] turns into tables and plots.

use crate::etf::PayloadKind;
use crate::load::{self, Measured, Scenario, Stop};
use crate::node::{NodeConfig, Sink};
use crate::realnode::{self, ErlPair};
use crate::report::{self, Report, Sample};
use crate::targets::{self, Fleet, Target, Upstream};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which nodes a cell runs between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nodes {
    /// The Rust load generator → the Rust sink.
    Rust,
    /// A real OTP sender node → a real OTP sink node.
    Erl,
    /// The Rust load generator → the real OTP sink node (`dg_sink`).
    RustErl,
}

impl Nodes {
    pub fn name(self) -> &'static str {
        match self {
            Nodes::Rust => "rust",
            Nodes::Erl => "erl",
            Nodes::RustErl => "rust-erl",
        }
    }

    pub fn parse(s: &str) -> Option<Nodes> {
        [Nodes::Rust, Nodes::Erl, Nodes::RustErl].into_iter().find(|n| n.name() == s)
    }

    /// Which sink (and so which route) the cell uses.
    pub fn sink(self) -> &'static str {
        match self {
            Nodes::Rust => "rust",
            Nodes::Erl | Nodes::RustErl => "erl",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RigConfig {
    pub targets: Vec<Target>,
    pub scenarios: Vec<Scenario>,
    pub payloads: Vec<PayloadKind>,
    /// Connection counts for the Rust → Rust cells (cells with a real node use one connection).
    pub conns: Vec<usize>,
    pub nodes: Vec<Nodes>,
    pub reps: usize,
    /// Length of one cell.
    pub seconds: f64,
    /// Stop a cell after this many messages per connection instead (smoke runs).
    pub max_msgs: Option<u64>,
    /// Offer DIST_HDR_ATOM_CACHE | FRAGMENTS from the Rust node (1 MiB goes as 17 fragments);
    /// without it, pass-through framing and 1 MiB as one frame.
    pub fragments: bool,
    pub distgate_threads: usize,
    pub install: bool,
    pub progress: bool,
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

impl Default for RigConfig {
    fn default() -> Self {
        RigConfig {
            targets: vec![Target::Direct, Target::DistgateMio, Target::DistgateUring, Target::DistgateMioPolicy, Target::DistgateMioBatch, Target::Haproxy, Target::Socat],
            scenarios: vec![Scenario::PingPong, Scenario::Flood],
            payloads: PayloadKind::ALL.to_vec(),
            conns: vec![1, 16],
            nodes: vec![Nodes::Rust, Nodes::Erl, Nodes::RustErl],
            reps: 3,
            seconds: 1.0,
            max_msgs: None,
            fragments: true,
            distgate_threads: 2,
            install: false,
            progress: true,
            out: PathBuf::from("target/distgate-bench"),
            command: String::new(),
        }
    }
}

pub const COOKIE: &str = "distgate_bench_cookie";

#[derive(Debug, Clone, Copy)]
struct Cell {
    nodes: Nodes,
    scenario: Scenario,
    payload: PayloadKind,
    conns: usize,
}

/// Run everything; write `results.json`, `report.md` and the SVG plots into `cfg.out`.
pub fn run(cfg: &RigConfig) -> Result<Report, String> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| format!("{}: {e}", cfg.out.display()))?;
    let started = Instant::now();
    let load_before = loadavg();
    let mut notes = Vec::new();
    notes.push(source_state());
    let mut unavailable = Vec::new();

    // Proxies from Debian's packages.
    let wants_proxy = cfg.targets.iter().any(|t| matches!(t, Target::Haproxy | Target::Socat));
    if wants_proxy && (targets::which("haproxy").is_none() || targets::which("socat").is_none()) {
        if cfg.install {
            eprintln!("installing: {}", targets::INSTALL_COMMAND);
            if let Err(e) = targets::install_proxies() {
                notes.push(format!("install failed: {e}"));
            }
        } else {
            eprintln!("haproxy/socat missing: run `{}` (or pass --install); those targets are skipped", targets::INSTALL_COMMAND);
        }
    }

    // Sinks.
    let mut ups = Vec::new();
    let rust_sink = if cfg.nodes.contains(&Nodes::Rust) {
        let sink = Sink::start(NodeConfig::new(&format!("rsink{}@127.0.0.1", std::process::id()), COOKIE, cfg.fragments)).map_err(|e| format!("Rust sink: {e}"))?;
        ups.push(Upstream { label: "rust", addr: sink.addr, alive: sink.cfg.alive().to_string(), node_type: distgate::epmd::HIDDEN_NODE });
        Some(sink)
    } else {
        None
    };
    let mut erl = None;
    if cfg.nodes.contains(&Nodes::Erl) || cfg.nodes.contains(&Nodes::RustErl) {
        if realnode::erl_available() {
            match ErlPair::start(COOKIE) {
                Ok(p) => {
                    ups.push(Upstream { label: "erl", addr: p.sink.addr(), alive: p.sink.alive().to_string(), node_type: distgate::epmd::NORMAL_NODE });
                    let v = p.sender.try_eval("erlang:system_info(otp_release).").unwrap_or_default();
                    notes.push(format!("real nodes: OTP {} via distgate-testkit (sender {}, sink {}), `dg_bench_load` (bench/erl)", v.trim_matches('"'), p.sender.name(), p.sink.name()));
                    erl = Some(p);
                }
                Err(e) => notes.push(format!("real-node scenario skipped: {e}")),
            }
        } else {
            notes.push("real-node scenario skipped: erl not installed (apt-get install -y erlang-nox)".into());
        }
    }

    let mut fleet = Fleet::start(&cfg.targets, &ups, COOKIE, cfg.distgate_threads, &cfg.out);
    notes.extend(fleet.notes.iter().cloned());
    for (t, why) in &fleet.unavailable {
        unavailable.push((t.name().to_string(), why.clone()));
    }
    let targets = fleet.available(&cfg.targets);

    // The matrix.
    let mut cells = Vec::new();
    for &nodes in &cfg.nodes {
        if (nodes == Nodes::Rust && rust_sink.is_none()) || (nodes != Nodes::Rust && erl.is_none()) {
            continue;
        }
        for &scenario in &cfg.scenarios {
            for &payload in &cfg.payloads {
                // One node pair is one connection; the real sink counts floods globally.
                let conns: &[usize] = if nodes == Nodes::Rust { &cfg.conns } else { &[1] };
                for &c in conns {
                    cells.push(Cell { nodes, scenario, payload, conns: c });
                }
            }
        }
    }
    let total = (cfg.reps * cells.len() * targets.len()) as u64;
    let bar = if cfg.progress { ProgressBar::new(total) } else { ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden()) };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} (eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let stop = Stop { duration: Duration::from_secs_f64(cfg.seconds), max_msgs: cfg.max_msgs };
    let mut samples = Vec::new();
    let mut run_id = 0u64;
    for rep in 0..cfg.reps {
        for (ci, cell) in cells.iter().enumerate() {
            // Interleave: every target once per cell per repetition, in a rotating order.
            let n = targets.len();
            for k in 0..n {
                let t = targets[(k + rep + ci) % n];
                run_id += 1;
                bar.set_message(format!("rep {} {} {} {} x{} via {}", rep + 1, cell.nodes.name(), cell.scenario.name(), cell.payload.name(), cell.conns, t.name()));
                let addr = fleet.addr(t, cell.nodes.sink());
                let m = match (cell.nodes, addr) {
                    (_, None) => Measured { errors: vec![format!("no route to the {} sink through {}", cell.nodes.name(), t.name())], ..Measured::default() },
                    (Nodes::Rust, Some(a)) => {
                        let sink = rust_sink.as_ref().expect("rust sink");
                        load::run_rust(a, load::SinkProto::Rust(sink), &format!("{run_id}"), cell.scenario, cell.payload, cell.conns, stop, COOKIE, cfg.fragments)
                    }
                    (Nodes::RustErl, Some(a)) => load::run_rust(a, load::SinkProto::Erl, &format!("{run_id}"), cell.scenario, cell.payload, cell.conns, stop, COOKIE, cfg.fragments),
                    (Nodes::Erl, Some(a)) => {
                        let pair = erl.as_mut().expect("erl pair");
                        match pair.route_to(a.port()) {
                            Ok(()) => pair.run(cell.scenario, cell.payload, stop),
                            Err(e) => Measured { errors: vec![e], ..Measured::default() },
                        }
                    }
                };
                let s = Sample::new(rep, cell.nodes, cell.scenario, cell.payload, cell.conns, t, m);
                if !s.errors.is_empty() {
                    bar.println(format!("{} {} {} x{} via {}: {}", cell.nodes.name(), cell.scenario.name(), cell.payload.name(), cell.conns, t.name(), s.errors.join("; ")));
                }
                samples.push(s);
                bar.inc(1);
                if cfg.progress && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    // No terminal for the bar (a log, CI): one line per run instead.
                    eprintln!("[{}/{}] {:.0}s {} {} {} x{} via {}: {:.0} msg/s{}", bar.position(), total, started.elapsed().as_secs_f64(), cell.nodes.name(), cell.scenario.name(), cell.payload.name(), cell.conns, t.name(), samples.last().map_or(0.0, |s| s.msgs_per_s), if samples.last().is_some_and(|s| !s.errors.is_empty()) { " (error)" } else { "" });
                }
            }
        }
    }
    bar.finish_with_message("done");
    if let Some(p) = &erl {
        if p.connect_retries > 0 {
            notes.push(format!("real nodes: {} connect_node attempts were refused and retried while switching targets", p.connect_retries));
        }
    }
    notes.extend(fleet.distgate_counters());
    fleet.stop();
    drop(erl);
    drop(rust_sink);

    notes.push(format!("load average (1, 5, 15 min) at start: {load_before}; at end: {} — the machine was shared", loadavg()));
    let mut rep = Report::build(cfg, samples, notes, unavailable, targets, started.elapsed());
    report::write_all(&mut rep, &cfg.out)?;
    Ok(rep)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|_| "?".into())
}

/// Which distgate was measured, as far as the run can tell: the commit of the source tree and
/// whether the crates linked in had uncommitted changes when the run started.
fn source_state() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        std::process::Command::new("git").arg("-C").arg(&root).args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--", "proxy", "codec-simd", "config"]).unwrap_or_default();
            format!(
                "source tree at run time: commit {head}{}",
                if dirty.is_empty() { ", proxy/codec/config clean".to_string() } else { format!(", with uncommitted changes in {} file(s) of proxy/codec/config (others were editing)", dirty.lines().count()) }
            )
        }
        None => "source tree: not a git checkout".into(),
    }
}
