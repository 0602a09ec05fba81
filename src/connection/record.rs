//! The access record of one request: the path as logged, what the line says besides the
//! outcome, and the line, metrics and usage accounting written once the request has ended.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::error::Problem;
use crate::exchange::Outcome;
use crate::limits;
use crate::log::{Event, Log, Peer, RequestLine};
use crate::metrics::{Metrics, Reason};
use crate::state::Proxy;

/// The path as logged, in a reused string: at most [`limits::LOG_PATH_MAX`] bytes, escaped
/// outside printable ASCII (a second line of defence: such targets are refused already).
pub(super) fn set_log_path(log_path: &mut String, path: &[u8]) {
    log_path.clear();
    crate::log::escape_into(log_path, path, limits::LOG_PATH_MAX);
}

/// What the access line says of a request besides its outcome.
pub(super) struct Logged<'a> {
    /// `-` when the request line could not be parsed.
    pub(super) method: &'a str,
    /// Escaped; `-` when the request line could not be parsed.
    pub(super) path: &'a str,
    pub(super) started: Instant,
    pub(super) generation: u64,
    pub(super) seq: u64,
    /// `GET /health`: timed apart from the exchanges.
    pub(super) health: bool,
    pub(super) peer: Peer,
    /// The attribution fields the request carried, safe to show.
    pub(super) headers: &'a [(&'a str, String)],
}

impl<'a> Logged<'a> {
    /// A request refused before its head was parsed.
    pub(super) fn refused(
        method: &'a str,
        path: &'a str,
        started: Instant,
        generation: u64,
        seq: u64,
        peer: Peer,
    ) -> Logged<'a> {
        Logged {
            method,
            path,
            started,
            generation,
            seq,
            health: false,
            peer,
            headers: &[],
        }
    }
}

/// The method and path (without query or fragment, escaped into `path`) of a head the proxy refused, for
/// its access line, when its request line is whole and has the shape of one (RFC 9112 §3:
/// method SP request-target SP HTTP-version); otherwise `-` for both.
pub(super) fn refused_line(buf: &[u8], path: &mut String) -> String {
    path.clear();
    let line = memchr::memmem::find(buf, b"\r\n").map(|n| &buf[..n]);
    let mut parts = line.unwrap_or(b"").split(|&b| b == b' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None)
            if (1..=32).contains(&m.len())
                && m.iter().all(|&b| crate::syntax::is_tchar(b))
                && v.starts_with(b"HTTP/") =>
        {
            // As a forwarded request's: without query, nor a fragment (which none may have).
            let t = t.split(|&b| b == b'?' || b == b'#').next().unwrap_or(b"");
            crate::log::escape_into(path, t, limits::LOG_PATH_MAX);
            // tchar is ASCII.
            String::from_utf8_lossy(m).into_owned()
        }
        _ => {
            path.push('-');
            "-".to_string()
        }
    }
}

/// Counts the request in metrics and writes its access line (docs/http-rules.md §10.3):
/// method, path without query, status, bytes, duration, the upstream's request id; plus a
/// failure line with its static reason, side and the request's `seq`. Every request, the
/// proxy's own refusals included, passes here once, so the counters, the byte totals, the
/// histogram and the access lines count the same requests. Nothing else from a request.
pub(super) fn record(proxy: &Proxy, about: &Logged<'_>, o: &Outcome) {
    let elapsed = about.started.elapsed();
    let m: &Metrics = &proxy.metrics;
    let log: &Log = &proxy.log;
    m.observe_exchange(about.health, elapsed);
    if o.upstream_answered {
        m.answered_by_upstream(o.status);
    } else {
        let reason = o.failure.map_or(Reason::Health, Problem::reason);
        m.answered_by_proxy(reason, o.status);
    }
    m.bytes_down.fetch_add(o.bytes, Relaxed);
    m.bytes_up.fetch_add(o.bytes_up, Relaxed);
    m.tokens_masked.fetch_add(o.masked, Relaxed);
    proxy.usage_final(&o.usage);
    log.event(&Event::Request(&RequestLine {
        seq: about.seq,
        method: about.method,
        path: about.path,
        status: o.status,
        bytes_up: o.bytes_up,
        bytes_down: o.bytes,
        duration_ms: elapsed.as_millis() as u64,
        head_ms: o.head_after.map(|d| d.as_millis() as u64),
        reused: o.reused,
        request_id: o.request_id.as_str(),
        token_generation: about.generation,
        peer: about.peer,
        usage: &o.usage,
        headers: about.headers,
    }));
    if let Some(code) = o.tunnel_close {
        log.event(&Event::TunnelClosed {
            seq: about.seq,
            code,
        });
    }
    if let Some(p) = o.failure {
        log.event(&Event::Error {
            side: p.side().as_str(),
            reason: p.message(),
            detail: p.detail(),
            seq: Some(about.seq),
        });
    }
    if o.credential_rejected {
        m.credential_rejected(o.status);
        log.event(&Event::CredentialRejected {
            status: o.status,
            generation: about.generation,
        });
    }
}
