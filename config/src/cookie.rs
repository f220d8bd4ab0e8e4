//! Cookies and where they come from.
//!
//! A cookie is the only secret in a configuration. It is held in [`Cookie`], whose `Debug`
//! and `Display` print `<redacted>`, so no log line, error or panic message can carry one by
//! accident: the only way to the bytes is [`Cookie::expose`], which is easy to grep for.

use std::fmt;
use std::path::{Path, PathBuf};

/// What [`Cookie`] prints instead of itself.
pub const REDACTED: &str = "<redacted>";

/// A distribution cookie.
#[derive(Clone)]
pub struct Cookie(String);

impl Cookie {
    /// Check a cookie as OTP's `auth` module does: printable ASCII only, not empty. Errors
    /// describe the problem without quoting the cookie.
    pub fn new(text: impl Into<String>) -> Result<Cookie, String> {
        let text = text.into();
        if text.is_empty() {
            return Err("the cookie is empty".into());
        }
        if let Some(pos) = text.chars().position(|c| !(' '..='~').contains(&c)) {
            return Err(format!(
                "the cookie has a character Erlang refuses at position {} (only printable ASCII is allowed)",
                pos + 1
            ));
        }
        if text.len() > 255 {
            // It becomes an atom on the nodes, and atoms are at most 255 characters.
            return Err(format!("the cookie is {} characters long; Erlang allows at most 255", text.len()));
        }
        Ok(Cookie(text))
    }

    /// Parse the contents of a cookie file the way OTP does (`auth:read_cookie`): printable
    /// ASCII up to the first line break, then only line breaks and spaces.
    pub fn from_file_contents(bytes: &[u8]) -> Result<Cookie, String> {
        let end = bytes.iter().position(|b| !(b' '..=b'~').contains(b)).unwrap_or(bytes.len());
        let (cookie, rest) = bytes.split_at(end);
        if !rest.iter().all(|b| matches!(b, b'\n' | b'\r' | b' ')) {
            return Err(
                "the cookie file has a character Erlang refuses (only printable ASCII, then line breaks)".into()
            );
        }
        // Only printable ASCII so far, so this is valid UTF-8.
        Cookie::new(String::from_utf8_lossy(cookie).into_owned())
    }

    /// The cookie's text, for computing handshake digests. Nothing else should need it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Cookie {
    /// Constant-time in the length of the shorter input, so comparing a configured cookie
    /// against anything does not leak where they differ.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Cookie {}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Drop for Cookie {
    fn drop(&mut self) {
        // Best effort, without unsafe: overwrite the bytes before the allocation is freed so a
        // later heap dump is less likely to hold the cookie. `black_box` keeps the writes from
        // being optimised away as dead stores.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
}

/// Where a cluster's cookie comes from. Files and variables are read by [`resolve`], at
/// start and on every reload, not when the configuration is parsed: `distgate check` on a
/// build machine does not need the secrets.
///
/// [`resolve`]: CookieSource::resolve
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieSource {
    /// `cookie_file = "…"`; a leading `~/` means the home directory, as for
    /// `~/.erlang.cookie`.
    File(PathBuf),
    /// `cookie_env = "VAR"`.
    Env(String),
    /// `cookie = "…"` in the file itself. Allowed for tests and examples; prefer a file.
    Inline(Cookie),
}

impl CookieSource {
    /// Read the cookie. The error says what went wrong and where from, never the cookie.
    pub fn resolve(&self) -> Result<Cookie, String> {
        match self {
            CookieSource::Inline(c) => Ok(c.clone()),
            CookieSource::Env(var) => match std::env::var(var) {
                Ok(v) => Cookie::new(v).map_err(|e| format!("environment variable {var}: {e}")),
                Err(std::env::VarError::NotPresent) => Err(format!("environment variable {var} is not set")),
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(format!("environment variable {var}: the cookie has a character Erlang refuses"))
                }
            },
            CookieSource::File(path) => {
                let full = expand_home(path)?;
                let bytes =
                    std::fs::read(&full).map_err(|e| format!("cannot read cookie file '{}': {e}", full.display()))?;
                Cookie::from_file_contents(&bytes).map_err(|e| format!("cookie file '{}': {e}", full.display()))
            }
        }
    }

    /// How the source is described in messages and `Debug`: never the cookie itself.
    pub fn describe(&self) -> String {
        match self {
            CookieSource::File(p) => format!("cookie_file = {:?}", p.display().to_string()),
            CookieSource::Env(v) => format!("cookie_env = {v:?}"),
            CookieSource::Inline(_) => format!("cookie = \"{REDACTED}\""),
        }
    }
}

/// `~/x` → `$HOME/x`; other paths unchanged.
pub fn expand_home(path: &Path) -> Result<PathBuf, String> {
    match path.strip_prefix("~") {
        Ok(rest) => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .ok_or_else(|| format!("'{}' needs the home directory, but HOME is not set", path.display()))?;
            Ok(PathBuf::from(home).join(rest))
        }
        Err(_) => Ok(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "SECRETCOOKIE123";

    #[test]
    fn never_printed() {
        let c = Cookie::new(SECRET).unwrap();
        assert_eq!(format!("{c}"), REDACTED);
        assert_eq!(format!("{c:?}"), REDACTED);
        let src = CookieSource::Inline(c.clone());
        assert!(!format!("{src:?}").contains(SECRET));
        assert!(!format!("{src:#?}").contains(SECRET));
        assert!(!src.describe().contains(SECRET));
        assert_eq!(c.expose(), SECRET);
    }

    #[test]
    fn file_contents_as_otp_reads_them() {
        assert_eq!(Cookie::from_file_contents(b"ABC\n").unwrap().expose(), "ABC");
        assert_eq!(Cookie::from_file_contents(b"ABC\r\n \n").unwrap().expose(), "ABC");
        assert_eq!(Cookie::from_file_contents(b"AB C").unwrap().expose(), "AB C");
        assert!(Cookie::from_file_contents(b"").is_err());
        assert!(Cookie::from_file_contents(b"\n").is_err());
        assert!(Cookie::from_file_contents(b"ABC\nDEF").is_err());
        assert!(Cookie::from_file_contents(b"AB\tC").is_err());
        assert!(Cookie::from_file_contents("ABÇ".as_bytes()).is_err());
    }

    #[test]
    fn errors_never_quote_the_cookie() {
        let bad = format!("{SECRET}\u{7}");
        let e = Cookie::new(bad.clone()).unwrap_err();
        assert!(!e.contains(SECRET), "{e}");
        let e = Cookie::from_file_contents(format!("{SECRET}\nmore").as_bytes()).unwrap_err();
        assert!(!e.contains(SECRET), "{e}");
        assert!(Cookie::new("x".repeat(256)).unwrap_err().contains("at most 255"));
    }

    #[test]
    fn comparison() {
        assert_eq!(Cookie::new("a").unwrap(), Cookie::new("a").unwrap());
        assert_ne!(Cookie::new("a").unwrap(), Cookie::new("b").unwrap());
        assert_ne!(Cookie::new("a").unwrap(), Cookie::new("ab").unwrap());
    }

    #[test]
    fn resolve_from_file_and_env() {
        let dir = std::env::temp_dir().join(format!("distgate-cookie-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c");
        std::fs::write(&file, "FILECOOKIE\n").unwrap();
        assert_eq!(CookieSource::File(file.clone()).resolve().unwrap().expose(), "FILECOOKIE");
        let e = CookieSource::File(dir.join("missing")).resolve().unwrap_err();
        assert!(e.starts_with("cannot read cookie file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();

        // A variable nobody else sets; tests in this binary run in parallel.
        let var = "DISTGATE_CONFIG_TEST_COOKIE_UNSET_7f3a";
        assert_eq!(
            CookieSource::Env(var.into()).resolve().unwrap_err(),
            format!("environment variable {var} is not set")
        );
    }

    #[test]
    fn home_expansion() {
        let home = std::env::var_os("HOME");
        if let Some(home) = home.filter(|h| !h.is_empty()) {
            assert_eq!(expand_home(Path::new("~/.erlang.cookie")).unwrap(), PathBuf::from(home).join(".erlang.cookie"));
        }
        assert_eq!(expand_home(Path::new("/etc/c")).unwrap(), PathBuf::from("/etc/c"));
        assert_eq!(expand_home(Path::new("rel/~/c")).unwrap(), PathBuf::from("rel/~/c"));
    }
}
