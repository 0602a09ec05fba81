//! `agent-loop-proxy --check`: the configuration read as a start would read it, without
//! binding, reading a token or serving. What a start checks beyond parsing is done too: the
//! TLS client is built (the CA files parsed) and `TOKEN_FILE` opened (not read). The effective
//! settings are returned for printing; secrets only as `set` or `unset`.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError, TokenSource};
use crate::log::Log;
use crate::upstream::Connector;

/// Checks what a start would check beyond the parser; on success, the effective settings,
/// one `NAME=value` line each.
pub fn check(cfg: &Config, log: Arc<Log>) -> Result<String, ConfigError> {
    Connector::new(cfg, log)?;
    if let TokenSource::File(path) = &cfg.token_source {
        let readable = std::fs::File::open(path)
            .and_then(|f| f.metadata())
            .is_ok_and(|m| m.is_file());
        if !readable {
            let why = "cannot be read (missing, or not readable by this user)";
            return Err(ConfigError::new("TOKEN_FILE", why));
        }
    }
    Ok(effective(cfg))
}

/// The federation rows: the ids (no secrets) and the identity token file's path.
fn federation_rows(source: &TokenSource) -> [String; 5] {
    let TokenSource::Federation(f) = source else {
        return std::array::from_fn(|_| "unset".to_string());
    };
    [
        f.rule_id.clone(),
        f.organization_id.clone(),
        f.service_account_id.clone(),
        f.workspace_id.clone().unwrap_or_else(|| "unset".into()),
        f.identity_token_file.display().to_string(),
    ]
}

/// `TOKEN_COMMAND`'s rows: the program's name and how many arguments (an argument may name a
/// secret's path, so none is shown), the variables passed, the timeout and the interval.
fn command_rows(source: &TokenSource) -> [String; 5] {
    let unused = || "-".to_string();
    let TokenSource::Command(c) = source else {
        let grace = match source {
            TokenSource::Federation(f) => duration(f.stale_grace),
            _ => unused(),
        };
        return [
            "unset".into(),
            "unset (none)".into(),
            unused(),
            unused(),
            grace,
        ];
    };
    let program = std::path::Path::new(&c.argv[0])
        .file_name()
        .map_or("?".into(), |n| n.to_string_lossy().into_owned());
    let env = if c.env.is_empty() {
        "unset (none)".into()
    } else {
        c.env.join(",")
    };
    [
        format!("{program} and {} arguments", c.argv.len() - 1),
        env,
        duration(c.timeout),
        c.refresh.map_or("0".into(), duration),
        duration(c.stale_grace),
    ]
}

/// The settings in effect, in the order of `--help`.
pub fn effective(cfg: &Config) -> String {
    let set = |b: bool| if b { "set" } else { "unset" }.to_string();
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or("unset".into(), |p| p.display().to_string())
    };
    let egress = match &cfg.egress {
        Some((proxy, from)) => format!("{proxy} (from {from})"),
        None => "unset (direct)".into(),
    };
    let (updates, file) = match &cfg.token_source {
        TokenSource::StdinOnce => ("unset".into(), "unset".into()),
        TokenSource::StdinUpdates => ("stdin".into(), "unset".into()),
        TokenSource::File(p) => ("unset".into(), p.display().to_string()),
        TokenSource::Command(_) | TokenSource::Federation(_) => ("unset".into(), "unset".into()),
    };
    let federation = federation_rows(&cfg.token_source);
    let command = command_rows(&cfg.token_source);
    let mut rows = listen_rows(cfg);
    rows.extend([
        ("TARGET", cfg.target.to_string()),
        ("TARGET_CA_FILE", path(&cfg.ca_file)),
        ("TARGET_EXTRA_CA_FILE", path(&cfg.extra_ca_file)),
        ("egress proxy", egress),
        ("PHANTOM_TOKEN", set(cfg.phantom.is_some())),
        ("TOKEN_HEADER", cfg.token_header.name().to_string()),
        ("TOKEN_UPDATES", updates),
        ("TOKEN_FILE", file),
        ("TOKEN_COMMAND", command[0].clone()),
        ("TOKEN_COMMAND_ENV", command[1].clone()),
        ("TOKEN_COMMAND_TIMEOUT", command[2].clone()),
        ("TOKEN_REFRESH_INTERVAL", command[3].clone()),
        ("TOKEN_STALE_GRACE", command[4].clone()),
        ("ANTHROPIC_FEDERATION_RULE_ID", federation[0].clone()),
        ("ANTHROPIC_ORGANIZATION_ID", federation[1].clone()),
        ("ANTHROPIC_SERVICE_ACCOUNT_ID", federation[2].clone()),
        ("ANTHROPIC_WORKSPACE_ID", federation[3].clone()),
        ("ANTHROPIC_IDENTITY_TOKEN_FILE", federation[4].clone()),
    ]);
    rows.extend(admission_rows(cfg));
    rows.extend(output_rows(cfg));
    rows.extend(bounds(cfg));
    let mut out = String::new();
    for (name, value) in rows {
        let _ = writeln!(out, "{name}={value}");
    }
    out
}

/// Where the proxy listens.
fn listen_rows(cfg: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("LISTEN_ADDR:LISTEN_PORT", cfg.listen.to_string()),
        (
            "LISTEN_UNIX",
            cfg.unix
                .as_ref()
                .map_or("unset".into(), |u| u.path.display().to_string()),
        ),
        (
            "LISTEN_UNIX_MODE",
            format!("{:04o}", cfg.unix.as_ref().map_or(0o600, |u| u.mode)),
        ),
        (
            "LISTEN_UNIX_GROUP",
            cfg.unix
                .as_ref()
                .and_then(|u| u.group)
                .map_or("unset".into(), |g| format!("gid {g}")),
        ),
        (
            "ALLOW_PEER_UIDS",
            cfg.peer_uids.as_ref().map_or("unset (any)".into(), |u| {
                let u: Vec<String> = u.iter().map(u32::to_string).collect();
                u.join(",")
            }),
        ),
        (
            "LISTEN_FDS",
            cfg.activation.map_or("unset".into(), |a| {
                format!("socket activation, fd {}", a.fd)
            }),
        ),
    ]
}

/// What a request must pass before it is forwarded.
fn admission_rows(cfg: &Config) -> Vec<(&'static str, String)> {
    vec![
        (
            "ALLOW_REQUESTS",
            cfg.allow
                .as_ref()
                .map_or("unset (all)".into(), |a| format!("{} entries", a.entries())),
        ),
        ("LIMIT_TOKENS", ceiling_rate(cfg.ceilings.tokens)),
        ("LIMIT_REQUESTS", ceiling_rate(cfg.ceilings.requests)),
        (
            "LIMIT_CONCURRENT",
            cfg.ceilings
                .concurrent
                .map_or("unset (off)".into(), |n| n.to_string()),
        ),
        (
            "WEBSOCKET_PATHS",
            cfg.websocket.as_ref().map_or("unset (426)".into(), |w| {
                format!("{} paths", w.paths.entries())
            }),
        ),
        (
            "WEBSOCKET_IDLE_TIMEOUT",
            duration(
                cfg.websocket
                    .as_ref()
                    .map_or(crate::limits::WEBSOCKET_IDLE_TIMEOUT, |w| w.idle),
            ),
        ),
    ]
}

/// What the proxy reports, and the OAuth beta rule.
fn output_rows(cfg: &Config) -> Vec<(&'static str, String)> {
    vec![
        (
            "METRICS_ADDR",
            cfg.metrics.map_or("unset (off)".into(), |a| a.to_string()),
        ),
        (
            "LOG_FORMAT",
            if cfg.log_json { "json" } else { "text" }.into(),
        ),
        (
            "LOG_TIMESTAMPS",
            if cfg.log_timestamps { "on" } else { "off" }.into(),
        ),
        (
            "LOG_REQUEST_HEADERS",
            if cfg.log_headers.is_empty() {
                "off".into()
            } else {
                cfg.log_headers.join(",")
            },
        ),
        (
            "USAGE_OBSERVE",
            if cfg.usage_observe { "on" } else { "off" }.into(),
        ),
        (
            "OAUTH_BETA",
            match cfg.oauth_beta {
                None => "auto",
                Some(true) => "on",
                Some(false) => "off",
            }
            .into(),
        ),
    ]
}

/// A ceiling as `N/window` (the window in seconds) or `N (lifetime)`.
fn ceiling_rate(rate: Option<crate::ceiling::Rate>) -> String {
    match rate {
        None => "unset (off)".into(),
        Some(r) => match r.window {
            Some(w) => format!("{}/{}s", r.max, w.as_secs()),
            None => format!("{} (lifetime)", r.max),
        },
    }
}

/// The timeouts and limits in effect.
fn bounds(cfg: &Config) -> Vec<(&'static str, String)> {
    let (l, t) = (&cfg.limits, &cfg.timeouts);
    vec![
        ("SHUTDOWN_GRACE", duration(t.shutdown_grace)),
        ("HEADER_TIMEOUT", duration(t.header)),
        ("KEEPALIVE_TIMEOUT", duration(t.keepalive)),
        ("CONNECT_TIMEOUT", duration(t.connect)),
        ("TLS_TIMEOUT", duration(t.tls)),
        ("RESPONSE_TIMEOUT", duration(t.response)),
        ("CLIENT_IDLE_TIMEOUT", duration(t.client_idle)),
        ("UPSTREAM_IDLE_TIMEOUT", duration(t.upstream_idle)),
        ("CLIENT_WRITE_TIMEOUT", duration(t.client_write)),
        ("POOL_IDLE_TIMEOUT", duration(t.pool_idle)),
        ("POOL_MAX_IDLE", cfg.pool_max_idle.to_string()),
        ("MAX_CONNECTIONS", l.max_connections.to_string()),
        (
            "MAX_REQUESTS_PER_CONNECTION",
            l.max_requests_per_connection.to_string(),
        ),
        ("MAX_REQUEST_LINE", l.max_request_line.to_string()),
        ("MAX_FIELD_LINE", l.max_field_line.to_string()),
        ("MAX_HEAD_BYTES", l.max_head_bytes.to_string()),
        ("MAX_HEADERS", l.max_headers.to_string()),
        ("MAX_BODY_BYTES", l.max_body_bytes.to_string()),
        ("MAX_CHUNK_EXT", l.max_chunk_ext.to_string()),
        ("MAX_TRAILER_BYTES", l.max_trailer_bytes.to_string()),
    ]
}

/// `15s`, or `500ms` when not whole seconds: as the setting is written.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every setting of the table has its line (the listen pair and the egress variables
    /// one line each).
    #[test]
    fn every_setting_is_shown() {
        let cfg = Config::from_vars(|_| None).unwrap();
        let shown = effective(&cfg);
        for s in crate::settings::SETTINGS {
            let key = match s.names[0] {
                "LISTEN_PORT" | "LISTEN_ADDR" => "LISTEN_ADDR:LISTEN_PORT",
                "HTTPS_PROXY" | "HTTP_PROXY" | "NO_PROXY" => "egress proxy",
                n => n,
            };
            assert!(
                shown.contains(&format!("\n{key}=")) || shown.starts_with(&format!("{key}=")),
                "{key}"
            );
        }
    }
}
