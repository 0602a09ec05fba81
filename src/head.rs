//! Pure request-head handling: parse the head that [`crate::scan`] found complete, validate it
//! strictly, decide the body framing (RFC 9112 §6.3) and route, then have [`crate::rewrite`]
//! write the canonical head for the upstream. Bytes in, decisions out; no I/O.
//!
//! httparse is the lexer, not a framing validator (docs/http-rules.md §2.5), so this module adds
//! what it lets through: bare LF, fragments and absolute/authority forms in the target,
//! lower-case methods, obs-text in fields we interpret, and every framing rule of RFC 9112 §6.
//! Every client byte that reaches the upstream head has passed the checks below.

use std::ops::Range;

use crate::error::Problem;
use crate::framing::{
    transfer_coding_problem, BodyKind, FieldFraming, FramingError, FramingFields,
};
use crate::handshake::{self, Asked, Offer, Protocols, ACCEPT_LEN};
use crate::limits::{Limits, MAX_CONNECTION_OPTIONS, MAX_HEADERS_CAP};
use crate::policy::METHOD_OVERRIDES;
use crate::rewrite::{
    self, is_underscore_lookalike, is_underscore_lookalike_of, Beta, Rewrite, Upstream,
};
use crate::syntax::{
    bearer, connection_options, constant_time_eq, name_is, percent_decoded, ConnectionOption,
};

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

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET`/`HEAD /health`, answered by the proxy.
    Health,
    /// Everything else, to TARGET.
    Forward,
    /// A WebSocket handshake on a `WEBSOCKET_PATHS` path, checked (RFC 6455 §4.2.1): to
    /// TARGET on a connection of its own, which becomes a tunnel if the upstream answers
    /// with a 101 carrying this `Sec-WebSocket-Accept` (and at most one of the subprotocols
    /// the client offered).
    WebSocket {
        accept: [u8; ACCEPT_LEN],
        protocols: Protocols,
    },
}

impl Route {
    /// Not a WebSocket handshake.
    pub fn is_plain(&self) -> bool {
        !matches!(self, Route::WebSocket { .. })
    }
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
    /// `ALLOW_REQUESTS` allows this method and path, and no field asks for another method
    /// (always true when none is configured).
    pub allowed: bool,
}

/// Fields whose value we interpret: obs-text is refused in them (docs/http-rules.md §2.3).
const INTERPRETED: &[&[u8]] = &[
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"expect",
    b"upgrade",
    b"te",
];

/// Names `Connection` may not list: we frame and route with them (docs/http-rules.md §4.2).
const NOT_HOP_BY_HOP: &[&[u8]] = &[b"host", b"content-length", b"transfer-encoding"];

/// Parses a head that [`crate::scan::HeadScanner`] found complete (`head` ends with the blank
/// line), validates it, and writes the upstream head into `out` (wiped first) when the request
/// is to be forwarded.
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

    let fields = Fields::check(req.headers, version, rw)?;
    let body = fields.body(version, limits)?;
    let route = fields.route(method, version, path, body, rw)?;
    let request = Request {
        method,
        version,
        path: target_start..target_start + path_len,
        body,
        // A handshake's connection ends with its tunnel, or with the answer that refused it.
        keep_alive: version == Version::Http11 && !fields.close && route.is_plain(),
        expect_continue: fields.expect_continue && body.has_bytes(),
        route,
        authorized: fields.authorized,
        allowed: !fields.overrides_method
            && rw.allow.is_none_or(|l| l.allows(method.as_str(), path)),
    };
    // Wipe (not just clear): the writer sizes `out` for the exact head before writing, and
    // that reallocation frees the old block, which may hold the previous request's credential.
    zeroize::Zeroize::zeroize(out);
    if request.route != Route::Health && request.authorized && request.allowed {
        let options = fields.options();
        let up = Upstream {
            method: method.as_str(),
            prefix_slash,
            target,
            options,
            body,
            beta: Beta::decide(req.headers, options, rw.oauth_beta),
            websocket: matches!(request.route, Route::WebSocket { .. }),
        };
        rewrite::write_upstream_head(out, &up, req.headers, rw);
    }
    Ok(request)
}

/// What the fields of a request head decide, gathered in one pass that validates each field.
struct Fields<'h> {
    host_count: usize,
    framing: FramingFields<'h>,
    /// `Connection: close`.
    close: bool,
    /// `Expect: 100-continue` on HTTP/1.1.
    expect_continue: bool,
    /// Fields named by `Connection`: hop-by-hop, removed (RFC 9110 §7.6.1).
    options: [&'h [u8]; MAX_CONNECTION_OPTIONS],
    option_count: usize,
    /// The phantom token was presented (always true when none is configured).
    authorized: bool,
    /// With `ALLOW_REQUESTS` set, a field that can change the method was sent
    /// ([`METHOD_OVERRIDES`]): the request is refused, since the list matched the request
    /// line's method, not the one the upstream would use.
    overrides_method: bool,
    /// `Upgrade` fields, and what they ask for together.
    upgrades: usize,
    asked: Asked,
    /// The WebSocket handshake fields.
    offer: Offer<'h>,
}

impl<'h> Fields<'h> {
    fn check(
        headers: &[httparse::Header<'h>],
        version: Version,
        rw: &Rewrite<'_>,
    ) -> Result<Fields<'h>, Problem> {
        let mut f = Fields {
            host_count: 0,
            framing: FramingFields::default(),
            close: false,
            expect_continue: false,
            options: [b""; MAX_CONNECTION_OPTIONS],
            option_count: 0,
            authorized: rw.phantom.is_none(),
            overrides_method: false,
            upgrades: 0,
            asked: Asked::Other,
            offer: Offer::default(),
        };
        for h in headers {
            f.field(h.name.as_bytes(), h.value, version, rw)?;
        }
        match (version, f.host_count) {
            (Version::Http11, 1) | (Version::Http10, 0 | 1) => Ok(f),
            _ => Err(Problem::BadHost),
        }
    }

    /// Checks one field and records what it decides.
    fn field(
        &mut self,
        name: &'h [u8],
        value: &'h [u8],
        version: Version,
        rw: &Rewrite<'_>,
    ) -> Result<(), Problem> {
        let is_credential_field = |n: &[u8]| {
            rw.credential_field
                .is_some_and(|c| n.eq_ignore_ascii_case(c))
        };
        let custom = rw.credential_field.unwrap_or_default();
        // R37. Under ALLOW_REQUESTS the method-override fields refuse the request, and so
        // their look-alikes are refused too; without a list they are forwarded (and a `_`
        // name is dropped like any other).
        let guarded = rw.allow.is_some();
        if is_underscore_lookalike(name)
            || is_underscore_lookalike_of(name, custom)
            || (guarded && imitates_any(name, METHOD_OVERRIDES))
        {
            return Err(Problem::AmbiguousName);
        }
        self.overrides_method |= guarded && name_is(name, METHOD_OVERRIDES);
        if name_is(name, INTERPRETED) && !value.is_ascii() {
            return Err(Problem::MalformedHead);
        }
        if self
            .framing
            .see(name, value)
            .map_err(|_| Problem::BadFraming)?
        {
            return Ok(());
        }
        if name.eq_ignore_ascii_case(b"host") {
            // R20: exactly one valid Host; it is checked, then replaced, never used to route.
            self.host_count += 1;
            let ok = !value.is_empty()
                && value
                    .iter()
                    .all(|&b| b.is_ascii_graphic() && !b"@/?#\\".contains(&b));
            if !ok {
                return Err(Problem::BadHost);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.offer.see(name, value);
            self.connection(value)?;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            // Decided once the path is known (`route`). Several fields are one list
            // (RFC 9110 §5.3), so WebSocket among them is never "exactly websocket".
            let asked = handshake::asked(value);
            self.asked = match (self.upgrades, self.asked, asked) {
                (0, _, a) => a,
                (_, Asked::Other, Asked::Other) => Asked::Other,
                _ => Asked::WebSocketAmong,
            };
            self.upgrades += 1;
        } else if name.len() > 14 && name[..14].eq_ignore_ascii_case(b"sec-websocket-") {
            self.offer.see(name, value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            // R26: only 100-continue exists; HTTP/1.0 clients' expectation is ignored.
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(Problem::ExpectationFailed);
            }
            self.expect_continue = version == Version::Http11;
        } else if let Some(phantom) = rw.phantom {
            let presented = if name.eq_ignore_ascii_case(b"authorization") {
                bearer(value)
            } else if name.eq_ignore_ascii_case(b"x-api-key") || is_credential_field(name) {
                Some(value)
            } else {
                None
            };
            if let Some(p) = presented {
                self.authorized |= constant_time_eq(p, phantom);
            }
        }
        Ok(())
    }

    /// `Connection` (RFC 9110 §7.6.1): `close`, and the fields it makes hop-by-hop. It may
    /// not name a field we frame or route with (docs/http-rules.md §4.2), nor more than we track.
    fn connection(&mut self, value: &'h [u8]) -> Result<(), Problem> {
        for option in connection_options(value) {
            match option {
                ConnectionOption::Invalid => return Err(Problem::MalformedHead),
                ConnectionOption::Close => self.close = true,
                // The HTTP/1.1 default; for HTTP/1.0 we close anyway (R35).
                ConnectionOption::KeepAlive => {}
                ConnectionOption::Field(name)
                    if name_is(name, NOT_HOP_BY_HOP)
                        || self.option_count == MAX_CONNECTION_OPTIONS =>
                {
                    return Err(Problem::BadConnectionOption)
                }
                ConnectionOption::Field(name) => {
                    self.options[self.option_count] = name;
                    self.option_count += 1;
                }
            }
        }
        Ok(())
    }

    /// Where the request goes. No protocol switching through the proxy (docs/http-rules.md
    /// §3.5) except a WebSocket handshake on a listed path; elsewhere WebSocket gets 426
    /// rather than 501: clients that can fall back to HTTP (Codex) do so at once on 426, and
    /// retry for seconds on anything else.
    fn route(
        &self,
        method: Method,
        version: Version,
        path: &[u8],
        body: BodyKind,
        rw: &Rewrite<'_>,
    ) -> Result<Route, Problem> {
        if self.upgrades == 0 {
            let health = matches!(method, Method::Get | Method::Head) && path == b"/health";
            return Ok(if health {
                Route::Health
            } else {
                Route::Forward
            });
        }
        let asked = self.asked;
        if asked == Asked::Other {
            return Err(Problem::UpgradeRefused);
        }
        if !rw.websocket.is_some_and(|w| w.lists(path)) {
            return Err(Problem::WebSocketRefused);
        }
        // RFC 6455 §4.1: an HTTP/1.1 GET, `Upgrade: websocket` alone, and no body.
        let strict = asked == Asked::WebSocket
            && method == Method::Get
            && version == Version::Http11
            && matches!(body, BodyKind::Empty | BodyKind::Length(0));
        if !strict {
            return Err(Problem::BadHandshake);
        }
        let accept = self.offer.check()?;
        let protocols = self.offer.protocols();
        Ok(Route::WebSocket { accept, protocols })
    }

    fn options(&self) -> &[&'h [u8]] {
        &self.options[..self.option_count]
    }

    /// RFC 9112 §6.3: the body length, decided once, refusing everything ambiguous (R1-R9).
    fn body(&self, version: Version, limits: &Limits) -> Result<BodyKind, Problem> {
        match self.framing.decide(version == Version::Http10) {
            Ok(FieldFraming::Chunked) => Ok(BodyKind::Chunked),
            Ok(FieldFraming::Length(n)) if n > limits.max_body_bytes => Err(Problem::BodyTooLarge),
            Ok(FieldFraming::Length(n)) => Ok(BodyKind::Length(n)),
            // R9: request bodies are never close-delimited.
            Ok(FieldFraming::Absent) => Ok(BodyKind::Empty),
            Err(FramingError::Ambiguous) => Err(Problem::BadFraming),
            Err(FramingError::Coding) => Err(transfer_coding_problem(
                self.framing.transfer_encoding().unwrap_or_default(),
            )),
        }
    }
}

/// A name that becomes one of `fields` (lower-case) when `_` is read as `-` (R37).
fn imitates_any(name: &[u8], fields: &[&[u8]]) -> bool {
    fields.iter().any(|f| is_underscore_lookalike_of(name, f))
}

/// The origin-form part of a request-target: `(needs a leading '/', path-and-query)`.
///
/// RFC 9112 §3.2: origin-form is forwarded; absolute-form must be accepted (R21) but only its
/// path and query are used, never its authority (docs/http-rules.md §3.1); asterisk-form and
/// authority-form are refused (R22). A fragment is never part of a request-target (HAProxy
/// CVE-2023-45539).
fn origin_form(target: &[u8]) -> Result<(bool, &[u8]), Problem> {
    // RFC 9112 §3.2: the request-target is ASCII. httparse lets 0x80-0xFF through; UTF-8
    // encoded C1 controls (U+009B is CSI to some terminals), U+2028 or U+202E in a path would
    // reach the log and the upstream's.
    if !target.is_ascii() {
        return Err(Problem::BadTarget);
    }
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
        let (mut len, mut only_dots) = (0, true);
        for unit in percent_decoded(segment) {
            let b = unit.octet().ok_or(Problem::BadTarget)?;
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

#[cfg(test)]
mod tests;
