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
