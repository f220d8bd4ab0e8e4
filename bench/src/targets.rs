//! What sits between sender and sink: nothing (direct), distgate (in-process, per driver),
//! HAProxy in TCP mode, socat. The rig starts them all once, in front of every sink, and
//! stops them at the end.

use distgate::driver::DriverKind;
use distgate::link::{Cookie, LinkLimits};
use distgate::runtime::{Runtime, Scheduling, SideSpec, Spec};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Direct,
    DistgateMio,
    DistgateUring,
    /// distgate (mio) with the policy engine on: a hook until the policy issue lands.
    DistgateMioPolicy,
    /// distgate (mio) with `[runtime] scheduling = "batch"`: its threads do not preempt the
    /// nodes on wake-up.
    DistgateMioBatch,
    Haproxy,
    Socat,
}

impl Target {
    pub const ALL: [Target; 7] =
        [Target::Direct, Target::DistgateMio, Target::DistgateUring, Target::DistgateMioPolicy, Target::DistgateMioBatch, Target::Haproxy, Target::Socat];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::DistgateMio => "distgate-mio",
            Target::DistgateUring => "distgate-uring",
            Target::DistgateMioPolicy => "distgate-mio+policy",
            Target::DistgateMioBatch => "distgate-mio+batch",
            Target::Haproxy => "haproxy",
            Target::Socat => "socat",
        }
    }

    pub fn parse(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == s)
    }

    pub fn is_distgate(self) -> bool {
        matches!(self, Target::DistgateMio | Target::DistgateUring | Target::DistgateMioPolicy | Target::DistgateMioBatch)
    }
}

/// A sink the targets forward to.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `rust` or `erl`.
    pub label: &'static str,
    pub addr: SocketAddr,
    /// The sink's alive name (distgate routes by name).
    pub alive: String,
    /// EPMD node type to register it with (hidden 72, normal 77).
    pub node_type: u8,
}

/// Everything started for a run.
pub struct Fleet {
    routes: HashMap<(Target, &'static str), SocketAddr>,
    children: Vec<(String, Child)>,
    runtimes: Vec<(Target, Runtime)>,
    registrations: Vec<TcpStream>,
    /// Targets that could not be started, and why.
    pub unavailable: Vec<(Target, String)>,
    /// How each target was started (commands, versions), for the report.
    pub notes: Vec<String>,
}

fn lo() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// `apt-get install -y haproxy socat` (what the rig runs with `--install`).
pub const INSTALL_COMMAND: &str = "apt-get install -y haproxy socat";

pub fn install_proxies() -> Result<(), String> {
    let st = Command::new("sh")
        .args(["-c", &format!("{INSTALL_COMMAND} || (apt-get update && {INSTALL_COMMAND})")])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("`{INSTALL_COMMAND}` failed: {st}"))
    }
}

/// Wait until something accepts on `addr`.
fn wait_listening(addr: SocketAddr, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The policy a "policy on" target judges senders → sinks frames with, passing everything
/// the load sends: every control rule consulted (allow-lists), every message walked for funs
/// and every fun looked up (a module rule that never matches makes fun actions matter; the
/// registries are empty, so each fun is unknown and passes by the default action).
pub const BENCH_POLICY: &str = "unknown_fun = \"pass\"\n\
    [policy.bench.modules]\n\"no_such_module_*\" = { unknown_fun = \"replace\", unknown_export = \"replace\" }\n\
    [policy.bench.control]\nreg_send_allow = [\"*\"]\nspawn_allow = [\"*:*\"]\nrpc_allow = [\"*:*\"]\n";

/// The policy hook: with `on`, frames from side 0 (senders) to side 1 (sinks) are judged by
/// [`BENCH_POLICY`].
pub fn apply_policy(spec: &mut Spec, on: bool) -> Result<(), String> {
    if on {
        use distgate::policy::{Compiled, PolicyTable, RouteHandle};
        use std::sync::Arc;
        let p = Compiled::parse("bench", BENCH_POLICY)?;
        let empty = Arc::new(distgate::registry::Registry::new("bench"));
        let mut t = PolicyTable::default();
        t.insert(0, 1, Arc::new(RouteHandle::new("senders", "sinks", Some(Arc::new(p)), empty.clone(), empty)));
        spec.policies = t;
    }
    Ok(())
}

impl Fleet {
    pub fn start(targets: &[Target], ups: &[Upstream], cookie: &str, distgate_threads: usize, logs: &Path) -> Fleet {
        let mut f = Fleet {
            routes: HashMap::new(),
            children: Vec::new(),
            runtimes: Vec::new(),
            registrations: Vec::new(),
            unavailable: Vec::new(),
            notes: Vec::new(),
        };
        for &t in targets {
            let r = match t {
                Target::Direct => {
                    for u in ups {
                        f.routes.insert((t, u.label), u.addr);
                    }
                    Ok(())
                }
                Target::DistgateMio | Target::DistgateUring | Target::DistgateMioPolicy | Target::DistgateMioBatch => {
                    f.start_distgate(t, ups, cookie, distgate_threads)
                }
                Target::Haproxy => f.start_haproxy(ups, logs),
                Target::Socat => f.start_socat(ups, logs),
            };
            if let Err(e) = r {
                f.unavailable.push((t, e));
            }
        }
        f
    }

    /// Where a sender dials to reach sink `label` through `target`.
    pub fn addr(&self, target: Target, label: &str) -> Option<SocketAddr> {
        self.routes.iter().find(|((t, l), _)| *t == target && *l == label).map(|(_, a)| *a)
    }

    pub fn available(&self, targets: &[Target]) -> Vec<Target> {
        targets.iter().copied().filter(|t| !self.unavailable.iter().any(|(u, _)| u == t)).collect()
    }

    /// One of the distgate targets: its driver, scheduling and policy follow from which.
    fn start_distgate(&mut self, t: Target, ups: &[Upstream], cookie: &str, threads: usize) -> Result<(), String> {
        let driver = if t == Target::DistgateUring { DriverKind::Uring } else { DriverKind::Poll };
        let scheduling = if t == Target::DistgateMioBatch { Scheduling::Batch } else { Scheduling::Normal };
        let policy = t == Target::DistgateMioPolicy;
        let side = |name: &str| SideSpec {
            name: name.into(),
            cookie: Cookie::new(cookie.as_bytes()),
            epmd_listen: Some(SocketAddr::new(lo(), 0)),
            upstream_epmd: Vec::new(),
            proxy_ip: lo(),
            hidden: false,
            nodes: None,
            node_ports: None,
        };
        let mut spec = Spec {
            sides: vec![side("senders"), side("sinks")],
            routes: vec![(0, 1)],
            limits: LinkLimits::default(),
            link_buffer: 4 << 20,
            threads,
            driver,
            epmd_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            mirror_check: Duration::from_secs(10),
            scheduling,
            policies: Default::default(),
            registries: Default::default(),
        };
        apply_policy(&mut spec, policy)?;
        let rt = Runtime::start(spec).map_err(|e| format!("distgate: {e}"))?;
        if rt.driver() != driver {
            return Err(format!("driver {} requested, distgate runs {} (io_uring driver not available in this build/kernel)", driver.name(), rt.driver().name()));
        }
        let senders = rt.responder_addr("senders").ok_or("no responder")?;
        let sinks = rt.responder_addr("sinks").ok_or("no responder")?;
        for u in ups {
            let reg = crate::node::register_node(sinks, &u.alive, u.addr.port(), u.node_type).map_err(|e| format!("ALIVE2 {}: {e}", u.alive))?;
            self.registrations.push(reg);
            let info = distgate::epmd::port_please(senders, &u.alive, Duration::from_secs(5))
                .map_err(|e| format!("PORT_PLEASE2 {}: {e}", u.alive))?
                .ok_or_else(|| format!("distgate does not resolve {}", u.alive))?;
            self.routes.insert((t, u.label), SocketAddr::new(lo(), info.port));
        }
        self.notes.push(format!(
            "{}: in-process `distgate::runtime::Runtime`, driver {}, {threads} data-plane threads, link buffer 4 MiB, default limits, sides `senders` → `sinks` (same cookie), sinks registered by ALIVE2, proxy port from PORT_PLEASE2",
            t.name(),
            rt.driver().name()
        ));
        self.runtimes.push((t, rt));
        Ok(())
    }

    fn start_haproxy(&mut self, ups: &[Upstream], logs: &Path) -> Result<(), String> {
        let bin = which("haproxy").ok_or_else(|| format!("haproxy not installed (run `{INSTALL_COMMAND}` or pass --install)"))?;
        let mut cfg = String::from(
            "global\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 10m\n    timeout server 10m\n",
        );
        let mut fronts = Vec::new();
        for u in ups {
            let p = free_port().map_err(|e| e.to_string())?;
            cfg.push_str(&format!(
                "frontend fe_{l}\n    bind 127.0.0.1:{p}\n    default_backend be_{l}\nbackend be_{l}\n    server s 127.0.0.1:{}\n",
                u.addr.port(),
                l = u.label
            ));
            fronts.push((u.label, SocketAddr::new(lo(), p)));
        }
        let path = logs.join("haproxy.cfg");
        std::fs::write(&path, &cfg).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(logs.join("haproxy.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        self.children.push(("haproxy".into(), child));
        for (l, a) in &fronts {
            if !wait_listening(*a, Duration::from_secs(10)) {
                return Err(format!("haproxy did not listen on {a} (see {})", logs.join("haproxy.log").display()));
            }
            self.routes.insert((Target::Haproxy, l), *a);
        }
        let version = Command::new(&bin).arg("-v").output().map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string()).unwrap_or_default();
        self.notes.push(format!("haproxy: `{} -f haproxy.cfg -db` ({version}); TCP mode, defaults otherwise (nbthread = CPUs, bufsize 16 KiB)", bin.display()));
        Ok(())
    }

    fn start_socat(&mut self, ups: &[Upstream], logs: &Path) -> Result<(), String> {
        let bin = which("socat").ok_or_else(|| format!("socat not installed (run `{INSTALL_COMMAND}` or pass --install)"))?;
        for u in ups {
            let p = free_port().map_err(|e| e.to_string())?;
            let args = [format!("TCP-LISTEN:{p},bind=127.0.0.1,reuseaddr,fork,backlog=1024,nodelay"), format!("TCP:127.0.0.1:{},nodelay", u.addr.port())];
            let log = std::fs::File::create(logs.join(format!("socat-{}.log", u.label))).map_err(|e| e.to_string())?;
            let child = Command::new(&bin).args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
            self.children.push((format!("socat-{}", u.label), child));
            let a = SocketAddr::new(lo(), p);
            if !wait_listening(a, Duration::from_secs(10)) {
                return Err(format!("socat did not listen on {a}"));
            }
            self.routes.insert((Target::Socat, u.label), a);
            if u.label == ups[0].label {
                self.notes.push(format!("socat: `socat {} {}` (a process per connection, 8 KiB buffer)", args[0], args[1]));
            }
        }
        Ok(())
    }

    /// What each distgate counted (links, frames, close reasons), for the report.
    pub fn distgate_counters(&self) -> Vec<String> {
        use std::sync::atomic::Ordering::Relaxed;
        self.runtimes
            .iter()
            .map(|(t, rt)| {
                let s = rt.stats();
                let labelled: Vec<String> = s.labelled().iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(
                    "{} counters: links accepted {}, established {}; frames {} → / {} ←; backpressure pauses {}; {}",
                    t.name(),
                    s.links_accepted.load(Relaxed),
                    s.links_established.load(Relaxed),
                    s.frames[0].load(Relaxed),
                    s.frames[1].load(Relaxed),
                    s.backpressure_pauses.load(Relaxed),
                    if labelled.is_empty() { "no labelled events".to_string() } else { labelled.join(", ") }
                )
            })
            .collect()
    }

    /// Stop everything this fleet started (children by their own pid, runtimes by shutdown).
    pub fn stop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        // socat forks a child per connection; those exit when their connection closes.
        for (_, rt) in self.runtimes.drain(..) {
            rt.shutdown();
        }
        self.registrations.clear();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}
