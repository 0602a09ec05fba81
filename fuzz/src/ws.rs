//! Target `ws_frames`: one direction of a WebSocket tunnel through `wsframe::FrameRelay`,
//! against a reference walk written from RFC 6455 §5 and the relay's documented decisions
//! (whole input in, no streaming), and the masking oracle: the token never reaches the client
//! in a payload as a reader reassembles it, nor in all payloads joined in wire order.

use std::ops::Range;

use agent_loop_proxy::scrub::{self, MASK};
use agent_loop_proxy::wsframe::{Close, FrameRelay, Sender, HELD_FRAMES_MAX};

use super::{contains, real_finder, real_tokens, schedules, Rng, REAL_TOKEN};

/// In a payload template: the whole token.
const WS_TOKEN: u8 = 0xF0;
/// In a payload template, then a byte `n`: the token's first `n % len` bytes.
const WS_HEAD: u8 = 0xF1;
/// In a payload template, then a byte `n`: the token from byte `n % len` on.
const WS_TAIL: u8 = 0xF2;
/// In a payload template: 65 536 filler bytes (a 64-bit length).
const WS_FILL: u8 = 0xF3;

/// The largest frame header (§5.2) and control payload (§5.5).
const HEADER_MAX: usize = 14;
const CONTROL_MAX: usize = 125;

/// What the reference walk found in a whole input.
#[derive(Debug, Default)]
struct Walk {
    /// Where relaying stops: the end, the end of a Close frame, or a refused frame's start.
    end: usize,
    refused: Option<u16>,
    close: Option<u16>,
    frames: u64,
    /// Wire positions of the data payload bytes (text, binary, continuation), in order.
    data_at: Vec<usize>,
    /// Each control payload's wire range (complete, or cut by the end of the input).
    controls: Vec<Range<usize>>,
    /// Wire positions of every payload byte (data and control), in order.
    payload_at: Vec<usize>,
}

/// The bytes a held token prefix may span when a header ends: `k - 1` data bytes in frames of
/// their own, then the current frame and [`HELD_FRAMES_MAX`] control frames of the largest
/// size (the bound `wsframe` documents).
fn hold_max() -> usize {
    (REAL_TOKEN.len() - 1) * (1 + HEADER_MAX) + (HEADER_MAX + CONTROL_MAX) * (1 + HELD_FRAMES_MAX)
}

/// Where the relay holds from after the data bytes so far: the longest end of the masked
/// data stream that is a proper prefix of the token (a token that cannot overlap itself, so
/// a window of two token lengths masks as the whole stream does).
fn hold_start(input: &[u8], data_at: &[usize]) -> Option<usize> {
    let k = REAL_TOKEN.len();
    let from = data_at.len().saturating_sub(2 * k);
    let mut tail: Vec<u8> = data_at[from..].iter().map(|&p| input[p]).collect();
    scrub::mask_all(&mut tail, real_finder());
    (1..k)
        .rev()
        .find(|&n| tail.ends_with(&REAL_TOKEN[..n]))
        .map(|n| data_at[data_at.len() - n])
}

/// What the first two bytes of a header decide (§5.1, §5.2, §5.4, §5.5).
fn refuse_start(b0: u8, b1: u8, sender: Sender, in_message: bool) -> Option<u16> {
    let (fin, opcode, len7) = (b0 & 0x80 != 0, b0 & 0x0f, b1 & 0x7f);
    if b0 & 0x70 != 0 {
        return Some(1010);
    }
    if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
        return Some(1002);
    }
    if (b1 & 0x80 != 0) != (sender == Sender::Client) {
        return Some(1002);
    }
    if opcode >= 8 && (!fin || len7 > 125 || (opcode == 8 && len7 == 1)) {
        return Some(1002);
    }
    let bad_order = (opcode == 0 && !in_message) || (matches!(opcode, 1 | 2) && in_message);
    bad_order.then_some(1002)
}

/// Walks `input`'s frames whole.
fn walk(input: &[u8], sender: Sender, max_frame: u64) -> Walk {
    let mut w = Walk::default();
    let (mut pos, mut in_message) = (0, false);
    let stop = |w: &mut Walk, at: usize, code: Option<u16>| {
        w.end = at;
        w.refused = code;
    };
    loop {
        let avail = input.len() - pos;
        if avail < 2 {
            stop(&mut w, input.len(), None);
            return w;
        }
        let (b0, b1) = (input[pos], input[pos + 1]);
        if let Some(code) = refuse_start(b0, b1, sender, in_message) {
            stop(&mut w, pos, Some(code));
            return w;
        }
        let masked = b1 & 0x80 != 0;
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if avail < need {
            stop(&mut w, input.len(), None);
            return w;
        }
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([input[pos + 2], input[pos + 3]])),
            8 => u64::from_be_bytes(input[pos + 2..pos + 10].try_into().unwrap()),
            _ => u64::from(b1 & 0x7f),
        };
        let minimal = match ext {
            2 => len >= 126,
            8 => len >= 0x1_0000 && len < 1 << 63,
            _ => true,
        };
        let held_too_long =
            hold_start(input, &w.data_at).is_some_and(|h| pos + need - h > hold_max());
        let refused = if !minimal {
            Some(1002)
        } else if len > max_frame {
            Some(1009)
        } else if held_too_long {
            Some(1008)
        } else {
            None
        };
        if refused.is_some() {
            stop(&mut w, pos, refused);
            return w;
        }
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        if opcode < 8 {
            in_message = !fin;
        }
        let key = masked.then(|| input[pos + need - 4..pos + need].to_vec());
        let start = pos + need;
        let got = usize::try_from(len).unwrap().min(input.len() - start);
        if opcode < 8 {
            w.data_at.extend(start..start + got);
        } else {
            w.controls.push(start..start + got);
        }
        w.payload_at.extend(start..start + got);
        if got as u64 != len {
            stop(&mut w, input.len(), None);
            return w;
        }
        w.frames += 1;
        pos = start + got;
        if opcode == 8 {
            let unmask = |i: usize| input[start + i] ^ key.as_ref().map_or(0, |k| k[i]);
            w.close = Some(if len == 0 {
                1005
            } else {
                u16::from_be_bytes([unmask(0), unmask(1)])
            });
            stop(&mut w, pos, None);
            return w;
        }
    }
}

/// What the client must receive: the input up to where relaying stops, a server's payload
/// byte masked where a token covers it in one of three streams, each masked over the bytes as
/// received: the data payloads as one, each control payload on its own, every payload in wire
/// order as one.
fn expected(input: &[u8], sender: Sender, w: &Walk) -> Vec<u8> {
    let mut out = input[..w.end].to_vec();
    if sender == Sender::Client {
        return out;
    }
    let mut mask_view = |at: &[usize]| {
        let mut bytes: Vec<u8> = at.iter().map(|&p| input[p]).collect();
        scrub::mask_all(&mut bytes, real_finder());
        for (&p, &b) in at.iter().zip(&bytes) {
            if b == MASK {
                out[p] = MASK;
            }
        }
    };
    mask_view(&w.data_at);
    mask_view(&w.payload_at);
    for r in &w.controls {
        mask_view(&r.clone().collect::<Vec<_>>());
    }
    out
}

/// The frames a payload template describes (see [`ws_frames`]).
fn build(spec: &[u8], sender: Sender, rng: &mut Rng) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut it = spec.iter().copied();
    while let (Some(c), Some(n)) = (it.next(), it.next()) {
        let opcode = [1, 2, 0, 9, 10, 8, 1, 0][usize::from(c & 7)];
        let fin = c & 8 != 0 || (opcode >= 8 && c & 0x40 == 0);
        let mut payload = Vec::new();
        for _ in 0..n {
            match it.next() {
                None => break,
                Some(WS_TOKEN) => payload.extend_from_slice(REAL_TOKEN),
                Some(WS_HEAD) => {
                    let n = usize::from(it.next().unwrap_or(0)) % REAL_TOKEN.len();
                    payload.extend_from_slice(&REAL_TOKEN[..n]);
                }
                Some(WS_TAIL) => {
                    let n = usize::from(it.next().unwrap_or(0)) % REAL_TOKEN.len();
                    payload.extend_from_slice(&REAL_TOKEN[n..]);
                }
                Some(WS_FILL) => payload.extend(std::iter::repeat_n(b'e', 65_536)),
                Some(b) => payload.push(b),
            }
        }
        if opcode >= 8 && c & 0x40 == 0 {
            payload.truncate(CONTROL_MAX);
        }
        let key = (sender == Sender::Client).then(|| (rng.next() as u32).to_be_bytes());
        wire.push(u8::from(fin) << 7 | if c & 0x80 != 0 { 0x40 } else { 0 } | opcode);
        let m = if key.is_some() { 0x80 } else { 0 };
        let len = payload.len();
        match (len, c >> 4 & 3) {
            (0..=125, 0 | 1) => wire.push(m | len as u8),
            (0..=0xffff, 0..=2) => {
                wire.push(m | 126);
                wire.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                wire.push(m | 127);
                wire.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        match key {
            Some(k) => {
                wire.extend_from_slice(&k);
                wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => wire.extend_from_slice(&payload),
        }
    }
    wire
}

/// The relay over `input` pushed in pieces cut at `cuts`, then finished.
fn relay(input: &[u8], sender: Sender, max_frame: u64, cuts: &[usize]) -> (Vec<u8>, Walk) {
    let mut r = FrameRelay::new(sender, max_frame);
    let (mut out, mut got) = (Vec::new(), Walk::default());
    let bound = match sender {
        // A hold checked at a header's end, then that frame's payload, then part of a header.
        Sender::Server => hold_max() + CONTROL_MAX.max(REAL_TOKEN.len()) + HEADER_MAX,
        Sender::Client => HEADER_MAX - 1,
    };
    let mut last = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        match r.push(&input[last..cut], real_tokens(), &mut out) {
            Ok(seen) => {
                assert!(got.close.is_none() || seen == Default::default());
                got.close = got.close.or(seen.close);
            }
            Err(Close { code }) => {
                assert!(got.refused.is_none_or(|c| c == code), "a refusal changed");
                got.refused = Some(code);
            }
        }
        assert!(r.held() <= bound, "{} bytes held", r.held());
        last = cut;
    }
    r.finish(real_tokens(), &mut out);
    assert_eq!(r.held(), 0, "finish left bytes held");
    got.frames = r.frames();
    (out, got)
}

/// Target `ws_frames`. Input: a flag byte (bit 0: the client's frames, else the upstream's;
/// bit 1: the rest is raw bytes, else frame specs; bits 2-3: the maximum frame size), then
/// the input. A frame spec is a control byte (bits 0-2: opcode text, binary, continuation,
/// ping, pong, close, text, continuation; bit 3: FIN, always set on a control frame unless
/// bit 6; bits 4-5: 0-1 minimal length, 2 a 16-bit one, 3 a 64-bit one; bit 6: a control
/// frame as is, fragmented or over 125 bytes; bit 7: RSV1), a count `n`, and `n` template
/// bytes, with [`WS_TOKEN`], [`WS_HEAD`], [`WS_TAIL`] and [`WS_FILL`] expanded.
///
/// Checks, for several ways of cutting the input into pushes: no panic; the bytes held are
/// bounded; the output is the input up to where relaying stops, masked only in payloads
/// (data as one stream, each control frame on its own, all payloads in wire order as one), as
/// the reference walk says; the refusal, the close code and the frame count are the walk's;
/// no payload the client reassembles, nor all payloads joined in wire order, holds the token.
pub fn ws_frames(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let sender = if flags & 1 != 0 {
        Sender::Client
    } else {
        Sender::Server
    };
    let max_frame = [1 << 20, 300, 125, 70_000][usize::from(flags >> 2 & 3)];
    let input = if flags & 2 != 0 {
        rest.to_vec()
    } else {
        build(rest, sender, &mut Rng::of(data, 21))
    };
    let w = walk(&input, sender, max_frame);
    let want = expected(&input, sender, &w);
    for cuts in schedules(&input, 22, 1024) {
        let (out, got) = relay(&input, sender, max_frame, &cuts);
        assert_eq!(
            got.refused, w.refused,
            "refusal differs from the walk, cuts {cuts:?}"
        );
        assert_eq!(got.close, w.close, "close code differs, cuts {cuts:?}");
        assert_eq!(got.frames, w.frames, "frame count differs, cuts {cuts:?}");
        assert_eq!(out.len(), w.end, "output length is not the input relayed");
        for (i, (&o, &b)) in out.iter().zip(&input).enumerate() {
            let payload =
                || w.data_at.binary_search(&i).is_ok() || w.controls.iter().any(|r| r.contains(&i));
            assert!(o == b || (o == MASK && payload()), "byte {i} altered");
        }
        assert!(
            out == want,
            "output differs from the reference, cuts {cuts:?}"
        );
    }
    if sender == Sender::Server {
        // What a reader of the output reassembles (lengths are kept, so the walk's positions
        // hold): no token anywhere in it.
        let data: Vec<u8> = w.data_at.iter().map(|&p| want[p]).collect();
        assert!(!contains(&data, REAL_TOKEN), "token in the data payloads");
        let all: Vec<u8> = w.payload_at.iter().map(|&p| want[p]).collect();
        assert!(
            !contains(&all, REAL_TOKEN),
            "token in the payloads in wire order"
        );
        for r in &w.controls {
            assert!(
                !contains(&want[r.clone()], REAL_TOKEN),
                "token in a control payload"
            );
        }
    }
}
