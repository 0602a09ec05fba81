//! What a proxy wrote to its log, collected as it comes (from a child's stderr, or from an
//! in-process proxy's capture sink), with bounded waits for lines.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A target that is never contacted in tests that do not set one (nothing listens on port 9 of
/// loopback, and it keeps the built-in default, api.anthropic.com, out of reach).
pub const UNUSED_TARGET: &str = "http://127.0.0.1:9";

/// Bytes of a log or a child's output stream; waiters are woken on every addition.
#[derive(Default)]
pub struct Collected {
    state: Mutex<(Vec<u8>, bool)>,
    cv: Condvar,
}

impl Collected {
    /// Start a thread copying `src` into a new buffer until end of stream.
    pub fn spawn<R: Read + Send + 'static>(mut src: R) -> Arc<Collected> {
        let out = Arc::new(Collected::default());
        let sink = out.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = src.read(&mut buf).unwrap_or(0);
                let mut st = sink.state.lock().unwrap();
                if n == 0 {
                    st.1 = true;
                    sink.cv.notify_all();
                    return;
                }
                st.0.extend_from_slice(&buf[..n]);
                sink.cv.notify_all();
            }
        });
        out
    }

    /// Append `bytes` (whole lines, from a capture sink) and wake the waiters.
    pub fn push(&self, bytes: &[u8]) {
        let mut st = self.state.lock().unwrap();
        st.0.extend_from_slice(bytes);
        self.cv.notify_all();
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.state.lock().unwrap().0.clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// Wait until `pred(text so far)` holds or the stream ends or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap();
        loop {
            if pred(&String::from_utf8_lossy(&st.0)) {
                return true;
            }
            let now = Instant::now();
            if st.1 || now >= deadline {
                return false;
            }
            st = self.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Wait until the stream ends; false on timeout.
    pub fn wait_eof(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap();
        while !st.1 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
        true
    }
}

/// The lines of `s` that ended with a newline.
pub fn complete_lines(s: &str) -> impl Iterator<Item = &str> {
    s.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n'))
}

/// Parse `proxy: listening on <ip>:<port>, target ...` out of stderr text (complete lines only:
/// stderr is unbuffered, so a line may arrive in several writes).
pub fn parse_listen_line(stderr: &str) -> Option<SocketAddr> {
    complete_lines(stderr).find_map(|line| {
        // LOG_FORMAT=json: {"ts":..,"event":"startup","listen":"ADDR",...}
        if line.starts_with('{') && line.contains("\"event\":\"startup\"") {
            let rest = line.split("\"listen\":\"").nth(1)?;
            return rest.split('"').next()?.parse().ok();
        }
        let rest = line.strip_prefix("proxy: listening on ")?;
        let (addr, _target) = rest.split_once(", target ")?;
        addr.parse().ok()
    })
}
