//! Pure: the relay buffer of one response body. Upstream reads go in; what may be written to
//! the client comes out, in order, as soon as it may: the [`BodyTracker`] decides which bytes
//! end the body and which are held back because they may begin the token.
//!
//! The buffer starts small ([`limits::RELAY_BUF_START`]) and doubles when a read fills it, up
//! to [`limits::RELAY_BUF_MAX`] for bulk bodies. Held bytes are never released unmasked to
//! make room: while a token prefix is held, the bytes after it (chunk framing, extensions)
//! cannot be sent before it either, so the buffer grows on, up to
//! [`limits::RELAY_HOLD_MAX`]; an upstream that spreads a held prefix wider than that has the
//! response cut instead ([`Problem::UpstreamHoldOverflow`]).
//!
//! The I/O loop is: [`RelayBuf::advance`], write [`RelayBuf::front`], stop if done, else
//! [`RelayBuf::consume`], read into [`RelayBuf::spare`], then [`RelayBuf::filled`] (or
//! [`RelayBuf::closed`] when the read returned nothing). A stream that goes idle may
//! [`RelayBuf::release_if_empty`] its buffer while it waits.

use crate::error::Problem;
use crate::limits;
use crate::scrub::Mask;
use crate::tracker::{Advance, BodyTracker};

/// The relay buffer and the tracker that judges its bytes.
pub struct RelayBuf {
    tracker: BodyTracker,
    buf: Vec<u8>,
    /// `buf[..filled]` holds bytes read and not yet sent.
    filled: usize,
    /// `buf[..old]` was already processed by the tracker (held bytes).
    old: usize,
}

impl RelayBuf {
    /// Takes over `buf`, whose `buf[body_start..filled]` are the body bytes that arrived with
    /// the head.
    pub fn new(tracker: BodyTracker, mut buf: Vec<u8>, body_start: usize, filled: usize) -> Self {
        buf.copy_within(body_start..filled, 0);
        if buf.len() < limits::RELAY_BUF_START {
            buf.resize(limits::RELAY_BUF_START, 0);
        }
        RelayBuf {
            tracker,
            buf,
            filled: filled - body_start,
            old: 0,
        }
    }

    /// Processes the bytes read since the last call (masking, de-chunking in place) and says
    /// how many bytes at the front may be written now, and whether the body is complete.
    pub fn advance(&mut self) -> Result<Advance, Problem> {
        self.tracker.advance(&mut self.buf[..self.filled], self.old)
    }

    /// Masks exactly `tokens` from the next [`RelayBuf::advance`] on (see
    /// [`BodyTracker::mask`]).
    pub fn mask(&mut self, tokens: &[Mask]) {
        self.tracker.mask(tokens, &mut self.buf[..self.filled]);
    }

    /// The first `n` bytes, to write to the client.
    pub fn front(&self, n: usize) -> &[u8] {
        &self.buf[..n]
    }

    /// `adv.ready` bytes were written: keeps the held ones at the front and makes room for
    /// the next read. `Err`: held bytes filled the hold bound; the response must be cut.
    pub fn consume(&mut self, adv: Advance) -> Result<(), Problem> {
        self.buf.copy_within(adv.ready..adv.keep, 0);
        self.tracker.shifted(adv.ready);
        self.filled = adv.keep - adv.ready;
        self.old = self.filled;
        if self.filled < self.buf.len() {
            return Ok(());
        }
        // Only held bytes remain (everything else was sent), and they fill the buffer.
        let limit = if self.buf.len() < limits::RELAY_BUF_MAX {
            limits::RELAY_BUF_MAX
        } else {
            limits::RELAY_HOLD_MAX
        };
        if self.buf.len() >= limit {
            return Err(Problem::UpstreamHoldOverflow);
        }
        let grown = (self.buf.len() * 2).min(limit);
        self.buf.resize(grown, 0);
        Ok(())
    }

    /// Token occurrences masked in the body so far.
    pub fn masked(&self) -> u64 {
        self.tracker.masked()
    }

    /// The token usage read from the body so far, if it is observed.
    pub fn usage(&self) -> Option<crate::usage::Usage> {
        self.tracker.usage()
    }

    /// Room for the next read (never empty after [`RelayBuf::consume`] succeeded).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf.resize(limits::RELAY_BUF_START, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// Gives the buffer back while nothing is held in it (a stream waiting for its next
    /// event); [`RelayBuf::spare`] takes a small one again. Returns whether it did.
    pub fn release_if_empty(&mut self) -> bool {
        if self.filled > 0 || self.buf.is_empty() {
            return false;
        }
        self.buf = Vec::new();
        true
    }

    /// `n > 0` bytes were read into [`RelayBuf::spare`].
    pub fn filled(&mut self, n: usize) {
        let full = n == self.buf.len() - self.filled;
        self.filled += n;
        if full && self.buf.len() < limits::RELAY_BUF_MAX {
            // The read filled the buffer: a bulk body; grow for fewer, larger writes.
            let grown = (self.buf.len() * 2).min(limits::RELAY_BUF_MAX);
            self.buf.resize(grown, 0);
        }
    }

    /// The upstream closed. For a close-delimited body that is its end: held bytes can no
    /// longer become the token, and `Ok(n)` says how many to write last. Anything else was
    /// cut short.
    pub fn closed(&mut self) -> Result<usize, Problem> {
        if self.tracker.finish_at_close() {
            Ok(self.filled)
        } else {
            Err(Problem::UpstreamClosed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::ResponseBody;
    use crate::scrub::FixedToken;

    /// Attack review, round two (defect 1): a token one byte per chunk, with framing between
    /// the chunks that outgrows the buffer while its prefix is held. Nothing of it is written
    /// unmasked: the buffer grows within the hold bound and the token arrives masked.
    #[test]
    fn a_held_prefix_is_never_released_to_make_room() {
        let token = b"sk-ant-REALTOKEN";
        let tokens = [FixedToken::mask(token)];
        let mut body = Vec::new();
        for &b in token {
            body.extend_from_slice(b"1;");
            body.extend_from_slice(&[b'e'; 4000]);
            body.extend_from_slice(b"\r\n");
            body.push(b);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let tracker = BodyTracker::new(ResponseBody::Chunked, true, &tokens);
        let mut relay = RelayBuf::new(tracker, vec![0; limits::RELAY_BUF_START], 0, 0);
        let (mut sent, mut input) = (Vec::new(), &body[..]);
        loop {
            let adv = relay.advance().unwrap();
            sent.extend_from_slice(relay.front(adv.ready));
            if adv.done {
                break;
            }
            relay.consume(adv).unwrap();
            let spare = relay.spare();
            let n = spare.len().min(input.len()).min(1000);
            spare[..n].copy_from_slice(&input[..n]);
            input = &input[n..];
            relay.filled(n);
        }
        assert_eq!(sent, vec![b'*'; token.len()], "de-chunked payload, masked");
    }

    /// Feeds `reads` through a relay masking `first`, adding `late` after read `join`, as the
    /// download does when the mask set grows; returns what the client received.
    fn relay_with_late_token(
        body: ResponseBody,
        first: &[u8],
        late: &[u8],
        reads: &[&[u8]],
        join: usize,
    ) -> Vec<u8> {
        let (first, late) = (FixedToken::mask(first), FixedToken::mask(late));
        let tracker = BodyTracker::new(body, false, std::slice::from_ref(&first));
        let mut relay = RelayBuf::new(tracker, vec![0; limits::RELAY_BUF_START], 0, 0);
        let mut sent = Vec::new();
        for (i, read) in reads.iter().enumerate() {
            relay.spare()[..read.len()].copy_from_slice(read);
            relay.filled(read.len());
            if i == join {
                relay.mask(&[first.clone(), late.clone()]);
            }
            let adv = relay.advance().unwrap();
            sent.extend_from_slice(relay.front(adv.ready));
            relay.consume(adv).unwrap();
        }
        let last = relay.closed().unwrap();
        sent.extend_from_slice(relay.front(last));
        sent
    }

    /// A token that joins the mask set mid-body is caught even when its start was already
    /// held back as the start of another token (the two share a public prefix): the newcomer
    /// takes up what the others hold.
    #[test]
    fn a_token_that_joins_takes_up_what_the_others_hold() {
        let (t1, t2) = (&b"sk-ant-oat01-AAAA"[..], &b"sk-ant-oat01-BBBB"[..]);
        let reads: [&[u8]; 2] = [b"data: sk-ant-oat01-", b"BBBB\n"];
        let sent = relay_with_late_token(ResponseBody::UntilClose, t1, t2, &reads, 1);
        assert_eq!(sent, b"data: *****************\n");
        // A whole occurrence inside the held bytes: a short token within a longer one's hold.
        let (t1, t2) = (&b"sk-ant-oat01-AAAA"[..], &b"ant-oat"[..]);
        let reads: [&[u8]; 2] = [b"data: sk-ant-oat01-", b"ZZ\n"];
        let sent = relay_with_late_token(ResponseBody::UntilClose, t1, t2, &reads, 1);
        assert_eq!(sent, b"data: sk-*******01-ZZ\n");
        // Over chunk framing: the held bytes are spread around a chunk-size line.
        let reads: [&[u8]; 3] = [
            b"8\r\nx sk-ant\r\n",
            b"7\r\n-oat01-\r\n",
            b"4\r\nBBBB\r\n0\r\n\r\n",
        ];
        let (t1, t2) = (&b"sk-ant-oat01-AAAA"[..], &b"sk-ant-oat01-BBBB"[..]);
        let tracker_sent = {
            let (first, late) = (FixedToken::mask(t1), FixedToken::mask(t2));
            let tracker =
                BodyTracker::new(ResponseBody::Chunked, false, std::slice::from_ref(&first));
            let mut relay = RelayBuf::new(tracker, vec![0; limits::RELAY_BUF_START], 0, 0);
            let mut sent = Vec::new();
            for (i, read) in reads.iter().enumerate() {
                relay.spare()[..read.len()].copy_from_slice(read);
                relay.filled(read.len());
                if i == 2 {
                    relay.mask(&[first.clone(), late.clone()]);
                }
                let adv = relay.advance().unwrap();
                sent.extend_from_slice(relay.front(adv.ready));
                if adv.done {
                    break;
                }
                relay.consume(adv).unwrap();
            }
            sent
        };
        let text = String::from_utf8_lossy(&tracker_sent).into_owned();
        assert!(
            !text.contains("oat01-BB") && !text.contains("sk-ant"),
            "{text:?}"
        );
        assert!(text.ends_with("0\r\n\r\n"), "{text:?}");
    }

    /// An idle stream gives its buffer back only when nothing is held in it, and the next
    /// read gets a small one again.
    #[test]
    fn the_buffer_is_released_only_when_nothing_is_held() {
        let tokens = [FixedToken::mask(b"sk-ant-REALTOKEN")];
        let tracker = BodyTracker::new(ResponseBody::UntilClose, false, &tokens);
        let mut relay = RelayBuf::new(tracker, vec![0; limits::RELAY_BUF_START], 0, 0);
        relay.spare()[..9].copy_from_slice(b"data: sk-");
        relay.filled(9);
        let adv = relay.advance().unwrap();
        assert_eq!(
            relay.front(adv.ready),
            b"data: ",
            "the token's possible start is held"
        );
        relay.consume(adv).unwrap();
        assert!(!relay.release_if_empty(), "held bytes keep the buffer");
        relay.spare()[..3].copy_from_slice(b"x\n\n");
        relay.filled(3);
        let adv = relay.advance().unwrap();
        assert_eq!(relay.front(adv.ready), b"sk-x\n\n");
        relay.consume(adv).unwrap();
        assert!(relay.release_if_empty());
        assert_eq!(relay.buf.capacity(), 0);
        assert_eq!(relay.spare().len(), limits::RELAY_BUF_START);
    }

    /// A hold wider than [`limits::RELAY_HOLD_MAX`] cuts the response rather than release:
    /// the buffer doubles while held bytes fill it, then refuses.
    #[test]
    fn a_hold_past_the_bound_cuts_the_response() {
        let tokens = [FixedToken::mask(b"sk-ant-REALTOKEN")];
        let tracker = BodyTracker::new(ResponseBody::UntilClose, false, &tokens);
        let mut relay = RelayBuf::new(tracker, vec![0; limits::RELAY_BUF_START], 0, 0);
        loop {
            // Everything in the buffer is held (nothing ready).
            relay.filled = relay.buf.len();
            let keep = relay.buf.len();
            let adv = Advance {
                ready: 0,
                keep,
                done: false,
                excess: false,
            };
            match relay.consume(adv) {
                Ok(()) => {
                    assert!(relay.buf.len() > keep && relay.buf.len() <= limits::RELAY_HOLD_MAX)
                }
                Err(e) => {
                    assert_eq!(e, Problem::UpstreamHoldOverflow);
                    assert_eq!(keep, limits::RELAY_HOLD_MAX);
                    break;
                }
            }
        }
    }
}
