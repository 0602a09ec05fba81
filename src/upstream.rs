//! The upstream side: TCP (+ TLS) connections to TARGET and a small pool of idle ones.
//!
//! TLS is rustls with SNI for TARGET's host, ALPN `http/1.1` only, certificates verified
//! against the Mozilla roots (webpki-roots) or, with `TARGET_CA_FILE`, that bundle only. The
//! client config is built once and shared; rustls' default in-memory session cache gives TLS
//! resumption on new connections.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::config::{Config, ConfigError};
use crate::egress::{parse_connect_reply, ConnectReply, EgressProxy};
use crate::error::Problem;
use crate::limits::Timeouts;
use crate::log::Log;
use crate::readhead::read_head;
use crate::scan::ScanLimits;
use crate::target::{Scheme, Target};

/// One upstream connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TlsSocket>>),
}

impl Stream {
    /// A pooled connection is usable only if nothing arrived on it while idle: EOF, an error,
    /// or unsolicited bytes (R30: data with no request outstanding is not a response) all
    /// mean discard. Checked without blocking, before pooling and again before any byte of a
    /// request is written, so a stale connection never costs a request (RFC 9112 §9.3.1
    /// forbids retrying a POST).
    ///
    /// Over TLS the probe reads through rustls, not the socket: bytes an upstream sent after
    /// its response may already be decrypted and buffered there, where a TCP peek cannot see
    /// them. A byte consumed by the probe only condemns the connection anyway.
    fn is_reusable(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let polled = match self {
            Stream::Plain(s) => s.poll_peek(&mut cx, &mut buf).map_ok(|_| ()),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(&mut cx, &mut buf),
        };
        polled.is_pending()
    }
}

/// A read side that can wait until a read would find bytes, so that an idle download waits
/// without holding its relay buffer.
pub trait ReadReady {
    /// `Ready` once a read may find bytes (or the end, or an error); `Ready` at once where
    /// that cannot be told without reading.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for Stream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => s.poll_read_ready(cx),
            // rustls may hold decrypted bytes the socket's readiness does not show; the TLS
            // state keeps buffers of its own anyway.
            Stream::Tls(_) => Poll::Ready(Ok(())),
        }
    }
}

/// The read half while the body still goes up: uploads are short-lived, so no waiting.
impl ReadReady for tokio::io::ReadHalf<Stream> {
    fn poll_read_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The socket under rustls, read in large pieces during a burst. rustls asks its transport for
/// at most 4 KiB per read (its deframer's read size), so a burst of small records (an SSE
/// stream, one event per record) cost one system call per 4 KiB. A read goes straight into
/// rustls's buffer as before; only when it fills it (the socket may hold more) does the next
/// read take what the socket holds, up to [`TLS_READ_BUF`], in one call, handed on from memory.
///
/// It cannot add delay: a read returns at once what the socket already holds (tokio's read
/// never waits for a buffer to fill), and a read that finds nothing here and nothing in the
/// socket is `Pending` exactly as the socket's own. The buffer exists only during a burst: it
/// is dropped whenever the socket runs dry, so a held or pooled connection keeps none, and an
/// event that arrives alone (a paced stream) never allocates one.
pub struct TlsSocket {
    tcp: TcpStream,
    /// `buf[start..end]` was read from the socket and not yet handed to rustls.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// One socket read for rustls: 16 KiB, a full TLS record's worth of payload (RFC 8446 §5.1).
const TLS_READ_BUF: usize = 16 * 1024;

impl TlsSocket {
    fn new(tcp: TcpStream) -> TlsSocket {
        TlsSocket {
            tcp,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// Refills the buffer (allocated, empty) from the socket. `Ready(Ok(false))`: the
    /// socket's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut rb = ReadBuf::new(&mut self.buf);
        match Pin::new(&mut self.tcp).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                (self.start, self.end) = (0, n);
                Poll::Ready(Ok(n > 0))
            }
            polled => {
                // Nothing held: a connection waiting for bytes keeps no buffer.
                self.buf = Vec::new();
                polled.map_ok(|()| false)
            }
        }
    }
}

/// How much of `held` to hand to a read of at most `room` bytes: whole TLS records (a 5-byte
/// header whose last two bytes are the length, RFC 8446 §5.1) when at least one fits, so rustls
/// is never left holding the start of a record it must keep and move; else as much as fits.
/// Only a hint: rustls takes any split.
fn records_within(held: &[u8], room: usize) -> usize {
    let limit = held.len().min(room);
    let mut whole = 0;
    while let Some(header) = held.get(whole..whole + 5) {
        let next = whole + 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if next > limit {
            break;
        }
        whole = next;
    }
    if whole == 0 {
        limit
    } else {
        whole
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end && this.buf.is_empty() {
            // No burst under way: straight into the caller's buffer.
            let before = out.remaining();
            let polled = Pin::new(&mut this.tcp).poll_read(cx, out);
            if matches!(polled, Poll::Ready(Ok(()))) && before > 0 && out.remaining() == 0 {
                // It filled the caller's buffer, so more may be waiting: the next read takes
                // all of it at once.
                this.buf = vec![0; TLS_READ_BUF];
            }
            return polled;
        }
        if this.start == this.end {
            match this.poll_fill(cx) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = records_within(&this.buf[this.start..this.end], out.remaining());
        out.put_slice(&this.buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

/// Writes go straight to the socket: rustls already hands it whole records.
impl AsyncWrite for TlsSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Opens connections to TARGET, directly or through a CONNECT tunnel. A clone shares the TLS
/// client (the federation exchange uses one on its own thread).
#[derive(Clone)]
pub struct Connector {
    target: Target,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeouts: Timeouts,
    egress: Option<EgressProxy>,
    /// Where a failed tunnel is reported (with the egress proxy's host and port).
    log: Arc<Log>,
}

impl Connector {
    /// Builds the TLS client once. Errors name `TARGET`, `TARGET_CA_FILE` or
    /// `TARGET_EXTRA_CA_FILE`.
    pub fn new(cfg: &Config, log: Arc<Log>) -> Result<Connector, ConfigError> {
        let tls = match cfg.target.scheme {
            Scheme::Http => None,
            Scheme::Https => Some(tls_client(cfg)?),
        };
        Ok(Connector {
            target: cfg.target.clone(),
            tls,
            timeouts: cfg.timeouts.clone(),
            egress: cfg.egress.as_ref().map(|(p, _)| p.clone()),
            log,
        })
    }

    /// A new connection: TCP (to TARGET, or to the egress proxy and then a tunnel) within
    /// the connect timeout, then the TLS handshake within its own.
    pub async fn connect(&self) -> Result<Stream, Problem> {
        let tcp = match &self.egress {
            None => timeout(
                self.timeouts.connect,
                connect_tcp(&self.target.host, self.target.port),
            )
            .await
            .map_err(|_| Problem::UpstreamConnectTimeout)??,
            Some(egress) => self.tunnel(egress).await.inspect_err(|p| {
                crate::log!(self.log, "egress proxy {egress}: {p}");
            })?,
        };
        let Some((connector, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let tcp = TlsSocket::new(tcp);
        let tls = timeout(self.timeouts.tls, connector.connect(name.clone(), tcp))
            .await
            .map_err(|_| Problem::UpstreamTlsTimeout)?
            .map_err(|e| tls_problem(&e))?;
        // We offered only http/1.1; a server that picked something else is not speaking it.
        if tls
            .get_ref()
            .1
            .alpn_protocol()
            .is_some_and(|p| p != b"http/1.1")
        {
            return Err(Problem::UpstreamTls);
        }
        Ok(Stream::Tls(Box::new(tls)))
    }

    /// A TCP connection to the egress proxy, tunnelled to TARGET with CONNECT (RFC 9110
    /// §9.3.6), each step within the connect timeout.
    async fn tunnel(&self, egress: &EgressProxy) -> Result<TcpStream, Problem> {
        let limit = self.timeouts.connect;
        let mut tcp = timeout(limit, connect_tcp(&egress.host, egress.port))
            .await
            .map_err(|_| Problem::EgressTimeout)?
            .map_err(|_| Problem::EgressUnreachable)?;
        let authority = format!("{}:{}", self.target.bracketed_host(), self.target.port);
        let mut request = Zeroizing::new(Vec::new());
        egress.connect_request(&authority, &mut request);
        let exchange = async {
            tcp.write_all(&request)
                .await
                .map_err(|_| Problem::EgressUnreachable)?;
            read_connect_reply(&mut tcp).await
        };
        match timeout(limit, exchange)
            .await
            .map_err(|_| Problem::EgressTimeout)??
        {
            ConnectReply::Established => Ok(tcp),
            ConnectReply::Refused(status) => Err(Problem::EgressRefused(status)),
        }
    }
}

/// Reads the egress proxy's reply head. A refusal may carry a body (ignored: the connection
/// is dropped). After an established tunnel's head, bytes would be TARGET's before we said
/// anything (or the proxy's garbage): refused.
async fn read_connect_reply(tcp: &mut TcpStream) -> Result<ConnectReply, Problem> {
    let limits = ScanLimits {
        start_line_problem: Problem::EgressMalformed,
        head_problem: Problem::EgressMalformed,
        syntax_problem: Problem::EgressMalformed,
        ..ScanLimits::RESPONSE
    };
    let mut buf = Vec::with_capacity(1024);
    let n = read_head(tcp, &mut buf, &limits, Problem::EgressMalformed).await?;
    let reply = parse_connect_reply(&buf[..n])?;
    if reply == ConnectReply::Established && n != buf.len() {
        return Err(Problem::EgressMalformed);
    }
    Ok(reply)
}

/// The TLS client for TARGET: the Mozilla roots, or `TARGET_CA_FILE` instead, plus
/// `TARGET_EXTRA_CA_FILE`; ALPN `http/1.1` only.
fn tls_client(cfg: &Config) -> Result<(TlsConnector, ServerName<'static>), ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => add_pem(&mut roots, path, "TARGET_CA_FILE")?,
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    if let Some(path) = &cfg.extra_ca_file {
        add_pem(&mut roots, path, "TARGET_EXTRA_CA_FILE")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| ConfigError::new("TARGET", "no TLS protocol version available"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(cfg.target.host.clone())
        .map_err(|_| ConfigError::new("TARGET", "host is not a valid TLS server name"))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// Adds every certificate of a PEM bundle; at least one must be usable.
fn add_pem(
    roots: &mut rustls::RootCertStore,
    path: &std::path::Path,
    setting: &'static str,
) -> Result<(), ConfigError> {
    let bad = || ConfigError::new(setting, "holds no usable PEM certificate");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|_| bad())?
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad());
    }
    Ok(())
}

/// Which step of the handshake failed: the certificate, or the rest.
fn tls_problem(e: &io::Error) -> Problem {
    let certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    if certificate {
        Problem::UpstreamCertificate
    } else {
        Problem::UpstreamTls
    }
}

/// DNS, then TCP to each address in turn; the failure says which step failed.
async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, Problem> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| Problem::UpstreamNameResolution)?;
    let mut failure = Problem::UpstreamNameResolution;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // docs/http-rules.md §6.6: every relayed write goes out at once.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                failure = Problem::UpstreamRefused;
            }
            Err(_) => failure = Problem::UpstreamUnreachable,
        }
    }
    Err(failure)
}

/// Idle upstream connections, most recently used first out (warm TCP windows, fewest stale).
pub struct Pool {
    idle: Mutex<Vec<(Stream, Instant)>>,
    max_idle: usize,
    idle_timeout: std::time::Duration,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: std::time::Duration) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// A connection that is still fresh and shows no sign of being closed.
    pub fn take(&self) -> Option<Stream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((mut stream, since)) = idle.pop() {
            if since.elapsed() < self.idle_timeout && stream.is_reusable() {
                return Some(stream);
            }
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly (the caller decides that).
    /// One with bytes already waiting is dropped instead.
    pub fn put(&self, mut stream: Stream) {
        if self.max_idle == 0 || !stream.is_reusable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let timeout = self.idle_timeout;
        idle.retain(|(_, since)| since.elapsed() < timeout);
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push((stream, Instant::now()));
    }

    /// Drops idle connections past the idle timeout (their sockets close now, not when the
    /// pool is next used).
    pub fn prune(&self) {
        let timeout = self.idle_timeout;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(_, since)| since.elapsed() < timeout);
    }

    /// Drops every idle connection (shutdown).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests;
