//! Token files at startup: one that cannot be used is an exit code 1 and a `proxy: ` line
//! (rotation while serving: `tests/it/credential_lifecycle.rs`); and behind a bind mount, as
//! a container sees one (root: a mount namespace).

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::process::BIN;
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

/// A proxy in a mount namespace of its own where `mount` is bind-mounted at `at` (a file or a
/// directory), as Docker and Compose mount a secret or a volume, reading `TOKEN_FILE=token`.
fn proxy_behind_bind_mount(
    up: &Upstream,
    mount: &std::path::Path,
    at: &std::path::Path,
    token: &std::path::Path,
) -> ProcessProxy {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "sh", "-c"])
        .arg(r#"mount --make-rprivate / && mount --bind "$1" "$2" && exec "$3""#)
        .args(["sh", mount.to_str().unwrap(), at.to_str().unwrap(), BIN]);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LISTEN_PORT", "0")
        .env("TARGET", up.target_url())
        .env("TOKEN_FILE", token)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    ProcessProxy::spawn_command(cmd, b"", true)
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"))
}

/// The README's Compose recipe, as an operator runs it: the host replaces the token file
/// with `mv`. Behind a single-file bind mount (a Compose secret) the container keeps the old
/// inode, and the proxy the old token; behind a directory mount (the recipe) it rotates.
#[test]
#[ignore = "needs root (a mount namespace)"]
fn a_token_file_in_a_mounted_directory_rotates_and_one_mounted_alone_does_not() {
    const OLD: &str = "sk-ant-test-mount-OLD-0123456789";
    const NEW: &str = "sk-ant-test-mount-NEW-9876543210";
    let dir = scratch_dir("bindmount");
    let bearer = |up: &Upstream| {
        let r = up.requests();
        let last = r.last().expect("a request");
        String::from_utf8_lossy(last.head.all("authorization")[0]).into_owned()
    };
    let replace = |host: &std::path::Path| {
        fs::write(host.join("token.tmp"), format!("{NEW}\n")).unwrap();
        fs::rename(host.join("token.tmp"), host.join("token")).unwrap();
    };
    for (single, host) in [(true, dir.join("host-file")), (false, dir.join("host-dir"))] {
        fs::create_dir_all(&host).unwrap();
        fs::write(host.join("token"), format!("{OLD}\n")).unwrap();
        let ctr = dir.join(if single { "ctr-file" } else { "ctr-dir" });
        let up = Upstream::plain().serve(handlers::echo_head());
        let proxy = if single {
            fs::write(&ctr, "").unwrap();
            proxy_behind_bind_mount(&up, &host.join("token"), &ctr, &ctr)
        } else {
            fs::create_dir_all(&ctr).unwrap();
            proxy_behind_bind_mount(&up, &host, &ctr, &ctr.join("token"))
        };
        roundtrip(proxy.addr(), get("/a"));
        assert_eq!(bearer(&up), format!("Bearer {OLD}"));
        replace(&host);
        let rotated = proxy.wait_for_stderr(
            "token updated (generation 2)",
            Duration::from_secs(if single { 4 } else { 10 }),
        );
        roundtrip(proxy.addr(), get("/b"));
        if single {
            assert!(!rotated, "a single-file mount saw the replacement?");
            assert_eq!(bearer(&up), format!("Bearer {OLD}"), "the pinned inode");
        } else {
            assert!(rotated, "{}", proxy.stderr_so_far());
            assert_eq!(bearer(&up), format!("Bearer {NEW}"));
        }
    }
    let _ = fs::remove_dir_all(&dir);
}
