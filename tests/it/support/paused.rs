//! A client and an upstream for tests on tokio's paused clock
//! (`#[tokio::test(start_paused = true)]`): both are tasks of the test's runtime, as the
//! proxy is (see [`super::proxy`]), so the runtime is idle only when every side waits on the
//! clock, and tokio then jumps the clock to the next deadline. A timeout of seconds takes
//! milliseconds, and [`tokio::time::Instant`] measures it in the proxy's own time.
//!
//! Nothing here may block a thread: a blocking wait (a std socket, a thread of the std
//! [`super::Upstream`] that the proxy waits on) would let the clock jump while the other side
//! is still working. An std upstream the proxy never reaches is fine.

use std::io::{self, Cursor, ErrorKind};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::client::Response;
use super::wire::{response_framing, Wire};

/// A raw HTTP/1.1 client on the test's runtime: sends bytes as given, parses responses with
/// the strict reader the blocking [`super::Client`] uses.
pub struct AsyncClient {
    stream: TcpStream,
    /// Received, not yet consumed.
    buf: Vec<u8>,
}

impl AsyncClient {
    pub async fn connect(addr: SocketAddr) -> AsyncClient {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        AsyncClient {
            stream,
            buf: Vec::new(),
        }
    }

    /// Send `bytes` (all of them, or the error).
    pub async fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        self.stream.write_all(bytes.as_ref()).await
    }

    /// Send `bytes`; panics on error.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.try_send(bytes).await.expect("send to the proxy");
    }

    /// Read one whole response to a request made with `method`. Strict: a truncated body is
    /// an error.
    pub async fn read_response_to(&mut self, method: &str) -> io::Result<Response> {
        loop {
            if let Some((r, used)) = parse_response(&self.buf, method)? {
                self.buf.drain(..used);
                return Ok(r);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk).await? {
                0 => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "closed before a whole response",
                    ))
                }
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Read one whole response (to a non-HEAD request); panics on error.
    pub async fn read_response(&mut self) -> Response {
        self.read_response_to("GET")
            .await
            .unwrap_or_else(|e| panic!("reading response: {e}"))
    }

    /// Whether the proxy has sent something or closed, without waiting.
    pub fn answered_or_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut chunk = [0u8; 4096];
        match self.stream.try_read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        }
    }

    /// True if the proxy closes the connection (end of stream or a reset) within `bound` of
    /// the clock, with no further bytes. False if bytes arrive or the bound passes.
    pub async fn is_closed(&mut self, bound: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut one = [0u8; 1];
        match tokio::time::timeout(bound, self.stream.read(&mut one)).await {
            Err(_elapsed) => false,
            Ok(Ok(0)) => true,
            Ok(Ok(_)) => false,
            Ok(Err(e)) => matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ),
        }
    }
}

/// A whole response at the start of `bytes` and how many bytes it took; None if more are
/// needed.
fn parse_response(bytes: &[u8], method: &str) -> io::Result<Option<(Response, usize)>> {
    let mut wire = Wire::new(Cursor::new(bytes.to_vec()));
    let parsed = (|| -> io::Result<Response> {
        let raw = wire
            .read_head_bytes()?
            .ok_or_else(|| io::Error::from(ErrorKind::UnexpectedEof))?;
        let head = super::wire::ResponseHead::parse(&raw)?;
        let framing = response_framing(&head, method)?;
        let body = wire.read_body(framing)?;
        Ok(Response {
            head,
            framing,
            body,
        })
    })();
    match parsed {
        Ok(r) => {
            let unread = bytes.len() - wire.stream.position() as usize;
            Ok(Some((r, bytes.len() - unread - wire.buffered().len())))
        }
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// An upstream on the test's runtime that answers every request on a connection with 200 and
/// the request-target as the body (what [`super::handlers::echo_target`] does), keeping the
/// connection open. Requests must have no body.
pub async fn echo_target_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(echo_targets(conn));
        }
    });
    format!("http://{addr}")
}

async fn echo_targets(mut conn: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = super::wire::find(&buf, b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head: Vec<u8> = buf.drain(..end + 4).collect();
        let line = String::from_utf8_lossy(&head);
        let target = line.split(' ').nth(1).unwrap_or("").to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{target}",
            target.len()
        );
        if conn.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
