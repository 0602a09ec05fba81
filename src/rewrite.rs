//! Pure: the upstream request head, written fresh (docs/http-rules.md §1.7) from a head
//! that `head.rs` has validated: a rebuilt request line, `Host` from TARGET, the client's
//! remaining fields as `name: value\r\n` in their order, then ours: the OAuth beta flag when
//! added, `Accept-Encoding: identity`, one canonical framing field, and our credential last.

use crate::framing::BodyKind;
use crate::handshake::WebSocketPaths;
use crate::policy::AllowList;
use crate::syntax::{
    list_items, name_is, push_content_length, push_field, Count, Sink, HOP_BY_HOP,
};
use crate::target::Target;

/// The beta flag OAuth tokens need on api.anthropic.com.
pub const OAUTH_BETA: &[u8] = b"oauth-2025-04-20";

/// Fields the client may not send upstream besides the hop-by-hop ones ([`HOP_BY_HOP`]), and
/// that a `_` look-alike may not imitate (R37, RFC 9110 §17.10). Lower-case.
pub const DROPPED: &[&[u8]] = &[
    // Routing and framing: rebuilt by us.
    b"host",
    b"content-length",
    b"transfer-encoding",
    // Hop-by-hop for a request only (R23): request trailers are never sent upstream, and
    // `HTTP2-Settings` only comes with an `Upgrade`, which is refused (RFC 7540 §3.2.1;
    // docs/http-rules.md §3.5).
    b"trailer",
    b"http2-settings",
    // Handled by the proxy (R26).
    b"expect",
    // Token masking in responses is an exact byte match, so the sandbox may not ask for
    // bodies in which the token would not appear verbatim: compressed (we send
    // `Accept-Encoding: identity` instead) or in slices shorter than the token.
    b"accept-encoding",
    b"range",
    b"if-range",
    // The sandbox's credentials (docs/http-rules.md §5.1, R24).
    b"authorization",
    b"proxy-authorization",
    b"x-api-key",
    b"cookie",
    // Where a request came from or goes: not the sandbox's to say (Traefik CVE-2024-45410
    // class). The proxy adds none of its own.
    b"forwarded",
    b"x-real-ip",
    b"x-original-url",
    b"x-rewrite-url",
];

/// Prefixes of field names removed like [`DROPPED`]: every `X-Forwarded-*`.
pub const DROPPED_PREFIXES: &[&[u8]] = &[b"x-forwarded-"];

/// Whether the client's field `name` is removed from the upstream head: the fields the
/// proxy rebuilds or refuses to carry, and any name with `_` (RFC 9110 §17.10: some servers
/// read it as `-`; nginx drops such names by default, and so do we).
pub fn is_dropped(name: &[u8]) -> bool {
    // Called for every field of every request: the exact names first (a length check rules
    // most out), then the prefix, then the `_` scan.
    name_is(name, HOP_BY_HOP)
        || name_is(name, DROPPED)
        || DROPPED_PREFIXES
            .iter()
            .any(|p| name.len() > p.len() && name[..p.len()].eq_ignore_ascii_case(p))
        || memchr::memchr(b'_', name).is_some()
}

/// A name that becomes a dropped one when `_` is read as `-` (R37): refused, not dropped,
/// since an upstream that normalises names would take it for the real field.
pub fn is_underscore_lookalike(name: &[u8]) -> bool {
    memchr::memchr(b'_', name).is_some()
        && dropped_as(name, |a, b| {
            a.to_ascii_lowercase() == b || (a == b'_' && b == b'-')
        })
}

/// A name that becomes `field` (lower-case) when `_` is read as `-`.
pub fn is_underscore_lookalike_of(name: &[u8], field: &[u8]) -> bool {
    name.len() == field.len()
        && memchr::memchr(b'_', name).is_some()
        && name.iter().zip(field).all(|(&a, &b)| lookalike_byte(a, b))
}

fn lookalike_byte(a: u8, b: u8) -> bool {
    a.to_ascii_lowercase() == b || (a == b'_' && b == b'-')
}

/// Whether `name` equals a [`HOP_BY_HOP`] or [`DROPPED`] name or extends a
/// [`DROPPED_PREFIXES`] entry, byte for byte under `same` (the client's byte, the lower-case
/// pattern byte).
fn dropped_as(name: &[u8], same: impl Fn(u8, u8) -> bool) -> bool {
    let starts = |p: &[u8]| name.len() >= p.len() && name.iter().zip(p).all(|(&a, &b)| same(a, b));
    HOP_BY_HOP
        .iter()
        .chain(DROPPED)
        .any(|p| name.len() == p.len() && starts(p))
        || DROPPED_PREFIXES
            .iter()
            .any(|p| name.len() > p.len() && starts(p))
}

/// What the rewrite adds, and what the request must satisfy: fixed per token generation.
#[derive(Debug, Clone, Copy)]
pub struct Rewrite<'a> {
    pub target: &'a Target,
    /// Our credential's complete header line (`Authorization: Bearer ...\r\n`).
    pub credential_line: &'a [u8],
    /// A credential field of `TOKEN_HEADER` beyond the standard ones (lower-case): removed
    /// from the client's head like them, and where the phantom may be presented.
    pub credential_field: Option<&'a [u8]>,
    pub phantom: Option<&'a [u8]>,
    /// What the sandbox may reach (`ALLOW_REQUESTS`); `None`: everything.
    pub allow: Option<&'a AllowList>,
    /// Merge `oauth-2025-04-20` into `anthropic-beta`.
    pub oauth_beta: bool,
    /// Where a WebSocket handshake is tunnelled (`WEBSOCKET_PATHS`); `None`: nowhere.
    pub websocket: Option<&'a WebSocketPaths>,
}

/// What to do about `anthropic-beta` (OAuth tokens need [`OAUTH_BETA`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beta {
    /// Not needed, or the client's list already has it: never duplicated.
    Keep,
    /// Merged into the client's first `anthropic-beta` list, never replacing it.
    AppendToFirst,
    /// The client sent none: add our own field.
    Add,
}

impl Beta {
    /// Decides from the client's fields; only fields that survive the rewrite count (a
    /// `Connection` option removes them).
    pub fn decide(headers: &[httparse::Header<'_>], options: &[&[u8]], wanted: bool) -> Beta {
        let surviving = headers.iter().filter(|h| {
            h.name.eq_ignore_ascii_case("anthropic-beta") && !name_is(h.name.as_bytes(), options)
        });
        let (mut has_beta, mut has_oauth) = (false, false);
        for h in surviving {
            has_beta = true;
            has_oauth |= list_items(h.value).any(|i| i == OAUTH_BETA);
        }
        match (wanted, has_beta, has_oauth) {
            (false, _, _) | (true, true, true) => Beta::Keep,
            (true, true, false) => Beta::AppendToFirst,
            (true, false, _) => Beta::Add,
        }
    }
}

/// The decided parts of the upstream request line and fields.
pub struct Upstream<'a> {
    pub method: &'static str,
    /// The client's target lacks its leading `/` (absolute-form without a path).
    pub prefix_slash: bool,
    /// The client's path and query, byte for byte.
    pub target: &'a [u8],
    /// Fields the client's `Connection` named: hop-by-hop, removed.
    pub options: &'a [&'a [u8]],
    pub body: BodyKind,
    pub beta: Beta,
    /// A checked WebSocket handshake: the offer goes up without extensions, and with the
    /// `Connection: Upgrade` and `Upgrade: websocket` that are hop-by-hop and were removed.
    pub websocket: bool,
}

/// Writes the upstream head into `out`, which the caller has wiped (zeroized, not only
/// cleared: its spare capacity may hold the previous request's credential) and left empty.
///
/// No allocation that held the credential is freed unwiped: the head is counted, `out` is
/// sized for exactly that many bytes while it holds nothing but zeros (a reallocation then
/// frees only zeros), and the head is written into that room. Counting and writing are the
/// same code (`emit` over a [`Count`], then over the buffer), so they cannot disagree and
/// writing never grows `out`. The counting pass allocates and formats nothing.
pub fn write_upstream_head(
    out: &mut Vec<u8>,
    up: &Upstream<'_>,
    headers: &[httparse::Header<'_>],
    rw: &Rewrite<'_>,
) {
    debug_assert!(out.is_empty(), "the caller wipes the buffer first");
    let mut len = Count(0);
    emit(&mut len, up, headers, rw);
    out.reserve(len.0);
    let reserved = out.capacity();
    emit(out, up, headers, rw);
    debug_assert_eq!(out.len(), len.0, "counted and written heads differ");
    debug_assert_eq!(
        out.capacity(),
        reserved,
        "the head's buffer was reallocated"
    );
}

/// The upstream head, put into `out`: run once counting, once writing.
fn emit(
    out: &mut impl Sink,
    up: &Upstream<'_>,
    headers: &[httparse::Header<'_>],
    rw: &Rewrite<'_>,
) {
    out.put(up.method.as_bytes());
    out.put(b" ");
    out.put(rw.target.base_path.as_bytes());
    if up.prefix_slash {
        out.put(b"/");
    }
    out.put(up.target);
    out.put(b" HTTP/1.1\r\n");
    push_field(out, b"Host", rw.target.authority.as_bytes());
    let mut append_beta = up.beta == Beta::AppendToFirst;
    for h in headers {
        let name = h.name.as_bytes();
        let credential = rw
            .credential_field
            .is_some_and(|c| name.eq_ignore_ascii_case(c));
        // The tunnel relays frames it can read and mask: no extension is negotiated.
        let extension = up.websocket && name.eq_ignore_ascii_case(b"sec-websocket-extensions");
        if is_dropped(name) || credential || extension || name_is(name, up.options) {
            continue;
        }
        if append_beta && name.eq_ignore_ascii_case(b"anthropic-beta") {
            append_beta = false;
            out.put(name);
            out.put(b": ");
            out.put(h.value);
            if !h.value.is_empty() {
                out.put(b",");
            }
            out.put(OAUTH_BETA);
            out.put(b"\r\n");
            continue;
        }
        push_field(out, name, h.value);
    }
    if up.beta == Beta::Add {
        push_field(out, b"anthropic-beta", OAUTH_BETA);
    }
    push_field(out, b"Accept-Encoding", b"identity");
    if up.websocket {
        push_field(out, b"Connection", b"Upgrade");
        push_field(out, b"Upgrade", b"websocket");
    }
    match up.body {
        BodyKind::Empty => {}
        BodyKind::Length(n) => push_content_length(out, n),
        BodyKind::Chunked => push_field(out, b"Transfer-Encoding", b"chunked"),
    }
    out.put(rw.credential_line);
    out.put(b"\r\n");
}
