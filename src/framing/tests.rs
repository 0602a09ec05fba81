use super::*;

const LIMITS: ChunkLimits = ChunkLimits {
    max_body: 1 << 20,
    max_ext_line: 32,
    max_ext_total: 64,
    max_trailers: 64,
};

/// Feeds `input` to a fresh decoder in pieces cut at `splits`, as a relay would.
fn incremental(
    input: &[u8],
    splits: &[usize],
    limits: ChunkLimits,
) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    let mut d = ChunkedDecoder::new(limits);
    let mut payload = Vec::new();
    let mut pos = 0;
    let mut bounds: Vec<usize> = splits
        .iter()
        .copied()
        .filter(|&s| s <= input.len())
        .collect();
    bounds.push(input.len());
    for end in bounds {
        while pos < end {
            match d.step(&input[pos..end])? {
                Step::Data(n) => {
                    payload.extend_from_slice(&input[pos..pos + n]);
                    pos += n;
                }
                Step::Framing(n) | Step::Meta(n) => pos += n,
                Step::Done(n) => return Ok(Some((payload, pos + n))),
            }
        }
    }
    Ok(None)
}

#[test]
fn decodes_valid_bodies() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"0\r\n\r\n", b""),
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
        (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"5 \r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5 ;a=b\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5;a=\"q s\";b\r\nhello\r\n000\r\n\r\n", b"hello"),
        (b"5\r\nhello\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n", b"hello"),
        (b"0000000000000005\r\nhello\r\n0\r\n\r\n", b"hello"),
    ];
    for (input, want) in cases {
        let got = incremental(input, &[], LIMITS).unwrap().unwrap();
        assert_eq!(
            (got.0.as_slice(), got.1),
            (*want, input.len()),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

/// docs/http-rules.md §1.5: what httparse's chunk-size parser accepts and we must not.
#[test]
fn refuses_what_httparse_would_accept() {
    use ChunkError::*;
    let cases: &[(&str, &[u8], ChunkError)] = &[
        ("empty size line", b"\r\nhello\r\n0\r\n\r\n", Malformed),
        ("space-only size line", b" \r\n", Malformed),
        ("leading space", b" 5\r\nhello\r\n", Malformed),
        ("bare LF after size", b"5\nhello\r\n", Malformed),
        ("LF inside extension", b"5;a\nb\r\nhello\r\n", Malformed),
        ("NUL inside extension", b"5;a\x00b\r\nhello\r\n", Malformed),
        ("CR CR LF", b"5;a\r\r\n", Malformed),
        ("0x prefix", b"0x5\r\n", Malformed),
        ("plus sign", b"+5\r\n", Malformed),
        ("underscore", b"0_5\r\n", Malformed),
        ("bare semicolon", b"5;\r\nhello\r\n", Malformed),
        ("17 hex digits", b"00000000000000005\r\n", TooLarge),
        ("u64::MAX over the body limit", b"ffffffffffffffff\r\n", TooLarge),
        ("data longer than its size", b"3\r\nhello\r\n", Malformed),
        ("missing CRLF after data", b"5\r\nhelloX\r\n", Malformed),
        ("bare LF after data", b"5\r\nhello\n0\r\n\r\n", Malformed),
        ("obs-fold trailer", b"0\r\nX: 1\r\n  y\r\n\r\n", Malformed),
        ("bare LF in trailer", b"0\r\nX: 1\n\r\n", Malformed),
        ("bare LF final line", b"0\r\n\n", Malformed),
        ("extension too long", b"1;aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", ExtensionTooLong),
        // Review finding: whitespace after the size is bounded like an extension.
        ("unbounded whitespace after the size", b"5                                          \r\nhello\r\n", ExtensionTooLong),
        ("trailers too long", b"0\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n", TrailersTooLarge),
    ];
    for (what, input, want) in cases {
        assert_eq!(incremental(input, &[], LIMITS), Err(*want), "{what}");
    }
    // Extension bytes summed over the body.
    let many = b"1;aaaaaaaaaaaaaaaaaaaaaaaaaa\r\nx\r\n1;bbbbbbbbbbbbbbbbbbbbbbbbbb\r\nx\r\n1;cccccccccccccccccccccccc\r\nx\r\n0\r\n\r\n";
    assert_eq!(incremental(many, &[], LIMITS), Err(ExtensionTooLong));
    // Total payload over the body limit.
    let small = ChunkLimits {
        max_body: 4,
        ..LIMITS
    };
    assert_eq!(
        incremental(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", &[], small),
        Err(TooLarge)
    );
}

#[test]
fn stops_exactly_at_the_end_of_the_body() {
    let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    let (payload, consumed) = incremental(input, &[], LIMITS).unwrap().unwrap();
    assert_eq!((payload.as_slice(), consumed), (&b"abc"[..], 13));
}

fn corpus() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
        b"5;a=b;c\r\nhello\r\n0\r\nX: y\r\n\r\ntail".to_vec(),
        b"1\r\na\r\n\r\n".to_vec(),
        b"5\r\nhel".to_vec(),
        b"5;a\nb\r\nhello\r\n0\r\n\r\n".to_vec(),
        b"0\r\n\r\n".to_vec(),
        b"0\r\nX: 1\r\n".to_vec(),
    ];
    // An Anthropic SSE stream, chunked the way an upstream would, in uneven chunks.
    let sse = include_bytes!("../../tests/fixtures/anthropic-stream.sse");
    let mut chunked = Vec::new();
    for piece in sse[..2000].chunks(97) {
        write_chunk_header(&mut chunked, piece.len());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(LAST_CHUNK);
    v.push(chunked);
    v
}

/// The incremental decoder, fed any two-way split, agrees with itself whole and with the
/// naive oracle (exactly on success; on errors; incomplete or error when the oracle is short).
#[test]
fn incremental_agrees_with_the_oracle_at_every_split_point() {
    for input in corpus() {
        let oracle = decode_naive(&input, LIMITS);
        let whole = incremental(&input, &[], LIMITS);
        match &oracle {
            Ok(Some(_)) => assert_eq!(whole, oracle),
            Err(_) => assert!(whole.is_err()),
            Ok(None) => assert!(matches!(whole, Ok(None) | Err(_))),
        }
        for split in 0..=input.len() {
            assert_eq!(
                incremental(&input, &[split], LIMITS),
                whole,
                "split at {split}"
            );
        }
        if input.len() < 200 {
            for a in 0..=input.len() {
                for b in a..=input.len() {
                    assert_eq!(
                        incremental(&input, &[a, b], LIMITS),
                        whole,
                        "split at {a},{b}"
                    );
                }
            }
        }
    }
}

#[test]
fn chunk_headers_are_lower_hex_without_padding() {
    let mut out = Vec::new();
    for n in [1usize, 9, 10, 255, 4096, 0x1234_5678] {
        out.clear();
        write_chunk_header(&mut out, n);
        assert_eq!(out, format!("{n:x}\r\n").into_bytes());
    }
}

#[test]
fn extension_and_trailer_text_is_reported_as_meta() {
    let input = b"5;ab=c\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
    let mut d = ChunkedDecoder::new(LIMITS);
    let mut pos = 0;
    let mut steps = Vec::new();
    while pos < input.len() {
        let s = d.step(&input[pos..]).unwrap();
        let n = match s {
            Step::Framing(n) | Step::Meta(n) | Step::Data(n) | Step::Done(n) => n,
        };
        steps.push((
            s,
            String::from_utf8_lossy(&input[pos..pos + n]).into_owned(),
        ));
        pos += n;
    }
    let kinds: Vec<(&str, &str)> = steps
        .iter()
        .map(|(s, t)| {
            let k = match s {
                Step::Framing(_) => "framing",
                Step::Meta(_) => "meta",
                Step::Data(_) => "data",
                Step::Done(_) => "done",
            };
            (k, t.as_str())
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("framing", "5;"),
            ("meta", "ab=c"),
            ("framing", "\r\n"),
            ("data", "hello"),
            ("framing", "\r\n0\r\n"),
            ("meta", "X-T: 1"),
            ("done", "\r\n\r\n"),
        ]
    );
}

// The request body framer (re-chunking toward the upstream).
use crate::error::Problem;

#[test]
fn length_bodies_stop_at_their_end() {
    let mut u = RequestBody::new(BodyKind::Length(5), 100, 10, 10);
    let mut out = Vec::new();
    assert_eq!(u.frame(b"abc", &mut out).unwrap(), Framed::Raw(3));
    assert_eq!(
        u.frame(b"deGET / HTTP/1.1", &mut out).unwrap(),
        Framed::Raw(2)
    );
    assert!(u.is_done());
    assert!(out.is_empty());
}

#[test]
fn chunked_bodies_are_reencoded_canonically_at_every_split() {
    let input = b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let body_len = input.len() - 4;
    for split in 0..=input.len() {
        let mut u = RequestBody::new(BodyKind::Chunked, 100, 10, 100);
        let mut out = Vec::new();
        let mut consumed = 0;
        for part in [&input[..split], &input[split..]] {
            let mut pos = 0;
            while pos < part.len() && !u.is_done() {
                match u.frame(&part[pos..], &mut out).unwrap() {
                    Framed::Encoded(n) => pos += n,
                    Framed::Raw(_) => unreachable!("chunked bodies are encoded"),
                }
            }
            consumed += pos;
        }
        assert_eq!(consumed, body_len, "split {split}");
        let (payload, _) = decode_naive(&out, ChunkLimits::RESPONSE).unwrap().unwrap();
        assert_eq!(payload, b"abc0123456789abcdef");
        assert!(out.ends_with(b"\r\n0\r\n\r\n"));
        assert!(!out.windows(3).any(|w| w == b"ext"), "extensions dropped");
        assert!(!out.windows(7).any(|w| w == b"Trailer"), "trailers dropped");
    }
}

#[test]
fn chunk_errors_map_to_client_problems() {
    let mut u = RequestBody::new(BodyKind::Chunked, 4, 10, 10);
    assert_eq!(
        u.frame(b"5\r\n", &mut Vec::new()),
        Err(Problem::BodyTooLarge)
    );
    let mut u = RequestBody::new(BodyKind::Chunked, 100, 10, 10);
    assert_eq!(u.frame(b"\r\n", &mut Vec::new()), Err(Problem::BadChunk));
}
