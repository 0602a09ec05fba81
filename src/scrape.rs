//! The metrics listener (`METRICS_ADDR`): `GET /metrics` answers the Prometheus text
//! exposition; anything else 404. It is a separate socket from the sandbox's port, serves
//! one request per connection, and bounds everything a peer controls (head size, time,
//! concurrency).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

use crate::error::Problem;
use crate::limits::{MAX_SCRAPES, MAX_SCRAPE_HEAD, SCRAPE_TIMEOUT};
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

/// Serves scrapes of `metrics` until the runtime stops. `started` is the process start time.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, started: SystemTime) {
    let permits = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = timeout(SCRAPE_TIMEOUT, scrape(stream, &metrics, started)).await;
            drop(permit);
        });
    }
}

async fn scrape(
    mut stream: TcpStream,
    metrics: &Metrics,
    started: SystemTime,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    // A head that breaks a limit or the line grammar, or never ends, is not answered.
    let Ok(n) = read_head(&mut stream, &mut buf, &SCRAPE_HEAD, Problem::ClientAborted).await else {
        return Ok(());
    };
    let line = buf[..n].split(|&b| b == b'\r').next().unwrap_or(b"");
    let wanted = line == b"GET /metrics HTTP/1.1" || line == b"GET /metrics HTTP/1.0";
    let response = if wanted {
        let body = metrics.render(&process_stats(started));
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
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
