//! Refresh on rejection: when the upstream answers 401 to a request that carried the current
//! generation, the source (`TOKEN_COMMAND`, `TOKEN_FILE`) is asked once for a new token, and
//! the request waits for the answer (at most [`REFETCH_WAIT`]) before its 401 is relayed: if
//! the token changed, the 401 tells the client to retry (`x-should-retry: true`), and the
//! retry carries the new token. Nothing is buffered or replayed by the proxy.
//!
//! One re-fetch at a time (every rejection that arrives meanwhile waits for the same one),
//! and for one generation again only after a backoff ([`TOKEN_RETRY_MIN`] doubling up to
//! [`TOKEN_RETRY_MAX`]), so a revoked key does not hammer the source. The re-fetch itself runs
//! on the token-update thread, the one that also refreshes on schedule and on SIGHUP.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::credential::{Credentials, Generation};
use crate::limits::{REFETCH_WAIT, TOKEN_RETRY_MAX, TOKEN_RETRY_MIN};

#[derive(Default)]
struct State {
    /// A re-fetch was asked for and the update thread has not taken it yet.
    pending: bool,
    /// The number of the last round asked for.
    asked: u64,
    /// The generation last re-fetched for, and when it may be again.
    last_generation: u64,
    next_allowed: Option<Instant>,
    backoff: Duration,
}

/// The rejections' side and the update thread's side of re-fetching.
pub struct Refetch {
    state: Mutex<State>,
    /// The last round the update thread finished.
    done: watch::Sender<u64>,
    /// Wakes the update thread.
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Refetch {
    pub fn new(wake: Box<dyn Fn() + Send + Sync>) -> Arc<Refetch> {
        Arc::new(Refetch {
            state: Mutex::default(),
            done: watch::Sender::new(0),
            wake,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a re-fetch after a rejection of generation `number`; returns the round to
    /// wait for, or `None` when the backoff for this generation has not passed.
    fn ask(&self, number: u64, now: Instant) -> Option<u64> {
        let mut s = self.lock();
        if s.pending {
            return Some(s.asked);
        }
        if s.last_generation == number {
            if s.next_allowed.is_some_and(|t| now < t) {
                return None;
            }
            s.backoff = (s.backoff * 2).clamp(TOKEN_RETRY_MIN, TOKEN_RETRY_MAX);
        } else {
            s.last_generation = number;
            s.backoff = TOKEN_RETRY_MIN;
        }
        s.next_allowed = Some(now + s.backoff);
        s.pending = true;
        s.asked += 1;
        let round = s.asked;
        drop(s);
        (self.wake)();
        Some(round)
    }

    /// The update thread: the round it is to run now, if one was asked for.
    pub fn take(&self) -> Option<u64> {
        let mut s = self.lock();
        std::mem::take(&mut s.pending).then_some(s.asked)
    }

    /// The update thread: round `round` is over (a new token is in, or not).
    pub fn finish(&self, round: u64) {
        self.done.send_modify(|d| *d = (*d).max(round));
    }

    /// After the upstream rejected generation `g`: whether a retry would carry another
    /// token. `g` already replaced: yes at once. Else a re-fetch is asked for (unless in
    /// backoff) and waited for, at most [`REFETCH_WAIT`].
    pub async fn after_rejection(&self, creds: &Credentials, g: &Arc<Generation>) -> bool {
        if !creds.is_current(g) {
            return true;
        }
        let mut done = self.done.subscribe();
        let mut changed = creds.changed();
        let Some(round) = self.ask(g.number, Instant::now()) else {
            return false;
        };
        let wait = async {
            while *done.borrow_and_update() < round && creds.is_current(g) {
                tokio::select! {
                    r = done.changed() => if r.is_err() { break },
                    r = changed.changed() => if r.is_err() { break },
                }
            }
        };
        let _ = tokio::time::timeout(REFETCH_WAIT, wait).await;
        !creds.is_current(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_refetch_at_a_time_and_backoff_per_generation() {
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let r = Refetch::new(Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(r.ask(1, at(0)), Some(1));
        assert_eq!(r.ask(1, at(1)), Some(1), "joins the pending one");
        assert_eq!(
            r.ask(2, at(1)),
            Some(1),
            "single flight, whatever the generation"
        );
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        assert_eq!(r.take(), Some(1));
        assert_eq!(r.take(), None);
        r.finish(1);
        assert_eq!(r.ask(1, at(500)), None, "backoff: 1 s");
        assert_eq!(r.ask(1, at(1000)), Some(2));
        r.take();
        r.finish(2);
        assert_eq!(r.ask(1, at(2500)), None, "backoff: 2 s");
        assert_eq!(r.ask(1, at(3000)), Some(3));
        r.take();
        assert_eq!(r.ask(2, at(3001)), Some(4), "another generation asks anew");
    }
}
