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
use agent_loop_proxy::limits::{self, HEALTHCHECK_TIMEOUT};
use agent_loop_proxy::log::{self, Log, Sink};
use agent_loop_proxy::process as sys;
use agent_loop_proxy::run::{self, StartError};

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
            match agent_loop_proxy::COMMIT {
                Some(c) => println!(
                    "agent-loop-proxy {} (commit {c})",
                    agent_loop_proxy::VERSION
                ),
                None => println!("agent-loop-proxy {}", agent_loop_proxy::VERSION),
            }
            return ExitCode::SUCCESS;
        }
        (Some("healthcheck"), None) => return healthcheck(),
        // The argument is not echoed: a token pasted by mistake must not reach a log.
        _ => return fail(&Log::stderr(), "proxy: unknown argument; see --help"),
    }
    let cfg = match Config::from_env() {
        Ok(c) => c,
        // Another setting is wrong, but the format asked for may still be known.
        Err(e) => {
            let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json");
            return fail(&Log::new(json, Sink::Stderr), &e.to_string());
        }
    };
    let log = Arc::new(Log::new(cfg.log_json, Sink::Stderr));
    match serve(cfg, &log) {
        Ok(code) => code,
        Err(e) => fail(&log, &e.0),
    }
}

/// Binds, reads the token, serves until a signal, drains.
fn serve(cfg: Config, log: &Arc<Log>) -> Result<ExitCode, StartError> {
    let stdin_updates = cfg.token_source == TokenSource::StdinUpdates;
    let bound = run::bind(cfg, log.clone())?;
    if !sys::harden_process() {
        agent_loop_proxy::log!(
            log,
            "warning: could not make the process non-dumpable or disable core files"
        );
    }
    let stdin = dup_stdin()?;
    let (token, updates) = bound.first_token(stdin)?;
    if !stdin_updates {
        sys::close_stdin();
    }
    let runtime = runtime(log).map_err(|_| StartError("proxy: cannot start the runtime".into()))?;
    let code = runtime.block_on(async {
        let mut signals = Signals::new()
            .map_err(|_| StartError("proxy: cannot install signal handlers".into()))?;
        let running = bound.start(token, updates)?;
        signals.recv().await;
        running.shutdown();
        tokio::select! {
            _ = running.join() => {}
            _ = signals.recv() => agent_loop_proxy::log!(log, "second signal; exiting now"),
        }
        Ok::<_, StartError>(ExitCode::SUCCESS)
    });
    // Dropping the runtime drops any task still holding the proxy, which wipes the token.
    runtime.shutdown_timeout(Duration::from_millis(100));
    log.flush();
    code
}

/// The runtime: one worker per CPU this process may run on, and with one CPU the
/// single-threaded scheduler, which does the same work without the cross-thread hand-offs
/// (a small POST paid for them on a one-CPU proxy). Log lines written on its threads are
/// batched until a worker parks (see `log`).
fn runtime(log: &Arc<Log>) -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        log::batch_this_thread();
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let (park, stop) = (log.clone(), log.clone());
    builder
        .enable_all()
        .on_thread_start(log::batch_this_thread)
        .on_thread_park(move || park.flush())
        .on_thread_stop(move || stop.flush())
        .build()
}

/// Writes `msg` (it starts with `proxy: `) as the last line, in the log's format; exit code 1.
fn fail(log: &Log, msg: &str) -> ExitCode {
    log.fatal(msg);
    ExitCode::from(1)
}

/// A duplicate of fd 0, read directly (no std buffer keeps a copy of the token).
fn dup_stdin() -> Result<std::fs::File, StartError> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|_| StartError("proxy: token: could not read stdin".to_string()))?;
    Ok(std::fs::File::from(fd))
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
        Err(e) => return fail(&Log::stderr(), &e.to_string()),
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
        _ => fail(
            &Log::stderr(),
            "proxy: healthcheck: no healthy proxy on LISTEN_PORT",
        ),
    }
}
