//! The configuration's types and how each is read from its TOML table.
//!
//! Every section has a `Default` that is the documented default (docs/config.md); decoding
//! starts from it and overrides what the file sets. Values are checked one by one here
//! (ranges, grammars); checks across keys and sections are in `validate.rs`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::cookie::{Cookie, CookieSource};
use crate::decode::{keyword_enum, parse_str, Cx, FromValue, OneOrMany, Table, Value};
use crate::pattern::NodePattern;
use crate::policy::Policy;
use crate::units::{Dur, HostPort, OptDur, PortRange, Size};
use crate::Origin;

/// A whole configuration, validated. Plain data: clone it, compare it, swap it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[[cluster]]`, in file order.
    pub clusters: Vec<Cluster>,
    /// `[[route]]`, in file order.
    pub routes: Vec<Route>,
    /// `[policy.NAME]`, by name.
    pub policies: BTreeMap<String, Policy>,
    pub registry: Registry,
    pub runtime: Runtime,
    pub limits: Limits,
    pub metrics: Metrics,
    pub log: Log,
    /// Where each key was found, for messages about the configuration after it loaded.
    /// Ignored by `==`.
    pub origin: Origin,
}

impl Config {
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.get(name)
    }

    /// The route judging traffic from cluster `from` to cluster `to`, if any.
    pub fn route(&self, from: &str, to: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.from == from && r.to == to)
    }

    /// Whether nodes of `a` and `b` may be linked at all: a route in either direction.
    pub fn connected(&self, a: &str, b: &str) -> bool {
        self.route(a, b).is_some() || self.route(b, a).is_some()
    }

    /// The policy for frames flowing `from` → `to`: `None` when no route names one (frames
    /// are still parsed and bounded by `[limits]`, but not judged).
    pub fn policy_for(&self, from: &str, to: &str) -> Option<&Policy> {
        self.route(from, to)?.policy.as_deref().and_then(|p| self.policy(p))
    }
}

/// `[[cluster]]`: one set of nodes sharing a cookie.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Unique; used in routes, logs and metric labels.
    pub name: String,
    /// One of `cookie_file`, `cookie_env`, `cookie`.
    pub cookie: CookieSource,
    /// distgate's EPMD responder for this cluster's nodes (`ERL_EPMD_PORT` points here). The
    /// per-remote-node listening ports are opened on the same IP address.
    pub listen: SocketAddr,
    /// Where this cluster's nodes really register: a real epmd, or another distgate's
    /// responder. Empty: the nodes register with the responder itself.
    pub upstream_epmd: Vec<HostPort>,
    /// Only these nodes of the cluster are known to distgate (`*` globs); `None`: all.
    pub nodes: Option<Vec<NodePattern>>,
    /// Ports for the listeners distgate opens per remote node; `None`: the system picks.
    pub node_ports: Option<PortRange>,
    /// Links between this cluster's nodes and another cluster's, whichever dials, are hidden on
    /// both nodes (distgate presents no `PUBLISHED` on either leg): nodes of other clusters do
    /// not appear in its `nodes()` nor join its `global` mesh, and it does not appear in theirs.
    /// Links within the cluster (a self-route) are left as they are.
    pub hidden: bool,
    /// Where this cluster's module versions are learnt (`[cluster.registry]`).
    pub registry: ClusterRegistry,
}

/// `[cluster.registry]`: the module registry sources of one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterRegistry {
    /// Directories of `.beam` files, walked recursively.
    pub dirs: Vec<PathBuf>,
    /// Join the cluster as a hidden node and ask its nodes what is loaded.
    pub live: bool,
}

/// `[[route]]`: nodes of `from` and `to` may be linked, and frames flowing `from` → `to` are
/// judged by `policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub from: String,
    pub to: String,
    /// A `[policy.NAME]`; `None`: frames pass unjudged.
    pub policy: Option<String>,
}

/// `[registry]`: settings shared by every cluster's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// Where snapshots are saved so a restart starts warm; `None`: no cache.
    pub cache_file: Option<PathBuf>,
    /// How often live sources are asked again.
    pub refresh_interval: Duration,
    /// The name part of the hidden node distgate runs as when it joins a cluster.
    pub node_name: String,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { cache_file: None, refresh_interval: Duration::from_secs(300), node_name: "distgate".into() }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub threads: Threads,
    pub driver: Driver,
    /// On SIGTERM: how long established links may drain before they are closed.
    pub drain_timeout: Duration,
    /// How often the registrations distgate holds in other clusters' upstream EPMDs (the
    /// mirrors) are checked: one an EPMD dropped (restarted), or could not take, is made again.
    pub mirror_check: Duration,
    /// How the kernel schedules the data-plane threads.
    pub scheduling: Scheduling,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            threads: Threads::Auto,
            driver: Driver::Auto,
            drain_timeout: Duration::from_secs(30),
            mirror_check: Duration::from_secs(10),
            scheduling: Scheduling::Normal,
        }
    }
}

/// How many event-loop threads to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One per core the process may run on.
    Auto,
    Fixed(NonZeroUsize),
}

impl Threads {
    /// The number to start: `Auto` asks the system (affinity and cgroup quota included).
    pub fn count(self) -> NonZeroUsize {
        match self {
            Threads::Fixed(n) => n,
            Threads::Auto => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// Upper bound for `threads`: far above any machine this runs on, low enough to catch a
/// stray extra digit.
pub const MAX_THREADS: usize = 1024;

impl FromValue for Threads {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        use toml::de::DeValue;
        match v.get_ref() {
            DeValue::String(_) => parse_str(cx, path, v, "", |s| {
                if s == "auto" {
                    Ok(Threads::Auto)
                } else {
                    Err((format!("expected an integer or \"auto\", found \"{s}\""), None))
                }
            }),
            DeValue::Integer(_) => {
                let n = usize::from_value(cx, path, v)?;
                match NonZeroUsize::new(n) {
                    Some(n) if n.get() <= MAX_THREADS => Some(Threads::Fixed(n)),
                    _ => {
                        let help = (n == 0).then(|| "write \"auto\" for one thread per core".to_string());
                        cx.error(
                            v.span().start,
                            path,
                            format!("{path}: must be between 1 and {MAX_THREADS}, found {n}"),
                            help,
                        );
                        None
                    }
                }
            }
            _ => {
                crate::decode::type_error(cx, path, v, "an integer or \"auto\"");
                None
            }
        }
    }
}

keyword_enum! {
    /// Which data-plane driver to run.
    pub enum Driver ("driver") {
        /// io_uring when it can be set up, mio otherwise (the choice is logged).
        Auto = "auto",
        /// io_uring or fail to start.
        IoUring = "io_uring",
        /// mio (epoll) even where io_uring works.
        Mio = "mio",
    }
}

keyword_enum! {
    /// The Linux scheduling policy of the data-plane threads (see docs/operations.md,
    /// "Sharing CPUs with the nodes"). Why a choice: a thread woken by traffic may preempt the
    /// task running on its CPU, and when that task is the node sending the traffic (distgate
    /// beside busy nodes on few cores), every wake-up costs the sender a context switch.
    pub enum Scheduling ("scheduling policy") {
        /// `SCHED_OTHER`, the kernel's default: a woken data-plane thread may preempt.
        Normal = "normal",
        /// `SCHED_BATCH`: same share of the CPU, but a woken data-plane thread waits for the
        /// running task's turn to end (or another CPU) instead of preempting it: fewer context
        /// switches for busy nodes beside distgate, at the price of forwarding latency when
        /// every CPU is busy. Unprivileged, reversible by a reload.
        Batch = "batch",
    }
}

/// `[limits]`: what one peer can make distgate hold. Sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame (after the 4-byte length) accepted; a larger one closes its link.
    pub max_frame_bytes: usize,
    /// Fragmented messages being reassembled at once, per link direction.
    pub fragments_in_flight: usize,
    /// Bytes held for reassembly across those, per link direction.
    pub fragment_bytes: usize,
    /// Bytes read from one side and not yet written to the other, per link direction; at
    /// this point distgate stops reading that side (backpressure).
    pub link_buffer_bytes: usize,
    /// From accept (or dial) to the end of both handshakes.
    pub handshake_timeout: Duration,
    /// Nesting depth of a term.
    pub max_term_depth: usize,
    /// Largest uncompressed size of a compressed term.
    pub max_inflated_bytes: usize,
    /// A leg that sends nothing, ticks included, for this long is taken as dead and the link
    /// is closed. `None` ("off"): leave it to the nodes' own tick timeout.
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 << 20,
            fragments_in_flight: 256,
            fragment_bytes: 64 << 20,
            link_buffer_bytes: 8 << 20,
            handshake_timeout: Duration::from_secs(10),
            max_term_depth: 100_000,
            max_inflated_bytes: 64 << 20,
            idle_timeout: None,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    pub enabled: bool,
    /// Loopback by default: the endpoint has no authentication.
    pub listen: SocketAddr,
}

/// The default metrics address, 127.0.0.1:9464 (the port Prometheus exporters conventionally
/// use for OpenTelemetry-style endpoints).
pub const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));

impl Default for Metrics {
    fn default() -> Self {
        Metrics { enabled: true, listen: DEFAULT_METRICS_LISTEN }
    }
}

keyword_enum! {
    /// Log line format.
    pub enum LogFormat ("log format") {
        /// One readable line per event.
        Human = "human",
        /// One JSON object per line.
        Json = "json",
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub format: LogFormat,
    /// A `tracing` filter: `"info"`, or `"info,distgate::link=debug"`.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { format: LogFormat::Human, level: "info".into() }
    }
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Check a filter in the subset of `tracing_subscriber::EnvFilter` syntax distgate documents:
/// comma-separated `LEVEL` or `target=LEVEL`.
fn check_level(s: &String) -> Result<(), String> {
    for directive in s.split(',').map(str::trim) {
        let (target, level) = match directive.rsplit_once('=') {
            Some((t, l)) => (Some(t), l),
            None => (None, directive),
        };
        if let Some(t) = target {
            if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                return Err(format!("invalid target '{t}' in '{s}'"));
            }
        }
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            let hint = crate::decode::suggest(level, LEVELS.iter().copied())
                .map(|l| format!(" (did you mean '{l}'?)"))
                .unwrap_or_default();
            let within = if level == s { String::new() } else { format!(" in '{s}'") };
            return Err(format!("unknown level '{level}'{within}, expected one of {}{hint}", LEVELS.join(", ")));
        }
    }
    Ok(())
}

/// Names used in routes, logs and metric labels: keep them to characters that need no quoting
/// anywhere.
pub(crate) fn check_name(s: &String) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    match s.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        Some(c) => Err(format!("character {c:?} in '{s}' (use letters, digits, '_', '-' and '.')")),
        None => Ok(()),
    }
}

/// A path: any non-empty string.
#[derive(Debug)]
struct PathValue(PathBuf);

impl FromValue for PathValue {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        parse_str(cx, path, v, "a path", |s| {
            if s.is_empty() {
                Err(("empty path".into(), None))
            } else {
                Ok(PathValue(PathBuf::from(s)))
            }
        })
    }
}

/// A byte size with bounds, as `usize`.
fn size_in(t: &mut Table<'_>, cx: &mut Cx, key: &'static str, min: u64, max: u64) -> Option<usize> {
    use crate::units::format_size;
    let s = t.get_checked::<Size>(cx, key, |s| {
        if s.0 < min {
            Err(format!("must be at least {}, found {}", format_size(min), format_size(s.0)))
        } else if s.0 > max {
            Err(format!("must be at most {}, found {}", format_size(max), format_size(s.0)))
        } else {
            Ok(())
        }
    })?;
    usize::try_from(s.0).ok()
}

fn count_in(t: &mut Table<'_>, cx: &mut Cx, key: &'static str, min: usize, max: usize) -> Option<usize> {
    t.get_checked::<usize>(cx, key, |&n| {
        if (min..=max).contains(&n) {
            Ok(())
        } else {
            Err(format!("must be between {min} and {max}, found {n}"))
        }
    })
}

fn duration_in(t: &mut Table<'_>, cx: &mut Cx, key: &'static str, min: Duration, max: Duration) -> Option<Duration> {
    use crate::units::format_duration as f;
    let d = t.get_checked::<Dur>(cx, key, |d| {
        if d.0 < min || d.0 > max {
            Err(format!("must be between {} and {}, found {}", f(min), f(max), f(d.0)))
        } else {
            Ok(())
        }
    })?;
    Some(d.0)
}

/// Decode the top-level table. Returns `None` only if a required piece is missing, in which
/// case an error has been recorded.
pub(crate) fn decode_root(cx: &mut Cx, mut root: Table<'_>) -> Option<Config> {
    let clusters: Vec<Option<Cluster>> =
        root.tables(cx, "cluster").into_iter().map(|t| decode_cluster(cx, t)).collect();
    let routes: Vec<Option<Route>> = root.tables(cx, "route").into_iter().map(|t| decode_route(cx, t)).collect();
    let policies = match root.table(cx, "policy") {
        Some(t) => crate::policy::decode_policies(cx, t),
        None => BTreeMap::new(),
    };
    let t = root.section(cx, "registry");
    let registry = decode_registry(cx, t);
    let t = root.section(cx, "runtime");
    let runtime = decode_runtime(cx, t);
    let t = root.section(cx, "limits");
    let limits = decode_limits(cx, t);
    let t = root.section(cx, "metrics");
    let metrics = decode_metrics(cx, t);
    let t = root.section(cx, "log");
    let log = decode_log(cx, t);
    root.finish(cx);
    Some(Config {
        clusters: clusters.into_iter().collect::<Option<_>>()?,
        routes: routes.into_iter().collect::<Option<_>>()?,
        policies,
        registry,
        runtime,
        limits,
        metrics,
        log,
        origin: Origin::default(),
    })
}

fn decode_cluster(cx: &mut Cx, mut t: Table<'_>) -> Option<Cluster> {
    let name = t.get_checked::<String>(cx, "name", check_name);
    if t.span_of("name").is_none() {
        t.required::<String>(cx, "name");
    }
    let cookie = decode_cookie(cx, &mut t);
    let listen = t.required::<SocketAddr>(cx, "listen");
    let upstream_epmd = t.get_checked::<OneOrMany<HostPort>>(cx, "upstream_epmd", |l| {
        if l.0.is_empty() {
            Err("empty list: leave the key out when the nodes register with distgate itself".into())
        } else {
            Ok(())
        }
    });
    let nodes = t.get::<Vec<NodePattern>>(cx, "nodes");
    let node_ports = t.get::<PortRange>(cx, "node_ports");
    let hidden = t.get::<bool>(cx, "hidden");
    let registry = t.table(cx, "registry").map(|r| decode_cluster_registry(cx, r));
    t.finish(cx);
    Some(Cluster {
        name: name?,
        cookie: cookie?,
        listen: listen?,
        upstream_epmd: upstream_epmd.map(|l| l.0).unwrap_or_default(),
        nodes,
        node_ports,
        hidden: hidden.unwrap_or(false),
        registry: registry.unwrap_or_default(),
    })
}

const COOKIE_KEYS: [&str; 3] = ["cookie_file", "cookie_env", "cookie"];

/// Exactly one of `cookie_file`, `cookie_env`, `cookie`. The inline cookie's value is never
/// copied into a message, whatever is wrong with it.
fn decode_cookie(cx: &mut Cx, t: &mut Table<'_>) -> Option<CookieSource> {
    let present: Vec<&'static str> = COOKIE_KEYS.into_iter().filter(|k| t.span_of(k).is_some()).collect();
    let file = t.get::<PathValue>(cx, "cookie_file").map(|p| CookieSource::File(p.0));
    let env = t.get_checked::<String>(cx, "cookie_env", |v| {
        if !v.is_empty()
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !v.starts_with(|c: char| c.is_ascii_digit())
        {
            Ok(())
        } else {
            Err(format!("'{v}' is not an environment variable name"))
        }
    });
    let env = env.map(CookieSource::Env);
    let inline = t.raw(cx, "cookie").and_then(|v| {
        let path = t.key_path("cookie");
        match v.get_ref() {
            toml::de::DeValue::String(s) => match Cookie::new(s.as_ref()) {
                Ok(c) => Some(CookieSource::Inline(c)),
                // Cookie::new's messages never include the cookie.
                Err(m) => {
                    cx.error(v.span().start, &path, format!("{path}: {m}"), None);
                    None
                }
            },
            _ => {
                crate::decode::type_error(cx, &path, v, "a string");
                None
            }
        }
    });
    match present.as_slice() {
        [] => {
            let path = t.key_path("cookie_file");
            cx.error(
                t.span.start,
                &path,
                format!("missing cookie source in {}", t.header),
                Some("set one of cookie_file = \"PATH\", cookie_env = \"VAR\" or cookie = \"…\"".into()),
            );
            None
        }
        [_] => file.or(env).or(inline),
        [first, rest @ ..] => {
            for k in rest {
                let path = t.key_path(k);
                let at = t.span_of(k).map_or(t.span.start, |s| s.start);
                cx.error(
                    at,
                    &path,
                    format!("{path}: a second cookie source (already {first})"),
                    Some("give exactly one of cookie_file, cookie_env, cookie".into()),
                );
            }
            None
        }
    }
}

fn decode_cluster_registry(cx: &mut Cx, mut t: Table<'_>) -> ClusterRegistry {
    let dirs = t.get::<Vec<PathValue>>(cx, "dirs").map(|v| v.into_iter().map(|p| p.0).collect());
    let live = t.get::<bool>(cx, "live");
    t.finish(cx);
    ClusterRegistry { dirs: dirs.unwrap_or_default(), live: live.unwrap_or(false) }
}

fn decode_route(cx: &mut Cx, mut t: Table<'_>) -> Option<Route> {
    let from = t.required::<String>(cx, "from");
    let to = t.required::<String>(cx, "to");
    let policy = t.get::<String>(cx, "policy");
    t.finish(cx);
    Some(Route { from: from?, to: to?, policy })
}

fn decode_registry(cx: &mut Cx, mut t: Table<'_>) -> Registry {
    let d = Registry::default();
    let cache_file = t.get::<PathValue>(cx, "cache_file").map(|p| p.0);
    let refresh_interval =
        duration_in(&mut t, cx, "refresh_interval", Duration::from_secs(1), Duration::from_secs(7 * 86_400));
    let node_name = t.get_checked::<String>(cx, "node_name", |s| {
        match s.chars().find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')) {
            _ if s.is_empty() => Err("must not be empty".into()),
            Some('@') => Err(format!("'{s}': give only the name part; the host is the one distgate runs on")),
            Some(c) => Err(format!("character {c:?} in node name '{s}'")),
            None => Ok(()),
        }
    });
    t.finish(cx);
    Registry {
        cache_file,
        refresh_interval: refresh_interval.unwrap_or(d.refresh_interval),
        node_name: node_name.unwrap_or(d.node_name),
    }
}

fn decode_runtime(cx: &mut Cx, mut t: Table<'_>) -> Runtime {
    let d = Runtime::default();
    let threads = t.get::<Threads>(cx, "threads");
    let driver = t.get::<Driver>(cx, "driver");
    let drain = duration_in(&mut t, cx, "drain_timeout", Duration::ZERO, Duration::from_secs(3600));
    let mirror_check = duration_in(&mut t, cx, "mirror_check", Duration::from_millis(100), Duration::from_secs(3600));
    let scheduling = t.get::<Scheduling>(cx, "scheduling");
    t.finish(cx);
    Runtime {
        threads: threads.unwrap_or(d.threads),
        driver: driver.unwrap_or(d.driver),
        drain_timeout: drain.unwrap_or(d.drain_timeout),
        mirror_check: mirror_check.unwrap_or(d.mirror_check),
        scheduling: scheduling.unwrap_or(d.scheduling),
    }
}

fn decode_limits(cx: &mut Cx, mut t: Table<'_>) -> Limits {
    const KIB: u64 = 1 << 10;
    let d = Limits::default();
    let l = Limits {
        // The frame length is a u32 on the wire.
        max_frame_bytes: size_in(&mut t, cx, "max_frame_bytes", KIB, u64::from(u32::MAX)).unwrap_or(d.max_frame_bytes),
        fragments_in_flight: count_in(&mut t, cx, "fragments_in_flight", 1, 65_536).unwrap_or(d.fragments_in_flight),
        fragment_bytes: size_in(&mut t, cx, "fragment_bytes", 64 * KIB, 1 << 40).unwrap_or(d.fragment_bytes),
        link_buffer_bytes: size_in(&mut t, cx, "link_buffer_bytes", 64 * KIB, 1 << 40).unwrap_or(d.link_buffer_bytes),
        handshake_timeout: duration_in(
            &mut t,
            cx,
            "handshake_timeout",
            Duration::from_millis(100),
            Duration::from_secs(600),
        )
        .unwrap_or(d.handshake_timeout),
        max_term_depth: count_in(&mut t, cx, "max_term_depth", 16, 10_000_000).unwrap_or(d.max_term_depth),
        max_inflated_bytes: size_in(&mut t, cx, "max_inflated_bytes", KIB, 1 << 40).unwrap_or(d.max_inflated_bytes),
        idle_timeout: t
            .get_checked::<OptDur>(cx, "idle_timeout", |d| match d.0 {
                Some(d) if d < Duration::from_secs(1) => Err("must be at least 1s (or \"off\")".into()),
                _ => Ok(()),
            })
            .map_or(d.idle_timeout, |o| o.0),
    };
    t.finish(cx);
    l
}

fn decode_metrics(cx: &mut Cx, mut t: Table<'_>) -> Metrics {
    let d = Metrics::default();
    let enabled = t.get::<bool>(cx, "enabled");
    let listen = t.get::<SocketAddr>(cx, "listen");
    t.finish(cx);
    Metrics { enabled: enabled.unwrap_or(d.enabled), listen: listen.unwrap_or(d.listen) }
}

fn decode_log(cx: &mut Cx, mut t: Table<'_>) -> Log {
    let d = Log::default();
    let format = t.get::<LogFormat>(cx, "format");
    let level = t.get_checked::<String>(cx, "level", check_level);
    t.finish(cx);
    Log { format: format.unwrap_or(d.format), level: level.unwrap_or(d.level) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert!(check_level(&"info".into()).is_ok());
        assert!(check_level(&"warn,distgate::link=debug".into()).is_ok());
        assert!(check_level(&"INFO".into()).is_ok());
        assert!(check_level(&"inf".into()).unwrap_err().contains("did you mean 'info'"));
        assert!(check_level(&"x y=info".into()).is_err());
        assert!(check_level(&"".into()).is_err());
    }

    #[test]
    fn names() {
        assert!(check_name(&"dc-1.east_a".into()).is_ok());
        assert!(check_name(&"".into()).is_err());
        assert!(check_name(&"a b".into()).is_err());
    }
}
