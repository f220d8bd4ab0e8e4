//! Counters shared by the data plane and the control plane.
//!
//! Plain atomics bumped on the forwarding path (relaxed: they are statistics, not
//! synchronisation), plus a small labelled map for rare events (close reasons, refusals). The
//! metrics endpoint reads them; tests read them to check what happened.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub struct Stats {
    pub links_accepted: AtomicU64,
    pub links_established: AtomicU64,
    pub links_closed: AtomicU64,
    pub links_open: AtomicU64,
    /// Bytes and frames forwarded, index 0: down→up, 1: up→down.
    pub bytes: [AtomicU64; 2],
    pub frames: [AtomicU64; 2],
    /// Of those frames, the ones streamed: forwarded without holding the whole message (the
    /// rest of it the body of its final binary), per direction.
    pub streamed: [AtomicU64; 2],
    /// Times a leg stopped being read because the other leg's queue was full.
    pub backpressure_pauses: AtomicU64,
    labelled: Mutex<BTreeMap<String, u64>>,
    /// Seconds from a read's completion until its frames were handed to the other socket.
    pub frame_time: prometheus::Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        let opts = prometheus::HistogramOpts::new(
            "distgate_frame_seconds",
            "Time frames spend inside distgate: from the read that completed them to their write",
        )
        .buckets(vec![1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 2e-2, 1e-1]);
        Stats {
            links_accepted: Default::default(),
            links_established: Default::default(),
            links_closed: Default::default(),
            links_open: Default::default(),
            bytes: Default::default(),
            frames: Default::default(),
            streamed: Default::default(),
            backpressure_pauses: Default::default(),
            labelled: Default::default(),
            // The options are constants: building the histogram cannot fail.
            frame_time: prometheus::Histogram::with_opts(opts).unwrap_or_else(|e| unreachable!("{e}")),
        }
    }
}

impl Stats {
    /// Count a rare event by label (e.g. `close:bad_cookie`).
    pub fn count(&self, label: &str) {
        self.count_n(label, 1);
    }

    /// `n` more of `label` (nothing for 0).
    pub fn count_n(&self, label: &str, n: u64) {
        if n > 0 {
            let mut m = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
            *m.entry(label.to_string()).or_default() += n;
        }
    }

    pub fn get(&self, label: &str) -> u64 {
        self.labelled.lock().unwrap_or_else(|p| p.into_inner()).get(label).copied().unwrap_or(0)
    }

    pub fn labelled(&self) -> BTreeMap<String, u64> {
        self.labelled.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
