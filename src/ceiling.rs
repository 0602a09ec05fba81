//! Pure: the ceilings of one proxy process (`LIMIT_TOKENS`, `LIMIT_REQUESTS`,
//! `LIMIT_CONCURRENT`), a fuse for one agent loop that runs away, not a billing system.
//!
//! Each ceiling is checked once per request, before anything is forwarded; a response already
//! running is never cut. Time comes in as an [`Instant`] (no clock is read here), so the
//! windows are tested by passing instants.
//!
//! The windows are bucketed: each is a ring of [`BUCKETS`] buckets of a sixtieth of the window
//! (`600/1m`: one-second buckets). What is counted stays in the window until its bucket falls
//! out of the ring, so an event counts for between 59/60 of the window and the whole of it:
//! the ceiling frees up at most one bucket early, never late. The state is in memory only: a
//! restart starts every count at zero (the fuse is per process). A ceiling without a window
//! counts for the process's lifetime.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::Problem;

/// The buckets of one window: the window's precision is one bucket, 1/60 of it.
pub const BUCKETS: usize = 60;

/// `Retry-After` (RFC 9110 §10.2.3) for a ceiling that counts for the process's lifetime: it
/// frees up only when the proxy restarts. The Anthropic SDKs honour a `retry-after` only below 60 seconds (above
/// it they fall back to their own short backoff), and a value above 60 tells a client that
/// does honour it that a prompt retry is pointless; `x-should-retry: false` (sent with every
/// ceiling's refusal) tells the SDKs not to retry at all. One hour, not more: an operator
/// who restarts the proxy with a higher ceiling wants the loop back soon.
pub const LIFETIME_RETRY_AFTER: u64 = 3600;

/// One counted ceiling: at most `max` within `window`, or within the process's lifetime
/// (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub max: u64,
    pub window: Option<Duration>,
}

/// The ceilings configured; each `None` is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spec {
    /// `LIMIT_TOKENS`: tokens of all four kinds (input, output, cache read, cache creation).
    pub tokens: Option<Rate>,
    /// `LIMIT_REQUESTS`: requests forwarded.
    pub requests: Option<Rate>,
    /// `LIMIT_CONCURRENT`: requests in flight, streams included.
    pub concurrent: Option<u32>,
}

impl Spec {
    /// No ceiling at all: [`Ceilings::check`] takes no lock.
    pub fn is_off(&self) -> bool {
        *self == Spec::default()
    }
}

/// Which ceiling refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Tokens,
    Requests,
    Concurrent,
}

impl Limit {
    /// The setting that configures it.
    pub fn setting(self) -> &'static str {
        match self {
            Limit::Tokens => "LIMIT_TOKENS",
            Limit::Requests => "LIMIT_REQUESTS",
            Limit::Concurrent => "LIMIT_CONCURRENT",
        }
    }
}

/// A request refused by a ceiling, and when asking again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub which: Limit,
    /// Whole seconds (rounded up, at least 1) until the window frees enough;
    /// [`LIFETIME_RETRY_AFTER`] for a lifetime ceiling; 1 for the concurrency ceiling (a slot
    /// frees whenever a response ends, which cannot be foreseen).
    pub retry_after_secs: u64,
}

impl Refusal {
    /// The problem the connection answers: 429 with this `retry-after`.
    pub fn problem(self) -> Problem {
        let secs = u32::try_from(self.retry_after_secs).unwrap_or(u32::MAX);
        match self.which {
            Limit::Tokens => Problem::TokenCeiling(secs),
            Limit::Requests => Problem::RequestCeiling(secs),
            Limit::Concurrent => Problem::ConcurrencyCeiling(secs),
        }
    }
}

/// A count within a sliding ring of buckets, or over the lifetime.
#[derive(Debug)]
struct Counter {
    max: u64,
    window: Option<Ring>,
    /// The lifetime count (used when there is no window).
    total: u64,
}

/// The ring of one window. Bucket number `b` covers `[origin + b*width, origin + (b+1)*width)`
/// and lives in slot `b % BUCKETS`; the ring holds buckets `newest - 59 ..= newest`.
#[derive(Debug)]
struct Ring {
    width_nanos: u64,
    slots: [u64; BUCKETS],
    newest: u64,
}

impl Ring {
    fn new(window: Duration) -> Ring {
        let width = (window.as_nanos() / BUCKETS as u128).clamp(1, u128::from(u64::MAX));
        Ring {
            width_nanos: width as u64,
            slots: [0; BUCKETS],
            newest: 0,
        }
    }

    /// The bucket `now` falls in.
    fn bucket(&self, origin: Instant, now: Instant) -> u64 {
        let since = now.saturating_duration_since(origin).as_nanos();
        (since / u128::from(self.width_nanos)).min(u128::from(u64::MAX)) as u64
    }

    /// Moves the ring to `now`, emptying the buckets that fell out. An instant older than the
    /// newest bucket (two threads racing for the lock) counts in the newest bucket.
    fn advance(&mut self, origin: Instant, now: Instant) {
        let cur = self.bucket(origin, now);
        if cur <= self.newest {
            return;
        }
        let stale = (cur - self.newest).min(BUCKETS as u64);
        for b in (cur - stale + 1)..=cur {
            self.slots[(b % BUCKETS as u64) as usize] = 0;
        }
        self.newest = cur;
    }

    fn sum(&self) -> u64 {
        self.slots.iter().fold(0, |a, &n| a.saturating_add(n))
    }

    fn add(&mut self, n: u64) {
        let slot = &mut self.slots[(self.newest % BUCKETS as u64) as usize];
        *slot = slot.saturating_add(n);
    }

    /// Whole seconds from `now` until the sum drops below `max`: the oldest buckets fall out
    /// one by one, bucket `b` at the start of bucket `b + BUCKETS`.
    fn frees_in(&self, max: u64, origin: Instant, now: Instant) -> u64 {
        let mut left = self.sum();
        let oldest = self.newest.saturating_sub(BUCKETS as u64 - 1);
        let mut at = self.newest + 1;
        for b in oldest..=self.newest {
            // Saturating: the sum saturates at u64::MAX, so the slots may add up to more.
            left = left.saturating_sub(self.slots[(b % BUCKETS as u64) as usize]);
            if left < max {
                at = b;
                break;
            }
        }
        let expires = u128::from(at + BUCKETS as u64) * u128::from(self.width_nanos);
        let since = now.saturating_duration_since(origin).as_nanos();
        let wait = expires.saturating_sub(since);
        let secs = wait.div_ceil(1_000_000_000);
        u64::try_from(secs).unwrap_or(u64::MAX).max(1)
    }
}

impl Counter {
    fn new(rate: Rate) -> Counter {
        Counter {
            max: rate.max,
            window: rate.window.map(Ring::new),
            total: 0,
        }
    }

    /// `None` when below the ceiling, else the seconds until it frees up.
    fn full(&mut self, origin: Instant, now: Instant) -> Option<u64> {
        match &mut self.window {
            None => (self.total >= self.max).then_some(LIFETIME_RETRY_AFTER),
            Some(ring) => {
                ring.advance(origin, now);
                (ring.sum() >= self.max).then(|| ring.frees_in(self.max, origin, now))
            }
        }
    }

    fn add(&mut self, n: u64, origin: Instant, now: Instant) {
        match &mut self.window {
            None => self.total = self.total.saturating_add(n),
            Some(ring) => {
                ring.advance(origin, now);
                ring.add(n);
            }
        }
    }
}

/// What the lock guards.
#[derive(Debug)]
struct State {
    tokens: Option<Counter>,
    requests: Option<Counter>,
    in_flight: u32,
}

/// The ceilings of this process, shared by every connection. One lock, taken once when a
/// request is checked, once when its permit is dropped and once when its usage is recorded:
/// never per byte.
#[derive(Debug)]
pub struct Ceilings {
    spec: Spec,
    /// Where bucket 0 begins.
    origin: Instant,
    state: Mutex<State>,
}

impl Ceilings {
    /// The ceilings of `spec`, their windows starting at `origin` (the process's start).
    pub fn new(spec: Spec, origin: Instant) -> Ceilings {
        Ceilings {
            spec,
            origin,
            state: Mutex::new(State {
                tokens: spec.tokens.map(Counter::new),
                requests: spec.requests.map(Counter::new),
                in_flight: 0,
            }),
        }
    }

    /// A poisoned lock still holds counts that are whole (every update is one statement).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a request, or refuses it. An admitted request is counted (`LIMIT_REQUESTS`)
    /// and holds a concurrency slot until its [`Permit`] is dropped. A refused one counts
    /// toward nothing. When several ceilings are full, the one that frees up last is named,
    /// so its `retry-after` is one after which a retry can succeed. `spends_tokens`: whether
    /// the request's tokens count (see [`counts_tokens`]).
    pub fn check(&self, now: Instant, spends_tokens: bool) -> Result<Permit<'_>, Refusal> {
        // Made only once admitted: its drop gives the slot back.
        let permit = || Permit {
            owner: self,
            spends_tokens,
        };
        if self.spec.is_off() {
            return Ok(permit());
        }
        let mut state = self.lock();
        let origin = self.origin;
        let mut refusal: Option<Refusal> = None;
        let mut refuse = |which: Limit, secs: Option<u64>| {
            if let Some(retry_after_secs) = secs {
                if refusal.is_none_or(|r| retry_after_secs > r.retry_after_secs) {
                    refusal = Some(Refusal {
                        which,
                        retry_after_secs,
                    });
                }
            }
        };
        let tokens = state.tokens.as_mut().and_then(|c| c.full(origin, now));
        refuse(Limit::Tokens, tokens);
        let requests = state.requests.as_mut().and_then(|c| c.full(origin, now));
        refuse(Limit::Requests, requests);
        let busy = self.spec.concurrent.is_some_and(|n| state.in_flight >= n);
        refuse(Limit::Concurrent, busy.then_some(1));
        if let Some(r) = refusal {
            return Err(r);
        }
        if let Some(c) = state.requests.as_mut() {
            c.add(1, origin, now);
        }
        state.in_flight += 1;
        Ok(permit())
    }

    /// Counts `n` tokens an exchange used, at `now` (when its usage became final).
    pub fn record_tokens(&self, n: u64, now: Instant) {
        if self.spec.tokens.is_none() || n == 0 {
            return;
        }
        if let Some(c) = self.lock().tokens.as_mut() {
            c.add(n, self.origin, now);
        }
    }

    /// Requests in flight (admitted, their permit not yet dropped).
    pub fn in_flight(&self) -> u32 {
        if self.spec.is_off() {
            return 0;
        }
        self.lock().in_flight
    }
}

/// An admitted request's concurrency slot, held for the whole exchange (the response stream
/// included) and given back when dropped.
#[derive(Debug)]
pub struct Permit<'a> {
    owner: &'a Ceilings,
    spends_tokens: bool,
}

impl Permit<'_> {
    /// Counts the `n` tokens this exchange used, at `now` (when its usage became final);
    /// nothing for a `count_tokens` request.
    pub fn record_tokens(&self, n: u64, now: Instant) {
        if self.spends_tokens {
            self.owner.record_tokens(n, now);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.owner.spec.is_off() {
            let mut state = self.owner.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }
}

/// Whether the tokens of a request to `path` count toward `LIMIT_TOKENS`: not those of a
/// request whose last path segment is `count_tokens` (it only estimates a prompt's size; the
/// tokens it reports are not spent).
pub fn counts_tokens(path: &[u8]) -> bool {
    let path = path.split(|&b| b == b'?').next().unwrap_or(b"");
    let last = path.rsplit(|&b| b == b'/').next().unwrap_or(b"");
    last != b"count_tokens"
}

#[cfg(test)]
mod tests;
