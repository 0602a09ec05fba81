//! The limits and refusals tests/limits.rs does not reach: the MAX_HEADERS boundary, trailer
//! and body limits crossed mid-stream (after the head went upstream), MAX_CONNECTIONS,
//! CLIENT_WRITE_TIMEOUT, unknown expectations and `_` look-alikes of Content-Length.

use std::time::{Duration, Instant};

use crate::support::wire::{chunked, contains};
use crate::support::*;

const LOG_BOUND: Duration = Duration::from_secs(10);

/// A head with `Host` and `n - 1` more fields (`n` in all).
fn head_with_fields(n: usize) -> String {
    let mut req = String::from("GET /v1/models HTTP/1.1\r\nHost: x\r\n");
    for i in 1..n {
        req.push_str(&format!("X-F{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    req
}

#[test]
fn exactly_max_headers_fields_are_forwarded_and_one_more_gets_431() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[("MAX_HEADERS", "10")]);
    let r = roundtrip(proxy.addr(), head_with_fields(10));
    assert_eq!(r.status(), 200);
    let got = up.only_request();
    assert!(got.has("x-f9"), "{}", got.head_str());
    drop(proxy);
    expect_refused(
        &[("MAX_HEADERS", "10")],
        head_with_fields(11).as_bytes(),
        431,
        "invalid_request_error",
    );
}

/// A proxy in front of an upstream that reports when the head arrived and whether the body
/// was ever completed. Returns (upstream, head_seen, body_complete, finished).
fn watching_upstream() -> (Upstream, Gate, Gate, Gate) {
    let (head_seen, complete, finished) = (Gate::new(), Gate::new(), Gate::new());
    let up = Upstream::plain().serve(handlers::head_then_body(
        head_seen.clone(),
        complete.clone(),
        finished.clone(),
    ));
    (up, head_seen, complete, finished)
}

/// Send `first` (head and the start of a chunked body), wait until the upstream has the head,
/// then send `rest`: the proxy must answer `status` itself, close, and the upstream must never
/// receive a complete request.
fn refused_mid_stream(extra: &[(&str, &str)], first: &[u8], rest: &[u8], status: u16, kind: &str) {
    let (up, head_seen, complete, finished) = watching_upstream();
    let proxy = proxy_for(&up, extra);
    let mut c = Client::connect(proxy.addr());
    c.send(first);
    assert!(
        head_seen.wait(IO_TIMEOUT),
        "the head never reached the upstream"
    );
    let _ = c.try_send(rest);
    let r = c
        .read_response_to("POST")
        .unwrap_or_else(|e| panic!("no {status} answer: {e}"));
    r.assert_proxy_error(status, kind);
    assert!(c.is_closed(CLOSE_BOUND), "connection left open");
    assert!(
        finished.wait(IO_TIMEOUT),
        "the upstream connection was not closed"
    );
    assert!(
        !complete.is_open(),
        "the upstream received a complete request"
    );
    assert!(
        !contains(&up.received_all(), b"\r\n0\r\n\r\n"),
        "a last-chunk reached the upstream"
    );
}

#[test]
fn request_trailers_over_max_trailer_bytes_get_431_and_the_upstream_never_gets_a_last_chunk() {
    let pad = "t".repeat(200);
    refused_mid_stream(
        &[("MAX_TRAILER_BYTES", "64")],
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        format!("0\r\nX-Pad: {pad}\r\n\r\n").as_bytes(),
        431,
        "invalid_request_error",
    );
}

#[test]
fn request_trailers_within_max_trailer_bytes_are_accepted_and_dropped() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[("MAX_TRAILER_BYTES", "64")]);
    let r = roundtrip(
        proxy.addr(),
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Small: ok\r\n\r\n",
    );
    assert_eq!(r.status(), 200);
    let got = up.only_request();
    assert_eq!(got.body.data, b"hello");
    assert!(got.body.trailers.is_empty());
}

#[test]
fn a_chunked_body_growing_past_max_body_bytes_after_the_head_went_upstream_gets_413() {
    let first_chunk = chunked(&[b'a'; 600], &[600]);
    let mut first =
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    first.extend_from_slice(&first_chunk[..first_chunk.len() - 5]);
    // 600 + 600 > 1000: the second chunk's size line crosses the limit.
    let rest = chunked(&[b'b'; 600], &[600]);
    refused_mid_stream(
        &[("MAX_BODY_BYTES", "1000")],
        &first,
        &rest,
        413,
        "request_too_large",
    );
}

#[test]
fn a_chunked_body_of_exactly_max_body_bytes_is_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[("MAX_BODY_BYTES", "1000")]);
    let mut req =
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(&chunked(&[b'a'; 1000], &[600]));
    let r = roundtrip(proxy.addr(), req);
    assert_eq!(r.status(), 200);
    assert_eq!(up.only_request().body.data.len(), 1000);
}

#[test]
fn with_max_connections_2_a_third_connection_waits_until_one_of_the_first_two_closes() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[("MAX_CONNECTIONS", "2")]);
    // Two connections that the proxy has certainly accepted: each got an answer. Then idle.
    let mut first = Client::connect(proxy.addr());
    first.send(get("/first"));
    assert_eq!(first.read_response().body_str(), "/first");
    let mut second = Client::connect(proxy.addr());
    second.send(get("/second"));
    assert_eq!(second.read_response().body_str(), "/second");

    // The third is connected by the kernel (backlog) but not served.
    let mut third = Client::connect(proxy.addr());
    third.send(get("/third"));
    third.set_read_timeout(Duration::from_millis(500));
    let early = third.wire.fill();
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the third connection was served (or closed) while two were open: {early:?}"
    );
    assert_eq!(up.requests().len(), 2, "the third request was forwarded");
    // The first two still work.
    second.send(get("/second-again"));
    assert_eq!(second.read_response().body_str(), "/second-again");

    // One closes: the third is served.
    drop(first);
    third.set_read_timeout(IO_TIMEOUT);
    let t = Instant::now();
    let r = third.read_response();
    assert_eq!(r.body_str(), "/third");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_client_that_stops_reading_a_large_response_is_cut_off_after_client_write_timeout() {
    let upstream_gone = Gate::new();
    let g = upstream_gone.clone();
    // An endless chunked body, as fast as the proxy takes it, until the proxy lets go.
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let piece = chunked(&[b'x'; 64 * 1024], &[64 * 1024]);
        let piece = &piece[..piece.len() - 5];
        let mut out =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        out.extend_from_slice(piece);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut res = c.send(&out);
        while res.is_ok() && Instant::now() < deadline {
            res = c.send(piece);
        }
        if res.is_err() {
            g.open();
        }
    });
    let proxy = proxy_for(&up, &[("CLIENT_WRITE_TIMEOUT", "300ms")]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/v1/files/big"));
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    // Now the client stops reading.
    let t = Instant::now();
    assert!(
        proxy.wait_for_stderr("client stopped reading", LOG_BOUND),
        "no 'client stopped reading' line: {}",
        proxy.stderr_so_far()
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    // The proxy let go of both sides: the upstream's writes fail...
    assert!(
        upstream_gone.wait(IO_TIMEOUT),
        "the upstream connection was kept open"
    );
    // ...and the client, reading again, finds the end of a body that never completed.
    let (_, ending) = c.read_until_end(IO_TIMEOUT);
    assert!(
        matches!(ending, Ending::Eof | Ending::Reset),
        "the client connection was not closed: {ending:?}"
    );
}

#[test]
fn an_expectation_other_than_100_continue_gets_417_and_nothing_is_forwarded() {
    for expect in ["something-else", "100-continue-please", "100-continue, x"] {
        expect_refused(
            &[],
            format!(
                "POST /v1/messages HTTP/1.1\r\nHost: x\r\nExpect: {expect}\r\nContent-Length: 2\r\n\r\n{{}}"
            )
            .as_bytes(),
            417,
            "invalid_request_error",
        );
    }
}

#[test]
fn an_underscore_look_alike_of_content_length_gets_400_and_nothing_is_forwarded() {
    for name in ["Content_Length", "content_length", "CONTENT_LENGTH"] {
        expect_refused(
            &[],
            format!("POST /v1/messages HTTP/1.1\r\nHost: x\r\n{name}: 5\r\n\r\nhello").as_bytes(),
            400,
            "invalid_request_error",
        );
        expect_refused(
            &[],
            format!(
                "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n{name}: 40\r\n\r\n{{}}"
            )
            .as_bytes(),
            400,
            "invalid_request_error",
        );
    }
}

#[test]
fn track_is_refused_with_405_like_trace() {
    expect_refused(
        &[],
        b"TRACK /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n",
        405,
        "invalid_request_error",
    );
}

/// A listener on 127.0.0.1 whose accept queue is full: Linux drops further SYNs, so a
/// connect to it hangs (the loopback stand-in for an unreachable host that drops packets).
fn full_listener() -> (std::os::fd::OwnedFd, u16, Vec<std::net::TcpStream>) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; sockaddr_in is sized.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        let mut bound: libc::sockaddr_in = std::mem::zeroed();
        let mut blen = len;
        assert_eq!(
            libc::getsockname(fd, (&mut bound as *mut libc::sockaddr_in).cast(), &mut blen),
            0
        );
        let port = u16::from_be(bound.sin_port);
        // Fill the queue (backlog 0 admits one, sometimes two): connects that are never accepted.
        let mut held = Vec::new();
        for _ in 0..3 {
            if let Ok(s) = std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                std::time::Duration::from_millis(200),
            ) {
                held.push(s);
            }
        }
        (owned, port, held)
    }
}

#[test]
fn an_upstream_connect_that_hangs_gets_504_after_connect_timeout() {
    let (_listener, port, _held) = full_listener();
    let target = format!("http://127.0.0.1:{port}");
    let proxy = Proxy::spawn(&[("TARGET", &target), ("CONNECT_TIMEOUT", "300ms")], TOKEN);
    let started = std::time::Instant::now();
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    r.assert_proxy_error(504, "timeout_error");
    assert!(
        r.body_str().contains("upstream connect timed out"),
        "{}",
        r.body_str()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Soak finding: std listens with a backlog of 128, so a burst of connections beyond
/// MAX_CONNECTIONS overflowed the accept queue (the kernel drops SYNs; clients wait a second
/// or more). The queue now holds them.
#[test]
fn a_burst_of_connections_waits_in_the_accept_queue_instead_of_being_dropped() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[("MAX_CONNECTIONS", "1")]);
    // One connection holds the only slot; the others can only queue.
    let _held = std::net::TcpStream::connect(proxy.addr()).unwrap();
    let started = std::time::Instant::now();
    let mut queued = Vec::new();
    for i in 0..400 {
        let c = std::net::TcpStream::connect_timeout(&proxy.addr(), Duration::from_millis(500));
        assert!(c.is_ok(), "connect {i} was not queued");
        queued.push(c.unwrap());
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}
