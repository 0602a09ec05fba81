//! `LIMIT_TOKENS` through the real binary: the tokens the responses report (a JSON body's
//! `usage`, a stream's `message_start` and last `message_delta`) fill the window, all four
//! kinds together; a `count_tokens` request's never do. Each next request goes on the same
//! connection, which reads it only once the exchange before it (its usage recorded) is done.

use crate::support::client::BodyState;
use crate::support::wire::response_framing;
use crate::support::*;

/// A JSON answer whose `usage` reports `input` and `output` tokens.
fn json_usage(input: u64, output: u64) -> Vec<u8> {
    let body = format!(
        r#"{{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{{"type":"text","text":"ok"}}],"stop_reason":"end_turn","usage":{{"input_tokens":{input},"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":{output}}}}}"#
    );
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    [head.into_bytes(), body.into_bytes()].concat()
}

/// Answers `/v1/stream` with the whole SSE fixture (chunked), `count_tokens` with 5000 input
/// tokens (a `usage` object too, so only the path can keep them out), anything else with
/// `json_usage(input, output)`.
fn usage_upstream(input: u64, output: u64) -> impl Fn(&mut UpConn) + Send + Sync {
    move |c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            let answer = if req.head.target == "/v1/stream" {
                let mut b = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for ev in handlers::sse_events() {
                    b.extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
                    b.extend_from_slice(&ev);
                    b.extend_from_slice(b"\r\n");
                }
                b.extend_from_slice(b"0\r\n\r\n");
                b
            } else if req.head.target.ends_with("/count_tokens") {
                let body =
                    br#"{"input_tokens":5000,"usage":{"input_tokens":5000,"output_tokens":0}}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                [head.as_bytes(), body].concat()
            } else {
                json_usage(input, output)
            };
            if c.send(&answer).is_err() {
                return;
            }
        }
    }
}

fn assert_token_ceiling(r: &Response, secs: std::ops::RangeInclusive<u64>) {
    r.assert_proxy_error(429, "rate_limit_error");
    assert_eq!(
        r.body_str(),
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"proxy: token ceiling LIMIT_TOKENS reached"}}"#
    );
    let retry: u64 = r
        .head
        .header_str("retry-after")
        .expect("retry-after")
        .parse()
        .unwrap();
    assert!(secs.contains(&retry), "retry-after {retry}");
    assert_eq!(
        r.head.header_str("x-should-retry").as_deref(),
        Some("false")
    );
}

#[test]
fn the_tokens_of_json_answers_fill_the_window_and_count_tokens_never_does() {
    let up = Upstream::plain().serve(usage_upstream(60, 50));
    let proxy = process_proxy_for(&up, &[("LIMIT_TOKENS", "100/1h")]);
    let mut c = Client::connect(proxy.addr());
    // 5000 tokens estimated: not spent, not counted.
    c.send(post("/v1/messages/count_tokens", "{}"));
    assert_eq!(c.read_response_to("POST").unwrap().status(), 200);
    c.send(post("/v1/messages", "{}"));
    assert_eq!(c.read_response_to("POST").unwrap().status(), 200);
    // 110 tokens >= 100: refused for about the hour, and never forwarded.
    c.send(post("/v1/messages", "{}"));
    let r = c.read_response_to("POST").unwrap();
    assert_token_ceiling(&r, 3540..=3600);
    assert_eq!(up.requests().len(), 2);
    assert!(proxy.wait_for_stderr(
        "proxy: error: client: token ceiling LIMIT_TOKENS reached",
        IO_TIMEOUT
    ));
}

#[test]
fn the_tokens_of_a_stream_count_all_four_kinds_and_a_lifetime_ceiling_says_so() {
    // The fixture: 18342 input + 16384 cache read + 0 cache creation + 679 output = 35405.
    let up = Upstream::plain().serve(usage_upstream(1, 0));
    let proxy = process_proxy_for(&up, &[("LIMIT_TOKENS", "35406")]);
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/stream", r#"{"stream":true}"#));
    let head = c.read_head().expect("the stream's head");
    assert_eq!(head.status, 200);
    let framing = response_framing(&head, "POST").unwrap();
    let (mut acc, mut st) = (Vec::new(), BodyState::default());
    let more = c
        .read_body_until(framing, &mut acc, b"\0never\0", &mut st)
        .unwrap();
    assert!(!more && st.done);
    assert_eq!(
        acc,
        handlers::sse_events().concat(),
        "the stream was relayed whole"
    );
    // 35405 < 35406: one more request, of one token.
    c.send(post("/v1/messages", "{}"));
    assert_eq!(c.read_response_to("POST").unwrap().status(), 200);
    // 35406 reached, for the process's lifetime.
    c.send(post("/v1/messages", "{}"));
    let r = c.read_response_to("POST").unwrap();
    assert_token_ceiling(&r, 3600..=3600);
    assert_eq!(up.requests().len(), 2);
}
