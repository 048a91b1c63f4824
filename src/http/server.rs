//! Accepting connections, with limits: hyper's own settings rather than hand-written parsing.
//!
//! `axum::serve` gives no access to hyper's connection settings, and without them a
//! connection that never finishes its headers stays open forever (1,000 of them were all
//! still open after 35 s, issue 13). This loop is `axum::serve` with three additions:
//! - a header read timeout (hyper's `header_read_timeout`, on a tokio timer): a request
//!   whose headers are not complete in time gets its connection closed;
//! - a bound on open connections: past it, new ones wait in the listen backlog until one
//!   closes (a permit per connection);
//! - graceful shutdown with a bound: no new connections, in-flight requests finish, and
//!   connections still open after the bound are dropped.
//!
//! Request bodies have their own timeout (a tower-http layer in the router).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A request's headers must be complete within this time.
    pub header_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// How long shutdown waits for open connections.
    pub drain: Duration,
}

/// Serve `app` on `listener` until `shutdown` resolves, then drain.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {:?}; dropping them",
            limits.drain
        );
    }
}
