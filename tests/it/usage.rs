//! Token usage read from responses as they pass: the access line's figures and model, the
//! token metrics, the attribution fields; and the relayed bytes, identical whether the
//! observer reads them or not.

use std::time::Duration;

use crate::support::*;

const LOG_BOUND: Duration = Duration::from_secs(5);

const ANTHROPIC: &[u8] = include_bytes!("../fixtures/anthropic-stream.sse");
const RESPONSES: &[u8] = include_bytes!("../fixtures/openai-responses-stream.sse");
const CHAT: &[u8] = include_bytes!("../fixtures/openai-chat-stream.sse");
const GEMINI: &[u8] = include_bytes!("../fixtures/gemini-stream.sse");
const MESSAGE: &[u8] = include_bytes!("../fixtures/anthropic-message.json");

/// `body` as a chunked response of `content_type`, in chunks of varied sizes (small ones cut
/// the keys and figures apart).
fn chunked(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let mut rng = Rng::new(21);
    let mut i = 0;
    while i < body.len() {
        let n = rng.range(1, 700).min(body.len() - i);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&body[i..i + n]);
        out.extend_from_slice(b"\r\n");
        i += n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A proxy whose upstream answers `response` (written in random pieces) to every request,
/// with `extra` settings; returns the client's raw response to `request` and the proxy.
fn exchange(response: &[u8], extra: &[(&str, &str)], request: &str) -> (Vec<u8>, Proxy, Upstream) {
    let response = response.to_vec();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        let mut rng = Rng::new(7);
        while c.read_request().is_some() {
            let mut i = 0;
            while i < response.len() {
                let n = rng.range(1, 1500).min(response.len() - i);
                if c.send(&response[i..i + n]).is_err() {
                    return;
                }
                i += n;
            }
        }
    });
    let proxy = proxy_for(&up, extra);
    let r = roundtrip(proxy.addr(), request);
    assert_eq!(r.status(), 200);
    (r.raw(), proxy, up)
}

#[test]
fn the_access_line_has_the_figures_and_model_of_each_api() {
    let cases: [(&str, &[u8], &str, &str); 5] = [
        ("text/event-stream", ANTHROPIC, "input_tokens=18342 output_tokens=679 cache_read_tokens=16384 cache_creation_tokens=0 model=claude-sonnet-4-5-20250929", "/v1/messages"),
        ("text/event-stream", RESPONSES, "input_tokens=1066 output_tokens=311 cache_read_tokens=19968 model=gpt-5-codex", "/v1/responses"),
        ("text/event-stream; charset=utf-8", CHAT, "input_tokens=1138 output_tokens=38 cache_read_tokens=3072 model=gpt-4.1-2025-04-14", "/v1/chat/completions"),
        ("text/event-stream", GEMINI, "input_tokens=928 output_tokens=530 cache_read_tokens=8192 model=gemini-2.5-pro", "/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
        ("application/json", MESSAGE, "input_tokens=2095 output_tokens=503 cache_read_tokens=40960 cache_creation_tokens=1024 model=claude-opus-4-1-20250805", "/v1/messages"),
    ];
    for (ct, body, figures, path) in cases {
        let (_, proxy, _up) = exchange(&chunked(ct, body), &[], &post(path, "{}"));
        let line = format!("{path} 200 ");
        assert!(proxy.wait_for_stderr(&line, LOG_BOUND));
        let stderr = proxy.stderr_so_far();
        let line = stderr.lines().find(|l| l.contains(&line)).unwrap();
        assert!(line.ends_with(figures), "{line}");
    }
}

#[test]
fn the_relayed_bytes_are_the_same_with_the_observer_on_and_off() {
    for (ct, body) in [
        ("text/event-stream", ANTHROPIC),
        ("text/event-stream", RESPONSES),
        ("text/event-stream", CHAT),
        ("text/event-stream", GEMINI),
        ("application/json", MESSAGE),
    ] {
        let response = chunked(ct, body);
        let request = post("/v1/messages", "{}");
        let (on, proxy_on, _a) = exchange(&response, &[], &request);
        let (off, proxy_off, _b) = exchange(&response, &[("USAGE_OBSERVE", "off")], &request);
        assert_eq!(on, response, "relayed as received");
        assert_eq!(on, off);
        assert!(proxy_on.wait_for_stderr("output_tokens=", LOG_BOUND));
        assert!(proxy_off.wait_for_stderr("/v1/messages 200 ", LOG_BOUND));
        assert!(!proxy_off.stderr_so_far().contains("_tokens="));
    }
}

#[test]
fn a_malformed_or_oversized_usage_event_is_skipped() {
    let mut body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":5}}}\n\n".to_vec();
    body.extend_from_slice(b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":\n\n");
    body.extend_from_slice(b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":\"");
    body.extend_from_slice(&vec![b'9'; 40 * 1024]);
    body.extend_from_slice(b"\"}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    let response = chunked("text/event-stream", &body);
    let (got, proxy, _up) = exchange(&response, &[], &post("/v1/messages", "{}"));
    assert_eq!(got, response);
    assert!(proxy.wait_for_stderr("/v1/messages 200 ", LOG_BOUND));
    let stderr = proxy.stderr_so_far();
    assert!(
        stderr.contains(" input_tokens=5 model=claude-x\n"),
        "{stderr}"
    );
    assert!(!stderr.contains("output_tokens"), "{stderr}");
}

#[test]
fn count_tokens_is_never_observed() {
    let json = b"{\"input_tokens\":2095,\"usage\":{\"input_tokens\":2095}}";
    let response = chunked("application/json", json);
    let metrics = [("METRICS_ADDR", "127.0.0.1:0")];
    let (_, proxy, _up) = exchange(
        &response,
        &metrics,
        &post("/v1/messages/count_tokens", "{}"),
    );
    assert!(proxy.wait_for_stderr("/v1/messages/count_tokens 200 ", LOG_BOUND));
    assert!(!proxy.stderr_so_far().contains("input_tokens="));
    let m = roundtrip(proxy.metrics_addr().unwrap(), get("/metrics")).body_str();
    assert!(
        m.contains("agent_loop_proxy_tokens_total{kind=\"input\"} 0\n"),
        "{m}"
    );
}

#[test]
fn the_token_metrics_count_by_kind_and_model() {
    let response = chunked("text/event-stream", ANTHROPIC);
    let metrics = [("METRICS_ADDR", "127.0.0.1:0")];
    let (_, proxy, _up) = exchange(&response, &metrics, &post("/v1/messages", "{}"));
    assert!(proxy.wait_for_stderr("output_tokens=679", LOG_BOUND));
    let m = roundtrip(proxy.metrics_addr().unwrap(), get("/metrics")).body_str();
    for line in [
        "agent_loop_proxy_tokens_total{kind=\"input\"} 18342",
        "agent_loop_proxy_tokens_total{kind=\"output\"} 679",
        "agent_loop_proxy_tokens_total{kind=\"cache_read\"} 16384",
        "agent_loop_proxy_model_tokens_total{model=\"claude-sonnet-4-5-20250929\",kind=\"output\"} 679",
    ] {
        assert!(m.contains(&format!("{line}\n")), "{line} not in {m}");
    }
}

#[test]
fn attribution_fields_are_logged_and_never_a_secret() {
    let response = chunked("application/json", MESSAGE);
    let phantom = "phantom-PH4NT0M-token";
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {phantom}\r\nX-Claude-Code-Session-Id: 3f2a-Session\\1\r\nx-claude-code-agent-id: a b\r\nx-claude-code-parent-agent-id: p-{phantom}\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let settings = [("PHANTOM_TOKEN", phantom), ("LOG_FORMAT", "json")];
    let (_, proxy, _up) = exchange(&response, &settings, &request);
    assert!(proxy.wait_for_stderr("\"event\":\"request\"", LOG_BOUND));
    let stderr = proxy.stderr_so_far();
    let line = stderr
        .lines()
        .find(|l| l.contains("\"event\":\"request\""))
        .unwrap();
    assert!(
        line.contains(r#""headers":{"x-claude-code-session-id":"3f2a-Session\\x5c1","x-claude-code-agent-id":"(withheld)","x-claude-code-parent-agent-id":"(withheld)"}"#),
        "{line}"
    );
    assert!(line.contains("\"input_tokens\":2095,"), "{line}");
    assert!(
        line.contains("\"model\":\"claude-opus-4-1-20250805\""),
        "{line}"
    );
    assert!(!stderr.contains("PH4NT0M"), "{stderr}");
    assert!(!stderr.contains(TOKEN), "{stderr}");
}

#[test]
fn a_model_name_holding_the_token_is_not_logged() {
    let json = format!("{{\"model\":\"{TOKEN}\",\"usage\":{{\"input_tokens\":3}}}}");
    let response = chunked("application/json", json.as_bytes());
    let (got, proxy, _up) = exchange(&response, &[], &post("/v1/messages", "{}"));
    assert_ne!(got, response, "masked in the body");
    assert!(proxy.wait_for_stderr(" input_tokens=3", LOG_BOUND));
    let stderr = proxy.stderr_so_far();
    assert!(!stderr.contains("model="), "{stderr}");
    assert!(!stderr.contains(TOKEN), "{stderr}");
}

#[test]
#[ignore = "needs promtool"]
fn promtool_accepts_the_token_metrics() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    require_tool("promtool", "prometheus");
    let response = chunked("text/event-stream", GEMINI);
    let metrics = [("METRICS_ADDR", "127.0.0.1:0")];
    let (_, proxy, _up) = exchange(&response, &metrics, &post("/v1/x", "{}"));
    assert!(proxy.wait_for_stderr("model=gemini-2.5-pro", LOG_BOUND));
    let m = roundtrip(proxy.metrics_addr().unwrap(), get("/metrics")).body_str();
    assert!(m.contains("model_tokens_total{model=\"gemini-2.5-pro\",kind=\"input\"} 928\n"));
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}
