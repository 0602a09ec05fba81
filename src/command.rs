//! `TOKEN_COMMAND`: runs the operator's helper (`op read`, `vault kv get`, `gh auth token`, ...)
//! and takes the token from what it prints; and when to run it again.
//!
//! The helper is confined to what it needs: its argv is run directly (no shell, no word
//! splitting), stdin is /dev/null, its environment holds only the variables named in
//! `TOKEN_COMMAND_ENV` (never a token), stdout is read up to
//! [`TOKEN_COMMAND_MAX_OUTPUT`], stderr goes to /dev/null (a helper may print the secret
//! there), and it runs in a process group of its own, killed whole at the timeout so no
//! child it started outlives it. Every failure is a fixed reason (and an exit status): never
//! a byte of what it printed.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use zeroize::Zeroizing;

use crate::config::CommandSource;
use crate::flatjson;
use crate::limits::{TOKEN_COMMAND_MAX_OUTPUT, TOKEN_REFRESH_MARGIN};
use crate::secret::{Token, TokenHeader};

/// A token from the command, and when it expires if its answer said.
pub struct Fetched {
    pub token: Token,
    pub expires: Option<SystemTime>,
}

/// Why a run gave no token: a fixed reason for the log, and whether the command answered but
/// its answer was refused (a bad token or JSON: `token_updates_refused_total`).
pub struct Failed {
    pub why: String,
    pub refused: bool,
}

/// How often the exit of a command whose output ended is checked.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Runs the command once and reads its token. The error is a fixed reason for the log.
pub fn fetch(src: &CommandSource, header: &TokenHeader) -> Result<Fetched, Failed> {
    let out = run(src).map_err(|why| Failed {
        why,
        refused: false,
    })?;
    let refused = |why| Failed { why, refused: true };
    let mut answer = flatjson::token_answer(&out)
        .map_err(|why| refused(format!("printed no usable answer: {why}")))?;
    let token = Token::new(&answer.token, header);
    zeroize::Zeroize::zeroize(&mut answer.token);
    let token = token.map_err(|e| refused(format!("printed no usable token: {}", e.reason())))?;
    let expires = answer.expiry.map(|e| e.time(SystemTime::now()));
    Ok(Fetched { token, expires })
}

/// Runs the command: its stdout, once it ended and the command exited with status 0.
fn run(src: &CommandSource) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut cmd = Command::new(&src.argv[0]);
    cmd.args(&src.argv[1..])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    // systemd's socket-activation variables describe this process's descriptors, not the
    // child's (sd_listen_fds(3)): never passed on, even when TOKEN_COMMAND_ENV names them.
    // The descriptors themselves are close-on-exec, served or not (`sys::set_cloexec_range`).
    let activation = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];
    for name in src.env.iter().filter(|n| !activation.contains(&n.as_str())) {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "not found".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            kind => kind.to_string(),
        };
        format!("cannot be started ({why})")
    })?;
    let pgid = i32::try_from(child.id()).unwrap_or(0);
    let deadline = Instant::now() + src.timeout;
    let timed_out = || {
        let secs = src.timeout.as_secs_f64();
        format!("did not finish within {secs}s; its process group was killed")
    };
    let Some(mut stdout) = child.stdout.take() else {
        crate::sys::kill_group(pgid);
        let _ = child.wait();
        return Err("cannot be read (no stdout)".into());
    };
    // A thread reads, so the wait for the output is bounded: a helper (or a child it left
    // behind) that holds stdout open is cut off at the deadline.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_capped(&mut stdout));
    });
    let left = deadline.saturating_duration_since(Instant::now());
    let out = match rx.recv_timeout(left) {
        Ok(Ok(out)) => out,
        Ok(Err(why)) => {
            crate::sys::kill_group(pgid);
            let _ = child.wait();
            return Err(why.into());
        }
        Err(_) => {
            crate::sys::kill_group(pgid);
            let _ = child.wait();
            return Err(timed_out());
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(EXIT_POLL),
            _ => {
                crate::sys::kill_group(pgid);
                let _ = child.wait();
                return Err(timed_out());
            }
        }
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(out),
        (Some(code), _) => Err(format!("exited with status {code}")),
        (None, Some(sig)) => Err(format!("was killed by signal {sig}")),
        (None, None) => Err("ended abnormally".into()),
    }
}

/// Reads stdout to its end, refusing more than [`TOKEN_COMMAND_MAX_OUTPUT`]; the buffer is
/// allocated once at its full size (no copy of the token left behind by a growth) and wiped
/// when dropped.
fn read_capped(r: &mut impl Read) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let mut buf = Zeroizing::new(vec![0u8; TOKEN_COMMAND_MAX_OUTPUT + 1]);
    let mut len = 0;
    loop {
        match r.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len > TOKEN_COMMAND_MAX_OUTPUT {
                    return Err("printed more than 64 KiB");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err("cannot be read (stdout failed)"),
        }
    }
    zeroize::Zeroize::zeroize(&mut buf[len..]);
    buf.truncate(len);
    Ok(buf)
}

/// When to refresh a token that lives `lifetime` from now: at 80 % of it, but no later than
/// [`TOKEN_REFRESH_MARGIN`] before its end and never before half of it (so a short-lived token
/// is not fetched again at once), less a jitter of up to 2 % of the lifetime (`jitter` in
/// [0, 1)), so that proxies started together do not ask their source together.
pub fn refresh_after(lifetime: Duration, jitter: f64) -> Duration {
    let half = lifetime / 2;
    let at = lifetime
        .mul_f64(0.8)
        .min(lifetime.saturating_sub(TOKEN_REFRESH_MARGIN))
        .max(half);
    at.saturating_sub(lifetime.mul_f64(0.02 * jitter.clamp(0.0, 1.0)))
        .max(half)
}

/// A number in [0, 1) that differs between processes and calls: the standard library's
/// randomly keyed hasher, enough for spreading refreshes (no security rests on it).
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_before_the_end_and_never_before_half_of_it() {
        let s = Duration::from_secs;
        assert_eq!(refresh_after(s(3600), 0.0), s(2880), "48 minutes");
        assert!(refresh_after(s(3600), 0.99) >= s(2808));
        assert_eq!(refresh_after(s(5), 0.0), Duration::from_millis(2500));
        assert_eq!(refresh_after(s(5), 0.9), Duration::from_millis(2500));
        assert_eq!(
            refresh_after(s(300), 0.0),
            s(180),
            "2 minutes before the end"
        );
        assert_eq!(refresh_after(s(200), 0.0), s(100), "half");
        assert_eq!(refresh_after(Duration::ZERO, 0.5), Duration::ZERO);
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn output_over_the_cap_is_refused_and_under_it_read_whole() {
        let big = vec![b'a'; TOKEN_COMMAND_MAX_OUTPUT + 1];
        assert!(read_capped(&mut &big[..]).is_err());
        let ok = read_capped(&mut &big[..TOKEN_COMMAND_MAX_OUTPUT]).unwrap();
        assert_eq!(ok.len(), TOKEN_COMMAND_MAX_OUTPUT);
    }
}
