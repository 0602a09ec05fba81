//! Pure: what the sandbox may reach with the credential (`ALLOW_REQUESTS`). Least privilege:
//! with a list set, a request is forwarded only if an entry allows its method and path;
//! anything else is answered 403 and nothing reaches the upstream.
//!
//! An entry is `METHOD /path` or `METHOD /prefix*` (`*` for any method), comma-separated,
//! e.g. `POST /v1/messages*, GET /v1/models*, HEAD /`. Paths are matched as the client sent
//! them, before TARGET's base path is added, after `head.rs` refused every path that could
//! climb (dot-segments, encoded separators); percent-encoded unreserved characters
//! (RFC 3986 §2.3) are decoded first, since an upstream may read `%6d` as `m`.
//!
//! The method matched is the request line's, so with a list set a request carrying a field
//! that asks the upstream for another method ([`METHOD_OVERRIDES`]) is refused too (`head.rs`
//! records the field). The query is not examined: an upstream that takes its method from the
//! query (`?_method=`) or the body is outside what a list can promise.

use crate::limits::MAX_ALLOW_ENTRIES;
use crate::syntax::{is_tchar, percent_decoded, Percent};

/// Fields that ask a server to handle a request as another method (lower-case): Google's
/// API front ends honour `X-HTTP-Method-Override` (the Gemini API among them), as does
/// common framework middleware; `X-HTTP-Method` (OData) and `X-Method-Override` are the other
/// spellings in use. With a list set, an allowed `POST` carrying one could act as a `DELETE`
/// the list refuses, so such a request is refused (403), not stripped: dropping the field
/// would forward something other than what the client asked for. Without a list there is no
/// policy to bypass and they are forwarded as any other field.
pub const METHOD_OVERRIDES: &[&[u8]] = &[
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
];

/// One allowed method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `None` for `*`.
    method: Option<String>,
    path: String,
    /// The path ends in `*`: a prefix.
    prefix: bool,
}

/// The parsed `ALLOW_REQUESTS` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Entry>,
}

impl AllowList {
    /// Parses the setting. Errors are static text; they never echo the list.
    pub fn parse(s: &str) -> Result<AllowList, &'static str> {
        let mut entries = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (method, path) = item
                .split_once(char::is_whitespace)
                .ok_or("each entry must be METHOD /path (or * /path*)")?;
            let path = path.trim();
            let method = match method {
                "*" => None,
                m if m.bytes().all(|b| b.is_ascii_uppercase()) && !m.is_empty() => {
                    Some(m.to_string())
                }
                _ => return Err("a method must be upper-case letters or *"),
            };
            let (path, prefix) = match path.strip_suffix('*') {
                Some(p) => (p, true),
                None => (path, false),
            };
            let path_ok = path.starts_with('/')
                && path.bytes().all(|b| is_tchar(b) || b"/:@;=".contains(&b))
                && !path.contains('*');
            if !path_ok {
                return Err(
                    "a path must start with / and hold no spaces, * (but a final one) or ?",
                );
            }
            entries.push(Entry {
                method,
                path: path.to_string(),
                prefix,
            });
        }
        if entries.is_empty() {
            return Err("is empty");
        }
        if entries.len() > MAX_ALLOW_ENTRIES {
            return Err("has too many entries");
        }
        Ok(AllowList { entries })
    }

    /// How many entries the list has (`--check` reports it).
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// Whether `method` on `path` (without the query) is allowed.
    pub fn allows(&self, method: &str, path: &[u8]) -> bool {
        let mut decoded = [0u8; 256];
        let Some(path) = decode_unreserved(path, &mut decoded) else {
            // Longer than any sensible API path: only a prefix entry can allow it, and we
            // do not decode it, so match the bytes as sent.
            return self.matches(method, path);
        };
        self.matches(method, path)
    }

    fn matches(&self, method: &str, path: &[u8]) -> bool {
        self.entries.iter().any(|e| {
            e.method.as_deref().is_none_or(|m| m == method)
                && if e.prefix {
                    path.starts_with(e.path.as_bytes())
                } else {
                    path == e.path.as_bytes()
                }
        })
    }
}

/// Decodes `%XX` escapes of unreserved characters (ALPHA / DIGIT / `-` `.` `_` `~`) into
/// `out`; other escapes stay as they are. `None` when `out` is too small.
fn decode_unreserved<'o>(path: &[u8], out: &'o mut [u8]) -> Option<&'o [u8]> {
    let mut n = 0;
    let mut push = |b: u8| {
        *out.get_mut(n)? = b;
        n += 1;
        Some(())
    };
    for unit in percent_decoded(path) {
        match unit {
            Percent::Escape { octet, .. }
                if octet.is_ascii_alphanumeric() || b"-._~".contains(&octet) =>
            {
                push(octet)?
            }
            Percent::Escape { raw, .. } => raw.iter().try_for_each(|&b| push(b))?,
            Percent::Byte(b) => push(b)?,
            Percent::Invalid => push(b'%')?,
        }
    }
    Some(&out[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_allow_their_method_and_path() {
        let l = AllowList::parse("POST /v1/messages*, GET /v1/models*, HEAD /, * /health").unwrap();
        for (m, p) in [
            ("POST", "/v1/messages"),
            ("POST", "/v1/messages/count_tokens"),
            ("GET", "/v1/models/claude"),
            ("HEAD", "/"),
            ("DELETE", "/health"),
            ("POST", "/v1/%6Dessages"),
        ] {
            assert!(l.allows(m, p.as_bytes()), "{m} {p}");
        }
        for (m, p) in [
            ("GET", "/v1/messages"),
            ("POST", "/v1/files"),
            ("HEAD", "/x"),
            ("GET", "/"),
            ("POST", "/v1/message"),
            ("GET", "/v1/%6Dessages"),
            ("POST", "/v1%2Fmessages"),
        ] {
            assert!(!l.allows(m, p.as_bytes()), "{m} {p}");
        }
    }

    #[test]
    fn malformed_lists_are_refused() {
        for bad in [
            "",
            " , ",
            "POST",
            "post /x",
            "POST x",
            "POST /a b",
            "POST /a*b",
            "GET /?q",
        ] {
            assert!(AllowList::parse(bad).is_err(), "{bad:?}");
        }
    }
}
