//! stderr logging: one `write` per line, so a line is never interleaved with another task's
//! or split for a reader (`eprintln!` writes unbuffered, piece by piece). Lines are short
//! (well under PIPE_BUF), so each write to a pipe is atomic.

use std::fmt;
use std::io::Write;

/// Writes `proxy: <args>\n` to stderr in one call. Errors are ignored: a closed stderr must
/// not take the proxy down.
pub fn line(args: fmt::Arguments<'_>) {
    let mut buf = String::with_capacity(128);
    buf.push_str("proxy: ");
    let _ = fmt::write(&mut buf, args);
    buf.push('\n');
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
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
    fn peer_bytes_are_escaped_outside_printable_ascii() {
        let mut s = String::new();
        escape_into(&mut s, "/a b\x1b[31m\u{9b}\u{202e}%0a".as_bytes(), 256);
        assert_eq!(s, "/a\\x20b\\x1b[31m\\xc2\\x9b\\xe2\\x80\\xae%0a");
        s.clear();
        escape_into(&mut s, b"/abcdef", 3);
        assert_eq!(s, "/ab");
    }
}
