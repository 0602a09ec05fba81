//! The results tables, the issue 6 target check, and benches/RESULTS.md.
//!
//! RESULTS.md has two parts: the relay scenarios' (header, table, targets, method) and, after
//! [`ENDURANCE_MARK`], the soak and reset section. A run rewrites only the parts it measured
//! and keeps the other as it was, so a three-minute soak does not wipe the relay tables of a
//! full run, nor a relay run the soak's figures.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::scenarios::{Scenario, Target, Transport};

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

/// Results of one scenario over one transport: `cells[metric][target]`.
pub struct Outcome {
    pub scenario: Scenario,
    pub transport: Transport,
    /// Extra words for the scenario column, e.g. the stream count.
    pub note: String,
    pub cells: Vec<[Cell; 4]>,
}

impl Outcome {
    pub fn value(&self, metric: &str, target: Target) -> Option<f64> {
        let m = self.scenario.metrics().iter().position(|&n| n == metric)?;
        let t = Target::ALL.iter().position(|&x| x == target)?;
        match self.cells[m][t] {
            Cell::Value(v) => Some(v),
            _ => None,
        }
    }
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

/// The markdown table: scenario | metric | direct | proxy | nginx | haproxy | proxy/direct |
/// proxy/nginx | proxy/haproxy.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | metric | direct | proxy | nginx | haproxy | proxy/direct | proxy/nginx | proxy/haproxy |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        for (metric, cells) in o.scenario.metrics().iter().zip(&o.cells) {
            let _ = writeln!(
                out,
                "| {}/{}{} | {metric} | {} | {} | {} | {} | {} | {} | {} |",
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

/// Checks the issue 6 targets that this run measured.
pub fn targets(outcomes: &[Outcome], streams: usize) -> String {
    let find = |s: Scenario, t: Transport| {
        outcomes
            .iter()
            .find(|o| o.scenario == s && o.transport == t)
    };
    type Check = Box<dyn Fn(&Outcome) -> Option<(f64, bool)>>;
    let nginx_ratio = |metric: &'static str, ok: fn(f64) -> bool| -> Check {
        Box::new(move |o: &Outcome| {
            let r = o.value(metric, Target::Proxy)? / o.value(metric, Target::Nginx)?;
            Some((r, ok(r)))
        })
    };
    let rows: Vec<(&str, Scenario, Check)> = vec![
        (
            "small POSTs: requests/s proxy/nginx ≥ 1.3",
            Scenario::SmallPost,
            nginx_ratio("requests/s", |r| r >= 1.3),
        ),
        (
            "small POSTs: CPU/request proxy/nginx ≤ 0.7",
            Scenario::SmallPost,
            nginx_ratio("CPU µs/request", |r| r <= 0.7),
        ),
        (
            "paced SSE: delay p50 proxy − direct ≤ 50 µs",
            Scenario::SsePaced,
            Box::new(|o: &Outcome| {
                let m = "event delay p50 (µs)";
                let d = o.value(m, Target::Proxy)? - o.value(m, Target::Direct)?;
                Some((d, d <= 50.0))
            }),
        ),
        (
            "paced SSE: delay p99 proxy/nginx ≤ 0.5",
            Scenario::SsePaced,
            nginx_ratio("event delay p99 (µs)", |r| r <= 0.5),
        ),
        (
            "paced SSE: CPU/event proxy/nginx ≤ 0.7",
            Scenario::SsePaced,
            nginx_ratio("CPU µs/event", |r| r <= 0.7),
        ),
        (
            "held streams: KiB/stream ≤ 8 plain, ≤ 24 TLS (at 5000)",
            Scenario::IdleStreams,
            Box::new(|o: &Outcome| {
                let v = o.value("RSS KiB/stream", Target::Proxy)?;
                let limit = if o.transport == Transport::Plain {
                    8.0
                } else {
                    24.0
                };
                Some((v, v <= limit))
            }),
        ),
        (
            "upload: CPU/byte proxy/nginx ≤ 1",
            Scenario::Upload32m,
            nginx_ratio("CPU µs/MiB", |r| r <= 1.0),
        ),
        (
            "download: CPU/byte proxy/nginx ≤ 1",
            Scenario::Download32m,
            nginx_ratio("CPU µs/MiB", |r| r <= 1.0),
        ),
        (
            "SSE burst: CPU/byte proxy/nginx ≤ 1",
            Scenario::SseBurst,
            nginx_ratio("CPU µs/MiB", |r| r <= 1.0),
        ),
    ];
    let mut out = String::from("| target (issue 6) | plain | tls |\n|---|---|---|\n");
    for (label, scenario, check) in rows {
        let mut line = format!("| {label} |");
        for t in Transport::ALL {
            let text = match find(scenario, t).and_then(&check) {
                Some((v, ok)) => format!("{} {}", num(v), if ok { "met" } else { "MISSED" }),
                None => "not measured".into(),
            };
            let _ = write!(line, " {text} |");
        }
        out.push_str(&line);
        out.push('\n');
    }
    if streams < 5000 && find(Scenario::IdleStreams, Transport::Plain).is_some() {
        let _ = writeln!(
            out,
            "\n(held streams measured at N = {streams}; the target is stated at 5000)"
        );
    }
    out
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
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
    pub fn add(&mut self, label: &str, target: Target, load: f64, secs: f64) {
        self.cpu_secs += load * secs;
        self.secs += secs;
        let worse = match &self.worst {
            None => true,
            Some((w, _)) => load > *w,
        };
        if worse {
            self.worst = Some((load, format!("{label} {}", target.name())));
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
## Issue 6 targets

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

/// RESULTS.md from the existing file and the parts this run wrote (`None`: keep the old one).
pub fn merge_results(existing: &str, relay: Option<String>, endurance: Option<String>) -> String {
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
    if !endurance.is_empty() {
        out.truncate(out.trim_end().len());
        out.push_str("\n\n");
        out.push_str(&endurance);
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
  the proxy as `TARGET_CA_FILE` and to nginx as `proxy_ssl_trusted_certificate`), against three
  targets: **direct** (the load generator talks to the fixture upstream itself, over TLS for the
  TLS upstream), **proxy** (agent-loop-proxy, `LISTEN_PORT=0`, token on stdin) and **nginx**
  (`worker_processes 1`, `proxy_http_version 1.1`, `proxy_buffering off`,
  `proxy_request_buffering off`, upstream `keepalive 32`, `proxy_set_header Authorization`,
  access log on, as the proxy logs every request too). Both check the phantom token the client
  sends (`PHANTOM_TOKEN`; in nginx an `if ($http_authorization != ...) { return 401; }`), as a
  deployment would. Every run gets a fresh upstream and a fresh proxy or nginx.
- The load generator and the upstreams share one tokio current-thread runtime in the bench
  process. The proxy and nginx run on their own CPU.
- Every timed answer is checked: status 200, small bodies byte for byte, SSE bodies by sha256
  against the fixture (paced: after removing the stamps, and every event counted), uploads by
  the sha256 and byte count the upstream reports, downloads by sha256. The upstream checks each
  request carries exactly `Authorization: Bearer <real token>` (the client sends a phantom one
  through the proxy and nginx).
- CPU: the proxy's (nginx: master plus worker) CPU time from /proc before and after the measured
  phase, after a warm-up. utime+stime from /proc/<pid>/stat has 10 ms granularity, so the bench
  sums the per-thread run time in ns from /proc/<pid>/task/*/schedstat, falling back to
  utime+stime if a thread exited.
- small_post: 8 keep-alive connections, each request awaited before the next; latency is per
  request, including a reconnect when the server closed after `MAX_REQUESTS_PER_CONNECTION` /
  `keepalive_requests` (1000 both).
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
  array at startup, so part of its per-connection cost is in its baseline.
";
