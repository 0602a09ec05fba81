use super::*;
use crate::limits::Limits;
use crate::policy::AllowList;
use crate::scan::{HeadScanner, ScanLimits};
use crate::target::Target;

const CRED: &[u8] = b"Authorization: Bearer REAL\r\n";

fn target() -> Target {
    Target::parse("https://api.example.com/base").unwrap()
}

/// Scans and parses `input` as one whole head with default limits.
fn run_with(
    input: &[u8],
    phantom: Option<&[u8]>,
    oauth_beta: bool,
) -> Result<(Request, Vec<u8>), Problem> {
    let t = target();
    let limits = Limits::default();
    let rw = Rewrite {
        target: &t,
        credential_line: CRED,
        credential_field: None,
        phantom,
        allow: None,
        oauth_beta,
        websocket: None,
    };
    let n = HeadScanner::new()
        .scan(input, &ScanLimits::request(&limits))?
        .ok_or(Problem::ClientAborted)?;
    let mut out = Vec::new();
    let req = parse_request(&input[..n], &limits, &rw, &mut out)?;
    Ok((req, out))
}

fn run(input: &[u8]) -> Result<(Request, Vec<u8>), Problem> {
    run_with(input, None, false)
}

fn upstream(input: &str) -> String {
    String::from_utf8(run(input.as_bytes()).expect("accepted").1).unwrap()
}

#[test]
fn forwards_a_claude_code_request_canonically() {
    let got = upstream(
        "POST /v1/messages?beta=true HTTP/1.1\r\n\
         Host: host.docker.internal:18080\r\n\
         Authorization: Bearer phantom\r\n\
         anthropic-version: 2023-06-01\r\n\
         X-Api-Key: phantom\r\n\
         content-type: application/json\r\n\
         x-stainless-os: Linux\r\n\
         Content-Length: 2\r\n\r\n",
    );
    assert_eq!(
        got,
        "POST /base/v1/messages?beta=true HTTP/1.1\r\n\
         Host: api.example.com\r\n\
         anthropic-version: 2023-06-01\r\n\
         content-type: application/json\r\n\
         x-stainless-os: Linux\r\n\
         Accept-Encoding: identity\r\n\
         Content-Length: 2\r\n\
         Authorization: Bearer REAL\r\n\r\n"
    );
}

#[test]
fn removes_hop_by_hop_credentials_and_connection_named_fields() {
    let got = upstream(
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret , x-other\r\n\
         X-Secret: s\r\nKeep-Alive: 5\r\nProxy-Connection: k\r\nTE: trailers\r\nTrailer: x\r\n\
         Proxy-Authorization: Basic x\r\nCookie: c=1\r\nauthorization: Bearer a\r\nAUTHORIZATION: Bearer b\r\n\
         X-Other: o\r\nX-Keep: k\r\n\r\n",
    );
    assert_eq!(got, "GET /base/x HTTP/1.1\r\nHost: api.example.com\r\nX-Keep: k\r\nAccept-Encoding: identity\r\nAuthorization: Bearer REAL\r\n\r\n");
}

#[test]
fn absolute_form_uses_only_path_and_query() {
    for (line, want) in [
        (
            "POST http://host.docker.internal:18080/v1/messages?x=1 HTTP/1.1",
            "POST /base/v1/messages?x=1 HTTP/1.1",
        ),
        ("GET HTTPS://evil.example HTTP/1.1", "GET /base/ HTTP/1.1"),
        (
            "GET http://evil.example?q=1 HTTP/1.1",
            "GET /base/?q=1 HTTP/1.1",
        ),
    ] {
        let got = upstream(&format!("{line}\r\nHost: x\r\n\r\n"));
        assert!(
            got.starts_with(&format!("{want}\r\nHost: api.example.com\r\n")),
            "{line} -> {got}"
        );
        assert!(!got.contains("evil"));
    }
}

#[test]
fn framing_is_decided_once_and_emitted_canonically() {
    let (r, out) =
        run(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n").unwrap();
    assert_eq!(r.body, BodyKind::Chunked);
    assert!(out.ends_with(b"Transfer-Encoding: chunked\r\nAuthorization: Bearer REAL\r\n\r\n"));
    let (r, out) = run(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 000042\r\n\r\n").unwrap();
    assert_eq!(r.body, BodyKind::Length(42));
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("\r\nContent-Length: 42\r\n"));
    let (r, _) = run(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.body, BodyKind::Empty);
}

#[test]
fn keep_alive_follows_version_and_connection() {
    assert!(
        run(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .0
            .keep_alive
    );
    assert!(
        !run(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .0
            .keep_alive
    );
    // R35: never persistent with an HTTP/1.0 client, even when it asks.
    assert!(
        !run(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .0
            .keep_alive
    );
}

#[test]
fn expect_100_continue_is_handled_here_and_not_forwarded() {
    let (r, out) =
        run(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
            .unwrap();
    assert!(r.expect_continue);
    assert!(!String::from_utf8(out)
        .unwrap()
        .to_ascii_lowercase()
        .contains("expect"));
    // R26: ignored for HTTP/1.0, and pointless without a body.
    assert!(
        !run(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .0
            .expect_continue
    );
    assert!(
        !run(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .0
            .expect_continue
    );
}

#[test]
fn health_is_routed_locally_only_for_get_and_head_on_the_exact_path() {
    let route = |s: &str| run(s.as_bytes()).unwrap().0.route;
    assert_eq!(
        route("GET /health HTTP/1.1\r\nHost: a\r\n\r\n"),
        Route::Health
    );
    assert_eq!(
        route("HEAD /health?x HTTP/1.1\r\nHost: a\r\n\r\n"),
        Route::Health
    );
    assert_eq!(
        route("GET http://h/health HTTP/1.1\r\nHost: a\r\n\r\n"),
        Route::Health
    );
    assert_eq!(
        route("POST /health HTTP/1.1\r\nHost: a\r\n\r\n"),
        Route::Forward
    );
    assert_eq!(
        route("GET /health/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        Route::Forward
    );
    assert_eq!(
        route("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        Route::Forward
    );
}

#[test]
fn the_phantom_token_is_required_when_configured() {
    let ok = |s: &str| {
        run_with(s.as_bytes(), Some(b"ph-1"), false)
            .unwrap()
            .0
            .authorized
    };
    assert!(ok(
        "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ph-1\r\n\r\n"
    ));
    assert!(ok(
        "GET / HTTP/1.1\r\nHost: a\r\nauthorization: bearer ph-1\r\n\r\n"
    ));
    assert!(ok("GET / HTTP/1.1\r\nHost: a\r\nx-api-key: ph-1\r\n\r\n"));
    assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(!ok(
        "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ph-2\r\n\r\n"
    ));
    assert!(!ok(
        "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic ph-1\r\n\r\n"
    ));
    assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\nx-api-key: ph-1x\r\n\r\n"));
    // Refused requests produce no upstream head at all.
    let (_, out) = run_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Some(b"p"), false).unwrap();
    assert!(out.is_empty());
}

#[test]
fn oauth_beta_is_merged_never_replaced_or_duplicated() {
    let beta = |s: &str| {
        let out = String::from_utf8(run_with(s.as_bytes(), None, true).unwrap().1).unwrap();
        out.lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("anthropic-beta:"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        beta("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ["anthropic-beta: oauth-2025-04-20"]
    );
    assert_eq!(
        beta("GET / HTTP/1.1\r\nHost: a\r\nanthropic-beta: tools-2024\r\n\r\n"),
        ["anthropic-beta: tools-2024,oauth-2025-04-20"]
    );
    assert_eq!(
        beta("GET / HTTP/1.1\r\nHost: a\r\nanthropic-beta: a, oauth-2025-04-20\r\n\r\n"),
        ["anthropic-beta: a, oauth-2025-04-20"]
    );
    assert_eq!(
        beta("GET / HTTP/1.1\r\nHost: a\r\nAnthropic-Beta: a\r\nanthropic-beta: oauth-2025-04-20\r\n\r\n"),
        ["Anthropic-Beta: a", "anthropic-beta: oauth-2025-04-20"]
    );
}

/// Every class of request the proxy refuses, with the rule it implements.
#[test]
fn refuses_what_it_cannot_frame_or_route_with_certainty() {
    use Problem::*;
    let cases: &[(&str, &[u8], Problem)] = &[
        ("R1 TE+CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", BadFraming),
        ("R1 CL+TE", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", BadFraming),
        ("R2 chunked not last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", BadFraming),
        ("R3 unknown coding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", UnsupportedCoding),
        ("R3 gzip then chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnsupportedCoding),
        ("R3 identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", UnsupportedCoding),
        ("R4 chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", BadFraming),
        ("R4 two TE fields", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", BadFraming),
        ("R5 1.0 with TE", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", BadFraming),
        ("R6 CL not digits", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", BadFraming),
        ("R6 CL hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\n", BadFraming),
        ("R6 CL empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", BadFraming),
        ("R7 CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", BadFraming),
        ("R7 CL twice equal", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", BadFraming),
        ("R8 CL overflow", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", BadFraming),
        ("R8 CL over limit", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 33554433\r\n\r\n", BodyTooLarge),
        ("R12 chunked params", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", BadFraming),
        ("R14 space before colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", MalformedHead),
        ("R15 obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", MalformedHead),
        ("R16 bare LF", b"GET / HTTP/1.1\nHost: a\n\n", MalformedHead),
        ("R16 LF-terminated head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", MalformedHead),
        ("R16 bare CR in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", MalformedHead),
        ("R17 NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", MalformedHead),
        ("R18 whitespace-led first field", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", MalformedHead),
        ("R19 double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", MalformedHead),
        ("R19 HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", MalformedHead),
        ("R19 HTTP/0.9", b"GET /\r\n\r\n", MalformedHead),
        ("R19 HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", MalformedHead),
        ("R20 no Host", b"GET / HTTP/1.1\r\n\r\n", BadHost),
        ("R20 two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", BadHost),
        ("R20 Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", BadHost),
        ("R20 empty Host", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", BadHost),
        ("R22 CONNECT", b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n", MethodNotAllowed),
        ("R22 asterisk", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("R22 authority-form", b"GET evil:443 HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("R25 TRACE", b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", MethodNotAllowed),
        ("R26 other expectation", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", ExpectationFailed),
        ("R36 lower-case method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", MethodNotImplemented),
        ("R36 unknown method", b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n", MethodNotImplemented),
        ("R37 underscore CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 3\r\n\r\n", AmbiguousName),
        ("R37 underscore TE", b"POST / HTTP/1.1\r\nHost: a\r\ntransfer_encoding: chunked\r\n\r\n", AmbiguousName),
        ("R37 underscore key", b"GET / HTTP/1.1\r\nHost: a\r\nX_Api_Key: k\r\n\r\n", AmbiguousName),
        ("R37 underscore hop-by-hop", b"GET / HTTP/1.1\r\nHost: a\r\nKeep_Alive: 5\r\n\r\n", AmbiguousName),
        ("R37 underscore HTTP2-Settings", b"GET / HTTP/1.1\r\nHost: a\r\nHTTP2_Settings: x\r\n\r\n", AmbiguousName),
        ("fragment", b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("dot-segment", b"GET /v1/../admin HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("encoded dot-segment", b"GET /v1/%2E%2e/admin HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("trailing dot-segment", b"GET /v1/.. HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("backslash", b"GET /v1\\..\\x HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        // Review finding: separators and parameters as a normalising upstream sees them.
        ("encoded slash after dots", b"GET /..%2fx HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("encoded dots and slash", b"GET /%2e%2e%2fadmin HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("encoded backslash", b"GET /..%5cadmin HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("dot-dot with parameters", b"GET /..;/admin HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("dot with parameters", b"GET /.;x=1/admin HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("encoded NUL", b"GET /v1/a%00b HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("broken escape", b"GET /v1/a%zz HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("truncated escape", b"GET /v1/a%2 HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("absolute-form userinfo", b"GET http://u@h/ HTTP/1.1\r\nHost: a\r\n\r\n", BadTarget),
        ("Upgrade", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", WebSocketRefused),
        ("WebSocket among others", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, WebSocket/13\r\n\r\n", WebSocketRefused),
        ("h2c upgrade", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n", UpgradeRefused),
        ("Connection names CL", b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\n", BadConnectionOption),
        ("Connection names Host", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n", BadConnectionOption),
        ("obs-text in TE", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\xff\r\n\r\n", MalformedHead),
        ("obs-text in Host", b"GET / HTTP/1.1\r\nHost: a\xff\r\n\r\n", MalformedHead),
    ];
    for (rule, input, want) in cases {
        assert_eq!(run(input).map(|_| ()), Err(*want), "{rule}");
    }
}

#[test]
fn obs_text_is_forwarded_in_fields_we_do_not_interpret() {
    let (_, out) = run(b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9\r\n\r\n").unwrap();
    assert!(out.windows(11).any(|w| w == b"X-Name: caf"));
}

#[test]
fn leading_empty_lines_are_skipped() {
    assert!(run(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
}

fn limits_small() -> Limits {
    Limits {
        max_request_line: 64,
        max_field_line: 64,
        max_head_bytes: 256,
        max_headers: 8,
        ..Limits::default()
    }
}

#[test]
fn limits_map_to_their_statuses() {
    let l = limits_small();
    let lim = ScanLimits::request(&l);
    let scan = |b: &[u8]| HeadScanner::new().scan(b, &lim);
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(80));
    assert_eq!(scan(long_target.as_bytes()), Err(Problem::UriTooLong));
    // Refused before the line ends: no need to wait for the rest.
    assert_eq!(
        scan(&long_target.as_bytes()[..70]),
        Err(Problem::UriTooLong)
    );
    let long_field = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(80));
    assert_eq!(scan(long_field.as_bytes()), Err(Problem::HeadTooLarge));
    let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: 1\r\n".repeat(50));
    assert_eq!(scan(many.as_bytes()), Err(Problem::HeadTooLarge));
    let nine = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X: 1\r\n".repeat(8));
    let t = target();
    let rw = Rewrite {
        target: &t,
        credential_line: CRED,
        phantom: None,
        credential_field: None,
        allow: None,
        oauth_beta: false,
        websocket: None,
    };
    let n = scan(nine.as_bytes()).unwrap().unwrap();
    assert_eq!(
        parse_request(&nine.as_bytes()[..n], &l, &rw, &mut Vec::new()),
        Err(Problem::HeadTooLarge)
    );
}

/// The scanner gives the same answer however the bytes arrive.
#[test]
fn the_head_scanner_agrees_at_every_split_point() {
    let l = limits_small();
    let lim = ScanLimits::request(&l);
    let inputs: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\rX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        // Fuzz finding: a long line ended by a bare LF is 414 however it is split.
        b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\n",
        b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\r\n",
        // A head over the limit with a bare LF after the limit: 431 however it is split.
        b"GET / HTTP/1.1\r\nA: 1234567890123456789012345678901234567890\r\nB: 1234567890123456789012345678901234567890\r\nC: 1234567890123456789012345678901234567890\r\nD: 1234567890123456789012345678901234567890\r\nE: 1234567890123456789012345678901234567890\r\nF: 1234567890123456789012345678901234567890\r\nG: x\nH: y\r\n\r\n",
    ];
    for input in inputs {
        let whole = HeadScanner::new().scan(input, &lim);
        for split in 0..=input.len() {
            let mut s = HeadScanner::new();
            let first = s.scan(&input[..split], &lim);
            let got = match first {
                Err(e) => Err(e),
                Ok(Some(n)) => Ok(Some(n)),
                Ok(None) => s.scan(input, &lim),
            };
            assert_eq!(
                got,
                whole,
                "split at {split} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        // And byte by byte.
        let mut s = HeadScanner::new();
        let mut got = Ok(None);
        for end in 1..=input.len() {
            got = s.scan(&input[..end], &lim);
            if !matches!(got, Ok(None)) {
                break;
            }
        }
        assert_eq!(got, whole);
    }
}

/// Fuzz finding: the beta decision counts only fields that survive the rewrite.
#[test]
fn oauth_beta_is_added_when_the_clients_list_is_a_connection_option() {
    let (_, out) = run_with(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: anthropic-beta\r\nanthropic-beta: x\r\n\r\n",
        None,
        true,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("\r\nanthropic-beta: oauth-2025-04-20\r\n"),
        "{out}"
    );
    assert!(!out.contains("anthropic-beta: x"));
}

/// Review finding: masking is an exact match, so the sandbox may not ask for compressed or
/// sliced bodies in which the token would not appear verbatim.
#[test]
fn the_client_cannot_ask_for_encodings_or_ranges_that_defeat_masking() {
    let out = upstream(
        "GET /x HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip, br\r\nRange: bytes=0-9\r\nIf-Range: \"e\"\r\n\r\n",
    );
    assert_eq!(
        out,
        "GET /base/x HTTP/1.1\r\nHost: api.example.com\r\nAccept-Encoding: identity\r\nAuthorization: Bearer REAL\r\n\r\n"
    );
}

#[test]
fn ordinary_paths_with_escapes_dots_and_parameters_are_forwarded_unchanged() {
    for target in [
        "/v1/messages?beta=true",
        "/v1/files/a%20b.txt",
        "/v1/.well-known/x",
        "/v1/...",
        "/v1/a..b/c;v=1",
        "/v1//double",
        "/v1/%2e%2e%2e",
    ] {
        let out = upstream(&format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(
            out.starts_with(&format!("GET /base{target} HTTP/1.1\r\n")),
            "{target}: {out}"
        );
    }
}

/// Attack review, round two (defect 3): RFC 9112 §3.2 makes the request-target ASCII.
#[test]
fn non_ascii_targets_are_refused() {
    for target in [
        "/a\u{9b}[31m",
        "/\u{85}",
        "/x\u{2028}y",
        "/\u{202e}txt.exe",
        "http://h/\u{e9}",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            run(req.as_bytes()).unwrap_err(),
            Problem::BadTarget,
            "{target:?}"
        );
    }
}

/// Attack review, round two (defects 4 and 5): forwarding and rewrite fields, and every name
/// with `_`, never reach the upstream; look-alikes of removed fields are refused.
#[test]
fn forwarding_fields_and_underscore_names_are_not_forwarded() {
    let got = upstream(
        "GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-host: e\r\n\
         X-FORWARDED-PROTO: http\r\nX-Forwarded-Anything: 1\r\nForwarded: for=1\r\n\
         X-Real-IP: 1\r\nX-Original-URL: /a\r\nX-Rewrite-URL: /a\r\nX_Custom: 1\r\n\
         X-Forwarded: kept\r\nX-Keep: k\r\n\r\n",
    );
    assert_eq!(
        got,
        "GET /base/x HTTP/1.1\r\nHost: api.example.com\r\nX-Forwarded: kept\r\nX-Keep: k\r\n\
         Accept-Encoding: identity\r\nAuthorization: Bearer REAL\r\n\r\n"
    );
    for name in [
        "X_Forwarded_For",
        "x-forwarded_host",
        "X_Real_IP",
        "Content_Length",
        "x_api_key",
    ] {
        let req = format!("GET /x HTTP/1.1\r\nHost: a\r\n{name}: 1\r\n\r\n");
        assert_eq!(
            run(req.as_bytes()).unwrap_err(),
            Problem::AmbiguousName,
            "{name}"
        );
    }
}

/// What a request with a method-override field comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Override {
    /// Forwarded; whether the field reached the upstream head.
    Forwarded { kept: bool },
    /// `allowed` is false (403), nothing written for the upstream.
    NotAllowed,
    /// 400 before anything else (R37).
    Ambiguous,
}

/// Parses a `POST` the list `POST /v1beta/cachedContents*` admits, carrying `fields`.
fn with_override(fields: &str, allow: Option<&AllowList>) -> Override {
    let t = target();
    let rw = Rewrite {
        target: &t,
        credential_line: CRED,
        credential_field: Some(b"x-goog-api-key"),
        phantom: None,
        allow,
        oauth_beta: false,
        websocket: None,
    };
    let input = format!(
        "POST /v1beta/cachedContents/c1 HTTP/1.1\r\nHost: a\r\n{fields}Content-Length: 0\r\n\r\n"
    );
    let mut out = Vec::new();
    match parse_request(input.as_bytes(), &Limits::default(), &rw, &mut out) {
        Err(Problem::AmbiguousName) => Override::Ambiguous,
        Err(p) => panic!("{fields:?}: {p:?}"),
        Ok(r) if !r.allowed => {
            assert!(out.is_empty(), "{fields:?}: refused but written");
            Override::NotAllowed
        }
        Ok(_) => {
            let head = String::from_utf8(out).unwrap().to_ascii_lowercase();
            let kept = head.contains("\r\nx-http-method") || head.contains("\r\nx-method-override");
            Override::Forwarded { kept }
        }
    }
}

/// Under ALLOW_REQUESTS no admitted request reaches the upstream with a field that can change
/// its method: the list matched the request line's method, so such a request is refused (403),
/// its `_` look-alikes 400 (R37), whatever the case and whether `Connection` names it. Without
/// a list there is no policy to bypass: the fields are forwarded, `_` names dropped.
#[test]
fn method_override_fields_are_refused_under_an_allow_list() {
    use Override::*;
    let list = AllowList::parse("POST /v1beta/cachedContents*").unwrap();
    let cases: &[(&str, Override, Override)] = &[
        // fields, with the list, without
        ("", Forwarded { kept: false }, Forwarded { kept: false }),
        (
            "X-HTTP-Method-Override: DELETE\r\n",
            NotAllowed,
            Forwarded { kept: true },
        ),
        (
            "x-http-method-override: DELETE\r\n",
            NotAllowed,
            Forwarded { kept: true },
        ),
        (
            "X-Http-Method-Override: POST\r\n",
            NotAllowed,
            Forwarded { kept: true },
        ),
        (
            "X-HTTP-Method: DELETE\r\n",
            NotAllowed,
            Forwarded { kept: true },
        ),
        (
            "x-method-override: DELETE\r\n",
            NotAllowed,
            Forwarded { kept: true },
        ),
        (
            "X-METHOD-OVERRIDE: PUT\r\n",
            NotAllowed,
            Forwarded { kept: true },
        ),
        (
            "X-HTTP-Method-Override:\r\n",
            NotAllowed,
            Forwarded { kept: true },
        ),
        (
            "X_HTTP_Method_Override: DELETE\r\n",
            Ambiguous,
            Forwarded { kept: false },
        ),
        (
            "x-http_method-override: DELETE\r\n",
            Ambiguous,
            Forwarded { kept: false },
        ),
        (
            "X_HTTP_METHOD: DELETE\r\n",
            Ambiguous,
            Forwarded { kept: false },
        ),
        (
            "x_method_override: DELETE\r\n",
            Ambiguous,
            Forwarded { kept: false },
        ),
        // Named hop-by-hop, it would be removed; the request is refused all the same.
        (
            "Connection: X-HTTP-Method-Override\r\nX-HTTP-Method-Override: DELETE\r\n",
            NotAllowed,
            Forwarded { kept: false },
        ),
        (
            "X-HTTP-Method: DELETE\r\nConnection: x-http-method\r\n",
            NotAllowed,
            Forwarded { kept: false },
        ),
        // Naming it without sending it changes nothing.
        (
            "Connection: X-HTTP-Method-Override\r\n",
            Forwarded { kept: false },
            Forwarded { kept: false },
        ),
    ];
    for &(fields, with, without) in cases {
        assert_eq!(
            with_override(fields, Some(&list)),
            with,
            "{fields:?} with a list"
        );
        assert_eq!(with_override(fields, None), without, "{fields:?} without");
    }
}

/// One request of the sizing property below: its head and the rewrite it goes through.
#[derive(Debug)]
struct SizingCase {
    fields: usize,
    space: &'static str,
    beta: Option<&'static str>,
    oauth_beta: bool,
    custom: bool,
    framing: &'static str,
    target: &'static str,
    request_target: &'static str,
}

impl SizingCase {
    fn head(&self) -> Vec<u8> {
        let s = self.space;
        let method = if self.framing.is_empty() {
            "GET"
        } else {
            "POST"
        };
        let mut h = format!("{method} {} HTTP/1.1\r\nHost:{s}a\r\n", self.request_target);
        for i in 0..self.fields {
            h.push_str(&format!("X-Field-{i}:{s}value-{i}\r\n"));
        }
        if let Some(b) = self.beta {
            h.push_str(&format!("anthropic-beta:{s}{b}\r\n"));
        }
        if self.custom {
            h.push_str(&format!("X-Goog-Api-Key:{s}sandbox\r\n"));
        }
        h.push_str(self.framing);
        h.push_str("\r\n");
        h.into_bytes()
    }
}

/// Attack review, round three (finding 3): the upstream head's buffer is sized once, exactly,
/// before the credential is written into it, and never reallocated after (a reallocation
/// would free a block holding a copy of the credential, unwiped). Fields written without a
/// space after the colon grow by one byte each in the rewrite; the added fields (beta flag,
/// encoding, framing, credential) and TARGET's base path and authority grow it too.
#[test]
fn the_upstream_head_is_sized_exactly_before_the_credential_is_written() {
    let limits = Limits {
        max_headers: MAX_HEADERS_CAP,
        max_body_bytes: u64::MAX,
        ..Limits::default()
    };
    let betas = [
        (None, false),                      // Keep: not wanted.
        (None, true),                       // Add.
        (Some("tools-2024"), true),         // AppendToFirst.
        (Some(""), true),                   // AppendToFirst, to an empty list.
        (Some("a,oauth-2025-04-20"), true), // Keep: already there.
    ];
    let framings = [
        "",
        "Content-Length:12345678901\r\n",
        "Transfer-Encoding:chunked\r\n",
    ];
    let targets = ["https://api.anthropic.com", "http://h:8080/some/base/path"];
    let request_targets = ["/v1/messages?beta=true", "http://x", "https://x/v1/y?z"];
    // Every field count with and without the space and each beta decision; the other parts
    // (a custom credential field, framing, TARGET, the request-target form) take turns with
    // the field count, so each of their 36 combinations meets each beta decision and spacing
    // about three times.
    let mut seen = [[false; 36]; 10];
    for fields in 0..=100 {
        for (s, space) in ["", " "].into_iter().enumerate() {
            for (b, (beta, oauth_beta)) in betas.into_iter().enumerate() {
                let turn = (fields + 7 * (s * 5 + b)) % 36;
                seen[s * 5 + b][turn] = true;
                let case = SizingCase {
                    fields,
                    space,
                    beta,
                    oauth_beta,
                    custom: turn % 2 == 1,
                    framing: framings[turn / 2 % 3],
                    target: targets[turn / 6 % 2],
                    request_target: request_targets[turn / 12],
                };
                check_sizing(&case, &limits);
            }
        }
    }
    assert!(seen.iter().flatten().all(|&s| s));
}

fn check_sizing(case: &SizingCase, limits: &Limits) {
    let t = Target::parse(case.target).unwrap();
    let rw = Rewrite {
        target: &t,
        credential_line: b"x-goog-api-key: REAL-CREDENTIAL-0123456789\r\n",
        credential_field: case.custom.then_some(&b"x-goog-api-key"[..]),
        phantom: None,
        allow: None,
        oauth_beta: case.oauth_beta,
        websocket: None,
    };
    let head = case.head();
    // A fresh buffer: what is reserved is what is written (a reallocation while writing
    // would have at least doubled the capacity).
    let mut fresh = Vec::new();
    let req =
        parse_request(&head, limits, &rw, &mut fresh).unwrap_or_else(|p| panic!("{case:?}: {p:?}"));
    assert_eq!(req.route, Route::Forward, "{case:?}");
    assert!(
        fresh.ends_with(b"REAL-CREDENTIAL-0123456789\r\n\r\n"),
        "{case:?}"
    );
    assert_eq!(fresh.capacity(), fresh.len(), "{case:?}");
    // A buffer reused from a larger head: its capacity is kept, nothing is reallocated.
    let mut reused = Vec::with_capacity(4096);
    reused.extend_from_slice(&[b'T'; 4000]);
    parse_request(&head, limits, &rw, &mut reused).unwrap();
    assert_eq!(reused.capacity(), 4096, "{case:?}");
    assert_eq!(reused, fresh, "{case:?}");
}

/// Parses `input` with `WEBSOCKET_PATHS=/ws`.
fn run_ws(input: &str) -> Result<(Request, String), Problem> {
    let t = target();
    let limits = Limits::default();
    let paths = handshake::WebSocketPaths::parse("/ws").unwrap();
    let rw = Rewrite {
        target: &t,
        credential_line: CRED,
        credential_field: None,
        phantom: None,
        allow: None,
        oauth_beta: false,
        websocket: Some(&paths),
    };
    let mut out = Vec::new();
    let req = parse_request(input.as_bytes(), &limits, &rw, &mut out)?;
    Ok((req, String::from_utf8(out).unwrap()))
}

const WS_FIELDS: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

#[test]
fn a_listed_handshake_goes_up_without_extensions_and_with_its_upgrade_fields() {
    let input = format!(
        "GET /ws HTTP/1.1\r\nHost: a\r\n{WS_FIELDS}Sec-WebSocket-Extensions: permessage-deflate\r\n\
         Authorization: Bearer sandbox\r\n\r\n"
    );
    let (req, up) = run_ws(&input).expect("accepted");
    assert_eq!(
        req.route,
        Route::WebSocket {
            accept: *b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            protocols: Default::default(),
        }
    );
    assert_eq!(
        up,
        "GET /base/ws HTTP/1.1\r\nHost: api.example.com\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Accept-Encoding: identity\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Authorization: Bearer REAL\r\n\r\n"
    );
}

#[test]
fn off_the_list_websocket_gets_426_and_on_it_a_loose_handshake_400() {
    let on = |path: &str, extra: &str| {
        run_ws(&format!(
            "GET {path} HTTP/1.1\r\nHost: a\r\n{WS_FIELDS}{extra}\r\n"
        ))
        .map(|_| ())
    };
    assert_eq!(on("/ws", ""), Ok(()));
    assert_eq!(
        on("/ws?x=1", ""),
        Ok(()),
        "the query is not part of the path"
    );
    assert_eq!(on("/other", ""), Err(Problem::WebSocketRefused));
    assert_eq!(on("/ws", "Upgrade: h2c\r\n"), Err(Problem::BadHandshake));
    assert_eq!(
        on("/ws", "Transfer-Encoding: chunked\r\n"),
        Err(Problem::BadHandshake)
    );
    assert_eq!(on("/ws", "Content-Length: 0\r\n"), Ok(()));
    let h10 = format!("GET /ws HTTP/1.0\r\nHost: a\r\n{WS_FIELDS}\r\n");
    assert_eq!(run_ws(&h10).map(|_| ()), Err(Problem::BadHandshake));
    let h2c = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n";
    assert_eq!(run_ws(h2c).map(|_| ()), Err(Problem::UpgradeRefused));
}
