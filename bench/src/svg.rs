//! Plots as hand-written SVG: latency percentile curves (log-log, HdrHistogram style) and
//! throughput bars relative to direct.

use crate::load::Scenario;
use crate::report::{Report, Row};
use crate::rig::Nodes;
use crate::targets::Target;
use std::fmt::Write as _;

fn color(t: Target) -> &'static str {
    match t {
        Target::Direct => "#444444",
        Target::DistgateMio => "#d62728",
        Target::DistgateUring => "#ff7f0e",
        Target::DistgateMioPolicy => "#9467bd",
        Target::DistgateMioBatch => "#8c564b",
        Target::Haproxy => "#1f77b4",
        Target::Socat => "#2ca02c",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn header(w: f64, h: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        esc(title)
    )
}

fn legend(o: &mut String, targets: &[Target], x: f64, y: f64) {
    for (i, t) in targets.iter().enumerate() {
        let xx = x + i as f64 * 140.0;
        let _ = writeln!(o, "<rect x=\"{xx}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>", y - 10.0, color(*t), xx + 16.0, y, t.name());
    }
}

fn targets_of(rows: &[&Row]) -> Vec<Target> {
    let mut v: Vec<Target> = rows.iter().map(|r| r.target).collect();
    v.sort();
    v.dedup();
    v
}

/// x position of quantile q on a 1/(1-q) log axis (max drawn at 99.999%).
fn qx(q: f64) -> f64 {
    let q = q.min(0.99999);
    (1.0 / (1.0 - q)).log10()
}

pub fn latency(r: &Report) -> String {
    let rows: Vec<&Row> = r.rows.iter().filter(|x| x.scenario == Scenario::PingPong && !x.curve.is_empty()).collect();
    let mut panels: Vec<(Nodes, crate::etf::PayloadKind, usize)> = rows.iter().map(|x| (x.nodes, x.payload, x.conns)).collect();
    panels.sort();
    panels.dedup();
    let targets = targets_of(&rows);
    let (pw, ph, cols) = (380.0, 260.0, 3usize);
    let nrows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (pw * cols as f64 + 20.0, ph * nrows as f64 + 70.0);
    let mut o = header(w, h, &format!("Round-trip latency percentiles (ping-pong), µs, log scale — {}", r.meta.date));
    legend(&mut o, &targets, 10.0, 42.0);
    for (i, (nodes, payload, conns)) in panels.iter().enumerate() {
        let (ox, oy) = (10.0 + (i % cols) as f64 * pw, 55.0 + (i / cols) as f64 * ph);
        let (l, t, pwi, phi) = (ox + 50.0, oy + 22.0, pw - 70.0, ph - 60.0);
        let mine: Vec<&&Row> = rows.iter().filter(|x| (x.nodes, x.payload, x.conns) == (*nodes, *payload, *conns)).collect();
        let vals: Vec<f64> = mine.iter().flat_map(|x| x.curve.iter().map(|c| c.1)).filter(|v| *v > 0.0).collect();
        let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min).max(0.1).log10().floor();
        let hi = vals.iter().cloned().fold(0.0, f64::max).max(1.0).log10().ceil().max(lo + 1.0);
        let xmax = qx(0.99999);
        let px = |q: f64| l + qx(q) / xmax * pwi;
        let py = |v: f64| t + phi - (v.max(1e-3).log10() - lo) / (hi - lo) * phi;
        let _ = writeln!(o, "<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{} nodes, {}, {} conn{}</text>", ox + 50.0, oy + 14.0, nodes.name(), payload.name(), conns, if *conns == 1 { "" } else { "s" });
        let _ = writeln!(o, "<rect x=\"{l}\" y=\"{t}\" width=\"{pwi}\" height=\"{phi}\" fill=\"none\" stroke=\"#999\"/>");
        let mut d = lo;
        while d <= hi + 1e-9 {
            let y = py(10f64.powf(d));
            let _ = writeln!(o, "<line x1=\"{l}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", l + pwi, l - 4.0, y + 4.0, fmt_decade(d));
            d += 1.0;
        }
        for (q, label) in [(0.5, "50%"), (0.9, "90%"), (0.99, "99%"), (0.999, "99.9%"), (0.9999, "99.99%"), (1.0, "max")] {
            let x = px(q);
            let _ = writeln!(o, "<line x1=\"{x}\" x2=\"{x}\" y1=\"{t}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>", t + phi, t + phi + 14.0);
        }
        for x in &mine {
            let pts: Vec<String> = x.curve.iter().filter(|c| c.0 >= 0.5).map(|c| format!("{:.1},{:.1}", px(c.0), py(c.1))).collect();
            let _ = writeln!(o, "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\" points=\"{}\"/>", color(x.target), pts.join(" "));
        }
    }
    o.push_str("</svg>\n");
    o
}

fn fmt_decade(d: f64) -> String {
    let v = 10f64.powf(d);
    if v >= 1000.0 {
        format!("{}ms", v / 1000.0)
    } else {
        format!("{v}")
    }
}

pub fn throughput(r: &Report) -> String {
    let rows: Vec<&Row> = r.rows.iter().filter(|x| x.scenario == Scenario::Flood && x.reps_ok > 0).collect();
    let mut panels: Vec<(Nodes, usize)> = rows.iter().map(|x| (x.nodes, x.conns)).collect();
    panels.sort();
    panels.dedup();
    let targets = targets_of(&rows);
    let (pw, ph) = (760.0, 280.0);
    let (w, h) = (pw + 20.0, ph * panels.len().max(1) as f64 + 70.0);
    let mut o = header(w, h, &format!("Flood throughput vs direct (labels: MB/s; k msg/s under 4 KB) — {}", r.meta.date));
    legend(&mut o, &targets, 10.0, 42.0);
    for (i, (nodes, conns)) in panels.iter().enumerate() {
        let (ox, oy) = (10.0, 55.0 + i as f64 * ph);
        let (l, t, pwi, phi) = (ox + 50.0, oy + 22.0, pw - 70.0, ph - 70.0);
        let mine: Vec<&&Row> = rows.iter().filter(|x| (x.nodes, x.conns) == (*nodes, *conns)).collect();
        let mut payloads: Vec<crate::etf::PayloadKind> = mine.iter().map(|x| x.payload).collect();
        payloads.sort();
        payloads.dedup();
        let ymax = mine.iter().filter_map(|x| x.x_direct).fold(1.0f64, f64::max) * 1.15;
        let py = |v: f64| t + phi - v / ymax * phi;
        let _ = writeln!(o, "<text x=\"{l}\" y=\"{}\" font-weight=\"bold\">{} nodes, {} conn{}</text>", oy + 14.0, nodes.name(), conns, if *conns == 1 { "" } else { "s" });
        let _ = writeln!(o, "<rect x=\"{l}\" y=\"{t}\" width=\"{pwi}\" height=\"{phi}\" fill=\"none\" stroke=\"#999\"/>");
        let mut g = 0.0;
        while g <= ymax {
            let y = py(g);
            let _ = writeln!(o, "<line x1=\"{l}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{g:.1}×</text>", l + pwi, if (g - 1.0).abs() < 1e-9 { "#888" } else { "#eee" }, l - 4.0, y + 4.0);
            g += if ymax > 4.0 { 1.0 } else { 0.5 };
        }
        let gw = pwi / payloads.len().max(1) as f64;
        let bw = (gw - 16.0) / targets.len().max(1) as f64;
        for (pi, p) in payloads.iter().enumerate() {
            let gx = l + pi as f64 * gw + 8.0;
            let _ = writeln!(o, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", gx + (gw - 16.0) / 2.0, t + phi + 14.0, p.name());
            for (ti, tg) in targets.iter().enumerate() {
                let Some(x) = mine.iter().find(|x| x.payload == *p && x.target == *tg) else { continue };
                let Some(v) = x.x_direct else { continue };
                let (bx, by) = (gx + ti as f64 * bw, py(v));
                let _ = writeln!(
                    o,
                    "<rect x=\"{bx:.1}\" y=\"{by:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {:.0} msg/s, {:.1} MB/s, {v:.2}× direct</title></rect>",
                    (bw - 2.0).max(1.0),
                    (t + phi - by).max(0.0),
                    color(*tg),
                    tg.name(),
                    p.name(),
                    x.msgs_per_s,
                    x.mb_per_s
                );
                let _ = writeln!(
                    o,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"start\" transform=\"rotate(-90 {:.1} {:.1})\">{}</text>",
                    bx + bw / 2.0 + 3.0,
                    by - 3.0,
                    bx + bw / 2.0 + 3.0,
                    by - 3.0,
                    if x.payload_bytes < 4096 { format!("{:.0}k", x.msgs_per_s / 1000.0) } else { format!("{:.0}", x.mb_per_s) }
                );
            }
        }
    }
    o.push_str("</svg>\n");
    o
}
