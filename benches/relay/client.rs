//! The load generator's side of a connection: where to connect (the fixture upstream directly,
//! the proxy, or nginx) and what the requests look like.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::tls;
use crate::wire::{BoxIo, Wire};

/// Bound on a TCP connect or TLS handshake by the load generator.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// Bound on any single read by the load generator.
pub const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the load generator sends its requests, and as whom.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Set for a direct connection to the TLS upstream.
    pub tls: Option<TlsConnector>,
    /// `Authorization` value sent: the real token directly, a phantom one through a proxy.
    pub auth: String,
    /// The proxy's Unix socket (`--proxy-unix`): connect there instead of `addr`.
    pub unix: Option<PathBuf>,
}

impl Endpoint {
    /// Opens a connection with a read buffer of `capacity` bytes.
    pub async fn connect(&self, capacity: usize) -> io::Result<Wire> {
        let timed_out = |_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
        if let Some(path) = &self.unix {
            let unix = tokio::time::timeout(CONNECT_LIMIT, UnixStream::connect(path))
                .await
                .map_err(timed_out)??;
            return Ok(Wire::new(Box::new(unix), capacity, CLIENT_READ_TIMEOUT));
        }
        let tcp = tokio::time::timeout(CONNECT_LIMIT, TcpStream::connect(self.addr))
            .await
            .map_err(timed_out)??;
        tcp.set_nodelay(true)?;
        let io: BoxIo = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => Box::new(
                tokio::time::timeout(CONNECT_LIMIT, connector.connect(tls::server_name(), tcp))
                    .await
                    .map_err(timed_out)??,
            ),
        };
        Ok(Wire::new(io, capacity, CLIENT_READ_TIMEOUT))
    }

    /// A request head as Claude Code would send it, with a Content-Length when `body_len` is
    /// given.
    pub fn head(&self, method: &str, path: &str, accept: &str, body_len: Option<usize>) -> Vec<u8> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nanthropic-version: 2023-06-01\r\naccept: {accept}\r\ncontent-type: application/json\r\nuser-agent: agent-loop-proxy-bench/1\r\nx-stainless-lang: js\r\n",
            self.addr, self.auth
        );
        if let Some(n) = body_len {
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    /// A complete request: head plus body.
    pub fn request(&self, method: &str, path: &str, accept: &str, body: &[u8]) -> Vec<u8> {
        let mut req = self.head(method, path, accept, Some(body.len()));
        req.extend_from_slice(body);
        req
    }
}
