//! The token comes from stdin: one line, trailing CR/LF stripped, and is used upstream.
//! A missing or invalid token stops the process with one `proxy: ` line that does not echo it.

use std::time::Duration;

use crate::support::*;

const EXIT_BOUND: Duration = Duration::from_secs(10);

/// Run the proxy with `stdin` (then closed) and expect exit 1 with a proxy error line.
fn expect_rejected(stdin: &[u8], must_not_contain: &[&str]) {
    let out = run(&[], &[], Some(stdin), true, EXIT_BOUND);
    assert_eq!(out.code(), Some(1), "stdin {stdin:?}: {out:?}");
    assert!(
        out.stderr.starts_with("proxy: "),
        "stderr should start with `proxy: `: {:?}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("listening on"),
        "started despite a bad token: {:?}",
        out.stderr
    );
    for s in must_not_contain {
        assert!(
            !out.stderr.contains(s),
            "stderr echoes the input: {:?}",
            out.stderr
        );
        assert!(
            !out.stdout.contains(s),
            "stdout echoes the input: {:?}",
            out.stdout
        );
    }
}

#[test]
fn the_token_read_from_stdin_is_sent_upstream_as_a_bearer_token() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = ProcessProxy::spawn(&[("TARGET", &up.target_url())], "sk-ant-from-stdin-42");
    roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(
        up.only_request().all("authorization"),
        vec![&b"Bearer sk-ant-from-stdin-42"[..]]
    );
}

#[test]
fn a_crlf_terminated_token_is_used_without_the_cr() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy =
        ProcessProxy::spawn_with_stdin(&[("TARGET", &up.target_url())], b"sk-ant-crlf\r\n", true)
            .expect("proxy started");
    roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(
        up.only_request().all("authorization"),
        vec![&b"Bearer sk-ant-crlf"[..]]
    );
}

#[test]
fn a_token_without_a_trailing_newline_is_accepted() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy =
        ProcessProxy::spawn_with_stdin(&[("TARGET", &up.target_url())], b"sk-ant-no-nl", true)
            .expect("proxy started");
    roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(
        up.only_request().all("authorization"),
        vec![&b"Bearer sk-ant-no-nl"[..]]
    );
}

#[test]
fn the_proxy_starts_after_one_line_even_if_stdin_stays_open() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy =
        ProcessProxy::spawn_with_stdin(&[("TARGET", &up.target_url())], b"sk-ant-open\n", false)
            .expect("proxy should start once the line is read, without waiting for EOF");
    roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(
        up.only_request().all("authorization"),
        vec![&b"Bearer sk-ant-open"[..]]
    );
}

#[test]
fn empty_stdin_exits_1_with_a_proxy_error() {
    expect_rejected(b"", &[]);
}

#[test]
fn a_lone_newline_exits_1_with_a_proxy_error() {
    expect_rejected(b"\n", &[]);
}

#[test]
fn a_lone_crlf_exits_1_with_a_proxy_error() {
    expect_rejected(b"\r\n", &[]);
}

#[test]
fn a_token_with_a_control_byte_exits_1_without_echoing_it() {
    expect_rejected(b"sk-ant-LEAKA\x01tail\n", &["LEAKA", "tail"]);
}

#[test]
fn a_token_with_a_nul_byte_exits_1_without_echoing_it() {
    expect_rejected(b"sk-ant-LEAKB\x00tail\n", &["LEAKB", "tail"]);
}

#[test]
fn a_token_with_del_exits_1_without_echoing_it() {
    expect_rejected(b"sk-ant-LEAKC\x7ftail\n", &["LEAKC", "tail"]);
}

#[test]
fn a_token_with_non_ascii_bytes_exits_1_without_echoing_it() {
    expect_rejected("sk-ant-LEAKD\u{e9}tail\n".as_bytes(), &["LEAKD", "tail"]);
    expect_rejected(b"sk-ant-LEAKE\xfftail\n", &["LEAKE", "tail"]);
}

#[test]
fn a_token_with_a_bare_cr_inside_exits_1_without_echoing_it() {
    expect_rejected(b"sk-ant-LEAKF\rtail\n", &["LEAKF", "tail"]);
}

/// Attack review, round two (defect 6): chunk-size lines are framing and are never masked,
/// so a token that could be written as a chunk size (up to 16 hex digits), or as a size
/// followed by `;` and an extension, could reach the client in clear. Real tokens are longer
/// and not hex; such a token is refused at startup, without echoing it.
#[test]
fn a_token_that_could_pass_as_a_chunk_size_is_refused() {
    for token in ["deadbeef", "0123456789ABCDEF", "7", "ff;ext=1", ";x"] {
        expect_rejected(format!("{token}\n").as_bytes(), &[token]);
        let out = run(
            &[],
            &[],
            Some(format!("{token}\n").as_bytes()),
            true,
            EXIT_BOUND,
        );
        assert!(out.stderr.contains("chunk"), "{token}: {:?}", out.stderr);
    }
    // Seventeen hex digits cannot be a chunk size (the decoder refuses more than 16).
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = ProcessProxy::spawn(&[("TARGET", &up.target_url())], "0123456789abcdef0");
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
}
