//! Pure response scrubbing: every occurrence of the real token in response payload is masked
//! with the same number of `*` bytes, so lengths and chunk sizes stay valid and nothing is
//! re-framed.
//!
//! The relay hands the scrubber each payload segment of its buffer (never the chunk framing
//! between segments), in order. Full matches inside a segment are found with `memmem`. A
//! token split across reads or chunks is caught by holding back the shortest tail of payload
//! that is still a prefix of the token: those bytes stay unsent in the relay buffer until the
//! next segment decides them. For SSE the tail is `\n\n`, which is never a prefix of a token,
//! so the hold costs streaming nothing.

use std::sync::Arc;

use memchr::memmem;
use zeroize::Zeroizing;

/// The byte that replaces each token byte.
pub const MASK: u8 = b'*';

/// A token's searcher (building one costs about as much as scanning a small response, so it
/// is built once per token and shared).
pub type TokenFinder<'t> = memmem::Finder<'t>;

/// One token a response masks, shared with whatever keeps it alive (the proxy's credential
/// generations; a fixed token in tests and fuzzing).
pub trait Needle: Send + Sync {
    /// The token's searcher; its needle is the token.
    fn finder(&self) -> &TokenFinder<'_>;
}

/// A token as a response holds it while masking it. Two masks are the same token when they
/// are the same allocation ([`Arc::ptr_eq`]).
pub type Mask = Arc<dyn Needle>;

/// A fixed token with a searcher that owns a copy of it: for tests, fuzzing and benches. The
/// copy is not wiped; the proxy's own tokens never use this.
pub struct FixedToken(TokenFinder<'static>);

impl FixedToken {
    /// A mask for `token` (non-empty).
    pub fn mask(token: &[u8]) -> Mask {
        Arc::new(FixedToken(TokenFinder::new(token).into_owned()))
    }
}

impl Needle for FixedToken {
    fn finder(&self) -> &TokenFinder<'_> {
        &self.0
    }
}

/// Streaming token masker over one response body.
pub struct Scrubber {
    /// The token this one masks.
    needle: Mask,
    /// Positions (in the relay buffer) of held payload bytes: a proper prefix of the token.
    held_at: Vec<usize>,
    /// Copies of those bytes, zeroized when dropped (they are a part of the token).
    held: Zeroizing<Vec<u8>>,
    /// Token occurrences masked so far.
    masked: u64,
}

impl Scrubber {
    /// A scrubber for the token `needle` searches for (non-empty).
    pub fn new(needle: Mask) -> Scrubber {
        // A hold is shorter than the token: sized once, it never reallocates, so no freed
        // block keeps a part of the token.
        let k = needle.finder().needle().len();
        Scrubber {
            needle,
            held_at: Vec::new(),
            held: Zeroizing::new(Vec::with_capacity(k)),
            masked: 0,
        }
    }

    /// Scans `buf[seg]`, payload that follows every segment passed before. Masks whole
    /// matches (also ones that began in held bytes) and recomputes the hold.
    pub fn scan(&mut self, buf: &mut [u8], seg: std::ops::Range<usize>) {
        if seg.is_empty() {
            return;
        }
        let finder = self.needle.finder();
        let token = finder.needle();
        let k = token.len();
        // A match that starts in the held bytes ends within the first k-1 bytes of `seg`.
        if !self.held.is_empty() {
            let take = (k - 1).min(seg.len());
            let mut joint: Zeroizing<Vec<u8>> =
                Zeroizing::new(Vec::with_capacity(self.held.len() + take));
            joint.extend_from_slice(&self.held);
            joint.extend_from_slice(&buf[seg.start..seg.start + take]);
            for start in 0..self.held.len() {
                if joint[start..].starts_with(token) {
                    self.masked += 1;
                    for j in start..start + k {
                        let at = match self.held_at.get(j) {
                            Some(&p) => p,
                            None => seg.start + (j - self.held.len()),
                        };
                        buf[at] = MASK;
                    }
                }
            }
        }
        // Whole matches inside the segment.
        let mut from = seg.start;
        while let Some(i) = finder.find(&buf[from..seg.end]) {
            buf[from + i..from + i + k].fill(MASK);
            from += i + k;
            self.masked += 1;
        }
        // New hold: the longest suffix of (held ++ segment) that is a proper prefix of the token.
        if self.held.is_empty() || seg.len() >= k - 1 {
            // Fast path, no allocation: the window lies inside the segment; the leftmost
            // position whose rest is a token prefix gives the longest hold.
            let w = seg.end - (k - 1).min(seg.len());
            let window = &buf[w..seg.end];
            let start = memchr::memchr_iter(token[0], window)
                .find(|&i| token.starts_with(&window[i..]))
                .map(|i| w + i);
            self.held_at.clear();
            self.held.clear();
            if let Some(p) = start {
                self.held_at.extend(p..seg.end);
                self.held.extend_from_slice(&buf[p..seg.end]);
            }
            return;
        }
        let mut positions: Vec<usize> = Vec::new();
        let mut bytes: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(k));
        let seg_keep = (k - 1).min(seg.len());
        let old_keep = (k - 1 - seg_keep).min(self.held.len());
        let old_from = self.held.len() - old_keep;
        positions.extend_from_slice(&self.held_at[old_from..]);
        bytes.extend_from_slice(&self.held[old_from..]);
        positions.extend(seg.end - seg_keep..seg.end);
        bytes.extend_from_slice(&buf[seg.end - seg_keep..seg.end]);
        hold_longest_start(&mut self.held_at, &mut self.held, token, &positions, &bytes);
    }

    /// Token occurrences masked so far.
    pub fn masked(&self) -> u64 {
        self.masked
    }

    /// The first buffer position that must not be sent yet, if any is held.
    pub fn hold_from(&self) -> Option<usize> {
        self.held_at.first().copied()
    }

    /// The relay removed the first `n` bytes of its buffer (all before [`Self::hold_from`]).
    pub fn shift(&mut self, n: usize) {
        for p in &mut self.held_at {
            *p -= n;
        }
    }

    /// Takes up masking mid-body, where scrubbers of other tokens over the same bytes already
    /// hold what they hold. Each hold is a suffix of the same stream, so the longest of theirs
    /// holds every byte any of them holds back: a whole occurrence of this token in it is
    /// masked in `buf` now, and the longest rest of it that may begin this token is held.
    pub fn adopt<'s>(&mut self, others: impl Iterator<Item = &'s Scrubber>, buf: &mut [u8]) {
        let Some(longest) = others.max_by_key(|o| o.held.len()) else {
            return;
        };
        let finder = self.needle.finder();
        let token = finder.needle();
        let k = token.len();
        let (positions, bytes) = (&longest.held_at, &longest.held);
        let mut rest = 0;
        while let Some(i) = finder.find(&bytes[rest..]) {
            positions[rest + i..rest + i + k]
                .iter()
                .for_each(|&p| buf[p] = MASK);
            self.masked += 1;
            rest += i + k;
        }
        let (positions, bytes) = (&positions[rest..], &bytes[rest..]);
        hold_longest_start(&mut self.held_at, &mut self.held, token, positions, bytes);
    }

    /// Whether this one masks `mask`'s token.
    pub fn masks(&self, mask: &Mask) -> bool {
        Arc::ptr_eq(&self.needle, mask)
    }

    /// The body ended: held bytes can no longer become the token, release them.
    pub fn finish(&mut self) {
        self.held_at.clear();
        self.held.clear();
    }
}

/// Scans `buf[seg]` with each of `views` (scrubbers over different streams the same bytes
/// belong to, like a WebSocket's data payloads and all its payloads in wire order), every one
/// over the bytes as received: a view that masked part of `seg` would otherwise hide from the
/// next one a token that shares bytes with its own, and the next one would release the rest
/// of it. The bytes any view masked are masked. `scratch` keeps the received bytes (a
/// buffer kept across calls).
pub fn scan_views<'s>(
    views: impl Iterator<Item = &'s mut Scrubber>,
    buf: &mut [u8],
    seg: std::ops::Range<usize>,
    scratch: &mut Vec<u8>,
) {
    scratch.clear();
    scratch.extend_from_slice(&buf[seg.clone()]);
    let mut union: Option<Vec<u8>> = None;
    for s in views {
        let before = s.masked();
        s.scan(buf, seg.clone());
        if s.masked() != before {
            let u = union.get_or_insert_with(|| scratch.clone());
            for (u, &b) in u.iter_mut().zip(&buf[seg.clone()]) {
                if b == MASK {
                    *u = MASK;
                }
            }
            buf[seg.clone()].copy_from_slice(scratch);
        }
    }
    if let Some(u) = union {
        buf[seg].copy_from_slice(&u);
    }
}

/// Holds the longest end of `bytes` (at `positions` in the relay buffer) that is a proper
/// start of `token`, in `held_at` and `held` (whose capacity, the token's length, is never
/// passed: a hold is shorter than the token).
fn hold_longest_start(
    held_at: &mut Vec<usize>,
    held: &mut Vec<u8>,
    token: &[u8],
    positions: &[usize],
    bytes: &[u8],
) {
    let hold = (1..=bytes.len().min(token.len() - 1))
        .rev()
        .find(|&n| token.starts_with(&bytes[bytes.len() - n..]))
        .unwrap_or(0);
    held_at.clear();
    held_at.extend_from_slice(&positions[positions.len() - hold..]);
    held.clear();
    held.extend_from_slice(&bytes[bytes.len() - hold..]);
}

/// Masks every occurrence of the token in `bytes` (a complete response head); returns how
/// many.
pub fn mask_all(bytes: &mut [u8], finder: &TokenFinder<'_>) -> u64 {
    let token = finder.needle();
    let (mut from, mut n) = (0, 0);
    while let Some(i) = finder.find(&bytes[from..]) {
        bytes[from + i..from + i + token.len()].fill(MASK);
        from += i + token.len();
        n += 1;
    }
    n
}

/// The token the unit tests of the response side mask.
#[cfg(test)]
pub(crate) mod testing {
    use super::{FixedToken, Mask};

    pub const TOKEN: &[u8] = b"sk-ant-REAL";

    /// The tokens masked: [`TOKEN`] alone.
    pub fn tokens() -> &'static [Mask] {
        static TOKENS: std::sync::OnceLock<[Mask; 1]> = std::sync::OnceLock::new();
        TOKENS.get_or_init(|| [FixedToken::mask(TOKEN)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` as payload split at `splits`, sending what the hold allows after each
    /// segment, as the relay does; returns what the client received.
    fn stream(token: &[u8], input: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut s = Scrubber::new(FixedToken::mask(token));
        let mut buf: Vec<u8> = Vec::new();
        let mut sent = Vec::new();
        let mut last = 0;
        for &cut in splits.iter().chain(std::iter::once(&input.len())) {
            let start = buf.len();
            buf.extend_from_slice(&input[last..cut]);
            last = cut;
            let end = buf.len();
            s.scan(&mut buf, start..end);
            let upto = s.hold_from().unwrap_or(buf.len());
            sent.extend_from_slice(&buf[..upto]);
            buf.drain(..upto);
            s.shift(upto);
        }
        s.finish();
        sent.extend_from_slice(&buf);
        sent
    }

    fn naive(token: &[u8], input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        mask_all(&mut out, &TokenFinder::new(token));
        out
    }

    #[test]
    fn masks_a_token_split_at_every_offset() {
        let token = b"sk-ant-oat01-SECRET";
        let input = [&b"data: {\"echo\":\""[..], token, b"\"}\n\n"].concat();
        let want = naive(token, &input);
        assert!(!want.windows(token.len()).any(|w| w == token));
        for a in 0..=input.len() {
            assert_eq!(stream(token, &input, &[a]), want, "split at {a}");
            for b in a..=input.len() {
                assert_eq!(stream(token, &input, &[a, b]), want, "split at {a},{b}");
            }
        }
    }

    #[test]
    fn one_byte_segments_and_overlapping_prefixes() {
        let token = b"aab";
        let input = b"aaab aab aaaab ab aa";
        let splits: Vec<usize> = (1..input.len()).collect();
        assert_eq!(stream(token, input, &splits), naive(token, input));
        assert_eq!(stream(token, input, &[]), b"a*** *** aa*** ab aa");
    }

    #[test]
    fn sse_events_are_never_held() {
        let mut s = Scrubber::new(FixedToken::mask(b"sk-ant-api03-x"));
        let mut buf = b"event: ping\ndata: {}\n\n".to_vec();
        let len = buf.len();
        s.scan(&mut buf, 0..len);
        assert_eq!(s.hold_from(), None);
    }

    #[test]
    fn a_prefix_at_the_end_is_held_then_released() {
        let mut s = Scrubber::new(FixedToken::mask(b"secret"));
        let mut buf = b"data: sec".to_vec();
        s.scan(&mut buf, 0..9);
        assert_eq!(s.hold_from(), Some(6));
        s.finish();
        assert_eq!(s.hold_from(), None);
    }
}
