//! Every way an exchange can fail, who is at fault, and what the client is told.
//!
//! The one place where a failure becomes a status code (docs/http-rules.md §10.1). Messages are
//! static text: no peer bytes, header values, or secrets can reach them.

use std::fmt;

/// Which side of the proxy a failure is attributed to in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The sandbox sent something we refuse, or stopped sending.
    Client,
    /// TARGET was unreachable, too slow, or sent something we cannot frame.
    Upstream,
    /// Our own limits (shutdown, concurrency).
    Proxy,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Proxy => "proxy",
        })
    }
}

/// A failure, named by what went wrong rather than by the status it produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    // --- the client's request ---
    /// Not HTTP/1.x we can parse strictly (bad request line, bad field syntax, bare LF, ...).
    MalformedHead,
    /// The request-target is not origin-form/absolute-form we accept, or has a fragment or
    /// dot-segments.
    BadTarget,
    /// Host missing, repeated or invalid (RFC 9112 §3.2).
    BadHost,
    /// Content-Length / Transfer-Encoding cannot be decided with certainty (RFC 9112 §6.3).
    BadFraming,
    /// A transfer coding other than exactly one `chunked` (RFC 9112 §6.1: SHOULD 501).
    UnsupportedCoding,
    /// Malformed chunked body (size line, extension, CRLF, trailer).
    BadChunk,
    /// A header name that maps onto a framing or credential field through `_` (RFC 9110 §17.10).
    AmbiguousName,
    /// `Connection` names a field the proxy frames or routes with.
    BadConnectionOption,
    /// Request line longer than the limit.
    UriTooLong,
    /// One field line, or the whole head, longer than the limit; or too many fields.
    HeadTooLarge,
    /// Request trailers over the limit.
    TrailersTooLarge,
    /// Declared or streamed body over the limit.
    BodyTooLarge,
    /// The head did not complete within the header deadline.
    HeadTimeout,
    /// The request body stalled.
    BodyTimeout,
    /// The client closed before its request was complete.
    ClientAborted,
    /// CONNECT or TRACE.
    MethodNotAllowed,
    /// A method outside the allowlist.
    MethodNotImplemented,
    /// `Upgrade` requested (no protocol switching through the proxy).
    UpgradeRefused,
    /// `Expect` other than `100-continue` (RFC 9110 §10.1.1).
    ExpectationFailed,
    /// PHANTOM_TOKEN is configured and the request did not carry it.
    Unauthorized,
    /// ALLOW_REQUESTS is configured and does not allow this method and path.
    NotAllowed,
    /// The client stopped reading the response.
    ClientWriteStalled,
    // --- the upstream ---
    /// TARGET's name did not resolve.
    UpstreamNameResolution,
    /// TARGET refused the TCP connection.
    UpstreamRefused,
    /// TCP connect failed otherwise (no route, unreachable network, ...).
    UpstreamUnreachable,
    /// TARGET's certificate was not trusted (or not for TARGET's name).
    UpstreamCertificate,
    /// The TLS handshake failed otherwise (protocol, ALPN).
    UpstreamTls,
    /// The egress proxy could not be reached.
    EgressUnreachable,
    /// The egress proxy answered CONNECT with this status (407: credentials).
    EgressRefused(u16),
    /// The egress proxy did not answer CONNECT in time.
    EgressTimeout,
    /// The egress proxy's answer to CONNECT is not HTTP.
    EgressMalformed,
    /// TCP connect (with DNS) took too long.
    UpstreamConnectTimeout,
    /// The TLS handshake took too long.
    UpstreamTlsTimeout,
    /// No response head within the response timeout.
    UpstreamResponseTimeout,
    /// The response body stalled.
    UpstreamIdleTimeout,
    /// The response head or body framing is not something we can relay with certainty.
    UpstreamMalformed,
    /// The upstream tried to switch protocols (101).
    UpstreamSwitchedProtocols,
    /// The upstream compressed its response although we asked for identity: the token could
    /// not be masked in it.
    UpstreamEncoded,
    /// The upstream closed before its response was complete.
    UpstreamClosed,
    /// A possible token prefix was held while the upstream's framing after it outgrew
    /// `RELAY_HOLD_MAX`: the response is cut rather than the prefix released unmasked.
    UpstreamHoldOverflow,
    // --- the proxy itself ---
    /// The proxy is draining for shutdown.
    ShuttingDown,
}

impl Problem {
    /// Who is at fault.
    pub fn side(self) -> Side {
        use Problem::*;
        match self {
            UpstreamNameResolution
            | UpstreamRefused
            | UpstreamUnreachable
            | UpstreamCertificate
            | UpstreamTls
            | EgressUnreachable
            | EgressRefused(_)
            | EgressTimeout
            | EgressMalformed
            | UpstreamConnectTimeout
            | UpstreamTlsTimeout
            | UpstreamResponseTimeout
            | UpstreamIdleTimeout
            | UpstreamMalformed
            | UpstreamSwitchedProtocols
            | UpstreamEncoded
            | UpstreamClosed
            | UpstreamHoldOverflow => Side::Upstream,
            ShuttingDown => Side::Proxy,
            _ => Side::Client,
        }
    }

    /// The status the client receives when nothing of a response was sent yet.
    pub fn status(self) -> u16 {
        use Problem::*;
        match self {
            MalformedHead | BadTarget | BadHost | BadFraming | BadChunk | AmbiguousName
            | BadConnectionOption => 400,
            Unauthorized => 401,
            NotAllowed => 403,
            MethodNotAllowed => 405,
            HeadTimeout | BodyTimeout => 408,
            BodyTooLarge => 413,
            UriTooLong => 414,
            ExpectationFailed => 417,
            HeadTooLarge | TrailersTooLarge => 431,
            UnsupportedCoding | MethodNotImplemented | UpgradeRefused => 501,
            UpstreamNameResolution
            | UpstreamRefused
            | UpstreamUnreachable
            | UpstreamCertificate
            | UpstreamTls
            | EgressUnreachable
            | EgressRefused(_)
            | EgressMalformed
            | UpstreamMalformed
            | UpstreamSwitchedProtocols
            | UpstreamEncoded
            | UpstreamClosed
            | UpstreamHoldOverflow => 502,
            ShuttingDown => 503,
            UpstreamConnectTimeout
            | EgressTimeout
            | UpstreamTlsTimeout
            | UpstreamResponseTimeout
            | UpstreamIdleTimeout => 504,
            // Nobody is listening for these; the connection just closes.
            ClientAborted | ClientWriteStalled => 400,
        }
    }

    /// The Anthropic error `type` for the JSON body.
    pub fn error_type(self) -> &'static str {
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            413 => "request_too_large",
            502 | 503 => "api_error",
            504 => "timeout_error",
            _ => "invalid_request_error",
        }
    }

    /// Static text for the client and the log. Never peer bytes.
    pub fn message(self) -> &'static str {
        use Problem::*;
        match self {
            MalformedHead => "malformed request head",
            BadTarget => "unsupported request-target",
            BadHost => "missing, repeated or invalid Host",
            BadFraming => "ambiguous or invalid message framing",
            UnsupportedCoding => "unsupported transfer coding",
            BadChunk => "malformed chunked body",
            AmbiguousName => "header name with underscore shadows a protected field",
            BadConnectionOption => "Connection names a protected field",
            UriTooLong => "request line too long",
            HeadTooLarge => "request head too large",
            TrailersTooLarge => "request trailers too large",
            BodyTooLarge => "request body too large",
            HeadTimeout => "request head not received in time",
            BodyTimeout => "request body stalled",
            ClientAborted => "client closed before the request was complete",
            MethodNotAllowed => "method not allowed",
            MethodNotImplemented => "method not implemented",
            UpgradeRefused => "protocol upgrade not supported",
            ExpectationFailed => "unsupported expectation",
            Unauthorized => "missing or wrong proxy token",
            NotAllowed => "request not allowed by ALLOW_REQUESTS",
            ClientWriteStalled => "client stopped reading",
            UpstreamNameResolution => "upstream unreachable: name resolution failed",
            UpstreamRefused => "upstream unreachable: connection refused",
            UpstreamUnreachable => "upstream unreachable",
            UpstreamCertificate => "upstream TLS failure: certificate not trusted",
            UpstreamTls => "upstream TLS failure",
            EgressUnreachable => "egress proxy unreachable",
            EgressRefused(_) => "egress proxy refused CONNECT",
            EgressTimeout => "egress proxy tunnel timed out",
            EgressMalformed => "egress proxy sent a malformed answer",
            UpstreamConnectTimeout => "upstream connect timed out",
            UpstreamTlsTimeout => "upstream TLS handshake timed out",
            UpstreamResponseTimeout => "upstream response timed out",
            UpstreamIdleTimeout => "upstream stalled mid-response",
            UpstreamMalformed => "malformed upstream response",
            UpstreamSwitchedProtocols => "upstream attempted a protocol switch",
            UpstreamEncoded => "upstream response is content-encoded",
            UpstreamClosed => "upstream closed mid-response",
            UpstreamHoldOverflow => "upstream framing outgrew the token-masking hold",
            ShuttingDown => "shutting down",
        }
    }
}

impl Problem {
    /// A status that belongs in the message (the egress proxy's answer to CONNECT).
    pub fn detail(self) -> Option<u16> {
        match self {
            Problem::EgressRefused(status) => Some(status),
            _ => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.side(), self.message())?;
        match self.detail() {
            Some(status) => write!(f, " ({status})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Problem {}
