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
//! | `/bench/sse/framed/<framing>/<first>/<events>/<interval_us>` | fixture events `first..first+events` (looped), one every `interval_us`, framed `chunked`, `length` (Content-Length) or `close` (until the upstream closes) |
//! | `/bench/sse/framed/<framing>/<first>/<events>/<interval_us>/<cut>` | the same response's first `cut` bytes (head included), then a reset (RST) |
//!
//! Each request's `Authorization` must be exactly `Bearer <real token>`; mismatches are counted
//! and fail the scenario (the proxy and nginx must have injected it).

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
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
/// Accept queue of the fixture's listener. The reset scenario connects 1000 at a time; with
/// the usual 128, the queue overflows, the kernel drops SYNs, and connects wait for the
/// client's SYN retransmit (1 s, then 3 s...): a delay of the bench's own making.
const LISTEN_BACKLOG: u32 = 4096;

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
    /// TLS handshakes completed, and how many of them resumed a session: a middle that resumes
    /// few pays full handshakes (see the run's stderr line).
    pub handshakes: AtomicU64,
    pub resumed: AtomicU64,
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
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
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

/// What the connection does after an answer.
enum After {
    /// Read the next request (unless the client asked to close).
    KeepAlive,
    /// Close (the body was delimited by the close, already signalled with FIN).
    Close,
    /// Close with a reset: the response was cut on purpose.
    Reset,
}

/// Makes the coming close of `fd` send RST instead of FIN (SO_LINGER with a zero timeout),
/// discarding anything unsent.
fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the socket of a connection this task still owns (the caller drops it
    // right after); setsockopt reads `linger`, of the size passed, and nothing else.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
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
    // The socket under the TLS layer too; valid as long as `wire` lives.
    let fd = tcp.as_raw_fd();
    let io: BoxIo = match tls {
        None => Box::new(tcp),
        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                stats.handshakes.fetch_add(1, Ordering::Relaxed);
                if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    stats.resumed.fetch_add(1, Ordering::Relaxed);
                }
                Box::new(stream)
            }
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
        match answer(&mut wire, &head, &shared, &mut released).await {
            Ok(After::KeepAlive) if !head.close => {}
            Ok(After::Reset) => {
                reset_on_close(fd);
                return;
            }
            _ => return,
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

/// The head of an SSE response, before its framing field.
const SSE_HEAD_START: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\nrequest-id: req_bench\r\n";
const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\nrequest-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n";
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a `/bench/sse/framed/...` response tells where its body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseFraming {
    /// `Transfer-Encoding: chunked`, one chunk per event, then the last chunk.
    Chunked,
    /// `Content-Length`.
    Length,
    /// Neither: the body ends when the upstream closes (`Connection: close`), over TLS with
    /// close_notify.
    Close,
}

impl SseFraming {
    pub const ALL: [SseFraming; 3] = [SseFraming::Chunked, SseFraming::Length, SseFraming::Close];

    pub fn name(self) -> &'static str {
        match self {
            SseFraming::Chunked => "chunked",
            SseFraming::Length => "length",
            SseFraming::Close => "close",
        }
    }
}

/// A framed SSE response as the upstream writes it, in the pieces it writes: the head, one
/// piece per event (fixture events `first..first + events`, looped), and for chunked the last
/// chunk. The client builds the same, for the expected body and the length a cut falls in.
pub fn framed_response(
    fixture: &Fixture,
    framing: SseFraming,
    first: usize,
    events: usize,
) -> Vec<Vec<u8>> {
    let body_len: usize = (0..events).map(|i| fixture.event(first + i).len()).sum();
    let mut head = SSE_HEAD_START.to_string();
    match framing {
        SseFraming::Chunked => head.push_str("transfer-encoding: chunked\r\n"),
        SseFraming::Length => {
            let _ = write!(head, "content-length: {body_len}\r\n");
        }
        SseFraming::Close => head.push_str("connection: close\r\n"),
    }
    head.push_str("\r\n");
    let mut pieces = Vec::with_capacity(events + 2);
    pieces.push(head.into_bytes());
    for i in 0..events {
        let event = fixture.event(first + i);
        let mut piece = Vec::with_capacity(event.len() + 16);
        match framing {
            SseFraming::Chunked => push_chunk(&mut piece, &[event]),
            SseFraming::Length | SseFraming::Close => piece.extend_from_slice(event),
        }
        pieces.push(piece);
    }
    if framing == SseFraming::Chunked {
        pieces.push(LAST_CHUNK.to_vec());
    }
    pieces
}

/// Writes a framed SSE response, one event every `interval`, whole or cut after `cut` bytes.
async fn framed(
    wire: &mut Wire,
    shared: &Shared,
    framing: SseFraming,
    args: &[u64],
) -> io::Result<After> {
    let (first, events, interval, cut) = match *args {
        [first, events, us] => (first, events, us, None),
        [first, events, us, cut] => (first, events, us, Some(cut)),
        _ => return bad_request(wire).await.map(|()| After::KeepAlive),
    };
    let interval = Duration::from_micros(interval);
    let pieces = framed_response(&shared.fixture, framing, first as usize, events as usize);
    let start = tokio::time::Instant::now();
    let mut written = 0u64;
    for (i, piece) in pieces.iter().enumerate() {
        // Piece 0 is the head, 1 the first event: event k (piece k + 1) leaves at k intervals.
        if i >= 2 && !interval.is_zero() && i <= events as usize {
            tokio::time::sleep_until(start + interval * (i - 1) as u32).await;
        }
        let take = match cut {
            Some(cut) => (cut - written).min(piece.len() as u64) as usize,
            None => piece.len(),
        };
        if take > 0 {
            wire.send(&piece[..take]).await?;
            written += take as u64;
        }
        if cut == Some(written) {
            return Ok(After::Reset);
        }
    }
    if framing == SseFraming::Close {
        // FIN (TLS: close_notify first): the body ends here, cleanly.
        wire.io.shutdown().await?;
        return Ok(After::Close);
    }
    Ok(After::KeepAlive)
}

fn numbers(rest: &str) -> Option<Vec<u64>> {
    rest.split('/').map(|s| s.parse().ok()).collect()
}

async fn answer(
    wire: &mut Wire,
    head: &RequestHead,
    shared: &Shared,
    released: &mut watch::Receiver<bool>,
) -> io::Result<After> {
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
        wire.send(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(After::KeepAlive);
    }
    if path == "/bench/small" {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_bench\r\ncontent-length: {}\r\n\r\n",
            SMALL_RESPONSE_BODY.len()
        )
        .into_bytes();
        out.extend_from_slice(SMALL_RESPONSE_BODY);
        wire.send(&out).await?;
        return Ok(After::KeepAlive);
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
        wire.send(out.as_bytes()).await?;
        return Ok(After::KeepAlive);
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
        return Ok(After::KeepAlive);
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
        wire.send(LAST_CHUNK).await?;
        return Ok(After::KeepAlive);
    }
    if let Some(args) = path.strip_prefix("/bench/sse/paced/").and_then(numbers) {
        let (events, interval) = match args[..] {
            [e, us] => (e as usize, Duration::from_micros(us)),
            _ => return bad_request(wire).await.map(|()| After::KeepAlive),
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
        wire.send(LAST_CHUNK).await?;
        return Ok(After::KeepAlive);
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
        wire.send(&out).await?;
        return Ok(After::KeepAlive);
    }
    if let Some(rest) = path.strip_prefix("/bench/sse/framed/") {
        let (name, args) = rest.split_once('/').unwrap_or((rest, ""));
        let framing = SseFraming::ALL.into_iter().find(|f| f.name() == name);
        if let (Some(framing), Some(args)) = (framing, numbers(args)) {
            return framed(wire, shared, framing, &args).await;
        }
    }
    bad_request(wire).await.map(|()| After::KeepAlive)
}

async fn bad_request(wire: &mut Wire) -> io::Result<()> {
    wire.send(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        .await
}
