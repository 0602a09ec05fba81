//! The credential over time: each token the proxy receives is a new [`Generation`]; a swap is
//! atomic for the requests that follow it, and a request keeps the generation it started
//! with until it ends.
//!
//! Where each generation lives, and for how long:
//! - the store holds the current one, and every older one a request still uses: together
//!   the *mask set*, the tokens every response masks;
//! - each request that uses a generation holds it (and counts as its user) until it ends;
//! - a client connection caches the current one between requests, and drops it when a newer
//!   one arrives, even while idle ([`Credentials::changed`]);
//! - a response masks the mask set as it is *now*, not as it was when the response began: it
//!   checks [`Credentials::epoch`] before each read is scanned, and takes the new set when the
//!   epoch moved ([`Credentials::masks`]).
//!
//! The ordering that makes the last point hold: a generation joins the mask set (and the epoch
//! moves) before a request that carries it can be written upstream: at the swap for the new
//! current one, in [`Credentials::start_use`] for an older one taken up again. So bytes in which
//! an upstream reflects it can only be read after the epoch moved, and the response that reads
//! them masks it. A generation leaves the set when it is neither current nor in use.
//!
//! When the last holder lets go, [`crate::secret::Token`] wipes it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::scrub::{Mask, Needle, TokenFinder};
use crate::secret::Token;

/// When the OAuth beta flag is merged (`OAUTH_BETA`). The store applies it to each token as
/// it arrives, the first and every replacement alike, so no caller decides it on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BetaRule {
    /// `on` / `off`; `None` is `auto`.
    pub setting: Option<bool>,
    /// TARGET is `https://api.anthropic.com`, where `auto` merges it for OAuth tokens.
    pub anthropic: bool,
}

impl BetaRule {
    /// Whether a request carrying `token` gets the flag.
    pub fn applies(self, token: &[u8]) -> bool {
        self.setting
            .unwrap_or_else(|| self.anthropic && token.starts_with(b"sk-ant-oat"))
    }
}

/// One token and what is decided from it.
pub struct Generation {
    /// 1 for the token read at startup, then one more per swap. Logged; never the token.
    pub number: u64,
    pub token: Token,
    /// Merge the OAuth beta flag for this token (decided when it arrived).
    pub oauth_beta: bool,
    /// Requests using this token right now.
    users: AtomicUsize,
}

impl Needle for Generation {
    fn finder(&self) -> &TokenFinder<'_> {
        self.token.finder()
    }
}

/// A request's use of a generation: counted while alive, and keeps the generation in the mask
/// set until it ends.
pub struct InUse<'c> {
    creds: &'c Credentials,
    generation: Arc<Generation>,
}

impl InUse<'_> {
    #[cfg(test)]
    pub fn generation(&self) -> &Arc<Generation> {
        &self.generation
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut state = self.creds.lock();
        let left = self.generation.users.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 && !Arc::ptr_eq(&state.current, &self.generation) {
            state.live.retain(|g| !Arc::ptr_eq(g, &self.generation));
            self.creds.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// What the store's lock guards.
struct State {
    current: Arc<Generation>,
    /// The mask set: the current generation and every older one a request still uses.
    live: Vec<Arc<Generation>>,
}

/// The store: the current generation, and the older ones still in use.
pub struct Credentials {
    state: Mutex<State>,
    /// Moves whenever the mask set changes; a response compares it before each read it scans.
    epoch: AtomicU64,
    last_number: AtomicU64,
    /// Tells idle connections that the current generation changed.
    notify: watch::Sender<u64>,
    /// Decides each generation's `oauth_beta`.
    beta: BetaRule,
    /// Until when (milliseconds since the Unix epoch) the current token may be sent; 0: for
    /// as long as it is current. Set by the source (the token's expiry, or the stale grace
    /// once a source fails); one load per request.
    usable_until_ms: AtomicU64,
    /// The generation the upstream last answered 401 to (0: none).
    rejected: AtomicU64,
}

impl Credentials {
    pub fn new(token: Token, beta: BetaRule) -> Credentials {
        let first = Arc::new(Generation {
            number: 1,
            oauth_beta: beta.applies(token.as_bytes()),
            token,
            users: AtomicUsize::new(0),
        });
        Credentials {
            state: Mutex::new(State {
                live: vec![first.clone()],
                current: first,
            }),
            epoch: AtomicU64::new(0),
            last_number: AtomicU64::new(1),
            notify: watch::Sender::new(1),
            beta,
            usable_until_ms: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current generation.
    pub fn current(&self) -> Arc<Generation> {
        self.lock().current.clone()
    }

    /// Whether `g` is still the current generation.
    pub fn is_current(&self, g: &Arc<Generation>) -> bool {
        Arc::ptr_eq(&self.lock().current, g)
    }

    /// Whether `token` is the current generation's token: an update that brings it again is
    /// no rotation. Compared in time independent of where the bytes differ.
    pub fn holds(&self, token: &Token) -> bool {
        let current = self.current();
        let (a, b) = (current.token.as_bytes(), token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y)) == 0
    }

    /// Sets until when the current token may be sent (`None`: for as long as it is current).
    pub fn set_usable_until(&self, until: Option<std::time::SystemTime>) {
        let ms = until.map_or(0, |t| {
            let ms = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis());
            u64::try_from(ms).unwrap_or(u64::MAX).max(1)
        });
        self.usable_until_ms.store(ms, Ordering::SeqCst);
    }

    /// Until when the current token may be sent, if there is a limit.
    pub fn usable_until(&self) -> Option<std::time::SystemTime> {
        match self.usable_until_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
        }
    }

    /// Whether the current token may be sent now: no request goes upstream with a token past
    /// its expiry, or past the stale grace of a failing source.
    pub fn usable(&self) -> bool {
        self.usable_until()
            .is_none_or(|until| std::time::SystemTime::now() < until)
    }

    /// The upstream answered 2xx to a request that carried generation `number`: a 401 seen
    /// for it before (which a client can provoke on an endpoint that refuses any credential)
    /// no longer marks the proxy not ready.
    pub fn mark_accepted(&self, number: u64) {
        let _ = self
            .rejected
            .compare_exchange(number, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The upstream answered 401 to a request that carried generation `number`.
    pub fn mark_rejected(&self, number: u64) {
        self.rejected.fetch_max(number, Ordering::SeqCst);
    }

    /// Readiness (`GET /ready`): a usable token is held and the upstream has not rejected
    /// the current generation; else the one-line reason.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.usable() {
            return Err(
                "no usable token: the token source is failing past the token's expiry or grace",
            );
        }
        if self.rejected.load(Ordering::SeqCst) == self.current().number {
            return Err("the upstream rejected the current token (401)");
        }
        Ok(())
    }

    /// A receiver that wakes when the current generation changes.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Makes `token` current; returns its generation number. It joins the mask set before it
    /// can be taken; requests already running keep theirs.
    pub fn swap(&self, token: Token) -> u64 {
        let number = self.last_number.fetch_add(1, Ordering::AcqRel) + 1;
        let next = Arc::new(Generation {
            number,
            oauth_beta: self.beta.applies(token.as_bytes()),
            token,
            users: AtomicUsize::new(0),
        });
        let old = {
            let mut state = self.lock();
            state.live.push(next.clone());
            let old = std::mem::replace(&mut state.current, next);
            if old.users.load(Ordering::SeqCst) == 0 {
                state.live.retain(|g| !Arc::ptr_eq(g, &old));
            }
            self.epoch.fetch_add(1, Ordering::SeqCst);
            old
        };
        // Outside the lock: the last holder of the old token wipes it here.
        drop(old);
        self.notify.send_replace(number);
        number
    }

    /// Starts a request's use of `g`, before anything carrying it is written upstream: an older
    /// generation taken up again joins the mask set now.
    pub fn start_use(&self, g: &Arc<Generation>) -> InUse<'_> {
        let mut state = self.lock();
        g.users.fetch_add(1, Ordering::SeqCst);
        if !state.live.iter().any(|l| Arc::ptr_eq(l, g)) {
            state.live.push(g.clone());
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        InUse {
            creds: self,
            generation: g.clone(),
        }
    }

    /// Moves whenever the mask set changes.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The mask set into `into` (replacing what it held); returns the epoch it belongs to.
    pub fn masks(&self, into: &mut Vec<Mask>) -> u64 {
        let state = self.lock();
        into.clear();
        into.extend(state.live.iter().map(|g| g.clone() as Mask));
        self.epoch.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::TokenHeader;

    fn token(s: &str) -> Token {
        Token::new(s.as_bytes(), &TokenHeader::Authorization).unwrap()
    }

    const OFF: BetaRule = BetaRule {
        setting: Some(false),
        anthropic: true,
    };

    #[test]
    fn the_beta_rule_decides_each_generation() {
        let auto = |anthropic| BetaRule {
            setting: None,
            anthropic,
        };
        let c = Credentials::new(token("sk-ant-oat01-a"), auto(true));
        assert!(c.current().oauth_beta, "auto: an OAuth token to Anthropic");
        c.swap(token("sk-ant-api03-b"));
        assert!(!c.current().oauth_beta, "auto: an API key, on the swap too");
        c.swap(token("sk-ant-oat01-c"));
        assert!(c.current().oauth_beta);
        assert!(
            !auto(false).applies(b"sk-ant-oat01-a"),
            "auto: another TARGET"
        );
        assert!(!OFF.applies(b"sk-ant-oat01-a"));
        let on = BetaRule {
            setting: Some(true),
            anthropic: false,
        };
        assert!(on.applies(b"sk-x"));
    }

    /// The tokens of the mask set, in its order.
    fn mask_set(c: &Credentials) -> Vec<Vec<u8>> {
        let mut masks = Vec::new();
        c.masks(&mut masks);
        masks.iter().map(|m| m.finder().needle().to_vec()).collect()
    }

    #[test]
    fn a_swap_leaves_running_requests_their_generation_until_they_end() {
        let c = Credentials::new(token("sk-first"), OFF);
        let first = c.current();
        let weak = Arc::downgrade(&first);
        let using = c.start_use(&first);
        drop(first);
        assert_eq!(c.swap(token("sk-second")), 2);
        assert_eq!(c.current().number, 2);
        assert_eq!(using.generation().token.as_bytes(), b"sk-first");
        assert_eq!(mask_set(&c), [&b"sk-first"[..], b"sk-second"]);
        drop(using);
        assert_eq!(mask_set(&c), [b"sk-second"]);
        assert_eq!(
            weak.strong_count(),
            0,
            "the first token was dropped (and wiped)"
        );
    }

    #[test]
    fn the_store_tells_the_current_token_again() {
        let c = Credentials::new(token("sk-first"), OFF);
        assert!(c.holds(&token("sk-first")));
        assert!(!c.holds(&token("sk-firs")) && !c.holds(&token("sk-firsT")));
        c.swap(token("sk-second"));
        assert!(!c.holds(&token("sk-first")) && c.holds(&token("sk-second")));
    }

    #[test]
    fn a_token_is_usable_until_its_limit() {
        use std::time::{Duration, SystemTime};
        let c = Credentials::new(token("sk-first"), OFF);
        assert!(c.usable() && c.usable_until().is_none());
        c.set_usable_until(Some(SystemTime::now() + Duration::from_secs(60)));
        assert!(c.usable());
        c.set_usable_until(Some(SystemTime::now() - Duration::from_secs(1)));
        assert!(!c.usable());
        c.set_usable_until(Some(std::time::UNIX_EPOCH));
        assert!(!c.usable(), "the epoch itself is a limit, not none");
        c.set_usable_until(None);
        assert!(c.usable());
        assert_eq!(c.readiness(), Ok(()));
        c.mark_rejected(1);
        assert!(c.readiness().unwrap_err().contains("rejected"));
        c.mark_accepted(1);
        assert!(
            c.readiness().is_ok(),
            "a later success clears a provoked 401"
        );
        c.mark_rejected(1);
        c.swap(token("sk-second"));
        assert_eq!(
            c.readiness(),
            Ok(()),
            "a new generation is not rejected yet"
        );
        c.set_usable_until(Some(std::time::UNIX_EPOCH));
        assert!(c.readiness().unwrap_err().contains("no usable token"));
    }

    #[test]
    fn an_unused_old_generation_is_not_masked_nor_kept() {
        let c = Credentials::new(token("sk-first"), OFF);
        let weak = Arc::downgrade(&c.current());
        c.swap(token("sk-second"));
        assert_eq!(mask_set(&c), [b"sk-second"]);
        assert_eq!(weak.strong_count(), 0);
    }

    /// Attack review (round three, finding 1): the mask set a running response reads grows
    /// with each token that comes into use, and the epoch tells it so, before the request
    /// that carries the token is written upstream; in both orders of the race.
    #[test]
    fn a_token_joins_the_mask_set_before_a_request_can_carry_it() {
        let c = Credentials::new(token("sk-first"), OFF);
        // A response began under generation 1.
        let mut masks = Vec::new();
        let seen = c.masks(&mut masks);
        assert_eq!(masks.len(), 1);
        // The token is replaced: the new one is in the set, and the epoch moved, before any
        // request can take it as current.
        c.swap(token("sk-second"));
        assert_ne!(c.epoch(), seen, "the response would not look again");
        let second = c.current();
        let _r2 = c.start_use(&second);
        assert_eq!(mask_set(&c), [b"sk-second"]);
        // The other order: a connection still holding generation 2 starts a request with it
        // after generation 3 is current and a response took the set without it.
        c.swap(token("sk-third"));
        drop(_r2);
        let seen = c.masks(&mut masks);
        assert_eq!(
            mask_set(&c),
            [b"sk-third"],
            "2 is neither current nor in use"
        );
        let _late = c.start_use(&second);
        assert_ne!(c.epoch(), seen, "the response would not look again");
        assert_eq!(mask_set(&c), [&b"sk-third"[..], b"sk-second"]);
    }
}
