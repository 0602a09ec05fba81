//! Every setting the proxy reads, once: its name(s), its default and one line about it.
//!
//! `--help` is printed from this table, the parser asks only for names in it (a debug
//! assertion in `config`), and a repository test checks that the README's settings table
//! lists the same names with the same defaults, so the three cannot drift apart. It also
//! tells an operator's typo from a variable that is none of ours ([`suspicious`]). The
//! version and commit the binary reports (`--version`, the startup line, `build_info`) are
//! here too, so every layer may name them.

/// The crate's version, from Cargo.toml; `--version` prints it, and CHANGELOG.md has a
/// section for it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from (a 12-digit short hash, set by build.rs), so a
/// binary can be traced to its sources between releases. `None` for a build outside a git
/// checkout: a source archive, or the Docker image (its build context leaves `.git` out).
pub const COMMIT: Option<&str> = non_empty(option_env!("AGENT_LOOP_PROXY_COMMIT"));

const fn non_empty(s: Option<&'static str>) -> Option<&'static str> {
    match s {
        Some(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// One setting: the variables that set it (an egress proxy has an upper- and a lower-case
/// spelling), its default as the README writes it, and one line for `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub names: &'static [&'static str],
    pub default: &'static str,
    pub help: &'static str,
}

const fn s(names: &'static [&'static str], default: &'static str, help: &'static str) -> Setting {
    Setting {
        names,
        default,
        help,
    }
}

/// Every setting, in the README's order.
pub const SETTINGS: &[Setting] = &[
    s(
        &["LISTEN_PORT"],
        "18080",
        "port to listen on (0: any free port)",
    ),
    s(&["LISTEN_ADDR"], "127.0.0.1", "address to listen on"),
    s(
        &["LISTEN_UNIX"],
        "unset",
        "Unix socket path to listen on instead of TCP",
    ),
    s(
        &["LISTEN_UNIX_MODE"],
        "0600",
        "permission bits of the LISTEN_UNIX socket",
    ),
    s(
        &["LISTEN_UNIX_GROUP"],
        "unset",
        "group (name in /etc/group, or gid) of the socket",
    ),
    s(
        &["ALLOW_PEER_UIDS"],
        "unset",
        "uids a Unix socket peer may have (SO_PEERCRED)",
    ),
    s(
        &["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"],
        "unset",
        "set by systemd: serve the one socket it passed (more is an error)",
    ),
    s(
        &["TARGET"],
        "https://api.anthropic.com",
        "upstream base URL (http or https)",
    ),
    s(
        &["TARGET_CA_FILE"],
        "unset",
        "PEM bundle replacing the built-in roots",
    ),
    s(
        &["TARGET_EXTRA_CA_FILE"],
        "unset",
        "PEM bundle added to the roots",
    ),
    s(
        &["HTTPS_PROXY", "https_proxy"],
        "unset",
        "egress proxy for an https TARGET",
    ),
    s(
        &["HTTP_PROXY", "http_proxy"],
        "unset",
        "egress proxy for an http TARGET",
    ),
    s(
        &["NO_PROXY", "no_proxy"],
        "unset",
        "hosts reached without the egress proxy",
    ),
    s(
        &["PHANTOM_TOKEN"],
        "unset",
        "token the sandbox must present (secret: shown as set/unset)",
    ),
    s(
        &["TOKEN_HEADER"],
        "authorization",
        "authorization | x-api-key | another field name",
    ),
    s(
        &["TOKEN_UPDATES"],
        "unset",
        "stdin: each further line on stdin replaces the token",
    ),
    s(
        &["TOKEN_FILE"],
        "unset",
        "read the token from this file, again when it changes",
    ),
    s(
        &["TOKEN_COMMAND"],
        "unset",
        "JSON argv of a program that prints the token (no shell)",
    ),
    s(
        &["TOKEN_COMMAND_ENV"],
        "unset (none)",
        "comma list of variables passed to TOKEN_COMMAND",
    ),
    s(
        &["TOKEN_COMMAND_TIMEOUT"],
        "10s",
        "TOKEN_COMMAND run time -> its process group killed",
    ),
    s(
        &["TOKEN_REFRESH_INTERVAL"],
        "0",
        "re-run TOKEN_COMMAND this often without an expiry (0: never)",
    ),
    s(
        &["TOKEN_STALE_GRACE"],
        "5m",
        "TOKEN_COMMAND failing: a token without expiry serves this long",
    ),
    s(
        &["ANTHROPIC_FEDERATION_RULE_ID"],
        "unset",
        "Workload Identity Federation: the rule (fdrl_...)",
    ),
    s(
        &["ANTHROPIC_ORGANIZATION_ID"],
        "unset",
        "federation: the organization (UUID)",
    ),
    s(
        &["ANTHROPIC_SERVICE_ACCOUNT_ID"],
        "unset",
        "federation: the service account (svac_...)",
    ),
    s(
        &["ANTHROPIC_WORKSPACE_ID"],
        "unset",
        "federation: the workspace (wrkspc_... or default)",
    ),
    s(
        &["ANTHROPIC_IDENTITY_TOKEN_FILE"],
        "unset",
        "federation: the IdP's JWT, re-read for every exchange",
    ),
    s(
        &["ALLOW_REQUESTS"],
        "unset (all)",
        "METHOD /path[*], ... the sandbox may send",
    ),
    s(
        &["LIMIT_TOKENS"],
        "unset (off)",
        "N[/1h]: tokens per window or lifetime -> 429",
    ),
    s(
        &["LIMIT_REQUESTS"],
        "unset (off)",
        "N[/1m]: requests per window or lifetime -> 429",
    ),
    s(
        &["LIMIT_CONCURRENT"],
        "unset (off)",
        "requests in flight (streams too) -> 429",
    ),
    s(
        &["WEBSOCKET_PATHS"],
        "unset (426)",
        "exact paths, comma-separated, whose WebSocket upgrade is tunnelled",
    ),
    s(
        &["WEBSOCKET_IDLE_TIMEOUT"],
        "300s",
        "a tunnel without a frame either way -> close 1001",
    ),
    s(
        &["METRICS_ADDR"],
        "unset (off)",
        "host:port of the Prometheus /metrics listener",
    ),
    s(&["LOG_FORMAT"], "text", "text | json"),
    s(
        &["LOG_TIMESTAMPS"],
        "off",
        "on: text lines start with an RFC 3339 time",
    ),
    s(
        &["LOG_REQUEST_HEADERS"],
        "x-claude-code-session-id,x-claude-code-agent-id,x-claude-code-parent-agent-id",
        "request fields the access line names (never a credential field); off: none",
    ),
    s(
        &["USAGE_OBSERVE"],
        "on",
        "off: do not read token usage from responses",
    ),
    s(
        &["OAUTH_BETA"],
        "auto",
        "auto | on | off: add the OAuth beta flag",
    ),
    s(
        &["SHUTDOWN_GRACE"],
        "8s",
        "drain period after SIGTERM/SIGINT",
    ),
    s(
        &["HEADER_TIMEOUT"],
        "15s",
        "first byte to end of request head -> 408",
    ),
    s(
        &["KEEPALIVE_TIMEOUT"],
        "60s",
        "idle client connection between requests",
    ),
    s(
        &["CONNECT_TIMEOUT"],
        "10s",
        "upstream DNS + TCP connect -> 504",
    ),
    s(&["TLS_TIMEOUT"], "10s", "upstream TLS handshake -> 504"),
    s(
        &["RESPONSE_TIMEOUT"],
        "600s",
        "request sent to upstream response head -> 504",
    ),
    s(
        &["CLIENT_IDLE_TIMEOUT"],
        "60s",
        "gap between request-body reads -> 408",
    ),
    s(
        &["UPSTREAM_IDLE_TIMEOUT"],
        "300s",
        "gap between response-body reads -> close",
    ),
    s(
        &["CLIENT_WRITE_TIMEOUT"],
        "60s",
        "a write to the client making no progress",
    ),
    s(
        &["POOL_IDLE_TIMEOUT"],
        "20s",
        "idle upstream connection kept for reuse",
    ),
    s(&["POOL_MAX_IDLE"], "32", "idle upstream connections kept"),
    s(
        &["MAX_CONNECTIONS"],
        "1024",
        "concurrent client connections",
    ),
    s(
        &["MAX_REQUESTS_PER_CONNECTION"],
        "1000",
        "then Connection: close",
    ),
    s(&["MAX_REQUEST_LINE"], "8192", "request-line bytes -> 414"),
    s(
        &["MAX_FIELD_LINE"],
        "8192",
        "bytes in one header line -> 431",
    ),
    s(
        &["MAX_HEAD_BYTES"],
        "32768",
        "bytes in the whole head -> 431",
    ),
    s(
        &["MAX_HEADERS"],
        "100",
        "header fields (at most 256) -> 431",
    ),
    s(&["MAX_BODY_BYTES"], "33554432", "request body bytes -> 413"),
    s(
        &["MAX_CHUNK_EXT"],
        "1024",
        "chunk-extension bytes on one chunk line -> 400",
    ),
    s(
        &["MAX_TRAILER_BYTES"],
        "8192",
        "request trailer bytes -> 431",
    ),
];

/// Whether `name` is a variable of some setting.
pub fn is_known(name: &str) -> bool {
    SETTINGS.iter().any(|s| s.names.contains(&name))
}

/// The prefixes and suffix of the proxy's own names: a variable that has one but is not a
/// setting is most likely a typo.
const PREFIXES: &[&str] = &[
    "LISTEN_",
    "TARGET_",
    "TOKEN_",
    "MAX_",
    "LOG_",
    "METRICS_",
    "POOL_",
    "ALLOW_",
    "PHANTOM_",
    "OAUTH_",
    "SHUTDOWN_",
    "LIMIT_",
];

/// Common variables within two edits of a setting that are not typos of it.
const NOT_OURS: &[&str] = &["ftp_proxy", "FTP_PROXY", "all_proxy", "ALL_PROXY"];

/// For a variable that is not a setting but looks like one, the warning to print: it names
/// the variable (never its value) and, if one is close, the setting meant. `None` for a
/// setting or an unrelated variable.
pub fn suspicious(name: &str) -> Option<String> {
    if is_known(name) || NOT_OURS.contains(&name) {
        return None;
    }
    let upper = name.to_ascii_uppercase();
    let close = SETTINGS
        .iter()
        .flat_map(|s| s.names.iter())
        .filter(|k| k.len() >= 5)
        .map(|k| (distance(&upper, &k.to_ascii_uppercase()), *k))
        .filter(|&(d, _)| d <= 2)
        .min_by_key(|&(d, _)| d);
    // A `_TIMEOUT` ending alone is not ours: the environment of a shell holds many
    // (`PIP_DEFAULT_TIMEOUT`); a misspelt one of ours is close to its name and caught above.
    let ours = PREFIXES.iter().any(|p| upper.starts_with(p));
    let mut shown = String::new();
    for c in name.chars().take(64) {
        shown.push(if c.is_ascii_graphic() { c } else { '?' });
    }
    match close {
        Some((_, k)) => Some(format!(
            "warning: {shown} is not a setting (did you mean {k}?); ignored"
        )),
        None if ours => Some(format!(
            "warning: {shown} is not a setting (see --help); ignored"
        )),
        None => None,
    }
}

/// Levenshtein distance, on bytes (names are ASCII).
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &x) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &y) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(x != y)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `--help`'s settings part: one line per setting, its names, default and line.
pub fn help_table() -> String {
    let mut out = String::new();
    for s in SETTINGS {
        let names = s.names.join(" / ");
        out.push_str(&format!("    {names:<30} {:<26} {}\n", s.default, s.help));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_and_our_prefixes_warn_and_others_do_not() {
        for typo in [
            "LISTEN_PROT",
            "TOKEN_FIEL",
            "TARGE",
            "listen_port",
            "HEADER_TIMEOUTS",
        ] {
            let w = suspicious(typo).unwrap_or_else(|| panic!("{typo}"));
            assert!(w.contains(typo) && w.contains("did you mean"), "{w}");
        }
        for ours in ["MAX_FOO_BAR", "LOG_LEVEL"] {
            assert!(suspicious(ours).is_some(), "{ours}");
        }
        for other in [
            "PATH",
            "HOME",
            "TERM",
            "LISTEN_PORT",
            "https_proxy",
            "ftp_proxy",
            "PIP_DEFAULT_TIMEOUT",
        ] {
            assert_eq!(suspicious(other), None, "{other}");
        }
    }

    #[test]
    fn distances() {
        assert_eq!(distance("LISTEN_PROT", "LISTEN_PORT"), 2);
        assert_eq!(distance("TOKEN_FIEL", "TOKEN_FILE"), 2);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", "abc"), 0);
    }
}
