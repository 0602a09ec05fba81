//! The accept loop and the drain at shutdown. Each accepted connection is one task that
//! [`connection::serve`] runs; a semaphore bounds how many run at once (`MAX_CONNECTIONS`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::connection;
use crate::listen::{self, Listener, Refusals};
use crate::state::Proxy;

/// Accepts connections until `shutdown` turns true, then waits for the open ones to finish.
/// The listener is dropped first, so new connections are refused rather than left hanging.
/// Dropping this future (the grace period ran out) aborts every connection it started.
/// With `ALLOW_PEER_UIDS`, a peer of another uid is closed at accept, before any byte of
/// it is read; it is counted, and logged at most once a minute per uid.
pub async fn serve(listener: Listener, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(proxy.cfg.limits.max_connections));
    // Idle upstream connections close when they expire, even if no request comes.
    let mut sweeper = JoinSet::new();
    {
        let proxy = proxy.clone();
        let every = proxy.cfg.timeouts.pool_idle;
        sweeper.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                proxy.pool.prune();
            }
        });
    }
    let mut connections = JoinSet::new();
    let mut refusals = Refusals::default();
    loop {
        // Cancel safety: acquire_owned and accept are both cancel-safe; losing the race to
        // shutdown drops nothing that was accepted.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue, // EMFILE, ECONNABORTED: keep serving the others
            },
            _ = shutdown.changed() => break,
        };
        if !listen::admits(proxy.cfg.peer_uids.as_deref(), peer) {
            proxy.metrics.peer_refused.fetch_add(1, Relaxed);
            refusals.note(&proxy.log, peer.uid(), Instant::now());
            drop(stream);
            continue;
        }
        let proxy = proxy.clone();
        let rx = shutdown.clone();
        connections.spawn(async move {
            connection::serve(&proxy, stream, peer, rx).await;
            drop(permit);
        });
        // Reap the finished ones, so the set holds only open connections.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    drop(sweeper);
    while connections.join_next().await.is_some() {}
}
