//! A proxy run in the test process through the library, with the settings, token and log a
//! process would have: the configuration from a map (what the process harness's cleared
//! environment holds), the token through the same intake as stdin, the log captured line by
//! line where the process's stderr was read. No binary is spawned and no startup line is
//! waited for: the addresses come from the handle.
//!
//! Outside a tokio runtime (a plain `#[test]`), the proxy runs on one runtime shared by the
//! whole test binary; inside one (`#[tokio::test(start_paused = true)]`), on that runtime, so
//! its timeouts follow the test's paused clock.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agent_loop_proxy::config::Config;
use agent_loop_proxy::log::{Log, Sink};
use agent_loop_proxy::run::{self, Running};

use super::lines::{complete_lines, Collected, UNUSED_TARGET};

/// The runtime that serves every in-process proxy started outside a runtime of its own.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("proxy-under-test")
            .enable_all()
            .build()
            .expect("the test runtime")
    })
}

/// A running in-process proxy. Dropping it begins the drain (which finishes in the
/// background, as a process's would after SIGTERM).
pub struct Proxy {
    running: Option<Running>,
    addr: SocketAddr,
    stderr: Arc<Collected>,
    /// The test's end of the proxy's stdin, when kept open (`TOKEN_UPDATES=stdin`).
    stdin: Option<UnixStream>,
}

impl Proxy {
    /// Start the proxy with `envs` over the defaults (`LISTEN_PORT=0`, a TARGET never
    /// contacted), give it `token\n` on stdin, then end stdin. Panics with the log if it does
    /// not start.
    pub fn spawn(envs: &[(&str, &str)], token: &str) -> Proxy {
        let stdin = format!("{token}\n");
        Proxy::spawn_with_stdin(envs, stdin.as_bytes(), true)
            .unwrap_or_else(|stderr| panic!("proxy did not start; stderr:\n{stderr}"))
    }

    /// Start with raw `stdin` bytes; `close_stdin` false keeps stdin open for
    /// [`Proxy::write_stdin`] (a socket pair: the proxy reads one end, the test holds the
    /// other). Err(the log, ending with the `proxy: ` error line) if it does not start.
    pub fn spawn_with_stdin(
        envs: &[(&str, &str)],
        stdin: &[u8],
        close_stdin: bool,
    ) -> Result<Proxy, String> {
        let mut vars: HashMap<String, String> = HashMap::new();
        vars.insert("LISTEN_PORT".into(), "0".into());
        vars.insert("TARGET".into(), UNUSED_TARGET.into());
        for (k, v) in envs {
            vars.insert((*k).into(), (*v).into());
        }
        let stderr = Arc::new(Collected::default());
        let failed = |line: &str| {
            stderr.push(format!("{line}\n").as_bytes());
            stderr.text()
        };
        let cfg =
            Config::from_vars(|k| vars.get(k).cloned()).map_err(|e| failed(&e.to_string()))?;
        let sink = stderr.clone();
        let log = Log::new(cfg.log_json, Sink::Capture(Arc::new(move |b| sink.push(b))));
        let bound = run::bind(cfg, Arc::new(log)).map_err(|e| failed(&e.0))?;
        let (reader, kept): (Box<dyn Read + Send>, Option<UnixStream>) = if close_stdin {
            (Box::new(Cursor::new(stdin.to_vec())), None)
        } else {
            let (theirs, mut ours) = UnixStream::pair().expect("a socket pair for stdin");
            ours.write_all(stdin).expect("write the proxy's stdin");
            (Box::new(theirs), Some(ours))
        };
        let (token, updates) = bound.first_token(reader).map_err(|e| failed(&e.0))?;
        let running = match tokio::runtime::Handle::try_current() {
            Ok(_) => bound.start(token, updates),
            Err(_) => {
                let _entered = runtime().enter();
                bound.start(token, updates)
            }
        }
        .map_err(|e| failed(&e.0))?;
        Ok(Proxy {
            addr: running.addr(),
            running: Some(running),
            stderr,
            stdin: kept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The metrics listener, when `METRICS_ADDR` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(Running::metrics_addr)
    }

    pub fn stderr_so_far(&self) -> String {
        self.stderr.text()
    }

    /// The log so far, byte for byte (not decoded: to check what bytes were written).
    pub fn stderr_bytes(&self) -> Vec<u8> {
        self.stderr.bytes()
    }

    /// Write more to the proxy's stdin (started with it kept open).
    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let pipe = self.stdin.as_mut().expect("stdin was kept open");
        pipe.write_all(bytes).expect("write to the proxy's stdin");
    }

    /// End stdin if `spawn_with_stdin` kept it open.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Wait (bounded) until a complete log line contains `needle`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_stderr_count(needle, 1, timeout)
    }

    /// Wait (bounded) until the log holds at least `n` complete lines containing `needle`.
    pub fn wait_for_stderr_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        self.stderr.wait_until(timeout, |s| {
            complete_lines(s).filter(|l| l.contains(needle)).count() >= n
        })
    }

    /// The complete lines of the log so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        complete_lines(&self.stderr.text())
            .map(str::to_string)
            .collect()
    }

    /// Begin the drain (what SIGTERM does) and wait (bounded) for it to end; true if it
    /// ended. Everything the proxy logs is in the log afterwards.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        let Some(running) = self.running.take() else {
            return true;
        };
        running.shutdown();
        std::thread::scope(|s| {
            // A thread of its own: the caller may be on a runtime's thread.
            s.spawn(|| {
                runtime()
                    .block_on(async { tokio::time::timeout(timeout, running.join()).await })
                    .is_ok()
            })
            .join()
            .expect("the drain's waiter")
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown();
        }
    }
}
