//! Codex CLI (`codex` on PATH, from npm's `@openai/codex`) through the real proxy, against a
//! fake of the Responses API: one `codex exec` turn with the built-in `openai` provider pointed
//! at the proxy. That provider first asks for a WebSocket (`GET /v1/responses`,
//! `Upgrade: websocket`); a refusal it takes as final (426 Upgrade Required, RFC 9110 §15.5.22)
//! makes it stream over HTTP at once, anything else costs it five reconnects first. Checked
//! without timing: the turn completes, and the access log holds exactly one upgrade attempt,
//! answered 426.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::lines::Collected;
use crate::support::process::wait_child;
use crate::support::*;

/// The sandbox's key: the proxy swaps it for [`TOKEN`].
const PHANTOM: &str = "phantom-codex-key";

/// What the fake upstream says; found in Codex's output once the turn completed.
const REPLY: &str = "fake upstream says hello";

/// Bound on one `codex exec` (a turn that retries five times takes under 10 s).
const CODEX_BOUND: Duration = Duration::from_secs(60);

/// Asserts that `codex` is on PATH. The test is `#[ignore = "needs codex"]`; .ci/run installs it.
fn require_codex() {
    let found = Command::new("codex")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "codex is missing: `npm install -g @openai/codex` (.ci/run does)"
    );
}

/// The Server-Sent Events of one streamed response holding one assistant message, as the
/// Responses API sends them; `response.completed` ends Codex's turn.
fn sse_body() -> Vec<u8> {
    use serde_json::json;
    let item = json!({"id": "msg_1", "type": "message", "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": REPLY, "annotations": []}]});
    let response = |status: &str, output| {
        json!({"id": "resp_1", "object": "response", "created_at": 0, "model": "fake-model",
            "status": status, "output": output,
            "usage": {"input_tokens": 42, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 49}})
    };
    let events = [
        json!({"type": "response.created", "response": response("in_progress", json!([]))}),
        json!({"type": "response.output_item.added", "output_index": 0,
            "item": {"id": "msg_1", "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}}),
        json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
            "content_index": 0, "delta": REPLY}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({"type": "response.completed", "response": response("completed", json!([item]))}),
    ];
    let mut body = Vec::new();
    for e in events {
        let kind = e["type"].as_str().unwrap_or_default();
        body.extend_from_slice(format!("event: {kind}\ndata: {e}\n\n").as_bytes());
    }
    body
}

/// The fake: `POST /v1/responses` gets the stream; anything else 404 (an upgrade never gets here).
fn fake_responses_api(c: &mut UpConn) {
    while let Some(req) = c.read_request() {
        let answer = if req.head.method == "POST" && req.head.target == "/v1/responses" {
            let body = sse_body();
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(&body);
            out
        } else {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
        };
        if c.send(&answer).is_err() {
            return;
        }
    }
}

/// A fresh HOME for Codex with `.codex/config.toml` pointing the built-in provider at `port`,
/// and nothing that would leave the machine (update check, analytics, plugin and app sync).
fn codex_home(port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alp-codex-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join(".codex")).expect("create the codex home");
    std::fs::create_dir_all(dir.join("cwd")).expect("create the codex cwd");
    let config = format!(
        "model = \"fake-model\"\ncheck_for_update_on_startup = false\n\
         openai_base_url = \"http://127.0.0.1:{port}/v1\"\n\n[analytics]\nenabled = false\n\n\
         [features]\nplugins = false\nremote_plugin = false\napps = false\n"
    );
    std::fs::write(dir.join(".codex/config.toml"), config).expect("write config.toml");
    dir
}

/// `codex exec` with a clean environment (PATH, HOME, CODEX_HOME, the phantom key in
/// CODEX_API_KEY, where `codex exec` looks for the built-in provider's key); its exit code and
/// stdout.
fn codex_exec(home: &Path) -> (Option<i32>, String) {
    let mut child = Command::new("codex")
        .args([
            "exec",
            "--skip-git-repo-check",
            "--ephemeral",
            "--color",
            "never",
        ])
        .arg("Say hello.")
        .current_dir(home.join("cwd"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("CODEX_HOME", home.join(".codex"))
        .env("CODEX_API_KEY", PHANTOM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn codex");
    let out = Collected::spawn(child.stdout.take().expect("stdout"));
    let status = wait_child(&mut child, CODEX_BOUND);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    out.wait_eof(Duration::from_secs(2));
    (status.and_then(|s| s.code()), out.text())
}

#[test]
#[ignore = "needs codex"]
fn codex_falls_back_to_http_after_one_upgrade_answered_426() {
    require_codex();
    let up = Upstream::plain().serve(fake_responses_api);
    let proxy = process_proxy_for(&up, &[("PHANTOM_TOKEN", PHANTOM)]);
    let home = codex_home(proxy.port());
    let (code, stdout) = codex_exec(&home);
    let _ = std::fs::remove_dir_all(&home);
    assert_eq!(code, Some(0), "codex exec failed; stdout: {stdout}");
    assert!(
        stdout.contains(REPLY),
        "no reply in codex's output: {stdout}"
    );
    assert!(
        proxy.wait_for_stderr("proxy: POST /v1/responses 200 ", IO_TIMEOUT),
        "no streamed turn in the access log: {:?}",
        proxy.stderr_lines()
    );
    let upgrades: Vec<String> = proxy
        .stderr_lines()
        .into_iter()
        .filter(|l| l.starts_with("proxy: GET /v1/responses "))
        .collect();
    assert_eq!(upgrades.len(), 1, "upgrade attempts: {upgrades:?}");
    assert!(
        upgrades[0].starts_with("proxy: GET /v1/responses 426 "),
        "{upgrades:?}"
    );
    // Nothing of the upgrade was forwarded; the turn carried the real credential.
    let requests = up.requests();
    assert!(
        requests.iter().all(|r| r.head.method == "POST"),
        "{requests:?}"
    );
    let auth = format!("Bearer {TOKEN}");
    assert!(
        requests
            .iter()
            .all(|r| r.header_str("authorization").as_deref() == Some(auth.as_str())),
        "{requests:?}"
    );
}
