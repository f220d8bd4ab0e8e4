//! The registry cache file: every known version written out so a restart starts warm.
//!
//! Format (all integers big-endian). Version 1 holds one registry (`registry show
//! --write-cache`); version 2 one section per cluster (the runtime's `[registry] cache_file`):
//!
//! ```text
//! magic    8 bytes  "DGREGCF\n"
//! version  u32      1                          | 2
//! body              entries                    | u32 count, then per cluster:
//!                                              |   name     u16 length + UTF-8
//!                                              |   sources  16 bytes (what the cluster's
//!                                              |            registry was configured with)
//!                                              |   entries
//! checksum 16 bytes  MD5 of everything before it
//!
//! entries: u32 count, then per version:
//!   module   u16 length + UTF-8
//!   md5      16 bytes
//!   origin   u16 length + UTF-8
//!   exports  u32 count, each: name (u16 length + UTF-8), arity u8
//!   lambdas  u32 count, each: name (u16 length + UTF-8), arity u32, index u32,
//!                             num_free u32, old_uniq u32
//! ```
//!
//! [`decode`] reads either version (a version 2 file as all its sections together);
//! [`decode_clusters`] reads either into sections (version 1 as one unnamed section).
//!
//! Reading is all-or-nothing: a wrong magic, another version, a checksum that does not match
//! (a torn or edited file), or any count or length that does not fit the bytes left is a
//! [`CacheError`], and the caller ignores the file (it is only a warm start; the directories
//! are scanned anyway). Counts are checked against the bytes left before anything is reserved.
//! Writing goes to a temporary file renamed over the old one, so a crash mid-write leaves the
//! previous cache intact.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use md5::{Digest, Md5};

use super::{Lambda, LoadError, LoadErrorKind, ModuleVersion, Snapshot};

pub const MAGIC: &[u8; 8] = b"DGREGCF\n";
pub const VERSION: u32 = 1;
/// The format with one section per cluster.
pub const VERSION_CLUSTERS: u32 = 2;
const CHECKSUM: usize = 16;
const HEADER: usize = 8 + 4 + 4;

/// Why a cache file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheError {
    pub offset: usize,
    pub kind: CacheErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheErrorKind {
    /// Not a distgate registry cache at all.
    BadMagic,
    /// Written by a build with another format version.
    UnsupportedVersion(u32),
    /// Shorter than a header and checksum.
    TooShort,
    /// The checksum does not match: corrupt or truncated.
    Checksum,
    /// A field runs past the end of the data.
    Truncated { what: &'static str },
    /// A declared count cannot fit in the bytes left.
    BadCount { what: &'static str, count: u64 },
    /// A name that is not UTF-8.
    BadText { what: &'static str },
    /// Bytes left over after the last entry.
    Trailing { extra: usize },
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CacheErrorKind::*;
        write!(f, "at byte {}: ", self.offset)?;
        match &self.kind {
            BadMagic => write!(f, "not a distgate registry cache (bad magic)"),
            UnsupportedVersion(v) => write!(f, "cache format version {v}, this build reads {VERSION} and {VERSION_CLUSTERS}"),
            TooShort => write!(f, "too short to be a cache file"),
            Checksum => write!(f, "checksum mismatch (corrupt or truncated)"),
            Truncated { what } => write!(f, "{what} runs past the end"),
            BadCount { what, count } => write!(f, "{what} count {count} does not fit the bytes left"),
            BadText { what } => write!(f, "{what} is not UTF-8"),
            Trailing { extra } => write!(f, "{extra} bytes after the last entry"),
        }
    }
}

impl std::error::Error for CacheError {}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    // Atom texts are at most 1020 bytes; an origin path longer than 64 KiB is cut at a char
    // boundary (it is informational only).
    let mut n = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..n]);
}

/// The cache file's bytes (format 1) for every version of `snapshot`.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    put_entries(&mut out, snapshot);
    seal(out)
}

/// One cluster's part of a format 2 cache.
#[derive(Debug, Clone, Copy)]
pub struct SectionRef<'a> {
    pub cluster: &'a str,
    /// A fingerprint of the sources the registry was configured with: a section whose
    /// fingerprint differs from the cluster's configuration now is not used.
    pub sources: [u8; 16],
    pub snapshot: &'a Snapshot,
}

/// One cluster's part of a cache, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub cluster: String,
    pub sources: [u8; 16],
    pub versions: Vec<ModuleVersion>,
}

/// The cache file's bytes (format 2) for these clusters.
pub fn encode_clusters(sections: &[SectionRef<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION_CLUSTERS.to_be_bytes());
    out.extend_from_slice(&(sections.len() as u32).to_be_bytes());
    for s in sections {
        put_str16(&mut out, s.cluster);
        out.extend_from_slice(&s.sources);
        put_entries(&mut out, s.snapshot);
    }
    seal(out)
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let sum: [u8; 16] = Md5::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

fn put_entries(out: &mut Vec<u8>, snapshot: &Snapshot) {
    out.extend_from_slice(&(snapshot.version_count() as u32).to_be_bytes());
    for v in snapshot.all_versions() {
        put_str16(out, &v.module);
        out.extend_from_slice(&v.md5);
        put_str16(out, &v.origin);
        let exports = v.export_list();
        out.extend_from_slice(&(exports.len() as u32).to_be_bytes());
        for (name, arity) in exports {
            put_str16(out, name);
            out.push(arity);
        }
        out.extend_from_slice(&(v.lambdas().len() as u32).to_be_bytes());
        for l in v.lambdas() {
            put_str16(out, &l.name);
            for x in [l.arity, l.index, l.num_free, l.old_uniq] {
                out.extend_from_slice(&x.to_be_bytes());
            }
        }
    }
}

/// Writes the cache (format 1) for `snapshot` to `path`, atomically (temporary file, then
/// rename).
pub fn write(snapshot: &Snapshot, path: &Path) -> std::io::Result<()> {
    write_bytes(&encode(snapshot), path)
}

/// Writes a format 2 cache for these clusters to `path`, atomically.
pub fn write_clusters(sections: &[SectionRef<'_>], path: &Path) -> std::io::Result<()> {
    write_bytes(&encode_clusters(sections), path)
}

/// `bytes` to `path` through `PATH.tmp.PID`, synced, then renamed over `PATH`: a crash
/// mid-write leaves the previous file intact. Writers within one process must not overlap.
fn write_bytes(bytes: &[u8], path: &Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads and decodes a cache file (at most `max` bytes): every version it holds.
pub fn read_file(path: &Path, max: u64) -> Result<Vec<ModuleVersion>, LoadError> {
    let bytes = super::scan::read_limited(path, max)?;
    decode(&bytes).map_err(|e| LoadError::new(path, LoadErrorKind::Cache(e)))
}

/// Reads and decodes a cache file (at most `max` bytes) into its sections.
pub fn read_clusters(path: &Path, max: u64) -> Result<Vec<Section>, LoadError> {
    let bytes = super::scan::read_limited(path, max)?;
    decode_clusters(&bytes).map_err(|e| LoadError::new(path, LoadErrorKind::Cache(e)))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, kind: CacheErrorKind) -> CacheError {
        CacheError { offset: self.pos, kind }
    }
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CacheError> {
        if self.buf.len() - self.pos < n {
            return Err(self.err(CacheErrorKind::Truncated { what }));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, CacheError> {
        Ok(self.bytes(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, CacheError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, CacheError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn text(&mut self, what: &'static str) -> Result<&'a str, CacheError> {
        let n = self.u16(what)? as usize;
        let at = self.pos;
        let b = self.bytes(n, what)?;
        core::str::from_utf8(b).map_err(|_| CacheError { offset: at, kind: CacheErrorKind::BadText { what } })
    }
    /// A count of entries at least `min_size` bytes each, checked against the bytes left.
    fn count(&mut self, what: &'static str, min_size: usize) -> Result<usize, CacheError> {
        let at = self.pos;
        let n = self.u32(what)? as u64;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(CacheError { offset: at, kind: CacheErrorKind::BadCount { what, count: n } });
        }
        Ok(n as usize)
    }
}

/// Decodes cache bytes of either format (checksum first, then every field checked): every
/// version, sections one after the other.
pub fn decode(bytes: &[u8]) -> Result<Vec<ModuleVersion>, CacheError> {
    Ok(decode_clusters(bytes)?.into_iter().flat_map(|s| s.versions).collect())
}

/// Decodes cache bytes into sections; a format 1 cache is one section with an empty name and
/// a zero fingerprint.
pub fn decode_clusters(bytes: &[u8]) -> Result<Vec<Section>, CacheError> {
    let err = |offset, kind| CacheError { offset, kind };
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(err(0, CacheErrorKind::BadMagic));
    }
    if bytes.len() < HEADER + CHECKSUM {
        return Err(err(bytes.len(), CacheErrorKind::TooShort));
    }
    let version = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION && version != VERSION_CLUSTERS {
        return Err(err(8, CacheErrorKind::UnsupportedVersion(version)));
    }
    let body_end = bytes.len() - CHECKSUM;
    let sum: [u8; 16] = Md5::digest(&bytes[..body_end]).into();
    if sum[..] != bytes[body_end..] {
        return Err(err(body_end, CacheErrorKind::Checksum));
    }
    let mut r = Reader { buf: &bytes[..body_end], pos: 12 };
    let mut sections = Vec::new();
    if version == VERSION {
        let versions = entries(&mut r)?;
        sections.push(Section { cluster: String::new(), sources: [0; 16], versions });
    } else {
        // Smallest section: an empty name, a fingerprint and no entries.
        let n = r.count("cluster", 2 + 16 + 4)?;
        for _ in 0..n {
            let cluster = r.text("cluster name")?.to_string();
            let mut sources = [0u8; 16];
            sources.copy_from_slice(r.bytes(16, "sources")?);
            let versions = entries(&mut r)?;
            sections.push(Section { cluster, sources, versions });
        }
    }
    if r.pos != body_end {
        return Err(err(r.pos, CacheErrorKind::Trailing { extra: body_end - r.pos }));
    }
    Ok(sections)
}

fn entries(r: &mut Reader<'_>) -> Result<Vec<ModuleVersion>, CacheError> {
    // Smallest entry: two empty strings, an md5 and two zero counts.
    let n = r.count("entry", 2 + 16 + 2 + 4 + 4)?;
    let mut versions = Vec::with_capacity(n);
    for _ in 0..n {
        let module: Arc<str> = Arc::from(r.text("module name")?);
        let mut md5 = [0u8; 16];
        md5.copy_from_slice(r.bytes(16, "md5")?);
        let origin: Box<str> = r.text("origin")?.into();
        let ne = r.count("export", 2 + 1)?;
        let mut exports = Vec::with_capacity(ne);
        for _ in 0..ne {
            let name: Box<str> = r.text("export name")?.into();
            exports.push((name, r.u8("export arity")?));
        }
        let nl = r.count("lambda", 2 + 16)?;
        let mut lambdas = Vec::with_capacity(nl);
        for _ in 0..nl {
            let name: Arc<str> = r.text("lambda name")?.into();
            lambdas.push(Lambda {
                name,
                arity: r.u32("lambda arity")?,
                index: r.u32("lambda index")?,
                num_free: r.u32("lambda num_free")?,
                old_uniq: r.u32("lambda old_uniq")?,
            });
        }
        versions.push(ModuleVersion::new(module, md5, lambdas, exports, origin));
    }
    Ok(versions)
}
