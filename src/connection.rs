//! The client connection: its socket and buffer, the loop that serves its requests in order
//! (pipelined requests are answered serially, R32), reading each head within its deadline,
//! the proxy's own answers, the log line, and how the connection ends: a lingering close, or
//! a reset when a close-delimited response was cut.
//!
//! Shutdown is checked only between requests, so an exchange in flight is never cut by the
//! drain itself; the grace period in `main` bounds it.

use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant as TokioInstant};
use zeroize::Zeroizing;

use crate::answer;
use crate::error::Problem;
use crate::exchange::{self, ClientIo, Exchange, Forwarded, Outcome};
use crate::head::{self, Method, Request, Route};
use crate::limits::{self, Timeouts};
use crate::persist::{self, ClientFate, ClientTerms, End};
use crate::scan::{HeadScanner, ScanLimits};
use crate::scrub::TokenFinder;
use crate::state::Proxy;

/// The client side of a connection: the socket and the bytes read but not yet used (the rest
/// of a head, body bytes, pipelined requests).
struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

/// Serves one client connection, then ends it as the last exchange decided.
pub async fn serve(proxy: &Proxy, stream: TcpStream, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let mut client = Client {
        stream,
        buf: BytesMut::new(),
    };
    match serve_requests(proxy, &mut client, shutdown).await {
        ClientFate::Reset => reset(&client.stream),
        ClientFate::Close | ClientFate::Keep => linger_close(&mut client.stream).await,
    }
}

/// Serves requests until the connection closes, breaks a rule, or the proxy drains.
async fn serve_requests(
    proxy: &Proxy,
    client: &mut Client,
    shutdown: watch::Receiver<bool>,
) -> ClientFate {
    let cfg = &proxy.cfg;
    let mut scanner = HeadScanner::new();
    let scan_limits = ScanLimits::request(&cfg.limits);
    // Holds our credential once rewritten: wiped when the connection ends.
    let mut up_head = Zeroizing::new(Vec::new());
    let mut out: Vec<u8> = Vec::new();
    let mut log_path = String::new();
    let mut served: u32 = 0;
    // Built once per connection: the searcher for the token in every response on it.
    let finder = TokenFinder::new(proxy.token.as_bytes());
    loop {
        if client.buf.is_empty() && client.buf.capacity() > limits::IDLE_BUF_KEEP {
            client.buf = BytesMut::new();
        }
        let first = served == 0;
        let read = client
            .read_head(&mut scanner, &scan_limits, &cfg.timeouts, first, &shutdown)
            .await;
        let head_len = match read {
            Ok(Some(n)) => n,
            Ok(None) => return ClientFate::Close,
            Err(p) => return client.reject(proxy, p, &mut out).await,
        };
        let started = Instant::now();
        served += 1;
        let head = &client.buf[..head_len];
        let req = match head::parse_request(head, &cfg.limits, &proxy.rewrite(), &mut up_head) {
            Ok(r) => r,
            Err(p) => return client.reject(proxy, p, &mut out).await,
        };
        set_log_path(&mut log_path, &client.buf[req.path.clone()]);
        client.buf.advance(head_len);
        scanner.reset();

        // R34/R35 and the per-connection request limit: what the client's side allows.
        let terms = ClientTerms {
            keep_alive: req.keep_alive,
            more_allowed: served < cfg.limits.max_requests_per_connection && !*shutdown.borrow(),
        };
        let outcome = match (req.route, req.authorized) {
            (Route::Health, _) => client.health(proxy, &req, &mut out).await,
            // Nothing reaches the upstream; the unread body makes the connection unusable.
            (Route::Forward, false) => {
                let end = End::Answered { in_sync: false };
                let p = Problem::Unauthorized;
                client.answer(proxy, &req, p, end, terms, &mut out).await
            }
            (Route::Forward, true) => {
                let x = Exchange {
                    proxy,
                    req: &req,
                    up_head: &up_head,
                    terms,
                    finder: &finder,
                };
                let o = client.forward(&x, &mut out).await;
                // The credential is not needed until the next request: wipe it now.
                zeroize::Zeroize::zeroize(&mut *up_head);
                o
            }
        };
        log_request(req.method, &log_path, &outcome, started);
        if outcome.client != ClientFate::Keep {
            return outcome.client;
        }
    }
}

impl Client {
    /// Forwards the request; answers it ourselves if nothing of a response reached us.
    async fn forward(&mut self, x: &Exchange<'_>, out: &mut Vec<u8>) -> Outcome {
        let mut io = ClientIo {
            stream: &mut self.stream,
            buf: &mut self.buf,
        };
        match exchange::forward(x, &mut io, out).await {
            Forwarded::Relayed(o) => o,
            Forwarded::Answer { problem, in_sync } => {
                let end = End::Answered { in_sync };
                self.answer(x.proxy, x.req, problem, end, x.terms, out)
                    .await
            }
        }
    }

    /// Reads until a complete head is buffered. `Ok(None)`: the connection should close
    /// quietly (peer closed, keep-alive idle, or shutdown between requests).
    async fn read_head(
        &mut self,
        scanner: &mut HeadScanner,
        limits: &ScanLimits,
        t: &Timeouts,
        first: bool,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<usize>, Problem> {
        let mut shutdown = shutdown.clone();
        // The first request's head deadline runs from accept; later ones from their first
        // byte, after a keep-alive idle wait.
        let mut deadline = first.then(|| TokioInstant::now() + t.header);
        loop {
            if let Some(n) = scanner.scan(&self.buf, limits)? {
                return Ok(Some(n));
            }
            if !self.buf.is_empty() && deadline.is_none() {
                deadline = Some(TokioInstant::now() + t.header);
            }
            let idle = self.buf.is_empty();
            let until = deadline.unwrap_or_else(|| TokioInstant::now() + t.keepalive);
            self.buf.reserve(limits::HEAD_READ);
            // Cancel safety: read_buf is cancel-safe (no bytes are lost if the timer or the
            // shutdown wins); shutdown only applies while no request has begun.
            let read = tokio::select! {
                r = timeout_at(until, self.stream.read_buf(&mut self.buf)) => r,
                _ = shutdown.changed(), if idle => return Ok(None),
            };
            match read {
                Ok(Ok(0)) if self.buf.is_empty() => return Ok(None),
                Ok(Ok(0)) => return Err(Problem::ClientAborted),
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Ok(None),
                // An idle connection (never used, or between requests) closes quietly.
                Err(_) if idle => return Ok(None),
                Err(_) => return Err(Problem::HeadTimeout),
            }
            if *shutdown.borrow() && self.buf.is_empty() {
                return Ok(None);
            }
        }
    }

    /// The proxy's own answer to a request it refused before routing; then it closes.
    async fn reject(&mut self, proxy: &Proxy, p: Problem, out: &mut Vec<u8>) -> ClientFate {
        crate::log!("error: {p}");
        if p == Problem::ClientAborted {
            return ClientFate::Close;
        }
        let fate = persist::settle(End::Answered { in_sync: false }, ClientTerms::CLOSING).client;
        answer::error(p, false, fate != ClientFate::Keep, out);
        self.send_own(proxy, out, p.status(), fate, Some(p))
            .await
            .client
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
        Outcome {
            status,
            bytes: out.len() as u64,
            failure,
            credential_rejected: false,
            client: fate,
        }
    }
}

/// Makes the coming close send RST. A zero linger never blocks on close, which is what the
/// deprecation of `set_linger` (a blocking non-zero linger) warns about.
#[allow(deprecated)]
fn reset(stream: &TcpStream) {
    let _ = stream.set_linger(Some(std::time::Duration::ZERO));
}

/// R34's lingering close: stop sending, then read and discard what the client still sends
/// (briefly, boundedly) so the kernel does not answer unread input with a reset that destroys
/// our last response (a 413 or 431 sent while the client was still uploading).
async fn linger_close(stream: &mut TcpStream) {
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

/// The path as logged, in a reused string: at most [`limits::LOG_PATH_MAX`] bytes, escaped
/// outside printable ASCII (a second line of defence: such targets are refused already).
fn set_log_path(log_path: &mut String, path: &[u8]) {
    log_path.clear();
    crate::log::escape_into(log_path, path, limits::LOG_PATH_MAX);
}

/// One line per request (DESIGN: Logs): method, path without query, status, bytes, duration;
/// plus a failure line with its static reason and side. Nothing else from a request.
fn log_request(method: Method, path: &str, o: &Outcome, started: Instant) {
    let ms = started.elapsed().as_millis();
    crate::log!(
        "{} {} {} {}B {}ms",
        method.as_str(),
        path,
        o.status,
        o.bytes,
        ms
    );
    if let Some(p) = o.failure {
        crate::log!("error: {p}");
    }
    if o.credential_rejected {
        crate::log!("credential rejected by upstream ({})", o.status);
    }
}
