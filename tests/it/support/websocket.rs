//! A tiny WebSocket peer for both ends of a tunnel (RFC 6455): the handshake's accept key
//! (computed here, not by the proxy's code), frames written raw, masked or not, and read
//! back raw, so a test can send exactly what a broken peer would.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::upstream::UpConn;
use super::wire::{ResponseHead, Wire};
use super::IO_TIMEOUT;

/// RFC 6455 §1.3's key; any 16 bytes in base64 would do.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONTINUATION: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
pub fn accept_for(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(ctx.finish().as_ref())
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for g in bytes.chunks(3) {
        let n = (u32::from(g[0]) << 16)
            | (u32::from(*g.get(1).unwrap_or(&0)) << 8)
            | u32::from(*g.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= g.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The handshake request for `path`, with `extra` fields (each ending in CRLF).
pub fn handshake(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// The upstream's good 101 to a handshake with [`KEY`].
pub fn switching() -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(KEY)
    )
    .into_bytes()
}

/// One frame, raw: FIN, opcode, masked with `mask` if given (as a client's must be).
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A client's frame: masked with a fixed key.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

/// A frame as read: its payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A close frame's code.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Reads one frame off `wire`.
pub fn read_frame<S: Read + Write>(wire: &mut Wire<S>) -> io::Result<Frame> {
    let h = wire.read_exact_bytes(2)?;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes(
            wire.read_exact_bytes(2)?.try_into().unwrap(),
        )),
        127 => u64::from_be_bytes(wire.read_exact_bytes(8)?.try_into().unwrap()),
        n => u64::from(n),
    };
    let key = if masked {
        wire.read_exact_bytes(4)?
    } else {
        vec![0; 4]
    };
    let mut payload = wire.read_exact_bytes(len as usize)?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    Ok(Frame {
        fin: h[0] & 0x80 != 0,
        opcode: h[0] & 0x0f,
        masked,
        payload,
    })
}

/// Reads frames until a close frame or the end; returns the data frames and the close code.
pub fn read_until_close<S: Read + Write>(wire: &mut Wire<S>) -> (Vec<Frame>, Option<u16>) {
    let mut frames = Vec::new();
    while let Ok(f) = read_frame(wire) {
        if f.opcode == CLOSE {
            return (frames, f.close_code());
        }
        frames.push(f);
    }
    (frames, None)
}

/// The sandbox's end of a tunnel.
pub struct WsClient {
    pub wire: Wire<TcpStream>,
}

impl WsClient {
    /// Connects and sends `request` (a handshake, and whatever follows it at once).
    pub fn open(addr: SocketAddr, request: &[u8]) -> WsClient {
        let s = TcpStream::connect(addr).expect("connect to the proxy");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut wire = Wire::new(s);
        wire.write_all_flush(request).expect("send the handshake");
        WsClient { wire }
    }

    /// The response head.
    pub fn head(&mut self) -> ResponseHead {
        let raw = self
            .wire
            .read_head_bytes()
            .expect("a head")
            .expect("a head");
        ResponseHead::parse(&raw).expect("a response head")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.wire.write_all_flush(bytes).expect("send to the proxy");
    }

    pub fn frame(&mut self) -> Frame {
        read_frame(&mut self.wire).expect("a frame from the proxy")
    }
}

/// Reads the handshake off `c` and answers it with `answer`; returns the head as received.
pub fn answer_handshake(c: &mut UpConn, answer: &[u8]) -> Option<String> {
    let raw = c.wire.read_head_bytes().ok()??;
    c.send(answer).ok()?;
    Some(String::from_utf8_lossy(&raw).into_owned())
}
