//! Release bookkeeping: the version Cargo.toml states has its CHANGELOG.md section, and the
//! commit a build records is one `--version` can print.

use agent_loop_proxy::{COMMIT, VERSION};
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_changelog_has_a_section_for_this_version() {
    let text = std::fs::read_to_string(root().join("CHANGELOG.md")).expect("CHANGELOG.md");
    let heading = format!("## [{VERSION}]");
    assert!(
        text.lines().any(|l| l.starts_with(&heading)),
        "CHANGELOG.md has no `{heading} - <date>` section"
    );
    assert!(
        text.lines().any(|l| l == "## [Unreleased]"),
        "CHANGELOG.md has no `## [Unreleased]` section"
    );
}

#[test]
fn the_commit_is_a_short_hash_or_absent() {
    if let Some(c) = COMMIT {
        assert!(
            c.len() == 12 && c.bytes().all(|b| b.is_ascii_hexdigit()),
            "COMMIT is not a 12-digit hash: {c:?}"
        );
    }
}

/// Built from a git checkout of this repository, the binary knows its commit (the build
/// script re-runs when HEAD moves). Skipped where git or `.git` is missing.
#[test]
fn a_build_from_a_checkout_records_its_head() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root())
        .output();
    let top = Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .current_dir(root())
        .output();
    let (Ok(head), Ok(top)) = (head, top) else {
        eprintln!("skipped: no git");
        return;
    };
    let top = String::from_utf8_lossy(&top.stdout).trim().to_string();
    if !head.status.success() || Path::new(&top).canonicalize().ok() != root().canonicalize().ok() {
        eprintln!("skipped: not a git checkout of this repository");
        return;
    }
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert_eq!(COMMIT, Some(head.as_str()));
}
