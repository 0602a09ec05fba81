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
fn bad_settings_name_the_setting() {
    let cases = [
        ("LISTEN_PORT", "x"),
        ("LISTEN_PORT", "70000"),
        ("LISTEN_ADDR", "localhost"),
        ("TARGET", "https://user:secret@host"),
        ("TOKEN_HEADER", "cookie"),
        ("TOKEN_HEADER", "x_goog_api_key"),
        ("TOKEN_HEADER", "x-goog api key"),
        ("TOKEN_UPDATES", "file"),
        ("ALLOW_REQUESTS", "post /v1/messages"),
        ("METRICS_ADDR", "localhost:9464"),
        ("LOG_FORMAT", "xml"),
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
        assert!(!e.to_string().contains("secret"));
    }
}

#[test]
fn token_sources_and_headers() {
    let c = from(&[
        ("TOKEN_HEADER", "X-Goog-Api-Key"),
        ("TOKEN_UPDATES", "stdin"),
    ])
    .unwrap();
    assert_eq!(c.token_header, TokenHeader::Custom("x-goog-api-key".into()));
    assert_eq!(c.token_source, TokenSource::StdinUpdates);
    let e = from(&[("TOKEN_UPDATES", "stdin"), ("TOKEN_FILE", "/run/secrets/t")]);
    assert_eq!(e.unwrap_err().setting, "TOKEN_FILE");
    let e = from(&[("TOKEN_FILE", "/t"), ("TOKEN_COMMAND", r#"["x"]"#)]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "proxy: TOKEN_COMMAND: cannot be combined with TOKEN_FILE (one source of tokens)"
    );
    let e = from(&[("TOKEN_UPDATES", "stdin"), ("TOKEN_COMMAND", r#"["x"]"#)]);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("with TOKEN_UPDATES=stdin"));
    let c = from(&[
        ("TOKEN_COMMAND", r#"["gh", "auth", "token"]"#),
        ("TOKEN_COMMAND_ENV", "HOME, GH_CONFIG_DIR"),
        ("TOKEN_REFRESH_INTERVAL", "30m"),
    ])
    .unwrap();
    let TokenSource::Command(cmd) = c.token_source else {
        panic!("a command source")
    };
    assert_eq!(cmd.argv, ["gh", "auth", "token"]);
    assert_eq!(cmd.env, ["HOME", "GH_CONFIG_DIR"]);
    assert_eq!(cmd.timeout, Duration::from_secs(10));
    assert_eq!(cmd.refresh, Some(Duration::from_secs(1800)));
    for bad in [
        &[("TOKEN_COMMAND", "gh auth token")][..],
        &[("TOKEN_COMMAND", "[]")],
        &[("TOKEN_COMMAND", r#"[""]"#)],
        &[("TOKEN_COMMAND", r#"["x"]"#), ("TOKEN_COMMAND_ENV", "A B")],
        &[
            ("TOKEN_COMMAND", r#"["x"]"#),
            ("TOKEN_COMMAND_TIMEOUT", "0"),
        ],
        &[
            ("TOKEN_COMMAND", r#"["x"]"#),
            ("TOKEN_REFRESH_INTERVAL", "1h1m"),
        ],
    ] {
        assert!(from(bad).is_err(), "{bad:?}");
    }
    let c = from(&[("TOKEN_FILE", "/run/secrets/t")]).unwrap();
    assert_eq!(c.token_source, TokenSource::File("/run/secrets/t".into()));
}

/// The defaults `--help` and the README state are the parser's: setting each to its
/// stated default changes nothing.
#[test]
fn the_settings_table_states_the_parsers_defaults() {
    let plain = format!("{:?}", from(&[]).unwrap());
    for s in crate::settings::SETTINGS {
        if s.default.starts_with("unset") {
            continue;
        }
        // A setting that needs another is checked with that one set.
        let (base, plain) = match s.names[0] {
            "LISTEN_UNIX_MODE" => {
                let base = ("LISTEN_UNIX", "/run/alp/proxy.sock");
                (vec![base], format!("{:?}", from(&[base]).unwrap()))
            }
            _ => (vec![], plain.clone()),
        };
        let set = from(&[base, vec![(s.names[0], s.default)]].concat()).unwrap();
        assert_eq!(format!("{set:?}"), plain, "{}", s.names[0]);
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

#[test]
fn usage_settings_and_the_attribution_allow_list() {
    let c = from(&[]).unwrap();
    assert!(c.usage_observe);
    assert_eq!(c.log_headers, usage::DEFAULT_LOG_HEADERS.to_vec());
    let c = from(&[("USAGE_OBSERVE", "off"), ("LOG_REQUEST_HEADERS", "off")]).unwrap();
    assert!(!c.usage_observe && c.log_headers.is_empty());
    let c = from(&[("LOG_REQUEST_HEADERS", "X-Run-Id, x-loop ,x-run-id")]).unwrap();
    assert_eq!(c.log_headers, ["x-run-id", "x-loop"]);
    assert!(from(&[("USAGE_OBSERVE", "yes")]).is_err());
    for credential in [
        "authorization",
        "Proxy-Authorization",
        "x-api-key",
        "cookie",
        "x-goog-api-key",
        "x-session-token",
        "x-client-secret",
        "x-oauth-thing",
        "x-db-password",
        "x-run-id,x-keyring",
    ] {
        let e = from(&[("LOG_REQUEST_HEADERS", credential)]).unwrap_err();
        assert_eq!(e.setting, "LOG_REQUEST_HEADERS", "{credential}");
    }
    // The TOKEN_HEADER, whatever its name.
    let e = from(&[
        ("TOKEN_HEADER", "x-upstream-cred"),
        ("LOG_REQUEST_HEADERS", "X-Upstream-Cred"),
    ]);
    assert_eq!(e.unwrap_err().setting, "LOG_REQUEST_HEADERS");
    assert!(from(&[("LOG_REQUEST_HEADERS", "a b")]).is_err());
    let many = (0..=crate::limits::LOG_HEADERS_MAX)
        .map(|i| format!("x-{i}"))
        .collect::<Vec<_>>();
    assert!(from(&[("LOG_REQUEST_HEADERS", &many.join(","))]).is_err());
}
