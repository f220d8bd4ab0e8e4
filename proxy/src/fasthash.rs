//! The hash for the tables the forwarding path looks up: policy names and patterns, registry
//! modules, versions (MD5s) and exports. They are built from the configuration or the
//! operator's clusters and only looked up with names from the wire, so a peer cannot flood
//! them with colliding keys, and a keyed hash (SipHash) would cost more per lookup than the
//! rest of a control check.
//!
//! Eight bytes per step, not one: FNV-1a, used before, chains one dependent multiply per byte,
//! and hashing a registered name of a dozen bytes was the largest single cost of judging a
//! REG_SEND. Each step is a folded multiply (the full 128-bit product's halves xored, as in
//! wyhash and foldhash), which spreads every input bit over every output bit: a plain
//! multiply (FxHash) leaves the low bits, which pick the bucket, blind to the high input bytes.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Odd, with bits spread evenly (rustc-hash 2's constant).
const K: u64 = 0xf135_7aea_2e62_a9c5;

pub struct WordHash(u64);

impl Default for WordHash {
    /// Not zero: a zero state stays zero over zero words.
    fn default() -> Self {
        WordHash(0x243f_6a88_85a3_08d3)
    }
}

impl WordHash {
    #[inline]
    fn add(&mut self, word: u64) {
        let m = ((self.0 ^ word) as u128).wrapping_mul(K as u128);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for WordHash {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.add(le64(w));
        }
        let rest = words.remainder();
        let r = rest.len();
        if r == 0 {
            return;
        }
        // The last bytes in one or two loads that may overlap what is hashed already, never a
        // copy into a padded word (a store and a reload that stalled on each name). Keys of
        // one length read the same positions, and the length itself is hashed (`Hash for
        // [u8]` and `str` add it or a terminator), so no two keys are made to collide.
        let tail = if bytes.len() >= 8 {
            le64(&bytes[bytes.len() - 8..])
        } else if r >= 4 {
            le32(rest) | le32(&rest[r - 4..]) << 32
        } else {
            (rest[0] as u64) << 16 | (rest[r / 2] as u64) << 8 | rest[r - 1] as u64
        };
        self.add(tail);
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The first 8 bytes, little-endian (callers pass at least 8).
#[inline]
fn le64(b: &[u8]) -> u64 {
    b.first_chunk::<8>().map_or(0, |c| u64::from_le_bytes(*c))
}

/// The first 4 bytes, little-endian (callers pass at least 4).
#[inline]
fn le32(b: &[u8]) -> u64 {
    b.first_chunk::<4>().map_or(0, |c| u32::from_le_bytes(*c) as u64)
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHash>>;
pub type FastSet<K> = HashSet<K, BuildHasherDefault<WordHash>>;

/// Keys up to this many are compared one by one, more are hashed.
const FEW: usize = 8;

/// A map from byte strings, for the policy's allow-lists: a handful of keys (what operators
/// write) are compared in turn, which costs less than hashing the looked-up name (most
/// comparisons stop at the length); a long list is hashed.
#[derive(Debug)]
pub enum KeyMap<V> {
    Few(Vec<(Box<[u8]>, V)>),
    Many(FastMap<Box<[u8]>, V>),
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap::Few(Vec::new())
    }
}

impl<V> KeyMap<V> {
    /// The value under `key`, made with `new` if absent.
    pub fn entry(&mut self, key: &[u8], new: impl FnOnce() -> V) -> &mut V {
        if let KeyMap::Few(v) = self {
            if v.len() >= FEW && !v.iter().any(|(k, _)| **k == *key) {
                *self = KeyMap::Many(std::mem::take(v).into_iter().collect());
            }
        }
        match self {
            KeyMap::Few(v) => {
                let i = match v.iter().position(|(k, _)| **k == *key) {
                    Some(i) => i,
                    None => {
                        v.push((key.into(), new()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            KeyMap::Many(m) => m.entry(key.into()).or_insert_with(new),
        }
    }

    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        match self {
            KeyMap::Few(v) => v.iter().find(|(k, _)| **k == *key).map(|(_, v)| v),
            KeyMap::Many(m) => m.get(key),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            KeyMap::Few(v) => v.len(),
            KeyMap::Many(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn h(b: &[u8]) -> u64 {
        BuildHasherDefault::<WordHash>::default().hash_one(b)
    }

    #[test]
    fn keys_differing_anywhere_or_only_in_length_hash_apart() {
        let keys: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\0".to_vec(),
            b"\0\0".to_vec(),
            b"net_kernel".to_vec(),
            b"net_kernem".to_vec(),
            b"global_name_server".to_vec(),
            b"global_name_servex".to_vec(),
            b"xlobal_name_server".to_vec(),
            b"12345678".to_vec(),
            b"123456789".to_vec(),
            b"123456780".to_vec(),
            b"a".to_vec(),
            b"b".to_vec(),
            b"ab".to_vec(),
            b"ba".to_vec(),
            b"abc".to_vec(),
            b"abd".to_vec(),
            b"acc".to_vec(),
            b"abcd".to_vec(),
            b"abce".to_vec(),
            b"abcde".to_vec(),
            b"abcdf".to_vec(),
            b"bbcde".to_vec(),
            b"abcdefg".to_vec(),
            b"abcdefh".to_vec(),
            b"abcxefg".to_vec(),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(h(a), h(b), "{a:?} and {b:?}");
            }
        }
    }

    #[test]
    fn every_byte_of_every_length_counts() {
        // A byte the tail reads skip would make these collide.
        let base: Vec<u8> = (0..24u8).map(|i| b'a' + i).collect();
        let mut seen = std::collections::HashSet::new();
        for len in 0..=base.len() {
            assert!(seen.insert(h(&base[..len])), "length {len}");
            for at in 0..len {
                let mut k = base[..len].to_vec();
                k[at] ^= 0x20;
                assert!(seen.insert(h(&k)), "length {len}, byte {at}");
            }
        }
    }

    #[test]
    fn a_key_map_finds_what_it_holds_few_or_many() {
        for n in [0, 1, FEW - 1, FEW, FEW + 1, 100] {
            let mut m = KeyMap::default();
            for i in 0..n {
                *m.entry(format!("name_{i}").as_bytes(), || 0) += i + 1;
                // A second entry of the same key finds the first.
                *m.entry(format!("name_{i}").as_bytes(), || 0) += 1000;
            }
            assert_eq!(m.len(), n);
            assert_eq!(matches!(m, KeyMap::Many(_)), n > FEW, "{n} keys");
            for i in 0..n {
                assert_eq!(m.get(format!("name_{i}").as_bytes()), Some(&(i + 1001)), "{n} keys");
            }
            for miss in [&b""[..], b"name_", b"name_1x", b"Name_1", format!("name_{n}").as_bytes()] {
                assert_eq!(m.get(miss), None, "{n} keys: {miss:?}");
            }
        }
    }

    #[test]
    fn buckets_spread_over_the_low_bits() {
        // hashbrown indexes by the low bits: 4096 module-like names into 64 buckets must not
        // pile up (each bucket would get 64 on average).
        let mut buckets = [0u32; 64];
        for i in 0..4096 {
            buckets[(h(format!("mod_{i}").as_bytes()) & 63) as usize] += 1;
        }
        let max = buckets.iter().max().copied().unwrap_or(0);
        assert!(max < 128, "a bucket got {max} of 4096: {buckets:?}");
    }
}
