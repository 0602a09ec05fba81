//! Operator signals: counters, gauges and histograms in atomics, rendered as the Prometheus
//! text exposition format 0.0.4 on a listener of their own (`METRICS_ADDR`), never on the
//! sandbox's port.
//!
//! Label sets are fixed and small: never a path, a header value or a token. Recording costs a
//! relaxed atomic add; rendering happens only when scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

mod tokens;
pub use tokens::TokenCounts;

/// The label sets are defined with the problems they classify, so the two cannot disagree.
pub use crate::error::{ConnectStep, Reason};

mod websocket;

pub use websocket::TunnelMetrics;

/// The status classes of RFC 9110 §15 (1xx-5xx), the `code` label of every answer.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Bucket bounds, in seconds: milliseconds to ten minutes (a long non-streaming call).
const BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A histogram of durations: cumulative counts are computed when rendered.
pub struct Histogram {
    /// Per bucket (not cumulative); the last is +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// Its buckets, sum and count; `labels` (`route="health",`, or empty) before `le`.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let braces = labels.trim_end_matches(',');
        let braces = if braces.is_empty() {
            String::new()
        } else {
            format!("{{{braces}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {sum}\n{name}_count{braces} {cumulative}"
        );
    }
}

/// The sources a token is re-read from (the `source` label of `token_refresh_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshSource {
    File,
    Command,
    Federation,
}

impl RefreshSource {
    pub const ALL: [RefreshSource; 3] = [
        RefreshSource::File,
        RefreshSource::Command,
        RefreshSource::Federation,
    ];

    fn label(self) -> &'static str {
        match self {
            RefreshSource::File => "file",
            RefreshSource::Command => "command",
            RefreshSource::Federation => "federation",
        }
    }
}

/// How a re-read went (the `result` label): a new token, the same one, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshResult {
    Changed,
    Unchanged,
    Failed,
}

impl RefreshResult {
    pub const ALL: [RefreshResult; 3] = [
        RefreshResult::Changed,
        RefreshResult::Unchanged,
        RefreshResult::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            RefreshResult::Changed => "changed",
            RefreshResult::Unchanged => "unchanged",
            RefreshResult::Failed => "failed",
        }
    }
}

/// Every signal of the process.
pub struct Metrics {
    /// Answered by the upstream, by status class (1xx-5xx: index 0-4).
    upstream_class: [AtomicU64; STATUS_CLASSES.len()],
    /// Answered by the proxy itself, by [`Reason`] and status class.
    proxy_reason: [[AtomicU64; STATUS_CLASSES.len()]; Reason::COUNT],
    /// Upstream 401 and 403 answers to the injected credential.
    credential_rejected: [AtomicU64; 2],
    pub tokens_masked: AtomicU64,
    pub upstream_opened: AtomicU64,
    pub upstream_reused: AtomicU64,
    /// New upstream connections that failed, by [`ConnectStep`].
    upstream_failed: [AtomicU64; ConnectStep::COUNT],
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub client_connections: AtomicI64,
    pub streams: AtomicI64,
    pub token_generation: AtomicU64,
    /// Re-reads of a token source, by [`RefreshSource`] and [`RefreshResult`].
    token_refresh: [[AtomicU64; RefreshResult::ALL.len()]; RefreshSource::ALL.len()],
    /// The current token's known expiry, in milliseconds since the epoch; 0: unknown.
    pub token_expiry_ms: AtomicU64,
    /// When the current generation became current, in milliseconds since the epoch.
    pub token_last_change_ms: AtomicU64,
    /// Tokens refused by the token checks (a line, a file, a command's answer).
    pub token_updates_refused: AtomicU64,
    /// Unix socket peers closed at accept: their uid is not in `ALLOW_PEER_UIDS`.
    pub peer_refused: AtomicU64,
    pub response_head: Histogram,
    /// Every request but `/health`, from its head to the end of its answer.
    exchange: Histogram,
    /// `/health` requests, timed apart so they do not pull the exchanges' quantiles down.
    health: Histogram,
    /// WebSocket tunnels.
    pub websocket: TunnelMetrics,
    /// Tokens the upstream reported using (see `usage`).
    pub tokens: TokenCounts,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// All zero, token generation 1.
    pub const fn new() -> Metrics {
        Metrics {
            upstream_class: [const { AtomicU64::new(0) }; STATUS_CLASSES.len()],
            proxy_reason: [const { [const { AtomicU64::new(0) }; STATUS_CLASSES.len()] };
                Reason::COUNT],
            credential_rejected: [const { AtomicU64::new(0) }; 2],
            tokens_masked: AtomicU64::new(0),
            upstream_opened: AtomicU64::new(0),
            upstream_reused: AtomicU64::new(0),
            upstream_failed: [const { AtomicU64::new(0) }; ConnectStep::COUNT],
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            client_connections: AtomicI64::new(0),
            streams: AtomicI64::new(0),
            token_generation: AtomicU64::new(1),
            token_refresh: [const { [const { AtomicU64::new(0) }; RefreshResult::ALL.len()] };
                RefreshSource::ALL.len()],
            token_expiry_ms: AtomicU64::new(0),
            token_last_change_ms: AtomicU64::new(0),
            token_updates_refused: AtomicU64::new(0),
            peer_refused: AtomicU64::new(0),
            response_head: Histogram::new(),
            exchange: Histogram::new(),
            health: Histogram::new(),
            websocket: TunnelMetrics::new(),
            tokens: TokenCounts::new(),
        }
    }

    /// A re-read of a token source and how it went.
    pub fn token_refreshed(&self, source: RefreshSource, result: RefreshResult) {
        self.token_refresh[source as usize][result as usize].fetch_add(1, Relaxed);
    }

    /// A request the upstream answered with `status`.
    pub fn answered_by_upstream(&self, status: u16) {
        self.upstream_class[class(status)].fetch_add(1, Relaxed);
    }

    /// A request the proxy answered itself with `status` (or would have: a client gone).
    pub fn answered_by_proxy(&self, reason: Reason, status: u16) {
        self.proxy_reason[reason.index()][class(status)].fetch_add(1, Relaxed);
    }

    /// The upstream answered `status` (401 or 403) to the injected credential.
    pub fn credential_rejected(&self, status: u16) {
        let i = usize::from(status == 403);
        self.credential_rejected[i].fetch_add(1, Relaxed);
    }

    /// How long a request took, from its head to the end of its answer.
    pub fn observe_exchange(&self, health: bool, d: Duration) {
        if health {
            self.health.observe(d);
        } else {
            self.exchange.observe(d);
        }
    }

    /// A new upstream connection that failed at `step`.
    pub fn connect_failed(&self, step: ConnectStep) {
        self.upstream_failed[step.index()].fetch_add(1, Relaxed);
    }

    /// The exposition, with `process` (read from /proc by the caller) appended.
    pub fn render(&self, process: &ProcessStats) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.render_requests(&mut out);
        self.render_counters(&mut out);
        self.render_gauges(&mut out);
        self.websocket.render(&mut out);
        self.tokens.render(&mut out);
        self.response_head.render(
            &mut out,
            &format!("{PREFIX}_upstream_response_head_seconds"),
            "Time from the request head sent upstream to the final response head.",
        );
        let name = format!("{PREFIX}_exchange_duration_seconds");
        let help = "Time from a request head read to the end of its response, /health apart.";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.exchange
            .render_series(&mut out, &name, "route=\"forward\",");
        self.health
            .render_series(&mut out, &name, "route=\"health\",");
        let _ = writeln!(
            out,
            "# HELP {PREFIX}_build_info The version and commit this binary was built from.\n# TYPE {PREFIX}_build_info gauge\n{PREFIX}_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            crate_version(),
            crate_commit()
        );
        process.render(&mut out);
        out
    }

    fn render_requests(&self, out: &mut String) {
        let name = format!("{PREFIX}_requests_total");
        let help = "Requests, by who answered (source), status class (code) and the proxy's reason (none for the upstream's answers).";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (code, c) in STATUS_CLASSES.iter().zip(&self.upstream_class) {
            let v = c.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}{{source=\"upstream\",code=\"{code}\",reason=\"none\"}} {v}"
            );
        }
        // The proxy's rows appear once counted: most reason and class pairs never occur.
        for (r, row) in Reason::ALL.iter().zip(&self.proxy_reason) {
            for (code, c) in STATUS_CLASSES.iter().zip(row) {
                let (reason, v) = (r.label(), c.load(Relaxed));
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "{name}{{source=\"proxy\",code=\"{code}\",reason=\"{reason}\"}} {v}"
                    );
                }
            }
        }
    }

    fn render_counters(&self, out: &mut String) {
        let name = format!("{PREFIX}_credential_rejected_total");
        let help = "Upstream answers 401 or 403 to the injected credential, by status.";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (status, c) in ["401", "403"].iter().zip(&self.credential_rejected) {
            let v = c.load(Relaxed);
            let _ = writeln!(out, "{name}{{status=\"{status}\"}} {v}");
        }
        let counters = [
            (
                "tokens_masked_total",
                "Occurrences of the real token masked in responses.",
                &self.tokens_masked,
            ),
            (
                "upstream_connections_opened_total",
                "New upstream connections (TCP, TLS, tunnel).",
                &self.upstream_opened,
            ),
            (
                "upstream_connections_reused_total",
                "Requests sent on a pooled upstream connection.",
                &self.upstream_reused,
            ),
            (
                "request_bytes_total",
                "Request bytes sent upstream (heads and bodies).",
                &self.bytes_up,
            ),
            (
                "response_bytes_total",
                "Response bytes sent to clients (heads and bodies).",
                &self.bytes_down,
            ),
            (
                "peer_refused_total",
                "Unix socket peers closed at accept: uid not in ALLOW_PEER_UIDS.",
                &self.peer_refused,
            ),
        ];
        for (name, help, c) in counters {
            let v = c.load(Relaxed);
            let _ = writeln!(out, "# HELP {PREFIX}_{name} {help}\n# TYPE {PREFIX}_{name} counter\n{PREFIX}_{name} {v}");
        }
        let name = format!("{PREFIX}_token_refresh_total");
        let help =
            "Re-reads of the token source (TOKEN_FILE, TOKEN_COMMAND, federation), by source and result.";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (source, row) in RefreshSource::ALL.iter().zip(&self.token_refresh) {
            for (result, c) in RefreshResult::ALL.iter().zip(row) {
                let (source, result, v) = (source.label(), result.label(), c.load(Relaxed));
                let _ = writeln!(out, "{name}{{source=\"{source}\",result=\"{result}\"}} {v}");
            }
        }
        let name = format!("{PREFIX}_token_updates_refused_total");
        let help = "Tokens refused by the token checks (a line, a file, a command's answer).";
        let v = self.token_updates_refused.load(Relaxed);
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
        let name = format!("{PREFIX}_upstream_connect_failures_total");
        let help = "New upstream connections that failed, by step.";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (step, c) in ConnectStep::ALL.iter().zip(&self.upstream_failed) {
            let (step, v) = (step.label(), c.load(Relaxed));
            let _ = writeln!(out, "{name}{{step=\"{step}\"}} {v}");
        }
    }

    fn render_gauges(&self, out: &mut String) {
        let generation = i64::try_from(self.token_generation.load(Relaxed)).unwrap_or(i64::MAX);
        let gauges = [
            (
                "client_connections",
                "Client connections open.",
                self.client_connections.load(Relaxed),
            ),
            (
                "streams_in_progress",
                "Exchanges with the upstream in progress.",
                self.streams.load(Relaxed),
            ),
            (
                "token_generation",
                "Generation of the current token (1 at startup, one more per update).",
                generation,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {PREFIX}_{name} {help}\n# TYPE {PREFIX}_{name} gauge\n{PREFIX}_{name} {v}"
            );
        }
        let seconds = |ms: &AtomicU64| ms.load(Relaxed) as f64 / 1000.0;
        let name = format!("{PREFIX}_token_last_change_timestamp_seconds");
        let help = "When the current token became current (startup, or its update), Unix time.";
        let v = seconds(&self.token_last_change_ms);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        // Only a known expiry is shown: an absent series, not a 0 that alerts would misread.
        if self.token_expiry_ms.load(Relaxed) != 0 {
            let name = format!("{PREFIX}_token_expiry_timestamp_seconds");
            let help = "When the current token expires, as its source said, Unix time.";
            let v = seconds(&self.token_expiry_ms);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    }
}

/// The index of `status`'s class in [`STATUS_CLASSES`].
fn class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, STATUS_CLASSES.len()) - 1
}

fn crate_version() -> &'static str {
    crate::settings::VERSION
}

/// The commit, or `unknown` for a build outside a git checkout.
fn crate_commit() -> &'static str {
    crate::settings::COMMIT.unwrap_or("unknown")
}

/// The one prefix of the proxy's metric names.
const PREFIX: &str = "agent_loop_proxy";

/// The process basics Prometheus clients export, read from /proc when scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub resident_memory_bytes: u64,
    pub cpu_seconds: f64,
}

impl ProcessStats {
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}\n\
             # HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}\n\
             # HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n\
             # HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
            self.start_time_seconds, self.open_fds, self.resident_memory_bytes, self.cpu_seconds
        );
    }
}
