//! Connections whose client stops reading its answers: closed once a write has waited
//! `http.body_timeout_ms` for the client.
//!
//! An answer is held by the server until the client reads it: a page of the list (up to
//! 4 MiB and a record, with its room in [`super::page_room`]), a record of up to 1 MiB, the
//! streamed list. A client that asked and never read held them for as long as it kept the
//! connection, and some 40 such connections spent the pages' room, so every other client's
//! page waited and got 503 (found in review). nginx's `send_timeout` is the model: the time
//! a write may wait for the client to take bytes, not the time of the whole answer, so a
//! slow reader that keeps reading is never cut.
//!
//! Each connection's stream is wrapped in [`Watched`], which notes when a write first found
//! the socket full and forgets it when a write goes through; a watchdog beside the
//! connection closes it once that has lasted the limit. The hot path pays an atomic store per
//! write; the connection's one watchdog (`server.rs`, with [`super::idle`]'s) wakes once
//! per limit.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Since when one connection's writes have waited for its client.
#[derive(Debug)]
pub struct Stall {
    opened: Instant,
    /// Microseconds after `opened` when a write first found the socket full, plus one (0:
    /// the last write went through).
    blocked_since_us: AtomicU64,
}

impl Stall {
    pub fn new() -> Arc<Stall> {
        Arc::new(Stall {
            opened: Instant::now(),
            blocked_since_us: AtomicU64::new(0),
        })
    }

    fn blocked(&self) {
        if self.blocked_since_us.load(Ordering::Relaxed) == 0 {
            let now = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
            self.blocked_since_us.store(now + 1, Ordering::Relaxed);
        }
    }

    fn flowed(&self) {
        self.blocked_since_us.store(0, Ordering::Relaxed);
    }

    /// How long writes have waited for the client (`None`: they do not).
    fn blocked_for(&self) -> Option<Duration> {
        let since = self
            .blocked_since_us
            .load(Ordering::Relaxed)
            .checked_sub(1)?;
        let since = self.opened + Duration::from_micros(since);
        Some(Instant::now().saturating_duration_since(since))
    }
}

/// How long until `stall`'s connection will have had a write wait for its client for
/// `limit`, if it keeps waiting; `None` once it has. Writes flowing: a limit, after which
/// it looks again.
pub fn stall_wait(stall: &Stall, limit: Duration) -> Option<Duration> {
    super::idle::time_left(stall.blocked_for(), limit)
}

/// Resolves once `stall`'s connection has had a write wait for its client for `limit`.
#[cfg(test)]
async fn stalled_out(stall: &Stall, limit: Duration) {
    while let Some(wait) = stall_wait(stall, limit) {
        tokio::time::sleep(wait).await;
    }
}

/// A connection's stream, noting its writes in a [`Stall`].
pub struct Watched<S> {
    inner: S,
    stall: Arc<Stall>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, stall: Arc<Stall>) -> Self {
        Watched { inner, stall }
    }

    fn noted<T>(&self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &polled {
            Poll::Pending => self.stall.blocked(),
            Poll::Ready(_) => self.stall.flowed(),
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.noted(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.noted(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.noted(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A client that stops reading: the write that finds its socket full starts the clock,
    /// and the watchdog fires a limit later.
    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_takes_stalls_the_connection_out() {
        let (server, _client) = tokio::io::duplex(1024);
        let stall = Stall::new();
        let mut watched = Watched::new(server, stall.clone());
        let writer = tokio::spawn(async move {
            let _ = watched.write_all(&[0u8; 64 << 10]).await;
        });
        let start = Instant::now();
        stalled_out(&stall, Duration::from_secs(30)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        writer.abort();
    }

    /// A client that keeps reading, however slowly, is never cut.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = tokio::io::duplex(1024);
        let stall = Stall::new();
        let mut watched = Watched::new(server, stall.clone());
        let writer = tokio::spawn(async move {
            watched.write_all(&[0u8; 16 << 10]).await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut got = 0;
            while got < 16 << 10 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                got += client.read(&mut buf).await.unwrap();
            }
        });
        tokio::select! {
            () = stalled_out(&stall, Duration::from_secs(30)) => panic!("cut a reader"),
            _ = reader => {}
        }
        writer.await.unwrap();
        assert_eq!(stall.blocked_for(), None);
    }
}
