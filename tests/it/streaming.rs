//! Response bodies are relayed as they arrive: the upstream sends one SSE event, then waits
//! until the test has seen it at the client before sending the next. A proxy that buffered
//! would deadlock here and the test would fail at its bound.

use crate::support::client::BodyState;
use crate::support::wire::response_framing;
use crate::support::*;

/// Read `events` one at a time through `c` (response head already read), advancing `steps`
/// after each; then the body must end.
fn receive_in_lockstep(c: &mut Client, framing: Framing, events: &[Vec<u8>], steps: &Steps) {
    let mut acc = Vec::new();
    let mut st = BodyState::default();
    let mut want = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        want.extend_from_slice(ev);
        let got = c
            .read_body_until(framing, &mut acc, &want, &mut st)
            .unwrap_or_else(|e| panic!("event {i} never arrived whole: {e}"));
        assert!(got, "event {i} missing; body ended early");
        assert_eq!(acc, want, "event {i}: received more than was sent");
        steps.step();
    }
    let mut rest = Vec::new();
    let more = c
        .read_body_until(framing, &mut rest, b"\0never\0", &mut st)
        .expect("end of body");
    assert!(
        !more && st.done && rest.is_empty(),
        "unexpected trailing bytes"
    );
}

#[test]
fn sse_events_reach_the_client_one_by_one_before_the_upstream_sends_the_next() {
    let events = handlers::sse_events();
    let steps = Steps::new();
    let up = Upstream::plain().serve(handlers::sse_lockstep(events.clone(), steps.clone(), true));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/messages", r#"{"stream":true}"#));
    let head = c
        .read_head()
        .expect("response head before the second event");
    assert_eq!(head.status, 200);
    let framing = response_framing(&head, "POST").unwrap();
    assert_eq!(framing, Framing::Chunked);
    receive_in_lockstep(&mut c, framing, &events, &steps);
    // The whole replay equals the fixture.
    let fixture = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/anthropic-stream.sse"
    ))
    .unwrap();
    assert_eq!(events.concat(), fixture);
    // And the connection is still good for another request.
    c.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response().status(), 200);
}

#[test]
fn a_close_delimited_event_stream_is_relayed_event_by_event_then_closed() {
    let events: Vec<Vec<u8>> = handlers::sse_events().into_iter().take(40).collect();
    let steps = Steps::new();
    let up = Upstream::plain().serve(handlers::sse_lockstep(events.clone(), steps.clone(), false));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/messages", r#"{"stream":true}"#));
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    let framing = response_framing(&head, "POST").unwrap();
    assert_eq!(framing, Framing::UntilClose);
    receive_in_lockstep(&mut c, framing, &events, &steps);
    assert!(c.is_closed(CLOSE_BOUND));
}

#[test]
fn sse_events_from_a_tls_upstream_reach_the_client_one_by_one() {
    let events: Vec<Vec<u8>> = handlers::sse_events().into_iter().take(60).collect();
    let steps = Steps::new();
    let up = Upstream::tls().serve(handlers::sse_lockstep(events.clone(), steps.clone(), true));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/messages", r#"{"stream":true}"#));
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    let framing = response_framing(&head, "POST").unwrap();
    receive_in_lockstep(&mut c, framing, &events, &steps);
}

#[test]
fn a_content_length_body_is_relayed_piece_by_piece_before_it_is_complete() {
    let pieces: [&[u8]; 3] = [b"first", b"-middle", b"-last"];
    let steps = Steps::new();
    let s = steps.clone();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let _ = c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n");
        for (i, p) in pieces.iter().enumerate() {
            if !s.wait_for(i, IO_TIMEOUT) {
                c.abort();
                return;
            }
            let _ = c.send(p);
        }
    });
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/slow"));
    let head = c.read_head().expect("head");
    let framing = response_framing(&head, "GET").unwrap();
    assert_eq!(framing, Framing::Length(17));
    let mut acc = Vec::new();
    let mut st = BodyState::default();
    let mut want = Vec::new();
    for p in pieces {
        want.extend_from_slice(p);
        assert!(
            c.read_body_until(framing, &mut acc, &want, &mut st)
                .expect("each piece relayed while the upstream waits"),
            "body ended early"
        );
        assert_eq!(acc, want);
        steps.step();
    }
}

#[test]
fn the_response_head_is_relayed_before_any_body_byte_exists() {
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let _ = c.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        if g.wait(IO_TIMEOUT) {
            let _ = c.send(b"4\r\ndone\r\n0\r\n\r\n");
        }
    });
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(get("/stream"));
    let head = c
        .read_head()
        .expect("head relayed while the body is pending");
    assert_eq!(head.status, 200);
    gate.open();
    let body = c.wire.read_body(Framing::Chunked).unwrap();
    assert_eq!(body.data, b"done");
}

#[test]
fn a_paced_sse_replay_arrives_complete_and_in_order_on_a_kept_alive_connection() {
    let events = handlers::sse_events();
    let up = Upstream::plain().serve(handlers::sse_paced(
        events.clone(),
        std::time::Duration::ZERO,
    ));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    for _ in 0..2 {
        c.send(post("/v1/messages", r#"{"stream":true}"#));
        let r = c.read_response_to("POST").expect("stream response");
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), events.concat());
    }
}
