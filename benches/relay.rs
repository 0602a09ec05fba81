//! Relay benchmarks: the proxy against a direct connection and against two anchors, nginx and
//! HAProxy, on the workloads an agent loop puts through it.
//!
//! ```text
//! cargo bench --bench relay                          # full run (about 10 minutes)
//! cargo bench --bench relay -- --quick               # small counts, well under a minute
//! cargo bench --bench relay -- sse_paced small_post/tls --targets proxy,nginx,haproxy
//! cargo bench --bench relay -- --write-results       # also writes benches/RESULTS.md
//! cargo bench --bench relay -- --list                # scenario names
//! cargo bench --bench relay -- soak reset            # endurance: 5000 streams for 3 min, resets
//! ```
//!
//! The endurance scenarios (`soak`, `reset`) run only when named, or small in `--quick`; they
//! are reported in their own section of RESULTS.md, which the other runs keep as it is.
//!
//! Layout: `relay/wire.rs` (buffered HTTP/1.1 framing), `relay/upstream.rs` (the fixture
//! upstream, plain and TLS, with the SSE replay and the resetting responses),
//! `relay/client.rs` (load generator endpoint), `relay/tls.rs` (rcgen CA, rustls configs),
//! `relay/procs.rs` (the proxy, nginx and HAProxy processes, /proc readings, pinning),
//! `relay/scenarios.rs` (what is measured and checked), `relay/soak.rs` and `relay/reset.rs`
//! (the endurance scenarios), `relay/rng.rs` (their seeded PRNG), `relay/report.rs` (tables,
//! targets, RESULTS.md).
//!
//! The proxy (or nginx, or HAProxy) is pinned to the first allowed CPU; the load generator and
//! the fixture upstreams run on one tokio current-thread runtime pinned to the second. All
//! traffic stays on 127.0.0.1, every wait is bounded, and the bench stops by itself.

#[path = "relay/client.rs"]
mod client;
#[path = "relay/egress.rs"]
mod egress;
#[path = "relay/procs.rs"]
mod procs;
#[path = "relay/report.rs"]
mod report;
#[path = "relay/reset.rs"]
mod reset;
#[path = "relay/rng.rs"]
mod rng;
#[path = "relay/scenarios.rs"]
mod scenarios;
#[path = "relay/soak.rs"]
mod soak;
#[path = "relay/tls.rs"]
mod tls;
#[path = "relay/upstream.rs"]
mod upstream;
#[path = "relay/wire.rs"]
mod wire;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use report::{Cell, Header, Outcome};
use scenarios::{Ctx, Scenario, Target, Transport, Values};
use upstream::{Fixture, Shared};

/// The SSE replay: a recorded Messages API stream (599 events).
static FIXTURE: &[u8] = include_bytes!("fixtures/anthropic-stream.sse");
/// Size of the upload and download bodies: the proxy's default MAX_BODY_BYTES.
const PAYLOAD_LEN: usize = 32 * 1024 * 1024;
/// Held streams in a full run (the memory target is stated at this count, and memory per
/// stream is judged there too).
const FULL_STREAMS: usize = 5000;
/// Held streams in a quick run.
const QUICK_STREAMS: usize = 200;
/// Descriptors the bench needs besides two per held stream (client side and upstream side).
const FD_HEADROOM: usize = 1024;
/// How long the soak's streams last, in a full run and in a quick one.
const FULL_SOAK_SECS: u64 = 180;
const QUICK_SOAK_SECS: u64 = 8;
/// Streams of the reset scenario, and how many run at once (at most the held streams).
const FULL_RESET_STREAMS: usize = 5000;
const FULL_RESET_CONCURRENCY: usize = 1000;
const QUICK_RESET_STREAMS: usize = 400;
const QUICK_RESET_CONCURRENCY: usize = 100;
/// Share of the reset scenario's streams that the upstream cuts.
const RESET_FRACTION: f64 = 0.5;
/// Times an anchor's failed run is run again before its cell shows FAIL.
const ANCHOR_RETRIES: usize = 2;

/// Rounds of a scenario in a full run: enough that one or two rounds' outliers cannot decide
/// a comparison (a median of 5 ignores two). sse_paced's p99 event delay moves by tens of
/// percent between single runs, so it gets 7; idle_streams' memory per stream moves by a few
/// percent only, and a round with 5000 held streams per target is the longest, so it gets 3.
/// One round of everything (4 targets, plain and TLS, 5000 streams) took about 110 s here,
/// so a full run takes about 10 minutes. A quick run does 1; the endurance scenarios always
/// run once.
fn default_rounds(scenario: Scenario) -> usize {
    match scenario {
        Scenario::SsePaced => 7,
        Scenario::IdleStreams => 3,
        s if s.endurance() => 1,
        _ => 5,
    }
}

const USAGE: &str = "usage: cargo bench --bench relay -- [options] [SCENARIO[/plain|/tls] ...]

options:
  --quick              small counts, 1 round (finishes in about a minute)
  --rounds N           rounds per scenario (default 5, sse_paced 7, idle_streams 3; quick 1):
                       each round runs every selected target once, in an order rotated from
                       round to round; each cell is the median over the rounds. soak and
                       reset run once
  --write-results      also write benches/RESULTS.md
  --streams N          held streams in idle_streams and soak (default 5000, quick 200)
  --soak-secs N        how long each soak stream lasts (default 180, quick 8)
  --reset-streams N    streams in reset (default 5000, quick 400)
  --reset-fraction F   share of reset streams the upstream cuts (default 0.5)
  --seed N             seed of the soak's and reset's random choices (default: from the
                       clock; printed, so a failing run can be repeated)
  --targets LIST       comma-separated subset of direct,proxy,nginx,haproxy
  --transports LIST    comma-separated subset of plain,tls,unix (unix: the proxy on a
                       Unix socket, compared with plain; only when named)
  --no-nginx           leave nginx out
  --no-haproxy         leave HAProxy out
  --proxy-wrapper CMD  run the proxy under CMD (split on spaces), e.g.
                       \"valgrind --tool=massif --massif-out-file=/tmp/massif.out\";
                       for profiling only: its CPU and memory figures are then off
  --proxy-env K=V      one more setting for the proxy (repeatable), e.g. METRICS_ADDR=127.0.0.1:0
                       and LOG_FORMAT=json to price the operator signals
  --rotate-ms N        start the proxy with TOKEN_UPDATES=stdin and write a new token to its
                       stdin every N ms while it runs (the cost of rotation)
  --small-posts N      requests small_post times (default 5000, quick 400)
  --egress             reach the upstream through a CONNECT tunnel: an egress proxy in the
                       bench (on the load generator's CPU), named in HTTPS_PROXY/HTTP_PROXY
  --keep-temp          keep the temp dir (logs, nginx.conf, haproxy.cfg) and print its path
  --list               list the scenarios and exit

nginx and HAProxy are used when installed (apt-get update && apt-get install -y nginx haproxy);
the bench writes their configs into a temp dir and starts and stops them itself. For
idle_streams and soak at N streams the bench raises RLIMIT_NOFILE to 2N+1024 when it can;
otherwise raise it first (ulimit -n).

soak and reset (the endurance scenarios) run only when named, or small with --quick.
--write-results then rewrites only their section of RESULTS.md; a run of the other scenarios
rewrites the rest and keeps that section.";

struct Args {
    quick: bool,
    write_results: bool,
    streams: Option<usize>,
    soak_secs: Option<u64>,
    reset_streams: Option<usize>,
    reset_fraction: f64,
    seed: Option<u64>,
    targets: Vec<Target>,
    transports: Vec<Transport>,
    filters: Vec<String>,
    list: bool,
    keep_temp: bool,
    proxy_wrapper: Vec<String>,
    proxy_env: Vec<(String, String)>,
    rotate_ms: Option<u64>,
    egress: bool,
    small_posts: Option<usize>,
    rounds: Option<usize>,
    help: bool,
    /// As given, for RESULTS.md.
    raw: Vec<String>,
}

fn parse_list<T: Copy>(
    value: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(|v| {
            all.iter()
                .copied()
                .find(|&x| name(x) == v.trim())
                .ok_or_else(|| format!("unknown name in list: {v}"))
        })
        .collect()
}

impl Args {
    fn parse(argv: Vec<String>) -> Result<Args, String> {
        let mut a = Args {
            quick: false,
            write_results: false,
            streams: None,
            soak_secs: None,
            reset_streams: None,
            reset_fraction: RESET_FRACTION,
            seed: None,
            targets: Target::ALL.to_vec(),
            transports: Transport::ALL.to_vec(),
            filters: Vec::new(),
            list: false,
            keep_temp: false,
            proxy_wrapper: Vec::new(),
            proxy_env: Vec::new(),
            rotate_ms: None,
            egress: false,
            small_posts: None,
            rounds: None,
            help: false,
            raw: Vec::new(),
        };
        let mut it = argv.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
            match arg.as_str() {
                // cargo bench passes --bench to harness = false targets.
                "--bench" => continue,
                "--quick" => a.quick = true,
                "--write-results" => a.write_results = true,
                "--list" => a.list = true,
                "--keep-temp" => a.keep_temp = true,
                "-h" | "--help" => a.help = true,
                "--no-nginx" => a.targets.retain(|&t| t != Target::Nginx),
                "--no-haproxy" => a.targets.retain(|&t| t != Target::Haproxy),
                "--egress" => a.egress = true,
                "--small-posts" => {
                    let v = value("--small-posts")?;
                    a.small_posts = Some(v.parse().map_err(|_| "--small-posts takes a number")?);
                }
                "--proxy-env" => {
                    let v = value("--proxy-env")?;
                    let (k, v) = v.split_once('=').ok_or("--proxy-env takes K=V")?;
                    a.proxy_env.push((k.to_string(), v.to_string()));
                }
                "--rotate-ms" => {
                    let v = value("--rotate-ms")?;
                    a.rotate_ms = Some(v.parse().map_err(|_| "--rotate-ms takes a number")?);
                }
                "--streams" => {
                    let v = value("--streams")?;
                    let n = v.parse().map_err(|_| "--streams needs a number")?;
                    if n == 0 {
                        return Err("--streams must be at least 1".into());
                    }
                    a.raw.push(format!("--streams {n}"));
                    a.streams = Some(n);
                    continue;
                }
                "--rounds" => {
                    let v = value("--rounds")?;
                    let n = v.parse().map_err(|_| "--rounds needs a number")?;
                    if n == 0 {
                        return Err("--rounds must be at least 1".into());
                    }
                    a.raw.push(format!("--rounds {n}"));
                    a.rounds = Some(n);
                    continue;
                }
                "--soak-secs" => {
                    let v = value("--soak-secs")?;
                    let n: u64 = v.parse().map_err(|_| "--soak-secs needs a number")?;
                    if n == 0 {
                        return Err("--soak-secs must be at least 1".into());
                    }
                    a.raw.push(format!("--soak-secs {n}"));
                    a.soak_secs = Some(n);
                    continue;
                }
                "--reset-streams" => {
                    let v = value("--reset-streams")?;
                    let n = v.parse().map_err(|_| "--reset-streams needs a number")?;
                    if n == 0 {
                        return Err("--reset-streams must be at least 1".into());
                    }
                    a.raw.push(format!("--reset-streams {n}"));
                    a.reset_streams = Some(n);
                    continue;
                }
                "--reset-fraction" => {
                    let v = value("--reset-fraction")?;
                    let f: f64 = v.parse().map_err(|_| "--reset-fraction needs a number")?;
                    if !(0.0..=1.0).contains(&f) {
                        return Err("--reset-fraction must be between 0 and 1".into());
                    }
                    a.raw.push(format!("--reset-fraction {f}"));
                    a.reset_fraction = f;
                    continue;
                }
                "--seed" => {
                    let v = value("--seed")?;
                    let n = v.parse().map_err(|_| "--seed needs a number")?;
                    a.raw.push(format!("--seed {n}"));
                    a.seed = Some(n);
                    continue;
                }
                "--proxy-wrapper" => {
                    let v = value("--proxy-wrapper")?;
                    a.proxy_wrapper = v.split_whitespace().map(str::to_string).collect();
                    a.raw.push(format!("--proxy-wrapper '{v}'"));
                    continue;
                }
                "--targets" => {
                    let v = value("--targets")?;
                    a.targets = parse_list(&v, &Target::ALL, Target::name)?;
                    a.raw.push(format!("--targets {v}"));
                    continue;
                }
                "--transports" => {
                    let v = value("--transports")?;
                    a.transports = parse_list(&v, &Transport::EVERY, Transport::name)?;
                    a.raw.push(format!("--transports {v}"));
                    continue;
                }
                s if s.starts_with('-') => return Err(format!("unknown option {s}")),
                s => {
                    let scenario = s.split('/').next().unwrap_or("");
                    if !Scenario::ALL.iter().any(|x| x.name() == scenario) {
                        return Err(format!("unknown scenario {s} (see --list)"));
                    }
                    a.filters.push(s.to_string());
                }
            }
            a.raw.push(arg);
        }
        Ok(a)
    }

    /// Rounds of `s`: once for the endurance scenarios, else --rounds, else the default.
    fn rounds_of(&self, s: Scenario) -> usize {
        if s.endurance() {
            1
        } else if let Some(n) = self.rounds {
            n
        } else if self.quick {
            1
        } else {
            default_rounds(s)
        }
    }

    fn selects(&self, s: Scenario, t: Transport) -> bool {
        if !self.transports.contains(&t) {
            return false;
        }
        if self.filters.is_empty() {
            // The endurance scenarios take minutes in a full run: only when named.
            return !s.endurance() || self.quick;
        }
        self.filters
            .iter()
            .any(|f| f == s.name() || *f == format!("{}/{}", s.name(), t.name()))
    }
}

/// The bench's temp dir, removed on drop unless kept.
struct TempDir(PathBuf, bool);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "agent-loop-proxy-bench-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir(&dir)?;
        Ok(TempDir(dir, false))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.1 {
            eprintln!("relay bench: kept {}", self.0.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Deterministic incompressible-looking bytes (xorshift64).
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        // `cargo bench` always passes --bench; no arguments at all means `cargo test
        // --benches` (or `--all-targets`), which should not start a minutes-long run.
        println!("relay bench: not run under cargo test; use `cargo bench --bench relay`");
        return ExitCode::SUCCESS;
    }
    let args = match Args::parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("relay bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.list {
        for s in Scenario::ALL {
            println!("{:<14} {}", s.name(), s.about());
        }
        return ExitCode::SUCCESS;
    }

    let cpus = procs::allowed_cpus();
    let (cpu_middle, pinning) = if cpus.len() >= 2 {
        match procs::pin_current_thread(cpus[1]) {
            Ok(()) => (
                Some(cpus[0]),
                format!(
                    "proxy / nginx / haproxy on CPU {}, load generator + upstreams on CPU {}",
                    cpus[0], cpus[1]
                ),
            ),
            Err(e) => (None, format!("none (sched_setaffinity failed: {e})")),
        }
    } else {
        (None, "none (fewer than two CPUs allowed)".to_string())
    };

    let mut streams = args.streams.unwrap_or(if args.quick {
        QUICK_STREAMS
    } else {
        FULL_STREAMS
    });
    let wanted = (2 * streams + FD_HEADROOM) as u64;
    let nofile = procs::raise_nofile(wanted);
    if nofile < wanted {
        let fit = (nofile as usize).saturating_sub(FD_HEADROOM) / 2;
        eprintln!(
            "relay bench: RLIMIT_NOFILE is {nofile}, {wanted} needed for {streams} streams; \
             using {fit} (raise it with `ulimit -n {wanted}` first)"
        );
        streams = fit.max(1);
    }

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let endurance = Scenario::ALL
        .iter()
        .any(|&s| s.endurance() && Transport::ALL.iter().any(|&t| args.selects(s, t)));
    if endurance {
        eprintln!("relay bench: seed {seed} (`--seed {seed}` repeats the random choices)");
    }

    let outcome = runtime.block_on(async {
        // Dropping `run` on a signal stops the proxy, nginx and the upstreams, and removes the
        // temp dir.
        tokio::select! {
            r = run(&args, streams, seed, cpu_middle, pinning) => r,
            s = interrupted() => Err(format!("interrupted by {s}")),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("relay bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM, with the signal's name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Runs the selected scenarios; Ok(false) when any failed.
async fn run(
    args: &Args,
    streams: usize,
    seed: u64,
    cpu_middle: Option<usize>,
    pinning: String,
) -> Result<bool, String> {
    let clock = Instant::now();
    let mut dir = TempDir::new().map_err(|e| format!("temp dir: {e}"))?;
    dir.1 = args.keep_temp;
    let tls = tls::make()?;
    let ca_file = dir.0.join("ca.pem");
    fs::write(&ca_file, &tls.ca_pem).map_err(|e| format!("ca.pem: {e}"))?;
    let fixture = Arc::new(Fixture::parse(FIXTURE)?);
    let payload = Arc::new(payload(PAYLOAD_LEN));
    let payload_sha = scenarios::sha256_hex(&payload);
    let token = format!(
        "sk-ant-api03-bench-{:016x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    );
    let nginx_bin = if args.targets.contains(&Target::Nginx) {
        let found = procs::find_nginx();
        if found.is_none() {
            eprintln!(
                "relay bench: nginx not found, its column is skipped \
                 (apt-get update && apt-get install -y nginx)"
            );
        }
        found
    } else {
        None
    };
    let haproxy_bin = if args.targets.contains(&Target::Haproxy) {
        let found = procs::find_haproxy();
        if found.is_none() {
            eprintln!(
                "relay bench: haproxy not found, its column is skipped \
                 (apt-get update && apt-get install -y haproxy)"
            );
        }
        found
    } else {
        None
    };
    let proxy_bin = PathBuf::from(env!("CARGO_BIN_EXE_agent-loop-proxy"));
    let (reset_streams, reset_concurrency) = if args.quick {
        (QUICK_RESET_STREAMS, QUICK_RESET_CONCURRENCY)
    } else {
        (FULL_RESET_STREAMS, FULL_RESET_CONCURRENCY)
    };
    let soak_secs = args.soak_secs.unwrap_or(if args.quick {
        QUICK_SOAK_SECS
    } else {
        FULL_SOAK_SECS
    });
    let ctx = Ctx {
        quick: args.quick,
        streams,
        soak: Duration::from_secs(soak_secs),
        reset_streams: args.reset_streams.unwrap_or(reset_streams),
        // The descriptor limit was raised for `streams` held streams.
        reset_concurrency: reset_concurrency.min(streams),
        reset_fraction: args.reset_fraction,
        seed,
        shared: Arc::new(Shared {
            clock,
            fixture,
            payload,
            auth: format!("Bearer {token}").into_bytes(),
        }),
        tls,
        ca_file,
        dir: dir.0.clone(),
        token,
        proxy_bin,
        proxy_wrapper: args.proxy_wrapper.clone(),
        proxy_env: args.proxy_env.clone(),
        rotate: args.rotate_ms.map(Duration::from_millis),
        egress: args.egress,
        small_posts: args.small_posts,
        nginx_bin,
        haproxy_bin,
        cpu_middle,
        payload_sha,
        runs: AtomicUsize::new(0),
    };

    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    // Anchor runs that failed and were run again, with their errors.
    let mut retried: Vec<String> = Vec::new();
    // Other processes' load, apart for the endurance runs: each part of RESULTS.md says its own.
    let mut load = report::OtherLoad::default();
    let mut endurance_load = report::OtherLoad::default();
    for scenario in Scenario::ALL {
        for transport in Transport::EVERY {
            if !args.selects(scenario, transport) {
                continue;
            }
            let label = format!("{}/{}", scenario.name(), transport.name());
            let rounds = args.rounds_of(scenario);
            let metrics = scenario.metrics().len();
            let mut cells = vec![std::array::from_fn(|_| Cell::Skipped); metrics];
            // The targets that run: selected, installed, and meaningful for the scenario.
            let mut order = Vec::new();
            for target in Target::ALL {
                if !args.targets.contains(&target)
                    || (target == Target::Nginx && ctx.nginx_bin.is_none())
                    || (target == Target::Haproxy && ctx.haproxy_bin.is_none())
                {
                    continue;
                }
                // Over a Unix socket only the proxy runs: it is compared with itself over TCP.
                if !scenario.runs_on(target)
                    || (transport == Transport::Unix && target != Target::Proxy)
                {
                    for row in cells.iter_mut() {
                        row[target as usize] = Cell::NotApplicable;
                    }
                    continue;
                }
                order.push(target);
            }
            let mut per_round: Vec<[Option<Values>; 4]> = vec![Default::default(); rounds];
            let mut failed = [false; 4];
            for (round, values) in per_round.iter_mut().enumerate() {
                // Each round starts one target later, so no target always runs first (on a
                // cold machine) or last (after the others' heat and allocations).
                if round > 0 {
                    order.rotate_left(1);
                }
                for &target in &order {
                    let ti = target as usize;
                    if failed[ti] {
                        // Its cell shows FAIL whatever the other rounds give.
                        continue;
                    }
                    let (tag, which) = if rounds > 1 {
                        let n = round + 1;
                        (format!("{n}/{rounds} "), format!(" (round {n}/{rounds})"))
                    } else {
                        (String::new(), String::new())
                    };
                    let at = format!("{label} {}{which}", target.name());
                    eprint!("{label:<20} {:<7} {tag}", target.name());
                    let mut t = Instant::now();
                    let mut attempt = 0;
                    let result = loop {
                        let r = scenarios::run(&ctx, scenario, transport, target).await;
                        match r {
                            // An anchor's error is the anchor's fault (HAProxy 2.6.12 now and
                            // then leaves the tail of a TLS upstream's response unsent): run
                            // it again, and say so under the table rather than failing the
                            // proxy's bench. The proxy's and direct runs are never retried.
                            Err(e)
                                if Target::ANCHORS.contains(&target)
                                    && attempt < ANCHOR_RETRIES =>
                            {
                                attempt += 1;
                                eprintln!("FAILED: {e}; an anchor: run again");
                                retried.push(format!("{at}: {e}"));
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                eprint!("{label:<20} {:<7} {tag}", target.name());
                                t = Instant::now();
                            }
                            r => break r,
                        }
                    };
                    match result {
                        Ok(r) => {
                            let secs = t.elapsed().as_secs_f64();
                            let tls = r.handshakes.map_or(String::new(), |(n, resumed)| {
                                format!(", upstream TLS handshakes {n}, {resumed} resumed")
                            });
                            // The endurance scenarios' many figures are in their table.
                            let figures = if scenario.endurance() {
                                String::new()
                            } else {
                                report::figures(scenario, &r.values)
                            };
                            if r.failed_checks.is_empty() {
                                eprintln!(
                                    "ok ({secs:.1} s, other load {:.2} CPU{tls}){figures}",
                                    r.other_load
                                );
                            } else {
                                let checks = r.failed_checks.join("; ");
                                eprintln!("FAILED ({secs:.1} s): {checks}{figures}");
                                failures.push(format!("{at}: {checks}"));
                            }
                            let into = if scenario.endurance() {
                                &mut endurance_load
                            } else {
                                &mut load
                            };
                            into.add(&at, r.other_load, secs);
                            values[ti] = Some(r.values);
                        }
                        Err(e) => {
                            failed[ti] = true;
                            eprintln!("FAILED: {e}");
                            failures.push(format!("{at}: {e}"));
                        }
                    }
                    // Let sockets of the finished run close before the next one starts.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            // Each cell: the median over the rounds of that metric, taken on its own.
            for &target in &order {
                let ti = target as usize;
                for (m, row) in cells.iter_mut().enumerate() {
                    row[ti] = if failed[ti] {
                        Cell::Failed
                    } else {
                        let mut got: Vec<f64> = per_round
                            .iter()
                            .filter_map(|r| r[ti].as_ref()?.get(m).copied().flatten())
                            .collect();
                        report::median(&mut got).map_or(Cell::NotApplicable, Cell::Value)
                    };
                }
            }
            let note = match scenario {
                Scenario::IdleStreams => format!(" (N={streams})"),
                Scenario::Soak => format!(" (N={streams}, {soak_secs} s)"),
                Scenario::Reset => format!(
                    " (N={}, {} at a time)",
                    ctx.reset_streams, ctx.reset_concurrency
                ),
                _ => String::new(),
            };
            outcomes.push(Outcome {
                scenario,
                transport,
                note,
                cells,
                rounds: per_round,
            });
        }
    }

    let (endurance, relay): (Vec<Outcome>, Vec<Outcome>) =
        outcomes.into_iter().partition(|o| o.scenario.endurance());
    let is_endurance = |f: &String| {
        Scenario::ALL
            .iter()
            .any(|s| s.endurance() && f.starts_with(&format!("{}/", s.name())))
    };
    let (endurance_failures, relay_failures): (Vec<String>, Vec<String>) =
        failures.iter().cloned().partition(is_endurance);
    let table = report::table(&relay);
    let mut targets = report::targets(&relay, streams);
    if !retried.is_empty() {
        targets.push_str(&report::retried(&retried));
    }
    let unix = report::unix_vs_tcp(&relay);
    if !unix.is_empty() {
        targets.push_str(report::UNIX_HEADING);
        targets.push_str(&unix);
    }
    let endurance_table = report::endurance_table(&endurance);
    if !relay.is_empty() {
        println!("\n{table}\n{targets}");
    }

    if !endurance.is_empty() {
        println!("\n{endurance_table}");
    }
    println!("\n{}{}", load.summary(), endurance_load.summary());
    if !failures.is_empty() {
        println!("failures:");
        for f in &failures {
            println!("- {f}");
        }
    }
    if args.write_results {
        let header = Header {
            command: format!("cargo bench --bench relay -- {}", args.raw.join(" "))
                .trim_end()
                .to_string(),
            mode: format!(
                "{} (held streams: {streams}; {})",
                if args.quick { "quick" } else { "full" },
                report::rounds_summary(&relay)
            ),
            pinning,
            nginx: ctx
                .nginx_bin
                .as_deref()
                .map_or("not installed".into(), procs::nginx_version),
            haproxy: ctx
                .haproxy_bin
                .as_deref()
                .map_or("not installed".into(), procs::haproxy_version),
            proxy: procs::version_of(&ctx.proxy_bin),
        };
        let ran = |s: Scenario| endurance.iter().any(|o| o.scenario == s);
        let mut runs = Vec::new();
        if ran(Scenario::Soak) {
            runs.push(format!(
                "soak: {streams} streams for {soak_secs} s beside {} small-POST connections",
                soak::SMALL_CONNECTIONS
            ));
        }
        if ran(Scenario::Reset) {
            runs.push(format!(
                "reset: {} streams, {} at a time, {:.0} % cut",
                ctx.reset_streams,
                ctx.reset_concurrency,
                ctx.reset_fraction * 100.0
            ));
        }
        let endurance_mode = format!(
            "{} ({})",
            if args.quick { "quick" } else { "full" },
            runs.join("; ")
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/RESULTS.md");
        // Each part is rewritten only by a run that measured it; the other is kept as it was.
        let existing = fs::read_to_string(&path).unwrap_or_default();
        let relay_md = (!relay.is_empty()).then(|| {
            report::results_md(&header, &table, &targets, &load.summary(), &relay_failures)
        });
        let endurance_md = (!endurance.is_empty()).then(|| {
            let h = Header {
                mode: endurance_mode,
                ..header
            };
            report::endurance_md(
                &h,
                seed,
                &endurance_table,
                &endurance_load.summary(),
                &endurance_failures,
            )
        });
        let md = report::merge_results(&existing, relay_md, endurance_md);
        fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("relay bench: wrote {}", path.display());
    }
    Ok(failures.is_empty())
}
