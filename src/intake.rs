//! Token intake: the first token before the proxy serves, then (opt-in) its replacements, on
//! a thread of their own that swaps them into [`Credentials`].
//!
//! - `TOKEN_UPDATES` unset: one line on stdin; then stdin is closed (by `main`).
//! - `TOKEN_UPDATES=stdin`: stdin stays open; each further line replaces the token. At EOF
//!   the last token keeps serving.
//! - `TOKEN_FILE=path`: the file's first line, and again whenever the file changes: written
//!   in place, replaced, or swapped behind a symlink (Kubernetes secret volumes), checked
//!   every [`TOKEN_FILE_POLL`] and read once a new version has settled ([`FileWatch`]); or at
//!   once when asked ([`Reload`], SIGHUP), if the new version is old enough to have settled.
//!
//! Every token passes the same checks ([`Token::new`]); a refused one is logged with its
//! static reason only, and the current token stays.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::command::{self, Failed, Fetched};
use crate::config::{Config, TokenSource};
use crate::credential::Credentials;
use crate::limits::{
    TOKEN_FILE_POLL, TOKEN_FILE_SETTLE, TOKEN_FILE_START_WAIT, TOKEN_RETRY_MAX, TOKEN_RETRY_MIN,
};
use crate::log::{Event, Log};
use crate::metrics::{Metrics, RefreshResult, RefreshSource};
use crate::refetch::Refetch;
use crate::secret::{Token, TokenError, TokenHeader, TokenLines};

/// Where the replacements come from, once the first token is in.
pub enum Updates {
    /// Nothing replaces the first token.
    None,
    /// Further lines of stdin.
    Stdin(TokenLines<Box<dyn Read + Send>>),
    /// The file, when it changes.
    File {
        path: PathBuf,
        header: TokenHeader,
        seen: Option<Fingerprint>,
    },
    /// A source asked again before the token expires (or on its interval): `TOKEN_COMMAND`,
    /// the federation exchange.
    Fetch(Refresher),
}

/// A source the proxy asks for a token itself, and when to ask it again.
pub struct Refresher {
    /// One run of the source: a token and its expiry, or a fixed reason.
    pub fetch: Box<dyn FnMut() -> Result<Fetched, Failed> + Send>,
    /// Its setting, for the log and SIGHUP's line (`TOKEN_COMMAND`, ...).
    pub name: &'static str,
    pub source: RefreshSource,
    /// Asked again this often when the token has no known expiry; `None`: only when asked.
    pub every: Option<Duration>,
    /// How long a token without a known expiry serves on once the source fails.
    pub stale_grace: Duration,
    /// The first token's expiry.
    pub expires: Option<SystemTime>,
}

/// What tells a file's versions apart, following symlinks: a swapped symlink or a replaced
/// file changes the inode, a rewrite in place the size or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    /// Whether this version last changed at least [`TOKEN_FILE_SETTLE`] before `now` (a
    /// clock in the future counts as settled: nothing would ever wait it out).
    fn settled(&self, now: std::time::SystemTime) -> bool {
        let changed = self.mtime.max(self.ctime);
        let Ok(secs) = u64::try_from(changed.0) else {
            return true;
        };
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::new(secs, u32::try_from(changed.1).unwrap_or(0));
        now.duration_since(at)
            .map_or(true, |age| age >= TOKEN_FILE_SETTLE)
    }
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Reads the first token as the configuration says. `stdin` is read without a buffer of the
/// standard library's (the binary passes a duplicate of fd 0), so no copy of the token is left
/// in one. Errors are `proxy: ` lines that never echo a token.
pub fn first_token(
    cfg: &Config,
    stdin: impl Read + Send + 'static,
) -> Result<(Token, Updates), String> {
    let header = cfg.token_header.clone();
    match &cfg.token_source {
        TokenSource::StdinOnce | TokenSource::StdinUpdates => {
            let stdin: Box<dyn Read + Send> = Box::new(stdin);
            let mut lines = TokenLines::new(stdin, header);
            let token = lines
                .next_line()
                .unwrap_or(Err(TokenError::Missing))
                .map_err(|e| e.to_string())?;
            let updates = match cfg.token_source {
                TokenSource::StdinUpdates => Updates::Stdin(lines),
                _ => Updates::None,
            };
            Ok((token, updates))
        }
        TokenSource::File(path) => {
            let (read, seen) = read_at_start(path, &header);
            let token = read.map_err(|e| format!("proxy: TOKEN_FILE: {}", file_reason(e)))?;
            let path = path.clone();
            Ok((token, Updates::File { path, header, seen }))
        }
        TokenSource::Command(src) => {
            let got = command::fetch(src, &header)
                .map_err(|f| format!("proxy: TOKEN_COMMAND: {}", f.why))?;
            let (every, stale_grace) = (src.refresh, src.stale_grace);
            let src = src.clone();
            let refresher = Refresher {
                fetch: Box::new(move || command::fetch(&src, &header)),
                name: "TOKEN_COMMAND",
                source: RefreshSource::Command,
                every,
                stale_grace,
                expires: got.expires,
            };
            Ok((got.token, Updates::Fetch(refresher)))
        }
        // The exchange goes through the upstream connector: `run::Bound::first_token` does
        // it, and this layer never sees a federation source.
        TokenSource::Federation(_) => {
            Err("proxy: federation: no connector to exchange with".into())
        }
    }
}

/// Reads `TOKEN_FILE` at startup as a version that has settled: last changed at least
/// [`TOKEN_FILE_SETTLE`] ago and unchanged during the read, waiting up to
/// [`TOKEN_FILE_START_WAIT`] for one (a file caught while it is being written); then what
/// is there.
fn read_at_start(
    path: &Path,
    header: &TokenHeader,
) -> (Result<Token, TokenError>, Option<Fingerprint>) {
    let give_up = Instant::now() + TOKEN_FILE_START_WAIT;
    loop {
        let before = fingerprint(path);
        let last = Instant::now() >= give_up;
        if !last && before.is_some_and(|f| !f.settled(std::time::SystemTime::now())) {
            std::thread::sleep(TOKEN_FILE_POLL);
            continue;
        }
        let read = read_file(path, header);
        if last || fingerprint(path) == before {
            return (read, before);
        }
    }
}

fn read_file(path: &Path, header: &TokenHeader) -> Result<Token, TokenError> {
    let mut file = File::open(path).map_err(|_| TokenError::Unreadable)?;
    Token::read_line(&mut file, header)
}

/// A file's refusal, said of the file (the token's own reasons, but for "stdin").
fn file_reason(e: TokenError) -> &'static str {
    match e {
        TokenError::Unreadable => "cannot be read (missing, or not readable by this user)",
        TokenError::Missing => "holds no token (empty, or an empty first line)",
        e => e.reason(),
    }
}

/// What the update thread swaps tokens into and reports to.
pub struct Swapper {
    pub creds: Arc<Credentials>,
    pub metrics: Arc<Metrics>,
    pub log: Arc<Log>,
}

/// Asks the `TOKEN_FILE` watcher to look at the file now instead of at its next poll, or the
/// `TOKEN_COMMAND` runner to run it now: the operator's SIGHUP.
#[derive(Clone)]
pub struct Reload {
    wake: Arc<(Mutex<bool>, Condvar)>,
    /// The setting re-read (`TOKEN_FILE`, `TOKEN_COMMAND`), for the log.
    pub source: &'static str,
}

impl Reload {
    fn new(source: &'static str) -> Reload {
        Reload {
            wake: Arc::default(),
            source,
        }
    }

    /// Wakes the watcher; it reads the file if a new version is there.
    pub fn request(&self) {
        let (asked, wake) = &*self.wake;
        *asked.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_one();
    }

    /// Waits up to `poll`, or until asked; returns whether asked (and clears it).
    fn wait(&self, poll: Duration) -> bool {
        let (asked, wake) = &*self.wake;
        let guard = asked.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = wake
            .wait_timeout_while(guard, poll, |asked| !*asked)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *guard)
    }
}

/// Starts the thread that swaps replacements into `to.creds`, if there are any to wait for;
/// for a source that can be re-read (`TOKEN_FILE`, `TOKEN_COMMAND`), returns the handle that
/// makes it look now (SIGHUP) and the one a 401 asks for a new token through.
pub fn spawn_updates(updates: Updates, to: Swapper) -> Option<(Reload, Arc<Refetch>)> {
    let log = to.log.clone();
    let reread = |source| {
        let reload = Reload::new(source);
        let wake = reload.clone();
        let refetch = Refetch::new(Box::new(move || wake.request()));
        (reload, refetch)
    };
    let mut handles = None;
    let body: Box<dyn FnOnce() + Send> = match updates {
        Updates::None => return None,
        Updates::Stdin(lines) => Box::new(move || from_stdin(lines, &to)),
        Updates::File { path, header, seen } => {
            let (reload, refetch) = reread("TOKEN_FILE");
            handles = Some((reload.clone(), refetch.clone()));
            Box::new(move || watch_file(&path, &header, seen, &to, &reload, &refetch))
        }
        Updates::Fetch(refresher) => {
            let (reload, refetch) = reread(refresher.name);
            handles = Some((reload.clone(), refetch.clone()));
            Box::new(move || run_refresher(refresher, &to, &reload, &refetch))
        }
    };
    // A thread, not a task: every source blocks (a pipe read, a sleep between stats, a
    // helper's run).
    let spawned = std::thread::Builder::new()
        .name("token-updates".into())
        .spawn(body);
    if spawned.is_err() {
        crate::log!(
            log,
            "warning: cannot start the token-update thread; the token will not change"
        );
        return None;
    }
    handles
}

/// Milliseconds since the Unix epoch (0 before it), as the metrics keep times.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Swapper {
    /// Counts a re-read of `source` (and a refused token).
    fn count(&self, source: RefreshSource, result: RefreshResult, refused: bool) {
        self.metrics.token_refreshed(source, result);
        if refused {
            self.metrics
                .token_updates_refused
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The current token's known expiry: the store's limit and the metric.
    fn expires(&self, at: Option<SystemTime>) {
        self.creds.set_usable_until(at);
        let ms = at.map_or(0, |t| epoch_ms(t).max(1));
        self.metrics.token_expiry_ms.store(ms, Ordering::Relaxed);
    }

    /// Makes `token` current, unless it is the current one already: the same token again
    /// (a rewrite of the same content, a command's same answer) is no rotation and makes no
    /// generation.
    /// `from`: the re-read it came from, counted before the log line says it (a reader of
    /// the log then finds the metrics in step).
    fn swap(&self, token: Token, from: Option<RefreshSource>) {
        let count = |result| {
            if let Some(source) = from {
                self.metrics.token_refreshed(source, result);
            }
        };
        if self.creds.holds(&token) {
            count(RefreshResult::Unchanged);
            let g = self.creds.current().number;
            crate::log!(self.log, "token unchanged (generation {g})");
            return;
        }
        let locked = token.is_locked();
        let generation = self.creds.swap(token);
        self.metrics
            .token_generation
            .store(generation, Ordering::Relaxed);
        self.metrics
            .token_last_change_ms
            .store(epoch_ms(SystemTime::now()), Ordering::Relaxed);
        count(RefreshResult::Changed);
        self.log.event(&Event::TokenUpdated { generation });
        if !locked {
            crate::log!(
                self.log,
                "warning: could not lock token generation {generation} in memory (mlock); it may be swapped"
            );
        }
    }
}

fn from_stdin(mut lines: TokenLines<Box<dyn Read + Send>>, to: &Swapper) {
    let log = &to.log;
    loop {
        match lines.next_line() {
            Some(Ok(token)) => to.swap(token, None),
            Some(Err(TokenError::Unreadable)) => {
                let g = to.creds.current().number;
                crate::log!(
                    log,
                    "token updates: stdin unreadable; keeping generation {g}"
                );
                return;
            }
            Some(Err(e)) => {
                to.metrics
                    .token_updates_refused
                    .fetch_add(1, Ordering::Relaxed);
                crate::log!(log, "token update refused: {}", e.reason());
            }
            None => {
                let g = to.creds.current().number;
                crate::log!(log, "token updates: stdin closed; keeping generation {g}");
                return;
            }
        }
    }
}

fn watch_file(
    path: &Path,
    header: &TokenHeader,
    seen: Option<Fingerprint>,
    to: &Swapper,
    reload: &Reload,
    refetch: &Refetch,
) {
    let mut watch = FileWatch::new(seen);
    loop {
        let asked = reload.wait(TOKEN_FILE_POLL);
        // The proxy is gone (a library user stopped it): nobody needs the file any more.
        if Arc::strong_count(&to.creds) == 1 {
            return;
        }
        // A rejection's re-fetch is a request to look now, as SIGHUP is.
        let round = refetch.take();
        look_at_file(path, header, &mut watch, asked, to);
        if let Some(r) = round {
            refetch.finish(r);
        }
    }
}

/// One look at `TOKEN_FILE`: read it if a new version settled (or, `asked`, is there).
fn look_at_file(
    path: &Path,
    header: &TokenHeader,
    watch: &mut FileWatch,
    asked: bool,
    to: &Swapper,
) {
    let now = fingerprint(path);
    let due = if asked {
        due_on_request(watch, now, to)
    } else {
        watch.settled(now, Instant::now())
    };
    if !due {
        return;
    }
    let read = read_file(path, header);
    // A write that began during the read makes it a torn one: wait for that version to
    // settle instead (the token read is dropped, and wiped, unused).
    if !watch.read_done(now, fingerprint(path), Instant::now()) {
        return;
    }
    match read {
        Ok(token) => {
            to.swap(token, Some(RefreshSource::File));
        }
        Err(e) => {
            to.count(RefreshSource::File, RefreshResult::Failed, true);
            let g = to.creds.current().number;
            let why = file_reason(e);
            crate::log!(
                to.log,
                "token update refused: TOKEN_FILE {why}; keeping generation {g}"
            );
        }
    }
}

/// When to run the command again after a token that expires at `expires` (or none) came in.
fn next_run(every: Option<Duration>, expires: Option<SystemTime>) -> Option<Instant> {
    let after = match expires {
        Some(at) => {
            let lifetime = at.duration_since(SystemTime::now()).unwrap_or_default();
            command::refresh_after(lifetime, command::jitter())
        }
        None => every?,
    };
    // A token that expired already (or nearly) is not asked for again at once, in a loop.
    Some(Instant::now() + after.max(TOKEN_RETRY_MIN))
}

/// Asks the source (`TOKEN_COMMAND`, the federation exchange) again when due (before the
/// token expires, on its interval) or asked (SIGHUP, a 401). A failure keeps the current
/// token until its expiry (or, without one, for the stale grace) and is retried after
/// [`TOKEN_RETRY_MIN`], doubling up to [`TOKEN_RETRY_MAX`]; past that, requests are answered
/// 503 (the store says the token is not usable). One thread: one run at a time.
fn run_refresher(mut r: Refresher, to: &Swapper, reload: &Reload, refetch: &Refetch) {
    let mut due = next_run(r.every, r.expires);
    let mut retry = TOKEN_RETRY_MIN;
    to.expires(r.expires);
    loop {
        let poll = due.map_or(TOKEN_FILE_POLL, |d| {
            d.saturating_duration_since(Instant::now())
                .min(TOKEN_FILE_POLL)
        });
        let asked = reload.wait(poll);
        // The proxy is gone (a library user stopped it): nothing needs a token any more.
        if Arc::strong_count(&to.creds) == 1 {
            return;
        }
        let round = refetch.take();
        if !asked && round.is_none() && due.is_none_or(|d| Instant::now() < d) {
            continue;
        }
        match (r.fetch)() {
            Ok(got) => {
                // The expiry first, so the metrics are in step once the log says "updated".
                to.expires(got.expires);
                to.swap(got.token, Some(r.source));
                due = next_run(r.every, got.expires);
                retry = TOKEN_RETRY_MIN;
            }
            Err(failed) => {
                to.count(r.source, RefreshResult::Failed, failed.refused);
                let (g, why, name) = (to.creds.current().number, failed.why, r.name);
                crate::log!(
                    to.log,
                    "token refresh failed: {name} {why}; keeping generation {g}"
                );
                // Without a known expiry, the token serves on for the stale grace only.
                if to.creds.usable_until().is_none() {
                    to.creds
                        .set_usable_until(Some(SystemTime::now() + r.stale_grace));
                }
                due = Some(Instant::now() + retry);
                retry = (retry * 2).min(TOKEN_RETRY_MAX);
            }
        }
        if let Some(r) = round {
            refetch.finish(r);
        }
    }
}

/// Whether version `now` is to be read at once, on request: it is not the one read last, and
/// it last changed at least [`TOKEN_FILE_SETTLE`] ago (the test at startup). One still being
/// written is left to the poll, which reads it once it settles.
fn due_on_request(watch: &mut FileWatch, now: Option<Fingerprint>, to: &Swapper) -> bool {
    let g = to.creds.current().number;
    if now == watch.seen {
        crate::log!(
            to.log,
            "token reload: TOKEN_FILE unchanged; keeping generation {g}"
        );
        return false;
    }
    if now.is_none_or(|f| f.settled(std::time::SystemTime::now())) {
        return true;
    }
    crate::log!(
        to.log,
        "token reload: TOKEN_FILE is being written; it is read once it settles"
    );
    watch.settled(now, Instant::now())
}

/// When a version of `TOKEN_FILE` may be read: once it differs from the last one read and its
/// fingerprint has stayed the same for [`TOKEN_FILE_SETTLE`], and only if the fingerprint after
/// the read is still that one. A writer that truncates the file, writes part of a token and
/// pauses leaves a version that changes again before it settles, so the part never becomes
/// the token; no trailing LF is needed to tell (mounted secrets usually have none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileWatch {
    /// The version last read (or refused).
    seen: Option<Fingerprint>,
    /// A newer version, and when it was first seen.
    settling: Option<(Option<Fingerprint>, Instant)>,
}

impl FileWatch {
    fn new(seen: Option<Fingerprint>) -> FileWatch {
        FileWatch {
            seen,
            settling: None,
        }
    }

    /// Whether the version polled `at` should be read now.
    fn settled(&mut self, now: Option<Fingerprint>, at: Instant) -> bool {
        if now == self.seen {
            self.settling = None;
            return false;
        }
        match self.settling {
            Some((version, since)) if version == now => {
                at.duration_since(since) >= TOKEN_FILE_SETTLE
            }
            _ => {
                self.settling = Some((now, at));
                false
            }
        }
    }

    /// After reading version `before`: whether the read counts (the file did not change
    /// during it). Either way, what is seen now is remembered.
    fn read_done(
        &mut self,
        before: Option<Fingerprint>,
        after: Option<Fingerprint>,
        at: Instant,
    ) -> bool {
        if before != after {
            self.settling = Some((after, at));
            return false;
        }
        self.seen = before;
        self.settling = None;
        true
    }
}

#[cfg(test)]
mod tests;
