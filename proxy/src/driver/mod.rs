//! Data-plane drivers: a thread per core, each owning its listeners and both sockets of every
//! link it accepted. The drivers move bytes; the [`crate::link::Link`] decides what they mean.
//!
//! - `poll`: mio (epoll), works everywhere.
//! - `uring`: io_uring, where the kernel and seccomp allow it (to come; `auto` falls back to
//!   `poll` and says so).

pub mod poll;

use crate::link::LinkLimits;
use crate::runtime::Route;
use crate::stats::Stats;
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
    /// Stop accepting, drain, close, exit.
    Shutdown,
}

/// How the control plane talks to one core.
pub struct CoreHandle {
    tx: Sender<Cmd>,
    waker: Arc<mio::Waker>,
}

impl CoreHandle {
    pub fn listen(&self, l: TcpListener, route: Arc<Route>) -> io::Result<()> {
        l.set_nonblocking(true)?;
        self.tx.send(Cmd::Listen(l, route)).map_err(|_| io::Error::other("core stopped"))?;
        self.waker.wake()
    }
    pub fn shutdown(&self) {
        let _ = self.tx.send(Cmd::Shutdown);
        let _ = self.waker.wake();
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
    let chosen = match kind {
        DriverKind::Poll => DriverKind::Poll,
        DriverKind::Uring | DriverKind::Auto => {
            let why = "the io_uring driver is not built yet";
            if kind == DriverKind::Uring {
                tracing::warn!("driver io_uring requested but {why}; using mio");
            } else {
                tracing::info!("driver auto: {why}; using mio");
            }
            DriverKind::Poll
        }
    };
    tracing::info!(driver = chosen.name(), threads, "data plane starting");
    let mut handles = Vec::new();
    let mut joins = Vec::new();
    for i in 0..threads {
        let (h, j) = poll::spawn(i, limits, link_buffer, stats.clone())?;
        handles.push(h);
        joins.push(j);
    }
    Ok((chosen, handles, joins))
}

impl CoreHandle {
    pub(crate) fn new(tx: Sender<Cmd>, waker: Arc<mio::Waker>) -> Self {
        CoreHandle { tx, waker }
    }
}
