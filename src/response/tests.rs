use super::*;
use crate::scan::{HeadScanner, ScanLimits};

use crate::scrub::testing::tokens;

fn ctx() -> ResponseContext {
    ResponseContext {
        request_was_head: false,
        close_client: false,
        dechunk: false,
    }
}

fn parse(head: &[u8], c: &ResponseContext) -> Result<(ResponseHead, String), Problem> {
    let n = HeadScanner::new()
        .scan(head, &ScanLimits::RESPONSE)?
        .ok_or(Problem::UpstreamClosed)?;
    let mut out = Vec::new();
    let h = parse_response(&head[..n], c, tokens(), &mut out)?;
    Ok((h, String::from_utf8(out).unwrap()))
}

#[test]
fn body_length_follows_rfc_9112_section_6_3() {
    let body = |head: &str, c: &ResponseContext| parse(head.as_bytes(), c).unwrap().0.body;
    let c = ctx();
    assert_eq!(
        body("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &c),
        ResponseBody::Length(5)
    );
    assert_eq!(
        body("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &c),
        ResponseBody::Chunked
    );
    assert_eq!(
        body("HTTP/1.1 200 OK\r\n\r\n", &c),
        ResponseBody::UntilClose
    );
    assert_eq!(
        body("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", &c),
        ResponseBody::None
    );
    assert_eq!(
        body(
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            &c
        ),
        ResponseBody::None
    );
    assert_eq!(
        body("HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n", &c),
        ResponseBody::None
    );
    let head = ResponseContext {
        request_was_head: true,
        ..ctx()
    };
    assert_eq!(
        body("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &head),
        ResponseBody::None
    );
}

#[test]
fn refuses_responses_it_cannot_frame() {
    let c = ctx();
    for head in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 5\n\n",
        b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 600 High\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
    ] {
        assert_eq!(
            parse(head, &c).map(|_| ()),
            Err(Problem::UpstreamMalformed),
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
    assert_eq!(
        parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
            &c
        )
        .map(|_| ()),
        Err(Problem::UpstreamSwitchedProtocols)
    );
}

#[test]
fn relays_the_head_minus_hop_by_hop_fields() {
    let (h, out) = parse(
        b"HTTP/1.1 429 Too Many Requests\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nretry-after: 3\r\nContent-Length: 2\r\n\r\n",
        &ctx(),
    )
    .unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\nContent-Length: 2\r\n\r\n"
    );
    assert!(h.upstream_keep_alive && !h.close_client);
    let close = ResponseContext {
        close_client: true,
        ..ctx()
    };
    let (h, out) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &close).unwrap();
    assert!(h.close_client && out.ends_with("Connection: close\r\n\r\n"));
    let (h, _) = parse(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        &ctx(),
    )
    .unwrap();
    assert!(!h.upstream_keep_alive);
    let (h, out) = parse(b"HTTP/1.1 200 OK\r\n\r\n", &ctx()).unwrap();
    assert!(!h.upstream_keep_alive && h.close_client && out.contains("Connection: close"));
}

/// R29/R31: the client's body is close-delimited when the upstream's is, or when a chunked
/// body is de-chunked for an HTTP/1.0 client; never when its framing says where it ends.
#[test]
fn the_client_body_is_close_delimited_when_its_end_is_the_close() {
    let http10 = ResponseContext {
        dechunk: true,
        close_client: true,
        ..ctx()
    };
    let cases: [(&[u8], &ResponseContext, bool); 5] = [
        (b"HTTP/1.1 200 OK\r\n\r\n", &ctx(), true),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            &ctx(),
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            &http10,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            &http10,
            false,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", &http10, false),
    ];
    for (head, c, want) in cases {
        let (h, _) = parse(head, c).unwrap();
        assert_eq!(h.close_delimited, want, "{}", String::from_utf8_lossy(head));
        assert!(
            !want || h.close_client,
            "a close-delimited body closes the client"
        );
    }
}

#[test]
fn masks_the_token_in_response_heads() {
    let (_, out) = parse(
        b"HTTP/1.1 401 sk-ant-REAL\r\nX-Echo: Bearer sk-ant-REAL!\r\nContent-Length: 0\r\n\r\n",
        &ctx(),
    )
    .unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 401 ***********\r\nX-Echo: Bearer ***********!\r\nContent-Length: 0\r\n\r\n"
    );
}

/// Fuzz finding: every field named by `Connection` is removed, however many.
#[test]
fn every_connection_option_is_removed_from_the_response() {
    let names: Vec<String> = (1..=20).map(|i| format!("x-opt{i}")).collect();
    let fields: String = names.iter().map(|n| format!("{n}: secret\r\n")).collect();
    let head = format!(
        "HTTP/1.1 200 OK\r\nConnection: {}\r\n{fields}Content-Length: 0\r\n\r\n",
        names.join(",")
    );
    let (_, out) = parse(head.as_bytes(), &ctx()).unwrap();
    assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
}

#[test]
fn conflicting_framing_is_refused_even_without_a_body() {
    let head = ResponseContext {
        request_was_head: true,
        ..ctx()
    };
    for h in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    ] {
        assert_eq!(parse(h, &head).map(|_| ()), Err(Problem::UpstreamMalformed));
    }
    let (_, out) = parse(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        &ctx(),
    )
    .unwrap();
    assert!(out.contains("Content-Length: 5"));
}

#[test]
fn a_content_encoded_response_is_refused_since_the_token_could_not_be_masked() {
    for h in [
        &b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Encoding: identity, br\r\nContent-Length: 0\r\n\r\n",
    ] {
        assert_eq!(parse(h, &ctx()).map(|_| ()), Err(Problem::UpstreamEncoded));
    }
    assert!(parse(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Length: 0\r\n\r\n",
        &ctx()
    )
    .is_ok());
}

/// Review finding: removing a framing field an upstream names in `Connection` would leave
/// the client reading into the next response.
#[test]
fn an_upstream_connection_option_naming_a_framing_field_is_refused() {
    for h in [
        &b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nConnection: close, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(parse(h, &ctx()).map(|_| ()), Err(Problem::UpstreamMalformed));
    }
}

#[test]
fn a_head_marked_to_retry_says_so_once() {
    let mut out = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\nX-Should-Retry: false\r\ncontent-length: 2\r\n\r\n".to_vec();
    mark_should_retry(&mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 2\r\nx-should-retry: true\r\n\r\n"
    );
    let mut out = b"HTTP/1.1 401 x-should-retry: no\r\n\r\n".to_vec();
    mark_should_retry(&mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 401 x-should-retry: no\r\nx-should-retry: true\r\n\r\n"
    );
}
