//! A body written on the blocking pool and sent as chunks through a bounded channel that an
//! HTTP response drains (`GET /admin/backup`, the unpaged `GET /cookies`): memory stays at a
//! few chunks whatever the body's size, and a client that goes away stops the writer, whose
//! next send fails.

use std::io::{self, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

/// How long a chunk may wait for a client that does not read it.
const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// One chunk of a streamed body. An error ends the body there: the client sees a cut-off
/// reply, never a shorter one that looks whole.
pub type Chunk = Result<Bytes, io::Error>;

/// A `Write` that sends each chunk of about `chunk` bytes down the channel, blocking while
/// the channel is full; for the blocking pool only (`blocking_send` panics on a runtime
/// worker).
pub struct ChannelWriter {
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
    chunk: usize,
    /// Whether a chunk has gone already: [`ChannelWriter::finish`] tells a body sent whole.
    sent: bool,
    /// How long one chunk may wait for the client ([`STALL_LIMIT`]).
    stall: std::time::Duration,
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<Chunk>, chunk: usize) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(chunk),
            chunk,
            sent: false,
            stall: STALL_LIMIT,
        }
    }

    /// Send one chunk, waiting while the channel is full, for at most [`STALL_LIMIT`]: a
    /// client that stops reading must not hold a read transaction (which keeps redb from
    /// reusing pages), a blocking thread and a permit for ever.
    fn push(&mut self, chunk: Bytes) -> io::Result<()> {
        self.sent = true;
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the client went away");
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime (tests, tools): nothing to time the wait with.
            return self.tx.blocking_send(Ok(chunk)).map_err(|_| gone());
        };
        let tx = &self.tx;
        match rt.block_on(tokio::time::timeout(self.stall, tx.send(Ok(chunk)))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for too long",
            )),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = Vec::with_capacity(self.chunk);
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, next));
        self.push(chunk)
    }

    /// Send what is buffered. Returns the whole body when it went as this one chunk (nothing
    /// was sent before), so a caller may keep a small body without copying it.
    pub fn finish(mut self) -> io::Result<Option<Bytes>> {
        let whole = !self.sent;
        let mut buf = std::mem::take(&mut self.buf);
        if whole {
            // A body kept after it is sent should hold its bytes, not a chunk's capacity.
            buf.shrink_to_fit();
        }
        let last = Bytes::from(buf);
        if !last.is_empty() {
            self.push(last.clone())?;
        }
        Ok(whole.then_some(last))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that stops reading (its channel full, never drained) fails the writer after
    /// the stall limit, instead of holding it for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_client_that_stops_reading_fails_the_write_in_time() {
        let (tx, _rx) = mpsc::channel::<Chunk>(1);
        let mut w = ChannelWriter::new(tx, 4);
        w.stall = std::time::Duration::from_millis(100);
        let started = std::time::Instant::now();
        let err = tokio::task::spawn_blocking(move || {
            for _ in 0..10 {
                w.write_all(b"abcd")?;
            }
            Ok::<_, io::Error>(())
        })
        .await
        .unwrap()
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    fn drain(rx: &mut mpsc::Receiver<Chunk>) -> Vec<Bytes> {
        std::iter::from_fn(|| rx.try_recv().ok().map(Result::unwrap)).collect()
    }

    #[test]
    fn a_small_body_goes_whole_and_a_large_one_in_chunks() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut w = ChannelWriter::new(tx.clone(), 4);
        w.write_all(b"abc").unwrap();
        assert_eq!(w.finish().unwrap().as_deref(), Some(&b"abc"[..]));
        assert_eq!(drain(&mut rx), [Bytes::from_static(b"abc")]);

        let mut w = ChannelWriter::new(tx, 4);
        w.write_all(b"abcde").unwrap();
        w.write_all(b"fg").unwrap();
        assert_eq!(w.finish().unwrap(), None, "sent in two chunks, not whole");
        assert_eq!(drain(&mut rx), [&b"abcde"[..], b"fg"]);
    }

    #[test]
    fn a_closed_channel_fails_the_write() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChannelWriter::new(tx, 4);
        let err = w.write_all(b"abcdef").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
