use super::*;
use std::time::Duration;

fn version(size: u64) -> Option<Fingerprint> {
    Some(Fingerprint {
        dev: 1,
        ino: 2,
        size,
        mtime: (size as i64, 0),
        ctime: (size as i64, 0),
    })
}

/// A version is read only after it stayed the same for the settle time; a torn write
/// (a prefix, then the rest before the prefix settled) reads only the whole token.
#[test]
fn only_a_version_that_stayed_the_same_for_the_settle_time_is_read() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut w = FileWatch::new(version(40));
    assert!(!w.settled(version(40), at(250)), "unchanged");
    assert!(!w.settled(version(20), at(500)), "the prefix, just seen");
    assert!(!w.settled(version(20), at(750)), "the prefix, not settled");
    assert!(!w.settled(version(41), at(1000)), "the rest: a new version");
    assert!(!w.settled(version(41), at(1750)));
    assert!(w.settled(version(41), at(2000)), "settled");
    assert!(w.read_done(version(41), version(41), at(2001)));
    assert!(!w.settled(version(41), at(2250)), "read already");
}

/// A change during the read makes the read not count; the new version settles anew.
#[test]
fn a_change_during_the_read_discards_it() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut w = FileWatch::new(None);
    assert!(!w.settled(version(10), at(0)));
    assert!(w.settled(version(10), at(1000)));
    assert!(!w.read_done(version(10), version(11), at(1001)));
    assert!(!w.settled(version(11), at(1250)));
    assert!(w.settled(version(11), at(2001)));
    assert!(w.read_done(version(11), version(11), at(2002)));
}

/// At startup, a version changed less than the settle time ago is waited out.
#[test]
fn a_version_is_settled_once_the_settle_time_passed_since_its_change() {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let f = Fingerprint {
        mtime: (1_000_000, 0),
        ctime: (1_000_000, 500_000_000),
        ..version(1).unwrap()
    };
    assert!(!f.settled(at + Duration::from_millis(1400)));
    assert!(f.settled(at + Duration::from_millis(1500)));
    assert!(f.settled(at), "a ctime in the future is not waited for");
}

/// A file that disappears is a version too: it is reported once, after settling.
#[test]
fn a_missing_file_settles_like_any_version() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut w = FileWatch::new(version(10));
    assert!(!w.settled(None, at(0)));
    assert!(w.settled(None, at(1000)));
    assert!(w.read_done(None, None, at(1000)));
    assert!(!w.settled(None, at(1250)));
}
