//! Any bytes as an atom-cache header applied to one cache, twice (the second sees slots the
//! first defined).
#![no_main]
use distgate_codec::atom_cache::{AtomCache, RefTable};
use distgate_codec::message::header_len;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = AtomCache::default();
    let mut r = RefTable::default();
    let applied = c.apply(data, 0, &mut r);
    // The header-only parser must agree with the applying one on where the header ends.
    if let Ok(end) = applied {
        assert_eq!(header_len(data).ok(), Some(end));
        for i in 0..r.nrefs {
            assert!(c.resolve(&r, i as u8).is_some());
        }
        let _ = c.apply(&data[end..], 0, &mut r);
    }
});
