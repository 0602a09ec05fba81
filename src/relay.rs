//! One exchange: the request head and body up, the response head and body down.
//!
//! Upload and download run concurrently in the connection's task, so an upstream that answers
//! early (say 413 before the body is in) is relayed, and the request body streams while the
//! upstream thinks. Every await has its own timeout (STYLE habit 9). Bytes are written to the
//! client as soon as they are read: no coalescing, no flush interval.
//!
//! Close when in doubt (HARDENING invariant 3): the upstream connection is pooled only after a
//! response that ended exactly where its framing said, following a request body sent whole;
//! the client connection persists only if its body was consumed exactly and the response
//! ended cleanly. Once response bytes reached the client, a failure only closes the
//! connection: no fake ending ever makes a truncated reply look whole.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use zeroize::Zeroizing;

use crate::error::Problem;
use crate::framing::{Framed, RequestBody};
use crate::head::{HeadScanner, Request, Version};
use crate::response::{self, Advance, BodyTracker, ResponseContext, RESPONSE_SCAN};
use crate::scrub::TokenFinder;
use crate::server::Proxy;
use crate::upstream::Stream;

/// First size of the response relay buffer: small, since SSE events are small and idle
/// streams should cost little memory.
pub const RELAY_BUF_START: usize = 2 * 1024;
/// The relay buffer doubles when a read fills it, up to this (bulk downloads).
pub const RELAY_BUF_MAX: usize = 64 * 1024;
/// Interim (1xx) responses relayed before the final one; more is a misbehaving upstream.
pub const MAX_INTERIM_RESPONSES: usize = 8;
/// Client reads during a request body.
pub const UPLOAD_READ: usize = 16 * 1024;

/// The client side of a connection: the socket and the bytes read but not yet used (the rest
/// of a head, body bytes, pipelined requests).
pub struct Client {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

/// How an exchange ended, for the log and the connection loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Status sent to the client (0 when nothing was sent).
    pub status: u16,
    /// Bytes written to the client (heads included).
    pub bytes: u64,
    /// The client connection may serve another request.
    pub client_reusable: bool,
    /// What went wrong, if anything.
    pub failure: Option<Problem>,
    /// The upstream answered 401 or 403 to our credential.
    pub credential_rejected: bool,
    /// Response bytes reached the client and the response is incomplete: the connection is
    /// reset rather than closed, so even a close-delimited body cannot look complete.
    pub cut: bool,
}

/// Why the upload stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadError {
    /// The client broke framing, stalled or left: the exchange is aborted.
    Client(Problem),
    /// The upstream stopped accepting the body; its response (if any) is still relayed.
    Upstream,
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

/// Forwards one request. `up_head` is the rewritten head. A pooled connection that fails
/// before any response byte is replaced once, only for a body-less idempotent request
/// (RFC 9112 §9.3.1: never a POST).
pub async fn forward(
    proxy: &Proxy,
    client: &mut Client,
    req: &Request,
    up_head: &[u8],
    close_after: bool,
    finder: &TokenFinder<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    let mut retried = false;
    loop {
        let (stream, reused) = match proxy.pool.take() {
            Some(s) => (s, true),
            None => match proxy.connector.connect().await {
                Ok(s) => (s, false),
                Err(p) => {
                    let reusable = !req.body.has_bytes() && !close_after;
                    return answer(proxy, client, req, p, reusable, out).await;
                }
            },
        };
        let retryable = reused && !retried && !req.body.has_bytes() && req.method.is_idempotent();
        match exchange(
            proxy,
            client,
            stream,
            req,
            up_head,
            close_after,
            retryable,
            finder,
            out,
        )
        .await
        {
            Exchange::Retry => retried = true,
            Exchange::Done(o) => return o,
        }
    }
}

/// Sends the proxy's own error answer (nothing of a response was sent yet).
pub async fn answer(
    proxy: &Proxy,
    client: &mut Client,
    req: &Request,
    p: Problem,
    reusable: bool,
    out: &mut Vec<u8>,
) -> Outcome {
    response::error(p, req.method == crate::head::Method::Head, !reusable, out);
    send_own(proxy, client, out, p.status(), reusable, Some(p)).await
}

/// Writes an answer of the proxy's own, already rendered in `out`, within the client write
/// timeout, and reports it. `reusable`: the answer left the connection's framing certain.
pub async fn send_own(
    proxy: &Proxy,
    client: &mut Client,
    out: &[u8],
    status: u16,
    reusable: bool,
    failure: Option<Problem>,
) -> Outcome {
    let sent = timeout(
        proxy.cfg.timeouts.client_write,
        client.stream.write_all(out),
    )
    .await;
    Outcome {
        status,
        bytes: out.len() as u64,
        client_reusable: reusable && matches!(sent, Ok(Ok(()))),
        failure,
        credential_rejected: false,
        cut: false,
    }
}

enum Exchange {
    /// A pooled connection was found dead before anything was received: try a fresh one.
    Retry,
    Done(Outcome),
}

/// What the download half reports.
struct Download {
    status: u16,
    bytes: u64,
    /// The response ended where its framing said; the upstream may be reused.
    upstream_reusable: bool,
    /// `Connection: close` was sent to the client.
    close_client: bool,
    failure: Option<Problem>,
    /// Any byte arrived from the upstream.
    received_any: bool,
    /// The client sees a close-delimited body (the upstream's was, or it was de-chunked for
    /// an HTTP/1.0 client): its end cannot be told from a truncation by a FIN.
    client_close_delimited: bool,
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    proxy: &Proxy,
    client: &mut Client,
    mut stream: Stream,
    req: &Request,
    up_head: &[u8],
    close_after: bool,
    retryable: bool,
    finder: &TokenFinder<'_>,
    out: &mut Vec<u8>,
) -> Exchange {
    let cfg = &proxy.cfg;
    let l = &cfg.limits;
    let t = &cfg.timeouts;
    let mut upload = RequestBody::new(
        req.body,
        l.max_body_bytes,
        l.max_chunk_ext,
        l.max_trailer_bytes,
    );
    let fail = |p: Problem, o: &mut Outcome| {
        o.failure = Some(p);
        o.client_reusable = false;
    };
    let mut outcome = Outcome::default();

    // R26: answer 100-continue ourselves, once the upstream is reachable, if the client waits.
    if req.expect_continue && client.buf.is_empty() {
        if let Err(p) = within(
            t.client_write,
            Problem::ClientWriteStalled,
            Problem::ClientWriteStalled,
            client.stream.write_all(response::CONTINUE),
        )
        .await
        {
            fail(p, &mut outcome);
            return Exchange::Done(outcome);
        }
    }

    // The head and whatever body bytes already arrived go out in one write.
    // The head holds our credential: the buffer is wiped when dropped, and sized up front so
    // no reallocation leaves a copy behind (re-chunking adds at most 4 bytes per input byte).
    let mut scratch = Zeroizing::new(Vec::with_capacity(
        up_head.len() + client.buf.len() * 4 + 64,
    ));
    scratch.extend_from_slice(up_head);
    match upload.frame(&client.buf, &mut scratch) {
        Ok(Framed::Raw(n)) => {
            scratch.extend_from_slice(&client.buf[..n]);
            client.buf.advance(n);
        }
        Ok(Framed::Encoded(n)) => client.buf.advance(n),
        Err(p) => {
            // Nothing was written upstream yet: the request never reaches it.
            return Exchange::Done(answer(proxy, client, req, p, false, out).await);
        }
    }
    let wrote = within(
        t.upstream_idle,
        Problem::UpstreamIdleTimeout,
        Problem::UpstreamClosed,
        async {
            stream.write_all(&scratch).await?;
            stream.flush().await
        },
    )
    .await;
    // Wipe the credential now: the buffer is reused (and may be reallocated) for the body.
    zeroize::Zeroize::zeroize(&mut *scratch);
    if upload.is_done() {
        // Nothing more goes up: give the buffers back before a possibly long stream, so an
        // idle SSE stream holds only its relay buffer.
        *scratch = Vec::new();
        if client.buf.is_empty() {
            client.buf = BytesMut::new();
        }
    }
    if let Err(p) = wrote {
        if retryable {
            return Exchange::Retry;
        }
        return Exchange::Done(answer(proxy, client, req, p, false, out).await);
    }

    let upload_done = AtomicBool::new(upload.is_done());
    let started = AtomicBool::new(false);
    let ctx = ResponseContext {
        request_was_head: req.method == crate::head::Method::Head,
        close_client: close_after,
        dechunk: req.version == Version::Http10,
        finder,
    };

    let (up_result, down, stream) = if upload.is_done() {
        // The whole request went out with the head (the usual agent POST): relay the response
        // on the stream itself, without splitting it.
        let d = relay_response(
            proxy,
            &mut stream,
            &mut client.stream,
            ctx,
            req.version,
            &upload_done,
            &started,
            out,
        )
        .await;
        (Some(Ok(())), Ok(d), stream)
    } else {
        let (mut ur, mut uw) = tokio::io::split(stream);
        let (mut cr, mut cw) = client.stream.split();
        let (up_result, down) = {
            let up = send_body(
                &mut cr,
                &mut client.buf,
                &mut uw,
                &mut upload,
                &mut scratch,
                t.client_idle,
                t.upstream_idle,
                &upload_done,
            );
            let down = relay_response(
                proxy,
                &mut ur,
                &mut cw,
                ctx,
                req.version,
                &upload_done,
                &started,
                out,
            );
            tokio::pin!(up, down);
            let mut up_result: Option<Result<(), UploadError>> = None;
            // Cancel safety: both futures are polled by reference and live until this block
            // ends. `down` is dropped unfinished only after an upload failure, and then its
            // partial progress is judged through `started` (whether any byte reached the client).
            let down = loop {
                tokio::select! {
                    r = &mut up, if up_result.is_none() => match r {
                        Err(UploadError::Client(p)) => break Err(p),
                        other => up_result = Some(other),
                    },
                    d = &mut down => break Ok(d),
                }
            };
            (up_result, down)
        };
        (up_result, down, ur.unsplit(uw))
    };

    let down = match down {
        Ok(d) => d,
        Err(p) => {
            // The client broke its body. The upstream saw a partial request and is dropped
            // without a terminating chunk, so it never sees a complete one.
            if started.load(Relaxed) {
                fail(p, &mut outcome);
                return Exchange::Done(outcome);
            }
            return Exchange::Done(answer(proxy, client, req, p, false, out).await);
        }
    };
    let body_sent = matches!(up_result, Some(Ok(())));
    outcome.status = down.status;
    outcome.bytes = down.bytes;
    outcome.credential_rejected = matches!(down.status, 401 | 403);
    if let Some(p) = down.failure {
        if !started.load(Relaxed) {
            if retryable && !down.received_any && p == Problem::UpstreamClosed {
                return Exchange::Retry;
            }
            return Exchange::Done(
                answer(proxy, client, req, p, body_sent && !close_after, out).await,
            );
        }
        fail(p, &mut outcome);
        // A Content-Length or chunked body cut short is visibly incomplete after a FIN; a
        // close-delimited one is not, so that connection is reset instead (R29).
        outcome.cut = down.client_close_delimited;
        return Exchange::Done(outcome);
    }
    if down.upstream_reusable && body_sent {
        proxy.pool.put(stream);
    }
    outcome.client_reusable = body_sent && !down.close_client;
    Exchange::Done(outcome)
}

/// Streams the rest of the request body from the client to the upstream.
#[allow(clippy::too_many_arguments)]
async fn send_body(
    cr: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    uw: &mut WriteHalf<Stream>,
    upload: &mut RequestBody,
    scratch: &mut Vec<u8>,
    client_idle: Duration,
    upstream_idle: Duration,
    done: &AtomicBool,
) -> Result<(), UploadError> {
    while !upload.is_done() {
        if buf.is_empty() {
            buf.reserve(UPLOAD_READ);
            let n = within(
                client_idle,
                Problem::BodyTimeout,
                Problem::ClientAborted,
                cr.read_buf(buf),
            )
            .await
            .map_err(UploadError::Client)?;
            if n == 0 {
                // R10: a body shorter than declared is incomplete; the upstream is dropped.
                return Err(UploadError::Client(Problem::ClientAborted));
            }
        }
        scratch.clear();
        let (bytes, consumed): (&[u8], usize) =
            match upload.frame(buf, scratch).map_err(UploadError::Client)? {
                Framed::Raw(n) => (&buf[..n], n),
                Framed::Encoded(n) => (&scratch[..], n),
            };
        if !bytes.is_empty() {
            let sent = timeout(upstream_idle, uw.write_all(bytes)).await;
            if !matches!(sent, Ok(Ok(()))) {
                return Err(UploadError::Upstream);
            }
        }
        buf.advance(consumed);
    }
    if !matches!(timeout(upstream_idle, uw.flush()).await, Ok(Ok(()))) {
        return Err(UploadError::Upstream);
    }
    done.store(true, Relaxed);
    Ok(())
}

/// Reads the response head (relaying interim 1xx), then streams the body to the client.
#[allow(clippy::too_many_arguments)]
async fn relay_response(
    proxy: &Proxy,
    ur: &mut (impl AsyncRead + Unpin),
    cw: &mut (impl AsyncWrite + Unpin),
    mut ctx: ResponseContext<'_>,
    version: Version,
    upload_done: &AtomicBool,
    started: &AtomicBool,
    out: &mut Vec<u8>,
) -> Download {
    let t = &proxy.cfg.timeouts;
    let mut d = Download {
        status: 0,
        bytes: 0,
        upstream_reusable: false,
        close_client: true,
        failure: None,
        received_any: false,
        client_close_delimited: false,
    };
    let mut rbuf = vec![0u8; RELAY_BUF_START];
    let mut filled = 0;
    let mut scanner = HeadScanner::new();
    // One deadline for the final head, however it trickles in and whatever 1xx precede it.
    let head_deadline = tokio::time::Instant::now() + t.response;
    let mut interim = 0;

    // The head, after any interim responses (RFC 9110 §15.2).
    let (head, head_len) = loop {
        let head_end = loop {
            match scanner.scan(&rbuf[..filled], &RESPONSE_SCAN) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(p) => return d.failed(p),
            }
            if filled == rbuf.len() {
                rbuf.resize((rbuf.len() * 2).min(response::MAX_RESPONSE_HEAD + 4), 0);
            }
            match within(
                head_deadline.saturating_duration_since(tokio::time::Instant::now()),
                Problem::UpstreamResponseTimeout,
                Problem::UpstreamClosed,
                ur.read(&mut rbuf[filled..]),
            )
            .await
            {
                Ok(0) => return d.failed(Problem::UpstreamClosed),
                Ok(n) => {
                    filled += n;
                    d.received_any = true;
                }
                Err(p) => return d.failed(p),
            }
        };
        // The client connection closes if its body is not fully consumed by now.
        ctx.close_client |= !upload_done.load(Relaxed);
        let head = match response::parse_response(&rbuf[..head_end], &ctx, out) {
            Ok(h) => h,
            Err(p) => return d.failed(p),
        };
        if !head.interim {
            break (head, head_end);
        }
        interim += 1;
        if interim > MAX_INTERIM_RESPONSES {
            return d.failed(Problem::UpstreamMalformed);
        }
        // R27: relay 1xx (103 Early Hints...) to HTTP/1.1 clients; drop 100, which answers an
        // expectation we never forwarded.
        if head.status != 100 && version == Version::Http11 {
            started.store(true, Relaxed);
            if let Err(p) = write_client(cw, out, t.client_write).await {
                return d.failed(p);
            }
            d.bytes += out.len() as u64;
        }
        rbuf.copy_within(head_end..filled, 0);
        filled -= head_end;
        scanner.reset();
    };
    d.status = head.status;
    d.close_client = head.close_client;
    d.client_close_delimited = head.body == response::ResponseBody::UntilClose
        || (ctx.dechunk && head.body == response::ResponseBody::Chunked);

    // The body: head and the first body bytes leave in one write.
    let mut tracker = BodyTracker::new(head.body, ctx.dechunk, ctx.finder);
    rbuf.copy_within(head_len..filled, 0);
    filled -= head_len;
    let mut old = 0;
    let mut first = true;
    loop {
        let adv: Advance = match tracker.advance(&mut rbuf[..filled], old) {
            Ok(a) => a,
            Err(p) => {
                // Before the first write this is still a clean 502; after, a cut.
                return d.failed(p);
            }
        };
        if first {
            out.extend_from_slice(&rbuf[..adv.ready]);
            started.store(true, Relaxed);
            if let Err(p) = write_client(cw, out, t.client_write).await {
                return d.failed(p);
            }
            d.bytes += out.len() as u64;
            first = false;
        } else if adv.ready > 0 {
            if let Err(p) = write_client(cw, &rbuf[..adv.ready], t.client_write).await {
                return d.failed(p);
            }
            d.bytes += adv.ready as u64;
        }
        if adv.done {
            // R30: bytes beyond the message mean the upstream cannot be trusted for the next.
            // Nor is a connection pooled after a response that ends at its head (HEAD, 204,
            // 304): that is where an upstream that disagrees about a body would send one.
            d.upstream_reusable = head.upstream_keep_alive
                && !adv.excess
                && head.body != response::ResponseBody::None;
            return d;
        }
        rbuf.copy_within(adv.ready..adv.keep, 0);
        tracker.shifted(adv.ready);
        filled = adv.keep - adv.ready;
        if filled == rbuf.len() {
            if rbuf.len() >= RELAY_BUF_MAX {
                // Held bytes filled the whole buffer: only an upstream that interleaves a token
                // prefix with 64 KiB of chunk framing gets here. Stop holding and send them, so
                // the next read has room (an empty read would look like the upstream's EOF).
                tracker.release();
                if let Err(p) = write_client(cw, &rbuf[..filled], t.client_write).await {
                    return d.failed(p);
                }
                d.bytes += filled as u64;
                filled = 0;
            } else {
                rbuf.resize(rbuf.len() * 2, 0);
            }
        }
        old = filled;
        let n = match within(
            t.upstream_idle,
            Problem::UpstreamIdleTimeout,
            Problem::UpstreamClosed,
            ur.read(&mut rbuf[filled..]),
        )
        .await
        {
            Ok(n) => n,
            // R29: a TLS close without close_notify is a truncation, even for a
            // close-delimited body; tokio-rustls reports it as an error.
            Err(p) => return d.failed(p),
        };
        if n == 0 {
            if tracker.finish_at_close() {
                // The close-delimited body ended; send what was held and close the client.
                if filled > 0 {
                    if let Err(p) = write_client(cw, &rbuf[..filled], t.client_write).await {
                        return d.failed(p);
                    }
                    d.bytes += filled as u64;
                }
                return d;
            }
            return d.failed(Problem::UpstreamClosed);
        }
        if n == rbuf.len() - filled && rbuf.len() < RELAY_BUF_MAX {
            // The read filled the buffer: a bulk body; grow for fewer, larger writes.
            rbuf.resize(rbuf.len() * 2, 0);
        }
        filled += n;
    }
}

impl Download {
    fn failed(mut self, p: Problem) -> Download {
        self.failure = Some(p);
        self.upstream_reusable = false;
        self
    }
}

async fn write_client(
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
