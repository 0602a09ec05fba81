//! Settings come from the environment; a bad one is one `proxy: <SETTING>: ...` line and exit 1,
//! before stdin is read. `--help` and `--version` need no stdin.

use std::time::Duration;

use crate::support::*;

const EXIT_BOUND: Duration = Duration::from_secs(10);

/// Run with `envs` and stdin held open (never written): a process that reads stdin before
/// validating would hang and be killed at the bound.
fn expect_setting_error(setting: &str, envs: &[(&str, &str)]) {
    let out = run(&[], envs, None, false, EXIT_BOUND);
    assert_eq!(
        out.code(),
        Some(1),
        "{envs:?}: expected exit 1 before reading stdin: {out:?}"
    );
    let prefix = format!("proxy: {setting}: ");
    assert!(
        out.stderr.starts_with(&prefix) || out.stderr.lines().any(|l| l.starts_with(&prefix)),
        "{envs:?}: stderr {:?} has no line starting {prefix:?}",
        out.stderr
    );
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.starts_with("proxy: "))
            .count(),
        1,
        "exactly one line: {:?}",
        out.stderr
    );
}

#[test]
fn help_prints_and_exits_0_without_reading_stdin() {
    let out = run(&["--help"], &[], None, false, EXIT_BOUND);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("LISTEN_PORT"),
        "help should list settings: {all}"
    );
    assert!(all.contains("TARGET"), "help should list settings: {all}");
}

#[test]
fn version_prints_the_crate_version_and_exits_0_without_reading_stdin() {
    let out = run(&["--version"], &[], None, false, EXIT_BOUND);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains(env!("CARGO_PKG_VERSION")), "{all}");
}

#[test]
fn a_non_numeric_listen_port_is_rejected_before_stdin_is_read() {
    expect_setting_error("LISTEN_PORT", &[("LISTEN_PORT", "http")]);
}

#[test]
fn an_out_of_range_listen_port_is_rejected() {
    expect_setting_error("LISTEN_PORT", &[("LISTEN_PORT", "65536")]);
    expect_setting_error("LISTEN_PORT", &[("LISTEN_PORT", "-1")]);
}

#[test]
fn a_bad_listen_addr_is_rejected() {
    expect_setting_error("LISTEN_ADDR", &[("LISTEN_ADDR", "not-an-ip")]);
}

#[test]
fn a_target_with_an_unsupported_scheme_is_rejected() {
    expect_setting_error("TARGET", &[("TARGET", "ftp://127.0.0.1:21")]);
    expect_setting_error("TARGET", &[("TARGET", "127.0.0.1:8080")]);
}

#[test]
fn a_target_with_userinfo_query_or_fragment_is_rejected() {
    expect_setting_error("TARGET", &[("TARGET", "http://user:pw@127.0.0.1:1")]);
    expect_setting_error("TARGET", &[("TARGET", "http://127.0.0.1:1/?q=1")]);
    expect_setting_error("TARGET", &[("TARGET", "http://127.0.0.1:1/#f")]);
}

#[test]
fn a_target_without_a_host_or_with_a_bad_port_is_rejected() {
    expect_setting_error("TARGET", &[("TARGET", "http://")]);
    expect_setting_error("TARGET", &[("TARGET", "http://127.0.0.1:99999")]);
}

#[test]
fn a_missing_target_ca_file_is_rejected_for_an_https_target() {
    expect_setting_error(
        "TARGET_CA_FILE",
        &[
            ("TARGET", "https://localhost:1"),
            ("TARGET_CA_FILE", "/nonexistent/agent-loop-proxy-ca.pem"),
        ],
    );
}

#[test]
fn a_target_ca_file_without_certificates_is_rejected() {
    let f = crate::support::tls::TempFile::new("empty.pem", b"not a certificate\n");
    expect_setting_error(
        "TARGET_CA_FILE",
        &[
            ("TARGET", "https://localhost:1"),
            ("TARGET_CA_FILE", &f.path_str()),
        ],
    );
}

#[test]
fn a_bad_duration_is_rejected_with_its_setting_name() {
    expect_setting_error("HEADER_TIMEOUT", &[("HEADER_TIMEOUT", "soon")]);
}

#[test]
fn the_startup_line_names_the_listen_address_the_target_and_the_version() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = process_proxy_for(&up, &[]);
    let line = proxy
        .stderr_so_far()
        .lines()
        .find(|l| l.starts_with("proxy: listening on "))
        .expect("startup line")
        .to_string();
    let version = format!("; agent-loop-proxy {}", env!("CARGO_PKG_VERSION"));
    let start = format!(
        "proxy: listening on {}, target {}{version}",
        proxy.addr(),
        up.target_url()
    );
    assert!(line.starts_with(&start), "{line}");
    assert!(proxy.addr().ip().is_loopback());
    assert_ne!(proxy.port(), 0);
}

/// `--help` lists every setting with its default, from the table the parser reads (the
/// README's table is checked against the same one in `tests/repo`).
#[test]
fn help_lists_every_setting_with_its_default() {
    let out = run(&["--help"], &[], None, false, EXIT_BOUND);
    assert_eq!(out.code(), Some(0), "{out:?}");
    for s in agent_loop_proxy::settings::SETTINGS {
        let line = out
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(s.names[0]))
            .unwrap_or_else(|| panic!("{} missing from --help:\n{}", s.names[0], out.stdout));
        assert!(line.contains(s.default), "{line}");
    }
}

/// A scratch directory of this test process.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("alp-check-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `--check` with a good configuration: exit 0, the effective settings on stdout (secrets as
/// `set`), with stdin held open and never read, and the token file opened but not printed.
#[test]
fn check_prints_the_effective_settings_and_exits_0_without_reading_stdin() {
    let dir = scratch("good");
    let file = dir.join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let envs = [
        ("TARGET", "https://api.example.test/base"),
        ("PHANTOM_TOKEN", "phantom-not-shown"),
        ("TOKEN_FILE", file.to_str().unwrap()),
        ("ALLOW_REQUESTS", "POST /v1/messages, GET /v1/models"),
        ("https_proxy", "http://user:egress-password@127.0.0.1:3128"),
        ("HEADER_TIMEOUT", "500ms"),
    ];
    let out = run(&["--check"], &envs, None, false, EXIT_BOUND);
    assert_eq!(out.code(), Some(0), "{out:?}");
    for want in [
        "TARGET=https://api.example.test/base\n",
        "PHANTOM_TOKEN=set\n",
        &format!("TOKEN_FILE={}\n", file.display()),
        "ALLOW_REQUESTS=2 entries\n",
        "egress proxy=127.0.0.1:3128 (from https_proxy)\n",
        "HEADER_TIMEOUT=500ms\n",
        "MAX_HEADERS=100\n",
        "configuration ok\n",
    ] {
        assert!(
            out.stdout.contains(want),
            "{want:?} not in:\n{}",
            out.stdout
        );
    }
    let all = format!("{}{}", out.stdout, out.stderr);
    for secret in [TOKEN, "phantom-not-shown", "egress-password"] {
        assert!(!all.contains(secret), "{secret} printed:\n{all}");
    }
    assert!(!all.contains("listening on"), "--check must not serve");
}

/// `--check` with a bad configuration: what a start would refuse, files included, is one
/// `proxy: SETTING: ...` line and exit 1, stdin never read.
#[test]
fn check_refuses_what_a_start_would_with_the_setting_named() {
    let dir = scratch("bad");
    let not_pem = dir.join("not-pem");
    std::fs::write(&not_pem, "no certificate here\n").unwrap();
    let absent = dir.join("absent");
    let cases: [(&str, Vec<(&str, &str)>); 4] = [
        ("LISTEN_PORT", vec![("LISTEN_PORT", "http")]),
        (
            "TARGET_CA_FILE",
            vec![
                ("TARGET", "https://a.test"),
                ("TARGET_CA_FILE", not_pem.to_str().unwrap()),
            ],
        ),
        ("TOKEN_FILE", vec![("TOKEN_FILE", absent.to_str().unwrap())]),
        (
            "https_proxy",
            vec![("TARGET", "https://a.test"), ("https_proxy", "socks5://x")],
        ),
    ];
    for (setting, envs) in &cases {
        let out = run(&["--check"], envs, None, false, EXIT_BOUND);
        assert_eq!(out.code(), Some(1), "{envs:?}: {out:?}");
        let prefix = format!("proxy: {setting}: ");
        assert!(
            out.stderr.lines().any(|l| l.starts_with(&prefix)),
            "{envs:?}: {:?}",
            out.stderr
        );
        assert!(!out.stdout.contains("configuration ok"));
    }
}

/// A variable that looks like a setting but is none gets a warning naming it (and the
/// setting meant), never its value; the proxy still starts.
#[test]
fn a_misspelt_setting_is_named_in_a_warning() {
    let envs = [
        ("LISTEN_PROT", "value-not-shown-1"),
        ("TOKEN_FIEL", "value-not-shown-2"),
        ("MAX_BODY", "value-not-shown-3"),
        ("UNRELATED_THING", "x"),
    ];
    let proxy = ProcessProxy::spawn(&envs, TOKEN);
    let err = proxy.stderr_so_far();
    for want in [
        "proxy: warning: LISTEN_PROT is not a setting (did you mean LISTEN_PORT?); ignored",
        "proxy: warning: TOKEN_FIEL is not a setting (did you mean TOKEN_FILE?); ignored",
        "proxy: warning: MAX_BODY is not a setting",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    assert!(
        !err.contains("value-not-shown") && !err.contains("UNRELATED"),
        "{err}"
    );
}

/// `LOG_TIMESTAMPS=on`: each text line starts with an RFC 3339 UTC time.
#[test]
fn log_timestamps_prefix_text_lines_with_an_rfc_3339_time() {
    let envs = [
        ("LOG_TIMESTAMPS", "on"),
        ("TOKEN_FILE", "/nonexistent/token"),
    ];
    let out = run(&["--check"], &envs, None, false, EXIT_BOUND);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let line = out.stderr.lines().next().expect("a line");
    let (ts, rest) = line.split_once(' ').expect("a time, then the line");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{line}"
    );
    assert!(rest.starts_with("proxy: TOKEN_FILE: "), "{line}");
}
