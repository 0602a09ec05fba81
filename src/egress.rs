//! Pure: the egress proxy between this proxy and TARGET, for networks that allow outbound
//! connections only through one. Which proxy (`HTTPS_PROXY` / `HTTP_PROXY`, with `NO_PROXY`
//! exceptions, curl's conventions), and the `CONNECT` exchange that opens a tunnel to TARGET
//! through it (RFC 9110 §9.3.6). TLS to TARGET runs inside the tunnel, verified against
//! TARGET's name exactly as without a proxy, so the egress proxy sees only ciphertext (unless
//! it inspects TLS with a CA the operator added: see SECURITY.md).

use std::fmt;
use std::net::IpAddr;

use zeroize::Zeroizing;

use crate::error::Problem;
use crate::limits::DEFAULT_PROXY_PORT;
use crate::syntax::{percent_decoded, push_base64};
use crate::target::{parse_port, split_authority, valid_host};

/// An egress proxy: where to connect, and the `Proxy-Authorization` line for it, if any.
#[derive(Clone, PartialEq, Eq)]
pub struct EgressProxy {
    /// Host name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization: Basic <base64(user:pass)>\r\n`, from the URL's userinfo.
    auth_line: Option<Zeroizing<Vec<u8>>>,
}

/// Only the host and port: the credentials never reach a log.
impl fmt::Display for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EgressProxy({self}, auth: {})", self.auth_line.is_some())
    }
}

impl EgressProxy {
    /// Parses `http://[user:pass@]host[:port][/]` (the scheme may be left out, as curl
    /// allows). Errors are static text that never echo the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<EgressProxy, &'static str> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => {
                return Err("must be an http:// proxy URL (https:// and socks are not supported)")
            }
            None => url,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err("must be http://[user:password@]host[:port], without a path");
        }
        let (userinfo, authority) = match rest.rsplit_once('@') {
            Some((u, a)) => (Some(u), a),
            None => (None, rest),
        };
        let (host, port) = split_authority(authority)?;
        if !valid_host(host) {
            return Err("has an invalid host");
        }
        let port = port.map_or(Ok(DEFAULT_PROXY_PORT), parse_port)?;
        let auth_line = userinfo.map(basic_auth_line).transpose()?;
        Ok(EgressProxy {
            host: host.to_ascii_lowercase(),
            port,
            auth_line,
        })
    }

    /// Writes the `CONNECT` request for `authority` (TARGET's `host:port`, IPv6 in brackets)
    /// into `out`, cleared first. `out` holds the proxy credentials, if any: the caller wipes
    /// it.
    pub fn connect_request(&self, authority: &str, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"CONNECT ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(line) = &self.auth_line {
            out.extend_from_slice(line);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// `Proxy-Authorization: Basic ...` from `user:password` (each percent-decoded, RFC 3986
/// §3.2.1), in a buffer that is wiped when dropped.
fn basic_auth_line(userinfo: &str) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let (user, pass) = userinfo
        .split_once(':')
        .ok_or("has a user name without a password")?;
    let mut plain = Zeroizing::new(Vec::with_capacity(userinfo.len()));
    percent_decode(user.as_bytes(), &mut plain)?;
    plain.push(b':');
    percent_decode(pass.as_bytes(), &mut plain)?;
    if plain.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err("has a control character in its user name or password");
    }
    let mut line = Zeroizing::new(Vec::with_capacity(32 + plain.len() * 4 / 3 + 4));
    line.extend_from_slice(b"Proxy-Authorization: Basic ");
    push_base64(&mut line, &plain);
    line.extend_from_slice(b"\r\n");
    Ok(line)
}

/// Appends `s` percent-decoded; an invalid escape is refused.
fn percent_decode(s: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    for unit in percent_decoded(s) {
        let octet = unit
            .octet()
            .ok_or("has an invalid percent escape in its user name or password")?;
        out.push(octet);
    }
    Ok(())
}

/// The egress proxy's answer to `CONNECT` (RFC 9110 §9.3.6: any 2xx opens the tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReply {
    Established,
    /// The proxy refused, with this status (407: credentials missing or wrong).
    Refused(u16),
}

/// Parses the complete head of the reply to `CONNECT`.
pub fn parse_connect_reply(head: &[u8]) -> Result<ConnectReply, Problem> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return Err(Problem::EgressMalformed),
    }
    match res.code {
        Some(code @ 200..=299) if code != 204 => Ok(ConnectReply::Established),
        Some(code @ 100..=599) => Ok(ConnectReply::Refused(code)),
        _ => Err(Problem::EgressMalformed),
    }
}

/// `NO_PROXY`: hosts reached directly even when a proxy is set (curl's conventions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoProxy {
    /// The whole list is `*`.
    all: bool,
    entries: Vec<NoProxyEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyEntry {
    /// A host name, lower-case, without leading or trailing dots: matches itself and every
    /// name under it. With a port (an extension of curl's rules, where such an entry never
    /// matches): only TARGET on that port.
    Name(String, Option<u16>),
    /// An IP address, or a network in CIDR notation (`10.0.0.0/8`). An address with a port
    /// (`127.0.0.1:8443`, `[::1]:8443`): only TARGET at that address on that port.
    Ip(IpAddr, u8, Option<u16>),
}

impl NoProxy {
    /// Parses the list: entries separated by commas or blanks. An entry that is not a name,
    /// an address or a network matches nothing (as in curl).
    pub fn parse(s: &str) -> NoProxy {
        let s = s.trim();
        let all = s == "*";
        let entries = s
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|e| !e.is_empty())
            .filter_map(NoProxyEntry::parse)
            .collect();
        NoProxy { all, entries }
    }

    /// Whether TARGET at `host` (a name or an IP literal, no brackets) and `port` is reached
    /// directly.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        let ip = host.parse::<IpAddr>().ok();
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        self.entries.iter().any(|e| match (e, ip) {
            (NoProxyEntry::Ip(net, bits, p), Some(ip)) => {
                in_network(ip, *net, *bits) && p.is_none_or(|p| p == port)
            }
            (NoProxyEntry::Name(n, p), None) => {
                let host_ok = name == *n
                    || (name.len() > n.len()
                        && name.ends_with(n.as_str())
                        && name.as_bytes()[name.len() - n.len() - 1] == b'.');
                host_ok && p.is_none_or(|p| p == port)
            }
            _ => false,
        })
    }
}

impl NoProxyEntry {
    fn parse(e: &str) -> Option<NoProxyEntry> {
        let (addr, bits) = match e.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (e, None),
        };
        let unbracketed = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']'));
        if let Ok(ip) = unbracketed.unwrap_or(addr).parse::<IpAddr>() {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = bits.unwrap_or(max);
            return (bits <= max).then_some(NoProxyEntry::Ip(ip, bits, None));
        }
        if bits.is_some() {
            return None;
        }
        let (name, port) = match e.rsplit_once(':') {
            Some((n, p)) => (n, Some(p.parse::<u16>().ok()?)),
            None => (e, None),
        };
        // `IPv4:port` and `[IPv6]:port` are an address on a port, not a name.
        let unbracketed = name.strip_prefix('[').and_then(|a| a.strip_suffix(']'));
        let literal = match unbracketed {
            Some(v6) => Some(v6.parse::<std::net::Ipv6Addr>().ok()?.into()),
            None => name.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::from),
        };
        if let Some(ip) = literal {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            return Some(NoProxyEntry::Ip(ip, bits, port));
        }
        let name = name.trim_matches('.').to_ascii_lowercase();
        (!name.is_empty()).then_some(NoProxyEntry::Name(name, port))
    }
}

/// Whether `ip` is in `net`/`bits` (both of one family).
fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    bits == 0 || (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_follows_curl() {
        let cases: &[(&str, &str, u16, bool)] = &[
            ("*", "api.anthropic.com", 443, true),
            ("", "api.anthropic.com", 443, false),
            ("anthropic.com", "api.anthropic.com", 443, true),
            ("anthropic.com", "anthropic.com", 443, true),
            (".anthropic.com", "anthropic.com", 443, true),
            (".anthropic.com", "api.anthropic.com", 443, true),
            ("anthropic.com.", "API.Anthropic.COM.", 443, true),
            ("anthropic.com", "notanthropic.com", 443, false),
            ("anthropic.com", "anthropic.com.evil", 443, false),
            ("api.anthropic.com", "anthropic.com", 443, false),
            ("example.com, anthropic.com", "api.anthropic.com", 443, true),
            ("example.com anthropic.com", "api.anthropic.com", 443, true),
            ("api.anthropic.com:443", "api.anthropic.com", 443, true),
            ("api.anthropic.com:8443", "api.anthropic.com", 443, false),
            ("*.anthropic.com", "api.anthropic.com", 443, false),
            ("10.0.0.0/8", "10.1.2.3", 443, true),
            ("10.0.0.0/8", "11.1.2.3", 443, false),
            ("192.168.1.5", "192.168.1.5", 80, true),
            ("192.168.1.5", "192.168.1.6", 80, false),
            ("::1", "::1", 443, true),
            ("[::1]", "::1", 443, true),
            ("fd00::/8", "fd12::1", 443, true),
            ("fd00::/8", "fe80::1", 443, false),
            ("10.0.0.0/8", "ten.example", 443, false),
            ("localhost", "127.0.0.1", 443, false),
            ("0.0.0.0/0", "8.8.8.8", 443, true),
            // An address with a port matches that address on that port only.
            ("127.0.0.1:8443", "127.0.0.1", 8443, true),
            ("127.0.0.1:8443", "127.0.0.1", 443, false),
            ("127.0.0.1:8443", "127.0.0.2", 8443, false),
            ("[::1]:8443", "::1", 8443, true),
            ("[::1]:8443", "::1", 443, false),
            ("[::1]:8443", "::2", 8443, false),
            ("[::1", "::1", 443, false),
            ("10.0.0.0/33", "10.0.0.1", 443, false),
        ];
        for &(list, host, port, want) in cases {
            assert_eq!(
                NoProxy::parse(list).matches(host, port),
                want,
                "{list:?} {host}:{port}"
            );
        }
    }

    #[test]
    fn proxy_urls_parse_without_echo() {
        let p = EgressProxy::parse("http://proxy.corp:3128").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.to_string()),
            ("proxy.corp", 3128, "proxy.corp:3128".into())
        );
        let p = EgressProxy::parse("proxy.corp").unwrap();
        assert_eq!(p.port, DEFAULT_PROXY_PORT);
        let p = EgressProxy::parse("HTTP://[::1]:8080/").unwrap();
        assert_eq!(p.to_string(), "[::1]:8080");
        let p = EgressProxy::parse("http://us%40er:p%3Ass@proxy:3128").unwrap();
        let mut out = Vec::new();
        p.connect_request("api.anthropic.com:443", &mut out);
        // base64("us@er:p:ss") = dXNAZXI6cDpzcw==
        assert_eq!(
            out,
            b"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\nProxy-Authorization: Basic dXNAZXI6cDpzcw==\r\n\r\n"
        );
        assert!(!format!("{p:?}").contains("p:ss") && !format!("{p:?}").contains("dXNA"));
        for bad in [
            "https://proxy:3128",
            "socks5://proxy:1080",
            "http://user@proxy:3128",
            "http://proxy:99999",
            "http://proxy:3128/path",
            "http://",
            "http://pro xy:3128",
            "http://u:%zz@proxy",
        ] {
            let e = EgressProxy::parse(bad).unwrap_err();
            assert!(
                !e.contains("proxy:") && !e.contains("user@") && !e.contains("3128"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn connect_replies() {
        let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
        assert_eq!(parse_connect_reply(ok), Ok(ConnectReply::Established));
        let refused =
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n";
        assert_eq!(parse_connect_reply(refused), Ok(ConnectReply::Refused(407)));
        assert_eq!(
            parse_connect_reply(b"SSH-2.0-x\r\n\r\n"),
            Err(Problem::EgressMalformed)
        );
    }
}
