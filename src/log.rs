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
