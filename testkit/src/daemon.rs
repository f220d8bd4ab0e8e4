//! The `distgate` binary run as an operator runs it: a child process whose log lines are
//! the readiness signals (no sleeping), signals sent with kill(1), `/metrics` scraped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// A running `distgate run -c FILE`, killed when dropped.
pub struct Daemon {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl Daemon {
    /// Starts `bin run -c config` with `DISTGATE_LOG=info` and waits for "distgate running".
    pub fn start(bin: &str, config: &Path) -> Daemon {
        let mut d = Daemon::spawn(bin, config, Some("info"));
        d.wait_for("distgate running");
        d
    }

    /// Starts `bin run -c config` logging at the configured level (no `DISTGATE_LOG`), and
    /// waits until its metrics endpoint at `metrics` (port on 127.0.0.1) answers.
    pub fn start_at_configured_level(bin: &str, config: &Path, metrics: u16) -> Daemon {
        let d = Daemon::spawn(bin, config, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", metrics)).is_err() {
            assert!(Instant::now() < deadline, "distgate's metrics endpoint never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn spawn(bin: &str, config: &Path, log: Option<&str>) -> Daemon {
        let mut cmd = Command::new(bin);
        cmd.args(["run", "-c"]).arg(config).env_remove("DISTGATE_LOG");
        if let Some(l) = log {
            cmd.env("DISTGATE_LOG", l);
        }
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("distgate starts");
        let (tx, rx) = channel();
        let err = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Daemon { child, lines: rx, log: Vec::new() }
    }

    /// Waits (30 s at most) for a log line containing `what` and returns it; panics with the
    /// log so far when none comes.
    pub fn wait_for(&mut self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(what) {
                        return l;
                    }
                }
                Err(_) => panic!("no log line with {what:?}; log so far:\n{}", self.log.join("\n")),
            }
        }
    }

    /// Every log line read so far (by [`Daemon::wait_for`]) plus those waiting now.
    pub fn log(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
        &self.log
    }

    /// Sends a signal (`"HUP"`, `"TERM"`) with kill(1): no `unsafe` in tests.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().expect("kill runs");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// The process id (to look at its threads in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for distgate")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scheduling policy (field 41 of `/proc/PID/task/TID/stat`: 0 `SCHED_OTHER`, 3
/// `SCHED_BATCH`) of each of the process's threads whose name starts with `prefix`.
pub fn thread_policies(pid: u32, prefix: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        // A thread that ended meanwhile has no policy to report.
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else { continue };
        // After the name in parentheses (which may hold spaces) come fields 3 onwards.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        out.push(rest.split(' ').nth(41 - 3).unwrap().parse().unwrap());
    }
    out
}

/// `GET /metrics` on 127.0.0.1:`port`: the whole HTTP response (asserted to be a 200).
pub fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of the sample `series` (name and labels as they print, `a_total{x="y"}`) in
/// Prometheus text; panics, showing the text, when there is none.
pub fn sample(text: &str, series: &str) -> f64 {
    sample_or(text, series).unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

/// [`sample`], or `None` when the series is absent.
pub fn sample_or(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// A free TCP port on 127.0.0.1 (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    crate::node::free_port()
}

/// Waits (30 s at most, polling) until something accepts connections on 127.0.0.1:`port`,
/// e.g. an `epmd -port PORT` just spawned: a node started before its epmd listens fails to
/// register and halts. Panics naming `what` when nothing does.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A real `epmd` (erlang-base) on a free port of its own, listening when `start` returns,
/// killed on drop (so a failing test leaves none behind).
pub struct Epmd(Child, pub u16);

impl Epmd {
    pub fn start() -> Epmd {
        Epmd::start_on(free_port())
    }

    /// An epmd on `port` (say, one restarted where an earlier one ran).
    pub fn start_on(port: u16) -> Epmd {
        let child = Command::new("epmd").args(["-port", &port.to_string()]).spawn().expect("epmd (erlang-base) starts");
        let epmd = Epmd(child, port);
        // A node started before its epmd listens fails to register and halts.
        wait_listening(port, "epmd");
        epmd
    }

    pub fn port(&self) -> u16 {
        self.1
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.1))
    }
}

impl Drop for Epmd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
