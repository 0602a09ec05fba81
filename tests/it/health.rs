//! `GET /health` and `HEAD /health` are answered by the proxy itself and never forwarded.

use crate::support::*;

const OK_BODY: &str = "agent-loop-proxy ok";

#[test]
fn get_health_answers_200_locally_and_is_not_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status(), 200);
    assert_eq!(r.body_str(), OK_BODY);
    assert_eq!(
        r.header_str("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    up.assert_untouched();
}

#[test]
fn head_health_answers_200_without_a_body_then_closes_the_connection() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response_to("HEAD").expect("HEAD response");
    assert_eq!(r.status(), 200);
    assert!(r.body().is_empty());
    assert!(
        r.head.says_close(),
        "health answers close: they need no phantom token"
    );
    // Nothing follows the head: a body sent after a HEAD response would show up here.
    let (rest, ending) = c.read_until_end(IO_TIMEOUT);
    assert!(rest.is_empty(), "bytes after the HEAD response: {rest:?}");
    assert_eq!(ending, Ending::Eof);
    up.assert_untouched();
}

#[test]
fn health_answers_even_when_the_target_is_unreachable() {
    let target = dead_target();
    let proxy = Proxy::spawn(&[("TARGET", &target)], TOKEN);
    let r = roundtrip(proxy.addr(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status(), 200);
    assert_eq!(r.body_str(), OK_BODY);
}

#[test]
fn only_the_exact_health_path_is_answered_locally() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[]);
    for path in ["/healthz", "/health/", "/v1/health", "/Health"] {
        let r = roundtrip(proxy.addr(), get(path));
        assert_eq!(r.status(), 200);
        assert_eq!(r.body_str(), path, "{path} was not forwarded");
    }
    let r = roundtrip(proxy.addr(), post("/health", "{}"));
    assert_eq!(r.body_str(), "/health", "POST /health was not forwarded");
    assert_eq!(up.requests().len(), 5);
}
