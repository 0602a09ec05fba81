//! Starting and stopping one proxy: the library's entry point.
//!
//! Two steps, so that everything that can fail on the configuration alone fails before a
//! token exists: [`bind`] builds the upstream connector (CA files) and binds the listeners;
//! [`Bound::start`] takes the first token and its source of replacements and serves. [`run`]
//! does both. The [`Running`] handle names the bound addresses, starts the drain, and waits
//! for it. Nothing here touches the process (signals, stdin, exit codes): that is `main.rs`,
//! and a test can run several proxies in one process.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ceiling::Ceilings;
use crate::config::{Config, FederationSource, TokenSource};
use crate::credential::Credentials;
use crate::federation;
use crate::intake::{self, Refresher, Reload, Swapper, Updates};
use crate::limits;
use crate::listen::{self, Listener, SocketFile};
use crate::log::{Event, Log};
use crate::metrics::{Metrics, RefreshSource};
use crate::scrape;
use crate::secret::Token;
use crate::server;
use crate::state::Proxy;
use crate::sys;
use crate::upstream::{Connector, Pool};

/// A failure to start: one `proxy: ` line, never a token or a setting's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl From<crate::config::ConfigError> for StartError {
    fn from(e: crate::config::ConfigError) -> StartError {
        StartError(e.to_string())
    }
}

/// A proxy whose configuration was checked and whose listeners are bound, waiting for its
/// first token.
pub struct Bound {
    cfg: Config,
    log: Arc<Log>,
    connector: Connector,
    listener: listen::Bound,
    metrics: Option<TcpListener>,
}

/// Builds what the configuration alone decides (the TLS client, from the CA files) and binds
/// the listeners. No token is needed yet, and none is read.
pub fn bind(cfg: Config, log: Arc<Log>) -> Result<Bound, StartError> {
    let connector = Connector::new(&cfg, log.clone())?;
    let listener = listen::bind(&cfg).map_err(StartError)?;
    // A socket systemd passed keeps the backlog its unit gave it.
    let fd = match &listener {
        listen::Bound::Tcp(l) if cfg.activation.is_none() => Some(l.as_fd()),
        listen::Bound::Unix(l, Some(_)) => Some(l.as_fd()),
        _ => None,
    };
    if fd.is_some_and(|fd| !sys::set_listen_backlog(fd, limits::LISTEN_BACKLOG)) {
        crate::log!(log, "warning: could not raise the listen backlog");
    }
    let metrics = match cfg.metrics {
        Some(at) => Some(TcpListener::bind(at).map_err(|e| bind_error("METRICS_ADDR", at, &e))?),
        None => None,
    };
    Ok(Bound {
        cfg,
        log,
        connector,
        listener,
        metrics,
    })
}

/// A listener that could not be bound: the setting, the address and the cause (`address in
/// use`, `permission denied`, ...), as the operating system classes it.
fn bind_error(setting: &str, at: SocketAddr, e: &std::io::Error) -> StartError {
    StartError(format!(
        "proxy: {setting}: cannot listen on {at}: {}",
        e.kind()
    ))
}

impl Bound {
    /// The configuration, as parsed.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The address the sandbox's TCP listener is bound to (`0.0.0.0:0` for a Unix socket).
    pub fn addr(&self) -> SocketAddr {
        match &self.listener {
            listen::Bound::Tcp(l) => local_addr(l),
            listen::Bound::Unix(..) => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// Reads the first token as the configuration says, from `stdin` (`TOKEN_UPDATES` unset or
    /// `stdin`) or `TOKEN_FILE`; returns it with the source of its replacements.
    pub fn first_token(
        &self,
        stdin: impl Read + Send + 'static,
    ) -> Result<(Token, Updates), StartError> {
        match &self.cfg.token_source {
            TokenSource::Federation(src) => self.federated(src),
            _ => intake::first_token(&self.cfg, stdin).map_err(StartError),
        }
    }

    /// The first token from the federation exchange, and the refresher that exchanges again
    /// (through a clone of the same connector) before it expires.
    fn federated(&self, src: &FederationSource) -> Result<(Token, Updates), StartError> {
        let (connector, target) = (self.connector.clone(), self.cfg.target.clone());
        let header = self.cfg.token_header.clone();
        let got = federation::exchange_blocking(&connector, &target, src, &header)
            .map_err(|f| StartError(format!("proxy: federation: {}", f.why)))?;
        let stale_grace = src.stale_grace;
        let src = src.clone();
        let refresher = Refresher {
            fetch: Box::new(move || {
                federation::exchange_blocking(&connector, &target, &src, &header)
            }),
            name: "the federation exchange",
            source: RefreshSource::Federation,
            every: None,
            stale_grace,
            expires: got.expires,
        };
        Ok((got.token, Updates::Fetch(refresher)))
    }

    /// Serves with `token` (and its replacements from `updates`) until [`Running::shutdown`].
    /// Must be called within a tokio runtime.
    pub fn start(self, token: Token, updates: Updates) -> Result<Running, StartError> {
        let started = SystemTime::now();
        let Bound {
            cfg,
            log,
            connector,
            listener,
            metrics: metrics_listener,
        } = self;
        let metrics = Arc::new(Metrics::new());
        metrics.token_last_change_ms.store(
            intake::epoch_ms(started),
            std::sync::atomic::Ordering::Relaxed,
        );
        let creds = Arc::new(Credentials::new(token, cfg.beta_rule()));
        let swapper = Swapper {
            creds: creds.clone(),
            metrics: metrics.clone(),
            log: log.clone(),
        };
        let (reload, refetch) = intake::spawn_updates(updates, swapper).unzip();
        let (listener, socket_file) = Listener::register(listener)
            .map_err(|_| StartError("proxy: cannot register the listener".into()))?;
        let addr = listener
            .tcp_addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let unix_path = socket_file.as_ref().map(|f| f.path().to_path_buf());
        let listening = listener.describe();
        let metrics_addr = match metrics_listener {
            None => None,
            Some(m) => {
                let m = register(m, "the metrics listener")?;
                let at = local_addr_tokio(&m);
                tokio::spawn(scrape::serve(m, metrics.clone(), creds.clone(), started));
                Some(at)
            }
        };
        let pool = Pool::new(cfg.pool_max_idle, cfg.timeouts.pool_idle);
        let ceilings = Ceilings::new(cfg.ceilings, std::time::Instant::now());
        let proxy = Arc::new(Proxy {
            cfg,
            ceilings,
            creds,
            connector,
            pool,
            metrics,
            log: log.clone(),
            refetch,
        });
        announce(&proxy, &listening, metrics_addr);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(drain_when_told(proxy, listener, socket_file, rx.clone()));
        Ok(Running {
            addr,
            unix_path,
            metrics_addr,
            shutdown: tx,
            task,
            log,
            reload,
        })
    }
}

/// Binds and starts: [`bind`] then [`Bound::start`]. Must be called within a tokio runtime.
pub fn run(
    cfg: Config,
    log: Arc<Log>,
    token: Token,
    updates: Updates,
) -> Result<Running, StartError> {
    bind(cfg, log)?.start(token, updates)
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the grace period.
    Clean,
    /// The grace period ran out; what was left is closed.
    GraceOver,
}

/// A serving proxy.
pub struct Running {
    addr: SocketAddr,
    /// The `LISTEN_UNIX` socket this proxy made (removed when the drain ends).
    unix_path: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Drained>,
    log: Arc<Log>,
    /// Wakes the `TOKEN_FILE` watcher or the `TOKEN_COMMAND` runner; `None` for stdin.
    reload: Option<Reload>,
}

impl Running {
    /// The sandbox's listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Unix socket this proxy created, when `LISTEN_UNIX` is set.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        self.unix_path.as_deref()
    }

    /// The metrics listener, when `METRICS_ADDR` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// This proxy's log.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// Begins the drain: the listener closes, idle connections close, exchanges in flight
    /// finish within `SHUTDOWN_GRACE`.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Re-reads the token source now (SIGHUP): `TOKEN_FILE` is read at once if a new
    /// version of it has settled, `TOKEN_COMMAND` is run; a token from stdin has nothing to
    /// re-read, which is logged.
    pub fn reload_token(&self) {
        match &self.reload {
            Some(r) => {
                crate::log!(self.log, "token reload: reading {}", r.source);
                r.request();
            }
            None => crate::log!(
                self.log,
                "token reload: the token comes from stdin; nothing to re-read (ignored)"
            ),
        }
    }

    /// Waits for the drain that [`Running::shutdown`] began.
    pub async fn join(self) -> Drained {
        self.task.await.unwrap_or(Drained::GraceOver)
    }
}

/// The startup lines: warnings, the egress proxy and the metrics listener, then (last, so a
/// reader that waits for it has seen the others) where the proxy listens and its target.
fn announce(proxy: &Proxy, addr: &str, metrics_addr: Option<SocketAddr>) {
    let log = &proxy.log;
    let target = proxy.cfg.target.to_string();
    if let Some((egress, setting)) = &proxy.cfg.egress {
        // Host and port only: the URL may carry credentials.
        crate::log!(log, "egress proxy {egress} (from {setting})");
    }
    if proxy.cfg.phantom.is_none() {
        crate::log!(
            log,
            "warning: PHANTOM_TOKEN unset; any process that reaches the port can use the token"
        );
    }
    if !proxy.creds.current().token.is_locked() {
        crate::log!(
            log,
            "warning: could not lock the token in memory (mlock); it may be swapped"
        );
    }
    let metrics = metrics_addr.map(|a| a.to_string());
    if let Some(at) = &metrics {
        log.event(&Event::Metrics { listen: at });
    }
    let version = match crate::settings::COMMIT {
        Some(c) => format!("{} (commit {c})", crate::settings::VERSION),
        None => crate::settings::VERSION.to_string(),
    };
    log.event(&Event::Startup {
        listen: addr,
        target: &target,
        metrics: metrics.as_deref(),
        version: &version,
    });
}

/// Serves until told to stop, then drains within the grace period. The socket file of
/// `LISTEN_UNIX` is removed when this ends (or is dropped, the runtime shutting down).
async fn drain_when_told(
    proxy: Arc<Proxy>,
    listener: Listener,
    _socket_file: Option<SocketFile>,
    mut stop: watch::Receiver<bool>,
) -> Drained {
    let grace = proxy.cfg.timeouts.shutdown_grace;
    let mut server = tokio::spawn(server::serve(listener, proxy.clone(), stop.clone()));
    // A dropped handle stops the proxy too.
    let _ = stop.wait_for(|&s| s).await;
    let grace_ms = grace.as_millis() as u64;
    proxy.log.event(&Event::Shutdown { grace_ms });
    proxy.pool.clear();
    tokio::select! {
        _ = &mut server => {
            crate::log!(proxy.log, "drained; exiting");
            Drained::Clean
        }
        _ = tokio::time::sleep(grace) => {
            crate::log!(proxy.log, "grace period over; closing what is left");
            server.abort();
            Drained::GraceOver
        }
    }
}

fn register(l: TcpListener, what: &str) -> Result<tokio::net::TcpListener, StartError> {
    l.set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(l))
        .map_err(|_| StartError(format!("proxy: cannot register {what}")))
}

fn local_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn local_addr_tokio(l: &tokio::net::TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
