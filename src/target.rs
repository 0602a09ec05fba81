//! The one upstream, TARGET: `scheme://host[:port][/base]`, parsed once at startup. Nothing a
//! client sends can change it. Pure; imports nothing of the crate.

use std::fmt;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// The one upstream. Parsed from `TARGET`; nothing a client sends can change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    /// Host name or IP literal, without brackets: what we resolve, and the TLS server name.
    pub host: String,
    pub port: u16,
    /// The `Host` header value sent upstream: host, plus the port when it is not the default.
    pub authority: String,
    /// Path prefix without a trailing slash (empty for none); the client's path is appended.
    pub base_path: String,
}

impl Target {
    /// Parses `scheme://host[:port][/base]`; refuses userinfo, query and fragment.
    pub fn parse(s: &str) -> Result<Target, &'static str> {
        let (scheme, rest) = if let Some(r) = strip_prefix_ci(s, "https://") {
            (Scheme::Https, r)
        } else if let Some(r) = strip_prefix_ci(s, "http://") {
            (Scheme::Http, r)
        } else {
            return Err("must start with http:// or https://");
        };
        if rest.contains(['?', '#']) {
            return Err("must not contain a query or fragment");
        }
        let (auth, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if auth.contains('@') {
            return Err("must not contain userinfo");
        }
        if auth.is_empty() {
            return Err("has no host");
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = split_authority(auth)?;
        let port = match port {
            Some(p) => parse_port(p)?,
            None => default_port,
        };
        if !valid_host(host) {
            return Err("has an invalid host");
        }
        // The base path is sent verbatim in every request line: only visible ASCII.
        if !path.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err("has an invalid path");
        }
        let base_path = path.trim_end_matches('/').to_string();
        // The Host header: the host as written (brackets kept for IPv6), plus a non-default port.
        let written_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let authority = if port == default_port {
            written_host
        } else {
            format!("{written_host}:{port}")
        };
        Ok(Target {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            authority: authority.to_ascii_lowercase(),
            base_path,
        })
    }
}

impl Target {
    /// The host as written in an authority: IPv6 literals in brackets.
    pub fn bracketed_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.authority, self.base_path)
    }
}

/// `host[:port]` or `[v6][:port]` into the host (without brackets) and the port text.
pub fn split_authority(auth: &str) -> Result<(&str, Option<&str>), &'static str> {
    let Some(r) = auth.strip_prefix('[') else {
        return Ok(match auth.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        });
    };
    let end = r.find(']').ok_or("has an unterminated IPv6 literal")?;
    let host = &r[..end];
    host.parse::<std::net::Ipv6Addr>()
        .map_err(|_| "has an invalid IPv6 literal")?;
    let after = &r[end + 1..];
    match after.strip_prefix(':') {
        Some(p) => Ok((host, Some(p))),
        None if after.is_empty() => Ok((host, None)),
        None => Err("has an invalid authority"),
    }
}

/// A host name or IP literal (without brackets) we can resolve and name in TLS.
pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
}

/// A port: digits only, 1 to 65535.
pub fn parse_port(p: &str) -> Result<u16, &'static str> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err("has an invalid port"),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_port_and_base_path() {
        let t = Target::parse("http://127.0.0.1:8080/base/").unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port),
            (Scheme::Http, "127.0.0.1", 8080)
        );
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.base_path, "/base");
        let t = Target::parse("HTTPS://Example.com:443").unwrap();
        assert_eq!(t.authority, "example.com");
        let t = Target::parse("https://[::1]:8443/v").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 8443, "[::1]:8443")
        );
        let t = Target::parse("https://[::1]").unwrap();
        assert_eq!(t.authority, "[::1]");
    }

    #[test]
    fn bad_targets_are_refused_without_echo() {
        for bad in [
            "ftp://x",
            "api.anthropic.com",
            "https://user:secret@host",
            "https://host?q",
            "https://host#f",
            "https://",
            "https://host:0",
            "https://host:99999",
            "https://host:+1",
            "https://ho st",
            "https://host/a b",
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(!e.contains("secret"), "{bad}");
        }
    }
}
