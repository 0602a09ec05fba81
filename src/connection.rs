//! The client connection: its socket and buffer, the loop that serves its requests in order
//! (pipelined requests are answered serially, R32), reading each head within its deadline,
//! the proxy's own answers, the log line, and how the connection ends: a lingering close, or
//! a reset when a close-delimited response was cut.
//!
//! Shutdown is checked only between requests, so an exchange in flight is never cut by the
//! drain itself; the grace period in `main` bounds it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant as TokioInstant};
use zeroize::Zeroizing;

use crate::answer;
use crate::ceiling;
use crate::credential::Generation;
use crate::error::Problem;
use crate::exchange::{self, Client, Exchange, Forwarded, Outcome};
use crate::head::{self, Method, Request, Route};
use crate::limits::{self, Timeouts};
use crate::listen::Stream;
use crate::log::Peer;
use crate::persist::{self, ClientFate, ClientTerms, End};
use crate::scan::{HeadScanner, ScanLimits};
use crate::state::Proxy;
use crate::tunnel;

mod record;

use record::{record, refused_line, set_log_path, Logged};

/// Serves one client connection, then ends it as the last exchange decided.
pub async fn serve(proxy: &Proxy, stream: Stream, peer: Peer, shutdown: watch::Receiver<bool>) {
    stream.set_nodelay();
    proxy.metrics.client_connections.fetch_add(1, Relaxed);
    let mut client = Client {
        stream,
        buf: BytesMut::new(),
    };
    match serve_requests(proxy, &mut client, peer, shutdown).await {
        ClientFate::Reset => reset(&client.stream),
        ClientFate::Close | ClientFate::Keep => linger_close(&mut client.stream).await,
    }
    proxy.metrics.client_connections.fetch_sub(1, Relaxed);
}

/// Serves requests until the connection closes, breaks a rule, or the proxy drains.
async fn serve_requests(
    proxy: &Proxy,
    client: &mut Client,
    peer: Peer,
    shutdown: watch::Receiver<bool>,
) -> ClientFate {
    let mut session = Session {
        peer,
        scanner: HeadScanner::new(),
        scan_limits: ScanLimits::request(&proxy.cfg.limits),
        up_head: Zeroizing::new(Vec::new()),
        out: Vec::new(),
        log_path: String::new(),
        began: None,
        served: 0,
        shutdown,
        idle_since: TokioInstant::now(),
    };
    let mut rotations = proxy.creds.changed();
    // A head read while the token changed, to serve with the new one.
    let mut pending = None;
    loop {
        // The current token, kept for the requests that follow until a newer one arrives.
        rotations.borrow_and_update();
        let current = proxy.creds.current();
        loop {
            let head_len = match pending.take() {
                Some(n) => n,
                None => match session.read_head(proxy, client, &mut rotations).await {
                    Ok(Head::Ready(n)) => n,
                    Ok(Head::Closed) => return ClientFate::Close,
                    // Idle: let go of the old token now, not at the next request.
                    Ok(Head::Rotated) => break,
                    Err(p) => {
                        let seq = proxy.log.next_seq();
                        let started = session.began.take().unwrap_or_else(Instant::now);
                        let method = refused_line(&client.buf, &mut session.log_path);
                        let path = &session.log_path;
                        let about = Logged::refused(
                            &method,
                            path,
                            started,
                            current.number,
                            seq,
                            session.peer,
                        );
                        return client.reject(proxy, p, &mut session.out, about).await;
                    }
                },
            };
            if !proxy.creds.is_current(&current) {
                pending = Some(head_len);
                break;
            }
            let fate = session.serve(proxy, client, head_len, &current).await;
            if fate != ClientFate::Keep {
                return fate;
            }
        }
    }
}

/// What a head read found.
enum Head {
    /// A complete head of this length is buffered.
    Ready(usize),
    /// The connection should close quietly (peer closed, keep-alive idle, shutdown).
    Closed,
    /// The token changed while the connection was idle.
    Rotated,
}

/// The per-connection state that outlives one request.
struct Session {
    /// Who is connected, for the access lines.
    peer: Peer,
    scanner: HeadScanner,
    scan_limits: ScanLimits,
    /// Holds our credential once rewritten: wiped after each exchange and when the
    /// connection ends.
    up_head: Zeroizing<Vec<u8>>,
    /// The proxy's own answers and response heads are rendered here.
    out: Vec<u8>,
    log_path: String,
    /// When the first byte of the head being read arrived: a request refused before its head
    /// was parsed is timed from here.
    began: Option<Instant>,
    served: u32,
    shutdown: watch::Receiver<bool>,
    /// When the connection was accepted, then when its last exchange ended: the first head's
    /// deadline and the keep-alive idle deadline run from here, however often a token
    /// rotation wakes the idle read.
    idle_since: TokioInstant,
}

impl Session {
    async fn read_head(
        &mut self,
        proxy: &Proxy,
        client: &mut Client,
        rotations: &mut watch::Receiver<u64>,
    ) -> Result<Head, Problem> {
        let t = &proxy.cfg.timeouts;
        let wait = Wait {
            began: &mut self.began,
            first: self.served == 0,
            idle_since: self.idle_since,
            shutdown: &self.shutdown,
            rotations,
        };
        client
            .read_head(&mut self.scanner, &self.scan_limits, t, wait)
            .await
    }

    /// Serves the request whose head is `client.buf[..head_len]` with generation `g` of the
    /// token; returns what happens to the connection.
    async fn serve(
        &mut self,
        proxy: &Proxy,
        client: &mut Client,
        head_len: usize,
        g: &Arc<Generation>,
    ) -> ClientFate {
        let cfg = &proxy.cfg;
        let started = Instant::now();
        let began = self.began.take().unwrap_or(started);
        let seq = proxy.log.next_seq();
        self.served += 1;
        let head = &client.buf[..head_len];
        let rw = proxy.rewrite(g);
        let req = match head::parse_request(head, &cfg.limits, &rw, &mut self.up_head) {
            Ok(r) => r,
            Err(p) => {
                let method = refused_line(head, &mut self.log_path);
                let about =
                    Logged::refused(&method, &self.log_path, began, g.number, seq, self.peer);
                return client.reject(proxy, p, &mut self.out, about).await;
            }
        };
        set_log_path(&mut self.log_path, &client.buf[req.path.clone()]);
        let mut headers = Vec::new();
        proxy.attribution(&client.buf[..head_len], &mut headers);
        let spends_tokens = ceiling::counts_tokens(&client.buf[req.path.clone()]);
        client.buf.advance(head_len);
        self.scanner.reset();

        // R34/R35 and the per-connection request limit: what the client's side allows.
        let more = self.served < cfg.limits.max_requests_per_connection;
        let terms = ClientTerms {
            keep_alive: req.keep_alive,
            more_allowed: more && !*self.shutdown.borrow(),
        };
        let out = &mut self.out;
        // Nothing reaches the upstream for a refused request; its unread body makes the
        // connection unusable.
        let refused = End::Answered { in_sync: false };
        let outcome = match (&req.route, req.authorized, req.allowed) {
            (Route::Health, _, _) => client.health(proxy, &req, out).await,
            (_, false, _) => {
                let p = Problem::Unauthorized;
                client.answer(proxy, &req, p, refused, terms, out).await
            }
            (_, true, false) => {
                let p = Problem::NotAllowed;
                client.answer(proxy, &req, p, refused, terms, out).await
            }
            // Past its expiry, or the stale grace of a failing source: nothing is forwarded.
            (_, true, true) if !proxy.creds.usable() => {
                let p = Problem::CredentialUnavailable;
                client.answer(proxy, &req, p, refused, terms, out).await
            }
            // The ceilings last: a request refused for any reason above counts toward none.
            (_, true, true) => {
                self.forward(proxy, client, &req, terms, g, spends_tokens)
                    .await
            }
        };
        let about = Logged {
            method: req.method.as_str(),
            path: &self.log_path,
            started,
            generation: g.number,
            seq,
            health: req.route == Route::Health,
            peer: self.peer,
            headers: &headers,
        };
        record(proxy, &about, &outcome);
        self.idle_since = TokioInstant::now();
        outcome.client
    }

    /// Forwards a request that passed every other check, if the ceilings admit it; their
    /// permit is held until the exchange, stream included, has ended.
    async fn forward(
        &mut self,
        proxy: &Proxy,
        client: &mut Client,
        req: &Request,
        terms: ClientTerms,
        g: &Arc<Generation>,
        spends_tokens: bool,
    ) -> Outcome {
        // A `count_tokens` request's tokens are an estimate, never spent: never read, never counted.
        let observe = proxy.cfg.usage_observe && spends_tokens;
        let permit = match proxy.ceilings.check(Instant::now(), spends_tokens) {
            Ok(permit) => permit,
            Err(refusal) => {
                // As every refusal: nothing forwarded, the unread body ends the connection.
                let refused = End::Answered { in_sync: false };
                let (p, out) = (refusal.problem(), &mut self.out);
                return client.answer(proxy, req, p, refused, terms, out).await;
            }
        };
        // In the mask set of every response from now on, before the credential goes
        // upstream; the response (or tunnel) masks the set as it grows (see `credential`).
        let using = proxy.creds.start_use(g);
        let x = Exchange {
            proxy,
            req,
            up_head: &self.up_head,
            terms,
            generation: g,
            observe,
        };
        let fwd = exchange::forward(&x, client, &mut self.out).await;
        let o = if let Forwarded::Switched(_) = fwd {
            // The 101 arrived, so the head went up and is never sent again (a handshake is
            // never retried): wipe the credential before the tunnel, which may live for hours.
            let (up_head, generation) = (&[][..], g);
            let x = Exchange {
                proxy,
                req,
                up_head,
                terms,
                generation,
                observe,
            };
            zeroize::Zeroize::zeroize(&mut *self.up_head);
            client
                .conclude(&x, fwd, &mut self.out, &self.shutdown)
                .await
        } else {
            client
                .conclude(&x, fwd, &mut self.out, &self.shutdown)
                .await
        };
        // The credential is not needed until the next request: wipe it now.
        zeroize::Zeroize::zeroize(&mut *self.up_head);
        drop(using);
        // The concurrency slot is held until here: the response has ended.
        drop(permit);
        o
    }
}

/// What a head read waits on besides the client's bytes.
struct Wait<'a> {
    /// Set when the first byte of a head arrives.
    began: &'a mut Option<Instant>,
    /// No request was served yet: the head deadline runs from `idle_since` (accept).
    first: bool,
    /// Accept, or the end of the last exchange: fixed while the connection waits, so a wake-up
    /// (a token rotation) never restarts a deadline.
    idle_since: TokioInstant,
    shutdown: &'a watch::Receiver<bool>,
    rotations: &'a mut watch::Receiver<u64>,
}

impl Client {
    /// Ends a forwarded request: runs the tunnel a handshake opened; answers the request
    /// ourselves if nothing of a response reached us.
    async fn conclude(
        &mut self,
        x: &Exchange<'_>,
        fwd: Forwarded,
        out: &mut Vec<u8>,
        shutdown: &watch::Receiver<bool>,
    ) -> Outcome {
        match fwd {
            Forwarded::Relayed(o) => o,
            Forwarded::Switched(sw) => match &x.req.route {
                Route::WebSocket { accept, .. } => {
                    tunnel::run(x, self, sw, accept, shutdown, out).await
                }
                // Only a handshake's exchange switches.
                _ => Outcome::answered(0, 0, None, ClientFate::Close),
            },
            Forwarded::Answer { problem, in_sync } => {
                let end = End::Answered { in_sync };
                self.answer(x.proxy, x.req, problem, end, x.terms, out)
                    .await
            }
        }
    }

    /// Reads until a complete head is buffered, within the head deadline. While no byte of a
    /// request has arrived, shutdown closes the connection and a token change wakes it.
    async fn read_head(
        &mut self,
        scanner: &mut HeadScanner,
        limits: &ScanLimits,
        t: &Timeouts,
        wait: Wait<'_>,
    ) -> Result<Head, Problem> {
        let mut shutdown = wait.shutdown.clone();
        let rotations = wait.rotations;
        let began = wait.began;
        // The first request's head deadline runs from accept; later ones from their first
        // byte, after a keep-alive idle wait that runs from the end of the last exchange.
        let mut deadline = wait.first.then(|| wait.idle_since + t.header);
        let idle_until = wait.idle_since + t.keepalive;
        loop {
            if let Some(n) = scanner.scan(&self.buf, limits)? {
                return Ok(Head::Ready(n));
            }
            if !self.buf.is_empty() && began.is_none() {
                *began = Some(Instant::now());
            }
            if !self.buf.is_empty() && deadline.is_none() {
                deadline = Some(TokioInstant::now() + t.header);
            }
            let idle = self.buf.is_empty();
            let until = deadline.unwrap_or(idle_until);
            if idle {
                // An idle connection waits for its next request without a buffer: it gives
                // its buffer back if the request is not here yet.
                let (stream, buf) = (&self.stream, &mut self.buf);
                let readable = std::future::poll_fn(|cx| {
                    let polled = stream.poll_read_ready(cx);
                    if polled.is_pending() && buf.capacity() > 0 {
                        *buf = BytesMut::new();
                    }
                    polled
                });
                let ready = tokio::select! {
                    r = timeout_at(until, readable) => r,
                    _ = shutdown.changed() => return Ok(Head::Closed),
                    _ = rotations.changed() => return Ok(Head::Rotated),
                };
                match ready {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return Ok(Head::Closed),
                }
            }
            self.buf.reserve(limits::HEAD_READ);
            // Cancel safety: read_buf and both `changed` are cancel-safe (no bytes are lost
            // if another arm wins); shutdown and rotation only apply while no request began.
            let read = tokio::select! {
                r = timeout_at(until, self.stream.read_buf(&mut self.buf)) => r,
                _ = shutdown.changed(), if idle => return Ok(Head::Closed),
                _ = rotations.changed(), if idle => return Ok(Head::Rotated),
            };
            match read {
                Ok(Ok(0)) if self.buf.is_empty() => return Ok(Head::Closed),
                Ok(Ok(0)) => return Err(Problem::ClientAborted),
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Ok(Head::Closed),
                // An idle connection (never used, or between requests) closes quietly.
                Err(_) if idle => return Ok(Head::Closed),
                Err(_) => return Err(Problem::HeadTimeout),
            }
            if *shutdown.borrow() && self.buf.is_empty() {
                return Ok(Head::Closed);
            }
        }
    }

    /// The proxy's own answer to a request it refused before routing (its head could not be
    /// read or parsed), counted and logged like any other; then it closes. A client that
    /// closed mid-head gets no answer, but its line still says what it would have been.
    async fn reject(
        &mut self,
        proxy: &Proxy,
        p: Problem,
        out: &mut Vec<u8>,
        about: Logged<'_>,
    ) -> ClientFate {
        let outcome = if p == Problem::ClientAborted {
            Outcome::answered(p.status(), 0, Some(p), ClientFate::Close)
        } else {
            let terms = ClientTerms::CLOSING;
            let fate = persist::settle(End::Answered { in_sync: false }, terms).client;
            answer::error(p, false, fate != ClientFate::Keep, out);
            self.send_own(proxy, out, p.status(), fate, Some(p)).await
        };
        record(proxy, &about, &outcome);
        outcome.client
    }

    async fn health(&mut self, proxy: &Proxy, req: &Request, out: &mut Vec<u8>) -> Outcome {
        let fate = persist::settle(End::Health, ClientTerms::CLOSING).client;
        answer::health(req.method == Method::Head, fate != ClientFate::Keep, out);
        self.send_own(proxy, out, 200, fate, None).await
    }

    /// Answers `p` ourselves: nothing of an upstream response reached the client.
    async fn answer(
        &mut self,
        proxy: &Proxy,
        req: &Request,
        p: Problem,
        end: End,
        terms: ClientTerms,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let fate = persist::settle(end, terms).client;
        answer::error(p, req.method == Method::Head, fate != ClientFate::Keep, out);
        self.send_own(proxy, out, p.status(), fate, Some(p)).await
    }

    /// Writes an answer of the proxy's own, already rendered in `out`, within the client
    /// write timeout, and reports it.
    async fn send_own(
        &mut self,
        proxy: &Proxy,
        out: &[u8],
        status: u16,
        mut fate: ClientFate,
        failure: Option<Problem>,
    ) -> Outcome {
        let limit = proxy.cfg.timeouts.client_write;
        if exchange::write_client(&mut self.stream, out, limit)
            .await
            .is_err()
        {
            fate = persist::settle(End::ClientGone, ClientTerms::CLOSING).client;
        }
        Outcome::answered(status, out.len() as u64, failure, fate)
    }
}

/// Makes the coming close send RST (R29): a zero linger, which never blocks on close. A Unix
/// socket has no reset; its close ends the stream, and the cut framing still tells the client.
fn reset(stream: &Stream) {
    stream.reset_on_close();
}

/// R34's lingering close: stop sending, then read and discard what the client still sends
/// (briefly, boundedly) so the kernel does not answer unread input with a reset that destroys
/// our last response (a 413 or 431 sent while the client was still uploading).
async fn linger_close(stream: &mut Stream) {
    let _ = stream.shutdown().await;
    let deadline = TokioInstant::now() + limits::LINGER;
    let mut sink = [0u8; 1024];
    let mut discarded = 0;
    while discarded < limits::LINGER_MAX_BYTES {
        match timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}
