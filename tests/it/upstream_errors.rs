//! Upstream answers and failures: 4xx/5xx relayed as they are; an unreachable, silent or broken
//! upstream becomes the proxy's own 502/504 JSON error; a response cut short is never made to
//! look whole.

use crate::support::*;

fn json_response(status: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn an_upstream_4xx_is_relayed_with_its_status_headers_and_body() {
    let resp = json_response(
        "429 Too Many Requests",
        "retry-after: 17\r\nanthropic-ratelimit-tokens-remaining: 0\r\n",
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
    );
    let up = Upstream::plain().serve(handlers::fixed(&resp));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/messages", "{}"));
    let r = c.read_response();
    assert_eq!(r.raw(), resp, "got:\n{}", String::from_utf8_lossy(&r.raw()));
}

#[test]
fn upstream_error_statuses_are_relayed_with_their_bodies() {
    for (status, kind) in [
        ("500 Internal Server Error", "api_error"),
        ("529 Overloaded", "overloaded_error"),
        ("401 Unauthorized", "authentication_error"),
    ] {
        let body = format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"x"}}}}"#);
        let resp = json_response(status, "", &body);
        let up = Upstream::plain().serve(handlers::fixed(&resp));
        let proxy = proxy_for(&up, &[]);
        let r = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
        assert_eq!(
            r.status().to_string(),
            status.split(' ').next().unwrap(),
            "{status}"
        );
        assert_eq!(r.body_str(), body, "{status}");
    }
}

#[test]
fn an_unreachable_upstream_gives_502_api_error() {
    let target = dead_target();
    let proxy = Proxy::spawn(&[("TARGET", &target)], TOKEN);
    let r = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
    r.assert_proxy_error(502, "api_error");
}

#[test]
fn an_upstream_that_closes_without_answering_gives_502() {
    let up = Upstream::plain().serve(handlers::close_without_answer());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
    r.assert_proxy_error(502, "api_error");
    assert_eq!(
        up.requests().len(),
        1,
        "POST must not be retried (RFC 9112 §9.3.1)"
    );
}

#[test]
fn a_malformed_upstream_response_gives_502() {
    let up = Upstream::plain().serve(handlers::fixed_then_close(
        b"HTTP/1.1 OK-ish\r\nnonsense\r\n\r\n",
    ));
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    r.assert_proxy_error(502, "api_error");
}

#[test]
fn an_upstream_response_with_conflicting_lengths_gives_502() {
    let up = Upstream::plain().serve(handlers::fixed_then_close(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    ));
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    r.assert_proxy_error(502, "api_error");
}

#[test]
fn an_upstream_101_switching_protocols_gives_502() {
    let up = Upstream::plain().serve(handlers::fixed_then_close(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    ));
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    r.assert_proxy_error(502, "api_error");
}

#[test]
fn a_content_length_body_cut_short_by_the_upstream_closes_the_client_connection() {
    let up = Upstream::plain().serve(handlers::fixed_then_close(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part-of-it",
    ));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/models"));
    let r = c.read_response_lenient("GET").expect("head relayed");
    assert_eq!(r.status(), 200);
    assert!(
        !r.body.complete,
        "a truncated body was made to look complete"
    );
    assert_eq!(r.body(), b"only-part-of-it");
}

#[test]
fn a_chunked_body_cut_short_by_the_upstream_never_gets_a_last_chunk() {
    let up = Upstream::plain().serve(handlers::fixed_then_close(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/models"));
    let r = c.read_response_lenient("GET").expect("head relayed");
    assert_eq!(r.status(), 200);
    assert!(!r.body.complete, "a fake last-chunk was appended");
    assert_eq!(r.body(), b"hello");
}

#[test]
fn a_close_delimited_response_is_relayed_whole_then_the_client_is_closed() {
    let up = Upstream::plain().serve(handlers::fixed_then_close(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
    ));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/models"));
    let r = c.read_response();
    assert_eq!(r.body_str(), "until the end");
    assert!(c.is_closed(CLOSE_BOUND));
}

#[test]
fn an_upstream_that_never_answers_gives_504_after_response_timeout() {
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        let _ = c.read_request();
        g.wait(IO_TIMEOUT);
    });
    let proxy = proxy_for(&up, &[("RESPONSE_TIMEOUT", "300ms")]);
    let r = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
    gate.open();
    r.assert_proxy_error(504, "timeout_error");
}

#[test]
fn the_proxy_keeps_serving_after_upstream_failures() {
    let target = dead_target();
    let proxy = Proxy::spawn(&[("TARGET", &target)], TOKEN);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/models"));
    let r = c.read_response();
    r.assert_proxy_error(502, "api_error");
    if !r.head.says_close() {
        c.send(get("/health"));
        assert_eq!(c.read_response().status(), 200);
    }
    let r = roundtrip(proxy.addr(), get("/health"));
    assert_eq!(r.status(), 200);
}

#[test]
fn an_upstream_that_stalls_mid_body_is_cut_off_after_upstream_idle_timeout() {
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let _ = c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        g.wait(IO_TIMEOUT);
    });
    let proxy = proxy_for(&up, &[("UPSTREAM_IDLE_TIMEOUT", "300ms")]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/models"));
    let t = std::time::Instant::now();
    let r = c.read_response_lenient("GET").expect("head relayed");
    gate.open();
    assert!(!r.body.complete, "a stalled body was made to look complete");
    assert_eq!(r.body(), b"abc");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn an_upstream_that_stalls_mid_chunked_body_never_gets_a_fake_last_chunk() {
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let _ = c.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
        g.wait(IO_TIMEOUT);
    });
    let proxy = proxy_for(&up, &[("UPSTREAM_IDLE_TIMEOUT", "300ms")]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/models"));
    let r = c.read_response_lenient("GET").expect("head relayed");
    gate.open();
    assert!(!r.body.complete, "a fake last-chunk was appended");
    assert_eq!(r.body(), b"abc");
}

/// Review finding: RESPONSE_TIMEOUT is one deadline for the whole head, not a per-read
/// allowance that a head trickled byte by byte could stretch without end.
#[test]
fn a_response_head_trickled_past_response_timeout_gets_504() {
    let up = Upstream::plain().serve(|c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let head = b"HTTP/1.1 200 OK\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\nContent-Length: 0\r\n\r\n";
        let parts: Vec<&[u8]> = head.chunks(1).collect();
        let _ = c.send_paced(&parts, std::time::Duration::from_millis(20));
    });
    let proxy = proxy_for(&up, &[("RESPONSE_TIMEOUT", "300ms")]);
    roundtrip(proxy.addr(), get("/v1/models")).assert_proxy_error(504, "timeout_error");
}

/// Review finding: interim responses are capped, so an upstream cannot keep an exchange in
/// 1xx forever; after the cap the client's connection ends without a final response.
#[test]
fn an_upstream_sending_endless_interim_responses_is_cut_off() {
    let up = Upstream::plain().serve(|c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let mut out = Vec::new();
        for _ in 0..20 {
            out.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n");
        }
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let _ = c.send(&out);
    });
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/models"));
    let (bytes, _) = c.read_until_end(IO_TIMEOUT);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.matches(" 103 ").count() <= 8, "{text}");
    assert!(
        !text.contains(" 200 "),
        "a final response after the cap: {text}"
    );
}
