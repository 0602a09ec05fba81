//! Fixture upstreams on 127.0.0.1:0, plain or TLS, that record every byte they receive.
//!
//! ```ignore
//! let up = Upstream::plain().serve(handlers::echo_head());
//! let up = Upstream::tls().serve(handlers::fixed(b"HTTP/1.1 200 OK\r\n..."));
//! ```
//! Each accepted connection runs the handler on its own thread with an [`UpConn`]. The handler
//! reads requests (`read_request`) and scripts the answer with raw bytes (`send`, `send_paced`,
//! `close`, `abort`). Everything a connection receives is kept, raw, in `received()`; every
//! request parsed is kept in `requests()`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::tls::{TempFile, TestCa};
use super::wire::{request_framing, Body, Fields, RequestHead, Wire};
use super::IO_TIMEOUT;

/// The stream under an [`UpConn`]: TCP, or rustls over TCP.
pub enum UpStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl UpStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            UpStream::Plain(s) => s,
            UpStream::Tls(s) => &s.sock,
        }
    }
}

impl Read for UpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            UpStream::Plain(s) => s.read(buf),
            UpStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for UpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            UpStream::Plain(s) => s.write(buf),
            UpStream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            UpStream::Plain(s) => s.flush(),
            UpStream::Tls(s) => s.flush(),
        }
    }
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct UpRequest {
    /// Index of the connection it came on (0-based, in accept order).
    pub conn: usize,
    pub head: RequestHead,
    pub body: Body,
}

impl UpRequest {
    pub fn head_str(&self) -> String {
        self.head.raw_str()
    }
}

impl Fields for UpRequest {
    fn fields(&self) -> &[super::wire::Field] {
        &self.head.fields
    }
}

/// Facts about one accepted connection.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    /// Every byte received (after TLS decryption), in order.
    pub received: Vec<u8>,
    /// TLS only: the SNI the client sent.
    pub sni: Option<String>,
    /// TLS only: the ALPN protocol agreed.
    pub alpn: Option<Vec<u8>>,
    /// TLS only: true once the handshake completed.
    pub handshake_ok: bool,
}

#[derive(Default)]
struct State {
    conns: Mutex<Vec<Arc<Mutex<ConnInfo>>>>,
    records: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
    requests: Mutex<Vec<UpRequest>>,
    changed: Condvar,
    accepted: AtomicUsize,
}

impl State {
    fn notify(&self) {
        let _guard = self.requests.lock().unwrap();
        self.changed.notify_all();
    }
}

/// The handler's view of one upstream connection.
pub struct UpConn {
    /// 0-based accept order.
    pub index: usize,
    pub wire: Wire<UpStream>,
    state: Arc<State>,
}

impl UpConn {
    /// Read the next request head and its whole body (chunked decoded). None at a clean close or
    /// on any error (the harness then just ends the connection). The request is recorded.
    pub fn read_request(&mut self) -> Option<UpRequest> {
        let head = self.read_head()?;
        let framing = request_framing(&head).ok()?;
        let body = self.wire.read_body(framing).ok()?;
        let req = UpRequest {
            conn: self.index,
            head,
            body,
        };
        self.state.requests.lock().unwrap().push(req.clone());
        self.state.changed.notify_all();
        Some(req)
    }

    /// Read only the next request head (the body stays unread). Not recorded as a request.
    pub fn read_head(&mut self) -> Option<RequestHead> {
        let raw = self.wire.read_head_bytes().ok()??;
        RequestHead::parse(&raw).ok()
    }

    /// Write bytes and flush.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wire.write_all_flush(bytes)
    }

    /// Write each part, flushing, with `gap` between parts.
    pub fn send_paced(&mut self, parts: &[&[u8]], gap: Duration) -> io::Result<()> {
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                thread::sleep(gap);
            }
            self.send(p)?;
        }
        Ok(())
    }

    /// Graceful close: TLS close_notify, then FIN.
    pub fn close(&mut self) {
        if let UpStream::Tls(s) = &mut self.wire.stream {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.wire.stream.tcp().shutdown(Shutdown::Write);
    }

    /// Abrupt close: no close_notify; both directions shut.
    pub fn abort(&mut self) {
        let _ = self.wire.stream.tcp().shutdown(Shutdown::Both);
    }

    /// Wait (bounded) until the peer closes; true if it did. Reads and records anything it sends.
    pub fn wait_peer_close(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let _ = self.wire.stream.tcp().set_read_timeout(Some(timeout));
        while Instant::now() < deadline {
            match self.wire.fill() {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
        false
    }
}

pub type Handler = Arc<dyn Fn(&mut UpConn) + Send + Sync + 'static>;

/// Builder for an [`Upstream`].
pub struct UpstreamBuilder {
    tls: bool,
    sans: Vec<String>,
    alpn: Vec<Vec<u8>>,
}

impl UpstreamBuilder {
    /// Subject alternative names of the TLS leaf (default `localhost`, `127.0.0.1`).
    pub fn sans(mut self, sans: &[&str]) -> Self {
        self.sans = sans.iter().map(|s| s.to_string()).collect();
        self
    }

    /// ALPN protocols the TLS server offers (default `http/1.1`).
    pub fn alpn(mut self, protos: &[&[u8]]) -> Self {
        self.alpn = protos.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Start accepting; every connection runs `handler`.
    pub fn serve<F>(self, handler: F) -> Upstream
    where
        F: Fn(&mut UpConn) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let (tls_cfg, ca, ca_file) = if self.tls {
            let ca = TestCa::new("agent-loop-proxy test CA");
            let sans: Vec<&str> = self.sans.iter().map(String::as_str).collect();
            let leaf = ca.issue(&sans);
            let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
            let cfg = leaf.server_config(&alpn);
            let file = ca.pem_file();
            (Some(cfg), Some(ca), Some(file))
        } else {
            (None, None, None)
        };
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Handler = Arc::new(handler);
        {
            let state = state.clone();
            let stop = stop.clone();
            thread::spawn(move || accept_loop(listener, tls_cfg, handler, state, stop));
        }
        Upstream {
            addr,
            tls: self.tls,
            ca,
            ca_file,
            state,
            stop,
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(tcp) = stream else { continue };
        let info = Arc::new(Mutex::new(ConnInfo::default()));
        let record = Arc::new(Mutex::new(Vec::new()));
        let index = {
            let mut conns = state.conns.lock().unwrap();
            conns.push(info.clone());
            state.records.lock().unwrap().push(record.clone());
            conns.len() - 1
        };
        state.accepted.fetch_add(1, Ordering::SeqCst);
        state.notify();
        let handler = handler.clone();
        let state = state.clone();
        let tls = tls.clone();
        thread::spawn(move || {
            let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
            let _ = tcp.set_write_timeout(Some(IO_TIMEOUT));
            let _ = tcp.set_nodelay(true);
            let stream = match tls {
                None => UpStream::Plain(tcp),
                Some(cfg) => {
                    let Ok(mut conn) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    let mut tcp = tcp;
                    while conn.is_handshaking() {
                        if conn.complete_io(&mut tcp).is_err() {
                            return;
                        }
                    }
                    {
                        let mut i = info.lock().unwrap();
                        i.handshake_ok = true;
                        i.sni = conn.server_name().map(str::to_string);
                        i.alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                    }
                    UpStream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
                }
            };
            let mut up = UpConn {
                index,
                wire: Wire::new(stream).recording(record),
                state: state.clone(),
            };
            handler(&mut up);
            state.notify();
        });
    }
}

/// A running fixture upstream. Dropping it stops the accept loop.
pub struct Upstream {
    addr: SocketAddr,
    tls: bool,
    ca: Option<TestCa>,
    ca_file: Option<TempFile>,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn plain() -> UpstreamBuilder {
        UpstreamBuilder {
            tls: false,
            sans: Vec::new(),
            alpn: Vec::new(),
        }
    }

    pub fn tls() -> UpstreamBuilder {
        UpstreamBuilder {
            tls: true,
            sans: vec!["localhost".into(), "127.0.0.1".into()],
            alpn: vec![b"http/1.1".to_vec()],
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub fn target_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.port())
        } else {
            format!("http://127.0.0.1:{}", self.port())
        }
    }

    /// The authority the proxy must put in `Host`.
    pub fn authority(&self) -> String {
        if self.tls {
            format!("localhost:{}", self.port())
        } else {
            format!("127.0.0.1:{}", self.port())
        }
    }

    /// Path of the CA PEM file (TLS only), for `TARGET_CA_FILE`.
    pub fn ca_file(&self) -> String {
        self.ca_file.as_ref().expect("TLS upstream").path_str()
    }

    pub fn ca(&self) -> &TestCa {
        self.ca.as_ref().expect("TLS upstream")
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Raw bytes received, one entry per connection, in accept order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.state
            .records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.lock().unwrap().clone())
            .collect()
    }

    /// Total bytes received on all connections.
    pub fn received_len(&self) -> usize {
        self.state
            .records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.lock().unwrap().len())
            .sum()
    }

    /// Every byte received on every connection, concatenated in accept order.
    pub fn received_all(&self) -> Vec<u8> {
        self.received().concat()
    }

    /// TLS facts per connection.
    pub fn conn_info(&self) -> Vec<ConnInfo> {
        let conns = self.state.conns.lock().unwrap();
        let records = self.state.records.lock().unwrap();
        conns
            .iter()
            .zip(records.iter())
            .map(|(c, r)| {
                let mut info = c.lock().unwrap().clone();
                info.received = r.lock().unwrap().clone();
                info
            })
            .collect()
    }

    /// Requests parsed so far.
    pub fn requests(&self) -> Vec<UpRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Wait (bounded) until at least `n` requests were parsed; returns them.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<UpRequest> {
        let deadline = Instant::now() + timeout;
        let mut reqs = self.state.requests.lock().unwrap();
        while reqs.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            reqs = self
                .state
                .changed
                .wait_timeout(reqs, deadline - now)
                .unwrap()
                .0;
        }
        reqs.clone()
    }

    /// The only request received; panics unless exactly one arrived.
    pub fn only_request(&self) -> UpRequest {
        let reqs = self.wait_requests(1, IO_TIMEOUT);
        assert_eq!(reqs.len(), 1, "expected exactly one upstream request");
        reqs[0].clone()
    }

    /// Assert the upstream saw nothing at all: no connection, no byte.
    pub fn assert_untouched(&self) {
        assert_eq!(self.connection_count(), 0, "upstream was connected to");
        assert_eq!(self.received_len(), 0, "upstream received bytes");
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// A one-shot signal between the test and a handler thread (no sleeps as synchronisation).
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    pub fn open(&self) {
        let (m, cv) = &*self.0;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }

    /// Whether the gate was opened (no waiting).
    pub fn is_open(&self) -> bool {
        *self.0 .0.lock().unwrap()
    }

    /// Wait until opened; false on timeout.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (m, cv) = &*self.0;
        let guard = m.lock().unwrap();
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |open| !*open)
            .unwrap();
        *guard
    }
}

/// A counter the test advances and a handler waits on: lock-step pacing.
#[derive(Clone, Default)]
pub struct Steps(Arc<(Mutex<usize>, Condvar)>);

impl Steps {
    pub fn new() -> Steps {
        Steps::default()
    }

    /// Advance by one.
    pub fn step(&self) {
        let (m, cv) = &*self.0;
        *m.lock().unwrap() += 1;
        cv.notify_all();
    }

    /// Wait until at least `n` steps were taken; false on timeout.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let (m, cv) = &*self.0;
        let guard = m.lock().unwrap();
        let (guard, _) = cv.wait_timeout_while(guard, timeout, |c| *c < n).unwrap();
        *guard >= n
    }
}

/// Canned handlers.
pub mod handlers {
    use super::*;

    /// A 200 text/plain response carrying `body` (with its Content-Length; no body for HEAD).
    pub fn ok_text(req: &UpRequest, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if req.head.method != "HEAD" {
            out.extend_from_slice(body);
        }
        out
    }

    /// Answer every request 200 with the raw request head as a text/plain body.
    pub fn echo_head() -> impl Fn(&mut UpConn) + Send + Sync + 'static {
        |c: &mut UpConn| {
            while let Some(req) = c.read_request() {
                if c.send(&ok_text(&req, &req.head.raw)).is_err() {
                    return;
                }
            }
        }
    }

    /// Answer every request 200 with `<target>` as the body (for ordering checks).
    pub fn echo_target() -> impl Fn(&mut UpConn) + Send + Sync + 'static {
        |c: &mut UpConn| {
            while let Some(req) = c.read_request() {
                if c.send(&ok_text(&req, req.head.target.as_bytes())).is_err() {
                    return;
                }
            }
        }
    }

    /// Answer every request with the same raw response bytes (keep the connection open after).
    pub fn fixed(response: &[u8]) -> impl Fn(&mut UpConn) + Send + Sync + 'static {
        let response = response.to_vec();
        move |c: &mut UpConn| {
            while c.read_request().is_some() {
                if c.send(&response).is_err() {
                    return;
                }
            }
        }
    }

    /// Read one request, send `response`, then close (gracefully).
    pub fn fixed_then_close(response: &[u8]) -> impl Fn(&mut UpConn) + Send + Sync + 'static {
        let response = response.to_vec();
        move |c: &mut UpConn| {
            if c.read_request().is_some() {
                let _ = c.send(&response);
            }
            c.close();
        }
    }

    /// Read one request, then close without answering.
    pub fn close_without_answer() -> impl Fn(&mut UpConn) + Send + Sync + 'static {
        |c: &mut UpConn| {
            let _ = c.read_request();
            c.abort();
        }
    }

    /// Read one request head and open `head_seen`; then read its body strictly (by the
    /// head's framing) and open `body_complete` only if all of it arrived. `finished` opens
    /// when the handler is done with the connection (the proxy closed it, or the body ended).
    /// Never answers: for checking that a refused upload is never completed upstream.
    pub fn head_then_body(
        head_seen: Gate,
        body_complete: Gate,
        finished: Gate,
    ) -> impl Fn(&mut UpConn) + Send + Sync + 'static {
        move |c: &mut UpConn| {
            if let Some(head) = c.read_head() {
                head_seen.open();
                if let Ok(framing) = request_framing(&head) {
                    if c.wire.read_body(framing).is_ok() {
                        body_complete.open();
                    }
                }
            }
            finished.open();
        }
    }

    /// The SSE fixture (tests/fixtures/anthropic-stream.sse) split into its events, each ending
    /// with its blank line.
    pub fn sse_events() -> Vec<Vec<u8>> {
        let all = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/anthropic-stream.sse"
        ))
        .expect("read SSE fixture");
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(i) = super::super::wire::find(&all[start..], b"\n\n") {
            events.push(all[start..start + i + 2].to_vec());
            start += i + 2;
        }
        if start < all.len() {
            events.push(all[start..].to_vec());
        }
        events
    }

    /// Replay `events` as a chunked `text/event-stream`, one event per chunk, with `gap`
    /// between events (time pacing, for throughput-style checks; tests that prove streaming
    /// use [`sse_lockstep`], which needs no timing).
    pub fn sse_paced(
        events: Vec<Vec<u8>>,
        gap: Duration,
    ) -> impl Fn(&mut UpConn) + Send + Sync + 'static {
        move |c: &mut UpConn| {
            while c.read_request().is_some() {
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
                if c.send(head).is_err() {
                    return;
                }
                for (i, ev) in events.iter().enumerate() {
                    if i > 0 && !gap.is_zero() {
                        thread::sleep(gap);
                    }
                    let mut b = format!("{:x}\r\n", ev.len()).into_bytes();
                    b.extend_from_slice(ev);
                    b.extend_from_slice(b"\r\n");
                    if c.send(&b).is_err() {
                        return;
                    }
                }
                if c.send(b"0\r\n\r\n").is_err() {
                    return;
                }
            }
        }
    }

    /// Replay `events` as a chunked `text/event-stream`, one event per chunk, in lock-step:
    /// event `i` (i >= 1) is sent only after `steps` reached `i` (the test saw event `i - 1`).
    /// If the test does not advance within the bound, the connection is aborted.
    pub fn sse_lockstep(
        events: Vec<Vec<u8>>,
        steps: Steps,
        chunked: bool,
    ) -> impl Fn(&mut UpConn) + Send + Sync + 'static {
        move |c: &mut UpConn| {
            if c.read_request().is_none() {
                return;
            }
            let framing = if chunked {
                "Transfer-Encoding: chunked\r\n"
            } else {
                "Connection: close\r\n"
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n{framing}\r\n"
            );
            if c.send(head.as_bytes()).is_err() {
                return;
            }
            for (i, ev) in events.iter().enumerate() {
                if i > 0 && !steps.wait_for(i, IO_TIMEOUT) {
                    c.abort();
                    return;
                }
                let bytes = if chunked {
                    let mut b = format!("{:x}\r\n", ev.len()).into_bytes();
                    b.extend_from_slice(ev);
                    b.extend_from_slice(b"\r\n");
                    b
                } else {
                    ev.clone()
                };
                if c.send(&bytes).is_err() {
                    return;
                }
            }
            if chunked {
                let _ = c.send(b"0\r\n\r\n");
                // Keep the connection until the proxy is done with it.
                let _ = c.read_request();
            } else {
                c.close();
            }
        }
    }
}
