//! The windows' edges, the `retry-after` arithmetic, the lifetime ceilings and the
//! concurrency slot.

use super::*;

const SEC: Duration = Duration::from_secs(1);

fn rate(max: u64, window: Option<u64>) -> Option<Rate> {
    Some(Rate {
        max,
        window: window.map(Duration::from_secs),
    })
}

fn ceilings(spec: Spec) -> (Ceilings, Instant) {
    let origin = Instant::now();
    (Ceilings::new(spec, origin), origin)
}

#[test]
fn no_ceiling_admits_everything_and_counts_nothing() {
    let (c, t0) = ceilings(Spec::default());
    let permits: Vec<_> = (0..1000).map(|_| c.check(t0, true).unwrap()).collect();
    c.record_tokens(u64::MAX, t0);
    assert_eq!(c.in_flight(), 0);
    drop(permits);
    assert!(c.check(t0 + 1000 * SEC, true).is_ok());
}

#[test]
fn requests_in_a_window_are_refused_at_the_ceiling_until_the_oldest_bucket_falls_out() {
    let spec = Spec {
        requests: rate(3, Some(60)),
        ..Spec::default()
    };
    let (c, t0) = ceilings(spec);
    // One-second buckets: two requests at 0.5 s, one at 10.2 s.
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    drop(c.check(at(500), true).unwrap());
    drop(c.check(at(500), true).unwrap());
    drop(c.check(at(10_200), true).unwrap());
    // Full: the first bucket (0 s..1 s) falls out at 60 s, 30.5 s after 29.5 s.
    let r = c.check(at(29_500), true).unwrap_err();
    assert_eq!(r.which, Limit::Requests);
    assert_eq!(r.retry_after_secs, 31);
    // Just before the bucket falls out: 1 ms left, rounded up to 1 s.
    let r = c.check(at(59_999), true).unwrap_err();
    assert_eq!(r.retry_after_secs, 1);
    // At 60 s the two of the first bucket are gone: two more fit.
    drop(c.check(at(60_000), true).unwrap());
    drop(c.check(at(60_000), true).unwrap());
    // Full again; the bucket of 10 s falls out at 70 s.
    let r = c.check(at(60_000), true).unwrap_err();
    assert_eq!(r.retry_after_secs, 10);
    // A refused request counted nothing: at 70 s exactly one frees up.
    drop(c.check(at(70_000), true).unwrap());
    assert!(c.check(at(70_000), true).is_err());
}

#[test]
fn a_window_idle_longer_than_itself_starts_empty() {
    let spec = Spec {
        requests: rate(2, Some(30)),
        ..Spec::default()
    };
    let (c, t0) = ceilings(spec);
    drop(c.check(t0, true).unwrap());
    drop(c.check(t0, true).unwrap());
    assert!(c.check(t0 + 29 * SEC, true).is_err());
    // Half-second buckets for a 30 s window: bucket 0 falls out at 30 s.
    assert!(c.check(t0 + 30 * SEC, true).is_ok());
    // Long idle: every bucket is stale, the ring is empty, however far time moved.
    let later = t0 + 100_000 * SEC;
    drop(c.check(later, true).unwrap());
    drop(c.check(later, true).unwrap());
    assert!(c.check(later, true).is_err());
}

#[test]
fn an_instant_older_than_the_newest_bucket_counts_in_the_newest() {
    let spec = Spec {
        requests: rate(2, Some(60)),
        ..Spec::default()
    };
    let (c, t0) = ceilings(spec);
    drop(c.check(t0 + 10 * SEC, true).unwrap());
    // Raced for the lock with an earlier instant: counted in the 10 s bucket.
    drop(c.check(t0 + 5 * SEC, true).unwrap());
    let r = c.check(t0 + 11 * SEC, true).unwrap_err();
    assert_eq!(r.retry_after_secs, 59);
}

#[test]
fn tokens_refuse_once_they_reach_the_ceiling_and_free_as_their_buckets_fall_out() {
    let spec = Spec {
        tokens: rate(1000, Some(3600)),
        ..Spec::default()
    };
    let (c, t0) = ceilings(spec);
    // One-minute buckets.
    drop(c.check(t0, true).unwrap());
    c.record_tokens(600, t0 + 30 * SEC);
    drop(c.check(t0 + 120 * SEC, true).unwrap());
    c.record_tokens(399, t0 + 150 * SEC);
    // 999 < 1000: still admitted.
    drop(c.check(t0 + 200 * SEC, true).unwrap());
    c.record_tokens(1, t0 + 200 * SEC);
    // 1000 reached: refused until the first bucket (600 tokens) falls out at 3600 s.
    let r = c.check(t0 + 600 * SEC, true).unwrap_err();
    assert_eq!(r.which, Limit::Tokens);
    assert_eq!(r.retry_after_secs, 3000);
    assert!(c.check(t0 + 3600 * SEC, true).is_ok());
}

#[test]
fn the_retry_after_waits_for_as_many_buckets_as_must_fall_out() {
    let spec = Spec {
        tokens: rate(100, Some(60)),
        ..Spec::default()
    };
    let (c, t0) = ceilings(spec);
    c.record_tokens(10, t0);
    c.record_tokens(10, t0 + SEC);
    c.record_tokens(500, t0 + 2 * SEC);
    // 520: the buckets of 0 s and 1 s falling out leave 500, still full; 2 s's leaves 0.
    let r = c.check(t0 + 3 * SEC, true).unwrap_err();
    assert_eq!(r.retry_after_secs, 59);
}

#[test]
fn a_lifetime_ceiling_never_frees_and_says_so_with_a_long_retry_after() {
    let spec = Spec {
        tokens: rate(100, None),
        requests: rate(2, None),
        ..Spec::default()
    };
    let (c, t0) = ceilings(spec);
    drop(c.check(t0, true).unwrap());
    c.record_tokens(100, t0);
    let r = c.check(t0 + 1_000_000 * SEC, true).unwrap_err();
    assert_eq!(r.which, Limit::Tokens);
    assert_eq!(r.retry_after_secs, LIFETIME_RETRY_AFTER);
    const { assert!(LIFETIME_RETRY_AFTER > 60) };
}

#[test]
fn the_concurrency_slot_is_held_until_the_permit_drops() {
    let spec = Spec {
        concurrent: Some(2),
        ..Spec::default()
    };
    let (c, t0) = ceilings(spec);
    let a = c.check(t0, true).unwrap();
    let b = c.check(t0, true).unwrap();
    assert_eq!(c.in_flight(), 2);
    let r = c.check(t0, true).unwrap_err();
    assert_eq!(
        r,
        Refusal {
            which: Limit::Concurrent,
            retry_after_secs: 1
        }
    );
    // The refusal took no slot.
    assert_eq!(c.in_flight(), 2);
    drop(a);
    let a = c.check(t0, true).unwrap();
    drop((a, b));
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_refusal_by_one_ceiling_counts_toward_no_other() {
    let spec = Spec {
        requests: rate(2, Some(60)),
        concurrent: Some(1),
        ..Spec::default()
    };
    let (c, t0) = ceilings(spec);
    let held = c.check(t0, true).unwrap();
    for _ in 0..5 {
        assert_eq!(c.check(t0, true).unwrap_err().which, Limit::Concurrent);
    }
    drop(held);
    // Only the admitted request counted: one more fits.
    drop(c.check(t0, true).unwrap());
    assert_eq!(c.check(t0, true).unwrap_err().which, Limit::Requests);
}

#[test]
fn of_several_full_ceilings_the_one_that_frees_last_is_named() {
    let spec = Spec {
        tokens: rate(10, Some(3600)),
        requests: rate(1, Some(60)),
        concurrent: Some(1),
    };
    let (c, t0) = ceilings(spec);
    let held = c.check(t0, true).unwrap();
    c.record_tokens(10, t0);
    let r = c.check(t0 + SEC, true).unwrap_err();
    assert_eq!(r.which, Limit::Tokens);
    assert_eq!(r.retry_after_secs, 3599);
    drop(held);
}

#[test]
fn count_tokens_requests_are_recognised_by_their_last_segment() {
    assert!(!counts_tokens(b"/v1/messages/count_tokens"));
    assert!(!counts_tokens(b"/base/v1/messages/count_tokens?beta=true"));
    assert!(counts_tokens(b"/v1/messages"));
    assert!(counts_tokens(b"/v1/messages?beta=true"));
    assert!(counts_tokens(b"/v1/count_tokens/x"));
    assert!(counts_tokens(b"/v1/messages/count_tokens_x"));
}

#[test]
fn limits_name_their_settings() {
    assert_eq!(Limit::Tokens.setting(), "LIMIT_TOKENS");
    assert_eq!(Limit::Requests.setting(), "LIMIT_REQUESTS");
    assert_eq!(Limit::Concurrent.setting(), "LIMIT_CONCURRENT");
}

#[test]
fn the_permit_of_a_count_tokens_request_records_no_tokens() {
    let spec = Spec {
        tokens: rate(10, None),
        ..Spec::default()
    };
    let (c, t0) = ceilings(spec);
    let estimate = c.check(t0, false).unwrap();
    estimate.record_tokens(1000, t0);
    drop(estimate);
    let spent = c.check(t0, true).unwrap();
    spent.record_tokens(9, t0);
    drop(spent);
    assert!(c.check(t0, true).is_ok());
    c.record_tokens(1, t0);
    assert_eq!(c.check(t0, false).unwrap_err().which, Limit::Tokens);
}

#[test]
fn a_refusal_becomes_a_429_problem_with_its_retry_after() {
    let r = |which, retry_after_secs| Refusal {
        which,
        retry_after_secs,
    };
    assert_eq!(
        r(Limit::Tokens, 3600).problem(),
        Problem::TokenCeiling(3600)
    );
    assert_eq!(
        r(Limit::Requests, 31).problem(),
        Problem::RequestCeiling(31)
    );
    assert_eq!(
        r(Limit::Concurrent, 1).problem(),
        Problem::ConcurrencyCeiling(1)
    );
    let huge = r(Limit::Requests, u64::MAX).problem();
    assert_eq!(huge.retry_after(), Some(u32::MAX));
    assert_eq!(huge.status(), 429);
}
