//! The accept loop and the drain at shutdown. Each accepted connection is one task that
//! [`connection::serve`] runs; a semaphore bounds how many run at once (`MAX_CONNECTIONS`).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::connection;
use crate::state::Proxy;

/// Accepts connections until `shutdown` turns true, then waits for the open ones to finish.
/// The listener is dropped first, so new connections are refused rather than left hanging.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(proxy.cfg.limits.max_connections));
    // Idle upstream connections close when they expire, even if no request comes.
    let sweeper = {
        let proxy = proxy.clone();
        let every = proxy.cfg.timeouts.pool_idle;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                proxy.pool.prune();
            }
        })
    };
    // Each task holds a sender; when all are dropped, the drain is over (mini-redis).
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        // Cancel safety: acquire_owned and accept are both cancel-safe; losing the race to
        // shutdown drops nothing that was accepted.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue, // EMFILE, ECONNABORTED: keep serving the others
            },
            _ = shutdown.changed() => break,
        };
        let proxy = proxy.clone();
        let rx = shutdown.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            connection::serve(&proxy, stream, rx).await;
            drop(permit);
            drop(done);
        });
    }
    drop(listener);
    sweeper.abort();
    drop(done_tx);
    let _ = done_rx.recv().await;
}
