//! The real proxy binary as a child process, for what only a process shows (stdin, exit codes,
//! signals, /proc, uids, resource limits): environment cleared (PATH only), token on stdin,
//! stderr collected by a background thread, the listen address parsed from the startup line.

use std::io::Write;

use super::lines::{complete_lines, parse_listen_line, Collected};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long the proxy gets to print its startup line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_agent-loop-proxy");

pub use super::lines::UNUSED_TARGET;

/// Wait (bounded) for a child to exit. Polls `try_wait` at a short interval: this bounds a
/// wait, it does not stand in for synchronisation.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Send a signal by name (`TERM`, `INT`, ...) with the `kill` command.
pub fn send_signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// A running proxy process. Dropping it kills the process.
pub struct ProcessProxy {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Collected>,
    stdin: Option<ChildStdin>,
}

impl ProcessProxy {
    /// A command for the binary with a clean environment: PATH, `LISTEN_PORT=0`, a harmless
    /// TARGET, then `envs` (which override those). All three standard streams piped.
    pub fn command(envs: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("LISTEN_PORT", "0");
        cmd.env("TARGET", UNUSED_TARGET);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Start the proxy with `envs`, give it `token\n` on stdin, close stdin, and wait for the
    /// startup line. Panics (with stderr) if it does not come within the bound.
    pub fn spawn(envs: &[(&str, &str)], token: &str) -> ProcessProxy {
        let stdin = format!("{token}\n");
        ProcessProxy::spawn_with_stdin(envs, stdin.as_bytes(), true)
            .unwrap_or_else(|stderr| panic!("proxy did not start; stderr:\n{stderr}"))
    }

    /// Start with raw `stdin` bytes; `close_stdin` false keeps the pipe open. Err(stderr) if the
    /// startup line did not appear.
    pub fn spawn_with_stdin(
        envs: &[(&str, &str)],
        stdin: &[u8],
        close_stdin: bool,
    ) -> Result<ProcessProxy, String> {
        ProcessProxy::spawn_command(ProcessProxy::command(envs), stdin, close_stdin)
    }

    /// Like [`ProcessProxy::spawn_with_stdin`], for a command the caller adjusted (another uid, a
    /// resource limit): usually one from [`ProcessProxy::command`]. stdout is discarded.
    pub fn spawn_command(
        mut cmd: Command,
        stdin: &[u8],
        close_stdin: bool,
    ) -> Result<ProcessProxy, String> {
        let mut child = cmd.stdout(Stdio::null()).spawn().expect("spawn proxy");
        let stderr = Collected::spawn(child.stderr.take().expect("stderr"));
        let mut pipe = child.stdin.take().expect("stdin");
        let _ = pipe.write_all(stdin);
        let _ = pipe.flush();
        let stdin = if close_stdin {
            drop(pipe);
            None
        } else {
            Some(pipe)
        };
        // A Unix socket listener's line names its path; its `addr` is then 0.0.0.0:0.
        let unix = |s: &str| complete_lines(s).any(|l| l.contains("listening on unix:"));
        let found = stderr.wait_until(STARTUP_TIMEOUT, |s| {
            parse_listen_line(s).is_some() || unix(s)
        });
        if !found {
            let _ = child.kill();
            let _ = child.wait();
            return Err(stderr.text());
        }
        let addr = parse_listen_line(&stderr.text())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok(ProcessProxy {
            child,
            addr,
            stderr,
            stdin,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_so_far(&self) -> String {
        self.stderr.text()
    }

    /// Write more to the proxy's stdin (started with it kept open).
    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let pipe = self.stdin.as_mut().expect("stdin was kept open");
        pipe.write_all(bytes).expect("write to the proxy's stdin");
        pipe.flush().expect("flush the proxy's stdin");
    }

    /// stderr so far, byte for byte (not decoded: to check what bytes were written).
    pub fn stderr_bytes(&self) -> Vec<u8> {
        self.stderr.bytes()
    }

    /// Wait (bounded) until a complete stderr line contains `needle`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_stderr_count(needle, 1, timeout)
    }

    /// Wait (bounded) until stderr holds at least `n` complete lines containing `needle`.
    pub fn wait_for_stderr_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        self.stderr.wait_until(timeout, |s| {
            complete_lines(s).filter(|l| l.contains(needle)).count() >= n
        })
    }

    /// The complete lines of stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        complete_lines(&self.stderr.text())
            .map(str::to_string)
            .collect()
    }

    /// Send a signal by name (`TERM`, `INT`).
    pub fn signal(&self, sig: &str) {
        send_signal(self.child.id(), sig);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Wait (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_child(&mut self.child, timeout);
        if status.is_some() {
            // Let the stderr thread drain what the process wrote last.
            self.stderr.wait_eof(Duration::from_secs(2));
        }
        status
    }

    /// Close stdin if `spawn_with_stdin` kept it open.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }
}

impl Drop for ProcessProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a process run to completion left behind.
#[derive(Debug)]
pub struct Outcome {
    /// None if it did not exit within the bound (it was then killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub stderr_bytes: Vec<u8>,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Run the binary with `args` and `envs` (see [`ProcessProxy::command`]), writing `stdin` bytes if
/// given; `close_stdin` false keeps the pipe open for the whole run (to prove the process does
/// not read it). Waits up to `timeout` for the exit.
pub fn run(
    args: &[&str],
    envs: &[(&str, &str)],
    stdin: Option<&[u8]>,
    close_stdin: bool,
    timeout: Duration,
) -> Outcome {
    let mut child = ProcessProxy::command(envs)
        .args(args)
        .spawn()
        .expect("spawn");
    let out = Collected::spawn(child.stdout.take().expect("stdout"));
    let err = Collected::spawn(child.stderr.take().expect("stderr"));
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        let _ = pipe.write_all(bytes);
        let _ = pipe.flush();
    }
    let held = if close_stdin {
        drop(pipe);
        None
    } else {
        Some(pipe)
    };
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(held);
    out.wait_eof(Duration::from_secs(2));
    err.wait_eof(Duration::from_secs(2));
    Outcome {
        status,
        stdout: out.text(),
        stderr: err.text(),
        stderr_bytes: err.bytes(),
    }
}
