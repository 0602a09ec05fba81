//! Requests the proxy refuses itself: CONNECT, protocol upgrades, the HTTP/2 preface, TRACE.
//! Each gets the proxy's own error and nothing of it reaches the upstream.

use crate::support::*;

/// Send `req` on a fresh connection; return the response, or None if the proxy just closed.
fn answer(proxy: &Proxy, req: &[u8]) -> Option<Response> {
    let mut c = Client::connect(proxy.addr());
    let _ = c.try_send(req);
    c.read_response_to("GET").ok()
}

#[test]
fn connect_is_refused_with_405_and_nothing_is_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = answer(
        &proxy,
        b"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\n\r\n",
    )
    .expect("a response to CONNECT");
    r.assert_proxy_error(405, "invalid_request_error");
    up.assert_untouched();
}

#[test]
fn a_websocket_upgrade_gets_426_and_nothing_is_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = answer(
        &proxy,
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("a response to an upgrade request");
    // 426 makes a client that can fall back to HTTP (Codex) do so at once.
    r.assert_proxy_error(426, "invalid_request_error");
    assert_eq!(r.head.header_str("upgrade").as_deref(), Some("HTTP/1.1"));
    assert_eq!(r.head.header_str("connection").as_deref(), Some("close"));
    up.assert_untouched();
}

#[test]
fn an_h2c_upgrade_is_refused_and_nothing_is_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = answer(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .expect("a response");
    assert!(
        [400, 405, 501].contains(&r.status()),
        "status {}",
        r.status()
    );
    up.assert_untouched();
}

#[test]
fn the_http2_preface_is_refused_and_nothing_is_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    let _ = c.try_send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    match c.read_response_to("GET") {
        Ok(r) => assert!((400..600).contains(&r.status()), "status {}", r.status()),
        Err(_) => assert!(c.is_closed(CLOSE_BOUND)),
    }
    assert!(
        c.is_closed(CLOSE_BOUND),
        "connection left open after an HTTP/2 preface"
    );
    up.assert_untouched();
}

#[test]
fn trace_is_refused_with_405_and_nothing_is_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = answer(&proxy, b"TRACE /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n").expect("a response");
    r.assert_proxy_error(405, "invalid_request_error");
    up.assert_untouched();
}

/// Every refusal class gets one access line, as a forwarded request does: method (or `-`
/// when the request line is unusable), path, status, bytes, duration; and its error line.
#[test]
fn each_refusal_class_gets_one_access_line() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let envs = [("MAX_BODY_BYTES", "100"), ("MAX_REQUEST_LINE", "64")];
    let proxy = proxy_for(&up, &envs);
    // A request line over the limit, still unfinished: no method or path to show.
    let long = format!("GET /{}", "a".repeat(100));
    let big_field = format!(
        "GET /f HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40_000)
    );
    let cases: [(&[u8], u16, &str); 8] = [
        (
            b"GET /h HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            400,
            "GET /h 400 ",
        ),
        (b"\x16\x03\x01garbage\r\n\r\n", 400, "- - 400 "),
        (
            b"TRACE /t?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            405,
            "TRACE /t 405 ",
        ),
        (
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
            413,
            "POST /p 413 ",
        ),
        (long.as_bytes(), 414, "- - 414 "),
        (
            b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n",
            417,
            "POST /e 417 ",
        ),
        (big_field.as_bytes(), 431, "GET /f 431 "),
        (
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
            "POST /c 501 ",
        ),
    ];
    for (i, (req, status, line)) in cases.iter().enumerate() {
        let r = answer(&proxy, req).unwrap_or_else(|| panic!("no answer to case {i}"));
        assert_eq!(r.status(), *status, "case {i}");
        let want = format!("proxy: {line}");
        assert!(
            proxy.wait_for_stderr_count("proxy: error: client: ", i + 1, IO_TIMEOUT)
                && proxy.wait_for_stderr(&want, IO_TIMEOUT),
            "no access line {want:?}:\n{}",
            proxy.stderr_so_far()
        );
        let access = proxy
            .stderr_lines()
            .into_iter()
            .find(|l| l.starts_with(&want))
            .unwrap();
        let rest = access.strip_prefix(&want).unwrap();
        assert!(rest.ends_with("ms") && rest.contains("B "), "{access}");
    }
    let access_lines = proxy
        .stderr_lines()
        .into_iter()
        .filter(|l| l.ends_with("ms") && !l.contains("listening"))
        .count();
    assert_eq!(access_lines, cases.len(), "{}", proxy.stderr_so_far());
    up.assert_untouched();
}
