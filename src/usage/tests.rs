use super::*;
use crate::limits::USAGE_EVENT_MAX;

const ANTHROPIC: &[u8] = include_bytes!("../../tests/fixtures/anthropic-stream.sse");
const RESPONSES: &[u8] = include_bytes!("../../tests/fixtures/openai-responses-stream.sse");
const CHAT: &[u8] = include_bytes!("../../tests/fixtures/openai-chat-stream.sse");
const GEMINI: &[u8] = include_bytes!("../../tests/fixtures/gemini-stream.sse");
const MESSAGE: &[u8] = include_bytes!("../../tests/fixtures/anthropic-message.json");

/// The figures each fixture's events give: `[input, output, cache read, cache creation]`.
fn expected(name: &str) -> ([Option<u64>; 4], &'static str) {
    match name {
        "anthropic" => (
            [Some(18342), Some(679), Some(16384), Some(0)],
            "claude-sonnet-4-5-20250929",
        ),
        // 21034 input tokens of which 19968 cached; 311 output.
        "responses" => ([Some(1066), Some(311), Some(19968), None], "gpt-5-codex"),
        // 4210 prompt tokens of which 3072 cached.
        "chat" => (
            [Some(1138), Some(38), Some(3072), None],
            "gpt-4.1-2025-04-14",
        ),
        // 9120 prompt tokens of which 8192 cached; 17 candidates and 513 thoughts.
        "gemini" => ([Some(928), Some(530), Some(8192), None], "gemini-2.5-pro"),
        "message" => (
            [Some(2095), Some(503), Some(40960), Some(1024)],
            "claude-opus-4-1-20250805",
        ),
        _ => unreachable!(),
    }
}

fn fixtures() -> [(&'static str, BodyKind, &'static [u8]); 5] {
    [
        ("anthropic", BodyKind::Sse, ANTHROPIC),
        ("responses", BodyKind::Sse, RESPONSES),
        ("chat", BodyKind::Sse, CHAT),
        ("gemini", BodyKind::Sse, GEMINI),
        ("message", BodyKind::Json, MESSAGE),
    ]
}

fn observe(kind: BodyKind, pieces: &[&[u8]]) -> Usage {
    let mut o = Observer::new(kind).unwrap();
    for p in pieces {
        o.feed(p);
        assert!(o.held() <= USAGE_EVENT_MAX);
    }
    o.finish();
    o.usage()
}

fn check(name: &str, u: &Usage, at: usize) {
    let (kinds, model) = expected(name);
    assert_eq!(u.kinds(), kinds, "{name} split at {at}");
    assert_eq!(u.model(), Some(model), "{name} split at {at}");
}

#[test]
fn each_api_read_whole() {
    for (name, kind, bytes) in fixtures() {
        check(name, &observe(kind, &[bytes]), 0);
    }
}

/// The Anthropic fixture's first and last events (whole events, the usage ones among them),
/// so that splitting at every boundary stays quick in a debug build.
fn anthropic_ends() -> Vec<u8> {
    let cut = |s: &[u8], from_end: bool| -> usize {
        let blank = memchr::memmem::find_iter(s, b"\n\n").map(|n| n + 2);
        let ends: Vec<usize> = blank.collect();
        if from_end {
            ends[ends.len() - 8]
        } else {
            ends[8]
        }
    };
    let mut short = ANTHROPIC[..cut(ANTHROPIC, false)].to_vec();
    short.extend_from_slice(&ANTHROPIC[cut(ANTHROPIC, true)..]);
    short
}

#[test]
fn each_api_split_at_every_byte_boundary() {
    let short = anthropic_ends();
    let mut all = fixtures().to_vec();
    all[0].2 = &short;
    for (name, kind, bytes) in all {
        for at in 0..=bytes.len() {
            let u = observe(kind, &[&bytes[..at], &bytes[at..]]);
            check(name, &u, at);
        }
    }
    // The whole Anthropic stream, split every few bytes.
    for at in (0..=ANTHROPIC.len()).step_by(61) {
        let u = observe(BodyKind::Sse, &[&ANTHROPIC[..at], &ANTHROPIC[at..]]);
        check("anthropic", &u, at);
    }
}

#[test]
fn each_api_in_one_byte_pieces() {
    for (name, kind, bytes) in fixtures() {
        let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
        check(name, &observe(kind, &pieces), 1);
    }
}

#[test]
fn each_api_split_at_every_pair_of_boundaries_near_the_usage() {
    // Two cuts, both within the usage event's neighbourhood: keys straddling two feeds.
    for (name, kind, bytes) in fixtures() {
        let key = memchr::memmem::rfind(bytes, b"\"usage").unwrap();
        let lo = key.saturating_sub(24);
        let hi = (key + 48).min(bytes.len());
        for a in lo..hi {
            for b in a..hi {
                let u = observe(kind, &[&bytes[..a], &bytes[a..b], &bytes[b..]]);
                check(name, &u, a * 100_000 + b);
            }
        }
    }
}

#[test]
fn output_is_the_last_cumulative_figure_never_a_sum() {
    let s = b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":5}}\n\n\
              event: message_delta\ndata: {\"usage\":{\"output_tokens\":12}}\n\n";
    assert_eq!(observe(BodyKind::Sse, &[s]).output, Some(12));
}

#[test]
fn malformed_or_oversized_usage_is_skipped() {
    let good = b"event: message_start\ndata: {\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":3}}}\n\n";
    let mut stream = good.to_vec();
    // Not JSON after the key; an object that never closes; a fraction; a negative figure.
    stream.extend_from_slice(b"event: message_delta\ndata: {\"usage\":[1,2\n\n");
    stream.extend_from_slice(b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":4\n\n");
    stream
        .extend_from_slice(b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":4.5}}\n\n");
    stream.extend_from_slice(b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":-4}}\n\n");
    // Larger than the cap: its usage object does not close within it.
    let mut big = b"event: message_delta\ndata: {\"usage\":{\"x\":\"".to_vec();
    big.resize(big.len() + USAGE_EVENT_MAX, b'a');
    big.extend_from_slice(b"\",\"output_tokens\":7}}\n\n");
    stream.extend_from_slice(&big);
    let u = observe(BodyKind::Sse, &[&stream]);
    assert_eq!(u.kinds(), [Some(3), None, None, None]);
    assert_eq!(u.model(), Some("m"));
}

#[test]
fn model_names_are_sanitised() {
    assert_eq!(
        Model::new(b"claude-sonnet-4-5").as_str(),
        Some("claude-sonnet-4-5")
    );
    assert_eq!(
        Model::new(b"models/gemini-2.5-pro").as_str(),
        Some("models/gemini-2.5-pro")
    );
    for bad in [
        &b""[..],
        b"a b",
        b"a\"b",
        b"a\\b",
        b"a\nb",
        "é".as_bytes(),
        &[b'm'; 65],
    ] {
        assert_eq!(Model::new(bad).as_str(), None);
    }
    let s = b"{\"model\":\"evil\\u001b[31m\",\"usage\":{\"input_tokens\":1}}";
    let u = observe(BodyKind::Json, &[s]);
    assert_eq!((u.input, u.model()), (Some(1), None));
}

#[test]
fn content_types() {
    assert_eq!(
        BodyKind::of(b"text/event-stream; charset=utf-8"),
        BodyKind::Sse
    );
    assert_eq!(BodyKind::of(b"Application/JSON"), BodyKind::Json);
    assert_eq!(BodyKind::of(b"application/problem+json"), BodyKind::Json);
    assert_eq!(BodyKind::of(b"text/plain"), BodyKind::Other);
    assert!(Observer::new(BodyKind::Other).is_none());
}

#[test]
fn a_json_body_is_read_only_when_it_ended() {
    let mut o = Observer::new(BodyKind::Json).unwrap();
    o.feed(MESSAGE);
    assert_eq!(o.usage().kinds(), [None; 4]);
    o.finish();
    assert_eq!(o.usage().total(), 2095 + 503 + 40960 + 1024);
}

#[test]
fn only_usage_keys_are_read_never_text_that_mentions_them() {
    // Text and tool input are JSON strings: their quotes are escaped, so no key matches.
    let s = b"event: content_block_delta\ndata: {\"delta\":{\"text\":\"\\\"usage\\\":{\\\"input_tokens\\\":9}\"}}\n\n";
    let u = observe(BodyKind::Sse, &[s]);
    assert!(u.is_empty(), "{u:?}");
    // A usage object is read when its line ends.
    let s = b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":9}}\n";
    assert_eq!(observe(BodyKind::Sse, &[s]).output, Some(9));
    let s = b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":9}}";
    assert!(observe(BodyKind::Sse, &[s]).is_empty());
    // `"usage":null` (OpenAI's chunks before the last) is no figure.
    let s = b"data: {\"model\":\"m\",\"usage\":null}\n\n";
    assert_eq!(observe(BodyKind::Sse, &[s]).kinds(), [None; 4]);
}

#[test]
fn in_json_only_the_last_usage_object_counts() {
    let s = b"{\"model\":\"a\",\"content\":[{\"input\":{\"usage\":{\"input_tokens\":1,\"cache_creation_input_tokens\":5},\"model\":\"b\"}}],\n\"usage\":{\"input_tokens\":2}}";
    for at in 0..=s.len() {
        let u = observe(BodyKind::Json, &[&s[..at], &s[at..]]);
        assert_eq!(u.kinds(), [Some(2), None, None, None], "split at {at}");
        assert_eq!(u.model(), Some("a"));
    }
}

#[test]
fn the_model_is_the_first_plain_model_key() {
    let s = b"data: {\"role\":\"model\",\"x\":\"\\\"model\\\": \\\"q\\\"\",\"modelVersion\" : \"g-1\",\"usageMetadata\":{\"promptTokenCount\":3}}\r\n\r\n";
    for at in 0..=s.len() {
        let u = observe(BodyKind::Sse, &[&s[..at], &s[at..]]);
        assert_eq!(
            (u.model(), u.input),
            (Some("g-1"), Some(3)),
            "split at {at}"
        );
    }
}
