//! Regression tests for the third attack review's findings, each named after what it proves.

mod support;

use std::os::unix::process::CommandExt;

use support::*;

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
fn proxy_with_memlock(limit: u64) -> Proxy {
    let mut cmd = Proxy::command(&[("TOKEN_UPDATES", "stdin")]);
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
    Proxy::spawn_command(cmd, first.as_bytes(), false)
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
