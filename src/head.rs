//! Pure request-head handling: find the end of the head, parse it strictly, decide the body
//! framing, and write the canonical head for the upstream. Bytes in, decisions out; no I/O.
//!
//! httparse is the lexer. It is not a framing validator (HARDENING.md §4), so this module adds
//! what it lets through: bare LF, fragments and absolute/authority forms in the target,
//! lower-case methods, obs-text in fields we interpret, and every framing rule of RFC 9112 §6.
//!
//! The upstream head is written fresh (invariant 1 of HARDENING.md §1): a rebuilt request line,
//! `Host` from TARGET, the client's remaining fields as `name: value\r\n` in their order, one
//! canonical framing field, and our credential last. Every client byte that reaches it has
//! passed the checks below.

use std::ops::Range;

use crate::config::{Limits, Target};
use crate::error::Problem;
use crate::secret::constant_time_eq;

/// The beta flag OAuth tokens need on api.anthropic.com.
pub const OAUTH_BETA: &[u8] = b"oauth-2025-04-20";

/// Incremental search for the end of a head, checking line limits and line endings as bytes
/// arrive, so a peer is refused as soon as it breaks a rule and each byte is looked at once.
#[derive(Debug, Clone, Default)]
pub struct HeadScanner {
    /// Bytes already examined.
    pos: usize,
    /// Start of the line being read.
    line_start: usize,
    /// Whether the start line (request or status line) has been seen.
    seen_start_line: bool,
}

/// Limits for [`HeadScanner`]; each breach maps to its own [`Problem`].
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    pub start_line: usize,
    pub field_line: usize,
    pub head: usize,
    pub start_line_problem: Problem,
    pub head_problem: Problem,
    pub syntax_problem: Problem,
}

impl ScanLimits {
    /// The request-side limits.
    pub fn request(l: &Limits) -> ScanLimits {
        ScanLimits {
            start_line: l.max_request_line,
            field_line: l.max_field_line,
            head: l.max_head_bytes,
            start_line_problem: Problem::UriTooLong,
            head_problem: Problem::HeadTooLarge,
            syntax_problem: Problem::MalformedHead,
        }
    }
}

impl HeadScanner {
    pub fn new() -> HeadScanner {
        HeadScanner::default()
    }

    /// Examines `buf` (which only ever grows between calls, until [`HeadScanner::reset`]).
    /// Returns `Ok(Some(len))` once the head is complete (`len` includes the blank line),
    /// `Ok(None)` when more bytes are needed, or the rule it broke.
    ///
    /// RFC 9112 §2.2: a bare CR is invalid and bare LF is only a MAY; we refuse both (R16),
    /// since httparse would accept bare LF and an upstream might not. Empty lines before the
    /// start line are skipped (RFC 9112 §2.2 SHOULD) but count toward the head limit.
    ///
    /// The answer does not depend on how the bytes were split into reads: when several rules
    /// are broken, the one that became certain at the earliest byte is reported.
    pub fn scan(&mut self, buf: &[u8], lim: &ScanLimits) -> Result<Option<usize>, Problem> {
        loop {
            let Some(i) = memchr::memchr2(b'\r', b'\n', &buf[self.pos..]) else {
                // No line ending yet: every byte so far belongs to the current line.
                self.pos = buf.len();
                return self
                    .limit_broken(buf.len(), buf.len(), lim)
                    .map_or(Ok(None), Err);
            };
            let at = self.pos + i;
            if buf[at] == b'\n' {
                // An LF without CR (a CRLF is consumed whole below), certain at `at + 1`.
                return Err(self
                    .limit_broken(at, at + 1, lim)
                    .unwrap_or(lim.syntax_problem));
            }
            let Some(&next) = buf.get(at + 1) else {
                // A CR at the end: look at it again when more bytes arrive.
                self.pos = at;
                return self.limit_broken(at, buf.len(), lim).map_or(Ok(None), Err);
            };
            if let Some(p) = self.limit_broken(at, at + 2, lim) {
                return Err(p);
            }
            if next != b'\n' {
                return Err(lim.syntax_problem);
            }
            let empty = at == self.line_start;
            self.pos = at + 2;
            self.line_start = self.pos;
            if !empty {
                self.seen_start_line = true;
            } else if self.seen_start_line {
                return Ok(Some(self.pos));
            }
            // An empty line before the start line is skipped (still counted).
        }
    }

    /// The size rule broken once the current line is known to run to `line_end` and `seen`
    /// bytes have arrived, if any. When both are broken, the one certain at the earlier byte.
    fn limit_broken(&self, line_end: usize, seen: usize, lim: &ScanLimits) -> Option<Problem> {
        let (line_limit, line_problem) = if self.seen_start_line {
            (lim.field_line, lim.head_problem)
        } else {
            (lim.start_line, lim.start_line_problem)
        };
        let line_certain_at = self.line_start.saturating_add(line_limit).saturating_add(1);
        let head_certain_at = lim.head.saturating_add(1);
        match (line_end - self.line_start > line_limit, seen > lim.head) {
            (true, true) if line_certain_at <= head_certain_at => Some(line_problem),
            (true, false) => Some(line_problem),
            (_, true) => Some(lim.head_problem),
            (false, false) => None,
        }
    }

    /// Forgets the previous head, for the next message on the connection.
    pub fn reset(&mut self) {
        *self = HeadScanner::default();
    }
}

/// Methods the proxy forwards. Methods are case-sensitive (RFC 9110 §9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Method {
    fn parse(m: &str) -> Result<Method, Problem> {
        Ok(match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            // R22/R25: CONNECT would open a tunnel, TRACE would reflect our credential.
            "CONNECT" | "TRACE" | "TRACK" => return Err(Problem::MethodNotAllowed),
            // R36: anything else (including lower-case `get`) is not implemented.
            _ => return Err(Problem::MethodNotImplemented),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }

    /// RFC 9110 §9.2.2: safe to retry when nothing of the response arrived.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Post | Method::Patch)
    }
}

/// HTTP version of the client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the request body is framed (RFC 9112 §6.3), decided once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No Content-Length and no Transfer-Encoding: zero length (R9).
    Empty,
    /// Exactly this many bytes (possibly zero).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl BodyKind {
    /// Whether body bytes follow the head.
    pub fn has_bytes(self) -> bool {
        !matches!(self, BodyKind::Empty | BodyKind::Length(0))
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET`/`HEAD /health`, answered by the proxy.
    Health,
    /// Everything else, to TARGET.
    Forward,
}

/// What the connection loop needs to know about a parsed request. The upstream head itself
/// was written into the caller's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub version: Version,
    /// The path without the query, within the input buffer (for the log line).
    pub path: Range<usize>,
    pub body: BodyKind,
    /// The client allows the connection to persist (HTTP/1.1 without `Connection: close`;
    /// never for HTTP/1.0, R35).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1 (R26); the header itself is not forwarded.
    pub expect_continue: bool,
    pub route: Route,
    /// The phantom token was presented (always true when none is configured).
    pub authorized: bool,
}

/// What the rewrite adds: fixed per process.
#[derive(Debug, Clone, Copy)]
pub struct Rewrite<'a> {
    pub target: &'a Target,
    /// Our credential's complete header line (`Authorization: Bearer ...\r\n`).
    pub credential_line: &'a [u8],
    pub phantom: Option<&'a [u8]>,
    /// Merge `oauth-2025-04-20` into `anthropic-beta`.
    pub oauth_beta: bool,
}

/// Fields the client may not send upstream, and that a `_` look-alike may not imitate
/// (R37, RFC 9110 §17.10). Lower-case.
const DROPPED: &[&[u8]] = &[
    // Routing and framing: rebuilt by us.
    b"host",
    b"content-length",
    b"transfer-encoding",
    // Hop-by-hop (RFC 9110 §7.6.1, R23) and protocol switching (R-invariant 7).
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"http2-settings",
    // Handled by the proxy (R26).
    b"expect",
    // Token masking in responses is an exact byte match, so the sandbox may not ask for
    // bodies in which the token would not appear verbatim: compressed (we send
    // `Accept-Encoding: identity` instead) or in slices shorter than the token.
    b"accept-encoding",
    b"range",
    b"if-range",
    // The sandbox's credentials (invariant 5, R24).
    b"authorization",
    b"proxy-authorization",
    b"x-api-key",
    b"cookie",
];

/// Fields whose value we interpret: obs-text is refused in them (HARDENING.md §4).
const INTERPRETED: &[&[u8]] = &[
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"expect",
    b"upgrade",
    b"te",
];

/// Names a `Connection` header may not list: we frame and route with them (HARDENING §1.4).
const NOT_HOP_BY_HOP: &[&[u8]] = &[b"host", b"content-length", b"transfer-encoding"];

/// The largest `MAX_HEADERS` setting accepted (the parse array lives on the stack).
pub const MAX_HEADERS_CAP: usize = 256;

/// Most `Connection` options we keep track of; more is refused.
const MAX_CONNECTION_OPTIONS: usize = 16;

fn name_is(name: &[u8], list: &[&[u8]]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// A name that becomes a protected one when `_` is read as `-` (R37).
fn is_underscore_lookalike(name: &[u8]) -> bool {
    memchr::memchr(b'_', name).is_some()
        && DROPPED.iter().any(|p| {
            p.len() == name.len()
                && name
                    .iter()
                    .zip(p.iter())
                    .all(|(a, b)| a.to_ascii_lowercase() == *b || (*a == b'_' && *b == b'-'))
        })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Elements of a comma-separated list (RFC 9110 §5.6.1), trimmed, empty ones skipped.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|s| s.trim_ascii())
        .filter(|s| !s.is_empty())
}

/// Parses a head that [`HeadScanner`] found complete (`head` ends with the blank line),
/// validates it, and writes the upstream head into `out` (cleared first) when the request is
/// to be forwarded.
pub fn parse_request(
    head: &[u8],
    limits: &Limits,
    rw: &Rewrite<'_>,
    out: &mut Vec<u8>,
) -> Result<Request, Problem> {
    // On the stack of this synchronous call: no await holds it, nothing is allocated.
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let max = limits.max_headers.min(MAX_HEADERS_CAP);
    let mut req = httparse::Request::new(&mut headers[..max]);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(Problem::MalformedHead),
        Err(httparse::Error::TooManyHeaders) => return Err(Problem::HeadTooLarge),
        Err(_) => return Err(Problem::MalformedHead),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Problem::MalformedHead);
    };
    let method = Method::parse(method)?;
    let version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };
    let (prefix_slash, target) = origin_form(target.as_bytes())?;
    // Offsets into `head` for the log line: `target` borrows from it.
    let target_start = target.as_ptr() as usize - head.as_ptr() as usize;
    let path_len = memchr::memchr(b'?', target).unwrap_or(target.len());
    let path = &target[..path_len];
    check_path(path)?;

    // First pass: validate every field and collect what decides framing and routing.
    let mut host_count = 0;
    let mut content_length: Option<u64> = None;
    let mut cl_count = 0;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut close = false;
    let mut expect_continue = false;
    let mut options: [&[u8]; MAX_CONNECTION_OPTIONS] = [b""; MAX_CONNECTION_OPTIONS];
    let mut option_count = 0;
    let mut authorized = rw.phantom.is_none();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if is_underscore_lookalike(name) {
            return Err(Problem::AmbiguousName);
        }
        if name_is(name, INTERPRETED) && !value.is_ascii() {
            return Err(Problem::MalformedHead);
        }
        if name.eq_ignore_ascii_case(b"host") {
            // R20: exactly one valid Host; it is checked, then replaced, never used to route.
            host_count += 1;
            let ok = !value.is_empty()
                && value
                    .iter()
                    .all(|&b| b.is_ascii_graphic() && !b"@/?#\\".contains(&b));
            if !ok {
                return Err(Problem::BadHost);
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // R6/R7/R8: digits only, one field, no list, checked arithmetic.
            cl_count += 1;
            content_length = Some(parse_content_length(value).ok_or(Problem::BadFraming)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_count += 1;
            te = Some(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for item in list_items(value) {
                if !item.iter().all(|&b| is_tchar(b)) {
                    return Err(Problem::MalformedHead);
                }
                if item.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if item.eq_ignore_ascii_case(b"keep-alive") {
                    // The HTTP/1.1 default; for HTTP/1.0 we close anyway (R35).
                } else if name_is(item, NOT_HOP_BY_HOP) || option_count == MAX_CONNECTION_OPTIONS {
                    return Err(Problem::BadConnectionOption);
                } else {
                    options[option_count] = item;
                    option_count += 1;
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            // Invariant 7: no protocol switching through the proxy.
            return Err(Problem::UpgradeRefused);
        } else if name.eq_ignore_ascii_case(b"expect") {
            // R26: only 100-continue exists; HTTP/1.0 clients' expectation is ignored.
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(Problem::ExpectationFailed);
            }
            expect_continue = version == Version::Http11;
        } else if let Some(phantom) = rw.phantom {
            let presented = if name.eq_ignore_ascii_case(b"authorization") {
                bearer(value)
            } else if name.eq_ignore_ascii_case(b"x-api-key") {
                Some(value)
            } else {
                None
            };
            if let Some(p) = presented {
                authorized |= constant_time_eq(p, phantom);
            }
        }
    }
    match (version, host_count) {
        (Version::Http11, 1) | (Version::Http10, 0 | 1) => {}
        _ => return Err(Problem::BadHost),
    }

    // RFC 9112 §6.3: decide the body length once, refusing everything ambiguous.
    let body = match (te, content_length) {
        // R1: TE and CL together is a smuggling vector: refuse rather than pick one.
        (Some(_), Some(_)) => return Err(Problem::BadFraming),
        // R5: HTTP/1.0 has no transfer codings.
        (Some(_), None) if version == Version::Http10 => return Err(Problem::BadFraming),
        (Some(v), None) => {
            if te_count > 1 {
                // R4: codings spread over several fields; `chunked` must appear exactly once.
                return Err(Problem::BadFraming);
            }
            transfer_coding(v)?
        }
        // R7: repeated Content-Length, even with equal values, is refused.
        (None, Some(_)) if cl_count > 1 => return Err(Problem::BadFraming),
        (None, Some(n)) => {
            if n > limits.max_body_bytes {
                return Err(Problem::BodyTooLarge);
            }
            BodyKind::Length(n)
        }
        // R9: request bodies are never close-delimited.
        (None, None) => BodyKind::Empty,
    };

    let route = if matches!(method, Method::Get | Method::Head) && path == b"/health" {
        Route::Health
    } else {
        Route::Forward
    };

    let request = Request {
        method,
        version,
        path: target_start..target_start + path_len,
        body,
        keep_alive: version == Version::Http11 && !close,
        expect_continue: expect_continue && body.has_bytes(),
        route,
        authorized,
    };
    // Wipe (not just clear) before reserving: a reallocation frees the old block, which may
    // hold the previous request's credential. Then reserve the final size so growing never
    // leaves a copy: fields are only removed, except Host, framing, the beta flag, the
    // encoding and the credential.
    zeroize::Zeroize::zeroize(out);
    out.reserve(
        head.len()
            + rw.target.base_path.len()
            + rw.target.authority.len()
            + rw.credential_line.len()
            + 128,
    );
    if route == Route::Forward && authorized {
        let options = &options[..option_count];
        // Only fields that survive the rewrite count (a `Connection` option removes them).
        let surviving_beta = req.headers.iter().filter(|h| {
            h.name.eq_ignore_ascii_case("anthropic-beta") && !name_is(h.name.as_bytes(), options)
        });
        let (mut has_beta, mut beta_has_oauth) = (false, false);
        for h in surviving_beta {
            has_beta = true;
            beta_has_oauth |= list_items(h.value).any(|i| i == OAUTH_BETA);
        }
        let beta = match (rw.oauth_beta, has_beta, beta_has_oauth) {
            (false, _, _) | (true, true, true) => Beta::Keep,
            (true, true, false) => Beta::AppendToFirst,
            (true, false, _) => Beta::Add,
        };
        let up = Upstream {
            method,
            prefix_slash,
            target,
            options,
            body,
            beta,
        };
        write_upstream_head(out, &up, req.headers, rw);
    }
    Ok(request)
}

/// What to do about `anthropic-beta` (issue: OAuth tokens need [`OAUTH_BETA`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beta {
    /// Not needed, or the client's list already has it: never duplicated.
    Keep,
    /// Merged into the client's first `anthropic-beta` list, never replacing it.
    AppendToFirst,
    /// The client sent none: add our own field.
    Add,
}

/// The decided parts of the upstream request line and fields.
struct Upstream<'a> {
    method: Method,
    prefix_slash: bool,
    target: &'a [u8],
    options: &'a [&'a [u8]],
    body: BodyKind,
    beta: Beta,
}

/// The upstream head: request line, Host, the client's surviving fields in order, then ours:
/// the beta flag (when added), `Accept-Encoding: identity`, framing, the credential last.
fn write_upstream_head(
    out: &mut Vec<u8>,
    up: &Upstream<'_>,
    headers: &[httparse::Header<'_>],
    rw: &Rewrite<'_>,
) {
    out.extend_from_slice(up.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(rw.target.base_path.as_bytes());
    if up.prefix_slash {
        out.push(b'/');
    }
    out.extend_from_slice(up.target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(rw.target.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut append_beta = up.beta == Beta::AppendToFirst;
    for h in headers {
        let name = h.name.as_bytes();
        if name_is(name, DROPPED) || name_is(name, up.options) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        if append_beta && name.eq_ignore_ascii_case(b"anthropic-beta") {
            if !h.value.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(OAUTH_BETA);
            append_beta = false;
        }
        out.extend_from_slice(b"\r\n");
    }
    if up.beta == Beta::Add {
        out.extend_from_slice(b"anthropic-beta: ");
        out.extend_from_slice(OAUTH_BETA);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Accept-Encoding: identity\r\n");
    match up.body {
        BodyKind::Empty => {}
        BodyKind::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            crate::framing::push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(rw.credential_line);
    out.extend_from_slice(b"\r\n");
}

/// The origin-form part of a request-target: `(needs a leading '/', path-and-query)`.
///
/// RFC 9112 §3.2: origin-form is forwarded; absolute-form must be accepted (R21) but only its
/// path and query are used, never its authority (invariant 6); asterisk-form and
/// authority-form are refused (R22). A fragment is never part of a request-target (HAProxy
/// CVE-2023-45539).
fn origin_form(target: &[u8]) -> Result<(bool, &[u8]), Problem> {
    if memchr::memchr(b'#', target).is_some() {
        return Err(Problem::BadTarget);
    }
    if target.first() == Some(&b'/') {
        return Ok((false, target));
    }
    let rest = if target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() >= 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return Err(Problem::BadTarget);
    };
    let end = memchr::memchr2(b'/', b'?', rest).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || memchr::memchr(b'@', authority).is_some() {
        return Err(Problem::BadTarget);
    }
    let path = &rest[end..];
    Ok((path.first() != Some(&b'/'), path))
}

/// Refuses any path that could climb out of TARGET's base path at an upstream that normalises
/// it. Each segment is judged as such an upstream would see it: without its `;` parameters
/// (Tomcat, Jetty, Spring strip them) and percent-decoded once. It may then not be `.` or
/// `..`, nor hold `/` or `\` (an encoded separator), nor a control byte (`%00` truncates
/// paths in some servers). A `%` must start a valid escape, and a raw backslash is refused.
fn check_path(path: &[u8]) -> Result<(), Problem> {
    if memchr::memchr(b'\\', path).is_some() {
        return Err(Problem::BadTarget);
    }
    for segment in path.split(|&b| b == b'/') {
        let segment = segment.split(|&b| b == b';').next().unwrap_or(b"");
        let (mut len, mut only_dots, mut i) = (0, true, 0);
        while i < segment.len() {
            let b = if segment[i] == b'%' {
                let escape = segment.get(i + 1..i + 3).and_then(|h| {
                    let hi = (h[0] as char).to_digit(16)?;
                    let lo = (h[1] as char).to_digit(16)?;
                    Some((hi * 16 + lo) as u8)
                });
                i += 3;
                escape.ok_or(Problem::BadTarget)?
            } else {
                i += 1;
                segment[i - 1]
            };
            if b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f {
                return Err(Problem::BadTarget);
            }
            only_dots &= b == b'.';
            len += 1;
        }
        if only_dots && (len == 1 || len == 2) {
            return Err(Problem::BadTarget);
        }
    }
    Ok(())
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), at most 19 digits so it fits in u64.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A request's Transfer-Encoding (RFC 9112 §6.1): exactly `chunked` is accepted.
fn transfer_coding(v: &[u8]) -> Result<BodyKind, Problem> {
    if v.eq_ignore_ascii_case(b"chunked") {
        return Ok(BodyKind::Chunked);
    }
    let items: Vec<&[u8]> = list_items(v).collect();
    let chunked = |i: &&[u8]| {
        let name = i.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
        name.eq_ignore_ascii_case(b"chunked")
    };
    match items.iter().filter(|i| chunked(i)).count() {
        // R3: only codings we do not implement.
        0 => Err(Problem::UnsupportedCoding),
        // R12 (`chunked;x=y`), R2 (chunked not final), and other codings before it: we do not
        // decode gzip and friends, so nothing but a lone `chunked` is framed with certainty.
        1 if items.len() > 1 && chunked(items.last().unwrap_or(&&b""[..])) => {
            Err(Problem::UnsupportedCoding)
        }
        1 => Err(Problem::BadFraming),
        // R4: chunked applied more than once.
        _ => Err(Problem::BadFraming),
    }
}

/// The credentials of `Authorization: Bearer <x>` (scheme case-insensitive, RFC 9110 §11.1).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
        Some(v[7..].trim_ascii())
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
