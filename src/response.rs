//! Pure response handling: parse and check the upstream's response head, decide how its body
//! ends (RFC 9112 §6.3), track the body as it streams (framing + scrubbing), and render the
//! proxy's own answers.

use crate::error::Problem;
use crate::framing::{ChunkError, ChunkLimits, ChunkedDecoder, Step};
use crate::head::{parse_content_length, ScanLimits};
use crate::scrub::{self, Scrubber, TokenFinder};

/// Largest upstream response head.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest upstream status or field line.
pub const MAX_RESPONSE_LINE: usize = 16 * 1024;
/// Most fields in an upstream response head.
pub const MAX_RESPONSE_HEADERS: usize = 128;

/// Scanner limits for response heads: every breach is the upstream's fault (502).
pub const RESPONSE_SCAN: ScanLimits = ScanLimits {
    start_line: MAX_RESPONSE_LINE,
    field_line: MAX_RESPONSE_LINE,
    head: MAX_RESPONSE_HEAD,
    start_line_problem: Problem::UpstreamMalformed,
    head_problem: Problem::UpstreamMalformed,
    syntax_problem: Problem::UpstreamMalformed,
};

/// How the response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// HEAD, 1xx, 204, 304: the head is the whole message (§6.3 rule 1, R28).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked; relayed as received.
    Chunked,
    /// Until the upstream closes (§6.3 rule 8, R29): the client connection closes too.
    UntilClose,
}

/// What the relay needs to know about a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// A 1xx other than 101: relay (or drop) and wait for the final response.
    pub interim: bool,
    pub body: ResponseBody,
    /// The upstream lets us reuse the connection after this response.
    pub upstream_keep_alive: bool,
    /// The client connection closes after this response (`Connection: close` was written).
    pub close_client: bool,
}

/// Per-request facts the response rules depend on.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext<'a> {
    pub request_was_head: bool,
    /// The client connection will close after this exchange whatever the response says.
    pub close_client: bool,
    /// The client speaks HTTP/1.0: a chunked body is de-chunked for it (R31).
    pub dechunk: bool,
    /// Searches for the token, masked wherever it appears in the head.
    pub finder: &'a TokenFinder<'a>,
}

/// Upstream hop-by-hop fields (RFC 9110 §7.6.1) not relayed to the client.
const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"upgrade",
];

/// Whether any element of a comma-separated list satisfies `f`.
fn list_items_any(value: &[u8], f: impl Fn(&[u8]) -> bool) -> bool {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|i| !i.is_empty())
        .any(f)
}

/// Parses a complete response head (ending with the blank line) and writes the head for the
/// client into `out` (cleared first), with the token masked.
pub fn parse_response(
    head: &[u8],
    ctx: &ResponseContext<'_>,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, Problem> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    // Default ParserConfig: obs-fold (R15), space before colon (R14) and invalid fields are
    // errors, not tolerated.
    match res.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return Err(Problem::UpstreamMalformed),
    }
    let (Some(minor), Some(status)) = (res.version, res.code) else {
        return Err(Problem::UpstreamMalformed);
    };
    if !(100..=599).contains(&status) {
        return Err(Problem::UpstreamMalformed);
    }
    // Invariant 7: no protocol switching (we never asked for one).
    if status == 101 {
        return Err(Problem::UpstreamSwitchedProtocols);
    }
    let interim = status < 200;

    let mut close = false;
    let mut keep_alive_10 = false;
    let mut content_length = None;
    let mut cl_count = 0;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut options: Vec<&[u8]> = Vec::new();
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            cl_count += 1;
            content_length = Some(parse_content_length(h.value).ok_or(Problem::UpstreamMalformed)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_count += 1;
            te = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"content-encoding")
            && list_items_any(h.value, |i| !i.eq_ignore_ascii_case(b"identity"))
        {
            // We asked for identity; a compressed body would hide the token from masking.
            return Err(Problem::UpstreamEncoded);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for item in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if item.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if item.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_10 = true;
                } else if item.eq_ignore_ascii_case(b"content-length")
                    || item.eq_ignore_ascii_case(b"transfer-encoding")
                {
                    // Removing the framing field would leave the client unable to find the
                    // end of the body (it would read into the next response).
                    return Err(Problem::UpstreamMalformed);
                } else if !item.is_empty() {
                    // No cap: every named field is removed (bounded by the head size).
                    options.push(item);
                }
            }
        }
    }

    // Conflicting framing fields are refused even where no body follows (HEAD, 204, 304):
    // they are relayed, and a sender must not send both (RFC 9112 §6.1, §6.3; R1, R6).
    if (te.is_some() && content_length.is_some()) || cl_count > 1 {
        return Err(Problem::UpstreamMalformed);
    }
    // RFC 9112 §6.3, in its order.
    let body = if ctx.request_was_head || interim || status == 204 || status == 304 {
        ResponseBody::None
    } else {
        match (te, content_length) {
            (Some(_), Some(_)) => return Err(Problem::UpstreamMalformed),
            // RFC 9112 §6.1: HTTP/1.0 has no transfer codings.
            (Some(_), None) if minor == 0 => return Err(Problem::UpstreamMalformed),
            (Some(v), None) if te_count == 1 && v.eq_ignore_ascii_case(b"chunked") => {
                ResponseBody::Chunked
            }
            // Other codings: we could only relay until close, and cannot de-chunk them for a
            // 1.0 client; refused.
            (Some(_), None) => return Err(Problem::UpstreamMalformed),
            // R6: repeated or invalid Content-Length.
            (None, Some(_)) if cl_count > 1 => return Err(Problem::UpstreamMalformed),
            (None, Some(n)) => ResponseBody::Length(n),
            (None, None) => ResponseBody::UntilClose,
        }
    };
    let upstream_keep_alive =
        !close && (minor == 1 || keep_alive_10) && body != ResponseBody::UntilClose;
    let dechunk = ctx.dechunk && body == ResponseBody::Chunked;
    let close_client =
        !interim && (ctx.close_client || body == ResponseBody::UntilClose || dechunk);

    out.clear();
    // Our own version (RFC 9110 §6.2), the upstream's status and reason.
    out.extend_from_slice(b"HTTP/1.1 ");
    crate::framing::push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        let hop = HOP_BY_HOP
            .iter()
            .chain(options.iter())
            .any(|n| name.eq_ignore_ascii_case(n));
        if hop || (dechunk && name.eq_ignore_ascii_case(b"transfer-encoding")) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if close_client {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    scrub::mask_all(out, ctx.finder);
    Ok(ResponseHead {
        status,
        interim,
        body,
        upstream_keep_alive,
        close_client,
    })
}

/// What one call of [`BodyTracker::advance`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// `buf[..ready]` may be sent to the client now.
    pub ready: usize,
    /// `buf[ready..keep]` is held (scrubbing) and must stay at the front of the buffer.
    pub keep: usize,
    /// The body is complete (after sending `ready`).
    pub done: bool,
    /// Bytes followed the end of the body: the upstream connection cannot be reused (R30).
    pub excess: bool,
}

enum Framing {
    None,
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// Tracks one response body as bytes arrive: where it ends, which bytes are payload (to be
/// scrubbed), and, for an HTTP/1.0 client, the payload alone (de-chunked).
pub struct BodyTracker<'t> {
    framing: Framing,
    /// Masks the token in the payload.
    scrub: Scrubber<'t>,
    /// Masks the token in chunk-extension and trailer text. A token (visible ASCII) cannot
    /// span a line ending, so this one's hold is released at the end of each such run.
    meta: Scrubber<'t>,
    dechunk: bool,
}

impl<'t> BodyTracker<'t> {
    pub fn new(body: ResponseBody, dechunk: bool, finder: &'t TokenFinder<'t>) -> BodyTracker<'t> {
        let framing = match body {
            ResponseBody::None | ResponseBody::Length(0) => Framing::None,
            ResponseBody::Length(n) => Framing::Length { remaining: n },
            ResponseBody::Chunked => Framing::Chunked(ChunkedDecoder::new(ChunkLimits::RESPONSE)),
            ResponseBody::UntilClose => Framing::UntilClose,
        };
        BodyTracker {
            framing,
            scrub: Scrubber::new(finder),
            meta: Scrubber::new(finder),
            dechunk: dechunk && body == ResponseBody::Chunked,
        }
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        match &self.framing {
            Framing::None => true,
            Framing::Length { remaining } => *remaining == 0,
            Framing::Chunked(d) => d.is_done(),
            Framing::UntilClose => false,
        }
    }

    /// Whether the body ends when the upstream closes.
    pub fn until_close(&self) -> bool {
        matches!(self.framing, Framing::UntilClose)
    }

    /// `buf[..old]` was kept from the previous call (already processed); `buf[old..]` is new.
    /// Processes the new bytes in place (masking, de-chunking) and says what may be sent.
    pub fn advance(&mut self, buf: &mut [u8], old: usize) -> Result<Advance, Problem> {
        let mut pos = old; // next unprocessed input byte
        let mut end = old; // end of the output region (== pos unless de-chunking)
        let mut done = self.is_done();
        while pos < buf.len() && !done {
            match &mut self.framing {
                Framing::None => done = true,
                Framing::UntilClose => {
                    self.scrub.scan(buf, pos..buf.len());
                    pos = buf.len();
                    end = pos;
                }
                Framing::Length { remaining } => {
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len() - pos);
                    self.scrub.scan(buf, pos..pos + n);
                    *remaining -= n as u64;
                    pos += n;
                    end = pos;
                    done = *remaining == 0;
                }
                Framing::Chunked(decoder) => {
                    let step = decoder.step(&buf[pos..]).map_err(|e| match e {
                        ChunkError::Malformed
                        | ChunkError::TooLarge
                        | ChunkError::ExtensionTooLong
                        | ChunkError::TrailersTooLarge => Problem::UpstreamMalformed,
                    })?;
                    if !matches!(step, Step::Meta(_)) {
                        self.meta.finish();
                    }
                    if decoder.payload_done() {
                        // The last chunk was read: no payload byte can complete a held prefix.
                        self.scrub.finish();
                    }
                    match step {
                        Step::Data(n) => {
                            if self.dechunk {
                                buf.copy_within(pos..pos + n, end);
                            }
                            let at = if self.dechunk { end } else { pos };
                            self.scrub.scan(buf, at..at + n);
                            pos += n;
                            end = if self.dechunk { end + n } else { pos };
                        }
                        Step::Meta(n) => {
                            // Relayed as received (no re-framing), so masked like payload;
                            // dropped altogether when de-chunking.
                            if !self.dechunk {
                                self.meta.scan(buf, pos..pos + n);
                            }
                            pos += n;
                            if !self.dechunk {
                                end = pos;
                            }
                        }
                        Step::Framing(n) => {
                            pos += n;
                            if !self.dechunk {
                                end = pos;
                            }
                        }
                        Step::Done(n) => {
                            pos += n;
                            if !self.dechunk {
                                end = pos;
                            }
                            done = true;
                        }
                    }
                }
            }
        }
        let excess = done && pos < buf.len();
        if done {
            self.scrub.finish();
            self.meta.finish();
        }
        let held = [self.scrub.hold_from(), self.meta.hold_from()]
            .into_iter()
            .flatten()
            .min();
        let ready = held.unwrap_or(end).min(end);
        Ok(Advance {
            ready,
            keep: end,
            done,
            excess,
        })
    }

    /// The relay moved `buf[ready..keep]` to the front.
    pub fn shifted(&mut self, ready: usize) {
        self.scrub.shift(ready);
        self.meta.shift(ready);
    }

    /// Stops holding bytes back: everything processed may be sent.
    pub fn release(&mut self) {
        self.scrub.finish();
        self.meta.finish();
    }

    /// The upstream closed: for a close-delimited body this is its end; release held bytes.
    pub fn finish_at_close(&mut self) -> bool {
        self.release();
        self.until_close()
    }
}

/// The interim response the proxy sends itself for `Expect: 100-continue` (R26).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The health answer's body.
pub const HEALTH_BODY: &[u8] = b"agent-loop-proxy ok";

/// Renders `GET`/`HEAD /health`.
pub fn health(head_only: bool, close: bool, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: 19\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(HEALTH_BODY);
    }
}

/// Renders the proxy's own error answer in the Anthropic error shape.
pub fn error(problem: Problem, head_only: bool, close: bool, out: &mut Vec<u8>) {
    let status = problem.status();
    let body = format!(
        "{{\"type\":\"error\",\"error\":{{\"type\":\"{}\",\"message\":\"proxy: {}\"}}}}",
        problem.error_type(),
        problem.message()
    );
    out.clear();
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason(status)).as_bytes());
    out.extend_from_slice(b"Content-Type: application/json\r\n");
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests;
