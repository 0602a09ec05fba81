//! `LISTEN_UNIX`: requests over a Unix socket are injected and relayed; the socket file is
//! created `0600` (or exactly `LISTEN_UNIX_MODE`, with its group), a stale one is replaced, a
//! live one or a file that is no socket (a symlink too: neither it nor its target is changed)
//! is refused and left as it was, and a clean shutdown removes it. `ALLOW_PEER_UIDS` closes a
//! peer of another uid before reading from it (a client run as uid 65534 shows both sides).
//! The `healthcheck` subcommand follows `LISTEN_UNIX`; systemd socket activation serves the socket
//! `systemd-socket-activate` passes, Unix or TCP; descriptors passed for another process
//! reach no token command.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::wire::contains;
use crate::support::*;

const EXIT_BOUND: Duration = Duration::from_secs(10);
const NOBODY: &str = "65534";

/// A fresh directory for one test's socket, traversable by every uid (for the uid 65534
/// client), removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("alp-unix-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("mkdir");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        Dir(p)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("proxy.sock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// One request over the socket with `Connection: close`; everything the proxy sent back.
fn exchange_over(path: &Path, target: &str) -> std::io::Result<Vec<u8>> {
    let mut c = UnixStream::connect(path)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    c.read_to_end(&mut out)?;
    Ok(out)
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[test]
fn requests_over_the_socket_are_injected_and_relayed_by_a_0600_socket() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let dir = Dir::new("relay");
    let sock = dir.sock();
    let target = up.target_url();
    let proxy = ProcessProxy::spawn(&[("TARGET", &target), ("LISTEN_UNIX", s(&sock))], TOKEN);
    assert!(proxy.wait_for_stderr("listening on unix:", EXIT_BOUND));
    let mode = fs::metadata(&sock).expect("socket").mode();
    assert_eq!(mode & 0o7777, 0o600, "mode {mode:o}");
    let answer = exchange_over(&sock, "/v1/models").expect("exchange");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with(b"/v1/models"));
    let req = up.only_request();
    let auth = format!("Bearer {TOKEN}");
    assert!(contains(&req.head.raw, auth.as_bytes()), "not injected");
    let uid = fs::metadata("/proc/self").expect("proc").uid();
    assert!(proxy.wait_for_stderr("GET /v1/models 200 ", EXIT_BOUND));
    assert!(proxy.wait_for_stderr(&format!("peer=unix uid={uid}"), EXIT_BOUND));
}

#[test]
fn a_stale_socket_is_replaced_and_a_clean_shutdown_removes_the_socket() {
    let dir = Dir::new("stale");
    let sock = dir.sock();
    // A listener that closed without removing its file: nobody answers on it.
    drop(UnixListener::bind(&sock).expect("bind"));
    let refused = UnixStream::connect(&sock).expect_err("nobody answers");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // (The new socket may reuse the old inode number: only an answer tells them apart.)
    let mut proxy = ProcessProxy::spawn(&[("LISTEN_UNIX", s(&sock))], TOKEN);
    let answer = exchange_over(&sock, "/health").expect("health");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    proxy.signal("TERM");
    let status = proxy.wait_exit(EXIT_BOUND).expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "the socket outlived the proxy");
}

#[test]
fn a_live_socket_is_refused_and_left_alone() {
    let dir = Dir::new("live");
    let sock = dir.sock();
    let live = UnixListener::bind(&sock).expect("bind");
    let ino = fs::metadata(&sock).expect("socket").ino();
    let out = run(
        &[],
        &[("LISTEN_UNIX", s(&sock))],
        Some(format!("{TOKEN}\n").as_bytes()),
        true,
        EXIT_BOUND,
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    let want = format!(
        "proxy: LISTEN_UNIX: {} is in use by a live listener",
        s(&sock)
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    assert_eq!(fs::metadata(&sock).expect("still there").ino(), ino);
    // The live listener still has its file: a client reaches it.
    assert!(UnixStream::connect(&sock).is_ok());
    drop(live);
}

#[test]
fn a_regular_file_at_the_path_is_refused_and_never_removed() {
    let dir = Dir::new("file");
    let sock = dir.sock();
    fs::write(&sock, b"precious").expect("write");
    let out = run(
        &[],
        &[("LISTEN_UNIX", s(&sock))],
        Some(format!("{TOKEN}\n").as_bytes()),
        true,
        EXIT_BOUND,
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("exists and is not a socket"),
        "{}",
        out.stderr
    );
    assert_eq!(fs::read(&sock).expect("still there"), b"precious");
}

#[test]
fn a_symlink_at_the_path_is_refused_and_neither_it_nor_its_target_is_changed() {
    let dir = Dir::new("symlink");
    let sock = dir.sock();
    // A 0600 file a chmod or chown through the path would reach, and a stale socket a
    // removal through the path would.
    let secret = dir.0.join("secret");
    fs::write(&secret, b"precious").expect("write");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    let stale = dir.0.join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    let gid = fs::metadata("/proc/self").expect("proc").gid().to_string();
    for target in [&secret, &stale] {
        let _ = fs::remove_file(&sock);
        std::os::unix::fs::symlink(target, &sock).expect("symlink");
        let before = fs::metadata(target).expect("target");
        let envs = [
            ("LISTEN_UNIX", s(&sock)),
            ("LISTEN_UNIX_MODE", "0666"),
            ("LISTEN_UNIX_GROUP", gid.as_str()),
        ];
        let token = format!("{TOKEN}\n");
        let out = run(&[], &envs, Some(token.as_bytes()), true, EXIT_BOUND);
        assert_eq!(out.code(), Some(1), "{out:?}");
        assert!(
            out.stderr.contains("exists and is not a socket"),
            "{}",
            out.stderr
        );
        assert_eq!(fs::read_link(&sock).expect("still a symlink"), *target);
        let after = fs::metadata(target).expect("target still there");
        assert_eq!(
            (after.ino(), after.mode(), after.uid(), after.gid()),
            (before.ino(), before.mode(), before.uid(), before.gid())
        );
    }
    assert_eq!(fs::read(&secret).expect("secret"), b"precious");
}

#[test]
fn the_mode_is_exactly_the_one_asked_for_and_the_group_is_given() {
    let dir = Dir::new("group");
    let sock = dir.sock();
    // As root any group may be given; otherwise one of ours.
    let gid = if running_as_root() {
        65534
    } else {
        fs::metadata("/proc/self").expect("proc").gid()
    };
    let gid_text = gid.to_string();
    let envs = [
        ("LISTEN_UNIX", s(&sock)),
        ("LISTEN_UNIX_MODE", "0660"),
        ("LISTEN_UNIX_GROUP", gid_text.as_str()),
    ];
    let mut proxy = ProcessProxy::spawn(&envs, TOKEN);
    let meta = fs::symlink_metadata(&sock).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o660, "mode {:o}", meta.mode());
    assert_eq!(meta.gid(), gid);
    assert!(exchange_over(&sock, "/health")
        .expect("health")
        .starts_with(b"HTTP/1.1 200"));
    proxy.signal("TERM");
    proxy.wait_exit(EXIT_BOUND).expect("exits");
}

#[test]
fn a_path_longer_than_sun_path_is_refused_before_stdin_is_read() {
    let long = format!("/tmp/{}", "x".repeat(120));
    let out = run(&[], &[("LISTEN_UNIX", &long)], None, false, EXIT_BOUND);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("proxy: LISTEN_UNIX: is longer than"));
}

#[test]
fn allow_peer_uids_needs_a_unix_socket() {
    let out = run(&[], &[("ALLOW_PEER_UIDS", "1000")], None, false, EXIT_BOUND);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out
        .stderr
        .contains("proxy: ALLOW_PEER_UIDS: needs LISTEN_UNIX"));
}

#[test]
fn healthcheck_follows_listen_unix() {
    let dir = Dir::new("health");
    let sock = dir.sock();
    let mut proxy = ProcessProxy::spawn(&[("LISTEN_UNIX", s(&sock))], TOKEN);
    let env = [("LISTEN_UNIX", s(&sock))];
    let out = run(&["healthcheck"], &env, None, false, EXIT_BOUND);
    assert_eq!(out.code(), Some(0), "{out:?}");
    proxy.signal("TERM");
    proxy.wait_exit(EXIT_BOUND).expect("exits");
    let out = run(&["healthcheck"], &env, None, false, EXIT_BOUND);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("(LISTEN_UNIX)"), "{}", out.stderr);
}

/// `agent-loop-proxy healthcheck` against `sock`, run as uid and gid 65534 by `setpriv`.
fn healthcheck_as_nobody(sock: &Path) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
        .arg(crate::support::process::BIN)
        .arg("healthcheck")
        .env_clear()
        .env("LISTEN_UNIX", sock)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv")
}

#[test]
#[ignore = "needs root"]
fn allow_peer_uids_refuses_our_uid_before_reading_and_admits_the_listed_one() {
    assert!(running_as_root(), "needs root to run a client as uid 65534");
    let dir = Dir::new("peers");
    let sock = dir.sock();
    let proxy = ProcessProxy::spawn(
        &[
            ("LISTEN_UNIX", s(&sock)),
            ("LISTEN_UNIX_MODE", "0666"),
            ("ALLOW_PEER_UIDS", NOBODY),
        ],
        TOKEN,
    );
    // Root is not listed: the connection is closed with nothing sent back.
    let refused = exchange_over(&sock, "/health");
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(Vec::is_empty),
        "{refused:?}"
    );
    assert!(proxy.wait_for_stderr("refused a Unix socket peer with uid 0", EXIT_BOUND));
    // A second refusal within the minute is counted, not logged again.
    let _ = exchange_over(&sock, "/health");
    let out = healthcheck_as_nobody(&sock);
    assert!(out.status.success(), "{out:?}");
    assert!(proxy.wait_for_stderr("GET /health 200", EXIT_BOUND));
    let lines = proxy.stderr_lines();
    let refusals = lines
        .iter()
        .filter(|l| l.contains("refused a Unix"))
        .count();
    assert_eq!(refusals, 1, "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("peer=unix uid=65534")));
}

/// `systemd-socket-activate -l <listen>` running the proxy with `envs`; it binds at once
/// and starts the proxy at the first connection.
fn socket_activate(listen: &str, envs: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l").arg(listen);
    for (k, v) in envs {
        cmd.arg("-E").arg(format!("{k}={v}"));
    }
    cmd.arg(crate::support::process::BIN)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run systemd-socket-activate");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{TOKEN}\n").as_bytes())
        .expect("token");
    child
}

/// Retries `f` until it succeeds (the activator binds asynchronously), bounded.
fn retry<T>(mut f: impl FnMut() -> std::io::Result<T>) -> T {
    let deadline = Instant::now() + EXIT_BOUND;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("never connected: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn assert_systemd_socket_activate() {
    let ok = Command::new("systemd-socket-activate")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "systemd-socket-activate is not installed (package systemd)"
    );
}

#[test]
#[ignore = "needs systemd-socket-activate"]
fn socket_activation_serves_a_passed_unix_socket_and_leaves_its_file() {
    assert_systemd_socket_activate();
    let up = Upstream::plain().serve(handlers::echo_target());
    let dir = Dir::new("activate");
    let sock = dir.sock();
    let target = up.target_url();
    let mut child = socket_activate(s(&sock), &[("TARGET", &target)]);
    let answer = retry(|| exchange_over(&sock, "/v1/messages"));
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let auth = format!("Bearer {TOKEN}");
    assert!(contains(&up.only_request().head.raw, auth.as_bytes()));
    crate::support::process::send_signal(child.id(), "TERM");
    let status = crate::support::process::wait_child(&mut child, EXIT_BOUND);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // The unit owns the socket file: the proxy does not remove it.
    assert!(sock.exists());
}

#[test]
#[ignore = "needs systemd-socket-activate"]
fn socket_activation_serves_a_passed_tcp_socket() {
    assert_systemd_socket_activate();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = socket_activate(&addr, &[]);
    let answer = retry(|| {
        let mut c = std::net::TcpStream::connect(&addr)?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = Vec::new();
        c.read_to_end(&mut out)?;
        Ok(out)
    });
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    crate::support::process::send_signal(child.id(), "TERM");
    let status = crate::support::process::wait_child(&mut child, EXIT_BOUND);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
#[ignore = "needs systemd-socket-activate"]
fn a_token_command_inherits_neither_the_passed_socket_nor_the_activation_variables() {
    assert_systemd_socket_activate();
    let dir = Dir::new("inherit");
    let sock = dir.sock();
    let (env_file, fds_file) = (dir.0.join("env"), dir.0.join("fds"));
    let helper = dir.0.join("helper.sh");
    fs::write(
        &helper,
        format!(
            "env > {env}\nfor f in /proc/$$/fd/*; do readlink \"$f\"; done > {fds}\n\
             echo sk-ant-cmd-tok-1\n",
            env = env_file.display(),
            fds = fds_file.display()
        ),
    )
    .expect("helper");
    let command = format!(r#"["/bin/sh", "{}"]"#, helper.display());
    let mut child = socket_activate(
        s(&sock),
        &[
            ("TOKEN_COMMAND", &command),
            // Named on purpose: they must still not reach the command.
            ("TOKEN_COMMAND_ENV", "LISTEN_FDS,LISTEN_PID,LISTEN_FDNAMES"),
        ],
    );
    let answer = retry(|| exchange_over(&sock, "/health"));
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let env = fs::read_to_string(&env_file).expect("the command ran");
    assert!(!env.contains("LISTEN_"), "{env}");
    let fds = fs::read_to_string(&fds_file).expect("the command ran");
    assert!(!fds.contains("socket:"), "{fds}");
    crate::support::process::send_signal(child.id(), "TERM");
    crate::support::process::wait_child(&mut child, EXIT_BOUND).expect("exits");
}

#[test]
fn descriptors_passed_for_another_process_reach_no_token_command() {
    let dir = Dir::new("notours");
    let marker = dir.0.join("passed-fd-marker");
    fs::write(&marker, b"").expect("marker");
    let fds_file = dir.0.join("fds");
    let helper = dir.0.join("helper.sh");
    fs::write(
        &helper,
        format!(
            "for f in /proc/$$/fd/*; do readlink \"$f\"; done > {fds}\necho sk-ant-cmd-tok-1\n",
            fds = fds_file.display()
        ),
    )
    .expect("helper");
    let command = format!(r#"["/bin/sh", "{}"]"#, helper.display());
    // LISTEN_PID names another process: the descriptor is not served, and a shell passed
    // it open without close-on-exec, as a service manager would.
    let base = ProcessProxy::command(&[
        ("TOKEN_COMMAND", &command),
        ("LISTEN_FDS", "1"),
        ("LISTEN_PID", "1"),
    ]);
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"exec 3<"$0" && exec "$1""#)
        .arg(&marker)
        .arg(crate::support::process::BIN)
        .env_clear()
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let proxy = ProcessProxy::spawn_command(cmd, b"", true)
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
    let fds = fs::read_to_string(&fds_file).expect("the command ran");
    assert!(fds.contains("helper.sh") || fds.contains("pipe:"), "{fds}");
    assert!(!fds.contains("passed-fd-marker"), "{fds}");
    // The proxy still holds the descriptor, untouched but for the flag.
    let held = fs::read_link(format!("/proc/{}/fd/3", proxy.pid())).expect("fd 3 open");
    assert_eq!(held, marker);
}
