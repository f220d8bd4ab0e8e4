//! Locating and running the Erlang tools: `erl -eval`, `erlc`, and the
//! testkit's own Erlang modules (compiled once per machine, see [`beam_dir`]).

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use crate::util::{self, run_with_timeout};

/// Default limit for one `erl` run. Generous: CI machines are small and
/// other builds compete for the CPU; a hang still fails instead of blocking.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The testkit's Erlang sources, embedded so the kit works from any cwd.
const SOURCES: &[(&str, &str)] = &[
    ("dg_epmd.erl", include_str!("../erl/dg_epmd.erl")),
    ("dg_ctl.erl", include_str!("../erl/dg_ctl.erl")),
    ("dg_scenario.erl", include_str!("../erl/dg_scenario.erl")),
    ("dg_gen.erl", include_str!("../erl/dg_gen.erl")),
    ("dg_util.erl", include_str!("../erl/dg_util.erl")),
];

/// Path of `erl`. Panics with an install hint when Erlang is missing.
pub fn erl_path() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| find_tool("erl"))
}

/// Path of `erlc`. Panics with an install hint when Erlang is missing.
pub fn erlc_path() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| find_tool("erlc"))
}

fn find_tool(name: &str) -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let fallbacks = [
        "/usr/bin",
        "/usr/local/bin",
        "/usr/lib/erlang/bin",
        "/opt/homebrew/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(name));
    from_path
        .into_iter()
        .chain(fallbacks)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "testkit: `{name}` not found in PATH or /usr/lib/erlang/bin: \
                 install erlang-nox (apt-get install erlang-nox) to run these tests"
            )
        })
}

/// A name unique across threads and concurrently running test processes:
/// `prefix_PID_COUNTER_RANDOM`, restricted to `[A-Za-z0-9_]` so it is valid
/// as a node's alive part and in env var names.
pub fn unique_name(prefix: &str) -> String {
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let n = util::COUNTER.fetch_add(1, Ordering::Relaxed);
    let r = util::random_u64() as u32;
    format!("{clean}_{}_{n}_{r:08x}", std::process::id())
}

/// An Erlang string literal for `s` (for paths and such spliced into code).
pub fn string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An always-quoted Erlang atom literal for `s` (node names contain `@`, `.`).
pub fn atom_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Why an `erl` run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErlError {
    /// The expression raised; `message` is `Class:Reason` and the stack.
    Raised { message: String, stdout: String },
    /// `erl` exited with an unexpected status (e.g. it could not boot).
    Failed {
        status: String,
        stdout: String,
        stderr: String,
    },
    /// The deadline passed; the process was killed.
    Timeout {
        after: Duration,
        stdout: String,
        stderr: String,
    },
}

impl fmt::Display for ErlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErlError::Raised { message, stdout } => {
                write!(f, "erl raised {message}\n--- stdout ---\n{stdout}")
            }
            ErlError::Failed {
                status,
                stdout,
                stderr,
            } => {
                write!(
                    f,
                    "erl failed ({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
                )
            }
            ErlError::Timeout {
                after,
                stdout,
                stderr,
            } => write!(
                f,
                "erl timed out after {after:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            ),
        }
    }
}

impl std::error::Error for ErlError {}

/// Runs `erl -noshell -pa <beam_dir> -eval EXPR` and returns its stdout.
/// `EXPR` is one expression sequence (`a(), b()`), trailing `.` optional;
/// the node halts after it. The testkit modules (`dg_*`) are on the code
/// path. Panics (with erl's output) if the expression raises or erl fails.
pub fn eval(expr: &str) -> String {
    try_eval(expr, DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("testkit: erl -eval {expr:?}: {e}"))
}

/// Like [`eval`] but returns errors, with an explicit deadline.
pub fn try_eval(expr: &str, timeout: Duration) -> Result<String, ErlError> {
    let body = expr.trim().trim_end_matches('.');
    // Halt explicitly on both paths: a failing -eval would otherwise leave a
    // -noshell node running forever. Status 3 (which erl itself does not use)
    // tells us the expression raised.
    let wrapped = format!(
        "try begin {body}\n end of _ -> erlang:halt(0) \
         catch C:R:S -> io:format(standard_error, \"~tp:~0tp~n~0tp~n\", [C, R, S]), \
         erlang:halt(3) end."
    );
    let mut cmd = Command::new(erl_path());
    cmd.arg("-noshell")
        .arg("-pa")
        .arg(beam_dir())
        .arg("-eval")
        .arg(wrapped);
    let done = run_with_timeout(&mut cmd, timeout)
        .unwrap_or_else(|e| panic!("testkit: cannot run {}: {e}", erl_path().display()));
    let stdout = String::from_utf8_lossy(&done.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&done.stderr).into_owned();
    match done.status {
        None => Err(ErlError::Timeout {
            after: timeout,
            stdout,
            stderr,
        }),
        Some(s) if s.success() => Ok(stdout),
        Some(s) if s.code() == Some(3) => Err(ErlError::Raised {
            message: stderr,
            stdout,
        }),
        Some(s) => Err(ErlError::Failed {
            status: s.to_string(),
            stdout,
            stderr,
        }),
    }
}

/// Compiles `.erl` files into `out_dir` with `erlc`. Each source is a file,
/// or a directory whose `*.erl` files are all compiled. Returns erlc's
/// output as the error on failure.
pub fn compile<P: AsRef<Path>>(sources: &[P], out_dir: &Path) -> Result<(), String> {
    let mut files = Vec::new();
    for s in sources {
        let s = s.as_ref();
        if s.is_dir() {
            let entries = std::fs::read_dir(s).map_err(|e| format!("{}: {e}", s.display()))?;
            let mut erls: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "erl"))
                .collect();
            erls.sort();
            files.extend(erls);
        } else {
            files.push(s.to_path_buf());
        }
    }
    if files.is_empty() {
        return Err("no .erl files to compile".into());
    }
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut cmd = Command::new(erlc_path());
    cmd.arg("-o").arg(out_dir).args(&files);
    let done = run_with_timeout(&mut cmd, Duration::from_secs(300))
        .map_err(|e| format!("cannot run {}: {e}", erlc_path().display()))?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    match done.status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("erlc failed ({s}):\n{output}")),
        None => Err(format!("erlc timed out:\n{output}")),
    }
}

/// Compiles one module from its source text into `dir` (a test's own build of a module:
/// the source file is written there, compiled, and removed, so `dir` holds only the .beam).
pub fn compile_source(dir: &Path, module: &str, src: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join(format!("{module}.erl"));
    std::fs::write(&file, src).map_err(|e| format!("{}: {e}", file.display()))?;
    let r = compile(&[&file], dir);
    let _ = std::fs::remove_file(&file);
    r
}

/// `dgt`, the helper module the policy and registry tests load on their nodes: registered
/// sinks that keep what they receive (`sink/1`, `wait/3`), calling a fun and catching what it
/// raises (`call/2`), wrapping a fun in a closure of this module (`wrap/1`), and fresh atoms
/// (`atoms/2`). Compile it with [`compile_source`].
pub const DGT: &str = r#"-module(dgt).
-export([sink/1, wait/3, call/2, wrap/1, atoms/2]).
%% A registered process keeping every message it receives, in order.
sink(Name) ->
    Pid = spawn(fun() -> loop([]) end),
    true = register(Name, Pid),
    ok.
loop(Acc) ->
    receive
        {'$dgt_get', From} -> From ! {'$dgt_got', lists:reverse(Acc)}, loop(Acc);
        Msg -> loop([Msg | Acc])
    end.
%% What the sink holds, once it holds at least N messages or after Ms milliseconds.
wait(Name, N, Ms) ->
    Name ! {'$dgt_get', self()},
    L = receive {'$dgt_got', Got} -> Got end,
    case length(L) >= N orelse Ms =< 0 of
        true -> L;
        false -> timer:sleep(20), wait(Name, N, Ms - 20)
    end.
call(F, X) -> try F(X) catch C:R -> {caught, C, R} end.
%% A closure of this (shared) module holding another fun as a free variable.
wrap(F) -> fun(X) -> {wrapped, F(X)} end.
%% Atoms nobody has used yet: Prefix_1 .. Prefix_N.
atoms(Prefix, N) -> [list_to_atom(Prefix ++ "_" ++ integer_to_list(I)) || I <- lists:seq(1, N)].
"#;

/// Directory holding the compiled testkit modules (`dg_epmd`, `dg_ctl`,
/// `dg_scenario`, `dg_gen`, `dg_util`), for `-pa`.
///
/// Compiled on first use into `$TMPDIR/distgate-testkit-beams-<hash>`, where
/// the hash covers the sources and the erlc binary, and then reused by every
/// later test process: erlc takes seconds, and a machine-wide cache keyed by
/// content cannot go stale. Concurrent first uses compile into private
/// staging dirs and race on an atomic rename; the loser uses the winner's.
pub fn beam_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(build_beam_dir)
}

fn build_beam_dir() -> PathBuf {
    let mut h = DefaultHasher::new(); // fixed keys: stable within one toolchain
    SOURCES.hash(&mut h);
    if let Ok(meta) = std::fs::metadata(erlc_path()) {
        meta.len().hash(&mut h);
        if let Ok(t) = meta.modified() {
            t.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                .hash(&mut h);
        }
    }
    let final_dir =
        std::env::temp_dir().join(format!("distgate-testkit-beams-{:016x}", h.finish()));
    if beams_complete(&final_dir) {
        return final_dir;
    }

    let staging = std::env::temp_dir().join(unique_name("distgate-testkit-staging"));
    let src = staging.join("src");
    let ebin = staging.join("ebin");
    std::fs::create_dir_all(&src)
        .unwrap_or_else(|e| panic!("testkit: cannot create {}: {e}", src.display()));
    for (name, text) in SOURCES {
        std::fs::write(src.join(name), text)
            .unwrap_or_else(|e| panic!("testkit: cannot write {name}: {e}"));
    }
    if let Err(e) = compile(&[&src], &ebin) {
        panic!("testkit: compiling the testkit's Erlang modules failed: {e}");
    }
    let chosen = match std::fs::rename(&ebin, &final_dir) {
        Ok(()) => final_dir,
        Err(_) if beams_complete(&final_dir) => final_dir, // another process won
        Err(_) => return ebin, // odd leftover in the way: use our private copy
    };
    let _ = std::fs::remove_dir_all(&staging);
    chosen
}

fn beams_complete(dir: &Path) -> bool {
    SOURCES
        .iter()
        .all(|(name, _)| dir.join(name.replace(".erl", ".beam")).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_are_clean() {
        let a = unique_name("a-b");
        let b = unique_name("a-b");
        assert_ne!(a, b);
        assert!(a.starts_with("a_b_"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    fn literals_escape() {
        assert_eq!(string_literal("a\"b\\"), "\"a\\\"b\\\\\"");
        assert_eq!(atom_literal("it's@h"), "'it\\'s@h'");
    }
}
