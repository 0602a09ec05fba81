//! Every way an exchange can fail, who is at fault, and what the client and the operator are
//! told.
//!
//! This is the one place where a failure becomes a status code (docs/http-rules.md §10.1), and the one
//! table (`Problem::attrs`) that gives each failure all of its attributes at once: side,
//! status, metric reason, connect step and message. One exhaustive `match`, no catch-all arm,
//! so a new variant cannot compile until every attribute is chosen for it. Messages are static
//! text: no peer bytes, header values, or secrets can reach them.

use std::fmt;

/// Which side of the proxy a failure is attributed to in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The sandbox sent something we refuse, or stopped sending.
    Client,
    /// TARGET (or the egress proxy on the way) was unreachable, too slow, or sent something
    /// we cannot frame.
    Upstream,
    /// The proxy holds no usable token: its source failed for too long.
    Credential,
}

impl Side {
    /// As the log names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Credential => "credential",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A closed set of metric label values, written once: the enum, every member in declaration
/// order (`ALL`, its length `COUNT`) and each member's label come from the same list, so an
/// array indexed by a member can be neither too short nor miss one.
macro_rules! labelled {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $label:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// How many members: the length of every array indexed by one.
            pub const COUNT: usize = [$($label),+].len();

            /// Every member, in declaration order: `ALL[m.index()] == m`.
            pub const ALL: [$name; $name::COUNT] = [$($name::$variant),+];

            /// The member's position in `ALL`, and in every array sized by `COUNT`.
            pub const fn index(self) -> usize {
                self as usize
            }

            /// The label value in the exposition.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

labelled! {
    /// Why the proxy answered a request itself (the `reason` label of the requests counter).
    pub enum Reason {
        /// The `/health` answer: not a failure, so no [`Problem`] has it.
        Health = "health",
        PhantomRefused = "phantom_refused",
        PolicyRefused = "policy_refused",
        Malformed = "malformed",
        TooLarge = "too_large",
        MethodRefused = "method_refused",
        Timeout = "timeout",
        UpstreamUnreachable = "upstream_unreachable",
        TlsFailure = "tls_failure",
        UpstreamMalformed = "upstream_malformed",
        ClientGone = "client_gone",
        CredentialUnavailable = "credential_unavailable",
        LimitTokens = "limit_tokens",
        LimitRequests = "limit_requests",
        LimitConcurrent = "limit_concurrent",
        /// A WebSocket upgrade answered 426 so that the client falls back to HTTP at once.
        UpgradeRefused = "upgrade_refused",
    }
}

labelled! {
    /// Which step of opening a new upstream connection failed (the `step` label).
    pub enum ConnectStep {
        /// DNS and TCP to TARGET.
        Connect = "connect",
        /// The TLS handshake with TARGET.
        Tls = "tls",
        /// TCP to the egress proxy and its CONNECT tunnel.
        Egress = "egress",
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
    /// `Upgrade: websocket` where the proxy does not tunnel WebSocket: 426, so that a client
    /// that can speak plain HTTP falls back to it at once.
    WebSocketRefused,
    /// A WebSocket upgrade on a tunnelled path that is not exactly the handshake of RFC 6455
    /// §4.1 (HTTP/1.1 GET without a body, `Upgrade: websocket`, `Connection: upgrade`,
    /// version 13, a 16-byte key).
    BadHandshake,
    /// `Expect` other than `100-continue` (RFC 9110 §10.1.1).
    ExpectationFailed,
    /// PHANTOM_TOKEN is configured and the request did not carry it.
    Unauthorized,
    /// ALLOW_REQUESTS is configured and does not allow this method and path.
    NotAllowed,
    /// LIMIT_TOKENS is reached; the `Retry-After` in seconds.
    TokenCeiling(u32),
    /// LIMIT_REQUESTS is reached; the `Retry-After` in seconds.
    RequestCeiling(u32),
    /// LIMIT_CONCURRENT requests are in flight; the `Retry-After` in seconds.
    ConcurrencyCeiling(u32),
    /// The client stopped reading the response.
    ClientWriteStalled,
    // --- opening a new upstream connection ---
    /// TARGET's name did not resolve.
    UpstreamNameResolution,
    /// TARGET refused the TCP connection.
    UpstreamRefused,
    /// TCP connect failed otherwise (no route, unreachable network, ...).
    UpstreamUnreachable,
    /// TCP connect (with DNS) took too long.
    UpstreamConnectTimeout,
    /// TARGET's certificate was not trusted (or not for TARGET's name).
    UpstreamCertificate,
    /// The TLS handshake failed otherwise (protocol, ALPN).
    UpstreamTls,
    /// The TLS handshake took too long.
    UpstreamTlsTimeout,
    /// The egress proxy could not be reached.
    EgressUnreachable,
    /// The egress proxy answered CONNECT with this status (407: credentials).
    EgressRefused(u16),
    /// The egress proxy did not answer CONNECT in time.
    EgressTimeout,
    /// The egress proxy's answer to CONNECT is not HTTP.
    EgressMalformed,
    // --- the upstream's response ---
    /// No response head within the response timeout.
    UpstreamResponseTimeout,
    /// The response body stalled.
    UpstreamIdleTimeout,
    /// The response head or body framing is not something we can relay with certainty.
    UpstreamMalformed,
    /// The upstream tried to switch protocols (101).
    UpstreamSwitchedProtocols,
    /// The upstream's 101 to a WebSocket handshake does not answer it (RFC 6455 §4.1: wrong
    /// accept key, fields, or an extension that was not offered).
    UpstreamBadHandshake,
    /// The upstream compressed its response although we asked for identity: the token could
    /// not be masked in it.
    UpstreamEncoded,
    /// The upstream closed before its response was complete.
    UpstreamClosed,
    /// A possible token prefix was held while the upstream's framing after it outgrew
    /// `RELAY_HOLD_MAX`: the response is cut rather than the prefix released unmasked.
    UpstreamHoldOverflow,
    // --- the credential ---
    /// The token source failed past the token's expiry (or the stale grace): no usable token
    /// is held, so nothing is forwarded.
    CredentialUnavailable,
}

/// The `Retry-After` (RFC 9110 §10.2.3) of a [`Problem::CredentialUnavailable`] answer, in
/// seconds: about when the source's next retry may have brought a token.
pub const CREDENTIAL_RETRY_AFTER: u32 = 10;

/// Everything said about one problem, chosen together in [`Problem::attrs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attrs {
    side: Side,
    /// The status the client receives when nothing of a response was sent yet.
    status: u16,
    /// The `reason` label it counts under.
    reason: Reason,
    /// The `step` label, for a problem met while opening a new upstream connection.
    step: Option<ConnectStep>,
    /// Static text for the client and the log.
    message: &'static str,
}

/// A problem with the client's request: never a connect step.
const fn client(status: u16, reason: Reason, message: &'static str) -> Attrs {
    Attrs {
        side: Side::Client,
        status,
        reason,
        step: None,
        message,
    }
}

/// The credential: no usable token to send.
const fn credential(status: u16, reason: Reason, message: &'static str) -> Attrs {
    Attrs {
        side: Side::Credential,
        status,
        reason,
        step: None,
        message,
    }
}

/// A problem with the upstream once connected.
const fn upstream(status: u16, reason: Reason, message: &'static str) -> Attrs {
    Attrs {
        side: Side::Upstream,
        status,
        reason,
        step: None,
        message,
    }
}

/// A problem opening a new upstream connection, at `step`.
const fn connecting(
    step: ConnectStep,
    status: u16,
    reason: Reason,
    message: &'static str,
) -> Attrs {
    Attrs {
        side: Side::Upstream,
        status,
        reason,
        step: Some(step),
        message,
    }
}

impl Problem {
    /// The one table: who is at fault, the status, the metric reason, the connect step and
    /// the message of every problem. ClientAborted and ClientWriteStalled have a status no one
    /// hears (the connection just closes); 400 is what the log records.
    #[rustfmt::skip]
    const fn attrs(self) -> Attrs {
        use ConnectStep::{Connect, Egress, Tls};
        use Problem::*;
        use Reason as R;
        match self {
            // --- the client's request ---
            MalformedHead => client(400, R::Malformed, "malformed request head"),
            BadTarget => client(400, R::Malformed, "unsupported request-target"),
            BadHost => client(400, R::Malformed, "missing, repeated or invalid Host"),
            BadFraming => client(400, R::Malformed, "ambiguous or invalid message framing"),
            UnsupportedCoding => client(501, R::Malformed, "unsupported transfer coding"),
            BadChunk => client(400, R::Malformed, "malformed chunked body"),
            AmbiguousName => client(400, R::Malformed, "header name with underscore shadows a protected field"),
            BadConnectionOption => client(400, R::Malformed, "Connection names a protected field"),
            UriTooLong => client(414, R::TooLarge, "request line too long"),
            HeadTooLarge => client(431, R::TooLarge, "request head too large"),
            TrailersTooLarge => client(431, R::TooLarge, "request trailers too large"),
            BodyTooLarge => client(413, R::TooLarge, "request body too large"),
            HeadTimeout => client(408, R::Timeout, "request head not received in time"),
            BodyTimeout => client(408, R::Timeout, "request body stalled"),
            ClientAborted => client(400, R::ClientGone, "client closed before the request was complete"),
            MethodNotAllowed => client(405, R::MethodRefused, "method not allowed"),
            MethodNotImplemented => client(501, R::MethodRefused, "method not implemented"),
            UpgradeRefused => client(501, R::MethodRefused, "protocol upgrade not supported"),
            WebSocketRefused => client(426, R::UpgradeRefused, "WebSocket not enabled here: use plain HTTP"),
            BadHandshake => client(400, R::Malformed, "malformed WebSocket handshake"),
            ExpectationFailed => client(417, R::MethodRefused, "unsupported expectation"),
            Unauthorized => client(401, R::PhantomRefused, "missing or wrong proxy token"),
            NotAllowed => client(403, R::PolicyRefused, "request not allowed by ALLOW_REQUESTS"),
            // RFC 6585 §4: 429, with Retry-After.
            TokenCeiling(_) => client(429, R::LimitTokens, "token ceiling LIMIT_TOKENS reached"),
            RequestCeiling(_) => client(429, R::LimitRequests, "request ceiling LIMIT_REQUESTS reached"),
            ConcurrencyCeiling(_) => client(429, R::LimitConcurrent, "concurrency ceiling LIMIT_CONCURRENT reached"),
            ClientWriteStalled => client(400, R::ClientGone, "client stopped reading"),
            // --- opening a new upstream connection ---
            UpstreamNameResolution => connecting(Connect, 502, R::UpstreamUnreachable, "upstream unreachable: name resolution failed"),
            UpstreamRefused => connecting(Connect, 502, R::UpstreamUnreachable, "upstream unreachable: connection refused"),
            UpstreamUnreachable => connecting(Connect, 502, R::UpstreamUnreachable, "upstream unreachable"),
            UpstreamConnectTimeout => connecting(Connect, 504, R::Timeout, "upstream connect timed out"),
            UpstreamCertificate => connecting(Tls, 502, R::TlsFailure, "upstream TLS failure: certificate not trusted"),
            UpstreamTls => connecting(Tls, 502, R::TlsFailure, "upstream TLS failure"),
            UpstreamTlsTimeout => connecting(Tls, 504, R::Timeout, "upstream TLS handshake timed out"),
            EgressUnreachable => connecting(Egress, 502, R::UpstreamUnreachable, "egress proxy unreachable"),
            EgressRefused(_) => connecting(Egress, 502, R::UpstreamUnreachable, "egress proxy refused CONNECT"),
            EgressTimeout => connecting(Egress, 504, R::Timeout, "egress proxy tunnel timed out"),
            EgressMalformed => connecting(Egress, 502, R::UpstreamUnreachable, "egress proxy sent a malformed answer"),
            // --- the upstream's response ---
            UpstreamResponseTimeout => upstream(504, R::Timeout, "upstream response timed out"),
            UpstreamIdleTimeout => upstream(504, R::Timeout, "upstream stalled mid-response"),
            UpstreamMalformed => upstream(502, R::UpstreamMalformed, "malformed upstream response"),
            UpstreamSwitchedProtocols => upstream(502, R::UpstreamMalformed, "upstream attempted a protocol switch"),
            UpstreamBadHandshake => upstream(502, R::UpstreamMalformed, "upstream answered the WebSocket handshake wrongly"),
            UpstreamEncoded => upstream(502, R::UpstreamMalformed, "upstream response is content-encoded"),
            UpstreamClosed => upstream(502, R::UpstreamMalformed, "upstream closed mid-response"),
            UpstreamHoldOverflow => upstream(502, R::UpstreamMalformed, "upstream framing outgrew the token-masking hold"),
            // --- the credential (RFC 9110 §15.6.4: temporary) ---
            CredentialUnavailable => credential(503, R::CredentialUnavailable, "credential unavailable"),
        }
    }

    /// Who is at fault.
    pub const fn side(self) -> Side {
        self.attrs().side
    }

    /// The status the client receives when nothing of a response was sent yet.
    pub const fn status(self) -> u16 {
        self.attrs().status
    }

    /// Static text for the client and the log. Never peer bytes.
    pub const fn message(self) -> &'static str {
        self.attrs().message
    }

    /// The reason a problem answered by the proxy counts under in the metrics.
    pub const fn reason(self) -> Reason {
        self.attrs().reason
    }

    /// The step of opening a new upstream connection this problem belongs to; `None` for
    /// every problem met elsewhere.
    pub const fn connect_step(self) -> Option<ConnectStep> {
        self.attrs().step
    }

    /// The Anthropic error `type` for the JSON body, a function of the status alone.
    pub fn error_type(self) -> &'static str {
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            502 | 503 => "api_error",
            504 => "timeout_error",
            _ => "invalid_request_error",
        }
    }

    /// Seconds for `Retry-After`, for a problem that passes on its own.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Problem::CredentialUnavailable => Some(CREDENTIAL_RETRY_AFTER),
            Problem::TokenCeiling(secs)
            | Problem::RequestCeiling(secs)
            | Problem::ConcurrencyCeiling(secs) => Some(secs),
            _ => None,
        }
    }

    /// A ceiling's refusal: the answer says `x-should-retry: false`, the field the Anthropic
    /// SDKs obey before their own retry rules, so an agent loop stops at the fuse instead of
    /// retrying into it.
    pub fn is_ceiling(self) -> bool {
        matches!(
            self,
            Problem::TokenCeiling(_) | Problem::RequestCeiling(_) | Problem::ConcurrencyCeiling(_)
        )
    }

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

#[cfg(test)]
mod tests;
