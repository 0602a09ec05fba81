//! The soak: N SSE streams through the proxy at once (5000 in a full run), each a replay of the
//! whole fixture that the upstream trickles over minutes, each checked byte for byte and by
//! sha256, while a few connections send small POSTs beside them. Meanwhile the bench samples
//! the proxy's descriptors and memory; at the end it reports streams verified, bytes lost
//! (which must be 0), the small requests, peak memory, descriptors and CPU.
//!
//! Each stream starts at a fixture event chosen by the run's seeded PRNG, so streams carry
//! different bytes: a proxy that mixed up two streams would fail the check, not pass it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::{Endpoint, CLIENT_READ_TIMEOUT};
use crate::procs::{self, Middle};
use crate::rng::Rng;
use crate::scenarios::{
    io_err, join_err, percentile_us, small_exchange, start_exchange, warm_up, Ctx, Meter, Values,
};
use crate::upstream::{Fixture, SMALL_REQUEST_BODY};

/// Metric names, in the order [`soak`] returns values.
pub const METRICS: &[&str] = &[
    "streams",
    "streams failed",
    "MB verified",
    "bytes lost",
    "small requests",
    "small request errors",
    "small latency p50, all open (ms)",
    "small latency p99, all open (ms)",
    "small latency max, all open (ms)",
    "small latency max, opening (ms)",
    "RSS after warm-up (MiB)",
    "RSS peak, VmHWM (MiB)",
    "RSS at end (MiB)",
    "fds before",
    "fds peak (sampled)",
    "fds at end",
    "proxy CPU (s)",
    "proxy CPU (% of a core)",
    "bench CPU (% of a core)",
    "wall time (s)",
];

/// Metrics that fail the run unless 0.
pub const MUST_BE_ZERO: &[&str] = &["streams failed", "bytes lost", "small request errors"];

/// Keep-alive connections of the small-request loop (MAX_CONNECTIONS counts them too).
pub const SMALL_CONNECTIONS: usize = 4;
/// Pause after each small request on one connection: about 400 requests/s in all, enough to
/// cross MAX_REQUESTS_PER_CONNECTION (1000) and reconnect every few seconds.
const SMALL_INTERVAL: Duration = Duration::from_millis(10);
/// Concurrent connects while the streams open (as in idle_streams).
const OPEN_CONCURRENCY: usize = 64;
/// How often the proxy's descriptors and memory are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Bound on opening every stream, on top of the soak's duration.
const OPEN_LIMIT_QUICK: Duration = Duration::from_secs(30);
const OPEN_LIMIT_FULL: Duration = Duration::from_secs(300);
/// Stream errors printed as they happen; the rest are only counted.
const ERRORS_SHOWN: usize = 3;

/// Compares a body, piece by piece, with fixture events `first..first + events` (looped),
/// without building the expected bytes.
pub struct Expected<'a> {
    fixture: &'a Fixture,
    /// The event the next byte belongs to, and the offset in it.
    event: usize,
    offset: usize,
    end: usize,
    /// Bytes received that equal the expected ones, up to the first difference.
    pub matched: u64,
    /// A byte differed, or came after the expected end.
    pub diverged: bool,
    pub len: u64,
}

impl<'a> Expected<'a> {
    pub fn new(fixture: &'a Fixture, first: usize, events: usize) -> Expected<'a> {
        let len = (first..first + events)
            .map(|i| fixture.event(i).len() as u64)
            .sum();
        Expected {
            fixture,
            event: first,
            offset: 0,
            end: first + events,
            matched: 0,
            diverged: false,
            len,
        }
    }

    pub fn feed(&mut self, mut piece: &[u8]) {
        while !piece.is_empty() && !self.diverged {
            if self.event == self.end {
                self.diverged = true;
                return;
            }
            let fixture = self.fixture;
            let event = fixture.event(self.event);
            let rest = &event[self.offset..];
            let n = rest.len().min(piece.len());
            let same = rest[..n]
                .iter()
                .zip(&piece[..n])
                .take_while(|(a, b)| a == b)
                .count();
            self.matched += same as u64;
            if same < n {
                self.diverged = true;
                return;
            }
            piece = &piece[n..];
            self.offset += n;
            if self.offset == event.len() {
                self.event += 1;
                self.offset = 0;
            }
        }
    }

    /// Every expected byte arrived, and nothing else.
    pub fn complete(&self) -> bool {
        !self.diverged && self.matched == self.len
    }
}

/// The sha256 of fixture events `first..first + events`.
pub fn expected_sha(fixture: &Fixture, first: usize, events: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    for i in first..first + events {
        h.update(fixture.event(i));
    }
    h.finalize().into()
}

/// The peak descriptor count of the process under test, sampled while a scenario runs (peak
/// memory needs no sampling: the kernel keeps it, VmHWM).
#[derive(Default)]
pub struct Sampler {
    pub fds_peak: Option<u64>,
}

impl Sampler {
    pub fn sample(&mut self, m: &Middle) {
        if let Some(n) = m.fd_count() {
            self.fds_peak = Some(self.fds_peak.map_or(n, |p| p.max(n)));
        }
    }
}

/// The descriptor count once it holds still: two readings 200 ms apart that agree (bounded).
pub async fn fds_stable(m: &Middle) -> Option<u64> {
    let mut last = m.fd_count();
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = m.fd_count();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// What one stream delivered.
struct StreamCheck {
    expected: u64,
    matched: u64,
    verified: bool,
    error: Option<String>,
}

/// One soak stream: open (at most [`OPEN_CONCURRENCY`] at a time), count itself in `opened`
/// (opened or failed), then read the trickled body to its end, comparing every byte.
#[allow(clippy::too_many_arguments)]
async fn one_stream(
    ep: Endpoint,
    fixture: Arc<Fixture>,
    first: usize,
    events: usize,
    interval_us: u64,
    sha: [u8; 32],
    gate: Arc<Semaphore>,
    opened: Arc<AtomicUsize>,
    read_limit: Duration,
) -> StreamCheck {
    let mut expect = Expected::new(&fixture, first, events);
    let mut hasher = Sha256::new();
    let read = async {
        let permit = gate.acquire_owned().await.map_err(|_| "gate closed")?;
        let req = ep.request(
            "POST",
            &format!("/bench/sse/framed/chunked/{first}/{events}/{interval_us}"),
            "text/event-stream",
            SMALL_REQUEST_BODY,
        );
        let mut conn = None;
        let started = start_exchange(&ep, &mut conn, &req, 2048).await;
        opened.fetch_add(1, Ordering::Relaxed);
        drop(permit);
        let (wire, mut body, _, _) = started?;
        wire.set_read_timeout(read_limit);
        while let Some(piece) = body.next(wire).await.map_err(io_err("SSE body"))? {
            expect.feed(piece);
            hasher.update(piece);
        }
        Ok::<(), String>(())
    }
    .await;
    let hash_ok = <[u8; 32]>::from(hasher.finalize()) == sha;
    let verified = read.is_ok() && expect.complete() && hash_ok;
    let error = match read {
        Err(e) => Some(format!(
            "{e} after {} of {} bytes",
            expect.matched, expect.len
        )),
        Ok(()) if verified => None,
        Ok(()) => Some(format!(
            "body ended by its framing but differs from the fixture (first {} of {} bytes \
             equal, sha256 {})",
            expect.matched,
            expect.len,
            if hash_ok { "equal" } else { "differs" }
        )),
    };
    StreamCheck {
        expected: expect.len,
        matched: if verified { expect.len } else { expect.matched },
        verified,
        error,
    }
}

/// What the small-request loop did.
#[derive(Default)]
struct SmallTally {
    done: u64,
    errors: u64,
    /// Latencies of requests sent once every stream was open, and before.
    latencies_ns: Vec<u64>,
    opening_max_ns: u64,
    first_error: Option<String>,
}

/// Small POSTs on one keep-alive connection until `stop`, one every [`SMALL_INTERVAL`]; a
/// failed one is counted and the connection replaced. Latencies count apart while the streams
/// open (`opened` below `n`): the load generator then works hardest (TLS handshakes of the
/// upstream), and its delays are not the proxy's.
async fn small_loop(
    ep: Endpoint,
    mut stop: watch::Receiver<bool>,
    opened: Arc<AtomicUsize>,
    n: usize,
) -> SmallTally {
    let req = ep.request(
        "POST",
        "/bench/small",
        "application/json",
        SMALL_REQUEST_BODY,
    );
    let mut tally = SmallTally::default();
    let mut conn = None;
    while !*stop.borrow() {
        let all_open = opened.load(Ordering::Relaxed) >= n;
        let t = Instant::now();
        match small_exchange(&ep, &mut conn, &req).await {
            Ok(()) => {
                tally.done += 1;
                let ns = t.elapsed().as_nanos() as u64;
                if all_open {
                    tally.latencies_ns.push(ns);
                } else {
                    tally.opening_max_ns = tally.opening_max_ns.max(ns);
                }
            }
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(e);
                conn = None;
            }
        }
        // Cancel safety: only a timer and a watch receiver are dropped.
        tokio::select! {
            _ = tokio::time::sleep(SMALL_INTERVAL) => {}
            _ = stop.changed() => {}
        }
    }
    tally
}

pub async fn soak(
    ctx: &Ctx,
    ep: &Endpoint,
    middle: Option<&Middle>,
    mut rng: Rng,
) -> Result<Values, String> {
    let middle = middle.ok_or("soak needs the proxy")?;
    let n = ctx.streams;
    let fixture = Arc::clone(&ctx.shared.fixture);
    let events = fixture.events.len();
    // The last event leaves one soak duration after the first.
    let interval_us = (ctx.soak.as_micros() / (events as u128 - 1)).max(1) as u64;
    let interval = Duration::from_micros(interval_us);
    // A read waits at most one interval, normally; allow for a loaded machine.
    let read_limit = CLIENT_READ_TIMEOUT.max(interval * 4);
    let open_limit = if ctx.quick {
        OPEN_LIMIT_QUICK
    } else {
        OPEN_LIMIT_FULL
    };

    warm_up(ep).await?;
    let fds_before = middle.fd_count();
    if fds_before.is_none() {
        eprint!("\n  soak: cannot list /proc/<pid>/fd (needs root): descriptors not counted\n  ");
    }
    let rss_before = middle.rss_kib();
    let meter = Meter::start(Some(middle));
    let bench_cpu0 = procs::self_cpu_ns();
    let mut sampler = Sampler::default();
    sampler.sample(middle);

    let opened = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut small = JoinSet::new();
    for _ in 0..SMALL_CONNECTIONS {
        small.spawn(small_loop(ep.clone(), stop_rx.clone(), opened.clone(), n));
    }

    let gate = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let mut shas: HashMap<usize, [u8; 32]> = HashMap::new();
    let mut streams = JoinSet::new();
    for _ in 0..n {
        let first = rng.below(events as u64) as usize;
        let sha = *shas
            .entry(first)
            .or_insert_with(|| expected_sha(&fixture, first, events));
        streams.spawn(one_stream(
            ep.clone(),
            Arc::clone(&fixture),
            first,
            events,
            interval_us,
            sha,
            gate.clone(),
            opened.clone(),
            read_limit,
        ));
    }

    let deadline = tokio::time::Instant::now() + open_limit + ctx.soak + read_limit;
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut failed, mut expected, mut matched, mut shown) = (0u64, 0u64, 0u64, 0usize);
    loop {
        // Cancel safety: join_next and tick are both cancel-safe.
        let check = tokio::select! {
            r = streams.join_next() => match r {
                Some(r) => r.map_err(join_err)?,
                None => break,
            },
            _ = ticker.tick() => {
                sampler.sample(middle);
                if tokio::time::Instant::now() > deadline {
                    return Err(format!(
                        "{} of {n} streams still open after {:?}",
                        streams.len(),
                        open_limit + ctx.soak + read_limit
                    ));
                }
                continue;
            }
        };
        expected += check.expected;
        matched += check.matched;
        if !check.verified {
            failed += 1;
            if shown < ERRORS_SHOWN {
                shown += 1;
                eprint!(
                    "\n  soak stream failed: {}",
                    check.error.as_deref().unwrap_or("?")
                );
            }
        }
    }
    sampler.sample(middle);
    let _ = stop_tx.send(true);
    let mut tally = SmallTally::default();
    while let Some(r) = small.join_next().await {
        let t = r.map_err(join_err)?;
        tally.done += t.done;
        tally.errors += t.errors;
        tally.latencies_ns.extend(t.latencies_ns);
        tally.opening_max_ns = tally.opening_max_ns.max(t.opening_max_ns);
        if tally.first_error.is_none() {
            tally.first_error = t.first_error;
        }
    }
    if let Some(e) = &tally.first_error {
        eprint!("\n  soak small request failed: {e}");
    }
    if failed > 0 || tally.errors > 0 {
        eprint!("\n  ");
    }
    let secs = meter.secs();
    let cpu_s = meter.cpu_ns().unwrap_or(0) as f64 / 1e9;
    // The load generator and the upstreams share one core: near 100 %, the latencies are
    // the bench's, not the proxy's.
    let bench_cpu_s = procs::self_cpu_ns().saturating_sub(bench_cpu0) as f64 / 1e9;
    // Streams are done; what the proxy still holds is its baseline plus idle pooled upstream
    // connections (POOL_MAX_IDLE, 32 by default), so wait for the count to hold still rather
    // than for the baseline.
    let fds_end = fds_stable(middle).await;
    tally.latencies_ns.sort_unstable();
    let ms = |p: f64| percentile_us(&tally.latencies_ns, p).map(|us| us / 1000.0);
    let mib = |kib: u64| Some(kib as f64 / 1024.0);
    let count = |v: Option<u64>| v.map(|v| v as f64);
    Ok(vec![
        Some(n as f64),
        Some(failed as f64),
        Some(matched as f64 / 1e6),
        Some(expected.saturating_sub(matched) as f64),
        Some(tally.done as f64),
        Some(tally.errors as f64),
        ms(50.0),
        ms(99.0),
        tally.latencies_ns.last().map(|&ns| ns as f64 / 1e6),
        Some(tally.opening_max_ns as f64 / 1e6),
        mib(rss_before),
        mib(middle.peak_rss_kib()),
        mib(middle.rss_kib()),
        count(fds_before),
        count(sampler.fds_peak),
        count(fds_end),
        Some(cpu_s),
        Some(cpu_s / secs * 100.0),
        Some(bench_cpu_s / secs * 100.0),
        Some(secs),
    ])
}
