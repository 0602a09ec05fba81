//! The download half: the response head (after any interim 1xx) and body, from the upstream
//! to the client, each read written at once; and what it reports to the exchange.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use super::io::{read_available, within, write_client};
use super::Progress;
use std::sync::Arc;

use crate::credential::{Credentials, Generation};
use crate::error::Problem;
use crate::handshake::{self, Answer, Protocols, ACCEPT_LEN};
use crate::head::Version;
use crate::limits::{self, Timeouts};
use crate::refetch::Refetch;
use crate::relaybuf::RelayBuf;
use crate::response::{self, ResponseBody, ResponseContext, ResponseHead};
use crate::scan::{HeadScanner, ScanLimits};
use crate::scrub::Mask;
use crate::tracker::BodyTracker;
use crate::upstream::ReadReady;
use crate::usage::{Observer, Usage};

/// What the download half reports.
pub(super) struct DownReport {
    /// The final response head as parsed, once it arrived: its status, its body's framing,
    /// what it allows the upstream connection and announced to the client, its request id.
    pub(super) head: Option<ResponseHead>,
    pub(super) bytes: u64,
    /// The body ended exactly where its framing said (see [`crate::persist::Relayed::ended_exactly`]).
    pub(super) ended_exactly: bool,
    /// The final head arrived before the request body was sent whole.
    pub(super) answered_early: bool,
    /// When the final head arrived, after the download began.
    pub(super) head_after: Option<Duration>,
    /// Token occurrences masked, head and body.
    pub(super) masked: u64,
    pub(super) failure: Option<Problem>,
    /// Any byte arrived from the upstream.
    pub(super) received_any: bool,
    /// A WebSocket handshake was answered with a good 101: the bytes after it, and the
    /// subprotocol it chose. Nothing was written to the client.
    pub(super) switched: Option<(Vec<u8>, Option<Vec<u8>>)>,
    /// The token usage read from the body, if it was observed.
    pub(super) usage: Option<Usage>,
}

/// The tokens a response masks, kept in step with the credential store's mask set: looked at
/// again whenever its epoch moved, before each head is parsed and each read is scanned.
struct LiveMasks<'a> {
    creds: &'a Credentials,
    /// The epoch `tokens` belongs to.
    seen: u64,
    tokens: Vec<Mask>,
}

impl<'a> LiveMasks<'a> {
    fn new(creds: &'a Credentials) -> LiveMasks<'a> {
        let mut tokens = Vec::new();
        let seen = creds.masks(&mut tokens);
        LiveMasks {
            creds,
            seen,
            tokens,
        }
    }

    /// Takes the store's set if it changed since; returns whether it did. One atomic load
    /// when it did not.
    fn refresh(&mut self) -> bool {
        if self.creds.epoch() == self.seen {
            return false;
        }
        self.seen = self.creds.masks(&mut self.tokens);
        true
    }
}

/// What a 401 to this request does before its head is relayed: mark its generation
/// rejected (readiness), and ask the token source for a new token and wait for it (see
/// [`Refetch`]) when the source can be re-read.
#[derive(Clone, Copy)]
pub(super) struct OnRejection<'a> {
    pub refetch: Option<&'a Refetch>,
    pub generation: &'a Arc<Generation>,
}

/// The response's way down: reads the upstream, writes the client.
pub(super) struct Download<'a, R, W> {
    /// The upstream's read half, or the whole stream when the request body is all sent.
    upstream: &'a mut R,
    /// The client's write half, or its whole socket.
    client: &'a mut W,
    t: &'a Timeouts,
    progress: &'a Progress,
    /// The relay buffer; `buf[..filled]` holds bytes read and not yet sent.
    buf: Vec<u8>,
    filled: usize,
    pub(super) report: DownReport,
    /// When the download began (the request head was just sent).
    began: Instant,
    /// An end or error met after bytes that [`read_available`] returned; the next read's.
    stashed: Option<io::Result<usize>>,
    /// The tokens masked in the head and the body.
    masks: LiveMasks<'a>,
    /// Set by the exchange: the generation the request carries, and the re-fetch.
    pub(super) on_401: Option<OnRejection<'a>>,
    /// Set by the exchange for a WebSocket handshake: the `Sec-WebSocket-Accept` a 101
    /// must carry to open the tunnel, and the subprotocols the client offered.
    pub(super) upgrade: Option<([u8; ACCEPT_LEN], &'a Protocols)>,
    /// Set by the exchange: the body's token usage is read as it passes.
    pub(super) observe: bool,
}

impl<'a, R: AsyncRead + ReadReady + Unpin, W: AsyncWrite + Unpin> Download<'a, R, W> {
    pub(super) fn new(
        upstream: &'a mut R,
        client: &'a mut W,
        t: &'a Timeouts,
        progress: &'a Progress,
        creds: &'a Credentials,
    ) -> Self {
        Download {
            masks: LiveMasks::new(creds),
            on_401: None,
            upgrade: None,
            observe: false,
            upstream,
            client,
            t,
            progress,
            buf: vec![0u8; limits::RELAY_BUF_START],
            filled: 0,
            began: Instant::now(),
            stashed: None,
            report: DownReport {
                head: None,
                bytes: 0,
                ended_exactly: false,
                answered_early: false,
                head_after: None,
                masked: 0,
                failure: None,
                received_any: false,
                switched: None,
                usage: None,
            },
        }
    }

    /// Reads the response head (relaying interim 1xx), then streams the body to the client.
    pub(super) async fn run(
        &mut self,
        mut ctx: ResponseContext,
        version: Version,
        out: &mut Vec<u8>,
    ) {
        let relayed = match self.final_head(&mut ctx, version, out).await {
            Ok(_) if self.report.switched.is_some() => Ok(()),
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
        ctx: &mut ResponseContext,
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
            if let Some((accept, offered)) = self.upgrade {
                self.masks.refresh();
                let (head, masks) = (&self.buf[..head_end], &self.masks.tokens);
                let answer = handshake::upstream_answer(head, &accept, offered, masks)?;
                if let Answer::Switched { protocol } = answer {
                    let early = self.buf[head_end..self.filled].to_vec();
                    self.report.switched = Some((early, protocol));
                    self.report.head_after = Some(self.began.elapsed());
                    return Ok((ResponseBody::None, head_end));
                }
            }
            self.masks.refresh();
            let tokens = &self.masks.tokens;
            let head = response::parse_response(&self.buf[..head_end], ctx, tokens, out)?;
            if head.status == 401 {
                self.after_rejection(out).await;
            } else if (200..300).contains(&head.status) {
                if let Some(on) = self.on_401 {
                    self.masks.creds.mark_accepted(on.generation.number);
                }
            }
            if !head.interim {
                self.report.head_after = Some(self.began.elapsed());
                self.report.answered_early = early;
                self.report.masked += head.masked;
                self.report.head = Some(head);
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

    /// A 401 (RFC 9110 §15.5.2; a 403 may be about the request, not the token): the
    /// generation is marked rejected, and, when the token can be replaced, before the head is
    /// relayed the source is asked for a new token (bounded by `REFETCH_WAIT`); when one
    /// came, the head tells the client to retry.
    async fn after_rejection(&mut self, out: &mut Vec<u8>) {
        let Some(on) = self.on_401 else {
            return;
        };
        // Before the client can see the 401: a readiness probe after it sees it not ready.
        self.masks.creds.mark_rejected(on.generation.number);
        let Some(refetch) = on.refetch else {
            return;
        };
        if refetch
            .after_rejection(self.masks.creds, on.generation)
            .await
        {
            response::mark_should_retry(out);
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
                self.upstream.read(&mut self.buf[self.filled..]),
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
        ctx: &ResponseContext,
        out: &mut Vec<u8>,
    ) -> Result<(), Problem> {
        let mut tracker = BodyTracker::new(body, ctx.dechunk, &self.masks.tokens);
        let kind = self.report.head.map(|h| h.kind);
        if let Some(o) = kind.filter(|_| self.observe).and_then(Observer::new) {
            tracker.observe(o);
        }
        let buf = std::mem::take(&mut self.buf);
        let mut relay = RelayBuf::new(tracker, buf, head_len, self.filled);
        let relayed = self.relay_body(&mut relay, body, out).await;
        self.report.masked += relay.masked();
        self.report.usage = relay.usage().map(|u| self.unmasked(u));
        relayed
    }

    /// `u` without its model if the name holds a token a response masks: the upstream
    /// reflected it there, and it must not reach the log or a label.
    fn unmasked(&mut self, mut u: Usage) -> Usage {
        self.masks.refresh();
        let model = u.model().unwrap_or("").as_bytes();
        let tokens = &self.masks.tokens;
        if tokens.iter().any(|t| t.finder().find(model).is_some()) {
            u.forget_model();
        }
        u
    }

    /// The body loop over `relay`; the first write carries the head in `out`.
    async fn relay_body(
        &mut self,
        relay: &mut RelayBuf,
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
                read_available(self.upstream, relay.spare(), &mut self.stashed),
            )
            .await?;
            if n == 0 {
                let last = relay.closed()?;
                return self.write(relay.front(last)).await;
            }
            relay.filled(n);
            // Bytes an upstream reflects a token in can only be read after the token joined
            // the mask set: looking after the read finds it (see `credential`).
            if self.masks.refresh() {
                relay.mask(&self.masks.tokens);
            }
        }
    }

    /// Waits until the upstream has bytes for us (within the idle timeout; a readiness that
    /// turns out stale gives the read its own, so a silent upstream is cut after at most two). A plain upstream that has none yet (an SSE
    /// stream between events) is waited on without the relay buffer, so a held stream costs
    /// no buffer; one that has them, or a TLS one, goes straight on to the read.
    async fn wait_readable(&mut self, relay: &mut RelayBuf) -> Result<(), Problem> {
        let upstream = &mut *self.upstream;
        let ready = std::future::poll_fn(|cx| {
            let polled = upstream.poll_read_ready(cx);
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
            write_client(self.client, bytes, self.t.client_write).await?;
            self.report.bytes += bytes.len() as u64;
        }
        Ok(())
    }
}
