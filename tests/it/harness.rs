//! Self-tests of the harness: the fixture upstreams and the raw client, without the proxy.

use std::io::Write;

use crate::support::wire::{chunked, Wire};
use crate::support::*;

#[test]
fn plain_upstream_records_raw_bytes_and_answers_the_raw_client() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let mut c = Client::connect(up.addr());
    let req = "GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-One: 1\r\n\r\n";
    c.send(req);
    let r = c.read_response();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body_str(), req);
    assert_eq!(up.connection_count(), 1);
    assert_eq!(up.received(), vec![req.as_bytes().to_vec()]);
    let only = up.only_request();
    assert_eq!(only.head.target, "/a?b=c");
    assert_eq!(only.header("x-one"), Some(&b"1"[..]));
}

#[test]
fn upstream_decodes_chunked_bodies_and_reports_extensions_and_trailers() {
    let up = Upstream::plain().serve(handlers::fixed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ));
    let mut c = Client::connect(up.addr());
    c.send("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n");
    assert_eq!(c.read_response().status(), 200);
    let req = up.only_request();
    assert_eq!(req.body.data, b"abcde");
    assert!(req.body.had_extensions);
    assert_eq!(req.body.trailers, b"X-T: 1\r\n");
}

#[test]
fn client_reads_pipelined_responses_and_detects_close() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let mut c = Client::connect(up.addr());
    let rs = pipeline(
        &mut c,
        &[
            ("GET", get("/1").into_bytes()),
            ("HEAD", b"HEAD /2 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            ("POST", post("/3", "{}").into_bytes()),
        ],
    );
    assert_eq!(rs[0].body_str(), "/1");
    assert_eq!(rs[1].body_str(), "", "HEAD response has no body");
    assert_eq!(rs[2].body_str(), "/3");
    assert!(!c.is_closed(std::time::Duration::from_millis(100)));
    c.shutdown_write();
    assert!(c.is_closed(CLOSE_BOUND));
}

#[test]
fn client_decodes_chunked_responses_and_flags_truncation() {
    let body = chunked(b"hello world", &[3, 5]);
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    resp.extend_from_slice(&body);
    let up = Upstream::plain().serve(handlers::fixed_then_close(&resp));
    let mut c = Client::connect(up.addr());
    c.send(get("/"));
    let r = c.read_response();
    assert_eq!(r.body(), b"hello world");
    assert_eq!(r.body.raw, body);

    let up = Upstream::plain().serve(handlers::fixed_then_close(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    ));
    let mut c = Client::connect(up.addr());
    c.send(get("/"));
    let r = c.read_response_lenient("GET").unwrap();
    assert!(!r.body.complete);
    assert_eq!(r.body(), b"abc");
}

#[test]
fn tls_upstream_serves_a_client_trusting_its_ca_and_records_sni_and_alpn() {
    let up = Upstream::tls().serve(handlers::echo_head());
    let cfg = up.ca().client_config(&[b"http/1.1"]);
    let s = crate::support::tls::connect(cfg, "localhost", up.addr()).unwrap();
    let mut w = Wire::new(s);
    let req = b"GET /tls HTTP/1.1\r\nHost: localhost\r\n\r\n";
    w.stream.write_all(req).unwrap();
    w.stream.flush().unwrap();
    let head =
        crate::support::wire::ResponseHead::parse(&w.read_head_bytes().unwrap().unwrap()).unwrap();
    assert_eq!(head.status, 200);
    let body = w
        .read_body(crate::support::wire::response_framing(&head, "GET").unwrap())
        .unwrap();
    assert_eq!(body.data, req);
    let info = &up.conn_info()[0];
    assert!(info.handshake_ok);
    assert_eq!(info.sni.as_deref(), Some("localhost"));
    assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(info.received, req);
    assert!(std::fs::read_to_string(up.ca_file())
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn tls_upstream_is_rejected_by_a_client_with_another_ca() {
    let up = Upstream::tls().serve(handlers::echo_head());
    let other = crate::support::tls::TestCa::new("other");
    let s = crate::support::tls::connect(other.client_config(&[]), "localhost", up.addr()).unwrap();
    let mut w = Wire::new(s);
    assert!(w.stream.write_all(b"GET / HTTP/1.1\r\n\r\n").is_err() || w.fill().is_err());
    assert!(up.received_all().is_empty());
}

#[test]
fn lockstep_sse_handler_waits_for_each_step() {
    let events = handlers::sse_events();
    assert!(events.len() > 10);
    assert!(events[0].starts_with(b"event: message_start"));
    let steps = Steps::new();
    let up = Upstream::plain().serve(handlers::sse_lockstep(
        events[..3].to_vec(),
        steps.clone(),
        true,
    ));
    let mut c = Client::connect(up.addr());
    c.send(get("/sse"));
    let head = c.read_head().unwrap();
    let framing = crate::support::wire::response_framing(&head, "GET").unwrap();
    let mut acc = Vec::new();
    let mut st = crate::support::client::BodyState::default();
    for (i, ev) in events[..3].iter().enumerate() {
        let mut want = events[..i].concat();
        want.extend_from_slice(ev);
        assert!(c
            .read_body_until(framing, &mut acc, &want, &mut st)
            .unwrap());
        assert_eq!(acc, want);
        steps.step();
    }
    let mut rest = Vec::new();
    assert!(!c
        .read_body_until(framing, &mut rest, b"never", &mut st)
        .unwrap());
    assert!(st.done && rest.is_empty());
}

#[test]
fn gate_times_out_when_never_opened() {
    let g = Gate::new();
    assert!(!g.wait(std::time::Duration::from_millis(20)));
    g.open();
    assert!(g.wait(std::time::Duration::from_millis(20)));
}

#[test]
fn chunked_encoder_round_trips_through_the_wire_reader() {
    let mut rng = Rng::new(7);
    let data = rng.bytes(10_000);
    let enc = chunked(&data, &[1, 7, 4096]);
    let mut w = Wire::new(std::io::Cursor::new(enc.clone()));
    let body = w.read_body(Framing::Chunked).unwrap();
    assert_eq!(body.data, data);
    assert_eq!(body.raw, enc);
}
