//! What every connection shares, built once at startup: the configuration, the credential
//! store, the upstream connector, the pool of idle upstream connections and the ceilings.

use std::sync::Arc;

use crate::ceiling::Ceilings;
use crate::config::Config;
use crate::credential::{Credentials, Generation};
use crate::log::Log;
use crate::metrics::Metrics;
use crate::refetch::Refetch;
use crate::rewrite::Rewrite;
use crate::secret::TokenHeader;
use crate::upstream::{Connector, Pool};
use crate::usage::{self, Usage};

/// Everything a connection needs, built once and shared (`Arc`).
pub struct Proxy {
    pub cfg: Config,
    /// The ceilings' counts (`LIMIT_*`), for this process's lifetime.
    pub ceilings: Ceilings,
    /// The token's generations; the intake thread swaps new ones in.
    pub creds: Arc<Credentials>,
    pub connector: Connector,
    pub pool: Pool,
    /// This proxy's counters, gauges and histograms (what `/metrics` renders).
    pub metrics: Arc<Metrics>,
    /// This proxy's log lines.
    pub log: Arc<Log>,
    /// Re-fetches the token after a 401; `None` for a source that cannot be re-read (stdin).
    pub refetch: Option<Arc<Refetch>>,
}

impl Proxy {
    /// Where the token usage of one exchange becomes final, once, when its response ended
    /// (whole or cut): what it counts toward. `count_tokens` requests never come here.
    pub fn usage_final(&self, usage: &Usage) {
        self.metrics.tokens.add(usage);
        self.ceilings
            .record_tokens(usage.total(), std::time::Instant::now());
    }

    /// The attribution fields of a request head (`LOG_REQUEST_HEADERS`) into `out`, each
    /// withheld if it holds the phantom or any token a response masks now.
    pub fn attribution<'a>(&'a self, head: &[u8], out: &mut Vec<(&'a str, String)>) {
        let mut live = Vec::new();
        let mut read = false;
        let phantom = self.cfg.phantom.as_ref().map(|p| p.0.as_slice());
        let mut secret = |value: &[u8]| {
            let phantom_in = phantom.is_some_and(|p| memchr::memmem::find(value, p).is_some());
            if !read {
                self.creds.masks(&mut live);
                read = true;
            }
            phantom_in || live.iter().any(|t| t.finder().find(value).is_some())
        };
        usage::attribution(head, &self.cfg.log_headers, &mut secret, out);
    }

    /// What the upstream-head rewrite adds to a request that uses generation `g`.
    pub fn rewrite<'a>(&'a self, g: &'a Generation) -> Rewrite<'a> {
        let credential_field = match &self.cfg.token_header {
            TokenHeader::Custom(name) => Some(name.as_bytes()),
            // The standard credential fields are removed from every request anyway.
            TokenHeader::Authorization | TokenHeader::XApiKey => None,
        };
        Rewrite {
            target: &self.cfg.target,
            credential_line: g.token.header_line(),
            credential_field,
            phantom: self.cfg.phantom.as_ref().map(|p| p.0.as_slice()),
            allow: self.cfg.allow.as_ref(),
            oauth_beta: g.oauth_beta,
            websocket: self.cfg.websocket.as_ref().map(|w| &w.paths),
        }
    }
}
