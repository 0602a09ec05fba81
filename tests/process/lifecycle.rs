//! Shutdown with a stream in flight (tests/shutdown.rs covers plain requests): SIGTERM lets an
//! SSE stream finish with every event, refuses new connections meanwhile, and exits 0; a
//! stream that never ends is cut at SHUTDOWN_GRACE, without a fake ending, and the exit is
//! still 0.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::client::BodyState;
use crate::support::wire::response_framing;
use crate::support::*;

const EXIT_BOUND: Duration = Duration::from_secs(10);

/// Read `events[from..]` one at a time (response head already read), advancing `steps` after
/// each, with `acc`/`st` carrying what was read so far.
fn receive_events(
    c: &mut Client,
    events: &[Vec<u8>],
    range: std::ops::Range<usize>,
    steps: &Steps,
    acc: &mut Vec<u8>,
    st: &mut BodyState,
) {
    let mut want: Vec<u8> = events[..range.start].concat();
    for i in range {
        want.extend_from_slice(&events[i]);
        let got = c
            .read_body_until(Framing::Chunked, acc, &want, st)
            .unwrap_or_else(|e| panic!("event {i} never arrived whole: {e}"));
        assert!(got, "event {i} missing; body ended early");
        assert_eq!(*acc, want, "event {i}: received more than was sent");
        steps.step();
    }
}

/// After SIGTERM, connecting must not hang: within a bound, an attempt is refused outright.
/// An attempt that still connects (it raced the listener's close) must be answered or closed
/// promptly, never left hanging.
fn assert_new_connections_refused(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(e) => {
                // Refused, or reset: a connect the kernel had queued just before the listener
                // closed is reset with it. Either way, nothing hangs.
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
                    ),
                    "connect during the drain: {e}"
                );
                return;
            }
            Ok(s) => {
                let mut c = Client {
                    wire: crate::support::wire::Wire::new(s),
                };
                c.set_read_timeout(Duration::from_secs(2));
                let _ = c.try_send(get("/health"));
                let t = Instant::now();
                match c.wire.fill() {
                    Ok(_) => {}
                    Err(e) => assert!(
                        !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                        "a connection made during the drain hung for {:?}",
                        t.elapsed()
                    ),
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the listener kept accepting connections during the drain"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_sse_stream_in_flight_at_sigterm_finishes_with_every_event_and_the_proxy_exits_0() {
    let events = handlers::sse_events();
    assert!(events.len() > 10);
    let steps = Steps::new();
    let up = Upstream::plain().serve(handlers::sse_lockstep(events.clone(), steps.clone(), true));
    let mut proxy = process_proxy_for(&up, &[("SHUTDOWN_GRACE", "30s")]);
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/messages", r#"{"stream":true}"#));
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    assert_eq!(response_framing(&head, "POST").unwrap(), Framing::Chunked);
    let (mut acc, mut st) = (Vec::new(), BodyState::default());
    receive_events(&mut c, &events, 0..3, &steps, &mut acc, &mut st);

    // SIGTERM mid-stream; the upstream is still waiting for the test to release event 3.
    proxy.signal("TERM");
    assert!(
        proxy.wait_for_stderr("shutting down", EXIT_BOUND),
        "{}",
        proxy.stderr_so_far()
    );
    assert_new_connections_refused(proxy.addr());
    assert!(
        proxy.wait_exit(Duration::from_millis(1)).is_none(),
        "the proxy exited with a stream in flight"
    );

    // Release the rest of the stream: every event arrives, then the last-chunk.
    receive_events(&mut c, &events, 3..events.len(), &steps, &mut acc, &mut st);
    let mut rest = Vec::new();
    let more = c
        .read_body_until(Framing::Chunked, &mut rest, b"\0never\0", &mut st)
        .expect("end of body");
    assert!(
        !more && st.done && rest.is_empty(),
        "unexpected bytes after the last event"
    );
    assert_eq!(acc, events.concat());
    // The drained connection is closed, and the process exits 0 because the drain ended.
    assert!(
        c.is_closed(CLOSE_BOUND),
        "connection left open after the drain"
    );
    let status = proxy.wait_exit(EXIT_BOUND).expect("exit after the drain");
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr_so_far());
    let stderr = proxy.stderr_so_far();
    assert!(stderr.contains("drained; exiting"), "{stderr}");
    assert!(stderr.contains("proxy: POST /v1/messages 200 "), "{stderr}");
}

#[test]
fn a_stream_that_never_ends_is_cut_at_shutdown_grace_without_a_fake_ending_and_the_exit_is_0() {
    let started = Gate::new();
    let s = started.clone();
    // A ping every 20 ms, for as long as anyone reads (bounded so a stray thread ends).
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        if c.send(head).is_err() {
            return;
        }
        let ping = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";
        let chunk = crate::support::wire::chunked(ping, &[ping.len()]);
        let chunk = &chunk[..chunk.len() - 5];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if c.send(chunk).is_err() {
                return;
            }
            s.open();
            thread::sleep(Duration::from_millis(20));
        }
    });
    let mut proxy = process_proxy_for(&up, &[("SHUTDOWN_GRACE", "500ms")]);
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/messages", r#"{"stream":true}"#));
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    assert!(started.wait(IO_TIMEOUT));
    assert!(c.wait_buffered(b"event: ping"), "the stream never started");

    let t = Instant::now();
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(EXIT_BOUND)
        .expect("still running after the grace period");
    let took = t.elapsed();
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr_so_far());
    assert!(
        took >= Duration::from_millis(450),
        "exited after {took:?}, before the grace period"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        proxy.stderr_so_far().contains("grace period over"),
        "{}",
        proxy.stderr_so_far()
    );
    // The client has a stream that stopped, never a last-chunk.
    match c.wire.read_body_lenient(Framing::Chunked) {
        Ok(body) => {
            assert!(!body.complete, "the cut stream got a last-chunk");
            assert!(contains_ping(&body.data));
        }
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset),
            "reading the cut stream: {e}"
        ),
    }
}

fn contains_ping(data: &[u8]) -> bool {
    crate::support::wire::contains(data, b"event: ping")
}
