//! The distribution header's atom-cache refs (`131 68`, and the head of `131 69`) and the
//! per-direction 2048-slot cache they maintain.
//!
//! Layout after `131 68`: `NumberOfAtomCacheRefs:8`, then (only when that is non-zero)
//! `NumberOfAtomCacheRefs/2 + 1` flag bytes: one nibble per ref, even refs in the low nibble,
//! bit 3 = new cache entry, bits 0–2 = segment index; the nibble after the last ref has
//! bit 0 = long atoms (16-bit lengths). Then each ref: `InternalSegmentIndex:8`, and for a new
//! entry its length (8 or 16 bits) and UTF-8 text. Slot = segment × 256 + internal index.
//!
//! Refs are applied in order, so a header that defines a slot and a later message that reads
//! it agree, exactly as on the receiving node. A message's refs are resolved through the
//! [`RefTable`] filled while its header is applied, so later headers overwriting a slot do not
//! change what an earlier (e.g. still-fragmented) message meant.

use crate::error::{DistErrorKind, Error, Result};
use crate::term::u8_at;

pub const SLOTS: usize = 2048;

/// The refs of one message: ref index → cache slot, and which refs defined a new entry.
#[derive(Clone)]
pub struct RefTable {
    pub nrefs: u16,
    pub long_atoms: bool,
    pub slots: [u16; 255],
    new_mask: [u64; 4],
}

impl Default for RefTable {
    fn default() -> Self {
        RefTable { nrefs: 0, long_atoms: false, slots: [0; 255], new_mask: [0; 4] }
    }
}

impl RefTable {
    /// Did ref `idx` define a new cache entry in this message's header?
    #[inline]
    pub fn is_new(&self, idx: u8) -> bool {
        self.new_mask[(idx >> 6) as usize] & (1u64 << (idx & 63)) != 0
    }
    /// True when the header defines at least one new entry (dropping such a message would
    /// desynchronise the receiver's cache).
    pub fn defines_entries(&self) -> bool {
        self.new_mask.iter().any(|&m| m != 0)
    }
}

/// One direction's atom cache.
pub struct AtomCache {
    slots: Vec<Option<Box<str>>>,
}

impl Default for AtomCache {
    fn default() -> Self {
        AtomCache { slots: vec![None; SLOTS] }
    }
}

/// One ref of a header, as [`parse_header`] reports it.
#[derive(Debug, Clone, Copy)]
pub struct HeaderRef<'a> {
    pub index: usize,
    pub slot: u16,
    /// The atom text when the ref defines a new cache entry.
    pub new_text: Option<&'a [u8]>,
    /// Offset of the ref's InternalSegmentIndex byte.
    pub at: usize,
}

/// Parse the header whose `NumberOfAtomCacheRefs` byte is at `at`, calling `on_ref` for every
/// ref in order. Returns `(end offset, long_atoms)`. Shared by [`AtomCache::apply`] and by
/// callers that only need the header's extent.
pub fn parse_header<'a>(
    buf: &'a [u8],
    at: usize,
    mut on_ref: impl FnMut(HeaderRef<'a>) -> Result<()>,
) -> Result<(usize, bool)> {
    let n = u8_at(buf, at)? as usize;
    if n == 0 {
        return Ok((at + 1, false));
    }
    let flags_at = at + 1;
    let flag_len = n / 2 + 1;
    let flags = buf
        .get(flags_at..flags_at + flag_len)
        .ok_or_else(|| Error::new(flags_at, crate::ErrorKind::Truncated { need: flag_len }))?;
    let nibble = |i: usize| (flags[i / 2] >> ((i & 1) * 4)) & 0x0f;
    let long = nibble(n) & 1 != 0;
    let mut p = flags_at + flag_len;
    for index in 0..n {
        let f = nibble(index);
        let ref_at = p;
        let slot = (f & 0x07) as u16 * 256 + u8_at(buf, p)? as u16;
        p += 1;
        let mut new_text = None;
        if f & 0x08 != 0 {
            let len = if long {
                p += 2;
                crate::term::u16_at(buf, p - 2)? as usize
            } else {
                p += 1;
                u8_at(buf, p - 1)? as usize
            };
            let text = buf
                .get(p..p + len)
                .ok_or_else(|| Error::new(p, crate::ErrorKind::Truncated { need: len }))?;
            new_text = Some(text);
            p += len;
        }
        on_ref(HeaderRef { index, slot, new_text, at: ref_at })?;
    }
    Ok((p, long))
}

impl AtomCache {
    /// Parse the header whose `NumberOfAtomCacheRefs` byte is at `at`, apply its new entries to
    /// the cache, and fill `refs`. Returns the offset right after the header.
    pub fn apply(&mut self, buf: &[u8], at: usize, refs: &mut RefTable) -> Result<usize> {
        refs.nrefs = u8_at(buf, at)? as u16;
        refs.new_mask = [0; 4];
        let slots = &mut self.slots;
        let (end, long) = parse_header(buf, at, |r| {
            match r.new_text {
                Some(text) => {
                    let s = core::str::from_utf8(text)
                        .ok()
                        .filter(|s| s.chars().count() <= 255)
                        .ok_or(Error::dist(r.at, DistErrorKind::BadCacheAtom))?;
                    // One small allocation per new entry: entries are defined once per atom
                    // per connection, not per message.
                    slots[r.slot as usize] = Some(s.into());
                    refs.new_mask[r.index >> 6] |= 1u64 << (r.index & 63);
                }
                None if slots[r.slot as usize].is_none() => {
                    return Err(Error::dist(r.at, DistErrorKind::UndefinedCacheSlot { slot: r.slot }));
                }
                None => {}
            }
            refs.slots[r.index] = r.slot;
            Ok(())
        })?;
        refs.long_atoms = long;
        Ok(end)
    }

    /// The text of ref `idx` of the message whose header filled `refs`.
    #[inline]
    pub fn resolve<'s>(&'s self, refs: &RefTable, idx: u8) -> Option<&'s str> {
        if (idx as u16) >= refs.nrefs {
            return None;
        }
        self.slots[refs.slots[idx as usize] as usize].as_deref()
    }

    /// The text stored in a slot.
    pub fn slot(&self, slot: u16) -> Option<&str> {
        self.slots.get(slot as usize).and_then(|s| s.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header with refs: new 'foo' at seg 1 idx 5, then old ref to the same slot.
    fn header() -> Vec<u8> {
        // nrefs=2; flags: ref0 nibble = 8|1 (new, seg 1), ref1 nibble = 0|1 (old, seg 1);
        // byte0 = ref1<<4 | ref0 = 0x19; byte1 low nibble = long atoms flag 0.
        vec![2, 0x19, 0x00, 5, 3, b'f', b'o', b'o', 5]
    }

    #[test]
    fn defines_then_reads_a_slot() {
        let mut c = AtomCache::default();
        let mut r = RefTable::default();
        let h = header();
        let end = c.apply(&h, 0, &mut r).unwrap();
        assert_eq!(end, h.len());
        assert_eq!(r.nrefs, 2);
        assert!(r.is_new(0) && !r.is_new(1));
        assert_eq!(r.slots[0], 261);
        assert_eq!(c.resolve(&r, 0), Some("foo"));
        assert_eq!(c.resolve(&r, 1), Some("foo"));
        assert_eq!(c.resolve(&r, 2), None);
    }

    #[test]
    fn reading_an_undefined_slot_is_an_error() {
        let mut c = AtomCache::default();
        let mut r = RefTable::default();
        let e = c.apply(&[1, 0x01, 7], 0, &mut r).unwrap_err();
        assert_eq!(e.label(), "undefined_cache_slot");
    }

    #[test]
    fn long_atoms_use_16_bit_lengths() {
        let mut c = AtomCache::default();
        let mut r = RefTable::default();
        // nrefs=1: byte0 = (long flag nibble 1)<<4 | (new, seg 0) = 0x18
        let h = [1, 0x18, 9, 0, 2, b'o', b'k'];
        assert_eq!(c.apply(&h, 0, &mut r).unwrap(), 7);
        assert_eq!(c.slot(9), Some("ok"));
    }

    #[test]
    fn truncated_headers_are_errors_not_panics() {
        let h = header();
        for cut in 0..h.len() {
            let mut c = AtomCache::default();
            let mut r = RefTable::default();
            assert!(c.apply(&h[..cut], 0, &mut r).is_err(), "cut at {cut}");
        }
    }
}
