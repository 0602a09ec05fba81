//! Upstream connections are reused only when the previous exchange ended cleanly: never after
//! excess bytes, a close, or a framing doubt (docs/http-rules.md §7.1, R30).

use crate::support::wire::request_framing;
use crate::support::*;

/// Wait until the proxy has logged the exchange for `path`: by then it has returned (or not)
/// the upstream connection to its pool.
fn settled(proxy: &Proxy, path: &str) {
    assert!(
        proxy.wait_for_stderr(&format!("proxy: GET {path} 200 "), IO_TIMEOUT),
        "no log line for {path}"
    );
}

#[test]
fn a_clean_upstream_connection_is_reused_for_the_next_request() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[]);
    assert_eq!(roundtrip(proxy.addr(), get("/a")).body_str(), "/a");
    settled(&proxy, "/a");
    assert_eq!(roundtrip(proxy.addr(), get("/b")).body_str(), "/b");
    let reqs = up.wait_requests(2, IO_TIMEOUT);
    assert_eq!(
        (reqs[0].conn, reqs[1].conn),
        (0, 0),
        "second request did not reuse the idle connection"
    );
}

#[test]
fn with_pool_max_idle_0_every_request_gets_a_new_upstream_connection() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[("POOL_MAX_IDLE", "0")]);
    roundtrip(proxy.addr(), get("/a"));
    settled(&proxy, "/a");
    roundtrip(proxy.addr(), get("/b"));
    let reqs = up.wait_requests(2, IO_TIMEOUT);
    assert_ne!(reqs[0].conn, reqs[1].conn);
}

#[test]
fn an_upstream_connection_that_sent_excess_bytes_is_not_reused() {
    // Connection 0 answers with bytes beyond its Content-Length (a would-be second response);
    // any request the proxy sends on it afterwards would be answered by that injected response.
    let up = Upstream::plain().serve(|c: &mut UpConn| {
        let first = c.index == 0;
        while let Some(req) = c.read_request() {
            let body = req.head.target.clone();
            let mut out = handlers::ok_text(&req, body.as_bytes());
            if first {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED");
            }
            if c.send(&out).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_for(&up, &[]);
    assert_eq!(roundtrip(proxy.addr(), get("/a")).body_str(), "/a");
    settled(&proxy, "/a");
    let r = roundtrip(proxy.addr(), get("/b"));
    assert_eq!(
        r.body_str(),
        "/b",
        "a response injected on a dirty connection was served"
    );
    let reqs = up.wait_requests(2, IO_TIMEOUT);
    assert_ne!(reqs[1].conn, 0, "the dirty connection was reused");
}

#[test]
fn an_upstream_connection_that_said_connection_close_is_not_reused() {
    let up = Upstream::plain().serve(|c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            let body = req.head.target.clone();
            let out = format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if c.send(out.as_bytes()).is_err() {
                return;
            }
            // Keep the socket open: only the header says not to reuse it.
        }
    });
    let proxy = proxy_for(&up, &[]);
    roundtrip(proxy.addr(), get("/a"));
    settled(&proxy, "/a");
    let r = roundtrip(proxy.addr(), get("/b"));
    assert_eq!(r.body_str(), "/b");
    let reqs = up.wait_requests(2, IO_TIMEOUT);
    assert_ne!(reqs[0].conn, reqs[1].conn);
}

#[test]
fn an_idle_upstream_connection_the_upstream_closed_is_not_used_for_the_next_post() {
    let closed = Gate::new();
    let g = closed.clone();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if let Some(req) = c.read_request() {
            let _ = c.send(&handlers::ok_text(&req, req.head.target.as_bytes()));
        }
        if c.index == 0 {
            c.close();
            g.open();
        }
    });
    let proxy = proxy_for(&up, &[]);
    assert_eq!(roundtrip(proxy.addr(), get("/a")).status(), 200);
    settled(&proxy, "/a");
    assert!(closed.wait(IO_TIMEOUT));
    // The pooled connection has been closed by the upstream (its FIN is on the proxy's socket).
    // The POST must go out on a fresh connection, once (a POST is never retried, R33).
    let r = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
    assert_eq!(r.status(), 200, "{}", r.body_str());
    let reqs = up.wait_requests(2, IO_TIMEOUT);
    let posts: Vec<usize> = reqs
        .iter()
        .filter(|q| q.head.method == "POST")
        .map(|q| q.conn)
        .collect();
    assert_eq!(posts, [1]);
}

/// Review finding: over TLS, bytes an upstream sends after its response may already be
/// decrypted inside rustls when the proxy's read ends exactly at the body's end; a TCP peek
/// cannot see them. The first response here is exactly one relay-buffer read long.
#[test]
fn excess_bytes_already_decrypted_inside_tls_are_noticed_before_reuse() {
    let up = Upstream::tls().serve(|c: &mut UpConn| {
        let first = c.index == 0;
        while let Some(req) = c.read_request() {
            let mut out = if first {
                let head_len = "HTTP/1.1 200 OK\r\nContent-Length: 2011\r\n\r\n".len();
                let body = "a".repeat(2048 - head_len);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            } else {
                handlers::ok_text(&req, req.head.target.as_bytes())
            };
            if first {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED");
            }
            if c.send(&out).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_for(&up, &[]);
    assert_eq!(roundtrip(proxy.addr(), get("/a")).status(), 200);
    settled(&proxy, "/a");
    let r = roundtrip(proxy.addr(), get("/b"));
    assert_eq!(
        r.body_str(),
        "/b",
        "a response injected inside TLS was served"
    );
}

/// Review finding: a response that ends at its head (HEAD, 204, 304) is where an upstream
/// that disagrees about a body would send one; such connections are not pooled.
#[test]
fn an_upstream_connection_is_not_reused_after_a_response_to_head() {
    let up = Upstream::plain().serve(|c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            let out = if req.head.method == "HEAD" {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec()
            } else {
                handlers::ok_text(&req, req.head.target.as_bytes())
            };
            if c.send(&out).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status(), 200);
    assert!(proxy.wait_for_stderr("proxy: HEAD /a 200 ", IO_TIMEOUT));
    assert_eq!(roundtrip(proxy.addr(), get("/b")).body_str(), "/b");
    let reqs = up.wait_requests(2, IO_TIMEOUT);
    assert_ne!(reqs[0].conn, reqs[1].conn, "reused after HEAD");
}

/// Attack review, round two (defect 2): the upstream answered before the request body was
/// sent whole. The client already gets `Connection: close`; the upstream connection must not
/// be pooled either, even when the upload happens to finish before the response body does
/// (the upstream may have stopped reading the body, or read it as something else).
#[test]
fn an_upstream_connection_that_answered_before_the_body_was_sent_is_not_reused() {
    let up = Upstream::plain().serve(|c: &mut UpConn| {
        while let Some(head) = c.read_head() {
            let Ok(framing) = request_framing(&head) else {
                return;
            };
            let early = head.target == "/early";
            if early
                && c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                    .is_err()
            {
                return;
            }
            if c.wire.read_body(framing).is_err() {
                return;
            }
            let answer: &[u8] = if early {
                b"hello"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"
            };
            if c.send(answer).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234");
    let head = c.read_head().expect("the early response head");
    assert!(
        head.says_close(),
        "the client is told the connection closes"
    );
    c.send("56789");
    let (rest, _) = c.read_until_end(IO_TIMEOUT);
    assert!(
        rest.starts_with(b"hello"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        proxy.wait_for_stderr("proxy: POST /early 200 ", IO_TIMEOUT),
        "no log line for /early"
    );
    let r = roundtrip(proxy.addr(), get("/after"));
    assert_eq!(r.body_str(), "next");
    assert_eq!(
        up.connection_count(),
        2,
        "the connection that answered early was reused"
    );
}

/// Soak finding: an idle pooled connection was closed only when the pool was next used, so an
/// idle proxy kept expired upstream sockets open. It now closes when it expires.
#[test]
fn an_expired_idle_upstream_connection_closes_without_another_request() {
    let closed = Gate::new();
    let g = closed.clone();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            if c.send(&handlers::ok_text(&req, b"ok")).is_err() {
                return;
            }
        }
        g.open();
    });
    let proxy = proxy_for(&up, &[("POOL_IDLE_TIMEOUT", "1s")]);
    assert_eq!(roundtrip(proxy.addr(), get("/a")).status(), 200);
    let bound = std::time::Duration::from_secs(5);
    assert!(closed.wait(bound), "the idle connection stayed open");
}
