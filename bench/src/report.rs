//! Samples → medians, ratios, percentiles, verdicts against the issue targets; JSON, markdown
//! and SVG plots.

use crate::etf::PayloadKind;
use crate::load::{Measured, Scenario};
use crate::rig::{Nodes, RigConfig};
use crate::targets::Target;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Latency percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct Pcts {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Pcts {
    pub fn of(h: &Histogram<u64>) -> Pcts {
        let us = |v: u64| v as f64 / 1000.0;
        Pcts {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

/// One run of one cell through one target.
#[derive(Debug, Serialize, Deserialize)]
pub struct Sample {
    pub rep: usize,
    pub nodes: Nodes,
    pub scenario: Scenario,
    pub payload: PayloadKind,
    pub conns: usize,
    pub target: Target,
    pub msgs: u64,
    pub payload_bytes: u64,
    pub elapsed_s: f64,
    pub msgs_per_s: f64,
    /// Payload bytes (term_to_binary size × messages) per second, 10^6.
    pub mb_per_s: f64,
    pub sink_msgs: Option<u64>,
    pub framing: String,
    pub latency_us: Option<Pcts>,
    pub errors: Vec<String>,
    #[serde(skip)]
    pub hist: Option<Histogram<u64>>,
}

impl Sample {
    pub fn new(rep: usize, nodes: Nodes, scenario: Scenario, payload: PayloadKind, conns: usize, target: Target, m: Measured) -> Sample {
        let secs = m.elapsed.as_secs_f64();
        let rate = if secs > 0.0 { m.msgs as f64 / secs } else { 0.0 };
        let mut errors = m.errors;
        if let Some(s) = m.sink_msgs {
            if s != m.msgs && errors.is_empty() {
                errors.push(format!("sink counted {s} of {} messages", m.msgs));
            }
        }
        if m.msgs == 0 && errors.is_empty() {
            errors.push("no message arrived".into());
        }
        Sample {
            rep,
            nodes,
            scenario,
            payload,
            conns,
            target,
            msgs: m.msgs,
            payload_bytes: m.payload_bytes,
            elapsed_s: secs,
            msgs_per_s: rate,
            mb_per_s: rate * m.payload_bytes as f64 / 1e6,
            sink_msgs: m.sink_msgs,
            framing: m.framing,
            latency_us: m.hist.as_ref().filter(|h| !h.is_empty()).map(Pcts::of),
            errors,
            hist: m.hist,
        }
    }

    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.msgs > 0
    }
}

/// The medians of one (nodes, scenario, payload, conns, target) over its repetitions.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Row {
    pub nodes: Nodes,
    pub scenario: Scenario,
    pub payload: PayloadKind,
    pub conns: usize,
    pub target: Target,
    pub reps_ok: usize,
    pub reps: usize,
    pub payload_bytes: u64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    /// Lowest and highest msg/s of the repetitions.
    #[serde(default)]
    pub msgs_per_s_range: (f64, f64),
    /// Lowest and highest p50 of the repetitions (µs).
    #[serde(default)]
    pub p50_range: Option<(f64, f64)>,
    /// Throughput ratio against direct / HAProxy (same cell).
    pub x_direct: Option<f64>,
    pub x_haproxy: Option<f64>,
    /// Median of each percentile over the repetitions (µs).
    pub latency_us: Option<Pcts>,
    /// Latency added over direct at p50 / p99 (µs).
    pub added_p50_us: Option<f64>,
    pub added_p99_us: Option<f64>,
    /// (quantile, µs) of all repetitions merged, for the percentile plot.
    pub curve: Vec<(f64, f64)>,
    pub framing: String,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Verdict {
    pub target: String,
    pub nodes: Nodes,
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
    pub shortfall: String,
    /// A caveat from the repetitions' spread (a verdict the spread could flip).
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Meta {
    pub date: String,
    pub machine: String,
    pub command: String,
    pub seconds_per_cell: f64,
    pub reps: usize,
    pub max_msgs: Option<u64>,
    pub rust_framing: String,
    pub distgate_threads: usize,
    pub wall_s: f64,
    pub targets: Vec<String>,
    pub unavailable: Vec<(String, String)>,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub meta: Meta,
    pub rows: Vec<Row>,
    pub verdicts: Vec<Verdict>,
    pub samples: Vec<Sample>,
    #[serde(skip)]
    pub markdown: String,
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `YYYY-MM-DD` (UTC) from the system clock.
pub fn today() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let days = secs.div_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{:02}-{:02}", if m <= 2 { y + 1 } else { y }, m, d)
}

/// `N vCPU (model), M GiB RAM, Linux release` from /proc.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let n = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let model = cpu.lines().find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())).unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").and_then(|r| r.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())))
        .map(|kb| format!(", {:.0} GiB RAM", kb / 1048576.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| format!(", Linux {}", s.trim())).unwrap_or_default();
    format!("{n} vCPU ({model}){mem}{kernel}")
}

type Key = (Nodes, Scenario, PayloadKind, usize);

impl Report {
    pub fn build(cfg: &RigConfig, samples: Vec<Sample>, notes: Vec<String>, unavailable: Vec<(String, String)>, targets: Vec<Target>, wall: Duration) -> Report {
        let mut groups: BTreeMap<(Key, Target), Vec<&Sample>> = BTreeMap::new();
        for s in &samples {
            groups.entry(((s.nodes, s.scenario, s.payload, s.conns), s.target)).or_default().push(s);
        }
        let mut rows = Vec::new();
        for ((key, target), ss) in &groups {
            let ok: Vec<&&Sample> = ss.iter().filter(|s| s.ok()).collect();
            let mut rates: Vec<f64> = ok.iter().map(|s| s.msgs_per_s).collect();
            let mut mbs: Vec<f64> = ok.iter().map(|s| s.mb_per_s).collect();
            let lat: Vec<Pcts> = ok.iter().filter_map(|s| s.latency_us).collect();
            let latency_us = if lat.is_empty() {
                None
            } else {
                let m = |f: fn(&Pcts) -> f64| median(&mut lat.iter().map(f).collect::<Vec<_>>());
                Some(Pcts { p50: m(|p| p.p50), p90: m(|p| p.p90), p99: m(|p| p.p99), p999: m(|p| p.p999), max: m(|p| p.max), mean: m(|p| p.mean), count: lat.iter().map(|p| p.count).sum() })
            };
            let mut merged: Option<Histogram<u64>> = None;
            for s in &ok {
                if let Some(h) = &s.hist {
                    match &mut merged {
                        Some(m) => {
                            let _ = m.add(h);
                        }
                        None => merged = Some(h.clone()),
                    }
                }
            }
            let curve = merged
                .filter(|h| !h.is_empty())
                .map(|h| {
                    [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0].iter().map(|&q| (q, h.value_at_quantile(q) as f64 / 1000.0)).collect()
                })
                .unwrap_or_default();
            let range = |v: &[f64]| v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let msgs_per_s_range = if rates.is_empty() { (f64::NAN, f64::NAN) } else { range(&rates) };
            let p50s: Vec<f64> = lat.iter().map(|p| p.p50).collect();
            let p50_range = if p50s.is_empty() { None } else { Some(range(&p50s)) };
            let mut errors: Vec<String> = ss.iter().flat_map(|s| s.errors.iter().cloned()).collect();
            errors.dedup();
            rows.push(Row {
                nodes: key.0,
                scenario: key.1,
                payload: key.2,
                conns: key.3,
                target: *target,
                reps_ok: ok.len(),
                reps: ss.len(),
                payload_bytes: ss.iter().map(|s| s.payload_bytes).max().unwrap_or(0),
                msgs_per_s: median(&mut rates),
                mb_per_s: median(&mut mbs),
                msgs_per_s_range,
                p50_range,
                x_direct: None,
                x_haproxy: None,
                latency_us,
                added_p50_us: None,
                added_p99_us: None,
                curve,
                framing: ss.iter().map(|s| s.framing.clone()).find(|f| !f.is_empty()).unwrap_or_default(),
                errors,
            });
        }
        // Ratios within each cell.
        let snapshot = rows.clone();
        let find = |k: &Key, t: Target| snapshot.iter().find(|r| (r.nodes, r.scenario, r.payload, r.conns) == *k && r.target == t && r.reps_ok > 0);
        for r in &mut rows {
            let k = (r.nodes, r.scenario, r.payload, r.conns);
            let ratio = |o: Option<&Row>| o.filter(|o| o.msgs_per_s > 0.0 && r.reps_ok > 0).map(|o| r.msgs_per_s / o.msgs_per_s);
            r.x_direct = ratio(find(&k, Target::Direct));
            r.x_haproxy = ratio(find(&k, Target::Haproxy));
            if let (Some(me), Some(d)) = (r.latency_us, find(&k, Target::Direct).and_then(|d| d.latency_us)) {
                r.added_p50_us = Some(me.p50 - d.p50);
                r.added_p99_us = Some(me.p99 - d.p99);
            }
        }
        let verdicts = verdicts(&rows);
        let meta = Meta {
            date: today(),
            machine: machine(),
            command: cfg.command.clone(),
            seconds_per_cell: cfg.seconds,
            reps: cfg.reps,
            max_msgs: cfg.max_msgs,
            rust_framing: if cfg.fragments {
                "Rust node offers DIST_HDR_ATOM_CACHE|FRAGMENTS: messages go as `131 68` with an empty atom-cache header; 1 MiB goes as 17 fragments of 64 KiB".into()
            } else {
                "Rust node offers no DIST_HDR_ATOM_CACHE: pass-through framing `112 131 Ctl 131 Msg`; 1 MiB goes as one frame".into()
            },
            distgate_threads: cfg.distgate_threads,
            wall_s: wall.as_secs_f64(),
            targets: targets.iter().map(|t| t.name().to_string()).collect(),
            unavailable,
            notes,
        };
        let mut rep = Report { meta, rows, verdicts, samples, markdown: String::new() };
        rep.markdown = markdown(&rep);
        rep
    }

    /// Read a run back from its `results.json` (histograms are not stored; the rows keep
    /// their percentile curves) and render its markdown again.
    pub fn load(path: &Path) -> Result<Report, String> {
        let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut r: Report = serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display()))?;
        // Ranges from the samples (older files have none).
        for row in &mut r.rows {
            let ok: Vec<&Sample> = r.samples.iter().filter(|s| (s.nodes, s.scenario, s.payload, s.conns, s.target) == (row.nodes, row.scenario, row.payload, row.conns, row.target) && s.ok()).collect();
            let fold = |v: Vec<f64>| if v.is_empty() { None } else { Some(v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))) };
            row.msgs_per_s_range = fold(ok.iter().map(|s| s.msgs_per_s).collect()).unwrap_or((f64::NAN, f64::NAN));
            row.p50_range = fold(ok.iter().filter_map(|s| s.latency_us.map(|l| l.p50)).collect());
        }
        r.verdicts = verdicts(&r.rows);
        r.markdown = markdown(&r);
        Ok(r)
    }

    pub fn row(&self, nodes: Nodes, scenario: Scenario, payload: PayloadKind, conns: usize, target: Target) -> Option<&Row> {
        self.rows.iter().find(|r| r.nodes == nodes && r.scenario == scenario && r.payload == payload && r.conns == conns && r.target == target)
    }
}

/// The issue 3 / issue 7 targets, for every distgate target and every node kind, one
/// connection.
fn verdicts(rows: &[Row]) -> Vec<Verdict> {
    let mut out = Vec::new();
    let get = |n: Nodes, s: Scenario, p: PayloadKind, t: Target| rows.iter().find(|r| r.nodes == n && r.scenario == s && r.payload == p && r.conns == 1 && r.target == t && r.reps_ok > 0);
    let dts: Vec<Target> = {
        let mut v: Vec<Target> = rows.iter().map(|r| r.target).filter(|t| t.is_distgate()).collect();
        v.sort();
        v.dedup();
        v
    };
    for nodes in [Nodes::Erl, Nodes::Rust, Nodes::RustErl] {
        for &t in &dts {
            for p in [PayloadKind::Bin64k, PayloadKind::Bin1m] {
                let (Some(me), Some(h)) = (get(nodes, Scenario::Flood, p, t), get(nodes, Scenario::Flood, p, Target::Haproxy)) else { continue };
                let x = me.mb_per_s / h.mb_per_s;
                let best = me.msgs_per_s_range.1 / h.msgs_per_s_range.0;
                let worst = me.msgs_per_s_range.0 / h.msgs_per_s_range.1;
                out.push(Verdict {
                    note: if x >= 1.5 && worst < 1.5 { MET_WITHIN.into() } else { String::new() },
                    target: t.name().into(),
                    nodes,
                    what: format!("flood {} throughput", p.name()),
                    goal: "≥ 1.5× HAProxy".into(),
                    measured: format!("{:.0} MB/s vs HAProxy {:.0} MB/s = {:.2}×", me.mb_per_s, h.mb_per_s, x),
                    met: Some(x >= 1.5),
                    shortfall: if x >= 1.5 {
                        String::new()
                    } else {
                        format!("{:.0}% below the goal ({:.2}× short of 1.5×){}", (1.0 - x / 1.5) * 100.0, 1.5 - x, within(best >= 1.5))
                    },
                });
            }
            if let (Some(me), Some(d)) = (get(nodes, Scenario::Flood, PayloadKind::Small, t), get(nodes, Scenario::Flood, PayloadKind::Small, Target::Direct)) {
                let x = me.msgs_per_s / d.msgs_per_s;
                let best = me.msgs_per_s_range.1 / d.msgs_per_s_range.0;
                let worst = me.msgs_per_s_range.0 / d.msgs_per_s_range.1;
                out.push(Verdict {
                    note: if x >= 1.0 && worst < 1.0 { MET_WITHIN.into() } else { String::new() },
                    target: t.name().into(),
                    nodes,
                    what: "flood 100 B msg/s".into(),
                    goal: "≥ direct".into(),
                    measured: format!("{:.0} msg/s vs direct {:.0} msg/s = {:.2}×", me.msgs_per_s, d.msgs_per_s, x),
                    met: Some(x >= 1.0),
                    shortfall: if x >= 1.0 { String::new() } else { format!("{:.0}% below direct{}", (1.0 - x) * 100.0, within(best >= 1.0)) },
                });
            }
            for p in [PayloadKind::Small, PayloadKind::Bin64k, PayloadKind::Bin1m] {
                let (Some(me), Some(h)) = (get(nodes, Scenario::PingPong, p, t), get(nodes, Scenario::PingPong, p, Target::Haproxy)) else { continue };
                let (Some(a50), Some(a99), Some(h50), Some(h99)) = (me.added_p50_us, me.added_p99_us, h.added_p50_us, h.added_p99_us) else { continue };
                let met = a50 < h50 && a99 < h99;
                let mut short = Vec::new();
                if a50 >= h50 {
                    short.push(format!("p50 adds {:.1} µs more than HAProxy", a50 - h50));
                }
                if a99 >= h99 {
                    short.push(format!("p99 adds {:.1} µs more than HAProxy", a99 - h99));
                }
                out.push(Verdict {
                    note: String::new(),
                    target: t.name().into(),
                    nodes,
                    what: format!("ping-pong {} added round-trip latency", p.name()),
                    goal: "added p50 and p99 below HAProxy's".into(),
                    measured: format!("adds p50 {a50:+.1} µs, p99 {a99:+.1} µs; HAProxy adds p50 {h50:+.1} µs, p99 {h99:+.1} µs"),
                    met: Some(met),
                    shortfall: short.join("; "),
                });
            }
        }
    }
    out
}

const MET_WITHIN: &str = "met at the median, but within run-to-run spread (the worst repetition against the best misses)";

/// A note for a shortfall the repetitions' spread could cover.
fn within(best_case_meets: bool) -> &'static str {
    if best_case_meets {
        " (within run-to-run spread: the best repetition against the worst meets the goal)"
    } else {
        ""
    }
}

/// `±x%`: half the min–max range of the repetitions, relative to the median.
fn fmt_spread(range: (f64, f64), median: f64) -> String {
    if !(range.0.is_finite() && range.1.is_finite() && median > 0.0) {
        return "–".into();
    }
    format!("±{:.0}%", (range.1 - range.0) / 2.0 / median * 100.0)
}

fn fmt_rate(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_x(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.2}×"))
}

fn fmt_us(v: f64) -> String {
    if v >= 10000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Issue 3's speed numbers: real nodes, flood of 100 B / 64 KiB / 1 MiB and ping-pong of
/// 100 B, distgate against direct and HAProxy. Falls back to the Rust nodes when the run had
/// no real nodes.
pub fn issue3_markdown(r: &Report) -> String {
    let mut o = String::new();
    let Some(nodes) = [Nodes::Erl, Nodes::Rust, Nodes::RustErl].into_iter().find(|n| r.rows.iter().any(|x| x.nodes == *n)) else { return o };
    let dts: Vec<Target> = r.meta.targets.iter().filter_map(|t| Target::parse(t)).filter(|t| t.is_distgate()).collect();
    if dts.is_empty() {
        return o;
    }
    let get = |s: Scenario, p: PayloadKind, t: Target| r.row(nodes, s, p, 1, t).filter(|x| x.reps_ok > 0);
    let _ = writeln!(
        o,
        "Nodes: {}; one connection; medians of {} interleaved repetitions. Throughput cells: msg/s (payload MB/s); latency cells: round-trip µs.\n",
        match nodes {
            Nodes::Erl => "two real OTP nodes (sender → sink)",
            Nodes::Rust => "the Rust load generator and sink (this run had no real-node pair)",
            Nodes::RustErl => "the Rust load generator and a real OTP sink (this run had no real-node pair)",
        },
        r.meta.reps
    );
    let mut head = "| measure | direct | HAProxy |".to_string();
    let mut rule = "|---|---:|---:|".to_string();
    for t in &dts {
        head.push_str(&format!(" {} | ×direct | ×HAProxy |", t.name()));
        rule.push_str("---:|---:|---:|");
    }
    head.push_str(" goal |");
    rule.push_str("---|");
    let _ = writeln!(o, "{head}\n{rule}");
    let tp = |x: Option<&Row>| x.map_or("–".to_string(), |x| format!("{} ({:.0} MB/s)", fmt_rate(x.msgs_per_s), x.mb_per_s));
    for (p, goal) in [(PayloadKind::Small, "≥ direct msg/s"), (PayloadKind::Bin64k, "≥ 1.5× HAProxy"), (PayloadKind::Bin1m, "≥ 1.5× HAProxy")] {
        let mut line = format!("| flood {} | {} | {} |", p.name(), tp(get(Scenario::Flood, p, Target::Direct)), tp(get(Scenario::Flood, p, Target::Haproxy)));
        for t in &dts {
            let x = get(Scenario::Flood, p, *t);
            line.push_str(&format!(" {} | {} | {} |", tp(x), fmt_x(x.and_then(|x| x.x_direct)), fmt_x(x.and_then(|x| x.x_haproxy))));
        }
        let _ = writeln!(o, "{line} {goal} |");
    }
    for p in [PayloadKind::Small, PayloadKind::Bin64k, PayloadKind::Bin1m] {
        let lat = |x: Option<&Row>| x.and_then(|x| x.latency_us).map_or("–".to_string(), |l| format!("{} / {}", fmt_us(l.p50), fmt_us(l.p99)));
        let mut line = format!("| ping-pong {} p50 / p99 | {} | {} |", p.name(), lat(get(Scenario::PingPong, p, Target::Direct)), lat(get(Scenario::PingPong, p, Target::Haproxy)));
        let h = get(Scenario::PingPong, p, Target::Haproxy);
        for t in &dts {
            let x = get(Scenario::PingPong, p, *t);
            let added = |x: Option<&Row>| x.and_then(|x| Some(format!("{:+.0} / {:+.0}", x.added_p50_us?, x.added_p99_us?))).unwrap_or("–".into());
            line.push_str(&format!(" {} | added {} | HAProxy added {} |", lat(x), added(x), added(h)));
        }
        let _ = writeln!(o, "{line} added p50, p99 < HAProxy's |");
    }
    let _ = writeln!(o);
    let mine: Vec<&Verdict> = r.verdicts.iter().filter(|v| v.nodes == nodes).collect();
    let short: Vec<&&Verdict> = mine.iter().filter(|v| v.met == Some(false)).collect();
    let _ = writeln!(o, "Verdicts ({} met, {} short of {}):\n", mine.len() - short.len(), short.len(), mine.len());
    for v in &mine {
        let _ = writeln!(
            o,
            "- {} {}: {} — {}",
            v.target,
            v.what,
            v.measured,
            match v.met {
                Some(true) if !v.note.is_empty() => format!("meets {}; {}", v.goal, v.note),
                Some(true) => format!("meets {}", v.goal),
                _ => format!("**short of {}**: {}", v.goal, v.shortfall),
            }
        );
    }
    o
}

/// Policy on against off: every cell measured through both `distgate-mio` and
/// `distgate-mio+policy` (same driver, same traffic, interleaved in the same run), as the
/// ratio of the medians and the cost against the ≤ 10 % throughput goal of the policy issue.
pub fn policy_markdown(r: &Report) -> String {
    let mut o = String::new();
    let (off_t, on_t) = (Target::DistgateMio, Target::DistgateMioPolicy);
    let pairs: Vec<(&Row, &Row)> = r
        .rows
        .iter()
        .filter(|x| x.target == off_t && x.reps_ok > 0)
        .filter_map(|off| r.row(off.nodes, off.scenario, off.payload, off.conns, on_t).filter(|on| on.reps_ok > 0).map(|on| (off, on)))
        .collect();
    if pairs.is_empty() {
        return o;
    }
    let _ = writeln!(
        o,
        "Policy: `targets::BENCH_POLICY` on the senders → sinks route (control allow-lists consulted for every message, every message's funs collected and looked up in the target registry, all passing). Same run, same cells, repetitions interleaved; medians. Flood: msg/s; ping-pong: round-trip p50 / p99 µs. Goal (policy issue): ≤ 10 % throughput cost.\n"
    );
    let _ = writeln!(o, "| nodes | scenario | payload | conns | policy off | policy on | on/off | cost | goal |\n|---|---|---|---:|---:|---:|---:|---:|---|");
    let (mut met, mut total) = (0, 0);
    for (off, on) in &pairs {
        let (a, b, ratio, cost, goal) = if off.scenario == Scenario::Flood {
            let ratio = on.msgs_per_s / off.msgs_per_s.max(f64::MIN_POSITIVE);
            let cost = 1.0 - ratio;
            total += 1;
            // Within spread: the best repetition with the policy on reaches the worst without.
            let overlap = on.msgs_per_s_range.1 >= off.msgs_per_s_range.0;
            let verdict = if cost <= 0.10 {
                met += 1;
                "met".to_string()
            } else if overlap {
                format!("**short** by {:.0} pts (within run-to-run spread)", (cost - 0.10) * 100.0)
            } else {
                format!("**short** by {:.0} pts", (cost - 0.10) * 100.0)
            };
            (fmt_rate(off.msgs_per_s), fmt_rate(on.msgs_per_s), format!("{ratio:.2}×"), format!("{:+.0} %", cost * 100.0), verdict)
        } else {
            let lat = |x: &Row| x.latency_us.map_or("–".to_string(), |l| format!("{} / {}", fmt_us(l.p50), fmt_us(l.p99)));
            let ratio = match (off.latency_us, on.latency_us) {
                (Some(a), Some(b)) => format!("p50 {:.2}×", b.p50 / a.p50.max(f64::MIN_POSITIVE)),
                _ => "–".into(),
            };
            (lat(off), lat(on), ratio, "".into(), "".into())
        };
        let _ = writeln!(o, "| {} | {} | {} | {} | {a} | {b} | {ratio} | {cost} | {goal} |", off.nodes.name(), off.scenario.name(), off.payload.name(), off.conns);
    }
    let _ = writeln!(o, "\nFlood cells within the ≤ 10 % goal: {met} of {total}.");
    o
}

/// The markdown report.
pub fn markdown(r: &Report) -> String {
    markdown_with(r, true)
}

/// The markdown report, with or without the issue 3 summary.
pub fn markdown_with(r: &Report, issue3: bool) -> String {
    let m = &r.meta;
    let mut o = String::new();
    let _ = writeln!(o, "- date: {}", m.date);
    let _ = writeln!(o, "- machine: {} (shared with other engineers' builds while it ran)", m.machine);
    let _ = writeln!(o, "- command: `{}`", m.command);
    let _ = writeln!(
        o,
        "- {} repetition(s), interleaved (every target once per cell per repetition, rotating order); {}; medians over repetitions; wall time {:.0} s",
        m.reps,
        match m.max_msgs {
            Some(n) => format!("{n} messages per connection per cell"),
            None => format!("{:.1} s per cell", m.seconds_per_cell),
        },
        m.wall_s
    );
    let _ = writeln!(o, "- targets: {}", m.targets.join(", "));
    for (t, why) in &m.unavailable {
        let _ = writeln!(o, "- **not measured: {t}**: {why}");
    }
    let _ = writeln!(o, "- Rust node framing: {}", m.rust_framing);
    for n in &m.notes {
        let _ = writeln!(o, "- {n}");
    }
    let _ = writeln!(o, "- MB/s counts payload bytes (the payload's `term_to_binary` size × messages, 10^6 B); ping-pong msg/s are round trips; latency is the round trip measured by the sender (the sink echoes), in µs; spread = ±half the min–max range of the repetitions, relative to the median");
    let _ = writeln!(o);

    let i3 = if issue3 { issue3_markdown(r) } else { String::new() };
    if !i3.is_empty() {
        let _ = writeln!(o, "### Issue 3 speed: through distgate vs direct vs HAProxy\n\n{i3}");
    }
    if !r.verdicts.is_empty() {
        let _ = writeln!(o, "### Against the targets, every node kind (one connection)\n");
        let _ = writeln!(o, "| nodes | target | what | goal | measured | verdict |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for v in &r.verdicts {
            let verdict = match v.met {
                Some(true) if !v.note.is_empty() => v.note.clone(),
                Some(true) => "met".to_string(),
                Some(false) => format!("**short**: {}", v.shortfall),
                None => "–".into(),
            };
            let _ = writeln!(o, "| {} | {} | {} | {} | {} | {} |", v.nodes.name(), v.target, v.what, v.goal, v.measured, verdict);
        }
        let _ = writeln!(o);
    }

    let mut keys: Vec<(Nodes, Scenario)> = r.rows.iter().map(|r| (r.nodes, r.scenario)).collect();
    keys.sort();
    keys.dedup();
    for (nodes, sc) in keys {
        let title = match nodes {
            Nodes::Erl => "real OTP nodes (sender → sink)",
            Nodes::Rust => "Rust load generator → Rust sink",
            Nodes::RustErl => "Rust load generator → real OTP sink",
        };
        let _ = writeln!(o, "### {} — {}\n", sc.name(), title);
        if sc == Scenario::PingPong {
            let _ = writeln!(o, "| payload | conns | target | round trips/s | ×direct | ×haproxy | p50 | p50 spread | p90 | p99 | p99.9 | max | +p50 vs direct | +p99 vs direct | ok/reps |");
            let _ = writeln!(o, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        } else {
            let _ = writeln!(o, "| payload | conns | target | msg/s | spread | MB/s | ×direct | ×haproxy | ok/reps |");
            let _ = writeln!(o, "|---|---:|---|---:|---:|---:|---:|---:|---:|");
        }
        let mut rows: Vec<&Row> = r.rows.iter().filter(|x| x.nodes == nodes && x.scenario == sc).collect();
        rows.sort_by_key(|x| (x.payload, x.conns, x.target));
        for x in rows {
            let okr = format!("{}/{}", x.reps_ok, x.reps);
            if sc == Scenario::PingPong {
                let l = x.latency_us.unwrap_or_default();
                let has = x.latency_us.is_some();
                let f = |v: f64| if has { fmt_us(v) } else { "–".into() };
                let add = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:+.1}"));
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    x.payload.name(),
                    x.conns,
                    x.target.name(),
                    fmt_rate(x.msgs_per_s),
                    fmt_x(x.x_direct),
                    fmt_x(x.x_haproxy),
                    f(l.p50),
                    x.p50_range.map_or("–".into(), |r| fmt_spread(r, l.p50)),
                    f(l.p90),
                    f(l.p99),
                    f(l.p999),
                    f(l.max),
                    add(x.added_p50_us),
                    add(x.added_p99_us),
                    okr
                );
            } else {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    x.payload.name(),
                    x.conns,
                    x.target.name(),
                    fmt_rate(x.msgs_per_s),
                    fmt_spread(x.msgs_per_s_range, x.msgs_per_s),
                    if x.mb_per_s.is_finite() { format!("{:.1}", x.mb_per_s) } else { "–".into() },
                    fmt_x(x.x_direct),
                    fmt_x(x.x_haproxy),
                    okr
                );
            }
        }
        let _ = writeln!(o);
    }
    let errs: Vec<&Row> = r.rows.iter().filter(|x| !x.errors.is_empty()).collect();
    if !errs.is_empty() {
        let _ = writeln!(o, "### Errors\n");
        for x in errs {
            let _ = writeln!(o, "- {} {} {} x{} via {}: {}", x.nodes.name(), x.scenario.name(), x.payload.name(), x.conns, x.target.name(), x.errors.join("; "));
        }
        let _ = writeln!(o);
    }
    o
}

/// Write `results.json`, `report.md`, `latency.svg` and `throughput.svg` into `dir`.
pub fn write_all(r: &mut Report, dir: &Path) -> Result<(), String> {
    let w = |name: &str, body: &[u8]| std::fs::write(dir.join(name), body).map_err(|e| format!("{}: {e}", dir.join(name).display()));
    w("results.json", serde_json::to_string_pretty(r).map_err(|e| e.to_string())?.as_bytes())?;
    w("latency.svg", crate::svg::latency(r).as_bytes())?;
    w("throughput.svg", crate::svg::throughput(r).as_bytes())?;
    // PNGs too when rsvg-convert (librsvg2-bin) is installed: cheap, optional.
    if crate::targets::which("rsvg-convert").is_some() {
        for f in ["latency", "throughput"] {
            let _ = std::process::Command::new("rsvg-convert")
                .arg("-o")
                .arg(dir.join(format!("{f}.png")))
                .arg(dir.join(format!("{f}.svg")))
                .status();
        }
    }
    let md = format!("# distgate-bench run\n\n{}\nPlots: [latency.svg](latency.svg), [throughput.svg](throughput.svg); raw samples: results.json.\n", r.markdown);
    w("report.md", md.as_bytes())?;
    Ok(())
}

const BEGIN: &str = "<!-- distgate-bench:begin (written by distgate-bench --results-md; edit outside these markers) -->";
const END: &str = "<!-- distgate-bench:end -->";

const HOW: &str = "How to run it (release build; `--install` runs `apt-get install -y haproxy socat` when they are missing; \
erl comes from `apt-get install -y erlang-nox`, `rsvg-convert` from librsvg2-bin for PNGs):

```sh
cargo build --release -p distgate-bench --bin distgate-bench
target/release/distgate-bench --install --results-md bench/RESULTS.md       # everything, ~15 min on 2 vCPU
target/release/distgate-bench --quick                                        # 100B/64KiB/1MiB, 1 conn, 2 reps of 0.5 s
target/release/distgate-bench --nodes erl --payloads 100B,64KiB,1MiB        # issue 3's cells only
target/release/distgate-bench --nodes rust --conns 1,16,100,1000 --payloads 100B --seconds 2
target/release/distgate-bench --render target/distgate-bench --results-md bench/RESULTS.md   # re-render a run
```

What runs: a Rust distribution node (`bench/src/node.rs`: its own version-6 handshake on both sides, \
cookie digests from `distgate::handshake`, EPMD ALIVE2 from `distgate::epmd`, frames decoded by the codec, \
ticks answered) is the load generator and the sink; two real OTP nodes (testkit, `bench/erl/dg_bench_load.erl`) \
are the real-node pair (`erl`); `rust-erl` cells send from the Rust node to the real sink. Every cell (nodes × scenario × payload × connections) runs through every target once \
per repetition, in a rotating order; the tables are medians over the repetitions. Ping-pong keeps one message \
in flight per connection and records each round trip in an HdrHistogram; flood writes as fast as the \
connection takes and ends with an echo, after which the sink's count must equal what was sent. \
`bench/tests/smoke.rs` runs a few hundred messages through every available target (no timing assertions).
";

/// Replace the rig's section of RESULTS.md (between its markers; appended when absent), and
/// copy the plots next to it into `results/`. The file is re-read right before writing, so
/// sections others added are kept.
pub fn update_results_md(path: &Path, r: &Report, out: &Path) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let plots = dir.join("results");
    std::fs::create_dir_all(&plots).map_err(|e| e.to_string())?;
    // The plots and the medians go next to RESULTS.md; the raw samples (and PNGs) stay in the
    // run's output directory, so the repository does not grow by half a megabyte per run.
    for f in ["latency.svg", "throughput.svg"] {
        std::fs::copy(out.join(f), plots.join(f)).map_err(|e| format!("{f}: {e}"))?;
    }
    let summary = serde_json::json!({ "meta": &r.meta, "rows": &r.rows, "verdicts": &r.verdicts });
    std::fs::write(plots.join("summary.json"), serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let section = format!(
        "{BEGIN}\n## Issue 3: speed through distgate (real nodes), {date}\n\nFrom the rig run below (same date, machine and command).\n\n{}\n## Policy on vs off\n\nFrom the rig run below ({date}); the per-frame cost in isolation is in the section Policy per frame (criterion) further down.\n\n{}\n## Latency rig (distgate-bench): latest run, {date}\n\n{HOW}\n{}\n![latency percentiles](results/latency.svg)\n\n![throughput](results/throughput.svg)\n\nMedians, ranges and percentile curves: [results/summary.json](results/summary.json) (every sample: `results.json` in the run's `--out` directory).\n{END}\n",
        issue3_markdown(r),
        policy_markdown(r),
        markdown_with(r, false),
        date = r.meta.date
    );
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &old[..b], section, old[e + END.len()..].trim_start_matches('\n')),
        _ if old.is_empty() => format!("# Benchmark results\n\n{section}"),
        _ => format!("{}\n\n{section}", old.trim_end()),
    };
    std::fs::write(path, new).map_err(|e| e.to_string())
}
