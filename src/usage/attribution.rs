//! The attribution fields of a request: the values of the few request fields the operator
//! named (`LOG_REQUEST_HEADERS`), as the access line may show them. Never a credential: the
//! configuration refuses credential field names, and a value holding a secret (the phantom or
//! a live token, as `secret` tells) is withheld like one that is not plain.

/// What the access line shows instead of a value that is not visible ASCII, is longer than
/// [`LOG_HEADER_VALUE_MAX`], or holds a secret.
pub const WITHHELD: &str = "(withheld)";

use crate::limits::LOG_HEADER_VALUE_MAX;

/// The values of the fields `names` (lower-case) in `head`, a request head that was parsed
/// and validated already, into `out` (cleared first), in the order of `names`: the first
/// field of each name only. A value is kept when it is 1 to [`LOG_HEADER_VALUE_MAX`] bytes
/// of visible ASCII and `secret` does not recognise it, escaped as the log escapes peer bytes
/// (a backslash as `\x5c`); else it is [`WITHHELD`] (R40).
pub fn attribution<'n>(
    head: &[u8],
    names: &'n [String],
    mut secret: impl FnMut(&[u8]) -> bool,
    out: &mut Vec<(&'n str, String)>,
) {
    out.clear();
    if names.is_empty() {
        return;
    }
    // After the request line, each field line up to the blank line (RFC 9112 §2.1).
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let Some(name) = names
            .iter()
            .find(|n| n.as_bytes().eq_ignore_ascii_case(&line[..colon]))
        else {
            continue;
        };
        if out.iter().any(|(n, _)| *n == name.as_str()) {
            continue;
        }
        let value = line[colon + 1..].trim_ascii();
        let plain = !value.is_empty()
            && value.len() <= LOG_HEADER_VALUE_MAX
            && value.iter().all(u8::is_ascii_graphic);
        let shown = if plain && !secret(value) {
            let mut s = String::with_capacity(value.len());
            escape(&mut s, value);
            s
        } else {
            WITHHELD.to_string()
        };
        out.push((name.as_str(), shown));
    }
    // In the order the operator named them.
    out.sort_by_key(|(n, _)| names.iter().position(|m| m == n));
}

/// Visible ASCII as it is, a backslash as `\x5c` (as the log shows peer bytes).
fn escape(out: &mut String, value: &[u8]) {
    for &b in value {
        if b == b'\\' {
            out.push_str("\\x5c");
        } else {
            out.push(char::from(b));
        }
    }
}
