//! Property tests for the walker: terms built by a test-only encoder walk back exactly, every
//! prefix and every single-byte corruption is an error or a clean walk (never a panic), and
//! hostile counts and depths are refused without reserving memory or overflowing the stack.

use distgate_codec::term::{Limits, Skip, Term, Visitor, Walker};
use distgate_codec::{ErrorKind, Result};
use proptest::prelude::*;

/// A term shape, encoded by `encode` below (independent of the walker under test).
#[derive(Debug, Clone)]
enum T {
    Small(u8),
    Int(i32),
    Float(f64),
    Atom(String),
    Big(bool, Vec<u8>),
    Bin(Vec<u8>),
    Bits(Vec<u8>, u8),
    Str(Vec<u8>),
    Tuple(Vec<T>),
    List(Vec<T>, Box<T>),
    Map(Vec<(T, T)>),
    Pid(String, u32, u32, u32),
    Ref(String, u32, Vec<u32>),
    Export(String, String, u8),
    Fun(String, [u8; 16], u32, Vec<T>),
    Nil,
}

fn atom(out: &mut Vec<u8>, s: &str) {
    out.push(119);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn encode(t: &T, out: &mut Vec<u8>) {
    match t {
        T::Small(v) => out.extend_from_slice(&[97, *v]),
        T::Int(v) => {
            out.push(98);
            out.extend_from_slice(&v.to_be_bytes());
        }
        T::Float(f) => {
            out.push(70);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        T::Atom(s) => atom(out, s),
        T::Big(neg, d) => {
            out.extend_from_slice(&[110, d.len() as u8, *neg as u8]);
            out.extend_from_slice(d);
        }
        T::Bin(b) => {
            out.push(109);
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        T::Bits(b, bits) => {
            out.push(77);
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.push(*bits);
            out.extend_from_slice(b);
        }
        T::Str(s) => {
            out.push(107);
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s);
        }
        T::Tuple(xs) => {
            if xs.len() < 256 {
                out.extend_from_slice(&[104, xs.len() as u8]);
            } else {
                out.push(105);
                out.extend_from_slice(&(xs.len() as u32).to_be_bytes());
            }
            xs.iter().for_each(|x| encode(x, out));
        }
        T::List(xs, tail) => {
            out.push(108);
            out.extend_from_slice(&(xs.len() as u32).to_be_bytes());
            xs.iter().for_each(|x| encode(x, out));
            encode(tail, out);
        }
        T::Map(kv) => {
            out.push(116);
            out.extend_from_slice(&(kv.len() as u32).to_be_bytes());
            for (k, v) in kv {
                encode(k, out);
                encode(v, out);
            }
        }
        T::Pid(node, id, serial, cr) => {
            out.push(88);
            atom(out, node);
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&serial.to_be_bytes());
            out.extend_from_slice(&cr.to_be_bytes());
        }
        T::Ref(node, cr, ids) => {
            out.push(90);
            out.extend_from_slice(&(ids.len() as u16).to_be_bytes());
            atom(out, node);
            out.extend_from_slice(&cr.to_be_bytes());
            ids.iter().for_each(|i| out.extend_from_slice(&i.to_be_bytes()));
        }
        T::Export(m, f, a) => {
            out.push(113);
            atom(out, m);
            atom(out, f);
            out.extend_from_slice(&[97, *a]);
        }
        T::Fun(m, uniq, index, free) => {
            let start = out.len();
            out.push(112);
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.push(1);
            out.extend_from_slice(uniq);
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&(free.len() as u32).to_be_bytes());
            atom(out, m);
            out.extend_from_slice(&[97, 0]);
            out.push(98);
            out.extend_from_slice(&12345678u32.to_be_bytes());
            encode(&T::Pid("n@h".into(), 1, 0, 1), out);
            free.iter().for_each(|x| encode(x, out));
            let size = (out.len() - start - 1) as u32;
            out[start + 1..start + 5].copy_from_slice(&size.to_be_bytes());
        }
        T::Nil => out.push(106),
    }
}

fn count(t: &T) -> usize {
    1 + match t {
        T::Tuple(xs) => xs.iter().map(count).sum(),
        T::List(xs, tail) => xs.iter().map(count).sum::<usize>() + count(tail),
        T::Map(kv) => kv.iter().map(|(k, v)| count(k) + count(v)).sum(),
        T::Fun(_, _, _, free) => free.iter().map(count).sum(),
        _ => 0,
    }
}

fn arb_atom() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z][a-z0-9_]{0,12}", "\\PC{0,6}"].prop_filter("≤255 bytes", |s| s.len() <= 255)
}

fn arb_term() -> impl Strategy<Value = T> {
    let leaf = prop_oneof![
        any::<u8>().prop_map(T::Small),
        any::<i32>().prop_map(T::Int),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(T::Float),
        arb_atom().prop_map(T::Atom),
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 1..20)).prop_map(|(n, d)| T::Big(n, d)),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(T::Bin),
        (proptest::collection::vec(any::<u8>(), 1..10), 1u8..=8).prop_map(|(b, n)| T::Bits(b, n)),
        proptest::collection::vec(any::<u8>(), 0..30).prop_map(T::Str),
        (arb_atom(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(n, a, b, c)| T::Pid(n, a, b, c)),
        (arb_atom(), any::<u32>(), proptest::collection::vec(any::<u32>(), 1..=5)).prop_map(|(n, c, i)| T::Ref(n, c, i)),
        (arb_atom(), arb_atom(), any::<u8>()).prop_map(|(m, f, a)| T::Export(m, f, a)),
        Just(T::Nil),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(T::Tuple),
            (proptest::collection::vec(inner.clone(), 0..8), inner.clone()).prop_map(|(xs, t)| T::List(xs, Box::new(t))),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..5).prop_map(T::Map),
            (arb_atom(), any::<[u8; 16]>(), any::<u32>(), proptest::collection::vec(inner, 0..4))
                .prop_map(|(m, u, i, f)| T::Fun(m, u, i, f)),
        ]
    })
}

/// Records (at, end) of every term, and checks that leave always closes the latest open term.
#[derive(Default)]
struct Extents {
    entered: usize,
    open: Vec<usize>,
    closed: Vec<(usize, usize)>,
}
impl<'a> Visitor<'a> for Extents {
    fn enter(&mut self, at: usize, _t: &Term<'a>) -> Result<()> {
        self.entered += 1;
        self.open.push(at);
        Ok(())
    }
    fn leave(&mut self, at: usize, end: usize) {
        assert_eq!(self.open.pop(), Some(at), "leave must close the innermost open term");
        self.closed.push((at, end));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn encoded_terms_walk_back_exactly(t in arb_term()) {
        let mut bytes = Vec::new();
        encode(&t, &mut bytes);
        let mut w = Walker::default();
        let mut v = Extents::default();
        let end = w.walk(&bytes, 0, &mut v).unwrap();
        prop_assert_eq!(end, bytes.len());
        prop_assert_eq!(v.entered, count(&t));
        prop_assert!(v.open.is_empty());
        // The root's extent is the whole buffer, and every child lies inside it.
        prop_assert_eq!(*v.closed.last().unwrap(), (0, bytes.len()));
        // Each subterm's extent re-walks on its own to the same end.
        for &(at, e) in &v.closed {
            prop_assert_eq!(w.walk(&bytes, at, &mut Skip).unwrap(), e);
        }
    }

    #[test]
    fn every_prefix_is_an_error_not_a_panic(t in arb_term()) {
        let mut bytes = Vec::new();
        encode(&t, &mut bytes);
        let mut w = Walker::default();
        for cut in 0..bytes.len() {
            let r = w.walk(&bytes[..cut], 0, &mut Skip);
            prop_assert!(r.is_err(), "prefix of {} bytes walked", cut);
        }
    }

    #[test]
    fn corrupted_bytes_never_panic(t in arb_term(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = Vec::new();
        encode(&t, &mut bytes);
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let mut w = Walker::default();
        let _ = w.walk(&bytes, 0, &mut Skip);
    }
}

#[test]
fn a_million_deep_list_is_refused_without_overflowing_the_stack() {
    // [[[[ … ]]]]: LIST_EXT(1) element, then the NIL tail, a million times.
    let depth = 1_000_000;
    let mut bytes = Vec::with_capacity(depth * 6 + 1);
    for _ in 0..depth {
        bytes.extend_from_slice(&[108, 0, 0, 0, 1]);
    }
    bytes.push(106);
    bytes.extend(std::iter::repeat_n(106, depth));
    let mut w = Walker::default();
    let e = w.walk(&bytes, 0, &mut Skip).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::TooDeep { .. }), "{e}");
    // With the limit raised to fit, the same input walks to its end on a small thread stack.
    let mut w = Walker::new(Limits { max_depth: depth + 1, ..Limits::default() });
    let end = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || w.walk(&bytes, 0, &mut Skip).map(|e| (e, bytes.len())))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(end.0, end.1);
}

#[test]
fn absurd_counts_are_refused_before_anything_is_reserved() {
    let mut w = Walker::default();
    for bytes in [
        vec![108, 0xff, 0xff, 0xff, 0xff, 106],      // list of 4 billion
        vec![105, 0xff, 0xff, 0xff, 0xff],           // tuple of 4 billion
        vec![116, 0x7f, 0xff, 0xff, 0xff, 106, 106], // map of 2 billion pairs
        vec![109, 0xff, 0xff, 0xff, 0xff, 1, 2, 3],  // binary of 4 GiB
        vec![111, 0xff, 0xff, 0xff, 0xff, 0, 1],     // bignum of 4 GiB
    ] {
        let e = w.walk(&bytes, 0, &mut Skip).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::BadCount { .. }), "{bytes:?}: {e}");
    }
}

#[test]
fn errors_name_offset_and_reason() {
    let mut w = Walker::default();
    // {ok, <LOCAL_EXT>}: refused at the LOCAL tag's offset.
    let bytes = [104, 2, 119, 2, b'o', b'k', 121, 0];
    let e = w.walk(&bytes, 0, &mut Skip).unwrap_err();
    assert_eq!(e.offset, 6);
    assert_eq!(e.kind, ErrorKind::LocalExtRefused);
    assert!(e.to_string().contains("at byte 6"));
    // An unknown tag.
    let e = w.walk(&[104, 1, 200], 0, &mut Skip).unwrap_err();
    assert_eq!((e.offset, e.kind), (2, ErrorKind::UnknownTag(200)));
    // Invalid UTF-8 in a UTF-8 atom.
    let e = w.walk(&[119, 2, 0xc3, 0x28], 0, &mut Skip).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidUtf8Atom);
    // An atom cache ref outside a distribution message.
    let e = w.walk(&[82, 0], 0, &mut Skip).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::BadAtomCacheRef { .. }));
    // A fun whose Size lies.
    let mut f = Vec::new();
    encode(&T::Fun("m".into(), [7; 16], 0, vec![T::Small(1)]), &mut f);
    f[4] = f[4].wrapping_sub(1); // one byte short of the real encoding
    let e = w.walk(&f, 0, &mut Skip).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::FunSizeMismatch { .. }), "{e}");
}

#[test]
fn legacy_tags_decode() {
    let mut w = Walker::default();
    // FLOAT_EXT: 31 bytes of "%.20e" text.
    let mut fl = vec![99];
    let text = format!("{:.20e}", 1.5f64);
    let mut field = text.into_bytes();
    field.resize(31, 0);
    fl.extend_from_slice(&field);
    let (t, end) = w.read_header(&fl, 0).unwrap();
    assert_eq!(end, 32);
    assert!(matches!(t, Term::OldFloat { value, .. } if value == 1.5));
    // PID_EXT (8-bit creation), PORT_EXT, V4_PORT_EXT, REFERENCE_EXT, NEW_REFERENCE_EXT.
    let pid = [103, 119, 1, b'n', 0, 0, 0, 5, 0, 0, 0, 0, 2];
    assert!(matches!(w.read_header(&pid, 0).unwrap().0, Term::Pid(p) if p.id == 5 && p.creation == 2 && !p.new));
    let port = [102, 119, 1, b'n', 0, 0, 0, 9, 3];
    assert!(matches!(w.read_header(&port, 0).unwrap().0, Term::Port(p) if p.id == 9 && p.creation == 3));
    let v4 = [120, 119, 1, b'n', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
    assert!(matches!(w.read_header(&v4, 0).unwrap().0, Term::Port(p) if p.id == 1 << 32));
    let r = [101, 119, 1, b'n', 0, 0, 0, 1, 3];
    assert!(matches!(w.read_header(&r, 0).unwrap().0, Term::Ref(x) if x.ids.len() == 4));
    let nr = [114, 0, 2, 119, 1, b'n', 1, 0, 0, 0, 1, 0, 0, 0, 2];
    assert_eq!(w.read_header(&nr, 0).unwrap().1, nr.len());
    // FUN_EXT (old): NumFree Pid Module Index Uniq FreeVars.
    let mut old = vec![117, 0, 0, 0, 1];
    old.extend_from_slice(&pid);
    old.extend_from_slice(&[119, 1, b'm', 97, 3, 98, 0, 0, 1, 0, 97, 42]);
    let end = w.walk(&old, 0, &mut Skip).unwrap();
    assert_eq!(end, old.len());
}
