//! Registry sources and snapshots: the cache file (one registry, or a section per cluster)
//! round-trips every OTP module and refuses corrupt files cleanly; bad .beam files in a directory are reported (file and chunk) while
//! the rest load; readers keep their snapshot across a refresh.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use distgate::registry::cache::{self, CacheErrorKind};
use distgate::registry::{LoadErrorKind, Limits, Registry, Snapshot, SnapshotBuilder, Source};
use distgate_testkit::erl;
use distgate_testkit::TempDir;
use md5::{Digest, Md5};
use proptest::prelude::*;

/// The OTP installation's root (every module of it is the test corpus).
fn otp_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| PathBuf::from(erl::eval("io:format(\"~s\", [code:root_dir()])").trim()))
}

fn otp_snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let mut b = SnapshotBuilder::new();
        let rep = distgate::registry::load_sources(&mut b, &[Source::Dir(otp_root().to_path_buf())], &Limits::default());
        assert!(rep.ok(), "{:?}", rep.errors);
        assert!(rep.files >= 500, "{} files", rep.files);
        b.build()
    })
}

fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    // Recompute the trailing checksum, so structural checks (not the checksum) are exercised.
    let n = bytes.len() - 16;
    let sum: [u8; 16] = Md5::digest(&bytes[..n]).into();
    bytes[n..].copy_from_slice(&sum);
    bytes
}

#[test]
fn cache_round_trips_every_otp_module() {
    let snap = otp_snapshot();
    let tmp = TempDir::new("dg_reg_cache");
    let path = tmp.path().join("otp.cache");
    cache::write(snap, &path).unwrap();
    let back = cache::read_file(&path, 1 << 30).unwrap();
    let ours: Vec<_> = snap.all_versions().cloned().collect();
    assert_eq!(back.len(), ours.len());
    assert_eq!(back, ours, "every version (md5, lambdas, exports, origin) survives the cache");
    let lambdas: usize = back.iter().map(|v| v.lambdas().len()).sum();
    assert!(lambdas > 1000, "{lambdas}");

    // A registry that starts from the cache alone answers like one that scanned the files.
    let reg = Registry::new("warm");
    let rep = reg.refresh(&[Source::CacheFile(path.clone())], &Limits::default());
    assert!(rep.ok(), "{:?}", rep.errors);
    assert_eq!(rep.added, snap.version_count());
    let warm = reg.load();
    for v in snap.all_versions() {
        let w = warm.knows(&v.module, &v.md5).expect("known from the cache");
        assert_eq!(w, v);
        for l in v.lambdas() {
            assert_eq!(warm.lambda(&v.module, &v.md5, l.index), Some(l));
        }
        for (f, a) in v.export_list() {
            assert!(warm.exports(&v.module, &v.md5, f, a as u32));
            assert!(warm.exported_anywhere(&v.module, f, a as u32));
        }
    }
    // The lists module is there with its real exports.
    let lists = warm.lookup("lists");
    assert_eq!(lists.len(), 1);
    assert!(warm.exports("lists", &lists[0].md5, "reverse", 1));
}

#[test]
fn corrupt_caches_are_refused_with_a_reason() {
    let good = cache::encode(otp_snapshot());
    assert!(cache::decode(&good).is_ok());
    let kind = |b: &[u8]| cache::decode(b).unwrap_err().kind;

    // Every truncation and a flipped bit every 101 bytes: caught (by the checksum, or earlier).
    for n in (0..good.len()).step_by(97).chain([good.len() - 1, 8, 12, 16, 31]) {
        assert!(cache::decode(&good[..n]).is_err(), "truncated at {n}");
    }
    for i in (0..good.len()).step_by(101) {
        let mut bad = good.clone();
        bad[i] ^= 0x04;
        assert!(cache::decode(&bad).is_err(), "flip at {i}");
    }
    assert_eq!(kind(b"not a cache at all, just text"), CacheErrorKind::BadMagic);
    assert_eq!(kind(b""), CacheErrorKind::BadMagic);
    let mut other_version = good.clone();
    other_version[8..12].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(kind(&reseal(other_version)), CacheErrorKind::UnsupportedVersion(3));
    let mut flipped = good.clone();
    flipped[40] ^= 1;
    assert_eq!(kind(&flipped), CacheErrorKind::Checksum);

    // Checksum-valid but hostile: an entry count of four billion in a tiny file is refused
    // before anything is reserved.
    let mut huge = cache::MAGIC.to_vec();
    huge.extend_from_slice(&cache::VERSION.to_be_bytes());
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    huge.extend_from_slice(&[0; 16]);
    assert!(matches!(kind(&reseal(huge)), CacheErrorKind::BadCount { count: 0xffff_ffff, .. }));
    let mut trailing = good[..good.len() - 16].to_vec();
    trailing.extend_from_slice(&[0, 0, 0]);
    trailing.extend_from_slice(&[0; 16]);
    assert!(matches!(kind(&reseal(trailing)), CacheErrorKind::Trailing { extra: 3 }));
}

#[test]
fn cluster_caches_keep_each_clusters_section_and_refuse_corruption() {
    let otp = otp_snapshot();
    let mut b = SnapshotBuilder::new();
    for v in otp.all_versions().filter(|v| v.module.starts_with("gen")) {
        b.add(v.clone());
    }
    let small = b.build();
    let empty = Snapshot::default();
    let sections = [
        cache::SectionRef { cluster: "east", sources: [1; 16], snapshot: otp },
        cache::SectionRef { cluster: "west", sources: [2; 16], snapshot: &small },
        cache::SectionRef { cluster: "ünïcode", sources: [3; 16], snapshot: &empty },
    ];
    let bytes = cache::encode_clusters(&sections);
    let back = cache::decode_clusters(&bytes).unwrap();
    assert_eq!(back.len(), 3);
    for (s, r) in back.iter().zip(&sections) {
        assert_eq!((s.cluster.as_str(), s.sources), (r.cluster, r.sources));
        let ours: Vec<_> = r.snapshot.all_versions().cloned().collect();
        assert_eq!(s.versions, ours, "{}", s.cluster);
    }
    assert!(back[1].versions.len() >= 5, "gen_server, gen_statem, …");
    // Read as one registry (a Source::CacheFile, `registry show --cache`): every section.
    assert_eq!(cache::decode(&bytes).unwrap().len(), otp.version_count() + small.version_count());
    // A format 1 file is one unnamed section.
    let v1 = cache::decode_clusters(&cache::encode(&small)).unwrap();
    assert_eq!((v1.len(), v1[0].cluster.as_str(), v1[0].sources), (1, "", [0; 16]));
    assert_eq!(v1[0].versions.len(), small.version_count());

    // Truncations and flips are refused, as in format 1.
    for n in (0..bytes.len()).step_by(997).chain([bytes.len() - 1, 12, 16]) {
        assert!(cache::decode_clusters(&bytes[..n]).is_err(), "truncated at {n}");
    }
    for i in (0..bytes.len()).step_by(1009) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        assert!(cache::decode_clusters(&bad).is_err(), "flip at {i}");
    }
    // Checksum-valid but hostile: four billion clusters in a tiny file.
    let mut huge = cache::MAGIC.to_vec();
    huge.extend_from_slice(&cache::VERSION_CLUSTERS.to_be_bytes());
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    huge.extend_from_slice(&[0; 16]);
    let e = cache::decode_clusters(&reseal(huge)).unwrap_err();
    assert!(matches!(e.kind, CacheErrorKind::BadCount { what: "cluster", count: 0xffff_ffff }), "{e}");

    // Written atomically and read back from a file.
    let tmp = TempDir::new("dg_reg_cache_clusters");
    let path = tmp.path().join("all.cache");
    cache::write_clusters(&sections[1..], &path).unwrap();
    let read = cache::read_clusters(&path, 1 << 30).unwrap();
    assert_eq!(read.iter().map(|s| s.cluster.as_str()).collect::<Vec<_>>(), ["west", "ünïcode"]);
    assert!(std::fs::read_dir(tmp.path()).unwrap().count() == 1, "no temporary file left");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
    /// Any body behind a valid magic, version and checksum decodes or fails; it never panics.
    #[test]
    fn sealed_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300), count in 0u32..5) {
        let mut b = cache::MAGIC.to_vec();
        b.extend_from_slice(&cache::VERSION.to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&body);
        b.extend_from_slice(&[0; 16]);
        let _ = cache::decode(&reseal(b));
    }

    /// The same for the per-cluster format.
    #[test]
    fn sealed_garbage_never_panics_in_the_cluster_format(body in proptest::collection::vec(any::<u8>(), 0..300), count in 0u32..4) {
        let mut b = cache::MAGIC.to_vec();
        b.extend_from_slice(&cache::VERSION_CLUSTERS.to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&body);
        b.extend_from_slice(&[0; 16]);
        let _ = cache::decode_clusters(&reseal(b));
    }
}

#[test]
fn a_corrupt_cache_is_ignored_and_the_directories_still_load() {
    let tmp = TempDir::new("dg_reg_corrupt");
    let cache_path = tmp.path().join("reg.cache");
    let mut bytes = cache::encode(otp_snapshot());
    let n = bytes.len() / 2;
    bytes[n] ^= 0xff;
    std::fs::write(&cache_path, &bytes).unwrap();
    let stdlib = PathBuf::from(erl::eval("io:format(\"~s\", [code:lib_dir(stdlib, ebin)])").trim());

    let reg = Registry::new("c");
    let rep = reg.refresh(&[Source::CacheFile(cache_path.clone()), Source::Dir(stdlib)], &Limits::default());
    assert_eq!(rep.errors.len(), 1, "{:?}", rep.errors);
    let e = &rep.errors[0];
    assert_eq!(e.path, cache_path);
    assert!(matches!(&e.kind, LoadErrorKind::Cache(c) if c.kind == CacheErrorKind::Checksum));
    assert!(e.to_string().contains("reg.cache") && e.to_string().contains("checksum"), "{e}");
    let snap = reg.load();
    assert!(!snap.lookup("lists").is_empty(), "the directory loaded anyway");
    assert!(snap.lookup("ssl").is_empty(), "nothing came from the corrupt cache");
}

#[test]
fn bad_beams_are_reported_by_file_and_chunk_and_the_rest_load() {
    let tmp = TempDir::new("dg_reg_bad");
    let lists = PathBuf::from(erl::eval("io:format(\"~s\", [code:which(lists)])").trim());
    let good = std::fs::read(&lists).unwrap();
    std::fs::create_dir_all(tmp.path().join("deep/er")).unwrap();
    std::fs::copy(&lists, tmp.path().join("lists.beam")).unwrap();
    // Cut in the middle: the error names the chunk the file ends in.
    std::fs::write(tmp.path().join("deep/cut.beam"), &good[..good.len() / 2]).unwrap();
    // Gzip magic, then garbage.
    std::fs::write(tmp.path().join("deep/er/gz.beam"), [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]).unwrap();
    // A FunT declaring a billion entries.
    let mut hostile = good.clone();
    let funt = hostile.windows(4).position(|w| w == b"FunT").expect("lists has a FunT");
    hostile[funt + 8..funt + 12].copy_from_slice(&0x4000_0000u32.to_be_bytes());
    std::fs::write(tmp.path().join("deep/er/hostile.beam"), &hostile).unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "not a beam, not looked at").unwrap();

    let reg = Registry::new("bad");
    let rep = reg.refresh(&[Source::Dir(tmp.path().to_path_buf())], &Limits::default());
    assert_eq!(rep.files, 4);
    assert_eq!(rep.added, 1);
    let mut msgs: Vec<String> = rep.errors.iter().map(|e| e.to_string()).collect();
    msgs.sort();
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    assert!(msgs[0].contains("deep/cut.beam: chunk \""), "{}", msgs[0]);
    assert!(msgs[1].contains("deep/er/gz.beam: ") && msgs[1].contains("gzip"), "{}", msgs[1]);
    assert!(msgs[2].contains("deep/er/hostile.beam: chunk \"FunT\" at byte"), "{}", msgs[2]);
    for e in &rep.errors {
        assert!(matches!(e.kind, LoadErrorKind::Beam(_)));
    }
    assert_eq!(reg.load().lookup("lists").len(), 1);
}

#[test]
fn readers_keep_their_snapshot_across_a_refresh() {
    let tmp = TempDir::new("dg_reg_swap");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, body) in [(&a, "f() -> 1."), (&b, "f() -> 2.")] {
        std::fs::create_dir_all(dir).unwrap();
        let src = dir.join("dg_swap.erl");
        std::fs::write(&src, format!("-module(dg_swap).\n-export([f/0]).\n{body}\n")).unwrap();
        erl::compile(&[&src], dir).unwrap();
    }
    let reg = Registry::new("swap");
    assert!(reg.refresh(&[Source::Dir(a.clone())], &Limits::default()).ok());
    let before = reg.load();
    let held = reg.snapshot();
    assert_eq!(before.lookup("dg_swap").len(), 1);
    let v1 = before.lookup("dg_swap")[0].md5;

    // refresh keeps what was known and adds the new version.
    let rep = reg.refresh(&[Source::Dir(b.clone())], &Limits::default());
    assert_eq!(rep.added, 1);
    let after = reg.load();
    assert_eq!(after.lookup("dg_swap").len(), 2);
    let v2 = after.lookup("dg_swap").iter().map(|v| v.md5).find(|m| *m != v1).unwrap();
    // The guard and the Arc taken before still see the old snapshot, unchanged.
    assert_eq!(before.lookup("dg_swap").len(), 1);
    assert!(before.knows("dg_swap", &v2).is_none());
    assert!(held.knows("dg_swap", &v2).is_none());
    assert!(after.knows("dg_swap", &v1).is_some() && after.knows("dg_swap", &v2).is_some());

    // reload holds only what the sources have now.
    reg.reload(&[Source::Dir(b)], &Limits::default());
    let now = reg.load();
    assert!(now.knows("dg_swap", &v1).is_none());
    assert!(now.knows("dg_swap", &v2).is_some());
    // Refreshing the same source again adds nothing.
    assert_eq!(reg.refresh(&[Source::Dir(a.clone())], &Limits::default()).added, 1);
    assert_eq!(reg.refresh(&[Source::Dir(a)], &Limits::default()).added, 0);
}
