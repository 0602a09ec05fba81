//! stderr logging: whole lines per `write`, so a line is never interleaved with another
//! task's or split for a reader (`eprintln!` writes unbuffered, piece by piece). Lines are
//! short (well under PIPE_BUF), so each write to a pipe is atomic.
//!
//! On the runtime's threads, lines wait in a batch until the runtime goes idle (a worker
//! parks), the batch would pass [`BATCH_MAX`], or a line comes when its first is
//! [`BATCH_AGE`] old, and then
//! leave in one `write`: a busy proxy writes a batch per syscall instead of a line per request
//! (profiled: the per-request line was one of five syscalls of a small POST). A
//! batch holds whole lines and stays under PIPE_BUF, so lines are still never split or
//! interleaved; [`Log::flush`] runs when a worker parks or stops and before the process exits.
//!
//! Two formats (`LOG_FORMAT`): `text`, `proxy: <message>` as always (after a UTC RFC 3339
//! time with `LOG_TIMESTAMPS=on`); `json`, one object a line with a UTC RFC 3339 `ts`, a
//! `level` (`info`, `warn`, `error`), an `event` name, the event's fields, and `message` (the
//! text line without its `proxy: ` prefix). Nothing a peer sent reaches either unescaped.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::usage::Usage;

mod request;

/// A batch is written before it would pass this: under PIPE_BUF (4096 on Linux), so one
/// write to a pipe is atomic.
pub const BATCH_MAX: usize = 4000;
/// A batch whose first line is this old is written with the next line, however busy.
pub const BATCH_AGE: Duration = Duration::from_millis(50);

thread_local! {
    /// This thread's lines are batched: a runtime worker, whose park flushes them.
    static BATCHED: Cell<bool> = const { Cell::new(false) };
}

/// Batches the lines written on this thread from now on (called as a runtime thread starts;
/// its park or stop must then call [`Log::flush`]).
pub fn batch_this_thread() {
    BATCHED.with(|b| b.set(true));
}

/// A function that takes finished lines (see [`Sink::Capture`]).
pub type CaptureFn = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Where finished lines go.
pub enum Sink {
    /// The process's stderr, one `write` per line or batch.
    Stderr,
    /// A function that takes each finished line or batch (whole lines, newlines included):
    /// a proxy run in a test process, whose lines the test reads.
    Capture(CaptureFn),
}

/// One proxy's log: its format, its sink, and the lines waiting in a batch. Owned by the
/// proxy's shared state, so two proxies in one process keep their lines apart.
pub struct Log {
    json: bool,
    /// Text lines start with an RFC 3339 time (`LOG_TIMESTAMPS=on`).
    timestamps: bool,
    sink: Sink,
    /// Lines waiting to be written, and when the first of them came.
    batch: Mutex<(Vec<u8>, Option<Instant>)>,
    /// The last request sequence number handed out ([`Log::next_seq`]).
    seq: AtomicU64,
}

impl Log {
    /// A log writing to `sink`, one JSON object per line when `json` (`LOG_FORMAT=json`).
    pub fn new(json: bool, sink: Sink) -> Log {
        Log {
            json,
            timestamps: false,
            sink,
            batch: Mutex::new((Vec::new(), None)),
            seq: AtomicU64::new(0),
        }
    }

    /// The same log, with an RFC 3339 time before each text line (JSON lines have `ts`).
    pub fn with_timestamps(mut self, on: bool) -> Log {
        self.timestamps = on;
        self
    }

    /// Text lines on stderr: what the process uses until the configuration is read.
    pub fn stderr() -> Log {
        Log::new(false, Sink::Stderr)
    }

    /// A new request's sequence number (1, 2, ...): its access line and its error lines carry
    /// it, so they can be joined.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether lines are JSON objects.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Writes the waiting lines now (a worker parks or stops, the process exits).
    pub fn flush(&self) {
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        if !batch.0.is_empty() {
            self.write_out(&mut batch);
        }
    }

    fn write_out(&self, batch: &mut (Vec<u8>, Option<Instant>)) {
        self.write(&batch.0);
        batch.0.clear();
        batch.1 = None;
    }

    /// One write to the sink. Errors are ignored: a closed stderr must not take the proxy
    /// down.
    fn write(&self, bytes: &[u8]) {
        match &self.sink {
            Sink::Stderr => {
                let _ = std::io::stderr().lock().write_all(bytes);
            }
            Sink::Capture(f) => f(bytes),
        }
    }

    /// Writes one finished line (with its newline), batched on the runtime's threads.
    fn emit(&self, line: &[u8]) {
        if !BATCHED.with(Cell::get) {
            return self.write(line);
        }
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        if !batch.0.is_empty() && batch.0.len() + line.len() > BATCH_MAX {
            self.write_out(&mut batch);
        }
        batch.0.extend_from_slice(line);
        let first = *batch.1.get_or_insert_with(Instant::now);
        if batch.0.len() >= BATCH_MAX || first.elapsed() >= BATCH_AGE {
            self.write_out(&mut batch);
        }
    }

    /// Writes the line that ends the process: `msg` as it is (it starts with `proxy: `), or
    /// in JSON an `event: "fatal"` whose message is `msg` without that prefix; after the lines
    /// batched before it, and at once.
    pub fn fatal(&self, msg: &str) {
        self.flush();
        let message = msg.strip_prefix("proxy: ").unwrap_or(msg);
        self.event(&Event::Fatal { message });
        self.flush();
    }

    /// Writes `proxy: <args>` as one line (an `event: "log"` in JSON, level `warn` when the
    /// line is a `warning: `, else `info`).
    pub fn line(&self, args: fmt::Arguments<'_>) {
        let mut msg = String::with_capacity(128);
        let _ = fmt::write(&mut msg, args);
        let level = if msg.starts_with("warning:") {
            "warn"
        } else {
            "info"
        };
        self.write_event("log", level, &[], |out| out.push_str(&msg));
    }

    /// Writes one event: its text line, or its JSON object; both from the one value.
    pub fn event(&self, e: &Event<'_>) {
        let mut fields = [("", Value::Null); FIELDS_MAX];
        // The text format has no fields: they are gathered only for JSON.
        let n = if self.json { e.fields(&mut fields) } else { 0 };
        self.write_event(e.name(), e.level(), &fields[..n], |out| e.text(out));
    }

    /// The line of an event named `name` at `level` with `fields`, whose text `text` writes.
    fn write_event(
        &self,
        name: &str,
        level: &str,
        fields: &[(&str, Value<'_>)],
        text: impl Fn(&mut String),
    ) {
        let mut buf = String::with_capacity(256);
        if self.json {
            buf.push_str("{\"ts\":\"");
            rfc3339(&mut buf, SystemTime::now());
            buf.push_str("\",\"level\":\"");
            buf.push_str(level);
            buf.push_str("\",\"event\":");
            json_str(&mut buf, name);
            for (key, value) in fields {
                buf.push(',');
                json_str(&mut buf, key);
                buf.push(':');
                match value {
                    Value::Str(s) => json_str(&mut buf, s),
                    Value::Num(n) => {
                        let _ = write!(buf, "{n}");
                    }
                    Value::Bool(b) => buf.push_str(if *b { "true" } else { "false" }),
                    Value::Null => buf.push_str("null"),
                    Value::Fields(list) => {
                        buf.push('{');
                        for (i, (k, v)) in list.iter().enumerate() {
                            if i > 0 {
                                buf.push(',');
                            }
                            json_str(&mut buf, k);
                            buf.push(':');
                            json_str(&mut buf, v);
                        }
                        buf.push('}');
                    }
                }
            }
            let mut message = String::with_capacity(128);
            text(&mut message);
            buf.push_str(",\"message\":");
            json_str(&mut buf, &message);
            buf.push('}');
        } else {
            if self.timestamps {
                rfc3339(&mut buf, SystemTime::now());
                buf.push(' ');
            }
            buf.push_str("proxy: ");
            text(&mut buf);
        }
        buf.push('\n');
        self.emit(buf.as_bytes());
    }
}

/// The events the log records beyond free text, each given once: its fields for JSON and
/// its text line are both rendered from it.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Where the proxy listens (and its metrics, if on), what it forwards to, its version.
    Startup {
        listen: &'a str,
        target: &'a str,
        metrics: Option<&'a str>,
        version: &'a str,
    },
    /// Where the metrics listener listens.
    Metrics { listen: &'a str },
    /// One request and its answer.
    Request(&'a RequestLine<'a>),
    /// A failure: which side, its static reason, and a status that belongs in it.
    Error {
        side: &'a str,
        reason: &'static str,
        detail: Option<u16>,
        /// The request it belongs to (its access line's `seq`).
        seq: Option<u64>,
    },
    /// A WebSocket tunnel closed, with this close code (1006: without a close frame). Its
    /// duration and bytes are in the access line of its handshake, written at the same time.
    TunnelClosed { seq: u64, code: u16 },
    /// The upstream answered 401 or 403 to the credential of this generation.
    CredentialRejected { status: u16, generation: u64 },
    /// A new token is current.
    TokenUpdated { generation: u64 },
    /// The drain began.
    Shutdown { grace_ms: u64 },
    /// The line that ends the process.
    Fatal { message: &'a str },
}

/// What the log says of one request (method, path without query, status, bytes, duration):
/// nothing else from it.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    /// The request's sequence number ([`Log::next_seq`]).
    pub seq: u64,
    /// `-` when the request line could not be parsed.
    pub method: &'a str,
    /// Already escaped; `-` when the request line could not be parsed.
    pub path: &'a str,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    pub head_ms: Option<u64>,
    pub reused: bool,
    /// The upstream's `request-id`, only when it is a plain id.
    pub request_id: Option<&'a str>,
    pub token_generation: u64,
    /// Who sent it: TCP, or a Unix socket peer and its uid.
    pub peer: Peer,
    /// The token usage the response reported (each figure and the model when known).
    pub usage: &'a Usage,
    /// The attribution fields the request carried (`LOG_REQUEST_HEADERS`), name and value
    /// as [`crate::usage::attribution`] made them safe to show.
    pub headers: &'a [(&'a str, String)],
}

/// The other end of a client connection, as the access line names it: a Unix socket peer as
/// `unix` and its uid (the kernel's `SO_PEERCRED`, unix(7)); a TCP peer only as `tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(std::net::SocketAddr),
    Unix { uid: Option<u32> },
}

impl Peer {
    /// `tcp` or `unix`.
    pub fn kind(&self) -> &'static str {
        match self {
            Peer::Tcp(_) => "tcp",
            Peer::Unix { .. } => "unix",
        }
    }

    /// The peer's uid, when it is a Unix socket peer whose credentials were read.
    pub fn uid(&self) -> Option<u32> {
        match *self {
            Peer::Tcp(_) => None,
            Peer::Unix { uid } => uid,
        }
    }
}

/// The most fields an event has.
const FIELDS_MAX: usize = 19;

impl Event<'_> {
    /// The `level` of its JSON object.
    fn level(&self) -> &'static str {
        match self {
            Event::Error { .. } | Event::Fatal { .. } => "error",
            Event::CredentialRejected { .. } => "warn",
            _ => "info",
        }
    }

    /// The `event` of its JSON object.
    fn name(&self) -> &'static str {
        match self {
            Event::Startup { .. } => "startup",
            Event::Metrics { .. } => "metrics",
            Event::Request(_) => "request",
            Event::Error { .. } => "error",
            Event::TunnelClosed { .. } => "websocket_closed",
            Event::CredentialRejected { .. } => "credential_rejected",
            Event::TokenUpdated { .. } => "token_updated",
            Event::Shutdown { .. } => "shutdown",
            Event::Fatal { .. } => "fatal",
        }
    }

    /// Its fields, into `out`; returns how many.
    fn fields<'s>(&'s self, out: &mut [(&'static str, Value<'s>); FIELDS_MAX]) -> usize {
        let n = self.base_fields(out);
        match self {
            Event::Request(r) => n + request::fields(r, &mut out[n..]),
            _ => n,
        }
    }

    /// Its fixed fields, into `out`; returns how many.
    fn base_fields<'s>(&'s self, out: &mut [(&'static str, Value<'s>); FIELDS_MAX]) -> usize {
        let num = |n: u64| Value::Num(n);
        let list: &[(&'static str, Value<'s>)] = match *self {
            Event::Startup {
                listen,
                target,
                metrics,
                version,
            } => &[
                ("listen", Value::Str(listen)),
                ("target", Value::Str(target)),
                ("metrics", metrics.map_or(Value::Null, Value::Str)),
                ("version", Value::Str(version)),
            ],
            Event::Metrics { listen } => &[("listen", Value::Str(listen))],
            Event::Request(r) => &[
                ("seq", num(r.seq)),
                ("method", Value::Str(r.method)),
                ("path", Value::Str(r.path)),
                ("status", num(u64::from(r.status))),
                ("bytes_up", num(r.bytes_up)),
                ("bytes_down", num(r.bytes_down)),
                ("duration_ms", num(r.duration_ms)),
                ("head_ms", r.head_ms.map_or(Value::Null, num)),
                ("reused", Value::Bool(r.reused)),
                ("request_id", r.request_id.map_or(Value::Null, Value::Str)),
                ("token_generation", num(r.token_generation)),
                ("peer", Value::Str(r.peer.kind())),
                (
                    "peer_uid",
                    r.peer.uid().map_or(Value::Null, |u| num(u64::from(u))),
                ),
            ],
            Event::Error {
                side, reason, seq, ..
            } => &[
                ("side", Value::Str(side)),
                ("reason", Value::Str(reason)),
                ("seq", seq.map_or(Value::Null, num)),
            ],
            Event::TunnelClosed { seq, code } => {
                &[("seq", num(seq)), ("code", num(u64::from(code)))]
            }
            Event::CredentialRejected { status, generation } => &[
                ("status", num(u64::from(status))),
                ("token_generation", num(generation)),
            ],
            Event::TokenUpdated { generation } => &[("token_generation", num(generation))],
            Event::Shutdown { grace_ms } => &[("grace_ms", num(grace_ms))],
            Event::Fatal { .. } => &[],
        };
        out[..list.len()].copy_from_slice(list);
        list.len()
    }

    /// Its text line, without the `proxy: ` prefix.
    fn text(&self, out: &mut String) {
        let _ = match *self {
            Event::Startup {
                listen,
                target,
                metrics,
                version,
            } => {
                let _ = write!(out, "listening on {listen}, target {target}");
                if let Some(m) = metrics {
                    let _ = write!(out, ", metrics on {m}");
                }
                write!(out, "; agent-loop-proxy {version}")
            }
            Event::Metrics { listen } => write!(out, "metrics on {listen}"),
            Event::Request(r) => {
                let (m, p, s, b, ms) = (r.method, r.path, r.status, r.bytes_down, r.duration_ms);
                let _ = write!(out, "{m} {p} {s} {b}B {ms}ms");
                if let Some(id) = r.request_id {
                    let _ = write!(out, " request-id={id}");
                }
                let _ = match r.peer {
                    Peer::Tcp(_) => Ok(()),
                    Peer::Unix { uid: None } => write!(out, " peer=unix"),
                    Peer::Unix { uid: Some(u) } => write!(out, " peer=unix uid={u}"),
                };
                request::text(r, out);
                Ok(())
            }
            Event::Error {
                side,
                reason,
                detail,
                ..
            } => {
                let _ = write!(out, "error: {side}: {reason}");
                match detail {
                    Some(status) => write!(out, " ({status})"),
                    None => Ok(()),
                }
            }
            Event::TunnelClosed { code, .. } => write!(out, "websocket closed ({code})"),
            Event::CredentialRejected { status, generation } => write!(
                out,
                "credential rejected by upstream ({status}, token generation {generation})"
            ),
            Event::TokenUpdated { generation } => {
                write!(out, "token updated (generation {generation})")
            }
            Event::Shutdown { grace_ms } => {
                write!(out, "shutting down; draining for up to {grace_ms}ms")
            }
            Event::Fatal { message } => write!(out, "{message}"),
        };
    }
}

/// A field value of an event.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Str(&'a str),
    Num(u64),
    Bool(bool),
    Null,
    /// An object of string fields (the attribution fields).
    Fields(&'a [(&'a str, String)]),
}

/// Appends `s` as a JSON string (RFC 8259 §7): quotes, backslashes and controls escaped.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `t` as UTC RFC 3339 with milliseconds (`2026-11-30T17:30:00.123Z`).
pub fn rfc3339(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// `log!(log, "listening on {addr}")` writes `proxy: listening on ...` to `log` as one line.
#[macro_export]
macro_rules! log {
    ($log:expr, $($arg:tt)*) => {
        $log.line(format_args!($($arg)*))
    };
}

/// Appends `bytes` as the log may show bytes a peer sent: printable ASCII as it is, every
/// other byte (controls, DEL, 0x80-0xFF, and space) and `\` itself as `\xHH`, so no
/// terminal escape, line break or bidirectional control can reach a reader, and a literal
/// `\x0a` cannot pass for an escaped one; at most `max` input bytes.
pub fn escape_into(out: &mut String, bytes: &[u8], max: usize) {
    use crate::syntax::HEX_DIGITS as HEX;
    for &b in &bytes[..bytes.len().min(max)] {
        if b.is_ascii_graphic() && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str("\\x");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc_3339_utc() {
        let mut s = String::new();
        rfc3339(
            &mut s,
            UNIX_EPOCH + std::time::Duration::from_millis(1_796_146_200_123),
        );
        assert_eq!(s, "2026-12-01T17:30:00.123Z");
        s.clear();
        rfc3339(
            &mut s,
            UNIX_EPOCH + std::time::Duration::from_secs(951_782_400),
        );
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1b}");
        assert_eq!(s, r#""a\"b\\c\nd\u001b""#.replace("\\n", "\\u000a"));
    }

    #[test]
    fn peer_bytes_are_escaped_outside_printable_ascii() {
        let mut s = String::new();
        escape_into(&mut s, "/a b\x1b[31m\u{9b}\u{202e}%0a".as_bytes(), 256);
        assert_eq!(s, "/a\\x20b\\x1b[31m\\xc2\\x9b\\xe2\\x80\\xae%0a");
        s.clear();
        escape_into(&mut s, b"/abcdef", 3);
        assert_eq!(s, "/ab");
        s.clear();
        escape_into(&mut s, b"/a\\x0a", 16);
        assert_eq!(s, "/a\\x5cx0a", "a literal backslash is escaped too");
        s.clear();
        escape_into(&mut s, b"/abcdef", 3);
        assert_eq!(s, "/ab");
    }
}
