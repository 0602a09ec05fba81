//! A terminal on stdin (run under a pseudo-terminal with util-linux `script`): the proxy
//! prompts on stderr and reads the token with echo off, then restores the terminal; with
//! `TOKEN_UPDATES=stdin`, which a terminal cannot serve, it refuses with a clear message.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::support::lines::Collected;
use crate::support::process::{send_signal, wait_child, BIN, UNUSED_TARGET};
use crate::support::*;

/// `script` running `shell` on a new pseudo-terminal, with the proxy's clean environment plus
/// `envs`; what the terminal shows is collected from script's stdout.
fn under_a_terminal(shell: &str, envs: &[(&str, &str)]) -> (Child, Arc<Collected>) {
    require_tool("script", "util-linux");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", shell, "/dev/null"]).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("LISTEN_PORT", "0").env("TARGET", UNUSED_TARGET);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn script");
    let screen = Collected::spawn(child.stdout.take().unwrap());
    (child, screen)
}

#[test]
#[ignore = "needs script"]
fn a_terminal_gets_a_prompt_and_the_token_is_not_echoed() {
    // The inner shell prints its pid and becomes the proxy; once it exits, the outer shell
    // shows the terminal's settings, to see echo restored.
    let shell = format!("sh -c 'echo PID $$; exec {BIN}'; stty -a");
    let (mut child, screen) = under_a_terminal(&shell, &[]);
    assert!(
        screen.wait_until(IO_TIMEOUT, |s| s.contains("token (input hidden): ")),
        "no prompt: {:?}",
        screen.text()
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{TOKEN}\n").as_bytes()).unwrap();
    stdin.flush().unwrap();
    assert!(
        screen.wait_until(IO_TIMEOUT, |s| s.contains("proxy: listening on ")),
        "did not start: {:?}",
        screen.text()
    );
    let text = screen.text();
    let pid: u32 = text
        .split("PID ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("the proxy's pid");
    send_signal(pid, "TERM");
    let status = wait_child(&mut child, IO_TIMEOUT);
    drop(stdin);
    assert!(status.is_some(), "script did not exit: {:?}", screen.text());
    screen.wait_eof(Duration::from_secs(2));
    let text = screen.text();
    assert!(!text.contains(TOKEN), "the token was echoed: {text:?}");
    assert!(
        !text.contains("REALTOKEN"),
        "part of the token echoed: {text:?}"
    );
    let settings = text.split("drained; exiting").nth(1).unwrap_or(&text);
    let flags: Vec<&str> = settings.split([' ', ';', '\r', '\n']).collect();
    assert!(
        flags.contains(&"echo") && !flags.contains(&"-echo"),
        "echo not restored: {settings:?}"
    );
}

#[test]
#[ignore = "needs script"]
fn token_updates_from_a_terminal_are_refused_with_a_clear_message() {
    let (mut child, screen) = under_a_terminal(BIN, &[("TOKEN_UPDATES", "stdin")]);
    let status = wait_child(&mut child, IO_TIMEOUT).expect("exit");
    screen.wait_eof(Duration::from_secs(2));
    assert_eq!(status.code(), Some(1), "{:?}", screen.text());
    assert!(
        screen.text().contains(
            "proxy: TOKEN_UPDATES: stdin is a terminal; pipe the tokens in, or use TOKEN_FILE"
        ),
        "{:?}",
        screen.text()
    );
}
