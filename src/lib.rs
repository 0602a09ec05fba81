//! agent-loop-proxy: a credential-injection reverse proxy for sandboxed AI coding agents.
//!
//! The sandbox holds a phantom token and talks plain HTTP/1.1 to this proxy; the proxy holds
//! the real token (read once from stdin, kept only in memory) and talks to one fixed
//! upstream, TARGET, over TLS.
//!
//! # Layout
//!
//! Pure modules (bytes in, decisions out; fuzzed and split-point tested):
//! - [`head`]: finds the end of a request head, parses it strictly (httparse + the checks
//!   httparse leaves to us), decides body framing (RFC 9112 §6.3), writes the upstream head.
//! - [`framing`]: the incremental chunked decoder, the canonical chunk encoder, and the
//!   request-body framer (Content-Length as is, chunked re-encoded).
//! - [`response`]: the upstream response head, its body framing and the body tracker; the
//!   proxy's own answers (health, Anthropic-style errors).
//! - [`scrub`]: masks the real token wherever it appears in a response.
//! - [`error`]: every failure, its side, status and static message, in one place.
//!
//! I/O at the edges:
//! - [`upstream`]: TCP/TLS connections to TARGET and the idle pool.
//! - [`relay`]: one exchange, body up and response down, each await bounded.
//! - [`server`]: accept loop, connection loop, drain.
//!
//! Process: [`config`] (environment, limits, timeouts), [`secret`] (the token type),
//! [`log`] (one write per stderr line), [`sys`] (the few libc calls), and `main.rs` (flags, token intake, signals).
//!
//! # The journey of one request
//!
//! `server` reads bytes into the connection buffer until [`head::HeadScanner`] finds the
//! blank line (bounded in size and by the header deadline). [`head::parse_request`] validates
//! the head, refuses anything it cannot frame with certainty (400/501, connection closed,
//! nothing forwarded), answers `/health` locally, checks the phantom token, and writes a fresh
//! upstream head: TARGET's base path + the client's path and query, `Host` of TARGET, the
//! client's fields minus credentials and hop-by-hop fields, one canonical framing field, and
//! our `Authorization` last. [`relay::forward`] takes a pooled or new upstream connection,
//! writes the head with the first body bytes, streams the rest of the body (Content-Length as
//! is, chunked re-encoded canonically), and meanwhile reads the response head, relays it minus
//! hop-by-hop fields, then relays each body read at once, masking the token, until the body
//! ends by its framing. Both connections are kept only if everything ended cleanly.

#![deny(unsafe_code)]

pub mod config;
pub mod error;
pub mod framing;
pub mod head;
pub mod log;
pub mod relay;
pub mod response;
pub mod scrub;
pub mod secret;
pub mod server;
pub mod upstream;

#[allow(unsafe_code)]
pub mod sys;
