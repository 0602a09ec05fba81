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
fn an_upgrade_request_is_refused_and_nothing_is_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = answer(
        &proxy,
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("a response to an upgrade request");
    assert!(
        [400, 405, 501].contains(&r.status()),
        "status {} for an Upgrade request",
        r.status()
    );
    r.assert_proxy_error(r.status(), "invalid_request_error");
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
