//! SIGTERM / SIGINT: stop accepting, let in-flight requests finish within SHUTDOWN_GRACE, exit 0.

use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const EXIT_BOUND: Duration = Duration::from_secs(10);

#[test]
fn an_idle_proxy_exits_0_promptly_on_sigterm() {
    let mut proxy = ProcessProxy::spawn(&[], TOKEN);
    let t = Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(EXIT_BOUND).expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr_so_far());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn an_idle_proxy_exits_0_promptly_on_sigint() {
    let mut proxy = ProcessProxy::spawn(&[], TOKEN);
    proxy.signal("INT");
    let status = proxy.wait_exit(EXIT_BOUND).expect("exit after SIGINT");
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr_so_far());
}

#[test]
fn an_in_flight_request_completes_after_sigterm_then_the_proxy_exits_0() {
    let gate = Gate::new();
    let started = Gate::new();
    let (g, s) = (gate.clone(), started.clone());
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        s.open();
        if g.wait(IO_TIMEOUT) {
            let _ = c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nfinished");
        }
    });
    let mut proxy = process_proxy_for(&up, &[("SHUTDOWN_GRACE", "8s")]);
    let addr = proxy.addr();
    let client = thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(post("/v1/messages", "{}"));
        c.read_response()
    });
    assert!(
        started.wait(IO_TIMEOUT),
        "request never reached the upstream"
    );
    proxy.signal("TERM");
    // The listener closes at once: a new connection is refused or gets no answer.
    let refused = {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut refused = false;
        while Instant::now() < deadline {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Err(_) => {
                    refused = true;
                    break;
                }
                Ok(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        refused
    };
    gate.open();
    let r = client.join().expect("client thread");
    assert_eq!(r.status(), 200);
    assert_eq!(r.body_str(), "finished");
    let status = proxy.wait_exit(EXIT_BOUND).expect("exit after draining");
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr_so_far());
    assert!(refused, "the listener kept accepting after SIGTERM");
}

#[test]
fn a_request_still_running_at_the_end_of_the_grace_period_does_not_keep_the_proxy_alive() {
    let gate = Gate::new();
    let started = Gate::new();
    let (g, s) = (gate.clone(), started.clone());
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        s.open();
        g.wait(IO_TIMEOUT);
    });
    let mut proxy = process_proxy_for(&up, &[("SHUTDOWN_GRACE", "300ms")]);
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/messages", "{}"));
    assert!(started.wait(IO_TIMEOUT));
    let t = Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(EXIT_BOUND);
    gate.open();
    assert!(status.is_some(), "still running after the grace period");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let gate = Gate::new();
    let started = Gate::new();
    let (g, s) = (gate.clone(), started.clone());
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if c.read_request().is_none() {
            return;
        }
        s.open();
        g.wait(IO_TIMEOUT);
    });
    let mut proxy = process_proxy_for(&up, &[("SHUTDOWN_GRACE", "60s")]);
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/messages", "{}"));
    assert!(started.wait(IO_TIMEOUT));
    proxy.signal("TERM");
    // Give the first signal a chance to be seen as the first (bounded, not a synchronisation).
    let first_alone = proxy.wait_exit(Duration::from_millis(300));
    assert!(
        first_alone.is_none(),
        "exited without draining the in-flight request"
    );
    proxy.signal("TERM");
    let t = Instant::now();
    let status = proxy.wait_exit(Duration::from_secs(5));
    gate.open();
    assert!(status.is_some(), "second signal did not end the process");
    assert!(t.elapsed() < Duration::from_secs(3));
}
