//! Pure: one response body as it streams. Finds where it ends (its framing, RFC 9112 §6.3),
//! masks the token in payload, chunk extensions and trailers, de-chunks for an HTTP/1.0
//! client (R31), and says which bytes of the relay buffer may be sent now. Relayed bytes are
//! never re-framed: a masked token keeps its length.

use crate::error::Problem;
use crate::framing::{ChunkLimits, ChunkedDecoder, Step};
use crate::response::ResponseBody;
use crate::scrub::{Mask, Scrubber};
use crate::usage::{Observer, Usage};

/// What one call of [`BodyTracker::advance`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// `buf[..ready]` may be sent to the client now.
    pub ready: usize,
    /// `buf[ready..keep]` is held (scrubbing) and must stay at the front of the buffer.
    pub keep: usize,
    /// The body is complete (after sending `ready`).
    pub done: bool,
    /// Bytes followed the end of the body: the upstream connection cannot be reused (R30).
    pub excess: bool,
}

enum Framing {
    None,
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// The maskers of one body: for each token (the request's own, and any other a running
/// request uses), one for the payload and one for extension and trailer text.
struct Masks {
    pairs: Vec<Pair>,
}

struct Pair {
    /// Masks the token in the payload.
    payload: Scrubber,
    /// Masks the token in chunk-extension and trailer text. A token (visible ASCII) cannot
    /// span a line ending, so this one's hold is released at the end of each such run.
    meta: Scrubber,
}

impl Pair {
    fn new(mask: &Mask) -> Pair {
        Pair {
            payload: Scrubber::new(mask.clone()),
            meta: Scrubber::new(mask.clone()),
        }
    }
}

impl Masks {
    /// Masks each of `tokens` too from now on, the tokens already masked included, for the
    /// rest of the body: a token new to the set takes up the bytes held back from the others
    /// (`buf` holds them), so a token whose start is already held is still caught. A token
    /// leaving the store's set is masked on: it may still be valid upstream, and a hold of it
    /// is never released early.
    fn add(&mut self, tokens: &[Mask], buf: &mut [u8]) {
        for t in tokens {
            if self.pairs.iter().any(|p| p.payload.masks(t)) {
                continue;
            }
            let mut pair = Pair::new(t);
            pair.payload
                .adopt(self.pairs.iter().map(|p| &p.payload), buf);
            pair.meta.adopt(self.pairs.iter().map(|p| &p.meta), buf);
            self.pairs.push(pair);
        }
    }

    fn payload(&mut self, buf: &mut [u8], seg: std::ops::Range<usize>) {
        for p in &mut self.pairs {
            p.payload.scan(buf, seg.clone());
        }
    }

    fn meta(&mut self, buf: &mut [u8], seg: std::ops::Range<usize>) {
        for p in &mut self.pairs {
            p.meta.scan(buf, seg.clone());
        }
    }

    fn finish_payload(&mut self) {
        self.pairs.iter_mut().for_each(|p| p.payload.finish());
    }

    fn finish_meta(&mut self) {
        self.pairs.iter_mut().for_each(|p| p.meta.finish());
    }

    fn release(&mut self) {
        self.finish_payload();
        self.finish_meta();
    }

    fn shift(&mut self, n: usize) {
        for p in &mut self.pairs {
            p.payload.shift(n);
            p.meta.shift(n);
        }
    }

    /// The first buffer position any masker holds back, if any.
    fn hold_from(&self) -> Option<usize> {
        let holds = self
            .pairs
            .iter()
            .map(|p| [p.payload.hold_from(), p.meta.hold_from()]);
        holds.flatten().flatten().min()
    }
}

/// Where [`BodyTracker::advance`] is in the buffer.
struct Cursor {
    /// Next unprocessed input byte.
    pos: usize,
    /// End of the output region (== `pos` unless de-chunking moves payload forward).
    end: usize,
}

/// Tracks one response body as bytes arrive: where it ends, which bytes are payload (to be
/// scrubbed), and, for an HTTP/1.0 client, the payload alone (de-chunked).
pub struct BodyTracker {
    framing: Framing,
    masks: Masks,
    dechunk: bool,
    /// Reads the token usage from the payload as it passes, if on for this response.
    usage: Option<Box<Observer>>,
}

impl BodyTracker {
    /// A tracker for a body of `body` framing that masks each of `tokens` (until
    /// [`BodyTracker::mask`] changes the set).
    pub fn new(body: ResponseBody, dechunk: bool, tokens: &[Mask]) -> BodyTracker {
        let framing = match body {
            ResponseBody::None | ResponseBody::Length(0) => Framing::None,
            ResponseBody::Length(n) => Framing::Length { remaining: n },
            ResponseBody::Chunked => Framing::Chunked(ChunkedDecoder::new(ChunkLimits::RESPONSE)),
            ResponseBody::UntilClose => Framing::UntilClose,
        };
        BodyTracker {
            framing,
            masks: Masks {
                pairs: tokens.iter().map(Pair::new).collect(),
            },
            dechunk: dechunk && body == ResponseBody::Chunked,
            usage: None,
        }
    }

    /// Has `observer` read the payload (de-chunked, after masking), each byte once, as
    /// [`BodyTracker::advance`] finds it: a view of the relay's bytes, never a change.
    pub fn observe(&mut self, observer: Observer) {
        self.usage = Some(Box::new(observer));
    }

    /// The usage the observer found so far, if one observes this body.
    pub fn usage(&self) -> Option<Usage> {
        self.usage.as_ref().map(|o| o.usage())
    }

    /// Bytes the observer holds (what the fuzz target bounds).
    pub fn usage_held(&self) -> usize {
        self.usage.as_ref().map_or(0, |o| o.held())
    }

    /// Masks each of `tokens` too, for the rest of the body, bytes already read and not yet
    /// sent included (`buf`, the relay buffer up to what was read): the set a response masks
    /// grows while it runs, as newer tokens come into use, and never shrinks.
    pub fn mask(&mut self, tokens: &[Mask], buf: &mut [u8]) {
        self.masks.add(tokens, buf);
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        match &self.framing {
            Framing::None => true,
            Framing::Length { remaining } => *remaining == 0,
            Framing::Chunked(d) => d.is_done(),
            Framing::UntilClose => false,
        }
    }

    /// Whether the body ends when the upstream closes.
    pub fn until_close(&self) -> bool {
        matches!(self.framing, Framing::UntilClose)
    }

    /// `buf[..old]` was kept from the previous call (already processed); `buf[old..]` is new.
    /// Processes the new bytes in place (masking, de-chunking) and says what may be sent.
    pub fn advance(&mut self, buf: &mut [u8], old: usize) -> Result<Advance, Problem> {
        let mut at = Cursor { pos: old, end: old };
        let mut done = self.is_done();
        while at.pos < buf.len() && !done {
            done = match &mut self.framing {
                Framing::None => true,
                Framing::UntilClose => {
                    self.masks.payload(buf, at.pos..buf.len());
                    observe(&mut self.usage, &buf[at.pos..]);
                    at.pos = buf.len();
                    at.end = at.pos;
                    false
                }
                Framing::Length { remaining } => {
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len() - at.pos);
                    self.masks.payload(buf, at.pos..at.pos + n);
                    observe(&mut self.usage, &buf[at.pos..at.pos + n]);
                    *remaining -= n as u64;
                    at.pos += n;
                    at.end = at.pos;
                    *remaining == 0
                }
                Framing::Chunked(decoder) => {
                    let m = (&mut self.masks, &mut self.usage);
                    chunk_step(decoder, m, self.dechunk, buf, &mut at)?
                }
            };
        }
        let excess = done && at.pos < buf.len();
        if done {
            self.masks.release();
            if let Some(o) = &mut self.usage {
                o.finish();
            }
        }
        let ready = self.masks.hold_from().unwrap_or(at.end).min(at.end);
        Ok(Advance {
            ready,
            keep: at.end,
            done,
            excess,
        })
    }

    /// Token occurrences masked in the body so far.
    pub fn masked(&self) -> u64 {
        let m = self.masks.pairs.iter();
        m.map(|p| p.payload.masked() + p.meta.masked()).sum()
    }

    /// The relay moved `buf[ready..keep]` to the front.
    pub fn shifted(&mut self, ready: usize) {
        self.masks.shift(ready);
    }

    /// The upstream closed: for a close-delimited body this is its end; release held bytes.
    pub fn finish_at_close(&mut self) -> bool {
        self.masks.release();
        if let (true, Some(o)) = (self.until_close(), &mut self.usage) {
            o.finish();
        }
        self.until_close()
    }
}

/// Feeds payload bytes to the usage observer, if there is one.
fn observe(usage: &mut Option<Box<Observer>>, payload: &[u8]) {
    if let Some(o) = usage {
        o.feed(payload);
    }
}

/// One decoder step over the chunked body at `at`; returns whether the body ended.
fn chunk_step(
    decoder: &mut ChunkedDecoder,
    (masks, usage): (&mut Masks, &mut Option<Box<Observer>>),
    dechunk: bool,
    buf: &mut [u8],
    at: &mut Cursor,
) -> Result<bool, Problem> {
    // Every decoder error is the upstream's framing fault.
    let step = decoder
        .step(&buf[at.pos..])
        .map_err(|_| Problem::UpstreamMalformed)?;
    if !matches!(step, Step::Meta(_)) {
        masks.finish_meta();
    }
    if decoder.payload_done() {
        // The last chunk was read: no payload byte can complete a held prefix.
        masks.finish_payload();
    }
    let (n, done) = match step {
        Step::Data(n) => {
            // De-chunking moves the payload forward over the framing before it.
            let from = if dechunk { at.end } else { at.pos };
            if dechunk {
                buf.copy_within(at.pos..at.pos + n, at.end);
            }
            masks.payload(buf, from..from + n);
            observe(usage, &buf[from..from + n]);
            at.pos += n;
            at.end = if dechunk { at.end + n } else { at.pos };
            return Ok(false);
        }
        // Relayed as received (no re-framing), so masked like payload; dropped altogether
        // when de-chunking.
        Step::Meta(n) if !dechunk => {
            masks.meta(buf, at.pos..at.pos + n);
            (n, false)
        }
        Step::Meta(n) | Step::Framing(n) => (n, false),
        Step::Done(n) => (n, true),
    };
    at.pos += n;
    if !dechunk {
        at.end = at.pos;
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
