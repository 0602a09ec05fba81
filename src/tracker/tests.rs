use super::*;

use crate::scrub::testing::tokens;

/// Drives a tracker over `input` split at `splits`, as the relay does; returns what the client
/// receives and whether the body ended cleanly with excess bytes.
fn relay(
    body: ResponseBody,
    dechunk: bool,
    input: &[u8],
    splits: &[usize],
) -> Result<(Vec<u8>, bool, bool), Problem> {
    let mut t = BodyTracker::new(body, dechunk, tokens());
    let mut buf: Vec<u8> = Vec::new();
    let mut sent = Vec::new();
    let mut last = 0;
    let mut old = 0;
    for &cut in splits
        .iter()
        .filter(|&&c| c <= input.len())
        .chain(std::iter::once(&input.len()))
    {
        buf.truncate(old);
        buf.extend_from_slice(&input[last..cut]);
        last = cut;
        let a = t.advance(&mut buf, old)?;
        assert!(a.ready <= a.keep && a.keep <= buf.len());
        sent.extend_from_slice(&buf[..a.ready]);
        if a.done {
            return Ok((sent, true, a.excess));
        }
        buf.copy_within(a.ready..a.keep, 0);
        t.shifted(a.ready);
        old = a.keep - a.ready;
    }
    buf.truncate(old);
    if t.finish_at_close() {
        sent.extend_from_slice(&buf);
    }
    Ok((sent, false, false))
}

#[test]
fn tracks_body_ends_and_excess() {
    let (sent, done, excess) = relay(ResponseBody::Length(5), false, b"hello", &[]).unwrap();
    assert_eq!(
        (sent.as_slice(), done, excess),
        (&b"hello"[..], true, false)
    );
    let (sent, done, excess) = relay(ResponseBody::Length(5), false, b"helloEXTRA", &[]).unwrap();
    assert_eq!((sent.as_slice(), done, excess), (&b"hello"[..], true, true));
    let (sent, done, _) = relay(ResponseBody::Length(5), false, b"hel", &[]).unwrap();
    assert_eq!((sent.as_slice(), done), (&b"hel"[..], false));
    let (sent, done, excess) =
        relay(ResponseBody::Chunked, false, b"3\r\nabc\r\n0\r\n\r\nX", &[]).unwrap();
    assert_eq!(
        (sent.as_slice(), done, excess),
        (&b"3\r\nabc\r\n0\r\n\r\n"[..], true, true)
    );
    assert_eq!(
        relay(ResponseBody::Chunked, false, b"3\r\nabcd\r\n", &[]),
        Err(Problem::UpstreamMalformed)
    );
    let (sent, done, _) = relay(ResponseBody::UntilClose, false, b"all of it", &[4]).unwrap();
    assert_eq!((sent.as_slice(), done), (&b"all of it"[..], false));
}

/// The token is masked in Content-Length, chunked (split across chunks) and SSE bodies,
/// wherever the reads split it, and the framing is untouched.
#[test]
fn masks_the_token_in_bodies_at_every_split() {
    let body = b"data: {\"echo\":\"sk-ant-REAL\"}\n\n";
    let masked = b"data: {\"echo\":\"***********\"}\n\n";
    // The token split across two chunks: "sk-an" | "t-REAL...".
    let chunked = b"14\r\ndata: {\"echo\":\"sk-an\r\na\r\nt-REAL\"}\n\n\r\n0\r\n\r\n";
    let chunked_masked = b"14\r\ndata: {\"echo\":\"*****\r\na\r\n******\"}\n\n\r\n0\r\n\r\n";
    let cases: [(ResponseBody, &[u8], &[u8]); 3] = [
        (ResponseBody::Length(body.len() as u64), body, masked),
        (ResponseBody::UntilClose, body, masked),
        (ResponseBody::Chunked, chunked, chunked_masked),
    ];
    for (kind, input, want) in cases {
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let (sent, _, _) = relay(kind, false, input, &[a, b]).unwrap();
                assert_eq!(sent, want, "{kind:?} split at {a},{b}");
            }
        }
    }
}

#[test]
fn dechunks_for_http_1_0_clients_at_every_split() {
    let input = b"5\r\nsk-an\r\n6;x=y\r\nt-REAL\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n";
    for a in 0..=input.len() {
        for b in a..=input.len() {
            let (sent, done, _) = relay(ResponseBody::Chunked, true, input, &[a, b]).unwrap();
            assert_eq!(sent, b"***********abc", "split at {a},{b}");
            assert!(done);
        }
    }
}

/// Fuzz finding: a reflected token in chunk extensions or trailers (relayed as framed) is
/// masked too, wherever the reads split it; de-chunked output drops them altogether.
#[test]
fn masks_the_token_in_chunk_extensions_and_trailers_at_every_split() {
    let input = b"1;x=sk-ant-REAL\r\na\r\n0\r\nX-Echo: sk-ant-REAL\r\n\r\n";
    let want = b"1;x=***********\r\na\r\n0\r\nX-Echo: ***********\r\n\r\n";
    for a in 0..=input.len() {
        for b in a..=input.len() {
            let (sent, done, _) = relay(ResponseBody::Chunked, false, input, &[a, b]).unwrap();
            assert_eq!(sent, want, "split at {a},{b}");
            assert!(done);
            let (sent, _, _) = relay(ResponseBody::Chunked, true, input, &[a, b]).unwrap();
            assert_eq!(sent, b"a");
        }
    }
}

/// Review finding: once the last chunk is read no payload can complete a held token prefix,
/// so the hold is released before the trailers (which may be long).
#[test]
fn a_held_token_prefix_is_released_at_the_last_chunk() {
    let mut t = BodyTracker::new(ResponseBody::Chunked, false, tokens());
    let mut buf = b"5\r\nsk-an\r\n".to_vec();
    let a = t.advance(&mut buf, 0).unwrap();
    assert!(
        a.ready < a.keep,
        "the prefix is held while payload may follow"
    );
    let mut buf = b"5\r\nsk-an\r\n0\r\n".to_vec();
    let mut t = BodyTracker::new(ResponseBody::Chunked, false, tokens());
    let a = t.advance(&mut buf, 0).unwrap();
    assert_eq!((a.ready, a.keep), (buf.len(), buf.len()));
}

/// Drives a tracker that observes usage over `input` split at `cut`; returns what the client
/// receives and the usage found.
fn relay_observed(
    body: ResponseBody,
    dechunk: bool,
    input: &[u8],
    cut: usize,
    observe: bool,
) -> (Vec<u8>, Option<crate::usage::Usage>) {
    use crate::usage::{BodyKind, Observer};
    let mut t = BodyTracker::new(body, dechunk, tokens());
    if observe {
        t.observe(Observer::new(BodyKind::Sse).unwrap());
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut sent = Vec::new();
    let mut old = 0;
    for piece in [&input[..cut], &input[cut..]] {
        buf.truncate(old);
        buf.extend_from_slice(piece);
        let a = t.advance(&mut buf, old).unwrap();
        sent.extend_from_slice(&buf[..a.ready]);
        assert!(t.usage_held() <= crate::limits::USAGE_EVENT_MAX);
        if a.done {
            break;
        }
        buf.copy_within(a.ready..a.keep, 0);
        t.shifted(a.ready);
        old = a.keep - a.ready;
    }
    (sent, t.usage())
}

#[test]
fn usage_is_read_from_the_payload_of_a_chunked_stream_split_anywhere() {
    let events: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":3}}}\n\nevent: content_block_delta\ndata: {\"delta\":{\"text\":\"\\\"usage\\\":{\\\"input_tokens\\\":999}\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n";
    // Chunk boundaries inside the keys and numbers, and a chunk extension.
    let mut chunked = Vec::new();
    for (i, piece) in events.chunks(37).enumerate() {
        let ext = if i == 2 { ";usage=\"x\"" } else { "" };
        chunked.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for dechunk in [false, true] {
        for cut in 0..=chunked.len() {
            let (on, usage) = relay_observed(ResponseBody::Chunked, dechunk, &chunked, cut, true);
            let (off, none) = relay_observed(ResponseBody::Chunked, dechunk, &chunked, cut, false);
            assert_eq!(on, off, "the relayed bytes are the same, observed or not");
            assert_eq!(on, if dechunk { events } else { &chunked[..] });
            assert!(none.is_none());
            let u = usage.unwrap();
            assert_eq!(
                u.kinds(),
                [Some(12), Some(7), Some(3), None],
                "cut at {cut}"
            );
            assert_eq!(u.model(), Some("claude-x"));
        }
    }
}
