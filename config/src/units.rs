//! Value grammars shared by several keys: durations, byte sizes, addresses, port ranges.
//!
//! Durations are strings with a unit (`"250ms"`, `"10s"`, `"5m"`, `"1h"`), never bare
//! integers: a bare `10` could mean seconds or milliseconds, and the file should say which.
//! Sizes are either an integer (bytes) or a string with a binary unit (`"64KiB"`, `"8 MiB"`,
//! `"1GiB"`); decimal units (`MB`) are refused rather than guessed.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use toml::de::DeValue;

use crate::decode::{integer, parse_str, type_error, Cx, FromValue, Value};

/// Parse `"250ms"`, `"10s"`, `"5m"`, `"1h"` (one number, one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim_start();
    if num.is_empty() {
        return Err(format!("invalid duration '{s}', expected a number and a unit, e.g. \"10s\""));
    }
    let n: u64 = num.parse().map_err(|_| format!("duration '{s}' is too large"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "" => return Err(format!("duration '{s}' has no unit: write \"{n}s\" or \"{n}ms\"")),
        _ => return Err(format!("unknown unit '{unit}' in duration '{s}', expected ms, s, m or h")),
    };
    n.checked_mul(scale).map(Duration::from_millis).ok_or_else(|| format!("duration '{s}' is too large"))
}

/// How a duration is written back: the largest unit that divides it exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, scale) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms.is_multiple_of(scale) {
            return format!("{}{unit}", ms / scale);
        }
    }
    format!("{ms}ms")
}

/// A duration key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub Duration);

impl FromValue for Dur {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        if let DeValue::Integer(i) = v.get_ref() {
            // The most likely slip, so it gets its own message.
            let message = format!("{path}: durations need a unit: write \"{i}s\" or \"{i}ms\"");
            cx.error(v.span().start, path, message, None);
            return None;
        }
        parse_str(cx, path, v, "a duration such as \"10s\"", |s| parse_duration(s).map_err(|m| (m, None))).map(Dur)
    }
}

/// A duration that may be switched off with `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OptDur(pub Option<Duration>);

impl FromValue for OptDur {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        if let DeValue::String(s) = v.get_ref() {
            if s.as_ref() == "off" {
                return Some(OptDur(None));
            }
        }
        Dur::from_value(cx, path, v).map(|d| OptDur(Some(d.0)))
    }
}

/// Parse `"64KiB"`, `"8 MiB"`, `"1GiB"`, `"512B"`, `"4096"`.
pub fn parse_size(s: &str) -> Result<u64, (String, Option<String>)> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start();
    if num.is_empty() {
        return Err((
            format!("invalid size '{s}'"),
            Some("write bytes as an integer, or e.g. \"64KiB\", \"8MiB\", \"1GiB\"".into()),
        ));
    }
    let n: u64 = num.parse().map_err(|_| (format!("size '{s}' is too large"), None))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" | "k" => 10,
        "mib" | "m" => 20,
        "gib" | "g" => 30,
        "kb" | "mb" | "gb" => {
            let binary = format!("{}i{}", &unit[..1].to_ascii_uppercase(), "B");
            return Err((
                format!("decimal unit '{unit}' in size '{s}'"),
                Some(format!("sizes use binary units: write \"{num}{binary}\"")),
            ));
        }
        _ => return Err((format!("unknown unit '{unit}' in size '{s}', expected B, KiB, MiB or GiB"), None)),
    };
    n.checked_mul(1 << shift).ok_or_else(|| (format!("size '{s}' is too large"), None))
}

/// How a size is written back: the largest binary unit that divides it exactly.
pub fn format_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n != 0 && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

/// A byte-size key's value: an integer or a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

impl FromValue for Size {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        match v.get_ref() {
            DeValue::Integer(_) => integer(cx, path, v, "a size").map(Size),
            DeValue::String(_) => parse_str(cx, path, v, "a size", parse_size).map(Size),
            _ => {
                type_error(cx, path, v, "a size (bytes, or a string such as \"64KiB\")");
                None
            }
        }
    }
}

/// A socket address to listen on: an IP address and a port. Host names are refused here
/// because a listener binds before anything could resolve them.
impl FromValue for SocketAddr {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        parse_str(cx, path, v, "an address such as \"127.0.0.1:4370\"", |s| {
            SocketAddr::from_str(s).map_err(|_| {
                let help = if let Ok(ip) = s.parse::<std::net::IpAddr>() {
                    let with_port = if ip.is_ipv6() { format!("[{ip}]:PORT") } else { format!("{ip}:PORT") };
                    format!("add the port: \"{with_port}\"")
                } else if s.starts_with("localhost") {
                    "use an IP address: \"127.0.0.1:PORT\"".to_string()
                } else {
                    "expected IP:PORT, e.g. \"127.0.0.1:4370\" or \"[::1]:4370\"".to_string()
                };
                (format!("invalid address '{s}'"), Some(help))
            })
        })
    }
}

/// An address to connect to: a host name or IP address, and a port. Resolved when
/// connecting, so DNS names (a Kubernetes Service) are fine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> Self {
        HostPort { host: a.ip().to_string(), port: a.port() }
    }
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(sa) = SocketAddr::from_str(s) {
            return Ok(HostPort { host: sa.ip().to_string(), port: sa.port() });
        }
        let (host, port) = s.rsplit_once(':').ok_or("expected HOST:PORT")?;
        let port: u16 = port.parse().map_err(|_| format!("invalid port '{port}'"))?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.trim_end_matches('.').split('.').all(label_ok) {
            return Err(format!("invalid host name '{host}'"));
        }
        if port == 0 {
            return Err("port 0 cannot be connected to".into());
        }
        Ok(HostPort { host: host.to_string(), port })
    }
}

impl FromValue for HostPort {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        parse_str(cx, path, v, "an address such as \"127.0.0.1:4369\"", |s| {
            s.parse().map_err(|m| {
                (
                    format!("invalid address '{s}': {m}"),
                    Some("expected HOST:PORT, e.g. \"127.0.0.1:4369\" or \"epmd.example:4369\"".into()),
                )
            })
        })
    }
}

/// An inclusive range of TCP ports, written `"20000-20999"` (or one port, `"20000"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) => Err("port 0 is not a port to listen on (leave the key out for ports the system picks)".into()),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("invalid port '{}'", p.trim())),
            }
        };
        let (first, last) = (port(a)?, port(b)?);
        if first > last {
            return Err(format!("range '{s}' is backwards"));
        }
        Ok(PortRange { first, last })
    }
}

impl FromValue for PortRange {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        parse_str(cx, path, v, "a port range such as \"20000-20999\"", |s| s.parse().map_err(|m| (m, None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1 h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10d").unwrap_err().contains("unknown unit 'd'"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        for d in ["250ms", "10s", "5m", "2h", "1500ms", "0ms"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("8 MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        let (m, help) = parse_size("8MB").unwrap_err();
        assert!(m.contains("decimal unit 'MB'"), "{m}");
        assert_eq!(help.as_deref(), Some("sizes use binary units: write \"8MiB\""));
        assert!(parse_size("8 furlongs").is_err());
        assert!(parse_size("99999999999GiB").is_err());
        for s in ["64KiB", "8MiB", "1GiB", "1000B"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }

    #[test]
    fn host_ports() {
        assert_eq!("127.0.0.1:4369".parse(), Ok(HostPort { host: "127.0.0.1".into(), port: 4369 }));
        assert_eq!("[::1]:4369".parse(), Ok(HostPort { host: "::1".into(), port: 4369 }));
        assert_eq!("[::1]:4369".parse::<HostPort>().unwrap().to_string(), "[::1]:4369");
        assert_eq!("epmd.ns.svc.cluster.local:4369".parse::<HostPort>().unwrap().port, 4369);
        assert!("epmd".parse::<HostPort>().is_err());
        assert!("epmd:x".parse::<HostPort>().is_err());
        assert!("bad_host:4369".parse::<HostPort>().is_err());
        assert!("h:0".parse::<HostPort>().is_err());
    }

    #[test]
    fn port_ranges() {
        let r: PortRange = "20000-20009".parse().unwrap();
        assert_eq!((r.first, r.last, r.len()), (20000, 20009, 10));
        assert_eq!("4371".parse::<PortRange>().unwrap().len(), 1);
        assert!("2-1".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("1-70000".parse::<PortRange>().is_err());
        assert!(r.overlaps(&"20009-20100".parse().unwrap()));
        assert!(!r.overlaps(&"20010-20100".parse().unwrap()));
    }
}
