//! SECURITY.md's rule table names, for each rule R1-R40, where the code applies it
//! (`head::parse_request`, `exchange::Upload::run`, `framing.rs`). A rename or a move must not
//! leave the table pointing at nothing: this test reads the table and fails, naming every
//! missing item, when one of them no longer exists under src/.

use std::fs;
use std::path::{Path, PathBuf};

/// Item kinds whose declaration `<kind> <name>` makes a name exist.
const KINDS: &[&str] = &[
    "fn", "struct", "enum", "const", "static", "type", "trait", "mod",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The backticked names in the last column of every `| R<n> |` row.
fn table_names(security: &str) -> Vec<(String, String)> {
    let mut names = Vec::new();
    for line in security.lines() {
        let Some(rest) = line.strip_prefix("| R") else {
            continue;
        };
        let rule = format!("R{}", rest.split(' ').next().unwrap_or(""));
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        let last = cells.last().copied().unwrap_or("");
        for (i, piece) in last.split('`').enumerate() {
            if i % 2 == 1 {
                names.push((rule.clone(), piece.trim().to_string()));
            }
        }
    }
    names
}

/// All `.rs` files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A module's sources: `src/<m>.rs`, and every file under `src/<m>/` (a directory module,
/// or a file module's children), without unit-test files (an item that exists only in
/// tests does not implement a rule).
fn module_sources(module: &str) -> Vec<String> {
    let src = root().join("src");
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    rust_files(&src.join(module), &mut files);
    files
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "tests.rs"))
        .filter_map(|f| fs::read_to_string(f).ok())
        .collect()
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `text` declares `name` as one of [`KINDS`] (`pub(crate) async fn x<T>(` counts).
fn declares(text: &str, name: &str) -> bool {
    KINDS.iter().any(|kind| {
        let needle = format!("{kind} {name}");
        text.match_indices(&needle).any(|(at, _)| {
            let before = text.as_bytes()[..at].last().copied();
            let after = text.as_bytes().get(at + needle.len()).copied();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
    })
}

/// Why `name` (a table entry) names nothing, or None when it exists.
fn missing(name: &str) -> Option<String> {
    if let Some(file) = name.strip_suffix(".rs") {
        let src = root().join("src");
        let exists = src.join(name).is_file() || src.join(file).join("mod.rs").is_file();
        return (!exists).then(|| format!("no file src/{name} (nor src/{file}/mod.rs)"));
    }
    let parts: Vec<&str> = name.split("::").collect();
    if parts.len() < 2
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(is_ident))
    {
        return Some("not a `module::item`, `module::Type::method` or `file.rs` name".into());
    }
    let module = parts[0];
    let sources = module_sources(module);
    if sources.is_empty() {
        return Some(format!(
            "no module `{module}` (src/{module}.rs or src/{module}/)"
        ));
    }
    let absent: Vec<&str> = parts[1..]
        .iter()
        .copied()
        .filter(|item| !sources.iter().any(|text| declares(text, item)))
        .collect();
    (!absent.is_empty()).then(|| format!("module `{module}` declares no {}", absent.join(", ")))
}

#[test]
fn every_place_the_rule_table_names_exists() {
    let security = fs::read_to_string(root().join("SECURITY.md")).expect("SECURITY.md");
    let names = table_names(&security);
    assert!(
        names.len() >= 37,
        "found only {} names in SECURITY.md's rule table: has its format changed?",
        names.len()
    );
    let problems: Vec<String> = names
        .iter()
        .filter(|(_, name)| !name.starts_with("httparse"))
        .filter_map(|(rule, name)| missing(name).map(|why| format!("{rule}: `{name}`: {why}")))
        .collect();
    assert!(
        problems.is_empty(),
        "SECURITY.md's rule table names code that does not exist:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_rule_names_its_place() {
    let security = fs::read_to_string(root().join("SECURITY.md")).expect("SECURITY.md");
    let names = table_names(&security);
    for n in 1..=37 {
        let rule = format!("R{n}");
        assert!(
            names.iter().any(|(r, _)| *r == rule)
                || security
                    .lines()
                    .any(|l| l.starts_with(&format!("| {rule} |")) && l.contains("httparse")),
            "{rule} has no row naming where it is implemented"
        );
    }
}

#[test]
fn the_checker_finds_declarations_and_only_whole_names() {
    let text = "pub(crate) async fn run<R>(x: R) {}\nstruct Upload<'a> {}\nconst MAX: u8 = 1;";
    assert!(declares(text, "run"));
    assert!(declares(text, "Upload"));
    assert!(declares(text, "MAX"));
    assert!(!declares(text, "ru"));
    assert!(!declares(text, "Up"));
    assert!(!declares(text, "MAX_X"));
    assert!(!declares("fn rerun() {}", "run"));
}
