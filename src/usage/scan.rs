//! The search over the body: `"usage` keys (each copied to its line's end in an event
//! stream, or to the body's end in JSON) and, until a model is found, `"model` keys. Keys may
//! straddle two feeds: the last bytes of each feed are carried to the next.

use std::sync::OnceLock;

use memchr::memmem::Finder;

use super::json::{self, Decision};
use super::{Model, Usage};
use crate::limits::{USAGE_EVENT_MAX, USAGE_MODEL_MAX};

/// The keys searched for; both six bytes long, so one carry serves both.
const USAGE_KEY: &[u8; KEY] = b"\"usage";
const MODEL_KEY: &[u8; KEY] = b"\"model";
const KEY: usize = 6;
const CARRY: usize = KEY - 1;
const USAGE_PARTIAL: u8 = 1;
const MODEL_PARTIAL: u8 = 2;

/// Room for `"modelVersion" : "`, a name of [`USAGE_MODEL_MAX`] bytes and its quote.
const SNIP: usize = USAGE_MODEL_MAX + 32;

fn finders() -> &'static (Finder<'static>, Finder<'static>) {
    static FINDERS: OnceLock<(Finder<'static>, Finder<'static>)> = OnceLock::new();
    FINDERS.get_or_init(|| (Finder::new(USAGE_KEY), Finder::new(MODEL_KEY)))
}

pub(super) struct Scan {
    /// An event stream: a usage object ends with its line.
    sse: bool,
    /// The last bytes fed (up to [`CARRY`]).
    carry: [u8; CARRY],
    carry_len: usize,
    /// Which keys the carry ends with the start of ([`USAGE_PARTIAL`], [`MODEL_PARTIAL`]).
    partial: u8,
    /// From the current `"usage` key on, up to [`USAGE_EVENT_MAX`] bytes.
    capture: Vec<u8>,
    capturing: bool,
    /// From the current `"model` key on, up to [`SNIP`] bytes, while the model is unknown.
    snip: [u8; SNIP],
    snip_len: usize,
    snipping: bool,
    /// Where the current `"model` key starts, in the body.
    snip_at: u64,
    /// Keys that start before this are not looked at (they were in a rejected one's bytes).
    model_from: u64,
    model_found: bool,
    /// Bytes fed before the current feed.
    fed: u64,
}

impl Scan {
    pub(super) fn new(sse: bool) -> Scan {
        Scan {
            sse,
            carry: [0; CARRY],
            carry_len: 0,
            partial: 0,
            capture: Vec::new(),
            capturing: false,
            snip: [0; SNIP],
            snip_len: 0,
            snipping: false,
            snip_at: 0,
            model_from: 0,
            model_found: false,
            fed: 0,
        }
    }

    pub(super) fn held(&self) -> usize {
        self.capture.len()
    }

    /// Small enough to inline: the usual feed costs one search and the carry, without the
    /// general way's frame.
    #[inline]
    pub(super) fn feed(&mut self, c: &[u8], usage: &mut Usage) {
        if !c.is_empty() && !self.quiet(c) {
            self.search(c, usage);
        }
    }

    /// The general way: keys straddling from the last feed, the model, captures.
    #[inline(never)]
    fn search(&mut self, c: &[u8], usage: &mut Usage) {
        let (usage_key, model_key) = finders();
        // A key that began in the carry: where in `c` it ends.
        let straddle = |key: &[u8; KEY]| {
            let k = self.carry_len;
            let mut w = [0u8; 2 * CARRY];
            let t = c.len().min(CARRY);
            w[..k].copy_from_slice(&self.carry[..k]);
            w[k..k + t].copy_from_slice(&c[..t]);
            (0..k)
                .find(|&s| w[s..k + t].starts_with(key))
                .map(|s| s + KEY - k)
        };
        // Only when the last feed ended with the start of a key (rare): no copy otherwise.
        let usage_straddle = (self.partial & USAGE_PARTIAL != 0)
            .then(|| straddle(USAGE_KEY))
            .flatten();
        let model_straddle = (self.partial & MODEL_PARTIAL != 0 && !self.model_found)
            .then(|| straddle(MODEL_KEY))
            .flatten();
        self.keep_carry(c);

        if !self.model_found {
            self.models(c, model_straddle, model_key, usage);
        }
        self.fed += c.len() as u64;
        let mut pos = 0;
        if let Some(end) = usage_straddle {
            self.start_capture();
            pos = end;
        }
        loop {
            let next = usage_key.find(&c[pos..]).map(|i| pos + i);
            if !self.capturing {
                match next {
                    Some(m) => {
                        self.start_capture();
                        pos = m + KEY;
                        continue;
                    }
                    None => return,
                }
            }
            let line_end = if self.sse {
                memchr::memchr(b'\n', &c[pos..]).map(|i| pos + i)
            } else {
                None
            };
            let restart = match (next, line_end) {
                (Some(m), e) if e.is_none_or(|e| m < e) => Some(m),
                _ => None,
            };
            match (restart, line_end) {
                (Some(m), _) => {
                    self.push(&c[pos..m]);
                    self.start_capture();
                    pos = m + KEY;
                }
                (_, Some(e)) => {
                    self.push(&c[pos..e]);
                    self.end_capture(usage);
                    pos = e + 1;
                }
                (None, None) => return self.push(&c[pos..]),
            }
        }
    }

    /// The bulk of a stream (text deltas and the like) in one search and the carry: when
    /// nothing is open (no capture, no model value, the model known) and no `"usage` key
    /// straddles from the last feed, a feed without the key changes nothing but the carry
    /// and the count of bytes fed, which is all this does. Whether it did so; otherwise
    /// `feed` goes the general way (searching again: a key is found a few times a body).
    #[inline]
    fn quiet(&mut self, c: &[u8]) -> bool {
        let open = self.capturing || self.snipping || !self.model_found;
        if open || self.partial & USAGE_PARTIAL != 0 || finders().0.find(c).is_some() {
            return false;
        }
        self.keep_carry(c);
        self.fed += c.len() as u64;
        true
    }

    /// The body ended whole: a JSON body's last usage object is read. An event stream's
    /// unfinished line is dropped, as an event stream's reader drops an unfinished event.
    pub(super) fn finish(&mut self, usage: &mut Usage) {
        if !self.sse {
            self.end_capture(usage);
        }
    }

    /// A `"usage` key: a capture begins (in JSON, dropping the one before: only the last
    /// counts; in an event stream the one before ended with its line).
    fn start_capture(&mut self) {
        self.capture.clear();
        self.capture.extend_from_slice(USAGE_KEY);
        self.capturing = true;
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(USAGE_EVENT_MAX - self.capture.len());
        self.capture.extend_from_slice(&bytes[..n]);
    }

    fn end_capture(&mut self, usage: &mut Usage) {
        if self.capturing {
            if let Some(f) = json::usage(&self.capture) {
                usage.merge(f);
            }
            self.capture.clear();
            self.capturing = false;
        }
    }

    /// Looks for the model in `c` until one is found: the first `"model` key whose value
    /// decides. After a key whose bytes say no model, the search goes on from the byte that
    /// decided so, however the body is split.
    fn models(&mut self, c: &[u8], straddle: Option<usize>, key: &Finder<'_>, usage: &mut Usage) {
        let base = self.fed;
        let floor = |from: u64| {
            usize::try_from(from.saturating_sub(base)).map_or(c.len(), |f| f.min(c.len()))
        };
        let mut pos = if self.snipping {
            0
        } else {
            floor(self.model_from)
        };
        if let Some(end) = straddle {
            let at = base + end as u64 - KEY as u64;
            if !self.snipping && at >= self.model_from {
                self.snip_start(at);
                pos = end;
            }
        }
        loop {
            if self.snipping {
                let n = (SNIP - self.snip_len).min(c.len() - pos);
                self.snip[self.snip_len..self.snip_len + n].copy_from_slice(&c[pos..pos + n]);
                self.snip_len += n;
                let full = self.snip_len == SNIP;
                match json::model_value(&self.snip[..self.snip_len], full) {
                    Decision::Model(m) => return self.model(m, usage),
                    Decision::Undecided => return,
                    Decision::None => {
                        self.snipping = false;
                        // Searching on from the byte that decided, wherever the feeds
                        // were cut.
                        let undecided = |d: &usize| {
                            json::model_value(&self.snip[..*d], false) == Decision::Undecided
                        };
                        let d = (KEY..self.snip_len).find(|d| !undecided(d));
                        self.model_from = self.snip_at + d.unwrap_or(self.snip_len) as u64;
                        pos = pos.max(floor(self.model_from));
                    }
                }
            }
            match key.find(&c[pos..]) {
                Some(i) => {
                    self.snip_start(base + (pos + i) as u64);
                    pos += i + KEY;
                }
                None => return,
            }
        }
    }

    /// A `"model` key that starts at `at` (in the body).
    fn snip_start(&mut self, at: u64) {
        self.snip[..KEY].copy_from_slice(MODEL_KEY);
        self.snip_len = KEY;
        self.snipping = true;
        self.snip_at = at;
    }

    fn model(&mut self, m: Model, usage: &mut Usage) {
        self.model_found = true;
        self.snipping = false;
        usage.model = m;
    }

    #[inline]
    fn keep_carry(&mut self, c: &[u8]) {
        if let Some(tail) = c.last_chunk::<CARRY>() {
            self.carry = *tail;
            self.carry_len = CARRY;
        } else {
            self.carry_short(c);
        }
        // A feed that ends with the start of a key ends with one of the keys' first five
        // bytes; most end otherwise (an event's `\n`, a string's `}`), and the carry's
        // quote need not be looked for. `c` is not empty, so neither is the carry.
        let last = self.carry[self.carry_len - 1];
        self.partial = if matches!(
            last,
            b'"' | b'u' | b's' | b'a' | b'g' | b'm' | b'o' | b'd' | b'e'
        ) {
            self.partial_at_end()
        } else {
            0
        };
    }

    /// Which keys the carry ends with the start of.
    #[inline(never)]
    fn partial_at_end(&self) -> u8 {
        // A key can only straddle from the carry's last quote on (each key has one quote,
        // its first byte).
        let tail = &self.carry[..self.carry_len];
        match tail.iter().rposition(|&b| b == b'"') {
            Some(i) => {
                // Byte by byte (at most five): no `memcmp` call on every feed.
                let begins = |key: &[u8]| tail[i..].iter().zip(key).all(|(a, b)| a == b);
                let (usage, model) = (begins(USAGE_KEY), begins(MODEL_KEY));
                (u8::from(usage) * USAGE_PARTIAL) | (u8::from(model) * MODEL_PARTIAL)
            }
            None => 0,
        }
    }

    /// The carry after a feed shorter than it: its last bytes and the feed.
    fn carry_short(&mut self, c: &[u8]) {
        let mut all = [0u8; 2 * CARRY];
        let k = self.carry_len;
        let t = c.len().min(CARRY);
        all[..k].copy_from_slice(&self.carry[..k]);
        all[k..k + t].copy_from_slice(&c[c.len() - t..]);
        let total = k + t;
        let keep = total.min(CARRY);
        self.carry[..keep].copy_from_slice(&all[total - keep..total]);
        self.carry_len = keep;
    }
}
