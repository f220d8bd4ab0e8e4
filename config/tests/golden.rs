//! Golden tests for configuration errors: every `tests/golden/NAME.toml` must fail to load
//! with exactly the text in `NAME.err` (every error, one per line, with line and column).
//!
//! To accept new output after a deliberate change: `DISTGATE_BLESS=1 cargo test -p
//! distgate-config --test golden`, then read the diff of the `.err` files before committing.

use std::path::{Path, PathBuf};

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("tests/golden")
        .expect("tests/golden (cargo runs tests from the crate directory)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

/// Every cookie in the golden files contains this word (see the cookie-* cases), so the
/// test can prove no output ever holds one, whichever key or line it was written on.
const SECRET_MARK: &str = "HUSH";

fn actual(path: &Path) -> String {
    // Relative path, as an operator would type it: errors name the file as given.
    let shown = Path::new("tests/golden").join(path.file_name().unwrap());
    match distgate_config::load(&shown) {
        Ok(_) => panic!("{} loaded without error", shown.display()),
        Err(e) => format!("{e}\n"),
    }
}

#[test]
fn every_golden_case() {
    let bless = std::env::var_os("DISTGATE_BLESS").is_some();
    let cases = cases();
    assert!(cases.len() >= 10, "golden cases missing: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let got = actual(case);
        assert!(!got.contains(SECRET_MARK), "{}: a cookie was printed:\n{got}", case.display());
        let expected_path = case.with_extension("err");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing (DISTGATE_BLESS=1 writes it)", expected_path.display()));
        if got != expected {
            failures.push(format!("{}:\n--- expected\n{expected}--- got\n{got}", case.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn cookie_cases_really_hold_cookies() {
    // Guard the guard: the no-cookie check above is only as good as the cases holding cookies
    // on lines that are wrong.
    for case in ["cookie-never-printed", "cookie-syntax-error-never-printed"] {
        let src = std::fs::read_to_string(format!("tests/golden/{case}.toml")).unwrap();
        assert!(src.matches(SECRET_MARK).count() >= 1, "{case}");
    }
}
