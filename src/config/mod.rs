//! Configuration: read once from the environment, validated, then shared immutably (`Arc`).
//!
//! One parser per setting; the defaults, minimums and maximums are the constants of
//! [`crate::limits`]. A bad setting is reported as `proxy: <SETTING>: <what is wrong>`
//! without echoing the value (TARGET may hold secrets).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::ceiling::Spec as Ceilings;
use crate::credential::BetaRule;
use crate::egress::{EgressProxy, NoProxy};
use crate::limits::{self, Limits, Timeouts};
use crate::policy::AllowList;
use crate::secret::TokenHeader;
use crate::target::Target;

pub use listen::{Activation, UnixListen, LISTEN_FDS_START};

/// A configuration error: which setting, and text about what is wrong (static, or built from
/// the limits; never the value given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: Cow<'static, str>,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<Cow<'static, str>>) -> ConfigError {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proxy: {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `LISTEN_UNIX`: a Unix socket instead of `listen`.
    pub unix: Option<UnixListen>,
    /// A listening socket passed by systemd, instead of either.
    pub activation: Option<Activation>,
    /// `LISTEN_FDS` as given, served or not: the descriptors from 3 made close-on-exec.
    pub passed_fds: u32,
    /// `ALLOW_PEER_UIDS`: the only uids a Unix socket peer may have; `None`: any.
    pub peer_uids: Option<Vec<u32>>,
    pub target: Target,
    /// PEM bundle that replaces the built-in roots for an https TARGET.
    pub ca_file: Option<PathBuf>,
    /// PEM bundle added to the roots (`TARGET_EXTRA_CA_FILE`), e.g. a TLS-inspecting
    /// egress proxy's CA.
    pub extra_ca_file: Option<PathBuf>,
    /// The egress proxy TARGET is reached through, and which variable named it; `None`:
    /// directly (no proxy set, or TARGET matches `NO_PROXY`).
    pub egress: Option<(EgressProxy, &'static str)>,
    /// The phantom token the sandbox must present. Not secret from the sandbox, so a plain
    /// `Vec`; its `Debug` is still redacted through [`Phantom`].
    pub phantom: Option<Phantom>,
    pub token_header: TokenHeader,
    /// Where tokens after the first come from (`TOKEN_UPDATES`, `TOKEN_FILE`).
    pub token_source: TokenSource,
    /// What the sandbox may reach (`ALLOW_REQUESTS`); `None`: everything.
    pub allow: Option<AllowList>,
    /// The WebSocket tunnel (`WEBSOCKET_PATHS`); `None`: every upgrade gets 426.
    pub websocket: Option<WebSocket>,
    /// The metrics listener (`METRICS_ADDR`); `None`: off.
    pub metrics: Option<SocketAddr>,
    /// One JSON object per log line (`LOG_FORMAT=json`).
    pub log_json: bool,
    /// Text lines start with an RFC 3339 time (`LOG_TIMESTAMPS=on`).
    pub log_timestamps: bool,
    /// Merge the OAuth beta flag into `anthropic-beta` (`OAUTH_BETA`): `None` is `auto`
    /// (an `sk-ant-oat` token sent to `https://api.anthropic.com`), decided once the token is read.
    pub oauth_beta: Option<bool>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub pool_max_idle: usize,
    /// The ceilings of this process (`LIMIT_TOKENS`, `LIMIT_REQUESTS`, `LIMIT_CONCURRENT`).
    pub ceilings: Ceilings,
    /// Responses' token usage is read as they pass (`USAGE_OBSERVE`).
    pub usage_observe: bool,
    /// The request fields the access line names, lower-case (`LOG_REQUEST_HEADERS`).
    pub log_headers: Vec<String>,
}

/// Where the token comes from, and whether it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// One line on stdin, then stdin is closed (the default).
    StdinOnce,
    /// `TOKEN_UPDATES=stdin`: stdin stays open; each further line replaces the token.
    StdinUpdates,
    /// `TOKEN_FILE`: read from this file, and again whenever it changes.
    File(PathBuf),
    /// `TOKEN_COMMAND`: the output of a program, run again before the token expires.
    Command(CommandSource),
    /// Anthropic Workload Identity Federation: the IdP's JWT exchanged for a short-lived
    /// token at TARGET's `/v1/oauth/token`, again before it expires.
    Federation(FederationSource),
}

/// The federation settings, with Anthropic's own variable names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationSource {
    /// `ANTHROPIC_FEDERATION_RULE_ID` (`fdrl_...`).
    pub rule_id: String,
    /// `ANTHROPIC_ORGANIZATION_ID` (a UUID).
    pub organization_id: String,
    /// `ANTHROPIC_SERVICE_ACCOUNT_ID` (`svac_...`).
    pub service_account_id: String,
    /// `ANTHROPIC_WORKSPACE_ID` (`wrkspc_...` or `default`), when the rule has several.
    pub workspace_id: Option<String>,
    /// `ANTHROPIC_IDENTITY_TOKEN_FILE`: the IdP's JWT, read again for every exchange.
    pub identity_token_file: PathBuf,
    /// `TOKEN_STALE_GRACE`, for an answer without `expires_in`.
    pub stale_grace: Duration,
}

/// `TOKEN_COMMAND` and the settings that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSource {
    /// The program and its arguments, run directly (no shell).
    pub argv: Vec<String>,
    /// `TOKEN_COMMAND_ENV`: the names of the variables passed through; no other reaches it.
    pub env: Vec<String>,
    /// `TOKEN_COMMAND_TIMEOUT`: then its process group is killed.
    pub timeout: Duration,
    /// `TOKEN_REFRESH_INTERVAL`: run again this often when the answer gives no expiry;
    /// `None` (0, the default): only when asked (SIGHUP).
    pub refresh: Option<Duration>,
    /// `TOKEN_STALE_GRACE`: how long a token without a known expiry keeps serving once the
    /// command fails.
    pub stale_grace: Duration,
}

/// The phantom token (`PHANTOM_TOKEN`): the sandbox's proof that it may use the proxy.
#[derive(Clone)]
pub struct Phantom(pub Vec<u8>);

impl fmt::Debug for Phantom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Phantom(..)")
    }
}

impl Config {
    /// The OAuth beta rule of this configuration.
    pub fn beta_rule(&self) -> BetaRule {
        BetaRule {
            setting: self.oauth_beta,
            anthropic: self.target.scheme == crate::target::Scheme::Https
                && self.target.host == "api.anthropic.com",
        }
    }

    /// Defaults for `target` (used by tests and benches).
    pub fn with_target(target: Target) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], limits::DEFAULT_LISTEN_PORT)),
            unix: None,
            activation: None,
            passed_fds: 0,
            peer_uids: None,
            target,
            ca_file: None,
            extra_ca_file: None,
            egress: None,
            phantom: None,
            token_header: TokenHeader::Authorization,
            token_source: TokenSource::StdinOnce,
            allow: None,
            websocket: None,
            metrics: None,
            log_json: false,
            log_timestamps: false,
            oauth_beta: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            pool_max_idle: limits::POOL_MAX_IDLE,
            ceilings: Ceilings::default(),
            usage_observe: true,
            log_headers: usage::DEFAULT_LOG_HEADERS.map(String::from).to_vec(),
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads settings through `get`, so tests can pass a map.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let var = |name: &'static str| {
            debug_assert!(crate::settings::is_known(name), "{name} is not in settings");
            get(name).filter(|v| !v.is_empty())
        };
        let target = match var("TARGET") {
            Some(t) => Target::parse(&t).map_err(|r| ConfigError::new("TARGET", r))?,
            None => Target::parse(limits::DEFAULT_TARGET).expect("default target parses"),
        };
        let mut cfg = Config::with_target(target);
        cfg.listen = listen(&var)?;
        cfg.unix = listen::unix_listen(&var)?;
        cfg.activation = listen::activation(&var, std::process::id())?;
        cfg.passed_fds = listen::passed_fds(&var);
        cfg.peer_uids = listen::peer_uids(&var)?;
        if cfg.peer_uids.is_some() && cfg.unix.is_none() && cfg.activation.is_none() {
            // Only a Unix socket has kernel-vouched peer credentials (SO_PEERCRED, unix(7)).
            return Err(ConfigError::new(
                "ALLOW_PEER_UIDS",
                "needs LISTEN_UNIX (or a Unix socket passed by systemd)",
            ));
        }
        cfg.egress = egress(&var, &cfg.target)?;
        if let Some(addr) = var("METRICS_ADDR") {
            let why = "must be an address and port, like 127.0.0.1:9464";
            let addr = addr
                .parse::<SocketAddr>()
                .map_err(|_| ConfigError::new("METRICS_ADDR", why))?;
            if addr == cfg.listen && addr.port() != 0 {
                return Err(ConfigError::new(
                    "METRICS_ADDR",
                    "must differ from LISTEN_ADDR:LISTEN_PORT",
                ));
            }
            cfg.metrics = Some(addr);
        }
        cfg.log_json = match var("LOG_FORMAT").as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(_) => return Err(ConfigError::new("LOG_FORMAT", "must be text or json")),
        };
        cfg.log_timestamps = match var("LOG_TIMESTAMPS").as_deref() {
            None | Some("off") => false,
            Some("on") => true,
            Some(_) => return Err(ConfigError::new("LOG_TIMESTAMPS", "must be on or off")),
        };
        cfg.credentials(&var)?;
        cfg.websocket = websocket::websocket(&var)?;
        usage::read(&var, &mut cfg)?;
        read_limits(&var, &mut cfg.limits)?;
        size(&var, "POOL_MAX_IDLE", &mut cfg.pool_max_idle, 0)?;
        read_timeouts(&var, &mut cfg.timeouts)?;
        cfg.ceilings = ceilings::ceilings(&var)?;
        if cfg.ceilings.tokens.is_some() && !cfg.usage_observe {
            // The token ceiling counts what the observer reads: off, it would never trip.
            return Err(ConfigError::new(
                "LIMIT_TOKENS",
                "needs USAGE_OBSERVE=on (the tokens are read from the responses)",
            ));
        }
        Ok(cfg)
    }

    /// The settings about TARGET's trust and the credential.
    fn credentials(
        &mut self,
        var: &impl Fn(&'static str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let err = ConfigError::new;
        for (setting, slot) in [
            ("TARGET_CA_FILE", &mut self.ca_file),
            ("TARGET_EXTRA_CA_FILE", &mut self.extra_ca_file),
        ] {
            if let Some(path) = var(setting) {
                let path = PathBuf::from(path);
                if !path.is_file() {
                    return Err(err(setting, "is not a readable file"));
                }
                *slot = Some(path);
            }
        }
        if let Some(p) = var("PHANTOM_TOKEN") {
            if !p.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                return Err(err("PHANTOM_TOKEN", "must be visible ASCII without spaces"));
            }
            self.phantom = Some(Phantom(p.into_bytes()));
        }
        if let Some(h) = var("TOKEN_HEADER") {
            self.token_header = token::token_header(&h)?;
        }
        self.token_source = token::token_source(var)?;
        if let Some(list) = var("ALLOW_REQUESTS") {
            let list = AllowList::parse(&list).map_err(|r| err("ALLOW_REQUESTS", r))?;
            self.allow = Some(list);
        }
        self.oauth_beta = match var("OAUTH_BETA").as_deref() {
            None | Some("auto") => None,
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(_) => return Err(err("OAUTH_BETA", "must be auto, on or off")),
        };
        Ok(())
    }
}

/// The egress proxy for TARGET, as curl chooses one: for an https TARGET `https_proxy`, then
/// `HTTPS_PROXY`; for an http TARGET `http_proxy`, then `HTTP_PROXY` (curl ignores the
/// upper-case one, against CGI's httpoxy; the proxy is no CGI program, and the launcher sets
/// its environment); none when TARGET matches `no_proxy` (or else `NO_PROXY`).
fn egress(
    var: &impl Fn(&'static str) -> Option<String>,
    target: &Target,
) -> Result<Option<(EgressProxy, &'static str)>, ConfigError> {
    let names = match target.scheme {
        crate::target::Scheme::Https => ["https_proxy", "HTTPS_PROXY"],
        crate::target::Scheme::Http => ["http_proxy", "HTTP_PROXY"],
    };
    let Some((name, url)) = names.iter().find_map(|&n| var(n).map(|u| (n, u))) else {
        return Ok(None);
    };
    let proxy = EgressProxy::parse(&url).map_err(|r| ConfigError::new(name, r))?;
    let no_proxy = var("no_proxy").or_else(|| var("NO_PROXY"));
    if no_proxy.is_some_and(|l| NoProxy::parse(&l).matches(&target.host, target.port)) {
        return Ok(None);
    }
    Ok(Some((proxy, name)))
}

/// `LISTEN_ADDR` and `LISTEN_PORT`.
fn listen(var: &impl Fn(&'static str) -> Option<String>) -> Result<SocketAddr, ConfigError> {
    let port = match var("LISTEN_PORT") {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(ConfigError::new(
                "LISTEN_PORT",
                "must be a port number (0-65535)",
            ))?,
        None => limits::DEFAULT_LISTEN_PORT,
    };
    let ip = match var("LISTEN_ADDR") {
        Some(a) => a
            .parse::<IpAddr>()
            .map_err(|_| ConfigError::new("LISTEN_ADDR", "must be an IP address"))?,
        None => IpAddr::from([127, 0, 0, 1]),
    };
    Ok(SocketAddr::new(ip, port))
}

/// The size and count limits, each within its bounds.
fn read_limits(
    var: &impl Fn(&'static str) -> Option<String>,
    l: &mut Limits,
) -> Result<(), ConfigError> {
    size(
        var,
        "MAX_REQUEST_LINE",
        &mut l.max_request_line,
        limits::MIN_REQUEST_LINE,
    )?;
    size(
        var,
        "MAX_FIELD_LINE",
        &mut l.max_field_line,
        limits::MIN_FIELD_LINE,
    )?;
    size(
        var,
        "MAX_HEAD_BYTES",
        &mut l.max_head_bytes,
        limits::MIN_HEAD_BYTES,
    )?;
    size(var, "MAX_HEADERS", &mut l.max_headers, limits::MIN_HEADERS)?;
    if l.max_headers > limits::MAX_HEADERS_CAP {
        let cap = limits::MAX_HEADERS_CAP;
        let reason = format!("is above the maximum ({cap})");
        return Err(ConfigError::new("MAX_HEADERS", reason));
    }
    let mut body = l.max_body_bytes as usize;
    size(var, "MAX_BODY_BYTES", &mut body, 0)?;
    l.max_body_bytes = body as u64;
    size(var, "MAX_CHUNK_EXT", &mut l.max_chunk_ext, 0)?;
    size(var, "MAX_TRAILER_BYTES", &mut l.max_trailer_bytes, 0)?;
    size(var, "MAX_CONNECTIONS", &mut l.max_connections, 1)?;
    let mut reqs = l.max_requests_per_connection as usize;
    size(var, "MAX_REQUESTS_PER_CONNECTION", &mut reqs, 1)?;
    l.max_requests_per_connection = u32::try_from(reqs)
        .map_err(|_| ConfigError::new("MAX_REQUESTS_PER_CONNECTION", "is too large"))?;
    Ok(())
}

/// One timeout per phase.
fn read_timeouts(
    var: &impl Fn(&'static str) -> Option<String>,
    t: &mut Timeouts,
) -> Result<(), ConfigError> {
    duration(var, "HEADER_TIMEOUT", &mut t.header)?;
    duration(var, "KEEPALIVE_TIMEOUT", &mut t.keepalive)?;
    duration(var, "CONNECT_TIMEOUT", &mut t.connect)?;
    duration(var, "TLS_TIMEOUT", &mut t.tls)?;
    duration(var, "RESPONSE_TIMEOUT", &mut t.response)?;
    duration(var, "CLIENT_IDLE_TIMEOUT", &mut t.client_idle)?;
    duration(var, "UPSTREAM_IDLE_TIMEOUT", &mut t.upstream_idle)?;
    duration(var, "CLIENT_WRITE_TIMEOUT", &mut t.client_write)?;
    duration(var, "POOL_IDLE_TIMEOUT", &mut t.pool_idle)?;
    duration(var, "SHUTDOWN_GRACE", &mut t.shutdown_grace)?;
    Ok(())
}

/// Parses a whole number setting into `slot`, refusing values below `min`.
fn size(
    var: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    slot: &mut usize,
    min: usize,
) -> Result<(), ConfigError> {
    if let Some(v) = var(name) {
        let n = v
            .parse::<usize>()
            .ok()
            .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(ConfigError::new(name, "must be a whole number"))?;
        if n < min {
            return Err(ConfigError::new(
                name,
                format!("is below the minimum ({min})"),
            ));
        }
        *slot = n;
    }
    Ok(())
}

/// Parses `500ms`, `15s`, `10m` or bare seconds into `slot`. Zero is refused: every phase
/// must be bounded.
fn duration(
    var: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    slot: &mut Duration,
) -> Result<(), ConfigError> {
    if let Some(v) = var(name) {
        *slot = parse_duration(&v).ok_or_else(|| {
            let max = limits::MAX_DURATION_SETTING.as_secs() / 3600;
            ConfigError::new(
                name,
                format!("must be a positive duration like 500ms, 15s or 10m, at most {max}h"),
            )
        })?;
    }
    Ok(())
}

/// `500ms`, `15s`, `10m`, or a bare number of seconds; positive, at most
/// [`limits::MAX_DURATION_SETTING`].
pub fn parse_duration(v: &str) -> Option<Duration> {
    let (digits, unit_ms) = if let Some(d) = v.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = v.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = v.strip_suffix('m') {
        (d, 60_000)
    } else {
        (v, 1000)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 9 {
        return None;
    }
    let ms = digits.parse::<u64>().ok()?.checked_mul(unit_ms)?;
    (ms > 0 && u128::from(ms) <= limits::MAX_DURATION_SETTING.as_millis())
        .then(|| Duration::from_millis(ms))
}

mod ceilings;
mod listen;
mod token;
mod usage;
mod websocket;

pub use usage::attribution_headers;
pub use websocket::WebSocket;

#[cfg(test)]
mod tests;
