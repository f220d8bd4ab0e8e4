//! The running proxy: cluster sides, their EPMD responders, the dedicated proxy ports, and the
//! per-core data plane.
//!
//! Control plane (this module): a thread per EPMD connection answers ALIVE2 / PORT_PLEASE2 /
//! NAMES for one side. When a node asks for a name that belongs to another side it may route
//! to, the responder opens (once) a listening port dedicated to that remote node — one
//! listener per data-plane core on that port (SO_REUSEPORT), so the kernel spreads the
//! connections over the cores — and answers with that port. Every PORT_PLEASE2 re-resolves
//! the target, so a restarted node's new port is used by the next connection.
//!
//! Data plane ([`crate::driver`]): a thread per core owns its listeners and both sockets of
//! every link it accepted.

use crate::driver::{self, CoreHandle, DriverKind};
use crate::epmd::{self, NodeInfo, Request};
use crate::link::{Cookie, LinkLimits};
use crate::nodes::NodeFilter;
use crate::policy::{LinkPolicy, PolicyTable};
use crate::registry::live::LiveError;
use crate::registry::set::FindNodes;
use crate::registry::RegistrySet;
use crate::stats::Stats;
use distgate_config::{HostPort, PortRange};
pub use distgate_config::Scheduling;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// One cluster side as the runtime sees it.
#[derive(Debug, Clone)]
pub struct SideSpec {
    pub name: String,
    pub cookie: Cookie,
    /// distgate's EPMD responder for this side's nodes.
    pub epmd_listen: Option<SocketAddr>,
    /// Where this side's nodes are already registered (real epmds or another distgate),
    /// asked in this order; host names are resolved at each use.
    pub upstream_epmd: Vec<HostPort>,
    /// Address the dedicated proxy ports for this side's diallers listen on.
    pub proxy_ip: IpAddr,
    /// Links between this side's nodes and another side's are hidden ([`Route::hidden`]).
    pub hidden: bool,
    /// The only nodes of this side distgate knows (`[[cluster]] nodes`); `None`: all.
    pub nodes: Option<Arc<NodeFilter>>,
    /// The ports the dedicated proxy ports for this side's diallers are taken from
    /// (`[[cluster]] node_ports`); `None`: any the system picks.
    pub node_ports: Option<PortRange>,
}

/// Everything the runtime needs; built from configuration (or the embedded default).
#[derive(Debug, Clone)]
pub struct Spec {
    pub sides: Vec<SideSpec>,
    /// `(from, to)`: nodes of side `from` may dial nodes of side `to`.
    pub routes: Vec<(usize, usize)>,
    pub limits: LinkLimits,
    /// Bytes queued towards one leg before distgate stops reading the other.
    pub link_buffer: usize,
    pub threads: usize,
    pub driver: DriverKind,
    pub epmd_timeout: Duration,
    /// On shutdown, how long established links may take to flush what is queued towards their
    /// peers before they are closed (`[runtime] drain_timeout`). Applied by a reload too.
    pub drain_timeout: Duration,
    /// How often the mirrors are checked and the missing ones made again (`[runtime]
    /// mirror_check`, see [`sweep_mirrors`]). Applied by a reload too.
    pub mirror_check: Duration,
    /// The data-plane threads' scheduling policy (`[runtime] scheduling`). Applied by a
    /// reload too.
    pub scheduling: Scheduling,
    /// The policy handle of each route direction, by side indices; empty: nothing is judged.
    /// Links take their route's handles when they open; storing a new policy into a handle
    /// ([`crate::policy::RouteHandle::store`], [`Runtime::reload`]) applies to
    /// established links from their next frame.
    pub policies: PolicyTable,
    /// Every cluster's module registry with its sources, loaded and refreshed once the runtime
    /// starts (the registries `policies` consults come from here). Default: none.
    pub registries: Arc<RegistrySet>,
}

/// A dedicated proxy port: diallers of side `from` reach node `alive` of side `to` here.
#[derive(Debug)]
pub struct Route {
    pub from: usize,
    pub to: usize,
    pub alive: String,
    pub port: u16,
    /// Where the target listens; refreshed at every PORT_PLEASE2 for it.
    pub target: Mutex<SocketAddr>,
    /// The cookies of the dialler's and the target's clusters, for handshakes from now on
    /// (a reload swaps them).
    pub down_cookie: Mutex<Cookie>,
    pub up_cookie: Mutex<Cookie>,
    /// The policy handles links on this port use.
    pub policy: LinkPolicy,
    /// Whether the two clusters are still connected by a route. A reload that removes the
    /// last route between them clears it: the port then refuses new connections, and links
    /// on it are closed (`route_removed`). A later reload may set it again.
    pub open: AtomicBool,
    /// Links on this port are hidden (`LinkParams::hidden`): `from` and `to` differ and either
    /// is a hidden cluster. For handshakes from now on (a reload may change it).
    pub hidden: AtomicBool,
    /// The target cluster's `nodes`, which the target's full name must match (a reload
    /// swaps it); `None`: any, and always on a route from a cluster to itself.
    pub target_nodes: Mutex<Option<Arc<NodeFilter>>>,
}

impl Route {
    /// What a link accepted on this port starts with.
    pub fn link_params(&self, id: u64, limits: LinkLimits) -> crate::link::LinkParams {
        crate::link::LinkParams {
            id,
            target: self.alive.clone(),
            down_cookie: self.down_cookie.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            up_cookie: self.up_cookie.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            limits,
            policy: self.policy.clone(),
            hidden: self.hidden.load(Ordering::Relaxed),
            target_nodes: self.target_nodes.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// What a reload changes of a side.
struct Live {
    cookie: Cookie,
    upstream_epmd: Vec<HostPort>,
    nodes: Option<Arc<NodeFilter>>,
    hidden: bool,
}

impl Live {
    fn of(s: &SideSpec) -> Live {
        Live { cookie: s.cookie.clone(), upstream_epmd: s.upstream_epmd.clone(), nodes: s.nodes.clone(), hidden: s.hidden }
    }
}

impl Side {
    fn cookie(&self) -> Cookie {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).cookie.clone()
    }
    fn upstream_epmd(&self) -> Vec<HostPort> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).upstream_epmd.clone()
    }
    fn nodes(&self) -> Option<Arc<NodeFilter>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).nodes.clone()
    }
    /// The names of the nodes registered with this side's responder now.
    fn registered(&self) -> Vec<String> {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
    /// Whether distgate knows this side's node `alive` (`nodes`), and so proxies to it.
    fn knows_alive(&self, alive: &str) -> bool {
        self.nodes().is_none_or(|f| f.knows_alive(alive))
    }
    fn hidden(&self) -> bool {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).hidden
    }
}

#[derive(Debug, Clone)]
struct Registered {
    info: NodeInfo,
    ip: IpAddr,
}

struct Side {
    /// Fixed for the runtime's life; `live` holds what a reload may change (the cookie,
    /// upstream EPMDs and `nodes` are kept only there, so nothing reads a value a reload
    /// replaced).
    name: String,
    proxy_ip: IpAddr,
    node_ports: Option<PortRange>,
    live: Mutex<Live>,
    table: Mutex<HashMap<String, Registered>>,
    responder: Option<SocketAddr>,
}

pub(crate) struct Shared {
    sides: Vec<Side>,
    /// Which sides may dial which; swapped whole on reload.
    routes_allowed: arc_swap::ArcSwap<Vec<(usize, usize)>>,
    routes: Mutex<HashMap<(usize, usize, String), Arc<Route>>>,
    cores: Vec<CoreHandle>,
    next_core: AtomicUsize,
    next_creation: AtomicU64,
    stopping: AtomicBool,
    epmd_timeout: Duration,
    /// `Spec::drain_timeout` in milliseconds; swapped by a reload.
    drain_ms: AtomicU64,
    /// `Spec::mirror_check` in milliseconds; swapped by a reload.
    mirror_check_ms: AtomicU64,
    /// The cores' scheduling policy (`Spec::scheduling`); a reload that changes it tells them.
    scheduling: Mutex<Scheduling>,
    pub stats: Arc<Stats>,
    /// The policy handle of every connected pair. Swapped whole by a reload that connects a
    /// new pair (a handle, once made, stays: established links keep theirs).
    policies: arc_swap::ArcSwap<PolicyTable>,
    /// The registrations distgate holds in other clusters' upstream EPMDs for each node
    /// registered with a responder, by (its side, its name); see [`sync_mirrors`].
    mirrors: Mutex<HashMap<(usize, String), NodeMirrors>>,
}

/// The mirrors of one registered node (locked while they are brought in line).
type NodeMirrors = Arc<Mutex<Vec<Mirror>>>;

/// One registration of a node held in an upstream EPMD: it lives as long as `held`.
struct Mirror {
    /// The side whose upstream EPMD holds it, that EPMD, and the proxy port it names.
    from: usize,
    upstream: SocketAddr,
    port: u16,
    held: TcpStream,
}

/// A running distgate. Dropping it stops it (see [`Runtime::shutdown`]).
pub struct Runtime {
    shared: Arc<Shared>,
    registries: Arc<RegistrySet>,
    responder_threads: Vec<thread::JoinHandle<()>>,
    core_threads: Vec<thread::JoinHandle<()>>,
    /// The thread that checks the mirrors (see [`keep_mirrors`]).
    mirror_keeper: Option<thread::JoinHandle<()>>,
    driver: DriverKind,
}

impl Runtime {
    pub fn start(spec: Spec) -> io::Result<Runtime> {
        let stats = Arc::new(Stats::default());
        let (driver, cores, core_threads) = driver::start(spec.driver, spec.threads.max(1), spec.limits, spec.link_buffer, stats.clone())?;
        let mut listeners = Vec::new();
        let mut sides = Vec::new();
        for s in &spec.sides {
            let (responder, listener) = match s.epmd_listen {
                Some(addr) => {
                    let l = TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("EPMD responder for {} on {addr}: {e}", s.name)))?;
                    (Some(l.local_addr()?), Some(l))
                }
                None => (None, None),
            };
            listeners.push(listener);
            let live = Mutex::new(Live::of(s));
            sides.push(Side { name: s.name.clone(), proxy_ip: s.proxy_ip, node_ports: s.node_ports, live, table: Mutex::new(HashMap::new()), responder });
        }
        let seed = {
            let mut b = [0u8; 4];
            let _ = getrandom::fill(&mut b);
            u32::from_be_bytes(b) as u64
        };
        let shared = Arc::new(Shared {
            sides,
            routes_allowed: arc_swap::ArcSwap::from_pointee(spec.routes.clone()),
            routes: Mutex::new(HashMap::new()),
            cores,
            next_core: AtomicUsize::new(0),
            next_creation: AtomicU64::new(seed),
            stopping: AtomicBool::new(false),
            drain_ms: AtomicU64::new(millis(spec.drain_timeout)),
            mirror_check_ms: AtomicU64::new(millis(spec.mirror_check)),
            scheduling: Mutex::new(Scheduling::Normal),
            epmd_timeout: spec.epmd_timeout,
            stats,
            policies: arc_swap::ArcSwap::from_pointee(spec.policies.clone()),
            mirrors: Mutex::new(HashMap::new()),
        });
        set_scheduling(&shared, spec.scheduling);
        let mut responder_threads = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let Some(l) = l else { continue };
            let sh = shared.clone();
            tracing::info!(side = %sh.sides[i].name, addr = %l.local_addr()?, "EPMD responder listening");
            responder_threads.push(thread::Builder::new().name(format!("epmd-{}", sh.sides[i].name)).spawn(move || accept_loop(sh, i, l))?);
        }
        let mirror_keeper = {
            let sh = shared.clone();
            Some(thread::Builder::new().name("mirrors".into()).spawn(move || keep_mirrors(&sh))?)
        };
        // Directories and the cache load here; live nodes are asked in the background.
        spec.registries.start(Arc::new(SideNodes(Arc::downgrade(&shared))));
        Ok(Runtime { shared, registries: spec.registries, responder_threads, core_threads, mirror_keeper, driver })
    }

    /// The bound address of a side's responder (useful when configured with port 0).
    pub fn responder_addr(&self, side: &str) -> Option<SocketAddr> {
        self.shared.sides.iter().find(|s| s.name == side).and_then(|s| s.responder)
    }

    pub fn driver(&self) -> DriverKind {
        self.driver
    }

    /// Apply what a reloaded configuration may change while links run: policies and
    /// registries (established links too, from their next frame); which sides may dial which,
    /// each side's cookie, upstream EPMDs, `nodes` and `hidden`, the link limits and buffer,
    /// and the drain time (for what starts from now on: lookups, handshakes, links). Sides are
    /// matched by name: a cluster added or removed needs a restart (`Config::restart_required`
    /// names it) and is left out here, while everything else of the reload still applies.
    /// Listeners, threads and driver need a restart too.
    pub fn reload(&self, spec: &Spec) {
        let sh = &self.shared;
        sh.drain_ms.store(millis(spec.drain_timeout), Ordering::Relaxed);
        sh.mirror_check_ms.store(millis(spec.mirror_check), Ordering::Relaxed);
        set_scheduling(sh, spec.scheduling);
        // The running index of the new spec's side `k`, if that cluster runs.
        let running: Vec<Option<usize>> = spec.sides.iter().map(|n| sh.sides.iter().position(|s| s.name == n.name)).collect();
        if running.iter().any(Option::is_none) || spec.sides.len() != sh.sides.len() {
            tracing::warn!("reload: clusters added or removed; those take a restart, the rest applies now");
        }
        // Registries first: a cluster whose sources did not change keeps its registry (and
        // what it learnt) and is refreshed now; the others are loaded from their new sources.
        self.registries.adopt(&spec.registries);
        // Policies apply to established links too, from their next frame. A pair connected
        // only now gets its handles here, before lookups can open a port for it.
        let mut table = PolicyTable::clone(&sh.policies.load());
        table.adopt(&spec.policies);
        for (from, to, h) in spec.policies.entries() {
            if let (Some(Some(f)), Some(Some(t))) = (running.get(from), running.get(to)) {
                if table.get(*f, *t).is_none() {
                    table.insert(*f, *t, h.clone());
                }
            }
        }
        for h in table.handles() {
            if let (Some(from), Some(to)) = (self.registries.registry(&h.from), self.registries.registry(&h.to)) {
                h.store_registries(from, to);
            }
        }
        sh.policies.store(Arc::new(table));
        let routes = spec.routes.iter().filter_map(|&(f, t)| Some(((*running.get(f)?)?, (*running.get(t)?)?))).collect();
        sh.routes_allowed.store(Arc::new(routes));
        // Cookies, upstream EPMDs, `nodes` and `hidden`: for handshakes and lookups from now on.
        for (new, i) in spec.sides.iter().zip(&running) {
            if let Some(side) = i.and_then(|i| sh.sides.get(i)) {
                *side.live.lock().unwrap_or_else(|p| p.into_inner()) = Live::of(new);
            }
        }
        let allowed = sh.routes_allowed.load();
        let mut closed = false;
        for ((from, to, _), r) in sh.routes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            *r.down_cookie.lock().unwrap_or_else(|p| p.into_inner()) = sh.sides[*from].cookie();
            *r.up_cookie.lock().unwrap_or_else(|p| p.into_inner()) = sh.sides[*to].cookie();
            *r.target_nodes.lock().unwrap_or_else(|p| p.into_inner()) = target_nodes(sh, *from, *to);
            r.hidden.store(hidden_between(sh, *from, *to), Ordering::Relaxed);
            let open = allowed.contains(&(*from, *to));
            closed |= r.open.swap(open, Ordering::Release) && !open;
        }
        // Links between clusters no longer connected are closed: a removed route is what an
        // operator cuts a partner off with, and its policy (gone with it) no longer judges them.
        if closed {
            for c in &sh.cores {
                let _ = c.close_unrouted();
            }
        }
        // Limits: for links accepted from now on.
        for c in &sh.cores {
            let _ = c.set_limits(spec.limits, spec.link_buffer);
        }
        // Mirrors follow the routes, `nodes` and upstream EPMDs just swapped in: added for a
        // new route, moved to a new upstream EPMD, withdrawn for a node now outside `nodes` or
        // a route removed. A thread per node, as each may wait on an EPMD that does not
        // answer (`epmd_timeout` per attempt): the reload waits for the slowest, not the sum.
        thread::scope(|scope| {
            for side in 0..sh.sides.len() {
                for name in sh.sides[side].registered() {
                    let sync = move || sync_mirrors(sh, side, &name, None);
                    // No thread to be had: here, then.
                    if let Err(e) = thread::Builder::new().name("mirrors".into()).spawn_scoped(scope, sync.clone()) {
                        tracing::debug!(error = %e, "no thread for a mirror sync");
                        sync();
                    }
                }
            }
        });
    }

    /// The policy handles this runtime was started with (for a reload).
    pub fn policies(&self) -> Arc<PolicyTable> {
        self.shared.policies.load_full()
    }

    /// The module registries and their refreshers.
    pub fn registries(&self) -> &Arc<RegistrySet> {
        &self.registries
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Stop accepting, let links drain what is queued, close them, and wait for the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        for s in &self.shared.sides {
            // Wake the blocking accept so it sees the flag.
            if let Some(a) = s.responder {
                let _ = TcpStream::connect_timeout(&wake_addr(a), Duration::from_millis(200));
            }
        }
        let drain = Duration::from_millis(self.shared.drain_ms.load(Ordering::Relaxed));
        for c in &self.shared.cores {
            c.shutdown(drain);
        }
        for t in self.core_threads.drain(..) {
            let _ = t.join();
        }
        for t in self.responder_threads.drain(..) {
            let _ = t.join();
        }
        if let Some(t) = self.mirror_keeper.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.registries.stop();
    }

    /// Block until the runtime stops (after [`Runtime::shutdown`] from another thread via a
    /// signal, see `main`).
    pub fn wait_for_signal(self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            thread::park_timeout(Duration::from_millis(200));
        }
        tracing::info!("stopping: no new connections, draining links");
        self.shutdown();
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A live cluster's nodes as the running proxy knows them: those registered with the side's
/// responder, and those its upstream EPMDs list, except distgate's own registrations there
/// (mirrors of other clusters' nodes, at the dedicated proxy ports): asking those would ask
/// another cluster. Only those matching the side's `nodes`.
struct SideNodes(Weak<Shared>);

impl FindNodes for SideNodes {
    fn find(&self, cluster: &str, upstream: &[HostPort], timeout: Duration, errors: &mut Vec<LiveError>) -> Vec<(String, SocketAddr)> {
        let Some(sh) = self.0.upgrade() else { return Vec::new() };
        let Some(i) = sh.sides.iter().position(|s| s.name == cluster) else { return Vec::new() };
        let side = &sh.sides[i];
        let mut out: Vec<(String, SocketAddr)> = side
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, r)| (n.clone(), SocketAddr::new(r.ip, r.info.port)))
            .collect();
        let upstream = if upstream.is_empty() { side.upstream_epmd() } else { upstream.to_vec() };
        if !upstream.is_empty() {
            let ours: HashSet<(String, u16)> = sh
                .routes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|r| r.from == i)
                .map(|r| (r.alive.clone(), r.port))
                .collect();
            for (n, addr) in crate::registry::set::epmd_nodes_of(&upstream, timeout, errors) {
                if !ours.contains(&(n.clone(), addr.port())) && !out.iter().any(|(m, _)| *m == n) {
                    out.push((n, addr));
                }
            }
        }
        // Nodes outside `nodes` are no route's target: their modules say nothing of theirs.
        out.retain(|(n, _)| side.knows_alive(n));
        out.sort();
        out
    }
}

fn wake_addr(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        SocketAddr::new(if a.is_ipv4() { IpAddr::from([127, 0, 0, 1]) } else { IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]) }, a.port())
    } else {
        a
    }
}

fn accept_loop(sh: Arc<Shared>, side: usize, l: TcpListener) {
    for conn in l.incoming() {
        if sh.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(s) = conn else { continue };
        let sh = sh.clone();
        let _ = thread::Builder::new().name("epmd-conn".into()).spawn(move || {
            if let Err(e) = serve(&sh, side, s) {
                tracing::debug!(side = %sh.sides[side].name, error = %e, "EPMD connection ended");
            }
        });
    }
}

fn serve(sh: &Shared, side: usize, mut s: TcpStream) -> io::Result<()> {
    s.set_read_timeout(Some(sh.epmd_timeout))?;
    s.set_nodelay(true)?;
    let peer = s.peer_addr()?;
    let body = epmd::read_request(&mut s)?;
    let req = match Request::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            sh.stats.count("epmd_bad_request");
            tracing::warn!(side = %sh.sides[side].name, %peer, error = %e, "EPMD: bad request");
            return Ok(());
        }
    };
    let me = &sh.sides[side];
    match req {
        Request::Alive2(info) => {
            let name = info.name.clone();
            let creation = {
                let mut t = me.table.lock().unwrap_or_else(|p| p.into_inner());
                if t.contains_key(&name) {
                    None
                } else {
                    t.insert(name.clone(), Registered { info: info.clone(), ip: peer.ip() });
                    // Creations are 32-bit and never 0..3 (OTP reserves those).
                    let c = (sh.next_creation.fetch_add(1, Ordering::Relaxed) as u32).max(4);
                    Some(c)
                }
            };
            s.write_all(&epmd::alive2_response(creation.is_some(), creation.unwrap_or(0), info.highest))?;
            let Some(creation) = creation else {
                tracing::warn!(side = %me.name, node = %name, "EPMD: name already registered");
                return Ok(());
            };
            tracing::info!(side = %me.name, node = %name, port = info.port, creation, "node registered");
            sync_mirrors(sh, side, &name, None);
            // The registration lives as long as this connection.
            s.set_read_timeout(None)?;
            let mut sink = [0u8; 64];
            while !sh.stopping.load(Ordering::SeqCst) {
                match s.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            me.table.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
            // Its mirrors end with it (dropped here, or by a reload syncing them now).
            let mirrors = sh.mirrors.lock().unwrap_or_else(|p| p.into_inner()).remove(&(side, name.clone()));
            drop(mirrors);
            tracing::info!(side = %me.name, node = %name, "node unregistered");
        }
        Request::PortPlease2(name) => {
            let answer = resolve(sh, side, &name);
            if answer.is_none() {
                tracing::debug!(side = %me.name, node = %name, "EPMD: unknown name");
            }
            s.write_all(&epmd::port2_response(answer.as_ref()))?;
        }
        Request::Names => {
            let mut names: Vec<(String, u16)> = me
                .table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(n, r)| (n.clone(), r.info.port))
                .collect();
            // Proxy ports to nodes a reload took out of their cluster's `nodes` are not listed.
            names.extend(
                sh.routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .filter(|r| r.from == side && (r.to == side || sh.sides[r.to].knows_alive(&r.alive)))
                    .map(|r| (r.alive.clone(), r.port)),
            );
            names.sort();
            let port = me.responder.map_or(4369, |a| a.port());
            s.write_all(&epmd::names_response(port, &names))?;
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    Ok(())
}

/// Answer PORT_PLEASE2 `name` for a node of side `from`.
///
/// Order: a node registered with this very responder is answered directly (same side, no
/// proxying). Then every side `from` may route to — itself included when a route `from → from`
/// exists, which is how the embedded default proxies a cluster to its own upstream epmd — is
/// searched for a node distgate knows (`nodes`), and a hit is answered with the dedicated proxy
/// port. Last, a node only known to this side's upstreams (no self-route, or outside `nodes`)
/// is answered with its own port.
fn resolve(sh: &Shared, from: usize, name: &str) -> Option<NodeInfo> {
    let me = &sh.sides[from];
    if let Some(r) = me.table.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
        return Some(r.info.clone());
    }
    for &(f, to) in sh.routes_allowed.load().iter() {
        if f != from {
            continue;
        }
        let Some((info, target)) = find_in_side(sh, to, name, to == from) else { continue };
        match route_for(sh, from, to, name, target) {
            Ok(port) => return Some(NodeInfo { port, ..info }),
            Err(e) => {
                sh.stats.count("route_open_failed");
                tracing::warn!(node = %name, error = %e, "cannot open a proxy port");
                return None;
            }
        }
    }
    upstream_port_please(sh, from, name).map(|(info, _)| info)
}

/// Where node `name` of `side` listens, if distgate knows it (`nodes`): its registration with
/// the side's responder (unless `upstream_only`), or the side's upstream EPMDs.
fn find_in_side(sh: &Shared, side: usize, name: &str, upstream_only: bool) -> Option<(NodeInfo, SocketAddr)> {
    let s = &sh.sides[side];
    if !s.knows_alive(name) {
        tracing::debug!(side = %s.name, node = %name, "not in the cluster's nodes: not proxied");
        return None;
    }
    if !upstream_only {
        if let Some(r) = s.table.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Some((r.info.clone(), SocketAddr::new(r.ip, r.info.port)));
        }
    }
    let (info, up) = upstream_port_please(sh, side, name)?;
    let addr = SocketAddr::new(up.ip(), info.port);
    Some((info, addr))
}

/// Side `side`'s upstream EPMDs, resolved now, in configured order. A name that does not
/// resolve is logged, counted and skipped.
fn upstream_addrs(sh: &Shared, side: usize) -> Vec<SocketAddr> {
    let s = &sh.sides[side];
    s.upstream_epmd()
        .iter()
        .filter_map(|hp| match epmd::resolve_host_port(hp) {
            Ok(a) => Some(a),
            Err(e) => {
                sh.stats.count("upstream_epmd_unresolved");
                tracing::warn!(side = %s.name, error = %e, "upstream EPMD not resolved");
                None
            }
        })
        .collect()
}

/// Asks side `side`'s upstream EPMDs in turn where `name` listens; the first that knows it
/// answers (each may be the epmd of other hosts). Returns the answer and that EPMD's address
/// (the node's host). One that cannot be asked is logged, counted and skipped.
fn upstream_port_please(sh: &Shared, side: usize, name: &str) -> Option<(NodeInfo, SocketAddr)> {
    for up in upstream_addrs(sh, side) {
        match epmd::port_please(up, name, sh.epmd_timeout) {
            Ok(Some(info)) => return Some((info, up)),
            Ok(None) => {}
            Err(e) => {
                sh.stats.count("upstream_epmd_unreachable");
                tracing::warn!(side = %sh.sides[side].name, upstream = %up, error = %e, "upstream EPMD unreachable");
            }
        }
    }
    None
}

/// What one sweep of the mirror keeper learns as it goes, so that it asks each upstream EPMD's
/// address once and waits at most once for each that does not answer.
#[derive(Default)]
struct Sweep {
    /// Each side's upstream EPMDs, resolved once per sweep.
    upstreams: HashMap<usize, Vec<SocketAddr>>,
    /// Upstream EPMDs that could not take a registration in this sweep: skipped for the rest
    /// of it (each attempt may wait `epmd_timeout`).
    unreachable: HashSet<SocketAddr>,
}

/// The mirror keeper: every `mirror_check`, [`sweep_mirrors`], until the runtime stops.
///
/// Why: a mirror lives as long as its connection to the upstream EPMD. An EPMD that restarts
/// drops it, and one that was down when the node registered never had it; in both cases the
/// other cluster's nodes cannot dial the node first (their lookups answer "not found") until
/// it is made again. Registration and reload make mirrors; this makes them again in between.
fn keep_mirrors(sh: &Shared) {
    loop {
        let until = Instant::now() + Duration::from_millis(sh.mirror_check_ms.load(Ordering::Relaxed));
        // Parked until then (early wake-ups, `stop`'s included, look again).
        while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            if sh.stopping.load(Ordering::SeqCst) {
                return;
            }
            thread::park_timeout(left);
        }
        if sh.stopping.load(Ordering::SeqCst) {
            return;
        }
        sweep_mirrors(sh);
    }
}

/// Every registered node's mirrors brought in line ([`sync_mirrors`]): the ones an upstream
/// EPMD dropped or could not take are made again.
fn sweep_mirrors(sh: &Shared) {
    let mut sweep = Sweep::default();
    for side in 0..sh.sides.len() {
        for name in sh.sides[side].registered() {
            if sh.stopping.load(Ordering::SeqCst) {
                return;
            }
            sync_mirrors(sh, side, &name, Some(&mut sweep));
        }
    }
}

/// Bring the mirrors of side `side`'s registered node `name` in line with the configuration
/// in force: the node registered in the upstream EPMDs of every side that may route to it,
/// under the dedicated proxy port, so nodes there can dial first; into each of them, since
/// each may be the epmd of other hosts, whose nodes ask their own. A node outside its side's
/// `nodes` has none. Called when the node registers, on every reload and by the mirror keeper
/// (`sweep`: quieter about what it cannot do, which it tries again); mirrors no longer wanted
/// are dropped (which ends those registrations), and ones whose EPMD closed them (it
/// restarted, say) are made again.
fn sync_mirrors(sh: &Shared, side: usize, name: &str, mut sweep: Option<&mut Sweep>) {
    let s = &sh.sides[side];
    // The entry is taken while the node is registered (checked under the map's lock, which
    // unregistering takes after the table's): once the node unregisters, its entry leaves the
    // map, and what this call still holds of it is dropped when the call ends.
    let entry = {
        let mut map = sh.mirrors.lock().unwrap_or_else(|p| p.into_inner());
        let reg = s.table.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        match reg {
            Some(reg) => (reg, map.entry((side, name.to_string())).or_default().clone()),
            None => {
                map.remove(&(side, name.to_string()));
                return;
            }
        }
    };
    let (reg, held) = entry;
    let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
    let mut want = Vec::new();
    if !s.knows_alive(name) {
        if sweep.is_none() {
            tracing::info!(side = %s.name, node = %name, "not in the cluster's nodes: not mirrored");
        }
    } else {
        let target = SocketAddr::new(reg.ip, reg.info.port);
        for &(from, to) in sh.routes_allowed.load().iter() {
            if to != side {
                continue;
            }
            let ups = match sweep.as_deref_mut() {
                Some(sw) => sw.upstreams.entry(from).or_insert_with(|| upstream_addrs(sh, from)).clone(),
                None => upstream_addrs(sh, from),
            };
            if ups.is_empty() {
                continue;
            }
            match route_for(sh, from, to, name, target) {
                Ok(port) => want.extend(ups.into_iter().map(|up| (from, up, port))),
                Err(e) => {
                    sh.stats.count("route_open_failed");
                    tracing::warn!(node = %name, error = %e, "cannot open a proxy port for a mirror");
                }
            }
        }
    }
    held.retain(|m| {
        let wanted = want.contains(&(m.from, m.upstream, m.port));
        let alive = still_held(&m.held);
        if wanted && !alive {
            // Made again below.
            sh.stats.count("mirror_lost");
            tracing::warn!(node = %name, upstream = %m.upstream, port = m.port, "the upstream EPMD dropped a mirror (restarted?): registering it again");
        } else if !wanted {
            tracing::info!(node = %name, upstream = %m.upstream, port = m.port, "mirror withdrawn");
        }
        wanted && alive
    });
    for (from, up, port) in want {
        if held.iter().any(|m| (m.from, m.upstream, m.port) == (from, up, port)) {
            continue;
        }
        if sweep.as_deref().is_some_and(|sw| sw.unreachable.contains(&up)) {
            continue;
        }
        let mirrored = NodeInfo { port, ..reg.info.clone() };
        match epmd::alive2(up, &mirrored, sh.epmd_timeout) {
            Ok((stream, _)) => {
                tracing::info!(node = %name, upstream = %up, port, "registration mirrored upstream");
                held.push(Mirror { from, upstream: up, port, held: stream });
            }
            Err(e) => {
                sh.stats.count("mirror_failed");
                match sweep.as_deref_mut() {
                    // Tried again at every check: logged at debug, counted each time.
                    Some(sw) => {
                        sw.unreachable.insert(up);
                        tracing::debug!(node = %name, upstream = %up, error = %e, "not mirrored upstream (tried again at the next check)");
                    }
                    None => tracing::info!(node = %name, upstream = %up, error = %e, "not mirrored upstream (tried again at every mirror_check)"),
                }
            }
        }
    }
}

/// Whether an upstream EPMD still holds the registration made on `s`: it closes the
/// connection when it drops one (stopped, restarted), and sends nothing otherwise.
fn still_held(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let alive = matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    let _ = s.set_nonblocking(false);
    alive
}

/// The dedicated port for (from → to, name), opened on first use; the target is refreshed.
fn route_for(sh: &Shared, from: usize, to: usize, name: &str, target: SocketAddr) -> io::Result<u16> {
    let mut routes = sh.routes.lock().unwrap_or_else(|p| p.into_inner());
    let key = (from, to, name.to_string());
    if let Some(r) = routes.get(&key) {
        *r.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
        return Ok(r.port);
    }
    let ip = sh.sides[from].proxy_ip;
    let listeners = match sh.sides[from].node_ports {
        None => proxy_listeners(SocketAddr::new(ip, 0), sh.cores.len())?,
        Some(range) => listeners_in_range(ip, range, sh.cores.len()).map_err(|e| {
            let ours = routes.values().filter(|r| r.from == from && range.contains(r.port)).count();
            io::Error::new(e.kind(), format!("cluster {}: {e}, {ours} of them by its proxy ports (kept until a restart)", sh.sides[from].name))
        })?,
    };
    let port = listeners[0].local_addr()?.port();
    let route = Arc::new(Route {
        from,
        to,
        alive: name.to_string(),
        port,
        target: Mutex::new(target),
        down_cookie: Mutex::new(sh.sides[from].cookie()),
        up_cookie: Mutex::new(sh.sides[to].cookie()),
        policy: sh.policies.load().link(from, to, sh.stats.clone()),
        hidden: AtomicBool::new(hidden_between(sh, from, to)),
        open: AtomicBool::new(true),
        target_nodes: Mutex::new(target_nodes(sh, from, to)),
    });
    // One listener per core (SO_REUSEPORT: the kernel spreads the connections); a single
    // listener goes to the next core in turn.
    let first = sh.next_core.fetch_add(1, Ordering::Relaxed);
    let n = listeners.len();
    for (i, l) in listeners.into_iter().enumerate() {
        sh.cores[(first + i) % sh.cores.len()].listen(l, route.clone())?;
    }
    tracing::info!(from = %sh.sides[from].name, to = %sh.sides[to].name, node = %name, port, %target, listeners = n, "proxy port opened");
    routes.insert(key, route);
    Ok(port)
}

/// Whether links from side `from`'s nodes to side `to`'s are hidden: `hidden` is about nodes of
/// *other* clusters, so a self-route (`from == to`, the embedded default's) never is.
fn hidden_between(sh: &Shared, from: usize, to: usize) -> bool {
    from != to && (sh.sides[from].hidden() || sh.sides[to].hidden())
}

/// What a route's targets must match: their cluster's `nodes`, except on a route from a
/// cluster to itself (its nodes reach each other whatever `nodes` says).
fn target_nodes(sh: &Shared, from: usize, to: usize) -> Option<Arc<NodeFilter>> {
    if from == to {
        None
    } else {
        sh.sides[to].nodes()
    }
}

/// Listeners for a new proxy port on the first free port of `range`.
fn listeners_in_range(ip: IpAddr, range: PortRange, cores: usize) -> io::Result<Vec<TcpListener>> {
    use socket2::{Domain, Socket, Type};
    for port in range.first..=range.last {
        let addr = SocketAddr::new(ip, port);
        // Probe without SO_REUSEPORT: the listeners below would silently join a port that
        // another proxy port, or another process of this user, holds with SO_REUSEPORT.
        let free = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .and_then(|s| {
                s.set_reuse_address(true)?;
                s.bind(&addr.into())
            })
            .is_ok();
        if free {
            if let Ok(ls) = proxy_listeners(addr, cores) {
                return Ok(ls);
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, format!("every port of node_ports {range} is in use")))
}

/// Listeners for a new proxy port: with more than one core, one per core on the same port
/// (SO_REUSEPORT), so that many connections to one remote node — a pool, a benchmark's 1000 —
/// are spread over every core instead of all landing on the core that owned a single listener.
/// Where SO_REUSEPORT cannot be had, one listener.
fn proxy_listeners(addr: SocketAddr, cores: usize) -> io::Result<Vec<TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let bind = |addr: SocketAddr| -> io::Result<TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        // As std's bind does: a fixed port (node_ports) is bound again despite TIME_WAIT.
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        Ok(s.into())
    };
    if cores <= 1 {
        return Ok(vec![TcpListener::bind(addr)?]);
    }
    let first = match bind(addr) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "SO_REUSEPORT unavailable: one listener per proxy port");
            return Ok(vec![TcpListener::bind(addr)?]);
        }
    };
    let at = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..cores {
        all.push(bind(at)?);
    }
    Ok(all)
}

/// The cookie in `~/.erlang.cookie`, created as erl itself would (20 random capital letters,
/// owner-read-only) when it does not exist yet.
pub fn home_cookie() -> io::Result<Cookie> {
    let home = std::env::var_os("HOME").ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "HOME is not set"))?;
    let path = std::path::Path::new(&home).join(".erlang.cookie");
    match std::fs::read(&path) {
        Ok(b) => {
            let text = String::from_utf8_lossy(&b);
            let t = text.trim();
            if t.is_empty() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is empty", path.display())));
            }
            Ok(Cookie::new(t.as_bytes()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut r = [0u8; 20];
            getrandom::fill(&mut r).map_err(|e| io::Error::other(e.to_string()))?;
            let c: Vec<u8> = r.iter().map(|b| b'A' + b % 26).collect();
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(&path)?;
            f.write_all(&c)?;
            tracing::info!(path = %path.display(), "created a new Erlang cookie");
            Ok(Cookie::new(&c))
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

impl Spec {
    /// The runtime's view of a validated configuration. Cookies are read here (files,
    /// environment); a missing `~/.erlang.cookie` is created as erl would create it.
    pub fn from_config(cfg: &distgate_config::Config) -> Result<Spec, String> {
        use distgate_config::{CookieSource, Driver};
        for c in &cfg.clusters {
            if let CookieSource::File(p) = &c.cookie {
                if p.to_string_lossy().ends_with(".erlang.cookie") && !p.exists() {
                    home_cookie().map_err(|e| format!("cluster {}: {e}", c.name))?;
                }
            }
        }
        let cookies = cfg.resolve_cookies().map_err(|e| e.to_string())?;
        // Made empty here; loaded by Runtime::start, or adopted by a running one on reload.
        let registries = Arc::new(RegistrySet::from_config(cfg, &cookies)?);
        let mut sides = Vec::new();
        for c in &cfg.clusters {
            let cookie = cookies.get(&c.name).ok_or_else(|| format!("cluster {}: no cookie", c.name))?;
            let nodes = match &c.nodes {
                Some(n) => Some(Arc::new(NodeFilter::new(n).map_err(|e| format!("cluster {}: {e}", c.name))?)),
                None => None,
            };
            sides.push(SideSpec {
                name: c.name.clone(),
                cookie: Cookie::new(cookie.expose().as_bytes()),
                epmd_listen: Some(c.listen),
                // Resolved at each use, so a name that does not resolve yet does not stop a start.
                upstream_epmd: c.upstream_epmd.clone(),
                proxy_ip: c.listen.ip(),
                hidden: c.hidden,
                nodes,
                node_ports: c.node_ports,
            });
        }
        let mut routes = Vec::new();
        for (i, a) in cfg.clusters.iter().enumerate() {
            for (j, b) in cfg.clusters.iter().enumerate() {
                if cfg.connected(&a.name, &b.name) {
                    routes.push((i, j));
                }
            }
        }
        let l = &cfg.limits;
        let limits = LinkLimits {
            max_frame: l.max_frame_bytes,
            handshake_timeout: l.handshake_timeout,
            tick_timeout: l.idle_timeout.unwrap_or(Duration::from_secs(365 * 24 * 3600)),
            term: distgate_codec::term::Limits { max_depth: l.max_term_depth, max_inflated: l.max_inflated_bytes },
            fragments: distgate_codec::message::FragLimits { max_bytes: l.fragment_bytes, max_sequences: l.fragments_in_flight },
        };
        Ok(Spec {
            sides,
            routes,
            limits,
            link_buffer: l.link_buffer_bytes,
            threads: cfg.runtime.threads.count().get(),
            driver: match cfg.runtime.driver {
                Driver::Auto => DriverKind::Auto,
                Driver::IoUring => DriverKind::Uring,
                Driver::Mio => DriverKind::Poll,
            },
            epmd_timeout: Duration::from_secs(5),
            drain_timeout: cfg.runtime.drain_timeout,
            mirror_check: cfg.runtime.mirror_check,
            scheduling: cfg.runtime.scheduling,
            policies: PolicyTable::from_config(cfg, &registries.registries()),
            registries,
        })
    }
}

/// Put the cores under `s` unless they already are. They start under the process's own
/// policy, which is left alone while `normal` is asked for (whoever started distgate under
/// `chrt` keeps what they chose).
fn set_scheduling(sh: &Shared, s: Scheduling) {
    let mut cur = sh.scheduling.lock().unwrap_or_else(|p| p.into_inner());
    if *cur == s {
        return;
    }
    *cur = s;
    tracing::info!(scheduling = %s, cores = sh.cores.len(), "data-plane scheduling policy");
    for c in &sh.cores {
        let _ = c.set_scheduling(s);
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proxy port on two cores is two listeners on one port, and connections to it reach
    /// both (32 connections all hashed to one listener: odds 2^-31).
    #[test]
    fn proxy_ports_spread_connections_over_cores() {
        let ls = proxy_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        assert_eq!(ls.len(), 2);
        let port = ls[0].local_addr().unwrap().port();
        assert_eq!(ls[1].local_addr().unwrap().port(), port);
        let conns: Vec<TcpStream> = (0..32).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        let mut accepted = [0usize; 2];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for l in &ls {
            l.set_nonblocking(true).unwrap();
        }
        while accepted.iter().sum::<usize>() < conns.len() && std::time::Instant::now() < deadline {
            for (i, l) in ls.iter().enumerate() {
                while l.accept().is_ok() {
                    accepted[i] += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(accepted.iter().sum::<usize>(), 32, "{accepted:?}");
        assert!(accepted.iter().all(|&n| n > 0), "every core's listener gets connections: {accepted:?}");
        assert_eq!(proxy_listeners("127.0.0.1:0".parse().unwrap(), 1).unwrap().len(), 1);
    }

    /// A node_ports port someone holds with SO_REUSEPORT (as every proxy port on more than
    /// one core does) is not joined: its connections would be split with the holder's.
    #[test]
    fn node_ports_never_join_a_port_held_with_so_reuseport() {
        use socket2::{Domain, Socket, Type};
        let lo = IpAddr::from([127, 0, 0, 1]);
        let held = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        held.set_reuse_port(true).unwrap();
        held.bind(&SocketAddr::new(lo, 0).into()).unwrap();
        held.listen(8).unwrap();
        let port = held.local_addr().unwrap().as_socket().unwrap().port();
        let e = listeners_in_range(lo, PortRange { first: port, last: port }, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(e.to_string(), format!("every port of node_ports {port}-{port} is in use"));
        drop(held);
        let ls = listeners_in_range(lo, PortRange { first: port, last: port }, 2).unwrap();
        assert!(ls.len() == 2 && ls.iter().all(|l| l.local_addr().unwrap().port() == port));
    }
}
