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
    /// Inspect External Term Format data.
    Etf {
        #[command(subcommand)]
        cmd: EtfCmd,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        None => etf::print_frames(etf::SAMPLE, "bundled sample", 240, &mut std::io::stdout().lock()),
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
