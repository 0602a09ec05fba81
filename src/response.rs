//! Pure response-head handling: parse and check the upstream's response head, decide how its
//! body ends (RFC 9112 §6.3), and write the head the client gets: the upstream's status and
//! fields minus its connection's hop-by-hop fields, with the token masked. The body itself is
//! tracked by `tracker.rs`.

use crate::error::Problem;
use crate::framing::{FieldFraming, FramingFields};
use crate::limits::MAX_RESPONSE_HEADERS;
use crate::persist;
use crate::scrub::{self, Mask};
use crate::syntax::{
    connection_options, list_items, push_field, push_status_line, ConnectionOption, HOP_BY_HOP,
};
use crate::usage::BodyKind;

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
    /// The client sees a body that ends when the connection closes: the upstream's does
    /// (§6.3 rule 8), or it is de-chunked for an HTTP/1.0 client (R31). Its end cannot be
    /// told from a truncation by a FIN (R29).
    pub close_delimited: bool,
    /// The upstream's `request-id` (what Anthropic support asks for), if it was safe to log.
    pub request_id: RequestId,
    /// Token occurrences masked in the head.
    pub masked: u64,
    /// What its `Content-Type` says the body is, for the usage observer.
    pub kind: BodyKind,
}

/// A `request-id` value: at most 128 bytes of `A-Z a-z 0-9 _ - . :`, else none is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    bytes: [u8; 128],
    len: u8,
}

impl RequestId {
    pub const NONE: RequestId = RequestId {
        bytes: [0; 128],
        len: 0,
    };

    /// Keeps `v` if every byte is in the safe set.
    pub fn from_value(v: &[u8]) -> RequestId {
        let safe = |b: &u8| b.is_ascii_alphanumeric() || b"_-.:".contains(b);
        if v.is_empty() || v.len() > 128 || !v.iter().all(safe) {
            return RequestId::NONE;
        }
        let mut id = RequestId::NONE;
        id.bytes[..v.len()].copy_from_slice(v);
        id.len = v.len() as u8;
        id
    }

    /// The id, if there is one (safe ASCII, so always valid UTF-8).
    pub fn as_str(&self) -> Option<&str> {
        let s = std::str::from_utf8(&self.bytes[..usize::from(self.len)]).ok()?;
        (!s.is_empty()).then_some(s)
    }
}

/// Per-request facts the response rules depend on.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext {
    pub request_was_head: bool,
    /// The client connection will close after this exchange whatever the response says.
    pub close_client: bool,
    /// The client speaks HTTP/1.0: a chunked body is de-chunked for it (R31).
    pub dechunk: bool,
}

/// Parses a complete response head (ending with the blank line) and writes the head for the
/// client into `out` (cleared first), with each of `tokens` masked (every token a running
/// request uses, as the credential store has them when the head arrives); a `request-id`
/// holding one of them is not reported.
pub fn parse_response(
    head: &[u8],
    ctx: &ResponseContext,
    tokens: &[Mask],
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
    // No protocol switching (docs/http-rules.md §3.5): we never asked for one.
    if status == 101 {
        return Err(Problem::UpstreamSwitchedProtocols);
    }
    let interim = status < 200;
    let fields = Fields::check(res.headers)?;
    let body = fields.body(ctx, status, minor)?;
    let upstream_keep_alive = persist::upstream_allows_reuse(
        minor == 1,
        fields.keep_alive_10,
        fields.close,
        body == ResponseBody::UntilClose,
    );
    let dechunk = ctx.dechunk && body == ResponseBody::Chunked;
    let close_delimited = body == ResponseBody::UntilClose || dechunk;
    let close_client = !interim && !persist::client_may_persist(!ctx.close_client, close_delimited);

    out.clear();
    // Our own version (RFC 9110 §6.2), the upstream's status and reason.
    push_status_line(out, status, res.reason.unwrap_or("").as_bytes());
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        let hop = HOP_BY_HOP
            .iter()
            .chain(fields.options.iter())
            .any(|n| name.eq_ignore_ascii_case(n));
        // De-chunked for an HTTP/1.0 client: the coding is gone, so is its field.
        let dechunked = dechunk && name.eq_ignore_ascii_case(b"transfer-encoding");
        if !hop && !dechunked {
            push_field(out, name, h.value);
        }
    }
    if close_client {
        push_field(out, b"Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    let masked = tokens
        .iter()
        .map(|t| scrub::mask_all(out, t.finder()))
        .sum();
    let request_id = res
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("request-id"))
        // An upstream that echoes the token there does not get it into the log.
        .filter(|h| tokens.iter().all(|t| t.finder().find(h.value).is_none()))
        .map_or(RequestId::NONE, |h| RequestId::from_value(h.value));
    Ok(ResponseHead {
        status,
        interim,
        body,
        upstream_keep_alive,
        close_client,
        close_delimited,
        request_id,
        masked,
        kind: fields.kind,
    })
}

/// What the fields of a response head decide, gathered in one pass.
struct Fields<'h> {
    framing: FramingFields<'h>,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive` (HTTP/1.0's opt-in).
    keep_alive_10: bool,
    /// Fields the upstream's `Connection` named: removed. Not capped: bounded by the head.
    options: Vec<&'h [u8]>,
    /// The body's kind, by its `Content-Type` (the last one, if repeated).
    kind: BodyKind,
}

impl<'h> Fields<'h> {
    fn check(headers: &[httparse::Header<'h>]) -> Result<Fields<'h>, Problem> {
        let mut f = Fields {
            framing: FramingFields::default(),
            close: false,
            keep_alive_10: false,
            options: Vec::new(),
            kind: BodyKind::Other,
        };
        for h in headers {
            let name = h.name.as_bytes();
            let framing = f.framing.see(name, h.value);
            if framing.map_err(|_| Problem::UpstreamMalformed)? {
                continue;
            }
            if name.eq_ignore_ascii_case(b"content-encoding")
                && list_items(h.value).any(|i| !i.eq_ignore_ascii_case(b"identity"))
            {
                // We asked for identity; a compressed body would hide the token from masking.
                return Err(Problem::UpstreamEncoded);
            } else if name.eq_ignore_ascii_case(b"connection") {
                f.connection(h.value)?;
            } else if name.eq_ignore_ascii_case(b"content-type") {
                f.kind = BodyKind::of(h.value);
            }
        }
        Ok(f)
    }

    fn connection(&mut self, value: &'h [u8]) -> Result<(), Problem> {
        for option in connection_options(value) {
            match option {
                ConnectionOption::Close => self.close = true,
                ConnectionOption::KeepAlive => self.keep_alive_10 = true,
                // Removing the framing field would leave the client unable to find the end
                // of the body (it would read into the next response).
                ConnectionOption::Field(n)
                    if n.eq_ignore_ascii_case(b"content-length")
                        || n.eq_ignore_ascii_case(b"transfer-encoding") =>
                {
                    return Err(Problem::UpstreamMalformed)
                }
                ConnectionOption::Field(n) => self.options.push(n),
                // Not a token, so it names no field (httparse checks that names are tokens).
                ConnectionOption::Invalid => {}
            }
        }
        Ok(())
    }

    /// RFC 9112 §6.3, in its order. Conflicting framing fields are refused even where no
    /// body follows (HEAD, 204, 304): they are relayed.
    fn body(&self, ctx: &ResponseContext, status: u16, minor: u8) -> Result<ResponseBody, Problem> {
        if self.framing.conflicting() {
            return Err(Problem::UpstreamMalformed);
        }
        if ctx.request_was_head || status < 200 || status == 204 || status == 304 {
            return Ok(ResponseBody::None);
        }
        // Other codings than one `chunked` could only be relayed until close, and not
        // de-chunked for a 1.0 client: refused, like everything ambiguous.
        match self.framing.decide(minor == 0) {
            Ok(FieldFraming::Chunked) => Ok(ResponseBody::Chunked),
            Ok(FieldFraming::Length(n)) => Ok(ResponseBody::Length(n)),
            Ok(FieldFraming::Absent) => Ok(ResponseBody::UntilClose),
            Err(_) => Err(Problem::UpstreamMalformed),
        }
    }
}

/// Marks a client head that [`parse_response`] wrote (`out`, ending with the blank line) as
/// one to retry: the token the upstream rejected was replaced, so the same request, sent
/// again, carries another one. `x-should-retry: true` is what Anthropic's SDKs obey (they
/// retry a 401 only when told); an upstream's own `x-should-retry` is replaced.
pub fn mark_should_retry(out: &mut Vec<u8>) {
    const FIELD: &[u8] = b"x-should-retry";
    let Some(fields) = out.strip_suffix(b"\r\n") else {
        return;
    };
    let mut marked = Vec::with_capacity(out.len() + FIELD.len() + 8);
    for (i, line) in fields.split_inclusive(|&b| b == b'\n').enumerate() {
        let named = line.get(..FIELD.len() + 1).is_some_and(|n| {
            n[..FIELD.len()].eq_ignore_ascii_case(FIELD) && n[FIELD.len()] == b':'
        });
        if i == 0 || !named {
            marked.extend_from_slice(line);
        }
    }
    marked.extend_from_slice(b"x-should-retry: true\r\n\r\n");
    *out = marked;
}

#[cfg(test)]
mod tests;
