//! Configuration: read once from the environment, validated, then shared immutably (`Arc`).
//!
//! Every limit and timeout is a named constant here with the default from HARDENING.md §5,
//! mirrored by an environment variable of the same name. A bad setting is reported as
//! `proxy: <SETTING>: <what is wrong>` without echoing the value (TARGET may hold secrets).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Port the proxy listens on (`LISTEN_PORT`).
pub const DEFAULT_LISTEN_PORT: u16 = 18080;
/// Default upstream (`TARGET`).
pub const DEFAULT_TARGET: &str = "https://api.anthropic.com";

/// Longest request line (`MAX_REQUEST_LINE`, 414). nginx: one 8 KiB buffer.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest single field line (`MAX_FIELD_LINE`, 431). nginx: 8 KiB.
pub const MAX_FIELD_LINE: usize = 8 * 1024;
/// Largest whole request head (`MAX_HEAD_BYTES`, 431). nginx: 4 x 8 KiB.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most fields in a request head (`MAX_HEADERS`, 431). hyper and Envoy: 100.
pub const MAX_HEADERS: usize = 100;
/// Largest request body (`MAX_BODY_BYTES`, 413): the Messages API's documented 32 MB limit.
pub const MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// Longest chunk extension on one chunk line (`MAX_CHUNK_EXT`, 400). RFC 9112 §7.1.1.
pub const MAX_CHUNK_EXT: usize = 1024;
/// Chunk-extension bytes allowed over a whole body (hyper: 16 KiB).
pub const MAX_CHUNK_EXT_TOTAL: usize = 16 * 1024;
/// Request trailer bytes read (then dropped) (`MAX_TRAILER_BYTES`, 431).
pub const MAX_TRAILER_BYTES: usize = 8 * 1024;
/// Concurrent client connections (`MAX_CONNECTIONS`); more wait in the kernel backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Requests served on one client connection (`MAX_REQUESTS_PER_CONNECTION`).
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 1000;
/// Idle upstream connections kept for reuse (`POOL_MAX_IDLE`).
pub const POOL_MAX_IDLE: usize = 32;

/// Absolute deadline from a request's first byte to the end of its head (`HEADER_TIMEOUT`, 408).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle client connection between requests (`KEEPALIVE_TIMEOUT`), closed silently.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Upstream TCP connect (`CONNECT_TIMEOUT`, 504).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream TLS handshake (`TLS_TIMEOUT`, 504).
pub const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Request head sent to upstream response head (`RESPONSE_TIMEOUT`, 504). Minutes, because a
/// non-streaming LLM call may think for a long time before its head.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);
/// Gap between request-body reads from the client (`CLIENT_IDLE_TIMEOUT`).
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Gap between response-body reads from the upstream (`UPSTREAM_IDLE_TIMEOUT`); far above the
/// SSE `ping` interval so a quiet stream is never cut. There is no total-duration limit.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A write to the client that makes no progress (`CLIENT_WRITE_TIMEOUT`).
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle upstream connection may be reused (`POOL_IDLE_TIMEOUT`); below the
/// keep-alive timeouts that API front ends commonly use.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Drain period after SIGTERM/SIGINT (`SHUTDOWN_GRACE`); below Docker's 10 s stop timeout.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// A configuration error: which setting, and static text about what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proxy: {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// The one upstream. Parsed from `TARGET`; nothing a client sends can change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    /// Host name or IP literal, without brackets: what we resolve, and the TLS server name.
    pub host: String,
    pub port: u16,
    /// The `Host` header value sent upstream: host, plus the port when it is not the default.
    pub authority: String,
    /// Path prefix without a trailing slash (empty for none); the client's path is appended.
    pub base_path: String,
}

impl Target {
    /// Parses `scheme://host[:port][/base]`; refuses userinfo, query and fragment.
    pub fn parse(s: &str) -> Result<Target, &'static str> {
        let (scheme, rest) = if let Some(r) = strip_prefix_ci(s, "https://") {
            (Scheme::Https, r)
        } else if let Some(r) = strip_prefix_ci(s, "http://") {
            (Scheme::Http, r)
        } else {
            return Err("must start with http:// or https://");
        };
        if rest.contains(['?', '#']) {
            return Err("must not contain a query or fragment");
        }
        let (auth, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if auth.contains('@') {
            return Err("must not contain userinfo");
        }
        if auth.is_empty() {
            return Err("has no host");
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port_str) = if let Some(r) = auth.strip_prefix('[') {
            let end = r.find(']').ok_or("has an unterminated IPv6 literal")?;
            let host = &r[..end];
            host.parse::<std::net::Ipv6Addr>()
                .map_err(|_| "has an invalid IPv6 literal")?;
            let after = &r[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err("has an invalid authority"),
            };
            (host, port)
        } else {
            match auth.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (auth, None),
            }
        };
        let port = match port_str {
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err("has an invalid port"),
            },
            None => default_port,
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
        if !host_ok {
            return Err("has an invalid host");
        }
        // The base path is sent verbatim in every request line: only visible ASCII.
        if !path.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err("has an invalid path");
        }
        let base_path = path.trim_end_matches('/').to_string();
        // The Host header: the host as written (brackets kept for IPv6), plus a non-default port.
        let written_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let authority = if port == default_port {
            written_host
        } else {
            format!("{written_host}:{port}")
        };
        Ok(Target {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            authority: authority.to_ascii_lowercase(),
            base_path,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.authority, self.base_path)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Which header carries the real token upstream (`TOKEN_HEADER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenHeader {
    /// `Authorization: Bearer <token>` (OAuth tokens, most APIs).
    Authorization,
    /// `x-api-key: <token>` (Anthropic API keys).
    XApiKey,
}

/// Size and count limits; see the constants for meaning and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_request_line: usize,
    pub max_field_line: usize,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub max_chunk_ext: usize,
    pub max_trailer_bytes: usize,
    pub max_connections: usize,
    pub max_requests_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: MAX_REQUEST_LINE,
            max_field_line: MAX_FIELD_LINE,
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
            max_body_bytes: MAX_BODY_BYTES,
            max_chunk_ext: MAX_CHUNK_EXT,
            max_trailer_bytes: MAX_TRAILER_BYTES,
            max_connections: MAX_CONNECTIONS,
            max_requests_per_connection: MAX_REQUESTS_PER_CONNECTION,
        }
    }
}

/// One timeout per phase; see the constants for meaning and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub header: Duration,
    pub keepalive: Duration,
    pub connect: Duration,
    pub tls: Duration,
    pub response: Duration,
    pub client_idle: Duration,
    pub upstream_idle: Duration,
    pub client_write: Duration,
    pub pool_idle: Duration,
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: HEADER_TIMEOUT,
            keepalive: KEEPALIVE_TIMEOUT,
            connect: CONNECT_TIMEOUT,
            tls: TLS_TIMEOUT,
            response: RESPONSE_TIMEOUT,
            client_idle: CLIENT_IDLE_TIMEOUT,
            upstream_idle: UPSTREAM_IDLE_TIMEOUT,
            client_write: CLIENT_WRITE_TIMEOUT,
            pool_idle: POOL_IDLE_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub target: Target,
    /// PEM bundle that replaces the built-in roots for an https TARGET.
    pub ca_file: Option<PathBuf>,
    /// The phantom token the sandbox must present. Not secret from the sandbox, so a plain
    /// `Vec`; its `Debug` is still redacted through [`Phantom`].
    pub phantom: Option<Phantom>,
    pub token_header: TokenHeader,
    /// Merge the OAuth beta flag into `anthropic-beta` (`OAUTH_BETA`): `None` is `auto`
    /// (an `sk-ant-oat` token sent to https://api.anthropic.com), decided once the token is read.
    pub oauth_beta: Option<bool>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub pool_max_idle: usize,
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
    /// Defaults for `target` (used by tests and benches).
    pub fn with_target(target: Target) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_LISTEN_PORT)),
            target,
            ca_file: None,
            phantom: None,
            token_header: TokenHeader::Authorization,
            oauth_beta: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            pool_max_idle: POOL_MAX_IDLE,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads settings through `get`, so tests can pass a map.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let var = |name: &'static str| get(name).filter(|v| !v.is_empty());
        let err = |setting: &'static str, reason: &'static str| ConfigError { setting, reason };

        let target = match var("TARGET") {
            Some(t) => Target::parse(&t).map_err(|r| err("TARGET", r))?,
            None => Target::parse(DEFAULT_TARGET).expect("default target parses"),
        };
        let mut cfg = Config::with_target(target);

        let port = match var("LISTEN_PORT") {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(err("LISTEN_PORT", "must be a port number (0-65535)"))?,
            None => DEFAULT_LISTEN_PORT,
        };
        let ip = match var("LISTEN_ADDR") {
            Some(a) => a
                .parse::<IpAddr>()
                .map_err(|_| err("LISTEN_ADDR", "must be an IP address"))?,
            None => IpAddr::from([127, 0, 0, 1]),
        };
        cfg.listen = SocketAddr::new(ip, port);

        if let Some(path) = var("TARGET_CA_FILE") {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(err("TARGET_CA_FILE", "is not a readable file"));
            }
            cfg.ca_file = Some(path);
        }
        if let Some(p) = var("PHANTOM_TOKEN") {
            if !p.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                return Err(err("PHANTOM_TOKEN", "must be visible ASCII without spaces"));
            }
            cfg.phantom = Some(Phantom(p.into_bytes()));
        }
        if let Some(h) = var("TOKEN_HEADER") {
            cfg.token_header = if h.eq_ignore_ascii_case("authorization") {
                TokenHeader::Authorization
            } else if h.eq_ignore_ascii_case("x-api-key") {
                TokenHeader::XApiKey
            } else {
                return Err(err("TOKEN_HEADER", "must be authorization or x-api-key"));
            };
        }
        cfg.oauth_beta = match var("OAUTH_BETA").as_deref() {
            None | Some("auto") => None,
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(_) => return Err(err("OAUTH_BETA", "must be auto, on or off")),
        };

        let l = &mut cfg.limits;
        size(&var, "MAX_REQUEST_LINE", &mut l.max_request_line, 64)?;
        size(&var, "MAX_FIELD_LINE", &mut l.max_field_line, 64)?;
        size(&var, "MAX_HEAD_BYTES", &mut l.max_head_bytes, 256)?;
        size(&var, "MAX_HEADERS", &mut l.max_headers, 8)?;
        if l.max_headers > crate::head::MAX_HEADERS_CAP {
            return Err(err("MAX_HEADERS", "is above the maximum (256)"));
        }
        let mut body = l.max_body_bytes as usize;
        size(&var, "MAX_BODY_BYTES", &mut body, 0)?;
        l.max_body_bytes = body as u64;
        size(&var, "MAX_CHUNK_EXT", &mut l.max_chunk_ext, 0)?;
        size(&var, "MAX_TRAILER_BYTES", &mut l.max_trailer_bytes, 0)?;
        size(&var, "MAX_CONNECTIONS", &mut l.max_connections, 1)?;
        let mut reqs = l.max_requests_per_connection as usize;
        size(&var, "MAX_REQUESTS_PER_CONNECTION", &mut reqs, 1)?;
        l.max_requests_per_connection =
            u32::try_from(reqs).map_err(|_| err("MAX_REQUESTS_PER_CONNECTION", "is too large"))?;
        size(&var, "POOL_MAX_IDLE", &mut cfg.pool_max_idle, 0)?;

        let t = &mut cfg.timeouts;
        duration(&var, "HEADER_TIMEOUT", &mut t.header)?;
        duration(&var, "KEEPALIVE_TIMEOUT", &mut t.keepalive)?;
        duration(&var, "CONNECT_TIMEOUT", &mut t.connect)?;
        duration(&var, "TLS_TIMEOUT", &mut t.tls)?;
        duration(&var, "RESPONSE_TIMEOUT", &mut t.response)?;
        duration(&var, "CLIENT_IDLE_TIMEOUT", &mut t.client_idle)?;
        duration(&var, "UPSTREAM_IDLE_TIMEOUT", &mut t.upstream_idle)?;
        duration(&var, "CLIENT_WRITE_TIMEOUT", &mut t.client_write)?;
        duration(&var, "POOL_IDLE_TIMEOUT", &mut t.pool_idle)?;
        duration(&var, "SHUTDOWN_GRACE", &mut t.shutdown_grace)?;
        Ok(cfg)
    }
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
            .ok_or(ConfigError {
                setting: name,
                reason: "must be a whole number",
            })?;
        if n < min {
            return Err(ConfigError {
                setting: name,
                reason: "is below the minimum",
            });
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
        *slot = parse_duration(&v).ok_or(ConfigError {
            setting: name,
            reason: "must be a positive duration like 500ms, 15s or 10m",
        })?;
    }
    Ok(())
}

/// `500ms`, `15s`, `10m`, or a bare number of seconds; positive, at most a day.
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
    (ms > 0 && ms <= 86_400_000).then(|| Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_design() {
        let c = from(&[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(c.target.to_string(), "https://api.anthropic.com");
        assert_eq!(c.target.port, 443);
        assert_eq!(c.target.authority, "api.anthropic.com");
        assert!(c.phantom.is_none());
    }

    #[test]
    fn targets_parse_with_port_and_base_path() {
        let t = Target::parse("http://127.0.0.1:8080/base/").unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port),
            (Scheme::Http, "127.0.0.1", 8080)
        );
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.base_path, "/base");
        let t = Target::parse("HTTPS://Example.com:443").unwrap();
        assert_eq!(t.authority, "example.com");
        let t = Target::parse("https://[::1]:8443/v").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 8443, "[::1]:8443")
        );
        let t = Target::parse("https://[::1]").unwrap();
        assert_eq!(t.authority, "[::1]");
    }

    #[test]
    fn bad_targets_are_refused_without_echo() {
        for bad in [
            "ftp://x",
            "api.anthropic.com",
            "https://user:secret@host",
            "https://host?q",
            "https://host#f",
            "https://",
            "https://host:0",
            "https://host:99999",
            "https://host:+1",
            "https://ho st",
            "https://host/a b",
        ] {
            let e = from(&[("TARGET", bad)]).unwrap_err();
            assert_eq!(e.setting, "TARGET", "{bad}");
            assert!(!e.to_string().contains("secret"));
        }
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let cases = [
            ("LISTEN_PORT", "x"),
            ("LISTEN_PORT", "70000"),
            ("LISTEN_ADDR", "localhost"),
            ("TOKEN_HEADER", "cookie"),
            ("OAUTH_BETA", "yes"),
            ("HEADER_TIMEOUT", "0"),
            ("HEADER_TIMEOUT", "5h"),
            ("MAX_HEADERS", "-1"),
            ("MAX_HEADERS", "2"),
            ("TARGET_CA_FILE", "/nonexistent/ca.pem"),
            ("PHANTOM_TOKEN", "has space"),
        ];
        for (k, v) in cases {
            let e = from(&[(k, v)]).unwrap_err();
            assert_eq!(e.setting, k);
            assert!(e.to_string().starts_with(&format!("proxy: {k}: ")));
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("15"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        for bad in ["", "s", "0", "0ms", "1.5s", "-1", "99999999999"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
