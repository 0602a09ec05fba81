//! The fixture upstream: a small HTTP/1.1 server (plain or TLS) that answers the bench's
//! requests by path and counts what it was sent.
//!
//! | path | answer |
//! |---|---|
//! | `/bench/small` | a small JSON message, Content-Length |
//! | `/bench/upload` | `{"bytes":N,"sha256":"<hex>"}` of the request body it read |
//! | `/bench/download/<n>` | `n` bytes of the shared payload, Content-Length |
//! | `/bench/sse/burst/<repeat>` | the SSE fixture `repeat` times, one chunk per event, unpaced |
//! | `/bench/sse/paced/<events>/<interval_us>` | `events` fixture events, one every `interval_us`, each opened by `: t=<ns since bench start>` |
//! | `/bench/sse/hold` | the first event, then nothing until released, then the last event |
//!
//! Each request's `Authorization` must be exactly `Bearer <real token>`; mismatches are counted
//! and fail the scenario (the proxy and nginx must have injected it).

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::wire::{Body, BoxIo, Framing, RequestHead, Wire};

/// A realistic small Messages API request body.
pub const SMALL_REQUEST_BODY: &[u8] = br#"{"model":"claude-sonnet-4-5-20250929","max_tokens":1024,"system":"You are Claude Code, Anthropic's official CLI for Claude.","messages":[{"role":"user","content":[{"type":"text","text":"Run the unit tests and tell me which ones fail."}]}],"metadata":{"user_id":"bench"}}"#;

/// A realistic small non-streamed Messages API response body.
pub const SMALL_RESPONSE_BODY: &[u8] = br#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"I'll run the test suite now and report back on any failures."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":412,"output_tokens":18}}"#;

/// How long a fixture connection may sit between requests or inside one.
const UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound on a held stream's wait for release.
const HOLD_LIMIT: Duration = Duration::from_secs(600);
/// Upper bound on a TLS handshake with the fixture.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// The SSE fixture split into events, each with its terminating blank line.
pub struct Fixture {
    pub events: Vec<Vec<u8>>,
}

impl Fixture {
    pub fn parse(bytes: &[u8]) -> Result<Fixture, String> {
        if !bytes.ends_with(b"\n\n") {
            return Err("SSE fixture must end with a blank line".into());
        }
        let mut events = Vec::new();
        let mut rest = bytes;
        while let Some(i) = memchr::memmem::find(rest, b"\n\n") {
            events.push(rest[..i + 2].to_vec());
            rest = &rest[i + 2..];
        }
        if events.len() < 2 || !rest.is_empty() {
            return Err("SSE fixture has fewer than two events".into());
        }
        Ok(Fixture { events })
    }

    /// The `i`th event of the fixture replayed in a loop.
    pub fn event(&self, i: usize) -> &[u8] {
        &self.events[i % self.events.len()]
    }
}

/// What every fixture connection shares.
pub struct Shared {
    /// Time zero of the `: t=` stamps in paced events.
    pub clock: Instant,
    pub fixture: Arc<Fixture>,
    /// Bytes served by `/bench/download/<n>`.
    pub payload: Arc<Vec<u8>>,
    /// The exact `Authorization` value the upstream expects: `Bearer <real token>`.
    pub auth: Vec<u8>,
}

/// What the upstream saw.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub bad_auth: AtomicU64,
}

/// A running fixture upstream; dropping it stops it and every connection it holds.
pub struct Upstream {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start(shared: Arc<Shared>, tls: Option<TlsAcceptor>) -> io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let (release, released) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            tls,
            shared,
            Arc::clone(&stats),
            released,
        ));
        Ok(Upstream {
            addr,
            stats,
            release,
            task,
        })
    }

    /// Lets every held stream finish.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    released: watch::Receiver<bool>,
) {
    // Owned here, so aborting this task aborts every connection task too.
    let mut conns = JoinSet::new();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of descriptors, most likely: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        conns.spawn(serve(
            tcp,
            tls.clone(),
            Arc::clone(&shared),
            Arc::clone(&stats),
            released.clone(),
        ));
        while conns.try_join_next().is_some() {}
    }
}

async fn serve(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    mut released: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let io: BoxIo = match tls {
        None => Box::new(tcp),
        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Box::new(stream),
            _ => return,
        },
    };
    let mut wire = Wire::new(io, 16 * 1024, UPSTREAM_READ_TIMEOUT);
    // Any error ends the connection: the client side sees it and reports.
    while let Ok(Some(head)) = wire.read_request_head(&shared.auth).await {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        if !head.auth_ok {
            stats.bad_auth.fetch_add(1, Ordering::Relaxed);
        }
        if answer(&mut wire, &head, &shared, &mut released)
            .await
            .is_err()
            || head.close
        {
            return;
        }
    }
}

/// Appends one chunk holding `parts` to `out`.
fn push_chunk(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut size = String::new();
    let _ = write!(size, "{len:x}\r\n");
    out.extend_from_slice(size.as_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"\r\n");
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\nrequest-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n";
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn numbers(rest: &str) -> Option<Vec<u64>> {
    rest.split('/').map(|s| s.parse().ok()).collect()
}

async fn answer(
    wire: &mut Wire,
    head: &RequestHead,
    shared: &Shared,
    released: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    // Read the request body first (hashing it: only uploads use the digest).
    let mut hasher = Sha256::new();
    let hash_body = head.path == "/bench/upload";
    let received = Body::new(match head.framing {
        Framing::UntilClose => Framing::Empty,
        f => f,
    })
    .drain(wire, |piece| {
        if hash_body {
            hasher.update(piece);
        }
    })
    .await?;

    let path = head.path.as_str();
    let method = if path.starts_with("/bench/download/") {
        "GET"
    } else {
        "POST"
    };
    if head.method != method {
        return wire
            .send(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
    }
    if path == "/bench/small" {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_bench\r\ncontent-length: {}\r\n\r\n",
            SMALL_RESPONSE_BODY.len()
        )
        .into_bytes();
        out.extend_from_slice(SMALL_RESPONSE_BODY);
        return wire.send(&out).await;
    }
    if path == "/bench/upload" {
        let mut digest = String::with_capacity(64);
        for b in hasher.finalize() {
            let _ = write!(digest, "{b:02x}");
        }
        let body = format!(r#"{{"bytes":{received},"sha256":"{digest}"}}"#);
        let out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        return wire.send(out.as_bytes()).await;
    }
    if let Some(n) = path
        .strip_prefix("/bench/download/")
        .and_then(|s| s.parse::<usize>().ok())
    {
        let out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {n}\r\n\r\n"
        );
        wire.send(out.as_bytes()).await?;
        let mut left = n;
        while left > 0 {
            let take = left.min(shared.payload.len());
            wire.send(&shared.payload[..take]).await?;
            left -= take;
        }
        return Ok(());
    }
    if let Some(repeat) = path.strip_prefix("/bench/sse/burst/").and_then(numbers) {
        let events = shared.fixture.events.len() * (*repeat.first().unwrap_or(&1) as usize);
        wire.send(SSE_HEAD).await?;
        let mut out = Vec::with_capacity(4096);
        for i in 0..events {
            out.clear();
            push_chunk(&mut out, &[shared.fixture.event(i)]);
            wire.send(&out).await?;
        }
        return wire.send(LAST_CHUNK).await;
    }
    if let Some(args) = path.strip_prefix("/bench/sse/paced/").and_then(numbers) {
        let (events, interval) = match args[..] {
            [e, us] => (e as usize, Duration::from_micros(us)),
            _ => return bad_request(wire).await,
        };
        wire.send(SSE_HEAD).await?;
        let start = tokio::time::Instant::now();
        let mut out = Vec::with_capacity(4096);
        let mut stamp = String::with_capacity(32);
        for i in 0..events {
            tokio::time::sleep_until(start + interval * i as u32).await;
            stamp.clear();
            let _ = writeln!(stamp, ": t={}", shared.clock.elapsed().as_nanos());
            out.clear();
            push_chunk(&mut out, &[stamp.as_bytes(), shared.fixture.event(i)]);
            wire.send(&out).await?;
        }
        return wire.send(LAST_CHUNK).await;
    }
    if path == "/bench/sse/hold" {
        let mut out = SSE_HEAD.to_vec();
        push_chunk(&mut out, &[shared.fixture.event(0)]);
        wire.send(&out).await?;
        let _ = tokio::time::timeout(HOLD_LIMIT, released.wait_for(|r| *r)).await;
        out.clear();
        let last = shared.fixture.events.len() - 1;
        push_chunk(&mut out, &[shared.fixture.event(last)]);
        out.extend_from_slice(LAST_CHUNK);
        return wire.send(&out).await;
    }
    bad_request(wire).await
}

async fn bad_request(wire: &mut Wire) -> io::Result<()> {
    wire.send(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        .await
}
