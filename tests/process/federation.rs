//! Workload Identity Federation against a fake TARGET: `/v1/oauth/token` checks the
//! jwt-bearer grant and mints short-lived tokens; the API knows only the newest one.

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

const LOG_BOUND: Duration = Duration::from_secs(15);
const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl";

/// The grant the proxy must send, field by field (the ids as configured).
const GRANT: &str = concat!(
    r#"{"grant_type":"urn:ietf:params:oauth:grant-type:jwt-bearer","#,
    r#""assertion":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl","#,
    r#""federation_rule_id":"fdrl_test","organization_id":"00000000-0000-0000-0000-00000000000a","#,
    r#""service_account_id":"svac_test"}"#
);

/// A TARGET that mints `sk-ant-oat01-fed-N` (living `lifetime` seconds) for the right grant,
/// and answers the API 200 for the newest token, 401 for any other.
fn fake_target(lifetime: u32) -> (Upstream, Arc<AtomicUsize>) {
    let minted = Arc::new(AtomicUsize::new(0));
    let m = minted.clone();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            let reply = if req.head.target == "/v1/oauth/token" {
                if req.head.method != "POST" || req.body.data != GRANT.as_bytes() {
                    "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n".to_string()
                } else {
                    let n = m.fetch_add(1, Ordering::SeqCst) + 1;
                    let body = format!(
                        r#"{{"access_token":"sk-ant-oat01-fed-{n}","token_type":"Bearer","expires_in":{lifetime}}}"#
                    );
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                }
            } else {
                let newest = format!("Bearer sk-ant-oat01-fed-{}", m.load(Ordering::SeqCst));
                if req.head.all("authorization") == [newest.as_bytes()] {
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string()
                } else {
                    "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".to_string()
                }
            };
            if c.send(reply.as_bytes()).is_err() {
                return;
            }
        }
    });
    (up, minted)
}

fn federated(up: &Upstream, dir: &std::path::Path) -> ProcessProxy {
    federated_with(up, dir, &[])
}

fn federated_with(up: &Upstream, dir: &std::path::Path, extra: &[(&str, &str)]) -> ProcessProxy {
    let jwt = dir.join("jwt");
    fs::write(&jwt, format!("{JWT}\n")).unwrap();
    let target = up.target_url();
    let jwt = jwt.display().to_string();
    let envs = [
        ("TARGET", target.as_str()),
        ("ANTHROPIC_FEDERATION_RULE_ID", "fdrl_test"),
        (
            "ANTHROPIC_ORGANIZATION_ID",
            "00000000-0000-0000-0000-00000000000a",
        ),
        ("ANTHROPIC_SERVICE_ACCOUNT_ID", "svac_test"),
        ("ANTHROPIC_IDENTITY_TOKEN_FILE", jwt.as_str()),
    ];
    let mut envs = envs.to_vec();
    envs.extend_from_slice(extra);
    ProcessProxy::spawn_with_stdin(&envs, b"", true)
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"))
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("alp-fed-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn federation_mints_a_token_and_refreshes_it_before_it_expires() {
    let dir = scratch_dir("mint");
    let (up, minted) = fake_target(4);
    let proxy = federated(&up, &dir);
    assert_eq!(minted.load(Ordering::SeqCst), 1);
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    assert!(proxy.wait_for_stderr("token updated (generation 2)", LOG_BOUND));
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    let bearers: Vec<_> = up
        .requests()
        .iter()
        .filter(|r| r.head.target == "/v1/models")
        .flat_map(|r| r.head.all("authorization"))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(
        bearers,
        ["Bearer sk-ant-oat01-fed-1", "Bearer sk-ant-oat01-fed-2"]
    );
    let log = proxy.stderr_so_far();
    for secret in [JWT, "eyJ", "sk-ant-oat01-fed"] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_401_exchanges_again_and_the_client_is_told_to_retry() {
    let dir = scratch_dir("rejected");
    let (up, minted) = fake_target(3600);
    let proxy = federated(&up, &dir);
    // Another mint elsewhere makes the proxy's token stale.
    minted.fetch_add(1, Ordering::SeqCst);
    let r = roundtrip(proxy.addr(), get("/v1/models"));
    assert_eq!(r.status(), 401);
    assert_eq!(r.head.header_str("x-should-retry").as_deref(), Some("true"));
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_grant_stops_the_start_naming_the_status_only() {
    let dir = scratch_dir("refused");
    let jwt = dir.join("jwt");
    fs::write(&jwt, "not-the-right.jwt.x\n").unwrap();
    let (up, _) = fake_target(60);
    let target = up.target_url();
    let jwt = jwt.display().to_string();
    let envs = [
        ("TARGET", target.as_str()),
        ("ANTHROPIC_FEDERATION_RULE_ID", "fdrl_test"),
        (
            "ANTHROPIC_ORGANIZATION_ID",
            "00000000-0000-0000-0000-00000000000a",
        ),
        ("ANTHROPIC_SERVICE_ACCOUNT_ID", "svac_test"),
        ("ANTHROPIC_IDENTITY_TOKEN_FILE", jwt.as_str()),
    ];
    let out = run(&[], &envs, None, true, LOG_BOUND);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        "proxy: federation: the token exchange answered 400"
    );
    let missing = run(
        &[],
        &[("ANTHROPIC_FEDERATION_RULE_ID", "fdrl_test")],
        None,
        true,
        LOG_BOUND,
    );
    assert!(
        missing
            .stderr
            .contains("proxy: ANTHROPIC_IDENTITY_TOKEN_FILE: is required"),
        "{missing:?}"
    );
    let both = run(
        &[],
        &[
            ("ANTHROPIC_FEDERATION_RULE_ID", "fdrl_test"),
            ("TOKEN_FILE", "/t"),
        ],
        None,
        true,
        LOG_BOUND,
    );
    assert!(
        both.stderr
            .contains("proxy: ANTHROPIC_FEDERATION_RULE_ID: cannot be combined with TOKEN_FILE"),
        "{both:?}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Under LOG_FORMAT=json too, nothing of the assertion or the minted tokens reaches the log,
/// through a mint and a refresh, and every line is one JSON object.
#[test]
fn under_json_logs_nothing_of_the_assertion_or_the_tokens_appears() {
    let dir = scratch_dir("json");
    let (up, _minted) = fake_target(4);
    let proxy = federated_with(&up, &dir, &[("LOG_FORMAT", "json")]);
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    assert!(proxy.wait_for_stderr("\"token_generation\":2", LOG_BOUND));
    let log = proxy.stderr_so_far();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    for secret in [JWT, "eyJ", "sk-ant-oat01-fed", "access_token"] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
    let _ = fs::remove_dir_all(&dir);
}
