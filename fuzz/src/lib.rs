//! Properties checked by the fuzz targets in `fuzz_targets/`; each target is one call into
//! this module, so the same checks also run over the seed corpus with `cargo test` (see
//! `tests/seeds.rs`) on the stable toolchain, without libFuzzer.
//!
//! Every check is an `assert!`: a violated property is a crash that libFuzzer saves to
//! `fuzz/artifacts/<target>/`. The oracles here are written from the specifications (RFC 9112,
//! docs/http-rules.md, the doc comments of the library), not copied from the code under test.
//!
//! Split points are derived from the input itself (its first bytes and an FNV hash), so every
//! crash reproduces from its artifact alone.

use std::sync::OnceLock;

use agent_loop_proxy::error::Problem;
use agent_loop_proxy::framing::{self, BodyKind, ChunkError, ChunkLimits, ChunkedDecoder, Step};
use agent_loop_proxy::head::{self, Method, Request, Route, Version};
use agent_loop_proxy::limits::{self, Limits};
use agent_loop_proxy::relaybuf::RelayBuf;
use agent_loop_proxy::response::{self, ResponseBody, ResponseContext, ResponseHead};
use agent_loop_proxy::rewrite::Rewrite;
use agent_loop_proxy::scan::{HeadScanner, ScanLimits};
use agent_loop_proxy::scrub;
use agent_loop_proxy::syntax;
use agent_loop_proxy::target::Target;
use agent_loop_proxy::tracker::BodyTracker;

mod ws;
pub use ws::ws_frames;
mod usage;
pub use usage::usage;

/// The real credential: it must reach the upstream exactly once and the client never.
pub const REAL_TOKEN: &[u8] = b"REALTOKEN";
/// Our `Authorization` line, as `Token::header_line` renders it.
pub const CREDENTIAL_LINE: &[u8] = b"Authorization: Bearer REALTOKEN\r\n";
/// The sandbox's phantom token, for the configurations that require one.
pub const PHANTOM: &[u8] = b"PHANTOM";
/// The beta flag merged into `anthropic-beta` for OAuth tokens.
const OAUTH_BETA: &[u8] = b"oauth-2025-04-20";

/// Fields that must never reach the upstream (credentials, hop-by-hop, rebuilt framing,
/// `Expect`), docs/http-rules.md §5.1 / R23 / R24 / R26. Host, Content-Length and
/// Transfer-Encoding are checked separately (they are rebuilt, not absent).
const NEVER_UPSTREAM: &[&[u8]] = &[
    b"x-api-key",
    b"range",
    b"if-range",
    b"proxy-authorization",
    b"cookie",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"http2-settings",
    b"expect",
    // Where the request came from or goes (docs/http-rules.md §4.3; Traefik CVE-2024-45410).
    b"forwarded",
    b"x-real-ip",
    b"x-original-url",
    b"x-rewrite-url",
];

/// Whether a client field of this name is removed by the rewrite: the fixed list, every
/// `X-Forwarded-*`, and any name with `_` (docs/http-rules.md §4).
fn removed_from_client(name: &[u8]) -> bool {
    name_in(name, REMOVED_FROM_CLIENT) || is_x_forwarded(name) || name.contains(&b'_')
}

/// `X-Forwarded-<something>`.
fn is_x_forwarded(name: &[u8]) -> bool {
    name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-")
}

/// Client fields the rewrite removes (re-added by us or never sent).
const REMOVED_FROM_CLIENT: &[&[u8]] = &[
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"authorization",
    b"x-api-key",
    b"proxy-authorization",
    b"cookie",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"http2-settings",
    b"expect",
    // Masking needs verbatim bodies: we send `Accept-Encoding: identity` and no ranges.
    b"accept-encoding",
    b"range",
    b"if-range",
    b"forwarded",
    b"x-real-ip",
    b"x-original-url",
    b"x-rewrite-url",
];

/// Upstream fields never relayed to the client (RFC 9110 §7.6.1), apart from our own
/// `Connection: close`.
const HOP_BY_HOP_DOWN: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"upgrade",
];

/// The tokens masked in a response: [`REAL_TOKEN`] alone.
fn real_tokens() -> &'static [scrub::Mask] {
    static TOKENS: OnceLock<[scrub::Mask; 1]> = OnceLock::new();
    TOKENS.get_or_init(|| [scrub::FixedToken::mask(REAL_TOKEN)])
}

/// The searcher for [`REAL_TOKEN`].
fn real_finder() -> &'static scrub::TokenFinder<'static> {
    static FINDER: OnceLock<scrub::TokenFinder<'static>> = OnceLock::new();
    FINDER.get_or_init(|| scrub::TokenFinder::new(REAL_TOKEN))
}

/// A token that comes into use while a response is relayed: it joins the mask set before
/// the first read that holds a byte of it, as the credential store guarantees (a token joins
/// the set before a request can carry it upstream, so an upstream can reflect it only after).
/// It shares no byte with [`REAL_TOKEN`] and cannot overlap itself.
pub const LATE_TOKEN: &[u8] = b"sk-late-7xq";

/// [`REAL_TOKEN`] and [`LATE_TOKEN`], the mask set once the late one joined.
fn both_tokens() -> &'static [scrub::Mask] {
    static TOKENS: OnceLock<[scrub::Mask; 2]> = OnceLock::new();
    TOKENS.get_or_init(|| {
        [
            real_tokens()[0].clone(),
            scrub::FixedToken::mask(LATE_TOKEN),
        ]
    })
}

// ---------------------------------------------------------------------------------------------
// Input-derived split points
// ---------------------------------------------------------------------------------------------

/// splitmix64 seeded with FNV-1a of the input: deterministic per input.
struct Rng(u64);

impl Rng {
    fn of(data: &[u8], salt: u64) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..=n`.
    fn upto(&mut self, n: usize) -> usize {
        (self.next() % (n as u64 + 1)) as usize
    }
}

/// `k` sorted cut points in `0..=len`.
fn random_cuts(rng: &mut Rng, len: usize, k: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..k).map(|_| rng.upto(len)).collect();
    v.sort_unstable();
    v
}

/// Cut points taken from the input's first bytes, scaled to its length.
fn leading_byte_cuts(data: &[u8], k: usize) -> Vec<usize> {
    let mut v: Vec<usize> = data
        .iter()
        .take(k)
        .map(|&b| usize::from(b) * data.len() / 255)
        .collect();
    v.sort_unstable();
    v
}

/// The schedules (lists of cut points) every incremental consumer is fed with: whole input,
/// cuts from the first bytes, random cuts, and one byte at a time for inputs up to
/// `bytewise_max`.
fn schedules(data: &[u8], salt: u64, bytewise_max: usize) -> Vec<Vec<usize>> {
    let mut rng = Rng::of(data, salt);
    let mut s = vec![
        Vec::new(),
        leading_byte_cuts(data, 3),
        random_cuts(&mut rng, data.len(), 1),
        random_cuts(&mut rng, data.len(), 4),
    ];
    if data.len() <= bytewise_max {
        s.push((0..data.len()).collect());
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

fn name_in(name: &[u8], list: &[&[u8]]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Elements of a comma-separated list (RFC 9110 §5.6.1), trimmed, empty ones skipped.
fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|s| !s.is_empty())
}

/// Every CR is followed by LF and every LF preceded by CR (no bare CR, no bare LF).
fn crlf_only(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\r' => b.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && b[i - 1] == b'\r',
        _ => true,
    })
}

fn no_cr_lf(b: &[u8]) -> bool {
    !b.iter().any(|&c| c == b'\r' || c == b'\n')
}

/// An owned header field as httparse parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Field {
    fn is(&self, name: &[u8]) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

fn fields_named<'a>(fields: &'a [Field], name: &'a [u8]) -> impl Iterator<Item = &'a Field> {
    fields.iter().filter(move |f| f.is(name))
}

fn owned(headers: &[httparse::Header<'_>]) -> Vec<Field> {
    headers
        .iter()
        .map(|h| Field {
            name: h.name.as_bytes().to_vec(),
            value: h.value.to_vec(),
        })
        .collect()
}

/// A request head parsed with httparse's default configuration, as the proxy does.
#[derive(Debug)]
struct ParsedRequest {
    method: String,
    target: Vec<u8>,
    minor: u8,
    fields: Vec<Field>,
}

/// Parses `head` as a request that must be complete and exactly `head.len()` bytes long.
fn parse_request_exact(head: &[u8]) -> Result<ParsedRequest, String> {
    let mut headers = vec![httparse::EMPTY_HEADER; 1024];
    let mut r = httparse::Request::new(&mut headers);
    match r.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        other => return Err(format!("{other:?} for {} bytes", head.len())),
    }
    Ok(ParsedRequest {
        method: r.method.unwrap_or_default().to_string(),
        target: r.path.unwrap_or_default().as_bytes().to_vec(),
        minor: r.version.unwrap_or(9),
        fields: owned(r.headers),
    })
}

#[derive(Debug)]
struct ParsedResponse {
    minor: u8,
    code: u16,
    fields: Vec<Field>,
}

fn parse_response_exact(head: &[u8]) -> Result<ParsedResponse, String> {
    let mut headers = vec![httparse::EMPTY_HEADER; 1024];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        other => return Err(format!("{other:?} for {} bytes", head.len())),
    }
    Ok(ParsedResponse {
        minor: r.version.unwrap_or(9),
        code: r.code.unwrap_or(0),
        fields: owned(r.headers),
    })
}

// ---------------------------------------------------------------------------------------------
// HeadScanner: split invariance and postconditions (both targets)
// ---------------------------------------------------------------------------------------------

/// Feeds a growing buffer `data[..cut]` to one scanner, as the connection loop does.
fn scan_incremental(
    data: &[u8],
    cuts: &[usize],
    lim: &ScanLimits,
) -> Result<Option<usize>, Problem> {
    let mut s = HeadScanner::new();
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        match s.scan(&data[..c], lim)? {
            None => {}
            done => return Ok(done),
        }
    }
    Ok(None)
}

/// The scanner's result on `data`, after checking that every feeding schedule (and a reused,
/// reset scanner) agrees with scanning the whole input at once, and that an accepted head
/// satisfies what the scanner promises.
fn scan_checked(data: &[u8], lim: &ScanLimits, salt: u64) -> Result<Option<usize>, Problem> {
    let whole = HeadScanner::new().scan(data, lim);
    for cuts in schedules(data, salt, 8192) {
        let got = scan_incremental(data, &cuts, lim);
        assert_eq!(
            got, whole,
            "HeadScanner: cuts {cuts:?} disagree with the whole input"
        );
    }
    // A scanner reused after reset() behaves as a new one.
    let mut s = HeadScanner::new();
    let _ = s.scan(&data[..data.len() / 2], lim);
    s.reset();
    assert_eq!(
        s.scan(data, lim),
        whole,
        "HeadScanner: reset() left state behind"
    );

    if let Ok(Some(n)) = whole {
        let h = &data[..n];
        assert!(
            n <= lim.head,
            "HeadScanner: head of {n} bytes over the limit {}",
            lim.head
        );
        assert!(
            h.ends_with(b"\r\n\r\n"),
            "HeadScanner: head does not end with CRLFCRLF"
        );
        assert!(crlf_only(h), "HeadScanner: accepted a bare CR or LF");
        // Lines: leading empty lines, a start line, field lines, and the first empty line
        // after the start line ends the head.
        let lines: Vec<&[u8]> = h[..n - 2].split(|&b| b == b'\n').collect();
        let body_lines = &lines[..lines.len() - 1]; // last element is "" after the final LF
        let mut seen_start = false;
        for (i, l) in body_lines.iter().enumerate() {
            let l = l.strip_suffix(b"\r").expect("CRLF checked above");
            if !seen_start {
                if l.is_empty() {
                    continue;
                }
                assert!(
                    l.len() <= lim.start_line,
                    "HeadScanner: start line too long"
                );
                seen_start = true;
            } else {
                assert!(
                    !l.is_empty(),
                    "HeadScanner: missed an earlier end of head at line {i}"
                );
                assert!(
                    l.len() <= lim.field_line,
                    "HeadScanner: field line too long"
                );
            }
        }
        assert!(seen_start, "HeadScanner: head without a start line");
    }
    whole
}

// ---------------------------------------------------------------------------------------------
// parse_head
// ---------------------------------------------------------------------------------------------

/// One proxy configuration: TARGET, phantom token, OAuth beta merging.
struct Config {
    target: Target,
    /// TARGET's authority without its base path, for the idempotence pass.
    bare: Target,
    phantom: Option<&'static [u8]>,
    oauth_beta: bool,
}

fn configs() -> &'static [Config] {
    static C: OnceLock<Vec<Config>> = OnceLock::new();
    C.get_or_init(|| {
        let c = |t: &str, bare: &str, phantom, oauth_beta| Config {
            target: Target::parse(t).expect("valid TARGET"),
            bare: Target::parse(bare).expect("valid TARGET"),
            phantom,
            oauth_beta,
        };
        vec![
            c(
                "https://api.anthropic.com",
                "https://api.anthropic.com",
                None,
                false,
            ),
            c(
                "http://127.0.0.1:8080/base/v0",
                "http://127.0.0.1:8080",
                Some(PHANTOM),
                true,
            ),
            c(
                "https://[::1]:8443/p",
                "https://[::1]:8443",
                Some(PHANTOM),
                false,
            ),
        ]
    })
}

/// Tight scanner limits, so small fuzz inputs reach every limit branch.
const TINY_SCAN: ScanLimits = ScanLimits {
    start_line: 40,
    field_line: 24,
    head: 160,
    start_line_problem: Problem::UriTooLong,
    head_problem: Problem::HeadTooLarge,
    syntax_problem: Problem::MalformedHead,
};

/// Target `parse_head`: `data` is raw bytes from a client.
pub fn parse_head(data: &[u8]) {
    let limits = Limits::default();
    let _ = scan_checked(data, &TINY_SCAN, 1);
    let Ok(Some(n)) = scan_checked(data, &ScanLimits::request(&limits), 2) else {
        return;
    };
    let h = &data[..n];

    let mut first: Option<Result<Request, Problem>> = None;
    for cfg in configs() {
        let rw = Rewrite {
            target: &cfg.target,
            credential_line: CREDENTIAL_LINE,
            phantom: cfg.phantom,
            credential_field: None,
            allow: None,
            oauth_beta: cfg.oauth_beta,
            websocket: None,
        };
        let mut out = b"stale bytes".to_vec();
        let result = head::parse_request(h, &limits, &rw, &mut out);
        if let Ok(req) = &result {
            check_request(h, req, cfg, &limits);
            let forwarded = req.route == Route::Forward && req.authorized;
            assert_eq!(
                !out.is_empty(),
                forwarded,
                "out written iff forwarded: {req:?}"
            );
            if forwarded {
                check_upstream_head(h, req, cfg, &out);
                check_idempotent(req, cfg, &out);
            }
        } else {
            assert!(
                out.is_empty() || out == b"stale bytes",
                "out written for a refused head"
            );
        }
        // The configuration only decides `authorized` and the bytes written.
        let norm = result.map(|mut r| {
            r.authorized = true;
            r
        });
        match &first {
            None => first = Some(norm),
            Some(f) => assert_eq!(f, &norm, "decision depends on the configuration"),
        }
    }
}

/// What the returned [`Request`] says, checked against the client's head.
fn check_request(h: &[u8], req: &Request, cfg: &Config, limits: &Limits) {
    let p = parse_request_exact(h).expect("accepted head parses with httparse");
    assert_eq!(p.method, req.method.as_str(), "method");
    assert_eq!(req.version == Version::Http11, p.minor == 1, "version");
    if req.version == Version::Http10 {
        assert!(!req.keep_alive, "HTTP/1.0 kept alive (R35)");
    }
    if req.expect_continue {
        assert!(
            req.version == Version::Http11 && req.body.has_bytes(),
            "100-continue"
        );
    }
    assert!(
        req.path.end <= h.len() && req.path.start <= req.path.end,
        "path range"
    );
    let path = &h[req.path.clone()];
    assert!(
        path.is_empty() || path[0] == b'/',
        "logged path not origin-form"
    );
    assert!(
        !path.contains(&b'?') && !path.contains(&b'#'),
        "logged path has ? or #"
    );
    let health = matches!(req.method, Method::Get | Method::Head) && path == b"/health";
    assert_eq!(req.route == Route::Health, health, "route");
    assert!(!contains(&p.target, b"#"), "fragment accepted");

    // R20: exactly one Host on HTTP/1.1, at most one on HTTP/1.0.
    let hosts = fields_named(&p.fields, b"host").count();
    assert!(
        hosts == 1 || (req.version == Version::Http10 && hosts == 0),
        "Host count {hosts}"
    );
    // No protocol switching (docs/http-rules.md §3.5).
    assert_eq!(
        fields_named(&p.fields, b"upgrade").count(),
        0,
        "Upgrade accepted"
    );
    // R37: no `_` look-alike of a protected name.
    for f in &p.fields {
        if f.name.contains(&b'_') {
            let dashed: Vec<u8> = f
                .name
                .iter()
                .map(|&b| if b == b'_' { b'-' } else { b })
                .collect();
            assert!(
                !name_in(&dashed, REMOVED_FROM_CLIENT) && !is_x_forwarded(&dashed),
                "underscore look-alike accepted: {:?}",
                String::from_utf8_lossy(&f.name)
            );
        }
    }

    // RFC 9112 §6.3 framing, decided without ambiguity.
    let cl: Vec<&Field> = fields_named(&p.fields, b"content-length").collect();
    let te: Vec<&Field> = fields_named(&p.fields, b"transfer-encoding").collect();
    assert!(
        cl.is_empty() || te.is_empty(),
        "TE and CL both accepted (R1)"
    );
    assert!(
        cl.len() <= 1 && te.len() <= 1,
        "repeated framing field accepted"
    );
    match req.body {
        BodyKind::Empty => assert!(cl.is_empty() && te.is_empty(), "Empty with a framing field"),
        BodyKind::Length(n) => {
            let v = &cl.first().expect("Length without Content-Length").value;
            assert!(
                !v.is_empty() && v.iter().all(u8::is_ascii_digit),
                "CL not 1*DIGIT"
            );
            let parsed: u128 = std::str::from_utf8(v).unwrap().parse().unwrap();
            assert_eq!(parsed, u128::from(n), "Content-Length value");
            assert!(
                n <= limits.max_body_bytes,
                "body over MAX_BODY_BYTES accepted"
            );
        }
        BodyKind::Chunked => {
            let v = &te.first().expect("Chunked without Transfer-Encoding").value;
            assert!(
                v.eq_ignore_ascii_case(b"chunked"),
                "TE other than a lone chunked"
            );
            assert_eq!(req.version, Version::Http11, "TE on HTTP/1.0 (R5)");
        }
    }

    // The phantom token: `Authorization: Bearer <phantom>` or `x-api-key: <phantom>`.
    let presented = |f: &Field| -> bool {
        let Some(phantom) = cfg.phantom else {
            return false;
        };
        if f.is(b"authorization") {
            f.value.len() > 7
                && f.value[..7].eq_ignore_ascii_case(b"bearer ")
                && f.value[7..].trim_ascii() == phantom
        } else {
            f.is(b"x-api-key") && f.value == phantom
        }
    };
    let want_auth = cfg.phantom.is_none() || p.fields.iter().any(presented);
    assert_eq!(req.authorized, want_auth, "authorized");
}

/// The client's `Connection` options (fields it declared hop-by-hop).
fn connection_options(fields: &[Field]) -> Vec<Vec<u8>> {
    fields_named(fields, b"connection")
        .flat_map(|f| list_items(&f.value).map(<[u8]>::to_vec).collect::<Vec<_>>())
        .filter(|o| !o.eq_ignore_ascii_case(b"close") && !o.eq_ignore_ascii_case(b"keep-alive"))
        .collect()
}

/// A path that could climb out of the base path at an upstream that normalises it.
fn has_dot_segment(path: &[u8]) -> bool {
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i..].len() >= 3 && path[i..i + 3].eq_ignore_ascii_case(b"%2e") {
            decoded.push(b'.');
            i += 3;
        } else {
            decoded.push(path[i]);
            i += 1;
        }
    }
    decoded.contains(&b'\\')
        || decoded
            .split(|&b| b == b'/')
            .any(|s| s == b"." || s == b"..")
}

/// The upstream head written for a forwarded request.
fn check_upstream_head(h: &[u8], req: &Request, cfg: &Config, out: &[u8]) {
    let client = parse_request_exact(h).expect("accepted head parses");
    let up = match parse_request_exact(out) {
        Ok(p) => p,
        Err(e) => panic!(
            "upstream head is not one complete request ({e}): {:?}",
            String::from_utf8_lossy(out)
        ),
    };
    assert!(crlf_only(out), "bare CR or LF in the upstream head");
    assert!(out.ends_with(b"\r\n\r\n"), "upstream head end");
    assert_eq!(up.method, req.method.as_str(), "upstream method");
    assert_eq!(up.minor, 1, "upstream version");
    let line_end = memchr::memmem::find(out, b"\r\n").unwrap();
    assert!(out[..line_end].ends_with(b" HTTP/1.1"), "request line");

    // The target: TARGET's base path, then the client's origin-form path and query; never the
    // client's authority (docs/http-rules.md §3.1), never a fragment or dot-segment.
    let base = cfg.target.base_path.as_bytes();
    let t = &up.target;
    assert!(
        t.starts_with(base) && t.get(base.len()) == Some(&b'/'),
        "target outside base path"
    );
    let rest = &t[base.len()..];
    if client.target.first() == Some(&b'/') {
        assert_eq!(rest, &client.target[..], "origin-form target changed");
    } else {
        // absolute-form: `scheme://authority` + path-and-query (a '/' added when empty).
        let after_scheme =
            &client.target[client.target.iter().position(|&b| b == b':').unwrap() + 3..];
        let pq_at = after_scheme
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(after_scheme.len());
        let pq = &after_scheme[pq_at..];
        if pq.first() == Some(&b'/') {
            assert_eq!(rest, pq, "absolute-form path changed");
        } else {
            assert_eq!(&rest[1..], pq, "absolute-form path changed");
        }
    }
    assert!(!t.contains(&b'#'), "fragment forwarded");
    // RFC 9112 §3.2: the request-target is ASCII.
    assert!(t.is_ascii(), "non-ASCII request-target forwarded");
    let t_path = &t[..t.iter().position(|&b| b == b'?').unwrap_or(t.len())];
    assert!(
        !has_dot_segment(t_path),
        "dot-segment forwarded: {:?}",
        String::from_utf8_lossy(t)
    );

    for f in &up.fields {
        assert!(
            no_cr_lf(&f.name) && no_cr_lf(&f.value),
            "CR/LF inside a field"
        );
        assert!(
            !name_in(&f.name, NEVER_UPSTREAM) && !is_x_forwarded(&f.name),
            "forbidden field forwarded: {:?}",
            String::from_utf8_lossy(&f.name)
        );
        assert!(!f.name.contains(&b'_'), "a name with `_` forwarded");
    }
    let fields = &up.fields;
    assert!(!fields.is_empty());
    // Host: exactly one, first, TARGET's authority (R20).
    assert_eq!(
        fields_named(fields, b"host").count(),
        1,
        "Host count upstream"
    );
    assert!(
        fields[0].is(b"host") && fields[0].value == cfg.target.authority.as_bytes(),
        "Host"
    );
    // Our credential: exactly one Authorization, last, the real token (docs/http-rules.md §5.2).
    let auth: Vec<&Field> = fields_named(fields, b"authorization").collect();
    assert_eq!(auth.len(), 1, "Authorization count upstream");
    assert_eq!(auth[0].value, b"Bearer REALTOKEN", "Authorization value");
    assert!(
        fields.last().unwrap().is(b"authorization"),
        "credential not last"
    );
    // Framing: one canonical field matching the decision.
    let cl: Vec<&Field> = fields_named(fields, b"content-length").collect();
    let te: Vec<&Field> = fields_named(fields, b"transfer-encoding").collect();
    assert!(
        cl.len() + te.len() <= 1,
        "more than one framing field upstream"
    );
    match req.body {
        BodyKind::Empty => assert!(cl.is_empty() && te.is_empty()),
        BodyKind::Length(n) => assert_eq!(
            cl.first().map(|f| &f.value[..]),
            Some(n.to_string().as_bytes())
        ),
        BodyKind::Chunked => assert_eq!(te.first().map(|f| &f.value[..]), Some(&b"chunked"[..])),
    }
    // The client's fields, in order, unchanged, minus the removed ones and those it declared
    // hop-by-hop (RFC 9110 §7.6.1), but for the OAuth beta flag.
    let options = connection_options(&client.fields);
    let mut expected: Vec<Field> = client
        .fields
        .iter()
        .filter(|f| !removed_from_client(&f.name))
        .filter(|f| !options.iter().any(|o| f.name.eq_ignore_ascii_case(o)))
        .cloned()
        .collect();
    // The beta decision counts only the client's fields that survive (not Connection options).
    let betas = || expected.iter().filter(|f| f.is(b"anthropic-beta"));
    let has_beta = betas().next().is_some();
    let has_oauth = betas().any(|f| list_items(&f.value).any(|i| i == OAUTH_BETA));
    if cfg.oauth_beta && !has_oauth {
        if !has_beta {
            expected.push(Field {
                name: b"anthropic-beta".to_vec(),
                value: OAUTH_BETA.to_vec(),
            });
        } else if let Some(f) = expected.iter_mut().find(|f| f.is(b"anthropic-beta")) {
            if !f.value.is_empty() {
                f.value.push(b',');
            }
            f.value.extend_from_slice(OAUTH_BETA);
        }
    }
    expected.push(Field {
        name: b"Accept-Encoding".to_vec(),
        value: b"identity".to_vec(),
    });
    let framing = usize::from(req.body != BodyKind::Empty);
    let middle = &fields[1..fields.len() - 1 - framing];
    assert_eq!(
        middle,
        &expected[..],
        "client fields not relayed as they were"
    );
    if cfg.oauth_beta {
        let n = fields_named(fields, b"anthropic-beta")
            .flat_map(|f| {
                list_items(&f.value)
                    .filter(|i| *i == OAUTH_BETA)
                    .collect::<Vec<_>>()
            })
            .count();
        assert!(n >= 1, "OAuth beta flag missing");
    }
}

/// Rewriting an already rewritten head changes nothing: the second pass strips the
/// Authorization the first one added and adds it again. The second pass uses TARGET without
/// its base path (the base would otherwise be prepended twice), accepts the real token as the
/// phantom when one is required, and the largest header count (our fields add up to three).
fn check_idempotent(req: &Request, cfg: &Config, out: &[u8]) {
    let limits = Limits {
        max_headers: limits::MAX_HEADERS_CAP,
        max_head_bytes: usize::MAX,
        max_request_line: usize::MAX,
        max_field_line: usize::MAX,
        ..Limits::default()
    };
    assert_eq!(
        HeadScanner::new().scan(out, &ScanLimits::request(&limits)),
        Ok(Some(out.len())),
        "upstream head refused by our own scanner"
    );
    let rw = Rewrite {
        target: &cfg.bare,
        credential_line: CREDENTIAL_LINE,
        phantom: cfg.phantom.map(|_| REAL_TOKEN),
        credential_field: None,
        allow: None,
        oauth_beta: cfg.oauth_beta,
        websocket: None,
    };
    let mut again = Vec::new();
    let r2 = match head::parse_request(out, &limits, &rw, &mut again) {
        Ok(r) => r,
        Err(p) => panic!(
            "upstream head refused by our own parser: {p:?}: {:?}",
            String::from_utf8_lossy(out)
        ),
    };
    assert_eq!(r2.method, req.method, "idempotence: method");
    assert_eq!(r2.body, req.body, "idempotence: body");
    assert_eq!(r2.version, Version::Http11);
    assert!(
        r2.authorized && r2.route == Route::Forward,
        "idempotence: {r2:?}"
    );
    assert!(
        again == out,
        "idempotence: rewrite of the rewritten head differs:\n{:?}\n{:?}",
        String::from_utf8_lossy(out),
        String::from_utf8_lossy(&again)
    );
}

// ---------------------------------------------------------------------------------------------
// chunked
// ---------------------------------------------------------------------------------------------

/// Small limits so that every limit branch is reachable with small inputs.
const SMALL_CHUNK: ChunkLimits = ChunkLimits {
    max_body: 64,
    max_ext_line: 8,
    max_ext_total: 20,
    max_trailers: 24,
};

/// The request-side limits the relay uses with the default configuration.
const REQUEST_CHUNK: ChunkLimits = ChunkLimits {
    max_body: limits::MAX_BODY_BYTES,
    max_ext_line: limits::MAX_CHUNK_EXT,
    max_ext_total: limits::MAX_CHUNK_EXT_TOTAL,
    max_trailers: limits::MAX_TRAILER_BYTES,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Decoded {
    Done { payload: Vec<u8>, consumed: usize },
    Incomplete { payload: Vec<u8> },
    Failed(ChunkError),
}

/// Feeds `data` to one decoder in the pieces `cuts` makes, as the relay does.
fn decode_incremental(data: &[u8], limits: ChunkLimits, cuts: &[usize]) -> Decoded {
    let mut d = ChunkedDecoder::new(limits);
    let mut payload = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        let seg = &data[start..end];
        // An empty read changes nothing.
        assert_eq!(
            d.step(&[]),
            Ok(Step::Framing(0)),
            "step(&[]) before the end"
        );
        let mut i = 0;
        while i < seg.len() {
            let left = seg.len() - i;
            match d.step(&seg[i..]) {
                Err(e) => return Decoded::Failed(e),
                Ok(Step::Data(n)) => {
                    assert!(n > 0 && n <= left, "Data({n}) of {left}");
                    payload.extend_from_slice(&seg[i..i + n]);
                    i += n;
                }
                Ok(Step::Framing(n) | Step::Meta(n)) => {
                    assert!(
                        n > 0 && n <= left,
                        "Framing/Meta({n}) of {left}: no progress"
                    );
                    i += n;
                }
                Ok(Step::Done(n)) => {
                    assert!(n > 0 && n <= left, "Done({n}) of {left}");
                    assert!(d.is_done());
                    assert_eq!(d.step(&seg[i + n..]), Ok(Step::Done(0)), "step after Done");
                    assert_eq!(d.payload_len(), payload.len() as u64, "payload_len");
                    return Decoded::Done {
                        payload,
                        consumed: start + i + n,
                    };
                }
            }
        }
        start = end;
    }
    assert!(!d.is_done());
    // payload_len() counts each chunk once its size line is read (not "seen" bytes, as its
    // doc comment says): at least what was returned as Data.
    assert!(d.payload_len() >= payload.len() as u64, "payload_len");
    Decoded::Incomplete { payload }
}

/// Target `chunked`: `data` is a raw chunked body (and whatever follows it).
pub fn chunked(data: &[u8]) {
    for limits in [ChunkLimits::RESPONSE, REQUEST_CHUNK, SMALL_CHUNK] {
        let oracle = framing::decode_naive(data, limits);
        let mut first: Option<Decoded> = None;
        for cuts in schedules(data, 3, 4096) {
            let got = decode_incremental(data, limits, &cuts);
            match (&oracle, &got) {
                (Ok(Some((p, c))), Decoded::Done { payload, consumed }) => {
                    assert!(
                        p == payload && c == consumed,
                        "decoder and oracle disagree: {got:?} vs {oracle:?}"
                    )
                }
                (Ok(Some(_)), _) => {
                    panic!("oracle complete, decoder {got:?} (cuts {cuts:?}): {oracle:?}")
                }
                (Err(_), Decoded::Failed(_)) => {}
                (Err(e), _) => panic!("oracle {e:?}, decoder {got:?} (cuts {cuts:?})"),
                (Ok(None), Decoded::Done { .. }) => panic!("oracle incomplete, decoder {got:?}"),
                (Ok(None), _) => {}
            }
            match &first {
                None => first = Some(got),
                Some(f) => assert_eq!(f, &got, "decoder result depends on the split ({cuts:?})"),
            }
        }
        // The canonical re-encoding (relay, request bodies) decodes to the same payload.
        if let Some(Decoded::Done { payload, .. }) = &first {
            let mut rng = Rng::of(data, 4);
            let mut enc = Vec::new();
            let mut at = 0;
            while at < payload.len() {
                let n = 1 + rng.upto(payload.len() - at - 1);
                framing::write_chunk_header(&mut enc, n);
                enc.extend_from_slice(&payload[at..at + n]);
                enc.extend_from_slice(b"\r\n");
                at += n;
            }
            enc.extend_from_slice(framing::LAST_CHUNK);
            let limits = ChunkLimits {
                max_body: u64::MAX,
                ..limits
            };
            assert_eq!(
                framing::decode_naive(&enc, limits),
                Ok(Some((payload.clone(), enc.len()))),
                "canonical re-encoding does not round-trip"
            );
            let got = decode_incremental(&enc, limits, &[]);
            assert_eq!(
                got,
                Decoded::Done {
                    payload: payload.clone(),
                    consumed: enc.len()
                }
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// response_head
// ---------------------------------------------------------------------------------------------

/// Every combination of the per-request facts the response rules depend on.
fn contexts() -> impl Iterator<Item = ResponseContext> {
    (0..8u8).map(|b| ResponseContext {
        request_was_head: b & 1 != 0,
        close_client: b & 2 != 0,
        dechunk: b & 4 != 0,
    })
}

/// Target `response_head`: `data` is raw bytes from the upstream: interim heads, a final
/// head, then body bytes.
pub fn response_head(data: &[u8]) {
    for ctx in contexts() {
        let mut rest = data;
        // The relay reads interim (1xx) heads until the final one; at most a few here.
        for _ in 0..4 {
            let Ok(Some(n)) = scan_checked(rest, &ScanLimits::RESPONSE, 5) else {
                break;
            };
            let mut out = b"stale bytes".to_vec();
            let Ok(head) = response::parse_response(&rest[..n], &ctx, real_tokens(), &mut out)
            else {
                break;
            };
            check_response_head(&rest[..n], &head, &ctx, &out);
            if head.interim {
                rest = &rest[n..];
                continue;
            }
            check_body(&rest[n..], head.body, ctx.dechunk);
            break;
        }
    }
}

fn check_response_head(h: &[u8], head: &ResponseHead, ctx: &ResponseContext, out: &[u8]) {
    let up = parse_response_exact(h).expect("accepted head parses with httparse");
    let down = match parse_response_exact(out) {
        Ok(p) => p,
        Err(e) => panic!(
            "client head is not one complete response ({e}): {:?}",
            String::from_utf8_lossy(out)
        ),
    };
    assert!(
        !contains(out, REAL_TOKEN),
        "token in the client's response head"
    );
    assert!(
        crlf_only(out) && out.ends_with(b"\r\n\r\n"),
        "client head line endings"
    );
    assert_eq!(down.minor, 1, "client head version");
    assert_eq!(down.code, head.status);
    assert_eq!(up.code, head.status);
    assert!(
        (100..=599).contains(&head.status) && head.status != 101,
        "status {}",
        head.status
    );
    assert!(out.starts_with(format!("HTTP/1.1 {} ", head.status).as_bytes()));
    assert_eq!(head.interim, head.status < 200, "interim");
    let no_body = ctx.request_was_head || head.interim || head.status == 204 || head.status == 304;
    assert_eq!(
        head.body == ResponseBody::None,
        no_body,
        "body {:?}",
        head.body
    );
    if head.interim {
        assert!(!head.close_client, "interim response closes the client");
    } else if ctx.close_client {
        assert!(head.close_client, "close_client lost");
    }
    if head.body == ResponseBody::UntilClose {
        assert!(
            head.close_client && !head.upstream_keep_alive,
            "close-delimited body kept alive"
        );
    }
    let dechunked = ctx.dechunk && head.body == ResponseBody::Chunked;
    if dechunked {
        assert!(head.close_client, "de-chunked body not close-delimited");
    }

    let fields = &down.fields;
    for f in fields {
        assert!(
            no_cr_lf(&f.name) && no_cr_lf(&f.value),
            "CR/LF inside a field"
        );
    }
    // Hop-by-hop: only our own `Connection: close`, last.
    let conns: Vec<&Field> = fields_named(fields, b"connection").collect();
    assert_eq!(
        conns.len(),
        usize::from(head.close_client),
        "Connection fields"
    );
    if head.close_client {
        assert!(
            fields.last().unwrap().is(b"connection") && fields.last().unwrap().value == b"close"
        );
    }
    for f in fields {
        assert!(
            f.is(b"connection") || !name_in(&f.name, HOP_BY_HOP_DOWN),
            "hop-by-hop field relayed: {:?}",
            String::from_utf8_lossy(&f.name)
        );
    }
    let options = connection_options(&up.fields);
    for f in &fields[..fields.len() - usize::from(head.close_client)] {
        assert!(
            !options.iter().any(|o| f.name.eq_ignore_ascii_case(o)),
            "field named by the upstream's Connection relayed: {:?}",
            String::from_utf8_lossy(&f.name)
        );
    }
    // Framing of a body the client will read.
    let cl: Vec<&Field> = fields_named(fields, b"content-length").collect();
    let te: Vec<&Field> = fields_named(fields, b"transfer-encoding").collect();
    match head.body {
        ResponseBody::None => {}
        ResponseBody::Length(n) => {
            assert!(te.is_empty() && cl.len() == 1, "Length framing");
            // Relayed as the upstream wrote it (leading zeros are 1*DIGIT too).
            assert_eq!(
                syntax::parse_content_length(&cl[0].value),
                Some(n),
                "Content-Length"
            );
        }
        ResponseBody::Chunked if dechunked => {
            assert!(te.is_empty() && cl.is_empty(), "de-chunked framing")
        }
        ResponseBody::Chunked => {
            assert!(cl.is_empty() && te.len() == 1, "chunked framing");
            assert!(te[0].value.eq_ignore_ascii_case(b"chunked"));
            assert!(up.minor == 1, "chunked from HTTP/1.0");
        }
        ResponseBody::UntilClose => {
            assert!(te.is_empty() && cl.is_empty(), "close-delimited framing")
        }
    }
    // Every other upstream field is relayed in order, masked.
    let mask = |b: &[u8]| {
        let mut v = b.to_vec();
        scrub::mask_all(&mut v, real_finder());
        v
    };
    let expected: Vec<Field> = up
        .fields
        .iter()
        .filter(|f| !name_in(&f.name, HOP_BY_HOP_DOWN))
        .filter(|f| !options.iter().any(|o| f.name.eq_ignore_ascii_case(o)))
        .filter(|f| !(dechunked && f.is(b"transfer-encoding")))
        .map(|f| Field {
            name: mask(&f.name),
            value: mask(&f.value),
        })
        .collect();
    assert_eq!(
        &fields[..fields.len() - usize::from(head.close_client)],
        &expected[..],
        "fields not relayed as they were"
    );
}

/// What the client received of one response body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BodyRun {
    sent: Vec<u8>,
    done: bool,
    failed: bool,
    /// The body ended when the upstream closed (close-delimited).
    ended_by_close: bool,
}

/// Drives a [`BodyTracker`] as the relay does: append a read, advance, send `..ready`, move
/// `ready..keep` to the front; at the end of the input the upstream closes.
fn drive_body(body: ResponseBody, dechunk: bool, data: &[u8], cuts: &[usize]) -> BodyRun {
    let mut t = BodyTracker::new(body, dechunk, real_tokens());
    let mut buf: Vec<u8> = Vec::new();
    let mut sent = Vec::new();
    let mut old = 0;
    let mut start = 0;
    let run = |done, failed, ended_by_close, sent| BodyRun {
        sent,
        done,
        failed,
        ended_by_close,
    };
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        buf.extend_from_slice(&data[start..end]);
        start = end;
        let len = buf.len();
        let a = match t.advance(&mut buf, old) {
            Ok(a) => a,
            Err(_) => return run(false, true, false, sent),
        };
        assert!(
            a.ready <= a.keep && a.keep <= len,
            "advance: {a:?} for {len} bytes"
        );
        sent.extend_from_slice(&buf[..a.ready]);
        if a.done {
            assert!(t.is_done());
            // R30: bytes after the end of the body, in the read that ended it.
            let beyond = match body {
                ResponseBody::None | ResponseBody::Length(0) => end,
                ResponseBody::Length(n) => end - n as usize,
                _ => {
                    let Ok(Some((_, c))) = framing::decode_naive(data, ChunkLimits::RESPONSE)
                    else {
                        panic!("tracker done, oracle not")
                    };
                    end - c
                }
            };
            assert_eq!(a.excess, beyond > 0, "excess");
            return run(true, false, false, sent);
        }
        assert!(!a.excess);
        buf.copy_within(a.ready..a.keep, 0);
        buf.truncate(a.keep - a.ready);
        t.shifted(a.ready);
        old = buf.len();
    }
    if t.finish_at_close() {
        sent.extend_from_slice(&buf);
        return run(false, false, true, sent);
    }
    run(false, false, false, sent)
}

fn check_body(data: &[u8], body: ResponseBody, dechunk: bool) {
    let masked = |b: &[u8]| {
        let mut v = b.to_vec();
        scrub::mask_all(&mut v, real_finder());
        v
    };
    let mut first: Option<BodyRun> = None;
    for cuts in schedules(data, 6, 2048) {
        let r = drive_body(body, dechunk, data, &cuts);
        // The token must never be sent: not in payload, chunk extensions or trailers.
        assert!(
            !contains(&r.sent, REAL_TOKEN),
            "token sent to the client: {:?}",
            String::from_utf8_lossy(&r.sent)
        );
        match body {
            ResponseBody::None | ResponseBody::Length(0) => {
                assert!(r.done && r.sent.is_empty(), "empty body: {r:?}")
            }
            ResponseBody::Length(n) => {
                assert!(!r.failed && !r.ended_by_close);
                let n = n as usize;
                if data.len() >= n {
                    assert!(r.done && r.sent == masked(&data[..n]), "Length body: {r:?}");
                } else {
                    assert!(
                        !r.done && masked(data).starts_with(&r.sent),
                        "truncated Length body: {r:?}"
                    );
                }
            }
            ResponseBody::UntilClose => {
                assert!(!r.done && !r.failed && r.ended_by_close);
                assert_eq!(r.sent, masked(data), "close-delimited body");
            }
            ResponseBody::Chunked => {
                assert!(!r.ended_by_close);
                match framing::decode_naive(data, ChunkLimits::RESPONSE) {
                    Ok(Some((payload, consumed))) => {
                        assert!(r.done, "chunked body not done: {r:?}");
                        if dechunk {
                            assert_eq!(r.sent, masked(&payload), "de-chunked body");
                        } else {
                            assert_eq!(r.sent.len(), consumed, "chunked body relayed");
                            assert!(r
                                .sent
                                .iter()
                                .zip(data)
                                .all(|(s, d)| s == d || *s == scrub::MASK));
                            assert_eq!(
                                framing::decode_naive(&r.sent, ChunkLimits::RESPONSE),
                                Ok(Some((masked(&payload), consumed))),
                                "relayed chunked body"
                            );
                        }
                    }
                    Err(_) => assert!(r.failed, "malformed chunked body relayed: {r:?}"),
                    Ok(None) => assert!(!r.done),
                }
                if !r.done && !r.failed && !dechunk {
                    assert!(r
                        .sent
                        .iter()
                        .zip(data)
                        .all(|(s, d)| s == d || *s == scrub::MASK));
                }
            }
        }
        match &first {
            None => first = Some(r),
            Some(f) if f.failed || r.failed => {
                assert_eq!(f.failed, r.failed, "failure depends on the split")
            }
            Some(f) => assert_eq!(f, &r, "client bytes depend on the split ({cuts:?})"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Target `relay_response`: the whole pure response path at the relay's real buffer sizes
// ---------------------------------------------------------------------------------------------

/// In a `relay_response` input, this byte stands for [`REAL_TOKEN`]: the fuzzer plants the
/// token anywhere (headers, chunk data split across chunks, extensions, trailers) by writing
/// one byte.
const TOKEN_MARK: u8 = 0xFF;
/// This byte stands for [`FILL`] bytes of `e`: long extensions or bodies from short inputs,
/// so the relay buffer's growth, its 64 KiB bound and the hold past it are reachable.
const FILL_MARK: u8 = 0xFE;
/// This byte stands for [`LATE_TOKEN`].
const LATE_MARK: u8 = 0xFD;
const FILL: usize = 4000;

/// How a byte of a chunked body is relayed (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// chunk-data: masked as one stream across chunks.
    Payload,
    /// chunk-ext text after `;` and whitespace, or a trailer field line: masked per line.
    Meta,
    /// Sizes, `;`, whitespace, CRLFs.
    Framing,
}

/// Classifies the bytes of a chunked body line by line, from the grammar (independent of
/// `ChunkedDecoder`); stops at the end of the body or of the input. A line the input cuts
/// short is classified as if it ended there.
fn classify_chunked(body: &[u8]) -> Vec<Class> {
    let mut class = Vec::with_capacity(body.len());
    let line_end = |from: usize| {
        body[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(body.len(), |i| from + i)
    };
    let mut pos = 0;
    // Chunks: `size [BWS] [; BWS ext] CRLF data CRLF`.
    loop {
        if pos >= body.len() {
            return class;
        }
        let end = line_end(pos);
        let line = &body[pos..end];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let size = std::str::from_utf8(&line[..digits])
            .ok()
            .and_then(|d| u64::from_str_radix(d, 16).ok());
        let ext_text = line.iter().position(|&b| b == b';').map(|semi| {
            let ws = line[semi + 1..]
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t'))
                .count();
            semi + 1 + ws
        });
        for i in 0..line.len() {
            let meta = ext_text.is_some_and(|t| i >= t);
            class.push(if meta { Class::Meta } else { Class::Framing });
        }
        let crlf = (end + 2).min(body.len()) - end;
        class.extend(std::iter::repeat_n(Class::Framing, crlf));
        pos = end + crlf;
        match size {
            Some(0) => break,
            Some(n) => {
                let data = usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(body.len() - pos);
                class.extend(std::iter::repeat_n(Class::Payload, data));
                pos += data;
                let crlf = 2.min(body.len() - pos);
                class.extend(std::iter::repeat_n(Class::Framing, crlf));
                pos += crlf;
            }
            None => return class,
        }
    }
    // Trailer section: field lines (meta), then the empty line.
    while pos < body.len() {
        let end = line_end(pos);
        class.extend(std::iter::repeat_n(Class::Meta, end - pos));
        let crlf = (end + 2).min(body.len()) - end;
        class.extend(std::iter::repeat_n(Class::Framing, crlf));
        let empty = end == pos;
        pos = end + crlf;
        if empty {
            break;
        }
    }
    class
}

/// Positions of `body` that are part of a token occurrence: in the payload as one stream, in
/// each extension or trailer line on its own. [`REAL_TOKEN`] cannot overlap itself, so the
/// occurrences are the same however they are searched.
fn token_positions(body: &[u8], class: &[Class]) -> Vec<bool> {
    // The two tokens share no byte, so their occurrences never overlap.
    let real = positions_of(REAL_TOKEN, body, class);
    let late = positions_of(LATE_TOKEN, body, class);
    real.iter().zip(&late).map(|(a, b)| a | b).collect()
}

/// The body's classes, as [`check_relayed`] judges them.
fn classes(body_kind: ResponseBody, body: &[u8]) -> Vec<Class> {
    match body_kind {
        ResponseBody::Chunked => classify_chunked(body),
        ResponseBody::Length(n) => vec![Class::Payload; body.len().min(n as usize)],
        ResponseBody::UntilClose => vec![Class::Payload; body.len()],
        ResponseBody::None => Vec::new(),
    }
}

/// Where the body first holds a byte of a [`LATE_TOKEN`] occurrence the relay must mask.
fn late_start(body_kind: ResponseBody, body: &[u8]) -> usize {
    let class = classes(body_kind, body);
    let late = positions_of(LATE_TOKEN, body, &class);
    late.iter().position(|&m| m).unwrap_or(usize::MAX)
}

/// The positions of `token`'s occurrences as the relay masks them (see [`token_positions`]).
fn positions_of(token: &[u8], body: &[u8], class: &[Class]) -> Vec<bool> {
    let mut marked = vec![false; body.len()];
    let mut mark = |positions: &[usize]| {
        let bytes: Vec<u8> = positions.iter().map(|&p| body[p]).collect();
        let k = token.len();
        let mut i = 0;
        while i + k <= bytes.len() {
            if &bytes[i..i + k] == token {
                positions[i..i + k].iter().for_each(|&p| marked[p] = true);
                i += k;
            } else {
                i += 1;
            }
        }
    };
    let payload: Vec<usize> = (0..class.len())
        .filter(|&i| class[i] == Class::Payload)
        .collect();
    mark(&payload);
    let mut run = Vec::new();
    for i in 0..=class.len() {
        if i < class.len() && class[i] == Class::Meta {
            run.push(i);
        } else if !run.is_empty() {
            mark(&run);
            run.clear();
        }
    }
    marked
}

/// How one relay of a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayEnd {
    /// The framing ended the body; `excess`: bytes followed it.
    Done { excess: bool },
    /// The upstream closed where a close-delimited body ends.
    Closed,
    /// The upstream closed before the framing ended the body.
    Truncated,
    /// The relay refused (malformed framing, hold overflow).
    Cut(Problem),
}

/// Relays `body` through [`RelayBuf`] as the exchange does, the upstream's reads sized by
/// `reads` (cycled), the first `first` body bytes arriving with the head.
fn drive_relay(
    head: ResponseHead,
    dechunk: bool,
    body: &[u8],
    first: usize,
    reads: &[usize],
) -> (Vec<u8>, RelayEnd) {
    let first = first.min(body.len());
    // Where the body first holds a byte of the late token: it joins before that byte is read.
    let late_at = late_start(head.body, body);
    let mut joined = late_at < first;
    let tokens = if joined { both_tokens() } else { real_tokens() };
    let tracker = BodyTracker::new(head.body, dechunk, tokens);
    // The head buffer: the head's own bytes (stand-ins), then the body bytes read with it.
    let head_len = 100;
    let mut buf = vec![b'H'; head_len];
    buf.extend_from_slice(&body[..first]);
    let filled = buf.len();
    buf.resize(filled.max(limits::RELAY_BUF_START), 0);
    let mut relay = RelayBuf::new(tracker, buf, head_len, filled);
    let (mut sent, mut at) = (Vec::new(), first);
    for read in reads.iter().cycle() {
        let adv = match relay.advance() {
            Ok(a) => a,
            Err(p) => return (sent, RelayEnd::Cut(p)),
        };
        sent.extend_from_slice(relay.front(adv.ready));
        if adv.done {
            return (sent, RelayEnd::Done { excess: adv.excess });
        }
        if let Err(p) = relay.consume(adv) {
            return (sent, RelayEnd::Cut(p));
        }
        let spare = relay.spare();
        assert!(!spare.is_empty(), "no room to read");
        let n = (*read).max(1).min(spare.len()).min(body.len() - at);
        if n == 0 {
            return match relay.closed() {
                Ok(last) => {
                    sent.extend_from_slice(relay.front(last));
                    (sent, RelayEnd::Closed)
                }
                Err(_) => (sent, RelayEnd::Truncated),
            };
        }
        spare[..n].copy_from_slice(&body[at..at + n]);
        let late = !joined && at + n > late_at;
        at += n;
        relay.filled(n);
        if late {
            relay.mask(both_tokens());
            joined = true;
        }
    }
    unreachable!("reads is never empty")
}

/// Target `relay_response`. Input: one flag byte (bit 0: the client is HTTP/1.0, so chunked
/// bodies are de-chunked; bit 1: the request was HEAD; bits 2-3: how large the upstream's
/// reads are), then the upstream's response, with [`TOKEN_MARK`] and [`FILL_MARK`] expanded.
///
/// Checks: the client never receives the token; every byte it receives equals the upstream's
/// byte at the same position or is a mask byte over a token occurrence (the body de-chunked
/// for HTTP/1.0: the payload, so masked); framing is relayed unaltered; how the relay ends
/// and what it sent do not depend on the read boundaries.
pub fn relay_response(data: &[u8]) {
    let Some((&flags, template)) = data.split_first() else {
        return;
    };
    let mut resp = Vec::with_capacity(template.len() * 2);
    for &b in template {
        match b {
            TOKEN_MARK => resp.extend_from_slice(REAL_TOKEN),
            LATE_MARK => resp.extend_from_slice(LATE_TOKEN),
            FILL_MARK => resp.extend(std::iter::repeat_n(b'e', FILL)),
            b => resp.push(b),
        }
    }
    let ctx = ResponseContext {
        request_was_head: flags & 2 != 0,
        close_client: false,
        dechunk: flags & 1 != 0,
    };
    // The final head, after any interim ones.
    let mut rest = &resp[..];
    let (head, head_len, out) = loop {
        let Ok(Some(n)) = scan_checked(rest, &ScanLimits::RESPONSE, 9) else {
            return;
        };
        let mut out = Vec::new();
        let Ok(head) = response::parse_response(&rest[..n], &ctx, real_tokens(), &mut out) else {
            return;
        };
        assert!(!contains(&out, REAL_TOKEN), "token in a relayed head");
        if !head.interim {
            break (head, n, out);
        }
        rest = &rest[n..];
    };
    let body = &rest[head_len..];
    let mut rng = Rng::of(data, 10);
    let big = [1usize, 16, 512, 70_000][usize::from(flags >> 2 & 3)];
    let schedules: Vec<(usize, Vec<usize>)> = vec![
        (0, vec![big]),
        (body.len(), vec![limits::RELAY_BUF_MAX]),
        (
            rng.upto(body.len()),
            (0..5).map(|_| 1 + rng.upto(big)).collect(),
        ),
        (rng.upto(64), vec![1]),
    ];
    let mut first_run: Option<(Vec<u8>, RelayEnd)> = None;
    for (first, reads) in schedules {
        let (sent, end) = drive_relay(head, ctx.dechunk, body, first, &reads);
        check_relayed(&out, head.body, ctx.dechunk, body, &sent, end);
        // Whether bytes followed the body is known only for those read with its end: the
        // flag may differ. Before a cut, how much of the (valid, checked) prefix went out
        // depends on where reads ended, since a read is judged whole: the end may not differ,
        // nor, for a body relayed to its end, a single byte.
        let end = match end {
            RelayEnd::Done { .. } => RelayEnd::Done { excess: false },
            e => e,
        };
        let whole = matches!(end, RelayEnd::Done { .. } | RelayEnd::Closed);
        match &first_run {
            None => first_run = Some((sent, end)),
            Some(f) => {
                assert_eq!(
                    f.1, end,
                    "how the relay ends depends on the read boundaries"
                );
                if whole {
                    assert_eq!(f.0, sent, "the relayed body depends on the read boundaries");
                }
            }
        }
    }
}

fn check_relayed(
    head_out: &[u8],
    body_kind: ResponseBody,
    dechunk: bool,
    body: &[u8],
    sent: &[u8],
    end: RelayEnd,
) {
    let mut client = head_out.to_vec();
    client.extend_from_slice(sent);
    assert!(!contains(&client, REAL_TOKEN), "token sent to the client");
    assert!(
        !contains(sent, LATE_TOKEN),
        "a token that joined the mask set sent to the client"
    );
    let chunked = body_kind == ResponseBody::Chunked;
    let class = classes(body_kind, body);
    let marked = token_positions(body, &class);
    let expect = |i: usize| if marked[i] { scrub::MASK } else { body[i] };
    if dechunk && chunked {
        let payload: Vec<u8> = (0..class.len())
            .filter(|&i| class[i] == Class::Payload)
            .map(expect)
            .collect();
        assert!(
            payload.starts_with(sent),
            "de-chunked bytes differ from the payload"
        );
    } else {
        assert!(sent.len() <= class.len(), "more sent than the body holds");
        for (i, &b) in sent.iter().enumerate() {
            assert_eq!(
                b,
                expect(i),
                "byte {i} altered: not the upstream's, nor a mask"
            );
        }
    }
    match end {
        RelayEnd::Done { excess } => {
            let used = if dechunk && chunked {
                class.len()
            } else {
                sent.len()
            };
            assert!(
                !excess || used < body.len(),
                "excess reported without bytes beyond"
            );
            if !(dechunk && chunked) {
                assert_eq!(sent.len(), class.len(), "a complete body is sent whole");
            }
        }
        RelayEnd::Closed => {
            assert_eq!(body_kind, ResponseBody::UntilClose);
            assert_eq!(
                sent.len(),
                body.len(),
                "a close-delimited body is sent whole"
            );
        }
        RelayEnd::Truncated => assert_ne!(body_kind, ResponseBody::UntilClose),
        RelayEnd::Cut(p) => assert!(
            matches!(
                p,
                Problem::UpstreamMalformed | Problem::UpstreamHoldOverflow
            ),
            "{p:?}"
        ),
    }
}
