//! The sandbox's listener: a TCP port, a Unix socket (`LISTEN_UNIX`), or the socket systemd
//! passed. A Unix socket lets a sandbox without any network reach the proxy through a
//! mounted file, and tells who connected: the kernel's peer credentials (`SO_PEERCRED`,
//! unix(7)), which the sandbox cannot forge, are checked against `ALLOW_PEER_UIDS` before a
//! byte is read. The accepted connection is a [`Stream`] either way; the exchange code is the
//! same for both.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

use crate::config::{Config, UnixListen, LISTEN_FDS_START};
use crate::log::{Log, Peer};
use crate::sys;

/// A bound listener, before the runtime runs.
pub enum Bound {
    Tcp(std::net::TcpListener),
    /// The socket file is `None` when systemd made it (the unit owns the file).
    Unix(std::os::unix::net::UnixListener, Option<SocketFile>),
}

/// Binds the listener the configuration names: the socket systemd passed, else
/// `LISTEN_UNIX`, else `LISTEN_ADDR:LISTEN_PORT`. `Err` is one `proxy: ` line.
pub fn bind(cfg: &Config) -> Result<Bound, String> {
    // Passed descriptors, served or not (`LISTEN_PID` naming another process), reach no
    // child: nothing is spawned before the listener is bound.
    sys::set_cloexec_range(LISTEN_FDS_START, cfg.passed_fds);
    let bound = if let Some(a) = cfg.activation {
        match sys::adopt_listener(a.fd) {
            Ok(sys::Adopted::Tcp(l)) => Bound::Tcp(l),
            Ok(sys::Adopted::Unix(l)) => Bound::Unix(l, None),
            Err(why) => return Err(format!("proxy: LISTEN_FDS: descriptor {} {why}", a.fd)),
        }
    } else if let Some(u) = &cfg.unix {
        let (l, file) = bind_unix(u)?;
        Bound::Unix(l, Some(file))
    } else {
        let at = cfg.listen;
        let l = std::net::TcpListener::bind(at)
            .map_err(|e| format!("proxy: LISTEN_PORT: cannot listen on {at}: {}", e.kind()))?;
        Bound::Tcp(l)
    };
    if cfg.peer_uids.is_some() && matches!(bound, Bound::Tcp(_)) {
        return Err(
            "proxy: ALLOW_PEER_UIDS: the socket systemd passed is not a Unix socket".into(),
        );
    }
    Ok(bound)
}

/// Creates the `LISTEN_UNIX` socket: never over another file, never wider than its mode, and
/// no file but the socket is ever changed.
///
/// What is at the path decides, as lstat(2) sees it (a symlink is not followed): nothing,
/// bind; a socket nobody answers on (a crashed run's leftover: connect(2) gives
/// `ECONNREFUSED`), remove it and bind; a socket that answers, or anything that is not a
/// socket (a symlink included), refuse and leave it alone.
///
/// The mode comes from the umask alone: a socket file is made `0777 & !umask` (unix(7)), so
/// the bind runs under `0777 & !mode` and the file is exactly `LISTEN_UNIX_MODE` from its
/// first instant (R39). Nothing is changed through the path afterwards: a chmod or chown by
/// path follows a symlink, and whoever may write the directory could swap one in after the
/// bind, making the proxy (perhaps root) change another file. The group is given with
/// lchown(2), which changes a swapped-in symlink itself, never its target. The file is then
/// checked: still the one seen right after the bind (device and inode), a socket, and of
/// exactly the mode (a default ACL on the directory overrides the umask, acl(5)); otherwise
/// the start is refused.
pub fn bind_unix(u: &UnixListen) -> Result<(std::os::unix::net::UnixListener, SocketFile), String> {
    let shown = u.path.display();
    let cause =
        |what: &str, e: io::Error| format!("proxy: LISTEN_UNIX: {what} {shown}: {}", e.kind());
    match std::fs::symlink_metadata(&u.path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(cause("cannot inspect", e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(format!(
                "proxy: LISTEN_UNIX: {shown} exists and is not a socket (left as it is)"
            ))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(&u.path) {
            Ok(_) => {
                return Err(format!(
                    "proxy: LISTEN_UNIX: {shown} is in use by a live listener"
                ))
            }
            // unlink(2) removes the name, never what a symlink swapped in since points to.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(&u.path).map_err(|e| cause("cannot remove the stale", e))?
            }
            Err(e) => return Err(cause("cannot tell whether a listener is alive on", e)),
        },
    }
    let listener = sys::with_umask(0o777 & !u.mode, || {
        std::os::unix::net::UnixListener::bind(&u.path)
    })
    .map_err(|e| cause("cannot listen on", e))?;
    let meta = std::fs::symlink_metadata(&u.path).map_err(|e| cause("cannot inspect", e))?;
    // From here on, a failure removes the file just made (the guard's drop).
    let file = SocketFile {
        path: u.path.clone(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some(gid) = u.group {
        std::os::unix::fs::lchown(&u.path, None, Some(gid))
            .map_err(|e| cause("cannot give the group to", e))?;
    }
    let made = std::fs::symlink_metadata(&u.path).map_err(|e| cause("cannot inspect", e))?;
    file.check(&made, u.mode)
        .map_err(|why| format!("proxy: LISTEN_UNIX: {shown} {why}"))?;
    Ok((listener, file))
}

/// The socket file this process created, removed when dropped (a clean shutdown, or a start
/// that failed later) if it is still the same file: another run may have replaced it.
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `found` (the path's lstat) is this socket file with exactly `mode`; why not.
    fn check(&self, found: &std::fs::Metadata, mode: u32) -> Result<(), String> {
        if found.dev() != self.dev || found.ino() != self.ino || !found.file_type().is_socket() {
            return Err(
                "was replaced while it was being made (is its directory writable by others?)"
                    .into(),
            );
        }
        let got = found.mode() & 0o7777;
        if got != mode {
            return Err(format!(
                "was made with mode {got:04o}, not LISTEN_UNIX_MODE {mode:04o} \
                 (does its directory have a default ACL?)"
            ));
        }
        Ok(())
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The listener, registered with the runtime.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Registers a bound listener with the runtime (which must be running).
    pub fn register(b: Bound) -> io::Result<(Listener, Option<SocketFile>)> {
        Ok(match b {
            Bound::Tcp(l) => {
                l.set_nonblocking(true)?;
                (Listener::Tcp(tokio::net::TcpListener::from_std(l)?), None)
            }
            Bound::Unix(l, file) => {
                l.set_nonblocking(true)?;
                (Listener::Unix(tokio::net::UnixListener::from_std(l)?), file)
            }
        })
    }

    /// Where it listens, as the startup line says it: `host:port`, or `unix:<path>`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map_or("?".into(), |a| a.to_string()),
            Listener::Unix(l) => match l.local_addr() {
                Ok(a) => match a.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix:(unnamed)".into(),
                },
                Err(_) => "unix:?".into(),
            },
        }
    }

    /// The TCP address, if it is a TCP listener.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }

    /// The next connection and its peer; a Unix peer with its uid when the kernel gives it.
    /// Cancel-safe: both accepts are, and nothing is awaited after them.
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, at) = l.accept().await?;
                Ok((Stream::Tcp(s), Peer::Tcp(at)))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                let uid = s.peer_cred().ok().map(|c| c.uid());
                Ok((Stream::Unix(s), Peer::Unix { uid }))
            }
        }
    }
}

/// Whether a peer may be served: any, without `ALLOW_PEER_UIDS`; with it, only a Unix peer
/// whose kernel-given uid is listed (a peer whose credentials could not be read is not): R38.
pub fn admits(allowed: Option<&[u32]>, peer: Peer) -> bool {
    match allowed {
        None => true,
        Some(uids) => peer.uid().is_some_and(|u| uids.contains(&u)),
    }
}

/// How often a refused uid is logged: once per interval, the rest only counted.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// The most uids remembered; a flood of distinct uids cannot grow the map past it.
const REFUSALS_REMEMBERED: usize = 256;

/// The refusal log's rate limit: when each refused uid was last logged.
#[derive(Default)]
pub struct Refusals {
    logged: HashMap<Option<u32>, Instant>,
}

impl Refusals {
    /// Logs a refusal of `uid` unless one was logged within the interval.
    pub fn note(&mut self, log: &Log, uid: Option<u32>, now: Instant) {
        if self.should_log(uid, now) {
            match uid {
                Some(u) => crate::log!(
                    log,
                    "refused a Unix socket peer with uid {u} (not in ALLOW_PEER_UIDS); counted, logged at most once a minute per uid"
                ),
                None => crate::log!(
                    log,
                    "refused a Unix socket peer whose uid could not be read (ALLOW_PEER_UIDS)"
                ),
            }
        }
    }

    fn should_log(&mut self, uid: Option<u32>, now: Instant) -> bool {
        if let Some(&at) = self.logged.get(&uid) {
            if now.duration_since(at) < REFUSAL_LOG_EVERY {
                return false;
            }
        }
        if self.logged.len() >= REFUSALS_REMEMBERED {
            self.logged
                .retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_EVERY);
            if self.logged.len() >= REFUSALS_REMEMBERED {
                self.logged.clear();
            }
        }
        self.logged.insert(uid, now);
        true
    }
}

/// An accepted client connection, TCP or Unix.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The read half of a [`Stream`], borrowed (no lock, unlike `tokio::io::split`).
pub enum ReadHalf<'a> {
    Tcp(tcp::ReadHalf<'a>),
    Unix(unix::ReadHalf<'a>),
}

/// The write half of a [`Stream`], borrowed.
pub enum WriteHalf<'a> {
    Tcp(tcp::WriteHalf<'a>),
    Unix(unix::WriteHalf<'a>),
}

impl Stream {
    /// Sends each write at once (TCP: no Nagle delay); a Unix socket has none.
    pub fn set_nodelay(&self) {
        if let Stream::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }

    /// Makes the coming close a reset (TCP). A zero linger never blocks on close, which is
    /// what the deprecation of `set_linger` (a blocking non-zero linger) warns about.
    #[allow(deprecated)]
    pub fn reset_on_close(&self) {
        if let Stream::Tcp(s) = self {
            let _ = s.set_linger(Some(Duration::ZERO));
        }
    }

    /// Ready to read (data, the end, or an error), without reading.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
        }
    }

    /// Both halves, borrowed, for the upload and the download to run at once.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
        }
    }
}

/// Delegates AsyncRead to the variant (all are Unpin).
macro_rules! read_via {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

/// Delegates AsyncWrite to the variant.
macro_rules! write_via {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Tcp(s) => s.is_write_vectored(),
                    Self::Unix(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_flush(cx),
                    Self::Unix(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

read_via!(Stream);
read_via!(ReadHalf<'_>);
write_via!(Stream);
write_via!(WriteHalf<'_>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_uids_are_admitted() {
        let unix = |uid| Peer::Unix { uid };
        assert!(admits(None, unix(None)));
        assert!(admits(Some(&[1000]), unix(Some(1000))));
        assert!(!admits(Some(&[1000]), unix(Some(0))));
        assert!(!admits(Some(&[1000]), unix(None)));
        let tcp = Peer::Tcp(SocketAddr::from(([127, 0, 0, 1], 1)));
        assert!(!admits(Some(&[1000]), tcp));
    }

    #[test]
    fn a_refused_uid_is_logged_once_a_minute_and_the_map_stays_bounded() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert!(r.should_log(Some(7), t0));
        assert!(!r.should_log(Some(7), t0 + Duration::from_secs(59)));
        assert!(r.should_log(Some(8), t0));
        assert!(r.should_log(Some(7), t0 + REFUSAL_LOG_EVERY));
        for uid in 0..10_000 {
            r.should_log(Some(uid), t0);
        }
        assert!(r.logged.len() <= REFUSALS_REMEMBERED);
    }
}
