//! Accepting connections: at most `max_connections` open at once, each closed when a request's
//! headers take longer than `header_timeout` or it idles that long between requests, so slow
//! or abandoned clients (slowloris) cannot hold the host's sockets. Shutdown stops accepting
//! and lets each connection finish the request it is serving.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the listener bounds its connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionLimits {
    /// Longest wait for a request's headers, or between requests on a kept-alive connection.
    pub(crate) header_timeout: Duration,
    /// Most connections open at once.
    pub(crate) max_connections: usize,
}

impl ConnectionLimits {
    /// The limits asked for, with `max_connections` cut to half the file-descriptor limit
    /// (the rest is for the data file, callbacks and the listener itself).
    pub(crate) fn new(header_timeout: Duration, max_connections: usize) -> Self {
        let max_connections = match fd_limit() {
            Some(fds) => max_connections.min((fds / 2).max(1)),
            None => max_connections,
        };
        ConnectionLimits {
            header_timeout,
            max_connections,
        }
    }
}

/// The soft limit on open file descriptors, if the platform says.
fn fd_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0
            && limit.rlim_cur != libc::RLIM_INFINITY
        {
            return Some(limit.rlim_cur as usize);
        }
    }
    None
}

/// Serves `router` on `listener` until `stopping` is cancelled, then waits up to `drain` for
/// open connections to finish their current request and closes the rest (a client that sent
/// half a request and stalled does not hold the shutdown).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stopping: CancellationToken,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let cut = CancellationToken::new();
    loop {
        // A free slot first: while all are taken, new connections wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = stopping.cancelled() => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: back off
                    // briefly instead of spinning, and keep serving the connections we have.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopping.cancelled() => break,
        };
        // Answers are small and latency-bound: send them at once (no Nagle).
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let stopping = stopping.clone();
        let cut = cut.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true);
            let conn = http.serve_connection(TokioIo::new(tcp), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = conn => {}
                        // Dropping the connection closes its socket.
                        _ = cut.cancelled() => {}
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "grace period over: closing connections whose request did not finish"
        );
        cut.cancel();
        connections.wait().await;
    }
}
