//! Name patterns: module and function globs (`my_app_*`, `erpc:*`), node-name globs, and exact
//! `M:F/A` references.
//!
//! `*` is the only wildcard and matches any run of characters, the empty run included. Shell
//! habits (`?`, `[a-z]`, `{a,b}`) are refused, not silently taken literally, and `**` is refused
//! as a likely slip. Atoms that are not plain Erlang atoms are written quoted as in Erlang:
//! `m:'-f/1-fun-0-'`, with `\'` and `\\` inside quotes.

use std::fmt;

use crate::decode::{parse_str, Cx, FromValue, Value};

/// A `*`-glob over an atom's text (or a node name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    text: String,
}

impl Glob {
    /// Check a pattern. `quoted`: it came from inside `'…'`, where any character is literal
    /// except `*`.
    fn new(text: &str, quoted: bool) -> Result<Glob, String> {
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        if text.contains("**") {
            return Err(format!("'**' in pattern '{text}': a single '*' already matches any run of characters"));
        }
        if !quoted {
            if let Some(c) = text.chars().find(|c| matches!(c, '?' | '[' | ']' | '{' | '}')) {
                return Err(format!(
                    "'{c}' in pattern '{text}' is not a wildcard here: only '*' is (it matches any run of characters)"
                ));
            }
            if let Some(c) = text.chars().find(|c| c.is_whitespace() || matches!(c, '"' | ',' | '\'')) {
                return Err(format!("character {c:?} in pattern '{text}' (quote the atom as in Erlang: 'odd atom')"));
            }
        }
        Ok(Glob { text: text.to_string() })
    }

    /// A glob over a whole string (no atom quoting): module patterns, registered names.
    pub fn parse(text: &str) -> Result<Glob, String> {
        match text.strip_prefix('\'') {
            Some(_) => {
                let (atom, rest) = split_atom(text)?;
                if !rest.is_empty() {
                    return Err(format!("unexpected '{rest}' after the quoted atom"));
                }
                Glob::new(&atom, true)
            }
            None => Glob::new(text, false),
        }
    }

    /// The pattern as written (unquoted).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// No `*` in it: matches exactly one name.
    pub fn is_literal(&self) -> bool {
        !self.text.contains('*')
    }

    /// Characters that are not wildcards; more means more specific.
    pub fn literal_len(&self) -> usize {
        self.text.chars().filter(|&c| c != '*').count()
    }

    pub fn matches(&self, name: &str) -> bool {
        let mut pieces = self.text.split('*');
        // split always yields at least one piece; with no '*' the only piece must be the name.
        let first = pieces.next().unwrap_or("");
        let Some(mut rest) = name.strip_prefix(first) else { return false };
        let pieces: Vec<&str> = pieces.collect();
        let Some((last, middle)) = pieces.split_last() else { return rest.is_empty() };
        // Leftmost match of each middle piece is optimal for '*'-only globs: taking a later
        // occurrence never leaves more room for what follows.
        for piece in middle {
            match rest.find(piece) {
                Some(i) => rest = &rest[i + piece.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_atom(f, &self.text, true)
    }
}

impl FromValue for Glob {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        parse_str(cx, path, v, "a name pattern such as \"my_app_*\"", |s| {
            Glob::parse(s).map_err(|m| (format!("invalid pattern: {m}"), None))
        })
    }
}

/// Whether `s` can be written as a bare Erlang atom.
fn is_bare_atom(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_lowercase())
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@')
}

fn write_atom(f: &mut fmt::Formatter<'_>, s: &str, glob: bool) -> fmt::Result {
    let bare =
        is_bare_atom(s) || (glob && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '@' | '*' | '.')));
    if bare {
        f.write_str(s)
    } else {
        f.write_str("'")?;
        for c in s.chars() {
            if c == '\'' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("'")
    }
}

/// Split one atom off the front of `s`: `'quoted'` (with `\'` and `\\` escapes), or bare up to
/// the next `:` or `/`. Returns the atom's text and the rest.
fn split_atom(s: &str) -> Result<(String, &str), String> {
    if let Some(body) = s.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' => return Ok((out, &body[i + 1..])),
                '\\' => match chars.next() {
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                _ => out.push(c),
            }
        }
        Err(format!("unterminated quoted atom in '{s}'"))
    } else {
        let end = s.find([':', '/']).unwrap_or(s.len());
        Ok((s[..end].to_string(), &s[end..]))
    }
}

/// An atom's text and whether it was written quoted.
type AtomText = (String, bool);

/// `Module:Function[/Arity]`, each atom optionally quoted. Shared by the pattern and exact
/// forms below.
fn split_mfa(s: &str) -> Result<(AtomText, AtomText, Option<u8>), String> {
    let m_quoted = s.starts_with('\'');
    let (m, rest) = split_atom(s)?;
    let Some(rest) = rest.strip_prefix(':') else {
        return Err(if rest.is_empty() {
            format!("'{s}' has no function: write '{s}:function' ('{s}:*' for all of them)")
        } else {
            format!("expected ':' after the module in '{s}'")
        });
    };
    let f_quoted = rest.starts_with('\'');
    let (f, rest) = split_atom(rest)?;
    let arity = match rest.strip_prefix('/') {
        None if rest.is_empty() => None,
        None => return Err(format!("unexpected '{rest}' in '{s}'")),
        Some(a) => Some(a.parse::<u8>().map_err(|_| format!("invalid arity '{a}' in '{s}' (0 to 255)"))?),
    };
    Ok(((m, m_quoted), (f, f_quoted), arity))
}

/// `module:function` or `module:function/arity`, module and function being globs:
/// `erpc:execute_call`, `my_api:*`, `'Elixir.Foo':bar/2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MfPattern {
    pub module: Glob,
    pub function: Glob,
    /// `None`: any arity.
    pub arity: Option<u8>,
}

impl MfPattern {
    pub fn parse(s: &str) -> Result<MfPattern, String> {
        let ((m, mq), (f, fq), arity) = split_mfa(s)?;
        Ok(MfPattern { module: Glob::new(&m, mq)?, function: Glob::new(&f, fq)?, arity })
    }

    pub fn matches(&self, module: &str, function: &str, arity: Option<u8>) -> bool {
        self.module.matches(module)
            && self.function.matches(function)
            && match (self.arity, arity) {
                (Some(want), Some(got)) => want == got,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }
}

impl fmt::Display for MfPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.module, self.function)?;
        if let Some(a) = self.arity {
            write!(f, "/{a}")?;
        }
        Ok(())
    }
}

impl FromValue for MfPattern {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        parse_str(cx, path, v, "a pattern such as \"my_api:*\"", |s| {
            MfPattern::parse(s).map_err(|m| (format!("invalid pattern: {m}"), None))
        })
    }
}

/// An exact function: `module:function/arity` (arity optional where the context allows it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mfa {
    pub module: String,
    pub function: String,
    pub arity: Option<u8>,
}

impl Mfa {
    pub fn parse(s: &str) -> Result<Mfa, String> {
        let ((module, _), (function, _), arity) = split_mfa(s)?;
        for part in [&module, &function] {
            if part.is_empty() {
                return Err(format!("empty atom in '{s}'"));
            }
            if part.contains('*') {
                return Err(format!("'*' in '{s}': this names one function, wildcards are not allowed"));
            }
        }
        Ok(Mfa { module, function, arity })
    }
}

impl fmt::Display for Mfa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_atom(f, &self.module, false)?;
        f.write_str(":")?;
        write_atom(f, &self.function, false)?;
        if let Some(a) = self.arity {
            write!(f, "/{a}")?;
        }
        Ok(())
    }
}

/// A node-name pattern, `name@host`, either part a glob: `web*@10.0.0.*`, `*@db1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodePattern(Glob);

impl NodePattern {
    pub fn parse(s: &str) -> Result<NodePattern, String> {
        let (name, host) = s.split_once('@').ok_or_else(|| format!("'{s}' is not a node name: expected name@host"))?;
        if name.is_empty() || host.is_empty() || host.contains('@') {
            return Err(format!("'{s}' is not a node name: expected name@host"));
        }
        if let Some(c) = name.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*'))) {
            return Err(format!("character {c:?} in the name part of '{s}'"));
        }
        if let Some(c) =
            host.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*' | ':')))
        {
            return Err(format!("character {c:?} in the host part of '{s}'"));
        }
        Glob::new(s, false).map(NodePattern)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn is_literal(&self) -> bool {
        self.0.is_literal()
    }

    pub fn matches(&self, node: &str) -> bool {
        self.0.matches(node)
    }
}

impl fmt::Display for NodePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl FromValue for NodePattern {
    fn from_value(cx: &mut Cx, path: &str, v: &Value<'_>) -> Option<Self> {
        parse_str(cx, path, v, "a node name such as \"app@host\"", |s| {
            NodePattern::parse(s).map_err(|m| (format!("invalid node name: {m}"), None))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_star_globs() {
        let g = |p: &str| Glob::parse(p).unwrap();
        assert!(g("lists").matches("lists"));
        assert!(!g("lists").matches("lists2"));
        assert!(g("my_app_*").matches("my_app_"));
        assert!(g("my_app_*").matches("my_app_server"));
        assert!(!g("my_app_*").matches("my_ap"));
        assert!(g("*").matches(""));
        assert!(g("*_sup").matches("app_sup"));
        assert!(g("a*b*c").matches("abc"));
        assert!(g("a*b*c").matches("axxbyyc"));
        assert!(!g("a*b*c").matches("axxbyy"));
        assert!(g("a*a").matches("aa"));
        assert!(!g("a*a").matches("a"));
        assert!(g("*ab*ab").matches("xabyabab"));
        assert!(g("'Elixir.Foo.*'").matches("Elixir.Foo.Bar"));
        assert!(g("Elixir.Foo.*").matches("Elixir.Foo.Bar"));
    }

    #[test]
    fn invalid_globs_say_why() {
        assert!(Glob::parse("").unwrap_err().contains("empty"));
        assert!(Glob::parse("a**").unwrap_err().contains("'**'"));
        assert!(Glob::parse("app_[a-z]").unwrap_err().contains("only '*' is"));
        assert!(Glob::parse("ap?").unwrap_err().contains("not a wildcard"));
        assert!(Glob::parse("two words").unwrap_err().contains("quote"));
        assert!(Glob::parse("'two words'").is_ok());
        assert!(Glob::parse("'unterminated").unwrap_err().contains("unterminated"));
    }

    #[test]
    fn mf_patterns() {
        let p = MfPattern::parse("erpc:execute_call").unwrap();
        assert!(p.matches("erpc", "execute_call", Some(4)));
        assert!(!p.matches("erpc", "call", None));
        let p = MfPattern::parse("my_api:*/2").unwrap();
        assert!(p.matches("my_api", "get", Some(2)));
        assert!(!p.matches("my_api", "get", Some(3)));
        assert!(!p.matches("my_api", "get", None));
        assert!(MfPattern::parse("*:*").unwrap().matches("os", "cmd", Some(1)));
        assert!(MfPattern::parse("os").unwrap_err().contains("'os:*'"));
        assert!(MfPattern::parse("os:cmd/x").unwrap_err().contains("arity"));
        assert!(MfPattern::parse("os:cmd/300").is_err());
        assert_eq!(MfPattern::parse("'Elixir.A':b/1").unwrap().to_string(), "Elixir.A:b/1");
    }

    #[test]
    fn exact_mfas_and_lambda_names() {
        let m = Mfa::parse("m:'-f/1-fun-0-'").unwrap();
        assert_eq!((m.module.as_str(), m.function.as_str(), m.arity), ("m", "-f/1-fun-0-", None));
        assert_eq!(m.to_string(), "m:'-f/1-fun-0-'");
        let m = Mfa::parse("m:f/1").unwrap();
        assert_eq!(m.arity, Some(1));
        assert!(Mfa::parse("'it''s':f/0").unwrap_err().contains("expected ':' after the module"));
        assert_eq!(Mfa::parse(r"'it\'s':f/0").unwrap().to_string(), r"'it\'s':f/0");
        assert!(Mfa::parse("m:*").unwrap_err().contains("wildcards"));
        assert!(Mfa::parse(":f/1").unwrap_err().contains("empty atom"));
    }

    #[test]
    fn node_patterns() {
        assert!(NodePattern::parse("a@host").unwrap().matches("a@host"));
        assert!(NodePattern::parse("web*@10.0.0.*").unwrap().matches("web3@10.0.0.7"));
        assert!(NodePattern::parse("*@*").unwrap().matches("x@y"));
        assert!(NodePattern::parse("nohost").is_err());
        assert!(NodePattern::parse("a@b@c").is_err());
        assert!(NodePattern::parse("a b@c").is_err());
        assert!(NodePattern::parse("a**@c").is_err());
    }
}
