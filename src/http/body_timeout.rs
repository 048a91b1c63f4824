//! A request body must arrive whole within `body_timeout_ms`, or it ends with
//! [`BodyTimedOut`]; the handlers answer that with 408.
//!
//! The time is the whole body's, not the time between two frames: a body dripped one byte
//! at a time, each within the timeout of the last, held its connection (and its share of
//! the node's body budget) for as long as the client liked (found in review). It is
//! counted from the first poll that finds nothing ready, and no frame resets it.
//!
//! The peer listener keeps the time between frames ([`BodyTimeoutLayer::between_frames`]):
//! its bodies are Raft's, snapshot chunks of 8 MiB and batches of entries, from peers that
//! hold the cluster secret, and a whole-body limit cut every chunk on a link too slow to
//! carry one within it, so a lagging follower never caught up (found in review).
//!
//! tower-http's `RequestBodyTimeout` arms a timer on every poll of the body, before it
//! looks at the body, and a frame resets it: a create's body, already read with its head,
//! armed and dropped a timer in the runtime's wheel twice (once for the data, once for its
//! end), and a drip was never cut. Here the timer is armed only when the body has nothing
//! ready, which for a small body is never.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use cookie_raft::BoxError;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;
use tower::{Layer, Service};

/// The error a body ends with when the next frame does not come in time.
#[derive(Debug, thiserror::Error)]
#[error("request body timed out")]
pub struct BodyTimedOut;

/// Wraps each request's body in a [`TimedBody`].
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeoutLayer {
    timeout: Duration,
    rule: Rule,
}

/// What the timeout times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// The whole body, from the first poll that found nothing ready.
    Whole,
    /// The wait for each frame: a frame resets it.
    BetweenFrames,
}

impl BodyTimeoutLayer {
    /// The whole body must arrive within `timeout` (the client listener).
    pub fn whole(timeout: Duration) -> Self {
        BodyTimeoutLayer {
            timeout,
            rule: Rule::Whole,
        }
    }

    /// Each frame must arrive within `timeout` of the last (the peer listener).
    pub fn between_frames(timeout: Duration) -> Self {
        BodyTimeoutLayer {
            timeout,
            rule: Rule::BetweenFrames,
        }
    }
}

impl<S> Layer<S> for BodyTimeoutLayer {
    type Service = BodyTimeout<S>;

    fn layer(&self, inner: S) -> BodyTimeout<S> {
        BodyTimeout {
            inner,
            layer: *self,
        }
    }
}

/// See [`BodyTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct BodyTimeout<S> {
    inner: S,
    layer: BodyTimeoutLayer,
}

impl<S> Service<Request> for BodyTimeout<S>
where
    S: Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> S::Future {
        let layer = self.layer;
        self.inner
            .call(req.map(|body| Body::new(TimedBody::new(body, layer))))
    }
}

/// A body that must end within `timeout` of the first poll that found nothing ready (or,
/// between frames, whose next frame must come within `timeout` of such a poll).
pub struct TimedBody<B> {
    body: B,
    timeout: Duration,
    rule: Rule,
    /// Armed by a poll that finds nothing ready; for the whole body, kept until it ends.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> TimedBody<B> {
    /// `body`, timed as `layer` says.
    fn new(body: B, layer: BodyTimeoutLayer) -> Self {
        TimedBody {
            body,
            timeout: layer.timeout,
            rule: layer.rule,
            sleep: None,
        }
    }
}

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            if frame.is_none() || this.rule == Rule::BetweenFrames {
                this.sleep = None; // over, or a frame came: its timer leaves the wheel now
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
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
    use futures::channel::mpsc;
    use http_body_util::{BodyExt, StreamBody};

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// A body fed through a channel, and its sender: the whole body timed (the client
    /// listener's rule).
    fn fed() -> (
        mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>,
        TimedBody<Body>,
    ) {
        fed_as(BodyTimeoutLayer::whole(TIMEOUT))
    }

    /// [`fed`], timed as `layer` says.
    fn fed_as(
        layer: BodyTimeoutLayer,
    ) -> (
        mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>,
        TimedBody<Body>,
    ) {
        let (tx, rx) = mpsc::unbounded();
        let body = Body::new(StreamBody::new(rx));
        (tx, TimedBody::new(body, layer))
    }

    fn data(b: &'static [u8]) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(b)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_coming_ends_with_the_timeout() {
        let (tx, mut body) = fed();
        tx.unbounded_send(data(b"a")).unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        let started = tokio::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyTimedOut>(), "{err}");
        assert_eq!(started.elapsed(), TIMEOUT);
        drop(tx);
    }

    /// A body whose frames come in time, and which ends within the timeout, is read whole.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_is_read_whole() {
        let (tx, body) = fed();
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(TIMEOUT / 11).await;
                tx.unbounded_send(data(b"x")).unwrap();
            }
        });
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all, "xxxxxxxxxx");
        feeder.await.unwrap();
    }

    /// A body dripped a frame at a time, each well within the timeout of the last, is cut
    /// once the whole timeout has passed (before, each frame reset the timer and the drip
    /// was never cut).
    #[tokio::test(start_paused = true)]
    async fn a_dripped_body_is_cut_once_its_time_is_up() {
        let (tx, mut body) = fed();
        let feeder = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(TIMEOUT * 2 / 7).await;
                if tx.unbounded_send(data(b"x")).is_err() {
                    return; // the body was dropped
                }
            }
        });
        let started = tokio::time::Instant::now();
        let mut got = 0;
        let err = loop {
            match body.frame().await.expect("cut before the drip ends") {
                Ok(_) => got += 1,
                Err(e) => break e,
            }
        };
        assert!(err.is::<BodyTimedOut>(), "{err}");
        assert_eq!(started.elapsed(), TIMEOUT);
        assert_eq!(got, 3, "frames at 2/7, 4/7 and 6/7 of the timeout");
        drop(body);
        feeder.await.unwrap();
    }

    /// On the peer listener a frame resets the time: a steady stream of chunks, however
    /// long in all, is read whole.
    #[tokio::test(start_paused = true)]
    async fn between_frames_a_body_that_keeps_coming_is_never_cut() {
        let (tx, body) = fed_as(BodyTimeoutLayer::between_frames(TIMEOUT));
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(TIMEOUT * 3 / 4).await;
                tx.unbounded_send(data(b"x")).unwrap();
            }
        });
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all, "xxxxxxxxxx");
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_already_there_arms_no_timer() {
        let (tx, mut body) = fed();
        tx.unbounded_send(data(b"a")).unwrap();
        tx.unbounded_send(data(b"b")).unwrap();
        drop(tx);
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            got.push(frame.unwrap().into_data().unwrap());
            assert!(body.sleep.is_none());
        }
        assert_eq!(got, ["a", "b"]);
        // The stream is over: still no timer.
        assert!(body.sleep.is_none());
    }
}
