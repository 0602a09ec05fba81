use std::iter::once;

use super::*;
use crate::scrub::testing::{tokens, TOKEN};
use crate::scrub::{mask_all, FixedToken, TokenFinder};

const FIN: u8 = 0x80;
const MAX: u64 = 1 << 20;

/// One frame: first byte `b0`, the length in its minimal form, masked with `key` if given.
fn frame(b0: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let m = if key.is_some() { 0x80 } else { 0 };
    let mut f = vec![b0];
    match payload.len() {
        n if n <= 125 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match key {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// Server frames `(b0, payload)` and what the client must receive: a payload byte is masked
/// when a token covers it in the data payloads as one stream, in its control payload on its
/// own, or in all payloads in wire order as one stream, each view over the bytes as sent.
fn server(frames: &[(u8, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    let finder = TokenFinder::new(TOKEN);
    // Each view: which payloads it joins (by index), masked as one stream.
    let masked_in = |picks: &[usize]| -> Vec<(usize, usize)> {
        let mut joined: Vec<u8> = picks.iter().flat_map(|&i| frames[i].1.to_vec()).collect();
        mask_all(&mut joined, &finder);
        let at = picks
            .iter()
            .flat_map(|&i| (0..frames[i].1.len()).map(move |j| (i, j)));
        at.zip(joined)
            .filter(|&(_, b)| b == b'*')
            .map(|(a, _)| a)
            .collect()
    };
    let all: Vec<usize> = (0..frames.len()).collect();
    let data: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| frames[i].0 & 0x8 == 0)
        .collect();
    let mut masked = masked_in(&all);
    masked.extend(masked_in(&data));
    for &i in all.iter().filter(|&&i| frames[i].0 & 0x8 != 0) {
        masked.extend(masked_in(&[i]));
    }
    let (mut input, mut want) = (Vec::new(), Vec::new());
    for (i, &(b0, p)) in frames.iter().enumerate() {
        input.extend(frame(b0, p, None));
        let mut out = p.to_vec();
        for &(_, j) in masked.iter().filter(|&&(f, _)| f == i) {
            out[j] = b'*';
        }
        want.extend(frame(b0, &out, None));
    }
    (input, want)
}

/// What a relay did with one input: the output, the pushes' sightings summed, the refusal.
#[derive(Debug, PartialEq)]
struct Outcome {
    out: Vec<u8>,
    seen: Seen,
    refused: Option<Close>,
}

/// Relays `input` pushed in pieces cut at `cuts`, then finishes.
fn run(sender: Sender, input: &[u8], cuts: &[usize]) -> Outcome {
    let mut r = FrameRelay::new(sender, MAX);
    let (mut out, mut seen, mut refused) = (Vec::new(), Seen::default(), None);
    let mut last = 0;
    for &cut in cuts.iter().chain(once(&input.len())) {
        match r.push(&input[last..cut], tokens(), &mut out) {
            Ok(s) => {
                seen.frames += s.frames;
                seen.control |= s.control;
                seen.close = seen.close.or(s.close);
            }
            Err(c) => {
                assert_eq!(refused.unwrap_or(c), c, "a refusal changed");
                refused = Some(c);
            }
        }
        last = cut;
    }
    r.finish(tokens(), &mut out);
    assert_eq!(r.held(), 0);
    // A refused push reports nothing of what it completed before the refusal but its count.
    seen.frames = r.frames();
    if refused.is_some() {
        (seen.control, seen.close) = (false, None);
    }
    Outcome { out, seen, refused }
}

/// The outcome of pushing `input` whole, after checking every one and two cut points give
/// the same.
fn same_at_every_split(sender: Sender, input: &[u8]) -> Outcome {
    let whole = run(sender, input, &[]);
    for a in 0..=input.len() {
        assert_eq!(run(sender, input, &[a]), whole, "cut at {a}");
        for b in a..=input.len() {
            assert_eq!(run(sender, input, &[a, b]), whole, "cuts at {a},{b}");
        }
    }
    whole
}

/// The data payloads of unmasked frames with short or 16-bit lengths, concatenated.
fn data_of(wire: &[u8]) -> Vec<u8> {
    payloads_of(wire, false)
}

/// The payloads of unmasked frames with short or 16-bit lengths, concatenated in wire order:
/// the data ones, or all (control ones too).
fn payloads_of(mut wire: &[u8], all: bool) -> Vec<u8> {
    let mut data = Vec::new();
    while !wire.is_empty() {
        let (len, at) = match wire[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
            n => (usize::from(n), 2),
        };
        if all || wire[0] & 0x8 == 0 {
            data.extend_from_slice(&wire[at..at + len]);
        }
        wire = &wire[at + len..];
    }
    data
}

fn has_token(b: &[u8]) -> bool {
    b.windows(TOKEN.len()).any(|w| w == TOKEN)
}

#[test]
fn a_token_inside_one_frame_is_masked_at_every_split() {
    let (input, want) = server(&[(FIN | TEXT, b"{\"echo\":\"sk-ant-REAL\"}")]);
    let o = same_at_every_split(Sender::Server, &input);
    assert_eq!(o.out, want);
    assert!(!has_token(&o.out));
    assert_eq!(o.out.len(), input.len());
    assert_eq!((o.seen.frames, o.seen.control, o.refused), (1, false, None));
}

#[test]
fn a_token_across_two_frames_is_masked_at_every_split() {
    let (input, want) = server(&[(TEXT, b"a sk-ant"), (FIN | CONTINUATION, b"-REAL b")]);
    let o = same_at_every_split(Sender::Server, &input);
    assert_eq!(o.out, want);
    assert_eq!(data_of(&o.out), b"a *********** b");
    assert!(!has_token(&o.out) && o.out.len() == input.len());
    assert_eq!(o.seen.frames, 2);
}

#[test]
fn a_token_across_fragments_and_a_ping_between_them_is_masked() {
    let frames: &[(u8, &[u8])] = &[
        (BINARY, b"xx s"),
        (CONTINUATION, b"k-"),
        (FIN | PING, b"ping sk-ant-REAL"),
        (CONTINUATION, b""),
        (FIN | PONG, b""),
        (FIN | CONTINUATION, b"ant-REAL yy"),
        (FIN | TEXT, b"sk-ant-REA"),
    ];
    let (input, want) = server(frames);
    let o = same_at_every_split(Sender::Server, &input);
    assert_eq!(o.out, want);
    // The message reassembles to "xx sk-ant-REAL yy": masked; the ping's own token too.
    assert_eq!(data_of(&o.out), b"xx *********** yysk-ant-REA");
    assert!(!has_token(&o.out));
    assert_eq!(o.seen.frames, 7);
    assert!(o.seen.control);
}

#[test]
fn each_violation_is_refused_with_its_code_and_nothing_of_its_frame_is_written() {
    const KEY: Option<[u8; 4]> = Some([1, 2, 3, 4]);
    let long_u16 = |n: u16| [&[FIN | BINARY, 126][..], &n.to_be_bytes()].concat();
    let long_u64 = |n: u64| [&[FIN | BINARY, 127][..], &n.to_be_bytes()].concat();
    let cases: &[(&str, Sender, Vec<u8>, u16)] = &[
        (
            "unmasked client frame",
            Sender::Client,
            frame(FIN | TEXT, b"hi", None),
            1002,
        ),
        (
            "masked server frame",
            Sender::Server,
            frame(FIN | TEXT, b"hi", KEY),
            1002,
        ),
        (
            "RSV1",
            Sender::Server,
            frame(FIN | 0x40 | TEXT, b"x", None),
            1010,
        ),
        (
            "RSV2",
            Sender::Client,
            frame(FIN | 0x20 | BINARY, b"x", KEY),
            1010,
        ),
        (
            "RSV3",
            Sender::Server,
            frame(FIN | 0x10 | PING, b"", None),
            1010,
        ),
        (
            "opcode 3",
            Sender::Server,
            frame(FIN | 0x3, b"", None),
            1002,
        ),
        (
            "opcode 7",
            Sender::Server,
            frame(FIN | 0x7, b"", None),
            1002,
        ),
        (
            "opcode 0xB",
            Sender::Client,
            frame(FIN | 0xB, b"", KEY),
            1002,
        ),
        (
            "opcode 0xF",
            Sender::Server,
            frame(FIN | 0xF, b"", None),
            1002,
        ),
        (
            "fragmented ping",
            Sender::Server,
            frame(PING, b"", None),
            1002,
        ),
        (
            "ping of 126",
            Sender::Server,
            frame(FIN | PING, &[b'p'; 126], None),
            1002,
        ),
        (
            "close of 1 byte",
            Sender::Server,
            frame(FIN | CLOSE, b"\x03", None),
            1002,
        ),
        (
            "continuation first",
            Sender::Server,
            frame(FIN | CONTINUATION, b"x", None),
            1002,
        ),
        (
            "text inside a message",
            Sender::Server,
            [frame(TEXT, b"a", None), frame(FIN | TEXT, b"b", None)].concat(),
            1002,
        ),
        ("non-minimal 16-bit", Sender::Server, long_u16(125), 1002),
        ("non-minimal 64-bit", Sender::Server, long_u64(0xffff), 1002),
        (
            "64-bit length with its top bit",
            Sender::Server,
            long_u64(1 << 63),
            1002,
        ),
        ("over max_frame", Sender::Server, long_u64(MAX + 1), 1009),
    ];
    let before = frame(FIN | TEXT, b"ok sk-ant", None);
    for (what, sender, bad, code) in cases {
        let good = match sender {
            Sender::Server => before.clone(),
            Sender::Client => frame(FIN | TEXT, b"ok sk-ant", KEY),
        };
        let input = [&good[..], bad, b"more"].concat();
        let o = same_at_every_split(*sender, &input);
        assert_eq!(o.refused, Some(Close { code: *code }), "{what}");
        // The frames before it went out whole, the held prefix released.
        let first_good = if what == &"text inside a message" {
            1
        } else {
            0
        };
        let want_len = good.len() + first_good * 3;
        assert_eq!(o.out, input[..want_len], "{what}");
    }
}

#[test]
fn lengths_of_16_and_64_bits_are_relayed_and_masked_across_them() {
    let mut big = vec![b'.'; 70_000];
    big[69_990..69_996].copy_from_slice(b"sk-ant");
    let mut mid = vec![b'-'; 300];
    mid[..5].copy_from_slice(b"-REAL");
    let (input, want) = server(&[(BINARY, &big), (FIN | CONTINUATION, &mid)]);
    assert_eq!(input[1], 127);
    assert_eq!(input[2 + 8 + 70_000 + 1], 126);
    let cuts = [1, 5, 69_995, 70_008, 70_011, 70_012, 70_013];
    for n in 0..cuts.len() {
        let o = run(Sender::Server, &input, &cuts[..n]);
        assert_eq!(
            (o.out == want, o.refused),
            (true, None),
            "cuts {:?}",
            &cuts[..n]
        );
        assert!(!has_token(&o.out));
    }
}

#[test]
fn a_held_prefix_waits_with_the_headers_behind_it_and_finish_releases_it() {
    let mut r = FrameRelay::new(Sender::Server, MAX);
    let mut out = Vec::new();
    let first = frame(TEXT, b"abc sk-an", None);
    let second = frame(FIN | PING, b"x", None);
    r.push(&[&first[..], &second[..]].concat(), tokens(), &mut out)
        .unwrap();
    // "sk-an" is held, and the ping after it waits too.
    assert_eq!(out, first[..first.len() - 5]);
    assert_eq!(r.held(), 5 + second.len());
    r.finish(tokens(), &mut out);
    assert_eq!(out, [&first[..], &second[..]].concat());
    assert_eq!(r.held(), 0);
    // Nothing is relayed after finish.
    assert_eq!(r.push(b"\x81\x00", tokens(), &mut out), Ok(Seen::default()));
}

#[test]
fn an_incomplete_header_is_held_until_it_can_be_judged() {
    let mut r = FrameRelay::new(Sender::Client, MAX);
    let mut out = Vec::new();
    let f = frame(FIN | TEXT, b"hello", Some([9, 8, 7, 6]));
    for (i, b) in f.iter().enumerate().take(5) {
        assert_eq!(r.push(&[*b], tokens(), &mut out), Ok(Seen::default()));
        assert_eq!((out.len(), r.held()), (0, i + 1));
    }
    let seen = r.push(&f[5..], tokens(), &mut out).unwrap();
    assert_eq!((out, seen.frames), (f, 1));
}

#[test]
fn client_frames_are_relayed_unchanged() {
    // The key 0 leaves the token readable on the wire: still relayed as is (not scrubbed).
    let input = [
        frame(TEXT, TOKEN, Some([0; 4])),
        frame(FIN | PING, b"p", Some([5; 4])),
        frame(FIN | CONTINUATION, b"z", Some([1, 2, 3, 4])),
    ]
    .concat();
    let o = same_at_every_split(Sender::Client, &input);
    assert_eq!((o.out, o.refused, o.seen.frames), (input, None, 3));
}

#[test]
fn a_close_is_written_whole_and_ends_the_direction() {
    let input = [
        frame(FIN | TEXT, b"bye sk-ant-R", None),
        frame(FIN | CLOSE, b"\x03\xe8sk-an", None),
        frame(FIN | TEXT, b"after", None),
    ]
    .concat();
    let close_end = input.len() - 7;
    let mut r = FrameRelay::new(Sender::Server, MAX);
    let mut out = Vec::new();
    let seen = r.push(&input, tokens(), &mut out).unwrap();
    assert_eq!(seen.close, Some(1000));
    assert!(seen.control);
    // Everything up to the close's end, the held prefixes released; nothing after it.
    assert_eq!(out, input[..close_end]);
    assert_eq!(
        r.push(b"\x81\x01x", tokens(), &mut out),
        Ok(Seen::default())
    );
    r.finish(tokens(), &mut out);
    assert_eq!(out.len(), close_end);
    let o = same_at_every_split(Sender::Server, &input);
    assert_eq!(
        (o.out, o.seen.close),
        (input[..close_end].to_vec(), Some(1000))
    );
}

#[test]
fn a_close_without_a_code_reports_1005_and_a_client_close_is_unmasked() {
    let o = run(Sender::Server, &frame(FIN | CLOSE, b"", None), &[]);
    assert_eq!(o.seen.close, Some(1005));
    let masked = frame(FIN | CLOSE, b"\x0f\xa0why", Some([0xaa, 0x55, 0x0f, 0xf0]));
    let o = same_at_every_split(Sender::Client, &masked);
    assert_eq!((o.seen.close, o.out), (Some(4000), masked));
}

#[test]
fn close_frame_round_trips_through_a_relay() {
    let plain = close_frame(1001, None);
    assert_eq!(plain, [0x88, 0x02, 0x03, 0xe9]);
    let o = run(Sender::Server, &plain, &[]);
    assert_eq!((o.seen.close, o.out, o.refused), (Some(1001), plain, None));
    let key = [0x12, 0x34, 0x56, 0x78];
    let masked = close_frame(1002, Some(key));
    assert_eq!(
        masked,
        [0x88, 0x82, 0x12, 0x34, 0x56, 0x78, 0x03 ^ 0x12, 0xea ^ 0x34]
    );
    let o = run(Sender::Client, &masked, &[]);
    assert_eq!((o.seen.close, o.out, o.refused), (Some(1002), masked, None));
}

#[test]
fn a_hold_followed_by_too_many_frames_is_refused() {
    let mut input = frame(TEXT, b"sk-", None);
    for _ in 0..HELD_FRAMES_MAX {
        input.extend(frame(FIN | PING, &[b'p'; 125], None));
    }
    let fine = run(Sender::Server, &input, &[]);
    assert_eq!(fine.refused, None);
    for _ in 0..20 {
        input.extend(frame(FIN | PONG, &[b'p'; 125], None));
    }
    input.extend(frame(FIN | CONTINUATION, b"ant-REAL", None));
    let o = run(Sender::Server, &input, &[7, 300, 5000]);
    assert_eq!(o.refused, Some(Close::POLICY));
    // The hold may span 10 * 15 + 139 * 65 = 9185 bytes after "sk-": the header of the 74th
    // control frame (127 bytes each) ends past it.
    assert_eq!(o.out, input[..5 + 73 * 127]);
}

#[test]
fn a_token_joining_mid_stream_takes_up_the_bytes_held_for_others() {
    let other = FixedToken::mask(b"sk-ant-OTHER");
    let both = [tokens()[0].clone(), other];
    let mut r = FrameRelay::new(Sender::Server, MAX);
    let mut out = Vec::new();
    r.push(&frame(TEXT, b"x sk-ant-", None), tokens(), &mut out)
        .unwrap();
    r.push(&frame(FIN | CONTINUATION, b"OTHER", None), &both, &mut out)
        .unwrap();
    r.finish(&both, &mut out);
    assert_eq!(data_of(&out), b"x ************");
}

/// A token split between payloads of different kinds, in wire order, is masked: the client
/// that joins every payload it receives never sees it whole.
#[test]
fn a_token_split_between_a_data_and_a_control_payload_or_two_pings_is_masked() {
    type Frames<'a> = &'a [(u8, &'a [u8])];
    let cases: &[(&str, Frames, &[u8])] = &[
        (
            "data|ping",
            &[(FIN | TEXT, b"a sk-ant-"), (FIN | PING, b"REAL b")],
            b"a ***********",
        ),
        (
            "ping|ping",
            &[(FIN | PING, b"x sk-ant"), (FIN | PING, b"-REAL y")],
            b"x *********** y",
        ),
        (
            "data|close payload",
            &[(FIN | BINARY, b"z sk-ant"), (FIN | CLOSE, b"-REAL bye")],
            b"z *********** bye",
        ),
    ];
    for &(name, frames, joined) in cases {
        let (input, want) = server(frames);
        let o = same_at_every_split(Sender::Server, &input);
        assert_eq!(o.out, want, "{name}");
        let all = payloads_of(&o.out, true);
        assert!(!has_token(&all), "{name}: token in the payloads joined");
        assert!(all.starts_with(joined), "{name}");
    }
}

/// The proxy may add a close frame only where no frame is part written.
#[test]
fn at_boundary_says_whether_a_frame_is_part_written() {
    let mut r = FrameRelay::new(Sender::Server, MAX);
    let mut out = Vec::new();
    assert!(r.at_boundary());
    let f = frame(FIN | TEXT, b"hello there", None);
    r.push(&f[..5], tokens(), &mut out).unwrap();
    assert!(!r.at_boundary(), "header and part of the payload written");
    r.push(&f[5..], tokens(), &mut out).unwrap();
    assert!(r.at_boundary());
    // Part of a header is held, not written.
    let g = frame(FIN | BINARY, &[7; 200], None);
    r.push(&g[..3], tokens(), &mut out).unwrap();
    assert!(r.at_boundary(), "a header being read is not written");
    r.push(&g[3..10], tokens(), &mut out).unwrap();
    assert!(!r.at_boundary());
    r.push(&g[10..], tokens(), &mut out).unwrap();
    assert!(r.at_boundary());
    // A held token prefix: its frame is complete, but written only up to the hold.
    r.push(&frame(TEXT, b"a sk-ant", None), tokens(), &mut out)
        .unwrap();
    assert!(!r.at_boundary(), "the frame was written up to the hold");
    r.push(&frame(FIN | CONTINUATION, b"-x", None), tokens(), &mut out)
        .unwrap();
    assert!(r.at_boundary());
    // A refusal ends the output where the refused frame began.
    r.push(&f[..5], tokens(), &mut out).unwrap();
    assert!(!r.at_boundary());
    let mut bad = f[5..].to_vec();
    bad.extend(frame(FIN | TEXT, b"x", Some([1, 2, 3, 4])));
    assert!(r.push(&bad, tokens(), &mut out).is_err());
    assert!(r.at_boundary());
    // The input ending inside a frame lets go of part of it.
    let mut r = FrameRelay::new(Sender::Client, MAX);
    let c = frame(FIN | TEXT, b"abc", Some([1, 2, 3, 4]));
    r.push(&c[..7], &[], &mut out).unwrap();
    r.finish(&[], &mut out);
    assert!(!r.at_boundary());
}
