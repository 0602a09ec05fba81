//! Records the git commit the crate is built from, for `--version`: `AGENT_LOOP_PROXY_COMMIT`
//! is its 12-digit short hash when the sources are a git checkout of this repository, and
//! empty otherwise (a source archive, or a Docker build context, which carries no `.git`).
//! Whether the work tree has uncommitted changes is not recorded: knowing it would mean
//! re-running this script on every edit.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `git <args>` run in `dir`: its trimmed stdout, or None if git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The short hash of HEAD, and the files whose change means a new HEAD (HEAD itself, the
/// branch it points to, packed refs), if `dir` is the top of a git work tree. A checkout of
/// another repository that merely contains this crate does not count.
fn commit(dir: &Path) -> Option<(String, Vec<PathBuf>)> {
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let hash = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    // `--git-path` resolves worktrees: HEAD is per worktree, branches are shared.
    let path = |name: &str| git(dir, &["rev-parse", "--git-path", name]).map(|p| dir.join(p));
    let mut paths: Vec<PathBuf> = ["HEAD", "packed-refs"]
        .into_iter()
        .filter_map(path)
        .collect();
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]).and_then(|b| path(&b)) {
        // A branch only in packed-refs gets its own file on the next commit: watch its
        // directory until then.
        if branch.exists() {
            paths.push(branch);
        } else {
            paths.extend(branch.parent().map(Path::to_path_buf));
        }
    }
    paths.retain(|p| p.exists());
    Some((hash, paths))
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let hash = match commit(&dir) {
        Some((hash, paths)) => {
            for p in paths {
                println!("cargo:rerun-if-changed={}", p.display());
            }
            hash
        }
        None => String::new(),
    };
    println!("cargo:rustc-env=AGENT_LOOP_PROXY_COMMIT={hash}");
}
