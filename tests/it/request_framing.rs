//! Requests the proxy cannot frame with certainty are rejected (400/501) and the connection is
//! closed; nothing of them, and nothing after them, reaches the upstream (RFC 9112 §6,
//! docs/http-rules.md §1-§2, SECURITY.md R1-R20).

use crate::support::*;

/// Send `req` followed by a smuggling probe; expect `status` with a proxy error, a closed
/// connection, and an untouched upstream.
fn expect_rejected(req: &str, statuses: &[u16]) {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    let mut bytes = req.as_bytes().to_vec();
    bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = c.try_send(&bytes);
    let r = c
        .read_response_to("POST")
        .unwrap_or_else(|e| panic!("no response to {req:?}: {e}"));
    assert!(
        statuses.contains(&r.status()),
        "{req:?}: status {} not in {statuses:?}: {}",
        r.status(),
        r.body_str()
    );
    r.assert_proxy_error(r.status(), "invalid_request_error");
    assert!(c.is_closed(CLOSE_BOUND), "{req:?}: connection left open");
    up.assert_untouched();
}

#[test]
fn content_length_with_transfer_encoding_is_rejected() {
    expect_rejected(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        &[400],
    );
}

#[test]
fn differing_content_lengths_are_rejected() {
    expect_rejected(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        &[400],
    );
}

#[test]
fn a_content_length_list_is_rejected() {
    expect_rejected(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\nab",
        &[400],
    );
}

#[test]
fn a_non_numeric_content_length_is_rejected() {
    expect_rejected(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\nab",
        &[400],
    );
}

#[test]
fn a_transfer_coding_other_than_chunked_is_rejected() {
    expect_rejected(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        &[400, 501],
    );
    expect_rejected(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        &[400, 501],
    );
}

#[test]
fn chunked_applied_twice_is_rejected() {
    expect_rejected(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        &[400, 501],
    );
}

#[test]
fn bare_lf_line_endings_are_rejected() {
    expect_rejected("GET /v1/models HTTP/1.1\nHost: x\n\n", &[400]);
}

#[test]
fn a_request_without_host_is_rejected() {
    expect_rejected("GET /v1/models HTTP/1.1\r\nX-A: 1\r\n\r\n", &[400]);
}

#[test]
fn a_repeated_host_is_rejected() {
    expect_rejected(
        "GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        &[400],
    );
}

#[test]
fn a_space_before_the_colon_is_rejected() {
    expect_rejected(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\nab",
        &[400],
    );
}

#[test]
fn an_obs_fold_is_rejected() {
    expect_rejected(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
        &[400],
    );
}

#[test]
fn a_fragment_in_the_target_is_rejected() {
    expect_rejected("GET /v1/models#frag HTTP/1.1\r\nHost: x\r\n\r\n", &[400]);
}

#[test]
fn a_malformed_chunk_size_is_rejected_before_the_upstream_sees_a_complete_request() {
    // The head may already be upstream when the bad chunk line arrives; what matters is that no
    // request is completed there and the client gets no success.
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    let _ = c.try_send(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    if let Ok(r) = c.read_response_to("POST") {
        assert_eq!(r.status(), 400, "{}", r.body_str());
    }
    assert!(c.is_closed(CLOSE_BOUND));
    assert!(up.requests().is_empty(), "a request was completed upstream");
    assert!(!crate::support::wire::contains(
        &up.received_all(),
        b"smuggled"
    ));
}

#[test]
fn an_lf_inside_a_chunk_extension_is_rejected() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    let _ = c.try_send(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
    );
    if let Ok(r) = c.read_response_to("POST") {
        assert_eq!(r.status(), 400, "{}", r.body_str());
    }
    assert!(c.is_closed(CLOSE_BOUND));
    assert!(up.requests().is_empty(), "a request was completed upstream");
}

#[test]
fn transfer_encoding_repeated_as_two_fields_is_rejected() {
    expect_rejected(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        &[400, 501],
    );
}

#[test]
fn an_underscore_look_alike_of_a_framing_field_is_rejected() {
    expect_rejected(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}",
        &[400],
    );
}

#[test]
fn the_asterisk_form_is_rejected() {
    expect_rejected("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", &[400, 405, 501]);
}

#[test]
fn a_connection_header_naming_a_framing_field_is_rejected() {
    expect_rejected(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\n{}",
        &[400],
    );
}
