//! The io_uring driver: one ring per core thread, behaviour identical to the mio driver
//! (`poll.rs`), which is the reference.
//!
//! Shape (liburing's `examples/proxy.c` is the model):
//!
//! - **Accept**: one multishot `ACCEPT` per listener; re-armed when the kernel ends it.
//! - **Receive**: one single-shot `RECV` per leg at a time, into that leg's own receive buffer
//!   (`RBuf`), at the end of what it already holds. Not provided-buffer rings: the Link wants
//!   everything unconsumed of a leg as one contiguous slice (a frame may span any number of
//!   reads, and a 64 KiB OTP fragment nearly always spans ring buffers), and its zero-copy
//!   writes are ranges of that slice. With ring buffers each partial frame would be copied into
//!   an assembly buffer anyway and the ranges would point into buffers the ring wants back.
//!   Reading into the leg's own buffer keeps one copy-free path: the bytes the kernel wrote are
//!   the bytes handed to `on_bytes`, and the ranges it returns are sent from there.
//! - **Send**: a leg's queue is a list of segments, each a range of a refcounted receive buffer
//!   (frames that pass unchanged: no copy) or owned bytes (handshake messages). One `SENDMSG`
//!   per leg in flight at a time, carrying up to `IOV_BATCH` segments (writev). Batches of at
//!   least `ZC_MIN` bytes may go as `SENDMSG_ZC` when the kernel has it: the kernel tells only
//!   in a late notification whether it really avoided the copy (never over loopback), so each
//!   leg sends one trial, sends plainly until the trial's notification answers, and uses
//!   zero-copy only after a "not copied" answer. SEND_ZC only where it pays.
//! - **Connect**: `CONNECT` on a fresh socket.
//! - **Wake-up**: an eventfd (written by [`CoreHandle`]) with a `READ` in flight; time via
//!   `io_uring_enter`'s timeout argument, so timers tick every 250 ms as with mio.
//! - **Batching**: SQEs are queued during a turn and submitted by the one `submit_with_args`
//!   that also waits for the next completions.
//! - **Close**: as with mio, a closed link's legs get a last non-blocking write of what is
//!   queued and are shut down at once (so the nodes see nodedown), except that a leg with a send
//!   in flight is shut down when that send completes or is cancelled (mio would have written it
//!   synchronously). The link's memory is freed when its last completion arrives. A closed link
//!   still waiting for zero-copy notifications after `ZC_GRACE` (its data sits in a send queue
//!   towards a peer that does not read) has those sockets reset, which releases the buffers.
//!   Unlike mio, a link flushing before its close whose send fails is dropped, not left waiting.
//!   As with mio, a link flushing before its close towards a peer that does not read is dropped
//!   after `CLOSE_FLUSH`.
//!
//! Backpressure as with mio: when the queue towards one leg holds more than `link_buffer`
//! bytes, the other leg is not read (no recv armed) until the queue drains below half.
//!
//! Memory the kernel may touch (receive buffers, send segments, `msghdr`/`iovec`s, connect
//! addresses, the eventfd word) lives in stable heap allocations owned by the link and is never
//! freed or moved while an operation using it is in flight: a closed link cancels its
//! operations (`ASYNC_CANCEL`) and is freed only when every completion (and every zero-copy
//! notification) has arrived. If a core must exit with operations still in flight, their
//! memory is leaked rather than freed. All `unsafe` of the crate is in this file.

use super::{Cmd, CoreHandle};
use crate::link::{Chunk, Event, Leg, Link, LinkLimits, Output};
use crate::runtime::Route;
use crate::stats::Stats;
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Submission queue entries per ring.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries per ring (each link has up to ~5 operations in flight).
const CQ_ENTRIES: u32 = 8192;
/// Default receive buffer size; buffers of this size are pooled per core.
const RBUF: usize = 256 * 1024;
/// Smallest free space to receive into (as mio's `READ_CHUNK`).
const READ_CHUNK: usize = 64 * 1024;
/// Default-size receive buffers kept per core for reuse.
const POOL_MAX: usize = 32;
/// Segments per `SENDMSG`.
const IOV_BATCH: usize = 64;
/// Batches at least this large go as `SENDMSG_ZC` (when available and paying).
const ZC_MIN: usize = 64 * 1024;
/// How long a core waits for cancelled operations before it leaks their memory and exits.
const EXIT_WAIT: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(250);
/// How long a closed link may wait for zero-copy notifications before its sockets are reset.
const ZC_GRACE: Duration = Duration::from_secs(10);

/// `IORING_SEND_ZC_REPORT_USAGE` (zero-copy send flag) and `IORING_NOTIF_USAGE_ZC_COPIED`
/// (set in a notification's result when the kernel copied after all); the crate keeps its
/// `sys` module private.
const SEND_ZC_REPORT_USAGE: u16 = 8;
const NOTIF_USAGE_ZC_COPIED: i32 = i32::MIN; // 1 << 31

// ---------------------------------------------------------------------------------------------
// Probe

/// What the kernel offers, found by [`probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `IORING_OP_SENDMSG_ZC` is available.
    pub send_zc: bool,
}

/// Put the calling thread under `SCHED_BATCH` (`batch`) or `SCHED_OTHER`, priority 0 (see
/// `[runtime] scheduling`). Here because this module holds the crate's `unsafe`: libc's call
/// has no safe wrapper in the crates we use. Either policy is open to any unprivileged thread.
pub(crate) fn set_thread_scheduling(batch: bool) -> io::Result<()> {
    let policy = if batch { libc::SCHED_BATCH } else { libc::SCHED_OTHER };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is an initialised `sched_param` that outlives the call, which only reads
    // it; pid 0 names the calling thread (Linux schedules threads, not processes).
    let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Set up a ring and check everything this driver needs. The error says which step failed
/// and why (e.g. `io_uring_setup: Operation not permitted` under Docker's default seccomp).
pub fn probe() -> Result<Features, String> {
    let mut ring = IoUring::new(8).map_err(|e| format!("io_uring_setup: {e}"))?;
    if !ring.params().is_feature_ext_arg() {
        return Err("the kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11+)".into());
    }
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p).map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    let needed = [
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Read::CODE, "READ"),
    ];
    let missing: Vec<&str> = needed.iter().filter(|(c, _)| !p.is_supported(*c)).map(|(_, n)| *n).collect();
    if !missing.is_empty() {
        return Err(format!("the kernel lacks io_uring operations {}", missing.join(", ")));
    }
    let send_zc = p.is_supported(opcode::SendMsgZc::CODE);
    // Multishot accept cannot be probed by opcode (it is a flag of ACCEPT, Linux 5.19+):
    // arm one on a throwaway listener and cancel it. An old kernel answers EINVAL.
    if let Ok(l) = TcpListener::bind(("127.0.0.1", 0)) {
        let acc = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd())).build().user_data(1);
        let cancel = opcode::AsyncCancel::new(1).build().user_data(2);
        {
            let mut sq = ring.submission();
            // SAFETY: neither entry refers to memory of ours: only a descriptor, of which a
            // pending request holds the kernel's own reference, so `l` being closed before the
            // ring (as on an early return below) frees nothing the kernel still uses.
            let pushed = unsafe { sq.push(&acc).is_ok() && sq.push(&cancel).is_ok() };
            if !pushed {
                return Err("a fresh ring's submission queue is full".into());
            }
        }
        let ts = types::Timespec::new().sec(1);
        let args = types::SubmitArgs::new().timespec(&ts);
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen < 2 && Instant::now() < deadline {
            match ring.submitter().submit_with_args(2 - seen, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
                Err(e) => return Err(format!("io_uring_enter: {e}")),
            }
            for cqe in ring.completion() {
                seen += 1;
                if cqe.user_data() == 1 && cqe.result() == -libc::EINVAL {
                    return Err("the kernel lacks multishot accept (Linux 5.19+)".into());
                }
            }
        }
        drop(ring);
        drop(l);
    }
    Ok(Features { send_zc })
}

/// A core's ring: single issuer with deferred task work where the kernel has them (6.1+),
/// plain otherwise.
fn new_ring() -> io::Result<IoUring> {
    let fancy = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES);
    match fancy {
        Ok(r) => Ok(r),
        Err(_) => IoUring::builder().setup_cqsize(CQ_ENTRIES).build(SQ_ENTRIES),
    }
}

// ---------------------------------------------------------------------------------------------
// Buffers

thread_local! {
    /// Default-size receive buffers of this core, for reuse without zeroing.
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A receive buffer: a heap block whose address never changes until it is freed. The kernel
/// writes into its free tail while the owning leg's recv is in flight; queued sends read ranges
/// of its filled part. Shared by `Rc` between the leg (which receives into it) and every send
/// segment that refers to it, so it is freed only when neither can still use it.
///
/// Rust references are made only to ranges nobody writes at that time (see each `unsafe`).
struct RBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

impl RBuf {
    fn new(cap: usize) -> Rc<RBuf> {
        let pooled = if cap == RBUF { POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten() } else { None };
        let b: Box<[u8]> = pooled.unwrap_or_else(|| vec![0u8; cap].into_boxed_slice());
        let cap = b.len();
        let ptr = NonNull::from(Box::leak(b)).cast::<u8>();
        Rc::new(RBuf { ptr, cap })
    }

    /// Address of byte `off` (`off <= cap`), for the kernel.
    fn at(&self, off: usize) -> *mut u8 {
        debug_assert!(off <= self.cap);
        self.ptr.as_ptr().wrapping_add(off)
    }

    /// Bytes `a..b` of the buffer.
    ///
    /// # Safety
    /// `a <= b <= cap`, and no one (in particular no in-flight recv) writes `a..b` while the
    /// returned slice lives.
    unsafe fn slice(&self, a: usize, b: usize) -> &[u8] {
        debug_assert!(a <= b && b <= self.cap);
        // SAFETY: in bounds of the allocation (caller), initialised (allocated zeroed or
        // written before), and not written concurrently (caller).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(a), b - a) }
    }
}

impl Drop for RBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`cap` came from `Box::leak` of a `Box<[u8]>` of exactly `cap` bytes in
        // `new`, and this is the only place that turns it back. The last `Rc` is gone, so no
        // leg receives into it and no queued or zero-copy-held send refers to it: the kernel
        // has finished with it (links are freed only when all their completions are in).
        let b = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.cap)) };
        if b.len() == RBUF {
            // `try_with`: during thread teardown the pool may be gone; then the block is freed.
            let _ = POOL.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(b);
                }
            });
        }
    }
}

/// What a send segment's bytes live in.
#[derive(Clone)]
enum Backing {
    Rx(Rc<RBuf>),
    Owned(Rc<Vec<u8>>),
}

/// A range of bytes queued for a leg.
struct Seg {
    back: Backing,
    off: usize,
    len: usize,
}

impl Seg {
    fn ptr(&self) -> *const u8 {
        match &self.back {
            Backing::Rx(b) => b.at(self.off),
            Backing::Owned(v) => v.as_ptr().wrapping_add(self.off),
        }
    }
    fn bytes(&self) -> &[u8] {
        match &self.back {
            // SAFETY: a segment covers filled bytes of the buffer (checked when queued);
            // receives only ever write past the filled part, and a buffer is compacted only
            // when no segment refers to it (`Rc::strong_count == 1`).
            Backing::Rx(b) => unsafe { b.slice(self.off, self.off + self.len) },
            Backing::Owned(v) => &v[self.off..self.off + self.len],
        }
    }
}

/// The `msghdr` and `iovec`s of a leg's one in-flight `SENDMSG`; boxed so their address is
/// stable, and not touched while that send is in flight.
struct MsgBuf {
    hdr: libc::msghdr,
    iov: [libc::iovec; IOV_BATCH],
}

impl MsgBuf {
    fn new() -> Box<MsgBuf> {
        // SAFETY: `msghdr` is a plain C struct of pointers and integers, for which all-zero
        // bytes are a valid value (null pointers, zero lengths).
        let hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        Box::new(MsgBuf { hdr, iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOV_BATCH] })
    }
}

/// A connect address, boxed so its address is stable while `CONNECT` is in flight.
enum SockAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl SockAddr {
    fn new(a: SocketAddr) -> Box<SockAddr> {
        Box::new(match a {
            SocketAddr::V4(a) => SockAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => SockAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            }),
        })
    }
    fn family(&self) -> libc::c_int {
        match self {
            SockAddr::V4(_) => libc::AF_INET,
            SockAddr::V6(_) => libc::AF_INET6,
        }
    }
    fn raw(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        match self {
            SockAddr::V4(a) => (a as *const libc::sockaddr_in as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as _),
            SockAddr::V6(a) => (a as *const libc::sockaddr_in6 as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in6>() as _),
        }
    }
}

/// A new blocking TCP socket for `family` (io_uring polls it itself).
fn tcp_socket(family: libc::c_int) -> io::Result<TcpStream> {
    // SAFETY: socket(2) with constant arguments; it only returns a descriptor or -1.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The end of a closed link's leg, as mio's: a last non-blocking write of what is still
/// queued, then shutdown, so the peer sees the close now. The descriptor itself is closed
/// when the link is freed: until then no queued entry can meet a reused descriptor number.
/// Only called when no send is in flight on the leg (a write could overtake it).
fn close_leg(l: &mut LegIo) {
    if l.shut {
        return;
    }
    l.shut = true;
    let Some(s) = l.sock.as_mut() else { return };
    if l.connected {
        let _ = s.set_nonblocking(true);
        'flush: for seg in l.wq.iter() {
            let mut b = seg.bytes();
            while !b.is_empty() {
                match s.write(b) {
                    Ok(0) | Err(_) => break 'flush,
                    Ok(n) => b = &b[n..],
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Both);
}

/// Close a socket with SO_LINGER 0: the kernel resets the connection and drops its queues.
fn abort_socket(s: TcpStream) {
    let lg = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt(2) on a descriptor we own, with a pointer to a live `linger` and its
    // exact size; the kernel only reads it during the call.
    let _ = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast::<libc::c_void>(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(s);
}

/// The eventfd a core's handle writes to wake it.
fn eventfd() -> io::Result<File> {
    // SAFETY: eventfd(2) with constant arguments; it only returns a descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd(2) and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

// ---------------------------------------------------------------------------------------------
// Operation tags (user_data): kind << 56 | leg << 48 | zero-copy id << 32 | slot.

const K_ACCEPT: u64 = 1;
const K_RECV: u64 = 2;
const K_SEND: u64 = 3;
const K_CONNECT: u64 = 4;
const K_WAKE: u64 = 5;
const K_CANCEL: u64 = 6;

fn tag(kind: u64, slot: usize, leg: usize, zid: u16) -> u64 {
    (kind << 56) | ((leg as u64 & 1) << 48) | ((zid as u64) << 32) | (slot as u64 & 0xffff_ffff)
}

fn untag(ud: u64) -> (u64, usize, usize, u16) {
    (ud >> 56, (ud & 0xffff_ffff) as usize, ((ud >> 48) & 1) as usize, ((ud >> 32) & 0xffff) as u16)
}

fn errno_text(res: i32) -> String {
    io::Error::from_raw_os_error(-res).to_string()
}

// ---------------------------------------------------------------------------------------------
// Core state

struct LegIo {
    sock: Option<TcpStream>,
    connected: bool,
    /// The read side is finished (EOF or error): no more receives.
    eof: bool,
    /// Receive buffer: `start..filled` is received and not yet consumed by the link.
    rb: Rc<RBuf>,
    start: usize,
    filled: usize,
    recv_inflight: bool,
    /// Not read because the other leg's queue is full.
    paused: bool,
    /// Send queue (front first) and its byte count (including what is in flight).
    wq: VecDeque<Seg>,
    queued: usize,
    /// Tag of the in-flight send, if any.
    send_inflight: Option<u64>,
    msg: Box<MsgBuf>,
    /// Whether large sends on this leg go zero-copy.
    zc: Zc,
    zc_next: u16,
    /// Segments of zero-copy sends whose notification has not arrived yet.
    zc_hold: Vec<(u16, Vec<Backing>)>,
    addr: Option<Box<SockAddr>>,
    connect_inflight: bool,
    /// Closed link: the socket was flushed and shut down.
    shut: bool,
}

impl LegIo {
    fn new(sock: Option<TcpStream>, connected: bool, zc: Zc) -> Self {
        LegIo {
            sock,
            connected,
            eof: false,
            // Allocated by the first `make_room`, so a leg that never reads costs nothing.
            rb: RBuf::new(0),
            start: 0,
            filled: 0,
            recv_inflight: false,
            paused: false,
            wq: VecDeque::new(),
            queued: 0,
            send_inflight: None,
            msg: MsgBuf::new(),
            zc,
            zc_next: 1,
            zc_hold: Vec::new(),
            addr: None,
            connect_inflight: false,
            shut: false,
        }
    }
    fn queued(&self) -> usize {
        self.queued
    }
    /// Drop `n` sent bytes from the front of the queue.
    fn consume(&mut self, mut n: usize) {
        n = n.min(self.queued);
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.wq.front_mut() else { break };
            if n >= front.len {
                n -= front.len;
                self.wq.pop_front();
            } else {
                front.off += n;
                front.len -= n;
                n = 0;
            }
        }
    }
}

/// Zero-copy on one leg. The kernel says only in a send's notification whether it really
/// avoided the copy (never over loopback), and notifications come late: so one zero-copy send
/// is tried first, plain sends follow until its notification answers, and only a
/// "not copied" answer turns zero-copy on for the leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zc {
    /// Not available, or the kernel copied anyway: plain sends.
    Off,
    /// Not tried yet: the next large send is the trial.
    Try,
    /// The trial's notification has not arrived: plain sends meanwhile.
    Trying,
    /// The kernel did not copy: large sends go zero-copy.
    On,
}

struct Conn {
    link: Link,
    legs: [LegIo; 2],
    route: Arc<Route>,
    /// Set when the link asked to close after flushing.
    closing: bool,
    /// When `closing` began: a peer that never reads cannot hold the link open past
    /// `CLOSE_FLUSH`.
    closing_since: Option<Instant>,
    /// Closed: waiting for in-flight operations before the slot is freed.
    dead: bool,
    /// Operations (and zero-copy notifications) whose completion has not arrived.
    ops: u32,
    /// When the link was closed (`dead`).
    dead_since: Option<Instant>,
    target: Option<SocketAddr>,
}

struct Lst {
    sock: TcpListener,
    route: Arc<Route>,
    armed: bool,
    /// Being cancelled (the core is stopping).
    closing: bool,
    /// Re-arm at the next tick (the kernel ended the multishot accept with an error).
    rearm: bool,
}

enum Slot {
    Listener(Lst),
    Conn(Box<Conn>),
    Free,
}

struct Core {
    id: usize,
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<usize>,
    limits: LinkLimits,
    link_buffer: usize,
    stats: Arc<Stats>,
    feat: Features,
    out: Output,
    next_link: u64,
    stopping: Option<Instant>,
    /// How long, once stopping, links may take to flush their queues (`[runtime] drain_timeout`).
    drain: Duration,
    efd: Arc<File>,
    /// The eventfd counter the wake-up `READ` fills; boxed for a stable address.
    wake_buf: Box<u64>,
    wake_armed: bool,
    cqes: Vec<(u64, i32, u32)>,
    /// Entries that did not fit the submission queue yet.
    backlog: VecDeque<squeue::Entry>,
}

fn leg_of(i: usize) -> Leg {
    if i == 0 {
        Leg::Down
    } else {
        Leg::Up
    }
}

pub fn spawn(id: usize, limits: LinkLimits, link_buffer: usize, stats: Arc<Stats>, feat: Features) -> io::Result<(CoreHandle, JoinHandle<()>)> {
    let efd = Arc::new(eventfd()?);
    let (tx, rx) = channel();
    let (ready_tx, ready_rx) = sync_channel::<io::Result<()>>(1);
    let core_efd = efd.clone();
    let j = std::thread::Builder::new().name(format!("core-{id}")).spawn(move || {
        // The ring is made on its thread: with SINGLE_ISSUER its creator is its submitter.
        let ring = match new_ring() {
            Ok(r) => r,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        let core = Core {
            id,
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            limits,
            link_buffer,
            stats,
            feat,
            out: Output::default(),
            next_link: (id as u64) << 48,
            stopping: None,
            drain: Duration::ZERO,
            efd: core_efd,
            wake_buf: Box::new(0),
            wake_armed: false,
            cqes: Vec::with_capacity(256),
            backlog: VecDeque::new(),
        };
        core.run(rx)
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((CoreHandle::with_eventfd(tx, efd), j)),
        Ok(Err(e)) => {
            let _ = j.join();
            Err(io::Error::new(e.kind(), format!("core {id}: io_uring setup: {e}")))
        }
        Err(_) => {
            let _ = j.join();
            Err(io::Error::other(format!("core {id}: thread ended during setup")))
        }
    }
}

impl Core {
    fn alloc(&mut self, s: Slot) -> usize {
        super::alloc_slot(&mut self.slots, &mut self.free, s)
    }

    /// Queue an SQE. When the submission queue is full, what is queued is submitted; if the
    /// kernel cannot take it now (completion queue overflow), the entry waits in `backlog`,
    /// in order, until the next turn.
    ///
    /// # Safety
    /// Every buffer, `msghdr`, address and descriptor `e` refers to must stay valid and
    /// unmoved (and, for buffers the kernel writes, unread and unwritten by us) until the
    /// operation's last completion (and, for zero-copy sends, its notification) arrives.
    unsafe fn push(&mut self, e: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            // SAFETY: as above.
            if self.ring.submit().is_ok() && unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(e);
    }

    /// Move backlogged entries into the submission queue, in order, as far as they fit.
    fn flush_backlog(&mut self) {
        while let Some(e) = self.backlog.front() {
            // SAFETY: every backlogged entry was queued through `push`, whose callers
            // guaranteed the validity of what it refers to until its completion.
            if unsafe { self.ring.submission().push(e) }.is_err() {
                // SAFETY: as above.
                if self.ring.submit().is_err() || unsafe { self.ring.submission().push(e) }.is_err() {
                    return;
                }
            }
            self.backlog.pop_front();
        }
    }

    fn run(mut self, rx: Receiver<Cmd>) {
        self.arm_wake();
        let mut last_tick = Instant::now();
        loop {
            let timeout = if self.stopping.is_some() { Duration::from_millis(20) } else { TICK };
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.flush_backlog();
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                if !matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)) {
                    tracing::error!(core = self.id, error = %e, "io_uring_enter failed; core stops");
                    for i in 0..self.slots.len() {
                        self.cut(i, "internal", &format!("its core stopped: io_uring_enter failed: {e}"));
                    }
                    self.exit();
                    return;
                }
            }
            self.reap();
            loop {
                match rx.try_recv() {
                    Ok(Cmd::Listen(l, route)) => self.add_listener(l, route),
                    Ok(Cmd::Limits(limits, link_buffer)) => (self.limits, self.link_buffer) = (limits, link_buffer),
                    Ok(Cmd::Scheduling(s)) => super::apply_scheduling(&self.stats, self.id, s),
                    Ok(Cmd::Shutdown(drain)) => self.begin_stop(drain),
                    Ok(Cmd::CloseUnrouted) => {
                        for i in 0..self.slots.len() {
                            if matches!(&self.slots[i], Slot::Conn(c) if !c.route.open.load(Ordering::Acquire)) {
                                self.cut(i, "route_removed", super::ROUTE_REMOVED);
                            }
                        }
                    }
                    Err(TryRecvError::Disconnected) => self.begin_stop(Duration::ZERO),
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.timers(now);
            }
            if let Some(since) = self.stopping {
                // As mio: each link is closed once it is idle: nothing queued towards either
                // peer (queued counts what is in flight too, so nothing is left to flush) and
                // no frame streaming through it (see `Link::mid_frame`); the others keep
                // draining until they are, or until the drain time is up. A link already
                // closing is only waiting for its flush.
                let over = now.duration_since(since) >= self.drain;
                let mut open = false;
                for i in 0..self.slots.len() {
                    let Slot::Conn(c) = &self.slots[i] else { continue };
                    if c.dead {
                        continue;
                    }
                    if over || (!c.link.mid_frame() && c.legs.iter().all(|l| l.queued() == 0)) {
                        self.cut(i, "shutdown", "distgate is stopping");
                    } else {
                        open = true;
                    }
                }
                if !open {
                    self.exit();
                    return;
                }
            }
        }
    }

    /// Handle every completion that is ready.
    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        for &(ud, res, flags) in &cqes {
            self.complete(ud, res, flags);
        }
        self.cqes = cqes;
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32) {
        let (kind, slot, leg, zid) = untag(ud);
        match kind {
            K_ACCEPT => self.on_accept(slot, res, flags),
            K_RECV => self.on_recv(slot, leg, res),
            K_SEND if cqueue::notif(flags) => self.on_notif(slot, leg, zid, res),
            K_SEND => self.on_send(slot, leg, zid, res, flags),
            K_CONNECT => self.on_connect(slot, res),
            K_WAKE => {
                self.wake_armed = false;
                if res != -libc::ECANCELED {
                    self.arm_wake();
                }
            }
            _ => {} // K_CANCEL: the cancel request's own completion.
        }
    }

    fn zc_initial(&self) -> Zc {
        if self.feat.send_zc {
            Zc::Try
        } else {
            Zc::Off
        }
    }

    fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        let buf: *mut u64 = &mut *self.wake_buf;
        let e = opcode::Read::new(types::Fd(self.efd.as_raw_fd()), buf.cast::<u8>(), 8).build().user_data(tag(K_WAKE, 0, 0, 0));
        // SAFETY: `wake_buf` is a heap box owned by the core, only written by this read while
        // `wake_armed` (we never read or write it ourselves), and freed only after the read
        // completed (`exit` waits for it, or leaks the box). The eventfd lives as long.
        unsafe { self.push(e) };
        self.wake_armed = true;
    }

    // ---- control -----------------------------------------------------------------------

    fn begin_stop(&mut self, drain: Duration) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        self.drain = drain;
        // Stop accepting: listeners go first, links drain.
        for i in 0..self.slots.len() {
            let Slot::Listener(l) = &mut self.slots[i] else { continue };
            if l.armed {
                l.closing = true;
                let e = opcode::AsyncCancel::new(tag(K_ACCEPT, i, 0, 0)).build().user_data(tag(K_CANCEL, i, 0, 0));
                // SAFETY: a cancel request refers to no memory of ours.
                unsafe { self.push(e) };
            } else {
                self.slots[i] = Slot::Free;
                self.free.push(i);
            }
        }
    }

    fn add_listener(&mut self, l: TcpListener, route: Arc<Route>) {
        if self.stopping.is_some() {
            return;
        }
        // The handle made it non-blocking for mio; io_uring polls blocking sockets itself.
        let _ = l.set_nonblocking(false);
        let slot = self.alloc(Slot::Listener(Lst { sock: l, route, armed: false, closing: false, rearm: false }));
        self.arm_accept(slot);
    }

    fn arm_accept(&mut self, slot: usize) {
        let Some(Slot::Listener(l)) = self.slots.get_mut(slot) else { return };
        if l.armed || l.closing {
            return;
        }
        l.armed = true;
        l.rearm = false;
        let e = opcode::AcceptMulti::new(types::Fd(l.sock.as_raw_fd())).flags(libc::SOCK_CLOEXEC).build().user_data(tag(K_ACCEPT, slot, 0, 0));
        // SAFETY: refers to no memory of ours; the listening socket stays open while `armed`
        // (the slot is freed only after the final completion, one without F_MORE).
        unsafe { self.push(e) };
    }

    fn on_accept(&mut self, slot: usize, res: i32, flags: u32) {
        let Some(Slot::Listener(l)) = self.slots.get_mut(slot) else {
            if res >= 0 {
                // SAFETY: the kernel just made this descriptor for us; nobody else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(res) });
            }
            return;
        };
        let more = cqueue::more(flags);
        if !more {
            l.armed = false;
        }
        let route = l.route.clone();
        let closing = l.closing;
        if res >= 0 {
            // SAFETY: the kernel just made this descriptor for us; nobody else owns it.
            let sock = TcpStream::from(unsafe { OwnedFd::from_raw_fd(res) });
            if !closing && self.stopping.is_none() {
                self.new_conn(sock, route);
            }
        } else if res != -libc::ECANCELED {
            tracing::warn!(core = self.id, error = %errno_text(res), "accept failed");
        }
        let Some(Slot::Listener(l)) = self.slots.get_mut(slot) else { return };
        if !more {
            if l.closing || self.stopping.is_some() {
                self.slots[slot] = Slot::Free;
                self.free.push(slot);
            } else if res < 0 {
                // Do not spin on a persistent error (e.g. EMFILE): retry at the next tick.
                l.rearm = true;
            } else {
                self.arm_accept(slot);
            }
        }
    }

    fn new_conn(&mut self, sock: TcpStream, route: Arc<Route>) {
        let peer = sock.peer_addr().ok();
        if !route.open.load(Ordering::Acquire) {
            super::refuse_unrouted(&self.stats, self.id, &route.alive, peer);
            return;
        }
        let _ = sock.set_nodelay(true);
        self.next_link += 1;
        let params = route.link_params(self.next_link, self.limits);
        Stats::add(&self.stats.links_accepted, 1);
        Stats::add(&self.stats.links_open, 1);
        tracing::debug!(core = self.id, link = params.id, peer = ?peer, node = %route.alive, "link accepted");
        let link = Link::new(params, Instant::now());
        let zc = self.zc_initial();
        let c = self.alloc(Slot::Conn(Box::new(Conn {
            link,
            legs: [LegIo::new(Some(sock), true, zc), LegIo::new(None, false, zc)],
            route,
            closing: false,
            closing_since: None,
            dead: false,
            ops: 0,
            dead_since: None,
            target: None,
        })));
        self.arm_recv(c, 0);
    }

    // ---- receive -----------------------------------------------------------------------

    fn arm_recv(&mut self, slot: usize, i: usize) {
        let budget = self.link_buffer;
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        if c.dead {
            return;
        }
        let max_buf = c.link.max_frame() + 4;
        if super::over_budget(c.legs[1 - i].queued(), c.legs[i].queued(), budget) {
            if !c.legs[i].paused {
                c.legs[i].paused = true;
                Stats::add(&self.stats.backpressure_pauses, 1);
            }
            return;
        }
        let io = &mut c.legs[i];
        if io.recv_inflight || io.eof || !io.connected {
            return;
        }
        let Some(fd) = io.sock.as_ref().map(|s| s.as_raw_fd()) else { return };
        if !make_room(io, max_buf) {
            return; // full at the maximum: the link refuses such a frame itself
        }
        let (ptr, len) = (io.rb.at(io.filled), (io.rb.cap - io.filled).min(u32::MAX as usize) as u32);
        io.recv_inflight = true;
        c.ops += 1;
        let e = opcode::Recv::new(types::Fd(fd), ptr, len).build().user_data(tag(K_RECV, slot, i, 0));
        // SAFETY: the kernel writes `filled..cap` of the leg's current buffer. The leg holds
        // an `Rc` to it and does not replace it while `recv_inflight`; nothing reads or writes
        // past `filled` until the completion; the socket and the link stay alive until every
        // completion of the link has arrived (`ops`).
        unsafe { self.push(e) };
    }

    fn on_recv(&mut self, slot: usize, i: usize, res: i32) {
        let leg = leg_of(i);
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        c.ops = c.ops.saturating_sub(1);
        c.legs[i].recv_inflight = false;
        if c.dead {
            self.maybe_free(slot);
            return;
        }
        self.out.clear();
        if res == 0 {
            c.legs[i].eof = true;
            c.link.on_closed(leg, "connection closed by peer", &mut self.out);
            self.apply(slot);
            return;
        }
        if res < 0 {
            if matches!(-res, libc::EINTR | libc::EAGAIN | libc::ENOBUFS) {
                self.arm_recv(slot, i);
                return;
            }
            c.legs[i].eof = true;
            c.link.on_closed(leg, &errno_text(res), &mut self.out);
            self.apply(slot);
            return;
        }
        let t0 = Instant::now();
        let io = &mut c.legs[i];
        io.filled = (io.filled + res as usize).min(io.rb.cap);
        // SAFETY: `start..filled` was written by completed receives (or copied in); no recv is
        // in flight on this leg, and sends only read.
        let data = unsafe { io.rb.slice(io.start, io.filled) };
        let used = c.link.on_bytes(leg, data, t0, &mut self.out);
        let frames = self.out.frames[i];
        Stats::add(&self.stats.frames[i], frames);
        Stats::add(&self.stats.streamed[i], self.out.streamed[i]);
        self.stats.count_n("reply_held", self.out.held);
        self.apply(slot);
        if frames > 0 {
            self.stats.frame_time.observe(t0.elapsed().as_secs_f64());
        }
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        if c.dead {
            return;
        }
        let io = &mut c.legs[i];
        io.start += used.min(io.filled - io.start);
        self.arm_recv(slot, i);
    }

    // ---- send --------------------------------------------------------------------------

    fn kick_send(&mut self, slot: usize, i: usize) {
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        if c.dead {
            return;
        }
        let io = &mut c.legs[i];
        if io.send_inflight.is_some() || io.wq.is_empty() || !io.connected {
            return;
        }
        let Some(fd) = io.sock.as_ref().map(|s| s.as_raw_fd()) else { return };
        let mut n = 0;
        let mut total = 0;
        for seg in io.wq.iter().take(IOV_BATCH) {
            io.msg.iov[n] = libc::iovec { iov_base: seg.ptr() as *mut libc::c_void, iov_len: seg.len };
            n += 1;
            total += seg.len;
        }
        io.msg.hdr.msg_iov = io.msg.iov.as_mut_ptr();
        io.msg.hdr.msg_iovlen = n as _;
        let hdr: *const libc::msghdr = &io.msg.hdr;
        let zc = total >= ZC_MIN && matches!(io.zc, Zc::Try | Zc::On);
        let e = if zc {
            if io.zc == Zc::Try {
                io.zc = Zc::Trying;
            }
            // Zero-copy ids are never 0, the id of plain sends.
            let zid = io.zc_next;
            io.zc_next = io.zc_next.wrapping_add(1).max(1);
            // The kernel may read these bytes until the notification: hold them until then.
            io.zc_hold.push((zid, io.wq.iter().take(n).map(|s| s.back.clone()).collect()));
            let t = tag(K_SEND, slot, i, zid);
            io.send_inflight = Some(t);
            opcode::SendMsgZc::new(types::Fd(fd), hdr).flags(libc::MSG_NOSIGNAL as u32).ioprio(SEND_ZC_REPORT_USAGE).build().user_data(t)
        } else {
            let t = tag(K_SEND, slot, i, 0);
            io.send_inflight = Some(t);
            opcode::SendMsg::new(types::Fd(fd), hdr).flags(libc::MSG_NOSIGNAL as u32).build().user_data(t)
        };
        c.ops += 1;
        // SAFETY: the `msghdr` and `iovec`s are in the leg's boxed `MsgBuf`, not touched again
        // while `send_inflight`; each iovec points into a segment whose backing (`Rc`) stays in
        // the queue until the completion reports it sent (and, for zero-copy, is also held in
        // `zc_hold` until the notification); receive buffers are never written below their
        // `filled` mark while referenced. The socket and link outlive all completions (`ops`).
        unsafe { self.push(e) };
    }

    fn on_send(&mut self, slot: usize, i: usize, zid: u16, res: i32, flags: u32) {
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        c.ops = c.ops.saturating_sub(1);
        let io = &mut c.legs[i];
        let was_zc = zid != 0;
        io.send_inflight = None;
        if was_zc {
            if cqueue::more(flags) {
                c.ops += 1; // the notification is still to come
            } else {
                io.zc_hold.retain(|(z, _)| *z != zid);
            }
        }
        if res > 0 {
            io.consume(res as usize);
        }
        if c.dead {
            close_leg(io);
            self.maybe_free(slot);
            return;
        }
        if res <= 0 {
            if matches!(-res, libc::EINTR | libc::EAGAIN | libc::ENOBUFS) {
                self.kick_send(slot, i);
                return;
            }
            let why = if res == 0 { "peer closed".to_string() } else { errno_text(res) };
            if c.closing {
                // Flushing a closed link: what cannot be written never will be.
                self.drop_conn(slot);
                return;
            }
            self.out.clear();
            c.link.on_closed(leg_of(i), &why, &mut self.out);
            self.apply(slot);
            return;
        }
        if c.closing && c.legs.iter().all(|l| l.queued() == 0 || l.sock.is_none() || !l.connected) {
            self.drop_conn(slot);
            return;
        }
        // Resume the legs the queues were throttling.
        for j in [1 - i, i] {
            let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
            if c.legs[j].paused && super::may_resume(c.legs[1 - j].queued(), c.legs[j].queued(), self.link_buffer) {
                c.legs[j].paused = false;
                self.arm_recv(slot, j);
            }
        }
        self.kick_send(slot, i);
    }

    fn on_notif(&mut self, slot: usize, i: usize, zid: u16, res: i32) {
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        c.ops = c.ops.saturating_sub(1);
        let io = &mut c.legs[i];
        io.zc_hold.retain(|(z, _)| *z != zid);
        if res & NOTIF_USAGE_ZC_COPIED != 0 {
            if io.zc != Zc::Off {
                // The kernel copied anyway (e.g. loopback): zero-copy does not pay on this leg.
                io.zc = Zc::Off;
                tracing::debug!(core = self.id, link = c.link.id(), leg = leg_of(i).name(), "SEND_ZC copied; plain sends on this leg");
            }
        } else if io.zc == Zc::Trying {
            io.zc = Zc::On;
            tracing::debug!(core = self.id, link = c.link.id(), leg = leg_of(i).name(), "SEND_ZC without copies; large sends zero-copy on this leg");
        }
        if c.dead {
            self.maybe_free(slot);
        }
    }

    // ---- connect -----------------------------------------------------------------------

    fn dial(&mut self, slot: usize) {
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        let target = *c.route.target.lock().unwrap_or_else(|p| p.into_inner());
        c.target = Some(target);
        let addr = SockAddr::new(target);
        let sock = match tcp_socket(addr.family()) {
            Ok(s) => s,
            Err(e) => {
                let mut o = Output::default();
                c.link.on_up_connect_failed(&format!("{target}: {e}"), &mut o);
                self.out = o;
                return self.apply(slot);
            }
        };
        let _ = sock.set_nodelay(true);
        let fd = sock.as_raw_fd();
        let zc = if self.feat.send_zc { Zc::Try } else { Zc::Off };
        c.legs[1] = LegIo::new(Some(sock), false, zc);
        let (ptr, len) = addr.raw();
        c.legs[1].addr = Some(addr);
        c.legs[1].connect_inflight = true;
        c.ops += 1;
        let e = opcode::Connect::new(types::Fd(fd), ptr, len).build().user_data(tag(K_CONNECT, slot, 1, 0));
        // SAFETY: the address is boxed in the up leg and kept until the link is freed, which
        // waits for this completion; so does the socket.
        unsafe { self.push(e) };
    }

    fn on_connect(&mut self, slot: usize, res: i32) {
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        c.ops = c.ops.saturating_sub(1);
        c.legs[1].connect_inflight = false;
        if c.dead {
            self.maybe_free(slot);
            return;
        }
        self.out.clear();
        if res == 0 {
            c.legs[1].connected = true;
            c.link.on_up_connected(Instant::now(), &mut self.out);
            self.apply(slot);
            // The target may already have spoken.
            self.arm_recv(slot, 1);
        } else {
            let target = c.target.map(|t| t.to_string()).unwrap_or_default();
            c.link.on_up_connect_failed(&format!("{target}: {}", errno_text(res)), &mut self.out);
            self.apply(slot);
        }
    }

    // ---- link output -------------------------------------------------------------------

    /// Carry out `self.out`: queue writes (borrowing from the other leg's receive buffer, at
    /// its `start`), start sends, and handle events.
    fn apply(&mut self, slot: usize) {
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        if c.dead {
            self.out.clear();
            return;
        }
        let mut touched = [false; 2];
        for (dst, chunk) in self.out.writes.drain(..) {
            let d = dst.index();
            let seg = match chunk {
                Chunk::Input(r) => {
                    let s = &c.legs[1 - d];
                    let avail = s.filled - s.start;
                    if r.start > r.end || r.end > avail {
                        continue;
                    }
                    Seg { back: Backing::Rx(s.rb.clone()), off: s.start + r.start, len: r.end - r.start }
                }
                Chunk::Owned(v) => {
                    let len = v.len();
                    Seg { back: Backing::Owned(Rc::new(v)), off: 0, len }
                }
            };
            if seg.len == 0 {
                continue;
            }
            Stats::add(&self.stats.bytes[1 - d], seg.len as u64);
            let io = &mut c.legs[d];
            io.queued += seg.len;
            io.wq.push_back(seg);
            touched[d] = true;
        }
        let events: Vec<Event> = self.out.events.drain(..).collect();
        for (d, t) in touched.into_iter().enumerate() {
            if t {
                self.kick_send(slot, d);
            }
        }
        for ev in events {
            let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
            if c.dead {
                return;
            }
            match ev {
                Event::DialUp => self.dial(slot),
                Event::Established { down_name, up_name, flags } => {
                    super::on_established(&self.stats, self.id, c.link.id(), &down_name, &up_name, flags);
                }
                Event::Close { reason, flush: want_flush } => {
                    super::on_close(&self.stats, self.id, c.link.id(), &c.route.alive, &reason);
                    if want_flush && c.legs.iter().any(|l| l.queued() > 0 && l.sock.is_some() && l.connected) {
                        c.closing = true;
                        c.closing_since = Some(Instant::now());
                    } else {
                        self.drop_conn(slot);
                        return;
                    }
                }
            }
        }
    }

    /// Close a link for a reason of the core's own (stopping, failing): counted under `label`
    /// unless it already closed with a flush (counted then); see `super::on_cut`.
    fn cut(&mut self, slot: usize, label: &'static str, detail: &str) {
        let Some(Slot::Conn(c)) = self.slots.get(slot) else { return };
        if c.dead {
            return;
        }
        let flushing = c.closing.then(|| c.legs.iter().map(LegIo::queued).sum());
        super::on_cut(&self.stats, self.id, c.link.id(), &c.route.alive, flushing, label, detail);
        self.drop_conn(slot);
    }

    /// Close a link whose close was counted already (`super::on_close`, `super::on_cut`):
    /// cancel its operations, and free it once they completed.
    fn drop_conn(&mut self, slot: usize) {
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        if c.dead {
            return;
        }
        c.dead = true;
        Stats::add(&self.stats.links_closed, 1);
        self.stats.links_open.fetch_sub(1, Ordering::Relaxed);
        c.dead_since = Some(Instant::now());
        // A leg without a send in flight is flushed (best effort) and shut down now, so its
        // peer sees the close at once. A leg with one is shut down when that send completes
        // (it may just be queued in this very turn: mio would have written it already) or is
        // cancelled, below, because the peer does not read.
        for l in c.legs.iter_mut() {
            if l.send_inflight.is_none() {
                close_leg(l);
            }
        }
        let mut cancels = Vec::new();
        for (i, l) in c.legs.iter().enumerate() {
            if l.recv_inflight {
                cancels.push(tag(K_RECV, slot, i, 0));
            }
            if let Some(t) = l.send_inflight {
                cancels.push(t);
            }
            if l.connect_inflight {
                cancels.push(tag(K_CONNECT, slot, i, 0));
            }
        }
        for t in cancels {
            let e = opcode::AsyncCancel::new(t).build().user_data(tag(K_CANCEL, slot, 0, 0));
            // SAFETY: a cancel request refers to no memory of ours.
            unsafe { self.push(e) };
        }
        self.maybe_free(slot);
    }

    /// Free a dead link whose operations have all completed: close the sockets (shut down
    /// already) and release the buffers.
    fn maybe_free(&mut self, slot: usize) {
        let Some(Slot::Conn(c)) = self.slots.get(slot) else { return };
        if !c.dead || c.ops > 0 {
            return;
        }
        self.slots[slot] = Slot::Free;
        self.free.push(slot);
    }

    /// A dead link still waiting only for zero-copy notifications after `ZC_GRACE` (or at
    /// exit): its data sits in a socket's send queue towards a peer that does not read. Abort
    /// those sockets (RST, which purges the queue and so posts the notifications) rather than
    /// hold the buffers for as long as the peer stalls.
    fn abort_stalled(&mut self, slot: usize, now: Instant, grace: Duration) {
        let Some(Slot::Conn(c)) = self.slots.get_mut(slot) else { return };
        if !c.dead || c.ops == 0 || c.dead_since.is_some_and(|t| now.duration_since(t) < grace) {
            return;
        }
        let only_notifs = c.legs.iter().all(|l| !l.recv_inflight && l.send_inflight.is_none() && !l.connect_inflight);
        if !only_notifs {
            return;
        }
        for l in c.legs.iter_mut() {
            if l.zc_hold.is_empty() {
                continue;
            }
            // No operation on this socket is in flight or queued, so closing its descriptor
            // cannot affect another socket that reuses the number.
            if let Some(s) = l.sock.take() {
                abort_socket(s);
            }
        }
    }

    fn timers(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let (fired, rearm) = match &mut self.slots[slot] {
                Slot::Conn(c) if !c.dead && c.closing_since.is_some_and(|t| now.duration_since(t) > super::CLOSE_FLUSH) => {
                    super::on_flush_timeout(&self.stats, self.id, c.link.id(), &c.route.alive, c.legs.iter().map(LegIo::queued).sum());
                    self.drop_conn(slot);
                    (false, false)
                }
                Slot::Conn(c) if !c.dead && c.link.next_deadline().is_some_and(|d| d <= now) => {
                    self.out.clear();
                    c.link.on_timer(now, &mut self.out);
                    (true, false)
                }
                Slot::Listener(l) => (false, l.rearm && !l.armed),
                Slot::Conn(c) if c.dead => {
                    self.abort_stalled(slot, now, ZC_GRACE);
                    (false, false)
                }
                _ => (false, false),
            };
            if fired {
                self.apply(slot);
            }
            if rearm {
                self.arm_accept(slot);
            }
        }
    }

    /// Operations whose completion has not arrived.
    fn in_flight(&self) -> usize {
        let ops: usize = self
            .slots
            .iter()
            .map(|s| match s {
                Slot::Conn(c) => c.ops as usize,
                Slot::Listener(l) => l.armed as usize,
                Slot::Free => 0,
            })
            .sum();
        ops + self.wake_armed as usize
    }

    /// Leave: cancel what is still in flight, wait (bounded) for the completions, and leak
    /// the memory of anything the kernel may still use.
    fn exit(&mut self) {
        self.stopping.get_or_insert_with(Instant::now);
        for i in 0..self.slots.len() {
            let cancel_accept = match &mut self.slots[i] {
                Slot::Conn(c) if !c.dead => {
                    // Not reached after a stop or a failure (`run` cut every link), but a
                    // link is never left uncounted.
                    self.cut(i, "internal", "its core stopped");
                    false
                }
                Slot::Listener(l) if l.armed && !l.closing => {
                    l.closing = true;
                    true
                }
                _ => false,
            };
            if cancel_accept {
                let e = opcode::AsyncCancel::new(tag(K_ACCEPT, i, 0, 0)).build().user_data(tag(K_CANCEL, i, 0, 0));
                // SAFETY: a cancel request refers to no memory of ours.
                unsafe { self.push(e) };
            }
        }
        if self.wake_armed {
            // Complete our own pending read of the eventfd.
            let _ = (&*self.efd).write(&1u64.to_ne_bytes());
        }
        let deadline = Instant::now() + EXIT_WAIT;
        while self.in_flight() > 0 && Instant::now() < deadline {
            let now = Instant::now();
            for i in 0..self.slots.len() {
                self.abort_stalled(i, now, Duration::ZERO);
            }
            let ts = types::Timespec::from(Duration::from_millis(50));
            let args = types::SubmitArgs::new().timespec(&ts);
            self.flush_backlog();
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                if !matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)) {
                    break;
                }
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            for &(ud, res, flags) in &cqes {
                let (kind, _, _, _) = untag(ud);
                if kind == K_WAKE {
                    self.wake_armed = false; // do not re-arm
                } else {
                    self.complete(ud, res, flags);
                }
            }
            self.cqes = cqes;
        }
        self.leak_in_flight();
    }

    /// Whatever the kernel may still use is leaked, not freed (see the module docs).
    fn leak_in_flight(&mut self) {
        if self.in_flight() == 0 {
            return;
        }
        tracing::warn!(core = self.id, ops = self.in_flight(), "operations still in flight at exit; their buffers are leaked");
        for s in self.slots.drain(..) {
            if let Slot::Conn(c) = s {
                if c.ops > 0 {
                    std::mem::forget(c);
                }
            }
        }
        if self.wake_armed {
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
            self.wake_armed = false;
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // On a normal exit everything has completed already; after a panic, make sure no
        // buffer the kernel may still write is freed with the core.
        if self.in_flight() > 0 {
            self.leak_in_flight();
        }
    }
}

/// Make room in a leg's receive buffer for the next recv: at least `READ_CHUNK` free at the
/// end, growing only while a frame needs it (up to `max_buf`, as mio). Returns false when the
/// buffer is full at the maximum. Only called while no recv is in flight on the leg.
fn make_room(io: &mut LegIo, max_buf: usize) -> bool {
    let shared = Rc::strong_count(&io.rb) > 1;
    if io.start == io.filled && !shared {
        io.start = 0;
        io.filled = 0;
        if io.rb.cap != RBUF {
            // A placeholder, or what a big frame made us take: back to the default size.
            io.rb = RBuf::new(RBUF);
        }
        return true;
    }
    if io.rb.cap - io.filled >= READ_CHUNK {
        return true;
    }
    let pending = io.filled - io.start;
    let need = pending + READ_CHUNK;
    let target = if need <= RBUF { RBUF } else { need.max(io.rb.cap.saturating_mul(2)).min(max_buf.max(RBUF)) };
    if !shared && target <= io.rb.cap {
        if io.start > 0 {
            // SAFETY: no recv is in flight and no send segment refers to the buffer (the leg
            // holds the only `Rc`), so nobody else reads or writes it; both ranges are in
            // bounds (`std::ptr::copy` allows overlap).
            unsafe { std::ptr::copy(io.rb.at(io.start), io.rb.at(0), pending) };
            io.start = 0;
            io.filled = pending;
        }
        return io.rb.cap > io.filled;
    }
    if target <= pending {
        return false;
    }
    let nb = RBuf::new(target);
    // SAFETY: `start..filled` of the old buffer is received data nobody writes (no recv in
    // flight; sends only read); the new buffer is fresh, referenced only here, and longer
    // than `pending`; the two allocations are distinct.
    unsafe { std::ptr::copy_nonoverlapping(io.rb.at(io.start), nb.at(0), pending) };
    io.rb = nb;
    io.start = 0;
    io.filled = pending;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Put `data` at `off` of a buffer no operation uses (tests only).
    fn put(b: &RBuf, off: usize, data: &[u8]) {
        assert!(off + data.len() <= b.cap);
        // SAFETY: in bounds (asserted); in these tests no kernel operation and no slice of the
        // buffer is alive while it is written.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), b.at(off), data.len()) };
    }

    fn leg() -> LegIo {
        LegIo::new(None, true, Zc::Off)
    }

    fn pending(io: &LegIo) -> Vec<u8> {
        // SAFETY: no operation writes the buffer in these tests.
        unsafe { io.rb.slice(io.start, io.filled) }.to_vec()
    }

    const MAX: usize = 4 << 20;

    #[test]
    fn a_leg_allocates_on_first_read_and_rewinds_when_consumed() {
        let mut io = leg();
        assert_eq!(io.rb.cap, 0, "no memory before the first read");
        assert!(make_room(&mut io, MAX));
        assert_eq!((io.rb.cap, io.start, io.filled), (RBUF, 0, 0));
        io.filled = 1000;
        io.start = 1000;
        assert!(make_room(&mut io, MAX));
        assert_eq!((io.start, io.filled), (0, 0), "consumed and unshared: back to the front");
    }

    #[test]
    fn a_buffer_sends_refer_to_is_never_moved_or_overwritten() {
        let mut io = leg();
        make_room(&mut io, MAX);
        put(&io.rb, 0, b"frame-one");
        io.filled = RBUF - 100; // nearly full, all consumed, but a send still refers to it
        io.start = io.filled;
        let seg = Seg { back: Backing::Rx(io.rb.clone()), off: 0, len: 9 };
        assert!(make_room(&mut io, MAX));
        assert_eq!((io.start, io.filled), (0, 0));
        assert!(!matches!(&seg.back, Backing::Rx(b) if Rc::ptr_eq(b, &io.rb)), "a fresh buffer for the next read");
        assert_eq!(seg.bytes(), b"frame-one");
        // With room left, reading continues after what the send refers to.
        let mut io = leg();
        make_room(&mut io, MAX);
        put(&io.rb, 0, b"abc");
        io.filled = 3;
        io.start = 3;
        let seg = Seg { back: Backing::Rx(io.rb.clone()), off: 0, len: 3 };
        assert!(make_room(&mut io, MAX));
        assert_eq!((io.start, io.filled), (3, 3));
        assert_eq!(seg.bytes(), b"abc");
    }

    #[test]
    fn a_partial_frame_is_compacted_or_copied_and_kept_intact() {
        // Unshared: moved to the front of the same buffer.
        let mut io = leg();
        make_room(&mut io, MAX);
        let at = RBUF - 10_000;
        put(&io.rb, at, b"partial");
        io.start = at;
        io.filled = at + 7;
        let before = io.rb.ptr;
        assert!(make_room(&mut io, MAX));
        assert_eq!(io.rb.ptr, before);
        assert_eq!((io.start, io.filled), (0, 7));
        assert_eq!(pending(&io), b"partial");
        // Shared: copied to a new buffer, the old one untouched.
        let mut io = leg();
        make_room(&mut io, MAX);
        put(&io.rb, 0, b"sent");
        put(&io.rb, at, b"partial");
        io.start = at;
        io.filled = at + 7;
        let seg = Seg { back: Backing::Rx(io.rb.clone()), off: 0, len: 4 };
        assert!(make_room(&mut io, MAX));
        assert_eq!(pending(&io), b"partial");
        assert_eq!(seg.bytes(), b"sent");
    }

    #[test]
    fn big_frames_grow_the_buffer_by_doubling_up_to_the_maximum() {
        let mut io = leg();
        make_room(&mut io, MAX);
        let mut frame = Vec::new();
        let mut caps = Vec::new();
        // Receive a frame larger than the maximum buffer in 48 KiB reads.
        loop {
            if !make_room(&mut io, MAX) {
                break;
            }
            caps.push(io.rb.cap);
            let n = (48 * 1024).min(io.rb.cap - io.filled);
            let chunk: Vec<u8> = (0..n).map(|i| (frame.len() + i) as u8).collect();
            put(&io.rb, io.filled, &chunk);
            io.filled += n;
            frame.extend_from_slice(&chunk);
            assert!(io.filled <= MAX);
        }
        assert_eq!(io.filled, MAX, "filled exactly to the maximum, then no more reads");
        assert_eq!(pending(&io), frame, "every byte kept, in order, across every growth");
        caps.dedup();
        assert_eq!(caps, vec![RBUF, 2 * RBUF, 4 * RBUF, 8 * RBUF, MAX], "doubling, capped");
        // Once consumed, the big buffer goes back to the default size.
        io.start = io.filled;
        assert!(make_room(&mut io, MAX));
        assert_eq!(io.rb.cap, RBUF);
    }

    #[test]
    fn consuming_sent_bytes_walks_the_queue() {
        let mut io = leg();
        for part in [&b"hello"[..], b" ", b"world"] {
            io.queued += part.len();
            io.wq.push_back(Seg { back: Backing::Owned(Rc::new(part.to_vec())), off: 0, len: part.len() });
        }
        io.consume(3);
        assert_eq!(io.wq.front().map(|s| s.bytes().to_vec()), Some(b"lo".to_vec()));
        io.consume(3);
        assert_eq!(io.wq.len(), 1);
        assert_eq!(io.queued, 5);
        io.consume(100);
        assert_eq!((io.wq.len(), io.queued), (0, 0));
    }

    #[test]
    fn tags_round_trip() {
        for (k, slot, leg, zid) in [(K_RECV, 0, 0, 0), (K_SEND, 123_456, 1, 65_535), (K_CONNECT, u32::MAX as usize, 1, 7)] {
            assert_eq!(untag(tag(k, slot, leg, zid)), (k, slot, leg, zid));
        }
    }
}
