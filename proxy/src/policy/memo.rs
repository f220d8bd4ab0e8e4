//! A memo of the funs one link direction recently let pass, so that a stream of messages
//! carrying the same funs (a fun flood, a process that sends the same closure over and over)
//! is not looked up in the registry and the module rules again for every message.
//!
//! Only passes without a finding are remembered: a local fun whose module version the target
//! knows, or whose action is `pass`; an export fun the target exports, whose module its
//! registry does not know, or whose action is `pass`. Such a decision depends only on the fun's
//! module text and MD5 (a local fun) or module, function and arity (an export fun), the target
//! registry's snapshot and the policy, so the memo is keyed by the former and holds for one
//! snapshot and one policy:
//!
//! - it holds a `Weak` of the snapshot it was filled against and empties itself when the
//!   target registry serves another one (a refresh, a reload, another registry). The `Weak`
//!   keeps that snapshot's allocation, so its address, from being reused by a later snapshot
//!   while it is compared, without keeping an old snapshot's tables alive on an idle link;
//! - the direction empties it whenever the route's policy generation moves (a reload).
//!
//! It is direct-mapped ([`SLOTS`] slots, allocated on the first remembered fun; a fun whose
//! names take more than [`TEXT`] bytes is never remembered), so it is bounded whatever the
//! traffic: a peer that sends ever different funs only makes it miss, and a miss costs what a
//! judgement cost without it. Keys are compared in full; the slot index is only a hint.

use std::sync::{Arc, Weak};

use super::compile::Compiled;
use crate::registry::Snapshot;

/// Slots of the memo.
pub const SLOTS: usize = 64;
/// Most bytes of names (module, or module and function) a remembered fun may have.
pub const TEXT: usize = 58;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Empty,
    Local,
    Export,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    kind: Kind,
    module_len: u8,
    function_len: u8,
    arity: u8,
    uniq: [u8; 16],
    /// The module's text, then (an export fun) the function's.
    text: [u8; TEXT],
}

const EMPTY: Slot = Slot { kind: Kind::Empty, module_len: 0, function_len: 0, arity: 0, uniq: [0; 16], text: [0; TEXT] };

impl Slot {
    fn module(&self) -> &[u8] {
        self.text.get(..self.module_len as usize).unwrap_or(&[])
    }
    fn function(&self) -> &[u8] {
        let m = self.module_len as usize;
        self.text.get(m..m + self.function_len as usize).unwrap_or(&[])
    }
}

/// Recently passed funs of one link direction (see the module docs).
#[derive(Debug, Default)]
pub struct FunMemo {
    slots: Option<Box<[Slot; SLOTS]>>,
    /// The target snapshot every remembered pass was judged against.
    snapshot: Option<Weak<Snapshot>>,
    /// And the policy (its address: a second check, the direction also empties the memo when
    /// the policy generation moves, which is what rules out an address reused by a new one).
    policy: usize,
}

/// A cheap mix of a name: its first and last 8 bytes (all of it when shorter) and its length.
/// Names under 8 bytes (`lists`, `reverse`, most module and function names) are read as two
/// overlapping halves, like [`same`] compares them: a byte loop here was a fifth of a probe.
/// Only a slot hint: keys are compared in full.
#[inline]
fn name_hash(b: &[u8]) -> u64 {
    let n = b.len() as u64;
    let w = match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        (Some(head), Some(tail)) => u64::from_le_bytes(*head) ^ u64::from_le_bytes(*tail).rotate_left(29),
        _ => match (halves::<4>(b), halves::<2>(b)) {
            (Some((h, t)), _) => u32::from_le_bytes(h) as u64 | (u32::from_le_bytes(t) as u64) << 32,
            (None, Some((h, t))) => u16::from_le_bytes(h) as u64 | (u16::from_le_bytes(t) as u64) << 16,
            (None, None) => b.first().copied().unwrap_or(0) as u64,
        },
    };
    w ^ n.rotate_left(56)
}

/// The first and the last `N` bytes of `b` (overlapping when `b` is shorter than `2 * N`).
#[inline(always)]
fn halves<const N: usize>(b: &[u8]) -> Option<([u8; N], [u8; N])> {
    Some((*b.first_chunk::<N>()?, *b.last_chunk::<N>()?))
}

/// `a == b` for names, inline: a slice comparison calls `memcmp`, whose call and length
/// dispatch cost more than comparing a module name of a dozen bytes, twice per fun probed.
/// Up to 16 bytes, two overlapping reads of each (words, halves or quarters by length) decide.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        0 => true,
        1 => a[..1] == b[..1],
        2..4 => halves::<2>(a) == halves::<2>(b),
        4..8 => halves::<4>(a) == halves::<4>(b),
        8..=16 => halves::<8>(a) == halves::<8>(b),
        _ => a == b,
    }
}

fn index(h: u64) -> usize {
    (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SLOTS
}

fn local_index(uniq: &[u8; 16]) -> usize {
    // An MD5 is as good a hash as any.
    let x = u128::from_le_bytes(*uniq);
    index(x as u64 ^ (x >> 64) as u64)
}

fn export_index(module: &[u8], function: &[u8], arity: u8) -> usize {
    index(name_hash(module) ^ name_hash(function).rotate_left(17) ^ arity as u64)
}

impl FunMemo {
    /// Forget everything (the policy changed).
    pub fn clear(&mut self) {
        if let Some(s) = &mut self.slots {
            s.fill(EMPTY);
        }
        self.snapshot = None;
        self.policy = 0;
    }

    /// Make the memo valid for `target` (the snapshot the next judgement consults) and
    /// `policy`: if it was filled against another snapshot or policy, it is emptied.
    /// (Inlined: on the forwarding path it is two compares, every message carrying funs.)
    #[inline(always)]
    pub fn sync(&mut self, target: &Arc<Snapshot>, policy: &Compiled) {
        let p = policy as *const Compiled as usize;
        if self.policy != p || !self.snapshot.as_ref().is_some_and(|s| std::ptr::eq(s.as_ptr(), Arc::as_ptr(target))) {
            self.reset(target, p);
        }
    }

    #[cold]
    #[inline(never)]
    fn reset(&mut self, target: &Arc<Snapshot>, policy: usize) {
        self.clear();
        self.snapshot = Some(Arc::downgrade(target));
        self.policy = policy;
    }

    /// The memo, if it was synced to exactly this snapshot and policy.
    pub fn valid_for(&mut self, target: &Snapshot, policy: &Compiled) -> Option<&mut FunMemo> {
        let ok = self.policy == policy as *const Compiled as usize && self.snapshot.as_ref().is_some_and(|s| std::ptr::eq(s.as_ptr(), target));
        ok.then_some(self)
    }

    fn slot(&self, i: usize) -> Option<&Slot> {
        self.slots.as_ref().and_then(|s| s.get(i))
    }

    fn slot_mut(&mut self, i: usize) -> Option<&mut Slot> {
        // Nothing is remembered before sync: a pass is only worth keeping against a known
        // snapshot.
        self.snapshot.as_ref()?;
        self.slots.get_or_insert_with(|| Box::new([EMPTY; SLOTS])).get_mut(i)
    }

    /// Did a local fun of `module` (its text) with this MD5 pass?
    pub fn local_passed(&self, module: &[u8], uniq: &[u8; 16]) -> bool {
        self.slot(local_index(uniq)).is_some_and(|s| s.kind == Kind::Local && s.uniq == *uniq && same(s.module(), module))
    }

    /// A local fun of `module` with this MD5 passed.
    pub fn remember_local(&mut self, module: &[u8], uniq: &[u8; 16]) {
        let Ok(module_len) = u8::try_from(module.len()) else { return };
        if module.len() > TEXT {
            return;
        }
        if let Some(s) = self.slot_mut(local_index(uniq)) {
            s.kind = Kind::Local;
            s.module_len = module_len;
            s.function_len = 0;
            s.uniq = *uniq;
            s.text[..module.len()].copy_from_slice(module);
        }
    }

    /// Did the export fun `fun module:function/arity` pass?
    pub fn export_passed(&self, module: &[u8], function: &[u8], arity: u8) -> bool {
        self.slot(export_index(module, function, arity))
            .is_some_and(|s| s.kind == Kind::Export && s.arity == arity && same(s.module(), module) && same(s.function(), function))
    }

    /// The export fun `fun module:function/arity` passed.
    pub fn remember_export(&mut self, module: &[u8], function: &[u8], arity: u8) {
        let n = module.len() + function.len();
        let (Ok(module_len), Ok(function_len)) = (u8::try_from(module.len()), u8::try_from(function.len())) else { return };
        if n > TEXT {
            return;
        }
        if let Some(s) = self.slot_mut(export_index(module, function, arity)) {
            s.kind = Kind::Export;
            s.module_len = module_len;
            s.function_len = function_len;
            s.arity = arity;
            s.text[..module.len()].copy_from_slice(module);
            s.text[module.len()..n].copy_from_slice(function);
        }
    }

    /// Remembered funs (tests).
    pub fn len(&self) -> usize {
        self.slots.as_ref().map_or(0, |s| s.iter().filter(|s| s.kind != Kind::Empty).count())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Compiled {
        Compiled::parse("p", "unknown_fun = \"replace\"\n").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_compare_as_slices_do() {
        let names: Vec<Vec<u8>> = (0..=24).map(|n| (0..n as u8).map(|i| b'a' + i).collect()).collect();
        for a in &names {
            for b in &names {
                assert_eq!(same(a, b), a == b, "{a:?} {b:?}");
            }
            // One byte changed anywhere.
            for at in 0..a.len() {
                let mut c = a.clone();
                c[at] ^= 0x20;
                assert!(!same(a, &c) && !same(&c, a), "{a:?} at {at}");
            }
        }
    }

    #[test]
    fn remembers_by_full_key_and_forgets_on_another_snapshot_or_policy() {
        let a = Arc::new(Snapshot::default());
        let b = Arc::new(Snapshot::default());
        let (p, q) = (policy(), policy());
        let mut m = FunMemo::default();
        // Nothing is remembered before a snapshot is known.
        m.remember_local(b"m", &[1; 16]);
        assert!(!m.local_passed(b"m", &[1; 16]));
        m.sync(&a, &p);
        assert!(m.valid_for(&a, &p).is_some());
        assert!(m.valid_for(&b, &p).is_none() && m.valid_for(&a, &q).is_none());
        m.remember_local(b"m", &[1; 16]);
        m.remember_export(b"lists", b"reverse", 1);
        assert!(m.local_passed(b"m", &[1; 16]));
        assert!(!m.local_passed(b"n", &[1; 16]), "another module, same MD5");
        assert!(!m.local_passed(b"m", &[2; 16]));
        assert!(m.export_passed(b"lists", b"reverse", 1));
        assert!(!m.export_passed(b"lists", b"reverse", 2));
        assert!(!m.export_passed(b"list", b"sreverse", 1), "the split between the names counts");
        assert!(!m.local_passed(b"lists", &[0; 16]));
        m.sync(&a, &p);
        assert_eq!(m.len(), 2, "the same snapshot and policy keep the memo");
        m.sync(&b, &p);
        assert!(m.is_empty());
        assert!(!m.local_passed(b"m", &[1; 16]));
        m.remember_local(b"m", &[1; 16]);
        m.sync(&b, &q);
        assert!(m.is_empty(), "another policy");
        m.remember_local(b"m", &[1; 16]);
        m.clear();
        assert!(!m.local_passed(b"m", &[1; 16]));
        assert!(m.valid_for(&b, &q).is_none());
    }

    #[test]
    fn the_memo_does_not_keep_a_snapshot_alive_nor_match_its_successor() {
        let p = policy();
        let mut m = FunMemo::default();
        let a = Arc::new(Snapshot::default());
        m.sync(&a, &p);
        m.remember_local(b"m", &[1; 16]);
        let weak = Arc::downgrade(&a);
        drop(a);
        assert!(weak.upgrade().is_none(), "the registry's last reference frees it");
        let b = Arc::new(Snapshot::default());
        assert!(m.valid_for(&b, &p).is_none());
        m.sync(&b, &p);
        assert!(m.is_empty());
    }

    #[test]
    fn bounded_and_long_names_are_not_remembered() {
        let s = Arc::new(Snapshot::default());
        let mut m = FunMemo::default();
        m.sync(&s, &policy());
        let long = [b'x'; TEXT + 1];
        m.remember_local(&long, &[1; 16]);
        m.remember_export(&long[..TEXT - 2], b"abc", 0);
        assert!(m.is_empty());
        m.remember_export(&long[..TEXT - 3], b"abc", 0);
        assert!(m.export_passed(&long[..TEXT - 3], b"abc", 0));
        for i in 0..10_000u32 {
            let mut uniq = [0; 16];
            uniq[..4].copy_from_slice(&i.to_le_bytes());
            m.remember_local(b"m", &uniq);
        }
        assert!(m.len() <= SLOTS);
    }
}
