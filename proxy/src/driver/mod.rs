//! Data-plane drivers: a thread per core, each owning its listeners and both sockets of every
//! link it accepted. The drivers move bytes; the [`crate::link::Link`] decides what they mean.
//!
//! - `poll`: mio (epoll), works everywhere.
//! - `uring`: io_uring, where the kernel and seccomp allow it. [`start`] probes it (a ring,
//!   the opcodes, multishot accept); `auto` falls back to `poll` when the probe fails (EPERM
//!   under Docker's default seccomp, ENOSYS, an old kernel) and logs why; an explicit
//!   `io_uring` request fails instead. The decision itself is [`choose`], a pure function.

pub mod poll;
pub mod uring;

use crate::link::{CloseReason, LinkLimits};
use crate::runtime::Route;
use crate::stats::Stats;
use distgate_config::Scheduling;
use std::io;
use std::net::TcpListener;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    Auto,
    Uring,
    Poll,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Auto => "auto",
            DriverKind::Uring => "io_uring",
            DriverKind::Poll => "mio",
        }
    }
}

/// A command for a core.
pub enum Cmd {
    /// Accept links for `route` on this listener.
    Listen(TcpListener, Arc<Route>),
    /// Limits for the links accepted from now on, and the per-link buffer (a reload).
    Limits(LinkLimits, usize),
    /// Close every link whose route was removed (`Route::open` cleared by a reload).
    CloseUnrouted,
    /// Run the core's thread under this scheduling policy (start and reload).
    Scheduling(Scheduling),
    /// Stop accepting; close each link once it is idle (see [`CoreHandle::shutdown`]), or when
    /// this long has passed; exit.
    Shutdown(std::time::Duration),
}

/// How a core is woken up to read its commands.
enum Waker {
    /// The mio driver: a waker registered with its `Poll`.
    Mio(Arc<mio::Waker>),
    /// The io_uring driver: an eventfd the core keeps a `READ` pending on.
    EventFd(Arc<std::fs::File>),
}

impl Waker {
    fn wake(&self) -> io::Result<()> {
        match self {
            Waker::Mio(w) => w.wake(),
            Waker::EventFd(f) => {
                use std::io::Write;
                (&**f).write_all(&1u64.to_ne_bytes())
            }
        }
    }
}

/// How the control plane talks to one core.
pub struct CoreHandle {
    tx: Sender<Cmd>,
    waker: Waker,
}

impl CoreHandle {
    pub fn listen(&self, l: TcpListener, route: Arc<Route>) -> io::Result<()> {
        l.set_nonblocking(true)?;
        self.tx.send(Cmd::Listen(l, route)).map_err(|_| io::Error::other("core stopped"))?;
        self.waker.wake()
    }
    /// Limits for links accepted from now on, and the per-link buffer for every link.
    pub fn set_limits(&self, limits: LinkLimits, link_buffer: usize) -> io::Result<()> {
        self.tx.send(Cmd::Limits(limits, link_buffer)).map_err(|_| io::Error::other("core stopped"))?;
        self.waker.wake()
    }
    /// Run this core's thread under `s` (`[runtime] scheduling`), from its next loop turn.
    pub fn set_scheduling(&self, s: Scheduling) -> io::Result<()> {
        self.tx.send(Cmd::Scheduling(s)).map_err(|_| io::Error::other("core stopped"))?;
        self.waker.wake()
    }
    /// Close every link on this core whose route a reload removed (`Route::open`), counted
    /// `route_removed`. (New connections on such a route's port are refused at accept.)
    pub fn close_unrouted(&self) -> io::Result<()> {
        self.tx.send(Cmd::CloseUnrouted).map_err(|_| io::Error::other("core stopped"))?;
        self.waker.wake()
    }
    /// Stop: no new links; each link is closed as soon as it is idle (nothing queued towards
    /// either of its peers, no frame streaming through it: see `Link::mid_frame`), the others
    /// when they become so or, at the latest, when `drain` has passed (`[runtime]
    /// drain_timeout`). Links keep being read meanwhile, so a frame streaming through one can end.
    pub fn shutdown(&self, drain: std::time::Duration) {
        let _ = self.tx.send(Cmd::Shutdown(drain));
        let _ = self.waker.wake();
    }
}

/// The driver [`start`] runs, and why when it is not the one asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// `Poll` or `Uring`, never `Auto`.
    pub kind: DriverKind,
    /// io_uring features, when `kind` is `Uring`.
    pub features: Option<uring::Features>,
    /// Why io_uring is not used, when `Auto` fell back to mio.
    pub fallback: Option<String>,
}

/// Decide the driver from the request and, unless mio was asked for, the io_uring probe's
/// answer (`probe` is only called when needed). `Auto` falls back to mio on any probe failure;
/// an explicit `Uring` request that cannot be met is an error naming the reason.
pub fn choose(kind: DriverKind, probe: impl FnOnce() -> Result<uring::Features, String>) -> Result<Choice, String> {
    match kind {
        DriverKind::Poll => Ok(Choice { kind: DriverKind::Poll, features: None, fallback: None }),
        DriverKind::Uring | DriverKind::Auto => match probe() {
            Ok(f) => Ok(Choice { kind: DriverKind::Uring, features: Some(f), fallback: None }),
            Err(why) if kind == DriverKind::Auto => Ok(Choice { kind: DriverKind::Poll, features: None, fallback: Some(why) }),
            Err(why) => Err(format!("driver io_uring requested but io_uring is unavailable: {why}")),
        },
    }
}

/// Start `threads` cores with the chosen driver. Returns the driver actually in use.
pub fn start(
    kind: DriverKind,
    threads: usize,
    limits: LinkLimits,
    link_buffer: usize,
    stats: Arc<Stats>,
) -> io::Result<(DriverKind, Vec<CoreHandle>, Vec<JoinHandle<()>>)> {
    let choice = choose(kind, uring::probe).map_err(|e| {
        tracing::error!(error = %e, "no data plane");
        io::Error::new(io::ErrorKind::Unsupported, e)
    })?;
    match (&choice.fallback, choice.features) {
        (Some(why), _) => tracing::warn!(reason = %why, "driver auto: io_uring unavailable; using mio"),
        (None, Some(f)) => tracing::info!(requested = kind.name(), send_zc = f.send_zc, "io_uring available"),
        (None, None) => {}
    }
    tracing::info!(driver = choice.kind.name(), threads, "data plane starting");
    let mut handles: Vec<CoreHandle> = Vec::new();
    let mut joins = Vec::new();
    for i in 0..threads {
        let started = match choice.features {
            Some(f) => uring::spawn(i, limits, link_buffer, stats.clone(), f),
            None => poll::spawn(i, limits, link_buffer, stats.clone()),
        };
        match started {
            Ok((h, j)) => {
                handles.push(h);
                joins.push(j);
            }
            Err(e) => {
                // Do not leave the cores already started running.
                for h in &handles {
                    h.shutdown(std::time::Duration::ZERO);
                }
                for j in joins {
                    let _ = j.join();
                }
                return Err(e);
            }
        }
    }
    Ok((choice.kind, handles, joins))
}

impl CoreHandle {
    pub(crate) fn new(tx: Sender<Cmd>, waker: Arc<mio::Waker>) -> Self {
        CoreHandle { tx, waker: Waker::Mio(waker) }
    }
    pub(crate) fn with_eventfd(tx: Sender<Cmd>, efd: Arc<std::fs::File>) -> Self {
        CoreHandle { tx, waker: Waker::EventFd(efd) }
    }
}

/// What both drivers do on [`Cmd::Scheduling`]: put the calling core thread under `s`.
/// A refusal (a seccomp profile that forbids the call) leaves the thread as it was, logged
/// and counted (`scheduling_failed`): the data plane works either way.
fn apply_scheduling(stats: &Stats, core: usize, s: Scheduling) {
    match uring::set_thread_scheduling(s == Scheduling::Batch) {
        Ok(()) => tracing::info!(core, scheduling = %s, "core scheduling set"),
        Err(e) => {
            stats.count("scheduling_failed");
            tracing::warn!(core, scheduling = %s, error = %e, "cannot set the core's scheduling policy; it keeps its current one");
        }
    }
}

/// What both drivers do when a link reports it is established: count it and log it.
fn on_established(stats: &Stats, core: usize, link: u64, down: &str, up: &str, flags: u64) {
    Stats::add(&stats.links_established, 1);
    tracing::info!(core, link, down = %down, up = %up, flags = format!("{flags:#x}"), "link up");
}

/// What both drivers do when a link asks to be closed, before their own teardown: count the
/// reason and log it (an ordinary end at info, anything else at warn).
fn on_close(stats: &Stats, core: usize, link: u64, node: &str, reason: &crate::link::CloseReason) {
    stats.count(&format!("close:{}", reason.label));
    if matches!(reason.label, "peer_closed" | "shutdown") {
        tracing::info!(core, link, node = %node, reason = %reason, "link closed");
    } else {
        tracing::warn!(core, link, node = %node, reason = %reason, "link closed");
    }
}

/// How long a link closing with a flush (a refusal, a policy close) may take to write what it
/// queued before its sockets are shut regardless.
const CLOSE_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// What both drivers do when a link that closed with a flush (counted then, by [`on_close`])
/// is dropped because its peer did not read what was left within [`CLOSE_FLUSH`]: not a second
/// close, but lost bytes, so an event of its own and a warning.
fn on_flush_timeout(stats: &Stats, core: usize, link: u64, node: &str, queued: usize) {
    stats.count("flush_timeout");
    tracing::warn!(core, link, node = %node, queued, "closing link dropped: its peer did not read the last writes within 5 s");
}

/// What a link closed because its route was removed is told.
const ROUTE_REMOVED: &str = "a reload removed the route between these clusters";

/// A connection accepted on the port of a route a reload removed: refused, counted.
fn refuse_unrouted(stats: &Stats, core: usize, node: &str, peer: Option<std::net::SocketAddr>) {
    stats.count("refused:route_removed");
    tracing::info!(core, node = %node, peer = ?peer, "connection refused: {ROUTE_REMOVED}");
}

/// What both drivers do when they close a link for a reason of their own (the core stopping
/// or failing): count and log it as [`on_close`] does, unless the link had already closed for
/// a reason of its own and was only flushing (`flushing`: the bytes it still had queued): a
/// close is counted once, under its first reason. Cutting such a flush loses what was left of
/// it: logged.
fn on_cut(stats: &Stats, core: usize, link: u64, node: &str, flushing: Option<usize>, label: &'static str, detail: &str) {
    if let Some(queued) = flushing {
        tracing::info!(core, link, node = %node, queued, reason = %detail, "closing link cut before its last writes were read");
    } else {
        on_close(stats, core, link, node, &CloseReason { label, leg: None, detail: detail.to_string() });
    }
}

/// Whether reading a leg must wait. What it sends queues towards the other leg
/// (`towards_other`): over the per-link budget, a slow reader there holds it back. What
/// distgate answers it itself (policy replies to denied requests) queues towards it
/// (`towards_self`), with what the other leg sends it: the latter alone stays within about
/// the budget (that leg stops being read past it), so more than twice the budget there means
/// answers pile up at a peer that sends but does not read, and it is not read either. A
/// link's memory is so bounded by the configuration, never by a peer, while a node that is
/// merely slow to read still has its own traffic read.
fn over_budget(towards_other: usize, towards_self: usize, budget: usize) -> bool {
    towards_other > budget || towards_self > budget.saturating_mul(2)
}

/// Whether a leg paused by [`over_budget`] may read again: each queue well below where it
/// paused (the gap keeps a link from flapping between paused and reading).
fn may_resume(towards_other: usize, towards_self: usize, budget: usize) -> bool {
    towards_other <= budget / 2 && towards_self <= budget
}

/// A core's slot table: reuse a freed index, else grow.
fn alloc_slot<T>(slots: &mut Vec<T>, free: &mut Vec<usize>, s: T) -> usize {
    if let Some(i) = free.pop() {
        slots[i] = s;
        i
    } else {
        slots.push(s);
        slots.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(errno: i32) -> impl FnOnce() -> Result<uring::Features, String> {
        move || Err(format!("io_uring_setup: {}", io::Error::from_raw_os_error(errno)))
    }

    #[test]
    fn auto_falls_back_to_mio_when_io_uring_setup_is_refused() {
        for errno in [libc::EPERM, libc::ENOSYS] {
            let c = choose(DriverKind::Auto, refused(errno)).expect("auto always gets a driver");
            assert_eq!(c.kind, DriverKind::Poll);
            let why = c.fallback.expect("the reason is kept for the log");
            assert!(why.contains("io_uring_setup"), "{why}");
            assert!(why.contains(&io::Error::from_raw_os_error(errno).to_string()), "{why}");
        }
    }

    #[test]
    fn an_explicit_io_uring_request_fails_with_the_reason() {
        let e = choose(DriverKind::Uring, refused(libc::EPERM)).unwrap_err();
        assert!(e.contains("io_uring requested") && e.contains("Operation not permitted"), "{e}");
    }

    #[test]
    fn io_uring_is_used_when_it_works_and_mio_never_probes() {
        let f = uring::Features { send_zc: true };
        for kind in [DriverKind::Auto, DriverKind::Uring] {
            assert_eq!(choose(kind, || Ok(f)), Ok(Choice { kind: DriverKind::Uring, features: Some(f), fallback: None }));
        }
        let c = choose(DriverKind::Poll, || panic!("mio must not probe io_uring")).unwrap();
        assert_eq!(c.kind, DriverKind::Poll);
    }

    #[test]
    fn this_machine_probes() {
        // Not an assertion about the machine: the probe must answer, never panic or hang.
        match uring::probe() {
            Ok(f) => eprintln!("io_uring available: {f:?}"),
            Err(e) => eprintln!("io_uring unavailable: {e}"),
        }
    }
}

