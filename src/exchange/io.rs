//! The exchange's I/O helpers: a read that takes what is already readable, one timeout per
//! await, and the client write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::timeout;

use crate::error::Problem;

/// Reads into `buf`: waits for the first bytes, then takes what else is already readable,
/// without waiting, until `buf` is full. tokio-rustls hands out one TLS record per read and an
/// SSE event is often a record of its own, so without this a burst would leave as one client
/// write per event; with it, what arrived together leaves together. Nothing waits for bytes
/// that are not here yet: an event that arrives alone is written alone, at once.
///
/// An end or an error met after some bytes is kept in `stashed` and returned by the next call,
/// so a reset is never mistaken for the clean end of a close-delimited body (R29).
pub(super) fn read_available<'a, R: AsyncRead + Unpin>(
    r: &'a mut R,
    buf: &'a mut [u8],
    stashed: &'a mut Option<io::Result<usize>>,
) -> impl Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        if let Some(end) = stashed.take() {
            return Poll::Ready(end);
        }
        let mut total = 0;
        while total < buf.len() {
            let mut rb = ReadBuf::new(&mut buf[total..]);
            let polled = Pin::new(&mut *r).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            match polled {
                Poll::Ready(Ok(())) if n > 0 => total += n,
                Poll::Pending if total == 0 => return Poll::Pending,
                // The waker this Pending registered costs at most a spurious wake-up.
                Poll::Pending => break,
                // The end (a read of nothing) or an error.
                Poll::Ready(end) => {
                    let end = end.map(|()| 0);
                    if total == 0 {
                        return Poll::Ready(end);
                    }
                    *stashed = Some(end);
                    break;
                }
            }
        }
        Poll::Ready(Ok(total))
    })
}

/// Awaits `f` for at most `limit`; an I/O error becomes `on_error`, the timeout `on_timeout`.
pub(super) async fn within<T>(
    limit: Duration,
    on_timeout: Problem,
    on_error: Problem,
    f: impl Future<Output = io::Result<T>>,
) -> Result<T, Problem> {
    match timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(on_error),
        Err(_) => Err(on_timeout),
    }
}

/// Writes to the client within the client write timeout.
pub async fn write_client(
    cw: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    limit: Duration,
) -> Result<(), Problem> {
    within(
        limit,
        Problem::ClientWriteStalled,
        Problem::ClientWriteStalled,
        cw.write_all(bytes),
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::task::Context;

    use super::*;

    /// A reader that hands out scripted results, one per poll: bytes, `Pending`, the end
    /// (empty), or an error.
    struct Script(VecDeque<Option<io::Result<&'static [u8]>>>);

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.0.pop_front() {
                None => Poll::Ready(Ok(())),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Some(Ok(bytes))) => {
                    buf.put_slice(bytes);
                    Poll::Ready(Ok(()))
                }
                Some(Some(Err(e))) => Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_once(
        r: &mut Script,
        buf: &mut [u8],
        stashed: &mut Option<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let fut = read_available(r, buf, stashed);
        let mut fut = std::pin::pin!(fut);
        fut.as_mut().poll(&mut cx)
    }

    fn ok(n: usize) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(n))
    }

    fn same(a: &Poll<io::Result<usize>>, b: &Poll<io::Result<usize>>) -> bool {
        match (a, b) {
            (Poll::Ready(Ok(x)), Poll::Ready(Ok(y))) => x == y,
            (Poll::Ready(Err(x)), Poll::Ready(Err(y))) => x.kind() == y.kind(),
            (Poll::Pending, Poll::Pending) => true,
            _ => false,
        }
    }

    /// What is readable together (TLS records decrypted from one socket read) is read
    /// together; the read stops at the first `Pending` without waiting for more.
    #[test]
    fn reads_what_is_already_readable_and_no_more() {
        let mut r = Script(
            [
                Some(Ok(&b"data: 1\n\n"[..])),
                Some(Ok(b"data: 2\n\n")),
                None,
                Some(Ok(b"data: 3\n\n")),
            ]
            .into(),
        );
        let (mut buf, mut stashed) = ([0u8; 64], None);
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(18)));
        assert_eq!(&buf[..18], b"data: 1\n\ndata: 2\n\n");
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(9)));
        assert_eq!(&buf[..9], b"data: 3\n\n");
    }

    /// Nothing readable: the read waits (it never returns an empty read that is not the end).
    #[test]
    fn waits_when_nothing_is_readable() {
        let mut r = Script([None].into());
        let (mut buf, mut stashed) = ([0u8; 8], None);
        assert!(poll_once(&mut r, &mut buf, &mut stashed).is_pending());
    }

    /// A full buffer ends the read; the rest stays for the next one.
    #[test]
    fn stops_when_the_buffer_is_full() {
        let mut r = Script([Some(Ok(&b"abcd"[..])), Some(Ok(b"efgh"))].into());
        let (mut buf, mut stashed) = ([0u8; 4], None);
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(4)));
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(4)));
        assert_eq!(&buf, b"efgh");
    }

    /// An error after bytes is not lost: the bytes come first, the error with the next read,
    /// so a reset never looks like the clean end of a close-delimited body (R29).
    #[test]
    fn an_error_after_bytes_is_kept_for_the_next_read() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let mut r = Script([Some(Ok(&b"data"[..])), Some(Err(reset))].into());
        let (mut buf, mut stashed) = ([0u8; 16], None);
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(4)));
        let reset = Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &reset));
    }

    /// The end after bytes likewise: bytes, then the end.
    #[test]
    fn the_end_after_bytes_is_kept_for_the_next_read() {
        let mut r = Script([Some(Ok(&b"tail"[..])), Some(Ok(&b""[..]))].into());
        let (mut buf, mut stashed) = ([0u8; 16], None);
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(4)));
        // The script is empty now; the end must come from what was kept, not a new read.
        r.0.push_back(Some(Ok(b"more")));
        assert!(same(&poll_once(&mut r, &mut buf, &mut stashed), &ok(0)));
    }
}
