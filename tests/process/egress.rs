//! Startup errors of the egress and CA settings: exit code 1 and a `proxy: ` line naming the
//! setting, never its value (the egress behaviour itself: `tests/it/egress.rs`).

use crate::support::*;

#[test]
fn a_proxy_url_the_proxy_cannot_use_is_a_startup_error_that_does_not_echo_it() {
    for url in [
        "https://proxy.corp:3128",
        "socks5://proxy.corp:1080",
        "http://secretuser@proxy.corp:3128",
        "http://proxy.corp:3128/secret-path",
        "http://proxy corp",
    ] {
        let envs = [("TARGET", "https://api.example.test"), ("https_proxy", url)];
        let out = run(&[], &envs, Some(b"sk-ant-x\n"), true, IO_TIMEOUT);
        assert_eq!(out.code(), Some(1), "{url}: {out:?}");
        assert!(
            out.stderr.starts_with("proxy: https_proxy: "),
            "{url}: {:?}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("secret") && !out.stderr.contains("proxy.corp"),
            "{:?}",
            out.stderr
        );
    }
}

/// (Split from `an_extra_ca_is_trusted_beside_the_built_in_roots` in `tests/it`: the exit code
/// needs the process.)
#[test]
fn an_extra_ca_file_that_cannot_be_read_exits_1_naming_the_setting() {
    let envs = [
        ("TARGET", "https://api.example.test"),
        ("TARGET_EXTRA_CA_FILE", "/nonexistent.pem"),
    ];
    let out = run(&[], &envs, Some(b"sk-ant-x\n"), true, IO_TIMEOUT);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.starts_with("proxy: TARGET_EXTRA_CA_FILE: "),
        "{:?}",
        out.stderr
    );
}
