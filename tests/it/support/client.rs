//! A raw HTTP/1.1 client: sends bytes exactly as given, parses responses strictly, keeps
//! unread bytes for the next response (keep-alive, pipelining). Every read has a timeout.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::wire::{response_framing, Body, Fields, Framing, ResponseHead, Wire};
use super::IO_TIMEOUT;

/// One response as the client received it.
#[derive(Clone, Debug)]
pub struct Response {
    pub head: ResponseHead,
    pub framing: Framing,
    pub body: Body,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// The decoded body.
    pub fn body(&self) -> &[u8] {
        &self.body.data
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body.data).into_owned()
    }

    /// Head bytes then body bytes, exactly as received.
    pub fn raw(&self) -> Vec<u8> {
        let mut v = self.head.raw.clone();
        v.extend_from_slice(&self.body.raw);
        v
    }

    /// Assert this is one of the proxy's own JSON errors with `status` and error `type`.
    pub fn assert_proxy_error(&self, status: u16, kind: &str) {
        let body = self.body_str();
        assert_eq!(self.status(), status, "status; body: {body}");
        let ct = self.head.header_str("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "content-type {ct:?} for a proxy error"
        );
        let prefix = format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"proxy: "#);
        assert!(
            body.starts_with(&prefix) && body.ends_with(r#""}}"#),
            "proxy error body {body:?} does not have the shape {prefix}...\"}}}}"
        );
    }
}

impl Fields for Response {
    fn fields(&self) -> &[super::wire::Field] {
        &self.head.fields
    }
}

/// A client connection to the proxy.
pub struct Client {
    pub wire: Wire<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to proxy");
        tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        tcp.set_nodelay(true).unwrap();
        Client {
            wire: Wire::new(tcp),
        }
    }

    /// Change the read timeout of later reads.
    pub fn set_read_timeout(&self, t: Duration) {
        self.wire.stream.set_read_timeout(Some(t)).unwrap();
    }

    /// Write bytes exactly as given (panics on error).
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.wire
            .write_all_flush(bytes.as_ref())
            .expect("write to proxy");
    }

    /// Write bytes, returning the error instead of panicking (the proxy may close first).
    pub fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        self.wire.write_all_flush(bytes.as_ref())
    }

    /// A second handle on the socket (e.g. for a writer thread).
    pub fn writer(&self) -> TcpStream {
        self.wire.stream.try_clone().expect("clone socket")
    }

    /// Half-close: no more bytes from the client.
    pub fn shutdown_write(&self) {
        let _ = self.wire.stream.shutdown(Shutdown::Write);
    }

    /// Read the next response head (1xx included).
    pub fn read_head(&mut self) -> io::Result<ResponseHead> {
        let raw = self
            .wire
            .read_head_bytes()?
            .ok_or_else(|| io::Error::new(ErrorKind::UnexpectedEof, "closed before a response"))?;
        ResponseHead::parse(&raw)
    }

    /// Read one whole response to a request made with `method` (decides HEAD framing). Strict:
    /// a truncated body is an error. 1xx responses are returned as they come.
    pub fn read_response_to(&mut self, method: &str) -> io::Result<Response> {
        let head = self.read_head()?;
        let framing = response_framing(&head, method)?;
        let body = self.wire.read_body(framing)?;
        Ok(Response {
            head,
            framing,
            body,
        })
    }

    /// Read one whole response (to a non-HEAD request); panics on error.
    pub fn read_response(&mut self) -> Response {
        self.read_response_to("GET")
            .unwrap_or_else(|e| panic!("reading response: {e}"))
    }

    /// Read the next non-1xx response to a request made with `method`; panics on error.
    pub fn read_final_response(&mut self, method: &str) -> Response {
        loop {
            let r = self
                .read_response_to(method)
                .unwrap_or_else(|e| panic!("reading response: {e}"));
            if !(100..200).contains(&r.status()) {
                return r;
            }
        }
    }

    /// Read one response whose body may be cut short: `body.complete` says if it was whole.
    pub fn read_response_lenient(&mut self, method: &str) -> io::Result<Response> {
        let head = self.read_head()?;
        let framing = response_framing(&head, method)?;
        let body = self.wire.read_body_lenient(framing)?;
        Ok(Response {
            head,
            framing,
            body,
        })
    }

    /// Read (decoded) body pieces of a response whose head was read, until the decoded bytes
    /// gathered in `acc` end with `want` or the body ends. Returns Ok(true) if `acc` ends with
    /// `want`. `state` carries chunked-decoding state between calls.
    pub fn read_body_until(
        &mut self,
        framing: Framing,
        acc: &mut Vec<u8>,
        want: &[u8],
        state: &mut BodyState,
    ) -> io::Result<bool> {
        loop {
            if acc.ends_with(want) {
                return Ok(true);
            }
            if state.done {
                return Ok(false);
            }
            match framing {
                Framing::Chunked => {
                    let mut ext = false;
                    match self.wire.read_chunk(None, &mut ext, &mut state.trailers)? {
                        Some(d) => acc.extend_from_slice(&d),
                        None => state.done = true,
                    }
                }
                Framing::UntilClose | Framing::Length(_) => {
                    let remaining = match framing {
                        Framing::Length(n) => n as usize - state.consumed,
                        _ => usize::MAX,
                    };
                    if remaining == 0 {
                        state.done = true;
                        continue;
                    }
                    if self.wire.buffered().is_empty() && self.wire.fill()? == 0 {
                        state.done = true;
                        continue;
                    }
                    let take = self.wire.buffered().len().min(remaining);
                    let (d, _) = self.wire.read_up_to(take)?;
                    state.consumed += d.len();
                    acc.extend_from_slice(&d);
                }
                Framing::None => state.done = true,
            }
        }
    }

    /// True if the proxy closes the connection (read gives end of stream or a reset) within
    /// `bound`, with no further bytes. False if bytes arrive or the bound passes.
    pub fn is_closed(&mut self, bound: Duration) -> bool {
        if !self.wire.buffered().is_empty() {
            return false;
        }
        self.wire.stream.set_read_timeout(Some(bound)).unwrap();
        let res = self.wire.fill();
        self.wire.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        match res {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ),
        }
    }

    /// Read everything until the peer closes (bounded by the read timeout per read).
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let mut out = self.wire.buffered().to_vec();
        let n = out.len();
        let _ = self.wire.read_up_to(n);
        let mut buf = [0u8; 65536];
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            match self.wire.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => out.extend_from_slice(&buf[..k]),
                Err(_) => break,
            }
        }
        out
    }
}

/// How a connection's byte stream ended, as [`Client::read_until_end`] saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// A read returned 0: the peer sent FIN (a clean end of stream).
    Eof,
    /// A read failed with ECONNRESET (or ECONNABORTED): the peer sent RST.
    Reset,
    /// No end within the bound.
    TimedOut,
    /// Some other read error.
    Other(ErrorKind),
}

impl Client {
    /// Read raw bytes until the stream ends, telling a clean end (FIN) from a reset; bytes
    /// already buffered come first. Bounded by `bound` in total.
    pub fn read_until_end(&mut self, bound: Duration) -> (Vec<u8>, Ending) {
        let mut out = self.wire.buffered().to_vec();
        let n = out.len();
        let _ = self.wire.read_up_to(n);
        let deadline = Instant::now() + bound;
        let mut buf = [0u8; 65536];
        let ending = loop {
            let now = Instant::now();
            if now >= deadline {
                break Ending::TimedOut;
            }
            self.wire
                .stream
                .set_read_timeout(Some(deadline - now))
                .unwrap();
            match self.wire.stream.read(&mut buf) {
                Ok(0) => break Ending::Eof,
                Ok(k) => out.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    break Ending::Reset
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break Ending::TimedOut
                }
                Err(e) => break Ending::Other(e.kind()),
            }
        };
        let _ = self.wire.stream.set_read_timeout(Some(IO_TIMEOUT));
        (out, ending)
    }

    /// Read (bounded) until the bytes received and not yet consumed contain `needle`; they
    /// stay buffered for the next read. False if the stream ended or the bound passed first.
    pub fn wait_buffered(&mut self, needle: &[u8]) -> bool {
        while !super::wire::contains(self.wire.buffered(), needle) {
            match self.wire.fill() {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    }
}

/// Decoding state for [`Client::read_body_until`].
#[derive(Default, Debug)]
pub struct BodyState {
    pub done: bool,
    pub consumed: usize,
    pub trailers: Vec<u8>,
}

/// One request on a fresh connection; returns the response (method taken from the request line).
pub fn roundtrip(addr: SocketAddr, request: impl AsRef<[u8]>) -> Response {
    let request = request.as_ref();
    let method = request
        .split(|&b| b == b' ')
        .next()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default();
    let mut c = Client::connect(addr);
    c.send(request);
    c.read_response_to(&method)
        .unwrap_or_else(|e| panic!("reading response: {e}"))
}

/// A small `GET <path>` request with a Host field.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
}

/// A `POST <path>` request with a Content-Length body.
pub fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Send `requests` back to back in one write (pipelining), then read one response per method.
pub fn pipeline(c: &mut Client, requests: &[(&str, Vec<u8>)]) -> Vec<Response> {
    let mut all = Vec::new();
    for (_, r) in requests {
        all.extend_from_slice(r);
    }
    c.send(&all);
    requests
        .iter()
        .map(|(m, _)| {
            c.read_response_to(m)
                .unwrap_or_else(|e| panic!("reading pipelined response: {e}"))
        })
        .collect()
}

/// A deterministic pseudo-random byte stream (xorshift64*), for bodies and chunk sizes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Write `bytes` to `w` in pieces of random size in `lo..=hi`.
pub fn write_in_pieces(w: &mut impl Write, bytes: &[u8], rng: &mut Rng, lo: usize, hi: usize) {
    let mut i = 0;
    while i < bytes.len() {
        let n = rng.range(lo, hi).min(bytes.len() - i);
        w.write_all(&bytes[i..i + n]).expect("write piece");
        i += n;
    }
    w.flush().expect("flush");
}
