//! Pure: one direction of a WebSocket tunnel (RFC 6455), frame by frame. Bytes in, the bytes
//! that may be sent on and a decision out; no I/O.
//!
//! Frames are relayed as they come, never reassembled or re-framed: each header is read
//! (incrementally, it may split at any byte) and validated before any byte of it is written,
//! then its payload streams through. The upstream's payloads are masked with the same
//! split-safe [`Scrubber`] response bodies use, over the streams a reader reassembles:
//! - the data payloads (text, binary, continuation), concatenated across frames, fragments
//!   and messages, headers and control frames skipped: a control frame may come between two
//!   fragments (§5.4) and is not part of the message, so a token split by a ping is masked;
//! - each control payload on its own (at most 125 bytes, §5.5);
//! - every payload, data and control, in wire order, as one stream: a reader that logs or
//!   joins what it receives sees a token split between a data payload and a following ping or
//!   close reason, or across two pings, whole.
//!
//! Each view is scanned over the bytes as received (not as another view masked them), and a
//! byte any view masks is masked. A token spread across frames or fragments is therefore
//! masked, and since masking keeps lengths, every header stays valid. The wire-order view's
//! hold is at most `k - 1` payload bytes, each after a header at worst, so the hold bound
//! below covers it too. Bytes after a held token prefix (the next headers
//! included) wait until it is decided, so the output is the input in wire order.
//!
//! Decisions, each where the RFC makes it:
//! - RSV1-3 set: [`Close::EXTENSION`] (1010). No extension is ever negotiated through the
//!   tunnel (the offer is removed), so a set bit means frames we cannot read, typically a
//!   compressed payload that could carry the token unmasked (§5.2: fail the connection). 1010
//!   names that cause, for metrics, apart from malformed framing; it is the code the tunnel
//!   also uses for an extension negotiated anyway.
//! - A length not in its minimal form, or a 64-bit length with the most significant bit set:
//!   refused, 1002 (§5.2 "the minimal number of bytes MUST be used"). The relay forwards
//!   frames unchanged, so it forwards only frames every parser reads alike.
//! - A Close frame ends the direction: it is written out whole (holds released, the payload
//!   cannot continue), reported in [`Seen::close`], and anything the peer sends after it is
//!   discarded (§5.5.1: nothing follows a Close). Its status code is reported, not judged.

use crate::scrub::{scan_views, Mask, Scrubber};

/// Who sends the frames a relay reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The sandbox: its frames must be masked (RFC 6455 §5.1). They are relayed unchanged and
    /// not scrubbed: they are XORed with the client's key, and the sandbox never has the token.
    Client,
    /// The upstream: its frames must not be masked (§5.1). Their payload is scrubbed.
    Server,
}

/// Why a relay refused the stream: the status code (RFC 6455 §7.4.1) of the Close frame the
/// tunnel sends. Nothing of the offending frame was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// 1002, 1008, 1009 or 1010: the constants below.
    pub code: u16,
}

impl Close {
    /// Malformed framing: masking bit, reserved opcode, control frame rules, fragmentation
    /// order, a non-minimal length (§5.1, §5.2, §5.4, §5.5).
    pub const PROTOCOL_ERROR: Close = Close { code: 1002 };
    /// A held token prefix is followed by more frames that do not decide it than a hold has
    /// room for ([`HELD_FRAMES_MAX`]; §7.4.1 "policy violation": no other code fits a bound
    /// of our own).
    pub const POLICY: Close = Close { code: 1008 };
    /// A frame's payload is over the relay's maximum (§7.4.1 "message too big").
    pub const TOO_BIG: Close = Close { code: 1009 };
    /// RSV bits set: an extension in use that was not negotiated (see the module doc).
    pub const EXTENSION: Close = Close { code: 1010 };
}

/// What one [`FrameRelay::push`] saw complete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// A Close frame completed (and was written whole): its status code, or 1005 when it had
    /// none (§7.1.5). Nothing after it is relayed.
    pub close: Option<u16>,
    /// A ping, pong or close completed: activity for an idle timeout.
    pub control: bool,
    /// Frames completed.
    pub frames: u64,
}

/// Frames without data payload (empty ones, control frames) a held token prefix may be
/// followed by, at least, before the relay gives up. They add bytes to a hold and nothing to
/// decide it, so without a bound a peer could grow a hold without end; a real peer sends a
/// few at most. The bound is in bytes (see `FrameRelay::hold_max`): this many control frames
/// of the largest size, so more when they are smaller.
pub const HELD_FRAMES_MAX: usize = 64;

/// The largest control payload (§5.5).
const CONTROL_MAX: usize = 125;

/// The longest frame header: 2 bytes, a 64-bit length, a masking key (§5.2).
const HEADER_MAX: usize = 14;

/// The status code reported for a Close frame without one (§7.1.5).
const NO_STATUS: u16 = 1005;

/// Opcodes (§5.2, §11.8).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A validated frame header.
#[derive(Debug, Clone, Copy)]
struct Frame {
    opcode: u8,
    /// The client's masking key (§5.3); none for the server's frames.
    key: Option<[u8; 4]>,
    /// Payload length.
    len: u64,
}

/// The header being read.
struct Header {
    /// Its bytes so far (also kept in the output buffer, unsent until it is complete).
    got: [u8; HEADER_MAX],
    /// How many.
    have: usize,
}

/// The maskers of one token, one per view (see the module doc).
struct Pair {
    /// Over the data payloads, across frames.
    data: Scrubber,
    /// Over one control payload at a time (released at its end).
    control: Scrubber,
    /// Over every payload in wire order, across frames.
    wire: Scrubber,
}

/// A payload being relayed.
struct Payload {
    frame: Frame,
    /// Payload bytes relayed so far.
    done: u64,
    /// A Close frame's status code, unmasked, as its first two payload bytes pass.
    code: [u8; 2],
}

/// Where the relay is in the stream.
enum State {
    /// Between frames or inside a header ([`FrameRelay::header`]).
    Header,
    /// Inside a payload.
    Payload(Payload),
    /// A Close frame was relayed, or the input ended: nothing more is.
    Ended,
    /// A frame was refused: every later push returns the same.
    Failed(Close),
}

/// The frames of one direction of a tunnel, validated and (the upstream's) scrubbed.
pub struct FrameRelay {
    sender: Sender,
    /// The largest payload relayed (§7.4.1 1009 above it).
    max_frame: u64,
    state: State,
    header: Header,
    /// Frames completed.
    frames: u64,
    /// Where the current header began in the working buffer (valid while `header.have > 0`):
    /// on a refusal, output ends there.
    frame_at: usize,
    /// A fragmented data message is unfinished (§5.4).
    in_message: bool,
    /// Received bytes not yet released: a held token prefix and what followed it, or a header
    /// not yet complete.
    pending: Vec<u8>,
    /// The maskers of each token (server frames only).
    scrubbers: Vec<Pair>,
    /// The longest of their tokens.
    token_max: usize,
    /// The payload bytes being scanned, as received (see [`scan_views`]).
    scratch: Vec<u8>,
    /// `finish` let go of part of a frame (the input ended inside one).
    cut: bool,
}

impl FrameRelay {
    /// A relay of `sender`'s frames, refusing payloads over `max_frame` bytes.
    pub fn new(sender: Sender, max_frame: u64) -> FrameRelay {
        FrameRelay {
            sender,
            max_frame,
            state: State::Header,
            header: Header {
                got: [0; HEADER_MAX],
                have: 0,
            },
            frame_at: 0,
            frames: 0,
            in_message: false,
            pending: Vec::new(),
            scrubbers: Vec::new(),
            token_max: 0,
            scratch: Vec::new(),
            cut: false,
        }
    }

    /// Relays `input`, the next bytes of the stream: appends to `out` what may be sent now,
    /// in order, masking each of `masks` (a set that may grow between calls, never shrink) in
    /// the server's payload. Holds back a possible token prefix and what follows it, and an
    /// incomplete header. On a refusal, `out` gets everything before the offending frame's
    /// header (held bytes released: the stream ends there) and none of it.
    pub fn push(&mut self, input: &[u8], masks: &[Mask], out: &mut Vec<u8>) -> Result<Seen, Close> {
        match self.state {
            State::Failed(c) => return Err(c),
            State::Ended => return Ok(Seen::default()),
            State::Header | State::Payload(_) => {}
        }
        // The working buffer is `out` from `base`: the pending bytes, then the input.
        let base = out.len();
        let carried = self.pending.len();
        out.append(&mut self.pending);
        out.extend_from_slice(input);
        let mut seen = Seen::default();
        match self.relay(&mut out[base..], carried, masks, &mut seen) {
            Ok(end) => {
                self.settle(out, base, end);
                Ok(seen)
            }
            Err(c) => {
                self.release();
                out.truncate(base + self.frame_at);
                self.state = State::Failed(c);
                Err(c)
            }
        }
    }

    /// The input ended: releases everything held (a held prefix cannot become a token any
    /// more; an incomplete header goes out as it came). Nothing is relayed after it.
    pub fn finish(&mut self, masks: &[Mask], out: &mut Vec<u8>) {
        if matches!(self.state, State::Header | State::Payload(_)) {
            self.cut = self.header.have > 0 || matches!(self.state, State::Payload(_));
            if self.sender == Sender::Server {
                let mut held = std::mem::take(&mut self.pending);
                self.add(masks, &mut held);
                self.pending = held;
            }
            self.release();
            out.append(&mut self.pending);
            self.state = State::Ended;
        }
    }

    /// Frames relayed whole so far (those a refused push completed before its refusal too).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes received and not yet written out.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Whether what was let go of so far ends at a frame boundary: no frame is part written.
    /// Only there may the proxy add a frame of its own (a close, RFC 6455 §5.5.1) to this
    /// stream; inside a frame its bytes would be read as the rest of that frame's payload.
    /// A header still being read is not written yet; a held token prefix means the frame it
    /// is in was written only up to it.
    pub fn at_boundary(&self) -> bool {
        match self.state {
            State::Header => self.pending.len() == self.header.have,
            State::Payload(_) => false,
            State::Ended => !self.cut,
            // The output ends where the refused frame's header began.
            State::Failed(_) => true,
        }
    }

    /// Processes `buf[from..]` (`buf[..from]` was processed before); returns where relaying
    /// stopped (the end, or the end of a Close frame).
    fn relay(
        &mut self,
        buf: &mut [u8],
        from: usize,
        masks: &[Mask],
        seen: &mut Seen,
    ) -> Result<usize, Close> {
        if self.sender == Sender::Server {
            self.add(masks, buf);
        }
        let mut pos = from;
        while pos < buf.len() {
            pos = match &mut self.state {
                State::Header => self.header_bytes(buf, pos, seen)?,
                State::Payload(p) => {
                    let n = usize::try_from(p.frame.len - p.done)
                        .unwrap_or(usize::MAX)
                        .min(buf.len() - pos);
                    if p.frame.opcode == CLOSE {
                        capture_code(p, &buf[pos..pos + n]);
                    }
                    let control = p.frame.opcode & 0x8 != 0;
                    let views = self.scrubbers.iter_mut().flat_map(|pair| {
                        let own = if control {
                            &mut pair.control
                        } else {
                            &mut pair.data
                        };
                        [own, &mut pair.wire]
                    });
                    scan_views(views, buf, pos..pos + n, &mut self.scratch);
                    p.done += n as u64;
                    if p.done == p.frame.len {
                        let (frame, code) = (p.frame, p.code);
                        self.complete(frame, code, seen);
                    }
                    pos + n
                }
                State::Ended | State::Failed(_) => break,
            };
        }
        Ok(pos)
    }

    /// Reads header bytes from `buf[pos..]`; validates the header as far as it goes (the
    /// first two bytes decide most, the rest the length). Returns the position after them.
    fn header_bytes(
        &mut self,
        buf: &[u8],
        mut pos: usize,
        seen: &mut Seen,
    ) -> Result<usize, Close> {
        if self.header.have == 0 {
            self.frame_at = pos;
        }
        while self.header.have < 2 {
            if pos == buf.len() {
                return Ok(pos);
            }
            self.header.got[self.header.have] = buf[pos];
            self.header.have += 1;
            pos += 1;
            if self.header.have == 2 {
                let [b0, b1, ..] = self.header.got;
                check_start(b0, b1, self.sender, self.in_message)?;
            }
        }
        let need = header_len(self.header.got[1]);
        let n = (need - self.header.have).min(buf.len() - pos);
        self.header.got[self.header.have..self.header.have + n].copy_from_slice(&buf[pos..pos + n]);
        self.header.have += n;
        pos += n;
        if self.header.have < need {
            return Ok(pos);
        }
        let frame = parse_header(&self.header.got[..need])?;
        self.accept(frame, pos, seen)?;
        Ok(pos)
    }

    /// A complete, well-formed header ends at `pos`: applies the relay's own limits and
    /// enters its payload.
    fn accept(&mut self, frame: Frame, pos: usize, seen: &mut Seen) -> Result<(), Close> {
        if frame.len > self.max_frame {
            return Err(Close::TOO_BIG);
        }
        if let Some(h) = self.hold_from() {
            if pos - h > self.hold_max() {
                return Err(Close::POLICY);
            }
        }
        let fin = self.header.got[0] & 0x80 != 0;
        if matches!(frame.opcode, CONTINUATION | TEXT | BINARY) {
            self.in_message = !fin;
        }
        self.header.have = 0;
        if frame.len == 0 {
            self.complete(frame, [0; 2], seen);
        } else {
            self.state = State::Payload(Payload {
                frame,
                done: 0,
                code: [0; 2],
            });
        }
        Ok(())
    }

    /// `frame`'s payload is complete.
    fn complete(&mut self, frame: Frame, code: [u8; 2], seen: &mut Seen) {
        seen.frames += 1;
        self.frames += 1;
        seen.control |= matches!(frame.opcode, CLOSE | PING | PONG);
        // A control payload is read on its own: what it holds cannot continue.
        self.scrubbers.iter_mut().for_each(|p| p.control.finish());
        if frame.opcode == CLOSE {
            // §5.5.1: a Close frame's body starts with a 2-byte status code, or is empty.
            seen.close = Some(match frame.len {
                0 => NO_STATUS,
                _ => u16::from_be_bytes(code),
            });
            self.state = State::Ended;
        } else {
            self.state = State::Header;
        }
    }

    /// After a push that relayed `buf[..end]` (`buf` is `out[base..]`): keeps what must wait
    /// in `pending`, the rest stays in `out`.
    fn settle(&mut self, out: &mut Vec<u8>, base: usize, end: usize) {
        if matches!(self.state, State::Ended) {
            // A Close frame: the payload stream ends with it; what followed is discarded.
            self.release();
            out.truncate(base + end);
            return;
        }
        let mut keep_from = self.hold_from().unwrap_or(end).min(end);
        if self.header.have > 0 {
            keep_from = keep_from.min(self.frame_at);
        }
        self.pending.extend_from_slice(&out[base + keep_from..]);
        out.truncate(base + keep_from);
        for p in &mut self.scrubbers {
            p.data.shift(keep_from);
            p.control.shift(keep_from);
            p.wire.shift(keep_from);
        }
        self.frame_at = self.frame_at.saturating_sub(keep_from);
    }

    /// Masks each of `masks` from now on (the bytes held for the others, in `buf`, included),
    /// as the response bodies do.
    fn add(&mut self, masks: &[Mask], buf: &mut [u8]) {
        for m in masks {
            if self.scrubbers.iter().any(|p| p.data.masks(m)) {
                continue;
            }
            let mut pair = Pair {
                data: Scrubber::new(m.clone()),
                control: Scrubber::new(m.clone()),
                wire: Scrubber::new(m.clone()),
            };
            pair.data.adopt(self.scrubbers.iter().map(|p| &p.data), buf);
            pair.control
                .adopt(self.scrubbers.iter().map(|p| &p.control), buf);
            pair.wire.adopt(self.scrubbers.iter().map(|p| &p.wire), buf);
            self.scrubbers.push(pair);
            self.token_max = self.token_max.max(m.finder().needle().len());
        }
    }

    /// The first position any masker holds back.
    fn hold_from(&self) -> Option<usize> {
        let holds = self.scrubbers.iter();
        holds
            .flat_map(|p| {
                [
                    p.data.hold_from(),
                    p.control.hold_from(),
                    p.wire.hold_from(),
                ]
            })
            .flatten()
            .min()
    }

    /// The most bytes a hold may span at a header's end: at most `k - 1` data payload bytes
    /// (k the longest token), each after a header of its own at worst, then the current header
    /// and [`HELD_FRAMES_MAX`] frames without data, each at most a control frame.
    fn hold_max(&self) -> usize {
        let payload = self.token_max.saturating_sub(1);
        payload * (1 + HEADER_MAX) + (HEADER_MAX + CONTROL_MAX) * (1 + HELD_FRAMES_MAX)
    }

    /// Every hold is released.
    fn release(&mut self) {
        for p in &mut self.scrubbers {
            p.data.finish();
            p.control.finish();
            p.wire.finish();
        }
    }
}

/// A header's length from its second byte (§5.2): 2, the extended length (2 or 8 bytes when
/// the 7-bit length is 126 or 127), the masking key (4 bytes when MASK is set).
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// What the first two bytes decide.
fn check_start(b0: u8, b1: u8, sender: Sender, in_message: bool) -> Result<(), Close> {
    // §5.2: RSV1-3 are for extensions; none is negotiated here.
    if b0 & 0x70 != 0 {
        return Err(Close::EXTENSION);
    }
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
    // §5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved.
    if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
        return Err(Close::PROTOCOL_ERROR);
    }
    // §5.1: a client masks every frame, a server none.
    if (b1 & 0x80 != 0) != (sender == Sender::Client) {
        return Err(Close::PROTOCOL_ERROR);
    }
    let len7 = b1 & 0x7f;
    // §5.5: control frames are not fragmented and carry at most 125 bytes; §5.5.1: a Close
    // body is empty or starts with a 2-byte status code.
    let too_long = usize::from(len7) > CONTROL_MAX;
    if opcode & 0x8 != 0 && (!fin || too_long || (opcode == CLOSE && len7 == 1)) {
        return Err(Close::PROTOCOL_ERROR);
    }
    // §5.4: a continuation only inside a message; no new data message inside one.
    match (opcode, in_message) {
        (CONTINUATION, false) | (TEXT | BINARY, true) => Err(Close::PROTOCOL_ERROR),
        _ => Ok(()),
    }
}

/// A complete header (its first two bytes already checked): the length, in its minimal
/// form, and the key (§5.2).
fn parse_header(h: &[u8]) -> Result<Frame, Close> {
    let len7 = h[1] & 0x7f;
    let (len, rest) = match len7 {
        126 => {
            let n = u16::from_be_bytes([h[2], h[3]]);
            (u64::from(n), &h[4..])
        }
        127 => {
            let mut b = [0; 8];
            b.copy_from_slice(&h[2..10]);
            (u64::from_be_bytes(b), &h[10..])
        }
        n => (u64::from(n), &h[2..]),
    };
    // §5.2: the most significant bit of a 64-bit length is 0; the minimal form is used.
    let minimal = match len7 {
        126 => len > 125,
        127 => len > 0xffff && len >> 63 == 0,
        _ => true,
    };
    if !minimal {
        return Err(Close::PROTOCOL_ERROR);
    }
    let key = (h[1] & 0x80 != 0).then(|| [rest[0], rest[1], rest[2], rest[3]]);
    Ok(Frame {
        opcode: h[0] & 0x0f,
        key,
        len,
    })
}

/// Keeps a Close frame's status code (its first two payload bytes, unmasked, §5.3) as
/// `bytes`, the next payload bytes, pass.
fn capture_code(p: &mut Payload, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        let at = p.done + i as u64;
        if at >= 2 {
            break;
        }
        let k = p.frame.key.map_or(0, |k| k[at as usize]);
        p.code[at as usize] = b ^ k;
    }
}

/// A Close frame with `code` (§5.5.1), FIN set; masked with `mask_key` when given (a frame
/// the proxy sends upstream, as a client must, §5.3).
pub fn close_frame(code: u16, mask_key: Option<[u8; 4]>) -> Vec<u8> {
    let payload = code.to_be_bytes();
    let mut f = vec![0x80 | CLOSE];
    match mask_key {
        None => {
            f.push(2);
            f.extend_from_slice(&payload);
        }
        Some(key) => {
            f.push(0x80 | 2);
            f.extend_from_slice(&key);
            f.extend(payload.iter().zip(key).map(|(b, k)| b ^ k));
        }
    }
    f
}

#[cfg(test)]
mod tests;
