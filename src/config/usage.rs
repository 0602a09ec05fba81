//! The usage settings: whether responses' token usage is read (`USAGE_OBSERVE`), and which
//! request fields the access line names for attribution (`LOG_REQUEST_HEADERS`).

use super::{Config, ConfigError};
use crate::limits::LOG_HEADERS_MAX;
use crate::secret::TokenHeader;
use crate::syntax::is_tchar;

/// The fields logged by default: Claude Code's, which tell one agent loop (and its
/// sub-agents) from another.
pub const DEFAULT_LOG_HEADERS: [&str; 3] = [
    "x-claude-code-session-id",
    "x-claude-code-agent-id",
    "x-claude-code-parent-agent-id",
];

/// Fields that carry credentials, whole names.
const CREDENTIAL_FIELDS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
    "x-goog-api-key",
];

/// Parts of a name that suggest a credential: a field named with one is never logged.
const CREDENTIAL_PARTS: [&str; 6] = ["key", "token", "secret", "auth", "cookie", "password"];

pub(super) fn read(
    var: &impl Fn(&'static str) -> Option<String>,
    cfg: &mut Config,
) -> Result<(), ConfigError> {
    cfg.usage_observe = match var("USAGE_OBSERVE").as_deref() {
        None | Some("on") => true,
        Some("off") => false,
        Some(_) => return Err(ConfigError::new("USAGE_OBSERVE", "must be on or off")),
    };
    if let Some(list) = var("LOG_REQUEST_HEADERS") {
        cfg.log_headers = attribution_headers(&list, &cfg.token_header)
            .map_err(|r| ConfigError::new("LOG_REQUEST_HEADERS", r))?;
    }
    Ok(())
}

/// The attribution fields of `LOG_REQUEST_HEADERS` (`off`: none), lower-cased (R40): at most
/// [`LOG_HEADERS_MAX`] field names, none of them a credential field (those above, the
/// `TOKEN_HEADER`, or any name with a part that suggests one). The reason names the rule,
/// never the value.
pub fn attribution_headers(list: &str, token: &TokenHeader) -> Result<Vec<String>, String> {
    if list.trim() == "off" {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if !item.bytes().all(is_tchar) {
            return Err("must be a comma-separated list of field names, or off".into());
        }
        let name = item.to_ascii_lowercase();
        let token_field = match token {
            TokenHeader::Custom(c) => c.eq_ignore_ascii_case(&name),
            TokenHeader::Authorization | TokenHeader::XApiKey => false,
        };
        if token_field
            || CREDENTIAL_FIELDS.contains(&name.as_str())
            || CREDENTIAL_PARTS.iter().any(|p| name.contains(p))
        {
            return Err(format!(
                "may not name a credential field (nor any name containing {})",
                CREDENTIAL_PARTS.join(", ")
            ));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.len() > LOG_HEADERS_MAX {
        return Err(format!("names more than {LOG_HEADERS_MAX} fields"));
    }
    Ok(names)
}
