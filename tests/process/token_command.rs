//! `TOKEN_COMMAND`: the token from a helper program's output, confined (no shell, stdin
//! /dev/null, only the variables named, stderr never echoed, a timeout that kills its process
//! group), run again before the token expires, on SIGHUP, and after a failure; exactly one
//! source of tokens.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;

const EXIT_BOUND: Duration = Duration::from_secs(15);
const LOG_BOUND: Duration = Duration::from_secs(15);

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alp-cmd-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `body` as a shell script in `dir`; returns `TOKEN_COMMAND`'s value that runs it
/// (argv, no shell of the proxy's: the script's own interpreter is the program).
fn script(dir: &Path, body: &str) -> String {
    let path = dir.join("helper.sh");
    fs::write(&path, body).unwrap();
    format!(r#"["/bin/sh", "{}"]"#, path.display())
}

/// A script that prints `tok-<n>` (n counting its runs, kept in `dir/n`), as `shape` wraps it.
fn counting(dir: &Path, shape: &str) -> String {
    let d = dir.display();
    script(
        dir,
        &format!(
            "n=$(($(cat {d}/n 2>/dev/null || echo 0) + 1)); echo $n > {d}/n\n\
             t=sk-ant-cmd-tok-$n\nprintf '%s\\n' \"{shape}\"\n"
        ),
    )
}

/// The `Authorization` values the upstream received, in order.
fn bearers(up: &Upstream) -> Vec<String> {
    up.requests()
        .iter()
        .flat_map(|r| r.head.all("authorization"))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn start(up: &Upstream, extra: &[(&str, &str)]) -> ProcessProxy {
    let target = up.target_url();
    let mut envs = vec![("TARGET", target.as_str())];
    envs.extend_from_slice(extra);
    ProcessProxy::spawn_with_stdin(&envs, b"", true)
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"))
}

#[test]
fn the_command_runs_confined_and_its_token_is_used() {
    let dir = scratch_dir("confined");
    let d = dir.display();
    let cmd = script(
        &dir,
        &format!(
            "env > {d}/env\nread line; echo \"read=$?\" > {d}/stdin\n\
             echo stderr-SECRET-sk-ant-leak >&2\necho sk-ant-cmd-confined-1\n"
        ),
    );
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = start(
        &up,
        &[
            ("TOKEN_COMMAND", &cmd),
            ("TOKEN_COMMAND_ENV", "ALP_PASSED, ALP_ABSENT"),
            ("ALP_PASSED", "yes"),
            ("ALP_HIDDEN", "no"),
        ],
    );
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    assert_eq!(bearers(&up), ["Bearer sk-ant-cmd-confined-1"]);
    let env = fs::read_to_string(dir.join("env")).unwrap();
    assert!(env.contains("ALP_PASSED=yes"), "{env}");
    for absent in ["ALP_HIDDEN", "TARGET=", "TOKEN_COMMAND", "LISTEN_PORT"] {
        assert!(!env.contains(absent), "{absent} reached the command: {env}");
    }
    let stdin = fs::read_to_string(dir.join("stdin")).unwrap();
    assert_eq!(stdin.trim(), "read=1", "stdin is /dev/null (EOF at once)");
    let log = proxy.stderr_so_far();
    assert!(
        !log.contains("stderr-SECRET") && !log.contains("sk-ant-cmd"),
        "{log}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_token_with_an_expiry_is_refreshed_before_it_ends() {
    let dir = scratch_dir("expiry");
    let cmd = counting(&dir, r#"{\"access_token\": \"$t\", \"expires_in\": 4}"#);
    let up = Upstream::plain().serve(handlers::echo_head());
    let began = Instant::now();
    let proxy = start(&up, &[("TOKEN_COMMAND", &cmd)]);
    roundtrip(proxy.addr(), get("/a"));
    assert!(proxy.wait_for_stderr("proxy: token updated (generation 2)", LOG_BOUND));
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "refreshed at half: {took:?}"
    );
    roundtrip(proxy.addr(), get("/b"));
    assert_eq!(
        bearers(&up)[..2],
        ["Bearer sk-ant-cmd-tok-1", "Bearer sk-ant-cmd-tok-2"]
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn an_rfc3339_expiry_is_understood_and_sighup_runs_the_command_again() {
    let dir = scratch_dir("sighup");
    // An hour from now: no refresh comes on its own during the test.
    let cmd = counting(
        &dir,
        r#"{\"token\": \"$t\", \"expires_at\": \"$(date -u -d @$(($(date +%s) + 3600)) +%Y-%m-%dT%H:%M:%SZ)\"}"#,
    );
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = start(&up, &[("TOKEN_COMMAND", &cmd)]);
    proxy.signal("HUP");
    assert!(proxy.wait_for_stderr("token reload: reading TOKEN_COMMAND", LOG_BOUND));
    assert!(proxy.wait_for_stderr("proxy: token updated (generation 2)", LOG_BOUND));
    roundtrip(proxy.addr(), get("/a"));
    assert_eq!(bearers(&up), ["Bearer sk-ant-cmd-tok-2"]);
    assert!(!proxy.stderr_so_far().contains("refresh failed"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_same_answer_again_is_no_rotation() {
    let dir = scratch_dir("same");
    let cmd = script(&dir, "echo sk-ant-cmd-always-the-same\n");
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = start(&up, &[("TOKEN_COMMAND", &cmd)]);
    proxy.signal("HUP");
    assert!(proxy.wait_for_stderr("proxy: token unchanged (generation 1)", LOG_BOUND));
    assert!(!proxy.stderr_so_far().contains("token updated"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_refresh_keeps_the_last_token_and_is_retried() {
    let dir = scratch_dir("failing");
    let d = dir.display();
    // The first run answers; the next ones fail (after saying the secret on stderr).
    let cmd = script(
        &dir,
        &format!(
            "if [ -e {d}/ran ]; then echo sk-ant-cmd-on-stderr >&2; exit 3; fi\n\
             touch {d}/ran\necho sk-ant-cmd-first\n"
        ),
    );
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = start(
        &up,
        &[("TOKEN_COMMAND", &cmd), ("TOKEN_REFRESH_INTERVAL", "1s")],
    );
    let failed =
        "proxy: token refresh failed: TOKEN_COMMAND exited with status 3; keeping generation 1";
    assert!(proxy.wait_for_stderr_count(failed, 2, LOG_BOUND), "retried");
    roundtrip(proxy.addr(), get("/a"));
    assert_eq!(bearers(&up), ["Bearer sk-ant-cmd-first"]);
    assert!(!proxy.stderr_so_far().contains("on-stderr"));
    let _ = fs::remove_dir_all(&dir);
}

/// Whether process `pid` is gone (or a zombie nobody reaped).
fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_command_past_its_timeout_is_killed_with_its_children() {
    let dir = scratch_dir("timeout");
    let d = dir.display();
    let cmd = script(
        &dir,
        &format!("sleep 300 &\necho $! > {d}/child\nsleep 300\necho sk-ant-never\n"),
    );
    let began = Instant::now();
    let out = run(
        &[],
        &[("TOKEN_COMMAND", &cmd), ("TOKEN_COMMAND_TIMEOUT", "1s")],
        None,
        true,
        EXIT_BOUND,
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(
            "proxy: TOKEN_COMMAND: did not finish within 1s; its process group was killed"
        ),
        "{out:?}"
    );
    assert!(began.elapsed() < Duration::from_secs(10));
    let child: u32 = fs::read_to_string(dir.join("child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone(child), "the helper's child {child} outlived it");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unusable_commands_and_answers_stop_the_start_without_echo() {
    let dir = scratch_dir("unusable");
    let big = dir.join("big");
    fs::write(&big, vec![b'a'; 70 * 1024]).unwrap();
    let cases = [
        (
            r#"["/nonexistent/helper"]"#.to_string(),
            "proxy: TOKEN_COMMAND: cannot be started (not found)",
        ),
        (
            script(&dir, "echo sk-ant-cmd-secret-out; exit 2\n"),
            "proxy: TOKEN_COMMAND: exited with status 2",
        ),
        (
            format!(r#"["/bin/cat", "{}"]"#, big.display()),
            "proxy: TOKEN_COMMAND: printed more than 64 KiB",
        ),
        (
            r#"["/bin/echo", "{\"token\": \"sk-ant-cmd-secret-out\", \"expires_in\": 1.5}"]"#
                .to_string(),
            "proxy: TOKEN_COMMAND: printed no usable answer: a number that is not an integer",
        ),
        (
            r#"["/bin/echo", "sk-ant-cmd secret out"]"#.to_string(),
            "proxy: TOKEN_COMMAND: printed no usable token",
        ),
        (
            "echo token".to_string(),
            "proxy: TOKEN_COMMAND: must be a JSON array of strings",
        ),
    ];
    for (cmd, expected) in cases {
        let out = run(&[], &[("TOKEN_COMMAND", &cmd)], None, true, EXIT_BOUND);
        assert_eq!(out.code(), Some(1), "{cmd}: {out:?}");
        assert!(out.stderr.contains(expected), "{cmd}: {out:?}");
        assert!(!out.stderr.contains("secret"), "{cmd}: {out:?}");
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn two_sources_of_tokens_are_a_configuration_error_naming_both() {
    let envs = [
        ("TOKEN_FILE", "/run/secrets/t"),
        ("TOKEN_COMMAND", r#"["gh"]"#),
    ];
    let out = run(&[], &envs, None, false, EXIT_BOUND);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        "proxy: TOKEN_COMMAND: cannot be combined with TOKEN_FILE (one source of tokens)"
    );
}

/// A fake upstream that knows one token: 200 for it, an Anthropic-shaped 401 for any other.
fn knows_only(token: &'static str) -> impl Fn(&mut UpConn) + Send + Sync + 'static {
    move |c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            let known = req.head.all("authorization") == [format!("Bearer {token}").as_bytes()];
            let reply: &[u8] = if known {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            } else {
                b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 76\r\n\r\n{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\",\"message\":\"invalid\"}}"
            };
            if c.send(reply).is_err() {
                return;
            }
        }
    }
}

fn should_retry(r: &Response) -> Vec<String> {
    r.head
        .all("x-should-retry")
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn a_401_refetches_the_token_and_tells_the_client_to_retry() {
    let dir = scratch_dir("rejected");
    // Run 1 prints a token the upstream does not know; run 2 the one it does.
    let cmd = counting(&dir, "$t");
    let up = Upstream::plain().serve(knows_only("sk-ant-cmd-tok-2"));
    let proxy = start(&up, &[("TOKEN_COMMAND", &cmd)]);
    let first = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(first.status(), 401);
    assert_eq!(should_retry(&first), ["true"], "{}", first.head.raw_str());
    assert!(proxy.wait_for_stderr("token updated (generation 2)", LOG_BOUND));
    let retry = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(retry.status(), 200);
    assert_eq!(
        bearers(&up),
        ["Bearer sk-ant-cmd-tok-1", "Bearer sk-ant-cmd-tok-2"]
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_401_the_refetch_cannot_cure_is_relayed_unchanged_and_not_refetched_at_once() {
    let dir = scratch_dir("revoked");
    let d = dir.display();
    // The same revoked token every time; count the runs.
    let cmd = script(
        &dir,
        &format!("echo x >> {d}/runs\necho sk-ant-cmd-revoked\n"),
    );
    let up = Upstream::plain().serve(knows_only("sk-ant-cmd-other"));
    let proxy = start(&up, &[("TOKEN_COMMAND", &cmd)]);
    for _ in 0..10 {
        let r = roundtrip(proxy.addr(), get("/v1/models"));
        assert_eq!(r.status(), 401);
        assert!(should_retry(&r).is_empty(), "{}", r.head.raw_str());
    }
    assert!(proxy.wait_for_stderr("proxy: token unchanged (generation 1)", LOG_BOUND));
    let runs = fs::read_to_string(dir.join("runs"))
        .unwrap()
        .lines()
        .count();
    // The start, then one re-fetch, and another only once the backoff (1 s, then 2 s) passed:
    // ten quick 401s do not run it ten times.
    assert!((2..=3).contains(&runs), "{runs} runs");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_401_with_a_token_from_stdin_is_relayed_unchanged() {
    let up = Upstream::plain().serve(knows_only("sk-ant-cmd-other"));
    let target = up.target_url();
    let proxy = ProcessProxy::spawn(&[("TARGET", &target)], "sk-ant-cmd-stdin");
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(r.status(), 401);
    assert!(should_retry(&r).is_empty(), "{}", r.head.raw_str());
}

#[test]
fn a_source_failing_past_the_stale_grace_gets_503_until_it_answers_again() {
    let dir = scratch_dir("stale");
    let d = dir.display();
    // Answers at the start; then fails while `dir/fail` exists.
    let cmd = script(
        &dir,
        &format!("if [ -e {d}/fail ]; then exit 4; fi\ntouch {d}/fail\necho sk-ant-cmd-stale\n"),
    );
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = start(
        &up,
        &[
            ("TOKEN_COMMAND", &cmd),
            ("TOKEN_REFRESH_INTERVAL", "1s"),
            ("TOKEN_STALE_GRACE", "2s"),
        ],
    );
    let failed = "token refresh failed: TOKEN_COMMAND exited with status 4";
    assert!(proxy.wait_for_stderr(failed, LOG_BOUND));
    assert_eq!(roundtrip(proxy.addr(), get("/within-grace")).status(), 200);
    let deadline = Instant::now() + LOG_BOUND;
    let refused = loop {
        let r = roundtrip(proxy.addr(), get("/past-grace"));
        if r.status() != 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(refused.status(), 503, "{}", refused.head.raw_str());
    assert_eq!(
        refused.head.header_str("retry-after").as_deref(),
        Some("10")
    );
    assert!(refused.body_str().contains("proxy: credential unavailable"));
    let forwarded = up.requests().len();
    assert_eq!(roundtrip(proxy.addr(), get("/refused")).status(), 503);
    assert_eq!(up.requests().len(), forwarded, "nothing forwarded");
    // The source answers again: the token serves again.
    fs::remove_file(dir.join("fail")).unwrap();
    assert!(proxy.wait_for_stderr("token unchanged (generation 1)", LOG_BOUND));
    assert_eq!(roundtrip(proxy.addr(), get("/again")).status(), 200);
    let _ = fs::remove_dir_all(&dir);
}

/// One raw request to the metrics listener (it closes after answering): (status line, body).
fn metrics_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LOG_BOUND)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn metrics_addr_of(proxy: &ProcessProxy) -> String {
    assert!(proxy.wait_for_stderr("metrics on ", LOG_BOUND));
    let text = proxy.stderr_so_far();
    let line = text.lines().find(|l| l.contains("metrics on ")).unwrap();
    let at = line.split("metrics on ").nth(1).unwrap();
    at.split('"').next().unwrap().trim().to_string()
}

#[test]
fn ready_turns_503_after_a_rejection_and_200_after_a_new_token_and_the_metrics_say_why() {
    let dir = scratch_dir("ready");
    let d = dir.display();
    // The token is whatever `dir/token` holds; the upstream knows only the good one.
    fs::write(dir.join("token"), "sk-ant-cmd-revoked\n").unwrap();
    let cmd = script(
        &dir,
        &format!(r#"printf '{{"token": "%s", "expires_in": 3600}}\n' "$(cat {d}/token)""#),
    );
    let up = Upstream::plain().serve(knows_only("sk-ant-cmd-good"));
    let proxy = start(
        &up,
        &[("TOKEN_COMMAND", &cmd), ("METRICS_ADDR", "127.0.0.1:0")],
    );
    let m = metrics_addr_of(&proxy);
    assert_eq!(
        metrics_get(&m, "/ready"),
        ("HTTP/1.1 200 OK".into(), "ready\n".into())
    );
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 401);
    let (status, why) = metrics_get(&m, "/ready");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(why, "the upstream rejected the current token (401)\n");
    fs::write(dir.join("token"), "sk-ant-cmd-good\n").unwrap();
    proxy.signal("HUP");
    assert!(proxy.wait_for_stderr("token updated (generation 2)", LOG_BOUND));
    assert_eq!(metrics_get(&m, "/ready").0, "HTTP/1.1 200 OK");
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    let (_, exposition) = metrics_get(&m, "/metrics");
    let p = "agent_loop_proxy";
    for line in [
        format!("{p}_token_refresh_total{{source=\"command\",result=\"unchanged\"}} 1"),
        format!("{p}_token_refresh_total{{source=\"command\",result=\"changed\"}} 1"),
        format!("{p}_token_refresh_total{{source=\"command\",result=\"failed\"}} 0"),
        format!("{p}_token_updates_refused_total 0"),
    ] {
        assert!(
            exposition.lines().any(|l| l == line),
            "{line}\n{exposition}"
        );
    }
    let value = |name: &str| -> f64 {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{p}_{name} "))?.parse().ok())
            .unwrap_or_else(|| panic!("{name}\n{exposition}"))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = value("token_expiry_timestamp_seconds");
    assert!((expiry - (now + 3600.0)).abs() < 30.0, "{expiry} vs {now}");
    assert!((value("token_last_change_timestamp_seconds") - now).abs() < 30.0);
    let log = proxy.stderr_so_far();
    assert!(!log.contains("sk-ant-cmd"), "{log}");
    let _ = fs::remove_dir_all(&dir);
}

/// Every line is one JSON object when asked, and none carries the command's token, its
/// stderr, or a refreshed token: through a start, a refresh with an expiry, and SIGHUP.
#[test]
fn under_json_logs_nothing_of_the_command_or_its_tokens_appears() {
    let dir = scratch_dir("json");
    let cmd = counting(&dir, r#"{\"access_token\": \"$t\", \"expires_in\": 4}"#);
    let script_path = dir.join("helper.sh");
    let body = fs::read_to_string(&script_path).unwrap();
    fs::write(
        &script_path,
        format!("echo stderr-SECRET-sk-ant-leak >&2\n{body}"),
    )
    .unwrap();
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = start(&up, &[("TOKEN_COMMAND", &cmd), ("LOG_FORMAT", "json")]);
    roundtrip(proxy.addr(), get("/a"));
    assert!(proxy.wait_for_stderr("\"token_generation\":2", LOG_BOUND));
    proxy.signal("HUP");
    assert!(proxy.wait_for_stderr("\"token_generation\":3", LOG_BOUND));
    roundtrip(proxy.addr(), get("/b"));
    let log = proxy.stderr_so_far();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    for secret in ["sk-ant-cmd", "stderr-SECRET", "access_token"] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// An open WebSocket tunnel stops when the credential stops being usable (here: the source
/// fails past its stale grace), as an HTTP request would get 503: 1011 to the client, 1001
/// to the upstream.
#[test]
fn a_tunnel_is_closed_when_the_credential_stops_being_usable() {
    use crate::support::websocket::*;
    let dir = scratch_dir("ws-stale");
    let d = dir.display();
    let cmd = script(
        &dir,
        &format!("if [ -e {d}/fail ]; then exit 4; fi\ntouch {d}/fail\necho sk-ant-cmd-ws\n"),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if answer_handshake(c, &switching()).is_some() {
            let _ = tx.send(read_until_close(&mut c.wire).1);
        }
    });
    let proxy = start(
        &up,
        &[
            ("TOKEN_COMMAND", &cmd),
            ("TOKEN_REFRESH_INTERVAL", "1s"),
            ("TOKEN_STALE_GRACE", "2s"),
            ("WEBSOCKET_PATHS", "/ws"),
        ],
    );
    let mut c = WsClient::open(proxy.addr(), handshake("/ws", "").as_bytes());
    assert_eq!(c.head().status, 101);
    let t = Instant::now();
    let (_, close) = read_until_close(&mut c.wire);
    assert_eq!(close, Some(1011), "{}", proxy.stderr_so_far());
    assert!(t.elapsed() < LOG_BOUND, "{:?}", t.elapsed());
    let up_close = rx.recv_timeout(LOG_BOUND).expect("the upstream's report");
    assert_eq!(up_close, Some(1001));
    assert_eq!(roundtrip(proxy.addr(), get("/after")).status(), 503);
}
