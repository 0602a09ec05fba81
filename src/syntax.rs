//! Small pieces of HTTP grammar shared by the request and the response side, one copy each.
//! Pure byte functions; imports nothing of the crate.

/// `tchar` (RFC 9110 §5.6.2): the bytes of a token such as a field name or a method.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// HTAB, SP, VCHAR or obs-text: a byte of a field value (RFC 9110 §5.5), and all a chunk
/// extension or trailer line may hold. Every other control (CR, LF, NUL...) is refused.
pub fn is_text_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Whether `name` equals one of `list`, ignoring ASCII case (field names, RFC 9110 §5.1).
pub fn name_is(name: &[u8], list: &[&[u8]]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Elements of a comma-separated list (RFC 9110 §5.6.1), trimmed, empty ones skipped.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|s| !s.is_empty())
}

/// Fields that describe one connection, not the message (RFC 9110 §7.6.1): never forwarded,
/// in either direction. Lower-case. `Transfer-Encoding`, hop-by-hop too, is framing and each
/// side handles it on its own; a request drops a few more (see `rewrite::DROPPED`).
pub const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"upgrade",
];

/// One element of a `Connection` field (RFC 9110 §7.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionOption<'a> {
    /// `close`: the sender closes after this message (RFC 9112 §9.6).
    Close,
    /// `keep-alive`: HTTP/1.0's opt-in to persistence.
    KeepAlive,
    /// A token naming a field that is hop-by-hop for this connection.
    Field(&'a [u8]),
    /// Not a token: cannot name any field.
    Invalid,
}

/// The options of one `Connection` field value, in order.
pub fn connection_options(value: &[u8]) -> impl Iterator<Item = ConnectionOption<'_>> {
    list_items(value).map(|item| {
        if item.eq_ignore_ascii_case(b"close") {
            ConnectionOption::Close
        } else if item.eq_ignore_ascii_case(b"keep-alive") {
            ConnectionOption::KeepAlive
        } else if item.iter().all(|&b| is_tchar(b)) {
            ConnectionOption::Field(item)
        } else {
            ConnectionOption::Invalid
        }
    })
}

/// The value of one hex digit.
pub fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One unit of a percent-encoded string (RFC 3986 §2.1), as [`percent_decoded`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Percent<'a> {
    /// A byte other than `%`, as it stands.
    Byte(u8),
    /// `%` and two hex digits: the octet they encode, and the three bytes as written.
    Escape { octet: u8, raw: &'a [u8] },
    /// A `%` not followed by two hex digits; the bytes after it come next, as themselves.
    Invalid,
}

impl Percent<'_> {
    /// The octet this unit stands for; `None` for an invalid escape.
    pub fn octet(self) -> Option<u8> {
        match self {
            Percent::Byte(b) | Percent::Escape { octet: b, .. } => Some(b),
            Percent::Invalid => None,
        }
    }
}

/// Reads `s` unit by unit, decoding each `%XX` once. The one percent-decoder: what an
/// invalid escape or a decoded octet means (refused, kept, re-encoded) is the caller's.
pub fn percent_decoded(s: &[u8]) -> impl Iterator<Item = Percent<'_>> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *s.get(i)?;
        if b != b'%' {
            i += 1;
            return Some(Percent::Byte(b));
        }
        let octet = s
            .get(i + 1..i + 3)
            .and_then(|h| Some(hex(h[0])? << 4 | hex(h[1])?));
        Some(match octet {
            Some(octet) => {
                i += 3;
                Percent::Escape {
                    octet,
                    raw: &s[i - 3..i],
                }
            }
            None => {
                i += 1;
                Percent::Invalid
            }
        })
    })
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), at most 19 digits so it fits in u64.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Where the `push_*` writers below put their bytes: a buffer, or a [`Count`] of them, so a
/// writer run once counting and once writing cannot disagree on the length (the upstream
/// head is sized exactly before our credential goes into it).
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A [`Sink`] that only counts the bytes put into it: no allocation, no copy.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub usize);

impl Sink for Count {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Appends `n` in decimal, without allocating (Content-Length, status codes).
pub fn push_decimal(out: &mut impl Sink, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put(&digits[i..]);
}

/// The hex digits by value, lower-case (chunk sizes, `\xHH` in the log).
pub const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `n` in lower-case hex without leading zeros (chunk sizes).
pub fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX_DIGITS[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `bytes` in base64 (RFC 4648 §4, with padding), for `Basic` credentials.
pub fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

/// Appends `Content-Length: <n>\r\n` (RFC 9110 §8.6), the one framing field written in
/// decimal.
pub fn push_content_length(out: &mut impl Sink, n: u64) {
    out.put(b"Content-Length: ");
    push_decimal(out, n);
    out.put(b"\r\n");
}

/// Appends a status line, `HTTP/1.1 <status> <reason>\r\n` (RFC 9112 §4): always our own
/// version (RFC 9110 §6.2), whatever the upstream spoke. `reason` was checked by the caller.
pub fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// Appends one field line, `name: value\r\n`. Both were checked by the caller.
pub fn push_field(out: &mut impl Sink, name: &[u8], value: &[u8]) {
    out.put(name);
    out.put(b": ");
    out.put(value);
    out.put(b"\r\n");
}

/// The credentials of `Authorization: Bearer <x>` (scheme case-insensitive, RFC 9110 §11.1).
pub fn bearer(v: &[u8]) -> Option<&[u8]> {
    if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
        Some(v[7..].trim_ascii())
    } else {
        None
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_bytes_are_all_but_the_controls() {
        for b in [b'\t', b' ', b'a', b'~', 0x80, 0xff] {
            assert!(is_text_byte(b), "{b:#x}");
        }
        for b in [0, b'\r', b'\n', 0x1f, 0x7f] {
            assert!(!is_text_byte(b), "{b:#x}");
        }
    }

    #[test]
    fn connection_options_are_classified() {
        use ConnectionOption::*;
        let got: Vec<_> = connection_options(b" Close, ,keep-alive ,x-a, a b,").collect();
        assert_eq!(got, [Close, KeepAlive, Field(b"x-a"), Invalid]);
    }

    #[test]
    fn numbers_render_without_leading_zeros() {
        for (n, dec, hex) in [(0u64, "0", "0"), (9, "9", "9"), (255, "255", "ff")] {
            let (mut d, mut h) = (Vec::new(), Vec::new());
            push_decimal(&mut d, n);
            push_hex(&mut h, n);
            assert_eq!(
                (d.as_slice(), h.as_slice()),
                (dec.as_bytes(), hex.as_bytes())
            );
        }
        let mut d = Vec::new();
        push_decimal(&mut d, u64::MAX);
        assert_eq!(d, u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = Vec::new();
            push_base64(&mut out, plain.as_bytes());
            assert_eq!(out, encoded.as_bytes(), "{plain}");
        }
    }

    #[test]
    fn percent_escapes_decode_once() {
        use Percent::*;
        let got: Vec<_> = percent_decoded(b"a%2F%2e%zz%4").collect();
        assert_eq!(
            got,
            [
                Byte(b'a'),
                Escape {
                    octet: b'/',
                    raw: b"%2F"
                },
                Escape {
                    octet: b'.',
                    raw: b"%2e"
                },
                Invalid,
                Byte(b'z'),
                Byte(b'z'),
                Invalid,
                Byte(b'4'),
            ]
        );
        // Decoded once: `%2541` is `%41`, not `A`.
        let once: Vec<_> = percent_decoded(b"%2541")
            .filter_map(Percent::octet)
            .collect();
        assert_eq!(once, b"%41");
        assert_eq!(percent_decoded(b"").count(), 0);
        assert_eq!(percent_decoded(b"%").collect::<Vec<_>>(), [Invalid]);
        // Non-ASCII bytes are not hex digits.
        assert_eq!(percent_decoded(b"%\xc3\xa9").next(), Some(Invalid));
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"18446744073709551615"), None);
        for bad in [&b""[..], b"+1", b"1 ", b"0x1", b"1,1"] {
            assert_eq!(parse_content_length(bad), None);
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
