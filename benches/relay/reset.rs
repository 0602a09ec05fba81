//! Upstream resets: the upstream answers each stream with a framed SSE response (chunked,
//! Content-Length or close-delimited, chosen at random) and, for a share of the streams, resets
//! the connection (SO_LINGER 0, then close: RST) after a random number of bytes. Every client
//! must see either the whole stream, correctly framed and equal to the fixture, or a visible
//! cut: an error, or an end of stream before its framing says the body is complete (for a
//! close-delimited body, where a FIN would look like the end, a reset). A response that looks
//! complete but is not what the upstream meant to send fails the run, and so does any
//! descriptor the proxy holds afterwards beyond its baseline. The proxy runs with
//! POOL_MAX_IDLE=0 here, so no connection is parked for reuse and the baseline is exact.
//!
//! The same plan (the seeded PRNG gives every target the same one) also runs against the
//! upstream directly, as the control: it shows the classifier sees every cut the upstream
//! makes, so a proxy that passed them on faithfully must classify the same way.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::Endpoint;
use crate::procs::Middle;
use crate::rng::Rng;
use crate::scenarios::{join_err, warm_up, Ctx, Values};
use crate::soak::{expected_sha, fds_stable, Expected, Sampler};
use crate::upstream::{framed_response, Fixture, SseFraming, SMALL_REQUEST_BODY};
use crate::wire::Body;

/// Metric names, in the order [`reset`] returns values.
pub const METRICS: &[&str] = &[
    "streams",
    "cuts planned",
    "complete",
    "cut, visibly",
    "refused (502)",
    "looked complete but wrong",
    "whole stream not delivered",
    "other failures",
    "fds before",
    "fds peak (sampled)",
    "fds at end",
    "fds above baseline",
];

/// Metrics that fail the run unless 0.
pub const MUST_BE_ZERO: &[&str] = &[
    "looked complete but wrong",
    "whole stream not delivered",
    "other failures",
    "fds above baseline",
];

/// Most fixture events in one stream (fewer than the fixture's 599, so that cuts also land
/// in the head now and then).
const MAX_EVENTS: u64 = 200;
/// Most time between two events of a stream; 0 means written back to back.
const MAX_INTERVAL_US: u64 = 2000;
/// Share of cuts placed exactly between two writes of the upstream (after the head, before
/// the last chunk, ...) rather than anywhere.
const BOUNDARY_SHARE: f64 = 0.25;
/// Bound on each read: a stream lasts under half a second, so a read that waits this long
/// means a cut the proxy did not pass on.
const READ_LIMIT: Duration = Duration::from_secs(10);
/// Bound on the proxy's descriptors returning to the baseline once the last stream ended
/// (it lingers at most 1 s on a closing client connection).
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// How often the proxy's descriptors are read while the streams run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Failures printed per kind as they happen; the rest are only counted.
const ERRORS_SHOWN: usize = 3;

/// What the upstream is asked to send on one stream.
struct Plan {
    framing: SseFraming,
    first: usize,
    events: usize,
    interval_us: u64,
    /// Reset after this many bytes of the response (head included), always fewer than all.
    cut: Option<u64>,
    /// Bytes of the response head, and of the whole response.
    head_len: u64,
    total: u64,
}

impl Plan {
    fn draw(rng: &mut Rng, fixture: &Fixture, fraction: f64) -> Plan {
        let framing = SseFraming::ALL[rng.below(SseFraming::ALL.len() as u64) as usize];
        let first = rng.below(fixture.events.len() as u64) as usize;
        let events = 1 + rng.below(MAX_EVENTS) as usize;
        let interval_us = rng.below(MAX_INTERVAL_US + 1);
        let pieces = framed_response(fixture, framing, first, events);
        let total: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        let head_len = pieces[0].len() as u64;
        let cut = rng.chance(fraction).then(|| {
            if rng.chance(BOUNDARY_SHARE) {
                // After 0..pieces.len() whole pieces: never all of them.
                let k = rng.below(pieces.len() as u64) as usize;
                pieces[..k].iter().map(|p| p.len() as u64).sum()
            } else {
                rng.below(total)
            }
        });
        Plan {
            framing,
            first,
            events,
            interval_us,
            cut,
            head_len,
            total,
        }
    }

    fn path(&self) -> String {
        let mut p = format!(
            "/bench/sse/framed/{}/{}/{}/{}",
            self.framing.name(),
            self.first,
            self.events,
            self.interval_us
        );
        if let Some(cut) = self.cut {
            p.push_str(&format!("/{cut}"));
        }
        p
    }

    /// For failure messages: enough to ask the upstream for the same stream by hand.
    fn describe(&self) -> String {
        let cut = match self.cut {
            Some(c) => format!("reset after {c} of {} bytes", self.total),
            None => format!("whole, {} bytes", self.total),
        };
        format!("{} ({cut})", self.path())
    }
}

/// How one stream ended, as its client saw it.
enum Seen {
    /// 200, body ended where its framing said, equal to the fixture; and the upstream sent it
    /// whole.
    Complete,
    /// The body (or head) ended early with an error or an EOF the framing shows as early, and
    /// what arrived before equals the fixture; the upstream did cut it.
    Cut,
    /// The proxy's own 502: the upstream cut the stream inside its head.
    Refused,
    /// The body ended as if complete, but the upstream cut it, or the bytes differ.
    LookedComplete(String),
    /// The upstream sent the stream whole, and the client did not get it.
    NotDelivered(String),
    /// Anything else: connect or send failed, a stalled read, another status, a 502 although
    /// the upstream sent its whole head (the proxy dropped bytes it had received), a cut whose
    /// earlier bytes differ.
    Other(String),
}

fn stalled(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
}

async fn one_stream(ep: Endpoint, fixture: Arc<Fixture>, plan: Plan, gate: Arc<Semaphore>) -> Seen {
    let Ok(_permit) = gate.acquire_owned().await else {
        return Seen::Other("gate closed".into());
    };
    let req = ep.request(
        "POST",
        &plan.path(),
        "text/event-stream",
        SMALL_REQUEST_BODY,
    );
    let mut wire = match ep.connect(16 * 1024).await {
        Ok(w) => w,
        Err(e) => return Seen::Other(format!("connect: {e}")),
    };
    wire.set_read_timeout(READ_LIMIT);
    if let Err(e) = wire.send(&req).await {
        return Seen::Other(format!("send request: {e}"));
    }
    let cut = plan.cut.is_some();
    let head = match wire.read_response_head(false).await {
        Ok(h) => h,
        Err(e) if stalled(&e) => return Seen::Other("response head: read stalled".into()),
        Err(_) if cut => return Seen::Cut,
        Err(e) => return Seen::NotDelivered(format!("response head: {e}")),
    };
    if head.status == 502 {
        // The proxy's answer of its own; read it so the close is clean.
        let _ = Body::new(head.framing).drain(&mut wire, |_| {}).await;
        return match plan.cut {
            Some(c) if c < plan.head_len => Seen::Refused,
            Some(_) => Seen::Other("502 although the upstream sent its whole head".into()),
            None => Seen::NotDelivered("502 for a stream the upstream sent whole".into()),
        };
    }
    if head.status != 200 {
        return Seen::Other(format!("status {}", head.status));
    }
    let mut expect = Expected::new(&fixture, plan.first, plan.events);
    let mut hasher = Sha256::new();
    let mut body = Body::new(head.framing);
    loop {
        match body.next(&mut wire).await {
            Ok(Some(piece)) => {
                expect.feed(piece);
                hasher.update(piece);
            }
            Ok(None) => break,
            Err(e) if stalled(&e) => {
                return Seen::Other(format!(
                    "read stalled after {} bytes: a cut not passed on?",
                    expect.matched
                ))
            }
            Err(_) if expect.diverged => {
                return Seen::Other(format!(
                    "cut, and body bytes before the cut differ from the upstream's (first {} \
                     equal)",
                    expect.matched
                ))
            }
            Err(_) if cut => return Seen::Cut,
            Err(e) => {
                return Seen::NotDelivered(format!(
                    "{e} after {} of {} body bytes",
                    expect.matched, expect.len
                ))
            }
        }
    }
    let sha_ok =
        <[u8; 32]>::from(hasher.finalize()) == expected_sha(&fixture, plan.first, plan.events);
    if !cut && expect.complete() && sha_ok {
        return Seen::Complete;
    }
    Seen::LookedComplete(format!(
        "{} body bytes, first {} equal to the upstream's, of {}; sha256 {}",
        if expect.diverged {
            "differing"
        } else {
            "short"
        },
        expect.matched,
        expect.len,
        if sha_ok { "equal" } else { "differs" }
    ))
}

/// Waits (at most [`SETTLE_LIMIT`]) until the process holds at most `target` descriptors,
/// sampling every 50 ms; returns the last reading.
async fn fds_settle(m: &Middle, target: Option<u64>) -> Option<u64> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let now = m.fd_count();
        match (now, target) {
            (Some(n), Some(t)) if n > t && Instant::now() < deadline => {}
            _ => return now,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn reset(
    ctx: &Ctx,
    ep: &Endpoint,
    middle: Option<&Middle>,
    mut rng: Rng,
) -> Result<Values, String> {
    let fixture = Arc::clone(&ctx.shared.fixture);
    warm_up(ep).await?;
    let fds_before = match middle {
        Some(m) => fds_stable(m).await,
        None => None,
    };
    if middle.is_some() && fds_before.is_none() {
        eprint!("\n  reset: cannot list /proc/<pid>/fd (needs root): descriptors not checked\n  ");
    }
    let mut sampler = Sampler::default();

    let gate = Arc::new(Semaphore::new(ctx.reset_concurrency.max(1)));
    let mut streams = JoinSet::new();
    let mut planned_cuts = 0u64;
    for _ in 0..ctx.reset_streams {
        let plan = Plan::draw(&mut rng, &fixture, ctx.reset_fraction);
        planned_cuts += u64::from(plan.cut.is_some());
        let (ep, fixture, gate) = (ep.clone(), Arc::clone(&fixture), gate.clone());
        streams.spawn(async move {
            let describe = plan.describe();
            (one_stream(ep, fixture, plan, gate).await, describe)
        });
    }

    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per kind of ending, in METRICS order from "complete" on.
    let mut counts = [0u64; 6];
    let mut shown = [0usize; 6];
    loop {
        // Cancel safety: join_next and tick are both cancel-safe.
        let (seen, describe) = tokio::select! {
            r = streams.join_next() => match r {
                Some(r) => r.map_err(join_err)?,
                None => break,
            },
            _ = ticker.tick() => {
                if let Some(m) = middle {
                    sampler.sample(m);
                }
                continue;
            }
        };
        let (kind, detail) = match seen {
            Seen::Complete => (0, None),
            Seen::Cut => (1, None),
            Seen::Refused => (2, None),
            Seen::LookedComplete(d) => (3, Some(("looked complete but wrong", d))),
            Seen::NotDelivered(d) => (4, Some(("whole stream not delivered", d))),
            Seen::Other(d) => (5, Some(("failure", d))),
        };
        counts[kind] += 1;
        if let Some((what, d)) = detail {
            if shown[kind] < ERRORS_SHOWN {
                shown[kind] += 1;
                eprint!("\n  reset: {what}: {d}; stream {describe}");
            }
        }
    }
    if counts[3..].iter().any(|&c| c > 0) {
        eprint!("\n  ");
    }
    let fds_end = match middle {
        Some(m) => {
            sampler.sample(m);
            fds_settle(m, fds_before).await
        }
        None => None,
    };
    let count = |v: Option<u64>| v.map(|v| v as f64);
    let above = match (fds_end, fds_before) {
        (Some(end), Some(before)) => Some(end.saturating_sub(before) as f64),
        _ => None,
    };
    let mut values = vec![Some(ctx.reset_streams as f64), Some(planned_cuts as f64)];
    values.extend(counts.iter().map(|&c| Some(c as f64)));
    values.extend([
        count(fds_before),
        count(sampler.fds_peak),
        count(fds_end),
        above,
    ]);
    Ok(values)
}
