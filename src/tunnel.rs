//! A WebSocket tunnel, once the upstream answered the handshake with a 101 that answers it:
//! the proxy's own 101 to the client, then frames both ways as they come, each direction
//! through a [`FrameRelay`] that checks them (RFC 6455 §5) and, from the server, masks every
//! token of the credential store's mask set in text and binary payloads, split-safe.
//!
//! The request's use of its credential generation lasts as long as the tunnel (the caller
//! holds it), so that generation stays in the mask set however often the token rotates: a
//! tunnel keeps the token it was opened with. It ends when either side ends its connection, on a bad frame
//! (a close frame with its code to both sides), after `WEBSOCKET_IDLE_TIMEOUT` without a
//! frame, at shutdown (1001, going away, to both sides), or when the credential stops being
//! usable, as an HTTP request would get 503 (1011 to the client, 1001 to the upstream;
//! checked on every frame and every second).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};

use crate::credential::Credentials;
use crate::exchange::{write_client, Client, Exchange, Outcome, Switched};
use crate::handshake::{self, ACCEPT_LEN};
use crate::limits;
use crate::persist::ClientFate;
use crate::scrub::Mask;
use crate::wsframe::{close_frame, FrameRelay, Sender};

/// RFC 6455 §7.4.1: the proxy goes away (shutdown) or gives up on a silent tunnel.
const GOING_AWAY: u16 = 1001;
/// §7.1.5: the connection ended without a close frame. Counted, never sent.
const ABNORMAL: u16 = 1006;
/// §7.4.1 "an unexpected condition that prevented it from fulfilling the request": to the
/// client when the credential stops being usable (expired, or past the stale grace of a
/// failing source), where an HTTP request would get 503. The upstream gets 1001 (going away):
/// nothing is wrong with it.
const UNUSABLE: u16 = 1011;
/// How often an open tunnel checks that the credential is still usable, when no frame
/// passes (each frame checks it too): an expiry passes without any event to wake on.
const USABLE_CHECK: Duration = Duration::from_secs(1);
/// Bytes asked of each read, either way.
const READ: usize = 16 * 1024;

/// Answers the client with the proxy's own 101 and relays frames until the tunnel ends;
/// returns the exchange's outcome (status 101, the bytes both ways, the close code).
pub async fn run(
    x: &Exchange<'_>,
    client: &mut Client,
    sw: Switched,
    accept: &[u8; ACCEPT_LEN],
    shutdown: &watch::Receiver<bool>,
    out: &mut Vec<u8>,
) -> Outcome {
    let proxy = x.proxy;
    handshake::switching(accept, sw.protocol.as_deref(), out);
    let head = out.len() as u64;
    let write = proxy.cfg.timeouts.client_write;
    if let Err(p) = write_client(&mut client.stream, out, write).await {
        return Outcome::answered(0, 0, Some(p), ClientFate::Close);
    }
    *out = Vec::new();
    let idle = proxy
        .cfg
        .websocket
        .as_ref()
        .map_or(limits::WEBSOCKET_IDLE_TIMEOUT, |w| w.idle);
    let metrics = &proxy.metrics.websocket;
    let _open = metrics.open();
    let mut tunnel = Tunnel::new(&proxy.creds, idle, write, shutdown.clone());
    let code = tunnel.relay(client, sw.upstream, &sw.early).await;
    metrics.closed(code, tunnel.up.bytes, tunnel.down.bytes);
    let mut o = Outcome::answered(101, head + tunnel.down.bytes, None, ClientFate::Close);
    o.upstream_answered = true;
    o.bytes_up = sw.bytes_up + tunnel.up.bytes;
    o.tunnel_close = Some(code);
    o
}

/// One direction: its relay, and the bytes it passed on.
struct Half {
    relay: FrameRelay,
    bytes: u64,
}

impl Half {
    fn new(sender: Sender) -> Half {
        Half {
            relay: FrameRelay::new(sender, limits::WEBSOCKET_MAX_FRAME),
            bytes: 0,
        }
    }
}

/// What one turn of the relay decided.
enum Step {
    /// Go on; `true` when a frame completed (activity for the idle timeout).
    Go(bool),
    /// A side ended its connection: what it sent is passed on, and the tunnel ends (a
    /// WebSocket has no half-open state worth keeping, RFC 6455 §7.1.1).
    Ended,
    /// The proxy closes the tunnel with this code, to both sides.
    Close(u16),
}

/// Which way bytes go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Client frames to the upstream.
    Up,
    /// Server frames to the client, masked.
    Down,
}

/// The tunnel's state across reads.
struct Tunnel<'a> {
    creds: &'a Credentials,
    /// The mask set, and the store's epoch it belongs to.
    masks: Vec<Mask>,
    epoch: u64,
    idle: Duration,
    write: Duration,
    shutdown: watch::Receiver<bool>,
    up: Half,
    down: Half,
    /// The first close code seen in a completed close frame, or sent by the proxy.
    close: Option<u16>,
    /// What a relay lets go of, before it is written.
    out: Vec<u8>,
}

impl<'a> Tunnel<'a> {
    fn new(
        creds: &'a Credentials,
        idle: Duration,
        write: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut masks = Vec::new();
        let epoch = creds.masks(&mut masks);
        Tunnel {
            creds,
            masks,
            epoch,
            idle,
            write,
            shutdown,
            up: Half::new(Sender::Client),
            down: Half::new(Sender::Server),
            close: None,
            out: Vec::new(),
        }
    }

    /// Relays until a side ends its connection or the proxy closes the tunnel; returns the
    /// close code it counts under. The client's bytes that came after its head (held until the
    /// 101 was checked) and the upstream's that came with its 101 go first.
    async fn relay(
        &mut self,
        client: &mut Client,
        upstream: crate::upstream::Stream,
        early: &[u8],
    ) -> u16 {
        let held = std::mem::take(&mut client.buf);
        let (mut ur, mut uw) = tokio::io::split(upstream);
        let (mut cr, mut cw) = client.stream.split();
        let (mut cbuf, mut sbuf) = (vec![0u8; READ], vec![0u8; READ]);
        let mut step = self.pass(Way::Up, &held, &mut uw).await;
        if matches!(step, Step::Go(_)) {
            step = self.pass(Way::Down, early, &mut cw).await;
        }
        let mut deadline = Instant::now() + self.idle;
        let mut check = Instant::now() + USABLE_CHECK;
        let mut shutdown = self.shutdown.clone();
        loop {
            match step {
                Step::Go(true) => deadline = Instant::now() + self.idle,
                Step::Go(false) => {}
                Step::Ended => {
                    let _ = timeout(self.write, uw.shutdown()).await;
                    return self.close.unwrap_or(ABNORMAL);
                }
                Step::Close(code) => {
                    self.close_both(code, &mut cw, &mut uw).await;
                    return code;
                }
            }
            if *shutdown.borrow() {
                step = Step::Close(GOING_AWAY);
                continue;
            }
            // Cancel safety: `read` on a socket and `changed` lose nothing when another arm
            // wins; every write happens inside the arm that won.
            step = tokio::select! {
                r = cr.read(&mut cbuf) => self.after_read(Way::Up, r, &cbuf, &mut uw).await,
                r = ur.read(&mut sbuf) => self.after_read(Way::Down, r, &sbuf, &mut cw).await,
                () = sleep_until(deadline) => Step::Close(GOING_AWAY),
                () = sleep_until(check) => {
                    check = Instant::now() + USABLE_CHECK;
                    self.usable()
                }
                _ = shutdown.changed() => Step::Close(GOING_AWAY),
            };
        }
    }

    /// Handles one read of the side that sends `way`'s frames: passes what it read on, or,
    /// at its end, releases what the relay held to the other side.
    async fn after_read<W: AsyncWrite + Unpin>(
        &mut self,
        way: Way,
        read: std::io::Result<usize>,
        buf: &[u8],
        to: &mut W,
    ) -> Step {
        if let Ok(n @ 1..) = read {
            return self.pass(way, &buf[..n], to).await;
        }
        self.refresh();
        self.out.clear();
        let (half, masks) = match way {
            Way::Up => (&mut self.up, &[][..]),
            Way::Down => (&mut self.down, &self.masks[..]),
        };
        half.relay.finish(masks, &mut self.out);
        half.bytes += self.out.len() as u64;
        let _ = timeout(self.write, to.write_all(&self.out)).await;
        Step::Ended
    }

    /// Pushes `input` through `way`'s relay and writes what it lets go of. Nothing more
    /// passes once the credential is not usable.
    async fn pass<W: AsyncWrite + Unpin>(&mut self, way: Way, input: &[u8], to: &mut W) -> Step {
        if input.is_empty() {
            return Step::Go(false);
        }
        if let close @ Step::Close(_) = self.usable() {
            return close;
        }
        self.refresh();
        self.out.clear();
        let (half, masks) = match way {
            Way::Up => (&mut self.up, &[][..]),
            Way::Down => (&mut self.down, &self.masks[..]),
        };
        let seen = half.relay.push(input, masks, &mut self.out);
        half.bytes += self.out.len() as u64;
        // What came before a bad frame is whole frames: it goes on before the close.
        let written = timeout(self.write, to.write_all(&self.out)).await;
        let seen = match seen {
            Ok(seen) => seen,
            Err(close) => return Step::Close(close.code),
        };
        if !matches!(written, Ok(Ok(()))) {
            return Step::Ended;
        }
        if let Some(code) = seen.close {
            self.close.get_or_insert(code);
        }
        Step::Go(seen.frames > 0 || seen.control)
    }

    /// Goes on while the credential is usable (an HTTP request is refused 503 otherwise).
    fn usable(&self) -> Step {
        if self.creds.usable() {
            Step::Go(false)
        } else {
            Step::Close(UNUSABLE)
        }
    }

    /// Takes the store's mask set if it changed since.
    fn refresh(&mut self) {
        if self.creds.epoch() != self.epoch {
            self.epoch = self.creds.masks(&mut self.masks);
        }
    }

    /// Sends a close frame with `code` to both sides (to the upstream masked, as a client's
    /// must be, RFC 6455 §5.3), each within a bounded write, then ends both connections.
    /// Nothing is sent for a connection that simply ended. A frame may be part written when
    /// the idle timeout or the drain strikes (a peer stalled inside one): a close frame
    /// written then would be read as that frame's payload, so that side's connection just
    /// ends, without one (RFC 6455 §7.1.7 lets a peer fail a connection so).
    async fn close_both<C, U>(&mut self, code: u16, client: &mut C, upstream: &mut U)
    where
        C: AsyncWrite + Unpin,
        U: AsyncWrite + Unpin,
    {
        self.close.get_or_insert(code);
        if code != ABNORMAL {
            let whole = |relay: &FrameRelay, key, code| {
                let frame = relay.at_boundary().then(|| close_frame(code, key));
                frame.unwrap_or_default()
            };
            let to_client = whole(&self.down.relay, None, code);
            let up_code = if code == UNUSABLE { GOING_AWAY } else { code };
            let to_upstream = whole(&self.up.relay, Some(mask_key()), up_code);
            let bound = limits::WEBSOCKET_CLOSE_WRITE;
            let _ = tokio::join!(
                timeout(bound, client.write_all(&to_client)),
                timeout(bound, upstream.write_all(&to_upstream)),
            );
        }
        let _ = timeout(limits::WEBSOCKET_CLOSE_WRITE, upstream.shutdown()).await;
    }
}

/// A frame's masking key: unpredictable (RFC 6455 §5.3 requires it of a client, so that
/// its frames cannot be shaped into something an intermediary would misread).
fn mask_key() -> [u8; 4] {
    use ring::rand::SecureRandom;
    let mut key = [0u8; 4];
    // The system's random source failing is not something to relay around: a fixed key
    // is still a valid frame.
    let _ = ring::rand::SystemRandom::new().fill(&mut key);
    key
}
