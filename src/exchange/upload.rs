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

/// Why the upload stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UploadError {
    /// The client broke framing, stalled or left: the exchange is aborted.
    Client(Problem),
    /// The upstream stopped accepting the body; its response (if any) is still relayed.
    Upstream,
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
    /// Streams the rest of the request body from the client to the upstream.
    pub(super) async fn run(self) -> Result<(), UploadError> {
        while !self.body.is_done() {
            if self.buf.is_empty() {
                self.buf.reserve(limits::UPLOAD_READ);
                let n = within(
                    self.t.client_idle,
                    Problem::BodyTimeout,
                    Problem::ClientAborted,
                    self.client.read_buf(self.buf),
                )
                .await
                .map_err(UploadError::Client)?;
                if n == 0 {
                    // R10: a body shorter than declared is incomplete; the upstream is dropped.
                    return Err(UploadError::Client(Problem::ClientAborted));
                }
            }
            self.scratch.clear();
            let framed = self.body.frame(self.buf, self.scratch);
            let (bytes, consumed): (&[u8], usize) = match framed.map_err(UploadError::Client)? {
                Framed::Raw(n) => (&self.buf[..n], n),
                Framed::Encoded(n) => (&self.scratch[..], n),
            };
            if !bytes.is_empty() {
                let sent = timeout(self.t.upstream_idle, self.upstream.write_all(bytes)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return Err(UploadError::Upstream);
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
            return Err(UploadError::Upstream);
        }
        self.progress.body_sent.store(true, Relaxed);
        Ok(())
    }
}
