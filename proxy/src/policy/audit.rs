//! Audit: one JSON object per non-pass decision, logged through `tracing` under the target
//! `distgate::audit` (so `[log] level = "…,distgate::audit=off"` silences it), at most
//! `audit_per_second` lines per second per policy; and a counter per action in
//! [`crate::stats::Stats`] (`policy:<action>`, `policy:dry_run:<action>`,
//! `policy:audit_suppressed`), which counts every decision whether logged or not.

use std::fmt::Write as _;
use std::time::Instant;

use distgate_codec::control::op_name;

use super::compile::Compiled;
use super::engine::Judgement;
use crate::stats::Stats;

/// Where a decision was made.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    pub link: u64,
    /// `from->to` cluster names.
    pub route: &'a str,
    /// `down->up` or `up->down`.
    pub direction: &'a str,
}

/// JSON string escaping (RFC 8259): quotes, backslash, control characters.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The audit line of finding `i` of `j`.
pub fn line(p: &Compiled, site: &Site<'_>, op: u8, j: &Judgement, i: usize, dry_run: bool) -> String {
    let f = &j.findings[i];
    let mut s = String::with_capacity(256);
    let _ = write!(s, "{{\"link\":{},\"route\":", site.link);
    push_json_str(&mut s, site.route);
    s.push_str(",\"direction\":");
    push_json_str(&mut s, site.direction);
    s.push_str(",\"policy\":");
    push_json_str(&mut s, &p.name);
    s.push_str(",\"op\":");
    push_json_str(&mut s, op_name(op));
    s.push_str(",\"rule\":");
    push_json_str(&mut s, f.rule);
    s.push_str(",\"module\":");
    push_json_str(&mut s, &f.module);
    s.push_str(",\"fun\":");
    push_json_str(&mut s, &f.subject);
    s.push_str(",\"action\":");
    push_json_str(&mut s, f.action);
    s.push_str(",\"message\":");
    push_json_str(&mut s, j.verdict.name());
    if let Some(d) = &f.detail {
        s.push_str(",\"detail\":");
        push_json_str(&mut s, d);
    }
    let _ = write!(s, ",\"dry_run\":{dry_run}}}");
    s
}

/// Count and (rate permitting) log every finding of `j`.
pub fn record(p: &Compiled, stats: Option<&Stats>, site: &Site<'_>, op: u8, j: &Judgement, dry_run: bool, now: Instant) {
    for (i, f) in j.findings.iter().enumerate() {
        if let Some(s) = stats {
            if dry_run {
                s.count(&format!("policy:dry_run:{}", f.action));
            } else {
                s.count(&format!("policy:{}", f.action));
            }
        }
        if p.audit.allow(now) {
            tracing::warn!(target: "distgate::audit", "{}", line(p, site, op, j, i, dry_run));
        } else if let Some(s) = stats.filter(|_| p.audit.enabled()) {
            s.count("policy:audit_suppressed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
    }
}
