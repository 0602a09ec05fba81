//! The real token stays inside the proxy process: not in its environment or argv, not in a core
//! file, not readable by another process of the same uid, not in stderr or stdout whatever
//! the process went through (the in-process half of this property: `tests/it`).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::wire::contains;
use crate::support::*;

const PHANTOM: &str = "sk-ant-phantom-CONFINED-42";
const LOG_BOUND: Duration = Duration::from_secs(5);
const EXIT_BOUND: Duration = Duration::from_secs(10);

/// The uid/gid the unprivileged runs use (`nobody`).
const NOBODY: u32 = 65534;

fn proc_file(pid: u32, name: &str) -> Vec<u8> {
    fs::read(format!("/proc/{pid}/{name}"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/{name}: {e}"))
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The `Uid:` line of /proc/<pid>/status: real, effective, saved, filesystem.
fn status_uids(pid: u32) -> Vec<u32> {
    let status = String::from_utf8(proc_file(pid, "status")).expect("status is text");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line in status");
    line.split_whitespace()
        .map(|n| n.parse().expect("uid"))
        .collect()
}

/// Soft and hard "Max core file size" of a process, as /proc/<pid>/limits prints them.
fn core_limits(pid: &str) -> (String, String) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max core file size"))
        .expect("core line in limits");
    let mut parts = line.split_whitespace();
    (
        parts.next().expect("soft").to_string(),
        parts.next().expect("hard").to_string(),
    )
}

#[test]
fn the_token_is_not_in_the_proxys_environment_or_command_line() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let target = up.target_url();
    // An unrelated variable proves /proc/<pid>/environ is readable at all.
    let proxy = ProcessProxy::spawn(
        &[
            ("TARGET", &target),
            ("UNRELATED_CANARY", "environ-is-readable-7731"),
        ],
        TOKEN,
    );
    // Let the token be used once, so nothing about it is still pending.
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    let environ = proc_file(proxy.pid(), "environ");
    assert!(
        contains(&environ, b"UNRELATED_CANARY=environ-is-readable-7731"),
        "environ was not read: {:?}",
        String::from_utf8_lossy(&environ)
    );
    assert!(!contains(&environ, TOKEN.as_bytes()), "token in environ");
    assert!(
        !contains(&environ, b"REALTOKEN"),
        "part of the token in environ"
    );
    let cmdline = proc_file(proxy.pid(), "cmdline");
    assert!(
        contains(&cmdline, b"agent-loop-proxy"),
        "cmdline was not read: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    assert!(!contains(&cmdline, TOKEN.as_bytes()), "token in cmdline");
    assert!(
        !contains(&cmdline, b"REALTOKEN"),
        "part of the token in cmdline"
    );
}

#[test]
#[ignore = "needs root"]
fn the_proxy_is_non_dumpable_so_its_proc_files_belong_to_root_and_its_own_uid_cannot_read_them() {
    assert!(
        running_as_root(),
        "needs root to start the proxy under another uid (.ci/run runs as root)"
    );
    let mut cmd = ProcessProxy::command(&[("UNRELATED_CANARY", "nobody-run")]);
    cmd.uid(NOBODY).gid(NOBODY);
    let proxy = ProcessProxy::spawn_command(cmd, format!("{TOKEN}\n").as_bytes(), true)
        .unwrap_or_else(|stderr| panic!("proxy did not start as uid {NOBODY}: {stderr}"));
    let pid = proxy.pid();

    // Control: an ordinary process of the same uid owns its /proc files, and that uid can read
    // its environ. Without this the ownership check below could pass for another reason.
    let mut control = Command::new("sleep")
        .arg("30")
        .env_clear()
        .env("UNRELATED_CANARY", "control")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn control process");
    let control_pid = control.id();
    let control_owner = fs::metadata(format!("/proc/{control_pid}/environ"))
        .expect("control environ")
        .uid();
    let control_readable = Command::new("cat")
        .arg(format!("/proc/{control_pid}/environ"))
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run cat as nobody");
    let _ = control.kill();
    let _ = control.wait();
    assert_eq!(control_owner, NOBODY, "control: /proc/<pid>/environ owner");
    assert!(
        control_readable.success(),
        "control: nobody cannot read its own environ"
    );

    // The proxy really runs as nobody...
    assert_eq!(status_uids(pid), vec![NOBODY; 4], "proxy uids");
    // ...yet its /proc files belong to root (PR_SET_DUMPABLE 0)...
    for name in ["environ", "status", "mem", "maps"] {
        let owner = fs::metadata(format!("/proc/{pid}/{name}"))
            .unwrap_or_else(|e| panic!("stat /proc/{pid}/{name}: {e}"))
            .uid();
        assert_eq!(
            owner, 0,
            "/proc/{pid}/{name} is owned by uid {owner}, not root"
        );
    }
    // ...so another process of its own uid cannot read its environment (the control above
    // could read its own). (/proc/<pid>/mem is not tried: reading it from offset 0 fails even
    // when access is allowed, so it would prove nothing.)
    let read = Command::new("cat")
        .arg(format!("/proc/{pid}/environ"))
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run cat as nobody");
    assert!(
        !read.success(),
        "uid {NOBODY} could read the proxy's /proc/{pid}/environ"
    );
    // And it still works.
    assert_eq!(roundtrip(proxy.addr(), get("/health")).status(), 200);
}

#[test]
fn core_dumps_are_disabled_even_when_the_launcher_allows_them() {
    // Start the proxy with the soft core limit raised to the hard one (no privilege needed),
    // so a zero afterwards is the proxy's doing, not an inherited default.
    let mut cmd = ProcessProxy::command(&[]);
    // SAFETY: getrlimit/setrlimit are async-signal-safe and only touch a struct on the stack.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_CORE, &mut lim) == 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_CORE, &lim);
            }
            Ok(())
        });
    }
    let proxy = ProcessProxy::spawn_command(cmd, format!("{TOKEN}\n").as_bytes(), true)
        .unwrap_or_else(|stderr| panic!("proxy did not start: {stderr}"));
    let (soft, hard) = core_limits(&proxy.pid().to_string());
    assert_eq!(soft, "0", "soft core limit");
    assert_eq!(hard, "0", "hard core limit");
    let (_, own_hard) = core_limits("self");
    if own_hard == "0" {
        eprintln!("note: this environment's hard core limit is already 0");
    }
}

#[test]
fn the_token_never_appears_in_stderr_or_stdout_whatever_the_proxy_went_through() {
    let mut outputs: Vec<(String, String)> = Vec::new();
    let stdin = format!("{TOKEN}\n");

    // One proxy with a phantom, an upstream reflecting the token, and refused requests.
    let echo = Upstream::plain().serve(handlers::echo_head());
    let mut p1 = process_proxy_for(&echo, &[("PHANTOM_TOKEN", PHANTOM)]);
    for req in [
        // Phantom refusals, one of them presenting the real token as the phantom.
        "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
        format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: {TOKEN}\r\n\r\n"),
    ] {
        roundtrip(p1.addr(), req).assert_proxy_error(401, "authentication_error");
    }
    // A reflected token (the echo holds our Authorization line), with the token in the query.
    let r = roundtrip(
        p1.addr(),
        format!("GET /v1/models?k={TOKEN} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PHANTOM}\r\n\r\n"),
    );
    assert_eq!(r.status(), 200);
    assert!(
        !r.body_str().contains(TOKEN),
        "reflected token reached the client"
    );
    // 400s and a 431 whose bytes carry the token.
    for req in [
        format!("GET /x HTTP/1.1\r\nHost: x\r\nBad {TOKEN}: v\r\n\r\n"),
        format!("GET /x HTTP/1.1\r\nHost: {TOKEN}/\r\n\r\n"),
        format!("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\nX-T: {TOKEN}\r\n\r\n"),
        format!("GET /x#{TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!("GET /x HTTP/1.1\r\nHost: x\r\nX-Big: {TOKEN}{}\r\n\r\n", "b".repeat(9000)),
    ] {
        let mut c = Client::connect(p1.addr());
        let _ = c.try_send(&req);
        let r = c.read_response_to("GET").expect("an error answer");
        assert!([400, 431].contains(&r.status()), "status {}", r.status());
    }

    // A 502: nothing listens.
    let dead = dead_target();
    let mut p2 = ProcessProxy::spawn(&[("TARGET", &dead)], TOKEN);
    roundtrip(p2.addr(), get("/v1/models")).assert_proxy_error(502, "api_error");

    // A 504: the upstream never answers.
    let gate = Gate::new();
    let g = gate.clone();
    let slow = Upstream::plain().serve(move |c: &mut UpConn| {
        let _ = c.read_request();
        g.wait(IO_TIMEOUT);
    });
    let mut p3 = process_proxy_for(&slow, &[("RESPONSE_TIMEOUT", "300ms")]);
    roundtrip(p3.addr(), post("/v1/messages", "{}")).assert_proxy_error(504, "timeout_error");
    gate.open();

    // A TLS failure: the upstream's CA is not trusted.
    let tls = Upstream::tls().serve(handlers::echo_head());
    let mut p4 = ProcessProxy::spawn(&[("TARGET", &tls.target_url())], TOKEN);
    roundtrip(p4.addr(), get("/v1/models")).assert_proxy_error(502, "api_error");
    assert!(p4.wait_for_stderr("upstream TLS failure", LOG_BOUND));

    for p in [&mut p1, &mut p2, &mut p3, &mut p4] {
        p.signal("TERM");
        assert!(p.wait_exit(EXIT_BOUND).is_some(), "proxy did not exit");
        outputs.push(("running proxy".into(), p.stderr_so_far()));
    }

    // Runs that end before serving, each with the token waiting on stdin; bad values are the
    // token itself, as if pasted into the wrong place.
    let userinfo = format!("https://u:{TOKEN}@example.com");
    let phantom_with_space = format!("{TOKEN} x");
    type Run<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let runs: Vec<Run> = vec![
        (vec!["--help"], vec![]),
        (vec!["--version"], vec![]),
        (vec![TOKEN], vec![]),
        (vec!["healthcheck", TOKEN], vec![]),
        (vec![], vec![("LISTEN_PORT", TOKEN)]),
        (vec![], vec![("LISTEN_ADDR", TOKEN)]),
        (vec![], vec![("TARGET", TOKEN)]),
        (vec![], vec![("TARGET", &userinfo)]),
        (
            vec![],
            vec![("TARGET_CA_FILE", TOKEN), ("TARGET", "https://a.test")],
        ),
        (vec![], vec![("PHANTOM_TOKEN", &phantom_with_space)]),
        // Any field name is a valid TOKEN_HEADER now; one with a space is not.
        (vec![], vec![("TOKEN_HEADER", &phantom_with_space)]),
        (vec![], vec![("ALLOW_REQUESTS", TOKEN)]),
        (vec![], vec![("TOKEN_UPDATES", TOKEN)]),
        (vec![], vec![("OAUTH_BETA", TOKEN)]),
        (vec![], vec![("MAX_HEADERS", TOKEN)]),
        (vec![], vec![("SHUTDOWN_GRACE", TOKEN)]),
        (vec![], vec![("RESPONSE_TIMEOUT", TOKEN)]),
    ];
    for (args, envs) in &runs {
        let o = run(args, envs, Some(stdin.as_bytes()), true, EXIT_BOUND);
        assert!(o.status.is_some(), "{args:?} {envs:?} did not exit");
        let expected = if args.first().is_some_and(|a| a.starts_with("--")) {
            0
        } else {
            1
        };
        assert_eq!(o.code(), Some(expected), "{args:?} {envs:?}: {}", o.stderr);
        outputs.push((format!("{args:?} {envs:?} stderr"), o.stderr.clone()));
        outputs.push((format!("{args:?} {envs:?} stdout"), o.stdout.clone()));
    }

    for (what, text) in &outputs {
        assert!(!text.contains(TOKEN), "token in {what}: {text}");
        assert!(
            !text.contains("REALTOKEN"),
            "part of the token in {what}: {text}"
        );
    }
}
