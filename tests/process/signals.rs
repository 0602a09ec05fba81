//! SIGHUP, SIGUSR1 and SIGUSR2 never kill: each is logged; SIGHUP re-reads `TOKEN_FILE` at
//! once (a token from stdin has nothing to re-read); a response in flight is unharmed.
//! (SIGTERM and SIGINT: `shutdown.rs`.)

use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const EXIT_BOUND: Duration = Duration::from_secs(10);

#[test]
fn hup_usr1_and_usr2_are_logged_and_a_stream_in_flight_is_unharmed() {
    let gate = Gate::new();
    let started = Gate::new();
    let (g, s) = (gate.clone(), started.clone());
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        while c.read_request().is_some() {
            let _ = c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nfirst");
            s.open();
            g.wait(IO_TIMEOUT);
            if c.send(b"second").is_err() {
                return;
            }
        }
    });
    let mut proxy = process_proxy_for(&up, &[]);
    let addr = proxy.addr();
    let client = thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(get("/v1/stream"));
        c.read_response()
    });
    assert!(started.wait(IO_TIMEOUT), "the stream never began");
    for (sig, line) in [
        (
            "HUP",
            "proxy: token reload: the token comes from stdin; nothing to re-read (ignored)",
        ),
        ("USR1", "proxy: SIGUSR1 received; ignored"),
        ("USR2", "proxy: SIGUSR2 received; ignored"),
    ] {
        proxy.signal(sig);
        assert!(
            proxy.wait_for_stderr(line, IO_TIMEOUT),
            "SIG{sig}: no {line:?}:\n{}",
            proxy.stderr_so_far()
        );
    }
    assert!(proxy.wait_exit(Duration::from_millis(200)).is_none());
    gate.open();
    let r = client.join().expect("client thread");
    assert_eq!((r.status(), r.body_str().as_str()), (200, "firstsecond"));
    // Still serving, and still stopping cleanly on SIGTERM.
    assert_eq!(roundtrip(proxy.addr(), get("/health")).status(), 200);
    proxy.signal("TERM");
    let status = proxy.wait_exit(EXIT_BOUND).expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr_so_far());
}

/// A token file swapped behind a symlink (as Kubernetes does) is read at once on SIGHUP: well
/// before the poll would take it (it waits for a version to stay the same for a second).
#[test]
fn hup_reads_a_new_token_file_at_once() {
    let dir = std::env::temp_dir().join(format!("alp-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (first, second) = (
        "sk-ant-test-FIRST-0123456789",
        "sk-ant-test-SECOND-0123456789",
    );
    std::fs::write(dir.join("a"), format!("{first}\n")).unwrap();
    std::fs::write(dir.join("b"), format!("{second}\n")).unwrap();
    let link = dir.join("token");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dir.join("a"), &link).unwrap();
    // Both versions are older than the settle time when the proxy meets them.
    thread::sleep(Duration::from_millis(1100));
    let up = Upstream::plain().serve(handlers::echo_head());
    let target = up.target_url();
    let envs = [
        ("TARGET", target.as_str()),
        ("TOKEN_FILE", link.to_str().unwrap()),
    ];
    let proxy = ProcessProxy::spawn_with_stdin(&envs, b"", true).expect("start");
    let next = dir.join("token.next");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(dir.join("b"), &next).unwrap();
    std::fs::rename(&next, &link).unwrap();
    let t = Instant::now();
    proxy.signal("HUP");
    assert!(
        proxy.wait_for_stderr(
            "proxy: token updated (generation 2)",
            Duration::from_secs(2)
        ),
        "not read at once ({:?}):\n{}",
        t.elapsed(),
        proxy.stderr_so_far()
    );
    assert!(proxy
        .stderr_so_far()
        .contains("proxy: token reload: reading TOKEN_FILE"));
    assert_eq!(roundtrip(proxy.addr(), get("/v1/models")).status(), 200);
    let sent = up.requests().last().unwrap().head.raw.clone();
    let sent = String::from_utf8_lossy(&sent).into_owned();
    assert!(sent.contains(&format!("Bearer {second}")), "{sent}");
    // Nothing new: a second SIGHUP says so and keeps the generation.
    proxy.signal("HUP");
    assert!(proxy.wait_for_stderr(
        "proxy: token reload: TOKEN_FILE unchanged; keeping generation 2",
        IO_TIMEOUT
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
