//! Decoding a spanned TOML tree into the schema, collecting every error.
//!
//! Why not `#[derive(Deserialize)]` with `deny_unknown_fields`: serde stops at the first
//! problem and its unknown-field error has no suggestion. An operator should see every mistake
//! in one `distgate check`, each with its position, and typos should come with the nearest
//! valid key. So the file is parsed by `toml` into its spanned tree (`DeTable`, every key and
//! value with its byte range), and each schema type reads the keys it knows from a [`Table`].
//! The table remembers which keys were asked for; whatever is left over is an unknown key, and
//! the keys that *were* asked for are the candidates for "did you mean". The schema is thereby
//! its own list of valid keys: suggestions cannot drift from what is accepted.
//!
//! A value that fails to decode records an error and yields `None`; the caller falls back to
//! the default and carries on, so later keys are still checked. The configuration is only
//! returned when no error was recorded, so a fallback never reaches the runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub(crate) type Span = Range<usize>;
pub(crate) type Value<'a> = Spanned<DeValue<'a>>;

/// One recorded problem, by byte offset; turned into a [`crate::Error`] with line and column
/// at the end.
#[derive(Debug)]
pub(crate) struct Diag {
    pub offset: usize,
    pub key: String,
    pub message: String,
    pub help: Option<String>,
}

/// A key nobody asked for, resolved into an error once every table has been read (so the
/// hint can say which other table the key belongs to).
struct UnknownKey {
    offset: usize,
    path: String,
    key: String,
    header: String,
    candidates: Vec<&'static str>,
}

/// Decoding context: the errors so far and where every key was found.
#[derive(Default)]
pub(crate) struct Cx {
    diags: Vec<Diag>,
    /// Key path → span of its value (tables: span of their header), for errors found after
    /// decoding and for [`crate::Origin`].
    pub spans: BTreeMap<String, Span>,
    unknown: Vec<UnknownKey>,
    /// Table header (`[runtime]`) → keys it accepts.
    known: BTreeMap<String, BTreeSet<&'static str>>,
}

impl Cx {
    pub(crate) fn error(&mut self, offset: usize, key: &str, message: String, help: Option<String>) {
        self.diags.push(Diag { offset, key: key.to_string(), message, help });
    }

    /// An error about `path`, placed at the value recorded for it (or `fallback`).
    pub(crate) fn error_at_key(&mut self, path: &str, fallback: usize, message: String, help: Option<String>) {
        let offset = self.spans.get(path).map_or(fallback, |s| s.start);
        self.error(offset, path, message, help);
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.diags.is_empty() || !self.unknown.is_empty()
    }

    /// All errors, unknown keys included, in file order.
    pub(crate) fn into_diags(mut self) -> Vec<Diag> {
        for u in std::mem::take(&mut self.unknown) {
            let help = suggest(&u.key, u.candidates.iter().copied())
                .map(|s| format!("did you mean '{s}'?"))
                .or_else(|| {
                    let homes: Vec<&str> = self
                        .known
                        .iter()
                        .filter(|(h, keys)| **h != u.header && keys.contains(u.key.as_str()))
                        .map(|(h, _)| h.as_str())
                        .collect();
                    (!homes.is_empty()).then(|| format!("'{}' belongs in {}", u.key, homes.join(" or ")))
                })
                .or_else(|| (!u.candidates.is_empty()).then(|| format!("valid keys: {}", u.candidates.join(", "))));
            let message = if u.header.is_empty() {
                format!("unknown top-level key '{}'", u.key)
            } else {
                format!("unknown key '{}' in {}", u.key, u.header)
            };
            self.diags.push(Diag { offset: u.offset, key: u.path, message, help });
        }
        // Stable: two errors at one spot keep the order they were found in.
        self.diags.sort_by_key(|d| d.offset);
        self.diags
    }
}

/// What a TOML value is, for "expected …, found …".
pub(crate) fn describe(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Join a key onto a path, quoting keys that are not plain identifiers (module patterns,
/// fun names) so the path stays unambiguous: `policy.p.modules."my_*"`.
pub(crate) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if plain { key.to_string() } else { format!("{key:?}") };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// A value that can be read from one TOML value. Implementations record their own errors
/// (at the value's span, naming `path`) and return `None` on failure.
pub(crate) trait FromValue: Sized {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self>;
}

/// The usual "wrong type" error.
pub(crate) fn type_error(cx: &mut Cx, path: &str, v: &Value<'_>, expected: &str) {
    cx.error(v.span().start, path, format!("{path}: expected {expected}, found {}", describe(v.get_ref())), None);
}

/// The string inside `v`, or a type error.
pub(crate) fn string<'v>(cx: &mut Cx, path: &str, v: &'v Value<'_>, expected: &str) -> Option<&'v str> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        _ => {
            type_error(cx, path, v, expected);
            None
        }
    }
}

/// Read a string value through `parse`, whose error is `(message, help)`; the message is
/// prefixed with the key path.
pub(crate) fn parse_str<T>(
    cx: &mut Cx,
    path: &str,
    v: &Value<'_>,
    expected: &str,
    parse: impl FnOnce(&str) -> Result<T, (String, Option<String>)>,
) -> Option<T> {
    let s = string(cx, path, v, expected)?;
    match parse(s) {
        Ok(t) => Some(t),
        Err((message, help)) => {
            cx.error(v.span().start, path, format!("{path}: {message}"), help);
            None
        }
    }
}

impl FromValue for String {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        string(cx, path, v, "a string").map(str::to_string)
    }
}

impl FromValue for bool {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                type_error(cx, path, v, "true or false");
                None
            }
        }
    }
}

/// A non-negative integer (TOML's hex/octal/binary forms included).
pub(crate) fn integer(cx: &mut Cx, path: &str, v: &Value<'_>, expected: &str) -> Option<u64> {
    match v.get_ref() {
        DeValue::Integer(i) => match u64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Some(n),
            Err(_) => {
                let message = if i.as_str().starts_with('-') {
                    format!("{path}: must not be negative")
                } else {
                    format!("{path}: {i} is too large")
                };
                cx.error(v.span().start, path, message, None);
                None
            }
        },
        _ => {
            type_error(cx, path, v, expected);
            None
        }
    }
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
                let n = integer(cx, path, v, "an integer")?;
                match <$t>::try_from(n) {
                    Ok(n) => Some(n),
                    Err(_) => {
                        cx.error(v.span().start, path, format!("{path}: {n} is too large (at most {})", <$t>::MAX), None);
                        None
                    }
                }
            }
        }
    )*};
}
unsigned!(u8, u16, u32, u64, usize);

impl<T: FromValue> FromValue for Vec<T> {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        match v.get_ref() {
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match T::from_value(cx, &format!("{path}[{i}]"), item) {
                        Some(t) => out.push(t),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            _ => {
                type_error(cx, path, v, "an array");
                None
            }
        }
    }
}

/// `key = X` or `key = [X, …]`, for keys where one is the common case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OneOrMany<T>(pub Vec<T>);

impl<T: FromValue> FromValue for OneOrMany<T> {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        match v.get_ref() {
            DeValue::Array(_) => Vec::from_value(cx, path, v).map(OneOrMany),
            _ => T::from_value(cx, path, v).map(|t| OneOrMany(vec![t])),
        }
    }
}

/// The keys of one TOML table, read by a schema type.
pub(crate) struct Table<'a> {
    /// Dotted path of the table (`cluster[0]`, `policy.strict.control`); empty at the top.
    pub path: String,
    /// How the table is written in the file, for messages: `[runtime]`, `[[cluster]]`.
    pub header: String,
    /// The table's own span: its header, or the whole inline table.
    pub span: Span,
    map: &'a DeTable<'a>,
    asked: Vec<&'static str>,
}

impl<'a> Table<'a> {
    pub(crate) fn new(path: String, header: String, span: Span, map: &'a DeTable<'a>) -> Self {
        Table { path, header, span, map, asked: Vec::new() }
    }

    /// An empty table: how absent sections are decoded, so they get their defaults and their
    /// keys still count as known.
    pub(crate) fn empty(path: String, header: String) -> Self {
        static EMPTY: std::sync::OnceLock<DeTable<'static>> = std::sync::OnceLock::new();
        Table::new(path, header, 0..0, EMPTY.get_or_init(DeTable::default))
    }

    pub(crate) fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The raw value of `key`, marking the key as known and recording its span.
    pub(crate) fn raw(&mut self, cx: &mut Cx, key: &'static str) -> Option<&'a Value<'a>> {
        if !self.asked.contains(&key) {
            self.asked.push(key);
        }
        let (_, v) = self.map.iter().find(|(k, _)| k.get_ref().as_ref() == key)?;
        cx.spans.insert(self.key_path(key), v.span());
        Some(v)
    }

    /// Span of `key`'s value, if present (without marking it asked).
    pub(crate) fn span_of(&self, key: &str) -> Option<Span> {
        self.map.iter().find(|(k, _)| k.get_ref().as_ref() == key).map(|(_, v)| v.span())
    }

    /// An optional key: `None` when absent or invalid (the error is recorded).
    pub(crate) fn get<T: FromValue>(&mut self, cx: &mut Cx, key: &'static str) -> Option<T> {
        let v = self.raw(cx, key)?;
        T::from_value(cx, &self.key_path(key), v)
    }

    /// An optional key with a further check on the decoded value; the check's error is the
    /// message after the key path.
    pub(crate) fn get_checked<T: FromValue>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Option<T> {
        let v = self.raw(cx, key)?;
        let path = self.key_path(key);
        let t = T::from_value(cx, &path, v)?;
        match check(&t) {
            Ok(()) => Some(t),
            Err(m) => {
                cx.error(v.span().start, &path, format!("{path}: {m}"), None);
                None
            }
        }
    }

    /// A key that must be present: its absence is an error at the table's header.
    pub(crate) fn required<T: FromValue>(&mut self, cx: &mut Cx, key: &'static str) -> Option<T> {
        if self.span_of(key).is_none() {
            self.asked.push(key);
            let path = self.key_path(key);
            cx.error(self.span.start, &path, format!("missing key '{key}' in {}", self.header), None);
            return None;
        }
        self.get(cx, key)
    }

    /// A sub-table (`[runtime]`, `registry = { … }`); `None` when absent or not a table.
    pub(crate) fn table(&mut self, cx: &mut Cx, key: &'static str) -> Option<Table<'a>> {
        let v = self.raw(cx, key)?;
        let path = self.key_path(key);
        match v.get_ref() {
            DeValue::Table(map) => {
                let header = if self.header.starts_with("[[") {
                    format!("[{}.{key}]", self.header.trim_matches(['[', ']']))
                } else {
                    format!("[{path}]")
                };
                Some(Table::new(path, header, v.span(), map))
            }
            _ => {
                type_error(cx, &path, v, "a table");
                None
            }
        }
    }

    /// A sub-table, or an empty one when absent, so its defaults apply.
    pub(crate) fn section(&mut self, cx: &mut Cx, key: &'static str) -> Table<'a> {
        self.table(cx, key).unwrap_or_else(|| Table::empty(self.key_path(key), format!("[{}]", self.key_path(key))))
    }

    /// An array of tables (`[[cluster]]`); empty when absent.
    pub(crate) fn tables(&mut self, cx: &mut Cx, key: &'static str) -> Vec<Table<'a>> {
        let Some(v) = self.raw(cx, key) else { return Vec::new() };
        let path = self.key_path(key);
        let DeValue::Array(items) = v.get_ref() else {
            type_error(cx, &path, v, &format!("an array of tables ([[{key}]])"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            match item.get_ref() {
                DeValue::Table(map) => {
                    cx.spans.insert(ipath.clone(), item.span());
                    out.push(Table::new(ipath, format!("[[{key}]]"), item.span(), map));
                }
                _ => type_error(cx, &ipath, item, "a table"),
            }
        }
        out
    }

    /// Every entry of a table whose keys are the user's (policy names, module patterns), in
    /// file order. Takes the whole table: there are no unknown keys in it.
    pub(crate) fn entries(self, cx: &mut Cx) -> Vec<(String, Span, &'a Value<'a>)> {
        let mut out: Vec<_> = self
            .map
            .iter()
            .map(|(k, v)| {
                cx.spans.insert(join(&self.path, k.get_ref()), v.span());
                (k.get_ref().to_string(), k.span(), v)
            })
            .collect();
        // The tree is keyed in sorted order; the file's order is what the user sees (and what
        // first-match rules follow).
        out.sort_by_key(|(_, span, _)| span.start);
        out
    }

    /// Report every key nobody asked for.
    pub(crate) fn finish(self, cx: &mut Cx) {
        cx.known.entry(self.header.clone()).or_default().extend(self.asked.iter().copied());
        for (k, _) in self.map.iter() {
            let key = k.get_ref().as_ref();
            if !self.asked.contains(&key) {
                cx.unknown.push(UnknownKey {
                    offset: k.span().start,
                    path: self.key_path(key),
                    key: key.to_string(),
                    header: self.header.clone(),
                    candidates: self.asked.clone(),
                });
            }
        }
    }
}

/// Levenshtein distance, in characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The candidate nearest to `word`, if near enough to be a plausible typo, ignoring case:
/// within a third of the word's length (at least 1, so `lissen` → `listen`), or containing it
/// whole (`uring` → `io_uring`). Words under three characters only match exactly: one edit
/// away from `b` is every other one-letter name.
pub(crate) fn suggest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let lower = word.to_lowercase();
    let len = lower.chars().count();
    let limit = if len < 3 { 0 } else { (len / 3).max(1) };
    candidates
        .into_iter()
        .map(|c| {
            let cl = c.to_lowercase();
            let d = edit_distance(&lower, &cl);
            // A containment counts as a near miss, ranked after real typos.
            let d = if len >= 3 && d > limit && cl.contains(&lower) { limit } else { d };
            (d, c)
        })
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// A string-valued keyword enum: the type, its names, and a decoder whose error lists the
/// choices and suggests the nearest.
macro_rules! keyword_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every accepted spelling, in documentation order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The spelling used in the configuration file.
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )+ }
            }

            pub fn from_name(s: &str) -> Option<Self> {
                match s { $( $text => Some($name::$variant), )+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::decode::FromValue for $name {
            fn from_value(
                cx: &mut $crate::decode::Cx,
                path: &str,
                v: &$crate::decode::Value<'_>,
            ) -> Option<Self> {
                let expected = concat!("a ", $what, " (", $crate::decode::keyword_list!($($text),+), ")");
                $crate::decode::parse_str(cx, path, v, expected, |s| {
                    $name::from_name(s).ok_or_else(|| {
                        let hint = $crate::decode::suggest(s, $name::NAMES.iter().copied())
                            .map(|c| format!("did you mean '{c}'?"));
                        (
                            format!(
                                "unknown {} '{}', expected one of {}",
                                $what,
                                s,
                                $name::NAMES.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
                            ),
                            hint,
                        )
                    })
                })
            }
        }
    };
}

/// `"a", "b"` → `"'a', 'b'"` at compile time, for `expected …` messages.
macro_rules! keyword_list {
    ($first:literal $(, $rest:literal)*) => { concat!("'", $first, "'" $(, ", '", $rest, "'")*) };
}

pub(crate) use keyword_enum;
pub(crate) use keyword_list;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance() {
        assert_eq!(edit_distance("treads", "threads"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn suggestions_are_near_or_nothing() {
        let keys = ["threads", "driver", "drain_timeout"];
        assert_eq!(suggest("treads", keys), Some("threads"));
        assert_eq!(suggest("Driver", keys), Some("driver"));
        assert_eq!(suggest("drian_timeout", keys), Some("drain_timeout"));
        assert_eq!(suggest("colour", keys), None);
        assert_eq!(suggest("x", keys), None);
        assert_eq!(suggest("uring", ["auto", "io_uring", "mio"]), Some("io_uring"));
        assert_eq!(suggest("b", ["a"]), None);
        assert_eq!(suggest("A", ["a"]), Some("a"));
    }

    #[test]
    fn paths_quote_odd_keys() {
        assert_eq!(join("", "runtime"), "runtime");
        assert_eq!(join("policy.p.modules", "my_*"), "policy.p.modules.\"my_*\"");
        assert_eq!(join("policy", "egress-1"), "policy.egress-1");
    }
}
