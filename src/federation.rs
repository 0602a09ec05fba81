//! Anthropic Workload Identity Federation: the identity provider's JWT (re-read from
//! `ANTHROPIC_IDENTITY_TOKEN_FILE` for every exchange) is exchanged for a short-lived token
//! with the RFC 7523 jwt-bearer grant at `POST /v1/oauth/token` on TARGET's origin.
//!
//! The request body is Anthropic's (a JSON object: `grant_type`, `assertion`,
//! `federation_rule_id`, `organization_id`, `service_account_id`, optional `workspace_id`);
//! the answer is an RFC 6749 §5.1 token response (`access_token`, `expires_in`). The exchange
//! goes through the same connector as every request (egress proxy, CA files, TLS), on a
//! connection of its own that closes after it; a redirect is not followed. Neither the
//! assertion nor the answer is ever logged: a failure is a status or a fixed reason. Both
//! live in buffers wiped when dropped.

use std::time::SystemTime;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::command::{Failed, Fetched};
use crate::config::FederationSource;
use crate::flatjson;
use crate::framing::{decode_naive, ChunkLimits};
use crate::limits::{FEDERATION_MAX_ANSWER, FEDERATION_TIMEOUT, MAX_TOKEN_LEN};
use crate::secret::{Token, TokenHeader};
use crate::target::Target;
use crate::upstream::Connector;

/// The token endpoint, on TARGET's origin (TARGET's base path is for the API, not for it).
const TOKEN_PATH: &str = "/v1/oauth/token";

fn failed(why: impl Into<String>) -> Failed {
    Failed {
        why: why.into(),
        refused: false,
    }
}

/// One exchange, from a thread outside the proxy's runtime (startup, the token-update
/// thread): on a small runtime of its own, within [`FEDERATION_TIMEOUT`].
pub fn exchange_blocking(
    connector: &Connector,
    target: &Target,
    src: &FederationSource,
    header: &TokenHeader,
) -> Result<Fetched, Failed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| failed("cannot start its runtime"))?;
    runtime.block_on(async {
        let answer = tokio::time::timeout(FEDERATION_TIMEOUT, exchange(connector, target, src))
            .await
            .map_err(|_| failed("the token exchange timed out"))??;
        read_answer(&answer, header)
    })
}

/// Whitespace an identity file may hold around its JWT (a trailing newline, CRLF).
const IDENTITY_FILE_SLACK: usize = 64;

/// The identity provider's JWT, as the file holds it now (trailing whitespace dropped).
fn assertion(src: &FederationSource) -> Result<Zeroizing<Vec<u8>>, Failed> {
    use std::io::Read as _;
    // At most one byte more than the longest JWT plus its trailing whitespace is read, so a
    // file that never ends (a FIFO, `/dev/zero`, a runaway writer) cannot fill the memory.
    let cap = 4 * MAX_TOKEN_LEN + IDENTITY_FILE_SLACK;
    let mut raw = Zeroizing::new(Vec::new());
    std::fs::File::open(&src.identity_token_file)
        .and_then(|f| f.take(cap as u64 + 1).read_to_end(&mut raw))
        .map_err(|_| failed("ANTHROPIC_IDENTITY_TOKEN_FILE cannot be read"))?;
    if raw.len() > cap {
        return Err(failed("ANTHROPIC_IDENTITY_TOKEN_FILE is larger than a JWT"));
    }
    let jwt = raw.trim_ascii();
    // A JWT is base64url segments and dots (RFC 7519 §3): nothing to escape in JSON.
    let ok = !jwt.is_empty()
        && jwt.len() <= 4 * MAX_TOKEN_LEN
        && jwt
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='));
    if !ok {
        return Err(failed("ANTHROPIC_IDENTITY_TOKEN_FILE holds no JWT"));
    }
    Ok(Zeroizing::new(jwt.to_vec()))
}

/// The request: head and JSON body. The ids were checked (visible ASCII, no `"` or `\`) when
/// the configuration was read.
fn request(target: &Target, src: &FederationSource, jwt: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut body = Zeroizing::new(Vec::with_capacity(jwt.len() + 512));
    body.extend_from_slice(
        b"{\"grant_type\":\"urn:ietf:params:oauth:grant-type:jwt-bearer\",\"assertion\":\"",
    );
    body.extend_from_slice(jwt);
    body.push(b'"');
    let ids = [
        ("federation_rule_id", Some(&src.rule_id)),
        ("organization_id", Some(&src.organization_id)),
        ("service_account_id", Some(&src.service_account_id)),
        ("workspace_id", src.workspace_id.as_ref()),
    ];
    for (name, value) in ids {
        if let Some(v) = value {
            body.extend_from_slice(format!(",\"{name}\":\"{v}\"").as_bytes());
        }
    }
    body.push(b'}');
    let head = format!(
        "POST {TOKEN_PATH} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nUser-Agent: agent-loop-proxy/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        target.authority,
        crate::settings::VERSION,
        body.len()
    );
    let mut out = Zeroizing::new(Vec::with_capacity(head.len() + body.len()));
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&body);
    out
}

/// Sends the request and reads the whole answer (the server closes after it), at most
/// [`FEDERATION_MAX_ANSWER`] bytes.
async fn exchange(
    connector: &Connector,
    target: &Target,
    src: &FederationSource,
) -> Result<Zeroizing<Vec<u8>>, Failed> {
    let jwt = assertion(src)?;
    let req = request(target, src, &jwt);
    drop(jwt);
    let mut stream = connector
        .connect()
        .await
        .map_err(|p| failed(format!("cannot reach TARGET ({})", p.message())))?;
    stream
        .write_all(&req)
        .await
        .map_err(|_| failed("the token exchange request could not be sent"))?;
    drop(req);
    let mut answer = Zeroizing::new(vec![0u8; FEDERATION_MAX_ANSWER + 1]);
    let mut len = 0;
    loop {
        let n = stream
            .read(&mut answer[len..])
            .await
            .map_err(|_| failed("the token exchange answer could not be read"))?;
        if n == 0 {
            break;
        }
        len += n;
        if len > FEDERATION_MAX_ANSWER {
            return Err(failed("the token exchange answer is too large"));
        }
        // A server that keeps the connection open despite `Connection: close` has answered
        // once its framing says the body is whole.
        if framing(&answer[..len]).is_some_and(|f| f.whole) {
            break;
        }
    }
    answer.truncate(len);
    Ok(answer)
}

/// The byte that opens a JSON object (RFC 8259 §4).
const OBJECT_OPEN: u8 = 0x7b;

/// The token from a whole answer: a 200 (RFC 6749 §5.1) whose JSON body has `access_token`;
/// any other status is a failure named by its status alone (a 3xx is not followed).
fn read_answer(answer: &[u8], header: &TokenHeader) -> Result<Fetched, Failed> {
    let body = answer_body(answer)?;
    if body.trim_ascii_start().first() != Some(&OBJECT_OPEN) {
        return Err(failed("the token exchange answer is not a JSON object"));
    }
    let mut parsed = flatjson::token_answer(&body).map_err(|why| Failed {
        why: format!("the token exchange answer is not usable: {why}"),
        refused: true,
    })?;
    let token = Token::new(&parsed.token, header);
    zeroize::Zeroize::zeroize(&mut parsed.token);
    let token = token.map_err(|e| Failed {
        why: format!("the token exchange gave no usable token: {}", e.reason()),
        refused: true,
    })?;
    let expires = parsed.expiry.map(|e| e.time(SystemTime::now()));
    Ok(Fetched { token, expires })
}

/// What an answer's head says of its body, once the head is whole.
struct Framing {
    status: u16,
    head_len: usize,
    body: Body,
    /// The body is all there (known only for a length or chunked body).
    whole: bool,
}

enum Body {
    Length(usize),
    Chunked,
    UntilClose,
}

fn framing(answer: &[u8]) -> Option<Framing> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut fields);
    let Ok(httparse::Status::Complete(head_len)) = res.parse(answer) else {
        return None;
    };
    let status = res.code?;
    let named = |n: &'static str| {
        res.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(n))
    };
    let chunked = named("transfer-encoding").any(|h| h.value.eq_ignore_ascii_case(b"chunked"));
    let length = named("content-length").next().and_then(|h| {
        std::str::from_utf8(h.value)
            .ok()?
            .trim()
            .parse::<usize>()
            .ok()
    });
    let rest = &answer[head_len..];
    let (body, whole) = match (chunked, length) {
        (true, _) => (
            Body::Chunked,
            matches!(decode_naive(rest, ChunkLimits::RESPONSE), Ok(Some(_))),
        ),
        (false, Some(n)) => (Body::Length(n), rest.len() >= n),
        (false, None) => (Body::UntilClose, false),
    };
    Some(Framing {
        status,
        head_len,
        body,
        whole,
    })
}

/// The body of a 200 answer (Content-Length, chunked, or to the close), read whole.
fn answer_body(answer: &[u8]) -> Result<Zeroizing<Vec<u8>>, Failed> {
    let Some(f) = framing(answer) else {
        return Err(failed("the token exchange answer is not HTTP"));
    };
    match f.status {
        200 => {}
        status @ 300..=399 => {
            return Err(failed(format!(
                "the token exchange answered {status} (a redirect, not followed)"
            )));
        }
        status => return Err(failed(format!("the token exchange answered {status}"))),
    }
    let rest = &answer[f.head_len..];
    let body = match f.body {
        Body::Chunked => match decode_naive(rest, ChunkLimits::RESPONSE) {
            Ok(Some((payload, _))) => payload,
            _ => return Err(failed("the token exchange answer's chunked body is broken")),
        },
        Body::Length(n) => rest
            .get(..n)
            .ok_or_else(|| failed("the token exchange answer was cut short"))?
            .to_vec(),
        Body::UntilClose => rest.to_vec(),
    };
    Ok(Zeroizing::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> FederationSource {
        FederationSource {
            rule_id: "fdrl_1".into(),
            organization_id: "00000000-0000-0000-0000-000000000001".into(),
            service_account_id: "svac_1".into(),
            workspace_id: Some("default".into()),
            identity_token_file: "/dev/null".into(),
            stale_grace: std::time::Duration::from_secs(300),
        }
    }

    #[test]
    fn the_request_is_the_jwt_bearer_grant_on_targets_origin() {
        let target = Target::parse("https://api.anthropic.com/base").unwrap();
        let req = request(&target, &src(), b"aaa.bbb.ccc");
        let text = String::from_utf8(req.to_vec()).unwrap();
        assert!(text.starts_with("POST /v1/oauth/token HTTP/1.1\r\nHost: api.anthropic.com\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(
            body,
            r#"{"grant_type":"urn:ietf:params:oauth:grant-type:jwt-bearer","assertion":"aaa.bbb.ccc","federation_rule_id":"fdrl_1","organization_id":"00000000-0000-0000-0000-000000000001","service_account_id":"svac_1","workspace_id":"default"}"#
        );
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }

    #[test]
    fn answers_give_a_token_or_a_reason_without_their_bytes() {
        let header = TokenHeader::Authorization;
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n{\"access_token\":\"sk-ant-oat01-x\",\"expires_in\":600,\"token_type\":\"Bearer\"}";
        // Content-Length shorter than the JSON: cut.
        assert!(read_answer(ok, &header).is_err());
        let body = br#"{"access_token":"sk-ant-oat01-x","expires_in":600,"token_type":"Bearer"}"#;
        let mut ok =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        ok.extend_from_slice(body);
        let got = read_answer(&ok, &header).ok().unwrap();
        assert_eq!(got.token.as_bytes(), b"sk-ant-oat01-x");
        assert!(got.expires.is_some());
        let json = r#"{"access_token":"sk-ant-y"}"#;
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{json}\r\n0\r\n\r\n",
            json.len()
        );
        let got = read_answer(chunked.as_bytes(), &header).ok().unwrap();
        assert_eq!(got.token.as_bytes(), b"sk-ant-y");
        for (answer, why) in [
            (
                &b"HTTP/1.1 302 Found\r\nLocation: http://x\r\n\r\n"[..],
                "302 (a redirect, not followed)",
            ),
            (
                b"HTTP/1.1 401 Unauthorized\r\n\r\n{\"secret\":\"sk-ant-z\"}",
                "answered 401",
            ),
            (b"HTTP/1.1 200 OK\r\n\r\nsk-ant-plain", "not a JSON object"),
            (b"junk", "not HTTP"),
        ] {
            let e = read_answer(answer, &header).err().unwrap();
            assert!(e.why.contains(why), "{}", e.why);
            assert!(!e.why.contains("sk-ant"));
        }
    }

    /// A file that never ends is refused after a bounded read, not read into memory whole; a
    /// JWT with a trailing newline is read.
    #[test]
    fn the_identity_file_is_read_only_as_far_as_a_jwt_goes() {
        let mut endless = src();
        endless.identity_token_file = "/dev/zero".into();
        let e = assertion(&endless).err().unwrap();
        assert!(e.why.contains("larger than a JWT"), "{}", e.why);
        let dir = std::env::temp_dir().join(format!("alp-fed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("jwt");
        std::fs::write(&file, b"aaa.bbb.ccc\n").unwrap();
        let mut one = src();
        one.identity_token_file = file;
        assert_eq!(&assertion(&one).ok().unwrap()[..], b"aaa.bbb.ccc");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
