//! What every connection shares, built once at startup and never changed: the configuration,
//! the token, the upstream connector and the pool of idle upstream connections.

use crate::config::Config;
use crate::rewrite::Rewrite;
use crate::secret::Token;
use crate::upstream::{Connector, Pool};

/// Everything a connection needs, built once and shared (`Arc`).
pub struct Proxy {
    pub cfg: Config,
    pub token: Token,
    pub connector: Connector,
    pub pool: Pool,
    /// Merge the OAuth beta flag (decided at startup from the token and TARGET).
    pub oauth_beta: bool,
}

impl Proxy {
    /// What the upstream-head rewrite adds to every request.
    pub fn rewrite(&self) -> Rewrite<'_> {
        Rewrite {
            target: &self.cfg.target,
            credential_line: self.token.header_line(),
            phantom: self.cfg.phantom.as_ref().map(|p| p.0.as_slice()),
            oauth_beta: self.oauth_beta,
        }
    }
}
