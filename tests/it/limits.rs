//! Everything a client controls is bounded: head size, line lengths, field count, the time to
//! send a head, the gaps in a body. Breaches get the proxy's own error (or a close) and nothing
//! incomplete reaches the upstream.

use std::time::Duration;

use crate::support::paused::AsyncClient;
use crate::support::*;

#[test]
fn a_request_line_over_max_request_line_gets_414() {
    let path = format!("/v1/{}", "a".repeat(300));
    expect_refused(
        &[("MAX_REQUEST_LINE", "128")],
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        414,
        "invalid_request_error",
    );
}

#[test]
fn a_field_line_over_max_field_line_gets_431() {
    let v = "b".repeat(300);
    expect_refused(
        &[("MAX_FIELD_LINE", "128")],
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {v}\r\n\r\n").as_bytes(),
        431,
        "invalid_request_error",
    );
}

#[test]
fn more_fields_than_max_headers_gets_431() {
    let mut req = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        req.push_str(&format!("X-F{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    expect_refused(
        &[("MAX_HEADERS", "10")],
        req.as_bytes(),
        431,
        "invalid_request_error",
    );
}

#[test]
fn a_head_over_max_head_bytes_gets_431() {
    let mut req = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..40 {
        req.push_str(&format!("X-Field-{i:02}: {}\r\n", "v".repeat(40)));
    }
    req.push_str("\r\n");
    expect_refused(
        &[("MAX_HEAD_BYTES", "1024")],
        req.as_bytes(),
        431,
        "invalid_request_error",
    );
}

/// On tokio's paused clock: the proxy's deadline passes in its own time, in milliseconds.
#[tokio::test(start_paused = true)]
async fn a_head_not_finished_within_header_timeout_gets_408() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[("HEADER_TIMEOUT", "10s")]);
    let mut c = AsyncClient::connect(proxy.addr()).await;
    let t = tokio::time::Instant::now();
    c.send("GET /v1/models HTTP/1.1\r\nHost: x\r\n").await;
    let r = c.read_response_to("GET").await.expect("408 response");
    r.assert_proxy_error(408, "invalid_request_error");
    // At the deadline, not before it and not long after.
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "took {took:?}"
    );
    assert!(c.is_closed(CLOSE_BOUND).await);
    up.assert_untouched();
}

/// On tokio's paused clock, one byte every 10 ms of it: the deadline, 10 s after accept,
/// comes while the head is still trickling in (4000 bytes would take 40 s).
#[tokio::test(start_paused = true)]
async fn a_head_trickled_byte_by_byte_is_still_cut_off_at_header_timeout() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[("HEADER_TIMEOUT", "10s")]);
    let mut c = AsyncClient::connect(proxy.addr()).await;
    let t = tokio::time::Instant::now();
    // Keep sending one byte at a time: the deadline is absolute, not reset by each byte.
    let filler = "X-Slow: ".to_string() + &"s".repeat(4000);
    c.send("GET /v1/models HTTP/1.1\r\nHost: x\r\n").await;
    for b in filler.bytes() {
        // Cut off: the proxy answered or closed (its lingering close still reads for a
        // moment, so a write need not fail at once).
        if c.try_send([b]).await.is_err() || c.answered_or_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "the proxy kept reading a trickled head past HEADER_TIMEOUT (cut off after {took:?})"
    );
    up.assert_untouched();
}

#[test]
fn a_body_that_stalls_past_client_idle_timeout_is_never_completed_upstream() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[("CLIENT_IDLE_TIMEOUT", "300ms")]);
    let mut c = Client::connect(proxy.addr());
    c.send("POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345");
    // The proxy either answers 408 or just closes; it must not hang and must not complete it.
    if let Ok(r) = c.read_response_to("POST") {
        r.assert_proxy_error(408, "invalid_request_error");
    }
    assert!(c.is_closed(CLOSE_BOUND));
    assert!(
        up.requests().is_empty(),
        "an incomplete body was completed upstream"
    );
}

#[test]
fn chunk_extensions_over_max_chunk_ext_get_400() {
    let ext = "e".repeat(200);
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[("MAX_CHUNK_EXT", "64")]);
    let mut c = Client::connect(proxy.addr());
    let _ = c.try_send(format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;{ext}\r\na\r\n0\r\n\r\n"
    ));
    if let Ok(r) = c.read_response_to("POST") {
        r.assert_proxy_error(400, "invalid_request_error");
    }
    assert!(c.is_closed(CLOSE_BOUND));
    assert!(up.requests().is_empty());
}
