//! Refreshing a registry in the background: on an interval, on demand ([`Refresher::refresh_now`],
//! [`Refresher::trigger`]), and when the forwarding path meets a fun whose module version the
//! registry lacks ([`Registry::want_refresh`], at most once per [`DEMAND_GAP`]).
//!
//! The thread parks between refreshes; whatever wants a refresh sets a flag and unparks it.
//! Unparking is an atomic swap and at most one futex wake, so the forwarding path may ask without
//! a lock or an allocation (a channel send allocates now and then, and a condvar needs its mutex
//! to avoid lost wake-ups; park/unpark's token has neither problem).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::{Limits, LoadReport, Registry, Source};

/// The least time between two refreshes a registry asks for from the forwarding path
/// ([`Registry::want_refresh`]); [`Registry::set_demand_gap`] changes it.
pub const DEMAND_GAP: Duration = Duration::from_secs(10);

/// What a refresher is asked to do, shared by its thread, its handle and its registry.
pub(crate) struct Ctl {
    stop: AtomicBool,
    demand: AtomicBool,
    waiting: Mutex<Waiting>,
    thread: OnceLock<Thread>,
}

/// [`Refresher::refresh_now`] callers, each served by one refresh. `closed` once the thread
/// ends, so nobody waits for a thread that is gone.
#[derive(Default)]
struct Waiting {
    closed: bool,
    queue: VecDeque<mpsc::Sender<LoadReport>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoned only by a panic in a few lines of queue handling; the queue stays consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctl {
    /// Asks for a refresh without waiting for it.
    pub(crate) fn request(&self) {
        self.demand.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

const NEVER: u64 = u64::MAX;

/// A registry's on-demand state: the refresher to wake, and when it was last asked.
pub(crate) struct Demand {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last request that got through, or [`NEVER`].
    last: AtomicU64,
    gap_ms: AtomicU64,
    pub(crate) wake: ArcSwapOption<Ctl>,
}

impl fmt::Debug for Demand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Demand").field("refresher", &self.wake.load().is_some()).finish_non_exhaustive()
    }
}

impl Demand {
    pub(crate) fn new() -> Demand {
        Demand {
            epoch: Instant::now(),
            last: AtomicU64::new(NEVER),
            gap_ms: AtomicU64::new(DEMAND_GAP.as_millis() as u64),
            wake: ArcSwapOption::empty(),
        }
    }

    pub(crate) fn set_gap(&self, gap: Duration) {
        self.gap_ms.store(gap.as_millis().min(u64::MAX as u128 - 1) as u64, Ordering::Relaxed);
    }

    /// Wakes the refresher unless one was asked less than the gap ago. Atomics only; the
    /// common case (asked recently) is one load.
    pub(crate) fn want(&self, now: Instant) -> bool {
        let t = now.saturating_duration_since(self.epoch).as_millis().min(NEVER as u128 - 1) as u64;
        let last = self.last.load(Ordering::Relaxed);
        if last != NEVER && t.saturating_sub(last) < self.gap_ms.load(Ordering::Relaxed) {
            return false;
        }
        // Of callers racing here, one wins; the others see its timestamp next time.
        if self.last.compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return false;
        }
        match &*self.wake.load() {
            Some(ctl) => {
                ctl.request();
                true
            }
            None => false,
        }
    }
}

/// Computes the sources of one refresh; errors met doing so go into the report given.
pub type SourcesFn = Box<dyn FnMut(&mut LoadReport) -> Vec<Source> + Send>;

/// Called after every refresh with its report.
pub type AfterFn = Box<dyn FnMut(&Registry, &LoadReport) + Send>;

/// What a refresher does each time.
pub struct Plan {
    /// Time between two refreshes (any refresh restarts it).
    pub interval: Duration,
    pub limits: Limits,
    /// Refresh as soon as the thread starts; otherwise one interval later.
    pub first_at_once: bool,
    /// The sources of one refresh, computed each time (a cluster's nodes come and go). Errors
    /// met while computing them go into the report given.
    pub sources: SourcesFn,
    /// Called after every refresh with its report (errors already logged).
    pub after: Option<AfterFn>,
}

/// A background thread refreshing one registry from its sources on an interval and on demand.
/// Dropping it stops the thread (after the refresh in progress, if any, which is bounded by
/// the sources' timeouts) and joins it.
pub struct Refresher {
    ctl: Arc<Ctl>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Refresher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refresher").finish_non_exhaustive()
    }
}

/// Starts refreshing `registry` from `sources` every `interval` (the first refresh at once),
/// with default [`Limits`].
pub fn spawn_refresher(registry: Arc<Registry>, sources: Vec<Source>, interval: Duration) -> io::Result<Refresher> {
    spawn_refresher_with(registry, sources, interval, Limits::default())
}

/// [`spawn_refresher`] with explicit limits.
pub fn spawn_refresher_with(registry: Arc<Registry>, sources: Vec<Source>, interval: Duration, limits: Limits) -> io::Result<Refresher> {
    spawn(registry, Plan { interval, limits, first_at_once: true, sources: Box::new(move |_| sources.clone()), after: None })
}

/// Starts refreshing `registry` as `plan` says. The registry's on-demand requests
/// ([`Registry::want_refresh`]) wake this refresher from now on.
pub fn spawn(registry: Arc<Registry>, plan: Plan) -> io::Result<Refresher> {
    let ctl = Arc::new(Ctl { stop: AtomicBool::new(false), demand: AtomicBool::new(false), waiting: Mutex::default(), thread: OnceLock::new() });
    let (reg, c) = (Arc::clone(&registry), Arc::clone(&ctl));
    let t = thread::Builder::new().name(format!("registry-{}", registry.cluster())).spawn(move || run(reg, c, plan))?;
    // Set before anyone can ask: requests made earlier would set the flag but wake nobody.
    let _ = ctl.thread.set(t.thread().clone());
    registry.demand.wake.store(Some(Arc::clone(&ctl)));
    Ok(Refresher { ctl, thread: Some(t) })
}

/// Whatever ends the thread (a stop, or a panic in a refresh): waiters stop waiting, and the
/// registry stops pointing at it (unless a newer refresher took its place).
struct Exit<'a>(&'a Registry, &'a Arc<Ctl>);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        let mut w = lock(&self.1.waiting);
        w.closed = true;
        w.queue.clear();
        drop(w);
        let cur = self.0.demand.wake.load();
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, self.1)) {
            self.0.demand.wake.compare_and_swap(&cur, None);
        }
    }
}

fn run(registry: Arc<Registry>, ctl: Arc<Ctl>, mut plan: Plan) {
    let _exit = Exit(&registry, &ctl);
    let mut next = Instant::now() + if plan.first_at_once { Duration::ZERO } else { plan.interval };
    loop {
        if ctl.stop.load(Ordering::Acquire) {
            return;
        }
        let waiter = lock(&ctl.waiting).queue.pop_front();
        let demanded = ctl.demand.swap(false, Ordering::AcqRel);
        let now = Instant::now();
        if waiter.is_none() && !demanded && now < next {
            // An unpark since the checks above makes this return at once: no lost wake-up.
            thread::park_timeout(next - now);
            continue;
        }
        let report = refresh_once(&registry, &mut plan);
        if let Some(w) = waiter {
            let _ = w.send(report);
        }
        next = Instant::now() + plan.interval;
    }
}

fn refresh_once(registry: &Registry, plan: &mut Plan) -> LoadReport {
    let mut found = LoadReport::default();
    let sources = (plan.sources)(&mut found);
    let mut r = registry.refresh(&sources, &plan.limits);
    registry.count_errors(found.errors.len());
    found.errors.append(&mut r.errors);
    r.errors = found.errors;
    let cluster = registry.cluster();
    for e in &r.errors {
        tracing::warn!(cluster, "registry refresh: {e}");
    }
    // Before the summary line, so that whoever reads it finds the cache written.
    if let Some(after) = plan.after.as_mut() {
        after(registry, &r);
    }
    let snap = registry.load();
    let (modules, versions) = (snap.module_count(), snap.version_count());
    drop(snap);
    if r.added > 0 {
        tracing::info!(cluster, added = r.added, modules, versions, "registry refreshed: new versions");
    } else {
        tracing::debug!(cluster, files = r.files, errors = r.errors.len(), modules, versions, "registry refreshed");
    }
    r
}

impl Refresher {
    /// Refreshes now, on the refresher's thread, and waits for it; the interval restarts from
    /// there. `None` if the thread is gone.
    pub fn refresh_now(&self) -> Option<LoadReport> {
        let (tx, rx) = mpsc::channel();
        {
            let mut w = lock(&self.ctl.waiting);
            if w.closed {
                return None;
            }
            w.queue.push_back(tx);
        }
        self.ctl.wake();
        rx.recv().ok()
    }

    /// Asks for a refresh without waiting for it.
    pub fn trigger(&self) {
        self.ctl.request();
    }

    /// Asks the thread to stop after the refresh in progress, without waiting for it.
    pub fn signal_stop(&self) {
        self.ctl.stop.store(true, Ordering::Release);
        self.ctl.wake();
    }

    /// The thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_is_rate_limited_and_wakes_the_refresher() {
        let reg = Arc::new(Registry::new("d"));
        let t0 = Instant::now();
        assert!(!reg.want_refresh(t0), "no refresher: nothing to wake");
        let refreshes = Arc::new(AtomicU64::new(0));
        let n = Arc::clone(&refreshes);
        let plan = Plan {
            interval: Duration::from_secs(3600),
            limits: Limits::default(),
            first_at_once: false,
            sources: Box::new(|_| Vec::new()),
            after: Some(Box::new(move |_, _| {
                n.fetch_add(1, Ordering::SeqCst);
            })),
        };
        let r = spawn(Arc::clone(&reg), plan).unwrap();
        // Within the gap of the refused request above: refused again, whatever the refresher.
        assert!(!reg.want_refresh(t0 + Duration::from_secs(1)));
        let t1 = t0 + DEMAND_GAP;
        assert!(reg.want_refresh(t1));
        assert!(!reg.want_refresh(t1 + DEMAND_GAP / 2));
        let wait = |k: u64| {
            let start = Instant::now();
            while refreshes.load(Ordering::SeqCst) < k {
                assert!(start.elapsed() < Duration::from_secs(20), "no refresh came");
                thread::sleep(Duration::from_millis(5));
            }
        };
        wait(1);
        assert!(reg.want_refresh(t1 + DEMAND_GAP));
        wait(2);
        reg.set_demand_gap(Duration::ZERO);
        assert!(reg.want_refresh(t1 + DEMAND_GAP));
        wait(3);
        // refresh_now is served by its own refresh.
        assert!(r.refresh_now().is_some());
        assert_eq!(refreshes.load(Ordering::SeqCst), 4);
        r.stop();
        assert!(!reg.want_refresh(t1 + DEMAND_GAP * 5), "a stopped refresher is no longer woken");
    }

    #[test]
    fn a_newer_refresher_keeps_the_registry_when_the_older_one_ends() {
        let reg = Arc::new(Registry::new("n"));
        let old = spawn_refresher(Arc::clone(&reg), Vec::new(), Duration::from_secs(3600)).unwrap();
        let new = spawn_refresher(Arc::clone(&reg), Vec::new(), Duration::from_secs(3600)).unwrap();
        old.stop();
        reg.set_demand_gap(Duration::ZERO);
        assert!(reg.want_refresh(Instant::now()), "the newer refresher is still registered");
        assert!(new.refresh_now().is_some());
        drop(new);
    }
}
