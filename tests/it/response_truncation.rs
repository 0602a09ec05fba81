//! R29 (RFC 9112 §9.8): a close-delimited response ends when the upstream closes, so how it
//! closes decides whether the body is whole. Over TLS, a close without close_notify is a
//! truncation: the client's connection is reset, never ended with a FIN that would make the
//! partial body look complete. A TLS close with close_notify, or a plain TCP FIN, ends the body
//! cleanly.

use crate::support::*;

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
const PART: &[u8] = b"the first part of a close-delimited body;";
const REST: &[u8] = b" and the rest of it.";

/// An upstream that answers with a close-delimited body: `HEAD` + `PART`, then (once the test
/// has seen `PART` at the client) `REST` if `send_rest`, then closes gracefully or abruptly.
fn close_delimited(
    up: fn() -> crate::support::upstream::UpstreamBuilder,
    send_rest: bool,
    graceful: bool,
) -> (Upstream, Steps) {
    let steps = Steps::new();
    let s = steps.clone();
    let upstream = up().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let mut first = HEAD.to_vec();
        first.extend_from_slice(PART);
        if c.send(&first).is_err() || !s.wait_for(1, IO_TIMEOUT) {
            c.abort();
            return;
        }
        if send_rest && c.send(REST).is_err() {
            return;
        }
        if graceful {
            c.close();
        } else {
            c.abort();
        }
    });
    (upstream, steps)
}

/// Request, read the head and `PART`, release the upstream, read to the end.
fn fetch(proxy: &Proxy, steps: &Steps) -> (Vec<u8>, Ending) {
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/files/f"));
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    assert!(c.wait_buffered(PART), "the first part never arrived");
    steps.step();
    c.read_until_end(IO_TIMEOUT)
}

#[test]
fn a_tls_upstream_closing_without_close_notify_mid_body_resets_the_client_connection() {
    let (up, steps) = close_delimited(Upstream::tls, false, false);
    let proxy = proxy_for(&up, &[]);
    let (body, ending) = fetch(&proxy, &steps);
    assert_eq!(
        ending,
        Ending::Reset,
        "a truncated close-delimited body ended like a complete one"
    );
    assert!(
        PART.starts_with(&body),
        "bytes the upstream never sent: {:?}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn a_tls_upstream_closing_with_close_notify_ends_the_body_with_a_clean_eof() {
    let (up, steps) = close_delimited(Upstream::tls, true, true);
    let proxy = proxy_for(&up, &[]);
    let (body, ending) = fetch(&proxy, &steps);
    assert_eq!(ending, Ending::Eof, "a complete body ended with a reset");
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&[PART, REST].concat())
    );
}

#[test]
fn a_plain_upstream_close_ends_a_close_delimited_body_with_a_clean_eof() {
    let (up, steps) = close_delimited(Upstream::plain, true, true);
    let proxy = proxy_for(&up, &[]);
    let (body, ending) = fetch(&proxy, &steps);
    assert_eq!(ending, Ending::Eof, "a complete body ended with a reset");
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&[PART, REST].concat())
    );
}

#[test]
fn a_content_length_body_cut_short_by_a_tls_upstream_ends_with_a_fin_after_the_bytes_received() {
    // Length-framed: the client can see the body is short, so the proxy keeps the FIN (an RST
    // could destroy bytes the client has not read yet).
    let steps = Steps::new();
    let s = steps.clone();
    let up = Upstream::tls().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let mut first = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
        first.extend_from_slice(PART);
        let _ = c.send(&first);
        s.wait_for(1, IO_TIMEOUT);
        c.abort();
    });
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/files/f"));
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    assert!(c.wait_buffered(PART));
    steps.step();
    let (body, ending) = c.read_until_end(IO_TIMEOUT);
    assert_eq!(ending, Ending::Eof);
    assert_eq!(body, PART, "bytes were added to or lost from a cut body");
}

/// Review finding: a chunked body de-chunked for an HTTP/1.0 client is close-delimited on the
/// client's side, so a truncation there must reset too, never end with a clean FIN.
#[test]
fn a_chunked_body_cut_short_while_de_chunked_for_an_http_1_0_client_resets_it() {
    let steps = Steps::new();
    let s = steps.clone();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let mut first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        first.extend_from_slice(format!("{:x}\r\n", PART.len()).as_bytes());
        first.extend_from_slice(PART);
        first.extend_from_slice(b"\r\n10\r\nwor");
        let _ = c.send(&first);
        s.wait_for(1, IO_TIMEOUT);
        c.close();
    });
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("GET /v1/files/f HTTP/1.0\r\n\r\n");
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    assert!(c.wait_buffered(PART), "the first part never arrived");
    steps.step();
    let (_, ending) = c.read_until_end(IO_TIMEOUT);
    assert_eq!(
        ending,
        Ending::Reset,
        "a truncated de-chunked body ended like a complete one"
    );
}
