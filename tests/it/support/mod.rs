//! Test harness for the integration tests (`tests/it`, and `tests/process`, which includes it).
//!
//! - [`proxy`]: a proxy run in the test process through the library (settings from a map,
//!   token through the stdin intake, log captured): what most tests use.
//! - [`process`]: the real binary as a child process (clean env, token on stdin, stderr
//!   captured, listen address from the startup line), plus one-shot process runs for
//!   exit-code tests: for what only a process shows.
//! - [`paused`]: an async client and upstream for tests on tokio's paused clock.
//! - [`lines`]: a log or output stream collected as it comes, with bounded waits for lines.
//! - [`upstream`]: recording fixture upstreams, plain and TLS (CA made by rcgen at test time),
//!   with scripted handlers and canned ones.
//! - [`client`]: a raw HTTP/1.1 client speaking exact bytes, with keep-alive and pipelining helpers.
//! - [`wire`]: the strict HTTP/1.1 reader both sides share.
//! - [`tls`]: the test PKI.
//!
//! Everything listens on 127.0.0.1:0, uses blocking std I/O with timeouts, and every wait is
//! bounded. No test sleeps to synchronise: handlers wait on a [`upstream::Gate`] or
//! [`upstream::Steps`] that the test opens when it has observed what it needs.

// Each test file uses a different part of the harness.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod lines;
pub mod paused;
pub mod process;
pub mod proxy;
pub mod tls;
pub mod upstream;
pub mod websocket;
pub mod wire;

use std::time::Duration;

pub use client::Ending;
pub use client::{get, pipeline, post, roundtrip, Client, Response, Rng};
pub use process::{run, Outcome, ProcessProxy};
pub use proxy::Proxy;
pub use upstream::{handlers, Gate, Steps, UpConn, UpRequest, Upstream};
pub use wire::{Fields, Framing};

/// Bound on any single read, write or wait in the harness.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound for "the proxy closes the connection" checks.
pub const CLOSE_BOUND: Duration = Duration::from_secs(3);

/// The token most tests give the proxy. Distinctive so leaks are easy to find.
pub const TOKEN: &str = "sk-ant-test-REALTOKEN-0123456789abcdef";

/// Start an in-process proxy whose TARGET is `up` (with its CA file if TLS), plus `extra`
/// settings.
pub fn proxy_for(up: &Upstream, extra: &[(&str, &str)]) -> Proxy {
    let envs = envs_for(up, extra);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Proxy::spawn(&envs, TOKEN)
}

/// [`proxy_for`] as a child process.
pub fn process_proxy_for(up: &Upstream, extra: &[(&str, &str)]) -> ProcessProxy {
    let envs = envs_for(up, extra);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ProcessProxy::spawn(&envs, TOKEN)
}

/// TARGET for `up` (with its CA file if TLS), then `extra`.
fn envs_for<'a>(up: &Upstream, extra: &[(&'a str, &str)]) -> Vec<(&'a str, String)> {
    let target = up.target_url();
    let mut envs = vec![("TARGET", target.clone())];
    if target.starts_with("https") {
        envs.push(("TARGET_CA_FILE", up.ca_file()));
    }
    envs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    envs
}

/// An `http://127.0.0.1:PORT` URL where nothing listens (a port the OS just gave and took back).
pub fn dead_target() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// The upstream request head the proxy must produce for `target` and `fields` (each a full
/// `Name: value` line without CRLF), with the framing line if any and the token last.
pub fn expected_head(
    method: &str,
    target: &str,
    authority: &str,
    fields: &[&str],
    framing: Option<&str>,
) -> String {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: {authority}\r\n");
    for f in fields {
        s.push_str(f);
        s.push_str("\r\n");
    }
    // Always sent: token masking needs bodies that are not compressed.
    s.push_str("Accept-Encoding: identity\r\n");
    if let Some(f) = framing {
        s.push_str(f);
        s.push_str("\r\n");
    }
    s.push_str(&format!("Authorization: Bearer {TOKEN}\r\n\r\n"));
    s
}

/// `s` with every occurrence of [`TOKEN`] replaced by as many `*` (what the proxy's response
/// scrubbing makes of a reflected token).
pub fn masked(s: &str) -> String {
    s.replace(TOKEN, &"*".repeat(TOKEN.len()))
}

/// Send `req` and expect the proxy's `status`/`kind` error, a close, and an untouched upstream.
pub fn expect_refused(extra: &[(&str, &str)], req: &[u8], status: u16, kind: &str) {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, extra);
    let mut c = Client::connect(proxy.addr());
    let _ = c.try_send(req);
    let r = c
        .read_response_to("GET")
        .unwrap_or_else(|e| panic!("no {status} response: {e}"));
    r.assert_proxy_error(status, kind);
    assert!(
        c.is_closed(CLOSE_BOUND),
        "connection left open after {status}"
    );
    up.assert_untouched();
}

/// Asserts that the system tool `name` (from Debian package `package`) is installed. A test
/// that needs one is `#[ignore = "needs <tool>"]`, so a plain `cargo test` counts it as
/// ignored rather than passing it unrun; run with `--include-ignored` (as .ci/run does, having
/// installed the tools), a missing tool is a failure, not a skip.
pub fn require_tool(name: &str, package: &str) {
    let found = std::process::Command::new(name)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{name} is missing: `apt-get install {package}` (.ci/run does)"
    );
}
