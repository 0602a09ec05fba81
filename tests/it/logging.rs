//! stderr: one line per request (method, path without query, status, bytes, ms), failure lines
//! with a side and a static reason, and never the token or request contents.

use std::time::Duration;

use crate::support::*;

const LOG_BOUND: Duration = Duration::from_secs(5);

/// The request log lines (`proxy: METHOD PATH STATUS NB Mms`) in stderr.
fn request_lines(lines: &[String]) -> Vec<Vec<String>> {
    lines
        .iter()
        .filter_map(|l| {
            let parts: Vec<String> = l.split(' ').map(str::to_string).collect();
            let ok = parts.len() == 6
                && parts[0] == "proxy:"
                && parts[3].len() == 3
                && parts[3].bytes().all(|b| b.is_ascii_digit())
                && parts[4]
                    .strip_suffix('B')
                    .is_some_and(|n| n.parse::<u64>().is_ok())
                && parts[5]
                    .strip_suffix("ms")
                    .is_some_and(|n| n.parse::<u64>().is_ok());
            ok.then_some(parts)
        })
        .collect()
}

#[test]
fn each_request_logs_one_line_with_method_path_status_bytes_and_duration() {
    let up = Upstream::plain().serve(handlers::fixed(
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello",
    ));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/messages", "{}"));
    assert_eq!(c.read_response().status(), 201);
    c.send(get("/health"));
    assert_eq!(c.read_response().status(), 200);
    assert!(proxy.wait_for_stderr("proxy: GET /health 200 ", LOG_BOUND));
    assert!(proxy.wait_for_stderr("proxy: POST /v1/messages 201 ", LOG_BOUND));
    let lines = request_lines(&proxy.stderr_lines());
    let posts: Vec<_> = lines.iter().filter(|p| p[1] == "POST").collect();
    assert_eq!(posts.len(), 1, "{lines:?}");
    assert_eq!(posts[0][2], "/v1/messages");
    assert_eq!(lines.len(), 2, "one line per request: {lines:?}");
}

#[test]
fn the_query_string_is_not_logged() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[]);
    roundtrip(proxy.addr(), get("/v1/models?secret=qs-LEAK-1&beta=true"));
    assert!(proxy.wait_for_stderr("proxy: GET /v1/models 200 ", LOG_BOUND));
    let stderr = proxy.stderr_so_far();
    assert!(!stderr.contains("qs-LEAK-1"), "{stderr}");
    assert!(!stderr.contains("beta=true"), "{stderr}");
}

#[test]
fn request_header_values_and_bodies_are_never_logged() {
    let up = Upstream::plain().serve(handlers::close_without_answer());
    let mut proxy = proxy_for(&up, &[]);
    let r = roundtrip(
        proxy.addr(),
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer hdr-LEAK-2\r\nX-Api-Key: hdr-LEAK-3\r\nUser-Agent: ua-LEAK-4\r\nContent-Length: 11\r\n\r\nbody-LEAK-5",
    );
    assert_eq!(r.status(), 502);
    // A malformed request too: its bytes must not be echoed either.
    let mut c = Client::connect(proxy.addr());
    let _ = c.try_send("GET /x HTTP/1.1\r\nHost: x\r\nBad Header-LEAK-6: v\r\n\r\n");
    let _ = c.read_response_to("GET");
    // Stop the proxy (drain and all) so that everything it would log is written.
    assert!(proxy.stop(Duration::from_secs(10)), "the drain did not end");
    let stderr = proxy.stderr_so_far();
    for s in [
        "hdr-LEAK-2",
        "hdr-LEAK-3",
        "ua-LEAK-4",
        "body-LEAK-5",
        "LEAK-6",
    ] {
        assert!(!stderr.contains(s), "{s} logged: {stderr}");
    }
}

#[test]
fn upstream_failures_are_logged_with_their_side() {
    let target = dead_target();
    let proxy = Proxy::spawn(&[("TARGET", &target)], TOKEN);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(r.status(), 502);
    assert!(
        proxy.wait_for_stderr("proxy: error: upstream: ", LOG_BOUND),
        "no upstream error line: {}",
        proxy.stderr_so_far()
    );
    assert!(proxy.wait_for_stderr("proxy: GET /v1/models 502 ", LOG_BOUND));
}

#[test]
fn the_token_never_appears_in_stderr() {
    let ok = Upstream::plain().serve(handlers::echo_head());
    let mut proxy = proxy_for(&ok, &[]);
    // Success, keep-alive, upstream error status, malformed request, refused method, a request
    // carrying the token itself in its head and query, and an upstream echoing it back.
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/messages", "{}"));
    assert_eq!(c.read_response().status(), 200);
    c.send(format!(
        "GET /v1/models?key={TOKEN} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {TOKEN}\r\n\r\n"
    ));
    assert_eq!(c.read_response().status(), 200);
    let _ = roundtrip(
        proxy.addr(),
        "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    );
    let mut bad = Client::connect(proxy.addr());
    let _ = bad.try_send(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let _ = bad.read_response_to("POST");

    let dead = dead_target();
    let mut proxy2 = Proxy::spawn(&[("TARGET", &dead)], TOKEN);
    assert_eq!(roundtrip(proxy2.addr(), get("/v1/models")).status(), 502);

    let tls = Upstream::tls().serve(handlers::echo_head());
    let mut proxy3 = Proxy::spawn(&[("TARGET", &tls.target_url())], TOKEN);
    assert_eq!(roundtrip(proxy3.addr(), get("/v1/models")).status(), 502);

    let slow = Upstream::plain().serve(|c: &mut UpConn| {
        let _ = c.read_request();
        c.wait_peer_close(IO_TIMEOUT);
    });
    let mut proxy4 = proxy_for(&slow, &[("RESPONSE_TIMEOUT", "200ms")]);
    assert_eq!(roundtrip(proxy4.addr(), get("/v1/models")).status(), 504);

    // Stop them so that everything they would log is written.
    for p in [&mut proxy, &mut proxy2, &mut proxy3, &mut proxy4] {
        assert!(p.stop(Duration::from_secs(10)), "the drain did not end");
    }
    for p in [&proxy, &proxy2, &proxy3, &proxy4] {
        let stderr = p.stderr_so_far();
        assert!(!stderr.contains(TOKEN), "token in stderr: {stderr}");
        assert!(
            !stderr.contains("REALTOKEN"),
            "part of the token in stderr: {stderr}"
        );
    }
}

/// Attack review, round two (defect 3): bytes 0x80-0xFF in the request-target (UTF-8 C1
/// controls such as U+009B, which terminals may read as CSI; U+0085, U+2028, U+202E) are
/// refused with 400 (RFC 9112 §3.2: the request-target is ASCII), and never reach the log
/// line, even for a request the phantom check refuses.
#[test]
fn non_ascii_request_targets_are_refused_and_never_logged_raw() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[("PHANTOM_TOKEN", "phantom")]);
    for ch in ["\u{9b}", "\u{85}", "\u{2028}", "\u{202e}", "\u{e9}"] {
        let req = format!("GET /v1/a{ch}[31mred HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = roundtrip(proxy.addr(), req.as_bytes());
        r.assert_proxy_error(400, "invalid_request_error");
    }
    assert!(proxy.wait_for_stderr("proxy: error: client: ", LOG_BOUND));
    let raw = proxy.stderr_bytes();
    assert!(
        raw.iter().all(|&b| b == b'\n' || (0x20..0x7f).contains(&b)),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    up.assert_untouched();
}
