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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{Config, ConfigError};
use crate::error::Problem;
use crate::limits::Timeouts;
use crate::target::{Scheme, Target};

/// One upstream connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
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

/// Opens connections to TARGET.
pub struct Connector {
    target: Target,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeouts: Timeouts,
}

impl Connector {
    /// Builds the TLS client once. Errors name `TARGET` or `TARGET_CA_FILE`.
    pub fn new(cfg: &Config) -> Result<Connector, ConfigError> {
        let tls = match cfg.target.scheme {
            Scheme::Http => None,
            Scheme::Https => {
                let mut roots = rustls::RootCertStore::empty();
                match &cfg.ca_file {
                    Some(path) => {
                        let bad = || {
                            ConfigError::new("TARGET_CA_FILE", "holds no usable PEM certificate")
                        };
                        let certs: Vec<CertificateDer<'static>> =
                            CertificateDer::pem_file_iter(path)
                                .map_err(|_| bad())?
                                .collect::<Result<_, _>>()
                                .map_err(|_| bad())?;
                        let (added, _) = roots.add_parsable_certificates(certs);
                        if added == 0 {
                            return Err(bad());
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|_| ConfigError::new("TARGET", "no TLS protocol version available"))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let name = ServerName::try_from(cfg.target.host.clone()).map_err(|_| {
                    ConfigError::new("TARGET", "host is not a valid TLS server name")
                })?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(Connector {
            target: cfg.target.clone(),
            tls,
            timeouts: cfg.timeouts.clone(),
        })
    }

    /// A new connection: DNS and TCP within the connect timeout, then the TLS handshake
    /// within its own.
    pub async fn connect(&self) -> Result<Stream, Problem> {
        let tcp = timeout(self.timeouts.connect, self.connect_tcp())
            .await
            .map_err(|_| Problem::UpstreamConnectTimeout)??;
        let Some((connector, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let tls = timeout(self.timeouts.tls, connector.connect(name.clone(), tcp))
            .await
            .map_err(|_| Problem::UpstreamTlsTimeout)?
            .map_err(|_| Problem::UpstreamTls)?;
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

    async fn connect_tcp(&self) -> Result<TcpStream, Problem> {
        let addrs = tokio::net::lookup_host((self.target.host.as_str(), self.target.port))
            .await
            .map_err(|_| Problem::UpstreamUnreachable)?;
        for addr in addrs {
            if let Ok(s) = TcpStream::connect(addr).await {
                // Invariant 9: every relayed write goes out at once.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
        }
        Err(Problem::UpstreamUnreachable)
    }
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

    /// Drops every idle connection (shutdown).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
