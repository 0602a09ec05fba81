//! Regression tests for the third attack review's findings, each named after what it proves
//! (the ones that need the process are in tests/process/attack_review.rs).

use crate::support::*;

/// The `Authorization` values the upstream received, in order.
fn bearers(up: &Upstream) -> Vec<String> {
    up.requests()
        .iter()
        .flat_map(|r| r.head.all("authorization"))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Finding 5: a writer that truncates TOKEN_FILE, writes part of the token, pauses and writes
/// the rest never has the part sent upstream; the file needs no trailing LF.
#[test]
fn a_token_file_written_in_two_steps_never_sends_the_torn_prefix() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("alp-torn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    let whole = |i: usize| format!("sk-ant-torn-{i}-0123456789abcdefghijklmnop");
    std::fs::write(&path, whole(0)).unwrap();
    let up = Upstream::plain().serve(handlers::echo_head());
    let target = up.target_url();
    let envs = [
        ("TARGET", target.as_str()),
        ("TOKEN_FILE", path.to_str().unwrap()),
    ];
    let proxy = Proxy::spawn_with_stdin(&envs, b"", true).unwrap_or_else(|e| panic!("{e}"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let requests = {
        let (stop, addr) = (stop.clone(), proxy.addr());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                roundtrip(addr, get("/v1/models"));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    for i in 1..=4 {
        // Half a second after the last change was picked up: the pause below then spans the
        // moment a once-a-second poll would come (a poll right after a write sees it whole).
        std::thread::sleep(std::time::Duration::from_millis(500));
        let token = whole(i);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(&token.as_bytes()[..20]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        f.write_all(&token.as_bytes()[20..]).unwrap();
        drop(f);
        let line = format!("token updated (generation {})", i + 1);
        assert!(proxy.wait_for_stderr(&line, IO_TIMEOUT), "no rotation {i}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    requests.join().unwrap();
    roundtrip(proxy.addr(), get("/v1/models"));
    let seen = bearers(&up);
    let torn: Vec<&String> = seen
        .iter()
        .filter(|b| !(0..=4).any(|i| **b == format!("Bearer {}", whole(i))))
        .collect();
    assert!(
        torn.is_empty(),
        "{} requests went upstream with a torn token, first {:?}",
        torn.len(),
        torn.first()
    );
    assert!(seen.contains(&format!("Bearer {}", whole(4))));
    assert!(!proxy.stderr_so_far().contains("generation 6"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 6: a rotation wakes idle connections (to drop the old token); it must not restart
/// the keep-alive idle timer of a connection that has served a request, or rotations more
/// frequent than KEEPALIVE_TIMEOUT would keep an idle connection open forever.
#[test]
fn rotations_do_not_extend_the_keep_alive_idle_timeout() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let envs = [
        ("TARGET", up.target_url()),
        ("TOKEN_UPDATES", "stdin".into()),
        ("KEEPALIVE_TIMEOUT", "1s".into()),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut proxy = Proxy::spawn_with_stdin(&envs, format!("{TOKEN}\n").as_bytes(), false)
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
    let mut idle = Client::connect(proxy.addr());
    idle.send(get("/v1/models"));
    assert_eq!(idle.read_response_to("GET").unwrap().status(), 200);
    for n in 0..8 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        proxy.write_stdin(format!("sk-ant-test-rot-{n:04}-abcdefgh\n").as_bytes());
    }
    assert!(proxy.wait_for_stderr("token updated (generation 9)", IO_TIMEOUT));
    // 2.4 s after the response, 1.4 s past the idle timeout: closed.
    assert!(
        idle.is_closed(std::time::Duration::from_millis(200)),
        "still open past KEEPALIVE_TIMEOUT"
    );
}

/// Finding 3: with the OAuth beta flag added, 69 or 70 fields written without a space after
/// the colon (each one byte longer upstream) made the upstream head outgrow its reservation
/// right after the credential was written, freeing a copy of it unwiped. The head is now
/// sized exactly before it is written (checked in debug builds, which these tests are); the
/// requests around that size are forwarded byte for byte.
#[test]
fn fields_without_a_space_around_the_old_size_bound_are_forwarded_exactly() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[("OAUTH_BETA", "on")]);
    let mut c = Client::connect(proxy.addr());
    for (i, n) in (60..=75).enumerate() {
        let mut req = String::from("GET /v1/models HTTP/1.1\r\nHost:x\r\n");
        let mut fields = Vec::new();
        for f in 0..n {
            req.push_str(&format!("X-Field-{f}:value-{f}\r\n"));
            fields.push(format!("X-Field-{f}: value-{f}"));
        }
        req.push_str("\r\n");
        c.send(&req);
        assert_eq!(c.read_response().status(), 200, "{n} fields");
        let got = up.wait_requests(i + 1, IO_TIMEOUT);
        fields.push("anthropic-beta: oauth-2025-04-20".into());
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let want = expected_head("GET", "/v1/models", &up.authority(), &fields, None);
        assert_eq!(got[i].head_str(), want, "{n} fields");
    }
}
