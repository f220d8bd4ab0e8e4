//! Directory sources: `.beam` files found by an iterative walk and read under size limits.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use distgate_codec::beam::{self, Beam};

use super::{Limits, LoadError, LoadErrorKind, LoadReport, ModuleVersion, SnapshotBuilder};

/// Every `*.beam` file below `dir`, sorted by path. Iterative (an explicit stack, so a deep tree
/// cannot overflow ours), at most `max_depth` levels down; symlinked directories are followed
/// once each (a link cycle is visited only once). Unreadable directories are reported in
/// `errors` and skipped.
pub fn beam_files(dir: &Path, max_depth: usize, errors: &mut Vec<LoadError>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        match std::fs::canonicalize(&d) {
            Ok(real) => {
                if !seen.insert(real) {
                    continue;
                }
            }
            Err(e) => {
                errors.push(LoadError::new(&d, LoadErrorKind::Io(e)));
                continue;
            }
        }
        let entries = match std::fs::read_dir(&d) {
            Ok(it) => it,
            Err(e) => {
                errors.push(LoadError::new(&d, LoadErrorKind::Io(e)));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    errors.push(LoadError::new(&d, LoadErrorKind::Io(e)));
                    continue;
                }
            };
            let path = entry.path();
            // file_type does not follow links; metadata does (a dangling link is skipped).
            let is_dir = match entry.file_type() {
                Ok(t) if t.is_symlink() => std::fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false),
                Ok(t) => t.is_dir(),
                Err(_) => false,
            };
            if is_dir {
                if depth < max_depth {
                    stack.push((path, depth + 1));
                }
            } else if path.extension().is_some_and(|x| x == "beam") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Reads a file of at most `max` bytes (checked before reading, and again while reading in
/// case it grows).
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, LoadError> {
    let err = |k| LoadError::new(path, k);
    let f = std::fs::File::open(path).map_err(|e| err(LoadErrorKind::Io(e)))?;
    let size = f.metadata().map_err(|e| err(LoadErrorKind::Io(e)))?.len();
    if size > max {
        return Err(err(LoadErrorKind::TooLarge { size, max }));
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(max + 1).read_to_end(&mut buf).map_err(|e| err(LoadErrorKind::Io(e)))?;
    if buf.len() as u64 > max {
        return Err(err(LoadErrorKind::TooLarge { size: buf.len() as u64, max }));
    }
    Ok(buf)
}

/// Reads and parses one `.beam` file into a version (origin: its path).
pub fn read_beam(path: &Path, limits: &Limits) -> Result<ModuleVersion, LoadError> {
    let bytes = read_limited(path, limits.max_file)?;
    let mut scratch = Vec::new();
    let b = beam::image(&bytes, &mut scratch, limits.max_image)
        .and_then(Beam::parse)
        .map_err(|e| LoadError::new(path, LoadErrorKind::Beam(e)))?;
    Ok(ModuleVersion::from_beam(&b, path.display().to_string().into()))
}

/// Reads a file's module name and MD5 (for `registry md5`).
pub fn read_md5(path: &Path, limits: &Limits) -> Result<(String, [u8; 16]), LoadError> {
    let bytes = read_limited(path, limits.max_file)?;
    beam::module_md5(&bytes, limits.max_image).map_err(|e| LoadError::new(path, LoadErrorKind::Beam(e)))
}

/// `f` over `items` on up to one thread per core, results in input order. Reading and hashing
/// a few thousand files is I/O and MD5 bound and splits evenly.
pub fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len()).min(16);
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(item)));
                    }
                    out
                })
            })
            .collect();
        // A worker can only stop by panicking inside `f`; re-raise it here rather than lose
        // results silently.
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let mut all: Vec<(usize, R)> = parts.iter_mut().flat_map(std::mem::take).collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// Adds every `.beam` below `dir` to `builder`, in path order (so origins are deterministic).
pub fn load_dir(builder: &mut SnapshotBuilder, dir: &Path, limits: &Limits, report: &mut LoadReport) {
    let files = beam_files(dir, limits.max_depth, &mut report.errors);
    for r in parallel_map(&files, |p| read_beam(p, limits)) {
        report.files += 1;
        match r {
            Ok(v) => report.added += builder.add(v) as usize,
            Err(e) => report.errors.push(e),
        }
    }
}
