//! One exchange: the request head and body up, the response head and body down.
//!
//! Upload and download run concurrently in the connection's task, so an upstream that answers
//! early (say 413 before the body is in) is relayed, and the request body streams while the
//! upstream thinks. Each await has its own timeout (docs/http-rules.md §8.3). Bytes go to the
//! client as soon as they are read: what was readable together leaves together (see
//! `read_available`), nothing waits for more, there is no flush interval.
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

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use zeroize::Zeroizing;

use crate::answer::CONTINUE;
use crate::error::Problem;
use crate::framing::{Framed, RequestBody};
use crate::head::{Method, Request, Version};
use crate::limits::{self, Timeouts};
use crate::metrics::Metrics;
use crate::persist::{self, ClientFate, ClientTerms, End, Relayed, UpstreamFate};
use crate::relaybuf::RelayBuf;
use crate::response::{self, RequestId, ResponseBody, ResponseContext};
use crate::scan::{HeadScanner, ScanLimits};
use crate::scrub::TokenFinder;
use crate::state::Proxy;
use crate::tracker::BodyTracker;
use crate::upstream::{ReadReady, Stream};

/// What one exchange works with, fixed for its duration.
pub struct Exchange<'a> {
    pub proxy: &'a Proxy,
    pub req: &'a Request,
    /// The rewritten upstream head; it holds our credential.
    pub up_head: &'a [u8],
    pub terms: ClientTerms,
    /// The tokens to mask in the response: the request's own (its searcher built once per
    /// client connection and token generation), and any older one still in use.
    pub tokens: &'a [&'a TokenFinder<'a>],
}

/// The client's side of the connection, as the exchange uses it: the socket, and the bytes
/// read but not yet used (body bytes, pipelined requests).
pub struct ClientIo<'c> {
    pub stream: &'c mut TcpStream,
    pub buf: &'c mut BytesMut,
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
        }
    }

    /// The client stopped reading or left: nothing more can be said to it.
    fn client_gone(p: Problem) -> Outcome {
        let client = persist::settle(End::ClientGone, ClientTerms::CLOSING).client;
        Outcome::answered(0, 0, Some(p), client)
    }
}

/// What [`forward`] leaves to the client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Nothing of a response reached the client: the connection answers `problem` itself.
    /// `in_sync`: the request was read exactly, so the connection's framing is certain.
    Answer { problem: Problem, in_sync: bool },
    /// The response, whole or cut, reached the client, or the client left.
    Relayed(Outcome),
}

/// The result of one attempt on one upstream connection.
enum Attempt {
    /// A pooled connection was found dead before anything was received: try a fresh one.
    Retry,
    Done(Forwarded),
}

/// Forwards one request whose rewritten head is `x.up_head`.
pub async fn forward(x: &Exchange<'_>, client: &mut ClientIo<'_>, out: &mut Vec<u8>) -> Forwarded {
    let metrics = &x.proxy.metrics;
    let _stream = InProgress::start(metrics);
    let mut retried = false;
    loop {
        let (stream, reused) = match x.proxy.pool.take() {
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
        match attempt(x, client, stream, retryable, out).await {
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

/// One attempt on `stream`: the head (with the body bytes already here), then the race.
async fn attempt(
    x: &Exchange<'_>,
    client: &mut ClientIo<'_>,
    mut stream: Stream,
    retryable: bool,
    out: &mut Vec<u8>,
) -> Attempt {
    let (l, t) = (&x.proxy.cfg.limits, &x.proxy.cfg.timeouts);
    // R26: answer 100-continue ourselves, once the upstream is reachable, if the client waits.
    if x.req.expect_continue && client.buf.is_empty() {
        if let Err(p) = write_client(client.stream, CONTINUE, t.client_write).await {
            return Attempt::Done(Forwarded::Relayed(Outcome::client_gone(p)));
        }
    }
    let mut upload = RequestBody::new(
        x.req.body,
        l.max_body_bytes,
        l.max_chunk_ext,
        l.max_trailer_bytes,
    );
    let mut scratch = Zeroizing::new(Vec::new());
    let head_bytes = match send_head(x, client, &mut stream, &mut upload, &mut scratch).await {
        Ok(n) => n,
        Err(HeadFailed::Write(_)) if retryable => return Attempt::Retry,
        // Nothing of the request is known to have reached the upstream.
        Err(HeadFailed::Framing(problem) | HeadFailed::Write(problem)) => {
            let in_sync = false;
            return Attempt::Done(Forwarded::Answer { problem, in_sync });
        }
    };
    let mut raced = race(x, client, stream, upload, scratch, out).await;
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
    client: &mut ClientIo<'_>,
    stream: &mut Stream,
    upload: &mut RequestBody,
    scratch: &mut Zeroizing<Vec<u8>>,
) -> Result<u64, HeadFailed> {
    scratch.reserve(x.up_head.len() + client.buf.len() * 4 + 64);
    scratch.extend_from_slice(x.up_head);
    match upload
        .frame(client.buf, scratch)
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
            stream.write_all(scratch).await?;
            stream.flush().await
        },
    )
    .await;
    let written = scratch.len() as u64;
    // Wipe the credential now: the buffer is reused (and may be reallocated) for the body.
    zeroize::Zeroize::zeroize(&mut **scratch);
    if upload.is_done() {
        // Nothing more goes up: give the buffers back before a possibly long stream, so an
        // idle SSE stream holds only its relay buffer.
        **scratch = Vec::new();
        if client.buf.is_empty() {
            *client.buf = BytesMut::new();
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

/// Why the upload stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadError {
    /// The client broke framing, stalled or left: the exchange is aborted.
    Client(Problem),
    /// The upstream stopped accepting the body; its response (if any) is still relayed.
    Upstream,
}

/// Where the race between upload and download left the exchange.
struct Raced {
    /// `None`: the upload was still running when the response ended.
    upload: Option<Result<(), UploadError>>,
    /// `Err`: the client broke its body, and the download was dropped.
    download: Result<DownReport, Problem>,
    /// A byte of the response reached the client.
    started: bool,
    /// Request bytes sent upstream.
    bytes_up: u64,
    stream: Stream,
}

/// Streams the rest of the body up while the response comes down.
async fn race(
    x: &Exchange<'_>,
    client: &mut ClientIo<'_>,
    mut stream: Stream,
    mut body: RequestBody,
    mut scratch: Zeroizing<Vec<u8>>,
    out: &mut Vec<u8>,
) -> Raced {
    let t = &x.proxy.cfg.timeouts;
    let version = x.req.version;
    let progress = Progress::new(body.is_done());
    let ctx = ResponseContext {
        request_was_head: x.req.method == Method::Head,
        close_client: !x.terms.persist(),
        dechunk: version == Version::Http10,
        tokens: x.tokens,
    };
    if body.is_done() {
        // The whole request went out with the head (the usual agent POST): relay the response
        // on the stream itself, without splitting it.
        let mut down = Download::new(&mut stream, &mut *client.stream, t, &progress);
        down.run(ctx, version, out).await;
        let report = down.report;
        return Raced {
            upload: Some(Ok(())),
            download: Ok(report),
            started: progress.response_started(),
            bytes_up: 0,
            stream,
        };
    }
    let (mut ur, mut uw) = tokio::io::split(stream);
    let (mut cr, mut cw) = client.stream.split();
    let (upload, download) = {
        // Boxed: a body still going up is the rarer case, and the upload's state should not
        // add to every connection's future.
        let mut up = Box::pin(
            Upload {
                cr: &mut cr,
                buf: client.buf,
                uw: &mut uw,
                body: &mut body,
                scratch: &mut scratch,
                t,
                progress: &progress,
            }
            .run(),
        );
        let mut download = Download::new(&mut ur, &mut cw, t, &progress);
        let mut upload = None;
        let ended = {
            let down = download.run(ctx, version, out);
            tokio::pin!(down);
            // Cancel safety: both futures are polled by reference and live until this block
            // ends. `down` is dropped unfinished only after the client broke its body, and
            // then its partial progress is judged through `progress.response_started()`.
            loop {
                tokio::select! {
                    r = &mut up, if upload.is_none() => match r {
                        Err(UploadError::Client(p)) => break Err(p),
                        other => upload = Some(other),
                    },
                    () = &mut down => break Ok(()),
                }
            }
        };
        (upload, ended.map(|()| download.report))
    };
    Raced {
        upload,
        download,
        started: progress.response_started(),
        bytes_up: progress.body_bytes.load(Relaxed),
        stream: ur.unsplit(uw),
    }
}

/// The final state, from what the race left; pools the upstream connection if it may be.
fn finish(x: &Exchange<'_>, raced: Raced, retryable: bool) -> Attempt {
    let started = raced.started;
    let down = match raced.download {
        Ok(d) => d,
        // The client broke its body. The upstream saw a partial request and is dropped
        // without a terminating chunk, so it never sees a complete one.
        Err(p) if started => return Attempt::Done(Forwarded::Relayed(Outcome::client_gone(p))),
        Err(problem) => {
            return Attempt::Done(Forwarded::Answer {
                problem,
                in_sync: false,
            })
        }
    };
    let body_sent = matches!(raced.upload, Some(Ok(())));
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
            close_delimited: down.client_close_delimited,
        },
        None => End::Relayed(Relayed {
            body_sent,
            answered_early: down.answered_early,
            announced_close: down.close_client,
            upstream_allows: down.upstream_allows,
            ended_exactly: down.ended_exactly,
        }),
    };
    if let Some(after) = down.head_after {
        x.proxy.metrics.response_head.observe(after);
    }
    let fate = persist::settle(end, x.terms);
    if fate.upstream == UpstreamFate::Pool {
        x.proxy.pool.put(raced.stream);
    }
    Attempt::Done(Forwarded::Relayed(Outcome {
        status: down.status,
        bytes: down.bytes,
        failure: down.failure,
        credential_rejected: matches!(down.status, 401 | 403),
        client: fate.client,
        upstream_answered: true,
        bytes_up: raced.bytes_up,
        head_after: down.head_after,
        reused: false,
        request_id: down.request_id,
        masked: down.masked,
    }))
}

/// The request body's way up: from the client's buffer and socket to the upstream.
struct Upload<'a, R, W> {
    cr: &'a mut R,
    buf: &'a mut BytesMut,
    uw: &'a mut W,
    body: &'a mut RequestBody,
    /// Re-chunked bytes on their way up.
    scratch: &'a mut Vec<u8>,
    t: &'a Timeouts,
    progress: &'a Progress,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Upload<'_, R, W> {
    /// Streams the rest of the request body from the client to the upstream.
    async fn run(self) -> Result<(), UploadError> {
        while !self.body.is_done() {
            if self.buf.is_empty() {
                self.buf.reserve(limits::UPLOAD_READ);
                let n = within(
                    self.t.client_idle,
                    Problem::BodyTimeout,
                    Problem::ClientAborted,
                    self.cr.read_buf(self.buf),
                )
                .await
                .map_err(UploadError::Client)?;
                if n == 0 {
                    // R10: a body shorter than declared is incomplete; the upstream is dropped.
                    return Err(UploadError::Client(Problem::ClientAborted));
                }
            }
            self.scratch.clear();
            let framed = self.body.frame(self.buf, self.scratch);
            let (bytes, consumed): (&[u8], usize) = match framed.map_err(UploadError::Client)? {
                Framed::Raw(n) => (&self.buf[..n], n),
                Framed::Encoded(n) => (&self.scratch[..], n),
            };
            if !bytes.is_empty() {
                let sent = timeout(self.t.upstream_idle, self.uw.write_all(bytes)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return Err(UploadError::Upstream);
                }
                self.progress
                    .body_bytes
                    .fetch_add(bytes.len() as u64, Relaxed);
            }
            self.buf.advance(consumed);
        }
        if !matches!(
            timeout(self.t.upstream_idle, self.uw.flush()).await,
            Ok(Ok(()))
        ) {
            return Err(UploadError::Upstream);
        }
        self.progress.body_sent.store(true, Relaxed);
        Ok(())
    }
}

/// What the download half reports.
struct DownReport {
    status: u16,
    bytes: u64,
    /// The final head allowed reusing the upstream connection.
    upstream_allows: bool,
    /// The body ended exactly where its framing said (see [`Relayed::ended_exactly`]).
    ended_exactly: bool,
    /// `Connection: close` was sent to the client.
    close_client: bool,
    /// The final head arrived before the request body was sent whole.
    answered_early: bool,
    /// When the final head arrived, after the download began.
    head_after: Option<Duration>,
    request_id: RequestId,
    /// Token occurrences masked, head and body.
    masked: u64,
    failure: Option<Problem>,
    /// Any byte arrived from the upstream.
    received_any: bool,
    /// The client sees a close-delimited body (the upstream's was, or it was de-chunked for
    /// an HTTP/1.0 client): its end cannot be told from a truncation by a FIN.
    client_close_delimited: bool,
}

/// The response's way down: reads the upstream, writes the client.
struct Download<'a, R, W> {
    ur: &'a mut R,
    cw: &'a mut W,
    t: &'a Timeouts,
    progress: &'a Progress,
    /// The relay buffer; `buf[..filled]` holds bytes read and not yet sent.
    buf: Vec<u8>,
    filled: usize,
    report: DownReport,
    /// When the download began (the request head was just sent).
    began: Instant,
    /// An end or error met after bytes that [`read_available`] returned; the next read's.
    stashed: Option<io::Result<usize>>,
}

impl<'a, R: AsyncRead + ReadReady + Unpin, W: AsyncWrite + Unpin> Download<'a, R, W> {
    fn new(ur: &'a mut R, cw: &'a mut W, t: &'a Timeouts, progress: &'a Progress) -> Self {
        Download {
            ur,
            cw,
            t,
            progress,
            buf: vec![0u8; limits::RELAY_BUF_START],
            filled: 0,
            began: Instant::now(),
            stashed: None,
            report: DownReport {
                status: 0,
                bytes: 0,
                upstream_allows: false,
                ended_exactly: false,
                close_client: true,
                answered_early: false,
                head_after: None,
                request_id: RequestId::NONE,
                masked: 0,
                failure: None,
                received_any: false,
                client_close_delimited: false,
            },
        }
    }

    /// Reads the response head (relaying interim 1xx), then streams the body to the client.
    async fn run(&mut self, mut ctx: ResponseContext<'_>, version: Version, out: &mut Vec<u8>) {
        let relayed = match self.final_head(&mut ctx, version, out).await {
            Ok((body, head_len)) => self.body(body, head_len, &ctx, out).await,
            Err(p) => Err(p),
        };
        if let Err(p) = relayed {
            self.report.failure = Some(p);
            self.report.ended_exactly = false;
        }
    }

    /// The final head, after any interim responses (RFC 9110 §15.2), within one deadline
    /// however it trickles in and whatever 1xx precede it. Returns its body's framing and its
    /// length (the rest of it is in the report and in `out`).
    async fn final_head(
        &mut self,
        ctx: &mut ResponseContext<'_>,
        version: Version,
        out: &mut Vec<u8>,
    ) -> Result<(ResponseBody, usize), Problem> {
        let deadline = Instant::now() + self.t.response;
        let mut scanner = HeadScanner::new();
        let mut interim = 0;
        loop {
            let head_end = self.read_head(&mut scanner, deadline).await?;
            // The client connection closes if its body is not fully consumed by now, and the
            // upstream connection is not pooled afterwards.
            let early = !self.progress.body_sent();
            ctx.close_client |= early;
            let head = response::parse_response(&self.buf[..head_end], ctx, out)?;
            if !head.interim {
                let after = self.began.elapsed();
                self.report.head_after = Some(after);
                self.report.request_id = head.request_id;
                self.report.masked += head.masked;
                self.report.answered_early = early;
                self.report.status = head.status;
                self.report.close_client = head.close_client;
                self.report.upstream_allows = head.upstream_keep_alive;
                self.report.client_close_delimited = head.body == ResponseBody::UntilClose
                    || (ctx.dechunk && head.body == ResponseBody::Chunked);
                return Ok((head.body, head_end));
            }
            interim += 1;
            if interim > limits::MAX_INTERIM_RESPONSES {
                return Err(Problem::UpstreamMalformed);
            }
            // R27: relay 1xx (103 Early Hints...) to HTTP/1.1 clients; drop 100, which answers
            // an expectation we never forwarded.
            if head.status != 100 && version == Version::Http11 {
                self.progress.start_response();
                self.write(out).await?;
            }
            self.buf.copy_within(head_end..self.filled, 0);
            self.filled -= head_end;
            scanner.reset();
        }
    }

    /// Reads until `scanner` finds a complete head in the buffer; returns its length.
    async fn read_head(
        &mut self,
        scanner: &mut HeadScanner,
        deadline: Instant,
    ) -> Result<usize, Problem> {
        loop {
            if let Some(n) = scanner.scan(&self.buf[..self.filled], &ScanLimits::RESPONSE)? {
                return Ok(n);
            }
            if self.filled == self.buf.len() {
                let grown = (self.buf.len() * 2).min(limits::MAX_RESPONSE_HEAD + 4);
                self.buf.resize(grown, 0);
            }
            let n = within(
                deadline.saturating_duration_since(Instant::now()),
                Problem::UpstreamResponseTimeout,
                Problem::UpstreamClosed,
                self.ur.read(&mut self.buf[self.filled..]),
            )
            .await?;
            if n == 0 {
                return Err(Problem::UpstreamClosed);
            }
            self.filled += n;
            self.report.received_any = true;
        }
    }

    /// The body: the head and the first body bytes leave in one write, then each read is
    /// written at once (minus held bytes that may begin a token) until the framing ends it.
    async fn body(
        &mut self,
        body: ResponseBody,
        head_len: usize,
        ctx: &ResponseContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Problem> {
        let tracker = BodyTracker::new(body, ctx.dechunk, ctx.tokens);
        let buf = std::mem::take(&mut self.buf);
        let mut relay = RelayBuf::new(tracker, buf, head_len, self.filled);
        let relayed = self.relay_body(&mut relay, body, out).await;
        self.report.masked += relay.masked();
        relayed
    }

    /// The body loop over `relay`; the first write carries the head in `out`.
    async fn relay_body(
        &mut self,
        relay: &mut RelayBuf<'_>,
        body: ResponseBody,
        out: &mut Vec<u8>,
    ) -> Result<(), Problem> {
        let mut first = true;
        loop {
            // Before the first write a failure is still a clean 502; after, a cut.
            let adv = relay.advance()?;
            if first {
                out.extend_from_slice(relay.front(adv.ready));
                self.progress.start_response();
                self.write(out).await?;
                first = false;
                if !adv.done {
                    // A stream goes on: it should not hold the rendered head meanwhile.
                    *out = Vec::new();
                }
            } else {
                self.write(relay.front(adv.ready)).await?;
            }
            if adv.done {
                // R30: bytes beyond the message mean the upstream cannot be trusted for the
                // next; nor one whose response ended at its head.
                self.report.ended_exactly = !adv.excess && body != ResponseBody::None;
                return Ok(());
            }
            relay.consume(adv)?;
            self.wait_readable(relay).await?;
            // R29: a TLS close without close_notify is a truncation, even for a
            // close-delimited body; tokio-rustls reports it as an error.
            let n = within(
                self.t.upstream_idle,
                Problem::UpstreamIdleTimeout,
                Problem::UpstreamClosed,
                read_available(self.ur, relay.spare(), &mut self.stashed),
            )
            .await?;
            if n == 0 {
                let last = relay.closed()?;
                return self.write(relay.front(last)).await;
            }
            relay.filled(n);
        }
    }

    /// Waits until the upstream has bytes for us (within the idle timeout; a readiness that
    /// turns out stale gives the read its own, so a silent upstream is cut after at most two). A plain upstream that has none yet (an SSE
    /// stream between events) is waited on without the relay buffer, so a held stream costs
    /// no buffer; one that has them, or a TLS one, goes straight on to the read.
    async fn wait_readable(&mut self, relay: &mut RelayBuf<'_>) -> Result<(), Problem> {
        let ur = &mut *self.ur;
        let ready = std::future::poll_fn(|cx| {
            let polled = ur.poll_read_ready(cx);
            if polled.is_pending() {
                relay.release_if_empty();
            }
            polled
        });
        within(
            self.t.upstream_idle,
            Problem::UpstreamIdleTimeout,
            Problem::UpstreamClosed,
            ready,
        )
        .await
    }

    /// Writes `bytes` to the client, counting them.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Problem> {
        if !bytes.is_empty() {
            write_client(self.cw, bytes, self.t.client_write).await?;
            self.report.bytes += bytes.len() as u64;
        }
        Ok(())
    }
}

/// Reads into `buf`: waits for the first bytes, then takes what else is already readable,
/// without waiting, until `buf` is full. tokio-rustls hands out one TLS record per read and an
/// SSE event is often a record of its own, so without this a burst would leave as one client
/// write per event; with it, what arrived together leaves together. Nothing waits for bytes
/// that are not here yet: an event that arrives alone is written alone, at once.
///
/// An end or an error met after some bytes is kept in `stashed` and returned by the next call,
/// so a reset is never mistaken for the clean end of a close-delimited body (R29).
fn read_available<'a, R: AsyncRead + Unpin>(
    r: &'a mut R,
    buf: &'a mut [u8],
    stashed: &'a mut Option<io::Result<usize>>,
) -> impl Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        if let Some(end) = stashed.take() {
            return Poll::Ready(end);
        }
        let mut total = 0;
        while total < buf.len() {
            let mut rb = ReadBuf::new(&mut buf[total..]);
            let polled = Pin::new(&mut *r).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            match polled {
                Poll::Ready(Ok(())) if n > 0 => total += n,
                Poll::Pending if total == 0 => return Poll::Pending,
                // The waker this Pending registered costs at most a spurious wake-up.
                Poll::Pending => break,
                // The end (a read of nothing) or an error.
                Poll::Ready(end) => {
                    let end = end.map(|()| 0);
                    if total == 0 {
                        return Poll::Ready(end);
                    }
                    *stashed = Some(end);
                    break;
                }
            }
        }
        Poll::Ready(Ok(total))
    })
}

/// Awaits `f` for at most `limit`; an I/O error becomes `on_error`, the timeout `on_timeout`.
async fn within<T>(
    limit: Duration,
    on_timeout: Problem,
    on_error: Problem,
    f: impl Future<Output = io::Result<T>>,
) -> Result<T, Problem> {
    match timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(on_error),
        Err(_) => Err(on_timeout),
    }
}

/// Writes to the client within the client write timeout.
pub async fn write_client(
    cw: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    limit: Duration,
) -> Result<(), Problem> {
    within(
        limit,
        Problem::ClientWriteStalled,
        Problem::ClientWriteStalled,
        cw.write_all(bytes),
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::task::Context;

    use super::*;

    /// A reader that hands out scripted results, one per poll: bytes, `Pending`, the end
    /// (empty), or an error.
    struct Script(VecDeque<Option<io::Result<&'static [u8]>>>);

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.0.pop_front() {
                None => Poll::Ready(Ok(())),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Some(Ok(bytes))) => {
                    buf.put_slice(bytes);
                    Poll::Ready(Ok(()))
                }
                Some(Some(Err(e))) => Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_once(
        r: &mut Script,
        buf: &mut [u8],
        stashed: &mut Option<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let fut = read_available(r, buf, stashed);
        let mut fut = std::pin::pin!(fut);
        fut.as_mut().poll(&mut cx)
    }

    fn ok(n: usize) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(n))
    }

    fn same(a: &Poll<io::Result<usize>>, b: &Poll<io::Result<usize>>) -> bool {
        match (a, b) {
            (Poll::Ready(Ok(x)), Poll::Ready(Ok(y))) => x == y,
            (Poll::Ready(Err(x)), Poll::Ready(Err(y))) => x.kind() == y.kind(),
            (Poll::Pending, Poll::Pending) => true,
            _ => false,
        }
    }

    /// What is readable together (TLS records decrypted from one socket read) is read
    /// together; the read stops at the first `Pending` without waiting for more.
    #[test]
    fn reads_what_is_already_readable_and_no_more() {
        let mut r = Script(
            [
                Some(Ok(&b"data: 1\n\n"[..])),
                Some(Ok(b"data: 2\n\n")),
                None,
                Some(Ok(b"data: 3\n\n")),
            ]
            .into(),
        );
        let (mut buf, mut stashed) = ([0u8; 64], None);
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(18)));
        assert_eq!(&buf[..18], b"data: 1\n\ndata: 2\n\n");
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(9)));
        assert_eq!(&buf[..9], b"data: 3\n\n");
    }

    /// Nothing readable: the read waits (it never returns an empty read that is not the end).
    #[test]
    fn waits_when_nothing_is_readable() {
        let mut r = Script([None].into());
        let (mut buf, mut stashed) = ([0u8; 8], None);
        assert!(poll_once(&mut r, &mut buf, &mut stashed).is_pending());
    }

    /// A full buffer ends the read; the rest stays for the next one.
    #[test]
    fn stops_when_the_buffer_is_full() {
        let mut r = Script([Some(Ok(&b"abcd"[..])), Some(Ok(b"efgh"))].into());
        let (mut buf, mut stashed) = ([0u8; 4], None);
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(4)));
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(4)));
        assert_eq!(&buf, b"efgh");
    }

    /// An error after bytes is not lost: the bytes come first, the error with the next read,
    /// so a reset never looks like the clean end of a close-delimited body (R29).
    #[test]
    fn an_error_after_bytes_is_kept_for_the_next_read() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let mut r = Script([Some(Ok(&b"data"[..])), Some(Err(reset))].into());
        let (mut buf, mut stashed) = ([0u8; 16], None);
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(4)));
        let reset = Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &reset));
    }

    /// The end after bytes likewise: bytes, then the end.
    #[test]
    fn the_end_after_bytes_is_kept_for_the_next_read() {
        let mut r = Script([Some(Ok(&b"tail"[..])), Some(Ok(&b""[..]))].into());
        let (mut buf, mut stashed) = ([0u8; 16], None);
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(4)));
        // The script is empty now; the end must come from what was kept, not a new read.
        r.0.push_back(Some(Ok(b"more")));
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(0)));
    }
}
