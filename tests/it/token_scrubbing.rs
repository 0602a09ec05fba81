//! The real token never reaches the sandbox: wherever an upstream reflects it in a response
//! (head or body, whole or split across reads and chunks), the client sees as many `*`
//! instead, with framing and lengths intact.

use std::time::Duration;

use crate::support::wire::chunked;
use crate::support::*;

fn stars() -> String {
    "*".repeat(TOKEN.len())
}

#[test]
fn a_token_reflected_in_a_content_length_body_is_masked_with_the_same_length() {
    let body = format!(r#"{{"echo":"Bearer {TOKEN}","again":"{TOKEN}"}}"#);
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let up = Upstream::plain().serve(handlers::fixed(resp.as_bytes()));
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.body_str(), masked(&body));
    assert!(!r.body_str().contains(TOKEN));
}

#[test]
fn a_token_reflected_in_a_response_header_is_masked() {
    let resp = format!("HTTP/1.1 200 OK\r\nX-Echo: Bearer {TOKEN}\r\nContent-Length: 2\r\n\r\nok");
    let up = Upstream::plain().serve(handlers::fixed(resp.as_bytes()));
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.header_str("x-echo"), Some(format!("Bearer {}", stars())));
    assert_eq!(r.body(), b"ok");
}

#[test]
fn a_token_split_across_chunks_and_writes_is_masked() {
    let payload = format!("data: {TOKEN}\n\n");
    // Split the token in the middle, across two chunks sent as two paced writes.
    let cut = "data: ".len() + TOKEN.len() / 2;
    let first = chunked(&payload.as_bytes()[..cut], &[usize::MAX]);
    let first = first[..first.len() - 5].to_vec(); // without the last-chunk
    let second = chunked(&payload.as_bytes()[cut..], &[usize::MAX]);
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        let _ = c.send_paced(&[head, &first, &second], Duration::from_millis(20));
        let _ = c.read_request();
    });
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
    assert_eq!(r.body_str(), masked(&payload));
}

#[test]
fn a_token_prefix_at_the_end_of_a_body_is_delivered_unchanged() {
    // Bytes that could start the token are held back while undecided; at the end of the body
    // they must be released as they are.
    let prefix = &TOKEN[..TOKEN.len() - 3];
    let body = format!("ends with {prefix}");
    let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}");
    let up = Upstream::plain().serve(handlers::fixed_then_close(resp.as_bytes()));
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(r.body_str(), body);
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let up = Upstream::plain().serve(handlers::fixed(resp.as_bytes()));
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(r.body_str(), body);
}

#[test]
fn a_reflected_token_is_masked_for_http_1_0_clients_too() {
    let body = format!("token={TOKEN}");
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    resp.extend_from_slice(&chunked(body.as_bytes(), &[7]));
    let up = Upstream::plain().serve(handlers::fixed(&resp));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("GET /v1/models HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.body_str(), masked(&body));
}

/// Review finding: masking is an exact byte match, so a sandbox asking for a compressed body
/// (in which the reflected token is not verbatim) or for ranges shorter than the token would
/// read it back. The proxy asks the upstream for identity and never forwards a range.
#[test]
fn the_sandbox_cannot_defeat_masking_with_compression_or_ranges() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(
        proxy.addr(),
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, br\r\nRange: bytes=30-39\r\nIf-Range: \"x\"\r\n\r\n",
    );
    assert_eq!(r.status(), 200);
    let got = up.only_request();
    assert_eq!(got.all("accept-encoding"), vec![&b"identity"[..]]);
    assert!(!got.has("range") && !got.has("if-range"));
    assert!(!r.body_str().contains(TOKEN));
}

#[test]
fn a_compressed_response_is_refused_with_502_since_the_token_could_not_be_masked() {
    let resp =
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\x8b\x08\x00";
    let up = Upstream::plain().serve(handlers::fixed(resp));
    let proxy = proxy_for(&up, &[]);
    roundtrip(proxy.addr(), get("/v1/models")).assert_proxy_error(502, "api_error");
}

/// A chunked response carrying `payload` one byte per chunk, each size line written as
/// `size` (leading zeros allowed), every chunk after the first with an extension, the
/// extensions sharing `ext_total` bytes: framing that fills the relay buffer while a token
/// prefix is held.
fn one_byte_chunks(payload: &[u8], size: &[u8], ext_total: usize) -> Vec<u8> {
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for (i, &b) in payload.iter().enumerate() {
        resp.extend_from_slice(size);
        if i > 0 {
            resp.push(b';');
            resp.extend_from_slice(&vec![b'e'; ext_total / (payload.len() - 1)]);
        }
        resp.extend_from_slice(b"\r\n");
        resp.push(b);
        resp.extend_from_slice(b"\r\n");
    }
    resp.extend_from_slice(b"0\r\n\r\n");
    assert!(resp.len() > 64 * 1024);
    resp
}

/// Review finding: when held bytes (a token prefix spread one byte per chunk between long
/// extensions) fill the whole relay buffer, the proxy must not mistake the full buffer for
/// the upstream's end and cut the response: the buffer grows and the response completes.
#[test]
fn a_relay_buffer_full_of_held_bytes_is_sent_on_and_the_response_completes() {
    let prefix = &TOKEN.as_bytes()[..TOKEN.len() - 1];
    let resp = one_byte_chunks(prefix, b"1", 65_500);
    let up = Upstream::plain().serve(handlers::fixed(&resp));
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), prefix, "the de-framed payload arrived whole");
    assert!(!proxy
        .stderr_so_far()
        .contains("upstream closed mid-response"));
}

/// Attack review, round two (defect 1): the whole token, one byte per chunk, with long
/// extensions between the chunks (each within the response limits), so the held prefix and
/// the framing after it outgrow the relay buffer. The hold is never released unmasked: the
/// client sees the token masked, never in clear, in the raw bytes or the de-framed payload.
#[test]
fn a_token_spread_over_chunks_with_long_extensions_is_masked_even_past_a_full_buffer() {
    let token = TOKEN.as_bytes();
    let resp = one_byte_chunks(token, b"000000000000001", 65_000);
    let up = Upstream::plain().serve(handlers::fixed(&resp));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (raw, _) = c.read_until_end(IO_TIMEOUT);
    let payload: Vec<u8> = {
        let r = roundtrip(proxy.addr(), get("/v1/models"));
        r.body().to_vec()
    };
    assert!(
        crate::support::wire::find(&raw, token).is_none(),
        "the token reached the client in clear"
    );
    assert!(crate::support::wire::find(&payload, token).is_none());
    assert_eq!(
        payload,
        stars().as_bytes(),
        "the payload arrived whole, masked"
    );
}
