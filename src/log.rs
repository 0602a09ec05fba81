//! stderr logging: one `write` per line, so a line is never interleaved with another task's
//! or split for a reader (`eprintln!` writes unbuffered, piece by piece). Lines are short
//! (well under PIPE_BUF), so each write to a pipe is atomic.
//!
//! Two formats (`LOG_FORMAT`): `text`, `proxy: <message>` as always; `json`, one object a
//! line with a UTC RFC 3339 `ts`, an `event` name, the event's fields, and `message` (the
//! text line without its `proxy: ` prefix). Nothing a peer sent reaches either unescaped.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

static JSON: AtomicBool = AtomicBool::new(false);

/// Switches every line to JSON (`LOG_FORMAT=json`), once at startup.
pub fn set_json(on: bool) {
    JSON.store(on, Relaxed);
}

/// A field value of an event.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Str(&'a str),
    Num(u64),
    Bool(bool),
    Null,
}

/// Writes `proxy: <args>\n` to stderr in one call (an `event: "log"` in JSON). Errors are
/// ignored: a closed stderr must not take the proxy down.
pub fn line(args: fmt::Arguments<'_>) {
    event("log", args, &[]);
}

/// Writes one event: its text line, or its JSON object with `fields`.
pub fn event(name: &str, text: fmt::Arguments<'_>, fields: &[(&str, Value<'_>)]) {
    let mut buf = String::with_capacity(256);
    if JSON.load(Relaxed) {
        buf.push_str("{\"ts\":\"");
        rfc3339(&mut buf, SystemTime::now());
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
            }
        }
        buf.push_str(",\"message\":");
        json_str(&mut buf, &text.to_string());
        buf.push('}');
    } else {
        buf.push_str("proxy: ");
        let _ = fmt::write(&mut buf, text);
    }
    buf.push('\n');
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
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
fn rfc3339(out: &mut String, t: SystemTime) {
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

/// `log!("listening on {addr}")` writes `proxy: listening on ...` as one line.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}

/// Appends `bytes` as the log may show bytes a peer sent: printable ASCII as it is, every
/// other byte (controls, DEL, 0x80-0xFF, and space) as `\xHH`, so no terminal escape, line
/// break or bidirectional control can reach a reader; at most `max` input bytes.
pub fn escape_into(out: &mut String, bytes: &[u8], max: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in &bytes[..bytes.len().min(max)] {
        if b.is_ascii_graphic() {
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
    }
}
