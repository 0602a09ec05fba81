//! The ceilings of one process (`LIMIT_REQUESTS`, `LIMIT_CONCURRENT`), through the real
//! binary: the 429's status, fields and body; the refused request never reaches the upstream;
//! a stream running when a ceiling is reached runs to its end. (`LIMIT_TOKENS` needs the
//! response's usage read: `ceiling_tokens.rs`.)

use crate::support::client::BodyState;
use crate::support::wire::response_framing;
use crate::support::*;

/// Asserts `r` is a ceiling's refusal naming `setting`, with a `retry-after` in `secs`.
fn assert_ceiling(r: &Response, setting: &str, secs: std::ops::RangeInclusive<u64>) {
    r.assert_proxy_error(429, "rate_limit_error");
    assert_eq!(r.head.reason, "Too Many Requests");
    let what = match setting {
        "LIMIT_TOKENS" => "token",
        "LIMIT_REQUESTS" => "request",
        _ => "concurrency",
    };
    let body = format!(
        r#"{{"type":"error","error":{{"type":"rate_limit_error","message":"proxy: {what} ceiling {setting} reached"}}}}"#
    );
    assert_eq!(r.body_str(), body);
    let retry: u64 = r
        .head
        .header_str("retry-after")
        .expect("retry-after")
        .parse()
        .expect("retry-after in whole seconds");
    assert!(secs.contains(&retry), "retry-after {retry}");
    assert_eq!(
        r.head.header_str("x-should-retry").as_deref(),
        Some("false")
    );
    assert_eq!(
        r.head.header_str("content-type").as_deref(),
        Some("application/json")
    );
}

/// An upstream that streams the SSE fixture in lock-step (one event per `steps`) for a
/// request to `/v1/stream`, and answers any other request 200 with a small JSON body.
fn stream_or_json(events: Vec<Vec<u8>>, steps: Steps) -> impl Fn(&mut UpConn) + Send + Sync {
    move |c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            if req.head.target != "/v1/stream" {
                let body = br#"{"type":"message"}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if c.send(&[head.as_bytes(), body].concat()).is_err() {
                    return;
                }
                continue;
            }
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
            if c.send(head).is_err() {
                return;
            }
            for (i, ev) in events.iter().enumerate() {
                if i > 0 && !steps.wait_for(i, IO_TIMEOUT) {
                    c.abort();
                    return;
                }
                let mut b = format!("{:x}\r\n", ev.len()).into_bytes();
                b.extend_from_slice(ev);
                b.extend_from_slice(b"\r\n");
                if c.send(&b).is_err() {
                    return;
                }
            }
            if c.send(b"0\r\n\r\n").is_err() {
                return;
            }
        }
    }
}

/// Reads the stream's first event through `c` (its head already read) and steps once.
fn first_event(
    c: &mut Client,
    framing: Framing,
    acc: &mut Vec<u8>,
    st: &mut BodyState,
    events: &[Vec<u8>],
    steps: &Steps,
) {
    let got = c.read_body_until(framing, acc, &events[0], st).unwrap();
    assert!(got, "the first event did not arrive");
    steps.step();
}

/// Reads the rest of the stream in lock-step: it must be whole, nothing cut.
fn rest_of_stream(
    c: &mut Client,
    framing: Framing,
    acc: &mut Vec<u8>,
    st: &mut BodyState,
    events: &[Vec<u8>],
    steps: &Steps,
) {
    let mut want = events[0].clone();
    for (i, ev) in events.iter().enumerate().skip(1) {
        want.extend_from_slice(ev);
        let got = c.read_body_until(framing, acc, &want, st).unwrap();
        assert!(got, "event {i} missing: the stream was cut");
        steps.step();
    }
    let mut rest = Vec::new();
    let more = c
        .read_body_until(framing, &mut rest, b"\0never\0", st)
        .unwrap();
    assert!(
        !more && st.done && rest.is_empty(),
        "the stream did not end cleanly"
    );
    assert_eq!(*acc, events.concat());
}

#[test]
fn limit_requests_refuses_the_request_past_the_window_with_a_429_that_is_never_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let envs = [
        ("LIMIT_REQUESTS", "2/1m"),
        ("PHANTOM_TOKEN", "phantom-ceil"),
    ];
    let proxy = process_proxy_for(&up, &envs);
    let authed = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: proxy.test\r\nx-api-key: phantom-ceil\r\nContent-Length: 2\r\n\r\n{{}}"
        )
    };
    // Neither /health nor a request refused for its phantom token counts.
    for _ in 0..3 {
        assert_eq!(roundtrip(proxy.addr(), get("/health")).status(), 200);
    }
    let refused = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
    assert_eq!(refused.status(), 401);
    // A count_tokens request counts as a request.
    let path = "/v1/messages/count_tokens";
    assert_eq!(roundtrip(proxy.addr(), authed(path)).status(), 200);
    assert_eq!(
        roundtrip(proxy.addr(), authed("/v1/messages")).status(),
        200
    );
    let mut c = Client::connect(proxy.addr());
    c.send(authed("/v1/messages"));
    let r = c.read_response_to("POST").expect("the 429");
    assert_ceiling(&r, "LIMIT_REQUESTS", 1..=60);
    // As ALLOW_REQUESTS' 403: the unread body makes the connection unusable: closed.
    assert_eq!(r.head.header_str("connection").as_deref(), Some("close"));
    assert!(c.is_closed(CLOSE_BOUND));
    // A refused request counted nothing: it stays refused, and never reached the upstream.
    let again = roundtrip(proxy.addr(), authed("/v1/messages"));
    assert_ceiling(&again, "LIMIT_REQUESTS", 1..=60);
    assert_eq!(up.requests().len(), 2);
    // The access line and the error line of each refusal, the reason named, no token.
    assert!(proxy.wait_for_stderr_count(
        "proxy: error: client: request ceiling LIMIT_REQUESTS reached",
        2,
        IO_TIMEOUT
    ));
    let log = proxy.stderr_so_far();
    assert!(log.contains("proxy: POST /v1/messages 429 "), "{log}");
    assert!(
        !log.contains(TOKEN) && !log.contains("phantom-ceil"),
        "{log}"
    );
}

#[test]
fn a_lifetime_request_ceiling_answers_a_retry_after_above_a_minute() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = process_proxy_for(&up, &[("LIMIT_REQUESTS", "1")]);
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    assert_ceiling(&r, "LIMIT_REQUESTS", 3600..=3600);
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn limit_concurrent_refuses_a_request_while_a_stream_runs_and_the_stream_runs_to_its_end() {
    let events: Vec<Vec<u8>> = handlers::sse_events().into_iter().take(30).collect();
    let steps = Steps::new();
    let up = Upstream::plain().serve(stream_or_json(events.clone(), steps.clone()));
    let proxy = process_proxy_for(&up, &[("LIMIT_CONCURRENT", "1")]);
    let mut s = Client::connect(proxy.addr());
    s.send(post("/v1/stream", r#"{"stream":true}"#));
    let head = s.read_head().expect("the stream's head");
    assert_eq!(head.status, 200);
    let framing = response_framing(&head, "POST").unwrap();
    let (mut acc, mut st) = (Vec::new(), BodyState::default());
    first_event(&mut s, framing, &mut acc, &mut st, &events, &steps);
    // The stream holds the one slot: another request is refused, and never forwarded.
    let r = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
    assert_ceiling(&r, "LIMIT_CONCURRENT", 1..=1);
    assert_eq!(up.requests().len(), 1);
    rest_of_stream(&mut s, framing, &mut acc, &mut st, &events, &steps);
    // The stream's end gave the slot back: the connection reads its next request only
    // after the exchange, permit included, is done.
    s.send(post("/v1/messages", "{}"));
    assert_eq!(s.read_response_to("POST").unwrap().status(), 200);
    assert_eq!(up.requests().len(), 2);
}

#[test]
fn a_request_ceiling_reached_during_a_stream_never_cuts_it() {
    let events: Vec<Vec<u8>> = handlers::sse_events().into_iter().take(30).collect();
    let steps = Steps::new();
    let up = Upstream::plain().serve(stream_or_json(events.clone(), steps.clone()));
    let proxy = process_proxy_for(&up, &[("LIMIT_REQUESTS", "2/1h")]);
    let mut s = Client::connect(proxy.addr());
    s.send(post("/v1/stream", r#"{"stream":true}"#));
    let head = s.read_head().expect("the stream's head");
    let framing = response_framing(&head, "POST").unwrap();
    let (mut acc, mut st) = (Vec::new(), BodyState::default());
    first_event(&mut s, framing, &mut acc, &mut st, &events, &steps);
    // The second request reaches the ceiling, the third is refused: the stream goes on.
    assert_eq!(
        roundtrip(proxy.addr(), post("/v1/messages", "{}")).status(),
        200
    );
    let r = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
    assert_ceiling(&r, "LIMIT_REQUESTS", 3540..=3600);
    rest_of_stream(&mut s, framing, &mut acc, &mut st, &events, &steps);
    assert_eq!(up.requests().len(), 2);
}

#[test]
fn a_bad_ceiling_is_a_startup_error_naming_the_setting_and_not_the_value() {
    for (setting, value) in [
        ("LIMIT_TOKENS", "2000000/1w"),
        ("LIMIT_REQUESTS", "0/1m"),
        ("LIMIT_CONCURRENT", "two"),
    ] {
        let out = run(
            &[],
            &[(setting, value)],
            Some(b"sk-ant-x\n"),
            true,
            IO_TIMEOUT,
        );
        assert_eq!(out.code(), Some(1), "{setting}: {out:?}");
        assert!(
            out.stderr.starts_with(&format!("proxy: {setting}: ")),
            "{:?}",
            out.stderr
        );
        assert!(!out.stderr.contains(value), "{:?}", out.stderr);
    }
}
