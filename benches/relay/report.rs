//! The results tables (medians over rounds, ratios against the better anchor), the
//! performance targets' check, and benches/RESULTS.md.
//!
//! RESULTS.md has two parts: the relay scenarios' (header, table, targets, method) and, after
//! [`ENDURANCE_MARK`], the soak and reset section. A run rewrites only the parts it measured
//! and keeps the other as it was, so a three-minute soak does not wipe the relay tables of a
//! full run, nor a relay run the soak's figures. Sections after [`KEPT_MARK`] come from other
//! scripts (benches/codex-fallback.sh); every run keeps them as they are.

use std::fmt::Write as _;
use std::process::Command;
use std::time::SystemTime;

use crate::scenarios::{Scenario, Target, Transport, Values};

/// One table cell.
#[derive(Clone, Debug)]
pub enum Cell {
    Value(f64),
    /// The metric does not apply to this target (CPU or memory of a direct connection).
    NotApplicable,
    /// The run failed; the reason is listed under the table.
    Failed,
    /// Not run (target not selected, or the anchor not installed).
    Skipped,
}

/// Results of one scenario over one transport: `cells[metric][target]` (medians over the
/// rounds), and each round's values, `rounds[round][target]`.
pub struct Outcome {
    pub scenario: Scenario,
    pub transport: Transport,
    /// Extra words for the scenario column, e.g. the stream count.
    pub note: String,
    pub cells: Vec<[Cell; 4]>,
    /// Per round, per target: what that run measured (`None`: not run, or it failed).
    pub rounds: Vec<[Option<Values>; 4]>,
}

/// How the proxy compares with the better anchor on one metric.
pub struct VsBest {
    /// The anchor with the better median.
    pub anchor: Target,
    /// Median of the proxy / median of that anchor.
    pub ratio: f64,
    /// Lowest and highest of the per-round ratios (round i's proxy over round i's value of the
    /// same anchor), when at least two rounds measured both.
    pub spread: Option<(f64, f64)>,
}

impl Outcome {
    fn metric(&self, metric: &str) -> Option<usize> {
        self.scenario.metrics().iter().position(|&n| n == metric)
    }

    pub fn value(&self, metric: &str, target: Target) -> Option<f64> {
        match self.cells[self.metric(metric)?][target as usize] {
            Cell::Value(v) => Some(v),
            _ => None,
        }
    }

    /// The proxy against the better of nginx and HAProxy (by their medians) on `metric`.
    pub fn vs_best(&self, metric: &str) -> Option<VsBest> {
        let m = self.metric(metric)?;
        let higher = higher_is_better(metric);
        let anchor = Target::ANCHORS
            .into_iter()
            .filter_map(|a| Some((a, self.value(metric, a)?)))
            .reduce(|best, next| {
                let better = if higher {
                    next.1 > best.1
                } else {
                    next.1 < best.1
                };
                if better {
                    next
                } else {
                    best
                }
            })?;
        let proxy = self.value(metric, Target::Proxy)?;
        if anchor.1 == 0.0 {
            return None;
        }
        let per_round: Vec<f64> = self
            .rounds
            .iter()
            .filter_map(|r| {
                let p = r[Target::Proxy as usize]
                    .as_ref()?
                    .get(m)
                    .copied()
                    .flatten()?;
                let a = r[anchor.0 as usize].as_ref()?.get(m).copied().flatten()?;
                (a != 0.0).then(|| p / a)
            })
            .collect();
        let spread = (per_round.len() >= 2).then(|| {
            let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        });
        Some(VsBest {
            anchor: anchor.0,
            ratio: proxy / anchor.1,
            spread,
        })
    }
}

/// Whether more of `metric` is better (throughput) rather than less (CPU, memory, latency,
/// delay, TTFB).
pub fn higher_is_better(metric: &str) -> bool {
    matches!(metric, "requests/s" | "events/s" | "MB/s")
}

/// The median of `values` (the mean of the middle two for an even count); sorts them.
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One run's figures for its stderr line: `: requests/s 8996 · CPU µs/request 45.4 ...`.
pub fn figures(scenario: Scenario, values: &Values) -> String {
    let parts: Vec<String> = scenario
        .metrics()
        .iter()
        .zip(values)
        .filter_map(|(m, v)| Some(format!("{m} {}", num((*v)?))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join(" · "))
    }
}

/// The rounds each scenario ran, for the header: `rounds: small_post 5, sse_paced 7, ...`.
pub fn rounds_summary(outcomes: &[Outcome]) -> String {
    let mut seen: Vec<(Scenario, usize)> = Vec::new();
    for o in outcomes {
        if !seen.iter().any(|&(s, _)| s == o.scenario) {
            seen.push((o.scenario, o.rounds.len()));
        }
    }
    let list: Vec<String> = seen
        .iter()
        .map(|(s, n)| format!("{} {n}", s.name()))
        .collect();
    format!(
        "rounds: {}; each cell the median over its rounds",
        list.join(", ")
    )
}

fn num(v: f64) -> String {
    let a = v.abs();
    if v.fract() == 0.0 && a < 1e15 {
        // Counts (streams, bytes, descriptors) are whole: no decimals.
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(c: &Cell) -> String {
    match c {
        Cell::Value(v) => num(*v),
        Cell::NotApplicable => "—".into(),
        Cell::Failed => "FAIL".into(),
        Cell::Skipped => "skipped".into(),
    }
}

fn ratio(a: &Cell, b: &Cell) -> String {
    match (a, b) {
        (Cell::Value(a), Cell::Value(b)) if *b != 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

fn spread(s: Option<(f64, f64)>) -> String {
    s.map_or("—".into(), |(lo, hi)| format!("{lo:.2}–{hi:.2}"))
}

/// The markdown table: scenario | metric | direct | proxy | nginx | haproxy | proxy/direct |
/// proxy/nginx | proxy/haproxy | proxy/best | proxy/best, rounds (min–max).
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | metric | direct | proxy | nginx | haproxy | proxy/direct | proxy/nginx \
         | proxy/haproxy | proxy/best | proxy/best, rounds (min–max) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        for (metric, cells) in o.scenario.metrics().iter().zip(&o.cells) {
            let best = o.vs_best(metric);
            let _ = writeln!(
                out,
                "| {}/{}{} | {metric} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                o.scenario.name(),
                o.transport.name(),
                o.note,
                cell(&cells[0]),
                cell(&cells[1]),
                cell(&cells[2]),
                cell(&cells[3]),
                ratio(&cells[1], &cells[0]),
                ratio(&cells[1], &cells[2]),
                ratio(&cells[1], &cells[3]),
                best.as_ref()
                    .map_or("—".into(), |b| format!("{:.2}", b.ratio)),
                spread(best.and_then(|b| b.spread)),
            );
        }
    }
    out
}

/// The endurance table: scenario | metric | proxy | direct (the reset scenario's control).
pub fn endurance_table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | metric | proxy | direct (control) |\n\
         |---|---|---:|---:|\n",
    );
    for o in outcomes {
        let zero = o.scenario.must_be_zero();
        for (metric, cells) in o.scenario.metrics().iter().zip(&o.cells) {
            let mark = if zero.contains(metric) {
                " (must be 0)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "| {}/{}{} | {metric}{mark} | {} | {} |",
                o.scenario.name(),
                o.transport.name(),
                o.note,
                cell(&cells[1]),
                cell(&cells[0]),
            );
        }
    }
    out
}

/// Checks the performance targets that this run measured: the proxy against the better of the
/// two anchors, by the medians of this run.
pub fn targets(outcomes: &[Outcome], streams: usize) -> String {
    // (what, scenario, transport, metric, bound on proxy/best); above or below by the metric.
    let rows: [(&str, Scenario, Transport, &str, f64); 5] = [
        (
            "SSE burst over TLS: CPU per byte",
            Scenario::SseBurst,
            Transport::Tls,
            "CPU µs/MiB",
            1.0,
        ),
        (
            "SSE burst over TLS: MB/s",
            Scenario::SseBurst,
            Transport::Tls,
            "MB/s",
            1.0,
        ),
        (
            "small POSTs, plain: CPU per request",
            Scenario::SmallPost,
            Transport::Plain,
            "CPU µs/request",
            0.85,
        ),
        (
            "small POSTs over TLS: CPU per request",
            Scenario::SmallPost,
            Transport::Tls,
            "CPU µs/request",
            0.85,
        ),
        (
            "held plain streams: KiB per stream",
            Scenario::IdleStreams,
            Transport::Plain,
            "RSS KiB/stream",
            1.0,
        ),
    ];
    let mut out = String::from(
        "| target | bound | proxy/best | better anchor | rounds (min–max) | result |\n\
         |---|---|---:|---|---|---|\n",
    );
    for (label, scenario, transport, metric, limit) in rows {
        let higher = higher_is_better(metric);
        let bound = format!("{} {limit:.2}", if higher { "≥" } else { "≤" });
        let ok = |r: f64| if higher { r >= limit } else { r <= limit };
        let found = outcomes
            .iter()
            .find(|o| o.scenario == scenario && o.transport == transport)
            .and_then(|o| o.vs_best(metric));
        let line = match found {
            None => format!("| {label} | {bound} | — | — | — | not measured |"),
            Some(b) => {
                let mut result = if ok(b.ratio) { "met" } else { "MISSED" }.to_string();
                if let Some((lo, hi)) = b.spread {
                    if lo < limit && hi > limit {
                        // One round on each side of the bound: the verdict rests on the median.
                        result.push_str(" (rounds on both sides of the bound)");
                    }
                }
                format!(
                    "| {label} | {bound} | {:.2} | {} | {} | {result} |",
                    b.ratio,
                    b.anchor.name(),
                    spread(b.spread)
                )
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    if streams < 5000 && outcomes.iter().any(|o| o.scenario == Scenario::IdleStreams) {
        let _ = writeln!(
            out,
            "\n(held streams measured at N = {streams}; a full run holds 5000)"
        );
    }
    out
}

/// The note on anchor runs that failed and were run again.
pub fn retried(runs: &[String]) -> String {
    let mut out = String::from(
        "\nAnchor runs that failed and were run again (the anchor's fault; the figures are the \
         rerun's):\n\n",
    );
    for r in runs {
        let _ = writeln!(out, "- {r}");
    }
    out
}

fn utc_now() -> String {
    // The proxy's own RFC 3339 clock (`2026-11-30T21:56:17.123Z`), shown to the minute.
    let mut ts = String::new();
    agent_loop_proxy::log::rfc3339(&mut ts, SystemTime::now());
    format!("{} {} UTC", &ts[..10], &ts[11..16])
}

/// `lscpu` model name and CPU count, and the kernel release.
pub fn machine() -> String {
    let lscpu = Command::new("lscpu")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let field = |name: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let model = field("Model name:").unwrap_or_else(|| "unknown CPU".into());
    let cpus = field("CPU(s):").unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{model}, {cpus} CPUs, Linux {kernel}")
}

/// Work by other processes during the runs, time-weighted.
#[derive(Default)]
pub struct OtherLoad {
    cpu_secs: f64,
    secs: f64,
    worst: Option<(f64, String)>,
}

impl OtherLoad {
    /// One run's load; `at` names it (scenario, target, round) in case it is the worst.
    pub fn add(&mut self, at: &str, load: f64, secs: f64) {
        self.cpu_secs += load * secs;
        self.secs += secs;
        let worse = match &self.worst {
            None => true,
            Some((w, _)) => load > *w,
        };
        if worse {
            self.worst = Some((load, at.to_string()));
        }
    }

    pub fn summary(&self) -> String {
        match &self.worst {
            None => String::new(),
            Some((worst, at)) => {
                let mean = self.cpu_secs / self.secs.max(1e-9);
                let mut s = format!(
                    "Other processes' load during the runs: mean {mean:.2} CPU, worst {worst:.2} CPU ({at})."
                );
                if *worst > 0.2 {
                    s.push_str(
                        " Timings of runs with load above ~0.2 CPU are disturbed (the proxy or the \
                         load generator shared its core); CPU per unit and memory much less so.",
                    );
                }
                s.push('\n');
                s
            }
        }
    }
}

/// What RESULTS.md says besides the tables.
pub struct Header {
    pub command: String,
    pub mode: String,
    pub pinning: String,
    pub nginx: String,
    pub haproxy: String,
    pub proxy: String,
}

pub fn results_md(
    h: &Header,
    table: &str,
    targets: &str,
    load: &str,
    failures: &[String],
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "# Relay benchmark results

Written by `cargo bench --bench relay -- --write-results` (benches/relay.rs). Regenerate rather
than edit.

- Date: {date}
- Machine: {machine}
- Command: `{command}`
- Mode: {mode}
- Proxy: {proxy}
- nginx: {nginx}
- haproxy: {haproxy}
- Pinning: {pinning}

## Results

{table}
## Performance targets

The proxy against the better of the two anchors for each metric, by this run's medians.

{targets}
{load}
",
        date = utc_now(),
        machine = machine(),
        command = h.command,
        mode = h.mode,
        proxy = h.proxy,
        nginx = h.nginx,
        haproxy = h.haproxy,
        pinning = h.pinning,
    );
    if !failures.is_empty() {
        out.push_str("\n## Failures\n\n");
        for f in failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    out.push_str(METHOD);
    out
}

/// The first line of the soak and reset section of RESULTS.md.
pub const ENDURANCE_MARK: &str =
    "<!-- endurance scenarios: rewritten only by their runs; keep this line -->";

/// The soak and reset section of RESULTS.md, starting with [`ENDURANCE_MARK`].
pub fn endurance_md(h: &Header, seed: u64, table: &str, load: &str, failures: &[String]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{ENDURANCE_MARK}
## Soak and upstream resets

Written by `cargo bench --bench relay -- --write-results soak reset`. A run of these scenarios
rewrites only this section; a run of the others keeps it. Regenerate rather than edit.

- Date: {date}
- Machine: {machine}
- Command: `{command}`
- Mode: {mode}
- Seed: {seed} (`--seed {seed}` repeats the streams' random choices)
- Proxy: {proxy}
- Pinning: {pinning}

{table}
{load}",
        date = utc_now(),
        machine = machine(),
        command = h.command,
        mode = h.mode,
        proxy = h.proxy,
        pinning = h.pinning,
    );
    if !failures.is_empty() {
        out.push_str("\n### Failures (soak and reset)\n\n");
        for f in failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    out.push_str(ENDURANCE_METHOD);
    out
}

/// The first line of the sections at the end of RESULTS.md that this bench does not measure
/// (figures taken by hand with their own scripts): a run must not drop them.
pub const KEPT_MARK: &str =
    "<!-- sections from other scripts: kept by every run of the relay bench; keep this line -->";

/// RESULTS.md from the existing file and the parts this run wrote (`None`: keep the old one).
pub fn merge_results(existing: &str, relay: Option<String>, endurance: Option<String>) -> String {
    let (existing, kept) = match existing.find(KEPT_MARK) {
        Some(i) => existing.split_at(i),
        None => (existing, ""),
    };
    let (old_relay, old_endurance) = match existing.find(ENDURANCE_MARK) {
        Some(i) => existing.split_at(i),
        None => (existing, ""),
    };
    let mut out = relay.unwrap_or_else(|| old_relay.trim_end().to_string());
    if out.is_empty() {
        out = "# Relay benchmark results\n\nNo relay run written yet \
               (`cargo bench --bench relay -- --write-results`)."
            .to_string();
    }
    let endurance = endurance.unwrap_or_else(|| old_endurance.to_string());
    for part in [endurance.as_str(), kept] {
        if !part.is_empty() {
            out.truncate(out.trim_end().len());
            out.push_str("\n\n");
            out.push_str(part);
        }
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

const ENDURANCE_METHOD: &str = "
### Method (soak and reset)

- Both run against the proxy only (reset also directly against the upstream, as the control);
  plain and TLS upstream as above; a fresh upstream and proxy per run. Each process's figures
  come from /proc: descriptors are the entries of /proc/<pid>/fd (the proxy is non-dumpable, so
  this needs root), counted before the first stream, sampled while the streams run, and counted
  again after the last (soak: once the count holds still for 200 ms; reset: once it is back at
  the baseline, waiting at most 10 s); peak memory is the kernel's VmHWM; CPU is utime+stime,
  refined as above.
- soak: N streams (MAX_CONNECTIONS raised to fit), opened 64 at a time, each a whole replay of
  the fixture (599 events) that the upstream trickles over the soak's duration, one chunk per
  event, starting at a fixture event drawn from the seeded PRNG, so streams carry different
  bytes. Each client compares every byte with the fixture and the body's sha256 with the
  expected one; bytes lost = expected bytes − bytes equal to the expected ones up to the first
  difference, over all streams. Beside them, 4 keep-alive connections send a small POST
  every 10 ms each (reconnecting after the proxy's 1000 requests per connection); every answer
  is checked byte for byte. Wall time and CPU run from just before the first stream opens to
  just after the last ends. Bench CPU is the load generator's and upstreams' (one process, one
  core): when it nears a full core, latencies are the bench's own. The default pool (POOL_MAX_IDLE 32) is on, so at the end the
  proxy may hold up to 32 idle upstream connections beyond its baseline. RSS at end is read once
  the last stream has closed; memory freed to the allocator need not go back to the kernel, so
  an end at the peak is not by itself a leak.
- reset: each stream asks the upstream for a framed SSE response, chosen by the seeded PRNG:
  chunked, Content-Length or close-delimited; 1 to 200 fixture events from a random one; 0
  to 2 ms between events; and for the cut share, a reset (SO_LINGER 0, then close) after a random
  number of the response's bytes, head included, fewer than all (a quarter of the cuts fall
  exactly between two of the upstream's writes: after the head, before the last chunk...). The
  client classifies what it got: **complete** (200, ended where its framing said, equal to the
  fixture by bytes and sha256), **cut, visibly** (an error or early end before the framing says
  the body is complete; the bytes before it equal the fixture), **refused (502)** (the proxy's
  own answer when the cut fell in the head). Must be 0: **looked complete but wrong** (ended as
  complete, but cut upstream or different bytes), **whole stream not delivered** (the upstream
  sent it whole), **other failures** (a stalled read: a cut not passed on; wrong bytes before a
  cut; a 502 although the upstream's head arrived whole; another status). The proxy runs with
  POOL_MAX_IDLE=0 so that its descriptor count after the last stream must equal the count before
  the first, exactly. The fixture's accept queue holds 4096 connects, the proxy's 128 (std's
  default), so a burst of 1000 overflows the proxy's and some connects wait for a SYN retransmit
  (1 s): this costs time, not correctness.
";

const METHOD: &str = "
## Method

- Each scenario runs over a plain and a TLS upstream (a CA made with rcgen at startup, given to
  the proxy as `TARGET_CA_FILE`, to nginx as `proxy_ssl_trusted_certificate` and to HAProxy as
  `ca-file`), against four targets: **direct** (the load generator talks to the fixture upstream
  itself, over TLS for the TLS upstream), **proxy** (agent-loop-proxy, `LISTEN_PORT=0`, token on
  stdin), and two anchors configured for the same job. **nginx**: `worker_processes 1`,
  `proxy_http_version 1.1`, `proxy_buffering off`, `proxy_request_buffering off`, upstream
  `keepalive 32`, `keepalive_requests 1000`, `proxy_set_header Authorization`, access log on.
  **HAProxy**: one process with `nbthread 1`, in the foreground (`-db`, no master-worker),
  `mode http`, `http-reuse always` (any idle upstream connection serves any request, as nginx's
  and the proxy's pools do; `safe` would open a fresh upstream connection, and over TLS do a
  handshake, for each new client connection's first request), `pool-max-conn 32`, no request
  buffering (HAProxy streams bodies by default), `option http-no-delay` (without it HAProxy
  sends unfinished responses with MSG_MORE and the kernel holds SSE events up to 200 ms),
  `/health` answered locally, `http-request set-header Authorization`, the upstream verified
  (`ssl verify required ca-file ... sni str(localhost) verifyhost localhost`, as nginx's
  `proxy_ssl_name localhost`), one `option httplog` line per request to stderr, a regular file;
  timeouts of 600 s on both sides for held and paced streams. HAProxy has no setting for a
  cap on requests per client connection: a session variable counts them and the 1000th
  answer says `Connection: close`, which makes HAProxy close after it, as nginx's
  `keepalive_requests 1000` and the proxy's `MAX_REQUESTS_PER_CONNECTION` do. All three
  check the phantom token the client sends (`PHANTOM_TOKEN`; in nginx an
  `if ($http_authorization != ...) { return 401; }`, in HAProxy `http-request return status 401
  unless { req.fhdr(authorization) -m str ... }`), as a deployment would. Every run gets a fresh
  upstream and a fresh proxy, nginx or HAProxy.
- Pinning: the process under test (the proxy, nginx's master and worker, or HAProxy; one at a
  time) runs on the first allowed CPU, the load generator and the upstreams, which share one
  tokio current-thread runtime in the bench process, on the second.
- Rounds: each scenario and transport runs in rounds (full run: 5; sse_paced 7, whose p99
  moves most between runs; idle_streams 3, whose memory figures move least and whose rounds
  are the longest; quick: 1; `--rounds N`); a round runs every target once, and each round
  starts one target later than the one before, so drift on the machine (other load, heat)
  does not always favour the same target. Every figure in the table is the median over the
  rounds of that metric, taken metric by metric; the ratio columns divide those medians.
  **proxy/best** divides by the better anchor on that metric (higher requests/s, events/s and
  MB/s; lower CPU, memory, latency, delay and TTFB); its **rounds** column gives the lowest and
  highest of the per-round ratios, round i's proxy over round i's figure of that same anchor,
  so a ratio whose range straddles 1 is within the noise. Each round's figures are printed to
  stderr as they are measured. The endurance scenarios run once.
- Every timed answer is checked: status 200, small bodies byte for byte, SSE bodies by sha256
  against the fixture (paced: after removing the stamps, and every event counted), uploads by
  the sha256 and byte count the upstream reports, downloads by sha256. The upstream checks each
  request carries exactly `Authorization: Bearer <real token>` (the client sends a phantom one
  through the proxy and the anchors). The anchors must write one log line per request they
  forwarded: nginx's access.log lines and HAProxy's httplog lines are counted against the
  requests the upstream saw, and a difference fails the run.
- An anchor's run that ends in an error is run again, up to twice, and listed under the
  targets; its cell shows FAIL only if all three fail. HAProxy 2.6.12 now and then (one 32 MiB
  download over the TLS upstream in somewhere between 30 and 650 here) stops a few KiB before
  the end of a response: it has read every byte from the upstream but never sends the rest,
  and the client's 30 s read timeout ends the run. nginx and the proxy did not, over 720
  downloads each of the same kind. The proxy's and direct runs are never retried.
- CPU: the proxy's (nginx: master plus worker; HAProxy: its one process) CPU time from /proc
  before and after the measured phase, after a warm-up. utime+stime from /proc/<pid>/stat has
  10 ms granularity, so the bench sums the per-thread run time in ns from
  /proc/<pid>/task/*/schedstat, falling back to utime+stime if a thread exited. Memory: VmRSS
  of the same processes.
- small_post: 8 keep-alive connections, each request awaited before the next; latency is per
  request, including a reconnect when the server closed after `MAX_REQUESTS_PER_CONNECTION` /
  `keepalive_requests` / HAProxy's counter (1000 all three).
- sse_burst: the fixture (anthropic-stream.sse, 599 events) replayed several times per response,
  one chunk and one write per event, unpaced. The upstream's writes share the load generator's
  CPU, so events/s and MB/s mostly show whether the middle keeps up; CPU per MiB is its cost.
- sse_paced: the upstream writes one event per ms, each opened by an SSE comment line
  `: t=<ns since bench start>` stamped just before the write; the client subtracts it from the
  time it read the event's last byte. Same clock, same process, so no clock skew. TTFB (request
  sent to response head read) is measured over one-event streams before the long one.
- upload_32m / download_32m: 32 MiB (exactly the proxy's default `MAX_BODY_BYTES`), one request
  at a time on a keep-alive connection.
- idle_streams: N streams opened 64 at a time; each gets the response head and first event, then
  the upstream holds it. Memory per stream = (VmRSS after all are open − VmRSS after warm-up) / N.
  CPU per stream covers opening, holding and finishing it. nginx preallocates its connection
  array at startup, HAProxy its descriptor table (sized from `maxconn`), so part of their
  per-connection cost is in their baseline. Over TLS each stream needs its own upstream
  connection; the upstream (rustls, a stateful session cache) accepts a TLS 1.3 ticket once, so
  a middle that gives one saved session to many connections opened at once pays full
  handshakes for most of them (HAProxy keeps one session per server; the stderr line of each
  TLS run gives the upstream's handshake and resumption counts).
- Date: when this file was written, at the end of the run (UTC).
";

/// The heading of [`unix_vs_tcp`]'s table under the performance targets.
pub const UNIX_HEADING: &str = "
### The proxy over a Unix socket against TCP

The same proxy, the load generator connecting over `LISTEN_UNIX` (`unix`) or TCP loopback
(`plain`); the upstream is plain TCP in both. Below 1 is better for Unix, except requests/s.

";

/// The proxy over a Unix socket against the proxy over TCP (`--transports plain,unix`): for
/// each scenario run over both in this run, each metric's ratio of the medians (unix / plain),
/// and the lowest and highest of the per-round ratios. Empty when no scenario ran over both.
pub fn unix_vs_tcp(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let proxy = Target::Proxy as usize;
    for unix in outcomes.iter().filter(|o| o.transport == Transport::Unix) {
        let Some(tcp) = outcomes
            .iter()
            .find(|o| o.scenario == unix.scenario && o.transport == Transport::Plain)
        else {
            continue;
        };
        if out.is_empty() {
            out.push_str("| scenario | metric | proxy over TCP | proxy over Unix | Unix/TCP | rounds (min–max) |\n");
            out.push_str("|---|---|---:|---:|---:|---:|\n");
        }
        for (m, &metric) in unix.scenario.metrics().iter().enumerate() {
            let (Some(t), Some(u)) = (
                tcp.value(metric, Target::Proxy),
                unix.value(metric, Target::Proxy),
            ) else {
                continue;
            };
            let ratio = if t == 0.0 {
                "—".to_string()
            } else {
                format!("{:.2}", u / t)
            };
            let per_round: Vec<f64> = unix
                .rounds
                .iter()
                .zip(&tcp.rounds)
                .filter_map(|(ru, rt)| {
                    let u = ru[proxy].as_ref()?.get(m).copied().flatten()?;
                    let t = rt[proxy].as_ref()?.get(m).copied().flatten()?;
                    (t != 0.0).then(|| u / t)
                })
                .collect();
            let spread = if per_round.len() >= 2 {
                let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{lo:.2}–{hi:.2}")
            } else {
                "—".to_string()
            };
            let name = unix.scenario.name();
            out.push_str(&format!(
                "| {name} | {metric} | {t:.1} | {u:.1} | {ratio} | {spread} |\n"
            ));
        }
    }
    out
}
