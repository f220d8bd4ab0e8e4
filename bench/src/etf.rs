//! A tiny External Term Format encoder for the load generator, and the benchmark payloads.
//!
//! Everything here writes terms *without* the leading `131` version byte; the framing code
//! (`node.rs`) adds it where the distribution framing wants one.

use serde::{Deserialize, Serialize};

pub fn small_int(out: &mut Vec<u8>, n: u8) {
    out.extend_from_slice(&[97, n]);
}
pub fn int(out: &mut Vec<u8>, n: i32) {
    out.push(98);
    out.extend_from_slice(&n.to_be_bytes());
}
/// `SMALL_ATOM_UTF8_EXT` (names up to 255 bytes).
pub fn atom(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 256, "atom too long");
    out.extend_from_slice(&[119, s.len() as u8]);
    out.extend_from_slice(s.as_bytes());
}
pub fn tuple(out: &mut Vec<u8>, arity: usize) {
    if arity < 256 {
        out.extend_from_slice(&[104, arity as u8]);
    } else {
        out.push(105);
        out.extend_from_slice(&(arity as u32).to_be_bytes());
    }
}
/// `LIST_EXT` header; the caller writes the elements and then the tail (usually [`nil`]).
pub fn list(out: &mut Vec<u8>, len: usize) {
    out.push(108);
    out.extend_from_slice(&(len as u32).to_be_bytes());
}
pub fn nil(out: &mut Vec<u8>) {
    out.push(106);
}
pub fn map(out: &mut Vec<u8>, pairs: usize) {
    out.push(116);
    out.extend_from_slice(&(pairs as u32).to_be_bytes());
}
pub fn binary(out: &mut Vec<u8>, b: &[u8]) {
    out.push(109);
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}
/// `STRING_EXT`: a list of bytes, as erl encodes `"text"`.
pub fn string(out: &mut Vec<u8>, s: &str) {
    out.push(107);
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}
pub fn float(out: &mut Vec<u8>, f: f64) {
    out.push(70);
    out.extend_from_slice(&f.to_bits().to_be_bytes());
}
/// `NEW_PID_EXT`.
pub fn pid(out: &mut Vec<u8>, node: &str, id: u32, serial: u32, creation: u32) {
    out.push(88);
    atom(out, node);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&serial.to_be_bytes());
    out.extend_from_slice(&creation.to_be_bytes());
}
/// `EXPORT_EXT`: `fun M:F/A`.
pub fn export(out: &mut Vec<u8>, m: &str, f: &str, arity: u8) {
    out.push(113);
    atom(out, m);
    atom(out, f);
    small_int(out, arity);
}

/// `NEW_FUN_EXT`: a local fun of `module` with the given free variables (already encoded).
#[allow(clippy::too_many_arguments)]
pub fn new_fun(out: &mut Vec<u8>, arity: u8, uniq: [u8; 16], index: u32, module: &str, old_index: i32, old_uniq: i32, pid_node: &str, free: &[&[u8]]) {
    let start = out.len();
    out.push(112);
    out.extend_from_slice(&[0; 4]); // Size, patched below
    out.push(arity);
    out.extend_from_slice(&uniq);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&(free.len() as u32).to_be_bytes());
    atom(out, module);
    int(out, old_index);
    int(out, old_uniq);
    pid(out, pid_node, 0, 0, 0);
    for f in free {
        out.extend_from_slice(f);
    }
    // Size counts itself and what follows, not the tag byte.
    let size = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&size.to_be_bytes());
}

/// The benchmark payloads. Each is `{Seq, Body}` with `Seq` an `INTEGER_EXT`, so the load
/// generator can stamp a sequence number in place (bytes 3..7 of the term).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadKind {
    /// ~100 B of small terms: atoms, small ints, a string, a float, a map.
    Small,
    /// ~1 KB mixed: a list of maps with binaries, strings, floats, atoms.
    Mixed,
    /// A 64 KiB binary.
    Bin64k,
    /// A 1 MiB binary (fragmented when FRAGMENTS is negotiated).
    Bin1m,
    /// A local fun (with free variables) and an external fun.
    Fun,
}

impl PayloadKind {
    pub const ALL: [PayloadKind; 5] = [PayloadKind::Small, PayloadKind::Mixed, PayloadKind::Bin64k, PayloadKind::Bin1m, PayloadKind::Fun];

    pub fn name(self) -> &'static str {
        match self {
            PayloadKind::Small => "100B",
            PayloadKind::Mixed => "1KB",
            PayloadKind::Bin64k => "64KiB",
            PayloadKind::Bin1m => "1MiB",
            PayloadKind::Fun => "fun",
        }
    }

    /// The atom `dg_bench_load:payload/1` takes for the same shape on a real node.
    pub fn erl_atom(self) -> &'static str {
        match self {
            PayloadKind::Small => "small",
            PayloadKind::Mixed => "mixed",
            PayloadKind::Bin64k => "bin64k",
            PayloadKind::Bin1m => "bin1m",
            PayloadKind::Fun => "fun",
        }
    }

    pub fn parse(s: &str) -> Option<PayloadKind> {
        let s = s.to_ascii_lowercase();
        PayloadKind::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(&s) || p.erl_atom() == s)
    }

    /// The payload term (no version byte), with `Seq` = 0. `node` names the sender (funs carry
    /// their creator's pid).
    pub fn encode(self, node: &str) -> Vec<u8> {
        let mut o = Vec::new();
        tuple(&mut o, 2);
        int(&mut o, 0);
        match self {
            PayloadKind::Small => {
                // {bench, [1..8], {ok, alpha, beta, gamma}, "hello world", 1.25, #{key => value}}
                tuple(&mut o, 6);
                atom(&mut o, "bench");
                list(&mut o, 8);
                for i in 1..=8 {
                    small_int(&mut o, i);
                }
                nil(&mut o);
                tuple(&mut o, 4);
                for a in ["ok", "alpha", "beta", "gamma"] {
                    atom(&mut o, a);
                }
                string(&mut o, "hello world");
                float(&mut o, 1.25);
                map(&mut o, 1);
                atom(&mut o, "key");
                atom(&mut o, "value");
            }
            PayloadKind::Mixed => {
                // [#{id => I, name => <<"item-I">>, tags => [red, green], score => I * 1.5,
                //    note => "some text"} || I <- 1..12]
                list(&mut o, 12);
                for i in 1..=12u8 {
                    map(&mut o, 5);
                    atom(&mut o, "id");
                    small_int(&mut o, i);
                    atom(&mut o, "name");
                    binary(&mut o, format!("item-{i:02}").as_bytes());
                    atom(&mut o, "tags");
                    list(&mut o, 2);
                    atom(&mut o, "red");
                    atom(&mut o, "green");
                    nil(&mut o);
                    atom(&mut o, "score");
                    float(&mut o, i as f64 * 1.5);
                    atom(&mut o, "note");
                    string(&mut o, "some text");
                }
                nil(&mut o);
            }
            PayloadKind::Bin64k => binary(&mut o, &pattern(64 << 10)),
            PayloadKind::Bin1m => binary(&mut o, &pattern(1 << 20)),
            PayloadKind::Fun => {
                // {fun_msg, fun(X) -> X + Y end (Y = 42, Z = <<"ctx">>), fun lists:reverse/1}
                tuple(&mut o, 3);
                atom(&mut o, "fun_msg");
                let mut y = Vec::new();
                small_int(&mut y, 42);
                let mut z = Vec::new();
                binary(&mut z, b"ctx");
                let uniq = *b"dg_bench_load_f1";
                new_fun(&mut o, 1, uniq, 0, "dg_bench_load", 0, 12345678, node, &[&y, &z]);
                export(&mut o, "lists", "reverse", 1);
            }
        }
        o
    }
}

/// Bytes 0..n of a repeating, non-constant pattern.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0]).collect()
}

/// Write `seq` into a payload made by [`PayloadKind::encode`].
pub fn stamp(payload: &mut [u8], seq: u32) {
    payload[3..7].copy_from_slice(&seq.to_be_bytes());
}

/// The sequence number of a payload made by [`PayloadKind::encode`] (as echoed back).
pub fn seq_of(payload: &[u8]) -> Option<u32> {
    if payload.len() >= 7 && payload[0] == 104 && payload[1] == 2 && payload[2] == 98 {
        Some(u32::from_be_bytes([payload[3], payload[4], payload[5], payload[6]]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_walk_and_have_the_advertised_sizes() {
        for k in PayloadKind::ALL {
            let mut t = vec![131];
            t.extend(k.encode("load@127.0.0.1"));
            distgate_codec::term::walk_versioned(&t, Default::default()).unwrap_or_else(|e| panic!("{k:?}: {e}"));
            let n = t.len();
            match k {
                PayloadKind::Small => assert!((90..=130).contains(&n), "{n}"),
                PayloadKind::Mixed => assert!((900..=1300).contains(&n), "{n}"),
                PayloadKind::Bin64k => assert!(n > 65536 && n < 65600),
                PayloadKind::Bin1m => assert!(n > 1 << 20 && n < (1 << 20) + 64),
                PayloadKind::Fun => assert!(n < 300, "{n}"),
            }
            let mut p = k.encode("x@y");
            stamp(&mut p, 77);
            assert_eq!(seq_of(&p), Some(77));
        }
    }
}
