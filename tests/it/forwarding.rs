//! What reaches the upstream: the token injected, the sandbox's credentials and hop-by-hop
//! fields gone, everything else byte for byte and in order, path and query under TARGET's base
//! path; and what comes back: the response relayed as received.

use crate::support::*;

#[test]
fn the_upstream_head_is_rebuilt_canonically_with_the_token_last() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let req = "POST /v1/messages?beta=true HTTP/1.1\r\n\
        Host: host.docker.internal:18080\r\n\
        User-Agent: claude-cli/2.0.0 (external, cli)\r\n\
        Authorization: Bearer sk-ant-phantom\r\n\
        anthropic-version: 2023-06-01\r\n\
        X-Api-Key: sk-ant-sandbox-key\r\n\
        Connection: keep-alive, X-Hop-Custom\r\n\
        X-Hop-Custom: must go\r\n\
        anthropic-beta: a\r\n\
        Keep-Alive: timeout=5\r\n\
        Proxy-Connection: keep-alive\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        TE: trailers\r\n\
        content-type: application/json\r\n\
        content-length: 2\r\n\
        X-Stainless-OS: Linux\r\n\
        anthropic-beta: b\r\n\
        accept: application/json\r\n\
        \r\n{}";
    let r = roundtrip(proxy.addr(), req);
    assert_eq!(r.status(), 200);
    let want = expected_head(
        "POST",
        "/v1/messages?beta=true",
        &up.authority(),
        &[
            "User-Agent: claude-cli/2.0.0 (external, cli)",
            "anthropic-version: 2023-06-01",
            "anthropic-beta: a",
            "content-type: application/json",
            "X-Stainless-OS: Linux",
            "anthropic-beta: b",
            "accept: application/json",
        ],
        Some("Content-Length: 2"),
    );
    let got = up.only_request();
    assert_eq!(got.head_str(), want);
    assert_eq!(got.body.data, b"{}");
    // Nothing else went upstream: the head and the two body bytes, exactly.
    assert_eq!(up.received_all(), [want.as_bytes(), b"{}"].concat());
    // The echo came back unchanged, except for the reflected token, which is masked.
    assert_eq!(r.body_str(), masked(&want));
}

#[test]
fn the_token_from_stdin_is_the_only_authorization_upstream() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(
        proxy.addr(),
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nauthorization: Bearer sandbox\r\nAUTHORIZATION: Basic eA==\r\n\r\n",
    );
    assert_eq!(r.status(), 200);
    let got = up.only_request();
    assert_eq!(
        got.all("authorization"),
        vec![format!("Bearer {TOKEN}").as_bytes()],
        "head was {}",
        got.head_str()
    );
}

#[test]
fn sandbox_credentials_are_removed_whatever_their_case() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(
        proxy.addr(),
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: k1\r\nX-API-KEY: k2\r\n\
         proxy-authorization: Basic eA==\r\nPROXY-AUTHORIZATION: Basic eQ==\r\nX-Keep: yes\r\n\r\n",
    );
    assert_eq!(r.status(), 200);
    let got = up.only_request();
    let head = got.head_str();
    assert!(!got.has("x-api-key"), "x-api-key forwarded: {head}");
    assert!(
        !got.has("proxy-authorization"),
        "proxy-authorization forwarded: {head}"
    );
    for secret in ["k1", "k2", "eA==", "eQ=="] {
        assert!(
            !head.contains(secret),
            "{secret} reached the upstream: {head}"
        );
    }
    assert_eq!(got.header("x-keep"), Some(&b"yes"[..]));
}

#[test]
fn underscore_look_alikes_of_credentials_never_reach_the_upstream() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send("GET /v1/models HTTP/1.1\r\nHost: x\r\nx_api_key: us-LEAK-1\r\nAuthorization_: us-LEAK-2\r\nproxy_authorization: us-LEAK-3\r\n\r\n");
    // Either refused (400) or forwarded without them; never forwarded with them.
    let r = c.read_response();
    assert!([200, 400].contains(&r.status()), "status {}", r.status());
    let raw = up.received_all();
    for s in ["us-LEAK-1", "us-LEAK-3"] {
        assert!(
            !crate::support::wire::contains(&raw, s.as_bytes()),
            "{s} reached the upstream"
        );
    }
}

#[test]
fn sandbox_cookies_are_not_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    roundtrip(
        proxy.addr(),
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nCookie: session=abc\r\nX-Keep: 1\r\n\r\n",
    );
    let got = up.only_request();
    assert!(!got.has("cookie"), "{}", got.head_str());
    assert!(got.has("x-keep"));
}

#[test]
fn hop_by_hop_fields_and_the_fields_connection_names_are_removed() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(
        proxy.addr(),
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: X-A, x-b\r\nX-A: 1\r\nX-B: 2\r\n\
         connection: X-C\r\nX-C: 3\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
         TE: trailers\r\nX-D: 4\r\n\r\n",
    );
    assert_eq!(r.status(), 200);
    let got = up.only_request();
    for name in [
        "connection",
        "x-a",
        "x-b",
        "x-c",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert!(!got.has(name), "{name} forwarded: {}", got.head_str());
    }
    assert_eq!(got.header("x-d"), Some(&b"4"[..]));
}

#[test]
fn other_fields_are_forwarded_byte_for_byte_and_in_order() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let fields = [
        "anthropic-version: 2023-06-01",
        "Anthropic-Beta: prompt-caching-2024-07-31,interleaved-thinking-2025-05-14",
        "x-stainless-lang: js",
        "X-Stainless-Package-Version: 0.39.0",
        "x-stainless-retry-count: 0",
        "X-Quoted: \"a, b\"; q=0.5",
        "x-empty-ish: -",
        "anthropic-beta: second",
        "X-Symbols: !#$%&'*+-.^_`|~:/?@[]",
    ];
    let mut req = String::from("GET /v1/models HTTP/1.1\r\nHost: x\r\n");
    for f in fields {
        req.push_str(f);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    assert_eq!(roundtrip(proxy.addr(), req).status(), 200);
    let want = expected_head("GET", "/v1/models", &up.authority(), &fields, None);
    assert_eq!(up.only_request().head_str(), want);
}

#[test]
fn host_is_replaced_by_the_target_authority() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    roundtrip(
        proxy.addr(),
        "GET / HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    );
    let got = up.only_request();
    assert_eq!(got.all("host"), vec![up.authority().as_bytes()]);
    assert!(got
        .head_str()
        .starts_with(&format!("GET / HTTP/1.1\r\nHost: {}\r\n", up.authority())));
    assert!(!got.head_str().contains("evil.example"));
}

#[test]
fn a_content_length_body_is_framed_once_in_canonical_form() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(
        proxy.addr(),
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: 5\r\nX-After: 1\r\n\r\nhello",
    );
    assert_eq!(r.status(), 200);
    let want = expected_head(
        "POST",
        "/v1/messages",
        &up.authority(),
        &["X-After: 1"],
        Some("Content-Length: 5"),
    );
    let got = up.only_request();
    assert_eq!(got.head_str(), want);
    assert_eq!(got.body.data, b"hello");
}

#[test]
fn a_chunked_body_is_framed_once_as_transfer_encoding_chunked() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(
        proxy.addr(),
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\nX-After: 1\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!(r.status(), 200);
    let want = expected_head(
        "POST",
        "/v1/messages",
        &up.authority(),
        &["X-After: 1"],
        Some("Transfer-Encoding: chunked"),
    );
    let got = up.only_request();
    assert_eq!(got.head_str(), want);
    assert_eq!(got.body.data, b"hello world");
    assert!(got.body.raw.ends_with(b"0\r\n\r\n"));
}

#[test]
fn a_request_without_a_body_gets_no_framing_field() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    roundtrip(proxy.addr(), "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
    let got = up.only_request();
    assert!(!got.has("content-length"), "{}", got.head_str());
    assert!(!got.has("transfer-encoding"), "{}", got.head_str());
}

#[test]
fn path_and_query_are_forwarded_byte_for_byte_under_the_target_base_path() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let target = format!("{}/base", up.target_url());
    let proxy = Proxy::spawn(&[("TARGET", &target)], TOKEN);
    let path = "/v1/messages;p=1/a%41b%20c~!$&'()*+,=:@?beta=true&x=%2F&y=a+b&z=&q=%E2%9C%93/?";
    roundtrip(
        proxy.addr(),
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    let got = up.only_request();
    assert_eq!(got.head.target, format!("/base{path}"));
}

#[test]
fn the_root_path_is_forwarded_under_the_target_base_path() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let target = format!("{}/api/anthropic", up.target_url());
    let proxy = Proxy::spawn(&[("TARGET", &target)], TOKEN);
    roundtrip(
        proxy.addr(),
        "GET /v1/models?limit=2 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(
        up.only_request().head.target,
        "/api/anthropic/v1/models?limit=2"
    );
}

#[test]
fn an_absolute_form_target_is_forwarded_to_the_configured_target_with_its_path_and_query() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(
        proxy.addr(),
        "POST http://host.docker.internal:18080/v1/messages?x=1 HTTP/1.1\r\n\
         Host: host.docker.internal:18080\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(r.status(), 200);
    let want = expected_head(
        "POST",
        "/v1/messages?x=1",
        &up.authority(),
        &[],
        Some("Content-Length: 2"),
    );
    let got = up.only_request();
    assert_eq!(got.head_str(), want);
    assert!(!up.received_all().windows(11).any(|w| w == b"host.docker"));
}

#[test]
fn the_response_head_and_body_are_relayed_byte_for_byte() {
    let body = "{\"id\":\"msg_1\",\"ok\":true}\r\n";
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
         request-id: req_011CUq\r\nanthropic-ratelimit-requests-remaining: 49\r\n\
         Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Odd-Case: MiXeD\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = resp.as_bytes();
    let up = Upstream::plain().serve(handlers::fixed(resp));
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    c.send(post("/v1/messages", "{}"));
    let r = c.read_response();
    assert_eq!(
        r.raw(),
        resp.to_vec(),
        "got:\n{}",
        String::from_utf8_lossy(&r.raw())
    );
}

#[test]
fn the_upstreams_hop_by_hop_response_fields_are_removed() {
    let resp =
        b"HTTP/1.1 200 OK\r\nConnection: X-Up-Hop\r\nX-Up-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
        Proxy-Connection: keep-alive\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nok";
    let up = Upstream::plain().serve(handlers::fixed(resp));
    let proxy = proxy_for(&up, &[]);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(r.status(), 200);
    for name in ["x-up-hop", "keep-alive", "proxy-connection"] {
        assert!(!r.has(name), "{name} relayed: {}", r.head.raw_str());
    }
    // The only Connection field allowed is the proxy's own `close`.
    for v in r.all("connection") {
        assert!(v.eq_ignore_ascii_case(b"close"), "{}", r.head.raw_str());
    }
    assert_eq!(r.header("x-end"), Some(&b"2"[..]));
    assert_eq!(r.body(), b"ok");
}

/// Attack review, round two (defect 4): the sandbox does not get to say where a request came
/// from or where it goes (Traefik CVE-2024-45410 class): forwarding and rewrite fields are
/// removed, and the proxy adds none of its own.
#[test]
fn forwarding_and_rewrite_fields_from_the_client_are_removed() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    let fields = [
        "X-Forwarded-For: 1.2.3.4",
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Port: 8443",
        "X-Forwarded-Prefix: /admin",
        "Forwarded: for=1.2.3.4;host=evil.example",
        "X-Real-IP: 1.2.3.4",
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
    ];
    let req = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\n{}\r\nX-Kept: yes\r\n\r\n",
        fields.join("\r\n")
    );
    assert_eq!(roundtrip(proxy.addr(), req.as_bytes()).status(), 200);
    let head = up.only_request().head.raw_str().to_ascii_lowercase();
    for f in fields {
        let name = f.split(':').next().unwrap().to_ascii_lowercase();
        assert!(
            !head.contains(&format!("{name}:")),
            "{name} forwarded: {head}"
        );
    }
    assert!(head.contains("x-kept: yes"));
    assert!(!head.contains("forwarded"), "{head}");
}

/// Attack review, round two (defect 5): no field name with `_` is forwarded. A look-alike of
/// a field the proxy removes (`X_Forwarded_For`) is refused with 400, as for framing and
/// credential fields; any other (`X_Custom`) is dropped, as nginx does by default.
#[test]
fn field_names_with_underscores_are_never_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[]);
    for f in [
        "X_Forwarded_For: 1.2.3.4",
        "X-Real_IP: 1.2.3.4",
        "x_original_url: /a",
    ] {
        let req = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{f}\r\n\r\n");
        roundtrip(proxy.addr(), req.as_bytes()).assert_proxy_error(400, "invalid_request_error");
    }
    up.assert_untouched();
    let req = "GET /v1/models HTTP/1.1\r\nHost: x\r\nX_Custom: 1\r\nX-Kept: yes\r\n\r\n";
    assert_eq!(roundtrip(proxy.addr(), req.as_bytes()).status(), 200);
    let head = up.only_request().head.raw_str();
    assert!(!head.contains('_'), "{head}");
    assert!(head.contains("X-Kept: yes"));
}
