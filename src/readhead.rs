//! Reads one message head off a stream until [`HeadScanner`] finds its blank line: the loop
//! for heads that stand alone on their connection (the egress proxy's answer to CONNECT, a
//! metrics scrape), written once. The caller bounds the time; the limits bound the size.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::Problem;
use crate::scan::{HeadScanner, ScanLimits};

/// Bytes asked of each read while a head is incomplete.
const READ: usize = 1024;

/// Reads from `stream` into `buf` until it holds a complete head, checked against `limits`
/// as it arrives; returns the head's length (bytes after it stay in `buf`). `ended` is the
/// problem when the peer closes or the read fails first.
pub async fn read_head<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    limits: &ScanLimits,
    ended: Problem,
) -> Result<usize, Problem> {
    let mut scanner = HeadScanner::new();
    loop {
        if let Some(n) = scanner.scan(buf, limits)? {
            return Ok(n);
        }
        buf.reserve(READ);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ended),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ScanLimits = ScanLimits {
        head: 64,
        ..ScanLimits::RESPONSE
    };

    async fn read(input: &[u8]) -> (Result<usize, Problem>, Vec<u8>) {
        let mut buf = Vec::new();
        let got = read_head(&mut &input[..], &mut buf, &LIMITS, Problem::UpstreamClosed).await;
        (got, buf)
    }

    #[tokio::test]
    async fn stops_at_the_blank_line_and_keeps_what_follows() {
        let (got, buf) = read(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nrest").await;
        assert_eq!(got, Ok(25));
        assert_eq!(&buf[25..], b"rest");
    }

    #[tokio::test]
    async fn an_early_end_a_long_head_and_a_bare_lf_are_refused() {
        assert_eq!(
            read(b"HTTP/1.1 200 OK\r\n").await.0,
            Err(Problem::UpstreamClosed)
        );
        let long = [&b"HTTP/1.1 200 OK\r\nA: "[..], &[b'a'; 64], b"\r\n\r\n"].concat();
        assert_eq!(read(&long).await.0, Err(Problem::UpstreamMalformed));
        assert_eq!(
            read(b"HTTP/1.1 200 OK\n\n").await.0,
            Err(Problem::UpstreamMalformed)
        );
    }
}
