//! `distgate registry …`: module MD5s of `.beam` files, and what a registry knows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use distgate_codec::beam;

use super::set::{self, EpmdNames, RegistrySet};
use super::{cache, load_sources, scan, Limits, LoadError, LoadErrorKind, LoadReport, Snapshot, SnapshotBuilder, Source};

#[derive(Debug, Subcommand)]
pub enum RegistryCmd {
    /// Print `module md5` (lowercase hex, as module_info(md5)) for each .beam file; directories
    /// are walked recursively, their files in path order. A file that cannot be read is
    /// reported on stderr and the rest continue; the exit status is 1 if any failed.
    Md5 {
        /// .beam files and directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print what a registry built from these sources knows: per module, each version's MD5,
    /// lambda and export counts, and where it was found. With -c (or with no --dir, --cache
    /// or --write-cache: the embedded default), one registry per cluster of the configuration,
    /// from its registry.dirs and, for live = true, its nodes, joined as distgate joins them.
    Show {
        /// A configuration file (docs/config.md).
        #[arg(short = 'c', long = "config", value_name = "FILE", conflicts_with_all = ["dirs", "caches", "write_cache"])]
        config: Option<PathBuf>,
        /// A directory of .beam files (walked recursively); repeatable.
        #[arg(long = "dir")]
        dirs: Vec<PathBuf>,
        /// A registry cache file; repeatable. A corrupt cache is reported and ignored.
        #[arg(long = "cache")]
        caches: Vec<PathBuf>,
        /// Also write the registry's cache file here (for a warm start later).
        #[arg(long = "write-cache")]
        write_cache: Option<PathBuf>,
    },
}

/// Runs a `registry` subcommand with the process's stdout and stderr.
pub fn run(cmd: RegistryCmd) -> ExitCode {
    let (out, err) = (std::io::stdout(), std::io::stderr());
    let r = match cmd {
        RegistryCmd::Md5 { paths } => md5(&paths, &Limits::default(), &mut out.lock(), &mut err.lock()),
        RegistryCmd::Show { config, dirs, caches, write_cache } => {
            if config.is_some() || (dirs.is_empty() && caches.is_empty() && write_cache.is_none()) {
                let loaded = match &config {
                    Some(f) => distgate_config::load(f).map(|c| (c, f.display().to_string())),
                    None => Ok((distgate_config::Config::embedded_default(), distgate_config::EMBEDDED_DEFAULT_NAME.to_string())),
                };
                match loaded {
                    Ok((cfg, name)) => show_config(&cfg, &name, &Limits::default(), &mut out.lock(), &mut err.lock()),
                    Err(e) => writeln!(err.lock(), "{e}").map(|()| false),
                }
            } else {
                let sources: Vec<Source> =
                    caches.into_iter().map(Source::CacheFile).chain(dirs.into_iter().map(Source::Dir)).collect();
                show(&sources, write_cache.as_deref(), &Limits::default(), &mut out.lock(), &mut err.lock())
            }
        }
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // A reader that stops early (`| head`) is not an error worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "distgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(err: &mut dyn Write, e: &LoadError) -> std::io::Result<()> {
    writeln!(err, "distgate: {e}")
}

/// `registry md5`: true when every file was read.
pub fn md5(paths: &[PathBuf], limits: &Limits, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<bool> {
    let mut ok = true;
    for p in paths {
        let files = match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                let mut errors = Vec::new();
                let files = scan::beam_files(p, limits.max_depth, &mut errors);
                for e in &errors {
                    report(err, e)?;
                }
                ok &= errors.is_empty();
                files
            }
            Ok(_) => vec![p.clone()],
            Err(e) => {
                report(err, &LoadError::new(p, LoadErrorKind::Io(e)))?;
                ok = false;
                continue;
            }
        };
        for r in scan::parallel_map(&files, |f| scan::read_md5(f, limits)) {
            match r {
                Ok((module, md5)) => writeln!(out, "{module} {}", beam::hex(&md5))?,
                Err(e) => {
                    report(err, &e)?;
                    ok = false;
                }
            }
        }
    }
    Ok(ok)
}

/// `registry show`: true when every source was read without error.
pub fn show(
    sources: &[Source],
    write_cache: Option<&Path>,
    limits: &Limits,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<bool> {
    let mut b = SnapshotBuilder::new();
    let rep = load_sources(&mut b, sources, limits);
    for e in &rep.errors {
        report(err, e)?;
    }
    let snap = b.build();
    let from: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
    print_snapshot(&snap, "default", &from, out)?;
    let mut ok = rep.ok();
    if let Some(path) = write_cache {
        if let Err(e) = cache::write(&snap, path) {
            writeln!(err, "distgate: {}: cannot write registry cache: {e}", path.display())?;
            ok = false;
        }
    }
    Ok(ok)
}

/// `registry show -c`: per cluster, what its configured sources give now (live nodes are
/// asked). Errors go to `err` prefixed with the cluster; true when there were none.
pub fn show_config(cfg: &distgate_config::Config, name: &str, limits: &Limits, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<bool> {
    // Cookies are read only when a live cluster needs one.
    let cookies = if cfg.clusters.iter().any(|c| c.registry.live) {
        match cfg.resolve_cookies() {
            Ok(c) => c,
            Err(e) => {
                writeln!(err, "{e}")?;
                return Ok(false);
            }
        }
    } else {
        Default::default()
    };
    let regs = match RegistrySet::from_config(cfg, &cookies) {
        Ok(r) => r,
        Err(e) => {
            writeln!(err, "distgate: {name}: {e}")?;
            return Ok(false);
        }
    };
    let own_name = regs.settings().own_name;
    let mut ok = true;
    for plan in regs.plans() {
        let mut report = LoadReport::default();
        let sources = set::sources_now(&plan, &own_name, &EpmdNames, limits, &mut report);
        let mut b = SnapshotBuilder::new();
        report.errors.extend(load_sources(&mut b, &sources, limits).errors);
        for e in &report.errors {
            writeln!(err, "distgate: cluster {}: {e}", plan.name)?;
        }
        ok &= report.ok();
        let mut from: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        if let Some(l) = plan.live.as_ref().filter(|_| !sources.iter().any(|s| matches!(s, Source::Live { .. }))) {
            from.push(if l.upstream.is_empty() {
                "live: no upstream_epmd to ask".into()
            } else {
                let up: Vec<String> = l.upstream.iter().map(|e| e.to_string()).collect();
                format!("live: no nodes registered with epmd {}", up.join(", "))
            });
        }
        print_snapshot(&b.build(), &plan.name, &from, out)?;
    }
    Ok(ok)
}

/// The listing `registry show` prints for one cluster; `from` says where it came from.
pub fn print_snapshot(snap: &Snapshot, cluster: &str, from: &[String], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "cluster {cluster}: {} modules, {} versions (from {})",
        snap.module_count(),
        snap.version_count(),
        if from.is_empty() { "nothing".to_string() } else { from.join(", ") }
    )?;
    for m in snap.module_names() {
        writeln!(out, "{m}")?;
        for v in snap.lookup(m) {
            writeln!(
                out,
                "  {}  lambdas {}  exports {}  {}",
                beam::hex(&v.md5),
                v.lambdas().len(),
                v.export_count(),
                v.origin
            )?;
        }
    }
    Ok(())
}
