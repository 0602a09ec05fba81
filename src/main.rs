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
use agent_loop_proxy::limits::HEALTHCHECK_TIMEOUT;
use agent_loop_proxy::log::{self, Log, Sink};
use agent_loop_proxy::process as sys;
use agent_loop_proxy::run::{self, StartError};

/// `--help`: usage, then every setting from the one table the parser reads.
fn help() -> String {
    format!(
        "\
agent-loop-proxy {version}: credential-injection reverse proxy for sandboxed AI coding agents

USAGE:
    printf '%s\\n' \"$TOKEN\" | agent-loop-proxy     read the token from stdin, serve
    agent-loop-proxy --check                      check the configuration (no token read); exit 0 or 1
    agent-loop-proxy healthcheck                  GET /health on LISTEN_UNIX or LISTEN_PORT; exit 0 if 200
    agent-loop-proxy --help | --version

The real token is read from stdin (one line), TOKEN_FILE or TOKEN_COMMAND's output and kept
only in memory. SIGTERM/SIGINT drain and exit; SIGHUP re-reads TOKEN_FILE or runs the
command again; SIGUSR1/SIGUSR2 are ignored.

SETTINGS (environment variables; an empty value counts as unset):
    {name:<30} {default:<26} meaning
{table}",
        version = agent_loop_proxy::VERSION,
        name = "name",
        default = "default",
        table = agent_loop_proxy::settings::help_table(),
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
        (Some("--check"), None) => return check(),
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
    let log = Arc::new(Log::new(cfg.log_json, Sink::Stderr).with_timestamps(cfg.log_timestamps));
    warn_unknown(&log);
    match serve(cfg, &log) {
        Ok(code) => code,
        Err(e) => fail(&log, &e.0),
    }
}

/// Warns of each variable that looks like a setting but is none (a typo, most likely): its
/// name only, never its value.
fn warn_unknown(log: &Log) {
    for (name, _) in std::env::vars_os() {
        if let Some(w) = agent_loop_proxy::settings::suspicious(&name.to_string_lossy()) {
            agent_loop_proxy::log!(log, "{w}");
        }
    }
}

/// `--check`: the configuration as a start reads it (CA files parsed, TOKEN_FILE opened),
/// nothing bound and no token read; the effective settings on stdout, exit 0; or the
/// `proxy: SETTING: ...` line and exit 1.
fn check() -> ExitCode {
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(&Log::stderr(), &e.to_string()),
    };
    let log = Arc::new(Log::new(cfg.log_json, Sink::Stderr).with_timestamps(cfg.log_timestamps));
    warn_unknown(&log);
    match agent_loop_proxy::check(&cfg, log.clone()) {
        Ok(settings) => {
            print!("{settings}");
            println!("configuration ok");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&log, &e.to_string()),
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
    let (token, updates) = read_token(&bound, stdin, stdin_updates)?;
    if !stdin_updates {
        sys::close_stdin();
    }
    let runtime = runtime(log).map_err(|_| StartError("proxy: cannot start the runtime".into()))?;
    let code = runtime.block_on(async {
        let mut signals = Signals::new()
            .map_err(|_| StartError("proxy: cannot install signal handlers".into()))?;
        let running = bound.start(token, updates)?;
        loop {
            match signals.recv().await {
                Sig::Stop => break,
                Sig::Reload => running.reload_token(),
                Sig::Other(name) => agent_loop_proxy::log!(log, "{name} received; ignored"),
            }
        }
        running.shutdown();
        let join = running.join();
        tokio::pin!(join);
        loop {
            tokio::select! {
                _ = &mut join => break,
                sig = signals.recv() => match sig {
                    Sig::Stop => {
                        agent_loop_proxy::log!(log, "second signal; exiting now");
                        break;
                    }
                    Sig::Reload => agent_loop_proxy::log!(log, "SIGHUP during the drain; ignored"),
                    Sig::Other(name) => agent_loop_proxy::log!(log, "{name} received; ignored"),
                },
            }
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

/// The first token. With a terminal on stdin (a person at it, not a launcher's pipe) and the
/// token to come from it: a prompt on stderr and echo off while it is typed, restored after.
/// `TOKEN_UPDATES=stdin` keeps reading lines for the whole run, which a terminal cannot do
/// without echo: refused.
fn read_token(
    bound: &run::Bound,
    stdin: std::fs::File,
    stdin_updates: bool,
) -> Result<(agent_loop_proxy::Token, agent_loop_proxy::Updates), StartError> {
    use std::io::IsTerminal;
    let from_stdin = !matches!(
        bound.config().token_source,
        TokenSource::File(_) | TokenSource::Command(_) | TokenSource::Federation(_)
    );
    if !from_stdin || !stdin.is_terminal() {
        return bound.first_token(stdin);
    }
    if stdin_updates {
        return Err(StartError(
            "proxy: TOKEN_UPDATES: stdin is a terminal; pipe the tokens in, or use TOKEN_FILE"
                .into(),
        ));
    }
    // On fd 0 itself: the duplicate is closed once the line is read.
    let quiet = sys::EchoOff::new(std::io::stdin().as_fd());
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(b"agent-loop-proxy: token (input hidden): ");
    let _ = err.flush();
    drop(err);
    let read = bound.first_token(stdin);
    drop(quiet);
    read
}

/// A duplicate of fd 0, read directly (no std buffer keeps a copy of the token).
fn dup_stdin() -> Result<std::fs::File, StartError> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|_| StartError("proxy: token: could not read stdin".to_string()))?;
    Ok(std::fs::File::from(fd))
}

/// What a signal asks for.
enum Sig {
    /// SIGTERM, SIGINT: drain and exit.
    Stop,
    /// SIGHUP: re-read the token source (a closed terminal sends it too: it never kills).
    Reload,
    /// SIGUSR1, SIGUSR2: nothing, but their default action would kill without a drain.
    Other(&'static str),
}

/// The signals the proxy handles, as one stream. Every signal whose default action ends the
/// process and that an operator or a terminal may send is caught, so none kills without a
/// drain.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    async fn recv(&mut self) -> Sig {
        tokio::select! {
            _ = self.term.recv() => Sig::Stop,
            _ = self.int.recv() => Sig::Stop,
            _ = self.hup.recv() => Sig::Reload,
            _ = self.usr1.recv() => Sig::Other("SIGUSR1"),
            _ = self.usr2.recv() => Sig::Other("SIGUSR2"),
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
    let (mut s, shown) = match &cfg.unix {
        Some(u) => {
            let shown = format!("{} (LISTEN_UNIX)", u.path.display());
            (Conn::Unix(u.path.clone()), shown)
        }
        None => (Conn::Tcp(addr), format!("{addr} (LISTEN_PORT)")),
    };
    // Ok: the status line's first 12 bytes, or fewer if the connection closed first.
    let answer = (|| -> std::io::Result<Vec<u8>> {
        let mut s: Box<dyn Health> = match &mut s {
            Conn::Tcp(addr) => Box::new(TcpStream::connect_timeout(addr, left()?)?),
            // A Unix connect does not wait for a peer: it succeeds or fails at once.
            Conn::Unix(path) => Box::new(std::os::unix::net::UnixStream::connect(&*path)?),
        };
        s.set_write_timeout(Some(left()?))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        let mut got = 0;
        while got < head.len() {
            s.set_read_timeout(Some(left()?))?;
            match s.read(&mut head[got..])? {
                0 => break,
                n => got += n,
            }
        }
        Ok(head[..got].to_vec())
    })();
    let why = match answer {
        Ok(head) if head == b"HTTP/1.1 200" => return ExitCode::SUCCESS,
        // The status digits only: nothing else a peer sent is echoed.
        Ok(head) => match head.strip_prefix(b"HTTP/1.1 ") {
            Some(code) if code.len() == 3 && code.iter().all(u8::is_ascii_digit) => {
                format!("answered {}", String::from_utf8_lossy(code))
            }
            _ => "no HTTP/1.1 answer".to_string(),
        },
        Err(e) => e.kind().to_string(),
    };
    fail(
        &Log::stderr(),
        &format!("proxy: healthcheck: {shown}: {why}"),
    )
}

/// Where `healthcheck` connects: `LISTEN_UNIX` if set, else `LISTEN_ADDR:LISTEN_PORT`.
enum Conn {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

/// A blocking stream with timeouts, TCP or Unix.
trait Health: Read + Write {
    fn set_write_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
}

impl Health for TcpStream {
    fn set_write_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_write_timeout(self, d)
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, d)
    }
}

impl Health for std::os::unix::net::UnixStream {
    fn set_write_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, d)
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, d)
    }
}
