//! Byte-scanning helpers with a fast path and the scalar path kept beside it.
//!
//! Each fast path is measured against its scalar twin in `bench/benches/scan.rs`; the
//! scalar versions stay public so the benchmark (and the property tests that check the two
//! agree) can call them.

/// Validate atom text as UTF-8 and count its characters. `None` when invalid.
///
/// Why a fast path: almost every atom on a real link is ASCII. Checking eight bytes at a time
/// for a set high bit (SWAR) settles those without the per-byte state machine of a UTF-8
/// validator; anything non-ASCII falls through to `core::str::from_utf8`.
#[inline]
pub fn utf8_atom_chars(text: &[u8]) -> Option<usize> {
    if is_ascii_swar(text) {
        return Some(text.len());
    }
    utf8_atom_chars_scalar(text)
}

/// The plain path: validate with the standard library, then count non-continuation bytes.
#[inline]
pub fn utf8_atom_chars_scalar(text: &[u8]) -> Option<usize> {
    let s = core::str::from_utf8(text).ok()?;
    Some(s.bytes().filter(|&b| (b & 0xC0) != 0x80).count())
}

/// True when no byte has its high bit set, eight bytes per step.
#[inline]
pub fn is_ascii_swar(text: &[u8]) -> bool {
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = text.chunks_exact(8);
    let mut acc = 0u64;
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        acc |= u64::from_ne_bytes(a);
    }
    let mut tail = 0u8;
    for &b in chunks.remainder() {
        tail |= b;
    }
    acc & HI == 0 && tail & 0x80 == 0
}

/// How many bytes at the start of a 16-byte window (little-endian: the low bytes, the first
/// in memory) are ASCII: the index of the first byte with its high bit set, 16 if none.
///
/// Why: the term walker's fast path checks UTF-8 atom text with it. Atom text is short and sits
/// in a window the walker has already loaded, so one AND and a trailing-zero count settle "are
/// the first `n` bytes ASCII?" (`n <= ascii_run(w)`) for any `n`, with no loop and no branch.
#[inline(always)]
pub fn ascii_run(window: u128) -> usize {
    const HI: u128 = 0x8080_8080_8080_8080_8080_8080_8080_8080;
    (window & HI).trailing_zeros() as usize / 8
}

/// The scalar twin of [`ascii_run`].
#[inline]
pub fn ascii_run_scalar(window: u128) -> usize {
    window.to_le_bytes().iter().take_while(|b| b.is_ascii()).count()
}

/// Could `buf` contain a fun? A fun needs a NEW_FUN_EXT (112) or EXPORT_EXT (113) tag byte
/// (or the old FUN_EXT, 117). When none of those bytes occurs anywhere, no walk is needed to
/// know the message carries no fun. memchr's vectorised search makes that a few bytes per
/// cycle; most binary-heavy traffic still contains them, so this is only a prefilter.
#[inline]
pub fn may_contain_fun(buf: &[u8]) -> bool {
    memchr::memchr3(crate::tag::NEW_FUN, crate::tag::EXPORT, crate::tag::FUN, buf).is_some()
}

/// The scalar twin of [`may_contain_fun`].
#[inline]
pub fn may_contain_fun_scalar(buf: &[u8]) -> bool {
    buf.iter().any(|&b| b == crate::tag::NEW_FUN || b == crate::tag::EXPORT || b == crate::tag::FUN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fast_and_scalar_utf8_agree(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(utf8_atom_chars(&bytes), utf8_atom_chars_scalar(&bytes));
        }
        #[test]
        fn fast_and_scalar_ascii_run_agree(bytes in any::<[u8; 16]>(), high in proptest::option::of(0usize..16)) {
            // Mostly ASCII, with at most one high byte placed anywhere (random bytes alone would
            // nearly always have one in the first few).
            let mut b = bytes.map(|x| x & 0x7f);
            if let Some(i) = high {
                b[i] = bytes[i] | 0x80;
            }
            let w = u128::from_le_bytes(b);
            prop_assert_eq!(ascii_run(w), ascii_run_scalar(w));
            let w = u128::from_le_bytes(bytes);
            prop_assert_eq!(ascii_run(w), ascii_run_scalar(w));
        }
        #[test]
        fn fast_and_scalar_fun_scan_agree(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(may_contain_fun(&bytes), may_contain_fun_scalar(&bytes));
        }
    }

    #[test]
    fn counts_characters_not_bytes() {
        assert_eq!(utf8_atom_chars("héllo".as_bytes()), Some(5));
        assert_eq!(utf8_atom_chars("日本".as_bytes()), Some(2));
        assert_eq!(utf8_atom_chars(&[0xff, 0x41]), None);
        assert_eq!(utf8_atom_chars(b"plain_ascii_atom_longer_than_8"), Some(30));
    }
}
