//! The Prometheus endpoint: `GET /metrics` on the configured address (loopback by default).
//!
//! The data plane keeps plain relaxed atomics ([`crate::stats::Stats`]) so counting costs one
//! uncontended add per read; at scrape time they are copied into a fresh `prometheus` registry
//! and encoded by the crate's text encoder (no hand-written exposition format). The frame-time
//! histogram is a `prometheus::Histogram` (lock-free atomics) observed by the drivers.

use crate::stats::Stats;
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// More families, registered at scrape time by whoever knows them (the module registries:
/// [`crate::registry::RegistrySet::register_metrics`]). Each registers whole families, so a
/// family with a label per cluster is one family, not one per cluster.
pub type Extra = Arc<dyn Fn(&Registry) -> prometheus::Result<()> + Send + Sync>;

/// Render the current metrics in the Prometheus text format.
pub fn render(stats: &Stats, driver: &str, extra: Option<&Extra>) -> String {
    let r = Registry::new();
    let result = (|| -> prometheus::Result<()> {
        let links = IntGaugeVec::new(Opts::new("distgate_links", "Links by state"), &["state"])?;
        links.with_label_values(&["open"]).set(load(&stats.links_open));
        r.register(Box::new(links))?;
        let total = IntCounterVec::new(Opts::new("distgate_links_total", "Links by how far they got"), &["event"])?;
        total.with_label_values(&["accepted"]).inc_by(load(&stats.links_accepted) as u64);
        total.with_label_values(&["established"]).inc_by(load(&stats.links_established) as u64);
        total.with_label_values(&["closed"]).inc_by(load(&stats.links_closed) as u64);
        r.register(Box::new(total))?;
        let bytes = IntCounterVec::new(Opts::new("distgate_bytes_total", "Bytes forwarded"), &["direction"])?;
        let frames = IntCounterVec::new(Opts::new("distgate_frames_total", "Frames forwarded (ticks included)"), &["direction"])?;
        let streamed = IntCounterVec::new(
            Opts::new("distgate_frames_streamed_total", "Frames of messages ending in a binary, forwarded as they arrived (not held whole)"),
            &["direction"],
        )?;
        for (i, d) in ["down_to_up", "up_to_down"].iter().enumerate() {
            bytes.with_label_values(&[d]).inc_by(load(&stats.bytes[i]) as u64);
            frames.with_label_values(&[d]).inc_by(load(&stats.frames[i]) as u64);
            streamed.with_label_values(&[d]).inc_by(load(&stats.streamed[i]) as u64);
        }
        r.register(Box::new(bytes))?;
        r.register(Box::new(frames))?;
        r.register(Box::new(streamed))?;
        let pauses = prometheus::IntCounter::new("distgate_backpressure_pauses_total", "Times a leg stopped being read because the other leg's queue was full")?;
        pauses.inc_by(load(&stats.backpressure_pauses) as u64);
        r.register(Box::new(pauses))?;
        // Rare events by label: close reasons (handshake failures among them), policy actions,
        // EPMD problems. `close:bad_cookie` becomes {reason="bad_cookie"}.
        let closes = IntCounterVec::new(Opts::new("distgate_link_close_total", "Link closes by reason"), &["reason"])?;
        let policy = IntCounterVec::new(Opts::new("distgate_policy_actions_total", "Policy decisions other than pass, by action"), &["action"])?;
        let other = IntCounterVec::new(Opts::new("distgate_events_total", "Other counted events"), &["event"])?;
        for (label, n) in stats.labelled() {
            if let Some(r) = label.strip_prefix("close:") {
                closes.with_label_values(&[r]).inc_by(n);
            } else if let Some(a) = label.strip_prefix("policy:") {
                policy.with_label_values(&[a]).inc_by(n);
            } else {
                other.with_label_values(&[&label]).inc_by(n);
            }
        }
        r.register(Box::new(closes))?;
        r.register(Box::new(policy))?;
        r.register(Box::new(other))?;
        r.register(Box::new(stats.frame_time.clone()))?;
        let drv = IntGaugeVec::new(Opts::new("distgate_driver", "The data-plane driver in use (1)"), &["driver"])?;
        drv.with_label_values(&[driver]).set(1);
        r.register(Box::new(drv))?;
        let up = IntGauge::new("distgate_up", "1 while distgate runs")?;
        up.set(1);
        r.register(Box::new(up))?;
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "metrics: a family could not be registered");
    }
    if let Some(Err(e)) = extra.map(|f| f(&r)) {
        tracing::warn!(error = %e, "metrics: a family could not be registered");
    }
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&r.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn load(c: &std::sync::atomic::AtomicU64) -> i64 {
    c.load(std::sync::atomic::Ordering::Relaxed) as i64
}

/// Serve `GET /metrics` on `addr` from a background thread. Returns the bound address.
pub fn serve(addr: SocketAddr, stats: Arc<Stats>, driver: &'static str, extra: Option<Extra>) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let bound = l.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut line = String::new();
            let mut r = BufReader::new(match s.try_clone() {
                Ok(c) => c,
                Err(_) => continue,
            });
            if r.read_line(&mut line).is_err() {
                continue;
            }
            // Drain the headers so the client sees a clean response.
            let mut h = String::new();
            while r.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                h.clear();
            }
            let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
                ("200 OK", render(&stats, driver, extra.as_ref()))
            } else {
                ("404 Not Found", "not found; try /metrics\n".to_string())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(bound)
}
