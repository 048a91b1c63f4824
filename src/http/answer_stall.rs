//! Large answers whose client stops taking them: dropped, with what they hold, once the
//! client has taken nothing for `http.body_timeout_ms`, whatever the protocol.
//!
//! [`super::stall`] closes an HTTP/1 connection whose socket stays full. Over HTTP/2 a
//! client can read its socket and still take nothing of an answer: it keeps the stream's
//! flow-control window at 0, so hyper never asks the body for more and no write waits. Up
//! to 32 streams on each such connection then held a list page each, with its room in
//! [`super::page_room`], or an unpaged list with its permit and read transaction, for as
//! long as the connection stayed open, and other clients' pages got 503 (found in review).
//!
//! [`watch`] puts the body where a timer task can reach it. The body notes when it handed
//! the connection a frame and is waiting to be asked for the next; once that wait has
//! lasted the limit, the task drops the body (the page's bytes and room, the list's scan)
//! and the stream ends with an error. A wait on the body itself (a list whose scan is
//! slow) is not the client's and never counts. The task holds the body only weakly, so an
//! answer that is sent or abandoned frees everything at once and the task ends at its next
//! wake. Only answers that hold room take a task: pages and unpaged lists, not records.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

/// `body`, dropped once its client has taken nothing of it for `limit`.
pub fn watch<B>(body: B, limit: Duration) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let shared = Arc::new(Mutex::new(State {
        body: Some(Body::new(body)),
        rest: Bytes::new(),
        // Handed to the connection: over HTTP/2 with no window, not even its first frame is
        // asked for.
        waiting_since: Some(Instant::now()),
        cut: false,
    }));
    tokio::spawn(cut_when_stalled(Arc::downgrade(&shared), limit));
    Body::new(Watched { shared })
}

/// The most handed to the connection at once (HTTP/2's default frame size).
const SLICE: usize = 16 << 10;

struct State {
    /// `None` once its last frame was taken from it, or it was cut.
    body: Option<Body>,
    /// What is left of the frame being handed over, slice by slice.
    rest: Bytes,
    /// Since when the connection has not asked for the next frame (from the answer's start,
    /// then from each frame handed over).
    waiting_since: Option<Instant>,
    cut: bool,
}

fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while it was held left nothing half-done: every field is set in one step.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The timer: wakes once per `limit` at most, for as long as the answer lives.
async fn cut_when_stalled(shared: Weak<Mutex<State>>, limit: Duration) {
    loop {
        let next = {
            let Some(shared) = shared.upgrade() else {
                return; // sent or abandoned: the body is gone already
            };
            let mut state = lock(&shared);
            if state.done() {
                return;
            }
            match state.waiting_since {
                Some(since) if since.elapsed() >= limit => {
                    state.body = None;
                    state.rest = Bytes::new();
                    state.cut = true;
                    tracing::debug!("dropped an answer its client took nothing of for {limit:?}");
                    return;
                }
                Some(since) => since + limit,
                None => Instant::now() + limit,
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

/// See [`watch`].
struct Watched {
    shared: Arc<Mutex<State>>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut state = lock(&self.shared);
        if state.cut {
            let why = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took nothing of the answer in time",
            );
            return Poll::Ready(Some(Err(axum::Error::new(why))));
        }
        if !state.rest.is_empty() {
            let slice = state.next_slice();
            return Poll::Ready(Some(Ok(Frame::data(slice))));
        }
        let Some(body) = state.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => {
                state.waiting_since = None;
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    state.rest = data;
                    let slice = state.next_slice();
                    Poll::Ready(Some(Ok(Frame::data(slice))))
                }
                Err(other) => {
                    state.handed_over();
                    Poll::Ready(Some(Ok(other)))
                }
            },
            // Its end, or an error.
            end => {
                state.body = None;
                end
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = lock(&self.shared);
        !state.cut && state.rest.is_empty() && state.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let state = lock(&self.shared);
        let rest = state.rest.len() as u64;
        let mut hint = match &state.body {
            Some(body) => body.size_hint(),
            None => SizeHint::with_exact(0),
        };
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint.set_lower(hint.lower() + rest);
        hint
    }
}

impl State {
    /// The next slice of the frame being handed over. Slices are small so that each ask for
    /// the next stands for little of the client's window: a client that reads slowly but
    /// keeps reading is asked often enough (over HTTP/2 hyper asks for the next frame only
    /// once the last is sent, which with 256-KiB frames took a 16-KB/s reader longer than
    /// the limit, found in review).
    fn next_slice(&mut self) -> Bytes {
        let slice = self.rest.split_to(SLICE.min(self.rest.len()));
        self.handed_over();
        slice
    }

    /// A frame was handed over: from now on the connection is waited for, unless that was
    /// the last, which lets go of the body and what it holds (a page's room).
    fn handed_over(&mut self) {
        if self.rest.is_empty()
            && self
                .body
                .as_ref()
                .is_some_and(http_body::Body::is_end_stream)
        {
            self.body = None;
        }
        self.waiting_since = (self.body.is_some() || !self.rest.is_empty()).then(Instant::now);
    }

    fn done(&self) -> bool {
        self.body.is_none() && self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body of `n` frames, each handed over only when asked for.
    fn frames(n: usize) -> Body {
        let chunks = (0..n).map(|i| Ok::<_, std::io::Error>(Bytes::from(vec![b'a'; i + 1])));
        Body::from_stream(futures::stream::iter(chunks))
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_not_taken_in_time_is_dropped_and_ends_in_error() {
        // Not even its first frame asked for.
        let mut body = watch(frames(3), Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert!(body.frame().await.unwrap().is_err());

        let mut body = watch(frames(3), Duration::from_secs(2));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap().len(), 1);
        // Taken in time: the wait starts again at each frame.
        tokio::time::sleep(Duration::from_millis(1_900)).await;
        assert!(body.frame().await.unwrap().is_ok());
        // Not taken for longer than the limit.
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("took nothing"), "{err}");
    }

    /// A large frame goes in small slices, each asked for in time by a reader that takes a
    /// slice at a time: never cut, and every byte arrives, with the size known up front.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_gets_it_all() {
        let page = Bytes::from(vec![b'p'; 100 << 10]);
        let mut body = watch(Body::from(page.clone()), Duration::from_secs(2));
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(100 << 10));
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= SLICE);
            got.extend_from_slice(&data);
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        assert_eq!(got, page);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_on_the_body_itself_is_not_the_clients() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stream = futures::stream::poll_fn({
            let mut rx = rx;
            move |cx| rx.poll_recv(cx)
        });
        let mut body = watch(Body::from_stream(stream), Duration::from_secs(2));
        let taker = tokio::spawn(async move {
            let mut got = 0;
            while let Some(frame) = body.frame().await {
                got += frame.unwrap().into_data().unwrap().len();
            }
            got
        });
        // The body's own frames come slowly; the client asks at once each time.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send(Ok(Bytes::from_static(b"xy"))).await.unwrap();
        }
        drop(tx);
        assert_eq!(taker.await.unwrap(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_body_holds_goes_when_it_is_cut_or_sent() {
        use futures::StreamExt;
        let held = Arc::new(());
        let holding = |n: usize| {
            let mine = held.clone();
            Body::from_stream(futures::stream::iter(0..n).map(move |_| {
                let _ = &mine;
                Ok::<_, std::io::Error>(Bytes::from_static(b"x"))
            }))
        };
        // Cut: what it holds goes, though the answer itself is still kept by its connection.
        let mut cut = watch(holding(3), Duration::from_secs(1));
        cut.frame().await.unwrap().unwrap();
        assert_eq!(Arc::strong_count(&held), 2);
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&held), 1);
        // Sent whole: it goes with the end.
        let mut sent = watch(holding(2), Duration::from_secs(1));
        while let Some(frame) = sent.frame().await {
            frame.unwrap();
        }
        assert_eq!(Arc::strong_count(&held), 1);
        drop((cut, sent));
    }
}
