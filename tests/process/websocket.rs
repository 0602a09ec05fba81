//! WebSocket through the real binary: 426 by default; with `WEBSOCKET_PATHS`, a tunnel to an
//! in-test WebSocket upstream that gets the real credential and no extension, whose frames
//! are checked both ways and whose reflected token is masked; handshakes the upstream does
//! not complete, the idle timeout, SIGTERM, the phantom token and ALLOW_REQUESTS.

use std::sync::mpsc;
use std::time::Duration;

use crate::support::websocket::*;
use crate::support::*;

const PATHS: (&str, &str) = ("WEBSOCKET_PATHS", "/v1/responses");

/// What the upstream received after its 101: its head, the data frames, the close code.
type Report = (String, Vec<Frame>, Option<u16>);

/// An upstream that completes the handshake, sends `frames` (raw), then reports the head it
/// received and what came after it (until the proxy closes, bounded).
fn ws_upstream(frames: Vec<Vec<u8>>) -> (Upstream, mpsc::Receiver<Report>) {
    let (tx, rx) = mpsc::channel();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        let Some(head) = answer_handshake(c, &switching()) else {
            return;
        };
        for f in &frames {
            let _ = c.send(f);
        }
        let (got, close) = read_until_close(&mut c.wire);
        let _ = tx.send((head, got, close));
    });
    (up, rx)
}

#[test]
fn a_websocket_upgrade_gets_426_by_default_and_nothing_is_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = process_proxy_for(&up, &[]);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", "").as_bytes());
    let head = c.head();
    assert_eq!(head.status, 426, "{}", head.raw_str());
    assert!(head.says_close());
    up.assert_untouched();
    assert!(
        proxy.wait_for_stderr("GET /v1/responses 426 ", IO_TIMEOUT),
        "{}",
        proxy.stderr_so_far()
    );
}

#[test]
fn the_tunnel_carries_the_real_credential_and_no_extension() {
    let reply = frame(true, TEXT, b"pong", None);
    let (up, rx) = ws_upstream(vec![reply]);
    let proxy = process_proxy_for(&up, &[PATHS]);
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
                 Authorization: Bearer sandbox-phantom\r\n";
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", offer).as_bytes());
    let head = c.head();
    assert_eq!(head.status, 101, "{}", head.raw_str());
    assert_eq!(
        head.header_str("sec-websocket-accept"),
        Some(accept_for(KEY))
    );
    assert!(!head.has("sec-websocket-extensions"));
    let f = c.frame();
    assert_eq!(
        (f.opcode, f.masked, f.payload.as_slice()),
        (TEXT, false, &b"pong"[..])
    );
    c.send(&client_frame(true, TEXT, b"ping"));
    c.send(&client_frame(true, CLOSE, &1000u16.to_be_bytes()));
    let (head, got, close) = rx.recv_timeout(IO_TIMEOUT).expect("the upstream's report");
    let lower = head.to_ascii_lowercase();
    assert!(head.contains(&format!("Bearer {TOKEN}")), "{head}");
    assert!(!head.contains("sandbox-phantom"), "{head}");
    assert!(!lower.contains("sec-websocket-extensions"), "{head}");
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert_eq!(got.len(), 1);
    assert!(got[0].masked);
    assert_eq!(got[0].payload, b"ping");
    assert_eq!(close, Some(1000));
    assert!(
        proxy.wait_for_stderr("websocket closed", IO_TIMEOUT),
        "{}",
        proxy.stderr_so_far()
    );
    assert!(!proxy.stderr_so_far().contains(TOKEN));
}

#[test]
fn a_reflected_token_is_masked_in_a_frame_across_fragments_and_across_frames() {
    let t = TOKEN.as_bytes();
    let (a, b) = t.split_at(t.len() / 2);
    let whole = [b"x=".as_slice(), t, b";"].concat();
    let frames = vec![
        frame(true, TEXT, &whole, None),
        frame(false, TEXT, &[b"frag ", a].concat(), None),
        frame(true, CONTINUATION, &[b, b" end"].concat(), None),
        frame(true, BINARY, a, None),
        frame(true, BINARY, b, None),
    ];
    let (up, _rx) = ws_upstream(frames);
    let proxy = process_proxy_for(&up, &[PATHS]);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", "").as_bytes());
    assert_eq!(c.head().status, 101);
    let got: Vec<Frame> = (0..5).map(|_| c.frame()).collect();
    let lens: Vec<usize> = got.iter().map(|f| f.payload.len()).collect();
    assert_eq!(
        lens,
        [whole.len(), 5 + a.len(), b.len() + 4, a.len(), b.len()]
    );
    let all: Vec<u8> = got.iter().flat_map(|f| f.payload.clone()).collect();
    assert!(!contains(&all, t), "the token crossed the tunnel");
    assert!(
        !contains(&all, a) || !contains(&all, b),
        "both halves crossed unmasked"
    );
    let opcodes: Vec<u8> = got.iter().map(|f| f.opcode).collect();
    assert_eq!(opcodes, [TEXT, TEXT, CONTINUATION, BINARY, BINARY]);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The client sends its first frame right behind its handshake; an upstream that does not
/// complete the handshake must never see it.
fn refused_handshake(answer: &'static [u8]) -> (u16, Vec<u8>) {
    let (tx, rx) = mpsc::channel();
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        if answer_handshake(c, answer).is_some() {
            let closed = c.wait_peer_close(IO_TIMEOUT);
            let _ = tx.send(closed);
        }
    });
    let proxy = process_proxy_for(&up, &[PATHS]);
    let early = client_frame(true, TEXT, b"EARLY-CLIENT-BYTES");
    let req = [handshake("/v1/responses", "").into_bytes(), early].concat();
    let mut c = WsClient::open(proxy.addr(), &req);
    let status = c.head().status;
    let closed = rx.recv_timeout(IO_TIMEOUT).expect("the upstream's end");
    assert!(closed, "the proxy kept the upstream connection");
    (status, up.received_all())
}

#[test]
fn an_ordinary_answer_is_relayed_and_the_clients_frames_never_go_up() {
    let (status, received) =
        refused_handshake(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno");
    assert_eq!(status, 200);
    assert!(
        !contains(&received, b"EARLY"),
        "client frames reached the upstream"
    );
}

#[test]
fn a_101_with_a_wrong_accept_key_is_refused_and_the_clients_frames_never_go_up() {
    let (status, received) = refused_handshake(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
    );
    assert_eq!(status, 502);
    assert!(
        !contains(&received, b"EARLY"),
        "client frames reached the upstream"
    );
}

#[test]
fn an_unmasked_client_frame_closes_the_tunnel_with_1002() {
    let (up, rx) = ws_upstream(vec![]);
    let proxy = process_proxy_for(&up, &[PATHS]);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", "").as_bytes());
    assert_eq!(c.head().status, 101);
    c.send(&frame(true, TEXT, b"unmasked", None));
    let (_, close) = read_until_close(&mut c.wire);
    assert_eq!(close, Some(1002));
    let (_, got, up_close) = rx.recv_timeout(IO_TIMEOUT).expect("the upstream's report");
    assert!(got.is_empty(), "the bad frame was relayed");
    assert_eq!(up_close, Some(1002));
}

#[test]
fn a_masked_server_frame_closes_the_tunnel_with_1002() {
    let bad = frame(true, TEXT, b"masked", Some([1, 2, 3, 4]));
    let (up, _rx) = ws_upstream(vec![bad]);
    let proxy = process_proxy_for(&up, &[PATHS]);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", "").as_bytes());
    assert_eq!(c.head().status, 101);
    let (got, close) = read_until_close(&mut c.wire);
    assert!(got.is_empty(), "the bad frame was relayed");
    assert_eq!(close, Some(1002));
}

#[test]
fn a_silent_tunnel_is_closed_with_1001_after_the_idle_timeout() {
    let (up, rx) = ws_upstream(vec![]);
    let proxy = process_proxy_for(&up, &[PATHS, ("WEBSOCKET_IDLE_TIMEOUT", "1s")]);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", "").as_bytes());
    assert_eq!(c.head().status, 101);
    let t = std::time::Instant::now();
    let (_, close) = read_until_close(&mut c.wire);
    assert_eq!(close, Some(1001));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let (_, _, up_close) = rx.recv_timeout(IO_TIMEOUT).expect("the upstream's report");
    assert_eq!(up_close, Some(1001));
}

#[test]
fn sigterm_sends_1001_to_both_sides_within_the_grace() {
    let (up, rx) = ws_upstream(vec![]);
    let mut proxy = process_proxy_for(&up, &[PATHS, ("SHUTDOWN_GRACE", "5s")]);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", "").as_bytes());
    assert_eq!(c.head().status, 101);
    proxy.signal("TERM");
    let (_, close) = read_until_close(&mut c.wire);
    assert_eq!(close, Some(1001));
    let (_, _, up_close) = rx.recv_timeout(IO_TIMEOUT).expect("the upstream's report");
    assert_eq!(up_close, Some(1001));
    let status = proxy.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr_so_far());
}

#[test]
fn the_phantom_token_and_allow_requests_guard_the_handshake() {
    let (up, _rx) = ws_upstream(vec![]);
    let phantom = ("PHANTOM_TOKEN", "phantom-123");
    let proxy = process_proxy_for(&up, &[PATHS, phantom]);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", "").as_bytes());
    assert_eq!(c.head().status, 401);
    let with = "Authorization: Bearer phantom-123\r\n";
    let listed = ("ALLOW_REQUESTS", "POST /v1/responses");
    let proxy = process_proxy_for(&up, &[PATHS, phantom, listed]);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", with).as_bytes());
    assert_eq!(c.head().status, 403, "a GET entry must be listed");
    up.assert_untouched();
    let listed = ("ALLOW_REQUESTS", "GET /v1/responses");
    let proxy = process_proxy_for(&up, &[PATHS, phantom, listed]);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", with).as_bytes());
    assert_eq!(c.head().status, 101);
}

#[test]
fn off_the_listed_paths_an_upgrade_gets_426_and_a_sloppy_handshake_400() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = process_proxy_for(&up, &[PATHS]);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/other", "").as_bytes());
    assert_eq!(c.head().status, 426);
    let sloppy = handshake("/v1/responses", "").replace("Version: 13", "Version: 8");
    let mut c = WsClient::open(proxy.addr(), sloppy.as_bytes());
    assert_eq!(c.head().status, 400);
    let post = handshake("/v1/responses", "Content-Length: 2\r\n").replace("GET", "POST") + "{}";
    let mut c = WsClient::open(proxy.addr(), post.as_bytes());
    assert_eq!(c.head().status, 400);
    up.assert_untouched();
}

#[test]
fn a_tunnel_keeps_its_generation_masked_after_the_token_rotates() {
    const NEW: &str = "sk-ant-test-ROTATED-fedcba9876543210";
    let rotated = Gate::new();
    let (gate, (tx, rx)) = (rotated.clone(), mpsc::channel());
    let up = Upstream::plain().serve(move |c: &mut UpConn| {
        let Some(head) = answer_handshake(c, &switching()) else {
            return;
        };
        if gate.wait(IO_TIMEOUT) {
            let both = format!("old={TOKEN} new={NEW}");
            let _ = c.send(&frame(true, TEXT, both.as_bytes(), None));
        }
        let _ = tx.send(head);
        read_until_close(&mut c.wire);
    });
    let target = up.target_url();
    let envs = [
        ("TARGET", target.as_str()),
        PATHS,
        ("TOKEN_UPDATES", "stdin"),
    ];
    let mut proxy = ProcessProxy::spawn_with_stdin(&envs, format!("{TOKEN}\n").as_bytes(), false)
        .expect("the proxy starts");
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", "").as_bytes());
    assert_eq!(c.head().status, 101);
    proxy.write_stdin(format!("{NEW}\n").as_bytes());
    assert!(
        proxy.wait_for_stderr("generation 2", IO_TIMEOUT),
        "{}",
        proxy.stderr_so_far()
    );
    rotated.open();
    let f = c.frame();
    let text = String::from_utf8_lossy(&f.payload).into_owned();
    assert!(
        !text.contains(TOKEN),
        "the tunnel's own token crossed: {text}"
    );
    assert!(!text.contains(NEW), "the current token crossed: {text}");
    assert_eq!(f.payload.len(), format!("old={TOKEN} new={NEW}").len());
    let head = rx
        .recv_timeout(IO_TIMEOUT)
        .expect("the upstream's handshake");
    assert!(head.contains(&format!("Bearer {TOKEN}")), "{head}");
}

/// The upstream's subprotocol goes into the proxy's own 101, which the response masking does
/// not cover: one the client did not offer (here the credential itself) is refused with 502
/// and never reaches the client; one it offered is relayed.
#[test]
fn the_upstream_may_only_choose_an_offered_subprotocol_and_never_the_token() {
    let with_protocol = |p: &str| {
        let ok = switching();
        let end = ok.len() - 2;
        [
            &ok[..end],
            format!("Sec-WebSocket-Protocol: {p}\r\n\r\n").as_bytes(),
        ]
        .concat()
    };
    for (offer, answer, want) in [
        ("", TOKEN, 502),
        ("Sec-WebSocket-Protocol: chat\r\n", TOKEN, 502),
        ("Sec-WebSocket-Protocol: chat, json\r\n", "json", 101),
    ] {
        let answer = with_protocol(answer);
        let up = Upstream::plain().serve(move |c: &mut UpConn| {
            if answer_handshake(c, &answer).is_some() {
                c.wait_peer_close(IO_TIMEOUT);
            }
        });
        let proxy = process_proxy_for(&up, &[PATHS]);
        let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", offer).as_bytes());
        let head = c.head();
        assert_eq!(head.status, want, "{offer:?}: {}", head.raw_str());
        if want == 101 {
            let chosen = head.header_str("sec-websocket-protocol");
            assert_eq!(chosen.as_deref(), Some("json"));
            c.send(&client_frame(true, CLOSE, &1000u16.to_be_bytes()));
        }
        let (rest, _) = c.wire.read_up_to(1 << 16).unwrap_or_default();
        let seen = [head.raw.as_slice(), &rest].concat();
        assert!(
            !contains(&seen, TOKEN.as_bytes()),
            "{offer:?}: the token reached the client"
        );
    }
}

/// A handshake opens a connection of its own and leaves the pooled one alone: the plain
/// request after the tunnel reuses the connection the one before it left in the pool.
#[test]
fn a_handshake_leaves_the_pooled_connection_in_the_pool() {
    let up = Upstream::plain().serve(|c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            if req
                .head
                .raw_str()
                .to_ascii_lowercase()
                .contains("upgrade: websocket")
            {
                let _ = c.send(&switching());
                read_until_close(&mut c.wire);
                let _ = c.send(&frame(true, CLOSE, &1000u16.to_be_bytes(), None));
                return;
            }
            if c.send(&handlers::ok_text(&req, b"ok")).is_err() {
                return;
            }
        }
    });
    let proxy = process_proxy_for(&up, &[PATHS]);
    let get = "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut plain = Client::connect(proxy.addr());
    plain.send(get);
    assert_eq!(plain.read_response().status(), 200);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", "").as_bytes());
    assert_eq!(c.head().status, 101);
    c.send(&client_frame(true, CLOSE, &1000u16.to_be_bytes()));
    assert_eq!(c.frame().close_code(), Some(1000));
    plain.send(get);
    assert_eq!(plain.read_response().status(), 200);
    assert_eq!(
        up.connection_count(),
        2,
        "the pooled connection was dropped"
    );
}

/// An upstream that stalls inside a frame: at the idle timeout the client's connection ends
/// after the part of the frame it got, with no close frame written into the payload; the
/// upstream, whose direction is between frames, still gets its 1001.
#[test]
fn a_close_is_never_written_into_a_frame_stalled_half_way() {
    let mut half = frame(true, BINARY, &[b'p'; 100], None);
    half.truncate(2 + 40);
    let (up, rx) = ws_upstream(vec![half.clone()]);
    let proxy = process_proxy_for(&up, &[PATHS, ("WEBSOCKET_IDLE_TIMEOUT", "1s")]);
    let mut c = WsClient::open(proxy.addr(), handshake("/v1/responses", "").as_bytes());
    assert_eq!(c.head().status, 101);
    let (got, whole) = c.wire.read_up_to(1 << 16).expect("the end of the tunnel");
    assert!(!whole);
    assert_eq!(got, half, "bytes were added to the stalled frame");
    let (_, _, up_close) = rx.recv_timeout(IO_TIMEOUT).expect("the upstream's report");
    assert_eq!(up_close, Some(1001));
}
