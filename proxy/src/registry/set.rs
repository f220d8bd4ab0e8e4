//! The registries of a configuration: one [`Registry`] per cluster, the sources it is
//! configured with, the refresher that keeps it current, and the cache file they share.
//!
//! - [`RegistrySet::from_config`] makes the registries (empty) and records each cluster's plan:
//!   `registry.dirs`, and with `registry.live` the cluster's nodes, found anew at every refresh
//!   ([`FindNodes`]: the upstream EPMD's `NAMES`; inside the proxy also the nodes registered
//!   with distgate's own responder) and joined as the hidden node `[registry] node_name@HOST`
//!   with the cluster's cookie.
//! - [`RegistrySet::start`] loads synchronously what is local (the cache file's section for
//!   each cluster, then its directories) and starts one refresher per cluster that has sources.
//!   Live nodes are asked only by the refreshers, in the background, so a slow or dead node
//!   never delays the start; a cluster with live sources is refreshed at once.
//! - [`RegistrySet::adopt`] applies a reloaded configuration: a cluster whose sources are the
//!   same keeps its registry (with everything it learnt) and is refreshed now; one whose
//!   sources changed gets a fresh registry loaded from its new sources.
//! - The cache file (`[registry] cache_file`) holds every cluster, one section each with a
//!   fingerprint of its sources; it is written (atomically) after any refresh that added a
//!   version and read once at start. A section whose fingerprint differs from the cluster's
//!   sources now is not used, so versions of a directory removed from the configuration do
//!   not come back from the cache. A missing, unreadable or corrupt cache is logged (with the
//!   file and the reason) and ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use distgate_config::{Cookie, HostPort};
use md5::{Digest, Md5};

use super::live::{self, LiveAddr, LiveError};
use super::refresh::{self, Refresher};
use super::{cache, Limits, LoadError, LoadErrorKind, LoadReport, Registry, SnapshotBuilder, Source};

/// Settings shared by every cluster's registry (`[registry]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub cache_file: Option<PathBuf>,
    /// Between two refreshes of a cluster (directories and live nodes).
    pub interval: Duration,
    /// The hidden node distgate joins live clusters as: `node_name@host`.
    pub own_name: String,
    pub limits: Limits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { cache_file: None, interval: Duration::from_secs(300), own_name: own_name("distgate"), limits: Limits::default() }
    }
}

/// `name@` this machine's host name (`/proc/sys/kernel/hostname`, else `localhost`). A node
/// accepting a connection only checks that both parts are there.
pub fn own_name(name: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!("{name}@{}", if host.is_empty() || host.contains('@') { "localhost" } else { host })
}

/// One cluster's registry sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    pub name: String,
    pub dirs: Vec<PathBuf>,
    /// `registry.live = true`: ask the cluster's nodes.
    pub live: Option<LivePlan>,
}

/// How a live cluster's nodes are found and joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePlan {
    /// The cluster's upstream EPMDs, each asked for `NAMES` (resolved at each refresh).
    pub upstream: Vec<HostPort>,
    pub cookie: Cookie,
}

impl ClusterPlan {
    pub fn has_sources(&self) -> bool {
        !self.dirs.is_empty() || self.live.is_some()
    }

    /// What the registry's contents depend on: the directories, and whether and where nodes
    /// are asked. Not the cookie, which changes how nodes are joined, not what they run.
    pub fn fingerprint(&self) -> [u8; 16] {
        let mut h = Md5::new();
        for d in &self.dirs {
            h.update(b"dir\0");
            h.update(d.as_os_str().as_encoded_bytes());
            h.update(b"\0");
        }
        if let Some(l) = &self.live {
            let up: Vec<String> = l.upstream.iter().map(HostPort::to_string).collect();
            h.update(format!("live\0{}\0", up.join(",")).as_bytes());
        }
        h.finalize().into()
    }
}

/// Finds the nodes of a live cluster, anew at every refresh.
pub trait FindNodes: Send + Sync {
    /// `(name part, distribution address)` of every node of `cluster` to ask; `upstream` are
    /// its upstream EPMDs. What cannot be asked goes to `errors`.
    fn find(&self, cluster: &str, upstream: &[HostPort], timeout: Duration, errors: &mut Vec<LiveError>) -> Vec<(String, SocketAddr)>;
}

/// Every node registered with the cluster's upstream EPMDs (`NAMES`). Without a running
/// proxy this is all there is to ask.
#[derive(Debug, Clone, Copy, Default)]
pub struct EpmdNames;

impl FindNodes for EpmdNames {
    fn find(&self, _cluster: &str, upstream: &[HostPort], timeout: Duration, errors: &mut Vec<LiveError>) -> Vec<(String, SocketAddr)> {
        if upstream.is_empty() {
            errors.push(LiveError::Discovery(
                "no upstream_epmd: the cluster's nodes register with distgate's own responder, which only the running proxy knows".into(),
            ));
        }
        epmd_nodes_of(upstream, timeout, errors)
    }
}

/// `NAMES` of every EPMD in `upstream` (each may be another host's), a name listed by two
/// taken from the first. One that cannot be resolved or asked goes to `errors`.
pub fn epmd_nodes_of(upstream: &[HostPort], timeout: Duration, errors: &mut Vec<LiveError>) -> Vec<(String, SocketAddr)> {
    let mut out: Vec<(String, SocketAddr)> = Vec::new();
    for hp in upstream {
        let nodes = crate::epmd::resolve_host_port(hp)
            .map_err(LiveError::Discovery)
            .and_then(|addr| live::epmd_nodes(addr, timeout));
        match nodes {
            Ok(nodes) => {
                for (n, addr) in nodes {
                    if !out.iter().any(|(m, _)| *m == n) {
                        out.push((n, addr));
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    out
}

/// The sources of one refresh of `plan`'s cluster: its directories, then every node `finder`
/// finds now (directories first, so versions they have are not fetched from a node).
pub fn sources_now(plan: &ClusterPlan, own_name: &str, finder: &dyn FindNodes, limits: &Limits, report: &mut LoadReport) -> Vec<Source> {
    let mut out: Vec<Source> = plan.dirs.iter().cloned().map(Source::Dir).collect();
    if let Some(l) = &plan.live {
        let mut errors = Vec::new();
        let nodes = finder.find(&plan.name, &l.upstream, limits.live.connect_timeout, &mut errors);
        let label = PathBuf::from(format!("live cluster {}", plan.name));
        report.errors.extend(errors.into_iter().map(|e| LoadError::new(&label, LoadErrorKind::Live(e))));
        out.extend(nodes.into_iter().map(|(node, addr)| Source::Live {
            node,
            addr: LiveAddr::Direct(addr),
            cookie: l.cookie.clone(),
            own_name: own_name.to_string(),
        }));
    }
    out
}

/// What refreshers share: the cache file and the registries written to it.
struct Shared {
    cache: ArcSwapOption<PathBuf>,
    /// The current registries with their sources' fingerprints, in configuration order.
    members: ArcSwap<Vec<(Arc<Registry>, [u8; 16])>>,
    /// Writes of the cache, one at a time (they share a temporary file name).
    writing: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing guarded is left half-changed by a panic: lists are replaced whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Writes every registry to the cache file, if there is one. A failure is logged: the
    /// cache is only a warm start.
    fn write_cache(&self) {
        let Some(path) = self.cache.load_full() else { return };
        let _one = lock(&self.writing);
        let members = self.members.load();
        let snaps: Vec<_> = members.iter().map(|(r, fp)| (r.cluster(), *fp, r.snapshot())).collect();
        let sections: Vec<cache::SectionRef<'_>> =
            snaps.iter().map(|(c, fp, s)| cache::SectionRef { cluster: c, sources: *fp, snapshot: s }).collect();
        match cache::write_clusters(&sections, &path) {
            Ok(()) => tracing::debug!(path = %path.display(), "registry cache written"),
            Err(e) => tracing::warn!("{}: cannot write the registry cache: {e}", path.display()),
        }
    }
}

struct Member {
    plan: ClusterPlan,
    registry: Arc<Registry>,
    refresher: Option<Refresher>,
}

struct State {
    settings: Settings,
    members: Vec<Member>,
    /// Set by [`RegistrySet::start`].
    finder: Option<Arc<dyn FindNodes>>,
    /// Refreshers told to stop (by a reload) and not joined yet: a reload does not wait for a
    /// refresh in progress.
    retired: Vec<Refresher>,
}

/// The registries of every cluster of a configuration, their refreshers and their cache.
/// Dropping it stops the refreshers.
pub struct RegistrySet {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

impl Default for RegistrySet {
    fn default() -> Self {
        RegistrySet::new(Settings::default(), Vec::new())
    }
}

impl fmt::Debug for RegistrySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.state);
        f.debug_struct("RegistrySet").field("clusters", &st.members.iter().map(|m| &m.plan.name).collect::<Vec<_>>()).finish()
    }
}

impl RegistrySet {
    /// Empty registries for `plans`; nothing is read until [`RegistrySet::start`].
    pub fn new(settings: Settings, plans: Vec<ClusterPlan>) -> RegistrySet {
        let members: Vec<Member> =
            plans.into_iter().map(|plan| Member { registry: Arc::new(Registry::new(&plan.name)), plan, refresher: None }).collect();
        let shared = Arc::new(Shared {
            cache: ArcSwapOption::empty(),
            members: ArcSwap::from_pointee(members.iter().map(|m| (Arc::clone(&m.registry), m.plan.fingerprint())).collect()),
            writing: Mutex::new(()),
        });
        RegistrySet { shared, state: Mutex::new(State { settings, members, finder: None, retired: Vec::new() }) }
    }

    /// The plans of `cfg`'s clusters, in order. `cookies` (by cluster name, as
    /// [`distgate_config::Config::resolve_cookies`] gives them) is needed for live clusters only.
    pub fn from_config(cfg: &distgate_config::Config, cookies: &BTreeMap<String, Cookie>) -> Result<RegistrySet, String> {
        let settings = Settings {
            cache_file: cfg.registry.cache_file.clone(),
            interval: cfg.registry.refresh_interval,
            own_name: own_name(&cfg.registry.node_name),
            limits: Limits::default(),
        };
        let mut plans = Vec::new();
        for c in &cfg.clusters {
            let live = if c.registry.live {
                let cookie = cookies.get(&c.name).ok_or_else(|| format!("cluster {}: no cookie", c.name))?.clone();
                Some(LivePlan { upstream: c.upstream_epmd.clone(), cookie })
            } else {
                None
            };
            plans.push(ClusterPlan { name: c.name.clone(), dirs: c.registry.dirs.clone(), live });
        }
        Ok(RegistrySet::new(settings, plans))
    }

    /// Every cluster's registry, in configuration order.
    pub fn registries(&self) -> Vec<Arc<Registry>> {
        lock(&self.state).members.iter().map(|m| Arc::clone(&m.registry)).collect()
    }

    /// The registry of `cluster`.
    pub fn registry(&self, cluster: &str) -> Option<Arc<Registry>> {
        lock(&self.state).members.iter().find(|m| m.plan.name == cluster).map(|m| Arc::clone(&m.registry))
    }

    pub fn plans(&self) -> Vec<ClusterPlan> {
        lock(&self.state).members.iter().map(|m| m.plan.clone()).collect()
    }

    pub fn settings(&self) -> Settings {
        lock(&self.state).settings.clone()
    }

    /// Loads what is local (cache sections, then directories; synchronously) and starts the
    /// refreshers, which find live nodes with `finder`. Only the first call does anything.
    pub fn start(&self, finder: Arc<dyn FindNodes>) {
        let mut st = lock(&self.state);
        if st.finder.is_some() {
            return;
        }
        st.finder = Some(finder);
        let mut sections = match &st.settings.cache_file {
            Some(p) => read_cache(p, st.settings.limits.max_file),
            None => Vec::new(),
        };
        let mut added = false;
        for m in &st.members {
            added |= load_local(m, &mut sections, &st.settings.limits);
        }
        self.shared.cache.store(st.settings.cache_file.clone().map(Arc::new));
        if added {
            self.shared.write_cache();
        }
        let st = &mut *st;
        for m in &mut st.members {
            let at_once = m.plan.live.is_some();
            m.refresher = self.spawn(m, &st.settings, st.finder.as_ref(), at_once);
        }
    }

    fn spawn(&self, m: &Member, settings: &Settings, finder: Option<&Arc<dyn FindNodes>>, at_once: bool) -> Option<Refresher> {
        let finder = Arc::clone(finder?);
        if !m.plan.has_sources() {
            return None;
        }
        let (plan, own, limits) = (m.plan.clone(), settings.own_name.clone(), settings.limits);
        let shared = Arc::clone(&self.shared);
        let p = refresh::Plan {
            interval: settings.interval,
            limits,
            first_at_once: at_once,
            sources: Box::new(move |report| sources_now(&plan, &own, &*finder, &limits, report)),
            after: Some(Box::new(move |_, report| {
                if report.added > 0 {
                    shared.write_cache();
                }
            })),
        };
        match refresh::spawn(Arc::clone(&m.registry), p) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(cluster = %m.plan.name, "cannot start the registry refresher: {e}");
                None
            }
        }
    }

    /// Takes over what `new` (made from a reloaded configuration, not started) says. A
    /// cluster whose sources did not change keeps its registry and is refreshed now (its
    /// refresher is restarted if the cookie, interval or own name changed); one whose sources
    /// changed, or a new one, gets `new`'s registry, loaded now from its directories (not from
    /// the cache, which holds what the old sources gave). Refreshers of clusters gone are
    /// stopped. Links pick the registries up through [`RegistrySet::registry`].
    pub fn adopt(&self, new: &RegistrySet) {
        if std::ptr::eq(self, new) {
            return self.refresh_all();
        }
        let (settings, incoming): (Settings, Vec<(ClusterPlan, Arc<Registry>)>) = {
            let n = lock(&new.state);
            (n.settings.clone(), n.members.iter().map(|m| (m.plan.clone(), Arc::clone(&m.registry))).collect())
        };
        let mut st = lock(&self.state);
        let st = &mut *st;
        let restart_all = settings.interval != st.settings.interval || settings.own_name != st.settings.own_name;
        let cache_moved = settings.cache_file != st.settings.cache_file;
        st.settings = settings;
        let mut old = std::mem::take(&mut st.members);
        let mut added = false;
        for (plan, registry) in incoming {
            let fp = plan.fingerprint();
            let kept = old.iter().position(|m| m.plan.name == plan.name && m.plan.fingerprint() == fp);
            let m = match kept {
                Some(i) => {
                    let mut m = old.swap_remove(i);
                    match &m.refresher {
                        Some(r) if m.plan == plan && !restart_all => r.trigger(),
                        _ => {
                            retire(&mut st.retired, m.refresher.take());
                            m.plan = plan;
                            m.refresher = self.spawn(&m, &st.settings, st.finder.as_ref(), true);
                        }
                    }
                    m
                }
                None => {
                    let mut m = Member { plan, registry, refresher: None };
                    added |= load_local(&m, &mut Vec::new(), &st.settings.limits);
                    let at_once = m.plan.live.is_some();
                    m.refresher = self.spawn(&m, &st.settings, st.finder.as_ref(), at_once);
                    m
                }
            };
            st.members.push(m);
        }
        for mut m in old {
            retire(&mut st.retired, m.refresher.take());
        }
        st.retired.retain(|r| !r.is_finished());
        self.shared.members.store(Arc::new(st.members.iter().map(|m| (Arc::clone(&m.registry), m.plan.fingerprint())).collect()));
        self.shared.cache.store(st.settings.cache_file.clone().map(Arc::new));
        if added || cache_moved {
            self.shared.write_cache();
        }
    }

    /// Asks every refresher for a refresh now, without waiting (SIGHUP).
    pub fn refresh_all(&self) {
        for m in &lock(&self.state).members {
            if let Some(r) = &m.refresher {
                r.trigger();
            }
        }
    }

    /// Refreshes `cluster` now on its refresher and waits for it. `None`: no such cluster, or
    /// no refresher (nothing to read, or not started).
    pub fn refresh_now(&self, cluster: &str) -> Option<LoadReport> {
        let st = lock(&self.state);
        st.members.iter().find(|m| m.plan.name == cluster)?.refresher.as_ref()?.refresh_now()
    }

    /// Stops every refresher and waits for them (each after the refresh in progress, if any).
    pub fn stop(&self) {
        let mut st = lock(&self.state);
        let mut all: Vec<Refresher> = st.retired.drain(..).collect();
        all.extend(st.members.iter_mut().filter_map(|m| m.refresher.take()));
        // Told all at once, then joined: the waits overlap.
        for r in &all {
            r.signal_stop();
        }
        drop(all);
    }

    /// Registers the registry families into `r`: sizes and refresh counts per cluster.
    pub fn register_metrics(&self, r: &prometheus::Registry) -> prometheus::Result<()> {
        use prometheus::{IntCounterVec, IntGaugeVec, Opts};
        let modules = IntGaugeVec::new(Opts::new("distgate_registry_modules", "Modules the cluster's registry knows"), &["cluster"])?;
        let versions =
            IntGaugeVec::new(Opts::new("distgate_registry_versions", "Module versions (MD5s) the cluster's registry knows"), &["cluster"])?;
        let refreshes = IntCounterVec::new(
            Opts::new("distgate_registry_refreshes_total", "Registry refreshes (the load at start included)"),
            &["cluster"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("distgate_registry_refresh_errors_total", "Errors reported by registry refreshes (a file, a node, a version)"),
            &["cluster"],
        )?;
        for (reg, _) in self.shared.members.load().iter() {
            let c = [reg.cluster()];
            let snap = reg.load();
            modules.with_label_values(&c).set(snap.module_count() as i64);
            versions.with_label_values(&c).set(snap.version_count() as i64);
            let (n, e) = reg.refresh_counts();
            refreshes.with_label_values(&c).inc_by(n);
            errors.with_label_values(&c).inc_by(e);
        }
        r.register(Box::new(modules))?;
        r.register(Box::new(versions))?;
        r.register(Box::new(refreshes))?;
        r.register(Box::new(errors))?;
        Ok(())
    }
}

impl Drop for RegistrySet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn retire(retired: &mut Vec<Refresher>, r: Option<Refresher>) {
    if let Some(r) = r {
        r.signal_stop();
        retired.push(r);
    }
}

/// The cache's sections, or none (logged) when it cannot be used.
fn read_cache(path: &Path, max: u64) -> Vec<cache::Section> {
    match cache::read_clusters(path, max) {
        Ok(s) => s,
        Err(LoadError { kind: LoadErrorKind::Io(e), .. }) if e.kind() == io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no registry cache yet");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!("{e}; starting without it");
            Vec::new()
        }
    }
}

/// A member's registry from its cache section (taken out of `sections`, used only when its
/// fingerprint matches) and its directories. True when the directories added versions the
/// cache did not have.
fn load_local(m: &Member, sections: &mut [cache::Section], limits: &Limits) -> bool {
    let name = &m.plan.name;
    let mut b = SnapshotBuilder::new();
    let mut from_cache = 0;
    if let Some(s) = sections.iter_mut().find(|s| s.cluster == *name) {
        if s.sources == m.plan.fingerprint() {
            for v in std::mem::take(&mut s.versions) {
                from_cache += b.add(v) as usize;
            }
        } else {
            tracing::info!(cluster = %name, "registry cache: the cluster's sources changed since it was written; its section is not used");
        }
    }
    m.registry.store(b.build());
    let dirs: Vec<Source> = m.plan.dirs.iter().cloned().map(Source::Dir).collect();
    let report = if dirs.is_empty() { LoadReport::default() } else { m.registry.refresh(&dirs, limits) };
    for e in &report.errors {
        tracing::warn!(cluster = %name, "registry: {e}");
    }
    if m.plan.has_sources() || from_cache > 0 {
        let snap = m.registry.load();
        tracing::info!(
            cluster = %name,
            modules = snap.module_count(),
            versions = snap.version_count(),
            from_cache,
            from_dirs = report.added,
            live = m.plan.live.is_some(),
            "registry loaded"
        );
    }
    report.added > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use distgate_codec::beam;

    /// A module version made up for the test (no .beam needed).
    fn version(module: &str, n: u8, origin: &str) -> super::super::ModuleVersion {
        let md5 = [n; 16];
        let lambdas = vec![super::super::Lambda { name: "-f/0-fun-0-".into(), arity: 0, index: 0, num_free: 0, old_uniq: 1 }];
        super::super::ModuleVersion::new(Arc::from(module), md5, lambdas, [("f".into(), 0u8)], origin.into())
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dg-regset-{tag}-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A tiny .beam the reader accepts, for module `m`, with `tag` making its MD5 unique
    /// (as in the codec's own unit tests).
    fn write_beam(dir: &Path, m: &str, tag: u32) {
        let words = |ws: &[u32]| ws.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<u8>>();
        let mut atoms = 3u32.to_be_bytes().to_vec();
        for a in [m, "f", "-f/0-fun-0-"] {
            atoms.push(a.len() as u8);
            atoms.extend_from_slice(a.as_bytes());
        }
        let chunks: [(&[u8; 4], Vec<u8>); 6] = [
            (b"AtU8", atoms),
            (b"Code", words(&[16, 0, 170, 3, tag])),
            (b"StrT", vec![]),
            (b"ImpT", words(&[0])),
            (b"ExpT", words(&[1, 2, 0, 2])),
            (b"FunT", words(&[1, 3, 0, 5, 0, 0, 7])),
        ];
        let out = beam::image_of_chunks(&chunks);
        assert!(beam::Beam::parse(&out).is_ok());
        std::fs::write(dir.join(format!("{m}.beam")), out).unwrap();
    }

    fn plan(name: &str, dirs: &[&Path]) -> ClusterPlan {
        ClusterPlan { name: name.into(), dirs: dirs.iter().map(|d| d.to_path_buf()).collect(), live: None }
    }

    fn settings(cache: Option<&Path>) -> Settings {
        Settings { cache_file: cache.map(Path::to_path_buf), interval: Duration::from_secs(3600), ..Settings::default() }
    }

    #[test]
    fn start_loads_dirs_writes_the_cache_and_a_restart_is_warm() {
        let d = tmpdir("warm");
        let (da, db) = (d.join("a"), d.join("b"));
        std::fs::create_dir_all(&da).unwrap();
        std::fs::create_dir_all(&db).unwrap();
        write_beam(&da, "ma", 1);
        write_beam(&db, "mb", 2);
        let cache_path = d.join("reg.cache");
        let set = RegistrySet::new(settings(Some(&cache_path)), vec![plan("a", &[&da]), plan("b", &[&db]), plan("c", &[])]);
        set.start(Arc::new(EpmdNames));
        assert_eq!(set.registry("a").unwrap().load().lookup("ma").len(), 1);
        assert!(set.registry("a").unwrap().load().lookup("mb").is_empty(), "each cluster has its own");
        assert_eq!(set.registry("b").unwrap().load().module_count(), 1);
        assert_eq!(set.registry("c").unwrap().load().module_count(), 0);
        let sections = cache::read_clusters(&cache_path, 1 << 20).expect("written at start");
        let names: Vec<&str> = sections.iter().map(|s| s.cluster.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(sections[0].versions.len(), 1);
        drop(set);

        // The next run starts warm: a version only the cache has (its file is gone) is known.
        std::fs::remove_file(da.join("ma.beam")).unwrap();
        let set = RegistrySet::new(settings(Some(&cache_path)), vec![plan("a", &[&da]), plan("b", &[&db])]);
        set.start(Arc::new(EpmdNames));
        let a = set.registry("a").unwrap();
        let snap = a.load();
        let v = snap.lookup("ma").first().expect("ma from the cache");
        assert!(v.origin.ends_with("ma.beam"), "the origin survives the cache: {}", v.origin);
        drop(set);

        // Sources changed (another directory): that cluster's section is not used.
        let set = RegistrySet::new(settings(Some(&cache_path)), vec![plan("a", &[&da, &db]), plan("b", &[&db])]);
        set.start(Arc::new(EpmdNames));
        assert!(set.registry("a").unwrap().load().lookup("ma").is_empty());
        assert_eq!(set.registry("a").unwrap().load().lookup("mb").len(), 1);
        drop(set);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_or_foreign_cache_is_ignored_and_replaced() {
        let d = tmpdir("corrupt");
        let da = d.join("a");
        std::fs::create_dir_all(&da).unwrap();
        write_beam(&da, "ma", 3);
        let cache_path = d.join("reg.cache");
        // Checksum wrong: ignored, the directory still loads, and a good cache replaces it.
        let mut b = SnapshotBuilder::new();
        b.add(version("ghost", 9, "nowhere"));
        let snap = b.build();
        let mut bytes = cache::encode_clusters(&[cache::SectionRef { cluster: "a", sources: plan("a", &[&da]).fingerprint(), snapshot: &snap }]);
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&cache_path, &bytes).unwrap();
        let set = RegistrySet::new(settings(Some(&cache_path)), vec![plan("a", &[&da])]);
        set.start(Arc::new(EpmdNames));
        let a = set.registry("a").unwrap();
        assert!(a.load().lookup("ghost").is_empty(), "nothing from a corrupt cache");
        assert_eq!(a.load().lookup("ma").len(), 1);
        let sections = cache::read_clusters(&cache_path, 1 << 20).expect("rewritten");
        assert_eq!(sections[0].versions[0].module.as_ref(), "ma");
        drop(set);

        // Intact, matching: its versions are known without any file.
        std::fs::write(&cache_path, cache::encode_clusters(&[cache::SectionRef { cluster: "a", sources: plan("a", &[&da]).fingerprint(), snapshot: &snap }])).unwrap();
        let set = RegistrySet::new(settings(Some(&cache_path)), vec![plan("a", &[&da])]);
        set.start(Arc::new(EpmdNames));
        assert_eq!(set.registry("a").unwrap().load().lookup("ghost").len(), 1);
        drop(set);

        // Not a cache at all, or a directory where the file should be: ignored, never fatal.
        std::fs::write(&cache_path, b"hello").unwrap();
        let set = RegistrySet::new(settings(Some(&cache_path)), vec![plan("a", &[&da])]);
        set.start(Arc::new(EpmdNames));
        assert_eq!(set.registry("a").unwrap().load().module_count(), 1);
        drop(set);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_refresh_that_adds_rewrites_the_cache_and_adopt_keeps_unchanged_registries() {
        let d = tmpdir("adopt");
        let (da, db) = (d.join("a"), d.join("b"));
        std::fs::create_dir_all(&da).unwrap();
        std::fs::create_dir_all(&db).unwrap();
        write_beam(&da, "m1", 4);
        let cache_path = d.join("reg.cache");
        let set = RegistrySet::new(settings(Some(&cache_path)), vec![plan("a", &[&da]), plan("b", &[&db])]);
        set.start(Arc::new(EpmdNames));
        write_beam(&da, "m2", 5);
        let rep = set.refresh_now("a").expect("a has a refresher");
        assert_eq!(rep.added, 1);
        let sections = cache::read_clusters(&cache_path, 1 << 20).unwrap();
        assert_eq!(sections[0].versions.len(), 2, "written after the refresh that added m2");
        let a_before = set.registry("a").unwrap();
        let b_before = set.registry("b").unwrap();
        assert_eq!(a_before.refresh_counts().0, 2, "the load at start and this refresh");

        // Reload: a unchanged (same registry, refreshed), b gets another directory (a new
        // registry from it), c is new.
        let dc = d.join("c");
        std::fs::create_dir_all(&dc).unwrap();
        write_beam(&dc, "m3", 6);
        let new = RegistrySet::new(settings(Some(&cache_path)), vec![plan("a", &[&da]), plan("b", &[&db, &dc]), plan("c", &[&dc])]);
        set.adopt(&new);
        assert!(Arc::ptr_eq(&set.registry("a").unwrap(), &a_before));
        assert!(!Arc::ptr_eq(&set.registry("b").unwrap(), &b_before));
        assert!(Arc::ptr_eq(&set.registry("b").unwrap(), &new.registry("b").unwrap()));
        assert_eq!(set.registry("b").unwrap().load().lookup("m3").len(), 1, "loaded at adopt");
        assert_eq!(set.registry("c").unwrap().load().lookup("m3").len(), 1);
        assert!(set.refresh_now("c").is_some(), "c has a refresher");
        let names: Vec<String> = cache::read_clusters(&cache_path, 1 << 20).unwrap().into_iter().map(|s| s.cluster).collect();
        assert_eq!(names, ["a", "b", "c"]);
        // a was asked for a refresh by the reload (SIGHUP).
        let t = std::time::Instant::now();
        while a_before.refresh_counts().0 < 3 {
            assert!(t.elapsed() < Duration::from_secs(20), "no refresh of a after the reload");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut metrics = Vec::new();
        let r = prometheus::Registry::new();
        set.register_metrics(&r).unwrap();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut metrics).unwrap();
        let text = String::from_utf8(metrics).unwrap();
        assert!(text.contains("distgate_registry_modules{cluster=\"a\"} 2"), "{text}");
        assert!(text.contains("distgate_registry_versions{cluster=\"c\"} 1"), "{text}");
        assert!(text.contains("distgate_registry_refresh_errors_total{cluster=\"a\"} 0"), "{text}");
        set.stop();
        assert!(set.refresh_now("a").is_none(), "stopped");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn live_without_an_epmd_is_an_error_naming_the_cluster() {
        let p = ClusterPlan {
            name: "x".into(),
            dirs: Vec::new(),
            live: Some(LivePlan { upstream: Vec::new(), cookie: Cookie::new("c").unwrap() }),
        };
        let mut report = LoadReport::default();
        let s = sources_now(&p, "me@h", &EpmdNames, &Limits::default(), &mut report);
        assert!(s.is_empty());
        assert_eq!(report.errors.len(), 1);
        assert!(report.errors[0].to_string().starts_with("live cluster x: no upstream_epmd"), "{}", report.errors[0]);
        // An EPMD that is not there: a connect error, naming it.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let p = ClusterPlan { live: Some(LivePlan { upstream: vec![closed.into()], cookie: Cookie::new("c").unwrap() }), ..p };
        let mut report = LoadReport::default();
        sources_now(&p, "me@h", &EpmdNames, &Limits::default(), &mut report);
        assert!(report.errors[0].to_string().contains(&format!("epmd {closed}")), "{}", report.errors[0]);
    }
}
