//! Persistent connections: several requests on one client connection, pipelining answered in
//! order, and the cases where the proxy must close (HTTP/1.0, `Connection: close`).

use std::time::Duration;

use crate::support::paused::{echo_target_upstream, AsyncClient};
use crate::support::*;

#[test]
fn two_requests_on_one_client_connection_both_reach_the_upstream() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/one"));
    let r1 = c.read_response();
    assert_eq!(r1.body_str(), "/v1/one");
    assert!(!r1.head.says_close(), "{}", r1.head.raw_str());
    c.send(post("/v1/two", "{}"));
    let r2 = c.read_response();
    assert_eq!(r2.body_str(), "/v1/two");
    let reqs = up.wait_requests(2, IO_TIMEOUT);
    let targets: Vec<&str> = reqs.iter().map(|r| r.head.target.as_str()).collect();
    assert_eq!(targets, ["/v1/one", "/v1/two"]);
    for r in &reqs {
        assert_eq!(
            r.all("authorization"),
            vec![format!("Bearer {TOKEN}").as_bytes()]
        );
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    let reqs: Vec<(&str, Vec<u8>)> = vec![
        ("GET", get("/p/1").into_bytes()),
        ("POST", post("/p/2", r#"{"a":1}"#).into_bytes()),
        (
            "POST",
            b"POST /p/3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
                .to_vec(),
        ),
        ("HEAD", b"HEAD /p/4 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("GET", get("/p/5").into_bytes()),
        // Last: a health answer closes the connection.
        ("GET", get("/health").into_bytes()),
    ];
    let rs = pipeline(&mut c, &reqs);
    let bodies: Vec<String> = rs.iter().map(|r| r.body_str()).collect();
    assert_eq!(
        bodies,
        ["/p/1", "/p/2", "/p/3", "", "/p/5", "agent-loop-proxy ok"]
    );
    assert_eq!(rs[3].header_str("content-length").as_deref(), Some("4"));
    let reqs = up.wait_requests(5, IO_TIMEOUT);
    assert_eq!(reqs[1].body.data, br#"{"a":1}"#);
    assert_eq!(reqs[2].body.data, b"hi");
}

#[test]
fn an_http_1_0_client_gets_a_response_and_the_connection_is_closed() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("GET /v1/old HTTP/1.0\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body_str(), "/v1/old");
    assert!(c.is_closed(CLOSE_BOUND), "HTTP/1.0 connection left open");
    assert_eq!(
        up.only_request().head.minor,
        1,
        "upstream request is HTTP/1.1"
    );
}

#[test]
fn an_http_1_0_client_never_receives_a_chunked_response() {
    let up = Upstream::plain().serve(handlers::fixed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    ));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("GET /v1/old HTTP/1.0\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert!(
        !r.has("transfer-encoding"),
        "Transfer-Encoding sent to an HTTP/1.0 client (RFC 9112 §6.1): {}",
        r.head.raw_str()
    );
    assert_eq!(r.body_str(), "hello world");
}

#[test]
fn connection_close_from_the_client_closes_after_the_response() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("GET /v1/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.body_str(), "/v1/last");
    assert!(
        r.head.says_close(),
        "no Connection: close: {}",
        r.head.raw_str()
    );
    assert!(c.is_closed(CLOSE_BOUND));
}

#[test]
fn a_request_pipelined_after_connection_close_is_not_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(
        "GET /v1/first HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /v1/second HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.body_str(), "/v1/first");
    assert!(c.is_closed(CLOSE_BOUND));
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1, "second request forwarded after close");
}

/// On tokio's paused clock, with an upstream on the test's runtime (see `support::paused`).
#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let target = echo_target_upstream().await;
    let proxy = Proxy::spawn(&[("TARGET", &target), ("KEEPALIVE_TIMEOUT", "30s")], TOKEN);
    let mut c = AsyncClient::connect(proxy.addr()).await;
    c.send(get("/v1/one")).await;
    let r = c.read_response().await;
    assert_eq!((r.status(), r.body_str().as_str()), (200, "/v1/one"));
    let idle = tokio::time::Instant::now();
    // Kept through most of the timeout...
    assert!(
        !c.is_closed(Duration::from_secs(29)).await,
        "idle connection closed before KEEPALIVE_TIMEOUT"
    );
    // ...and closed at it.
    assert!(
        c.is_closed(Duration::from_secs(5)).await,
        "idle connection kept past KEEPALIVE_TIMEOUT"
    );
    let took = idle.elapsed();
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(31),
        "closed after {took:?}"
    );
}

#[test]
fn the_last_request_allowed_on_a_connection_is_answered_with_connection_close() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[("MAX_REQUESTS_PER_CONNECTION", "2")]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/a"));
    assert!(!c.read_response().head.says_close());
    c.send(get("/b"));
    let r = c.read_response();
    assert_eq!(r.body_str(), "/b");
    assert!(r.head.says_close(), "{}", r.head.raw_str());
    assert!(c.is_closed(CLOSE_BOUND));
}
