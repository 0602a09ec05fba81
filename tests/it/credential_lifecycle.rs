//! The credential's life and reach: rotation on stdin and through a watched file, a stream in
//! flight keeping the token it started with, every token in use masked, any agent's header,
//! and an allow-list that forwards nothing it does not allow.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::wire::Framing;
use crate::support::*;

/// How long a token file change may take to be picked up (it is checked every second).
const FILE_BOUND: Duration = Duration::from_secs(8);
/// How long a log line may take.
const LOG_BOUND: Duration = Duration::from_secs(10);
const OLD: &str = "sk-ant-test-OLD-0123456789abcdef";
const NEW: &str = "sk-ant-test-NEW-fedcba9876543210";

/// The `Authorization` values the upstream received, in order.
fn bearers(up: &Upstream) -> Vec<String> {
    up.requests()
        .iter()
        .flat_map(|r| r.head.all("authorization"))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn stdin_proxy(up: &Upstream, first: &str) -> Proxy {
    let envs = [
        ("TARGET", up.target_url()),
        ("TOKEN_UPDATES", "stdin".into()),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Proxy::spawn_with_stdin(&envs, format!("{first}\n").as_bytes(), false)
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"))
}

#[test]
fn a_stream_in_flight_keeps_its_token_while_the_next_request_gets_the_new_one_and_both_are_masked()
{
    // /stream: head and a first event, then the rest once the gate opens. /echo: a body with
    // every credential the upstream has seen so far, as a careless debug endpoint would.
    let gate = Gate::new();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (g, s) = (gate.clone(), seen.clone());
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            let auth = req.head.header_str("authorization").unwrap_or_default();
            s.lock().unwrap().push(auth);
            if req.head.target == "/stream" {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
                let _ = c.send(format!("{head}6\r\nfirst\n\r\n").as_bytes());
                if g.wait(IO_TIMEOUT) {
                    let _ = c.send(b"5\r\nlast\n\r\n0\r\n\r\n");
                }
            } else {
                let body = s.lock().unwrap().join(" | ");
                let _ = c.send(&handlers::ok_text(&req, body.as_bytes()));
            }
        }
    });
    let mut proxy = stdin_proxy(&up, OLD);
    let mut stream = Client::connect(proxy.addr());
    stream.send(get("/stream"));
    let head = stream.read_head().expect("stream head");
    assert_eq!(head.status, 200);
    let (mut acc, mut st) = (Vec::new(), Default::default());
    assert!(stream
        .read_body_until(Framing::Chunked, &mut acc, b"first\n", &mut st)
        .unwrap());

    proxy.write_stdin(format!("{NEW}\n").as_bytes());
    assert!(proxy.wait_for_stderr("proxy: token updated (generation 2)", LOG_BOUND));
    let echo = roundtrip(proxy.addr(), get("/echo"));
    assert_eq!(echo.status(), 200);
    let body = echo.body_str();
    assert!(
        !body.contains(OLD) && !body.contains(NEW),
        "a token in clear: {body}"
    );
    let stars = |t: &str| "*".repeat(t.len());
    assert_eq!(
        body,
        format!("Bearer {} | Bearer {}", stars(OLD), stars(NEW))
    );

    gate.open();
    assert!(stream
        .read_body_until(Framing::Chunked, &mut acc, b"last\n", &mut st)
        .unwrap());
    assert_eq!(acc, b"first\nlast\n", "the stream finished whole");
    assert_eq!(
        bearers(&up),
        [format!("Bearer {OLD}"), format!("Bearer {NEW}")],
        "the stream went up with the old token, the next request with the new one"
    );
}

#[test]
fn a_bad_update_line_is_refused_without_echo_and_the_current_token_stays() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let mut proxy = stdin_proxy(&up, OLD);
    for bad in ["sk-ant bad with spaces", "", "0123abcd", "sk-\u{e9}t\u{e9}"] {
        proxy.write_stdin(format!("{bad}\n").as_bytes());
    }
    assert!(proxy.wait_for_stderr_count("proxy: token update refused: ", 4, LOG_BOUND));
    roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(bearers(&up), [format!("Bearer {OLD}")]);
    let stderr = proxy.stderr_so_far();
    for leak in ["bad with", "0123abcd", "sk-\u{e9}"] {
        assert!(!stderr.contains(leak), "{leak} echoed: {stderr}");
    }
    assert!(!stderr.contains("token updated"), "{stderr}");
}

#[test]
fn eof_on_stdin_keeps_serving_with_the_last_token() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let mut proxy = stdin_proxy(&up, OLD);
    proxy.write_stdin(format!("{NEW}\n").as_bytes());
    assert!(proxy.wait_for_stderr("proxy: token updated (generation 2)", LOG_BOUND));
    proxy.close_stdin();
    assert!(proxy.wait_for_stderr("stdin closed; keeping generation 2", LOG_BOUND));
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    assert_eq!(bearers(&up), [format!("Bearer {NEW}")]);
}

/// A fresh directory for one test's token files.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alp-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn file_proxy(up: &Upstream, path: &Path) -> Proxy {
    let path = path.to_str().unwrap();
    let target = up.target_url();
    let envs = [("TARGET", target.as_str()), ("TOKEN_FILE", path)];
    Proxy::spawn_with_stdin(&envs, b"", true).unwrap_or_else(|e| panic!("not started: {e}"))
}

#[test]
fn a_token_file_rewritten_in_place_is_picked_up() {
    let dir = scratch_dir("inplace");
    let path = dir.join("token");
    fs::write(&path, format!("{OLD}\n")).unwrap();
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = file_proxy(&up, &path);
    roundtrip(proxy.addr(), get("/a"));
    fs::write(&path, format!("{NEW}\n")).unwrap();
    assert!(proxy.wait_for_stderr("proxy: token updated (generation 2)", FILE_BOUND));
    roundtrip(proxy.addr(), get("/b"));
    assert_eq!(
        bearers(&up),
        [format!("Bearer {OLD}"), format!("Bearer {NEW}")]
    );
    // A write that leaves no valid token is refused; the current one stays.
    fs::write(&path, "\n").unwrap();
    assert!(proxy.wait_for_stderr(
        "token update refused: TOKEN_FILE holds no token",
        FILE_BOUND
    ));
    roundtrip(proxy.addr(), get("/c"));
    assert_eq!(bearers(&up)[2], format!("Bearer {NEW}"));
    let _ = fs::remove_dir_all(&dir);
}

/// The same token again, on stdin or rewritten into the file, is no rotation: no new
/// generation, and the log says so.
#[test]
fn the_same_token_again_makes_no_generation() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let mut proxy = stdin_proxy(&up, OLD);
    proxy.write_stdin(format!("{OLD}\n").as_bytes());
    assert!(proxy.wait_for_stderr("proxy: token unchanged (generation 1)", LOG_BOUND));
    proxy.write_stdin(format!("{NEW}\n").as_bytes());
    assert!(proxy.wait_for_stderr("proxy: token updated (generation 2)", LOG_BOUND));

    let dir = scratch_dir("unchanged");
    let path = dir.join("token");
    fs::write(&path, format!("{OLD}\n")).unwrap();
    let proxy = file_proxy(&up, &path);
    // A new version of the file (another inode) with the same content.
    fs::write(dir.join("next"), format!("{OLD}\n")).unwrap();
    fs::rename(dir.join("next"), &path).unwrap();
    assert!(proxy.wait_for_stderr("proxy: token unchanged (generation 1)", FILE_BOUND));
    assert!(!proxy.stderr_so_far().contains("token updated"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_token_file_behind_a_swapped_symlink_is_picked_up_as_kubernetes_updates_secrets() {
    // Kubernetes: token -> ..data/token, ..data -> ..2026_v1; an update writes ..2026_v2 and
    // renames a new ..data symlink over the old one.
    let dir = scratch_dir("symlink");
    let version = |n: u32, token: &str| {
        let v = dir.join(format!("..2026_v{n}"));
        fs::create_dir(&v).unwrap();
        fs::write(v.join("token"), format!("{token}\n")).unwrap();
        std::os::unix::fs::symlink(format!("..2026_v{n}"), dir.join("..data_tmp")).unwrap();
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    };
    version(1, OLD);
    std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = file_proxy(&up, &dir.join("token"));
    roundtrip(proxy.addr(), get("/a"));
    version(2, NEW);
    assert!(proxy.wait_for_stderr("proxy: token updated (generation 2)", FILE_BOUND));
    roundtrip(proxy.addr(), get("/b"));
    assert_eq!(
        bearers(&up),
        [format!("Bearer {OLD}"), format!("Bearer {NEW}")]
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_custom_token_header_carries_the_raw_token_and_the_sandbox_cannot_set_it() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let envs = [
        ("TARGET", up.target_url()),
        ("TOKEN_HEADER", "x-goog-api-key".into()),
        ("PHANTOM_TOKEN", "phantom-1".into()),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let proxy = Proxy::spawn(&envs, TOKEN);
    // The phantom in the configured field is accepted, and replaced by the real token.
    let req = "GET /v1beta/models HTTP/1.1\r\nHost: x\r\nX-Goog-Api-Key: phantom-1\r\n\r\n";
    assert_eq!(roundtrip(proxy.addr(), req).status(), 200);
    // The phantom as a Bearer token works too; a second copy of the field is removed.
    let req = "GET /b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer phantom-1\r\nx-goog-api-key: mine\r\n\r\n";
    assert_eq!(roundtrip(proxy.addr(), req).status(), 200);
    let reqs = up.wait_requests(2, IO_TIMEOUT);
    for r in &reqs {
        assert_eq!(
            r.head.all("x-goog-api-key"),
            [TOKEN.as_bytes()],
            "{}",
            r.head_str()
        );
        assert!(!r.head.has("authorization"), "{}", r.head_str());
    }
    // Without the phantom: 401, nothing forwarded; a `_` look-alike of the field: 400.
    let req = "GET /c HTTP/1.1\r\nHost: x\r\nx-goog-api-key: guess\r\n\r\n";
    roundtrip(proxy.addr(), req).assert_proxy_error(401, "authentication_error");
    let req = "GET /d HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer phantom-1\r\nx_goog_api_key: a\r\n\r\n";
    roundtrip(proxy.addr(), req).assert_proxy_error(400, "invalid_request_error");
    assert_eq!(up.requests().len(), 2);
}

#[test]
fn an_allow_list_forwards_only_what_it_allows() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let list = "POST /v1/messages*, GET /v1/models*, HEAD /";
    let proxy = proxy_for(&up, &[("ALLOW_REQUESTS", list)]);
    let allowed = [
        ("POST", "/v1/messages?beta=true"),
        ("POST", "/v1/messages/count_tokens"),
        ("GET", "/v1/models"),
        ("HEAD", "/"),
        ("POST", "/v1/%6Dessages"),
    ];
    for (m, p) in allowed {
        let req = format!("{m} {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        let mut c = Client::connect(proxy.addr());
        c.send(req);
        assert_eq!(c.read_response_to(m).unwrap().status(), 200, "{m} {p}");
    }
    let refused = [
        ("GET", "/v1/messages"),
        ("POST", "/v1/files"),
        ("DELETE", "/v1/models/x"),
        ("HEAD", "/v1"),
        ("GET", "/v1/%6Dessages"),
    ];
    for (m, p) in refused {
        let req = format!("{m} {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        let mut c = Client::connect(proxy.addr());
        c.send(req);
        let r = c.read_response_to(m).unwrap();
        assert_eq!(r.status(), 403, "{m} {p}");
        if m != "HEAD" {
            r.assert_proxy_error(403, "permission_error");
        }
    }
    // Paths that could climb out of an allowed prefix never get that far.
    for p in [
        "/v1/models/../files",
        "/v1/models/%2e%2e/files",
        "/v1/models%2F..%2Ffiles",
        "/v1/models/..;/files",
    ] {
        let req = format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n");
        roundtrip(proxy.addr(), req).assert_proxy_error(400, "invalid_request_error");
    }
    assert_eq!(
        up.requests().len(),
        allowed.len(),
        "only the allowed were forwarded"
    );
    assert_eq!(roundtrip(proxy.addr(), get("/health")).status(), 200);
}

/// Review finding: a rotation wakes idle connections (to drop the old token); it must not
/// restart the first head's deadline, which runs from accept, or frequent rotations would let
/// a peer that never sends its head hold a connection forever.
#[test]
fn rotations_do_not_extend_the_deadline_of_a_head_that_never_comes() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let envs = [
        ("TARGET", up.target_url()),
        ("TOKEN_UPDATES", "stdin".into()),
        ("HEADER_TIMEOUT", "1s".into()),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut proxy = Proxy::spawn_with_stdin(&envs, format!("{OLD}\n").as_bytes(), false)
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
    let mut silent = Client::connect(proxy.addr());
    for n in 0..8 {
        std::thread::sleep(Duration::from_millis(300));
        proxy.write_stdin(format!("sk-ant-test-rot-{n:04}-abcdefgh\n").as_bytes());
    }
    assert!(proxy.wait_for_stderr("token updated (generation 9)", LOG_BOUND));
    // 2.4 s after accept, 1.4 s past the deadline: closed, not kept alive by the rotations.
    assert!(
        silent.is_closed(Duration::from_millis(200)),
        "still open past HEADER_TIMEOUT"
    );
}
