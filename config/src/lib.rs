//! distgate's configuration: the TOML schema, its validation, and the embedded default.
//!
//! ```no_run
//! let config = distgate_config::load("/etc/distgate/distgate.toml").unwrap_or_else(|errors| {
//!     eprintln!("{errors}"); // one line per problem, each with file:line:column
//!     std::process::exit(1);
//! });
//! let cookies = config.resolve_cookies(); // reads cookie files / variables; errors located too
//! ```
//!
//! - [`load`] / [`parse`]: text → [`Config`], or every problem found as [`Errors`];
//! - [`Config::embedded_default`] / [`EMBEDDED_DEFAULT`]: what `distgate run` uses without `-c`;
//! - [`Config::resolve_cookies`]: the secrets, read at start and at each reload, never printed;
//! - [`Config::restart_required`]: on reload, what in a new file cannot apply until restart.
//!
//! The reference for every key, with defaults, is docs/config.md.

mod cookie;
mod decode;
mod error;
mod pattern;
mod policy;
mod schema;
mod units;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

pub use cookie::{expand_home, Cookie, CookieSource, REDACTED};
pub use error::{Error, Errors};
pub use pattern::{Glob, MfPattern, Mfa, NodePattern};
pub use policy::{ControlOp, ControlRules, DenyAction, FunAction, FunMapping, ModuleRule, Policy, Preset};
pub use schema::{
    Cluster, ClusterRegistry, Config, Driver, Limits, Log, LogFormat, Metrics, Registry, Route, Runtime, Scheduling, Threads,
    DEFAULT_METRICS_LISTEN, MAX_THREADS,
};
pub use units::{format_duration, format_size, parse_duration, parse_size, HostPort, PortRange};

use decode::{Cx, Table};
use error::LineIndex;

/// The configuration `distgate run` uses when given no file: a responder on 127.0.0.1:4370
/// for a cluster "local" made of the nodes registered with the standard epmd on
/// 127.0.0.1:4369, with the cookie from `~/.erlang.cookie` on both legs. So
/// `ERL_EPMD_PORT=4370 erl -sname a` reaches every node on 4369 through distgate.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// The name [`Config::embedded_default`] reports in positions.
pub const EMBEDDED_DEFAULT_NAME: &str = "<embedded default>";

/// Configuration files larger than this are refused before parsing: a real one is a few KiB,
/// and `check` should not be a way to make distgate allocate without bound.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Read and check a configuration file. Errors name the path as given.
pub fn load(path: impl AsRef<Path>) -> Result<Config, Errors> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let whole = |message: String| {
        Errors(vec![Error { file: name.clone(), line: 0, column: 0, key: String::new(), message, help: None }])
    };
    let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read {name}: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(whole(format!("{name} is {} bytes; a configuration is at most {MAX_FILE_BYTES}", meta.len())));
    }
    let bytes = std::fs::read(path).map_err(|e| whole(format!("cannot read {name}: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let ix = e.utf8_error().valid_up_to();
        let src = String::from_utf8_lossy(&e.as_bytes()[..ix]).into_owned();
        let (line, column) = LineIndex::new(&src).position(&src, ix);
        Errors(vec![Error {
            file: name.clone(),
            line,
            column,
            key: String::new(),
            message: "the file is not UTF-8".into(),
            help: None,
        }])
    })?;
    parse(&text, &name)
}

/// Check a configuration given as text; `file` names it in errors.
pub fn parse(src: &str, file: &str) -> Result<Config, Errors> {
    let lines = LineIndex::new(src);
    let to_error = |d: decode::Diag| {
        let (line, column) = lines.position(src, d.offset);
        Error { file: file.to_string(), line, column, key: d.key, message: d.message, help: d.help }
    };

    let (root, syntax) = toml::de::DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        // After a syntax error the tree is a guess; checking it further would mostly report
        // consequences of the typo. Report what the parser found, by position only: the
        // parser's own rendering quotes the line, which could hold a cookie.
        let mut diags: Vec<decode::Diag> = syntax
            .iter()
            .map(|e| decode::Diag {
                offset: e.span().map_or(0, |s| s.start),
                key: String::new(),
                message: format!("TOML syntax: {}", e.message()),
                help: None,
            })
            .collect();
        diags.sort_by_key(|d| d.offset);
        diags.dedup_by(|a, b| a.offset == b.offset && a.message == b.message);
        return Err(Errors(diags.into_iter().map(to_error).collect()));
    }

    let mut cx = Cx::default();
    let table = Table::new(String::new(), String::new(), root.span(), root.get_ref());
    let config = schema::decode_root(&mut cx, table);
    if let Some(config) = &config {
        validate::validate(&mut cx, config);
    }
    match config {
        Some(mut config) if !cx.has_errors() => {
            config.origin = Origin {
                file: file.to_string(),
                positions: cx.spans.iter().map(|(k, s)| (k.clone(), lines.position(src, s.start))).collect(),
            };
            Ok(config)
        }
        _ => Err(Errors(cx.into_diags().into_iter().map(to_error).collect())),
    }
}

/// Where each key of a loaded configuration was written, so that problems found later (a
/// cookie file that cannot be read, a port that cannot be bound) can point into the file.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub file: String,
    /// Key path (`cluster[0].listen`) → (line, column) of its value.
    pub positions: BTreeMap<String, (usize, usize)>,
}

impl Origin {
    /// An error about `key`, placed where the key was written (or at the file when unknown).
    pub fn error(&self, key: &str, message: String, help: Option<String>) -> Error {
        let (line, column) = self.positions.get(key).copied().unwrap_or((0, 0));
        Error { file: self.file.clone(), line, column, key: key.to_string(), message, help }
    }
}

impl PartialEq for Origin {
    /// Two configurations that say the same thing are equal wherever they were written.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Config {
    /// [`EMBEDDED_DEFAULT`], parsed. Its validity is checked by this crate's tests.
    pub fn embedded_default() -> Config {
        match parse(EMBEDDED_DEFAULT, EMBEDDED_DEFAULT_NAME) {
            Ok(c) => c,
            Err(e) => unreachable!("the embedded default does not parse:\n{e}"),
        }
    }

    /// Read every cluster's cookie (files, environment variables), by cluster name. Called at
    /// start and on each reload; failures point at the cookie key in the file.
    pub fn resolve_cookies(&self) -> Result<BTreeMap<String, Cookie>, Errors> {
        let mut out = BTreeMap::new();
        let mut errors = Vec::new();
        for (i, c) in self.clusters.iter().enumerate() {
            match c.cookie.resolve() {
                Ok(cookie) => {
                    out.insert(c.name.clone(), cookie);
                }
                Err(m) => {
                    let key = match c.cookie {
                        CookieSource::File(_) => "cookie_file",
                        CookieSource::Env(_) => "cookie_env",
                        CookieSource::Inline(_) => "cookie",
                    };
                    let path = format!("cluster[{i}].{key}");
                    errors.push(self.origin.error(&path, format!("{path}: {m}"), None));
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(Errors(errors))
        }
    }

    /// On reload: the settings in `new` that differ from `self` and only take effect after a
    /// restart (listeners, threads, the metrics endpoint, the log format), as key paths.
    /// Everything else (routes, policies, cookies, registry sources, upstream EPMDs, limits
    /// for new links, the log level) can be swapped in.
    pub fn restart_required(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        let mut differ = |key: &str, a: bool| {
            if a {
                out.push(key.to_string());
            }
        };
        differ("runtime.threads", self.runtime.threads != new.runtime.threads);
        differ("runtime.driver", self.runtime.driver != new.runtime.driver);
        differ("metrics", self.metrics != new.metrics);
        differ("log.format", self.log.format != new.log.format);
        for c in &self.clusters {
            match new.cluster(&c.name) {
                None => out.push(format!("cluster '{}' (removed)", c.name)),
                Some(n) => {
                    if n.listen != c.listen {
                        out.push(format!("cluster '{}' listen", c.name));
                    }
                    if n.node_ports != c.node_ports {
                        out.push(format!("cluster '{}' node_ports", c.name));
                    }
                }
            }
        }
        for n in &new.clusters {
            if self.cluster(&n.name).is_none() {
                out.push(format!("cluster '{}' (added)", n.name));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ok(src: &str) -> Config {
        parse(src, "t.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn errs(src: &str) -> String {
        parse(src, "t.toml").expect_err("should fail").to_string()
    }

    const MIN: &str = "[[cluster]]\nname = \"a\"\ncookie_env = \"C\"\nlisten = \"127.0.0.1:4370\"\n";

    #[test]
    fn embedded_default_is_what_issue_3_asks_for() {
        let c = Config::embedded_default();
        assert_eq!(c.clusters.len(), 1);
        let local = &c.clusters[0];
        assert_eq!(local.name, "local");
        assert_eq!(local.listen, "127.0.0.1:4370".parse().unwrap());
        assert_eq!(local.upstream_epmd, vec![HostPort { host: "127.0.0.1".into(), port: 4369 }]);
        assert_eq!(local.cookie, CookieSource::File("~/.erlang.cookie".into()));
        assert!(local.nodes.is_none() && !local.hidden);
        // Both legs are in "local", so one route carries everything, unjudged.
        assert_eq!(c.routes, vec![Route { from: "local".into(), to: "local".into(), policy: None }]);
        assert!(c.policies.is_empty());
        assert_eq!(c.runtime, Runtime::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.metrics, Metrics::default());
        assert_eq!(c.log, Log::default());
        assert_eq!(c.origin.file, EMBEDDED_DEFAULT_NAME);
    }

    #[test]
    fn defaults_fill_absent_sections() {
        let c = ok(MIN);
        assert_eq!(c.runtime.threads, Threads::Auto);
        assert_eq!(c.runtime.driver, Driver::Auto);
        assert_eq!(c.runtime.scheduling, Scheduling::Normal);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.metrics.listen, DEFAULT_METRICS_LISTEN);
        assert_eq!(c.registry.refresh_interval, Duration::from_secs(300));
        assert!(c.routes.is_empty());
    }

    #[test]
    fn every_section_read() {
        let c = ok(&format!(
            r#"{MIN}
upstream_epmd = ["10.0.0.1:4369", "epmd.svc:4369"]
nodes = ["a*@host"]
node_ports = "20000-20009"
hidden = true
registry = {{ dirs = ["/srv/a/lib"], live = true }}

[[route]]
from = "a"
to = "a"
policy = "p"

[policy.p]
preset = "untrusted"
dry_run = true
unknown_fun = "rewrite"
unknown_export = "drop"
rewrite_fallback = "close"
audit_per_second = 5
modules = {{ "lists" = {{ unknown_fun = "pass" }}, "my_*" = {{ unknown_export = "close" }} }}
fun_map = {{ "m:'-f/1-fun-0-'" = "m:f/1" }}
control = {{ deny_ops = ["group_leader"], spawn_allow = ["my_api:*"], reg_send_allow = ["srv_*"], rpc_allow = ["erlang:node/0"], on_deny = "close" }}

[registry]
cache_file = "/var/lib/distgate/registry.cache"
refresh_interval = "1m"
node_name = "gate"

[runtime]
threads = 2
driver = "mio"
drain_timeout = "5s"
mirror_check = "30s"
scheduling = "batch"

[limits]
max_frame_bytes = "16MiB"
fragments_in_flight = 8
fragment_bytes = 1048576
link_buffer_bytes = "1 MiB"
handshake_timeout = "2s"
max_term_depth = 1000
max_inflated_bytes = "8MiB"
idle_timeout = "90s"

[metrics]
enabled = false
listen = "[::1]:9000"

[log]
format = "json"
level = "warn,distgate::link=debug"
"#
        ));
        let a = &c.clusters[0];
        assert_eq!(a.upstream_epmd[1].to_string(), "epmd.svc:4369");
        assert!(a.nodes.as_ref().unwrap()[0].matches("a1@host"));
        assert_eq!(a.node_ports.unwrap().len(), 10);
        assert!(a.hidden && a.registry.live);
        let p = c.policy_for("a", "a").unwrap();
        assert_eq!(p.preset, Preset::Untrusted);
        assert!(p.dry_run);
        assert_eq!(p.unknown_fun_for("lists"), FunAction::Pass);
        assert_eq!(p.unknown_fun_for("other"), FunAction::Rewrite);
        assert_eq!(p.unknown_export_for("my_mod"), FunAction::Close);
        assert_eq!(p.unknown_export_for("lists"), FunAction::Drop);
        assert_eq!(p.rewrite_fallback, FunAction::Close);
        assert_eq!(p.mapping("m", "-f/1-fun-0-", 1).unwrap().to_string(), "m:f/1");
        assert!(p.mapping("m", "-f/1-fun-1-", 1).is_none());
        assert!(!p.control.op_allowed(7) && p.control.op_allowed(2));
        assert!(p.control.spawn_allow.as_ref().unwrap()[0].matches("my_api", "x", Some(1)));
        assert_eq!(p.control.on_deny, DenyAction::Close);
        assert_eq!(c.registry.node_name, "gate");
        assert_eq!(c.runtime.threads, Threads::Fixed(2.try_into().unwrap()));
        assert_eq!(c.runtime.mirror_check, Duration::from_secs(30));
        assert_eq!(c.runtime.scheduling, Scheduling::Batch);
        assert_eq!(c.limits.max_frame_bytes, 16 << 20);
        assert_eq!(c.limits.link_buffer_bytes, 1 << 20);
        assert_eq!(c.limits.idle_timeout, Some(Duration::from_secs(90)));
        assert!(!c.metrics.enabled);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.origin.positions["runtime.threads"], (c.origin.positions["runtime.threads"].0, 11));
    }

    #[test]
    fn all_errors_not_just_the_first() {
        let e = errs("[runtime]\nthreads = 0\ndriver = \"uring\"\ntreads = 1\n[limits]\nhandshake_timeout = 10\n");
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 5, "{e}");
        assert!(lines[0].starts_with("error: no [[cluster]]"), "{e}");
        assert!(lines[1].contains("runtime.threads: must be between 1 and 1024, found 0 at t.toml:2:11"), "{e}");
        assert!(lines[2].contains("did you mean 'io_uring'?"), "{e}");
        assert!(lines[3].contains("unknown key 'treads' in [runtime] at t.toml:4:1 — did you mean 'threads'?"), "{e}");
        assert!(lines[4].contains("durations need a unit: write \"10s\" or \"10ms\""), "{e}");
    }

    #[test]
    fn mirror_check_out_of_range_says_where() {
        let e = errs(&format!("{MIN}[runtime]\nmirror_check = \"50ms\"\n"));
        assert!(e.contains("runtime.mirror_check: must be between 100ms and 1h, found 50ms at t.toml:6:16"), "{e}");
        let e = errs(&format!("{MIN}[runtime]\nmirror_check = 10\n"));
        assert!(e.contains("durations need a unit"), "{e}");
    }

    #[test]
    fn unknown_scheduling_says_where_and_what_is_accepted() {
        let e = errs(&format!("{MIN}[runtime]\nscheduling = \"idle\"\n"));
        assert!(e.contains("runtime.scheduling: unknown scheduling policy 'idle', expected one of 'normal', 'batch' at t.toml:6:14"), "{e}");
    }

    #[test]
    fn key_in_the_wrong_section_is_pointed_home() {
        let e = errs(&format!("{MIN}[limits]\nthreads = 2\n"));
        assert!(e.contains("unknown key 'threads' in [limits] at t.toml:6:1 — 'threads' belongs in [runtime]"), "{e}");
    }

    #[test]
    fn cookie_sources() {
        let e = errs("[[cluster]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n");
        assert!(e.contains("missing cookie source in [[cluster]] at t.toml:1:1"), "{e}");
        let e = errs("[[cluster]]\nname = \"a\"\ncookie_env = \"A\"\ncookie_file = \"/c\"\nlisten = \"127.0.0.1:1\"\n");
        assert!(
            e.contains("cluster[0].cookie_env: a second cookie source (already cookie_file) at t.toml:3:14"),
            "{e}"
        );
        let e = errs("[[cluster]]\nname = \"a\"\ncookie_env = \"1A\"\nlisten = \"127.0.0.1:1\"\n");
        assert!(e.contains("not an environment variable name"), "{e}");
    }

    #[test]
    fn inline_cookie_never_printed() {
        const SECRET: &str = "SUPERSECRET";
        let src = format!("[[cluster]]\nname = \"a\"\ncookie = \"{SECRET}\"\nlisten = \"127.0.0.1:1\"\n");
        let c = ok(&src);
        assert!(!format!("{c:?}").contains(SECRET));
        assert!(!format!("{c:#?}").contains(SECRET));
        assert_eq!(c.resolve_cookies().unwrap()["a"].expose(), SECRET);
        // Every way the line could be wrong, and neighbours that are.
        for bad in [
            format!("cookie = \"{SECRET}\u{1}\""),
            format!("cookie = \"{SECRET}"),
            format!("cookie = {SECRET}"),
            format!("cookie = '{SECRET}' x"),
            format!("cookei = \"{SECRET}\""),
            format!("cookie = [\"{SECRET}\"]"),
            format!("cookie = \"{SECRET}\"\ncookie_env = \"X\""),
            format!("cookie = \"{}\"", SECRET.repeat(30)),
        ] {
            let src = format!("[[cluster]]\nname = \"a\"\n{bad}\nlisten = \"127.0.0.1:1\"\n");
            let e = parse(&src, "t.toml").expect_err(&bad);
            assert!(!e.to_string().contains(SECRET), "{bad}: {e}");
            assert!(!format!("{e:?}").contains(SECRET), "{bad}: {e:?}");
        }
    }

    #[test]
    fn cross_checks() {
        let two = format!("{MIN}[[cluster]]\nname = \"a\"\ncookie_env = \"C\"\nlisten = \"127.0.0.1:4370\"\n");
        let e = errs(&two);
        assert!(e.contains("cluster[1].name: duplicate cluster name 'a' (also cluster[0]) at t.toml:6:8"), "{e}");
        assert!(
            e.contains("cluster[1].listen: address 127.0.0.1:4370 is already used by cluster[0].listen at t.toml:8:10"),
            "{e}"
        );
        let e = errs(&format!("{MIN}[[route]]\nfrom = \"a\"\nto = \"b\"\npolicy = \"strict\"\n[policy.strikt]\n"));
        assert!(e.contains("route[0].to: no cluster named 'b' at t.toml:7:6 — clusters: 'a'"), "{e}");
        assert!(e.contains("route[0].policy: no policy named 'strict' at t.toml:8:10 — did you mean 'strikt'?"), "{e}");
        let e = errs(&format!("{MIN}[[route]]\nfrom = \"a\"\nto = \"a\"\n[[route]]\nfrom = \"a\"\nto = \"a\"\n"));
        assert!(e.contains("route[1]: a second route from 'a' to 'a' (also route[0]) at t.toml:8:1"), "{e}");
        let e = errs(&format!("{MIN}node_ports = \"4000-5000\"\n"));
        assert!(e.contains("range 4000-5000 contains 127.0.0.1:4370, used by cluster[0].listen"), "{e}");
        let e = errs(&format!("{MIN}[metrics]\nlisten = \"0.0.0.0:4370\"\n"));
        assert!(
            e.contains("metrics.listen: address 0.0.0.0:4370 collides with 127.0.0.1:4370 (cluster[0].listen)"),
            "{e}"
        );
        ok(&format!("{MIN}[metrics]\nlisten = \"127.0.0.2:4370\"\n"));
        ok(&format!("{MIN}[metrics]\nlisten = \"[::1]:4370\"\n"));
        let e = errs(&format!("{MIN}[metrics]\nlisten = \"[::]:4370\"\n"));
        assert!(e.contains("collides with 127.0.0.1:4370"), "{e}");
        let e = errs(&format!("{MIN}[metrics]\nlisten = \"127.0.0.1:4370\"\n"));
        assert!(e.contains("metrics.listen: address 127.0.0.1:4370 is already used by cluster[0].listen"), "{e}");
    }

    #[test]
    fn policy_checks() {
        let e = errs(&format!(
            "{MIN}[policy.p]\nrewrite_fallback = \"rewrite\"\n[policy.p.modules]\n\"l*\" = {{ unknown_fun = \"drop\" }}\n\"lists\" = {{ unknown_fun = \"pass\" }}\n\"x\" = {{}}\n\"bad[\" = {{ unknown_fun = \"drop\" }}\n[policy.p.control]\nallow_ops = [\"send\"]\ndeny_ops = [\"send\"]\n"
        ));
        assert!(e.contains("policy.p.rewrite_fallback: cannot be 'rewrite'"), "{e}");
        assert!(e.contains("never applies: the earlier pattern 'l*' already matches 'lists'"), "{e}");
        assert!(e.contains("policy.p.modules.x: sets nothing"), "{e}");
        assert!(e.contains("invalid module pattern: '[' in pattern 'bad[' is not a wildcard here"), "{e}");
        assert!(e.contains("'send' is both allowed and denied"), "{e}");
        let e = errs(&format!("{MIN}[policy.p.fun_map]\n\"m:f\" = \"m:g\"\n\"m:*\" = \"m:g/1\"\n"));
        assert!(e.contains("target 'm:g' needs an arity"), "{e}");
        assert!(e.contains("wildcards are not allowed"), "{e}");
    }

    #[test]
    fn syntax_errors_by_position() {
        let e = errs("a = [1,\nb = \"x\n");
        assert!(e.lines().all(|l| l.starts_with("error: TOML syntax: ")), "{e}");
        assert!(e.contains("at t.toml:2:"), "{e}");
    }

    #[test]
    fn restart_required_lists_what_cannot_swap() {
        let a = ok(MIN);
        assert!(a.restart_required(&a.clone()).is_empty());
        let mut b = a.clone();
        b.runtime.threads = Threads::Fixed(3.try_into().unwrap());
        b.clusters[0].listen = "127.0.0.1:4371".parse().unwrap();
        b.clusters[0].hidden = true;
        b.routes.push(Route { from: "a".into(), to: "a".into(), policy: None });
        assert_eq!(a.restart_required(&b), ["runtime.threads", "cluster 'a' listen"]);
    }

    #[test]
    fn load_names_the_file() {
        let e = load("/nonexistent/distgate.toml").unwrap_err();
        assert!(e.to_string().starts_with("error: cannot read /nonexistent/distgate.toml: "), "{e}");
        let dir = std::env::temp_dir().join(format!("distgate-config-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(&f, b"a = 1\nb = \"\xff\"\n").unwrap();
        let e = load(&f).unwrap_err();
        assert_eq!(e.to_string(), format!("error: the file is not UTF-8 at {}:2:6", f.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
