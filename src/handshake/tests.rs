use super::*;
use crate::scrub::testing::tokens;

/// RFC 6455 §1.3's example.
const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &[u8; ACCEPT_LEN] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

#[test]
fn the_accept_key_is_the_rfc_6455_example() {
    assert_eq!(&accept(KEY), ACCEPT);
}

#[test]
fn only_the_base64_of_16_bytes_is_a_key() {
    assert!(is_base64_of_16(KEY));
    assert!(is_base64_of_16(b"AAAAAAAAAAAAAAAAAAAAAA=="));
    assert!(!is_base64_of_16(b"dGhlIHNhbXBsZSBub25jZR=="), "stray bits");
    assert!(!is_base64_of_16(b"dGhlIHNhbXBsZSBub25jZQ="));
    assert!(!is_base64_of_16(b"dGhlIHNhbXBsZSBub25jZQ=a"));
    assert!(!is_base64_of_16(b"dGhlIHNhbXBsZSBub25j-Q=="));
    assert!(!is_base64_of_16(b"Zm9vYmFy"));
}

#[test]
fn the_upgrade_list_is_read_case_insensitively() {
    assert_eq!(asked(b"websocket"), Asked::WebSocket);
    assert_eq!(asked(b"WebSocket"), Asked::WebSocket);
    assert_eq!(asked(b"h2c, websocket"), Asked::WebSocketAmong);
    assert_eq!(asked(b"websocket/13"), Asked::WebSocketAmong);
    assert_eq!(asked(b"websocket, h2c"), Asked::WebSocketAmong);
    assert_eq!(asked(b"h2c"), Asked::Other);
    assert_eq!(asked(b"websockets"), Asked::Other);
}

fn offer<'h>(fields: &[(&str, &'h [u8])]) -> Offer<'h> {
    let mut o = Offer::default();
    for (n, v) in fields {
        o.see(n.as_bytes(), v);
    }
    o
}

#[test]
fn the_offer_is_checked_strictly() {
    let good = [
        ("Connection", &b"keep-alive, Upgrade"[..]),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", b"13"),
    ];
    assert_eq!(offer(&good).check(), Ok(*ACCEPT));
    let bad: [&[(&str, &[u8])]; 5] = [
        &good[1..],
        &[good[0], good[2]],
        &[good[0], good[1], ("Sec-WebSocket-Version", b"8")],
        &[good[0], good[1], good[1], good[2]],
        &[good[0], ("Sec-WebSocket-Key", b"short"), good[2]],
    ];
    for (i, fields) in bad.iter().enumerate() {
        assert_eq!(
            offer(fields).check(),
            Err(Problem::BadHandshake),
            "case {i}"
        );
    }
}

#[test]
fn only_a_101_that_answers_the_offer_switches() {
    let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";
    let chat = offer(&[("Sec-WebSocket-Protocol", b"chat")]).protocols();
    let answer = |head: &[u8]| upstream_answer(head, ACCEPT, &chat, tokens());
    let judge = |extra: &str| answer(format!("{ok}{extra}\r\n").as_bytes());
    assert_eq!(judge(""), Ok(Answer::Switched { protocol: None }));
    assert_eq!(
        judge("Sec-WebSocket-Protocol: chat\r\n"),
        Ok(Answer::Switched {
            protocol: Some(b"chat".to_vec())
        })
    );
    for extra in [
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
        "Upgrade: websocket\r\n",
        "Sec-WebSocket-Protocol: a b\r\n",
    ] {
        assert_eq!(judge(extra), Err(Problem::UpstreamBadHandshake), "{extra}");
    }
    let wrong = ok.replace("s3pP", "AAAA");
    let head = format!("{wrong}\r\n");
    assert_eq!(answer(head.as_bytes()), Err(Problem::UpstreamBadHandshake));
    let no_upgrade = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\
                      Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    assert!(answer(no_upgrade.as_bytes()).is_err());
    let ordinary = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(answer(ordinary), Ok(Answer::Ordinary));
}

/// The subprotocol goes into the proxy's own 101, past the response masking: only one the
/// client offered, exactly, and never one holding a live token.
#[test]
fn the_upstream_may_only_pick_a_subprotocol_the_client_offered_and_no_token() {
    let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";
    let fields = [
        ("Sec-WebSocket-Protocol", &b"chat, v2.sk-ant-REAL"[..]),
        ("sec-websocket-protocol", b"json"),
    ];
    let offered = offer(&fields).protocols();
    let none = Protocols::default();
    let judge = |offered: &Protocols, p: &str| {
        let head = format!("{ok}Sec-WebSocket-Protocol: {p}\r\n\r\n");
        upstream_answer(head.as_bytes(), ACCEPT, offered, tokens())
    };
    for p in ["chat", "json"] {
        let want = Answer::Switched {
            protocol: Some(p.as_bytes().to_vec()),
        };
        assert_eq!(judge(&offered, p), Ok(want), "{p}");
    }
    let refused = Err(Problem::UpstreamBadHandshake);
    // Not offered (a token, a case variant, a part of an offer), or nothing was offered.
    for p in ["sk-ant-REAL", "Chat", "cha", "chat,json"] {
        assert_eq!(judge(&offered, p), refused, "{p}");
    }
    assert_eq!(judge(&none, "chat"), refused);
    // Offered, but it carries the credential.
    assert_eq!(judge(&offered, "v2.sk-ant-REAL"), refused);
    let plain = format!("{ok}\r\n");
    let switched = Answer::Switched { protocol: None };
    let answer = upstream_answer(plain.as_bytes(), ACCEPT, &none, tokens());
    assert_eq!(answer, Ok(switched));
}

#[test]
fn listed_paths_are_plain_and_matched_exactly() {
    let p = WebSocketPaths::parse("/v1/responses, /ws").unwrap();
    assert!(p.lists(b"/v1/responses"));
    assert!(p.lists(b"/ws"));
    assert!(!p.lists(b"/v1/responses/"));
    assert!(!p.lists(b"/V1/responses"));
    for bad in ["", "v1", "/a?b", "/a/../b", "/a%2f", "/a*", "/a b"] {
        assert!(WebSocketPaths::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_clients_101_names_what_rfc_6455_requires() {
    let mut out = Vec::new();
    switching(ACCEPT, Some(b"chat"), &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
    );
}
