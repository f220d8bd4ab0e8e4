//! Configuration errors: each names the file, line, column and key it is about.
//!
//! Errors are collected, never returned one at a time: an operator fixing a file should see
//! everything wrong with it in one run of `distgate check`.

use std::fmt;

/// One problem in a configuration file.
///
/// Its `Display` is a single line, so it greps and reads well in a journal:
///
/// ```text
/// error: unknown key 'treads' in [runtime] at deploy/x.toml:12:1 — did you mean 'threads'?
/// ```
///
/// No error ever carries a cookie: cookie values are never copied into messages (see
/// [`crate::Cookie`]), and TOML syntax errors are reported by position only, never with a
/// snippet of the offending line, which could be the cookie's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The file as it was named to [`crate::load`] (or the name given to [`crate::parse`]).
    pub file: String,
    /// 1-based line; 0 when the error is about the file as a whole (unreadable, not UTF-8).
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Dotted path of the key concerned, e.g. `cluster[1].listen` (array indexes count from
    /// 0); empty for syntax errors and whole-file errors.
    pub key: String,
    /// What is wrong. Always names the key (or the table) when there is one.
    pub message: String,
    /// How to fix it, when there is something useful to say ("did you mean 'threads'?").
    pub help: Option<String>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (message, file) = (OneLine(&self.message), OneLine(&self.file));
        if self.line == 0 {
            write!(f, "error: {message} ({file})")?;
        } else {
            write!(f, "error: {message} at {file}:{}:{}", self.line, self.column)?;
        }
        if let Some(help) = &self.help {
            write!(f, " — {}", OneLine(help))?;
        }
        Ok(())
    }
}

/// Text shown with its control characters escaped (`\n`, `\t`, `\u{1b}`): messages quote
/// values from the file, and a multi-line string there must not break the one-line form.
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Every error found in one file, in file order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<Error>);

impl Errors {
    pub fn iter(&self) -> std::slice::Iter<'_, Error> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Errors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

impl IntoIterator for Errors {
    type Item = Error;
    type IntoIter = std::vec::IntoIter<Error>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Errors {
    type Item = &'a Error;
    type IntoIter = std::slice::Iter<'a, Error>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Byte offsets → 1-based line and character column, for one source text.
#[derive(Debug, Clone)]
pub(crate) struct LineIndex {
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(src: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// `(line, column)` of byte `offset` in `src` (clamped to the text; offsets inside a UTF-8
    /// sequence count as its character).
    pub(crate) fn position(&self, src: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(src.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let mut end = offset;
        while !src.is_char_boundary(end) {
            end -= 1;
        }
        let column = src[start..end].chars().count() + 1;
        (line + 1, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_in_characters() {
        let src = "a = 1\nbé = 2\n\nc";
        let ix = LineIndex::new(src);
        assert_eq!(ix.position(src, 0), (1, 1));
        assert_eq!(ix.position(src, 4), (1, 5));
        assert_eq!(ix.position(src, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(ix.position(src, src.find("= 2").unwrap()), (2, 4));
        assert_eq!(ix.position(src, src.len()), (4, 2));
        assert_eq!(ix.position(src, 999), (4, 2));
    }

    #[test]
    fn display_is_one_line_with_help() {
        let e = Error {
            file: "x.toml".into(),
            line: 12,
            column: 1,
            key: "runtime.treads".into(),
            message: "unknown key 'treads' in [runtime]".into(),
            help: Some("did you mean 'threads'?".into()),
        };
        assert_eq!(e.to_string(), "error: unknown key 'treads' in [runtime] at x.toml:12:1 — did you mean 'threads'?");
        let whole = Error { line: 0, column: 0, key: String::new(), help: None, message: "cannot read it".into(), ..e };
        assert_eq!(whole.to_string(), "error: cannot read it (x.toml)");
    }
}

#[cfg(test)]
mod one_line_tests {
    use super::*;

    /// A value with a newline (a multi-line TOML string) quoted in a message stays one line.
    #[test]
    fn control_characters_in_messages_are_escaped() {
        let e = Error {
            file: "x.toml".into(),
            line: 3,
            column: 10,
            key: "log.format".into(),
            message: "unknown log format 'jso\n\t'".into(),
            help: Some("did you mean 'json'?\r".into()),
        };
        let s = e.to_string();
        assert!(!s.contains('\n') && !s.contains('\r') && !s.contains('\t'), "{s:?}");
        assert_eq!(s, "error: unknown log format 'jso\\n\\t' at x.toml:3:10 — did you mean 'json'?\\r");
    }
}
