//! The policy engine: funs checked against the target cluster's module versions, local funs
//! rewritten to `fun M:F/A` where that is provably the same function, control messages
//! judged, and every non-pass decision audited. The configuration is `[policy.NAME]`
//! (docs/config.md); the behaviour, entry by entry, is in docs/policy.md.
//!
//! - [`compile`]: a configured policy turned into lookup tables ([`Compiled`]);
//! - [`engine`]: the pure judgement of one decoded message ([`engine::judge`] → [`Verdict`]);
//! - [`wire`]: what the policy writes (markers, stand-ins, SPAWN_REPLY errors, inlined atoms);
//! - [`audit`]: JSON audit lines (rate-limited) and counters;
//! - [`direction`]: the per-link-direction state the link consults for every frame;
//! - [`memo`]: the funs a link direction recently let pass, so repeated funs skip the lookups.
//!
//! Handles: a route direction (cluster `from` → cluster `to`) has one [`RouteHandle`]: the
//! compiled policy behind an `ArcSwapOption` (a reload stores a new one; every established
//! link applies it from its next frame) and the registries of both clusters.

pub mod audit;
pub mod compile;
pub mod direction;
pub mod engine;
pub mod memo;
pub mod wire;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

pub use compile::Compiled;
pub use direction::{Direction, FrameAct};
pub use engine::{judge, Finding, Judgement, Registries, Verdict};

use crate::registry::Registry;
use crate::stats::Stats;

/// The policy of one route direction, swappable, and the registries it consults.
pub struct RouteHandle {
    /// Cluster names, for audit lines.
    pub from: String,
    pub to: String,
    pub(crate) policy: ArcSwapOption<Compiled>,
    /// Bumped after every [`RouteHandle::store`]: a link direction keeps its own `Arc` of the
    /// policy and reloads it only when this changed — one plain atomic load per frame, and no
    /// shared reference count touched by every core.
    pub(crate) generation: AtomicU64,
    /// The sending cluster's registry (what a fun's lambda is).
    pub(crate) source: ArcSwap<Registry>,
    /// The receiving cluster's registry (which versions it runs, what it exports).
    pub(crate) target: ArcSwap<Registry>,
    /// Bumped after every [`RouteHandle::store_registries`] (as `generation` for the policy).
    pub(crate) registries: AtomicU64,
}

impl RouteHandle {
    pub fn new(from: &str, to: &str, policy: Option<Arc<Compiled>>, source: Arc<Registry>, target: Arc<Registry>) -> RouteHandle {
        RouteHandle {
            from: from.into(),
            to: to.into(),
            policy: ArcSwapOption::new(policy),
            generation: AtomicU64::new(0),
            source: ArcSwap::new(source),
            target: ArcSwap::new(target),
            registries: AtomicU64::new(0),
        }
    }

    /// Replace the policy (`None`: frames of this direction are no longer judged). Links apply
    /// it from their next frame.
    pub fn store(&self, policy: Option<Arc<Compiled>>) {
        self.policy.store(policy);
        // Release: a direction that sees the new generation loads the policy stored above.
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn current(&self) -> Option<Arc<Compiled>> {
        self.policy.load_full()
    }

    /// The policy met a fun the target's registry does not know (a module version, or an
    /// export): ask that registry's refresher to look again, at most once per demand gap.
    /// Lock-free and allocation-free, for the forwarding path.
    pub fn target_lacks_fun(&self, now: std::time::Instant) {
        self.target.load().want_refresh(now);
    }

    /// Replace the registries (a reload that re-read the clusters' sources).
    pub fn store_registries(&self, source: Arc<Registry>, target: Arc<Registry>) {
        self.source.store(source);
        self.target.store(target);
        self.registries.fetch_add(1, Ordering::Release);
    }
}

impl fmt::Debug for RouteHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.policy.load();
        f.debug_struct("RouteHandle")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("policy", &p.as_ref().map(|p| p.name.clone()))
            .finish()
    }
}

/// Every route direction's handle, by cluster indices `(from, to)`.
#[derive(Debug, Clone, Default)]
pub struct PolicyTable {
    routes: Vec<(usize, usize, Arc<RouteHandle>)>,
}

impl PolicyTable {
    pub fn insert(&mut self, from: usize, to: usize, handle: Arc<RouteHandle>) {
        self.routes.retain(|(f, t, _)| (*f, *t) != (from, to));
        self.routes.push((from, to, handle));
    }

    pub fn get(&self, from: usize, to: usize) -> Option<Arc<RouteHandle>> {
        self.routes.iter().find(|(f, t, _)| (*f, *t) == (from, to)).map(|(_, _, h)| h.clone())
    }

    /// Every handle with its pair of cluster indices.
    pub fn entries(&self) -> impl Iterator<Item = (usize, usize, &Arc<RouteHandle>)> {
        self.routes.iter().map(|(f, t, h)| (*f, *t, h))
    }

    pub fn handles(&self) -> impl Iterator<Item = &Arc<RouteHandle>> {
        self.routes.iter().map(|(_, _, h)| h)
    }

    /// The handles of a link whose dialler is in cluster `from` and whose target is in `to`:
    /// index 0 judges down→up (`from` → `to`), 1 up→down.
    pub fn link(&self, from: usize, to: usize, stats: Arc<Stats>) -> LinkPolicy {
        LinkPolicy { dirs: [self.get(from, to), self.get(to, from)], stats: Some(stats) }
    }

    /// A handle for every ordered pair of connected clusters (both directions of every route,
    /// since a link carries both), each with the policy its route names, or none. Cluster `i`
    /// of the configuration uses `registries[i]`.
    pub fn from_config(cfg: &distgate_config::Config, registries: &[Arc<Registry>]) -> PolicyTable {
        let mut t = PolicyTable::default();
        // One compiled policy per name, shared by every route direction that names it: its
        // audit rate limit is per policy, as documented, not per direction.
        let mut compiled: std::collections::HashMap<&str, Arc<Compiled>> = Default::default();
        for (i, a) in cfg.clusters.iter().enumerate() {
            for (j, b) in cfg.clusters.iter().enumerate() {
                if !cfg.connected(&a.name, &b.name) {
                    continue;
                }
                let (Some(src), Some(dst)) = (registries.get(i), registries.get(j)) else { continue };
                let policy = cfg.policy_for(&a.name, &b.name).map(|p| compiled.entry(p.name.as_str()).or_insert_with(|| Arc::new(Compiled::new(p))).clone());
                t.insert(i, j, Arc::new(RouteHandle::new(&a.name, &b.name, policy, src.clone(), dst.clone())));
            }
        }
        t
    }

    /// Take over what a new table (built from a reloaded configuration) says, matching
    /// handles by cluster names: each existing handle gets the new policy and registries, so
    /// established links apply them from their next frame. A pair the new table does not
    /// have loses its policy.
    pub fn adopt(&self, new: &PolicyTable) {
        for h in self.handles() {
            match new.handles().find(|n| n.from == h.from && n.to == h.to) {
                Some(n) => {
                    h.store(n.current());
                    h.store_registries(n.source.load_full(), n.target.load_full());
                }
                None => h.store(None),
            }
        }
    }
}

/// What a link needs for policy: the handle of each direction (none: not judged) and the
/// counters.
#[derive(Clone, Default)]
pub struct LinkPolicy {
    /// Index 0: frames down→up, 1: up→down.
    pub dirs: [Option<Arc<RouteHandle>>; 2],
    pub stats: Option<Arc<Stats>>,
}

impl LinkPolicy {
    pub fn is_empty(&self) -> bool {
        self.dirs.iter().all(Option::is_none)
    }
}

impl fmt::Debug for LinkPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkPolicy").field("dirs", &self.dirs).finish()
    }
}

#[cfg(test)]
mod tests;
