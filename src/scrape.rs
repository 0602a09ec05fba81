//! The metrics listener (`METRICS_ADDR`): `GET /metrics` answers the Prometheus text
//! exposition, `HEAD /metrics` its head; `GET /ready` the readiness (200, or 503 with a
//! one-line reason: see [`Credentials::readiness`]); anything else 404. It is a separate socket from the sandbox's port, serves
//! one request per connection, and bounds everything a peer controls (head size, time,
//! concurrency).
//!
//! Concurrency is bounded without letting idle peers starve a scrape: a connection is
//! accepted at once, and when [`MAX_SCRAPES`] are already open the oldest one still waiting
//! for its head is closed to make room. A scraper sends its head as soon as it connects, so
//! once read it is never shed; only a peer that sends nothing, or part of a head, is. If every
//! open connection is past its head (being answered), the new one waits for one to end: an
//! answer (a few KiB, within a socket's send buffer) is written at once, so that wait is
//! short, and [`SCRAPE_TIMEOUT`] bounds it anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::timeout;

use crate::credential::Credentials;
use crate::error::Problem;
use crate::limits::{MAX_SCRAPES, MAX_SCRAPE_HEAD, SCRAPE_HEAD_TIMEOUT, SCRAPE_TIMEOUT};
use crate::metrics::{Metrics, ProcessStats};
use crate::readhead::read_head;
use crate::scan::ScanLimits;

/// A scrape's head: everything within [`MAX_SCRAPE_HEAD`], CRLF line endings (RFC 9112 §2.2).
/// Which rule broke does not matter: nothing is answered.
const SCRAPE_HEAD: ScanLimits = ScanLimits {
    start_line: MAX_SCRAPE_HEAD,
    field_line: MAX_SCRAPE_HEAD,
    head: MAX_SCRAPE_HEAD,
    start_line_problem: Problem::HeadTooLarge,
    head_problem: Problem::HeadTooLarge,
    syntax_problem: Problem::MalformedHead,
};

/// One open connection, as the accept loop sees it: whether its head has been read, and how
/// to close it.
struct Open {
    heard: Arc<AtomicBool>,
    task: AbortHandle,
}

/// Serves scrapes of `metrics` until the runtime stops. `started` is the process start time.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    creds: Arc<Credentials>,
    started: SystemTime,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    // Oldest first; only this loop touches it.
    let mut open: VecDeque<Open> = VecDeque::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        open.retain(|c| !c.task.is_finished());
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                shed_oldest_unheard(&mut open);
                // Free as soon as the shed task is dropped, or else when an answer ends.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                slot
            }
        };
        let heard = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(serve_one(
            stream,
            metrics.clone(),
            creds.clone(),
            started,
            heard.clone(),
            slot,
        ));
        open.push_back(Open {
            heard,
            task: task.abort_handle(),
        });
    }
}

/// Closes the oldest connection whose head has not been read (dropping its task drops the
/// socket and frees its slot). None such: every open one is being answered.
fn shed_oldest_unheard(open: &mut VecDeque<Open>) {
    if let Some(at) = open.iter().position(|c| !c.heard.load(Ordering::Relaxed)) {
        if let Some(shed) = open.remove(at) {
            shed.task.abort();
        }
    }
}

/// One connection, holding its slot until it ends, within [`SCRAPE_TIMEOUT`] in all.
async fn serve_one(
    stream: TcpStream,
    metrics: Arc<Metrics>,
    creds: Arc<Credentials>,
    started: SystemTime,
    heard: Arc<AtomicBool>,
    _slot: OwnedSemaphorePermit,
) {
    let scraped = scrape(stream, &metrics, &creds, started, &heard);
    let _ = timeout(SCRAPE_TIMEOUT, scraped).await;
}

async fn scrape(
    mut stream: TcpStream,
    metrics: &Metrics,
    creds: &Credentials,
    started: SystemTime,
    heard: &AtomicBool,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    // A head that breaks a limit or the line grammar, or is not whole within
    // SCRAPE_HEAD_TIMEOUT, is not answered.
    let head = read_head(&mut stream, &mut buf, &SCRAPE_HEAD, Problem::ClientAborted);
    let Ok(Ok(n)) = timeout(SCRAPE_HEAD_TIMEOUT, head).await else {
        return Ok(());
    };
    heard.store(true, Ordering::Relaxed);
    let line = buf[..n].split(|&b| b == b'\r').next().unwrap_or(b"");
    let (get, head) = (b"GET /metrics HTTP/1.", b"HEAD /metrics HTTP/1.");
    let version_ok = |rest: &[u8]| rest == b"1" || rest == b"0";
    let is = |prefix: &[u8]| line.strip_prefix(prefix).is_some_and(version_ok);
    let response = if is(get) || is(head) {
        let body = metrics.render(&process_stats(started));
        // HEAD: the same head, with the length the body would have (RFC 9110 §9.3.2).
        let shown = if is(head) { "" } else { body.as_str() };
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{shown}",
            body.len()
        )
    } else if is(b"GET /ready HTTP/1.") {
        ready(creds)
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// `GET /ready`: 200, or 503 with the reason as a one-line text body.
fn ready(creds: &Credentials) -> String {
    let (status, body) = match creds.readiness() {
        Ok(()) => ("200 OK", "ready"),
        Err(why) => ("503 Service Unavailable", why),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
        body.len() + 1
    )
}

/// Reads the process basics from /proc (zeros where it cannot).
fn process_stats(started: SystemTime) -> ProcessStats {
    let page = 4096u64;
    let rss_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    // utime and stime are fields 14 and 15, after the parenthesised command name.
    let cpu_ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    ProcessStats {
        start_time_seconds: started
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
        open_fds,
        resident_memory_bytes: rss_pages * page,
        // USER_HZ is 100 on Linux.
        cpu_seconds: cpu_ticks as f64 / 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An open connection whose task never ends by itself.
    fn pending(heard: bool) -> Open {
        let task = tokio::spawn(std::future::pending::<()>());
        Open {
            heard: Arc::new(AtomicBool::new(heard)),
            task: task.abort_handle(),
        }
    }

    #[tokio::test]
    async fn the_oldest_connection_without_a_head_is_shed_and_answered_ones_never() {
        let mut open: VecDeque<Open> = [true, false, false].map(pending).into();
        let (answered, oldest) = (open[0].task.clone(), open[1].task.clone());
        shed_oldest_unheard(&mut open);
        tokio::task::yield_now().await;
        assert!(oldest.is_finished() && !answered.is_finished());
        assert_eq!(open.len(), 2);
        open.pop_back();
        shed_oldest_unheard(&mut open);
        assert_eq!(open.len(), 1, "only answered connections: none is shed");
    }
}
