//! A tiny run of the rig: a few hundred messages through every target available here (100 per
//! connection per cell), both scenarios, Rust → Rust, real → real and Rust → real nodes. It asserts that messages arrived
//! and a report was written; it never looks at a timing.

use distgate_bench::etf::PayloadKind;
use distgate_bench::load::Scenario;
use distgate_bench::realnode::erl_available;
use distgate_bench::rig::{self, Nodes, RigConfig};
use distgate_bench::targets::Target;

#[test]
fn a_few_hundred_messages_through_every_available_target() {
    let out = distgate_testkit::TempDir::new("dg_bench_smoke");
    let mut nodes = vec![Nodes::Rust];
    if erl_available() {
        nodes.push(Nodes::Erl);
        nodes.push(Nodes::RustErl);
    }
    let cfg = RigConfig {
        targets: Target::ALL.to_vec(),
        scenarios: vec![Scenario::PingPong, Scenario::Flood],
        payloads: vec![PayloadKind::Small, PayloadKind::Bin1m, PayloadKind::Fun],
        conns: vec![1, 3],
        nodes: nodes.clone(),
        reps: 1,
        seconds: 30.0,
        max_msgs: Some(100),
        fragments: true,
        distgate_threads: 1,
        install: false,
        progress: false,
        out: out.path().to_path_buf(),
        command: "smoke".into(),
    };
    let r = rig::run(&cfg).expect("the rig runs");
    // direct and distgate (mio) are always there; haproxy/socat when installed.
    for t in [Target::Direct, Target::DistgateMio] {
        assert!(r.meta.targets.contains(&t.name().to_string()), "{t:?} missing: {:?}", r.meta.unavailable);
    }
    assert!(!r.samples.is_empty());
    for s in &r.samples {
        assert!(s.errors.is_empty(), "{:?} {:?} {:?} x{} via {:?}: {:?}", s.nodes, s.scenario, s.payload, s.conns, s.target, s.errors);
        let per_conn = if s.nodes == Nodes::Rust { s.conns as u64 } else { 1 };
        assert_eq!(s.msgs, 100 * per_conn, "{s:?}");
        if s.scenario == Scenario::Flood {
            assert_eq!(s.sink_msgs, Some(s.msgs), "the sink got every flood message: {s:?}");
        } else {
            assert!(s.latency_us.is_some(), "{s:?}");
        }
    }
    for n in &nodes {
        assert!(r.samples.iter().any(|s| s.nodes == *n), "{n:?} ran");
    }
    for f in ["results.json", "report.md", "latency.svg", "throughput.svg"] {
        let p = out.path().join(f);
        assert!(std::fs::metadata(&p).map(|m| m.len() > 100).unwrap_or(false), "{} written", p.display());
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("| direct |"), "{md}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert!(json["rows"].as_array().is_some_and(|r| !r.is_empty()));
}

/// The Rust node's payloads are terms a real node decodes (funs included).
#[test]
fn payloads_decode_in_erl() {
    if !erl_available() {
        eprintln!("erl not installed: skipped");
        return;
    }
    let items: Vec<Vec<u8>> = [PayloadKind::Small, PayloadKind::Mixed, PayloadKind::Fun]
        .iter()
        .map(|k| {
            let mut t = vec![131];
            t.extend(k.encode("rl@127.0.0.1"));
            t
        })
        .collect();
    let got = distgate_testkit::corpus::binary_to_term_w_many(&items);
    assert!(got[0].as_ref().unwrap().starts_with("{0,{bench,[1,2,3,4,5,6,7,8],{ok,alpha,beta,gamma},[104,101,108,108,111,32,119,111,114,108,100],1.25,#{key => value}}}"), "{got:?}");
    assert!(got[1].as_ref().unwrap().contains("#{id => 12,name => <<105,116,101,109,45,49,50>>"), "{got:?}");
    assert_eq!(got[2].as_ref().unwrap(), "{0,{fun_msg,#Fun<dg_bench_load.0.12345678>,fun lists:reverse/1}}");
}
