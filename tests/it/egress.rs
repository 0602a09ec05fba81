//! Through a corporate egress proxy: TARGET is reached through an HTTP/1.1 CONNECT tunnel,
//! TLS to TARGET runs inside it (verified against TARGET's name), the egress proxy sees only
//! the CONNECT head and ciphertext, its credentials go to it alone, and every failure says
//! which step failed. A real tinyproxy (Debian's package) and small in-test proxies that do
//! what a real one will not do on demand.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::support::*;

/// What the in-test egress proxy does with a CONNECT.
#[derive(Clone, Copy)]
enum Mode {
    /// Opens the tunnel.
    Tunnel,
    /// Opens it only with `Proxy-Authorization: Basic <this>`, else 407.
    RequireAuth(&'static str),
    /// Answers with this status and closes.
    Status(u16),
    /// Reads the CONNECT and never answers.
    Stall,
    /// Answers something that is not HTTP.
    Garbage,
}

/// A CONNECT proxy on loopback that records every byte its clients send.
struct ConnectProxy {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    connections: Arc<AtomicUsize>,
}

impl ConnectProxy {
    fn spawn(mode: Mode) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<u8>>> = Arc::default();
        let connections: Arc<AtomicUsize> = Arc::default();
        let (r, n) = (received.clone(), connections.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                n.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                thread::spawn(move || serve(client, mode, r));
            }
        });
        ConnectProxy {
            addr,
            received,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(mut client: TcpStream, mode: Mode, record: Arc<Mutex<Vec<u8>>>) {
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    record.lock().unwrap().extend_from_slice(&head);
    let text = String::from_utf8_lossy(&head).into_owned();
    let authority = text.split(' ').nth(1).unwrap_or("").to_string();
    // As real proxies do: the refusal carries a body, written with the head.
    let answer = |client: &mut TcpStream, status: u16| {
        let body = "<html><body>Access denied</body></html>";
        let reply = format!(
            "HTTP/1.1 {status} Refused\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(reply.as_bytes());
    };
    match mode {
        Mode::Status(s) => answer(&mut client, s),
        Mode::Garbage => {
            let _ = client.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
        }
        Mode::Stall => {
            let _ = client.read(&mut [0u8; 1]);
        }
        Mode::RequireAuth(b64)
            if !text.contains(&format!("Proxy-Authorization: Basic {b64}\r\n")) =>
        {
            answer(&mut client, 407)
        }
        Mode::Tunnel | Mode::RequireAuth(_) => {
            let Ok(upstream) = TcpStream::connect(authority.as_str()) else {
                return answer(&mut client, 502);
            };
            let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
            pump(client, upstream, record);
        }
    }
}

/// Copies both ways until either side closes; records what the client sent.
fn pump(client: TcpStream, upstream: TcpStream, record: Arc<Mutex<Vec<u8>>>) {
    let (mut c_in, mut u_out) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let up = thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = c_in.read(&mut buf) {
            if n == 0 || u_out.write_all(&buf[..n]).is_err() {
                break;
            }
            record.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        let _ = u_out.shutdown(Shutdown::Write);
    });
    let (mut u_in, mut c_out) = (upstream, client);
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = u_in.read(&mut buf) {
        if n == 0 || c_out.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = c_out.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// A TLS upstream that answers 200 with the request head, and a proxy reaching it through
/// `egress_url` with the test CA trusted.
fn tls_setup(egress_url: &str, extra: &[(&str, &str)]) -> (Upstream, Proxy) {
    let up = Upstream::tls().serve(handlers::echo_head());
    let (target, ca) = (up.target_url(), up.ca_file());
    let mut envs = vec![
        ("TARGET", target.as_str()),
        ("TARGET_CA_FILE", ca.as_str()),
        ("HTTPS_PROXY", egress_url),
        ("CONNECT_TIMEOUT", "2s"),
    ];
    envs.extend_from_slice(extra);
    let proxy = Proxy::spawn(&envs, TOKEN);
    (up, proxy)
}

#[test]
fn through_a_connect_tunnel_target_is_verified_and_the_egress_proxy_sees_only_ciphertext() {
    let egress = ConnectProxy::spawn(Mode::Tunnel);
    let (up, proxy) = tls_setup(&egress.url(), &[]);
    assert!(proxy.wait_for_stderr(
        &format!("proxy: egress proxy {} (from HTTPS_PROXY)", egress.addr),
        IO_TIMEOUT
    ));
    for path in ["/v1/models", "/v1/models/again"] {
        let r = roundtrip(proxy.addr(), get(path));
        assert_eq!(r.status(), 200, "{}", r.body_str());
    }
    let reqs = up.wait_requests(2, IO_TIMEOUT);
    assert_eq!(
        reqs[0].head.all("authorization"),
        [format!("Bearer {TOKEN}").as_bytes()]
    );
    assert_eq!(
        egress.connections.load(Ordering::SeqCst),
        1,
        "the tunnel is pooled and reused"
    );
    let seen = egress.received();
    let connect = format!(
        "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n",
        port = up.port()
    );
    assert!(
        seen.starts_with(connect.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&seen[..80.min(seen.len())])
    );
    let tunnelled = &seen[connect.len()..];
    assert!(
        tunnelled.len() > 200 && tunnelled[0] == 0x16,
        "a TLS handshake follows"
    );
    for clear in [TOKEN.as_bytes(), b"Authorization", b"/v1/models"] {
        assert!(
            crate::support::wire::find(tunnelled, clear).is_none(),
            "{:?} in clear",
            String::from_utf8_lossy(clear)
        );
    }
}

#[test]
fn egress_credentials_go_to_the_egress_proxy_alone_and_are_never_logged() {
    // base64("us@er:p:ss"): the URL's userinfo is percent-decoded first.
    let egress = ConnectProxy::spawn(Mode::RequireAuth("dXNAZXI6cDpzcw=="));
    let url = format!("http://us%40er:p%3Ass@{}", egress.addr);
    let (up, proxy) = tls_setup(&url, &[]);
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    assert!(!up.only_request().head.has("proxy-authorization"));
    let stderr = proxy.stderr_so_far();
    for secret in ["p:ss", "p%3Ass", "us%40er", "dXNA"] {
        assert!(!stderr.contains(secret), "{secret} logged: {stderr}");
    }
    assert!(stderr.contains(&format!("egress proxy {} (from HTTPS_PROXY)", egress.addr)));
}

#[test]
fn a_refused_connect_is_a_502_that_names_the_status_and_the_egress_proxy() {
    for (mode, url_auth, status) in [
        (Mode::RequireAuth("dXNlcjpwYXNz"), "", 407),
        (Mode::RequireAuth("dXNlcjpwYXNz"), "user:wrong@", 407),
        (Mode::Status(403), "", 403),
    ] {
        let egress = ConnectProxy::spawn(mode);
        let url = format!("http://{url_auth}{}", egress.addr);
        let (up, proxy) = tls_setup(&url, &[]);
        let r = roundtrip(proxy.addr(), get("/v1/models"));
        r.assert_proxy_error(502, "api_error");
        let want = format!("proxy: egress proxy refused CONNECT ({status})");
        assert!(r.body_str().contains(&want), "{}", r.body_str());
        let line = format!(
            "proxy: egress proxy {}: upstream: egress proxy refused CONNECT ({status})",
            egress.addr
        );
        assert!(
            proxy.wait_for_stderr(&line, IO_TIMEOUT),
            "{}",
            proxy.stderr_so_far()
        );
        assert!(!proxy.stderr_so_far().contains("wrong"));
        up.assert_untouched();
    }
}

#[test]
fn an_egress_proxy_that_is_down_stalls_or_speaks_garbage_fails_clearly() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let stall = ConnectProxy::spawn(Mode::Stall);
    let garbage = ConnectProxy::spawn(Mode::Garbage);
    let cases = [
        (
            format!("http://{closed}"),
            502,
            "api_error",
            "egress proxy unreachable",
        ),
        (
            stall.url(),
            504,
            "timeout_error",
            "egress proxy tunnel timed out",
        ),
        (
            garbage.url(),
            502,
            "api_error",
            "egress proxy sent a malformed answer",
        ),
    ];
    for (url, status, kind, reason) in cases {
        let (up, proxy) = tls_setup(&url, &[("CONNECT_TIMEOUT", "500ms")]);
        let r = roundtrip(proxy.addr(), get("/v1/models"));
        r.assert_proxy_error(status, kind);
        assert!(r.body_str().contains(reason), "{}", r.body_str());
        assert!(proxy.wait_for_stderr(&format!("upstream: {reason}"), IO_TIMEOUT));
        up.assert_untouched();
    }
}

#[test]
fn no_proxy_reaches_target_directly() {
    let egress = ConnectProxy::spawn(Mode::Tunnel);
    // The TLS fixture is reached as `localhost`: names match names, as in curl.
    for no_proxy in ["localhost", "example.com, .LOCALHOST.", "*"] {
        let (_up, proxy) = tls_setup(&egress.url(), &[("NO_PROXY", no_proxy)]);
        assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
        assert!(!proxy.stderr_so_far().contains("egress proxy"));
    }
    assert_eq!(egress.connections.load(Ordering::SeqCst), 0);
}

#[test]
fn the_log_says_which_step_failed_when_target_cannot_be_reached() {
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let untrusted = Upstream::tls().serve(handlers::echo_head());
    let cases = [
        (
            format!("http://{refused}"),
            "upstream unreachable: connection refused",
        ),
        (
            "https://name-that-does-not-resolve.invalid".to_string(),
            "upstream unreachable: name resolution failed",
        ),
        (
            untrusted.target_url(),
            "upstream TLS failure: certificate not trusted",
        ),
    ];
    for (target, reason) in cases {
        let proxy = Proxy::spawn(&[("TARGET", &target), ("CONNECT_TIMEOUT", "5s")], TOKEN);
        let r = roundtrip(proxy.addr(), get("/v1/models"));
        r.assert_proxy_error(502, "api_error");
        assert!(
            proxy.wait_for_stderr(&format!("proxy: error: upstream: {reason}"), IO_TIMEOUT),
            "{}",
            proxy.stderr_so_far()
        );
    }
}

/// Debian's tinyproxy on loopback, allowed to CONNECT to `port`; killed when dropped.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
    dir: PathBuf,
}

impl Tinyproxy {
    /// Panics when tinyproxy is not installed (its test is ignored unless asked for).
    fn start(connect_port: u16) -> Tinyproxy {
        require_tool("tinyproxy", "tinyproxy");
        let dir = std::env::temp_dir().join(format!(
            "alp-tinyproxy-{}-{connect_port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("tinyproxy.log");
        let conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nConnectPort {connect_port}\n\
             LogFile \"{}\"\nLogLevel Connect\nMaxClients 20\nDisableViaHeader Yes\n",
            log.display()
        );
        std::fs::write(dir.join("tinyproxy.conf"), conf).unwrap();
        let child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(dir.join("tinyproxy.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        // Ready when it accepts connections (bounded).
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tinyproxy did not start"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Tinyproxy {
            child,
            port,
            log,
            dir,
        }
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs tinyproxy"]
fn a_real_tinyproxy_carries_the_tunnel_to_a_tls_target() {
    let up = Upstream::tls().serve(handlers::echo_head());
    let tp = Tinyproxy::start(up.port());
    let (target, ca) = (up.target_url(), up.ca_file());
    let url = format!("http://127.0.0.1:{}", tp.port);
    let envs = [
        ("TARGET", target.as_str()),
        ("TARGET_CA_FILE", ca.as_str()),
        ("https_proxy", url.as_str()),
    ];
    let proxy = Proxy::spawn(&envs, TOKEN);
    for path in ["/v1/messages", "/v1/models"] {
        let r = roundtrip(proxy.addr(), post(path, "{}"));
        assert_eq!(r.status(), 200, "{}", r.body_str());
    }
    let reqs = up.wait_requests(2, IO_TIMEOUT);
    assert_eq!(
        reqs[0].head.all("authorization"),
        [format!("Bearer {TOKEN}").as_bytes()]
    );
    assert_eq!(up.connection_count(), 1, "one tunnel, pooled");
    let log = std::fs::read_to_string(&tp.log).unwrap_or_default();
    assert!(
        log.contains("CONNECT"),
        "tinyproxy logged no CONNECT: {log}"
    );
    assert!(!log.contains(TOKEN));
}

#[test]
fn an_extra_ca_is_trusted_beside_the_built_in_roots() {
    // As for a TLS-inspecting egress proxy: its CA added, the Mozilla roots kept.
    let up = Upstream::tls().serve(handlers::echo_head());
    let (target, ca) = (up.target_url(), up.ca_file());
    let proxy = Proxy::spawn(&[("TARGET", &target), ("TARGET_EXTRA_CA_FILE", &ca)], TOKEN);
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
}
