//! Decode errors: every one names the byte offset where the input went wrong and why.
//!
//! Errors are plain values (no allocation, `Copy`) so the forwarding path can return them
//! cheaply and the link layer can turn them into a logged close reason and a metric label.

use core::fmt;

/// A decode failure at `offset` (relative to the buffer handed to the decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub offset: usize,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input ended inside a term or header; `need` more bytes were required.
    Truncated { need: usize },
    /// A tag byte that is not part of the External Term Format (or not valid here).
    UnknownTag(u8),
    /// A versioned term did not start with 131.
    BadVersion(u8),
    /// `LOCAL_EXT` (121) is node-local by definition and must never cross a link.
    LocalExtRefused,
    /// Nesting deeper than the configured limit.
    TooDeep { limit: usize },
    /// A declared element count or length cannot fit in the bytes that remain.
    BadCount { what: &'static str, count: u64 },
    /// An atom whose text is not valid UTF-8 (for the UTF-8 atom tags).
    InvalidUtf8Atom,
    /// An atom longer than 255 characters.
    AtomTooLong { chars: usize },
    /// Where an atom was required (pid node, fun module, export M/F) something else was found.
    ExpectedAtom(u8),
    /// Where a small integer or integer was required (fun indices, export arity).
    ExpectedInteger(u8),
    /// Where a pid was required (fun creator) something else was found.
    ExpectedPid(u8),
    /// `ATOM_CACHE_REF` outside a message with an atom-cache header, or past its ref count.
    BadAtomCacheRef { index: u8, refs: u16 },
    /// A `BIT_BINARY_EXT` whose bit count is not 1..=8 (or non-zero bits of an empty binary).
    BadBits(u8),
    /// A NEW_FUN_EXT whose declared Size does not match its encoded length.
    FunSizeMismatch { declared: u32, actual: usize },
    /// A reference with an id word count OTP never emits (0 or more than 5).
    BadRefLen(u16),
    /// A compressed term whose declared size exceeds the configured cap.
    InflateTooLarge { declared: u64, cap: usize },
    /// The zlib stream of a compressed term is corrupt or does not give the declared size.
    InflateFailed,
    /// Bytes left over after a complete term where none are allowed.
    Trailing { extra: usize },
    /// A text float (FLOAT_EXT) that is not a number.
    BadFloat,
    /// Distribution header problems.
    Dist(DistErrorKind),
}

/// Errors specific to distribution frames (headers, atom cache, fragments, control messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistErrorKind {
    /// A frame larger than the configured maximum.
    FrameTooLarge { len: u64, max: usize },
    /// The frame does not start with `131 68`, `131 69`, `131 70` or `112`.
    BadFrameStart(u8),
    /// A cache ref that reads a slot no earlier message defined.
    UndefinedCacheSlot { slot: u16 },
    /// An atom-cache header with more than 255 refs.
    TooManyRefs(u8),
    /// A new cache entry whose text is not a valid atom.
    BadCacheAtom,
    /// A continuation fragment for a sequence that was never started.
    UnknownSequence { seq: u64 },
    /// A fragment id that is not the next one down.
    FragmentOutOfOrder { seq: u64, expected: u64, got: u64 },
    /// A first fragment for a sequence already in flight.
    DuplicateSequence { seq: u64 },
    /// A first fragment with FragId 0.
    ZeroFragmentId,
    /// More bytes buffered for incomplete fragmented messages than the per-link cap.
    FragmentBytesExceeded { cap: usize },
    /// More fragmented messages in flight than allowed.
    TooManySequences { cap: usize },
    /// The control message is not a tuple headed by a known op.
    BadControl(&'static str),
    /// Unknown control op number.
    UnknownOp(u64),
    /// A control op that requires a payload came without one (or vice versa).
    PayloadMismatch { op: u8 },
}

impl Error {
    #[inline]
    pub const fn new(offset: usize, kind: ErrorKind) -> Self {
        Error { offset, kind }
    }
    #[inline]
    pub const fn dist(offset: usize, kind: DistErrorKind) -> Self {
        Error { offset, kind: ErrorKind::Dist(kind) }
    }
    /// Shift the offset, for errors found in a sub-slice of a larger buffer.
    #[inline]
    pub const fn shifted(self, by: usize) -> Self {
        Error { offset: self.offset + by, kind: self.kind }
    }
    /// A short stable label for metrics (no data from the peer in it).
    pub fn label(&self) -> &'static str {
        use ErrorKind::*;
        match self.kind {
            Truncated { .. } => "truncated",
            UnknownTag(_) => "unknown_tag",
            BadVersion(_) => "bad_version",
            LocalExtRefused => "local_ext",
            TooDeep { .. } => "too_deep",
            BadCount { .. } => "bad_count",
            InvalidUtf8Atom => "invalid_utf8_atom",
            AtomTooLong { .. } => "atom_too_long",
            ExpectedAtom(_) => "expected_atom",
            ExpectedInteger(_) => "expected_integer",
            ExpectedPid(_) => "expected_pid",
            BadAtomCacheRef { .. } => "bad_atom_cache_ref",
            BadBits(_) => "bad_bits",
            FunSizeMismatch { .. } => "fun_size_mismatch",
            BadRefLen(_) => "bad_ref_len",
            InflateTooLarge { .. } => "inflate_too_large",
            InflateFailed => "inflate_failed",
            Trailing { .. } => "trailing_bytes",
            BadFloat => "bad_float",
            Dist(d) => match d {
                DistErrorKind::FrameTooLarge { .. } => "frame_too_large",
                DistErrorKind::BadFrameStart(_) => "bad_frame_start",
                DistErrorKind::UndefinedCacheSlot { .. } => "undefined_cache_slot",
                DistErrorKind::TooManyRefs(_) => "too_many_refs",
                DistErrorKind::BadCacheAtom => "bad_cache_atom",
                DistErrorKind::UnknownSequence { .. } => "unknown_sequence",
                DistErrorKind::FragmentOutOfOrder { .. } => "fragment_out_of_order",
                DistErrorKind::DuplicateSequence { .. } => "duplicate_sequence",
                DistErrorKind::ZeroFragmentId => "zero_fragment_id",
                DistErrorKind::FragmentBytesExceeded { .. } => "fragment_bytes_exceeded",
                DistErrorKind::TooManySequences { .. } => "too_many_sequences",
                DistErrorKind::BadControl(_) => "bad_control",
                DistErrorKind::UnknownOp(_) => "unknown_op",
                DistErrorKind::PayloadMismatch { .. } => "payload_mismatch",
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ErrorKind::*;
        write!(f, "at byte {}: ", self.offset)?;
        match self.kind {
            Truncated { need } => write!(f, "input ends early ({need} more bytes needed)"),
            UnknownTag(t) => write!(f, "unknown term tag {t}"),
            BadVersion(v) => write!(f, "expected version byte 131, found {v}"),
            LocalExtRefused => write!(f, "LOCAL_EXT (121) is node-local and refused on a link"),
            TooDeep { limit } => write!(f, "terms nested deeper than the limit of {limit}"),
            BadCount { what, count } => {
                write!(f, "{what} declares {count}, more than the bytes that remain")
            }
            InvalidUtf8Atom => write!(f, "atom text is not valid UTF-8"),
            AtomTooLong { chars } => write!(f, "atom of {chars} characters (max 255)"),
            ExpectedAtom(t) => write!(f, "expected an atom, found tag {t}"),
            ExpectedInteger(t) => write!(f, "expected an integer, found tag {t}"),
            ExpectedPid(t) => write!(f, "expected a pid, found tag {t}"),
            BadAtomCacheRef { index, refs } => {
                write!(f, "atom cache ref {index} but the message header has {refs} refs")
            }
            BadBits(b) => write!(f, "bit binary with {b} bits in its last byte (must be 1..8)"),
            FunSizeMismatch { declared, actual } => {
                write!(f, "fun declares size {declared} but its encoding is {actual} bytes")
            }
            BadRefLen(n) => write!(f, "reference with {n} id words (must be 1..5)"),
            InflateTooLarge { declared, cap } => {
                write!(f, "compressed term declares {declared} bytes, over the cap of {cap}")
            }
            InflateFailed => write!(f, "compressed term does not inflate to its declared size"),
            Trailing { extra } => write!(f, "{extra} bytes after the end of the term"),
            BadFloat => write!(f, "FLOAT_EXT text is not a float"),
            Dist(d) => match d {
                DistErrorKind::FrameTooLarge { len, max } => {
                    write!(f, "frame of {len} bytes exceeds the maximum of {max}")
                }
                DistErrorKind::BadFrameStart(b) => write!(f, "frame starts with unexpected byte {b}"),
                DistErrorKind::UndefinedCacheSlot { slot } => {
                    write!(f, "atom cache slot {slot} used before any message defined it")
                }
                DistErrorKind::TooManyRefs(n) => write!(f, "atom cache header with {n} refs"),
                DistErrorKind::BadCacheAtom => write!(f, "atom cache entry text is not a valid atom"),
                DistErrorKind::UnknownSequence { seq } => {
                    write!(f, "continuation fragment for unknown sequence {seq}")
                }
                DistErrorKind::FragmentOutOfOrder { seq, expected, got } => write!(
                    f,
                    "sequence {seq}: fragment {got} arrived where {expected} was expected"
                ),
                DistErrorKind::DuplicateSequence { seq } => {
                    write!(f, "first fragment for sequence {seq}, which is already in flight")
                }
                DistErrorKind::ZeroFragmentId => write!(f, "fragment id 0"),
                DistErrorKind::FragmentBytesExceeded { cap } => {
                    write!(f, "fragmented messages in flight exceed the {cap}-byte cap")
                }
                DistErrorKind::TooManySequences { cap } => {
                    write!(f, "more than {cap} fragmented messages in flight")
                }
                DistErrorKind::BadControl(why) => write!(f, "bad control message: {why}"),
                DistErrorKind::UnknownOp(op) => write!(f, "unknown control op {op}"),
                DistErrorKind::PayloadMismatch { op } => {
                    write!(f, "control op {op} with a missing or unexpected payload")
                }
            },
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;
