use super::*;
use crate::scrub::TokenFinder;

const TOKEN: &[u8] = b"sk-ant-REAL";

fn finder() -> &'static TokenFinder<'static> {
    static FINDER: std::sync::OnceLock<TokenFinder<'static>> = std::sync::OnceLock::new();
    FINDER.get_or_init(|| TokenFinder::new(TOKEN))
}

fn ctx() -> ResponseContext<'static> {
    ResponseContext {
        request_was_head: false,
        close_client: false,
        dechunk: false,
        finder: finder(),
    }
}

fn parse(head: &[u8], c: &ResponseContext<'_>) -> Result<(ResponseHead, String), Problem> {
    let n = crate::head::HeadScanner::new()
        .scan(head, &RESPONSE_SCAN)?
        .ok_or(Problem::UpstreamClosed)?;
    let mut out = Vec::new();
    let h = parse_response(&head[..n], c, &mut out)?;
    Ok((h, String::from_utf8(out).unwrap()))
}

#[test]
fn body_length_follows_rfc_9112_section_6_3() {
    let body = |head: &str, c: &ResponseContext<'_>| parse(head.as_bytes(), c).unwrap().0.body;
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

/// Drives a tracker over `input` split at `splits`, as the relay does; returns what the client
/// receives and whether the body ended cleanly with excess bytes.
fn relay(
    body: ResponseBody,
    dechunk: bool,
    input: &[u8],
    splits: &[usize],
) -> Result<(Vec<u8>, bool, bool), Problem> {
    let mut t = BodyTracker::new(body, dechunk, finder());
    let mut buf: Vec<u8> = Vec::new();
    let mut sent = Vec::new();
    let mut last = 0;
    let mut old = 0;
    for &cut in splits
        .iter()
        .filter(|&&c| c <= input.len())
        .chain(std::iter::once(&input.len()))
    {
        buf.truncate(old);
        buf.extend_from_slice(&input[last..cut]);
        last = cut;
        let a = t.advance(&mut buf, old)?;
        assert!(a.ready <= a.keep && a.keep <= buf.len());
        sent.extend_from_slice(&buf[..a.ready]);
        if a.done {
            return Ok((sent, true, a.excess));
        }
        buf.copy_within(a.ready..a.keep, 0);
        t.shifted(a.ready);
        old = a.keep - a.ready;
    }
    buf.truncate(old);
    if t.finish_at_close() {
        sent.extend_from_slice(&buf);
    }
    Ok((sent, false, false))
}

#[test]
fn tracks_body_ends_and_excess() {
    let (sent, done, excess) = relay(ResponseBody::Length(5), false, b"hello", &[]).unwrap();
    assert_eq!(
        (sent.as_slice(), done, excess),
        (&b"hello"[..], true, false)
    );
    let (sent, done, excess) = relay(ResponseBody::Length(5), false, b"helloEXTRA", &[]).unwrap();
    assert_eq!((sent.as_slice(), done, excess), (&b"hello"[..], true, true));
    let (sent, done, _) = relay(ResponseBody::Length(5), false, b"hel", &[]).unwrap();
    assert_eq!((sent.as_slice(), done), (&b"hel"[..], false));
    let (sent, done, excess) =
        relay(ResponseBody::Chunked, false, b"3\r\nabc\r\n0\r\n\r\nX", &[]).unwrap();
    assert_eq!(
        (sent.as_slice(), done, excess),
        (&b"3\r\nabc\r\n0\r\n\r\n"[..], true, true)
    );
    assert_eq!(
        relay(ResponseBody::Chunked, false, b"3\r\nabcd\r\n", &[]),
        Err(Problem::UpstreamMalformed)
    );
    let (sent, done, _) = relay(ResponseBody::UntilClose, false, b"all of it", &[4]).unwrap();
    assert_eq!((sent.as_slice(), done), (&b"all of it"[..], false));
}

/// Issue: the token is masked in Content-Length, chunked (split across chunks) and SSE bodies,
/// wherever the reads split it, and the framing is untouched.
#[test]
fn masks_the_token_in_bodies_at_every_split() {
    let body = b"data: {\"echo\":\"sk-ant-REAL\"}\n\n";
    let masked = b"data: {\"echo\":\"***********\"}\n\n";
    // The token split across two chunks: "sk-an" | "t-REAL...".
    let chunked = b"14\r\ndata: {\"echo\":\"sk-an\r\na\r\nt-REAL\"}\n\n\r\n0\r\n\r\n";
    let chunked_masked = b"14\r\ndata: {\"echo\":\"*****\r\na\r\n******\"}\n\n\r\n0\r\n\r\n";
    let cases: [(ResponseBody, &[u8], &[u8]); 3] = [
        (ResponseBody::Length(body.len() as u64), body, masked),
        (ResponseBody::UntilClose, body, masked),
        (ResponseBody::Chunked, chunked, chunked_masked),
    ];
    for (kind, input, want) in cases {
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let (sent, _, _) = relay(kind, false, input, &[a, b]).unwrap();
                assert_eq!(sent, want, "{kind:?} split at {a},{b}");
            }
        }
    }
}

#[test]
fn dechunks_for_http_1_0_clients_at_every_split() {
    let input = b"5\r\nsk-an\r\n6;x=y\r\nt-REAL\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n";
    for a in 0..=input.len() {
        for b in a..=input.len() {
            let (sent, done, _) = relay(ResponseBody::Chunked, true, input, &[a, b]).unwrap();
            assert_eq!(sent, b"***********abc", "split at {a},{b}");
            assert!(done);
        }
    }
}

#[test]
fn own_answers_are_anthropic_shaped_and_static() {
    let mut out = Vec::new();
    error(Problem::BadFraming, false, true, &mut out);
    let s = String::from_utf8(out.clone()).unwrap();
    let body = r#"{"type":"error","error":{"type":"invalid_request_error","message":"proxy: ambiguous or invalid message framing"}}"#;
    assert_eq!(s, format!("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    for (p, status, kind) in [
        (Problem::Unauthorized, 401, "authentication_error"),
        (Problem::BodyTooLarge, 413, "request_too_large"),
        (Problem::UpstreamUnreachable, 502, "api_error"),
        (Problem::UpstreamResponseTimeout, 504, "timeout_error"),
        (Problem::HeadTooLarge, 431, "invalid_request_error"),
        (Problem::HeadTimeout, 408, "invalid_request_error"),
    ] {
        error(p, false, false, &mut out);
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(s.starts_with(&format!("HTTP/1.1 {status} ")), "{p:?}");
        assert!(s.contains(&format!("\"type\":\"{kind}\"")), "{p:?}");
    }
    health(false, false, &mut out);
    assert!(out.ends_with(b"\r\n\r\nagent-loop-proxy ok"));
}

/// Fuzz finding: a reflected token in chunk extensions or trailers (relayed as framed) is
/// masked too, wherever the reads split it; de-chunked output drops them altogether.
#[test]
fn masks_the_token_in_chunk_extensions_and_trailers_at_every_split() {
    let input = b"1;x=sk-ant-REAL\r\na\r\n0\r\nX-Echo: sk-ant-REAL\r\n\r\n";
    let want = b"1;x=***********\r\na\r\n0\r\nX-Echo: ***********\r\n\r\n";
    for a in 0..=input.len() {
        for b in a..=input.len() {
            let (sent, done, _) = relay(ResponseBody::Chunked, false, input, &[a, b]).unwrap();
            assert_eq!(sent, want, "split at {a},{b}");
            assert!(done);
            let (sent, _, _) = relay(ResponseBody::Chunked, true, input, &[a, b]).unwrap();
            assert_eq!(sent, b"a");
        }
    }
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

/// Review finding: once the last chunk is read no payload can complete a held token prefix,
/// so the hold is released before the trailers (which may be long).
#[test]
fn a_held_token_prefix_is_released_at_the_last_chunk() {
    let mut t = BodyTracker::new(ResponseBody::Chunked, false, finder());
    let mut buf = b"5\r\nsk-an\r\n".to_vec();
    let a = t.advance(&mut buf, 0).unwrap();
    assert!(
        a.ready < a.keep,
        "the prefix is held while payload may follow"
    );
    let mut buf = b"5\r\nsk-an\r\n0\r\n".to_vec();
    let mut t = BodyTracker::new(ResponseBody::Chunked, false, finder());
    let a = t.advance(&mut buf, 0).unwrap();
    assert_eq!((a.ready, a.keep), (buf.len(), buf.len()));
}
