//! Request bodies arrive at the upstream intact: 32 MiB with Content-Length and chunked (sent
//! in random-size pieces, re-chunked canonically), compared by SHA-256 of the decoded body.

use std::thread;

use crate::support::client::write_in_pieces;
use crate::support::wire::{chunked, find};
use crate::support::*;
use sha2::{Digest, Sha256};

const BIG: usize = 32 * 1024 * 1024;

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// An upstream that answers each request with `<sha256 hex> <length>` of the decoded body.
fn hashing_upstream() -> Upstream {
    Upstream::plain().serve(|c: &mut UpConn| {
        c.wire.set_keep_raw(false);
        while let Some(req) = c.read_request() {
            let summary = format!(
                "{} {}",
                hex(&Sha256::digest(&req.body.data)),
                req.body.data.len()
            );
            if c.send(&handlers::ok_text(&req, summary.as_bytes()))
                .is_err()
            {
                return;
            }
        }
    })
}

/// Send `head` then `body` in random pieces from a writer thread while reading the response.
fn upload(proxy: &Proxy, head: String, body: Vec<u8>, seed: u64) -> Response {
    let mut c = Client::connect(proxy.addr());
    let mut w = c.writer();
    let writer = thread::spawn(move || {
        let mut rng = Rng::new(seed);
        std::io::Write::write_all(&mut w, head.as_bytes()).expect("write head");
        write_in_pieces(&mut w, &body, &mut rng, 1, 256 * 1024);
    });
    let r = c.read_response();
    writer.join().expect("writer thread");
    r
}

#[test]
fn a_32_mib_content_length_upload_arrives_intact() {
    let up = hashing_upstream();
    let proxy = proxy_for(&up, &[]);
    let data = Rng::new(1).bytes(BIG);
    let want = format!("{} {}", hex(&Sha256::digest(&data)), data.len());
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {BIG}\r\n\r\n"
    );
    let r = upload(&proxy, head, data, 2);
    assert_eq!(r.status(), 200, "{}", r.body_str());
    assert_eq!(r.body_str(), want);
    let req = up.only_request();
    assert_eq!(req.header_str("content-length"), Some(BIG.to_string()));
}

#[test]
fn a_32_mib_chunked_upload_in_random_chunks_arrives_intact_and_canonically_rechunked() {
    let up = hashing_upstream();
    let proxy = proxy_for(&up, &[]);
    let data = Rng::new(3).bytes(BIG);
    let want = format!("{} {}", hex(&Sha256::digest(&data)), data.len());
    let mut rng = Rng::new(4);
    let sizes: Vec<usize> = (0..997).map(|_| rng.range(1, 200_000)).collect();
    let body = chunked(&data, &sizes);
    drop(data);
    let head =
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_string();
    let r = upload(&proxy, head, body, 5);
    assert_eq!(r.status(), 200, "{}", r.body_str());
    assert_eq!(r.body_str(), want);
    let req = up.only_request();
    assert_eq!(req.all("transfer-encoding"), vec![&b"chunked"[..]]);
    assert!(!req.has("content-length"));
    assert!(!req.body.had_extensions);
    assert!(req.body.trailers.is_empty());
    let raw = &up.received()[0];
    assert!(
        raw.ends_with(b"\r\n0\r\n\r\n"),
        "body must end with the last-chunk"
    );
}

#[test]
fn client_chunk_extensions_and_trailers_are_not_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(
        proxy.addr(),
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;name=value\r\nhello\r\n1;x\r\n!\r\n0;last=1\r\nX-Trailer: smuggled\r\n\r\n",
    );
    assert_eq!(r.status(), 200);
    let req = up.only_request();
    assert_eq!(req.body.data, b"hello!");
    assert!(!req.body.had_extensions, "extensions forwarded");
    assert!(req.body.trailers.is_empty(), "trailers forwarded");
    let raw = up.received_all();
    for s in [&b"name=value"[..], b"last=1", b"smuggled"] {
        assert!(
            find(&raw, s).is_none(),
            "{:?} reached the upstream",
            String::from_utf8_lossy(s)
        );
    }
}

#[test]
fn expect_100_continue_is_answered_by_the_proxy_and_not_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("POST /v1/messages HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    let interim = c
        .read_response_to("POST")
        .expect("100 Continue before the body is sent");
    assert_eq!(interim.status(), 100);
    c.send("{}");
    let r = c.read_final_response("POST");
    assert_eq!(r.status(), 200);
    let req = up.only_request();
    assert!(!req.has("expect"), "Expect forwarded: {}", req.head_str());
    assert_eq!(req.body.data, b"{}");
}

#[test]
fn a_content_length_over_max_body_bytes_is_refused_with_413_and_not_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[("MAX_BODY_BYTES", "1000")]);
    let mut c = Client::connect(proxy.addr());
    c.send("POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n");
    let r = c.read_response();
    r.assert_proxy_error(413, "request_too_large");
    up.assert_untouched();
}

#[test]
fn a_chunked_body_growing_over_max_body_bytes_is_cut_off() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[("MAX_BODY_BYTES", "1000")]);
    let mut c = Client::connect(proxy.addr());
    let body = chunked(&[b'a'; 1500], &[500]);
    c.send("POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    let _ = c.try_send(&body);
    // Either the proxy refuses before anything is forwarded (413), or, if the head already went
    // upstream, the request must never be completed there.
    match c.read_response_to("POST") {
        Ok(r) => assert_eq!(r.status(), 413, "{}", r.body_str()),
        Err(_) => assert!(c.is_closed(CLOSE_BOUND)),
    }
    assert!(
        up.requests().is_empty(),
        "an over-limit body was delivered whole"
    );
}
