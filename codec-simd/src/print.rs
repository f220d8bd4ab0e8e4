//! Printing a term exactly as Erlang/OTP 25's `io_lib:format("~w", [Term])` does.
//!
//! The printer is a [`Visitor`] driven by the iterative [`Walker`]: it never recurses, so a
//! peer's `[[[[…]]]]` a million deep costs heap (bounded by [`Limits::max_depth`]), never
//! stack. It keeps its own explicit stack of open containers to place separators.
//!
//! # What is printed exactly as OTP 25 prints it
//!
//! Every term `binary_to_term/1` can build on any node prints here exactly as
//! `io_lib:format("~w", [binary_to_term(Bytes)])` prints it on OTP 25 (checked against a real
//! node by `tests/print_erl.rs`), with the exceptions listed further down:
//!
//! - **Integers** in decimal; bignums of any size (the base conversion is quadratic and nothing
//!   is capped). A bignum with a zero magnitude prints `0`, whatever its sign byte.
//! - **Floats** ([`write_float`]): OTP 25's `~w` is `float_to_list(F, [short])`: the shortest
//!   digits that read back to the same double, laid out as fixed notation or as
//!   `D.DDDe[-]X` (no `+`, no padding, always at least one digit after the point), whichever
//!   is shorter, fixed notation winning ties — except that a float at or above 2^53 in
//!   magnitude whose fixed form would be an integer is always scientific. Concretely, with
//!   `n` shortest digits and value `digits × 10^e`: fixed when `n = 1` and `-4 ≤ e ≤ 2`, or
//!   `n > 1` and `-(n+2) ≤ e ≤ 1` (`≤ 2` once the scientific exponent is ≥ 10), unless the
//!   2^53 rule applies. So `0.0001`, `1.0e-5`, `100.0`, `1.0e3`, `12340.0`, `1.234e5`,
//!   `1234567890123456.0`, `9.007199254740992e15`, `1.0e21`, `5.0e-324`, `-0.0`. When the
//!   double lies exactly halfway between the two closest shortest candidates, the even one
//!   wins (Ryu's rule): `708072523621728.25` prints `708072523621728.2`.
//!   Old `FLOAT_EXT` text floats print as the double they denote, by the same rules.
//!   A `NEW_FLOAT_EXT` holding an infinity or NaN (which `binary_to_term` rejects) is an
//!   error ([`ErrorKind::BadFloat`]).
//! - **Atoms** ([`write_atom`]): unquoted when the first character is `a`–`z` or Latin-1
//!   `ß`–`ÿ` except `÷`, every other character is a letter (`a`–`z`, `A`–`Z`, `ß`–`ÿ` but `÷`,
//!   `À`–`Þ` but `×`), a digit, `_` or `@`, and the atom is not a reserved word (`after and
//!   andalso band begin bnot bor bsl bsr bxor case catch cond div end fun if let not of or
//!   orelse receive rem try when xor`; `maybe` and `else` are *not* quoted on OTP 25, where
//!   the `maybe_expr` feature is off by default). Otherwise single-quoted, with `\'`, `\\`,
//!   `\n \r \t \v \b \f \e \d` (for 10 13 9 11 8 12 27 127), other characters below 160 as
//!   three octal digits (`\001`, `\237`), 160–255 as themselves and anything above 255 as
//!   `\x{HEX}` (upper-case hex): `~w` without the `t` modifier writes atoms "as Latin-1".
//!   `''` is the empty atom. `ATOM_EXT` text is Latin-1, the UTF-8 tags' text is UTF-8;
//!   both print by character.
//! - **Lists** are lists of integers, never strings: `STRING_EXT` `"hi"` prints `[104,105]`,
//!   `[]` is `[]`, improper lists `[a|b]`, `[a,b|c]`. A `LIST_EXT` whose tail is itself a
//!   list (`STRING_EXT`, `LIST_EXT` or `NIL`) continues the same list, and a `LIST_EXT` of
//!   0 elements is just its tail, as `binary_to_term` builds them.
//! - **Tuples** `{}` / `{a,b}`; **maps** `#{}` / `#{k => v,k2 => v2}`.
//! - **Binaries** `<<1,2,3>>`, `<<>>`; **bitstrings** print the whole bytes then the value of
//!   the top `bits` bits of the last byte as `V:bits`: `<<1,2:3>>`, `<<5:3>>` (no whole
//!   bytes). A `BIT_BINARY_EXT` with 8 bits is an ordinary binary.
//! - **Export funs** `fun M:F/A`, as `erlang:fun_to_list/1` prints them, which is *not* the
//!   atom rule above: it quotes unless the first character is a Latin-1 lower-case letter and
//!   the rest are Latin-1 letters, digits or `_` (so `'a@b'` is quoted and `end`, `receive`
//!   are not), escapes `\'` `\\` `\n \f \t \r \b \v`, other controls below 32 and 128–159 as
//!   three octal digits (27 is `\033`, 127 is printed raw), and — an OTP 25 quirk reproduced
//!   on purpose — emits the atom's UTF-8 *bytes* as characters, so a non-ASCII `'é'` comes
//!   out as the two characters `Ã©`: `fun 'Ã©':f/1`.
//! - **Local funs** (`NEW_FUN_EXT`) print `#Fun<MODULE.OLD_INDEX.OLD_UNIQ>` with the module
//!   *unquoted and unescaped* (its UTF-8 bytes as characters, as above) and the two
//!   old-style integers from the encoding in signed decimal: exactly what OTP 25 prints, on
//!   any node, whether or not the module is loaded. The free variables are not printed.
//!   An old `FUN_EXT` prints `#Fun<MODULE.INDEX.UNIQ>` from its own fields.
//!
//! # Not as erl: maps, and node-local identifiers
//!
//! - **Map order.** Erl prints a map in the order of the map it built, not of the encoding.
//!   For up to 32 keys that is term order, which is how every OTP node encodes them; this
//!   printer prints such maps in encoded order. For more than 32 keys erl's `~w` iterates
//!   (`maps:next/1`) in exactly the *reverse* of the order `term_to_binary/1` writes the pairs
//!   (that is `maps:to_list/1` order), so this printer prints the pairs of a map with more
//!   than 32 keys in reverse encoded order. Terms encoded by OTP therefore print exactly; a
//!   map encoded in some other order prints in its own order (erl would re-sort/re-hash).
//! - **Pids, ports and references** print as erl prints them only on the node that owns
//!   them (erl shows a node-local channel number instead of the node name). They print here
//!   in forms that cannot be confused with a local one, the node name always single-quoted
//!   with the atom escapes above:
//!   - pid: `#Pid<'node@host'.ID.SERIAL.CREATION>`
//!   - port: `#Port<'node@host'.ID.CREATION>`
//!   - reference: `#Ref<'node@host'.CREATION.Wn.….W1>` — the id words in the order erl
//!     prints them (last word on the wire first), so the tail after the creation equals
//!     the tail of erl's `#Ref<0.W3.W2.W1>`.
//!
//! Atom cache references (`ATOM_CACHE_REF`) are resolved through [`AtomRefs`]; the walker
//! must be told how many refs the message carries ([`Walker::set_cache_refs`]).

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::error::{Error, ErrorKind, Result};
use crate::tag;
use crate::term::{self, Atom, Limits, Term, Visitor, Walker};

/// Resolves `ATOM_CACHE_REF` indices (index into the current message's ref list) to atom
/// text (UTF-8).
pub trait AtomRefs {
    fn resolve(&self, idx: u8) -> Option<&str>;
}

/// Plain terms: no atom cache, every ref is unresolvable.
impl AtomRefs for () {
    fn resolve(&self, _idx: u8) -> Option<&str> {
        None
    }
}

impl AtomRefs for [&str] {
    fn resolve(&self, idx: u8) -> Option<&str> {
        self.get(idx as usize).copied()
    }
}

impl AtomRefs for [String] {
    fn resolve(&self, idx: u8) -> Option<&str> {
        self.get(idx as usize).map(String::as_str)
    }
}

impl<const N: usize> AtomRefs for [&str; N] {
    fn resolve(&self, idx: u8) -> Option<&str> {
        self.get(idx as usize).copied()
    }
}

impl AtomRefs for Vec<&str> {
    fn resolve(&self, idx: u8) -> Option<&str> {
        self.get(idx as usize).copied()
    }
}

impl AtomRefs for Vec<String> {
    fn resolve(&self, idx: u8) -> Option<&str> {
        self.get(idx as usize).map(String::as_str)
    }
}

impl<T: AtomRefs + ?Sized> AtomRefs for &T {
    fn resolve(&self, idx: u8) -> Option<&str> {
        (**self).resolve(idx)
    }
}

/// Print the term starting at `at` in `body` (no version byte). Returns the text and the
/// offset where the term ends. Errors are the walker's, plus [`ErrorKind::BadFloat`] for a
/// non-finite `NEW_FLOAT_EXT` and [`ErrorKind::BadAtomCacheRef`] for a ref `refs` cannot
/// resolve.
pub fn format_term(body: &[u8], at: usize, refs: &dyn AtomRefs, walker: &mut Walker) -> Result<(String, usize)> {
    let mut p = Printer::new(refs);
    let end = walker.walk(body, at, &mut p)?;
    Ok((p.finish(), end))
}

/// Print a whole versioned term (`131 …`, possibly compressed `131 80 …`) with default
/// [`Limits`]; the buffer must hold exactly one term. Error offsets are relative to `buf`
/// for a plain term and to the inflated bytes for a compressed one.
pub fn format_versioned(buf: &[u8]) -> Result<String> {
    let limits = Limits::default();
    let compressed = buf.get(1) == Some(&tag::COMPRESSED);
    let shift = if compressed { 0 } else { 1 };
    let mut scratch = Vec::new();
    let body = term::versioned_body(buf, &mut scratch, limits.max_inflated)?;
    let mut w = Walker::new(limits);
    let (text, end) = format_term(body, 0, &(), &mut w).map_err(|e| e.shifted(shift))?;
    if end != body.len() {
        return Err(Error::new(end + shift, ErrorKind::Trailing { extra: body.len() - end }));
    }
    Ok(text)
}

// ---------------------------------------------------------------------------------------
// Floats

/// Write `f` exactly as OTP 25's `~w` (`float_to_list(F, [short])`) does; see the module
/// docs for the layout rule. Non-finite values, which Erlang cannot hold, print as `inf`,
/// `-inf` and `nan`.
pub fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("nan");
        return;
    }
    if f.is_sign_negative() {
        out.push('-');
    }
    if f.is_infinite() {
        out.push_str("inf");
        return;
    }
    if f == 0.0 {
        out.push_str("0.0");
        return;
    }
    let (output, ryu_exp) = shortest(f.abs());
    let mut dbuf = String::with_capacity(20);
    let _ = write!(dbuf, "{output}");
    let digits = dbuf.as_str();
    let olen = digits.len();
    let n = olen as i32;
    let sci_exp = ryu_exp + n - 1;
    let (lower, upper) = if olen == 1 {
        (-4, 2)
    } else if sci_exp >= 10 {
        (-(n + 2), 2)
    } else {
        (-(n + 2), 1)
    };
    let mut fixed = lower <= ryu_exp && ryu_exp <= upper;
    if fixed
        && ((output >= 1u64 << 53 && ryu_exp == 0)
            || (output > (1u64 << 52) / 5 && ryu_exp == 1)
            || (output > (1u64 << 51) / 25 && ryu_exp == 2))
    {
        // Integers at or above 2^53 are not exact as floats: always scientific.
        fixed = false;
    }
    if fixed {
        let whole = n + ryu_exp;
        if ryu_exp >= 0 {
            out.push_str(digits);
            for _ in 0..ryu_exp {
                out.push('0');
            }
            out.push_str(".0");
        } else if whole > 0 {
            out.push_str(&digits[..whole as usize]);
            out.push('.');
            out.push_str(&digits[whole as usize..]);
        } else {
            out.push_str("0.");
            for _ in 0..-whole {
                out.push('0');
            }
            out.push_str(digits);
        }
    } else {
        out.push_str(&digits[..1]);
        out.push('.');
        if olen == 1 {
            out.push('0');
        } else {
            out.push_str(&digits[1..]);
        }
        out.push('e');
        let _ = write!(out, "{sci_exp}");
    }
}

/// The shortest digits that read back as `f` (finite, > 0), as `(digits, exp)` with
/// `f ≈ digits × 10^exp` and no trailing zeros in `digits`: what Ryu (OTP's
/// `float_to_list(F, [short])`) computes.
///
/// Rust's `{:e}` finds the same shortest length and the closest such digits; the two differ
/// only when `f` lies exactly halfway between two closest candidates, where Ryu takes the even
/// one (`708072523621728.25` → `…728.2`) and Rust may take the odd one. That case is detected
/// exactly and corrected.
fn shortest(f: f64) -> (u64, i32) {
    let mut buf = String::with_capacity(32);
    let _ = write!(buf, "{f:e}");
    let (mant, exp) = buf.split_once('e').expect("{:e} always has an exponent");
    let sci_exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let mut d: u64 = 0;
    let mut n = 0i32;
    for &b in mant.as_bytes() {
        if b != b'.' {
            d = d * 10 + (b - b'0') as u64;
            n += 1;
        }
    }
    let k = sci_exp - (n - 1);
    if d % 2 == 1 {
        let (m, e2) = dyadic(f);
        let alt = if dyadic_eq_decimal(m, e2, 10 * d as u128 - 5, k - 1) {
            Some(d - 1)
        } else if dyadic_eq_decimal(m, e2, 10 * d as u128 + 5, k - 1) {
            Some(d + 1)
        } else {
            None
        };
        if let Some(mut alt) = alt.filter(|&a| a > 0) {
            let mut k2 = k;
            while alt % 10 == 0 {
                alt /= 10;
                k2 += 1;
            }
            let mut check = String::with_capacity(32);
            let _ = write!(check, "{alt}e{k2}");
            if check.parse::<f64>() == Ok(f) {
                return (alt, k2);
            }
        }
    }
    (d, k)
}

/// `f` (finite, > 0) as `m × 2^e2`.
fn dyadic(f: f64) -> (u64, i32) {
    let bits = f.to_bits();
    let frac = bits & ((1u64 << 52) - 1);
    let exp = ((bits >> 52) & 0x7FF) as i32;
    if exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp - 1075)
    }
}

/// `x × 2^s` without losing bits, or `None`.
fn shl_exact(x: u128, s: u32) -> Option<u128> {
    if x == 0 {
        return Some(0);
    }
    if s >= 128 || x.leading_zeros() < s {
        return None;
    }
    Some(x << s)
}

/// Exactly `m × 2^e2 == big_m × 10^j`?
fn dyadic_eq_decimal(m: u64, e2: i32, big_m: u128, j: i32) -> bool {
    let pow5 = |t: u32| 5u128.checked_pow(t);
    if j >= 0 {
        // m × 2^(e2-j) == M × 5^j
        let Some(rhs) = pow5(j as u32).and_then(|p| big_m.checked_mul(p)) else { return false };
        let s = e2 - j;
        if s >= 0 {
            shl_exact(m as u128, s as u32) == Some(rhs)
        } else {
            shl_exact(rhs, (-s) as u32) == Some(m as u128)
        }
    } else {
        // m × 5^t × 2^(e2+t) == M, t = -j
        let t = (-j) as u32;
        let Some(lhs) = pow5(t).and_then(|p| (m as u128).checked_mul(p)) else { return false };
        let s = e2 + t as i32;
        if s >= 0 {
            shl_exact(lhs, s as u32) == Some(big_m)
        } else {
            shl_exact(big_m, (-s) as u32) == Some(lhs)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Integers

/// Write a bignum given as little-endian magnitude bytes.
fn write_big(out: &mut String, negative: bool, digits: &[u8]) {
    // Little-endian u32 limbs, most significant zero limbs dropped.
    let mut limbs: Vec<u32> = digits
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect();
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
    if limbs.is_empty() {
        out.push('0');
        return;
    }
    if negative {
        out.push('-');
    }
    const CHUNK: u64 = 1_000_000_000;
    // Base-10^9 chunks, least significant first.
    let mut chunks: Vec<u32> = Vec::with_capacity(limbs.len() * 32 / 29 + 1);
    while !limbs.is_empty() {
        let mut rem: u64 = 0;
        for limb in limbs.iter_mut().rev() {
            let cur = (rem << 32) | *limb as u64;
            *limb = (cur / CHUNK) as u32;
            rem = cur % CHUNK;
        }
        chunks.push(rem as u32);
        while limbs.last() == Some(&0) {
            limbs.pop();
        }
    }
    let mut it = chunks.iter().rev();
    if let Some(first) = it.next() {
        let _ = write!(out, "{first}");
    }
    for c in it {
        let _ = write!(out, "{c:09}");
    }
}

// ---------------------------------------------------------------------------------------
// Atoms

/// Reserved words `io_lib` quotes on OTP 25 (`erl_scan:reserved_word/1` with no features
/// enabled; `maybe`/`else` only become keywords with `-enable-feature maybe_expr`).
const RESERVED: [&str; 27] = [
    "after", "begin", "case", "try", "cond", "catch", "andalso", "orelse", "end", "fun", "if", "let", "of", "receive",
    "when", "bnot", "not", "div", "rem", "band", "and", "bor", "bxor", "bsl", "bsr", "or", "xor",
];

#[inline]
fn io_lower(c: char) -> bool {
    matches!(c, 'a'..='z' | '\u{DF}'..='\u{FF}') && c != '\u{F7}'
}

#[inline]
fn io_name_char(c: char) -> bool {
    io_lower(c)
        || c.is_ascii_uppercase()
        || (matches!(c, '\u{C0}'..='\u{DE}') && c != '\u{D7}')
        || c.is_ascii_digit()
        || c == '_'
        || c == '@'
}

fn atom_needs_quotes(text: &str) -> bool {
    let mut cs = text.chars();
    match cs.next() {
        Some(c) if io_lower(c) => {}
        _ => return true,
    }
    if !cs.all(io_name_char) {
        return true;
    }
    text.len() <= 8 && RESERVED.contains(&text)
}

/// Write `text` inside single quotes with `io_lib`'s "as Latin-1" escapes.
fn write_quoted(out: &mut String, text: &str) {
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            ' '..='~' | '\u{A0}'..='\u{FF}' => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0B}' => out.push_str("\\v"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            '\u{1B}' => out.push_str("\\e"),
            '\u{7F}' => out.push_str("\\d"),
            c if (c as u32) < 0xA0 => {
                let v = c as u32;
                out.push('\\');
                out.push((b'0' + (v >> 6) as u8) as char);
                out.push((b'0' + ((v >> 3) & 7) as u8) as char);
                out.push((b'0' + (v & 7) as u8) as char);
            }
            c => {
                let _ = write!(out, "\\x{{{:X}}}", c as u32);
            }
        }
    }
    out.push('\'');
}

/// Write an atom exactly as `~w` does: quoted and escaped only when needed (module docs).
pub fn write_atom(out: &mut String, text: &str) {
    if atom_needs_quotes(text) {
        write_quoted(out, text);
    } else {
        out.push_str(text);
    }
}

/// Push UTF-8 bytes one character per byte, as OTP 25's `fun_to_list/1` returns them.
#[inline]
fn push_bytes_as_chars(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        out.push(b as char);
    }
}

/// An atom as erts' `print_atom_name` (used by `fun_to_list/1` for export funs) writes it.
fn write_erts_atom(out: &mut String, text: &str) {
    let s = text.as_bytes();
    if s.is_empty() {
        out.push_str("''");
        return;
    }
    // The code point a byte stands for in the quoting decision (erts `latin1_char`).
    let lc = |i: usize| -> u32 {
        let c = s[i];
        let c2 = s.get(i + 1).copied().unwrap_or(0);
        if c & 0x80 == 0 {
            c as u32
        } else if c & 0xE0 == 0xC0 {
            ((c as u32 & 0x1F) << 6) | (c2 as u32 & 0x3F)
        } else if c & 0xC0 == 0x80 {
            b'a' as u32
        } else {
            0
        }
    };
    let lower = |c: u32| (b'a' as u32..=b'z' as u32).contains(&c) || ((223..=255).contains(&c) && c != 247);
    let upper = |c: u32| (b'A' as u32..=b'Z' as u32).contains(&c) || ((192..=222).contains(&c) && c != 215);
    let alnum = |c: u32| lower(c) || upper(c) || (b'0' as u32..=b'9' as u32).contains(&c);
    let quote = !lower(lc(0))
        || (1..s.len()).any(|i| {
            let c = lc(i);
            !alnum(c) && c != b'_' as u32
        });
    if quote {
        out.push('\'');
    }
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        i += 1;
        match c {
            b'\'' => out.push_str("\\'"),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            0x0C => out.push_str("\\f"),
            b'\t' => out.push_str("\\t"),
            b'\r' => out.push_str("\\r"),
            0x08 => out.push_str("\\b"),
            0x0B => out.push_str("\\v"),
            c if c < b' ' => {
                let _ = write!(out, "\\{c:03o}");
            }
            c if c >= 0x80 => {
                let n = if c & 0xE0 == 0xC0 {
                    2
                } else if c & 0xF0 == 0xE0 {
                    3
                } else {
                    4
                };
                if c == 0xC2 && s.get(i).is_some_and(|&c2| c2 < 0xA0) {
                    // U+0080..U+009F: octal of the code point.
                    let _ = write!(out, "\\{:03o}", s[i]);
                    i += 1;
                } else {
                    let end = (i - 1 + n).min(s.len());
                    push_bytes_as_chars(out, &s[i - 1..end]);
                    i = end;
                }
            }
            c => out.push(c as char),
        }
    }
    if quote {
        out.push('\'');
    }
}

// ---------------------------------------------------------------------------------------
// The printer

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tuple,
    Map,
    /// A map of more than 32 pairs: printed in reverse pair order at the end.
    BigMap,
    /// A list whose `[` this frame printed (and whose `]` it prints).
    ListOpen,
    /// A `LIST_EXT` in the tail of another list: its elements continue that list.
    ListCont,
    /// A `LIST_EXT` of 0 elements in a value position: it is its tail.
    ListTransparent,
    /// A term whose children are not printed (a fun's free variables), or one inside it.
    Hidden,
}

#[derive(Clone, Copy)]
struct Frame {
    /// Offset of the container's tag byte: identifies it in `leave`.
    start: usize,
    /// Children entered so far.
    idx: u64,
    /// Element count (lists; the tail is child number `n`).
    n: u32,
    kind: Kind,
}

/// An open map of more than 32 pairs.
#[derive(Clone, Copy)]
struct BigOpen {
    /// Output offset right after `#{`.
    content: usize,
    /// Where this map's pairs start in `pending`.
    pending_base: usize,
    /// Its index in `records`.
    rec: usize,
}

/// One pair of a big map: its output range, and the first record that may lie inside it.
#[derive(Clone, Copy, Default)]
struct Pair {
    start: usize,
    end: usize,
    first_rec: usize,
}

/// A closed big map, numbered in pre-order.
#[derive(Clone, Copy, Default)]
struct Record {
    /// Output range of the pairs (between `#{` and `}`).
    start: usize,
    end: usize,
    /// Its pairs in `pairs`.
    pairs: (usize, usize),
    /// Index of the first record after this one's descendants.
    skip: usize,
}

/// An atom's text as UTF-8 (Latin-1 text converted, cache refs resolved).
fn atom_text<'x>(refs: &'x dyn AtomRefs, at: usize, a: &Atom<'x>) -> Result<Cow<'x, str>> {
    match *a {
        Atom::Latin1(b) => {
            if b.is_ascii() {
                Ok(Cow::Borrowed(core::str::from_utf8(b).expect("ascii")))
            } else {
                Ok(Cow::Owned(b.iter().map(|&c| c as char).collect()))
            }
        }
        Atom::Utf8(b) => {
            core::str::from_utf8(b).map(Cow::Borrowed).map_err(|_| Error::new(at, ErrorKind::InvalidUtf8Atom))
        }
        Atom::CacheRef(idx) => refs
            .resolve(idx)
            .map(Cow::Borrowed)
            .ok_or(Error::new(at, ErrorKind::BadAtomCacheRef { index: idx, refs: 0 })),
    }
}

enum Position {
    Value,
    Tail,
}

struct Printer<'r> {
    out: String,
    stack: Vec<Frame>,
    /// Open `Hidden` frames.
    hidden: usize,
    refs: &'r dyn AtomRefs,
    bigs: Vec<BigOpen>,
    pending: Vec<Pair>,
    pairs: Vec<Pair>,
    records: Vec<Record>,
}

impl<'r> Printer<'r> {
    fn new(refs: &'r dyn AtomRefs) -> Self {
        Printer {
            out: String::new(),
            stack: Vec::new(),
            hidden: 0,
            refs,
            bigs: Vec::new(),
            pending: Vec::new(),
            pairs: Vec::new(),
            records: Vec::new(),
        }
    }

    fn push(&mut self, start: usize, kind: Kind, n: u32) {
        self.stack.push(Frame { start, idx: 0, n, kind });
    }

    fn atom(&mut self, at: usize, a: &Atom<'_>) -> Result<()> {
        let t = atom_text(self.refs, at, a)?;
        write_atom(&mut self.out, &t);
        Ok(())
    }

    fn node(&mut self, at: usize, a: &Atom<'_>) -> Result<()> {
        let t = atom_text(self.refs, at, a)?;
        write_quoted(&mut self.out, &t);
        Ok(())
    }

    fn bytes_list(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{b}");
        }
    }

    /// Emit the separator owed to the parent for a new child; say how the child is placed.
    fn place_child(&mut self) -> Position {
        let Some(top) = self.stack.last_mut() else { return Position::Value };
        let i = top.idx;
        top.idx += 1;
        match top.kind {
            Kind::Tuple => {
                if i > 0 {
                    self.out.push(',');
                }
                Position::Value
            }
            Kind::Map | Kind::BigMap => {
                if i % 2 == 0 {
                    if i > 0 {
                        self.out.push(',');
                    }
                    if top.kind == Kind::BigMap {
                        self.pending.push(Pair { start: self.out.len(), end: 0, first_rec: self.records.len() });
                    }
                } else {
                    self.out.push_str(" => ");
                }
                Position::Value
            }
            Kind::ListOpen | Kind::ListCont => {
                if i < top.n as u64 {
                    if i > 0 || top.kind == Kind::ListCont {
                        self.out.push(',');
                    }
                    Position::Value
                } else {
                    Position::Tail
                }
            }
            Kind::ListTransparent => Position::Value,
            Kind::Hidden => unreachable!("hidden children are handled before placement"),
        }
    }

    /// A term in a value position (not a list tail).
    fn value(&mut self, at: usize, term: &Term<'_>) -> Result<()> {
        match *term {
            Term::SmallInt(v) => {
                let _ = write!(self.out, "{v}");
            }
            Term::Int(v) => {
                let _ = write!(self.out, "{v}");
            }
            Term::Float(f) => {
                if !f.is_finite() {
                    return Err(Error::new(at + 1, ErrorKind::BadFloat));
                }
                write_float(&mut self.out, f);
            }
            Term::OldFloat { value, .. } => write_float(&mut self.out, value),
            Term::Atom(a) => self.atom(at, &a)?,
            Term::Big { negative, digits } => write_big(&mut self.out, negative, digits),
            Term::Pid(p) => {
                self.out.push_str("#Pid<");
                self.node(at, &p.node)?;
                let _ = write!(self.out, ".{}.{}.{}>", p.id, p.serial, p.creation);
            }
            Term::Port(p) => {
                self.out.push_str("#Port<");
                self.node(at, &p.node)?;
                let _ = write!(self.out, ".{}.{}>", p.id, p.creation);
            }
            Term::Ref(r) => {
                self.out.push_str("#Ref<");
                self.node(at, &r.node)?;
                let _ = write!(self.out, ".{}", r.creation);
                for w in r.ids.chunks_exact(4).rev() {
                    let _ = write!(self.out, ".{}", u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
                }
                self.out.push('>');
            }
            Term::Tuple(0) => self.out.push_str("{}"),
            Term::Tuple(_) => {
                self.out.push('{');
                self.push(at, Kind::Tuple, 0);
            }
            Term::Nil => self.out.push_str("[]"),
            Term::String(s) => {
                self.out.push('[');
                self.bytes_list(s);
                self.out.push(']');
            }
            Term::List(0) => self.push(at, Kind::ListTransparent, 0),
            Term::List(n) => {
                self.out.push('[');
                self.push(at, Kind::ListOpen, n);
            }
            Term::Map(0) => self.out.push_str("#{}"),
            Term::Map(n) => {
                self.out.push_str("#{");
                if n > 32 {
                    self.bigs.push(BigOpen {
                        content: self.out.len(),
                        pending_base: self.pending.len(),
                        rec: self.records.len(),
                    });
                    self.records.push(Record::default());
                    self.push(at, Kind::BigMap, 0);
                } else {
                    self.push(at, Kind::Map, 0);
                }
            }
            Term::Binary(b) => {
                self.out.push_str("<<");
                self.bytes_list(b);
                self.out.push_str(">>");
            }
            Term::BitBinary { bytes, bits } => {
                self.out.push_str("<<");
                if bits >= 8 {
                    self.bytes_list(bytes);
                } else if let Some((&last, whole)) = bytes.split_last() {
                    self.bytes_list(whole);
                    if !whole.is_empty() {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{}:{}", last >> (8 - bits), bits);
                }
                self.out.push_str(">>");
            }
            Term::NewFun(f) => {
                self.out.push_str("#Fun<");
                let m = atom_text(self.refs, f.module_at, &f.module)?;
                push_bytes_as_chars(&mut self.out, m.as_bytes());
                let _ = write!(self.out, ".{}.{}>", f.old_index, f.old_uniq);
                if f.num_free > 0 {
                    self.push(at, Kind::Hidden, 0);
                    self.hidden += 1;
                }
            }
            Term::OldFun(f) => {
                self.out.push_str("#Fun<");
                let m = atom_text(self.refs, at, &f.module)?;
                push_bytes_as_chars(&mut self.out, m.as_bytes());
                let _ = write!(self.out, ".{}.{}>", f.index, f.uniq);
                if f.num_free > 0 {
                    self.push(at, Kind::Hidden, 0);
                    self.hidden += 1;
                }
            }
            Term::Export(e) => {
                self.out.push_str("fun ");
                let m = atom_text(self.refs, at, &e.module)?;
                write_erts_atom(&mut self.out, &m);
                self.out.push(':');
                let f = atom_text(self.refs, at, &e.function)?;
                write_erts_atom(&mut self.out, &f);
                let _ = write!(self.out, "/{}", e.arity);
            }
        }
        Ok(())
    }

    /// A term in the tail of a list.
    fn tail(&mut self, at: usize, term: &Term<'_>) -> Result<()> {
        match *term {
            Term::Nil => {}
            Term::String(s) => {
                for b in s {
                    let _ = write!(self.out, ",{b}");
                }
            }
            Term::List(n) => self.push(at, Kind::ListCont, n),
            _ => {
                self.out.push('|');
                self.value(at, term)?;
            }
        }
        Ok(())
    }

    fn close(&mut self, f: Frame) {
        match f.kind {
            Kind::Tuple | Kind::Map => self.out.push('}'),
            Kind::BigMap => {
                let b = self.bigs.pop().expect("big map frame without its record");
                let first = self.pairs.len();
                self.pairs.extend_from_slice(&self.pending[b.pending_base..]);
                self.pending.truncate(b.pending_base);
                self.records[b.rec] = Record {
                    start: b.content,
                    end: self.out.len(),
                    pairs: (first, self.pairs.len()),
                    skip: self.records.len(),
                };
                self.out.push('}');
            }
            Kind::ListOpen => self.out.push(']'),
            Kind::ListCont | Kind::ListTransparent => {}
            Kind::Hidden => self.hidden -= 1,
        }
    }

    /// The text, with the pairs of every map of more than 32 keys put in reverse order.
    fn finish(self) -> String {
        if self.records.is_empty() {
            return self.out;
        }
        enum Job {
            /// Copy `raw[pos..end]`, expanding the records from `rec` on that start inside it.
            Range { pos: usize, end: usize, rec: usize },
            /// Emit the first `left` pairs of record `rec`, last first.
            Pairs { rec: usize, left: usize, first: bool },
        }
        let raw = &self.out;
        let mut out = String::with_capacity(raw.len());
        let mut jobs = vec![Job::Range { pos: 0, end: raw.len(), rec: 0 }];
        while let Some(job) = jobs.pop() {
            match job {
                Job::Range { pos, end, rec } => match self.records.get(rec) {
                    Some(r) if r.start < end => {
                        out.push_str(&raw[pos..r.start]);
                        jobs.push(Job::Range { pos: r.end, end, rec: r.skip });
                        jobs.push(Job::Pairs { rec, left: r.pairs.1 - r.pairs.0, first: true });
                    }
                    _ => out.push_str(&raw[pos..end]),
                },
                Job::Pairs { rec, left, first } => {
                    if left == 0 {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    let p = self.pairs[self.records[rec].pairs.0 + left - 1];
                    jobs.push(Job::Pairs { rec, left: left - 1, first: false });
                    jobs.push(Job::Range { pos: p.start, end: p.end, rec: p.first_rec });
                }
            }
        }
        out
    }
}

impl<'a> Visitor<'a> for Printer<'_> {
    fn enter(&mut self, at: usize, term: &Term<'a>) -> Result<()> {
        if self.hidden > 0 {
            if term.children() > 0 {
                self.push(at, Kind::Hidden, 0);
                self.hidden += 1;
            }
            return Ok(());
        }
        match self.place_child() {
            Position::Value => self.value(at, term),
            Position::Tail => self.tail(at, term),
        }
    }

    fn leave(&mut self, at: usize, _end: usize) {
        if let Some(&top) = self.stack.last() {
            if top.start == at {
                self.stack.pop();
                self.close(top);
            }
        }
        if self.hidden > 0 {
            return;
        }
        if let Some(top) = self.stack.last() {
            if top.kind == Kind::BigMap && top.idx % 2 == 0 {
                // A value just ended: its pair is complete.
                let end = self.out.len();
                if let Some(p) = self.pending.last_mut() {
                    p.end = end;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f);
        s
    }

    fn atom(t: &str) -> String {
        let mut s = String::new();
        write_atom(&mut s, t);
        s
    }

    fn v(body: &[u8]) -> Vec<u8> {
        let mut b = vec![131];
        b.extend_from_slice(body);
        b
    }

    fn p(body: &[u8]) -> String {
        format_versioned(&v(body)).unwrap()
    }

    fn small_atom(t: &str) -> Vec<u8> {
        let mut b = vec![tag::SMALL_ATOM_UTF8, t.len() as u8];
        b.extend_from_slice(t.as_bytes());
        b
    }

    #[test]
    #[allow(clippy::excessive_precision)] // the exact halfway values are the point
    fn print_floats() {
        // Every value below checked against `io_lib:format("~w", [F])` on OTP 25.2.3.
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (-1.0, "-1.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1.0e-5"),
            (1.5e-5, "1.5e-5"),
            (0.001234, "0.001234"),
            (0.00012345, "1.2345e-4"),
            (0.00123, "0.00123"),
            (0.000123, "1.23e-4"),
            (123.456, "123.456"),
            (100.0, "100.0"),
            (1000.0, "1.0e3"),
            (10.0, "10.0"),
            (12340.0, "12340.0"),
            (123400.0, "1.234e5"),
            (1.0e9, "1.0e9"),
            (1234567890.0, "1234567890.0"),
            (12345678900.0, "12345678900.0"),
            (123456789000.0, "1.23456789e11"),
            (1.2345e10, "1.2345e10"),
            (1.0e15, "1.0e15"),
            (1.0e21, "1.0e21"),
            (1.0e23, "1.0e23"),
            (1234567890123456.0, "1234567890123456.0"),
            (4503599627370497.0, "4503599627370497.0"),
            (9007199254740990.0, "9007199254740990.0"),
            (9007199254740992.0, "9.007199254740992e15"),
            (9007199254741000.0, "9.007199254741e15"),
            (12345678901234567.0, "1.2345678901234568e16"),
            (123456789012345680.0, "1.2345678901234568e17"),
            (5.0e-324, "5.0e-324"),
            (2.2250738585072014e-308, "2.2250738585072014e-308"),
            (1.7976931348623157e308, "1.7976931348623157e308"),
            (2.0 / 3.0, "0.6666666666666666"),
            (123456789.123, "123456789.123"),
            // Exactly halfway between two shortest candidates: Ryu takes the even digit.
            (708072523621728.25, "708072523621728.2"),
            (-1932117150548548.25, "-1932117150548548.2"),
            (708072523621728.75, "708072523621728.8"),
        ];
        for &(f, want) in cases {
            assert_eq!(float(f), want, "{f:e}");
        }
    }

    #[test]
    fn print_atoms() {
        let cases: &[(&str, &str)] = &[
            ("a", "a"),
            ("a@b", "a@b"),
            ("node@host", "node@host"),
            ("a.b", "'a.b'"),
            ("A", "'A'"),
            ("_a", "'_a'"),
            ("1a", "'1a'"),
            ("a1", "a1"),
            ("", "''"),
            ("a b", "'a b'"),
            ("a'b", "'a\\'b'"),
            ("a\\b", "'a\\\\b'"),
            ("end", "'end'"),
            ("andalso", "'andalso'"),
            ("cond", "'cond'"),
            ("let", "'let'"),
            ("maybe", "maybe"),
            ("else", "else"),
            ("spec", "spec"),
            ("ß", "ß"),
            ("ÿa", "ÿa"),
            ("÷", "'÷'"),
            ("aÀ", "aÀ"),
            ("a×", "'a×'"),
            ("aÞ", "aÞ"),
            ("a÷", "'a÷'"),
            ("ª", "'ª'"),
            ("aª", "'aª'"),
            ("é", "é"),
            ("\u{109}", "'\\x{109}'"),
            ("a\u{1F600}", "'a\\x{1F600}'"),
            (
                "\u{1}\u{2}\u{7}\u{8}\t\n\u{b}\u{c}\r\u{1b}\u{1f}\u{7f}\u{80}\u{9f}\u{a0}\u{ff}",
                "'\\001\\002\\007\\b\\t\\n\\v\\f\\r\\e\\037\\d\\200\\237\u{a0}\u{ff}'",
            ),
        ];
        for &(t, want) in cases {
            assert_eq!(atom(t), want, "{t:?}");
        }
    }

    #[test]
    fn print_erts_atoms() {
        let e = |t: &str| {
            let mut s = String::new();
            write_erts_atom(&mut s, t);
            s
        };
        assert_eq!(e("lists"), "lists");
        assert_eq!(e("a@b"), "'a@b'");
        assert_eq!(e("end"), "end");
        assert_eq!(e("A"), "'A'");
        assert_eq!(e("+"), "'+'");
        assert_eq!(e(""), "''");
        assert_eq!(e("a'b"), "'a\\'b'");
        assert_eq!(e("ß"), "\u{c3}\u{9f}");
        assert_eq!(e("÷"), "'\u{c3}\u{b7}'");
        assert_eq!(e("\u{109}"), "'\u{c4}\u{89}'");
        assert_eq!(
            e("\u{1}\u{2}\u{7}\u{8}\t\n\u{b}\u{c}\r\u{1b}\u{1f}\u{7f}\u{80}\u{9f}\u{a0}\u{ff}"),
            "'\\001\\002\\007\\b\\t\\n\\v\\f\\r\\033\\037\u{7f}\\200\\237\u{c2}\u{a0}\u{c3}\u{bf}'"
        );
    }

    #[test]
    fn print_integers() {
        assert_eq!(p(&[97, 255]), "255");
        assert_eq!(p(&[98, 255, 255, 255, 255]), "-1");
        assert_eq!(p(&[98, 128, 0, 0, 0]), "-2147483648");
        // Zero-magnitude bignums, any sign, are 0.
        assert_eq!(p(&[110, 0, 0]), "0");
        assert_eq!(p(&[110, 1, 1, 0]), "0");
        assert_eq!(p(&[110, 2, 0, 5, 0]), "5");
        assert_eq!(p(&[110, 1, 1, 5]), "-5");
        // 2^64 and -(2^64 - 1).
        assert_eq!(p(&[110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), "18446744073709551616");
        assert_eq!(p(&[110, 8, 1, 255, 255, 255, 255, 255, 255, 255, 255]), "-18446744073709551615");
        // 10^30 as LARGE_BIG.
        let mut big = vec![111, 0, 0, 0, 0, 0];
        let mut mag = Vec::new();
        let mut n: u128 = 10u128.pow(30);
        while n > 0 {
            mag.push((n & 0xFF) as u8);
            n >>= 8;
        }
        big[4] = mag.len() as u8;
        big.extend_from_slice(&mag);
        assert_eq!(p(&big), format!("1{}", "0".repeat(30)));
    }

    #[test]
    fn print_lists_and_strings() {
        assert_eq!(p(&[106]), "[]");
        assert_eq!(p(&[107, 0, 2, b'h', b'i']), "[104,105]");
        assert_eq!(p(&[107, 0, 0]), "[]");
        // [1,2|3]
        assert_eq!(p(&[108, 0, 0, 0, 2, 97, 1, 97, 2, 97, 3]), "[1,2|3]");
        // LIST_EXT of 0 elements is its tail.
        let mut b = vec![108, 0, 0, 0, 0];
        b.extend(small_atom("a"));
        assert_eq!(p(&b), "a");
        // A list tail continues the list: [a|"AB"] = [a,65,66]; [a|[2|3]] = [a,2|3].
        let mut b = vec![108, 0, 0, 0, 1];
        b.extend(small_atom("a"));
        b.extend([107, 0, 2, 65, 66]);
        assert_eq!(p(&b), "[a,65,66]");
        let mut b = vec![108, 0, 0, 0, 1];
        b.extend(small_atom("a"));
        b.extend([108, 0, 0, 0, 1, 97, 2, 97, 3]);
        assert_eq!(p(&b), "[a,2|3]");
        // [1 | LIST_EXT(0, a)] = [1|a]; [1 | LIST_EXT(0, [])] = [1].
        let mut b = vec![108, 0, 0, 0, 1, 97, 1, 108, 0, 0, 0, 0];
        b.extend(small_atom("a"));
        assert_eq!(p(&b), "[1|a]");
        assert_eq!(p(&[108, 0, 0, 0, 1, 97, 1, 108, 0, 0, 0, 0, 106]), "[1]");
        // [[]|[]] and a nested improper tail that is a tuple.
        assert_eq!(p(&[108, 0, 0, 0, 1, 106, 106]), "[[]]");
        assert_eq!(p(&[108, 0, 0, 0, 1, 106, 104, 2, 97, 1, 106]), "[[]|{1,[]}]");
    }

    #[test]
    fn print_containers() {
        assert_eq!(p(&[104, 0]), "{}");
        assert_eq!(p(&[116, 0, 0, 0, 0]), "#{}");
        let mut b = vec![116, 0, 0, 0, 2];
        b.extend(small_atom("a"));
        b.extend([97, 1]);
        b.extend([108, 0, 0, 0, 1]);
        b.extend(small_atom("b"));
        b.push(106);
        b.extend([104, 1, 97, 2]);
        assert_eq!(p(&b), "#{a => 1,[b] => {2}}");
        assert_eq!(p(&[104, 3, 104, 0, 106, 104, 1, 104, 0]), "{{},[],{{}}}");
    }

    #[test]
    fn print_binaries() {
        assert_eq!(p(&[109, 0, 0, 0, 0]), "<<>>");
        assert_eq!(p(&[109, 0, 0, 0, 3, 1, 2, 3]), "<<1,2,3>>");
        assert_eq!(p(&[77, 0, 0, 0, 2, 3, 1, 0b0100_0000]), "<<1,2:3>>");
        assert_eq!(p(&[77, 0, 0, 0, 1, 3, 0b1010_0000]), "<<5:3>>");
        assert_eq!(p(&[77, 0, 0, 0, 2, 3, 5, 255]), "<<5,7:3>>");
        assert_eq!(p(&[77, 0, 0, 0, 1, 8, 5]), "<<5>>");
    }

    #[test]
    fn print_old_float() {
        let mut b = vec![99];
        let mut t = format!("{:.20e}", 0.1f64).into_bytes();
        t.resize(31, 0);
        b.extend(t);
        assert_eq!(p(&b), "0.1");
        // Non-finite NEW_FLOAT_EXT is refused, as binary_to_term refuses it.
        let mut b = vec![70];
        b.extend(f64::INFINITY.to_bits().to_be_bytes());
        assert_eq!(format_versioned(&v(&b)).unwrap_err().kind, ErrorKind::BadFloat);
    }

    #[test]
    fn print_big_map_reversed() {
        // 33 pairs k => k in encoded order 0..33 print last-first; the nested 33-key map in
        // the value of pair 0 is reversed too, and a small map inside stays in order.
        let inner = |b: &mut Vec<u8>| {
            b.extend([116, 0, 0, 0, 33]);
            for k in 0..33u8 {
                b.extend([97, k, 97, k]);
            }
        };
        let mut b = vec![116, 0, 0, 0, 33];
        for k in 0..33u8 {
            b.extend([97, k]);
            if k == 0 {
                b.extend([104, 2]);
                inner(&mut b);
                b.extend([116, 0, 0, 0, 2, 97, 1, 97, 2, 97, 3, 97, 4]);
            } else {
                b.extend([97, k]);
            }
        }
        let inner_txt = format!("#{{{}}}", (0..33).rev().map(|k| format!("{k} => {k}")).collect::<Vec<_>>().join(","));
        let mut want = Vec::new();
        for k in (0..33).rev() {
            if k == 0 {
                want.push(format!("0 => {{{inner_txt},#{{1 => 2,3 => 4}}}}"));
            } else {
                want.push(format!("{k} => {k}"));
            }
        }
        assert_eq!(p(&b), format!("#{{{}}}", want.join(",")));
    }

    #[test]
    fn print_ids_and_funs() {
        // NEW_PID_EXT on 'n@h'.
        let mut b = vec![88];
        b.extend(small_atom("n@h"));
        b.extend([0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 3]);
        assert_eq!(p(&b), "#Pid<'n@h'.9.1.3>");
        let mut b = vec![89];
        b.extend(small_atom("n@h.example"));
        b.extend([0, 0, 0, 7, 0, 0, 0, 2]);
        assert_eq!(p(&b), "#Port<'n@h.example'.7.2>");
        let mut b = vec![90, 0, 3];
        b.extend(small_atom("n@h"));
        b.extend([0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
        assert_eq!(p(&b), "#Ref<'n@h'.5.3.2.1>");
        // fun lists:map/2 and fun 'A':'b c'/0.
        let mut b = vec![113];
        b.extend(small_atom("lists"));
        b.extend(small_atom("map"));
        b.extend([97, 2]);
        assert_eq!(p(&b), "fun lists:map/2");
        let mut b = vec![113];
        b.extend(small_atom("A"));
        b.extend(small_atom("b c"));
        b.extend([97, 0]);
        assert_eq!(p(&b), "fun 'A':'b c'/0");
        let mut b = vec![113];
        b.extend(small_atom("end"));
        b.extend(small_atom("receive"));
        b.extend([97, 1]);
        assert_eq!(p(&b), "fun end:receive/1");
    }

    #[test]
    fn print_local_fun_hides_free_vars() {
        // A NEW_FUN_EXT with 2 free variables ({1,[2]} and x) inside a tuple.
        let mut fun = vec![112, 0, 0, 0, 0, 1];
        fun.extend([7u8; 16]);
        fun.extend([0, 0, 0, 3, 0, 0, 0, 2]);
        fun.extend(small_atom("Fm"));
        fun.extend([97, 5, 98, 255, 255, 255, 251]);
        fun.push(88);
        fun.extend(small_atom("n@h"));
        fun.extend([0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        fun.extend([104, 2, 97, 1, 108, 0, 0, 0, 1, 97, 2, 106]);
        fun.extend(small_atom("x"));
        let size = (fun.len() - 1) as u32;
        fun[1..5].copy_from_slice(&size.to_be_bytes());
        let mut b = vec![104, 3, 97, 1];
        b.extend(&fun);
        b.extend([97, 9]);
        assert_eq!(p(&b), "{1,#Fun<Fm.5.-5>,9}");
    }

    #[test]
    fn print_atom_cache_refs() {
        // {ATOM_CACHE_REF 1, ATOM_CACHE_REF 0}
        let body = [104, 2, 82, 1, 82, 0];
        let refs = vec!["b c".to_string(), "ok".to_string()];
        let mut w = Walker::default();
        w.set_cache_refs(Some(2));
        let (s, end) = format_term(&body, 0, &refs, &mut w).unwrap();
        assert_eq!((s.as_str(), end), ("{ok,'b c'}", 6));
        let short: [&str; 1] = ["only"];
        let e = format_term(&body, 0, &short, &mut w).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadAtomCacheRef { index: 1, refs: 0 });
        assert_eq!(e.offset, 2);
        let e = format_term(&body, 0, &(), &mut w).unwrap_err();
        assert_eq!(e.label(), "bad_atom_cache_ref");
    }

    #[test]
    fn print_trailing_and_offsets() {
        let e = format_versioned(&[131, 97, 1, 0]).unwrap_err();
        assert_eq!(e, Error::new(3, ErrorKind::Trailing { extra: 1 }));
        let e = format_versioned(&[131, 104, 2, 97]).unwrap_err();
        assert_eq!(e.label(), "bad_count");
        let e = format_versioned(&[131, 98, 0, 0]).unwrap_err();
        assert_eq!(e, Error::new(2, ErrorKind::Truncated { need: 2 }));
        assert_eq!(format_versioned(&[130, 97, 1]).unwrap_err().kind, ErrorKind::BadVersion(130));
    }

    #[test]
    fn print_deep_without_recursion() {
        // 200_000 nested tuples {{{…}}} and lists under a raised limit, on a small stack.
        let n = 200_000;
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut b = Vec::new();
                for _ in 0..n {
                    b.extend([104, 1]);
                }
                b.extend([108, 0, 0, 0, 1, 106, 106]);
                let mut w = Walker::new(Limits { max_depth: n + 10, ..Limits::default() });
                let (s, end) = format_term(&b, 0, &(), &mut w).unwrap();
                assert_eq!(end, b.len());
                assert_eq!(s.len(), 2 * n + 4);
                assert_eq!(s, format!("{}[[]]{}", "{".repeat(n), "}".repeat(n)));
                let mut w = Walker::default();
                let e = format_term(&b, 0, &(), &mut w).unwrap_err();
                assert_eq!(e.kind, ErrorKind::TooDeep { limit: Limits::default().max_depth });
            })
            .unwrap();
        handle.join().unwrap();
    }
}
