//! Responses end where RFC 9112 §6.3 says: no body for HEAD, 1xx, 204, 304 whatever their
//! fields claim; interim 1xx are relayed before the final answer; the connection stays usable.

use crate::support::*;

#[test]
fn a_head_response_with_content_length_is_relayed_without_waiting_for_a_body() {
    let up = Upstream::plain().serve(handlers::fixed(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n\r\n",
    ));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("HEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response_to("HEAD").expect("HEAD response");
    assert_eq!(r.status(), 200);
    assert_eq!(r.header_str("content-length").as_deref(), Some("1234"));
    // The same connection answers the next request: nothing was left half-read.
    c.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response().body_str(), "agent-loop-proxy ok");
}

#[test]
fn a_204_response_ends_at_its_head_and_the_connection_stays_usable() {
    let up = Upstream::plain().serve(handlers::fixed(
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    ));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("DELETE /v1/files/f1 HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status(), 204);
    assert!(r.body().is_empty());
    c.send(get("/health"));
    assert_eq!(c.read_response().status(), 200);
}

#[test]
fn a_304_response_ends_at_its_head_and_the_connection_stays_usable() {
    let up = Upstream::plain().serve(handlers::fixed(
        b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    ));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("GET /v1/models HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"x\"\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status(), 304);
    c.send(get("/health"));
    assert_eq!(c.read_response().status(), 200);
}

#[test]
fn an_interim_103_is_relayed_before_the_final_response() {
    let up = Upstream::plain().serve(handlers::fixed(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/models"));
    let first = c.read_response();
    assert_eq!(first.status(), 103);
    let r = c.read_response();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), b"ok");
}

#[test]
fn an_http_1_0_client_never_receives_an_interim_response() {
    let up = Upstream::plain().serve(handlers::fixed(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("GET /v1/models HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(
        r.status(),
        200,
        "RFC 9110 §15.2: no 1xx to an HTTP/1.0 client"
    );
    assert_eq!(r.body(), b"ok");
}

#[test]
fn an_http_1_0_client_is_not_sent_100_continue() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("POST /v1/messages HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}");
    let r = c.read_response();
    assert_eq!(
        r.status(),
        200,
        "RFC 9110 §10.1.1: 100-continue ignored for HTTP/1.0"
    );
    assert_eq!(r.body_str(), "/v1/messages");
}
