//! The promise table (`tests/it/README.md`) names, for every promise the README makes, the tests that assert
//! it. This keeps the table honest: every row names at least one test, benchmark or check, and every test it
//! names exists, so a renamed or removed test cannot leave a promise pointing at nothing.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `file` defines a function `name`.
fn defines(file: &Path, name: &str) -> bool {
    std::fs::read_to_string(file).is_ok_and(|text| {
        text.lines().any(|l| {
            let l = l.trim_start();
            ["fn ", "async fn ", "pub fn ", "pub async fn "]
                .iter()
                .any(|p| l.strip_prefix(p).is_some_and(|rest| rest.starts_with(&format!("{name}("))))
        })
    })
}

/// Where a test named as cargo prints it lives, if it names one: `module::…::name` in `tests/it/module.rs`,
/// or `path::tests::name` (or `path::x_tests::name`) in `src/path.rs` (or `src/path/mod.rs`).
fn test_file(name: &str) -> Option<(PathBuf, String)> {
    let parts: Vec<&str> = name.split("::").collect();
    let last = (*parts.last()?).to_string();
    if parts.len() < 2
        || !last.contains('_')
        || !last.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    if let Some(at) = parts.iter().position(|p| *p == "tests" || p.ends_with("_tests")) {
        let path = parts[..at].join("/");
        let file = root().join("src").join(format!("{path}.rs"));
        let file = if file.exists() { file } else { root().join("src").join(&path).join("mod.rs") };
        return Some((file, last));
    }
    let file = root().join("tests/it").join(format!("{}.rs", parts[0]));
    file.exists().then_some((file, last))
}

/// Every row of the promise table names something that asserts it, and every test it names exists.
#[test]
fn every_test_the_promise_table_names_exists() {
    let table = std::fs::read_to_string(root().join("tests/it/README.md")).unwrap();
    let (mut rows, mut named, mut missing, mut empty) = (0, 0, Vec::new(), Vec::new());
    for line in table.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| Promise")) {
        rows += 1;
        let asserted_by = line.rsplit('|').nth(1).unwrap_or_default();
        let mut found = 0;
        for code in asserted_by.split('`').skip(1).step_by(2) {
            if let Some((file, name)) = test_file(code) {
                named += 1;
                if defines(&file, &name) {
                    found += 1;
                } else {
                    missing.push(code.to_string());
                }
            } else if (code.starts_with("benches/")
                || code.starts_with(".ci/")
                || code.starts_with("tests/it/"))
                && root().join(code.split_whitespace().next().unwrap_or(code)).exists()
            {
                found += 1;
            }
        }
        if found == 0 {
            empty.push(line.to_string());
        }
    }
    assert!(rows > 200 && named > 300, "the table is there: {rows} rows naming {named} tests");
    assert!(missing.is_empty(), "the promise table names tests that do not exist: {missing:#?}");
    assert!(empty.is_empty(), "promises without a test: {empty:#?}");
}
