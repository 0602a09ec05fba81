//! The scenarios: each one runs against one target (direct, proxy, nginx or HAProxy) over one
//! upstream transport (plain or TLS), checks every answer it times, and returns its metrics. The
//! two endurance scenarios, soak and reset, live in `soak.rs` and `reset.rs`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{Barrier, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::client::Endpoint;
use crate::procs::{self, AnchorSpec, Middle, ProxySpec};
use crate::rng::{self, Rng};
use crate::tls::TlsMaterial;
use crate::upstream::{Shared, Upstream, SMALL_REQUEST_BODY, SMALL_RESPONSE_BODY};
use crate::wire::{Body, Wire};

/// The sandbox's credential, sent to the proxy and the anchors; each checks it (PHANTOM_TOKEN,
/// nginx's `if`, HAProxy's `http-request return status 401 unless`) as a deployment would, and
/// the upstream must never see it.
pub const PHANTOM_TOKEN: &str = "sk-ant-phantom-bench";
/// Concurrent keep-alive connections in `small_post`.
const SMALL_POST_CONNECTIONS: usize = 8;
/// Concurrent connects while `idle_streams` opens its streams.
const IDLE_CONNECT_CONCURRENCY: usize = 64;
/// Pause between opening the last stream and reading memory, for allocators to settle.
const SETTLE: Duration = Duration::from_millis(300);
/// Spacing of paced SSE events.
const PACED_INTERVAL_US: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    SmallPost,
    SseBurst,
    SsePaced,
    Upload32m,
    Download32m,
    IdleStreams,
    Soak,
    Reset,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::SmallPost,
        Scenario::SseBurst,
        Scenario::SsePaced,
        Scenario::Upload32m,
        Scenario::Download32m,
        Scenario::IdleStreams,
        Scenario::Soak,
        Scenario::Reset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::SmallPost => "small_post",
            Scenario::SseBurst => "sse_burst",
            Scenario::SsePaced => "sse_paced",
            Scenario::Upload32m => "upload_32m",
            Scenario::Download32m => "download_32m",
            Scenario::IdleStreams => "idle_streams",
            Scenario::Soak => "soak",
            Scenario::Reset => "reset",
        }
    }

    pub fn about(self) -> &'static str {
        match self {
            Scenario::SmallPost => "small non-streamed POSTs over 8 keep-alive connections",
            Scenario::SseBurst => "SSE fixture replayed unpaced, one chunk and write per event",
            Scenario::SsePaced => "SSE events 1 ms apart, stamped by the upstream; TTFB",
            Scenario::Upload32m => "32 MiB request body, hashed by the upstream",
            Scenario::Download32m => "32 MiB response body, hashed by the client",
            Scenario::IdleStreams => "N held SSE streams: proxy memory per stream",
            Scenario::Soak => {
                "N SSE streams trickled for minutes beside small POSTs, each checked by sha256"
            }
            Scenario::Reset => {
                "upstream resets streams at random points: complete or visibly cut, fds return"
            }
        }
    }

    /// Endurance scenarios run for minutes in a full run, so they run only when named (or,
    /// small, in a quick run); they are reported in a section of their own.
    pub fn endurance(self) -> bool {
        matches!(self, Scenario::Soak | Scenario::Reset)
    }

    /// Whether the scenario means anything against `target`. Memory and descriptors need a
    /// process in the middle; the soak and reset study the proxy, with a direct connection as
    /// the control that shows reset's classifier sees the cuts the upstream makes.
    pub fn runs_on(self, target: Target) -> bool {
        match self {
            Scenario::IdleStreams => target != Target::Direct,
            Scenario::Soak => target == Target::Proxy,
            Scenario::Reset => matches!(target, Target::Direct | Target::Proxy),
            _ => true,
        }
    }

    /// Metrics that must be 0: any other value fails the run (its figures are still reported).
    pub fn must_be_zero(self) -> &'static [&'static str] {
        match self {
            Scenario::Soak => crate::soak::MUST_BE_ZERO,
            Scenario::Reset => crate::reset::MUST_BE_ZERO,
            _ => &[],
        }
    }

    /// Metric names, in the order `run` returns values.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Scenario::SmallPost => &[
                "requests/s",
                "latency p50 (µs)",
                "latency p99 (µs)",
                "CPU µs/request",
            ],
            Scenario::SseBurst => &["events/s", "MB/s", "CPU µs/MiB"],
            Scenario::SsePaced => &[
                "TTFB p50 (µs)",
                "event delay p50 (µs)",
                "event delay p99 (µs)",
                "CPU µs/event",
            ],
            Scenario::Upload32m | Scenario::Download32m => &["MB/s", "CPU µs/MiB"],
            Scenario::IdleStreams => &["RSS KiB/stream", "CPU µs/stream"],
            Scenario::Soak => crate::soak::METRICS,
            Scenario::Reset => crate::reset::METRICS,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
    /// The load generator reaches the proxy over a Unix socket (`LISTEN_UNIX`), the proxy
    /// the upstream over plain TCP: compared with `plain`, the cost of the socket alone.
    Unix,
}

impl Transport {
    /// What a run without `--transports` covers.
    pub const ALL: [Transport; 2] = [Transport::Plain, Transport::Tls];
    /// Every transport, `unix` only when asked for (`--transports plain,unix`).
    pub const EVERY: [Transport; 3] = [Transport::Plain, Transport::Tls, Transport::Unix];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Tls => "tls",
            Transport::Unix => "unix",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Direct,
    Proxy,
    /// The anchors: established reverse proxies configured for the proxy's job.
    Nginx,
    Haproxy,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::Direct,
        Target::Proxy,
        Target::Nginx,
        Target::Haproxy,
    ];
    /// The established proxies the proxy is compared with.
    pub const ANCHORS: [Target; 2] = [Target::Nginx, Target::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Proxy => "proxy",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
        }
    }
}

/// Metric values in [`Scenario::metrics`] order; `None` where a metric does not apply (the
/// CPU of a direct connection: there is no middle process).
pub type Values = Vec<Option<f64>>;

/// What one run produced.
pub struct RunResult {
    pub values: Values,
    /// CPUs' worth of work by other processes on the machine during the run (compilers of
    /// other engineers, say): above a few tenths, the run's timings are suspect.
    pub other_load: f64,
    /// Checks the run failed although it measured everything (a metric that must be 0 is
    /// not): the figures are reported, and the run counts as failed.
    pub failed_checks: Vec<String>,
    /// Over a TLS upstream: the handshakes the upstream completed and how many resumed a
    /// session. Not a metric; printed, since full handshakes weigh on CPU per stream.
    pub handshakes: Option<(u64, u64)>,
}

/// Everything a scenario run needs, made once per bench run.
pub struct Ctx {
    pub quick: bool,
    /// Streams held by `idle_streams` and trickled by `soak`.
    pub streams: usize,
    /// How long the soak's streams last.
    pub soak: Duration,
    /// Streams the reset scenario runs, and how many at a time.
    pub reset_streams: usize,
    pub reset_concurrency: usize,
    /// Share of the reset scenario's streams the upstream cuts.
    pub reset_fraction: f64,
    /// The bench's seed; each run derives its own from it (see `rng::derive`).
    pub seed: u64,
    pub shared: Arc<Shared>,
    pub tls: TlsMaterial,
    pub ca_file: PathBuf,
    /// The bench's temp dir.
    pub dir: PathBuf,
    pub token: String,
    pub proxy_bin: PathBuf,
    /// Command the proxy runs under, for profiling (its CPU and memory figures are then off).
    pub proxy_wrapper: Vec<String>,
    /// More settings for the proxy (`--proxy-env`).
    pub proxy_env: Vec<(String, String)>,
    /// Write a new token to the proxy's stdin this often (`--rotate-ms`).
    pub rotate: Option<Duration>,
    /// Reach the upstream through an in-bench CONNECT proxy (`--egress`).
    pub egress: bool,
    /// Requests timed by small_post (`--small-posts`).
    pub small_posts: Option<usize>,
    pub nginx_bin: Option<PathBuf>,
    pub haproxy_bin: Option<PathBuf>,
    /// CPU the proxy and the anchors are pinned to.
    pub cpu_middle: Option<usize>,
    /// sha256 of the 32 MiB payload.
    pub payload_sha: String,
    /// Counter for unique per-run file names.
    pub runs: AtomicUsize,
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The CPU time of the process under test, read before and after a measured phase.
pub struct Meter<'a> {
    middle: Option<&'a Middle>,
    cpu0: u64,
    t0: Instant,
}

impl<'a> Meter<'a> {
    pub fn start(middle: Option<&'a Middle>) -> Meter<'a> {
        Meter {
            middle,
            cpu0: middle.map_or(0, Middle::cpu_ns),
            t0: Instant::now(),
        }
    }

    pub fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// CPU ns of the process under test since the start (None for a direct connection).
    pub fn cpu_ns(&self) -> Option<u64> {
        self.middle.map(|m| m.cpu_ns().saturating_sub(self.cpu0))
    }

    /// CPU µs of the process under test per `units` (None for a direct connection).
    fn cpu_us_per(&self, units: f64) -> Option<f64> {
        self.middle
            .map(|m| m.cpu_ns().saturating_sub(self.cpu0) as f64 / 1000.0 / units)
    }
}

pub fn percentile_us(sorted_ns: &[u64], p: f64) -> Option<f64> {
    if sorted_ns.is_empty() {
        return None;
    }
    let i = ((sorted_ns.len() as f64 * p / 100.0) as usize).min(sorted_ns.len() - 1);
    Some(sorted_ns[i] as f64 / 1000.0)
}

pub fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

pub fn join_err(e: tokio::task::JoinError) -> String {
    format!("task failed: {e}")
}

/// Runs one scenario against one target over one transport: starts a fresh upstream and, unless
/// direct, the proxy or an anchor in front of it; checks that the upstream saw the real token on
/// every request, and that an anchor logged each request it forwarded; stops everything.
pub async fn run(
    ctx: &Ctx,
    scenario: Scenario,
    transport: Transport,
    target: Target,
) -> Result<RunResult, String> {
    if !scenario.runs_on(target) {
        return Ok(RunResult {
            values: vec![None; scenario.metrics().len()],
            other_load: 0.0,
            failed_checks: Vec::new(),
            handshakes: None,
        });
    }
    let seq = ctx.runs.fetch_add(1, Ordering::Relaxed);
    let tls = transport == Transport::Tls;
    let acceptor = tls.then(|| TlsAcceptor::from(Arc::clone(&ctx.tls.server)));
    let upstream = Upstream::start(Arc::clone(&ctx.shared), acceptor)
        .await
        .map_err(io_err("upstream"))?;
    let held = match scenario {
        Scenario::IdleStreams => ctx.streams,
        Scenario::Soak => ctx.streams + crate::soak::SMALL_CONNECTIONS,
        Scenario::Reset => ctx.reset_concurrency,
        _ => 0,
    };
    let middle = match target {
        Target::Direct => None,
        Target::Proxy => {
            let scheme = if tls { "https" } else { "http" };
            let mut env = vec![("PHANTOM_TOKEN", PHANTOM_TOKEN.to_string())];
            if held > 0 {
                env.push(("MAX_CONNECTIONS", (held + 64).max(1024).to_string()));
            }
            if scenario == Scenario::Reset {
                // No idle pool: after the last stream the proxy should hold exactly the
                // descriptors it held before the first, with none parked for reuse.
                env.push(("POOL_MAX_IDLE", "0".to_string()));
            }
            if ctx.egress {
                let at = crate::egress::start()
                    .await
                    .map_err(io_err("egress proxy"))?;
                let name = if tls { "HTTPS_PROXY" } else { "HTTP_PROXY" };
                env.push((name, format!("http://{at}")));
            }
            if ctx.rotate.is_some() {
                env.push(("TOKEN_UPDATES", "stdin".to_string()));
            }
            if transport == Transport::Unix {
                let sock = ctx.dir.join(format!("proxy-{seq}.sock"));
                env.push(("LISTEN_UNIX", sock.to_string_lossy().into_owned()));
            }
            let extra = ctx.proxy_env.iter().map(|(k, v)| (k.as_str(), v.clone()));
            let spec = ProxySpec {
                bin: &ctx.proxy_bin,
                wrapper: &ctx.proxy_wrapper,
                target: format!("{scheme}://{}", upstream.addr),
                ca_file: tls.then_some(ctx.ca_file.as_path()),
                env,
                extra_env: extra.collect(),
                token: &ctx.token,
                rotate: ctx.rotate,
                log: ctx.dir.join(format!("proxy-{seq}.log")),
                cpu: ctx.cpu_middle,
            };
            Some(procs::start_proxy(spec).await?)
        }
        Target::Nginx | Target::Haproxy => {
            let bin = match target {
                Target::Nginx => ctx.nginx_bin.as_deref().ok_or("nginx not installed")?,
                _ => ctx.haproxy_bin.as_deref().ok_or("haproxy not installed")?,
            };
            let spec = AnchorSpec {
                bin,
                dir: ctx.dir.join(format!("{}-{seq}", target.name())),
                upstream: upstream.addr,
                tls_ca: tls.then_some(ctx.ca_file.as_path()),
                token: &ctx.token,
                phantom: PHANTOM_TOKEN,
                connections: held,
                cpu: ctx.cpu_middle,
            };
            Some(if target == Target::Nginx {
                procs::start_nginx(spec).await?
            } else {
                procs::start_haproxy(spec).await?
            })
        }
    };
    let endpoint = match &middle {
        None => Endpoint {
            addr: upstream.addr,
            tls: tls.then(|| TlsConnector::from(Arc::clone(&ctx.tls.client))),
            auth: format!("Bearer {}", ctx.token),
            unix: None,
        },
        Some(m) => Endpoint {
            addr: m.addr,
            tls: None,
            auth: format!("Bearer {PHANTOM_TOKEN}"),
            unix: m.unix.clone(),
        },
    };
    let t0 = Instant::now();
    let busy0 = procs::machine_busy_ns();
    let ours0 = procs::self_cpu_ns() + middle.as_ref().map_or(0, Middle::cpu_ns);
    let mut limit = if ctx.quick {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(900)
    };
    if scenario == Scenario::Soak {
        // A backstop: the soak bounds its own phases (opening, its duration, each read).
        limit = limit.max(ctx.soak + Duration::from_secs(if ctx.quick { 90 } else { 600 }));
    }
    // The same plan for every target of one scenario and transport.
    let rng = Rng::new(rng::derive(ctx.seed, scenario as u64, transport as u64));
    let body = async {
        match scenario {
            Scenario::SmallPost => small_post(ctx, &endpoint, middle.as_ref()).await,
            Scenario::SseBurst => sse_burst(ctx, &endpoint, middle.as_ref()).await,
            Scenario::SsePaced => sse_paced(ctx, &endpoint, middle.as_ref()).await,
            Scenario::Upload32m => upload(ctx, &endpoint, middle.as_ref()).await,
            Scenario::Download32m => download(ctx, &endpoint, middle.as_ref()).await,
            Scenario::IdleStreams => idle_streams(ctx, &endpoint, middle.as_ref(), &upstream).await,
            Scenario::Soak => crate::soak::soak(ctx, &endpoint, middle.as_ref(), rng).await,
            Scenario::Reset => crate::reset::reset(ctx, &endpoint, middle.as_ref(), rng).await,
        }
    };
    let mut result = tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| Err(format!("scenario did not finish within {limit:?}")));
    let ours = procs::self_cpu_ns() + middle.as_ref().map_or(0, Middle::cpu_ns) - ours0;
    let other = procs::machine_busy_ns()
        .saturating_sub(busy0)
        .saturating_sub(ours);
    let other_load = other as f64 / t0.elapsed().as_nanos().max(1) as f64;
    let bad_auth = upstream
        .stats
        .bad_auth
        .load(std::sync::atomic::Ordering::Relaxed);
    if result.is_ok() && bad_auth > 0 {
        result = Err(format!(
            "{bad_auth} upstream requests lacked exactly one `Authorization: Bearer <token>`"
        ));
    }
    // An anchor logs each request when it ends; give the last ones a moment to be written.
    let mut log_check = None;
    if let (Ok(_), Some(m)) = (&result, &middle) {
        let seen = upstream.stats.requests.load(Ordering::Relaxed) as usize;
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Some(logged) = m.logged_requests() {
            if logged >= seen || Instant::now() > deadline {
                if logged != seen {
                    log_check = Some(format!(
                        "{logged} request log lines for {seen} requests the upstream saw"
                    ));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if let Some(mut m) = middle {
        if result.is_err() && !m.alive() {
            result = result.map_err(|e| format!("{e} (process exited: {})", m.last_log_line()));
        }
        m.stop().await;
    }
    let handshakes = tls.then(|| {
        (
            upstream.stats.handshakes.load(Ordering::Relaxed),
            upstream.stats.resumed.load(Ordering::Relaxed),
        )
    });
    drop(upstream);
    result.map(|values| {
        let failed_checks = scenario
            .metrics()
            .iter()
            .zip(&values)
            .filter(|(m, v)| scenario.must_be_zero().contains(m) && v.is_some_and(|v| v != 0.0))
            .map(|(m, v)| format!("{m} = {} (must be 0)", v.unwrap_or(0.0)))
            .chain(log_check)
            .collect();
        RunResult {
            values,
            other_load,
            failed_checks,
            handshakes,
        }
    })
}

/// One small POST on a keep-alive connection, reconnecting when the server closes it.
pub async fn small_exchange(
    ep: &Endpoint,
    conn: &mut Option<Wire>,
    req: &[u8],
) -> Result<(), String> {
    let wire = match conn {
        Some(w) => w,
        None => conn.insert(ep.connect(4096).await.map_err(io_err("connect"))?),
    };
    wire.send(req).await.map_err(io_err("send request"))?;
    let head = wire
        .read_response_head(false)
        .await
        .map_err(io_err("response head"))?;
    if head.status != 200 {
        return Err(format!("status {} (expected 200)", head.status));
    }
    let mut body = Vec::with_capacity(SMALL_RESPONSE_BODY.len());
    Body::new(head.framing)
        .drain(wire, |p| body.extend_from_slice(p))
        .await
        .map_err(io_err("response body"))?;
    if body != SMALL_RESPONSE_BODY {
        return Err("response body differs from what the upstream sent".into());
    }
    if head.close {
        *conn = None;
    }
    Ok(())
}

async fn small_post(ctx: &Ctx, ep: &Endpoint, middle: Option<&Middle>) -> Result<Values, String> {
    let (warm, count) = if ctx.quick { (50, 400) } else { (200, 5000) };
    let count = ctx.small_posts.unwrap_or(count);
    let req: Arc<[u8]> = ep
        .request(
            "POST",
            "/bench/small",
            "application/json",
            SMALL_REQUEST_BODY,
        )
        .into();
    let warmed = Arc::new(Barrier::new(SMALL_POST_CONNECTIONS + 1));
    let go = Arc::new(Barrier::new(SMALL_POST_CONNECTIONS + 1));
    let mut set = JoinSet::new();
    for _ in 0..SMALL_POST_CONNECTIONS {
        let (ep, req, warmed, go) = (ep.clone(), req.clone(), warmed.clone(), go.clone());
        set.spawn(async move {
            let mut conn = None;
            let mut warm_result = Ok(());
            for _ in 0..warm {
                warm_result = small_exchange(&ep, &mut conn, &req).await;
                if warm_result.is_err() {
                    break;
                }
            }
            // Reach both barriers even after an error, so the others never wait in vain.
            warmed.wait().await;
            go.wait().await;
            warm_result?;
            let mut latencies = Vec::with_capacity(count);
            for _ in 0..count {
                let t = Instant::now();
                small_exchange(&ep, &mut conn, &req).await?;
                latencies.push(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, String>(latencies)
        });
    }
    warmed.wait().await;
    let meter = Meter::start(middle);
    go.wait().await;
    let mut latencies = Vec::with_capacity(count * SMALL_POST_CONNECTIONS);
    while let Some(r) = set.join_next().await {
        latencies.extend(r.map_err(join_err)??);
    }
    let secs = meter.secs();
    let n = latencies.len() as f64;
    let cpu = meter.cpu_us_per(n);
    latencies.sort_unstable();
    Ok(vec![
        Some(n / secs),
        percentile_us(&latencies, 50.0),
        percentile_us(&latencies, 99.0),
        cpu,
    ])
}

/// Sends `req` and reads the response head, reconnecting first if needed.
/// Returns the connection and the time from sending to the head being read.
pub async fn start_exchange<'c>(
    ep: &Endpoint,
    conn: &'c mut Option<Wire>,
    req: &[u8],
    capacity: usize,
) -> Result<(&'c mut Wire, Body, bool, Duration), String> {
    let wire = match conn {
        Some(w) => w,
        None => conn.insert(ep.connect(capacity).await.map_err(io_err("connect"))?),
    };
    let t = Instant::now();
    wire.send(req).await.map_err(io_err("send request"))?;
    let head = wire
        .read_response_head(false)
        .await
        .map_err(io_err("response head"))?;
    let ttfb = t.elapsed();
    if head.status != 200 {
        return Err(format!("status {} (expected 200)", head.status));
    }
    Ok((wire, Body::new(head.framing), head.close, ttfb))
}

async fn sse_burst(ctx: &Ctx, ep: &Endpoint, middle: Option<&Middle>) -> Result<Values, String> {
    let (repeat, responses) = if ctx.quick { (5, 5) } else { (20, 30) };
    let fixture = &ctx.shared.fixture;
    let mut expected = Sha256::new();
    let mut bytes_per = 0usize;
    for _ in 0..repeat {
        for e in &fixture.events {
            expected.update(e);
            bytes_per += e.len();
        }
    }
    let expected = expected.finalize();
    let events_per = fixture.events.len() * repeat;
    let req = ep.request(
        "POST",
        &format!("/bench/sse/burst/{repeat}"),
        "text/event-stream",
        SMALL_REQUEST_BODY,
    );
    let mut conn = None;
    let mut meter = Meter::start(middle);
    // Response 0 warms up and is not measured.
    for i in 0..=responses {
        if i == 1 {
            meter = Meter::start(middle);
        }
        let (wire, mut body, close, _) = start_exchange(ep, &mut conn, &req, 64 * 1024).await?;
        let mut hasher = Sha256::new();
        let n = body
            .drain(wire, |p| hasher.update(p))
            .await
            .map_err(io_err("SSE body"))?;
        if n as usize != bytes_per || hasher.finalize() != expected {
            return Err(format!(
                "SSE body differs from the fixture ({n} bytes, expected {bytes_per})"
            ));
        }
        if close {
            conn = None;
        }
    }
    let secs = meter.secs();
    let total_bytes = (bytes_per * responses) as f64;
    let cpu = meter.cpu_us_per(total_bytes / (1024.0 * 1024.0));
    Ok(vec![
        Some((events_per * responses) as f64 / secs),
        Some(total_bytes / secs / 1e6),
        cpu,
    ])
}

/// Reads a paced SSE body: per event, receive time minus the `: t=` stamp; the rest of the
/// bytes must be the fixture's. Returns the delays in ns.
async fn read_paced(
    ctx: &Ctx,
    wire: &mut Wire,
    body: &mut Body,
    events: usize,
) -> Result<Vec<u64>, String> {
    let mut expected = Sha256::new();
    for i in 0..events {
        expected.update(ctx.shared.fixture.event(i));
    }
    let expected = expected.finalize();
    let mut hasher = Sha256::new();
    let mut delays = Vec::with_capacity(events);
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    while let Some(piece) = body.next(wire).await.map_err(io_err("SSE body"))? {
        let now = ctx.shared.clock.elapsed().as_nanos() as u64;
        pending.extend_from_slice(piece);
        let mut done = 0;
        while let Some(i) = memchr::memmem::find(&pending[done..], b"\n\n") {
            let event = &pending[done..done + i + 2];
            let stamp_end = memchr::memchr(b'\n', event).unwrap_or(0);
            let sent = event[..stamp_end]
                .strip_prefix(b": t=")
                .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u64>().ok())
                .ok_or("SSE event without its `: t=` stamp")?;
            delays.push(now.saturating_sub(sent));
            hasher.update(&event[stamp_end + 1..]);
            done += i + 2;
        }
        pending.drain(..done);
    }
    if delays.len() != events || !pending.is_empty() || hasher.finalize() != expected {
        return Err(format!(
            "paced SSE body differs from the fixture ({} of {events} events)",
            delays.len()
        ));
    }
    Ok(delays)
}

async fn sse_paced(ctx: &Ctx, ep: &Endpoint, middle: Option<&Middle>) -> Result<Values, String> {
    let (events, ttfb_requests) = if ctx.quick { (300, 20) } else { (3000, 200) };
    let warm_events = 20;
    let paced = |n: usize| {
        ep.request(
            "POST",
            &format!("/bench/sse/paced/{n}/{PACED_INTERVAL_US}"),
            "text/event-stream",
            SMALL_REQUEST_BODY,
        )
    };
    let mut conn = None;
    // Warm-up, then time to first byte (request sent to response head read) over one-event
    // streams, while the bench thread has nothing else to do.
    let (wire, mut body, close, _) =
        start_exchange(ep, &mut conn, &paced(warm_events), 64 * 1024).await?;
    read_paced(ctx, wire, &mut body, warm_events).await?;
    if close {
        conn = None;
    }
    let one = paced(1);
    let mut ttfb = Vec::with_capacity(ttfb_requests);
    for _ in 0..ttfb_requests {
        let (wire, mut body, close, first) = start_exchange(ep, &mut conn, &one, 64 * 1024).await?;
        read_paced(ctx, wire, &mut body, 1).await?;
        ttfb.push(first.as_nanos() as u64);
        if close {
            conn = None;
        }
    }
    ttfb.sort_unstable();

    let meter = Meter::start(middle);
    let (wire, mut body, _, _) = start_exchange(ep, &mut conn, &paced(events), 64 * 1024).await?;
    let mut delays = read_paced(ctx, wire, &mut body, events).await?;
    let cpu = meter.cpu_us_per(events as f64);
    delays.sort_unstable();
    Ok(vec![
        percentile_us(&ttfb, 50.0),
        percentile_us(&delays, 50.0),
        percentile_us(&delays, 99.0),
        cpu,
    ])
}

async fn upload(ctx: &Ctx, ep: &Endpoint, middle: Option<&Middle>) -> Result<Values, String> {
    let rounds = if ctx.quick { 2 } else { 8 };
    let payload = &ctx.shared.payload;
    let head = ep.head(
        "POST",
        "/bench/upload",
        "application/json",
        Some(payload.len()),
    );
    let expect = format!(
        r#"{{"bytes":{},"sha256":"{}"}}"#,
        payload.len(),
        ctx.payload_sha
    );
    let mut conn: Option<Wire> = None;
    let mut meter = Meter::start(middle);
    for i in 0..=rounds {
        if i == 1 {
            meter = Meter::start(middle);
        }
        let wire = match &mut conn {
            Some(w) => w,
            None => conn.insert(ep.connect(16 * 1024).await.map_err(io_err("connect"))?),
        };
        wire.send(&head).await.map_err(io_err("send head"))?;
        wire.send(payload).await.map_err(io_err("send body"))?;
        let resp = wire
            .read_response_head(false)
            .await
            .map_err(io_err("response head"))?;
        let mut answer = Vec::new();
        Body::new(resp.framing)
            .drain(wire, |p| answer.extend_from_slice(p))
            .await
            .map_err(io_err("response body"))?;
        if resp.status != 200 || answer != expect.as_bytes() {
            return Err(format!(
                "upload answer: status {}, {}",
                resp.status,
                if answer == expect.as_bytes() {
                    "digest ok"
                } else {
                    "upstream's byte count or sha256 differs from what was sent"
                }
            ));
        }
        if resp.close {
            conn = None;
        }
    }
    let secs = meter.secs();
    let bytes = (payload.len() * rounds) as f64;
    Ok(vec![
        Some(bytes / secs / 1e6),
        meter.cpu_us_per(bytes / (1024.0 * 1024.0)),
    ])
}

async fn download(ctx: &Ctx, ep: &Endpoint, middle: Option<&Middle>) -> Result<Values, String> {
    let rounds = if ctx.quick { 2 } else { 8 };
    let len = ctx.shared.payload.len();
    let mut req = ep.head(
        "GET",
        &format!("/bench/download/{len}"),
        "application/octet-stream",
        None,
    );
    req.shrink_to_fit();
    let mut conn = None;
    let mut meter = Meter::start(middle);
    for i in 0..=rounds {
        if i == 1 {
            meter = Meter::start(middle);
        }
        let (wire, mut body, close, _) = start_exchange(ep, &mut conn, &req, 64 * 1024).await?;
        let mut hasher = Sha256::new();
        let n = body
            .drain(wire, |p| hasher.update(p))
            .await
            .map_err(io_err("download body"))?;
        if n as usize != len || hex(&hasher.finalize()) != ctx.payload_sha {
            return Err(format!(
                "download body differs from the payload ({n} bytes)"
            ));
        }
        if close {
            conn = None;
        }
    }
    let secs = meter.secs();
    let bytes = (len * rounds) as f64;
    Ok(vec![
        Some(bytes / secs / 1e6),
        meter.cpu_us_per(bytes / (1024.0 * 1024.0)),
    ])
}

/// One held stream: open, read the first event, report it established, then wait for the rest.
async fn hold_one(
    ep: Endpoint,
    req: Arc<[u8]>,
    first: Arc<[u8]>,
    whole: Arc<[u8]>,
    gate: Arc<Semaphore>,
    established: Arc<AtomicUsize>,
    hold_limit: Duration,
) -> Result<(), String> {
    let permit = gate.acquire_owned().await.map_err(|_| "gate closed")?;
    let mut conn = None;
    let (wire, mut body, _, _) = start_exchange(&ep, &mut conn, &req, 2048).await?;
    let mut got = Vec::with_capacity(whole.len());
    while got.len() < first.len() {
        match body.next(wire).await.map_err(io_err("first event"))? {
            Some(p) => got.extend_from_slice(p),
            None => break,
        }
    }
    if got[..] != first[..] {
        return Err("held stream's first event differs from the fixture".into());
    }
    established.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    wire.set_read_timeout(hold_limit);
    body.drain(wire, |p| got.extend_from_slice(p))
        .await
        .map_err(io_err("held stream after release"))?;
    if got[..] != whole[..] {
        return Err("held stream's events differ from the fixture".into());
    }
    Ok(())
}

/// One exchange of each kind, so lazy one-time allocations are in a baseline taken after it;
/// then a pause for the allocator (and the closed connection) to settle.
pub async fn warm_up(ep: &Endpoint) -> Result<(), String> {
    let mut conn = None;
    let small = ep.request(
        "POST",
        "/bench/small",
        "application/json",
        SMALL_REQUEST_BODY,
    );
    small_exchange(ep, &mut conn, &small).await?;
    let burst = ep.request(
        "POST",
        "/bench/sse/burst/1",
        "text/event-stream",
        SMALL_REQUEST_BODY,
    );
    let (wire, mut body, _, _) = start_exchange(ep, &mut conn, &burst, 16 * 1024).await?;
    body.drain(wire, |_| {}).await.map_err(io_err("warm-up"))?;
    drop(conn);
    tokio::time::sleep(SETTLE).await;
    Ok(())
}

async fn idle_streams(
    ctx: &Ctx,
    ep: &Endpoint,
    middle: Option<&Middle>,
    upstream: &Upstream,
) -> Result<Values, String> {
    let middle = middle.ok_or("idle_streams needs a process in the middle")?;
    let n = ctx.streams;
    let fixture = &ctx.shared.fixture;
    let open_limit = if ctx.quick {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(300)
    };

    warm_up(ep).await?;

    let rss0 = middle.rss_kib();
    let meter = Meter::start(Some(middle));
    let req: Arc<[u8]> = ep
        .request(
            "POST",
            "/bench/sse/hold",
            "text/event-stream",
            SMALL_REQUEST_BODY,
        )
        .into();
    let first: Arc<[u8]> = fixture.events[0].clone().into();
    let mut whole = fixture.events[0].clone();
    whole.extend_from_slice(&fixture.events[fixture.events.len() - 1]);
    let whole: Arc<[u8]> = whole.into();
    let gate = Arc::new(Semaphore::new(IDLE_CONNECT_CONCURRENCY));
    let established = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(hold_one(
            ep.clone(),
            req.clone(),
            first.clone(),
            whole.clone(),
            gate.clone(),
            established.clone(),
            open_limit + Duration::from_secs(60),
        ));
    }
    let deadline = Instant::now() + open_limit;
    while established.load(Ordering::Relaxed) < n {
        if let Some(r) = set.try_join_next() {
            r.map_err(join_err)??;
            return Err("a held stream ended before it was released".into());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} streams established in {open_limit:?}",
                established.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let rss1 = middle.rss_kib();
    upstream.release();
    while let Some(r) = set.join_next().await {
        r.map_err(join_err)??;
    }
    Ok(vec![
        Some(rss1.saturating_sub(rss0) as f64 / n as f64),
        meter.cpu_us_per(n as f64),
    ])
}
