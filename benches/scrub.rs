//! What token scrubbing costs on the SSE path, measured in-process (no sockets, so the
//! figure is not lost in the kernel's share, which dominates end to end).
//!
//! The SSE fixture is chunked one event per chunk and delivered one chunk per read, as a
//! paced stream arrives. It is relayed (a) through the chunked decoder alone, which is the
//! framing work the relay must do anyway, and (b) through `response::BodyTracker`, which adds
//! payload and extension/trailer scrubbing. Both loops copy each read into a buffer first, as
//! the relay does. The bench checks the bytes it times: (b) must pass every event unchanged
//! and unheld, and, in a second input where every 50th event reflects the token, mask each
//! occurrence. `cargo bench --bench scrub` (`-- --quick` for fewer rounds).

use std::hint::black_box;
use std::time::Instant;

use agent_loop_proxy::framing::{
    write_chunk_header, ChunkLimits, ChunkedDecoder, Step, LAST_CHUNK,
};
use agent_loop_proxy::response::ResponseBody;
use agent_loop_proxy::scrub::{FixedToken, Mask};
use agent_loop_proxy::tracker::BodyTracker;

/// An OAuth-token-shaped credential of realistic length.
const TOKEN: &[u8] = b"sk-ant-oat01-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdEfGhIjKlMnOpQr";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        // `cargo test --benches` runs bench targets with no arguments: not a bench run.
        println!("scrub bench: not run under cargo test; use `cargo bench --bench scrub`");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = if quick { 100 } else { 1000 };

    let sse = include_bytes!("fixtures/anthropic-stream.sse");
    let events: Vec<Vec<u8>> = sse
        .split_inclusive(|&b| b == b'\n')
        .fold(vec![Vec::new()], |mut acc, line| {
            acc.last_mut().unwrap().extend_from_slice(line);
            if line == b"\n" {
                acc.push(Vec::new());
            }
            acc
        })
        .into_iter()
        .filter(|e| !e.is_empty())
        .collect();
    let reflected: Vec<Vec<u8>> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if i % 50 == 25 {
                [b"data: {\"echo\":\"".as_slice(), TOKEN, b"\"}\n\n"].concat()
            } else {
                e.clone()
            }
        })
        .collect();
    let finder = FixedToken::mask(TOKEN);

    let plain_reads = chunked_reads(&events);
    let decoder_ns = per_event(rounds, &plain_reads, decode_only);
    let tracker_ns = per_event(rounds, &plain_reads, |reads| tracked(reads, &finder, false));
    let reflected_reads = chunked_reads(&reflected);
    let reflected_ns = per_event(rounds, &reflected_reads, |reads| {
        tracked(reads, &finder, true)
    });

    println!("| path | ns/event | vs decoder only |");
    println!("|---|---:|---:|");
    println!("| chunked decoder only (framing) | {decoder_ns:.0} | 1.00 |");
    println!(
        "| decoder + scrubbing, no token in the stream | {tracker_ns:.0} | {:.2} |",
        tracker_ns / decoder_ns
    );
    println!(
        "| decoder + scrubbing, token in every 50th event | {reflected_ns:.0} | {:.2} |",
        reflected_ns / decoder_ns
    );
    println!(
        "\nscrub bench: {} events of {} bytes on average, {rounds} rounds; the added cost is {:.0} ns per event",
        events.len(),
        sse.len() / events.len(),
        tracker_ns - decoder_ns
    );
}

/// One read per event: `<hex>\r\n<event>\r\n`, and a last read with the last chunk.
fn chunked_reads(events: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut reads: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            let mut r = Vec::with_capacity(e.len() + 12);
            write_chunk_header(&mut r, e.len());
            r.extend_from_slice(e);
            r.extend_from_slice(b"\r\n");
            r
        })
        .collect();
    reads.push(LAST_CHUNK.to_vec());
    reads
}

/// Mean ns per event over `rounds` relays of `reads` (after one warm-up relay).
fn per_event(rounds: usize, reads: &[Vec<u8>], relay: impl Fn(&[Vec<u8>]) -> usize) -> f64 {
    relay(reads);
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        bytes += relay(black_box(reads));
    }
    let ns = start.elapsed().as_nanos() as f64;
    black_box(bytes);
    ns / (rounds * (reads.len() - 1)) as f64
}

/// The framing work alone: decode every read, return the payload byte count.
fn decode_only(reads: &[Vec<u8>]) -> usize {
    let mut d = ChunkedDecoder::new(ChunkLimits::RESPONSE);
    let mut buf = Vec::with_capacity(4096);
    let mut payload = 0;
    for r in reads {
        buf.clear();
        buf.extend_from_slice(r);
        let mut pos = 0;
        while pos < buf.len() {
            match d.step(&buf[pos..]).expect("valid chunked body") {
                Step::Data(n) => {
                    payload += n;
                    pos += n;
                }
                Step::Framing(n) | Step::Meta(n) | Step::Done(n) => pos += n,
            }
        }
    }
    assert!(d.is_done());
    payload
}

/// The relay's work: the body tracker (framing + scrubbing) over every read. Checks that no
/// event is held back and that exactly the reflected tokens are masked.
fn tracked(reads: &[Vec<u8>], finder: &Mask, expect_masks: bool) -> usize {
    let tokens = [finder.clone()];
    let mut t = BodyTracker::new(ResponseBody::Chunked, false, &tokens);
    let mut buf = Vec::with_capacity(4096);
    let mut sent = 0;
    let mut masked = 0;
    for r in reads {
        buf.clear();
        buf.extend_from_slice(r);
        let a = t.advance(&mut buf, 0).expect("valid chunked body");
        assert_eq!(a.ready, buf.len(), "an SSE event was held back");
        if buf != *r {
            assert!(
                !buf.windows(TOKEN.len()).any(|w| w == TOKEN),
                "token not masked"
            );
            masked += 1;
        }
        sent += a.ready;
    }
    assert!(t.is_done());
    assert_eq!(masked > 0, expect_masks, "masked {masked} events");
    sent
}
