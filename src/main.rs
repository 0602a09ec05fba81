//! The binary: flags, configuration, token intake, signals. Everything else is in the library.
//!
//! Order matters: configuration is validated and the listener bound before stdin is read (a
//! bad setting never consumes the token); the process is made non-dumpable before the token
//! exists; stdin is closed as soon as the line is read.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent_loop_proxy::config::{Config, TokenSource};
use agent_loop_proxy::credential::Credentials;
use agent_loop_proxy::intake;
use agent_loop_proxy::limits::{self, HEALTHCHECK_TIMEOUT};
use agent_loop_proxy::log::{self, Value};
use agent_loop_proxy::server;
use agent_loop_proxy::state::Proxy;
use agent_loop_proxy::sys;
use agent_loop_proxy::upstream::{Connector, Pool};

/// `--help`, with the defaults taken from [`limits`].
fn help() -> String {
    format!(
        "\
agent-loop-proxy: credential-injection reverse proxy for sandboxed AI coding agents

USAGE:
    printf '%s\\n' \"$TOKEN\" | agent-loop-proxy     read the token from stdin, serve
    agent-loop-proxy healthcheck                  GET /health on LISTEN_PORT; exit 0 if 200
    agent-loop-proxy --help | --version

The real token is read from stdin (one line) or TOKEN_FILE and kept only in memory. Configuration comes
from the environment: LISTEN_PORT ({port}), LISTEN_ADDR (127.0.0.1), TARGET
({target}), TARGET_CA_FILE, PHANTOM_TOKEN, TOKEN_HEADER (authorization |
x-api-key | another field name), TOKEN_UPDATES (stdin: each further line replaces the
token), TOKEN_FILE (read the token from this file, and again when it changes),
ALLOW_REQUESTS (METHOD /path[*], ...), OAUTH_BETA (auto | on | off), SHUTDOWN_GRACE
({grace}s), and the limits and timeouts listed in the README.
",
        port = limits::DEFAULT_LISTEN_PORT,
        target = limits::DEFAULT_TARGET,
        grace = limits::SHUTDOWN_GRACE.as_secs(),
    )
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => {}
        (Some("-h" | "--help"), None) => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        (Some("-V" | "--version"), None) => {
            println!("agent-loop-proxy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        (Some("healthcheck"), None) => return healthcheck(),
        // The argument is not echoed: a token pasted by mistake must not reach a log.
        _ => return fail("proxy: unknown argument; see --help"),
    }

    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    agent_loop_proxy::log::set_json(cfg.log_json);
    let started = std::time::SystemTime::now();
    let connector = match Connector::new(&cfg) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let listener = match std::net::TcpListener::bind(cfg.listen) {
        Ok(l) => l,
        Err(_) => return fail("proxy: LISTEN_PORT: cannot listen on LISTEN_ADDR:LISTEN_PORT (in use or not permitted)"),
    };
    if !sys::set_listen_backlog(listener.as_fd(), limits::LISTEN_BACKLOG) {
        agent_loop_proxy::log!("warning: could not raise the listen backlog");
    }
    let metrics = match cfg.metrics.map(std::net::TcpListener::bind).transpose() {
        Ok(l) => l,
        Err(_) => {
            return fail("proxy: METRICS_ADDR: cannot listen there (in use or not permitted)")
        }
    };

    if !sys::harden_process() {
        agent_loop_proxy::log!(
            "warning: could not make the process non-dumpable or disable core files"
        );
    }
    let stdin = match dup_stdin() {
        Ok(f) => f,
        Err(msg) => return fail(&msg),
    };
    let (token, updates) = match intake::first_token(&cfg, stdin) {
        Ok(t) => t,
        Err(msg) => return fail(&msg),
    };
    if cfg.token_source != TokenSource::StdinUpdates {
        sys::close_stdin();
    }
    if !token.is_locked() {
        agent_loop_proxy::log!(
            "warning: could not lock the token in memory (mlock); it may be swapped"
        );
    }
    if cfg.phantom.is_none() {
        agent_loop_proxy::log!(
            "warning: PHANTOM_TOKEN unset; any process that reaches the port can use the token"
        );
    }
    let beta = cfg.beta_rule();
    let oauth_beta = beta.applies(token.as_bytes());
    let creds = Arc::new(Credentials::new(token, oauth_beta));
    intake::spawn_updates(updates, creds.clone(), beta);

    let runtime = match runtime() {
        Ok(r) => r,
        Err(_) => return fail("proxy: cannot start the runtime"),
    };
    let pool = Pool::new(cfg.pool_max_idle, cfg.timeouts.pool_idle);
    let proxy = Arc::new(Proxy {
        cfg,
        creds,
        connector,
        pool,
    });
    let code = runtime.block_on(run(listener, metrics, started, proxy));
    // Dropping the runtime drops any task still holding the proxy, which wipes the token.
    runtime.shutdown_timeout(Duration::from_millis(100));
    log::flush();
    code
}

/// The runtime: one worker per CPU this process may run on, and with one CPU the
/// single-threaded scheduler, which does the same work without the cross-thread hand-offs
/// (issue 14's profile: a small POST paid for them on a one-CPU proxy). Log lines written on
/// its threads are batched until a worker parks (see `log`).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        log::batch_this_thread();
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        .on_thread_start(log::batch_this_thread)
        .on_thread_park(log::flush)
        .on_thread_stop(log::flush)
        .build()
}

fn fail(msg: &str) -> ExitCode {
    // Lines batched before this one go first.
    log::flush();
    // Messages already start with `proxy: `; one write, as for every log line.
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("{msg}\n").as_bytes());
    ExitCode::from(1)
}

/// A duplicate of fd 0, read directly (no std buffer keeps a copy of the token).
fn dup_stdin() -> Result<std::fs::File, String> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|_| "proxy: token: could not read stdin".to_string())?;
    Ok(std::fs::File::from(fd))
}

async fn run(
    listener: std::net::TcpListener,
    metrics: Option<std::net::TcpListener>,
    started: std::time::SystemTime,
    proxy: Arc<Proxy>,
) -> ExitCode {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|_| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(_) => return fail("proxy: cannot register the listener"),
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(_) => return fail("proxy: cannot install signal handlers"),
    };
    let target = proxy.cfg.target.to_string();
    log::event(
        "startup",
        format_args!("listening on {addr}, target {target}"),
        &[
            ("listen", Value::Str(&addr)),
            ("target", Value::Str(&target)),
        ],
    );
    if let Some(m) = metrics {
        let m = m
            .set_nonblocking(true)
            .and_then(|_| tokio::net::TcpListener::from_std(m));
        let Ok(m) = m else {
            return fail("proxy: cannot register the metrics listener");
        };
        let at = m.local_addr().map(|a| a.to_string()).unwrap_or_default();
        log::event(
            "metrics",
            format_args!("metrics on {at}"),
            &[("listen", Value::Str(&at))],
        );
        tokio::spawn(agent_loop_proxy::scrape::serve(m, started));
    }
    if let Some((egress, setting)) = &proxy.cfg.egress {
        // Host and port only: the URL may carry credentials.
        agent_loop_proxy::log!("egress proxy {egress} (from {setting})");
    }
    let grace = proxy.cfg.timeouts.shutdown_grace;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(server::serve(listener, proxy.clone(), rx));
    signals.recv().await;
    let grace_ms = grace.as_millis() as u64;
    log::event(
        "shutdown",
        format_args!("shutting down; draining for up to {grace_ms}ms"),
        &[("grace_ms", Value::Num(grace_ms))],
    );
    let _ = tx.send(true);
    proxy.pool.clear();
    tokio::select! {
        _ = server => agent_loop_proxy::log!("drained; exiting"),
        _ = tokio::time::sleep(grace) => agent_loop_proxy::log!("grace period over; closing what is left"),
        _ = signals.recv() => agent_loop_proxy::log!("second signal; exiting now"),
    }
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// `agent-loop-proxy healthcheck`: for the container's HEALTHCHECK. No stdin, no token.
fn healthcheck() -> ExitCode {
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let ip = match cfg.listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, cfg.listen.port());
    // One deadline for the whole check: each step gets what is left of it.
    let deadline = std::time::Instant::now() + HEALTHCHECK_TIMEOUT;
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(std::io::ErrorKind::TimedOut)
    };
    let ok = (|| -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, left()?)?;
        s.set_write_timeout(Some(left()?))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        let mut got = 0;
        while got < head.len() {
            s.set_read_timeout(Some(left()?))?;
            match s.read(&mut head[got..])? {
                0 => return Ok(false),
                n => got += n,
            }
        }
        Ok(&head == b"HTTP/1.1 200")
    })();
    match ok {
        Ok(true) => ExitCode::SUCCESS,
        _ => fail("proxy: healthcheck: no healthy proxy on LISTEN_PORT"),
    }
}
