//! FNV-1a for the tables the forwarding path looks up: policy names and patterns, registry
//! modules and versions. They are built from the configuration or the operator's clusters and
//! only looked up with names from the wire, so a peer cannot flood them with colliding keys;
//! SipHash would cost more per lookup than the rest of a control check.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
pub type FnvSet<K> = HashSet<K, BuildHasherDefault<Fnv>>;
