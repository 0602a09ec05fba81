//! Buffered HTTP/1.1 framing shared by the load generator and the fixture upstreams.
//!
//! Bench-side code: it trusts its peers only as far as the checks in the scenarios need.
//! Every read is bounded by [`Wire::read_timeout`], every head by a size cap, so a stuck or
//! misbehaving proxy ends a scenario with an error instead of hanging the bench.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Anything the bench speaks HTTP over: a plain TCP stream or a TLS stream on top of one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed connection, so plain and TLS share all the code above the socket.
pub type BoxIo = Box<dyn Io>;

/// Largest head either side accepts (the proxy's own default cap is 32 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Number of header fields parsed per head.
const MAX_FIELDS: usize = 64;

/// How a message body ends (RFC 9112 §6.3), as far as the bench needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// The parts of a request head the fixture upstream looks at.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub framing: Framing,
    /// Whether the `Authorization` value equals the expected one (see [`Wire::read_request_head`]).
    pub auth_ok: bool,
    /// `Connection: close` was sent.
    pub close: bool,
}

/// The parts of a response head the load generator looks at.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    /// The server will close after this response.
    pub close: bool,
}

/// A connection with a read buffer.
pub struct Wire {
    pub io: BoxIo,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    read_timeout: Duration,
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn parse_u64(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.trim_ascii()).ok()?.parse().ok()
}

impl Wire {
    pub fn new(io: BoxIo, capacity: usize, read_timeout: Duration) -> Wire {
        Wire {
            io,
            buf: vec![0; capacity.max(1024)],
            start: 0,
            end: 0,
            read_timeout,
        }
    }

    /// Changes the bound on each read (held streams wait longer than requests do).
    pub fn set_read_timeout(&mut self, limit: Duration) {
        self.read_timeout = limit;
    }

    /// Bytes read from the socket and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once more from the socket. Returns the number of new bytes, 0 at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_HEAD {
                let len = (self.buf.len() * 2).min(MAX_HEAD);
                self.buf.resize(len, 0);
            } else {
                return Err(invalid("line or head too long"));
            }
        }
        let read = self.io.read(&mut self.buf[self.end..]);
        let n = tokio::time::timeout(self.read_timeout, read)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read timed out"))??;
        self.end += n;
        Ok(n)
    }

    /// Makes sure at least one byte is buffered; end of stream is an error here.
    async fn fill_some(&mut self) -> io::Result<()> {
        if self.start == self.end && self.fill().await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Writes all of `bytes` and flushes (TLS streams buffer records until flushed).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Reads a request head. `Ok(None)` when the peer closed cleanly before sending anything.
    /// `expected_auth` is compared with the `Authorization` value, byte for byte.
    pub async fn read_request_head(
        &mut self,
        expected_auth: &[u8],
    ) -> io::Result<Option<RequestHead>> {
        loop {
            if self.start < self.end {
                let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                let mut req = httparse::Request::new(&mut fields);
                match req.parse(self.buffered()) {
                    Ok(httparse::Status::Complete(len)) => {
                        let mut head = RequestHead {
                            method: req.method.unwrap_or("").to_string(),
                            path: req.path.unwrap_or("").to_string(),
                            framing: Framing::Empty,
                            auth_ok: false,
                            close: false,
                        };
                        let mut auth_count = 0;
                        for f in req.headers.iter() {
                            if f.name.eq_ignore_ascii_case("content-length") {
                                let n = parse_u64(f.value).ok_or(invalid("bad content-length"))?;
                                head.framing = Framing::Length(n);
                            } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
                                if has_token(f.value, "chunked") {
                                    head.framing = Framing::Chunked;
                                }
                            } else if f.name.eq_ignore_ascii_case("authorization") {
                                auth_count += 1;
                                // The token, or one the bench rotated in (`--rotate-ms`).
                                head.auth_ok = f.value == expected_auth
                                    || f.value.starts_with(b"Bearer sk-ant-bench-rotated-");
                            } else if f.name.eq_ignore_ascii_case("connection") {
                                head.close |= has_token(f.value, "close");
                            }
                        }
                        head.auth_ok &= auth_count == 1;
                        self.consume(len);
                        return Ok(Some(head));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(invalid("malformed request head")),
                }
            }
            if self.fill().await? == 0 {
                return if self.start == self.end {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Reads a final response head (1xx interim responses are skipped).
    /// `head_request`: the request was HEAD, so the response has no body.
    pub async fn read_response_head(&mut self, head_request: bool) -> io::Result<ResponseHead> {
        loop {
            if self.start < self.end {
                let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                let mut resp = httparse::Response::new(&mut fields);
                match resp.parse(self.buffered()) {
                    Ok(httparse::Status::Complete(len)) => {
                        let status = resp.code.unwrap_or(0);
                        let mut framing = Framing::UntilClose;
                        let mut close = resp.version == Some(0);
                        for f in resp.headers.iter() {
                            if f.name.eq_ignore_ascii_case("content-length") {
                                if framing != Framing::Chunked {
                                    let n =
                                        parse_u64(f.value).ok_or(invalid("bad content-length"))?;
                                    framing = Framing::Length(n);
                                }
                            } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
                                if has_token(f.value, "chunked") {
                                    framing = Framing::Chunked;
                                }
                            } else if f.name.eq_ignore_ascii_case("connection") {
                                close |= has_token(f.value, "close");
                            }
                        }
                        self.consume(len);
                        if (100..200).contains(&status) {
                            continue;
                        }
                        if head_request || status == 204 || status == 304 {
                            framing = Framing::Empty;
                        }
                        if framing == Framing::UntilClose {
                            close = true;
                        }
                        return Ok(ResponseHead {
                            status,
                            framing,
                            close,
                        });
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(invalid("malformed response head")),
                }
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads one CRLF- (or LF-) terminated line and hands it, without the line ending, to `f`.
    async fn read_line<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> io::Result<T> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', self.buffered()) {
                let line = &self.buf[self.start..self.start + i];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let out = f(line);
                self.consume(i + 1);
                return Ok(out);
            }
            if self.end - self.start > MAX_LINE {
                return Err(invalid("line too long"));
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// Where a body reader is (RFC 9112 §7.1 for the chunked states).
#[derive(Debug)]
enum BodyState {
    /// `remaining` bytes of a Content-Length body.
    Length { remaining: u64 },
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data.
    ChunkData { remaining: u64 },
    /// Expecting the CRLF that ends a chunk's data.
    ChunkDataEnd,
    /// Until end of stream.
    UntilClose,
    /// Body complete.
    Done,
}

/// Pulls a body out of a [`Wire`] piece by piece, so a reader can stop after the first event of
/// a stream and resume later (the held-streams scenario does).
#[derive(Debug)]
pub struct Body {
    state: BodyState,
}

impl Body {
    pub fn new(framing: Framing) -> Body {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length { remaining: n },
            Framing::Chunked => BodyState::ChunkSize,
            Framing::UntilClose => BodyState::UntilClose,
        };
        Body { state }
    }

    /// The next piece of body data, or `None` once the body is complete.
    pub async fn next<'w>(&mut self, wire: &'w mut Wire) -> io::Result<Option<&'w [u8]>> {
        // Advance through framing until data is buffered or the body is done; the borrow of
        // the buffer is taken only after the last await.
        loop {
            match self.state {
                BodyState::Done => return Ok(None),
                BodyState::Length { .. } | BodyState::ChunkData { .. } => {
                    wire.fill_some().await?;
                    break;
                }
                BodyState::UntilClose => {
                    if wire.start == wire.end && wire.fill().await? == 0 {
                        self.state = BodyState::Done;
                        return Ok(None);
                    }
                    break;
                }
                BodyState::ChunkDataEnd => {
                    if !wire.read_line(|line| line.is_empty()).await? {
                        return Err(invalid("chunk data not followed by CRLF"));
                    }
                    self.state = BodyState::ChunkSize;
                }
                BodyState::ChunkSize => {
                    let size = wire
                        .read_line(|line| {
                            let digits = line.split(|&b| b == b';').next().unwrap_or(b"");
                            std::str::from_utf8(digits)
                                .ok()
                                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                        })
                        .await?
                        .ok_or(invalid("bad chunk size"))?;
                    if size == 0 {
                        // Trailer section, ended by an empty line.
                        while !wire.read_line(|line| line.is_empty()).await? {}
                        self.state = BodyState::Done;
                        return Ok(None);
                    }
                    self.state = BodyState::ChunkData { remaining: size };
                }
            }
        }
        let available = (wire.end - wire.start) as u64;
        let n = match &mut self.state {
            BodyState::Length { remaining } => {
                let n = available.min(*remaining);
                *remaining -= n;
                if *remaining == 0 {
                    self.state = BodyState::Done;
                }
                n
            }
            BodyState::ChunkData { remaining } => {
                let n = available.min(*remaining);
                *remaining -= n;
                if *remaining == 0 {
                    self.state = BodyState::ChunkDataEnd;
                }
                n
            }
            _ => available,
        } as usize;
        // `start` moves past the piece; the bytes stay in place until the next `fill`.
        let from = wire.start;
        wire.start += n;
        Ok(Some(&wire.buf[from..from + n]))
    }

    /// Reads the body to its end, handing each piece to `sink`. Returns the byte count.
    pub async fn drain(&mut self, wire: &mut Wire, mut sink: impl FnMut(&[u8])) -> io::Result<u64> {
        let mut total = 0u64;
        while let Some(piece) = self.next(wire).await? {
            total += piece.len() as u64;
            sink(piece);
        }
        Ok(total)
    }
}
