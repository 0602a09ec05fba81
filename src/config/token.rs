//! The token settings: where the token comes from (one source at a time) and which field
//! carries it upstream.

use std::path::PathBuf;
use std::time::Duration;

use super::{duration, CommandSource, ConfigError, FederationSource, TokenSource};
use crate::limits;
use crate::rewrite;
use crate::secret::TokenHeader;
use crate::syntax::is_tchar;

/// Where the token comes from: exactly one source so an
/// operator never wonders which of two wins; two together name both.
pub(super) fn token_source(
    var: &impl Fn(&'static str) -> Option<String>,
) -> Result<TokenSource, ConfigError> {
    let err = ConfigError::new;
    let updates = match var("TOKEN_UPDATES").as_deref() {
        None => false,
        Some("stdin") => true,
        Some(_) => return Err(err("TOKEN_UPDATES", "must be stdin (or unset)")),
    };
    let file = var("TOKEN_FILE");
    let command = var("TOKEN_COMMAND");
    let federation = FEDERATION_REQUIRED.iter().any(|n| var(n).is_some());
    let given: Vec<&'static str> = [
        ("TOKEN_UPDATES=stdin", updates),
        ("TOKEN_FILE", file.is_some()),
        ("TOKEN_COMMAND", command.is_some()),
        ("ANTHROPIC_FEDERATION_RULE_ID", federation),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(name, _)| *name)
    .collect();
    if let [first, second, ..] = given[..] {
        let setting = second.split('=').next().unwrap_or(second);
        let why = format!("cannot be combined with {first} (one source of tokens)");
        return Err(ConfigError::new(setting, why));
    }
    Ok(match (updates, file, command) {
        (true, _, _) => TokenSource::StdinUpdates,
        (_, Some(path), _) => TokenSource::File(PathBuf::from(path)),
        (_, _, Some(argv)) => TokenSource::Command(command_source(var, &argv)?),
        _ if federation => TokenSource::Federation(federation_source(var)?),
        _ => TokenSource::StdinOnce,
    })
}

/// The federation variables any one of which turns federation on; all are then required.
const FEDERATION_REQUIRED: [&str; 4] = [
    "ANTHROPIC_FEDERATION_RULE_ID",
    "ANTHROPIC_ORGANIZATION_ID",
    "ANTHROPIC_SERVICE_ACCOUNT_ID",
    "ANTHROPIC_IDENTITY_TOKEN_FILE",
];

/// The federation settings: every id visible ASCII (they go into a JSON body and are no
/// secret), the identity token file readable.
fn federation_source(
    var: &impl Fn(&'static str) -> Option<String>,
) -> Result<FederationSource, ConfigError> {
    let id = |name: &'static str| -> Result<Option<String>, ConfigError> {
        match var(name) {
            None => Ok(None),
            Some(v)
                if v.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') =>
            {
                Ok(Some(v))
            }
            Some(_) => Err(ConfigError::new(name, "must be an id of visible ASCII")),
        }
    };
    let required = |name: &'static str| -> Result<String, ConfigError> {
        id(name)?.ok_or(ConfigError::new(
            name,
            "is required with the other federation variables",
        ))
    };
    let file = PathBuf::from(required("ANTHROPIC_IDENTITY_TOKEN_FILE")?);
    if !file.is_file() {
        let why = "is not a readable file";
        return Err(ConfigError::new("ANTHROPIC_IDENTITY_TOKEN_FILE", why));
    }
    let mut stale_grace = limits::TOKEN_STALE_GRACE;
    duration(var, "TOKEN_STALE_GRACE", &mut stale_grace)?;
    Ok(FederationSource {
        rule_id: required("ANTHROPIC_FEDERATION_RULE_ID")?,
        organization_id: required("ANTHROPIC_ORGANIZATION_ID")?,
        service_account_id: required("ANTHROPIC_SERVICE_ACCOUNT_ID")?,
        workspace_id: id("ANTHROPIC_WORKSPACE_ID")?,
        identity_token_file: file,
        stale_grace,
    })
}

/// `TOKEN_COMMAND` (a JSON array of strings: argv, program first) and its settings.
fn command_source(
    var: &impl Fn(&'static str) -> Option<String>,
    argv: &str,
) -> Result<CommandSource, ConfigError> {
    let why = "must be a JSON array of strings, the program first, like [\"op\", \"read\", \"op://v/i/f\"]";
    let argv = crate::flatjson::string_array(argv.as_bytes())
        .ok()
        .filter(|a| a.first().is_some_and(|p| !p.is_empty()))
        .filter(|a| a.iter().all(|s| !s.contains('\0')))
        .ok_or(ConfigError::new("TOKEN_COMMAND", why))?;
    let mut env = Vec::new();
    for name in var("TOKEN_COMMAND_ENV").iter().flat_map(|l| l.split(',')) {
        let name = name.trim();
        let ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            let why = "must be a comma list of variable names";
            return Err(ConfigError::new("TOKEN_COMMAND_ENV", why));
        }
        env.push(name.to_string());
    }
    let mut timeout = limits::TOKEN_COMMAND_TIMEOUT;
    duration(var, "TOKEN_COMMAND_TIMEOUT", &mut timeout)?;
    let refresh = match var("TOKEN_REFRESH_INTERVAL").as_deref() {
        None | Some("0") => None,
        Some(_) => {
            let mut every = Duration::ZERO;
            duration(var, "TOKEN_REFRESH_INTERVAL", &mut every)?;
            Some(every)
        }
    };
    let mut stale_grace = limits::TOKEN_STALE_GRACE;
    duration(var, "TOKEN_STALE_GRACE", &mut stale_grace)?;
    Ok(CommandSource {
        argv,
        env,
        timeout,
        refresh,
        stale_grace,
    })
}

/// `TOKEN_HEADER`: `authorization` (Bearer), `x-api-key`, or any other field name for the raw
/// token, as long as it is a token and not a field the proxy removes or rebuilds.
pub(super) fn token_header(h: &str) -> Result<TokenHeader, ConfigError> {
    if h.eq_ignore_ascii_case("authorization") {
        return Ok(TokenHeader::Authorization);
    }
    if h.eq_ignore_ascii_case("x-api-key") {
        return Ok(TokenHeader::XApiKey);
    }
    let name = h.to_ascii_lowercase();
    if name.bytes().all(is_tchar) && !rewrite::is_dropped(name.as_bytes()) {
        return Ok(TokenHeader::Custom(name));
    }
    let why = "must be authorization, x-api-key or another field name the proxy does not manage";
    Err(ConfigError::new("TOKEN_HEADER", why))
}
