//! The module registry of one cluster: which module versions (MD5s) exist, and for each its
//! lambda table and exports.
//!
//! A local fun (NEW_FUN_EXT) names its module, the module's MD5 and the fun's index into the
//! module's lambda table; it is callable only on a node running that exact version. The policy
//! engine asks this registry whether the target cluster knows a version ([`Snapshot::knows`]),
//! what the lambda is ([`Snapshot::lambda`]), and whether an export exists
//! ([`Snapshot::exports`], [`Snapshot::exported_anywhere`]).
//!
//! Why snapshots: lookups happen on the forwarding path and must never wait for a refresh. The
//! registry holds an immutable [`Snapshot`] behind an [`ArcSwap`]; a refresh builds a complete
//! new snapshot off to the side and swaps the pointer. Readers call [`Registry::load`] (a few
//! atomic operations, no lock) and then do plain hash lookups on what they got. Refreshes are
//! serialised among themselves by a mutex that readers never touch.
//!
//! Sources ([`Source`]): directories of `.beam` files walked recursively, a cache file
//! written by an earlier run so a restart starts warm, and live nodes ([`live`]: distgate joins
//! a node as a hidden node, lists its loaded modules with their MD5 and fetches the object
//! code of versions it does not know yet). See `docs/registry.md`.

use crate::fasthash::FastMap;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use distgate_codec::beam::{self, Beam, BeamError};

pub mod cache;
pub mod cli;
pub mod live;
pub mod refresh;
pub mod scan;
pub mod set;

pub use set::RegistrySet;

/// A module MD5 (`module_info(md5)`, the `Uniq` of a NEW_FUN_EXT).
pub type Md5 = [u8; 16];

/// One entry of a module's lambda table (`FunT`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lambda {
    /// The generated function's name, e.g. `-f/1-fun-0-`. Shared by the lambdas of one module
    /// that name the same atom: a file's FunT entries (24 bytes each) may all name one long
    /// atom, and a copy each would make memory a multiple of the file, not a fraction.
    pub name: Arc<str>,
    /// Arity of the generated function: the fun's own arity plus `num_free`.
    pub arity: u32,
    /// The fun's index (NEW_FUN_EXT Index, `fun_info(F, new_index)`).
    pub index: u32,
    /// Number of free variables the fun carries.
    pub num_free: u32,
    /// The legacy uniq (NEW_FUN_EXT OldUniq).
    pub old_uniq: u32,
}

impl Lambda {
    /// The fun's own arity (what `fun_info(F, arity)` says): the table's arity minus free vars.
    pub fn fun_arity(&self) -> Option<u32> {
        self.arity.checked_sub(self.num_free)
    }
}

/// Arities 0..=255 as a bit set: an export lookup is a hash of the name and a bit test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Arities([u64; 4]);

impl Arities {
    fn insert(&mut self, a: u8) {
        self.0[(a >> 6) as usize] |= 1 << (a & 63);
    }
    fn contains(&self, a: u32) -> bool {
        a <= 255 && self.0[(a >> 6) as usize] & (1 << (a & 63)) != 0
    }
    fn union(&mut self, o: &Arities) {
        for (x, y) in self.0.iter_mut().zip(o.0) {
            *x |= y;
        }
    }
    fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|&a| self.contains(a as u32))
    }
    fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// One version of a module: its MD5, lambda table and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleVersion {
    pub module: Arc<str>,
    pub md5: Md5,
    /// Sorted by index.
    lambdas: Box<[Lambda]>,
    exports: FastMap<Box<str>, Arities>,
    export_count: usize,
    /// Where this version was first seen (a file path, or `cache FILE`), for `registry show`.
    pub origin: Box<str>,
}

impl ModuleVersion {
    /// A version from its parts; lambdas are sorted by index, duplicate exports merged.
    pub fn new(
        module: Arc<str>,
        md5: Md5,
        mut lambdas: Vec<Lambda>,
        exports: impl IntoIterator<Item = (Box<str>, u8)>,
        origin: Box<str>,
    ) -> ModuleVersion {
        lambdas.sort_by_key(|l| l.index);
        let mut map: FastMap<Box<str>, Arities> = FastMap::default();
        for (name, arity) in exports {
            map.entry(name).or_default().insert(arity);
        }
        let export_count = map.values().map(Arities::len).sum();
        ModuleVersion { module, md5, lambdas: lambdas.into(), exports: map, export_count, origin }
    }

    /// From a parsed BEAM file.
    pub fn from_beam(b: &Beam<'_>, origin: Box<str>) -> ModuleVersion {
        // Indices and arities were validated by Beam::parse; a missing atom cannot happen, and
        // an empty name would only make a lookup miss.
        let atom = |i: u32| -> Box<str> { b.atom(i).unwrap_or("").into() };
        // One name per atom (the FunT entries of a module name few distinct atoms), kept
        // while the table is read.
        let mut names: HashMap<u32, Arc<str>> = HashMap::new();
        let lambdas = b
            .lambdas()
            .map(|l| Lambda {
                name: names.entry(l.function).or_insert_with(|| Arc::from(b.atom(l.function).unwrap_or(""))).clone(),
                arity: l.arity,
                index: l.index,
                num_free: l.num_free,
                old_uniq: l.old_uniq,
            })
            .collect();
        let exports = b.exports().map(|e| (atom(e.function), e.arity.min(255) as u8));
        ModuleVersion::new(Arc::from(b.module()), b.md5(), lambdas, exports, origin)
    }

    /// The lambda table, sorted by index.
    pub fn lambdas(&self) -> &[Lambda] {
        &self.lambdas
    }

    /// The lambda with this index (NEW_FUN_EXT Index).
    pub fn lambda(&self, index: u32) -> Option<&Lambda> {
        // The compiler numbers lambdas 0..n in table order, so the index is the position; a
        // binary search covers any file where it is not.
        match self.lambdas.get(index as usize) {
            Some(l) if l.index == index => Some(l),
            _ => self.lambdas.binary_search_by_key(&index, |l| l.index).ok().map(|i| &self.lambdas[i]),
        }
    }

    /// Does this version export `fun/arity`?
    pub fn exports(&self, fun: &str, arity: u32) -> bool {
        self.exports.get(fun).is_some_and(|a| a.contains(arity))
    }

    /// Number of exported functions.
    pub fn export_count(&self) -> usize {
        self.export_count
    }

    /// Every export, sorted by name then arity.
    pub fn export_list(&self) -> Vec<(&str, u8)> {
        let mut v: Vec<(&str, u8)> =
            self.exports.iter().flat_map(|(n, a)| a.iter().map(move |x| (&**n, x))).collect();
        v.sort_unstable();
        v
    }
}

/// All known versions of one module.
#[derive(Debug, Clone, Default)]
pub struct ModuleEntry {
    /// In the order they were added.
    versions: Vec<ModuleVersion>,
    by_md5: FastMap<Md5, usize>,
    /// Union of every version's exports, for [`Snapshot::exported_anywhere`].
    any_exports: FastMap<Box<str>, Arities>,
}

impl ModuleEntry {
    pub fn versions(&self) -> &[ModuleVersion] {
        &self.versions
    }
}

/// An immutable view of a cluster's registry. Every lookup is a hash lookup (or two) on data
/// that never changes after the snapshot is built.
#[derive(Debug, Default)]
pub struct Snapshot {
    modules: FastMap<Arc<str>, ModuleEntry>,
    version_count: usize,
}

impl Snapshot {
    /// Every known version of `module` (empty when the module is unknown).
    pub fn lookup(&self, module: &str) -> &[ModuleVersion] {
        self.modules.get(module).map_or(&[], |e| &e.versions)
    }

    /// The version of `module` with this MD5, if the cluster has it.
    pub fn knows(&self, module: &str, md5: &Md5) -> Option<&ModuleVersion> {
        let e = self.modules.get(module)?;
        e.by_md5.get(md5).map(|&i| &e.versions[i])
    }

    /// Lambda `index` of version `md5` of `module`.
    pub fn lambda(&self, module: &str, md5: &Md5, index: u32) -> Option<&Lambda> {
        self.knows(module, md5)?.lambda(index)
    }

    /// Does version `md5` of `module` export `fun/arity`?
    pub fn exports(&self, module: &str, md5: &Md5, fun: &str, arity: u32) -> bool {
        self.knows(module, md5).is_some_and(|v| v.exports(fun, arity))
    }

    /// Does any known version of `module` export `fun/arity`?
    pub fn exported_anywhere(&self, module: &str, fun: &str, arity: u32) -> bool {
        self.modules
            .get(module)
            .and_then(|e| e.any_exports.get(fun))
            .is_some_and(|a| a.contains(arity))
    }

    pub fn module_count(&self) -> usize {
        self.modules.len()
    }

    pub fn version_count(&self) -> usize {
        self.version_count
    }

    /// Module names, sorted.
    pub fn module_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.modules.keys().map(|k| &**k).collect();
        v.sort_unstable();
        v
    }

    /// Every version, modules sorted by name, versions in the order they were added.
    pub fn all_versions(&self) -> impl Iterator<Item = &ModuleVersion> {
        self.module_names().into_iter().flat_map(move |m| self.lookup(m).iter())
    }
}

/// Collects versions from sources, then builds a [`Snapshot`]. A version (module, MD5) seen
/// twice is kept once, with the origin it was first seen at.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    modules: FastMap<Arc<str>, ModuleEntry>,
    version_count: usize,
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a version; false when that (module, MD5) was already known.
    pub fn add(&mut self, v: ModuleVersion) -> bool {
        let e = self.modules.entry(Arc::clone(&v.module)).or_default();
        if e.by_md5.contains_key(&v.md5) {
            return false;
        }
        for (name, a) in &v.exports {
            e.any_exports.entry(name.clone()).or_default().union(a);
        }
        e.by_md5.insert(v.md5, e.versions.len());
        e.versions.push(v);
        self.version_count += 1;
        true
    }

    /// Is this (module, MD5) already in?
    pub fn contains(&self, module: &str, md5: &Md5) -> bool {
        self.modules.get(module).is_some_and(|e| e.by_md5.contains_key(md5))
    }

    /// Adds every version of an existing snapshot (to keep versions a refresh no longer sees:
    /// nodes may still run old code, and funs made by it may still be in flight).
    pub fn add_snapshot(&mut self, s: &Snapshot) -> usize {
        s.all_versions().filter(|v| self.add((*v).clone())).count()
    }

    pub fn build(self) -> Snapshot {
        Snapshot { modules: self.modules, version_count: self.version_count }
    }
}

/// Where a registry learns module versions from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// A directory walked recursively for `*.beam` files (ebin dirs, a release's lib dir).
    Dir(PathBuf),
    /// A cache file written by an earlier run ([`cache::write`]).
    CacheFile(PathBuf),
    /// A running node, joined as the hidden node `own_name` (`name@host`) with the cluster's
    /// `cookie`: its loaded modules and their MD5s, and the object code of versions not known
    /// yet ([`live`]). `node` is `name@host`, or `name` alone for a node found through EPMD
    /// `NAMES` (whatever host it names itself with is accepted).
    Live { node: String, addr: live::LiveAddr, cookie: distgate_config::Cookie, own_name: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Dir(p) => write!(f, "dir {}", p.display()),
            Source::CacheFile(p) => write!(f, "cache {}", p.display()),
            Source::Live { node, addr, own_name, .. } => write!(f, "live {node} ({addr}) as {own_name}"),
        }
    }
}

/// Why one file (a `.beam`, a directory, a cache file) contributed nothing. Always names the
/// file; BEAM errors also name the chunk and offset.
#[derive(Debug)]
pub struct LoadError {
    pub path: PathBuf,
    pub kind: LoadErrorKind,
}

#[derive(Debug)]
pub enum LoadErrorKind {
    Io(std::io::Error),
    /// The file is larger than the configured maximum (not read).
    TooLarge { size: u64, max: u64 },
    Beam(BeamError),
    Cache(cache::CacheError),
    /// A live source (`path` is `live NODE`).
    Live(live::LiveError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        match &self.kind {
            LoadErrorKind::Io(e) => write!(f, "{e}"),
            LoadErrorKind::TooLarge { size, max } => write!(f, "{size} bytes, over the limit of {max}"),
            LoadErrorKind::Beam(e) => write!(f, "{e}"),
            LoadErrorKind::Cache(e) => write!(f, "registry cache ignored: {e}"),
            LoadErrorKind::Live(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    pub(crate) fn new(path: &Path, kind: LoadErrorKind) -> Self {
        LoadError { path: path.to_path_buf(), kind }
    }
}

/// Bounds for reading sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `.beam` or cache file read (bytes on disk).
    pub max_file: u64,
    /// Largest inflated image of a gzip-compressed `.beam`.
    pub max_image: usize,
    /// Deepest directory nesting walked below a source directory.
    pub max_depth: usize,
    /// Timeouts and sizes for live sources.
    pub live: live::LiveLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_file: 256 << 20, max_image: beam::DEFAULT_MAX_IMAGE, max_depth: 64, live: live::LiveLimits::default() }
    }
}

/// What a load did: files read, versions added, and every file that failed (with why).
#[derive(Debug, Default)]
pub struct LoadReport {
    pub files: usize,
    pub added: usize,
    pub errors: Vec<LoadError>,
}

impl LoadReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Reads `sources` into `builder`. A failing file is reported and skipped; it never stops the
/// load (a corrupt cache file is reported and ignored; an unreachable node is reported).
pub fn load_sources(builder: &mut SnapshotBuilder, sources: &[Source], limits: &Limits) -> LoadReport {
    load_sources_known(builder, sources, limits, None)
}

/// [`load_sources`], where live sources take the versions `known` already has from it
/// instead of fetching their object code again (a version is immutable: same MD5, same
/// tables).
pub fn load_sources_known(builder: &mut SnapshotBuilder, sources: &[Source], limits: &Limits, known: Option<&Snapshot>) -> LoadReport {
    let mut report = LoadReport::default();
    for s in sources {
        match s {
            Source::Dir(d) => scan::load_dir(builder, d, limits, &mut report),
            Source::CacheFile(p) => match cache::read_file(p, limits.max_file) {
                Ok(versions) => {
                    report.files += 1;
                    for v in versions {
                        report.added += builder.add(v) as usize;
                    }
                }
                Err(e) => report.errors.push(e),
            },
            Source::Live { node, addr, cookie, own_name } => {
                live::load(builder, known, node, addr, cookie, own_name, limits, &mut report)
            }
        }
    }
    report
}

/// One cluster's registry: the current snapshot, swapped whole on refresh.
#[derive(Debug)]
pub struct Registry {
    cluster: Box<str>,
    current: ArcSwap<Snapshot>,
    /// Serialises refreshes (so two never build from the same base and lose versions); readers
    /// never take it.
    refreshing: Mutex<()>,
    /// Refreshes done, and errors they reported (for metrics).
    refreshes: AtomicU64,
    refresh_errors: AtomicU64,
    /// Snapshots stored: bumped after each store, so a holder of a snapshot can tell with one
    /// plain load whether it is still the current one ([`Registry::stores`]).
    stores: AtomicU64,
    /// On-demand refreshes from the forwarding path ([`Registry::want_refresh`]).
    pub(crate) demand: refresh::Demand,
}

impl Registry {
    /// An empty registry for `cluster`.
    pub fn new(cluster: &str) -> Registry {
        Registry {
            cluster: cluster.into(),
            current: ArcSwap::from_pointee(Snapshot::default()),
            refreshing: Mutex::new(()),
            refreshes: AtomicU64::new(0),
            refresh_errors: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            demand: refresh::Demand::new(),
        }
    }

    /// Asks this registry's refresher (if one runs, [`refresh::spawn`]) for a refresh, unless
    /// one was asked for less than the demand gap ago ([`refresh::DEMAND_GAP`]). For the
    /// forwarding path, when it meets a fun whose module version this registry does not know:
    /// a few atomic operations, no lock, no allocation. True when the refresher was woken.
    pub fn want_refresh(&self, now: Instant) -> bool {
        self.demand.want(now)
    }

    /// The least time between two refreshes [`Registry::want_refresh`] asks for.
    pub fn set_demand_gap(&self, gap: Duration) {
        self.demand.set_gap(gap);
    }

    /// Refreshes done (every [`Registry::refresh`] and [`Registry::reload`]) and the errors
    /// they reported, since the registry was made.
    pub fn refresh_counts(&self) -> (u64, u64) {
        (self.refreshes.load(Ordering::Relaxed), self.refresh_errors.load(Ordering::Relaxed))
    }

    /// Counts errors met outside a refresh's sources (finding a live cluster's nodes).
    pub(crate) fn count_errors(&self, n: usize) {
        self.refresh_errors.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The current snapshot, for the forwarding path: lock-free, and the snapshot it returns
    /// stays valid (and unchanged) for as long as the guard is held, whatever refreshes do.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an `Arc`, for holders that keep it longer.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot.
    pub fn store(&self, s: Snapshot) {
        self.current.store(Arc::new(s));
        // Release: whoever sees the new count loads the snapshot stored above.
        self.stores.fetch_add(1, Ordering::Release);
    }

    /// Snapshots stored so far. Unchanged since a snapshot was loaded: that snapshot is still
    /// the current one.
    pub fn stores(&self) -> u64 {
        self.stores.load(Ordering::Acquire)
    }

    /// Reads `sources` into a new snapshot that also keeps every version the current one
    /// knows, and swaps it in. Readers see the old snapshot until the swap, the new one after.
    /// The report's `added` counts versions that are new to the registry.
    pub fn refresh(&self, sources: &[Source], limits: &Limits) -> LoadReport {
        self.rebuild(sources, limits, true)
    }

    /// Like [`Registry::refresh`], but the new snapshot holds only what `sources` have now.
    pub fn reload(&self, sources: &[Source], limits: &Limits) -> LoadReport {
        self.rebuild(sources, limits, false)
    }

    fn rebuild(&self, sources: &[Source], limits: &Limits, keep: bool) -> LoadReport {
        // A poisoned lock only means an earlier refresh panicked before publishing; nothing
        // it guarded is half-written, so carrying on is safe.
        let _one_at_a_time = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let mut b = SnapshotBuilder::new();
        let current = self.current.load_full();
        if keep {
            b.add_snapshot(&current);
        }
        let report = load_sources_known(&mut b, sources, limits, Some(&current));
        // Counted before the swap: whoever sees the new snapshot sees its refresh counted.
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        self.count_errors(report.errors.len());
        self.store(b.build());
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distgate_codec::beam::Beam;

    /// A module whose FunT has `n` entries, every one naming the same 255-byte atom.
    fn many_lambdas_of_one_name(n: u32) -> Vec<u8> {
        let w = |ws: &[u32]| -> Vec<u8> { ws.iter().flat_map(|x| x.to_be_bytes()).collect() };
        let mut atoms = w(&[2]);
        atoms.extend_from_slice(&[1, b'm', 255]);
        atoms.extend_from_slice(&[b'x'; 255]);
        let mut funt = w(&[n]);
        for i in 0..n {
            funt.extend_from_slice(&w(&[2, 1, 1, i, 0, 0]));
        }
        distgate_codec::beam::image_of_chunks(&[(b"AtU8", atoms), (b"Code", w(&[16])), (b"StrT", vec![]), (b"ImpT", w(&[0])), (b"ExpT", w(&[0])), (b"FunT", funt)])
    }

    /// A FunT entry is 24 bytes of file and may name an atom of 255 bytes: the lambdas share
    /// one copy of the name, so a version costs a fraction of its file, not ten times it.
    #[test]
    fn lambdas_naming_one_atom_share_its_text() {
        let image = many_lambdas_of_one_name(10_000);
        let b = Beam::parse(&image).unwrap_or_else(|e| panic!("{e}"));
        let v = ModuleVersion::from_beam(&b, "test".into());
        assert_eq!(v.lambdas().len(), 10_000);
        let first = &v.lambdas()[0].name;
        assert_eq!(first.len(), 255);
        assert!(v.lambdas().iter().all(|l| Arc::ptr_eq(&l.name, first)), "one copy of the name");
        assert_eq!(v.lambda(9_999).map(|l| l.index), Some(9_999));
    }
}
