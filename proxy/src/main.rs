//! The `distgate` command line.
//!
//! With no arguments it runs the main job on its embedded default. Until the link layer lands
//! that job is the codec's own showcase: decoding a bundled capture of real OTP traffic.

use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use distgate::etf;

#[derive(Parser)]
#[command(name = "distgate", version, about = "A proxy for Erlang distribution traffic", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy (the default command). Without a configuration file it runs the embedded
    /// default: an EPMD responder on 127.0.0.1:4370, so `ERL_EPMD_PORT=4370 erl -sname a`
    /// reaches every node registered with the standard epmd on 127.0.0.1:4369 through
    /// distgate, using ~/.erlang.cookie on both legs.
    Run {
        /// Configuration file (reference: docs/config.md). Without it: the embedded default.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Data-plane driver, overriding [runtime] driver: auto, io_uring or mio.
        #[arg(long)]
        driver: Option<String>,
        /// Data-plane threads, 1 to 1024, overriding [runtime] threads.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=distgate_config::MAX_THREADS as i64))]
        threads: Option<u16>,
    },
    /// Check a configuration file: print "FILE: ok", or every problem found, one per line with
    /// its file:line:column, key and a hint (exit status 1). Without -c, checks the embedded
    /// default. Reference: docs/config.md.
    Check {
        /// The configuration file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Also read every cluster's cookie (cookie_file, cookie_env) as `run` would, so a
        /// missing or unreadable secret fails the check too (systemd's ExecStartPre uses this).
        #[arg(long)]
        cookies: bool,
    },
    /// Inspect External Term Format data.
    Etf {
        #[command(subcommand)]
        cmd: EtfCmd,
    },
    /// Module registry: .beam MD5s, lambda tables, exports.
    Registry {
        #[command(subcommand)]
        cmd: distgate::registry::cli::RegistryCmd,
    },
}

#[derive(Subcommand)]
enum EtfCmd {
    /// Print one term (`131 …`) as Erlang's `io_lib:format("~w", [Term])` would, or with
    /// `--frames` a captured one-direction distribution stream, one line per frame.
    Print {
        /// File to read (`-` or absent: standard input).
        file: Option<PathBuf>,
        /// Treat the input as a post-handshake stream of 4-byte-length frames.
        #[arg(long)]
        frames: bool,
        /// Use the bundled sample capture (real OTP 25 traffic) instead of a file.
        #[arg(long, conflicts_with = "file")]
        sample: bool,
        /// With --frames: cut each printed term to this many characters (0: never cut).
        #[arg(long, default_value_t = 240)]
        width: usize,
    },
}

fn read_input(file: Option<&PathBuf>) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    match file {
        Some(p) if p.as_os_str() != "-" => {
            buf = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        _ => {
            std::io::stdin().read_to_end(&mut buf).map_err(|e| format!("stdin: {e}"))?;
        }
    }
    Ok(buf)
}

/// Swaps the log filter on a reload; `None` when `DISTGATE_LOG` set it (it wins over the file).
type LogLevel = Option<tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>>;

fn init_logging(log: Option<&distgate_config::Log>) -> LogLevel {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    // DISTGATE_LOG overrides the configured level (handy for one-off debugging).
    let level = log.map_or("info", |l| l.level.as_str());
    let from_env = EnvFilter::try_from_env("DISTGATE_LOG").ok();
    let pinned = from_env.is_some();
    let (filter, handle) = reload::Layer::new(from_env.unwrap_or_else(|| EnvFilter::new(level)));
    let json = log.is_some_and(|l| l.format == distgate_config::LogFormat::Json);
    // Colours only on a terminal: a file, a pipe or journald would get the escape codes as text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let out = if json {
        fmt::layer().json().with_writer(std::io::stderr).boxed()
    } else {
        fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).boxed()
    };
    let _ = tracing_subscriber::registry().with(filter).with(out).try_init();
    (!pinned).then_some(handle)
}

fn run(file: Option<&PathBuf>, driver: Option<&str>, threads: Option<u16>) -> Result<(), String> {
    let (cfg, name) = match file {
        Some(f) => (distgate_config::load(f).map_err(|e| e.to_string())?, f.display().to_string()),
        None => (distgate_config::Config::embedded_default(), distgate_config::EMBEDDED_DEFAULT_NAME.to_string()),
    };
    let log_level = init_logging(Some(&cfg.log));
    let mut spec = distgate::runtime::Spec::from_config(&cfg).map_err(|e| format!("{name}: {e}"))?;
    if let Some(d) = driver {
        spec.driver = match d {
            "auto" => distgate::driver::DriverKind::Auto,
            "io_uring" | "uring" => distgate::driver::DriverKind::Uring,
            "mio" | "poll" | "epoll" => distgate::driver::DriverKind::Poll,
            other => return Err(format!("unknown driver {other:?} (auto, io_uring, mio)")),
        };
    }
    if let Some(t) = threads {
        spec.threads = t as usize;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signal handler: {e}"))?;
    }
    let hup = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone()).map_err(|e| format!("signal handler: {e}"))?;
    let rt = distgate::runtime::Runtime::start(spec).map_err(|e| format!("{name}: {e}"))?;
    if cfg.metrics.enabled {
        let regs = rt.registries().clone();
        let extra: distgate::metrics::Extra = std::sync::Arc::new(move |r: &prometheus::Registry| regs.register_metrics(r));
        let addr = distgate::metrics::serve(cfg.metrics.listen, rt.stats(), rt.driver().name(), Some(extra))
            .map_err(|e| format!("metrics on {}: {e}", cfg.metrics.listen))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    for c in &cfg.clusters {
        tracing::info!(cluster = %c.name, epmd = %c.listen, "point this cluster's nodes here: ERL_EPMD_PORT={}", c.listen.port());
    }
    tracing::info!(config = %name, driver = rt.driver().name(), "distgate running");
    let mut current = cfg;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::park_timeout(std::time::Duration::from_millis(200));
        if hup.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let Some(f) = file else {
                rt.registries().refresh_all();
                tracing::info!("SIGHUP: running on the embedded default, nothing to reload; registries refreshed");
                continue;
            };
            // An invalid file keeps the running configuration; the errors say why.
            match distgate_config::load(f).map_err(|e| e.to_string()).and_then(|new| {
                let spec = distgate::runtime::Spec::from_config(&new)?;
                Ok((new, spec))
            }) {
                Ok((new, spec)) => {
                    for what in current.restart_required(&new) {
                        tracing::warn!(change = %what, "SIGHUP: this change needs a restart; kept the running value");
                    }
                    if let Some(h) = log_level.as_ref().filter(|_| new.log.level != current.log.level) {
                        if let Err(e) = h.reload(tracing_subscriber::EnvFilter::new(&new.log.level)) {
                            tracing::warn!(error = %e, "SIGHUP: the log level could not be changed");
                        }
                    }
                    // Registries whose sources did not change are refreshed now.
                    rt.reload(&spec);
                    tracing::info!(config = %name, "SIGHUP: configuration reloaded");
                    current = new;
                }
                Err(e) => {
                    // One log line, every error in it: a multi-line field would split the record.
                    let errors = e.lines().collect::<Vec<_>>().join(" | ");
                    tracing::error!(config = %name, %errors, "SIGHUP: invalid configuration; keeping the running one");
                    rt.registries().refresh_all();
                }
            }
        }
    }
    tracing::info!("stopping: no new connections, draining links");
    rt.shutdown();
    Ok(())
}

/// `distgate check`: errors go to stderr, one per line; nothing but "FILE: ok" on success.
fn check(file: Option<&PathBuf>, cookies: bool) -> ExitCode {
    let (loaded, name) = match file {
        Some(f) => (distgate_config::load(f), f.display().to_string()),
        None => (Ok(distgate_config::Config::embedded_default()), distgate_config::EMBEDDED_DEFAULT_NAME.to_string()),
    };
    let checked = loaded.and_then(|c| if cookies { c.resolve_cookies().map(|_| ()) } else { Ok(()) });
    match checked {
        Ok(()) => {
            println!("{name}: ok");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.len();
            eprintln!("{name}: {n} error{}", if n == 1 { "" } else { "s" });
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Check { config, cookies }) => return check(config.as_ref(), cookies),
        None => run(None, None, None),
        Some(Cmd::Run { config, driver, threads }) => run(config.as_ref(), driver.as_deref(), threads),
        Some(Cmd::Registry { cmd }) => return distgate::registry::cli::run(cmd),
        Some(Cmd::Etf { cmd: EtfCmd::Print { file, frames, sample, width } }) => {
            let (bytes, name) = if sample {
                (etf::SAMPLE.to_vec(), "bundled sample".to_string())
            } else {
                match read_input(file.as_ref()) {
                    Ok(b) => (b, file.map(|p| p.display().to_string()).unwrap_or_else(|| "stdin".into())),
                    Err(e) => {
                        eprintln!("distgate: {e}");
                        return ExitCode::from(2);
                    }
                }
            };
            let out = &mut std::io::stdout().lock();
            if frames || sample {
                etf::print_frames(&bytes, &name, width, out)
            } else {
                etf::print_term(&bytes, &name, out)
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stops early (`distgate | head`) is not an error.
        Err(e) if e.contains("Broken pipe") => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distgate: {e}");
            ExitCode::FAILURE
        }
    }
}
