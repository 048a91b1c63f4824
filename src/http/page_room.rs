//! The bytes of list pages this node holds while it sends them, for all requests together.
//!
//! A page (`GET /cookies?limit=N`) is built whole in memory, up to
//! `cookie_raft::sm::PAGE_BYTES` and one record, and held until the client has read it.
//! Nothing bounded how many were held at once: 400 connections that asked for a page of
//! large records and did not read their answers took a node to 2 GB RSS (found in review;
//! the unpaged list has its permits, request bodies [`super::params::BodyRoom`]). Each page
//! now takes the room of the largest page before it is built, waiting up to the read
//! timeout (then 503), keeps the room of its own size once built, and gives it back as its
//! last bytes are handed to the connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// How many pages of the largest size the node holds at once, at most.
pub const PAGES_IN_FLIGHT: usize = 32;

/// The slices a page is handed to the connection in: hyper takes the next only once it has
/// room to buffer it, so the page's room is held until about all of it has been sent.
const SLICE: usize = 64 << 10;

/// See the module's documentation.
#[derive(Clone)]
pub struct PageRoom {
    room: Arc<Semaphore>,
    /// The room the largest page takes: `PAGE_BYTES`, a record of up to `max_body_bytes`,
    /// and the page's own JSON around them.
    largest: u32,
}

impl PageRoom {
    pub fn new(max_body_bytes: usize) -> Self {
        let largest = cookie_raft::sm::PAGE_BYTES
            .saturating_add(max_body_bytes)
            .saturating_add(SLICE)
            .min(u32::MAX as usize / PAGES_IN_FLIGHT);
        PageRoom {
            room: Arc::new(Semaphore::new(largest * PAGES_IN_FLIGHT)),
            largest: largest as u32,
        }
    }

    /// The room of the largest page, before one is built: waits up to `wait`, then 503.
    pub async fn take(&self, wait: Duration) -> Result<OwnedSemaphorePermit, ApiError> {
        tokio::time::timeout(wait, self.room.clone().acquire_many_owned(self.largest))
            .await
            .map_err(|_| ApiError::Busy("list pages being sent"))?
            .map_err(ApiError::internal)
    }
}

/// `page`'s body, holding of `permit` only the page's own size (a page larger than the
/// largest, of records stored under a larger `max_body_bytes`, keeps the largest's) until its
/// last slice is taken. Its exact size is known, so the reply still has a `Content-Length`.
/// A client that takes nothing of it for `stall` loses it, and the room goes back
/// ([`super::answer_stall`]).
pub fn hold(page: Bytes, mut permit: OwnedSemaphorePermit, stall: Duration) -> Body {
    let spare = permit.num_permits().saturating_sub(page.len());
    drop(permit.split(spare));
    let page = HeldPage {
        rest: page,
        permit: Some(permit),
    };
    super::answer_stall::watch(page, stall)
}

/// See [`hold`].
struct HeldPage {
    /// What is still to be handed over.
    rest: Bytes,
    permit: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for HeldPage {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.rest.is_empty() {
            this.permit = None;
            return Poll::Ready(None);
        }
        // The last slice keeps the room: `answer_stall` hands it on in pieces, and lets go
        // of this body (and the room) with the last of them.
        let slice = this.rest.split_to(SLICE.min(this.rest.len()));
        Poll::Ready(Some(Ok(http_body::Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_page_holds_its_own_size_until_it_is_sent() {
        let room = PageRoom::new(1 << 20);
        let all = room.room.available_permits();
        let permit = room.take(Duration::from_secs(1)).await.unwrap();
        assert_eq!(room.room.available_permits(), all - room.largest as usize);
        // Its last slice of 64 KiB is handed on in pieces (`answer_stall`).
        let page = Bytes::from(vec![b'x'; 220_000]);
        let mut body = hold(page.clone(), permit, Duration::from_secs(30));
        assert_eq!(room.room.available_permits(), all - 220_000);
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(220_000));
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= SLICE);
            got.extend_from_slice(&data);
            let held = all - room.room.available_permits();
            assert_eq!(held == 0, got.len() == page.len(), "{held} held");
        }
        assert_eq!(got, page);
        assert_eq!(room.room.available_permits(), all);
    }

    #[tokio::test(start_paused = true)]
    async fn pages_beyond_the_room_wait_then_are_refused() {
        let room = PageRoom::new(1 << 20);
        let mut held = Vec::new();
        for _ in 0..PAGES_IN_FLIGHT {
            held.push(room.take(Duration::from_secs(5)).await.unwrap());
        }
        let refused = room.take(Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(refused, ApiError::Busy(_)), "{refused:?}");
        // One page given back: the next is taken.
        held.pop();
        held.push(room.take(Duration::from_secs(5)).await.unwrap());
    }
}
