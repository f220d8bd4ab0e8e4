//! A real OTP node as a child process, driven over its stdin/stdout.
//!
//! The node runs with `-epmd_module dg_epmd` (no epmd daemon; see
//! `erl/dg_epmd.erl`), listens on 127.0.0.1 on a port the kernel picks, and
//! runs `dg_ctl`, a loop that evaluates Erlang expressions sent by the test
//! and writes back `~0tp` of the result (protocol in `erl/dg_ctl.erl`). The
//! node announces itself (name, actual listen port, creation) on that channel
//! once it is alive: that announcement is the readiness signal, no sleeping.
//!
//! Dropping a [`Node`] kills the OS process. A node also halts by itself when
//! its stdin closes, so a test process that dies leaves no node behind.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::erl;
use crate::util::{hex_decode, hex_encode};

/// The host part of every test node's name; nodes listen on loopback only.
pub const HOST: &str = "127.0.0.1";

/// Keep at most this much of a node's own output (the tail matters most).
const LOG_LIMIT: usize = 1 << 20;

/// How to start a [`Node`]. `Default` gives a node with a shared test cookie,
/// an ephemeral listen port and a random creation.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub cookie: String,
    /// Port to listen on (`DG_LISTEN`); 0 lets the OS choose.
    pub listen_port: u16,
    /// Creation to register with (`DG_CREATION`); `None` for random.
    pub creation: Option<u32>,
    /// `(alive, port)`: where this node dials node `alive@127.0.0.1`
    /// (`DG_PORT_<alive>`). More can be added later with
    /// [`Node::set_peer_port`].
    pub peers: Vec<(String, u16)>,
    /// Extra `erl` arguments, placed before the control loop's `-eval`.
    pub extra_args: Vec<String>,
    /// Extra environment variables for the node.
    pub env: Vec<(String, String)>,
    /// Use OTP's own EPMD client against this port (`ERL_EPMD_PORT`) instead of `dg_epmd`:
    /// the node registers there and asks it for peers, as an unmodified node would. The
    /// listen port is then picked up front (`inet_dist_listen_min/max`).
    pub epmd_port: Option<u16>,
    /// Limit for boot until the readiness announcement.
    pub start_timeout: Duration,
    /// Default limit for [`Node::eval`] / [`Node::try_eval`].
    pub eval_timeout: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            cookie: "distgate_testkit_cookie".into(),
            listen_port: 0,
            creation: None,
            peers: Vec::new(),
            extra_args: Vec::new(),
            env: Vec::new(),
            epmd_port: None,
            start_timeout: Duration::from_secs(60),
            eval_timeout: Duration::from_secs(60),
        }
    }
}

/// Why [`Node::try_eval`] produced no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// The expression failed to parse or raised: `Class:Reason` + stack.
    Raised(String),
    /// No answer within the limit (the node is still evaluating it; a later
    /// eval queues behind it).
    Timeout(Duration),
    /// The node's stdout closed: it halted or was killed.
    NodeDown,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::Raised(m) => write!(f, "raised {m}"),
            EvalError::Timeout(d) => write!(f, "no answer within {d:?}"),
            EvalError::NodeDown => write!(f, "node is down"),
        }
    }
}

impl std::error::Error for EvalError {}

/// One framed message from the node's control loop.
#[derive(Debug)]
enum Event {
    Reply { id: u64, kind: String, text: String },
    Exited,
}

struct Ctl {
    stdin: Option<ChildStdin>,
    events: Receiver<Event>,
    next_id: u64,
}

/// A running OTP node. See the module docs.
pub struct Node {
    alive: String,
    name: String,
    cookie: String,
    port: u16,
    creation: u32,
    eval_timeout: Duration,
    child: Child,
    ctl: Mutex<Ctl>,
    log: Arc<Mutex<String>>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("creation", &self.creation)
            .field("os_pid", &self.child.id())
            .finish()
    }
}

impl Node {
    /// Starts `PREFIX_<unique>@127.0.0.1` with default options. Panics (with
    /// the node's output) if it does not come up.
    pub fn start(prefix: &str) -> Node {
        Node::start_with(prefix, NodeOptions::default())
    }

    /// Starts a node with `opts`. Panics (with the node's output) if it does
    /// not announce readiness within `opts.start_timeout`.
    pub fn start_with(prefix: &str, opts: NodeOptions) -> Node {
        let alive = erl::unique_name(prefix);
        let name = format!("{alive}@{HOST}");

        let mut cmd = Command::new(erl::erl_path());
        cmd.args(["-name", &name, "-setcookie", &opts.cookie, "-noshell"])
            // Without this, erlexec would spawn an epmd daemon for -name.
            .args(["-start_epmd", "false"]);
        if let Some(ep) = opts.epmd_port {
            let port = if opts.listen_port != 0 { opts.listen_port } else { free_port() };
            let p = port.to_string();
            cmd.env("ERL_EPMD_PORT", ep.to_string())
                .args(["-kernel", "inet_dist_listen_min", &p, "inet_dist_listen_max", &p]);
        } else {
            cmd.args(["-epmd_module", "dg_epmd"]);
        }
        cmd.arg("-pa")
            .arg(erl::beam_dir())
            .args(["-kernel", "inet_dist_use_interface", "{127,0,0,1}"])
            .args(&opts.extra_args)
            .args(["-eval", "dg_ctl:main()"]);
        // Our DG_* variables must come from these options only, never from
        // whatever environment the test runner happens to have.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("DG_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("DG_LISTEN", opts.listen_port.to_string());
        if let Some(c) = opts.creation {
            cmd.env("DG_CREATION", c.to_string());
        }
        for (peer, port) in &opts.peers {
            cmd.env(format!("DG_PORT_{}", alive_part(peer)), port.to_string());
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("testkit: cannot start {}: {e}", erl::erl_path().display()));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = channel();
        if let Some(out) = child.stdout.take() {
            let log = Arc::clone(&log);
            thread::spawn(move || read_stdout(out, tx, log));
        }
        if let Some(err) = child.stderr.take() {
            let log = Arc::clone(&log);
            thread::spawn(move || read_stderr(err, log));
        }
        let stdin = child.stdin.take();

        // Readiness: the control loop's announcement, or a clear failure.
        let ready = match rx.recv_timeout(opts.start_timeout) {
            Ok(Event::Reply { id: 0, kind, text }) if kind == "ready" => Some(text),
            _ => None,
        };
        let parsed = ready.as_deref().and_then(parse_ready);
        let Some((announced, port, creation)) = parsed else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "testkit: node {name} did not become ready within {:?} (announcement: {ready:?})\n\
                 --- node output ---\n{}",
                opts.start_timeout,
                log_text(&log)
            );
        };
        if announced != name {
            let _ = child.kill();
            let _ = child.wait();
            panic!("testkit: started {name} but the node says it is {announced}");
        }

        Node {
            alive,
            name,
            cookie: opts.cookie,
            port,
            creation,
            eval_timeout: opts.eval_timeout,
            child,
            ctl: Mutex::new(Ctl {
                stdin,
                events: rx,
                next_id: 1,
            }),
            log,
        }
    }

    /// Full node name, e.g. `a_123_0_1f2e3d4c@127.0.0.1`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The part before `@` (what `DG_PORT_<alive>` is keyed by).
    pub fn alive(&self) -> &str {
        &self.alive
    }

    /// The node name as a quoted Erlang atom literal, for splicing into code.
    pub fn atom(&self) -> String {
        erl::atom_literal(&self.name)
    }

    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// The port the node's distribution listener actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`: where to dial this node.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The node's creation (as `erlang:system_info(creation)` reports it).
    pub fn creation(&self) -> u32 {
        self.creation
    }

    pub fn os_pid(&self) -> u32 {
        self.child.id()
    }

    /// Evaluates `expr` (an expression sequence, final `.` optional) on the
    /// node and returns `~0tp` of the value, e.g. `"pong"`. Variables bound by
    /// one eval are visible in the next. Panics on error or timeout, with
    /// the node's output in the message.
    pub fn eval(&self, expr: &str) -> String {
        self.try_eval(expr).unwrap_or_else(|e| {
            panic!(
                "testkit: eval on {} of {expr:?}: {e}\n--- node output ---\n{}",
                self.name,
                self.output()
            )
        })
    }

    /// Like [`Node::eval`] but returns the error.
    pub fn try_eval(&self, expr: &str) -> Result<String, EvalError> {
        self.try_eval_timeout(expr, self.eval_timeout)
    }

    /// Like [`Node::try_eval`] with an explicit limit.
    pub fn try_eval_timeout(&self, expr: &str, timeout: Duration) -> Result<String, EvalError> {
        // A poisoned lock only means another eval panicked mid-wait; the
        // channel state is still consistent (stale replies are skipped below).
        let mut ctl = self.ctl.lock().unwrap_or_else(|p| p.into_inner());
        let id = ctl.next_id;
        ctl.next_id += 1;
        let line = format!("DGREQ {id} {}\n", hex_encode(expr.as_bytes()));
        let sent = match ctl.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(line.as_bytes())
                .and_then(|_| stdin.flush())
                .is_ok(),
            None => false,
        };
        if !sent {
            return Err(EvalError::NodeDown);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ctl.events.recv_timeout(left) {
                Ok(Event::Reply {
                    id: got,
                    kind,
                    text,
                }) if got == id => {
                    return if kind == "ok" {
                        Ok(text)
                    } else {
                        Err(EvalError::Raised(text))
                    };
                }
                // The late answer to an earlier eval that timed out: skip.
                Ok(Event::Reply { .. }) => continue,
                Ok(Event::Exited) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(EvalError::NodeDown)
                }
                Err(RecvTimeoutError::Timeout) => return Err(EvalError::Timeout(timeout)),
            }
        }
    }

    /// Makes this node dial `alive@127.0.0.1` at `port` from now on.
    pub fn set_peer_port(&self, alive: &str, port: u16) {
        let var = erl::string_literal(&format!("DG_PORT_{}", alive_part(alive)));
        self.eval(&format!("os:putenv({var}, \"{port}\")."));
    }

    /// Points this node at `other`'s real port and connects; true on success.
    pub fn connect(&self, other: &Node) -> bool {
        self.set_peer_port(other.alive(), other.port());
        self.eval(&format!("net_kernel:connect_node({}).", other.atom())) == "true"
    }

    /// Everything the node printed that was not a control message (logger
    /// reports, io:format output, stderr), at most the last MiB.
    pub fn output(&self) -> String {
        log_text(&self.log)
    }

    /// Graceful stop: closes stdin, so the control loop halts the node; kills
    /// it if it is still running after `timeout`. Returns the exit status.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        {
            let mut ctl = self.ctl.lock().unwrap_or_else(|p| p.into_inner());
            ctl.stdin = None;
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        self.kill();
        None
    }

    /// Kills the OS process (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Accepts `alive` or `alive@host`.
fn alive_part(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// `"Node Port Creation"` from the ready announcement.
fn parse_ready(text: &str) -> Option<(String, u16, u32)> {
    let mut it = text.split_whitespace();
    let name = it.next()?.to_string();
    let port = it.next()?.parse().ok()?;
    let creation = it.next()?.parse().ok()?;
    Some((name, port, creation))
}

/// Finds `<<DG:Id:Kind:Hex>>` in a stdout line.
fn parse_marker(line: &str) -> Option<Event> {
    let start = line.find("<<DG:")?;
    let rest = &line[start + 5..];
    let body = &rest[..rest.find(">>")?];
    let mut parts = body.splitn(3, ':');
    let id = parts.next()?.parse().ok()?;
    let kind = parts.next()?.to_string();
    let bytes = hex_decode(parts.next()?)?;
    Some(Event::Reply {
        id,
        kind,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

fn read_stdout(out: impl Read, tx: Sender<Event>, log: Arc<Mutex<String>>) {
    let mut reader = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                match parse_marker(&line) {
                    // If the Node handle is gone the send fails; keep draining
                    // anyway so the node never blocks on a full pipe.
                    Some(ev) => {
                        let _ = tx.send(ev);
                    }
                    None if line.trim().is_empty() => {}
                    None => append_log(&log, &line),
                }
            }
        }
    }
    let _ = tx.send(Event::Exited);
}

fn read_stderr(err: impl Read, log: Arc<Mutex<String>>) {
    let mut reader = BufReader::new(err);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => append_log(&log, &format!("[stderr] {}", String::from_utf8_lossy(&buf))),
        }
    }
}

fn append_log(log: &Mutex<String>, text: &str) {
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    log.push_str(text);
    if log.len() > LOG_LIMIT {
        let mut cut = log.len() - LOG_LIMIT / 2;
        while !log.is_char_boundary(cut) {
            cut += 1;
        }
        log.drain(..cut);
    }
}

fn log_text(log: &Mutex<String>) -> String {
    log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A port that was free a moment ago, for a listener the test starts next (an EPMD, a
/// responder, metrics).
///
/// Why not bind to port 0 and hand that port on: it comes from the kernel's ephemeral range,
/// the range every outgoing connection's local port comes from too, and tests running in
/// parallel open many (nodes dialling, EPMD queries). One of them could take the port between
/// the release here and the test's own bind. So the port is picked below that range, where
/// the kernel never allocates, starting at a point that differs per process and per call;
/// only another test picking the same port in the same moment could collide. Where the range
/// leaves no room below it, port 0 it is.
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<u32>().ok()))
        .unwrap_or(0);
    if ephemeral_start > LOW + 1000 {
        let span = ephemeral_start - LOW;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let seed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos ^ CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919);
        for i in 0..span {
            let port = LOW + (seed.wrapping_add(i.wrapping_mul(7_919)) % span);
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("testkit: no free port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_free_and_outside_the_ephemeral_range() {
        let lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<u16>().ok()));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let p = free_port();
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("port {p} is not free: {e}"));
            if let Some(lo) = lo.filter(|&lo| lo > 11_000) {
                assert!(p < lo, "port {p} is in the ephemeral range from {lo}");
            }
            seen.insert(p);
        }
        assert!(seen.len() > 40, "calls keep picking the same ports: {seen:?}");
    }

    #[test]
    fn markers_parse() {
        let line = format!("junk<<DG:7:ok:{}>>\n", hex_encode(b"pong"));
        match parse_marker(&line) {
            Some(Event::Reply { id, kind, text }) => {
                assert_eq!((id, kind.as_str(), text.as_str()), (7, "ok", "pong"))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_marker("<<DG:x:ok:00>>").is_none());
        assert!(parse_marker("plain output").is_none());
        assert_eq!(parse_ready("a@h 4000 77"), Some(("a@h".into(), 4000, 77)));
    }
}

