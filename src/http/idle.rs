//! Connections with no request: closed once the header timeout has passed.
//!
//! hyper's `header_read_timeout` covers HTTP/1 once hyper has chosen HTTP/1, but not what
//! comes before: the auto builder first reads bytes enough to tell HTTP/1 from the HTTP/2
//! preface, with no timer. A connection that sends nothing, or part of the preface, stayed
//! open forever, and so did an HTTP/2 connection that opened no streams (HTTP/2 has no idle
//! timer in hyper). Each held one of `max_connections`' permits, so a few thousand silent
//! sockets, no credential needed, shut every client and peer out (api.md section 10 says
//! such connections are closed).
//!
//! So each connection counts its requests in flight, an answer's body included, and a
//! watchdog beside it closes it when none has been in flight for the limit: from the
//! connection's opening (its first request must start in time), then from the end of its
//! last answer (as hyper already does for an idle HTTP/1 keep-alive). The hot path pays
//! an atomic add and a clock read per request; the watchdog wakes once per limit, never per
//! request.
//!
//! An answer whose body is never taken holds its request in flight for ever: an HTTP/2
//! client that sets its flow-control window to 0 lets hyper send the headers and nothing
//! after, and no byte is written for [`super::stall`] to see wait. Such connections held
//! permits on both listeners indefinitely, no credential needed; on the peer port they kept
//! the nodes from electing a leader for as long as they stayed (found in review). So the
//! connection also counts the answers it has begun to send and when one of their bodies was
//! last asked for data; with an answer begun and none asked for within the send timeout,
//! the watchdog closes it ([`answer_wait`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// One connection's requests: how many are in flight, and since when none is.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended, in microseconds after `opened` (0: none yet).
    idle_since_us: AtomicU64,
    /// Answers whose bodies are being sent ([`Tracked`] alive).
    answering: AtomicUsize,
    /// When an answer's body was last asked for data (or one began), in microseconds after
    /// `opened`.
    taken_us: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_us: AtomicU64::new(0),
            answering: AtomicUsize::new(0),
            taken_us: AtomicU64::new(0),
        })
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Note that an answer's body was asked for data (or began, or ended) now.
    fn taken_now(&self, order: Ordering) {
        self.taken_us.fetch_max(self.now_us(), order);
    }

    /// How long no answer begun on the connection has been asked for data (`None`: no
    /// answer is being sent).
    fn untaken_for(&self) -> Option<Duration> {
        if self.answering.load(Ordering::Acquire) == 0 {
            return None;
        }
        let since = self.opened + Duration::from_micros(self.taken_us.load(Ordering::Acquire));
        Some(Instant::now().saturating_duration_since(since))
    }

    /// A request has started: in flight until the guard (kept by its answer's body) drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// How long the connection has had no request in flight (`None`: one is in flight).
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.opened + Duration::from_micros(self.idle_since_us.load(Ordering::Acquire));
        Some(Instant::now().saturating_duration_since(since))
    }
}

/// A request in flight on a connection: it ends when this drops.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let now = a.now_us();
        // Before the count falls, so a watchdog that reads no request in flight reads this
        // end with it.
        a.idle_since_us.fetch_max(now, Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long until `activity`'s connection will have had no request in flight for `limit`,
/// if none starts meanwhile; `None` once it has. Busy: a limit (a request's own timeouts
/// bound it), after which it looks again.
pub fn idle_wait(activity: &Activity, limit: Duration) -> Option<Duration> {
    time_left(activity.idle_for(), limit)
}

/// How long until `activity`'s connection will have had an answer begun and none of its
/// answers' bodies asked for data for `limit`; `None` once it has. Nothing being sent: a
/// limit, after which it looks again.
pub fn answer_wait(activity: &Activity, limit: Duration) -> Option<Duration> {
    time_left(activity.untaken_for(), limit)
}

/// What is left of `limit` after `elapsed` (`None` once it is spent); while the clock does
/// not run (`elapsed` is `None`), the whole of it.
pub fn time_left(elapsed: Option<Duration>, limit: Duration) -> Option<Duration> {
    match elapsed {
        None => Some(limit),
        Some(e) => limit.checked_sub(e).filter(|left| !left.is_zero()),
    }
}

/// Resolves once `activity`'s connection has had no request in flight for `limit`.
#[cfg(test)]
async fn idle_out(activity: &Activity, limit: Duration) {
    while let Some(wait) = idle_wait(activity, limit) {
        tokio::time::sleep(wait).await;
    }
}

/// An answer's body that keeps its request in flight until it is sent (or dropped): a long
/// answer, such as the unpaged list streamed, is not cut off as idle. It also notes each
/// time the connection asks it for data ([`answer_wait`]).
pub struct Tracked<B> {
    body: B,
    in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        let a = &in_flight.0;
        // The clock first: a watchdog that sees the answer counted sees its start too.
        a.taken_now(Ordering::AcqRel);
        a.answering.fetch_add(1, Ordering::AcqRel);
        Tracked { body, in_flight }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        let a = &self.in_flight.0;
        a.taken_now(Ordering::AcqRel);
        a.answering.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.in_flight.0.taken_now(Ordering::Relaxed);
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_idle_from_its_opening() {
        let a = Activity::new();
        let start = Instant::now();
        idle_out(&a, Duration::from_secs(10)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_holds_it_open_and_its_end_starts_the_clock() {
        let a = Activity::new();
        let req = a.begin();
        let watch = tokio::spawn({
            let a = a.clone();
            async move {
                let start = Instant::now();
                idle_out(&a, Duration::from_secs(10)).await;
                start.elapsed()
            }
        });
        // In flight for 25 s, far past the limit: not idle.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(!watch.is_finished());
        drop(req);
        let took = watch.await.unwrap();
        // Closed a limit after the request ended, not before (the watchdog looks again
        // at most a limit after it found the request in flight).
        assert!(took >= Duration::from_secs(35), "{took:?}");
        assert!(took <= Duration::from_secs(40), "{took:?}");
    }

    /// An answer begun whose body is never asked for data (an HTTP/2 client with a window
    /// of 0) runs out the limit; one asked now and then does not.
    #[tokio::test(start_paused = true)]
    async fn an_answer_never_taken_runs_out_the_limit() {
        let limit = Duration::from_secs(10);
        let a = Activity::new();
        // A request whose handler has not answered yet is not waiting on its client.
        let waiting = a.begin();
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(answer_wait(&a, limit), Some(limit));
        let mut body = Tracked::new(http_body_util::Full::new(bytes::Bytes::from("x")), waiting);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(answer_wait(&a, limit), Some(Duration::from_secs(4)));
        // Asked for data: the clock starts again.
        let waker = futures::task::noop_waker();
        let _ = Pin::new(&mut body).poll_frame(&mut Context::from_waker(&waker));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(answer_wait(&a, limit), Some(Duration::from_secs(4)));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(answer_wait(&a, limit), None);
        // Sent (dropped): nothing waits on the client any more.
        drop(body);
        assert_eq!(answer_wait(&a, limit), Some(limit));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_keep_coming_keep_it_open() {
        let a = Activity::new();
        let watch = tokio::spawn({
            let a = a.clone();
            async move { idle_out(&a, Duration::from_secs(10)).await }
        });
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            drop(a.begin());
        }
        assert!(!watch.is_finished(), "closed while requests came every 6 s");
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(watch.is_finished());
    }
}
