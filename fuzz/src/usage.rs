//! Target `usage`: the usage observer, alone and inside the relay.
//!
//! Input: one flag byte (bit 0: a JSON body, else an event stream; bit 1: the body is sent
//! chunked, else with a Content-Length; bits 2-7 seed the chunk sizes), then the body, with
//! `0xFE` expanded to a filler run (oversized events and bodies from short inputs).
//!
//! Checks: no panic; the observer's copy never passes `USAGE_EVENT_MAX`; what it finds does
//! not depend on where the body was split (whole, one byte at a time, at derived points); the
//! relayed bytes are the same with the observer on and off, read at any boundaries.

use agent_loop_proxy::limits;
use agent_loop_proxy::response::ResponseBody;
use agent_loop_proxy::tracker::BodyTracker;
use agent_loop_proxy::usage::{BodyKind, Observer, Usage};

use super::{real_tokens, Rng, REAL_TOKEN};

/// This byte stands for a run of filler inside a JSON string.
const FILL_MARK: u8 = 0xFE;
const FILL: usize = 6000;

pub fn usage(data: &[u8]) {
    let Some((&flags, template)) = data.split_first() else {
        return;
    };
    let mut body = Vec::with_capacity(template.len() * 2);
    for &b in template {
        match b {
            FILL_MARK => body.extend(std::iter::repeat_n(b'x', FILL)),
            b => body.push(b),
        }
    }
    let kind = if flags & 1 != 0 {
        BodyKind::Json
    } else {
        BodyKind::Sse
    };
    let mut rng = Rng::of(data, 21);
    let whole = observe(kind, &[&body]);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(observe(kind, &bytes), whole, "one byte at a time");
    for _ in 0..4 {
        let mut cuts: Vec<usize> = (0..3).map(|_| rng.upto(body.len())).collect();
        cuts.sort_unstable();
        let (a, b, c) = (cuts[0], cuts[1], cuts[2]);
        let pieces = [&body[..a], &body[a..b], &body[b..c], &body[c..]];
        assert_eq!(observe(kind, &pieces), whole, "split at {cuts:?}");
    }
    // Inside the relay: framed, read at derived boundaries, with the observer on and off.
    let (framing, wire) = if flags & 2 != 0 {
        (ResponseBody::Chunked, chunk(&body, &mut rng))
    } else {
        (ResponseBody::Length(body.len() as u64), body.clone())
    };
    let reads: Vec<usize> = (0..6).map(|_| 1 + rng.upto(1 + wire.len() / 3)).collect();
    let (on, found) = relay(framing, &wire, &reads, Some(kind));
    let (off, none) = relay(framing, &wire, &reads, None);
    assert_eq!(on, off, "the observer changed the relayed bytes");
    assert!(none.is_none());
    if let Some(found) = found {
        // The relay's observer reads the payload as masked: a model name that holds the
        // token (or a part of it held back at a read's end) differs; the figures may not.
        assert_eq!(
            found.kinds(),
            whole.kinds(),
            "the relay fed the observer other bytes than the payload"
        );
        if !body.windows(3).any(|w| REAL_TOKEN.starts_with(w)) {
            assert_eq!(found, whole, "the model differs");
        }
    }
}

fn observe(kind: BodyKind, pieces: &[&[u8]]) -> Usage {
    let mut o = Observer::new(kind).expect("observed kind");
    for p in pieces {
        o.feed(p);
        assert!(
            o.held() <= limits::USAGE_EVENT_MAX,
            "the copy passed its cap"
        );
    }
    o.finish();
    o.usage()
}

/// `body` chunked, in chunks of derived sizes.
fn chunk(body: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut i = 0;
    while i < body.len() {
        let n = (1 + rng.upto(40)).min(body.len() - i);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&body[i..i + n]);
        out.extend_from_slice(b"\r\n");
        i += n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Relays `wire` (a body of `framing`) through a tracker, read in pieces of the sizes in
/// `reads` (cycled); returns what the client got, and the usage if observed and whole.
fn relay(
    framing: ResponseBody,
    wire: &[u8],
    reads: &[usize],
    kind: Option<BodyKind>,
) -> (Vec<u8>, Option<Usage>) {
    let mut t = BodyTracker::new(framing, false, real_tokens());
    if let Some(o) = kind.and_then(Observer::new) {
        t.observe(o);
    }
    let (mut buf, mut sent, mut old, mut at) = (Vec::new(), Vec::new(), 0, 0);
    for &n in reads.iter().cycle() {
        let n = n.min(wire.len() - at);
        buf.truncate(old);
        buf.extend_from_slice(&wire[at..at + n]);
        at += n;
        let Ok(a) = t.advance(&mut buf, old) else {
            return (sent, None);
        };
        assert!(t.usage_held() <= limits::USAGE_EVENT_MAX);
        sent.extend_from_slice(&buf[..a.ready]);
        if a.done {
            return (sent, t.usage());
        }
        if at == wire.len() {
            return (sent, None);
        }
        buf.copy_within(a.ready..a.keep, 0);
        t.shifted(a.ready);
        old = a.keep - a.ready;
    }
    unreachable!("reads is never empty")
}
