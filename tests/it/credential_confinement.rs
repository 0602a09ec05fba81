//! The real token stays inside the proxy: not in a response, however it is split, and the
//! proxy says so when the upstream rejects it (what only the process shows, its environment,
//! argv, /proc files, core files and outputs: `tests/process`). Also the credential's shape
//! upstream: the OAuth beta flag, and `x-api-key` injection behind a phantom token.

use std::time::Duration;

use crate::support::wire::{chunked, contains};
use crate::support::*;

const PHANTOM: &str = "sk-ant-phantom-CONFINED-42";
const LOG_BOUND: Duration = Duration::from_secs(5);

/// Upstream heads for a few `anthropic-beta` cases, through a proxy started with `envs` and
/// `token`; each case is (the client's beta field if any, the field expected upstream if any).
fn beta_cases(
    up: &Upstream,
    envs: &[(&str, &str)],
    token: &str,
    cases: &[(Option<&str>, Option<&str>)],
) {
    let target = up.target_url();
    let ca;
    let mut all: Vec<(&str, &str)> = vec![("TARGET", target.as_str())];
    if target.starts_with("https") {
        ca = up.ca_file();
        all.push(("TARGET_CA_FILE", ca.as_str()));
    }
    all.extend_from_slice(envs);
    let proxy = Proxy::spawn(&all, token);
    let mut c = Client::connect(proxy.addr());
    for (i, (sent, expected)) in cases.iter().enumerate() {
        let beta = sent.map(|b| format!("{b}\r\n")).unwrap_or_default();
        c.send(format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n{beta}X-B: 2\r\n\r\n"
        ));
        assert_eq!(c.read_response().status(), 200);
        let got = up.wait_requests(i + 1, IO_TIMEOUT);
        assert_eq!(got.len(), i + 1, "case {i} not forwarded");
        let mut fields = vec!["X-A: 1"];
        // The client's field keeps its place (merged in place); an added one comes last.
        let merged_in_place = sent.is_some();
        if merged_in_place {
            if let Some(e) = expected {
                fields.push(e);
            }
        }
        fields.push("X-B: 2");
        if !merged_in_place {
            if let Some(e) = expected {
                fields.push(e);
            }
        }
        let mut want = format!("GET /v1/models HTTP/1.1\r\nHost: {}\r\n", up.authority());
        for f in fields {
            want.push_str(f);
            want.push_str("\r\n");
        }
        want.push_str("Accept-Encoding: identity\r\n");
        want.push_str(&format!("Authorization: Bearer {token}\r\n\r\n"));
        assert_eq!(got[i].head_str(), want, "case {i}: {sent:?}");
    }
}

#[test]
fn oauth_beta_on_adds_the_flag_merges_it_into_a_list_and_never_duplicates_it() {
    let up = Upstream::plain().serve(handlers::echo_head());
    beta_cases(
        &up,
        &[("OAUTH_BETA", "on")],
        TOKEN,
        &[
            (None, Some("anthropic-beta: oauth-2025-04-20")),
            (
                Some("anthropic-beta: a,b"),
                Some("anthropic-beta: a,b,oauth-2025-04-20"),
            ),
            (
                Some("Anthropic-Beta: a,oauth-2025-04-20,b"),
                Some("Anthropic-Beta: a,oauth-2025-04-20,b"),
            ),
            (
                Some("anthropic-beta: oauth-2025-04-20"),
                Some("anthropic-beta: oauth-2025-04-20"),
            ),
        ],
    );
}

#[test]
fn oauth_beta_off_adds_nothing_even_for_an_oauth_token() {
    let oauth = "sk-ant-oat01-CONFINED-oauth-token-0123456789";
    let up = Upstream::plain().serve(handlers::echo_head());
    beta_cases(
        &up,
        &[("OAUTH_BETA", "off")],
        oauth,
        &[
            (None, None),
            (Some("anthropic-beta: a,b"), Some("anthropic-beta: a,b")),
        ],
    );
}

#[test]
fn oauth_beta_auto_adds_nothing_for_an_oauth_token_sent_to_a_local_target() {
    let oauth = "sk-ant-oat01-CONFINED-oauth-token-0123456789";
    // https but not api.anthropic.com, and plain http: auto means off for both.
    let tls = Upstream::tls().serve(handlers::echo_head());
    beta_cases(
        &tls,
        &[],
        oauth,
        &[
            (None, None),
            (Some("anthropic-beta: a,b"), Some("anthropic-beta: a,b")),
        ],
    );
    let plain = Upstream::plain().serve(handlers::echo_head());
    beta_cases(&plain, &[("OAUTH_BETA", "auto")], oauth, &[(None, None)]);
}

#[test]
fn with_x_api_key_injection_the_phantom_key_is_replaced_by_the_real_key_and_no_authorization_is_sent(
) {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(
        &up,
        &[("TOKEN_HEADER", "x-api-key"), ("PHANTOM_TOKEN", PHANTOM)],
    );
    let mut c = Client::connect(proxy.addr());
    // As Claude Code sends it with ANTHROPIC_API_KEY, and as a bearer token.
    for cred in [
        format!("x-api-key: {PHANTOM}"),
        format!("X-Api-Key: {PHANTOM}"),
        format!("Authorization: Bearer {PHANTOM}"),
    ] {
        c.send(format!(
            "POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n{cred}\r\nContent-Length: 2\r\n\r\n{{}}"
        ));
        assert_eq!(c.read_response().status(), 200, "{cred}");
    }
    // Without the phantom, the real key is not used at all.
    c.send(format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {TOKEN}\r\nContent-Length: 2\r\n\r\n{{}}"
    ));
    c.read_response()
        .assert_proxy_error(401, "authentication_error");
    let reqs = up.wait_requests(3, IO_TIMEOUT);
    assert_eq!(reqs.len(), 3);
    let want = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: {}\r\nX-A: 1\r\nAccept-Encoding: identity\r\nContent-Length: 2\r\nx-api-key: {TOKEN}\r\n\r\n",
        up.authority()
    );
    for r in &reqs {
        assert_eq!(r.head_str(), want);
        assert!(!r.has("authorization"));
        assert_eq!(r.body.data, b"{}");
    }
    assert!(!contains(&up.received_all(), PHANTOM.as_bytes()));
    assert_eq!(up.requests().len(), 3, "the refused request was forwarded");
}

/// The SSE event carrying the token, and the bytes before the token in it.
fn sse_event_with_token() -> (String, usize) {
    let before = r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""#;
    let event = format!("{before}{TOKEN}\"}}}}\n\n");
    (event, before.len())
}

#[test]
fn a_token_split_at_every_offset_across_two_writes_and_two_sse_chunks_is_masked() {
    let (event, before) = sse_event_with_token();
    let steps = Steps::new();
    let s = steps.clone();
    let ev = event.clone();
    // Request `?split=K`: the first chunk ends K bytes into the token and goes out in one write;
    // the rest of the event is a second chunk, written only after the client has received the
    // bytes before the token (so the proxy certainly read the two parts separately).
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            let k: usize = req
                .head
                .target
                .rsplit_once("split=")
                .and_then(|(_, k)| k.parse().ok())
                .expect("split offset");
            let cut = before + k;
            let mut first = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            let one = chunked(&ev.as_bytes()[..cut], &[usize::MAX]);
            first.extend_from_slice(&one[..one.len() - 5]); // without the last-chunk
            let second = chunked(&ev.as_bytes()[cut..], &[usize::MAX]);
            if c.send(&first).is_err() {
                return;
            }
            if !s.wait_for(k + 1, IO_TIMEOUT) {
                c.abort();
                return;
            }
            if c.send(&second).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_for(&up, &[]);
    let mut c = Client::connect(proxy.addr());
    let visible = &event.as_bytes()[..before];
    for k in 0..=TOKEN.len() {
        c.send(format!(
            "POST /v1/messages?split={k} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}"
        ));
        let head = c.read_head().expect("response head");
        assert_eq!(head.status, 200, "split {k}");
        assert!(
            c.wait_buffered(visible),
            "split {k}: the bytes before the token never arrived"
        );
        steps.step();
        let body = c
            .wire
            .read_body(Framing::Chunked)
            .unwrap_or_else(|e| panic!("split {k}: chunked body: {e}"));
        assert_eq!(body.data.len(), event.len(), "split {k}: payload length");
        assert_eq!(
            String::from_utf8_lossy(&body.data),
            masked(&event),
            "split {k}"
        );
        for raw in [&head.raw, &body.raw] {
            assert!(!contains(raw, TOKEN.as_bytes()), "split {k}: token leaked");
        }
        // Byte-exact: the upstream's two chunks, sizes unchanged, only the token masked.
        let cut = before + k;
        let m = masked(&event);
        let one = chunked(&m.as_bytes()[..cut], &[usize::MAX]);
        let mut want = one[..one.len() - 5].to_vec();
        want.extend_from_slice(&chunked(&m.as_bytes()[cut..], &[usize::MAX]));
        assert_eq!(
            String::from_utf8_lossy(&body.raw),
            String::from_utf8_lossy(&want),
            "split {k}: chunk framing"
        );
    }
}

#[test]
fn an_upstream_401_or_403_is_logged_as_a_rejected_credential_and_other_statuses_are_not() {
    let up = Upstream::plain().serve(|c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            let status = req.head.target.trim_start_matches("/status/").to_string();
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            );
            if c.send(resp.as_bytes()).is_err() {
                return;
            }
        }
    });
    let proxy = proxy_for(&up, &[("PHANTOM_TOKEN", PHANTOM)]);
    // The proxy's own 401 (no phantom) is not the upstream rejecting the credential.
    roundtrip(proxy.addr(), get("/status/401")).assert_proxy_error(401, "authentication_error");
    let mut c = Client::connect(proxy.addr());
    for status in [200u16, 404, 401, 403] {
        c.send(format!(
            "GET /status/{status} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PHANTOM}\r\n\r\n"
        ));
        assert_eq!(c.read_response().status(), status);
    }
    // Requests on one connection are logged in order, so once the 403's line is there, every
    // line the earlier ones would write is too.
    assert!(
        proxy.wait_for_stderr("proxy: credential rejected by upstream (403, ", LOG_BOUND),
        "no line for 403: {}",
        proxy.stderr_so_far()
    );
    let lines: Vec<String> = proxy
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("credential rejected"))
        .collect();
    assert_eq!(
        lines,
        vec![
            "proxy: credential rejected by upstream (401, token generation 1)".to_string(),
            "proxy: credential rejected by upstream (403, token generation 1)".to_string(),
        ],
        "{}",
        proxy.stderr_so_far()
    );
}
