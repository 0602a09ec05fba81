//! Pure body framing for both directions: which framing fields a head carries and what they
//! decide (RFC 9112 §6.3), the incremental chunked decoder (RFC 9112 §7.1), the canonical chunk
//! encoder, and the request-body framer that uses them.
//!
//! httparse's `parse_chunk_size` accepts an empty size line as size 0, LF and NUL inside
//! extensions, and a bare `;` (docs/http-rules.md §1.5). This decoder refuses all of them: it is a
//! state machine with one variant per expected token, fed any split of the input, that reports
//! which bytes are payload and which are framing. Nothing is buffered: it holds counters only.

use crate::error::Problem;
use crate::limits;
use crate::syntax::{hex, is_tchar, is_text_byte, parse_content_length, push_hex};

/// How a request body is framed (RFC 9112 §6.3), decided once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No Content-Length and no Transfer-Encoding: zero length (R9).
    Empty,
    /// Exactly this many bytes (possibly zero).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl BodyKind {
    /// Whether body bytes follow the head.
    pub fn has_bytes(self) -> bool {
        !matches!(self, BodyKind::Empty | BodyKind::Length(0))
    }
}

/// The framing fields of one head, collected field by field, then decided once.
#[derive(Debug, Clone, Copy, Default)]
pub struct FramingFields<'a> {
    content_length: Option<u64>,
    cl_count: usize,
    transfer_encoding: Option<&'a [u8]>,
    te_count: usize,
}

/// What the framing fields say, for a message that may have a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldFraming {
    /// Neither field: a request has no body (R9), a response runs until close (§6.3 rule 8).
    Absent,
    /// `Content-Length`.
    Length(u64),
    /// Exactly one `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why the framing fields cannot frame a message with certainty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Both fields, repeated fields, an invalid Content-Length, or codings in HTTP/1.0.
    Ambiguous,
    /// One Transfer-Encoding field that is not exactly `chunked` (the request side tells
    /// an unsupported coding from a malformed list with [`transfer_coding_problem`]).
    Coding,
}

impl<'a> FramingFields<'a> {
    /// Looks at one field; returns whether it was a framing field. An invalid Content-Length
    /// is refused at once (R6/R8: digits only, one value, checked arithmetic).
    pub fn see(&mut self, name: &[u8], value: &'a [u8]) -> Result<bool, FramingError> {
        if name.eq_ignore_ascii_case(b"content-length") {
            self.cl_count += 1;
            self.content_length = Some(parse_content_length(value).ok_or(FramingError::Ambiguous)?);
            Ok(true)
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.te_count += 1;
            self.transfer_encoding = Some(value);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Both fields, or a repeated Content-Length (even with equal values): refused even
    /// where no body follows, since a sender must not send them (RFC 9112 §6.1, §6.3; R1, R6,
    /// R7).
    pub fn conflicting(&self) -> bool {
        (self.transfer_encoding.is_some() && self.content_length.is_some()) || self.cl_count > 1
    }

    /// The single Transfer-Encoding value, if any.
    pub fn transfer_encoding(&self) -> Option<&'a [u8]> {
        self.transfer_encoding
    }

    /// RFC 9112 §6.3 for a message that may have a body, in its order.
    pub fn decide(&self, http10: bool) -> Result<FieldFraming, FramingError> {
        if self.conflicting() {
            return Err(FramingError::Ambiguous);
        }
        match (self.transfer_encoding, self.content_length) {
            // R5, RFC 9112 §6.1: HTTP/1.0 has no transfer codings.
            (Some(_), _) if http10 => Err(FramingError::Ambiguous),
            // R4: codings spread over several fields.
            (Some(_), _) if self.te_count > 1 => Err(FramingError::Ambiguous),
            (Some(v), _) if v.eq_ignore_ascii_case(b"chunked") => Ok(FieldFraming::Chunked),
            (Some(_), _) => Err(FramingError::Coding),
            (None, Some(n)) => Ok(FieldFraming::Length(n)),
            (None, None) => Ok(FieldFraming::Absent),
        }
    }
}

/// Which refusal a request's Transfer-Encoding that is not exactly `chunked` earns (RFC 9112
/// §6.1: an unknown coding SHOULD get 501; a list we cannot frame is a 400).
pub fn transfer_coding_problem(v: &[u8]) -> Problem {
    let chunked = |i: &[u8]| {
        let name = i.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
        name.eq_ignore_ascii_case(b"chunked")
    };
    let items = crate::syntax::list_items(v);
    let (mut count, mut chunked_count, mut last_chunked) = (0, 0, false);
    for item in items {
        count += 1;
        last_chunked = chunked(item);
        chunked_count += usize::from(last_chunked);
    }
    match chunked_count {
        // R3: only codings we do not implement.
        0 => Problem::UnsupportedCoding,
        // Other codings before a final chunked: we do not decode gzip and friends.
        1 if count > 1 && last_chunked => Problem::UnsupportedCoding,
        // R12 (`chunked;x=y`), R2 (chunked not final); R4 (chunked more than once).
        _ => Problem::BadFraming,
    }
}

/// Limits a decoder enforces; requests and responses use different ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Largest total payload (R8); breach is [`ChunkError::TooLarge`].
    pub max_body: u64,
    /// Longest extension text on one chunk line (R11).
    pub max_ext_line: usize,
    /// Extension bytes over the whole body.
    pub max_ext_total: usize,
    /// Trailer section bytes (R13: read within a bound).
    pub max_trailers: usize,
}

impl ChunkLimits {
    /// For upstream responses: the upstream is trusted for content, not for framing, so only
    /// arithmetic and line sizes are bounded.
    pub const RESPONSE: ChunkLimits = ChunkLimits {
        max_body: u64::MAX,
        max_ext_line: limits::MAX_RESPONSE_CHUNK_EXT,
        max_ext_total: limits::MAX_RESPONSE_CHUNK_EXT_TOTAL,
        max_trailers: limits::MAX_RESPONSE_TRAILER_BYTES,
    };
}

/// Why a chunked body was refused. Carries no input bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Not the chunked grammar (size line, CRLF after data, trailer line).
    Malformed,
    /// Total payload over [`ChunkLimits::max_body`], or a size of more than
    /// [`limits::MAX_CHUNK_SIZE_DIGITS`] hex digits.
    TooLarge,
    /// Extensions over their limits.
    ExtensionTooLong,
    /// Trailer section over its limit.
    TrailersTooLarge,
}

/// One expected token per state, as in hyper's chunked decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first hex digit of a chunk size: at least one is required.
    SizeStart,
    /// More hex digits, or what ends them.
    Size,
    /// Whitespace after the size (BWS), before `;` or CR.
    SizeWs,
    /// After `;` (and BWS): an extension name must start here.
    ExtStart,
    /// Extension text up to CR.
    Ext,
    /// LF ending the size line.
    SizeLf,
    /// Payload bytes of the current chunk.
    Data,
    /// CR after the payload.
    DataCr,
    /// LF after the payload.
    DataLf,
    /// Start of a trailer field line, or CR of the final empty line.
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// LF ending a trailer field line.
    TrailerLf,
    /// LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// What [`ChunkedDecoder::step`] found at the front of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The first `n` bytes were framing (n may be 0 when more input is needed).
    Framing(usize),
    /// The first `n` bytes are payload.
    Data(usize),
    /// The first `n` bytes are chunk-extension or trailer text: framing, but text an upstream
    /// could fill with anything (the response scrubber masks the token in it too).
    Meta(usize),
    /// The first `n` bytes were framing and ended the body; anything after is not part of it.
    Done(usize),
}

/// The incremental chunked decoder.
#[derive(Debug, Clone, Copy)]
pub struct ChunkedDecoder {
    state: State,
    limits: ChunkLimits,
    /// The size being read, then the payload left in the current chunk.
    size: u64,
    /// Hex digits read for the current size (at most [`limits::MAX_CHUNK_SIZE_DIGITS`]).
    digits: u8,
    /// Extension bytes on the current line.
    ext_line: usize,
    /// Extension bytes so far.
    ext_total: usize,
    /// Trailer bytes so far.
    trailers: usize,
    /// Payload bytes so far.
    total: u64,
}

impl ChunkedDecoder {
    pub fn new(limits: ChunkLimits) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::SizeStart,
            limits,
            size: 0,
            digits: 0,
            ext_line: 0,
            ext_total: 0,
            trailers: 0,
            total: 0,
        }
    }

    /// Whether the terminating empty line has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the last chunk was read: only trailers (or the end) can follow, no payload.
    pub fn payload_done(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart | State::Trailer | State::TrailerLf | State::EndLf | State::Done
        )
    }

    /// Payload bytes announced by the chunk sizes read so far (counted when a size line
    /// ends, before the chunk's data arrives).
    pub fn payload_len(&self) -> u64 {
        self.total
    }

    /// Classifies the front of `input`. Call again with the rest; an empty input, or a
    /// `Framing(n)` that consumed all of it, means more bytes are needed.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        match self.state {
            State::Done => return Ok(Step::Done(0)),
            State::Data if input.is_empty() => return Ok(Step::Framing(0)),
            State::Data => {
                // `size` is the payload left; it is > 0 in this state.
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Step::Data(n));
            }
            _ => {}
        }
        // A run of framing bytes, or of extension/trailer text: a byte of the other kind ends
        // it, un-consumed (the decoder is restored to before that byte).
        let mut run_is_meta = None;
        for (i, &b) in input.iter().enumerate() {
            let before = *self;
            self.state = self.next(b)?;
            let is_meta = matches!(self.state, State::Ext | State::Trailer);
            match run_is_meta {
                None => run_is_meta = Some(is_meta),
                Some(m) if m != is_meta => {
                    *self = before;
                    return Ok(if m { Step::Meta(i) } else { Step::Framing(i) });
                }
                Some(_) => {}
            }
            match self.state {
                State::Data => return Ok(Step::Framing(i + 1)),
                State::Done => return Ok(Step::Done(i + 1)),
                _ => {}
            }
        }
        Ok(if run_is_meta == Some(true) {
            Step::Meta(input.len())
        } else {
            Step::Framing(input.len())
        })
    }

    /// One framing byte. Each arm is one state of the grammar:
    /// `chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF`,
    /// `last-chunk = 1*"0" [ chunk-ext ] CRLF`, `trailer-section CRLF` (RFC 9112 §7.1).
    fn next(&mut self, b: u8) -> Result<State, ChunkError> {
        use State::*;
        Ok(match (self.state, b) {
            // At least one HEXDIG: an empty size line is not size 0 (http-garden bug 17).
            (SizeStart, _) => {
                self.size = u64::from(hex(b).ok_or(ChunkError::Malformed)?);
                self.digits = 1;
                Size
            }
            (Size, _) if hex(b).is_some() => {
                // 16 hex digits fill u64 exactly; a 17th would overflow (R8).
                if usize::from(self.digits) == limits::MAX_CHUNK_SIZE_DIGITS {
                    return Err(ChunkError::TooLarge);
                }
                self.digits += 1;
                self.size = (self.size << 4) | u64::from(hex(b).unwrap_or(0));
                Size
            }
            // BWS after the size counts toward the extension limits: unbounded whitespace
            // would be an unbounded line.
            (Size | SizeWs, b' ' | b'\t') => self.ext_byte(SizeWs)?,
            (Size | SizeWs, b';') => ExtStart,
            (Size | SizeWs, b'\r') => SizeLf,
            (ExtStart, b' ' | b'\t') => self.ext_byte(ExtStart)?,
            // chunk-ext-name is a token: a bare `;` is refused (docs/http-rules.md §1.5).
            (ExtStart, _) if is_tchar(b) => self.ext_byte(Ext)?,
            (Ext, b'\r') => SizeLf,
            // LF, NUL and other controls inside an extension: the TERM.EXT smuggling vector
            // (CVE-2025-55315 class) is refused, not skipped.
            (Ext, _) if is_text_byte(b) => self.ext_byte(Ext)?,
            (SizeLf, b'\n') => {
                self.ext_line = 0;
                if self.size == 0 {
                    TrailerStart
                } else {
                    self.total = self
                        .total
                        .checked_add(self.size)
                        .filter(|&t| t <= self.limits.max_body)
                        .ok_or(ChunkError::TooLarge)?;
                    Data
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => SizeStart,
            (TrailerStart, b'\r') => EndLf,
            // A trailer line starts with a field name; whitespace here would be obs-fold.
            (TrailerStart, _) if is_tchar(b) => self.trailer_byte(Trailer)?,
            (Trailer, b'\r') => self.trailer_byte(TrailerLf)?,
            (Trailer, _) if is_text_byte(b) => self.trailer_byte(Trailer)?,
            (TrailerLf, b'\n') => self.trailer_byte(TrailerStart)?,
            (EndLf, b'\n') => Done,
            _ => return Err(ChunkError::Malformed),
        })
    }

    fn ext_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.ext_line += 1;
        self.ext_total += 1;
        if self.ext_line > self.limits.max_ext_line || self.ext_total > self.limits.max_ext_total {
            return Err(ChunkError::ExtensionTooLong);
        }
        Ok(next)
    }

    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.trailers += 1;
        if self.trailers > self.limits.max_trailers {
            return Err(ChunkError::TrailersTooLarge);
        }
        Ok(next)
    }
}

/// Appends a canonical chunk header `<hex>\r\n` for `len` payload bytes (`len > 0`).
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    push_hex(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

/// The canonical last chunk: no extensions, no trailers (R13: request trailers are dropped).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a request body is framed upstream, as bytes arrive: Content-Length bodies as they
/// are, chunked bodies decoded and re-encoded canonically (docs/http-rules.md §1.7).
pub enum RequestBody {
    /// `remaining` bytes of a Content-Length body: forwarded as they are.
    Length { remaining: u64 },
    /// A chunked body: decoded, and re-encoded canonically (docs/http-rules.md §1.7).
    Chunked(ChunkedDecoder),
    /// The body was sent whole.
    Done,
}

/// What [`RequestBody::frame`] decided about the front of the client's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// Forward `input[..n]` unchanged.
    Raw(usize),
    /// `n` input bytes were consumed; forward what was appended to `out`.
    Encoded(usize),
}

impl RequestBody {
    pub fn new(body: BodyKind, max_body: u64, max_ext: usize, max_trailers: usize) -> RequestBody {
        match body {
            BodyKind::Empty | BodyKind::Length(0) => RequestBody::Done,
            BodyKind::Length(n) => RequestBody::Length { remaining: n },
            BodyKind::Chunked => RequestBody::Chunked(ChunkedDecoder::new(ChunkLimits {
                max_body,
                max_ext_line: max_ext,
                max_ext_total: limits::MAX_CHUNK_EXT_TOTAL,
                max_trailers,
            })),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, RequestBody::Done)
    }

    /// Frames the body bytes at the front of `input`; stops at the end of the body, so bytes
    /// of a pipelined request stay in the buffer.
    pub fn frame(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Framed, Problem> {
        match self {
            RequestBody::Done => Ok(Framed::Raw(0)),
            RequestBody::Length { remaining } => {
                let n = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                *remaining -= n as u64;
                if *remaining == 0 {
                    *self = RequestBody::Done;
                }
                Ok(Framed::Raw(n))
            }
            RequestBody::Chunked(decoder) => {
                let mut pos = 0;
                while pos < input.len() {
                    match decoder.step(&input[pos..]).map_err(chunk_problem)? {
                        Step::Data(n) => {
                            write_chunk_header(out, n);
                            out.extend_from_slice(&input[pos..pos + n]);
                            out.extend_from_slice(b"\r\n");
                            pos += n;
                        }
                        // Extensions are dropped when re-chunking (R11).
                        Step::Framing(n) | Step::Meta(n) => pos += n,
                        Step::Done(n) => {
                            // R13: trailers were read within their bound and are dropped.
                            out.extend_from_slice(LAST_CHUNK);
                            *self = RequestBody::Done;
                            return Ok(Framed::Encoded(pos + n));
                        }
                    }
                }
                Ok(Framed::Encoded(pos))
            }
        }
    }
}

pub fn chunk_problem(e: ChunkError) -> Problem {
    match e {
        ChunkError::Malformed | ChunkError::ExtensionTooLong => Problem::BadChunk,
        ChunkError::TooLarge => Problem::BodyTooLarge,
        ChunkError::TrailersTooLarge => Problem::TrailersTooLarge,
    }
}

/// A naive whole-input chunked decoder, written independently of [`ChunkedDecoder`] (line by
/// line with slices, no state machine), as the oracle for split-point tests and the `chunked`
/// fuzz target; and for the one body the proxy reads whole, a federation token exchange's
/// answer (`federation`), where a streaming decoder buys nothing.
///
/// Returns `Ok(Some((payload, consumed)))` for a complete body, `Ok(None)` when the input ends
/// early (the unterminated tail is not checked), or an error for any complete line that breaks
/// the grammar or a limit.
pub fn decode_naive(
    input: &[u8],
    limits: ChunkLimits,
) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    let (mut pos, mut total, mut ext_total) = (0usize, 0u64, 0usize);
    let mut payload = Vec::new();
    loop {
        let Some((size_line, next)) = naive_line(input, pos) else {
            return Ok(None);
        };
        // chunk-size [BWS] [; ext] : split at the first ';'.
        let (size_part, ext) = match size_line.iter().position(|&b| b == b';') {
            Some(i) => (&size_line[..i], Some(&size_line[i + 1..])),
            None => (size_line, None),
        };
        let digits = size_part.trim_ascii_end();
        if digits.is_empty()
            || !digits.iter().all(u8::is_ascii_hexdigit)
            || size_part[digits.len()..]
                .iter()
                .any(|b| !matches!(b, b' ' | b'\t'))
        {
            return Err(ChunkError::Malformed);
        }
        if digits.len() > limits::MAX_CHUNK_SIZE_DIGITS {
            return Err(ChunkError::TooLarge);
        }
        if let Some(ext) = ext {
            let ext = &ext[ext.iter().take_while(|b| matches!(b, b' ' | b'\t')).count()..];
            if ext.first().is_none_or(|&b| !is_tchar(b)) || !ext.iter().all(|&b| is_text_byte(b)) {
                return Err(ChunkError::Malformed);
            }
        }
        // Everything after the digits but the `;` counts toward the extension limits.
        let counted = size_line.len() - digits.len() - usize::from(ext.is_some());
        ext_total += counted;
        if counted > limits.max_ext_line || ext_total > limits.max_ext_total {
            return Err(ChunkError::ExtensionTooLong);
        }
        let size = u64::from_str_radix(std::str::from_utf8(digits).unwrap_or("x"), 16)
            .map_err(|_| ChunkError::Malformed)?;
        pos = next;
        if size == 0 {
            break;
        }
        total = total
            .checked_add(size)
            .filter(|&t| t <= limits.max_body)
            .ok_or(ChunkError::TooLarge)?;
        let end = pos.checked_add(usize::try_from(size).map_err(|_| ChunkError::TooLarge)?);
        let Some(end) = end.filter(|&e| e <= input.len()) else {
            return Ok(None);
        };
        payload.extend_from_slice(&input[pos..end]);
        match input.get(end..end + 2) {
            Some(b"\r\n") => pos = end + 2,
            Some(_) => return Err(ChunkError::Malformed),
            None if input.get(end).is_some_and(|&b| b != b'\r') => {
                return Err(ChunkError::Malformed)
            }
            None => return Ok(None),
        }
    }
    naive_trailers(input, pos, limits).map(|end| end.map(|end| (payload, end)))
}

/// The oracle's trailer section from `pos`: field lines, then an empty line; returns where
/// the body ends.
fn naive_trailers(
    input: &[u8],
    mut pos: usize,
    limits: ChunkLimits,
) -> Result<Option<usize>, ChunkError> {
    let mut trailers = 0usize;
    loop {
        let Some((field, next)) = naive_line(input, pos) else {
            return Ok(None);
        };
        if field.is_empty() {
            return Ok(Some(next));
        }
        if !is_tchar(field[0]) || !field.iter().all(|&b| is_text_byte(b)) {
            return Err(ChunkError::Malformed);
        }
        trailers += field.len() + 2;
        if trailers > limits.max_trailers {
            return Err(ChunkError::TrailersTooLarge);
        }
        pos = next;
    }
}

/// The oracle's line splitter: the bytes up to the next CRLF, and where the next line starts.
fn naive_line(input: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let rel = input[from..].windows(2).position(|w| w == b"\r\n")?;
    Some((&input[from..from + rel], from + rel + 2))
}

#[cfg(test)]
mod tests;
