//! The `distgate` binary as an operator runs it: `run -c FILE`, real nodes through it,
//! `/metrics` scraped and checked against the traffic sent, SIGHUP with a broken and then a
//! changed file, SIGTERM draining and bringing nodedown.

use distgate_testkit::{Node, NodeOptions, TempDir};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Distgate {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl Distgate {
    fn start(config: &std::path::Path) -> Distgate {
        let mut child = Command::new(env!("CARGO_BIN_EXE_distgate"))
            .args(["run", "-c"])
            .arg(config)
            .env("DISTGATE_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("distgate starts");
        let (tx, rx) = channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut d = Distgate { child, lines: rx, log: Vec::new() };
        d.wait_for("distgate running");
        d
    }

    /// Wait for a log line containing `what` (the readiness signal; no sleeping).
    fn wait_for(&mut self, what: &str) -> String {
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

    /// Send a signal with kill(1): no `unsafe` outside the io_uring driver, tests included.
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }
}

impl Drop for Distgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of a sample `name{labels}` in Prometheus text (labels given as they print).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

fn config(dir: &TempDir, ea: u16, eb: u16, metrics: u16, route: bool) -> std::path::PathBuf {
    let route = if route { "[[route]]\nfrom = \"a\"\nto = \"b\"\n" } else { "" };
    let text = format!(
        "[[cluster]]\nname = \"a\"\ncookie = \"ops_cookie_a\"\nlisten = \"127.0.0.1:{ea}\"\n\n\
         [[cluster]]\nname = \"b\"\ncookie = \"ops_cookie_b\"\nlisten = \"127.0.0.1:{eb}\"\n\n\
         {route}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n[runtime]\nthreads = 2\ndriver = \"mio\"\n"
    );
    let p = dir.path().join("distgate.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn run_with_a_file_metrics_reload_and_sigterm() {
    let dir = TempDir::new("dg_ops");
    let (ea, eb, mp) = (free_port(), free_port(), free_port());
    let cfg = config(&dir, ea, eb, mp, true);
    let mut dg = Distgate::start(&cfg);
    let a = Node::start_with("oa", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    let b = Node::start_with("ob", NodeOptions { cookie: "ops_cookie_b".into(), epmd_port: Some(eb), ..NodeOptions::default() });
    a.eval(&format!("B = {}.", b.atom()));
    b.eval("register(dg_count, spawn(fun() -> L = fun Loop(N) -> receive {get, F} -> F ! {n, N}, Loop(N); _ -> Loop(N + 1) end end, L(0) end)).");
    // 200 messages of 10 000 bytes each: at least 2 MB must show up as forwarded bytes.
    assert_eq!(
        a.eval("Bin = binary:copy(<<7>>, 10000), [{dg_count, B} ! Bin || _ <- lists:seq(1, 200)], {dg_count, B} ! {get, self()}, receive {n, N} -> N after 10000 -> timeout end."),
        "200"
    );
    let m = scrape(mp);
    assert_eq!(sample(&m, "distgate_links_total{event=\"established\"}"), 1.0, "{m}");
    assert_eq!(sample(&m, "distgate_links{state=\"open\"}"), 1.0);
    assert!(sample(&m, "distgate_bytes_total{direction=\"down_to_up\"}") >= 2_000_000.0);
    assert!(sample(&m, "distgate_frames_total{direction=\"down_to_up\"}") >= 200.0);
    assert!(sample(&m, "distgate_frame_seconds_count") >= 1.0);
    assert_eq!(sample(&m, "distgate_driver{driver=\"mio\"}"), 1.0);

    // SIGHUP with a broken file: the running configuration stays, and says why.
    std::fs::write(&cfg, "[[cluster]]\nname = \"a\"\ntreads = 2\n").unwrap();
    dg.signal("HUP");
    let l = dg.wait_for("SIGHUP: invalid configuration");
    assert!(l.contains("treads"), "{l}");
    assert_eq!(a.eval("rpc:call(B, erlang, node, [])."), b.atom(), "the link survived");

    // SIGHUP with the route removed: established links keep running, new lookups see it.
    config(&dir, ea, eb, mp, false);
    dg.signal("HUP");
    dg.wait_for("SIGHUP: configuration reloaded");
    assert_eq!(a.eval("rpc:call(B, erlang, node, [])."), b.atom(), "no link dropped by a reload");
    let c = Node::start_with("oc", NodeOptions { cookie: "ops_cookie_a".into(), epmd_port: Some(ea), ..NodeOptions::default() });
    assert_eq!(c.eval(&format!("net_adm:ping({}).", b.atom())), "pang", "no route any more for new links");

    // SIGTERM: the link is closed (nodedown on both sides) and distgate exits cleanly.
    dg.signal("TERM");
    let status = dg.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let gone = "W = fun Wait(0) -> nodes(); Wait(K) -> case nodes() of [] -> []; _ -> receive after 50 -> Wait(K - 1) end end end, W(200).";
    assert_eq!(a.eval(gone), "[]");
    assert_eq!(b.eval(gone), "[]");
}
