//! HTTPS targets: certificates verified against TARGET_CA_FILE (or the built-in roots), SNI and
//! ALPN sent for the target; any verification failure is a 502 and no plaintext is sent.

use crate::support::*;

#[test]
fn a_tls_upstream_trusted_through_target_ca_file_gets_the_request() {
    let up = Upstream::tls().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), post("/v1/messages?beta=true", "{}"));
    assert_eq!(r.status(), 200, "{}", r.body_str());
    let want = expected_head(
        "POST",
        "/v1/messages?beta=true",
        &format!("localhost:{}", up.port()),
        &["Content-Type: application/json"],
        Some("Content-Length: 2"),
    );
    assert_eq!(up.only_request().head_str(), want);
    assert_eq!(r.body_str(), masked(&want));
}

#[test]
fn the_tls_client_sends_the_target_host_as_sni_and_offers_http_1_1() {
    let up = Upstream::tls().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    let info = &up.conn_info()[0];
    assert!(info.handshake_ok);
    assert_eq!(info.sni.as_deref(), Some("localhost"));
    assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[test]
fn a_tls_upstream_not_trusted_by_the_built_in_roots_gives_502_and_sees_no_plaintext() {
    let up = Upstream::tls().serve(handlers::echo_head());
    let proxy = Proxy::spawn(&[("TARGET", &up.target_url())], TOKEN);
    let r = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
    r.assert_proxy_error(502, "api_error");
    assert!(
        up.received_all().is_empty(),
        "plaintext sent over an unverified connection"
    );
    assert!(up.conn_info().iter().all(|i| !i.handshake_ok));
}

#[test]
fn a_tls_upstream_signed_by_another_ca_gives_502() {
    let up = Upstream::tls().serve(handlers::echo_head());
    let other = crate::support::tls::TestCa::new("someone else").pem_file();
    let proxy = Proxy::spawn(
        &[
            ("TARGET", &up.target_url()),
            ("TARGET_CA_FILE", &other.path_str()),
        ],
        TOKEN,
    );
    let r = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
    r.assert_proxy_error(502, "api_error");
    assert!(up.received_all().is_empty());
}

#[test]
fn a_certificate_for_another_name_gives_502() {
    let up = Upstream::tls()
        .sans(&["not-localhost.test"])
        .serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    r.assert_proxy_error(502, "api_error");
    assert!(up.received_all().is_empty());
}

#[test]
fn an_ip_literal_target_is_verified_against_the_ip_address() {
    let up = Upstream::tls()
        .sans(&["127.0.0.1"])
        .serve(handlers::echo_head());
    let target = format!("https://127.0.0.1:{}", up.port());
    let ca = up.ca_file();
    let proxy = Proxy::spawn(&[("TARGET", &target), ("TARGET_CA_FILE", &ca)], TOKEN);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(r.status(), 200, "{}", r.body_str());
    assert!(up
        .only_request()
        .head_str()
        .contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", up.port())));
}

#[test]
fn an_upstream_that_never_completes_the_tls_handshake_gives_504_after_tls_timeout() {
    // A plain TCP listener that reads the ClientHello and never answers.
    let up = Upstream::plain().serve(|c: &mut UpConn| {
        c.wait_peer_close(IO_TIMEOUT);
    });
    let ca = crate::support::tls::TestCa::new("unused").pem_file();
    let target = format!("https://localhost:{}", up.port());
    let proxy = Proxy::spawn(
        &[
            ("TARGET", &target),
            ("TARGET_CA_FILE", &ca.path_str()),
            ("TLS_TIMEOUT", "300ms"),
        ],
        TOKEN,
    );
    let t = std::time::Instant::now();
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    r.assert_proxy_error(504, "timeout_error");
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    assert!(!crate::support::wire::contains(
        &up.received_all(),
        TOKEN.as_bytes()
    ));
}

#[test]
fn a_plain_http_upstream_behind_an_https_target_gives_502() {
    // What a plain HTTP server does with a ClientHello: answer 400 and close, at once.
    let up = Upstream::plain().serve(|c: &mut UpConn| {
        let _ =
            c.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        c.close();
    });
    let ca = crate::support::tls::TestCa::new("unused").pem_file();
    let target = format!("https://localhost:{}", up.port());
    let proxy = Proxy::spawn(
        &[("TARGET", &target), ("TARGET_CA_FILE", &ca.path_str())],
        TOKEN,
    );
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    r.assert_proxy_error(502, "api_error");
}
