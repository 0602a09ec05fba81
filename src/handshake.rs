//! Pure: the WebSocket opening handshake (RFC 6455 §4) as the proxy checks it on both sides.
//! The client's request is checked strictly before anything goes upstream, and only an
//! upstream `101` that answers exactly that request opens a tunnel. Bytes in, decisions out.
//!
//! The tunnel relays frames the proxy can read and mask, so no extension is ever negotiated:
//! the offer's `Sec-WebSocket-Extensions` is removed on the way up, and an upstream that
//! accepts one anyway is refused (RFC 6455 §9.1: a server may only accept what was offered).

use crate::error::Problem;
use crate::scrub::Mask;
use crate::syntax::{list_items, push_base64};

/// The GUID a server appends to the client's key (RFC 6455 §1.3, §4.2.2).
pub const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept`: base64 of 20 bytes.
pub const ACCEPT_LEN: usize = 28;

/// The paths an upgrade may be tunnelled on (`WEBSOCKET_PATHS`), matched exactly against
/// the request's path without its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketPaths(Vec<Vec<u8>>);

impl WebSocketPaths {
    /// A comma-separated list of absolute paths. Each must be a plain path (no query,
    /// fragment, escape, wildcard or dot-segment): matching is byte for byte, and only a path
    /// that cannot mean two things at the upstream can be matched that way.
    pub fn parse(list: &str) -> Result<WebSocketPaths, &'static str> {
        let mut paths = Vec::new();
        for p in list_items(list.as_bytes()) {
            let plain = p.first() == Some(&b'/')
                && p.iter()
                    .all(|&b| b.is_ascii_graphic() && !b"?#%*\\".contains(&b))
                && !p.split(|&b| b == b'/').any(|s| s == b"." || s == b"..");
            if !plain {
                return Err("each entry must be a plain path like /v1/responses");
            }
            paths.push(p.to_vec());
        }
        if paths.is_empty() {
            return Err("must list at least one path");
        }
        Ok(WebSocketPaths(paths))
    }

    /// How many paths are listed.
    pub fn entries(&self) -> usize {
        self.0.len()
    }

    /// Whether `path` (without its query) is listed.
    pub fn lists(&self, path: &[u8]) -> bool {
        self.0.iter().any(|p| p == path)
    }
}

/// What an `Upgrade` field asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Exactly `websocket` (case-insensitive, RFC 6455 §4.2.1 item 3).
    WebSocket,
    /// WebSocket among other protocols, or versioned: refused with 426 off the listed paths,
    /// and as a malformed handshake on them.
    WebSocketAmong,
    /// No WebSocket at all (h2c ...).
    Other,
}

/// Reads an `Upgrade` list (RFC 9110 §7.8: `protocol-name ["/" protocol-version]`).
pub fn asked(upgrade: &[u8]) -> Asked {
    let names_ws = |p: &[u8]| {
        let name = p.split(|&b| b == b'/').next().unwrap_or_default();
        name.eq_ignore_ascii_case(b"websocket")
    };
    let mut items = list_items(upgrade);
    let first = items.next().unwrap_or_default();
    let alone = items.next().is_none();
    if alone && first.eq_ignore_ascii_case(b"websocket") {
        Asked::WebSocket
    } else if list_items(upgrade).any(names_ws) {
        Asked::WebSocketAmong
    } else {
        Asked::Other
    }
}

/// The subprotocols a client offered (`Sec-WebSocket-Protocol`, RFC 6455 §4.1 item 10), in
/// its order. The upstream may pick one of them and nothing else (§4.2.2 item 5.5.4): its
/// choice goes into the proxy's own 101, so a value the client did not send could carry
/// anything, the credential included, to the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protocols(Vec<Vec<u8>>);

impl Protocols {
    /// Whether `p` is exactly one of the values offered.
    pub fn offered(&self, p: &[u8]) -> bool {
        self.0.iter().any(|o| o == p)
    }

    /// None was offered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The handshake fields of a request (RFC 6455 §4.1, §4.2.1), gathered while its fields
/// are checked.
#[derive(Debug, Default, Clone)]
pub struct Offer<'h> {
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    /// `Sec-WebSocket-Key` fields, and the last one.
    pub keys: usize,
    pub key: &'h [u8],
    /// `Sec-WebSocket-Version` fields, and the last one.
    pub versions: usize,
    pub version: &'h [u8],
    /// `Sec-WebSocket-Protocol` fields (each a list).
    pub protocols: Vec<&'h [u8]>,
}

impl<'h> Offer<'h> {
    /// Notes `name: value` if it is a handshake field.
    pub fn see(&mut self, name: &[u8], value: &'h [u8]) {
        if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            self.keys += 1;
            self.key = value;
        } else if name.eq_ignore_ascii_case(b"sec-websocket-version") {
            self.versions += 1;
            self.version = value;
        } else if name.eq_ignore_ascii_case(b"sec-websocket-protocol") {
            self.protocols.push(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.connection_upgrade |=
                list_items(value).any(|o| o.eq_ignore_ascii_case(b"upgrade"));
        }
    }

    /// The subprotocols offered, every field's list items in order (RFC 9110 §5.3: several
    /// fields are one list).
    pub fn protocols(&self) -> Protocols {
        let items = self.protocols.iter().flat_map(|v| list_items(v));
        Protocols(items.map(<[u8]>::to_vec).collect())
    }

    /// The strict check of RFC 6455 §4.2.1 (method, version and body are the caller's):
    /// one key, the base64 of 16 bytes; version 13; `Connection` lists `upgrade`. Returns
    /// the `Sec-WebSocket-Accept` a server must answer with.
    pub fn check(&self) -> Result<[u8; ACCEPT_LEN], Problem> {
        let ok = self.connection_upgrade
            && self.keys == 1
            && is_base64_of_16(self.key)
            && self.versions == 1
            && self.version == b"13";
        if !ok {
            return Err(Problem::BadHandshake);
        }
        Ok(accept(self.key))
    }
}

/// `base64(SHA-1(key + GUID))` (RFC 6455 §4.2.2 item 5.4).
pub fn accept(key: &[u8]) -> [u8; ACCEPT_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(ACCEPT_GUID);
    let mut out = Vec::with_capacity(ACCEPT_LEN);
    push_base64(&mut out, ctx.finish().as_ref());
    let mut a = [0u8; ACCEPT_LEN];
    a.copy_from_slice(&out);
    a
}

/// Whether `v` is the canonical base64 (RFC 4648 §4) of exactly 16 bytes: 22 characters of
/// the alphabet, the last carrying no stray bits, then `==`.
fn is_base64_of_16(v: &[u8]) -> bool {
    fn value(b: u8) -> Option<u8> {
        match b {
            b'A'..=b'Z' => Some(b - b'A'),
            b'a'..=b'z' => Some(b - b'a' + 26),
            b'0'..=b'9' => Some(b - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    v.len() == 24
        && v.ends_with(b"==")
        && v[..22].iter().all(|&b| value(b).is_some())
        && value(v[21]).is_some_and(|x| x & 0x0f == 0)
}

/// What the upstream's answer to a handshake decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not a 101: relayed as an ordinary response.
    Ordinary,
    /// A 101 that answers the handshake: the tunnel opens. The subprotocol the upstream
    /// chose, if any (a token, RFC 6455 §4.3), goes into the client's 101.
    Switched { protocol: Option<Vec<u8>> },
}

/// Judges the upstream's response head (complete, ending with the blank line) to a
/// handshake whose accept value is `accept` and whose offered subprotocols are `offered`. A
/// 101 opens the tunnel only with `Upgrade: websocket`, `Connection: upgrade`, the right
/// `Sec-WebSocket-Accept`, no extension, and either no subprotocol or exactly one of those
/// offered (RFC 6455 §4.1, the client's checks; §4.2.2 item 5.5.4: the server picks one of the
/// client's); any other 101 is refused. The chosen subprotocol is copied into the proxy's own
/// 101, which no response masking covers: one that holds any of `masks`' tokens is refused
/// too, even if offered.
pub fn upstream_answer(
    head: &[u8],
    accept: &[u8; ACCEPT_LEN],
    offered: &Protocols,
    masks: &[Mask],
) -> Result<Answer, Problem> {
    let mut headers = [httparse::EMPTY_HEADER; crate::limits::MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Problem::UpstreamMalformed),
    }
    if res.code != Some(101) {
        return Ok(Answer::Ordinary);
    }
    let (mut upgrades, mut websocket, mut connection) = (0, false, false);
    let (mut accepts, mut accepted, mut protocol) = (0, false, None);
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrades += 1;
            websocket = h.value.eq_ignore_ascii_case(b"websocket");
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection |= list_items(h.value).any(|o| o.eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case(b"sec-websocket-accept") {
            accepts += 1;
            accepted = h.value == accept;
        } else if name.eq_ignore_ascii_case(b"sec-websocket-extensions") {
            return Err(Problem::UpstreamBadHandshake);
        } else if name.eq_ignore_ascii_case(b"sec-websocket-protocol") {
            let token = !h.value.is_empty() && h.value.iter().all(|&b| crate::syntax::is_tchar(b));
            let secret = masks.iter().any(|m| m.finder().find(h.value).is_some());
            if protocol.is_some() || !token || !offered.offered(h.value) || secret {
                return Err(Problem::UpstreamBadHandshake);
            }
            protocol = Some(h.value.to_vec());
        }
    }
    // Exactly one `Upgrade: websocket` and one matching accept.
    if upgrades != 1 || !websocket || !connection || accepts != 1 || !accepted {
        return Err(Problem::UpstreamBadHandshake);
    }
    Ok(Answer::Switched { protocol })
}

/// The proxy's own 101 to the client: the fields RFC 6455 §4.2.2 requires, and the
/// subprotocol the upstream chose. Nothing else of the upstream's head is relayed.
pub fn switching(accept: &[u8; ACCEPT_LEN], protocol: Option<&[u8]>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
    out.extend_from_slice(b"Connection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(accept);
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
