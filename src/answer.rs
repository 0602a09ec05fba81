//! Pure: the answers the proxy gives itself (docs/http-rules.md §10.2): the
//! interim 100 Continue, `/health`, and errors as a status with a JSON body in the Anthropic
//! error shape, so agents display them well. Static text only, never peer bytes.

use crate::error::Problem;
use crate::syntax::{push_content_length, push_field, push_status_line};

/// The interim response the proxy sends itself for `Expect: 100-continue` (R26).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The health answer's body.
pub const HEALTH_BODY: &[u8] = b"agent-loop-proxy ok";

/// Renders `GET`/`HEAD /health`.
pub fn health(head_only: bool, close: bool, out: &mut Vec<u8>) {
    out.clear();
    push_status_line(out, 200, b"OK");
    push_field(out, b"Content-Type", b"text/plain; charset=utf-8");
    push_field(out, b"Cache-Control", b"no-store");
    end_head(out, HEALTH_BODY.len(), close);
    if !head_only {
        out.extend_from_slice(HEALTH_BODY);
    }
}

/// Renders the proxy's own error answer in the Anthropic error shape.
pub fn error(problem: Problem, head_only: bool, close: bool, out: &mut Vec<u8>) {
    let status = problem.status();
    let detail = problem
        .detail()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let body = format!(
        "{{\"type\":\"error\",\"error\":{{\"type\":\"{}\",\"message\":\"proxy: {}{detail}\"}}}}",
        problem.error_type(),
        problem.message()
    );
    out.clear();
    push_status_line(out, status, reason(status).as_bytes());
    push_field(out, b"Content-Type", b"application/json");
    if status == 426 {
        // RFC 9110 §15.5.22: a 426 MUST list in `Upgrade` the protocols the server would
        // accept. The proxy will not switch to WebSocket here, so naming `websocket` would
        // invite the very retry the 426 exists to stop; the one protocol it serves is the
        // HTTP/1.1 the client already speaks, so that is what it names: "use plain HTTP".
        push_field(out, b"Upgrade", b"HTTP/1.1");
    }
    if let Some(secs) = problem.retry_after() {
        push_field(out, b"Retry-After", secs.to_string().as_bytes());
    }
    if problem.is_ceiling() {
        push_field(out, b"x-should-retry", b"false");
    }
    end_head(out, body.len(), close);
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
}

/// `Content-Length`, `Connection: close` when the connection ends here, the blank line.
fn end_head(out: &mut Vec<u8>, body_len: usize, close: bool) {
    push_content_length(out, body_len as u64);
    if close {
        push_field(out, b"Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_answers_are_anthropic_shaped_and_static() {
        let mut out = Vec::new();
        error(Problem::BadFraming, false, true, &mut out);
        let s = String::from_utf8(out.clone()).unwrap();
        let body = r#"{"type":"error","error":{"type":"invalid_request_error","message":"proxy: ambiguous or invalid message framing"}}"#;
        assert_eq!(s, format!("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
        for (p, status, kind) in [
            (Problem::Unauthorized, 401, "authentication_error"),
            (Problem::BodyTooLarge, 413, "request_too_large"),
            (Problem::UpstreamUnreachable, 502, "api_error"),
            (Problem::UpstreamResponseTimeout, 504, "timeout_error"),
            (Problem::HeadTooLarge, 431, "invalid_request_error"),
            (Problem::HeadTimeout, 408, "invalid_request_error"),
        ] {
            error(p, false, false, &mut out);
            let s = String::from_utf8(out.clone()).unwrap();
            assert!(s.starts_with(&format!("HTTP/1.1 {status} ")), "{p:?}");
            assert!(s.contains(&format!("\"type\":\"{kind}\"")), "{p:?}");
        }
        error(Problem::CredentialUnavailable, false, false, &mut out);
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(s.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{s}");
        assert!(s.contains("\r\nRetry-After: 10\r\n"), "{s}");
        assert!(s.ends_with(r#""type":"api_error","message":"proxy: credential unavailable"}}"#));
        error(Problem::RequestCeiling(31), false, false, &mut out);
        let s = String::from_utf8(out.clone()).unwrap();
        let body = r#"{"type":"error","error":{"type":"rate_limit_error","message":"proxy: request ceiling LIMIT_REQUESTS reached"}}"#;
        assert_eq!(s, format!("HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 31\r\nx-should-retry: false\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        health(false, false, &mut out);
        assert!(out.ends_with(b"\r\n\r\nagent-loop-proxy ok"));
    }
}
