//! Accepting connections, with limits: hyper's own settings rather than hand-written parsing.
//!
//! `axum::serve` gives no access to hyper's connection settings, and without them a
//! connection that never finishes its headers stays open forever (1,000 of them were all
//! still open after 35 s, issue 13). This loop is `axum::serve` with three additions:
//! - a header read timeout (hyper's `header_read_timeout`, on a tokio timer): a request
//!   whose headers are not complete in time gets its connection closed;
//! - the same limit on a connection with no request in flight, whatever it speaks
//!   ([`super::idle`]): hyper's timer starts only once it has read enough to choose HTTP/1,
//!   and HTTP/2 has none;
//! - a bound on open connections: past it, new ones wait in the listen backlog until one
//!   closes (a permit per connection);
//! - graceful shutdown with a bound: no new connections, in-flight requests finish, and
//!   connections still open after the bound are dropped.
//!
//! Request bodies have their own timeout (a tower-http layer in the router).
//!
//! With TLS the handshake runs on the connection's own task (a slow one never holds up
//! accepting others) and must finish within the header timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::idle::{self, Activity, Tracked};
use super::stall::{self, Stall, Watched};

/// A bound listener, and the TLS it speaks (plain HTTP without).
pub struct Endpoint {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A request's headers must be complete within this time.
    pub header_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// How long a write may wait for the client to read before the connection is closed
    /// ([`super::stall`]).
    pub send_timeout: Duration,
    /// How long shutdown waits for open connections.
    pub drain: Duration,
}

/// Streams an HTTP/2 connection may have open at once.
const MAX_STREAMS: u32 = 32;

/// Serve `app` on `endpoint` until `shutdown` resolves, then drain.
pub async fn serve(
    endpoint: Endpoint,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let Endpoint { listener, tls } = endpoint;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // Each stream of a connection may hold a request body of up to `max_body_bytes` while
    // it is read: at hyper's default of 200 streams, one HTTP/2 connection held 200 MiB
    // where an HTTP/1 one holds 1 MiB (found in review). 32 is what a multiplexing client
    // needs; all bodies being read share one budget besides (`params::BodyRoom`).
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS);
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
        let conn = Conn {
            builder: builder.clone(),
            app: app.clone(),
            watcher: graceful.watcher(),
            idle: limits.header_timeout,
            send_timeout: limits.send_timeout,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => conn.run(stream).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => conn.run(stream).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
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

/// Resolves, saying why, once a connection has had no request in flight for `idle`
/// ([`idle`]), a write has waited `send` for its client ([`stall`]), or an answer begun has
/// not been asked for data for `send` ([`idle::answer_wait`]). One timer for all: the
/// connection's task polls it at each of its wakes.
async fn watchdog(activity: &Activity, idle: Duration, stall: &Stall, send: Duration) -> String {
    loop {
        let Some(idle_wait) = idle::idle_wait(activity, idle) else {
            return format!("no request for {idle:?}");
        };
        let Some(stall_wait) = stall::stall_wait(stall, send) else {
            return format!("its client read nothing for {send:?}");
        };
        let Some(answer_wait) = idle::answer_wait(activity, send) else {
            return format!("its client took no answer for {send:?}");
        };
        tokio::time::sleep(idle_wait.min(stall_wait).min(answer_wait)).await;
    }
}

/// What one connection's task needs to serve it.
struct Conn {
    builder: Builder<TokioExecutor>,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
    /// How long the connection may go with no request in flight.
    idle: Duration,
    /// How long a write may wait for the client.
    send_timeout: Duration,
}

impl Conn {
    async fn run<S>(self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let app = self.app;
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |req| {
            let in_flight = requests.begin();
            let answer = app.clone().oneshot(req);
            async move {
                let res = answer.await?;
                Ok::<_, std::convert::Infallible>(res.map(|body| Tracked::new(body, in_flight)))
            }
        });
        let stall = Stall::new();
        let conn = self
            .builder
            .serve_connection_with_upgrades(
                TokioIo::new(Watched::new(stream, stall.clone())),
                service,
            )
            .into_owned();
        tokio::select! {
            ended = self.watcher.watch(conn) => {
                if let Err(e) = ended {
                    tracing::trace!("connection ended: {e}");
                }
            }
            why = watchdog(&activity, self.idle, &stall, self.send_timeout) => {
                tracing::debug!("closing a connection: {why}");
            }
        }
    }
}
