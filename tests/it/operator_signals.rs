//! Operator signals: a Prometheus exposition on a listener of its own, whose counters move
//! with each outcome class, and a JSON log a parser accepts; neither ever holds the token,
//! the phantom or a header value. A real Prometheus scrapes it (Debian's package).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const PHANTOM: &str = "phantom-for-signals";
const HEADER_SECRET: &str = "header-value-never-logged";

/// The metrics address the proxy logged at startup.
fn metrics_addr(proxy: &Proxy) -> SocketAddr {
    assert!(
        proxy.wait_for_stderr("metrics on ", IO_TIMEOUT),
        "{}",
        proxy.stderr_so_far()
    );
    let text = proxy.stderr_so_far();
    let line = text.lines().find(|l| l.contains("metrics on ")).unwrap();
    let at = line.split("metrics on ").nth(1).unwrap();
    let at = at.split('"').next().unwrap().trim();
    at.parse()
        .unwrap_or_else(|_| panic!("metrics address in {line:?}"))
}

/// One raw HTTP exchange (the server closes after it): (status line, body).
fn get_raw(addr: SocketAddr, request: &str) -> (String, String) {
    try_get(addr, request).unwrap_or_else(|| panic!("no answer from {addr}"))
}

fn try_get(addr: SocketAddr, request: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut all = String::new();
    s.read_to_string(&mut all).ok()?;
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    Some((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get_raw(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    body
}

/// The value of one sample line (`name{labels} value`).
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series}"))
}

/// An upstream answering by path: /status/NNN with that status, /echo with the request
/// head (our credential included: masked on the way back), /stall never.
fn upstream() -> Upstream {
    Upstream::plain().serve(|c: &mut UpConn| {
        while let Some(req) = c.read_request() {
            let t = req.head.target.clone();
            let out = if let Some(code) = t.strip_prefix("/status/") {
                format!(
                    "HTTP/1.1 {code} X\r\nrequest-id: req_01ABC-def\r\nContent-Length: 2\r\n\r\nok"
                )
                .into_bytes()
            } else if t == "/stall" {
                std::thread::sleep(Duration::from_secs(3));
                return;
            } else {
                handlers::ok_text(&req, req.head.raw.as_slice())
            };
            if c.send(&out).is_err() {
                return;
            }
        }
    })
}

/// A proxy with metrics, JSON logs, a phantom and an allow-list; every outcome class once.
fn drive_every_outcome(up: &Upstream) -> (Proxy, SocketAddr) {
    let target = up.target_url();
    let envs = [
        ("TARGET", target.as_str()),
        ("METRICS_ADDR", "127.0.0.1:0"),
        ("LOG_FORMAT", "json"),
        ("PHANTOM_TOKEN", PHANTOM),
        ("ALLOW_REQUESTS", "GET /status/*, GET /echo, GET /stall"),
        ("RESPONSE_TIMEOUT", "500ms"),
        ("MAX_BODY_BYTES", "100"),
    ];
    let proxy = Proxy::spawn(&envs, TOKEN);
    let addr = metrics_addr(&proxy);
    let auth = format!("Authorization: Bearer {PHANTOM}\r\nX-Secret: {HEADER_SECRET}\r\n");
    let req = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    for path in [
        "/status/200",
        "/status/302",
        "/status/404",
        "/status/401",
        "/status/503",
        "/echo",
    ] {
        roundtrip(proxy.addr(), req(path));
    }
    roundtrip(proxy.addr(), req("/stall")).assert_proxy_error(504, "timeout_error");
    roundtrip(
        proxy.addr(),
        "GET /status/200 HTTP/1.1\r\nHost: x\r\nX-Secret: v\r\n\r\n",
    )
    .assert_proxy_error(401, "authentication_error");
    roundtrip(proxy.addr(), req("/forbidden")).assert_proxy_error(403, "permission_error");
    roundtrip(
        proxy.addr(),
        "GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    )
    .assert_proxy_error(400, "invalid_request_error");
    let big = format!("POST /status/200 HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1000\r\n\r\n");
    roundtrip(proxy.addr(), big).assert_proxy_error(413, "request_too_large");
    assert_eq!(roundtrip(proxy.addr(), get("/health")).status(), 200);
    // Every request logs a request event, the two refused before routing included.
    assert!(proxy.wait_for_stderr_count("\"event\":\"request\"", 12, IO_TIMEOUT));
    (proxy, addr)
}

#[test]
fn each_outcome_class_moves_its_counter() {
    let up = upstream();
    let (_proxy, addr) = drive_every_outcome(&up);
    let m = scrape(addr);
    let p = "agent_loop_proxy";
    for (series, want) in [
        (
            "requests_total{source=\"upstream\",code=\"2xx\",reason=\"none\"}",
            2.0,
        ),
        (
            "requests_total{source=\"upstream\",code=\"3xx\",reason=\"none\"}",
            1.0,
        ),
        (
            "requests_total{source=\"upstream\",code=\"4xx\",reason=\"none\"}",
            2.0,
        ),
        (
            "requests_total{source=\"upstream\",code=\"5xx\",reason=\"none\"}",
            1.0,
        ),
        (
            "requests_total{source=\"proxy\",code=\"5xx\",reason=\"timeout\"}",
            1.0,
        ),
        (
            "requests_total{source=\"proxy\",code=\"4xx\",reason=\"phantom_refused\"}",
            1.0,
        ),
        (
            "requests_total{source=\"proxy\",code=\"4xx\",reason=\"policy_refused\"}",
            1.0,
        ),
        (
            "requests_total{source=\"proxy\",code=\"4xx\",reason=\"malformed\"}",
            1.0,
        ),
        (
            "requests_total{source=\"proxy\",code=\"4xx\",reason=\"too_large\"}",
            1.0,
        ),
        (
            "requests_total{source=\"proxy\",code=\"2xx\",reason=\"health\"}",
            1.0,
        ),
        ("credential_rejected_total{status=\"401\"}", 1.0),
        ("credential_rejected_total{status=\"403\"}", 0.0),
        ("tokens_masked_total", 1.0),
        ("upstream_response_head_seconds_count", 6.0),
        ("exchange_duration_seconds_count{route=\"forward\"}", 11.0),
        ("exchange_duration_seconds_count{route=\"health\"}", 1.0),
        ("streams_in_progress", 0.0),
        ("token_generation", 1.0),
    ] {
        assert_eq!(sample(&m, &format!("{p}_{series}")), want, "{series}\n{m}");
    }
    // Every request is counted once, under one label scheme: the rows add up to the requests.
    let total: f64 = m
        .lines()
        .filter(|l| l.starts_with(&format!("{p}_requests_total{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 12.0, "{m}");
    let build = format!(
        "{p}_build_info{{version=\"{}\",commit=\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with(&build) && l.ends_with("\"} 1")),
        "{m}"
    );
    assert!(sample(&m, &format!("{p}_upstream_connections_opened_total")) >= 1.0);
    assert!(sample(&m, &format!("{p}_upstream_connections_reused_total")) >= 1.0);
    assert!(sample(&m, &format!("{p}_request_bytes_total")) > 100.0);
    assert!(sample(&m, &format!("{p}_response_bytes_total")) > 100.0);
    assert!(sample(&m, "process_resident_memory_bytes") > 0.0);
    assert!(sample(&m, "process_open_fds") > 3.0);
    assert!(sample(&m, "process_start_time_seconds") > 1.7e9);
}

#[test]
fn neither_the_exposition_nor_the_json_log_holds_the_token_phantom_or_a_header_value() {
    let up = upstream();
    let (proxy, addr) = drive_every_outcome(&up);
    let m = scrape(addr);
    let log = proxy.stderr_so_far();
    for secret in [TOKEN, "REALTOKEN", PHANTOM, HEADER_SECRET] {
        assert!(!m.contains(secret), "{secret} in the exposition");
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    // Every line is one JSON object with a timestamp and an event; requests carry their fields.
    let mut requests = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let ts = v["ts"].as_str().expect("ts");
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        assert!(v["event"].is_string(), "{line}");
        let level = v["level"].as_str().expect("level");
        let want = match v["event"].as_str().unwrap() {
            "error" | "fatal" => "error",
            "credential_rejected" => "warn",
            "log" if v["message"].as_str().unwrap().starts_with("warning:") => "warn",
            _ => "info",
        };
        assert_eq!(level, want, "{line}");
        if v["event"] == "error" {
            // An error names its request: the access line with the same seq.
            let seq = v["seq"].as_u64().expect("seq");
            let access = format!("\"event\":\"request\",\"seq\":{seq},");
            assert!(
                log.contains(&access),
                "no access line for seq {seq}: {line}"
            );
        }
        if v["event"] == "request" {
            requests += 1;
            for field in [
                "method",
                "path",
                "status",
                "bytes_up",
                "bytes_down",
                "duration_ms",
                "reused",
                "seq",
            ] {
                assert!(!v[field].is_null(), "{field} missing: {line}");
            }
            assert!(!v["path"].as_str().unwrap().contains('?'));
        }
    }
    assert_eq!(requests, 12);
    let with_id = log
        .lines()
        .filter(|l| l.contains("\"request_id\":\"req_01ABC-def\""))
        .count();
    assert_eq!(
        with_id, 5,
        "the upstream's request-id on each /status answer"
    );
    assert!(log.contains("\"event\":\"credential_rejected\""));
    assert!(log.contains("\"event\":\"startup\""));
}

#[test]
fn the_metrics_listener_answers_get_metrics_only_and_the_sandbox_port_never_does() {
    let up = Upstream::plain().serve(handlers::echo_target());
    let proxy = proxy_for(&up, &[("METRICS_ADDR", "127.0.0.1:0")]);
    let addr = metrics_addr(&proxy);
    for req in [
        "GET / HTTP/1.1\r\n\r\n",
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "GET /metrics/x HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(get_raw(addr, req).0, "HTTP/1.1 404 Not Found", "{req:?}");
    }
    // HEAD /metrics: the head a GET gets, without the body (RFC 9110 §9.3.2).
    let (status, body) = get_raw(addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
    // A head over the scrape limit, or with bare LF line endings, is closed unanswered at
    // once (not when the scrape times out).
    let long = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    for req in ["GET /metrics HTTP/1.1\n\n", long.as_str()] {
        let began = Instant::now();
        let answer = try_get(addr, req);
        assert!(
            answer.is_none_or(|(status, _)| status.is_empty()),
            "{:.40?}",
            req
        );
        assert!(began.elapsed() < Duration::from_secs(5), "{:.40?}", req);
    }
    scrape(addr);
    // On the sandbox's port, /metrics is just a path, forwarded to TARGET.
    assert_eq!(
        roundtrip(proxy.addr(), get("/metrics")).body_str(),
        "/metrics"
    );
}

/// The Prometheus tool `name`, asserted installed (see [`require_tool`]).
fn tool(name: &str) -> String {
    require_tool(name, "prometheus");
    name.to_string()
}

#[test]
#[ignore = "needs promtool"]
fn promtool_accepts_the_exposition() {
    let promtool = tool("promtool");
    let up = upstream();
    let (_proxy, addr) = drive_every_outcome(&up);
    let m = scrape(addr);
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

#[test]
#[ignore = "needs prometheus"]
fn a_real_prometheus_scrapes_the_proxy() {
    let prometheus = tool("prometheus");
    let up = upstream();
    let proxy = proxy_for(&up, &[("METRICS_ADDR", "127.0.0.1:0")]);
    let metrics = metrics_addr(&proxy);
    let dir = std::env::temp_dir().join(format!("alp-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: agent-loop-proxy\n    static_configs:\n      - targets: ['{metrics}']\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let web = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut server = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    roundtrip(proxy.addr(), get("/status/200"));
    let query = |q: &str| -> Option<serde_json::Value> {
        let (status, body) = try_get(web, &format!("GET {q} HTTP/1.0\r\n\r\n"))?;
        status
            .contains(" 200 ")
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut up_seen, mut counted) = (false, false);
    while Instant::now() < deadline && !(up_seen && counted) {
        if let Some(v) = query("/api/v1/targets") {
            up_seen |= v["data"]["activeTargets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["health"] == "up"));
        }
        let q = "/api/v1/query?query=agent_loop_proxy_requests_total%7Bsource%3D%22upstream%22%2Ccode%3D%222xx%22%7D";
        if let Some(v) = query(q) {
            counted |= v["data"]["result"][0]["value"][1]
                .as_str()
                .is_some_and(|n| n.parse::<f64>().is_ok_and(|n| n >= 1.0));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(up_seen, "Prometheus never saw the target up");
    assert!(
        counted,
        "Prometheus never saw the forwarded request counted"
    );
}
