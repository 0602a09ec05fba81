//! PHANTOM_TOKEN: when set, only requests carrying it are forwarded (401 otherwise), and it is
//! replaced by the real token. TOKEN_HEADER=x-api-key sends the real token raw in x-api-key.

use crate::support::*;

const PHANTOM: &str = "sk-ant-phantom-PLACEHOLDER-77";

fn phantom_proxy(up: &Upstream) -> Proxy {
    proxy_for(up, &[("PHANTOM_TOKEN", PHANTOM)])
}

#[test]
fn a_request_without_the_phantom_token_gets_401_and_is_not_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = phantom_proxy(&up);
    let r = roundtrip(proxy.addr(), post("/v1/messages", "{}"));
    r.assert_proxy_error(401, "authentication_error");
    up.assert_untouched();
}

#[test]
fn a_request_with_a_wrong_phantom_token_gets_401_and_is_not_forwarded() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = phantom_proxy(&up);
    for cred in [
        format!("Authorization: Bearer {PHANTOM}x"),
        "Authorization: Bearer sk-ant-phantom".to_string(),
        format!("Authorization: Basic {PHANTOM}"),
        format!("x-api-key: {}", &PHANTOM[1..]),
    ] {
        let r = roundtrip(
            proxy.addr(),
            format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{cred}\r\n\r\n"),
        );
        r.assert_proxy_error(401, "authentication_error");
    }
    up.assert_untouched();
}

#[test]
fn the_phantom_token_as_bearer_is_replaced_by_the_real_token() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = phantom_proxy(&up);
    let r = roundtrip(
        proxy.addr(),
        format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PHANTOM}\r\n\r\n"),
    );
    assert_eq!(r.status(), 200);
    let got = up.only_request();
    assert_eq!(
        got.all("authorization"),
        vec![format!("Bearer {TOKEN}").as_bytes()]
    );
    assert!(!crate::support::wire::contains(
        &up.received_all(),
        PHANTOM.as_bytes()
    ));
}

#[test]
fn the_phantom_token_as_x_api_key_is_accepted_and_removed() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = phantom_proxy(&up);
    let r = roundtrip(
        proxy.addr(),
        format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: {PHANTOM}\r\n\r\n"),
    );
    assert_eq!(r.status(), 200);
    let got = up.only_request();
    assert!(!got.has("x-api-key"));
    assert!(!crate::support::wire::contains(
        &up.received_all(),
        PHANTOM.as_bytes()
    ));
}

#[test]
fn health_needs_no_phantom_token() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = phantom_proxy(&up);
    let r = roundtrip(proxy.addr(), get("/health"));
    assert_eq!(r.status(), 200);
    up.assert_untouched();
}

#[test]
fn token_header_x_api_key_sends_the_raw_token_in_x_api_key_and_no_authorization() {
    let up = Upstream::plain().serve(handlers::echo_head());
    let proxy = proxy_for(&up, &[("TOKEN_HEADER", "x-api-key")]);
    let r = roundtrip(
        proxy.addr(),
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sandbox\r\nX-Api-Key: sandbox\r\nX-Last: 1\r\n\r\n",
    );
    assert_eq!(r.status(), 200);
    let got = up.only_request();
    assert!(!got.has("authorization"), "{}", got.head_str());
    assert_eq!(got.all("x-api-key"), vec![TOKEN.as_bytes()]);
    let last = got.head.fields.last().expect("fields");
    assert!(
        last.name.eq_ignore_ascii_case("x-api-key"),
        "token not last: {}",
        got.head_str()
    );
    assert!(!got.head_str().contains("sandbox"));
}
