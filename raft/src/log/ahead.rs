//! Zeros written ahead of the WAL's records, on a thread of their own.
//!
//! An append that overwrites bytes the file already has leaves its size and block map
//! alone, so its `fdatasync` writes data only; one that grows the file also commits ext4's
//! journal, which every file on the disk shares (docs/benchmarks.md, "Zeros ahead of the
//! log"). So the active segment is kept written with zeros up to [`ZERO_AHEAD`] past its
//! records. The zeros are written here rather than by `append`: writing them there put
//! ~2 MiB of fresh page-cache pages on the Raft task at once, a stall of milliseconds that
//! raised p99 at 256 clients, where spread over the appends the same pages cost little.
//!
//! The one rule: **zeros never land where records are**. [`Ahead::claim`] moves the end of
//! the records forward (and the zeroed mark with it) before `append` writes them, and the
//! thread writes each chunk of zeros, from the zeroed mark, holding the same lock. Zeros
//! are thus only ever written past every record claimed, and a record written past the
//! zeros (the thread fell behind) just grows the file, as without this.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// How far past its last record the active segment is kept written with zeros; more are
/// written once less than half of this is left.
pub(super) const ZERO_AHEAD: u64 = 2 << 20;
/// Zeros written per turn of the lock: `append` waits for at most one.
const CHUNK: usize = 64 << 10;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// One segment file's zeros: where its records end and how far it is written with zeros.
pub(super) struct Ahead {
    file: Arc<File>,
    /// Zeros go no further than this (the segment size).
    limit: u64,
    state: Mutex<State>,
}

struct State {
    /// Where the records end, including those being written.
    end: u64,
    /// Zeros are written from `end` to here (`zeroed >= end`).
    zeroed: u64,
    /// Finished or removed: no more zeros.
    closed: bool,
}

impl Ahead {
    /// `file`, whose records end at `end` and which is written (with zeros past `end`) up to
    /// `zeroed`.
    pub(super) fn new(file: Arc<File>, end: u64, zeroed: u64, limit: u64) -> Arc<Self> {
        Arc::new(Ahead {
            file,
            limit,
            state: Mutex::new(State {
                end,
                zeroed: zeroed.max(end),
                closed: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records are about to be written up to `end`: no zeros may be written below it from
    /// now on. Whether more zeros are due.
    pub(super) fn claim(&self, end: u64) -> bool {
        let mut s = self.lock();
        s.end = s.end.max(end);
        s.zeroed = s.zeroed.max(end);
        !s.closed && s.zeroed < (end + ZERO_AHEAD / 2).min(self.limit)
    }

    /// Cut the records back to `end` with `cut` (which shortens the file), holding the
    /// lock so that no zeros are written meanwhile. The file is the active one again.
    pub(super) fn cut(&self, end: u64, cut: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut s = self.lock();
        cut()?;
        s.end = end;
        s.zeroed = end;
        s.closed = false;
        Ok(())
    }

    /// No more zeros for this file: it is finished or about to be removed.
    pub(super) fn close(&self) {
        self.lock().closed = true;
    }

    /// Write zeros up to [`ZERO_AHEAD`] past the records, a chunk at a time, each holding
    /// the lock.
    fn fill(&self) -> io::Result<()> {
        loop {
            let mut s = self.lock();
            let target = (s.end + ZERO_AHEAD).min(self.limit);
            if s.closed || s.zeroed >= target {
                return Ok(());
            }
            let to = (s.zeroed + CHUNK as u64).min(target);
            self.file
                .write_all_at(&ZEROS[..(to - s.zeroed) as usize], s.zeroed)?;
            s.zeroed = to;
        }
    }
}

/// The thread that writes the zeros of the segment it is last asked about. Dropping the
/// [`Zeroer`] waits for it to stop, so that no zeros are written to a log that is opened
/// again in the same process (close its files first: it then stops within a chunk).
pub(super) struct Zeroer {
    tx: Option<SyncSender<Arc<Ahead>>>,
    thread: Option<JoinHandle<()>>,
    /// Requests sent and not yet served.
    pending: Arc<AtomicUsize>,
}

impl Zeroer {
    pub(super) fn start() -> io::Result<Self> {
        // One request waiting is enough: a request fills up to the records' end at the time
        // it is served, and `append` asks again while zeros are due.
        let (tx, rx) = sync_channel::<Arc<Ahead>>(1);
        let pending = Arc::new(AtomicUsize::new(0));
        let served = pending.clone();
        let thread = std::thread::Builder::new()
            .name("wal-zeros".into())
            .spawn(move || {
                while let Ok(ahead) = rx.recv() {
                    if let Err(e) = ahead.fill() {
                        // Appends then grow the file, as they would without zeros ahead.
                        tracing::warn!("writing zeros ahead of the log's records: {e}");
                    }
                    served.fetch_sub(1, Ordering::Release);
                }
            })?;
        Ok(Zeroer {
            tx: Some(tx),
            thread: Some(thread),
            pending,
        })
    }

    /// Zeros are due in `ahead`'s file.
    pub(super) fn request(&self, ahead: &Arc<Ahead>) {
        let Some(tx) = &self.tx else { return };
        self.pending.fetch_add(1, Ordering::AcqRel);
        match tx.try_send(ahead.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!("the thread writing zeros ahead of the log has stopped");
            }
        }
    }

    /// Wait until every request sent has been served (tests).
    #[cfg(test)]
    pub(super) fn settle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.pending.load(Ordering::Acquire) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "zeros not written in 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for Zeroer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(f: &File) -> u64 {
        f.metadata().unwrap().len()
    }

    /// The thread writes zeros past what is claimed, never below it, and stops at the
    /// limit and when closed.
    #[test]
    fn zeros_go_past_the_claimed_records_only() {
        let d = tempfile::tempdir().unwrap();
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(d.path().join("f"))
                .unwrap(),
        );
        file.write_all_at(&[7u8; 100], 0).unwrap();
        let a = Ahead::new(file.clone(), 100, 100, 3 << 20);
        assert!(a.claim(100));
        a.fill().unwrap();
        assert_eq!(len(&file), 100 + ZERO_AHEAD);
        let mut head = [0u8; 100];
        file.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(head, [7u8; 100], "zeros landed on the records");

        // Claimed past the zeros: the next fill starts at the claim, and stops at the limit.
        assert!(a.claim(ZERO_AHEAD + 500_000));
        a.fill().unwrap();
        assert_eq!(len(&file), 3 << 20);
        assert!(
            !a.claim(ZERO_AHEAD + 600_000),
            "nothing past the limit is due"
        );

        a.close();
        assert!(!a.claim(20), "a closed file is due nothing");
        a.fill().unwrap();
        assert_eq!(len(&file), 3 << 20);

        // Cut back (a truncation): the file is active again, zeros from the cut.
        a.cut(10, || file.set_len(10)).unwrap();
        assert!(a.claim(20));
        a.fill().unwrap();
        assert_eq!(len(&file), 20 + ZERO_AHEAD);
    }
}
