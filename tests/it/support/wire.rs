//! Byte-exact HTTP/1.1 reading over a blocking stream, shared by the raw client and the fixture
//! upstreams. Strict on purpose: heads must end in CRLF CRLF, chunk lines must be `HEX[;ext]CRLF`.
//! Every read is bounded by the socket's read timeout, so nothing here can hang a test.

use std::io::{self, ErrorKind, Read, Write};
use std::sync::{Arc, Mutex};

/// Largest head the harness accepts from either side before calling it an error.
pub const MAX_HEAD: usize = 256 * 1024;

/// Size of one socket read.
const READ_SIZE: usize = 64 * 1024;

fn invalid(what: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what.to_string())
}

/// One header field as it arrived: name bytes as sent (case preserved), value as httparse saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: Vec<u8>,
}

/// Case-insensitive look-ups over a list of fields.
pub trait Fields {
    fn fields(&self) -> &[Field];

    /// Every value of the fields called `name` (any case), in order.
    fn all(&self, name: &str) -> Vec<&[u8]> {
        self.fields()
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value.as_slice())
            .collect()
    }

    /// The value of the only field called `name`; None if absent. Panics if repeated.
    fn header(&self, name: &str) -> Option<&[u8]> {
        let all = self.all(name);
        assert!(all.len() <= 1, "field {name} appears {} times", all.len());
        all.first().copied()
    }

    /// Like `header`, as a lossy string.
    fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    /// Field names in order, as sent.
    fn names(&self) -> Vec<String> {
        self.fields().iter().map(|f| f.name.clone()).collect()
    }
}

/// A parsed request head, with the exact bytes it was parsed from.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub raw: Vec<u8>,
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub fields: Vec<Field>,
}

impl Fields for RequestHead {
    fn fields(&self) -> &[Field] {
        &self.fields
    }
}

impl RequestHead {
    pub fn parse(raw: &[u8]) -> io::Result<RequestHead> {
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(raw) {
            Ok(httparse::Status::Complete(n)) if n == raw.len() => {}
            Ok(_) => return Err(invalid("request head incomplete")),
            Err(_) => return Err(invalid("request head unparseable")),
        }
        Ok(RequestHead {
            method: req.method.unwrap_or_default().to_string(),
            target: req.path.unwrap_or_default().to_string(),
            minor: req.version.unwrap_or(1),
            fields: req
                .headers
                .iter()
                .map(|h| Field {
                    name: h.name.to_string(),
                    value: h.value.to_vec(),
                })
                .collect(),
            raw: raw.to_vec(),
        })
    }

    pub fn raw_str(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// A parsed response head, with the exact bytes it was parsed from.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub raw: Vec<u8>,
    pub minor: u8,
    pub status: u16,
    pub reason: String,
    pub fields: Vec<Field>,
}

impl Fields for ResponseHead {
    fn fields(&self) -> &[Field] {
        &self.fields
    }
}

impl ResponseHead {
    pub fn parse(raw: &[u8]) -> io::Result<ResponseHead> {
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(raw) {
            Ok(httparse::Status::Complete(n)) if n == raw.len() => {}
            Ok(_) => return Err(invalid("response head incomplete")),
            Err(_) => return Err(invalid("response head unparseable")),
        }
        Ok(ResponseHead {
            minor: resp.version.unwrap_or(1),
            status: resp.code.unwrap_or(0),
            reason: resp.reason.unwrap_or_default().to_string(),
            fields: resp
                .headers
                .iter()
                .map(|h| Field {
                    name: h.name.to_string(),
                    value: h.value.to_vec(),
                })
                .collect(),
            raw: raw.to_vec(),
        })
    }

    pub fn raw_str(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// True if a `Connection` field lists `close`.
    pub fn says_close(&self) -> bool {
        self.all("connection").iter().any(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    }
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn is_chunked(fields: &[Field]) -> bool {
    fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("transfer-encoding"))
        .any(|f| {
            String::from_utf8_lossy(&f.value)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("chunked"))
        })
}

fn content_length(fields: &[Field]) -> io::Result<Option<u64>> {
    let mut found = None;
    for f in fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("content-length"))
    {
        let n: u64 = std::str::from_utf8(&f.value)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| invalid("bad content-length"))?;
        if found.is_some_and(|m| m != n) {
            return Err(invalid("conflicting content-length"));
        }
        found = Some(n);
    }
    Ok(found)
}

/// Request body framing: chunked, Content-Length, or none (requests are never close-delimited).
pub fn request_framing(head: &RequestHead) -> io::Result<Framing> {
    if is_chunked(&head.fields) {
        return Ok(Framing::Chunked);
    }
    Ok(match content_length(&head.fields)? {
        Some(n) => Framing::Length(n),
        None => Framing::None,
    })
}

/// Response body framing given the request method (HEAD, 1xx, 204, 304 have no body).
pub fn response_framing(head: &ResponseHead, method: &str) -> io::Result<Framing> {
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304
    {
        return Ok(Framing::None);
    }
    if is_chunked(&head.fields) {
        return Ok(Framing::Chunked);
    }
    Ok(match content_length(&head.fields)? {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// A decoded body with facts about how it was framed on the wire.
#[derive(Clone, Debug, Default)]
pub struct Body {
    /// The payload (chunked framing removed).
    pub data: Vec<u8>,
    /// The body bytes exactly as they were on the wire.
    pub raw: Vec<u8>,
    /// Chunked only: true if any chunk line carried an extension.
    pub had_extensions: bool,
    /// Chunked only: the trailer section bytes (without the final CRLF).
    pub trailers: Vec<u8>,
    /// False if the peer closed before the body was complete (only from the lenient readers).
    pub complete: bool,
}

/// A blocking reader/writer with a look-ahead buffer, so pipelined messages stay intact.
/// `record`, when set, receives a copy of every byte read from the stream.
pub struct Wire<S> {
    pub stream: S,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    record: Option<Arc<Mutex<Vec<u8>>>>,
    keep_raw: bool,
}

impl<S: Read + Write> Wire<S> {
    pub fn new(stream: S) -> Wire<S> {
        Wire {
            stream,
            buf: Vec::new(),
            start: 0,
            eof: false,
            record: None,
            keep_raw: true,
        }
    }

    pub fn recording(mut self, record: Arc<Mutex<Vec<u8>>>) -> Wire<S> {
        self.record = Some(record);
        self
    }

    /// Skip keeping `Body::raw` (large uploads: the connection record already has every byte).
    pub fn set_keep_raw(&mut self, keep: bool) {
        self.keep_raw = keep;
    }

    /// Bytes received but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) -> Vec<u8> {
        let out = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        out
    }

    /// One read from the stream into the buffer. Ok(0) at end of stream.
    pub fn fill(&mut self) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > READ_SIZE * 4 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_SIZE, 0);
        let res = loop {
            match self.stream.read(&mut self.buf[len..]) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(len);
                // A TLS peer that closes without close_notify surfaces as UnexpectedEof.
                if e.kind() == ErrorKind::UnexpectedEof {
                    self.eof = true;
                    return Ok(0);
                }
                return Err(e);
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            self.eof = true;
        } else if let Some(rec) = &self.record {
            rec.lock()
                .unwrap()
                .extend_from_slice(&self.buf[len..len + n]);
        }
        Ok(n)
    }

    /// Read one head (through CRLF CRLF). Ok(None) if the stream ended cleanly before any byte.
    pub fn read_head_bytes(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut searched: usize = 0;
        loop {
            let avail = &self.buf[self.start..];
            if let Some(i) = find(&avail[searched.saturating_sub(3)..], b"\r\n\r\n") {
                let end = searched.saturating_sub(3) + i + 4;
                return Ok(Some(self.consume(end)));
            }
            searched = avail.len();
            if searched > MAX_HEAD {
                return Err(invalid("head too large"));
            }
            if self.fill()? == 0 {
                return if self.buffered().is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "stream ended inside a head",
                    ))
                };
            }
        }
    }

    /// Read exactly `n` bytes (strict).
    pub fn read_exact_bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let (data, complete) = self.read_up_to(n)?;
        if !complete {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("stream ended after {} of {n} bytes", data.len()),
            ));
        }
        Ok(data)
    }

    /// Read up to `n` bytes, stopping early only at end of stream; says whether all `n` came.
    pub fn read_up_to(&mut self, n: usize) -> io::Result<(Vec<u8>, bool)> {
        while self.buffered().len() < n {
            if self.fill()? == 0 {
                let have = self.buffered().len();
                return Ok((self.consume(have), false));
            }
        }
        Ok((self.consume(n), true))
    }

    /// Read one line ending in CRLF (returned without it). Bare LF is an error.
    pub fn read_line(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let mut searched: usize = 0;
        loop {
            let avail = &self.buf[self.start..];
            if let Some(i) = avail[searched..].iter().position(|&b| b == b'\n') {
                let i = searched + i;
                if i == 0 || avail[i - 1] != b'\r' {
                    return Err(invalid("bare LF"));
                }
                let line = self.consume(i + 1);
                return Ok(line[..line.len() - 2].to_vec());
            }
            searched = avail.len();
            if searched > max {
                return Err(invalid("line too long"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "stream ended inside a line",
                ));
            }
        }
    }

    /// Read one chunk of a chunked body. Ok(None) after the last chunk and the trailer section,
    /// whose bytes are appended to `trailers`. `raw` receives the wire bytes, `ext` is set if the
    /// chunk line had an extension.
    pub fn read_chunk(
        &mut self,
        raw: Option<&mut Vec<u8>>,
        ext: &mut bool,
        trailers: &mut Vec<u8>,
    ) -> io::Result<Option<Vec<u8>>> {
        let mut sink = Vec::new();
        let raw = raw.unwrap_or(&mut sink);
        let line = self.read_line(8192)?;
        raw.extend_from_slice(&line);
        raw.extend_from_slice(b"\r\n");
        let (size_part, has_ext) = match line.iter().position(|&b| b == b';') {
            Some(i) => (&line[..i], true),
            None => (&line[..], false),
        };
        *ext |= has_ext;
        let size_str = std::str::from_utf8(size_part).map_err(|_| invalid("chunk size"))?;
        if size_str.is_empty() || !size_str.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("chunk size not hex"));
        }
        let size = usize::from_str_radix(size_str, 16).map_err(|_| invalid("chunk size"))?;
        if size == 0 {
            loop {
                let t = self.read_line(8192)?;
                raw.extend_from_slice(&t);
                raw.extend_from_slice(b"\r\n");
                if t.is_empty() {
                    return Ok(None);
                }
                trailers.extend_from_slice(&t);
                trailers.extend_from_slice(b"\r\n");
            }
        }
        let data = self.read_exact_bytes(size)?;
        let crlf = self.read_exact_bytes(2)?;
        if crlf != b"\r\n" {
            return Err(invalid("chunk data not followed by CRLF"));
        }
        raw.extend_from_slice(&data);
        raw.extend_from_slice(b"\r\n");
        Ok(Some(data))
    }

    /// Read a whole body with the given framing. Strict: a truncated body is an error.
    pub fn read_body(&mut self, framing: Framing) -> io::Result<Body> {
        let body = self.read_body_lenient(framing)?;
        if !body.complete {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("body truncated after {} bytes", body.data.len()),
            ));
        }
        Ok(body)
    }

    /// Read a whole body; a peer close before the end gives `complete: false` instead of an error.
    pub fn read_body_lenient(&mut self, framing: Framing) -> io::Result<Body> {
        let mut body = Body {
            complete: true,
            ..Body::default()
        };
        match framing {
            Framing::None => {}
            Framing::Length(n) => {
                let n = usize::try_from(n).map_err(|_| invalid("length"))?;
                let (data, complete) = self.read_up_to(n)?;
                body.complete = complete;
                if self.keep_raw {
                    body.raw = data.clone();
                }
                body.data = data;
            }
            Framing::UntilClose => {
                while self.fill()? != 0 {}
                let have = self.buffered().len();
                body.data = self.consume(have);
                if self.keep_raw {
                    body.raw = body.data.clone();
                }
            }
            Framing::Chunked => loop {
                let mut raw = Vec::new();
                let res =
                    self.read_chunk(Some(&mut raw), &mut body.had_extensions, &mut body.trailers);
                if self.keep_raw {
                    body.raw.extend_from_slice(&raw);
                }
                match res {
                    Ok(Some(data)) => body.data.extend_from_slice(&data),
                    Ok(None) => break,
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                        body.complete = false;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            },
        }
        Ok(body)
    }

    pub fn write_all_flush(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return if needle.is_empty() { Some(0) } else { None };
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// True if `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Encode `data` as one chunked body with the given chunk sizes (cycled), ending `0\r\n\r\n`.
pub fn chunked(data: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 16);
    let mut i = 0;
    let mut k = 0;
    while i < data.len() {
        let n = sizes[k % sizes.len()].max(1).min(data.len() - i);
        k += 1;
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&data[i..i + n]);
        out.extend_from_slice(b"\r\n");
        i += n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
