//! Regression tests for the third attack review's findings that need the process: the
//! token's locked memory under RLIMIT_MEMLOCK as another uid, and the fatal line's format.

use std::os::unix::process::CommandExt;

use crate::support::*;

const NOBODY: u32 = 65534;

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1)?.parse::<u32>().ok()
        })
        == Some(0)
}

/// `VmLck` of a process, in KiB.
fn locked_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .expect("VmLck line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A proxy as uid 65534 (for whom RLIMIT_MEMLOCK applies) with `limit` bytes of lockable
/// memory, its token replaced through stdin.
fn proxy_with_memlock(limit: u64) -> ProcessProxy {
    let mut cmd = ProcessProxy::command(&[("TOKEN_UPDATES", "stdin")]);
    cmd.uid(NOBODY).gid(NOBODY);
    // SAFETY: setrlimit is async-signal-safe and only reads a struct on the stack.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
            Ok(())
        });
    }
    let first = format!("{}\n", long_token(0));
    ProcessProxy::spawn_command(cmd, first.as_bytes(), false)
        .unwrap_or_else(|stderr| panic!("proxy did not start: {stderr}"))
}

/// A distinct token of about 3000 bytes (most of a page).
fn long_token(i: usize) -> String {
    format!("sk-ant-rot{i:03}-{}", "x".repeat(2990))
}

/// Finding 4: a replaced token is unlocked when it is dropped, so a proxy whose memlock
/// budget holds two tokens keeps every new one locked through 30 rotations; and a token that
/// could not be locked is reported when it becomes current.
#[test]
#[ignore = "needs root"]
fn replaced_tokens_give_their_locked_pages_back() {
    assert!(
        running_as_root(),
        "needs root to run the proxy as uid 65534"
    );
    let page = 4096;
    let mut proxy = proxy_with_memlock(2 * page);
    for i in 1..=30 {
        proxy.write_stdin(format!("{}\n", long_token(i)).as_bytes());
        let line = format!("token updated (generation {})", i + 1);
        assert!(proxy.wait_for_stderr(&line, IO_TIMEOUT), "no rotation {i}");
    }
    let log = proxy.stderr_so_far();
    assert!(
        !log.contains("could not lock"),
        "a token could not be locked: old tokens' pages stay locked\n{log}"
    );
    let kib = locked_kib(proxy.pid());
    assert!(
        kib <= 2 * page / 1024,
        "{kib} KiB locked after 30 rotations"
    );
}

#[test]
#[ignore = "needs root"]
fn a_token_that_cannot_be_locked_is_reported_when_it_becomes_current() {
    assert!(
        running_as_root(),
        "needs root to run the proxy as uid 65534"
    );
    let mut proxy = proxy_with_memlock(0);
    assert!(proxy.wait_for_stderr("could not lock the token", IO_TIMEOUT));
    proxy.write_stdin(format!("{}\n", long_token(1)).as_bytes());
    assert!(
        proxy.wait_for_stderr("could not lock token generation 2", IO_TIMEOUT),
        "{}",
        proxy.stderr_so_far()
    );
}

/// Finding 9: under LOG_FORMAT=json every line is one JSON object, the fatal one included,
/// whatever stops the proxy before it serves.
#[test]
fn under_json_logs_the_fatal_line_is_json_too() {
    let dir = std::env::temp_dir().join(format!("alp-fatal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let no_cert = dir.join("empty.pem");
    std::fs::write(&no_cert, "not a certificate\n").unwrap();
    let no_cert = no_cert.to_str().unwrap().to_string();
    let missing = dir.join("absent").to_str().unwrap().to_string();
    let token_line = format!("{TOKEN}\n");
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [u8]);
    let cases: Vec<Case> = vec![
        (vec![], b""),
        (vec![], b"sk ant with spaces\n"),
        (vec![("TOKEN_FILE", missing.as_str())], b""),
        (
            vec![
                ("TARGET", "https://127.0.0.1:9"),
                ("TARGET_CA_FILE", no_cert.as_str()),
            ],
            token_line.as_bytes(),
        ),
        (vec![("LISTEN_PORT", "not-a-port")], b""),
    ];
    for (mut envs, stdin) in cases {
        envs.push(("LOG_FORMAT", "json"));
        let out = run(&[], &envs, Some(stdin), true, IO_TIMEOUT);
        assert_eq!(out.code(), Some(1), "{envs:?}: {}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert!(!lines.is_empty(), "{envs:?}: no line");
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|_| panic!("{envs:?}: not a JSON line: {line}"));
            assert!(v["ts"].is_string() && v["event"].is_string(), "{line}");
        }
        let last: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
        assert_eq!(last["event"], "fatal", "{envs:?}");
        assert!(
            !out.stderr.contains("sk ant"),
            "the refused token was echoed"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
