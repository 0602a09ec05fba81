//! Every limit, default and bound of the proxy, in one place. Imports nothing of the crate.
//!
//! Each constant says what it bounds and, where a setting mirrors it, the environment variable
//! of the same name. Defaults follow docs/http-rules.md §8.2 (what trusted proxies use). Help and
//! error texts are built from these constants, never from numbers repeated by hand.

use std::time::Duration;

// --- the defaults of the two addresses ---

/// Port the proxy listens on (`LISTEN_PORT`).
pub const DEFAULT_LISTEN_PORT: u16 = 18080;
/// Default upstream (`TARGET`).
pub const DEFAULT_TARGET: &str = "https://api.anthropic.com";

// --- request heads (client side; settings) ---

/// Longest request line (`MAX_REQUEST_LINE`, 414). nginx: one 8 KiB buffer.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest single field line (`MAX_FIELD_LINE`, 431). nginx: 8 KiB.
pub const MAX_FIELD_LINE: usize = 8 * 1024;
/// Largest whole request head (`MAX_HEAD_BYTES`, 431). nginx: 4 x 8 KiB.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most fields in a request head (`MAX_HEADERS`, 431). hyper and Envoy: 100.
pub const MAX_HEADERS: usize = 100;
/// The largest `MAX_HEADERS` setting accepted (the parse array lives on the stack).
pub const MAX_HEADERS_CAP: usize = 256;
/// Most `Connection` options a request may name; more is refused (400).
pub const MAX_CONNECTION_OPTIONS: usize = 16;

// --- request bodies (settings) ---

/// Largest request body (`MAX_BODY_BYTES`, 413): the Messages API's documented 32 MB limit.
pub const MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// Most hex digits in a chunk size (RFC 9112 §7.1), on both sides: 16 fill a u64 exactly, a
/// 17th would overflow, so a longer size is refused as too large. Token masking relies on it
/// (a token that fits in a size line is refused at intake).
pub const MAX_CHUNK_SIZE_DIGITS: usize = 16;
/// Longest chunk extension on one request chunk line (`MAX_CHUNK_EXT`, 400). RFC 9112 §7.1.1.
pub const MAX_CHUNK_EXT: usize = 1024;
/// Chunk-extension bytes allowed over a whole request body (hyper: 16 KiB).
pub const MAX_CHUNK_EXT_TOTAL: usize = 16 * 1024;
/// Request trailer bytes read (then dropped) (`MAX_TRAILER_BYTES`, 431).
pub const MAX_TRAILER_BYTES: usize = 8 * 1024;

// --- connections (settings) ---

/// Concurrent client connections (`MAX_CONNECTIONS`); more wait in the kernel backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Requests served on one client connection (`MAX_REQUESTS_PER_CONNECTION`).
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 1000;
/// Accept queue of the listener: connections beyond `MAX_CONNECTIONS` wait here (std's
/// default, 128, drops a burst's SYNs).
pub const LISTEN_BACKLOG: i32 = 1024;
/// Idle upstream connections kept for reuse (`POOL_MAX_IDLE`).
pub const POOL_MAX_IDLE: usize = 32;

// --- the smallest values the size settings accept ---

/// Smallest `MAX_REQUEST_LINE`: room for a method, a short path and the version.
pub const MIN_REQUEST_LINE: usize = 64;
/// Smallest `MAX_FIELD_LINE`.
pub const MIN_FIELD_LINE: usize = 64;
/// Smallest `MAX_HEAD_BYTES`.
pub const MIN_HEAD_BYTES: usize = 256;
/// Smallest `MAX_HEADERS`: Host plus the fields every agent sends.
pub const MIN_HEADERS: usize = 8;

// --- upstream responses (the upstream is trusted for content, not for framing) ---

/// Largest upstream response head.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest upstream status or field line.
pub const MAX_RESPONSE_LINE: usize = 16 * 1024;
/// Most fields in an upstream response head.
pub const MAX_RESPONSE_HEADERS: usize = 128;
/// Longest chunk extension on one response chunk line.
pub const MAX_RESPONSE_CHUNK_EXT: usize = 4096;
/// Chunk-extension bytes allowed over a whole response body.
pub const MAX_RESPONSE_CHUNK_EXT_TOTAL: usize = 64 * 1024;
/// Response trailer bytes.
pub const MAX_RESPONSE_TRAILER_BYTES: usize = 64 * 1024;
/// Interim (1xx) responses relayed before the final one; more is a misbehaving upstream.
pub const MAX_INTERIM_RESPONSES: usize = 8;

// --- buffers ---

/// First read size for a request head; grows up to the head limit.
pub const HEAD_READ: usize = 4 * 1024;
/// Client reads during a request body.
pub const UPLOAD_READ: usize = 16 * 1024;
/// First size of the response relay buffer: small, since SSE events are small and idle
/// streams should cost little memory.
pub const RELAY_BUF_START: usize = 2 * 1024;
/// The relay buffer doubles when a read fills it, up to this (bulk downloads).
pub const RELAY_BUF_MAX: usize = 64 * 1024;
/// The relay buffer grows past [`RELAY_BUF_MAX`] only while held bytes (a possible token
/// prefix and the framing after it) fill it, up to this; then the response is cut. Above the
/// widest hold valid framing allows: a [`MAX_TOKEN_LEN`] token one byte per chunk, each size
/// line [`MAX_CHUNK_SIZE_DIGITS`] hex digits (about 21 bytes a chunk, 86 KiB), plus the whole
/// extension budget ([`MAX_RESPONSE_CHUNK_EXT_TOTAL`]).
pub const RELAY_HOLD_MAX: usize = 256 * 1024;

// --- usage ---

/// The most bytes of one event (or JSON body) the usage observer copies, from its last
/// `"usage` key on: a usage object is a few hundred bytes; one that does not close within
/// this is skipped.
pub const USAGE_EVENT_MAX: usize = 16 * 1024;
/// The longest model name logged or used as a label value.
pub const USAGE_MODEL_MAX: usize = 64;
/// The distinct models the token metrics name; the usage of any later one is counted under
/// `model="other"`, so the label set stays bounded.
pub const USAGE_MODELS_MAX: usize = 16;
/// The longest attribution header value logged; a longer one is logged as a marker.
pub const LOG_HEADER_VALUE_MAX: usize = 128;
/// The most attribution headers `LOG_REQUEST_HEADERS` may name.
pub const LOG_HEADERS_MAX: usize = 8;

// --- closing ---

/// How long a closing connection keeps reading what the client still sends (R34).
pub const LINGER: Duration = Duration::from_secs(1);
/// Most bytes discarded while lingering.
pub const LINGER_MAX_BYTES: usize = 256 * 1024;

// --- the token and the log ---

/// The longest token accepted. Anthropic keys and OAuth tokens are about 100 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;
/// The port of an egress proxy URL without one (curl's default).
pub const DEFAULT_PROXY_PORT: u16 = 1080;
/// Largest request head a metrics scraper may send.
pub const MAX_SCRAPE_HEAD: usize = 8 * 1024;
/// Time for one scrape, accept to the end of the response.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time from accepting a metrics connection to the end of its head. A scraper sends its head
/// as soon as it connects; a peer that sends nothing, or part of a head, is closed this soon
/// (or sooner, shed for a newer connection), well within Prometheus' 10 s scrape timeout.
pub const SCRAPE_HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// Metrics connections open at once. Another one sheds the oldest that has not sent its head
/// yet, or waits while every open one is being answered.
pub const MAX_SCRAPES: usize = 8;
/// Most entries in `ALLOW_REQUESTS`.
pub const MAX_ALLOW_ENTRIES: usize = 64;
/// How often `TOKEN_FILE` is checked for a change (a stat costs next to nothing).
pub const TOKEN_FILE_POLL: Duration = Duration::from_millis(250);
/// How long a new version of `TOKEN_FILE` must stay unchanged before it is read: a writer that
/// truncates, writes part of the token and pauses must not have the part taken for a token.
/// A change is picked up within about `TOKEN_FILE_SETTLE + 2 * TOKEN_FILE_POLL`.
pub const TOKEN_FILE_SETTLE: Duration = Duration::from_secs(1);
/// How long startup waits for `TOKEN_FILE` to settle (a file caught while it is written) before
/// it reads what is there.
pub const TOKEN_FILE_START_WAIT: Duration = Duration::from_secs(3);
/// How long a `TOKEN_COMMAND` may run (`TOKEN_COMMAND_TIMEOUT`); then its process group is
/// killed.
pub const TOKEN_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read from a token command's stdout: a token, or a small JSON answer, is far
/// less; more is a refusal, not a truncation.
pub const TOKEN_COMMAND_MAX_OUTPUT: usize = 64 * 1024;
/// How long a token without a known expiry keeps serving once its command fails
/// (`TOKEN_STALE_GRACE`); then requests get 503 until the command answers again.
pub const TOKEN_STALE_GRACE: Duration = Duration::from_secs(300);
/// A token with a known expiry is refreshed no later than this before it ends.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(120);
/// The first retry after a failed refresh; each further one waits twice as long, up to
/// [`TOKEN_RETRY_MAX`].
pub const TOKEN_RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait between retries of a failing token source.
pub const TOKEN_RETRY_MAX: Duration = Duration::from_secs(60);
/// How long a 401 waits for the re-fetch it asked for before it is relayed: a token source
/// that takes longer (a slow helper) still brings its token, for the requests that follow,
/// but this 401 goes out without `x-should-retry`.
pub const REFETCH_WAIT: Duration = Duration::from_secs(5);
/// The whole federation token exchange (connect, request, answer).
pub const FEDERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a token exchange's answer (head and body) read.
pub const FEDERATION_MAX_ANSWER: usize = 64 * 1024;
/// Longest path written to the log.
pub const LOG_PATH_MAX: usize = 256;

// --- timeouts, one per phase (settings) ---

/// Absolute deadline from a request's first byte to the end of its head (`HEADER_TIMEOUT`, 408).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle client connection between requests (`KEEPALIVE_TIMEOUT`), closed silently.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Upstream TCP connect (`CONNECT_TIMEOUT`, 504).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream TLS handshake (`TLS_TIMEOUT`, 504).
pub const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Request head sent to upstream response head (`RESPONSE_TIMEOUT`, 504). Minutes, because a
/// non-streaming LLM call may think for a long time before its head.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);
/// Gap between request-body reads from the client (`CLIENT_IDLE_TIMEOUT`).
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Gap between response-body reads from the upstream (`UPSTREAM_IDLE_TIMEOUT`); far above the
/// SSE `ping` interval so a quiet stream is never cut. There is no total-duration limit.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A write to the client that makes no progress (`CLIENT_WRITE_TIMEOUT`).
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle upstream connection may be reused (`POOL_IDLE_TIMEOUT`); below the
/// keep-alive timeouts that API front ends commonly use.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// A WebSocket tunnel with no frame either way (`WEBSOCKET_IDLE_TIMEOUT`), closed with 1001.
pub const WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest WebSocket frame payload relayed (close 1009 above): a frame is masked as it
/// streams, never buffered whole, so this bounds what one peer can make the other receive.
pub const WEBSOCKET_MAX_FRAME: u64 = 16 * 1024 * 1024;
/// How long the proxy tries to write its close frame to each side of a tunnel it ends:
/// well within `SHUTDOWN_GRACE`, so the 1001 of a drain reaches both sides before the exit.
pub const WEBSOCKET_CLOSE_WRITE: Duration = Duration::from_secs(1);
/// Drain period after SIGTERM/SIGINT (`SHUTDOWN_GRACE`); below Docker's 10 s stop timeout.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// Longest duration setting accepted: every phase is bounded.
pub const MAX_DURATION_SETTING: Duration = Duration::from_secs(24 * 60 * 60);
/// Shortest window of a ceiling (`LIMIT_TOKENS`, `LIMIT_REQUESTS`): a sixtieth of it is one
/// bucket, so a shorter window would count in buckets of a few milliseconds.
pub const MIN_CEILING_WINDOW: Duration = Duration::from_secs(1);
/// Longest window of a ceiling: a budget beyond a month is the lifetime form (`N` alone).
pub const MAX_CEILING_WINDOW: Duration = Duration::from_secs(31 * 24 * 60 * 60);
/// How long `agent-loop-proxy healthcheck` waits in total.
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Size and count limits on what clients send; see the constants for meaning and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_request_line: usize,
    pub max_field_line: usize,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub max_chunk_ext: usize,
    pub max_trailer_bytes: usize,
    pub max_connections: usize,
    pub max_requests_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: MAX_REQUEST_LINE,
            max_field_line: MAX_FIELD_LINE,
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
            max_body_bytes: MAX_BODY_BYTES,
            max_chunk_ext: MAX_CHUNK_EXT,
            max_trailer_bytes: MAX_TRAILER_BYTES,
            max_connections: MAX_CONNECTIONS,
            max_requests_per_connection: MAX_REQUESTS_PER_CONNECTION,
        }
    }
}

/// One timeout per phase; see the constants for meaning and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub header: Duration,
    pub keepalive: Duration,
    pub connect: Duration,
    pub tls: Duration,
    pub response: Duration,
    pub client_idle: Duration,
    pub upstream_idle: Duration,
    pub client_write: Duration,
    pub pool_idle: Duration,
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: HEADER_TIMEOUT,
            keepalive: KEEPALIVE_TIMEOUT,
            connect: CONNECT_TIMEOUT,
            tls: TLS_TIMEOUT,
            response: RESPONSE_TIMEOUT,
            client_idle: CLIENT_IDLE_TIMEOUT,
            upstream_idle: UPSTREAM_IDLE_TIMEOUT,
            client_write: CLIENT_WRITE_TIMEOUT,
            pool_idle: POOL_IDLE_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}
