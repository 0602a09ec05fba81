//! The credential over time: each token the proxy receives is a new [`Generation`]; a swap is
//! atomic for the requests that follow it, and a request keeps the generation it started
//! with until it ends.
//!
//! Where each generation lives, and for how long:
//! - the store holds the current one;
//! - each request that uses a generation holds it (and counts as its user) until it ends;
//! - a client connection caches the current one (and its searcher) between requests, and
//!   drops it when a newer one arrives, even while idle ([`Credentials::changed`]);
//! - a response masks every token a running request is still using, not only its own, so a
//!   response started while an older token is in use holds that one too, until it ends.
//!
//! When the last holder lets go, [`crate::secret::Token`] wipes it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;

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

/// A request's use of a generation: counted while alive.
pub struct InUse(Arc<Generation>);

impl InUse {
    #[cfg(test)]
    pub fn generation(&self) -> &Arc<Generation> {
        &self.0
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.users.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The store: the current generation, and the older ones that may still be in use.
pub struct Credentials {
    current: Mutex<Arc<Generation>>,
    /// Older generations, not kept alive by the store.
    older: Mutex<Vec<Weak<Generation>>>,
    last_number: AtomicU64,
    /// Tells idle connections that the current generation changed.
    notify: watch::Sender<u64>,
    /// Decides each generation's `oauth_beta`.
    beta: BetaRule,
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
            current: Mutex::new(first),
            older: Mutex::new(Vec::new()),
            last_number: AtomicU64::new(1),
            notify: watch::Sender::new(1),
            beta,
        }
    }

    /// The current generation.
    pub fn current(&self) -> Arc<Generation> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `g` is still the current generation.
    pub fn is_current(&self, g: &Arc<Generation>) -> bool {
        Arc::ptr_eq(&self.current.lock().unwrap_or_else(|e| e.into_inner()), g)
    }

    /// A receiver that wakes when the current generation changes.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Makes `token` current; returns its generation number. Requests already running keep
    /// theirs.
    pub fn swap(&self, token: Token) -> u64 {
        let number = self.last_number.fetch_add(1, Ordering::AcqRel) + 1;
        let next = Arc::new(Generation {
            number,
            oauth_beta: self.beta.applies(token.as_bytes()),
            token,
            users: AtomicUsize::new(0),
        });
        let old = {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *current, next)
        };
        let mut older = self.older.lock().unwrap_or_else(|e| e.into_inner());
        older.retain(|w| w.strong_count() > 0);
        older.push(Arc::downgrade(&old));
        drop(older);
        drop(old);
        self.notify.send_replace(number);
        number
    }

    /// Older generations that a running request still uses: their tokens are masked too.
    pub fn older_in_use(&self) -> Vec<Arc<Generation>> {
        let older = self.older.lock().unwrap_or_else(|e| e.into_inner());
        older
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|g| g.users.load(Ordering::Acquire) > 0)
            .collect()
    }

    /// Whether any older generation is still in memory (for tests and the log).
    #[cfg(test)]
    pub fn older_alive(&self) -> usize {
        let older = self.older.lock().unwrap_or_else(|e| e.into_inner());
        older.iter().filter(|w| w.strong_count() > 0).count()
    }
}

/// Starts a request's use of `g`.
pub fn use_generation(g: &Arc<Generation>) -> InUse {
    g.users.fetch_add(1, Ordering::AcqRel);
    InUse(g.clone())
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

    #[test]
    fn a_swap_leaves_running_requests_their_generation_until_they_end() {
        let c = Credentials::new(token("sk-first"), OFF);
        let first = c.current();
        let using = use_generation(&first);
        drop(first);
        assert_eq!(c.swap(token("sk-second")), 2);
        assert_eq!(c.current().number, 2);
        assert_eq!(using.generation().token.as_bytes(), b"sk-first");
        let older = c.older_in_use();
        assert_eq!(older.len(), 1);
        drop(older);
        drop(using);
        assert!(c.older_in_use().is_empty());
        assert_eq!(
            c.older_alive(),
            0,
            "the first token was dropped (and wiped)"
        );
    }

    #[test]
    fn an_unused_old_generation_is_not_masked_nor_kept() {
        let c = Credentials::new(token("sk-first"), OFF);
        c.swap(token("sk-second"));
        assert!(c.older_in_use().is_empty());
        assert_eq!(c.older_alive(), 0);
    }
}
