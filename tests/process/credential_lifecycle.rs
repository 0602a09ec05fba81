//! Token files at startup: one that cannot be used is an exit code 1 and a `proxy: ` line
//! (rotation while serving: `tests/it/credential_lifecycle.rs`).

use std::fs;
use std::path::PathBuf;

use crate::support::*;

const OLD: &str = "sk-ant-test-OLD-0123456789abcdef";

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alp-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_missing_or_unusable_token_file_at_start_is_an_error() {
    let dir = scratch_dir("missing");
    let empty = dir.join("empty");
    fs::write(&empty, "").unwrap();
    let cases = [
        (dir.join("absent"), "proxy: TOKEN_FILE: cannot be read"),
        (dir.clone(), "proxy: TOKEN_FILE: cannot be read"),
        (empty, "proxy: TOKEN_FILE: holds no token"),
    ];
    for (path, want) in cases {
        let envs = [("TOKEN_FILE", path.to_str().unwrap())];
        let out = run(&[], &envs, Some(OLD.as_bytes()), true, IO_TIMEOUT);
        assert_eq!(out.code(), Some(1), "{path:?}: {out:?}");
        assert!(out.stderr.starts_with(want), "{path:?}: {:?}", out.stderr);
    }
    let envs = [("TOKEN_FILE", "/run/secrets/t"), ("TOKEN_UPDATES", "stdin")];
    let out = run(&[], &envs, Some(OLD.as_bytes()), true, IO_TIMEOUT);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr
            .starts_with("proxy: TOKEN_FILE: cannot be combined"),
        "{out:?}"
    );
    let _ = fs::remove_dir_all(&dir);
}
