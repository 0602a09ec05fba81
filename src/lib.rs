//! agent-loop-proxy: a credential-injection reverse proxy for sandboxed AI coding agents.
//!
//! The sandbox holds a phantom token and talks plain HTTP/1.1 to this proxy; the proxy holds
//! the real token (read from stdin or a file, kept only in memory) and talks to one fixed
//! upstream, TARGET, over TLS.
//!
//! # Layout
//!
//! The modules form layers, listed top-down. A module imports only modules listed after it
//! (in its own layer or below), never upwards, so the graph has no cycles and reads one way.
//! `tests/repo/layering.rs` checks this order, that the bottom imports nothing of the crate,
//! and that the pure core uses neither tokio nor sockets, files or processes. Linked below
//! are the public modules: the entry point and what it takes ([`run`](mod@run),
//! [`config`], [`log`](mod@log), [`settings`]), and the pure core and bottom that the fuzz
//! targets, benches and tests drive; the others are private.
//!
//! 1. **I/O**, from the entry point down (`main.rs` is above all of them):
//!    - `check`: `--check`, the configuration read as a start reads it, nothing served.
//!    - [`run`](mod@run): starts one proxy (bind, then serve with a token) and drains it; the
//!      handle names its addresses. `main.rs` adds only the process: stdin, signals, exit codes.
//!    - `scrape`: the metrics listener (`METRICS_ADDR`), `GET` and `HEAD /metrics` only.
//!    - `server`: the accept loop and the drain.
//!    - `connection`: one client connection: socket and buffer, reading heads, the proxy's
//!      own answers, the log line, lingering close or reset.
//!    - `tunnel`: a WebSocket tunnel once the upstream switched: frames both ways, the
//!      server's masked, closed on a bad frame, idleness or shutdown.
//!    - `exchange`: one exchange as named states: head and body up, head and body down
//!      (a directory: the state flow, the upload half, the download half, their I/O helpers).
//!    - `federation`: Workload Identity Federation, the IdP's JWT exchanged for a token at
//!      TARGET's `/v1/oauth/token` through the upstream connector.
//!    - `state`: what every connection shares (config, token, connector, pool).
//!    - `upstream`: TCP/TLS connections to TARGET and the idle pool.
//!    - `listen`: the sandbox's listener, TCP, a Unix socket (`LISTEN_UNIX`, the peer uid
//!      check) or the socket systemd passed; the accepted stream, either kind.
//!    - `readhead`: reads a head that stands alone on its connection (the egress proxy's
//!      CONNECT answer, a scrape) until [`scan::HeadScanner`] finds its end.
//! 2. **Process**: `intake` (the first token, then its updates from stdin, a file or a
//!    command, on a thread of their own), `command` (runs `TOKEN_COMMAND`, confined, and
//!    decides when to run it again), `refetch` (a 401 asks the source for a new token and
//!    waits for it, bounded, before its head is relayed), [`config`] (the environment, parsed once), `credential` (token
//!    generations: the current one, and the mask set every response masks, which grows as
//!    tokens come into use), [`log`](mod@log) (one
//!    write per stderr line, text or JSON), `metrics` (counters, gauges and histograms in
//!    atomics, rendered for Prometheus), `secret` (the token type), `sys` (the few libc
//!    calls).
//! 3. **Pure core**, bytes in, decisions out (fuzzed and split-point tested):
//!    - [`head`]: parses and validates a request head, decides framing and route.
//!    - [`rewrite`]: writes the upstream request head.
//!    - `policy`: the allow-list of methods and paths (`ALLOW_REQUESTS`).
//!    - [`ceiling`]: the ceilings of one process (`LIMIT_TOKENS`, `LIMIT_REQUESTS`,
//!      `LIMIT_CONCURRENT`): bucketed windows, the concurrency slot, the refusal's
//!      `retry-after`.
//!    - [`handshake`]: the WebSocket opening handshake, the client's offer and the
//!      upstream's 101 (`WEBSOCKET_PATHS`).
//!    - [`relaybuf`]: the relay buffer of one response body: reads in, what to send out.
//!    - [`tracker`]: one response body as it streams: its end, masking, de-chunking.
//!    - [`wsframe`]: one direction of a WebSocket tunnel: frames validated, the upstream's
//!      payload masked.
//!    - [`response`]: parses the upstream response head and writes the client's.
//!    - `answer`: the proxy's own answers (health, Anthropic-shaped errors).
//!    - [`framing`]: framing fields (RFC 9112 §6.3), the chunked decoder and encoder, the
//!      request-body framer.
//!    - [`scan`]: finds the end of a head, request or response.
//!    - `persist`: every keep-alive decision: the exchange's final state in, each
//!      connection's fate out.
//!    - [`scrub`]: masks the real token wherever it appears in a response.
//!    - `egress`: the egress proxy (`HTTPS_PROXY`, `NO_PROXY`) and the CONNECT exchange.
//!    - [`usage`]: reads the token usage and model of a response from its body as it
//!      passes (event streams and JSON), without holding or changing a byte.
//!    - `flatjson`: the little JSON read: `TOKEN_COMMAND`'s argv, a token command's answer.
//! 4. **Bottom**, importing nothing of the crate: [`limits`] (every limit, default and
//!    bound), [`settings`] (every setting's name, default and `--help` line), [`syntax`]
//!    (small grammar helpers), [`error`] (every failure and, in one table,
//!    its side, status, metric reason, connect step and static message), [`target`]
//!    (TARGET's parsed form).
//!
//! # The journey of one request
//!
//! `server` accepts; `connection` reads bytes into the connection buffer until
//! [`scan::HeadScanner`] finds the blank line (bounded in size and by the header deadline).
//! [`head::parse_request`] validates the head, refuses anything it cannot frame with
//! certainty (400/501, connection closed, nothing forwarded), routes `/health` to a local
//! answer, checks the phantom token, and has [`rewrite`] write a fresh upstream head:
//! TARGET's base path + the client's path and query, `Host` of TARGET, the client's fields
//! minus credentials and hop-by-hop fields, one canonical framing field, and our
//! `Authorization` last. `exchange::forward` takes a pooled or new upstream connection,
//! writes the head with the first body bytes, streams the rest of the body (Content-Length
//! as is, chunked re-encoded canonically), and meanwhile reads the response head
//! ([`response`]), relays it minus hop-by-hop fields, then relays each body read at once,
//! masking every token in the credential store's mask set as it is at each read
//! ([`tracker`]), until the body ends by its framing. `persist::settle`
//! then decides from the exchange's final state whether the client connection is kept,
//! closed or reset and whether the upstream connection returns to the pool.

#![deny(unsafe_code)]

// The public surface: the entry point and what it takes (`run`, `config`, `log`), and the pure
// core with the bottom layer (what the fuzz targets, the benches and the tests drive directly).
// The I/O and process modules are private: nothing outside starts a connection by hand.

// 1. I/O
mod check;
mod connection;
mod exchange;
mod federation;
mod listen;
mod readhead;
pub mod run;
mod scrape;
mod server;
mod state;
mod tunnel;
mod upstream;

// 2. Process
mod command;
pub mod config;
mod credential;
mod intake;
pub mod log;
mod metrics;
mod refetch;
mod secret;
#[allow(unsafe_code)]
mod sys;

// 3. Pure core
mod answer;
pub mod ceiling;
mod egress;
mod flatjson;
pub mod framing;
pub mod handshake;
pub mod head;
mod persist;
mod policy;
pub mod relaybuf;
pub mod response;
pub mod rewrite;
pub mod scan;
pub mod scrub;
pub mod tracker;
pub mod usage;
pub mod wsframe;

// 4. Bottom
pub mod error;
pub mod limits;
pub mod settings;
pub mod syntax;
pub mod target;

pub use intake::Updates;
pub use run::{bind, run, Bound, Drained, Running, StartError};
pub use secret::{Token, TokenError, TokenHeader};

/// What the binary does to the process before the token exists, and after it was read.
pub mod process {
    pub use crate::sys::{close_stdin, harden_process, EchoOff};
}

pub use check::check;
pub use settings::{COMMIT, VERSION};
