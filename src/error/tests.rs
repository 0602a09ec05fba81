//! The problem table's sanity: every variant listed, classified consistently.

use super::*;

/// Every problem once (`EgressRefused` with a sample status). `listed` below matches
/// exhaustively, so a new variant does not compile until it is listed here too.
const ALL: [Problem; 47] = {
    use Problem::*;
    [
        MalformedHead,
        BadTarget,
        BadHost,
        BadFraming,
        UnsupportedCoding,
        BadChunk,
        AmbiguousName,
        BadConnectionOption,
        UriTooLong,
        HeadTooLarge,
        TrailersTooLarge,
        BodyTooLarge,
        HeadTimeout,
        BodyTimeout,
        ClientAborted,
        MethodNotAllowed,
        MethodNotImplemented,
        UpgradeRefused,
        ExpectationFailed,
        Unauthorized,
        NotAllowed,
        TokenCeiling(3600),
        RequestCeiling(1),
        ConcurrencyCeiling(1),
        ClientWriteStalled,
        UpstreamNameResolution,
        UpstreamRefused,
        UpstreamUnreachable,
        UpstreamConnectTimeout,
        UpstreamCertificate,
        UpstreamTls,
        UpstreamTlsTimeout,
        EgressUnreachable,
        EgressRefused(407),
        EgressTimeout,
        EgressMalformed,
        UpstreamResponseTimeout,
        UpstreamIdleTimeout,
        UpstreamMalformed,
        UpstreamSwitchedProtocols,
        UpstreamEncoded,
        UpstreamClosed,
        UpstreamHoldOverflow,
        CredentialUnavailable,
        WebSocketRefused,
        BadHandshake,
        UpstreamBadHandshake,
    ]
};

/// The position of `p` in [`ALL`]. Exhaustive on purpose: adding a variant breaks the
/// build here, the reminder to add it to `ALL` with the next position.
fn listed(p: Problem) -> usize {
    use Problem::*;
    match p {
        MalformedHead => 0,
        BadTarget => 1,
        BadHost => 2,
        BadFraming => 3,
        UnsupportedCoding => 4,
        BadChunk => 5,
        AmbiguousName => 6,
        BadConnectionOption => 7,
        UriTooLong => 8,
        HeadTooLarge => 9,
        TrailersTooLarge => 10,
        BodyTooLarge => 11,
        HeadTimeout => 12,
        BodyTimeout => 13,
        ClientAborted => 14,
        MethodNotAllowed => 15,
        MethodNotImplemented => 16,
        UpgradeRefused => 17,
        ExpectationFailed => 18,
        Unauthorized => 19,
        NotAllowed => 20,
        TokenCeiling(_) => 21,
        RequestCeiling(_) => 22,
        ConcurrencyCeiling(_) => 23,
        ClientWriteStalled => 24,
        UpstreamNameResolution => 25,
        UpstreamRefused => 26,
        UpstreamUnreachable => 27,
        UpstreamConnectTimeout => 28,
        UpstreamCertificate => 29,
        UpstreamTls => 30,
        UpstreamTlsTimeout => 31,
        EgressUnreachable => 32,
        EgressRefused(_) => 33,
        EgressTimeout => 34,
        EgressMalformed => 35,
        UpstreamResponseTimeout => 36,
        UpstreamIdleTimeout => 37,
        UpstreamMalformed => 38,
        UpstreamSwitchedProtocols => 39,
        UpstreamEncoded => 40,
        UpstreamClosed => 41,
        UpstreamHoldOverflow => 42,
        CredentialUnavailable => 43,
        WebSocketRefused => 44,
        BadHandshake => 45,
        UpstreamBadHandshake => 46,
    }
}

/// The variant's name, as written in the source.
fn name(p: Problem) -> String {
    let debug = format!("{p:?}");
    debug.split('(').next().unwrap_or_default().to_string()
}

#[test]
fn the_list_of_every_problem_has_each_once_in_order() {
    for (i, p) in ALL.iter().enumerate() {
        assert_eq!(listed(*p), i, "{p:?}");
    }
}

#[test]
fn every_problem_has_a_distinct_static_message() {
    let mut seen = std::collections::BTreeSet::new();
    for p in ALL {
        let m = p.message();
        assert!(!m.is_empty(), "{p:?}");
        assert!(
            !m.starts_with("proxy"),
            "{p:?}: the prefix is added when answering"
        );
        assert_eq!(m.trim(), m, "{p:?}");
        assert!(seen.insert(m), "{p:?} repeats {m:?}");
    }
}

#[test]
fn upstream_and_egress_problems_and_only_they_are_the_upstreams_fault() {
    for p in ALL {
        let named = name(p).starts_with("Upstream") || name(p).starts_with("Egress");
        assert_eq!(p.side() == Side::Upstream, named, "{p:?}");
    }
}

#[test]
fn the_status_says_whose_fault_it_is() {
    for p in ALL {
        let status = p.status();
        match p.side() {
            // 501 is the client's too: it asked for what the proxy does not implement.
            Side::Client => assert!((400..=501).contains(&status), "{p:?}: {status}"),
            // RFC 9110 §15.6.3 and §15.6.5: the gateway's upstream failed or was slow.
            Side::Upstream => assert!(matches!(status, 502 | 504), "{p:?}: {status}"),
            // §15.6.4: a temporary condition, passing once the source answers again.
            Side::Credential => assert_eq!(status, 503, "{p:?}"),
        }
        assert_eq!(
            p.side() == Side::Upstream,
            matches!(status, 502 | 504),
            "{p:?}"
        );
    }
}

#[test]
fn timeouts_count_as_timeouts_and_answer_408_or_504() {
    for p in ALL {
        let timed_out = matches!(p.status(), 408 | 504);
        assert_eq!(p.reason() == Reason::Timeout, timed_out, "{p:?}");
        assert_eq!(name(p).contains("Timeout"), timed_out, "{p:?}");
    }
}

#[test]
fn every_connect_step_belongs_to_an_upstream_problem_of_that_step() {
    for p in ALL {
        let Some(step) = p.connect_step() else {
            continue;
        };
        assert_eq!(p.side(), Side::Upstream, "{p:?}");
        assert!(
            matches!(
                p.reason(),
                Reason::UpstreamUnreachable | Reason::TlsFailure | Reason::Timeout
            ),
            "{p:?}"
        );
        assert_eq!(
            step == ConnectStep::Egress,
            name(p).starts_with("Egress"),
            "{p:?}"
        );
        if p.reason() == Reason::TlsFailure {
            assert_eq!(step, ConnectStep::Tls, "{p:?}");
        }
    }
}

#[test]
fn unreachable_and_tls_failures_happen_only_while_connecting() {
    for p in ALL {
        let connecting = matches!(p.reason(), Reason::UpstreamUnreachable | Reason::TlsFailure);
        if connecting {
            assert!(p.connect_step().is_some(), "{p:?}");
        }
    }
}

#[test]
fn client_reasons_are_for_client_problems_only() {
    for p in ALL {
        let client_reason = matches!(
            p.reason(),
            Reason::PhantomRefused
                | Reason::PolicyRefused
                | Reason::Malformed
                | Reason::TooLarge
                | Reason::MethodRefused
                | Reason::UpgradeRefused
                | Reason::ClientGone
        );
        if client_reason {
            assert_eq!(p.side(), Side::Client, "{p:?}");
        }
        assert_ne!(
            p.reason(),
            Reason::Health,
            "{p:?}: /health is not a failure"
        );
    }
}

#[test]
fn error_types_follow_the_status() {
    for p in ALL {
        let expected = match p.status() {
            401 => "authentication_error",
            403 => "permission_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            502 | 503 => "api_error",
            504 => "timeout_error",
            _ => "invalid_request_error",
        };
        assert_eq!(p.error_type(), expected, "{p:?}");
    }
}

#[test]
fn the_egress_status_shows_in_the_text_and_nothing_else_does() {
    assert_eq!(
        Problem::EgressRefused(407).to_string(),
        "upstream: egress proxy refused CONNECT (407)"
    );
    for p in ALL {
        assert_eq!(p.detail().is_some(), matches!(p, Problem::EgressRefused(_)));
        assert!(
            p.to_string().starts_with(&format!("{}: ", p.side())),
            "{p:?}"
        );
    }
}

/// The exported label values, pinned. Exhaustive on purpose: a new reason breaks the build
/// here, the reminder that dashboards and the README list the labels too.
fn label_of(r: Reason) -> &'static str {
    match r {
        Reason::Health => "health",
        Reason::PhantomRefused => "phantom_refused",
        Reason::PolicyRefused => "policy_refused",
        Reason::Malformed => "malformed",
        Reason::TooLarge => "too_large",
        Reason::MethodRefused => "method_refused",
        Reason::Timeout => "timeout",
        Reason::UpstreamUnreachable => "upstream_unreachable",
        Reason::TlsFailure => "tls_failure",
        Reason::UpstreamMalformed => "upstream_malformed",
        Reason::ClientGone => "client_gone",
        Reason::CredentialUnavailable => "credential_unavailable",
        Reason::LimitTokens => "limit_tokens",
        Reason::LimitRequests => "limit_requests",
        Reason::LimitConcurrent => "limit_concurrent",
        Reason::UpgradeRefused => "upgrade_refused",
    }
}

#[test]
fn every_reason_is_listed_once_with_its_exported_label() {
    let mut labels = std::collections::BTreeSet::new();
    for (i, r) in Reason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i, "{r:?}");
        assert_eq!(r.label(), label_of(*r), "{r:?}");
        assert!(labels.insert(r.label()), "{r:?}");
    }
    assert_eq!(labels.len(), Reason::COUNT);
    // Every reason but /health is some problem's.
    for r in Reason::ALL.into_iter().filter(|r| *r != Reason::Health) {
        assert!(
            ALL.iter().any(|p| p.reason() == r),
            "{r:?} is never counted"
        );
    }
}

#[test]
fn every_connect_step_is_listed_once_and_some_problem_has_it() {
    let labels: Vec<_> = ConnectStep::ALL.iter().map(|s| s.label()).collect();
    assert_eq!(labels, ["connect", "tls", "egress"]);
    for (i, s) in ConnectStep::ALL.iter().enumerate() {
        assert_eq!(s.index(), i, "{s:?}");
        assert!(ALL.iter().any(|p| p.connect_step() == Some(*s)), "{s:?}");
    }
}

#[test]
fn ceilings_answer_429_with_their_retry_after_and_only_they_forbid_a_retry() {
    for p in ALL {
        assert_eq!(p.is_ceiling(), p.status() == 429, "{p:?}");
        assert_eq!(p.is_ceiling(), name(p).ends_with("Ceiling"), "{p:?}");
    }
    assert_eq!(Problem::TokenCeiling(3600).retry_after(), Some(3600));
    assert_eq!(Problem::RequestCeiling(7).retry_after(), Some(7));
    assert_eq!(Problem::ConcurrencyCeiling(1).retry_after(), Some(1));
    assert_eq!(Problem::TokenCeiling(5).reason(), Reason::LimitTokens);
    assert_eq!(Problem::RequestCeiling(5).reason(), Reason::LimitRequests);
    assert_eq!(
        Problem::ConcurrencyCeiling(5).reason(),
        Reason::LimitConcurrent
    );
}
