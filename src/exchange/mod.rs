//! One exchange: the request head and body up, the response head and body down.
//!
//! Upload and download run concurrently in the connection's task, so an upstream that answers
//! early (say 413 before the body is in) is relayed, and the request body streams while the
//! upstream thinks. Every await has its own timeout (docs/http-rules.md §8.3). Bytes are
//! written to the client as soon as they are read: what was readable together leaves together
//! (see `io::read_available`), nothing waits for more, there is no flush interval.
//!
//! The states, each one function:
//!
//! ```text
//!   forward ── connect or take from the pool
//!      └─ attempt ── send_head ── race(upload ‖ download) ── finish
//!           │             │                │                   ├─ Relayed (whole)
//!           │             │                │                   ├─ Cut (bytes reached the client)
//!           │             │                │                   └─ ClientGone
//!           └─────────────┴── nothing reached the client ──────── Answer (the connection answers)
//! ```
//!
//! A pooled connection that fails before any response byte arrived is replaced once, only for
//! a body-less idempotent request (RFC 9112 §9.3.1: never a POST). What happens to each
//! connection afterwards is [`persist::settle`]'s decision, from the final state. Once
//! response bytes reached the client, a failure only closes the connection: no fake ending
//! ever makes a truncated reply look whole.
//!
//! This file holds the state flow; the halves that race are `upload` (the request body's way
//! up) and `download` (the response's way down, and its report); `io` holds the reads, writes
//! and timeouts they share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use crate::answer::CONTINUE;
use crate::credential::Generation;
use crate::error::Problem;
use crate::framing::{Framed, RequestBody};
use crate::head::{Method, Request, Route, Version};
use crate::metrics::Metrics;
use crate::persist::{self, ClientFate, ClientTerms, End, Relayed, UpstreamFate};
use crate::response::{RequestId, ResponseContext};
use crate::state::Proxy;
use crate::upstream::Stream;
use crate::usage::Usage;

mod download;
mod io;
mod upload;

use download::{DownReport, Download, OnRejection};
use io::within;
pub use io::write_client;
use upload::{Upload, UploadState};

/// What one exchange works with, fixed for its duration.
pub struct Exchange<'a> {
    pub proxy: &'a Proxy,
    pub req: &'a Request,
    /// The rewritten upstream head; it holds our credential.
    pub up_head: &'a [u8],
    pub terms: ClientTerms,
    /// The generation of the token the request carries (what a 401 rejects).
    pub generation: &'a Arc<Generation>,
    /// The response's token usage is read (`USAGE_OBSERVE`, and not a `count_tokens`).
    pub observe: bool,
}

/// The client side of a connection: the socket, and the bytes read but not yet used (the rest
/// of a head, body bytes, pipelined requests). The connection reads heads into it; an
/// exchange takes the request body from it and writes the response to it. Defined here, below
/// `connection` (which adds the head reads and the proxy's own answers), so both can name it.
pub struct Client {
    pub stream: crate::listen::Stream,
    pub buf: BytesMut,
}

/// How an exchange ended, for the log line and the connection loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Status sent to the client (0 when nothing was sent).
    pub status: u16,
    /// Bytes written to the client (heads included).
    pub bytes: u64,
    /// What went wrong, if anything.
    pub failure: Option<Problem>,
    /// The upstream answered 401 or 403 to our credential.
    pub credential_rejected: bool,
    /// What happens to the client connection now.
    pub client: ClientFate,
    /// The status came from the upstream (not an answer of the proxy's own).
    pub upstream_answered: bool,
    /// Request bytes sent upstream (head and body).
    pub bytes_up: u64,
    /// From the request head sent to the final response head.
    pub head_after: Option<Duration>,
    /// The upstream connection came from the pool.
    pub reused: bool,
    /// The upstream's `request-id`.
    pub request_id: RequestId,
    /// Token occurrences masked in the response.
    pub masked: u64,
    /// A WebSocket tunnel ended with this close code (RFC 6455 §7.4).
    pub tunnel_close: Option<u16>,
    /// The token usage the response reported, as far as it was read.
    pub usage: Usage,
}

impl Outcome {
    /// An answer of the proxy's own (or none, `status` 0).
    pub fn answered(
        status: u16,
        bytes: u64,
        failure: Option<Problem>,
        client: ClientFate,
    ) -> Outcome {
        Outcome {
            status,
            bytes,
            failure,
            credential_rejected: false,
            client,
            upstream_answered: false,
            bytes_up: 0,
            head_after: None,
            reused: false,
            request_id: RequestId::NONE,
            masked: 0,
            tunnel_close: None,
            usage: Usage::default(),
        }
    }

    /// The client stopped reading or left: nothing more can be said to it.
    fn client_gone(p: Problem) -> Outcome {
        let client = persist::settle(End::ClientGone, ClientTerms::CLOSING).client;
        Outcome::answered(0, 0, Some(p), client)
    }
}

/// What [`forward`] leaves to the client connection.
// The outcome (with its request id and usage) moves once per exchange: not worth a heap
// allocation per request to keep the variants' sizes close.
#[allow(clippy::large_enum_variant)]
pub enum Forwarded {
    /// Nothing of a response reached the client: the connection answers `problem` itself.
    /// `in_sync`: the request was read exactly, so the connection's framing is certain.
    Answer { problem: Problem, in_sync: bool },
    /// The response, whole or cut, reached the client, or the client left.
    Relayed(Outcome),
    /// The upstream answered a WebSocket handshake with a 101 that answers it: nothing was
    /// sent to the client yet; the tunnel takes over.
    Switched(Switched),
}

/// An upstream connection that switched to WebSocket, and what came with its 101.
pub struct Switched {
    pub upstream: Stream,
    /// Bytes the upstream sent after its 101 (its first frames), not relayed yet.
    pub early: Vec<u8>,
    /// The subprotocol the upstream chose.
    pub protocol: Option<Vec<u8>>,
    /// The request head's bytes.
    pub bytes_up: u64,
}

/// The result of one attempt on one upstream connection.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    /// A pooled connection was found dead before anything was received: try a fresh one.
    Retry,
    Done(Forwarded),
}

/// Forwards one request whose rewritten head is `x.up_head`.
pub async fn forward(x: &Exchange<'_>, client: &mut Client, out: &mut Vec<u8>) -> Forwarded {
    let metrics = &x.proxy.metrics;
    let _stream = InProgress::start(metrics);
    let mut retried = false;
    // A WebSocket handshake gets a connection of its own: a pooled one may be shared by
    // no tunnel, and the tunnel's is never pooled. It leaves the pool alone (taking one only
    // to drop it would close a good connection on every handshake).
    let fresh = matches!(x.req.route, Route::WebSocket { .. });
    loop {
        let pooled = if fresh { None } else { x.proxy.pool.take() };
        let (upstream, reused) = match pooled {
            Some(s) => (s, true),
            None => match x.proxy.connector.connect().await {
                Ok(s) => (s, false),
                Err(problem) => {
                    if let Some(step) = problem.connect_step() {
                        metrics.connect_failed(step);
                    }
                    let in_sync = !x.req.body.has_bytes();
                    return Forwarded::Answer { problem, in_sync };
                }
            },
        };
        let counter = if reused {
            &metrics.upstream_reused
        } else {
            &metrics.upstream_opened
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let retryable =
            reused && !retried && !x.req.body.has_bytes() && x.req.method.is_idempotent();
        match attempt(x, client, upstream, retryable, out).await {
            Attempt::Retry => retried = true,
            Attempt::Done(Forwarded::Relayed(mut o)) => {
                o.reused = reused;
                return Forwarded::Relayed(o);
            }
            Attempt::Done(f) => return f,
        }
    }
}

/// Counts an exchange in progress while alive (the `streams_in_progress` gauge).
struct InProgress<'m>(&'m Metrics);

impl InProgress<'_> {
    fn start(metrics: &Metrics) -> InProgress<'_> {
        metrics.streams.fetch_add(1, Relaxed);
        InProgress(metrics)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Relaxed);
    }
}

/// One attempt on `upstream`: the head (with the body bytes already here), then the race.
async fn attempt(
    x: &Exchange<'_>,
    client: &mut Client,
    mut upstream: Stream,
    retryable: bool,
    out: &mut Vec<u8>,
) -> Attempt {
    let (l, t) = (&x.proxy.cfg.limits, &x.proxy.cfg.timeouts);
    // R26: answer 100-continue ourselves, once the upstream is reachable, if the client waits.
    if x.req.expect_continue && client.buf.is_empty() {
        if let Err(p) = write_client(&mut client.stream, CONTINUE, t.client_write).await {
            return Attempt::Done(Forwarded::Relayed(Outcome::client_gone(p)));
        }
    }
    let mut body = RequestBody::new(
        x.req.body,
        l.max_body_bytes,
        l.max_chunk_ext,
        l.max_trailer_bytes,
    );
    let mut scratch = Zeroizing::new(Vec::new());
    let head_bytes = match send_head(x, client, &mut upstream, &mut body, &mut scratch).await {
        Ok(n) => n,
        Err(HeadFailed::Write(_)) if retryable => return Attempt::Retry,
        // Nothing of the request is known to have reached the upstream.
        Err(HeadFailed::Framing(problem) | HeadFailed::Write(problem)) => {
            let in_sync = false;
            return Attempt::Done(Forwarded::Answer { problem, in_sync });
        }
    };
    let mut raced = race(x, client, upstream, body, scratch, out).await;
    raced.bytes_up += head_bytes;
    finish(x, raced, retryable)
}

/// Why the head could not be sent.
enum HeadFailed {
    /// The body bytes already here break framing: refused before anything is written.
    Framing(Problem),
    /// The upstream did not take the head.
    Write(Problem),
}

/// Writes the head and whatever body bytes already arrived, in one write; returns how many
/// bytes went up.
///
/// The head holds our credential: `scratch` is wiped when dropped, and sized up front so no
/// reallocation leaves a copy behind (re-chunking adds at most 4 bytes per input byte).
async fn send_head(
    x: &Exchange<'_>,
    client: &mut Client,
    upstream: &mut Stream,
    body: &mut RequestBody,
    scratch: &mut Zeroizing<Vec<u8>>,
) -> Result<u64, HeadFailed> {
    scratch.reserve(x.up_head.len() + client.buf.len() * 4 + 64);
    scratch.extend_from_slice(x.up_head);
    match body
        .frame(&client.buf, scratch)
        .map_err(HeadFailed::Framing)?
    {
        Framed::Raw(n) => {
            scratch.extend_from_slice(&client.buf[..n]);
            client.buf.advance(n);
        }
        Framed::Encoded(n) => client.buf.advance(n),
    }
    let wrote = within(
        x.proxy.cfg.timeouts.upstream_idle,
        Problem::UpstreamIdleTimeout,
        Problem::UpstreamClosed,
        async {
            upstream.write_all(scratch).await?;
            upstream.flush().await
        },
    )
    .await;
    let written = scratch.len() as u64;
    // Wipe the credential now: the buffer is reused (and may be reallocated) for the body.
    zeroize::Zeroize::zeroize(&mut **scratch);
    if body.is_done() {
        // Nothing more goes up: give the buffers back before a possibly long stream, so an
        // idle SSE stream holds only its relay buffer.
        **scratch = Vec::new();
        if client.buf.is_empty() {
            client.buf = BytesMut::new();
        }
    }
    wrote.map(|()| written).map_err(HeadFailed::Write)
}

/// What the two racing halves of an exchange (upload and download) tell each other. Both are
/// futures polled by the one connection task; the flags are atomics only because that task
/// must be `Send` (a `Cell` shared by reference is not), so `Relaxed` is enough.
struct Progress {
    /// The request body was sent whole (set by the upload, read when the response head
    /// arrives: a client whose body is still coming cannot be kept).
    body_sent: AtomicBool,
    /// A byte of a response reached the client: from then on a failure is a cut, never an
    /// answer of our own (read after the upload failed and the download was dropped).
    response_started: AtomicBool,
    /// Request bytes sent upstream after the head's write.
    body_bytes: AtomicU64,
}

impl Progress {
    fn new(body_sent: bool) -> Progress {
        Progress {
            body_sent: AtomicBool::new(body_sent),
            response_started: AtomicBool::new(false),
            body_bytes: AtomicU64::new(0),
        }
    }

    fn body_sent(&self) -> bool {
        self.body_sent.load(Relaxed)
    }

    fn response_started(&self) -> bool {
        self.response_started.load(Relaxed)
    }

    fn start_response(&self) {
        self.response_started.store(true, Relaxed);
    }
}

/// Where the race between upload and download left the exchange.
struct Raced {
    upload: UploadState,
    /// What the download reported: partial, and unused, when the upload ended in
    /// `ClientFailed` (the download was dropped unfinished).
    down: DownReport,
    /// A byte of the response reached the client.
    started: bool,
    /// Request bytes sent upstream.
    bytes_up: u64,
    upstream: Stream,
}

/// What a 401 or 403 to this exchange's credential sets off.
fn on_401<'a>(x: &Exchange<'a>) -> OnRejection<'a> {
    OnRejection {
        refetch: x.proxy.refetch.as_deref(),
        generation: x.generation,
    }
}

/// The whole request went out with the head (the usual agent POST, and every WebSocket
/// handshake): the response is relayed on the upstream connection itself, without splitting it.
async fn relay_whole(
    x: &Exchange<'_>,
    client: &mut Client,
    mut upstream: Stream,
    ctx: ResponseContext,
    progress: &Progress,
    out: &mut Vec<u8>,
) -> Raced {
    let (t, creds) = (&x.proxy.cfg.timeouts, &x.proxy.creds);
    let mut down = Download::new(&mut upstream, &mut client.stream, t, progress, creds);
    down.on_401 = Some(on_401(x));
    if let Route::WebSocket { accept, protocols } = &x.req.route {
        down.upgrade = Some((*accept, protocols));
    }
    down.observe = x.observe;
    down.run(ctx, x.req.version, out).await;
    Raced {
        upload: UploadState::Sent,
        down: down.report,
        started: progress.response_started(),
        bytes_up: 0,
        upstream,
    }
}

/// Streams the rest of the body up while the response comes down.
async fn race(
    x: &Exchange<'_>,
    client: &mut Client,
    upstream: Stream,
    mut body: RequestBody,
    mut scratch: Zeroizing<Vec<u8>>,
    out: &mut Vec<u8>,
) -> Raced {
    let version = x.req.version;
    let progress = Progress::new(body.is_done());
    let ctx = ResponseContext {
        request_was_head: x.req.method == Method::Head,
        close_client: !x.terms.persist(),
        dechunk: version == Version::Http10,
    };
    if body.is_done() {
        return relay_whole(x, client, upstream, ctx, &progress, out).await;
    }
    let (t, creds) = (&x.proxy.cfg.timeouts, &x.proxy.creds);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let (mut client_read, mut client_write) = client.stream.split();
    let (upload, down) = {
        // Boxed: a body still going up is the rarer case, and the upload's state should not
        // add to every connection's future.
        let mut up = Box::pin(
            Upload {
                client: &mut client_read,
                buf: &mut client.buf,
                upstream: &mut upstream_write,
                body: &mut body,
                scratch: &mut scratch,
                t,
                progress: &progress,
            }
            .run(),
        );
        let mut download =
            Download::new(&mut upstream_read, &mut client_write, t, &progress, creds);
        download.on_401 = Some(on_401(x));
        download.observe = x.observe;
        let mut upload = UploadState::Running;
        {
            let down = download.run(ctx, version, out);
            tokio::pin!(down);
            // Cancel safety: both futures are polled by reference and live until this block
            // ends. `down` is dropped unfinished only after the client broke its body, and
            // then its partial progress is judged through `progress.response_started()`.
            loop {
                tokio::select! {
                    state = &mut up, if upload == UploadState::Running => {
                        upload = state;
                        if let UploadState::ClientFailed(_) = upload {
                            break;
                        }
                    }
                    () = &mut down => break,
                }
            }
        }
        (upload, download.report)
    };
    Raced {
        upload,
        down,
        started: progress.response_started(),
        bytes_up: progress.body_bytes.load(Relaxed),
        upstream: upstream_read.unsplit(upstream_write),
    }
}

/// The final state, from what the race left; pools the upstream connection if it may be.
fn finish(x: &Exchange<'_>, raced: Raced, retryable: bool) -> Attempt {
    let started = raced.started;
    if let UploadState::ClientFailed(problem) = raced.upload {
        // The client broke its body. The upstream saw a partial request and is dropped
        // without a terminating chunk, so it never sees a complete one.
        return Attempt::Done(if started {
            Forwarded::Relayed(Outcome::client_gone(problem))
        } else {
            Forwarded::Answer {
                problem,
                in_sync: false,
            }
        });
    }
    let mut down = raced.down;
    if let Some((early, protocol)) = down.switched.take() {
        return Attempt::Done(Forwarded::Switched(Switched {
            upstream: raced.upstream,
            early,
            protocol,
            bytes_up: raced.bytes_up,
        }));
    }
    // The final head, if one arrived (always, unless the download failed). Without one,
    // nothing was announced and nothing allows keeping either connection.
    let head = down.head;
    let body_sent = raced.upload == UploadState::Sent;
    let end = match down.failure {
        Some(p) if !started && retryable && !down.received_any && p == Problem::UpstreamClosed => {
            return Attempt::Retry;
        }
        Some(problem) if !started => {
            let in_sync = body_sent;
            return Attempt::Done(Forwarded::Answer { problem, in_sync });
        }
        // A Content-Length or chunked body cut short is visibly incomplete after a FIN; a
        // close-delimited one is not, so that connection is reset instead (R29).
        Some(_) => End::Cut {
            close_delimited: head.is_some_and(|h| h.close_delimited),
        },
        None => End::Relayed(Relayed {
            body_sent,
            answered_early: down.answered_early,
            announced_close: head.is_none_or(|h| h.close_client),
            upstream_allows: head.is_some_and(|h| h.upstream_keep_alive),
            ended_exactly: down.ended_exactly,
        }),
    };
    if let Some(after) = down.head_after {
        x.proxy.metrics.response_head.observe(after);
    }
    let fate = persist::settle(end, x.terms);
    if fate.upstream == UpstreamFate::Pool && !matches!(x.req.route, Route::WebSocket { .. }) {
        x.proxy.pool.put(raced.upstream);
    }
    let status = head.map_or(0, |h| h.status);
    Attempt::Done(Forwarded::Relayed(Outcome {
        status,
        bytes: down.bytes,
        failure: down.failure,
        credential_rejected: matches!(status, 401 | 403),
        client: fate.client,
        upstream_answered: true,
        bytes_up: raced.bytes_up,
        head_after: down.head_after,
        reused: false,
        request_id: head.map_or(RequestId::NONE, |h| h.request_id),
        masked: down.masked,
        tunnel_close: None,
        usage: down.usage.unwrap_or_default(),
    }))
}
