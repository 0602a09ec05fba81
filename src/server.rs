//! The accept loop, the per-connection loop, and the drain at shutdown.
//!
//! Each connection is one task that serves its requests in order (pipelined requests are
//! answered serially, R32). Shutdown is checked only between requests, so an exchange in
//! flight is never cut by the drain itself; the grace period in `main` bounds it.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{timeout_at, Instant as TokioInstant};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::error::Problem;
use crate::head::{self, HeadScanner, Method, Request, Rewrite, Route, ScanLimits};
use crate::relay::{self, Client, Outcome};
use crate::response;
use crate::scrub::TokenFinder;
use crate::secret::Token;
use crate::upstream::{Connector, Pool};

/// First read size for a request head; grows up to the head limit.
const HEAD_READ: usize = 4 * 1024;
/// A client buffer larger than this is released between requests.
const IDLE_BUF_KEEP: usize = 8 * 1024;
/// How long a closing connection keeps reading what the client still sends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// Most bytes discarded while lingering.
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// Longest path written to the log.
const LOG_PATH_MAX: usize = 256;

/// Everything a connection needs, built once and shared.
pub struct Proxy {
    pub cfg: Config,
    pub token: Token,
    pub connector: Connector,
    pub pool: Pool,
    /// Merge the OAuth beta flag (decided at startup from the token and TARGET).
    pub oauth_beta: bool,
}

impl Proxy {
    fn rewrite(&self) -> Rewrite<'_> {
        Rewrite {
            target: &self.cfg.target,
            credential_line: self.token.header_line(),
            phantom: self.cfg.phantom.as_ref().map(|p| p.0.as_slice()),
            oauth_beta: self.oauth_beta,
        }
    }
}

/// Accepts connections until `shutdown` turns true, then waits for the open ones to finish.
/// The listener is dropped first, so new connections are refused rather than left hanging.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(proxy.cfg.limits.max_connections));
    // Each task holds a sender; when all are dropped, the drain is over (mini-redis).
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        // Cancel safety: acquire_owned and accept are both cancel-safe; losing the race to
        // shutdown drops nothing that was accepted.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue, // EMFILE, ECONNABORTED: keep serving the others
            },
            _ = shutdown.changed() => break,
        };
        let proxy = proxy.clone();
        let rx = shutdown.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            connection(&proxy, stream, rx).await;
            drop(permit);
            drop(done);
        });
    }
    drop(listener);
    drop(done_tx);
    let _ = done_rx.recv().await;
}

/// Serves one client connection, then closes it with a lingering close.
async fn connection(proxy: &Proxy, stream: TcpStream, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let mut client = Client {
        stream,
        buf: BytesMut::new(),
    };
    match serve_requests(proxy, &mut client, shutdown).await {
        Close::Graceful => linger_close(&mut client.stream).await,
        Close::Reset => reset(&client.stream),
    }
}

/// How a connection ends.
enum Close {
    /// After a complete response, or an answer of our own: FIN, then a lingering close.
    Graceful,
    /// A response was cut mid-way: RST, so the client cannot take it for complete (R29).
    Reset,
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
    let deadline = TokioInstant::now() + LINGER;
    let mut sink = [0u8; 1024];
    let mut discarded = 0;
    while discarded < LINGER_MAX_BYTES {
        match timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}

/// Serves requests until the connection closes, breaks a rule, or the proxy drains.
async fn serve_requests(
    proxy: &Proxy,
    client: &mut Client,
    shutdown: watch::Receiver<bool>,
) -> Close {
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
        if client.buf.is_empty() && client.buf.capacity() > IDLE_BUF_KEEP {
            client.buf = BytesMut::new();
        }
        let head_len =
            match read_head(proxy, client, &mut scanner, &scan_limits, served, &shutdown).await {
                Ok(Some(n)) => n,
                Ok(None) => return Close::Graceful,
                Err(p) => {
                    reject(proxy, client, p, &mut out).await;
                    return Close::Graceful;
                }
            };
        let started = Instant::now();
        served += 1;
        let parsed = head::parse_request(
            &client.buf[..head_len],
            &cfg.limits,
            &proxy.rewrite(),
            &mut up_head,
        );
        let req: Request = match parsed {
            Ok(r) => r,
            Err(p) => {
                reject(proxy, client, p, &mut out).await;
                return Close::Graceful;
            }
        };
        log_path.clear();
        let path = &client.buf[req.path.clone()];
        log_path.push_str(&String::from_utf8_lossy(
            &path[..path.len().min(LOG_PATH_MAX)],
        ));
        client.buf.advance(head_len);
        scanner.reset();

        // R34/R35 and the per-connection request limit: say so on this response.
        let close_after = !req.keep_alive
            || served >= cfg.limits.max_requests_per_connection
            || *shutdown.borrow();
        let outcome = match (req.route, req.authorized) {
            (Route::Health, _) => health(proxy, client, &req, &mut out).await,
            (Route::Forward, false) => {
                // Nothing reaches the upstream; the unread body makes the connection unusable.
                let o = relay::answer(proxy, client, &req, Problem::Unauthorized, false, &mut out)
                    .await;
                log_request(req.method, &log_path, &o, started);
                return Close::Graceful;
            }
            (Route::Forward, true) => {
                let o = relay::forward(
                    proxy,
                    client,
                    &req,
                    &up_head,
                    close_after,
                    &finder,
                    &mut out,
                )
                .await;
                // The credential is not needed until the next request: wipe it now.
                zeroize::Zeroize::zeroize(&mut *up_head);
                o
            }
        };
        log_request(req.method, &log_path, &outcome, started);
        if outcome.cut {
            return Close::Reset;
        }
        if !outcome.client_reusable || close_after {
            return Close::Graceful;
        }
    }
}

/// Reads until a complete head is buffered. `Ok(None)`: the connection should close quietly
/// (peer closed, keep-alive idle, or shutdown between requests).
async fn read_head(
    proxy: &Proxy,
    client: &mut Client,
    scanner: &mut HeadScanner,
    limits: &ScanLimits,
    served: u32,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<usize>, Problem> {
    let t = &proxy.cfg.timeouts;
    let mut shutdown = shutdown.clone();
    // The first request's head deadline runs from accept; later ones from their first byte,
    // after a keep-alive idle wait.
    let mut deadline = (served == 0).then(|| TokioInstant::now() + t.header);
    loop {
        if let Some(n) = scanner.scan(&client.buf, limits)? {
            return Ok(Some(n));
        }
        if !client.buf.is_empty() && deadline.is_none() {
            deadline = Some(TokioInstant::now() + t.header);
        }
        let idle = client.buf.is_empty();
        let until = deadline.unwrap_or_else(|| TokioInstant::now() + t.keepalive);
        client.buf.reserve(HEAD_READ);
        // Cancel safety: read_buf is cancel-safe (no bytes are lost if the timer or the
        // shutdown wins); shutdown only applies while no request has begun.
        let read = tokio::select! {
            r = timeout_at(until, client.stream.read_buf(&mut client.buf)) => r,
            _ = shutdown.changed(), if idle => return Ok(None),
        };
        match read {
            Ok(Ok(0)) if client.buf.is_empty() => return Ok(None),
            Ok(Ok(0)) => return Err(Problem::ClientAborted),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Ok(None),
            Err(_) if idle && served > 0 => return Ok(None),
            Err(_) if idle => return Ok(None),
            Err(_) => return Err(Problem::HeadTimeout),
        }
        if *shutdown.borrow() && client.buf.is_empty() {
            return Ok(None);
        }
    }
}

/// The proxy's own answer to a request it refused before routing; then the caller closes.
async fn reject(proxy: &Proxy, client: &mut Client, p: Problem, out: &mut Vec<u8>) {
    crate::log!("error: {p}");
    if p == Problem::ClientAborted {
        return;
    }
    response::error(p, false, true, out);
    relay::send_own(proxy, client, out, p.status(), false, Some(p)).await;
}

async fn health(proxy: &Proxy, client: &mut Client, req: &Request, out: &mut Vec<u8>) -> Outcome {
    // Always closed: /health needs no phantom token, so keep-alive would let any local
    // process hold connection slots indefinitely by renewing them with health checks.
    response::health(req.method == Method::Head, true, out);
    relay::send_own(proxy, client, out, 200, false, None).await
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
