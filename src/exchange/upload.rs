//! The upload half: the rest of the request body, from the client's buffer and socket to the
//! upstream, while the download half relays the response.

use std::sync::atomic::Ordering::Relaxed;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::io::within;
use super::Progress;
use crate::error::Problem;
use crate::framing::{Framed, RequestBody};
use crate::limits::{self, Timeouts};

/// Where the request body's way up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UploadState {
    /// Still going (when the response ended, it is left unfinished).
    Running,
    /// Sent whole and flushed.
    Sent,
    /// The upstream stopped accepting the body; its response (if any) is still relayed.
    UpstreamStopped,
    /// The client broke framing, stalled or left: the exchange is aborted, the download
    /// dropped.
    ClientFailed(Problem),
}

/// The request body's way up: from the client's buffer and socket to the upstream.
pub(super) struct Upload<'a, R, W> {
    /// The client's read half.
    pub(super) client: &'a mut R,
    /// The client's bytes read but not yet sent up.
    pub(super) buf: &'a mut BytesMut,
    /// The upstream's write half.
    pub(super) upstream: &'a mut W,
    pub(super) body: &'a mut RequestBody,
    /// Re-chunked bytes on their way up.
    pub(super) scratch: &'a mut Vec<u8>,
    pub(super) t: &'a Timeouts,
    pub(super) progress: &'a Progress,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Upload<'_, R, W> {
    /// Streams the rest of the request body from the client to the upstream; returns how it
    /// ended (never `Running`).
    pub(super) async fn run(self) -> UploadState {
        use UploadState::{ClientFailed, Sent, UpstreamStopped};
        while !self.body.is_done() {
            if self.buf.is_empty() {
                self.buf.reserve(limits::UPLOAD_READ);
                let read = within(
                    self.t.client_idle,
                    Problem::BodyTimeout,
                    Problem::ClientAborted,
                    self.client.read_buf(self.buf),
                )
                .await;
                match read {
                    // R10: a body shorter than declared is incomplete; the upstream is dropped.
                    Ok(0) => return ClientFailed(Problem::ClientAborted),
                    Ok(_) => {}
                    Err(p) => return ClientFailed(p),
                }
            }
            self.scratch.clear();
            let (bytes, consumed): (&[u8], usize) = match self.body.frame(self.buf, self.scratch) {
                Ok(Framed::Raw(n)) => (&self.buf[..n], n),
                Ok(Framed::Encoded(n)) => (&self.scratch[..], n),
                Err(p) => return ClientFailed(p),
            };
            if !bytes.is_empty() {
                let sent = timeout(self.t.upstream_idle, self.upstream.write_all(bytes)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return UpstreamStopped;
                }
                self.progress
                    .body_bytes
                    .fetch_add(bytes.len() as u64, Relaxed);
            }
            self.buf.advance(consumed);
        }
        if !matches!(
            timeout(self.t.upstream_idle, self.upstream.flush()).await,
            Ok(Ok(()))
        ) {
            return UpstreamStopped;
        }
        self.progress.body_sent.store(true, Relaxed);
        Sent
    }
}
