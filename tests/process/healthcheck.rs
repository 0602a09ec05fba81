//! `agent-loop-proxy healthcheck`: GET /health on 127.0.0.1:$LISTEN_PORT; exit 0 on 200, else 1.
//! Reads no stdin and needs no token.

use std::time::Duration;

use crate::support::*;

const EXIT_BOUND: Duration = Duration::from_secs(10);

#[test]
fn healthcheck_exits_0_against_a_running_proxy_without_reading_stdin() {
    let proxy = Proxy::spawn(&[], TOKEN);
    let port = proxy.port().to_string();
    let out = run(
        &["healthcheck"],
        &[("LISTEN_PORT", &port)],
        None,
        false,
        EXIT_BOUND,
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[test]
fn healthcheck_exits_1_when_nothing_listens() {
    let dead = dead_target();
    let port = dead.rsplit(':').next().unwrap();
    let out = run(
        &["healthcheck"],
        &[("LISTEN_PORT", port)],
        None,
        false,
        EXIT_BOUND,
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
}

#[test]
fn healthcheck_exits_1_when_health_is_not_200() {
    let up = Upstream::plain().serve(handlers::fixed(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    ));
    let port = up.port().to_string();
    let out = run(
        &["healthcheck"],
        &[("LISTEN_PORT", &port)],
        None,
        false,
        EXIT_BOUND,
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    let req = up.only_request();
    assert_eq!(req.head.method, "GET");
    assert_eq!(req.head.target, "/health");
}

#[test]
fn healthcheck_gives_up_on_a_silent_server_within_a_short_timeout() {
    let up = Upstream::plain().serve(|c: &mut UpConn| {
        let _ = c.read_request();
        c.wait_peer_close(IO_TIMEOUT);
    });
    let port = up.port().to_string();
    let out = run(
        &["healthcheck"],
        &[("LISTEN_PORT", &port)],
        None,
        false,
        EXIT_BOUND,
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
}

/// A failed healthcheck names the address it tried and the cause.
#[test]
fn a_failed_healthcheck_names_the_address_and_the_cause() {
    let dead = dead_target();
    let port = dead.rsplit(':').next().unwrap();
    let out = run(
        &["healthcheck"],
        &[("LISTEN_PORT", port)],
        None,
        false,
        EXIT_BOUND,
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    let want = format!("proxy: healthcheck: 127.0.0.1:{port} (LISTEN_PORT): connection refused");
    assert!(out.stderr.contains(&want), "{:?}", out.stderr);

    let up = Upstream::plain().serve(handlers::fixed(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    ));
    let port = up.port().to_string();
    let out = run(
        &["healthcheck"],
        &[("LISTEN_PORT", &port)],
        None,
        false,
        EXIT_BOUND,
    );
    assert!(out.stderr.contains(": answered 503"), "{:?}", out.stderr);
}

/// A port already in use: the start fails naming the setting, the address and the cause.
#[test]
fn a_port_in_use_is_named_with_its_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run(&[], &[("LISTEN_PORT", &port)], None, false, EXIT_BOUND);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let want = format!("proxy: LISTEN_PORT: cannot listen on 127.0.0.1:{port}: address in use");
    assert!(out.stderr.contains(&want), "{:?}", out.stderr);
}
