//! BEAM object files: the IFF container, the tables distgate needs, and the module MD5.
//!
//! A local fun is callable on a node only if the node runs the module version (MD5) the fun was
//! made by, so the proxy needs, per module version, its MD5 exactly as the runtime computes it
//! and its lambda table. This module reads them from `.beam` bytes. Pure: functions over `&[u8]`,
//! no I/O; tables are borrowed views decoded on demand.
//!
//! Layout (big-endian throughout):
//! - `FOR1` FormSize:32 `BEAM`, then chunks `Id:4 Size:32 Data` each padded to 4 bytes. Like the
//!   runtime's loader (`beam_file.c`), only the bytes FormSize declares are the form; anything
//!   after it is ignored, and a chunk whose padded size runs past the form is an error.
//! - `AtU8` (UTF-8) or the pre-OTP-21 `Atom` (Latin-1): Count:32, then per atom Len:8 and the
//!   text. OTP 28's compiler writes a negative Count (`-N`) and each Len in the compact term
//!   encoding (tag `u`), which allows atom texts longer than 255 bytes. Atom 1 is the module.
//! - `ExpT`/`LocT`: Count:32, entries Function(atom index):32 Arity:32 Label:32.
//! - `ImpT`: Count:32, entries Module(atom):32 Function(atom):32 Arity:32.
//! - `FunT`: Count:32, entries Function(atom):32 Arity:32 Label:32 Index:32 NumFree:32
//!   OldUniq:32. Arity includes the free variables.
//!
//! The MD5 is `beam_lib:md5/1` = `Module:module_info(md5)`: MD5 over the data (no chunk headers,
//! no padding) of `Atom`, `AtU8`, `Code`, `StrT`, `ImpT`, `ExpT`, `FunT` with every OldUniq
//! replaced by four zero bytes, `LitT` exactly as stored (still zlib-compressed) and `Meta`, in
//! that order, absent optional chunks skipped. See `docs/registry.md` for why this matches.
//!
//! Hostile input: every declared size and count is checked against the bytes that remain before
//! anything is reserved, nothing recurses, and gzip-compressed files inflate under a caller cap
//! (and never beyond what deflate's maximum ratio allows for the input). Nothing is allocated per
//! atom or table entry: the atom table stays the chunk's bytes, found through an index of one
//! offset per [`ATOM_STRIDE`] atoms (at most a quarter of the chunk's size, since every atom
//! takes at least its length byte, whatever the count says; a Latin-1 table with text beyond
//! ASCII is re-encoded to UTF-8 once, at most twice its size). Errors name the chunk and the byte
//! offset.

use core::fmt;
use std::borrow::Cow;

use md5::{Digest, Md5};

/// A chunk id, e.g. `*b"FunT"`.
pub type ChunkId = [u8; 4];

/// The chunks the MD5 covers, in hashing order (beam_lib's `md5_chunks/0`).
pub const MD5_CHUNKS: [ChunkId; 9] =
    [*b"Atom", *b"AtU8", *b"Code", *b"StrT", *b"ImpT", *b"ExpT", *b"FunT", *b"LitT", *b"Meta"];

/// Chunks every BEAM file must have besides an atom table (beam_lib's `mandatory_chunks/0`).
pub const MANDATORY_CHUNKS: [ChunkId; 4] = [*b"Code", *b"ExpT", *b"ImpT", *b"StrT"];

/// Default cap on the size of an inflated gzip-compressed `.beam` (OTP's largest is ~2 MB).
pub const DEFAULT_MAX_IMAGE: usize = 64 << 20;

/// The runtime's limit on atom length, in characters.
pub const MAX_ATOM_CHARS: usize = 255;

/// The runtime's limit on function arity (`MAX_ARG`).
pub const MAX_ARITY: u32 = 255;

/// The loader's limit on atoms per module: `beam_file.c` refuses a count whose table of words
/// would not fit in 1 GiB (`CHECK_ITEM_COUNT(count, 1, sizeof(Eterm))`, count < 2^27). Empty
/// atoms are legal (`''`), any number of times.
pub const MAX_ATOMS: usize = (1 << 27) - 1;

/// Atoms per entry of the atom table's index: [`Beam::atom`] reaches an atom from the nearest
/// indexed one by skipping at most `ATOM_STRIDE - 1` length prefixes. The index costs one word
/// per `ATOM_STRIDE` atoms: at most a quarter of the chunk's bytes.
pub const ATOM_STRIDE: usize = 32;

/// Where and why a BEAM file could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeamError {
    /// The chunk concerned (the one being read, or the one missing or duplicated).
    pub chunk: Option<ChunkId>,
    /// Byte offset: in the IFF image (the inflated bytes for a gzip file), or in the gzip
    /// stream for [`BeamErrorKind::Gzip`] and friends.
    pub offset: usize,
    pub kind: BeamErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeamErrorKind {
    /// Neither `FOR1 … BEAM` nor a gzip stream.
    NotBeam,
    /// The input ends `need` bytes early.
    Truncated { need: u64 },
    /// `FOR1`'s size declares more bytes than the file holds (or fewer than the `BEAM` id).
    FormSize { declared: u32, available: usize },
    /// A chunk's size (padded to 4) runs past the end of the form.
    ChunkPastEnd { size: u32, available: usize },
    /// A chunk that decides the module's identity occurs twice (the runtime and beam_lib would
    /// disagree on which one counts, so the file is refused).
    Duplicate { first_at: usize },
    /// A chunk every BEAM file has is missing.
    Missing,
    /// Both an `Atom` and an `AtU8` table (beam_lib would hash both, the runtime one).
    TwoAtomTables,
    /// A table's declared entry count does not fit its chunk's size (or, for atoms, is over
    /// [`MAX_ATOMS`]).
    BadCount { count: i64, size: usize },
    /// An atom index outside the atom table (1-based).
    BadAtomIndex { index: u32, atoms: usize },
    /// An arity over 255.
    BadArity(u32),
    /// A compact-encoded atom length that is malformed or does not fit.
    BadAtomLength,
    /// `AtU8` text that is not UTF-8.
    InvalidUtf8Atom,
    /// An atom of more than 255 characters.
    AtomTooLong { chars: usize },
    /// Bytes after the last entry of a table.
    Trailing { extra: usize },
    /// A malformed gzip wrapper or deflate stream.
    Gzip(&'static str),
    /// The gzip stream inflates to more than the cap.
    InflateTooLarge { cap: usize },
}

pub type Result<T> = core::result::Result<T, BeamError>;

impl BeamError {
    fn new(chunk: Option<ChunkId>, offset: usize, kind: BeamErrorKind) -> Self {
        BeamError { chunk, offset, kind }
    }
    fn gzip(offset: usize, why: &'static str) -> Self {
        BeamError::new(None, offset, BeamErrorKind::Gzip(why))
    }
}

/// Displays a chunk id as text, escaping anything that is not printable ASCII.
pub struct IdDisplay<'a>(pub &'a ChunkId);

impl fmt::Display for IdDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for BeamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use BeamErrorKind::*;
        match &self.chunk {
            Some(id) => write!(f, "chunk \"{}\" at byte {}: ", IdDisplay(id), self.offset)?,
            None => write!(f, "at byte {}: ", self.offset)?,
        }
        match self.kind {
            NotBeam => write!(f, "not a BEAM file (no FOR1…BEAM header and not gzip)"),
            Truncated { need } => write!(f, "file ends early ({need} more bytes needed)"),
            FormSize { declared, available } => write!(
                f,
                "file ends early: FOR1 declares a form of {declared} bytes, {available} follow its header"
            ),
            ChunkPastEnd { size, available } => write!(
                f,
                "chunk size {size} (padded to 4) runs past the end of the form ({available} bytes left)"
            ),
            Duplicate { first_at } => write!(f, "chunk occurs twice (first at byte {first_at})"),
            Missing => write!(f, "required chunk is missing"),
            TwoAtomTables => write!(f, "both an \"Atom\" and an \"AtU8\" atom table"),
            BadCount { count, size } => {
                write!(f, "declares {count} entries, which does not fit the chunk's {size} bytes")
            }
            BadAtomIndex { index, atoms } => {
                write!(f, "atom index {index} outside the atom table (1..={atoms})")
            }
            BadArity(a) => write!(f, "arity {a} (the maximum is {MAX_ARITY})"),
            BadAtomLength => write!(f, "malformed compact-encoded atom length"),
            InvalidUtf8Atom => write!(f, "atom text is not valid UTF-8"),
            AtomTooLong { chars } => write!(f, "atom of {chars} characters (max {MAX_ATOM_CHARS})"),
            Trailing { extra } => write!(f, "{extra} bytes after the last table entry"),
            Gzip(why) => write!(f, "gzip: {why}"),
            InflateTooLarge { cap } => write!(f, "gzip: inflates to more than the cap of {cap} bytes"),
        }
    }
}

impl std::error::Error for BeamError {}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    // Callers check bounds first; indexing keeps this panic-free only because they do.
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

// ---------------------------------------------------------------------------------------------
// gzip

/// True when `file` starts like a gzip stream (`1f 8b`), as compressed `.beam` files do.
pub fn is_gzip(file: &[u8]) -> bool {
    file.len() >= 2 && file[0] == 0x1f && file[1] == 0x8b
}

/// The IFF image of a `.beam` file: `file` itself, or for a gzip-compressed file its inflated
/// contents in `scratch` (at most `max_image` bytes).
pub fn image<'a>(file: &'a [u8], scratch: &'a mut Vec<u8>, max_image: usize) -> Result<&'a [u8]> {
    if is_gzip(file) {
        gunzip(file, max_image, scratch)?;
        Ok(&scratch[..])
    } else {
        Ok(file)
    }
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

/// Deflate never expands more than this (1032:1); bounds what honest input can produce.
const MAX_DEFLATE_RATIO: usize = 1032;

/// Inflate a one-member gzip stream (RFC 1952) into `out`, at most `cap` bytes. The header's
/// optional fields are skipped (its CRC checked when present), the deflate stream must end
/// exactly at the 8-byte trailer, and the trailer's CRC-32 and size must match.
pub fn gunzip(file: &[u8], cap: usize, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    let need = |at: usize, n: usize| -> Result<()> {
        if file.len() < at + n {
            Err(BeamError::gzip(file.len(), "stream ends early"))
        } else {
            Ok(())
        }
    };
    need(0, 10)?;
    if !is_gzip(file) {
        return Err(BeamError::gzip(0, "no gzip magic"));
    }
    if file[2] != 8 {
        return Err(BeamError::gzip(2, "compression method is not deflate"));
    }
    let flags = file[3];
    if flags & 0xe0 != 0 {
        return Err(BeamError::gzip(3, "reserved header flags set"));
    }
    let mut pos = 10;
    if flags & FEXTRA != 0 {
        need(pos, 2)?;
        let xlen = u16::from_le_bytes([file[pos], file[pos + 1]]) as usize;
        need(pos + 2, xlen)?;
        pos += 2 + xlen;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match file[pos..].iter().position(|&b| b == 0) {
                Some(n) => pos += n + 1,
                None => return Err(BeamError::gzip(pos, "unterminated name or comment in header")),
            }
        }
    }
    if flags & FHCRC != 0 {
        need(pos, 2)?;
        let stored = u16::from_le_bytes([file[pos], file[pos + 1]]);
        if crc32(&file[..pos]) as u16 != stored {
            return Err(BeamError::gzip(pos, "header checksum mismatch"));
        }
        pos += 2;
    }
    need(pos, 8)?;
    let trailer = file.len() - 8;
    let body = &file[pos..trailer];
    let crc = u32::from_le_bytes([file[trailer], file[trailer + 1], file[trailer + 2], file[trailer + 3]]);
    let isize = u32::from_le_bytes([file[trailer + 4], file[trailer + 5], file[trailer + 6], file[trailer + 7]]);
    if isize as usize > cap {
        return Err(BeamError::new(None, trailer + 4, BeamErrorKind::InflateTooLarge { cap }));
    }
    // One allocation for honest files; the declared size is trusted only as far as deflate's
    // maximum ratio allows for the bytes actually present.
    let first = (isize as usize).min(body.len().saturating_mul(MAX_DEFLATE_RATIO)).max(64).min(cap.max(1));
    inflate_raw(body, pos, cap, first, out)?;
    if out.len() != isize as usize {
        return Err(BeamError::gzip(trailer + 4, "inflated size does not match the trailer"));
    }
    if crc32(out) != crc {
        return Err(BeamError::gzip(trailer, "CRC-32 mismatch"));
    }
    Ok(())
}

/// Raw deflate `body` (at `base` in the file) into `out`, growing it by doubling up to `cap`.
fn inflate_raw(body: &[u8], base: usize, cap: usize, first: usize, out: &mut Vec<u8>) -> Result<()> {
    use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
    use miniz_oxide::inflate::TINFLStatus;
    out.resize(first, 0);
    let mut state = Box::<DecompressorOxide>::default();
    let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let (mut in_pos, mut out_pos) = (0usize, 0usize);
    loop {
        let (status, used_in, used_out) = decompress(&mut state, &body[in_pos..], out, out_pos, flags);
        in_pos += used_in;
        out_pos += used_out;
        match status {
            TINFLStatus::Done => {
                out.truncate(out_pos);
                if in_pos != body.len() {
                    out.clear();
                    return Err(BeamError::gzip(base + in_pos, "data after the deflate stream (one gzip member expected)"));
                }
                return Ok(());
            }
            TINFLStatus::HasMoreOutput => {
                if out.len() >= cap {
                    out.clear();
                    return Err(BeamError::new(None, base + in_pos, BeamErrorKind::InflateTooLarge { cap }));
                }
                let grown = out.len().saturating_mul(2).min(cap);
                out.resize(grown, 0);
            }
            TINFLStatus::FailedCannotMakeProgress | TINFLStatus::NeedsMoreInput => {
                out.clear();
                return Err(BeamError::gzip(base + in_pos, "deflate stream ends early"));
            }
            _ => {
                out.clear();
                return Err(BeamError::gzip(base + in_pos, "corrupt deflate stream"));
            }
        }
    }
}

/// CRC-32 (IEEE, reflected), as gzip uses.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------------------------------------
// The IFF container

/// One chunk: its id, where its data starts in the image, and the data (without padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub id: ChunkId,
    /// Offset of the chunk's header in the image (its data starts 8 bytes later).
    pub offset: usize,
    pub data: &'a [u8],
}

impl Chunk<'_> {
    /// Offset of the chunk's data in the image.
    pub fn data_offset(&self) -> usize {
        self.offset + 8
    }
}

/// The chunks of an IFF image, in file order. Yields an error (and then stops) at the first
/// malformed chunk header.
#[derive(Debug, Clone)]
pub struct Chunks<'a> {
    image: &'a [u8],
    pos: usize,
    end: usize,
    failed: bool,
}

/// Check the `FOR1 Size BEAM` header and iterate over the chunks of the form.
pub fn chunks(image: &[u8]) -> Result<Chunks<'_>> {
    const HEAD: usize = 12;
    if image.len() < HEAD {
        let n = image.len().min(4);
        return Err(if image[..n] == b"FOR1"[..n] {
            BeamError::new(None, image.len(), BeamErrorKind::Truncated { need: (HEAD - image.len()) as u64 })
        } else {
            BeamError::new(None, 0, BeamErrorKind::NotBeam)
        });
    }
    if &image[0..4] != b"FOR1" || &image[8..12] != b"BEAM" {
        return Err(BeamError::new(None, 0, BeamErrorKind::NotBeam));
    }
    let declared = be32(image, 4);
    let available = image.len() - 8;
    let kind = BeamErrorKind::FormSize { declared, available };
    if (declared as usize) < 4 {
        return Err(BeamError::new(None, 4, kind));
    }
    if declared as usize > available {
        // A truncated file: name the chunk the file ends in, when the cut is inside one.
        let cut = Chunks { image, pos: HEAD, end: image.len(), failed: false }
            .find_map(|c| c.err())
            .filter(|e| e.chunk.is_some());
        return Err(match cut {
            Some(e) => BeamError::new(e.chunk, e.offset, kind),
            None => BeamError::new(None, 4, kind),
        });
    }
    Ok(Chunks { image, pos: HEAD, end: 8 + declared as usize, failed: false })
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Result<Chunk<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.end {
            return None;
        }
        let pos = self.pos;
        let left = self.end - pos;
        if left < 8 {
            self.failed = true;
            return Some(Err(BeamError::new(None, pos, BeamErrorKind::Truncated { need: (8 - left) as u64 })));
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&self.image[pos..pos + 4]);
        let size = be32(self.image, pos + 4);
        // u64: a size near 4 GiB plus padding must not wrap on any platform.
        let padded = (size as u64 + 3) & !3;
        if padded > (left - 8) as u64 {
            self.failed = true;
            return Some(Err(BeamError::new(
                Some(id),
                pos,
                BeamErrorKind::ChunkPastEnd { size, available: left - 8 },
            )));
        }
        let data = &self.image[pos + 8..pos + 8 + size as usize];
        self.pos = pos + 8 + padded as usize;
        Some(Ok(Chunk { id, offset: pos, data }))
    }
}

// ---------------------------------------------------------------------------------------------
// Tables

/// An `ExpT` or `LocT` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FunRef {
    /// Atom index (1-based) of the function name.
    pub function: u32,
    pub arity: u32,
    pub label: u32,
}

/// An `ImpT` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Import {
    pub module: u32,
    pub function: u32,
    pub arity: u32,
}

/// A `FunT` entry: one lambda of the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LambdaEntry {
    /// Atom index of the lambda's function name (e.g. `-f/1-fun-0-`).
    pub function: u32,
    /// Arity of the generated function: the fun's own arity plus `num_free`.
    pub arity: u32,
    pub label: u32,
    /// The fun's index (NEW_FUN_EXT Index, `erlang:fun_info(F, new_index)`).
    pub index: u32,
    pub num_free: u32,
    /// The legacy uniq (NEW_FUN_EXT OldUniq); not part of the MD5.
    pub old_uniq: u32,
}

/// A validated table: `count` fixed-size entries after a 4-byte count.
#[derive(Debug, Clone, Copy)]
struct Table<'a> {
    entries: &'a [u8],
}

const FUNREF_SIZE: usize = 12;
const LAMBDA_SIZE: usize = 24;

/// The entries of a table chunk, decoded on demand.
#[derive(Debug, Clone)]
pub struct Entries<'a, T> {
    raw: core::slice::ChunksExact<'a, u8>,
    decode: fn(&[u8]) -> T,
}

impl<T> Iterator for Entries<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.raw.next().map(self.decode)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.raw.size_hint()
    }
}

impl<T> ExactSizeIterator for Entries<'_, T> {}

fn decode_funref(e: &[u8]) -> FunRef {
    FunRef { function: be32(e, 0), arity: be32(e, 4), label: be32(e, 8) }
}

fn decode_import(e: &[u8]) -> Import {
    Import { module: be32(e, 0), function: be32(e, 4), arity: be32(e, 8) }
}

fn decode_lambda(e: &[u8]) -> LambdaEntry {
    LambdaEntry {
        function: be32(e, 0),
        arity: be32(e, 4),
        label: be32(e, 8),
        index: be32(e, 12),
        num_free: be32(e, 16),
        old_uniq: be32(e, 20),
    }
}

/// Which atom table the file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomEncoding {
    /// `Atom`: Latin-1 text, 8-bit lengths (OTP 20 and earlier).
    Latin1,
    /// `AtU8`: UTF-8 text, 8-bit lengths (OTP 21–27).
    Utf8,
    /// `AtU8` with a negative count: UTF-8 text, compact-encoded lengths (OTP 28+).
    Utf8Compact,
}

/// A parsed BEAM file: the chunks that matter located and validated, the atom table decoded.
/// Every table entry's atom indices and arities were checked by [`Beam::parse`], so the
/// accessors cannot fail.
#[derive(Debug, Clone)]
pub struct Beam<'a> {
    image: &'a [u8],
    atom_chunk: Chunk<'a>,
    encoding: AtomEncoding,
    atoms: AtomTable<'a>,
    code: Chunk<'a>,
    strt: Chunk<'a>,
    impt: Chunk<'a>,
    expt: Chunk<'a>,
    funt: Option<Chunk<'a>>,
    litt: Option<Chunk<'a>>,
    loct: Option<Chunk<'a>>,
    meta: Option<Chunk<'a>>,
    imports: Table<'a>,
    exports: Table<'a>,
    locals: Table<'a>,
    lambdas: Table<'a>,
}

/// Slots for the chunks [`Beam`] keeps (index into `SLOTS`).
const SLOTS: [ChunkId; 10] =
    [*b"Atom", *b"AtU8", *b"Code", *b"StrT", *b"ImpT", *b"ExpT", *b"FunT", *b"LitT", *b"LocT", *b"Meta"];

impl<'a> Beam<'a> {
    /// Parse a `.beam` image (already inflated: see [`image`]).
    pub fn parse(image: &'a [u8]) -> Result<Beam<'a>> {
        let mut found: [Option<Chunk<'a>>; SLOTS.len()] = [None; SLOTS.len()];
        for chunk in chunks(image)? {
            let chunk = chunk?;
            if let Some(slot) = SLOTS.iter().position(|id| *id == chunk.id) {
                if let Some(first) = found[slot] {
                    return Err(BeamError::new(
                        Some(chunk.id),
                        chunk.offset,
                        BeamErrorKind::Duplicate { first_at: first.offset },
                    ));
                }
                found[slot] = Some(chunk);
            }
        }
        let [atom, atu8, code, strt, impt, expt, funt, litt, loct, meta] = found;
        let required = |c: Option<Chunk<'a>>, id: &[u8; 4]| {
            c.ok_or(BeamError::new(Some(*id), image.len(), BeamErrorKind::Missing))
        };
        let (atom_chunk, latin1) = match (atom, atu8) {
            (Some(_), Some(u)) => {
                return Err(BeamError::new(Some(u.id), u.offset, BeamErrorKind::TwoAtomTables))
            }
            (Some(a), None) => (a, true),
            (None, Some(u)) => (u, false),
            (None, None) => return Err(BeamError::new(Some(*b"AtU8"), image.len(), BeamErrorKind::Missing)),
        };
        let code = required(code, b"Code")?;
        let expt = required(expt, b"ExpT")?;
        let impt = required(impt, b"ImpT")?;
        let strt = required(strt, b"StrT")?;

        let (encoding, atoms) = parse_atoms(atom_chunk, latin1)?;
        let n = atoms.count;
        let imports = table(impt, FUNREF_SIZE)?;
        for (i, e) in imports.entries.chunks_exact(FUNREF_SIZE).enumerate() {
            let at = impt.data_offset() + 4 + i * FUNREF_SIZE;
            let imp = decode_import(e);
            check_atom(impt.id, at, imp.module, n)?;
            check_atom(impt.id, at + 4, imp.function, n)?;
            check_arity(impt.id, at + 8, imp.arity)?;
        }
        let exports = funref_table(expt, n)?;
        let locals = match loct {
            Some(c) => funref_table(c, n)?,
            None => Table { entries: &[] },
        };
        let lambdas = match funt {
            Some(c) => {
                let t = table(c, LAMBDA_SIZE)?;
                for (i, e) in t.entries.chunks_exact(LAMBDA_SIZE).enumerate() {
                    check_atom(c.id, c.data_offset() + 4 + i * LAMBDA_SIZE, be32(e, 0), n)?;
                }
                t
            }
            None => Table { entries: &[] },
        };
        Ok(Beam {
            image,
            atom_chunk,
            encoding,
            atoms,
            code,
            strt,
            impt,
            expt,
            funt,
            litt,
            loct,
            meta,
            imports,
            exports,
            locals,
            lambdas,
        })
    }

    /// The IFF image this view borrows from.
    pub fn image(&self) -> &'a [u8] {
        self.image
    }

    /// The module name (atom 1).
    pub fn module(&self) -> &str {
        // parse_atoms guarantees at least one atom, and valid text.
        self.atoms.get(0).unwrap_or("")
    }

    /// Which atom table encoding the file uses.
    pub fn atom_encoding(&self) -> AtomEncoding {
        self.encoding
    }

    /// The atom table in order: atom index `i` (1-based, as the tables use) is the `i`-th.
    pub fn atoms(&self) -> Atoms<'_> {
        Atoms { text: &self.atoms.text, compact: self.atoms.compact, pos: 0, left: self.atoms.count }
    }

    /// Number of atoms (at least 1: the module).
    pub fn atom_count(&self) -> usize {
        self.atoms.count
    }

    /// Atom by 1-based index. Indices taken from this file's tables are always valid.
    pub fn atom(&self, index: u32) -> Option<&str> {
        self.atoms.get((index as usize).checked_sub(1)?)
    }

    /// `ExpT`, in file order.
    pub fn exports(&self) -> Entries<'a, FunRef> {
        Entries { raw: self.exports.entries.chunks_exact(FUNREF_SIZE), decode: decode_funref }
    }

    /// `LocT`, in file order (empty when the file has none, e.g. `+slim`).
    pub fn locals(&self) -> Entries<'a, FunRef> {
        Entries { raw: self.locals.entries.chunks_exact(FUNREF_SIZE), decode: decode_funref }
    }

    /// `ImpT`, in file order (entry `i` is import index `i`).
    pub fn imports(&self) -> Entries<'a, Import> {
        Entries { raw: self.imports.entries.chunks_exact(FUNREF_SIZE), decode: decode_import }
    }

    /// `FunT`, in file order (empty when the module makes no funs).
    pub fn lambdas(&self) -> Entries<'a, LambdaEntry> {
        Entries { raw: self.lambdas.entries.chunks_exact(LAMBDA_SIZE), decode: decode_lambda }
    }

    /// A chunk this view keeps: `Atom`/`AtU8`, `Code`, `StrT`, `ImpT`, `ExpT`, `FunT`, `LitT`,
    /// `LocT`, `Meta`.
    pub fn chunk(&self, id: &ChunkId) -> Option<Chunk<'a>> {
        match id {
            b"Atom" | b"AtU8" => Some(self.atom_chunk).filter(|c| c.id == *id),
            b"Code" => Some(self.code),
            b"StrT" => Some(self.strt),
            b"ImpT" => Some(self.impt),
            b"ExpT" => Some(self.expt),
            b"FunT" => self.funt,
            b"LitT" => self.litt,
            b"LocT" => self.loct,
            b"Meta" => self.meta,
            _ => None,
        }
    }

    /// The module MD5, as `beam_lib:md5/1` and `Module:module_info(md5)` compute it.
    pub fn md5(&self) -> [u8; 16] {
        let mut h = Md5::new();
        for id in &MD5_CHUNKS {
            let Some(c) = self.chunk(id) else { continue };
            if *id == *b"FunT" {
                // OldUniq is derived from the MD5 itself (and once was endian-dependent), so it
                // is hashed as zero. The table was validated: 4 + 24·n bytes exactly.
                h.update(&c.data[..4]);
                for e in c.data[4..].chunks_exact(LAMBDA_SIZE) {
                    h.update(&e[..20]);
                    h.update([0u8; 4]);
                }
            } else {
                h.update(c.data);
            }
        }
        h.finalize().into()
    }
}

/// Lowercase hex of an MD5 (as `distgate registry md5` prints it).
pub fn hex(md5: &[u8; 16]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for b in md5 {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Read a `.beam` file's bytes (gzip or not) and return its module name and MD5.
pub fn module_md5(file: &[u8], max_image: usize) -> Result<(String, [u8; 16])> {
    let mut scratch = Vec::new();
    let img = image(file, &mut scratch, max_image)?;
    let beam = Beam::parse(img)?;
    Ok((beam.module().to_owned(), beam.md5()))
}

fn check_atom(id: ChunkId, at: usize, index: u32, atoms: usize) -> Result<()> {
    if index == 0 || index as usize > atoms {
        return Err(BeamError::new(Some(id), at, BeamErrorKind::BadAtomIndex { index, atoms }));
    }
    Ok(())
}

fn check_arity(id: ChunkId, at: usize, arity: u32) -> Result<()> {
    if arity > MAX_ARITY {
        return Err(BeamError::new(Some(id), at, BeamErrorKind::BadArity(arity)));
    }
    Ok(())
}

/// A table chunk whose size must be exactly 4 + count·`entry` bytes.
fn table(c: Chunk<'_>, entry: usize) -> Result<Table<'_>> {
    if c.data.len() < 4 {
        return Err(BeamError::new(
            Some(c.id),
            c.data_offset() + c.data.len(),
            BeamErrorKind::Truncated { need: (4 - c.data.len()) as u64 },
        ));
    }
    let count = be32(c.data, 0) as i32 as i64;
    let body = c.data.len() - 4;
    if count < 0 || (count as u64).checked_mul(entry as u64) != Some(body as u64) {
        return Err(BeamError::new(Some(c.id), c.data_offset(), BeamErrorKind::BadCount { count, size: c.data.len() }));
    }
    Ok(Table { entries: &c.data[4..] })
}

fn funref_table(c: Chunk<'_>, atoms: usize) -> Result<Table<'_>> {
    let t = table(c, FUNREF_SIZE)?;
    for (i, e) in t.entries.chunks_exact(FUNREF_SIZE).enumerate() {
        let at = c.data_offset() + 4 + i * FUNREF_SIZE;
        let f = decode_funref(e);
        check_atom(c.id, at, f.function, atoms)?;
        check_arity(c.id, at + 4, f.arity)?;
    }
    Ok(t)
}

/// The atom table: the atoms back to back, each a length prefix and its text, found through a
/// sparse index. Nothing is allocated per atom, so a table of millions of empty atoms (one byte
/// each) costs at most a quarter of its size on top of the image.
#[derive(Debug, Clone)]
struct AtomTable<'a> {
    /// The chunk's data after the count; for a Latin-1 table with text beyond ASCII, that table
    /// re-encoded once (UTF-8 text, compact lengths), so every atom is handed out as `&str`.
    text: Cow<'a, [u8]>,
    /// Lengths in the compact encoding (OTP 28, or re-encoded Latin-1), else one byte each.
    compact: bool,
    count: usize,
    /// Offset in `text` of atoms 0, `ATOM_STRIDE`, 2·`ATOM_STRIDE`, … (0-based).
    marks: Vec<usize>,
}

impl AtomTable<'_> {
    /// Atom by 0-based index.
    fn get(&self, i: usize) -> Option<&str> {
        if i >= self.count {
            return None;
        }
        let mut pos = *self.marks.get(i / ATOM_STRIDE)?;
        for _ in 0..i % ATOM_STRIDE {
            let (start, len) = atom_at(&self.text, self.compact, pos)?;
            pos = start + len;
        }
        let (start, len) = atom_at(&self.text, self.compact, pos)?;
        core::str::from_utf8(self.text.get(start..start + len)?).ok()
    }
}

/// Where the text of the atom whose length prefix is at `pos` starts, and its length. Only
/// called on tables [`parse_atoms`] validated (so never `None` in practice).
#[inline]
fn atom_at(text: &[u8], compact: bool, pos: usize) -> Option<(usize, usize)> {
    let rest = text.get(pos..)?;
    if compact {
        let (len, used) = compact_len(rest).ok()?;
        Some((pos + used, usize::try_from(len).ok()?))
    } else {
        Some((pos + 1, *rest.first()? as usize))
    }
}

/// The atoms of a module in order ([`Beam::atoms`]).
#[derive(Debug, Clone)]
pub struct Atoms<'b> {
    text: &'b [u8],
    compact: bool,
    pos: usize,
    left: usize,
}

impl<'b> Iterator for Atoms<'b> {
    type Item = &'b str;
    fn next(&mut self) -> Option<&'b str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (start, len) = atom_at(self.text, self.compact, self.pos)?;
        self.pos = start + len;
        // parse_atoms validated the text, so the fallback never shows.
        Some(self.text.get(start..self.pos).and_then(|t| core::str::from_utf8(t).ok()).unwrap_or(""))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Atoms<'_> {}

impl Atoms<'_> {
    /// True when no atoms are left (never at the start: a module has at least one).
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

/// Validate the atom table and index it. The declared count is checked against the bytes
/// present (every atom takes at least its length byte) and the loader's limit before anything
/// is reserved; then only the index (one offset per [`ATOM_STRIDE`] atoms) is.
fn parse_atoms(c: Chunk<'_>, latin1: bool) -> Result<(AtomEncoding, AtomTable<'_>)> {
    let d = c.data;
    let base = c.data_offset();
    if d.len() < 4 {
        return Err(BeamError::new(Some(c.id), base + d.len(), BeamErrorKind::Truncated { need: (4 - d.len()) as u64 }));
    }
    let raw = be32(d, 0) as i32 as i64;
    let (encoding, count) = match (latin1, raw < 0) {
        (true, false) => (AtomEncoding::Latin1, raw),
        (false, false) => (AtomEncoding::Utf8, raw),
        (false, true) => (AtomEncoding::Utf8Compact, -raw),
        (true, true) => {
            return Err(BeamError::new(Some(c.id), base, BeamErrorKind::BadCount { count: raw, size: d.len() }))
        }
    };
    // The module name is atom 1, so an empty table cannot be a module.
    if count < 1 || count as u64 > (d.len() - 4) as u64 || count as u64 > MAX_ATOMS as u64 {
        return Err(BeamError::new(Some(c.id), base, BeamErrorKind::BadCount { count: raw, size: d.len() }));
    }
    let count = count as usize;
    let compact = encoding == AtomEncoding::Utf8Compact;
    // Offsets below are in `text`; errors add `tbase`.
    let text = &d[4..];
    let tbase = base + 4;
    let err = |at: usize, kind| BeamError::new(Some(c.id), tbase + at, kind);
    let mut marks = Vec::with_capacity(count.div_ceil(ATOM_STRIDE));
    let mut beyond_ascii = false;
    let mut pos = 0;
    for i in 0..count {
        if i % ATOM_STRIDE == 0 {
            marks.push(pos);
        }
        let at = pos;
        let len = if compact {
            let (len, used) = compact_len(&text[pos..]).map_err(|k| err(at, k))?;
            pos += used;
            len
        } else {
            match text.get(pos) {
                Some(&b) => {
                    pos += 1;
                    b as u64
                }
                None => return Err(err(pos, BeamErrorKind::Truncated { need: 1 })),
            }
        };
        let left = (text.len() - pos) as u64;
        if len > left {
            return Err(err(pos, BeamErrorKind::Truncated { need: len - left }));
        }
        let t = &text[pos..pos + len as usize];
        pos += len as usize;
        if latin1 {
            // Latin-1 maps byte for byte onto the first 256 code points: always valid, at most
            // 255 characters.
            beyond_ascii |= !crate::scan::is_ascii_swar(t);
        } else {
            let chars = crate::scan::utf8_atom_chars(t).ok_or_else(|| err(at, BeamErrorKind::InvalidUtf8Atom))?;
            if chars > MAX_ATOM_CHARS {
                return Err(err(at, BeamErrorKind::AtomTooLong { chars }));
            }
        }
    }
    if pos != text.len() {
        return Err(err(pos, BeamErrorKind::Trailing { extra: text.len() - pos }));
    }
    let table = if beyond_ascii {
        latin1_to_utf8(text, count)
    } else {
        AtomTable { text: Cow::Borrowed(text), compact, count, marks }
    };
    Ok((encoding, table))
}

/// A validated Latin-1 table (8-bit lengths) re-encoded as UTF-8 text with compact lengths:
/// each byte from 0x80 becomes two, a length prefix at most two (an atom is at most 510 bytes
/// of UTF-8). At most twice the table's size.
fn latin1_to_utf8(text: &[u8], count: usize) -> AtomTable<'static> {
    let utf8_len = |t: &[u8]| t.len() + t.iter().filter(|&&b| b >= 0x80).count();
    let prefix_len = |n: usize| if n < 16 { 1 } else { 2 };
    // Exact size first, then one allocation.
    let (mut size, mut pos) = (0, 0);
    for _ in 0..count {
        let len = text[pos] as usize;
        let n = utf8_len(&text[pos + 1..pos + 1 + len]);
        size += prefix_len(n) + n;
        pos += 1 + len;
    }
    let mut out = Vec::with_capacity(size);
    let mut marks = Vec::with_capacity(count.div_ceil(ATOM_STRIDE));
    pos = 0;
    for i in 0..count {
        if i % ATOM_STRIDE == 0 {
            marks.push(out.len());
        }
        let len = text[pos] as usize;
        let t = &text[pos + 1..pos + 1 + len];
        pos += 1 + len;
        // The compact encoding compact_len reads, tag u (0): `nnnn0000` below 16, else
        // `nnn01000 nnnnnnnn` (11 bits).
        let n = utf8_len(t);
        if n < 16 {
            out.push((n << 4) as u8);
        } else {
            out.push((((n >> 8) << 5) | 0x08) as u8);
            out.push(n as u8);
        }
        for &b in t {
            if b < 0x80 {
                out.push(b);
            } else {
                out.extend_from_slice(&[0xc0 | (b >> 6), 0x80 | (b & 0x3f)]);
            }
        }
    }
    AtomTable { text: Cow::Owned(out), compact: true, count, marks }
}

/// A length in BEAM's compact term encoding, as the loader reads it (`beamreader_read_tagged`):
/// the low 3 bits are a tag (the compiler writes `u`; the loader accepts any), then
/// - `vvvv0ttt`: the value in the high nibble;
/// - `vvv01ttt` `vvvvvvvv`: an 11-bit value;
/// - `nnn11ttt` and 2 + nnn big-endian bytes (nnn < 7);
/// - `11111ttt`: a further length prefix, only needed for values of 9+ bytes, which no atom
///   length can be: refused without reading on (so nothing here nests).
///
/// Returns the value and the bytes used.
fn compact_len(b: &[u8]) -> core::result::Result<(u64, usize), BeamErrorKind> {
    let first = *b.first().ok_or(BeamErrorKind::Truncated { need: 1 })?;
    let tag = first & 7;
    if first & 0x08 == 0 {
        return Ok(((first >> 4) as u64, 1));
    }
    if first & 0x10 == 0 {
        let second = *b.get(1).ok_or(BeamErrorKind::Truncated { need: 1 })?;
        return Ok(((((first >> 5) as u64) << 8) | second as u64, 2));
    }
    let n = (first >> 5) as usize;
    if n == 7 {
        return Err(BeamErrorKind::BadAtomLength);
    }
    let count = n + 2;
    if b.len() < 1 + count {
        return Err(BeamErrorKind::Truncated { need: (1 + count - b.len()) as u64 });
    }
    let mut v = 0u64;
    for &x in &b[1..1 + count] {
        v = (v << 8) | x as u64;
    }
    // Tag i (1) is signed: a set top bit is a negative length. Other tags must fit in a signed
    // word, which the loader checks the same way.
    let negative = if tag == 1 { b[1] & 0x80 != 0 } else { count == 8 && v >> 63 != 0 };
    if negative {
        return Err(BeamErrorKind::BadAtomLength);
    }
    Ok((v, 1 + count))
}

/// A module image made of these chunks, in order (each padded to 4 bytes, `FOR1`'s size
/// right): for tests and tools that make `.beam` files, valid or not, without a compiler.
pub fn image_of_chunks(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut body = b"BEAM".to_vec();
    for (id, data) in chunks {
        body.extend_from_slice(*id);
        body.extend_from_slice(&(data.len() as u32).to_be_bytes());
        body.extend_from_slice(data);
        body.resize(body.len().div_ceil(4) * 4, 0);
    }
    let mut out = b"FOR1".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn build(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
        image_of_chunks(chunks)
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    fn atoms_plain(names: &[&str]) -> Vec<u8> {
        let mut v = (names.len() as u32).to_be_bytes().to_vec();
        for n in names {
            v.push(n.len() as u8);
            v.extend_from_slice(n.as_bytes());
        }
        v
    }

    fn minimal(atoms: Vec<u8>) -> Vec<u8> {
        build(&[
            (b"AtU8", atoms),
            (b"Code", words(&[16, 0, 170, 3, 1])),
            (b"StrT", vec![]),
            (b"ImpT", words(&[0])),
            (b"ExpT", words(&[1, 2, 0, 2])),
            (b"FunT", words(&[1, 3, 1, 5, 0, 1, 0xdead_beef])),
        ])
    }

    #[test]
    fn reads_a_minimal_module() {
        let img = minimal(atoms_plain(&["m", "f", "-f/1-fun-0-"]));
        let b = Beam::parse(&img).unwrap();
        assert_eq!(b.module(), "m");
        assert_eq!(b.atom_encoding(), AtomEncoding::Utf8);
        assert_eq!(b.exports().collect::<Vec<_>>(), vec![FunRef { function: 2, arity: 0, label: 2 }]);
        let l: Vec<_> = b.lambdas().collect();
        assert_eq!(l, vec![LambdaEntry { function: 3, arity: 1, label: 5, index: 0, num_free: 1, old_uniq: 0xdead_beef }]);
        assert_eq!(b.atom(3), Some("-f/1-fun-0-"));
        assert_eq!(b.atom(0), None);
        assert_eq!(b.atom(4), None);
    }

    #[test]
    fn md5_ignores_old_uniq_and_chunk_order_but_not_code() {
        let a = minimal(atoms_plain(&["m", "f", "g"]));
        let mut b = a.clone();
        // OldUniq is the last word of the FunT entry, i.e. the last 4 bytes of the file.
        let n = b.len();
        b[n - 4..].copy_from_slice(&[1, 2, 3, 4]);
        let (ma, mb) = (Beam::parse(&a).unwrap().md5(), Beam::parse(&b).unwrap().md5());
        assert_eq!(ma, mb);
        // Same chunks, different file order: same MD5 (hash order is fixed, not file order).
        let reordered = build(&[
            (b"FunT", words(&[1, 3, 1, 5, 0, 1, 0])),
            (b"ExpT", words(&[1, 2, 0, 2])),
            (b"ImpT", words(&[0])),
            (b"StrT", vec![]),
            (b"Code", words(&[16, 0, 170, 3, 1])),
            (b"AtU8", atoms_plain(&["m", "f", "g"])),
            (b"Dbgi", vec![9, 9, 9]),
        ]);
        assert_eq!(Beam::parse(&reordered).unwrap().md5(), ma);
        let other = build(&[
            (b"AtU8", atoms_plain(&["m", "f", "g"])),
            (b"Code", words(&[16, 0, 170, 3, 2])),
            (b"StrT", vec![]),
            (b"ImpT", words(&[0])),
            (b"ExpT", words(&[1, 2, 0, 2])),
            (b"FunT", words(&[1, 3, 1, 5, 0, 1, 0])),
        ]);
        assert_ne!(Beam::parse(&other).unwrap().md5(), ma);
    }

    #[test]
    fn md5_is_over_chunk_data_in_beam_lib_order() {
        let atoms = atoms_plain(&["m", "f", "g"]);
        let img = minimal(atoms.clone());
        let mut h = Md5::new();
        h.update(&atoms);
        h.update(words(&[16, 0, 170, 3, 1]));
        h.update(words(&[0]));
        h.update(words(&[1, 2, 0, 2]));
        h.update(words(&[1, 3, 1, 5, 0, 1, 0]));
        let want: [u8; 16] = h.finalize().into();
        assert_eq!(Beam::parse(&img).unwrap().md5(), want);
    }

    #[test]
    fn compact_atom_lengths() {
        // OTP 28 form: negative count, lengths with tag u in the compact encoding.
        let long = "x".repeat(200);
        let mut atoms = (-3i32).to_be_bytes().to_vec();
        atoms.push(1 << 4); // "m": 1 in the high nibble, tag u
        atoms.push(b'm');
        atoms.push(15 << 4);
        atoms.extend_from_slice(b"fifteen_chars__");
        // 200 = 0b000_11001000: 11-bit form, high 3 bits 0.
        atoms.push(0x08);
        atoms.push(200);
        atoms.extend_from_slice(long.as_bytes());
        let img = minimal(atoms);
        let b = Beam::parse(&img).unwrap();
        assert_eq!(b.atom_encoding(), AtomEncoding::Utf8Compact);
        assert_eq!(b.atom(2), Some("fifteen_chars__"));
        assert_eq!(b.atom(3), Some(long.as_str()));
        // nnn=000, bits 4 and 3 set, tag u: two value bytes follow.
        assert_eq!(compact_len(&[0x18, 0x01, 0x00]), Ok((256, 3)));
        // nnn=111: an extended size prefix, never an atom length.
        assert_eq!(compact_len(&[0xf8]), Err(BeamErrorKind::BadAtomLength));
        // Tag i (signed) with the top bit set: a negative length.
        assert_eq!(compact_len(&[0x19, 0x80, 0x00]), Err(BeamErrorKind::BadAtomLength));
        assert_eq!(compact_len(&[0x08]), Err(BeamErrorKind::Truncated { need: 1 }));
    }

    #[test]
    fn latin1_atoms() {
        let mut atoms = 2u32.to_be_bytes().to_vec();
        atoms.extend_from_slice(&[1, b'm', 2, 0xe9, b't']);
        let img = build(&[
            (b"Atom", atoms),
            (b"Code", words(&[16])),
            (b"StrT", vec![]),
            (b"ImpT", words(&[0])),
            (b"ExpT", words(&[0])),
        ]);
        let b = Beam::parse(&img).unwrap();
        assert_eq!(b.atom_encoding(), AtomEncoding::Latin1);
        assert_eq!(b.atom(2), Some("ét"));
    }

    #[test]
    fn every_atom_found_across_index_strides_in_every_encoding() {
        // 200 atoms (several index strides): empty, ASCII, beyond ASCII, 15/16 bytes long
        // (one- and two-byte compact lengths once re-encoded) and 255 characters.
        let latin: Vec<Vec<u8>> = (0..200u32)
            .map(|i| match i % 7 {
                0 => vec![],
                1 => format!("a{i}").into_bytes(),
                2 => vec![0xe9; (i % 20) as usize],
                3 => vec![b'x'; 15],
                4 => [vec![0xff; 8], vec![b'y'; 8]].concat(),
                5 => vec![0xc4; 255],
                _ => vec![b'z'; 255],
            })
            .collect();
        let want: Vec<String> = latin.iter().map(|t| t.iter().map(|&b| b as char).collect()).collect();
        let check = |img: &[u8], enc: AtomEncoding, want: &[String]| {
            let b = Beam::parse(img).unwrap();
            assert_eq!(b.atom_encoding(), enc);
            assert_eq!(b.atom_count(), want.len());
            assert_eq!(b.atoms().len(), want.len());
            assert_eq!(b.atoms().collect::<Vec<_>>(), want.iter().map(String::as_str).collect::<Vec<_>>());
            for (i, w) in want.iter().enumerate() {
                assert_eq!(b.atom(i as u32 + 1), Some(w.as_str()), "atom {}", i + 1);
            }
            assert_eq!(b.atom(want.len() as u32 + 1), None);
            assert_eq!(b.module(), want[0]);
        };
        let with = |id: &[u8; 4], count: i32, texts: &[Vec<u8>], len: &dyn Fn(usize) -> Vec<u8>| {
            let mut atoms = count.to_be_bytes().to_vec();
            for t in texts {
                atoms.extend_from_slice(&len(t.len()));
                atoms.extend_from_slice(t);
            }
            build(&[(id, atoms), (b"Code", words(&[16])), (b"StrT", vec![]), (b"ImpT", words(&[0])), (b"ExpT", words(&[0]))])
        };
        let n = want.len() as i32;
        let byte = |n: usize| vec![n as u8];
        let compact = |n: usize| if n < 16 { vec![(n << 4) as u8] } else { vec![(((n >> 8) << 5) | 0x08) as u8, n as u8] };
        // Latin-1 with 8-bit lengths (re-encoded: text beyond ASCII).
        check(&with(b"Atom", n, &latin, &byte), AtomEncoding::Latin1, &want);
        // UTF-8 with compact lengths: the same atoms, 255 of 'Ä' being 510 bytes.
        let utf8: Vec<Vec<u8>> = want.iter().map(|w| w.clone().into_bytes()).collect();
        check(&with(b"AtU8", -n, &utf8, &compact), AtomEncoding::Utf8Compact, &want);
        // UTF-8 with 8-bit lengths: those atoms cut to 127 characters.
        let cut: Vec<String> = want.iter().map(|w| if w.len() > 255 { w.chars().take(127).collect() } else { w.clone() }).collect();
        let utf8: Vec<Vec<u8>> = cut.iter().map(|w| w.clone().into_bytes()).collect();
        check(&with(b"AtU8", n, &utf8, &byte), AtomEncoding::Utf8, &cut);
        // All-ASCII Latin-1 (kept as it is, not re-encoded).
        let ascii: Vec<Vec<u8>> = (0..100).map(|i| format!("atom_{i}").into_bytes()).collect();
        let want: Vec<String> = (0..100).map(|i| format!("atom_{i}")).collect();
        check(&with(b"Atom", 100, &ascii, &byte), AtomEncoding::Latin1, &want);
    }

    #[test]
    fn atom_count_over_the_loaders_limit() {
        // 2^27 empty atoms (128 MiB): the loader's CHECK_ITEM_COUNT refuses the count, so do we.
        let n = MAX_ATOMS + 1;
        let mut atoms = Vec::with_capacity(4 + n);
        atoms.extend_from_slice(&(n as u32).to_be_bytes());
        atoms.push(1);
        atoms.push(b'm');
        atoms.resize(4 + n, 0);
        let e = Beam::parse(&minimal(atoms)).unwrap_err();
        assert_eq!((e.chunk, e.offset), (Some(*b"AtU8"), 20));
        assert_eq!(e.kind, BeamErrorKind::BadCount { count: n as i64, size: 4 + n });
    }

    fn kind(img: &[u8]) -> (Option<ChunkId>, BeamErrorKind) {
        let e = Beam::parse(img).unwrap_err();
        (e.chunk, e.kind)
    }

    #[test]
    fn hostile_counts_and_sizes() {
        // Atom count far beyond the bytes present: refused before reserving.
        let mut atoms = 0x7fff_ffffu32.to_be_bytes().to_vec();
        atoms.extend_from_slice(&[1, b'm']);
        assert_eq!(kind(&minimal(atoms)).1, BeamErrorKind::BadCount { count: 0x7fff_ffff, size: 6 });
        // i32::MIN cannot be negated in 32 bits.
        let mut atoms = 0x8000_0000u32.to_be_bytes().to_vec();
        atoms.extend_from_slice(&[0x10, b'm']);
        assert!(matches!(kind(&minimal(atoms)).1, BeamErrorKind::BadCount { .. }));
        // Export pointing at atom 9 of 3.
        let img = build(&[
            (b"AtU8", atoms_plain(&["m", "f", "g"])),
            (b"Code", words(&[16])),
            (b"StrT", vec![]),
            (b"ImpT", words(&[0])),
            (b"ExpT", words(&[1, 9, 0, 2])),
        ]);
        assert_eq!(kind(&img), (Some(*b"ExpT"), BeamErrorKind::BadAtomIndex { index: 9, atoms: 3 }));
        // FunT declaring more entries than it holds.
        let img = build(&[
            (b"AtU8", atoms_plain(&["m"])),
            (b"Code", words(&[16])),
            (b"StrT", vec![]),
            (b"ImpT", words(&[0])),
            (b"ExpT", words(&[0])),
            (b"FunT", words(&[0x1000_0000, 1, 1, 1, 1, 1, 1])),
        ]);
        assert_eq!(kind(&img).0, Some(*b"FunT"));
        // Chunk size 0xFFFFFFFF: padded size overflows 32 bits.
        let mut img = minimal(atoms_plain(&["m"]));
        img[16..20].copy_from_slice(&[0xff; 4]);
        let e = Beam::parse(&img).unwrap_err();
        assert_eq!(e.chunk, Some(*b"AtU8"));
        assert_eq!(e.offset, 12);
        assert!(matches!(e.kind, BeamErrorKind::ChunkPastEnd { size: 0xffff_ffff, .. }));
        // FOR1 size past the end.
        let mut img = minimal(atoms_plain(&["m"]));
        img[4..8].copy_from_slice(&0x7fff_0000u32.to_be_bytes());
        assert!(matches!(kind(&img).1, BeamErrorKind::FormSize { .. }));
        // Duplicate code chunk.
        let img = build(&[
            (b"AtU8", atoms_plain(&["m"])),
            (b"Code", words(&[16])),
            (b"Code", words(&[17])),
            (b"StrT", vec![]),
            (b"ImpT", words(&[0])),
            (b"ExpT", words(&[0])),
        ]);
        assert!(matches!(kind(&img), (Some(id), BeamErrorKind::Duplicate { .. }) if id == *b"Code"));
        // Missing ImpT.
        let img = build(&[(b"AtU8", atoms_plain(&["m"])), (b"Code", words(&[16])), (b"StrT", vec![]), (b"ExpT", words(&[0]))]);
        assert_eq!(kind(&img), (Some(*b"ImpT"), BeamErrorKind::Missing));
        // Not a BEAM at all, and a truncated header.
        assert_eq!(Beam::parse(b"hello world, not a beam").unwrap_err().kind, BeamErrorKind::NotBeam);
        assert_eq!(Beam::parse(b"FOR1").unwrap_err().kind, BeamErrorKind::Truncated { need: 8 });
    }

    #[test]
    fn every_truncation_of_a_minimal_module_is_an_error() {
        // A mandatory chunk last, so no prefix is itself a complete module.
        let img = build(&[
            (b"AtU8", atoms_plain(&["m", "f", "g"])),
            (b"FunT", words(&[1, 3, 1, 5, 0, 1, 0])),
            (b"StrT", vec![1, 2, 3]),
            (b"Code", words(&[16, 0, 170, 3, 1])),
            (b"ImpT", words(&[0])),
            (b"ExpT", words(&[1, 2, 0, 2])),
        ]);
        assert!(Beam::parse(&img).is_ok());
        for n in 0..img.len() {
            let mut cut = img[..n].to_vec();
            // Keep FOR1's size honest for the cut so the chunk parser (not the header) is tested.
            if n >= 8 {
                let sz = (n - 8) as u32;
                cut[4..8].copy_from_slice(&sz.to_be_bytes());
            }
            assert!(Beam::parse(&cut).is_err(), "cut at {n} parsed");
        }
    }

    #[test]
    fn crc32_known_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn gzip_round_trip_and_hostile_wrappers() {
        let img = minimal(atoms_plain(&["m", "f", "g"]));
        let deflated = miniz_oxide::deflate::compress_to_vec(&img, 6);
        let mut gz = vec![0x1f, 0x8b, 8, FNAME, 0, 0, 0, 0, 0, 3];
        gz.extend_from_slice(b"m.beam\0");
        gz.extend_from_slice(&deflated);
        gz.extend_from_slice(&crc32(&img).to_le_bytes());
        gz.extend_from_slice(&(img.len() as u32).to_le_bytes());
        let mut scratch = Vec::new();
        assert_eq!(image(&gz, &mut scratch, 1 << 20).unwrap(), &img[..]);
        // Cap below the real size.
        let e = gunzip(&gz, 16, &mut scratch).unwrap_err();
        assert!(matches!(e.kind, BeamErrorKind::InflateTooLarge { cap: 16 }));
        // Wrong CRC.
        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 8] ^= 1;
        assert_eq!(gunzip(&bad, 1 << 20, &mut scratch).unwrap_err().kind, BeamErrorKind::Gzip("CRC-32 mismatch"));
        // Lying ISIZE (small): inflates to more than declared.
        let mut bad = gz.clone();
        bad[n - 4..].copy_from_slice(&3u32.to_le_bytes());
        assert!(gunzip(&bad, 1 << 20, &mut scratch).is_err());
        // A second member after the first.
        let mut two = gz.clone();
        two.extend_from_slice(&gz);
        assert!(gunzip(&two, 1 << 20, &mut scratch).is_err());
        // Every truncation.
        for k in 0..gz.len() {
            assert!(gunzip(&gz[..k], 1 << 20, &mut scratch).is_err(), "cut at {k}");
        }
        // Unterminated name.
        assert!(gunzip(&[0x1f, 0x8b, 8, FNAME, 0, 0, 0, 0, 0, 3, b'a', b'b'], 1 << 20, &mut scratch).is_err());
    }
}
