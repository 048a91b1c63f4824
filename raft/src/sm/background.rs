//! Background work at a lower CPU priority than the node's requests, and a way back to the
//! normal one for work that requests end up waiting for ([`Prompt`]).
//!
//! Snapshot builds run on a thread of their own, at a lower CPU priority than the node's work.
//!
//! A build reads and compresses the whole state (about a second per 400,000 records), and
//! every node builds at the same log index, so on a small machine the three builds took the
//! CPU from client writes at once: a second or two of p99 in the hundreds of milliseconds
//! (docs/benchmarks.md, "The write tail"). At nice 10 the scheduler gives requests the CPU
//! first and the build the rest. The thread is its own, not the blocking pool's: a thread's
//! nice value cannot be lowered again without privileges, and a pool thread would carry it
//! into the next `apply`.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use tokio::sync::oneshot;

/// The nice value of a build thread (0 is normal, 19 the lowest priority).
const NICE: libc::c_int = 10;

/// Run `work` on a new thread named `name` at a lower priority; its result.
pub(super) async fn run<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("the build thread panicked"))
}

/// Best effort: a node that may not change its priority builds at the normal one.
pub(super) fn lower_priority() {
    // On Linux, PRIO_PROCESS with 0 names the calling thread, not the process.
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority reads no memory of ours; it changes this thread's nice value.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
    }
}

/// Work handed to a [`Prompt`] thread.
type Job = Box<dyn FnOnce() + Send>;

/// A thread at the priority of the thread that started it, for work that a low-priority
/// thread must get done soon: it hands the work over and waits. A thread that has lowered
/// its own priority cannot raise it again without privileges, and one it starts inherits the
/// lower one, so this thread is started before, at the normal priority.
///
/// Why: `apply` waits for the state-flush thread (nice 10) once the layers it has not yet
/// written reach their memory bound. On a node whose CPU is saturated, the request threads
/// leave that thread almost nothing, and every write stalls behind it: on one CPU at 256
/// clients, writes of a layer took 1.3 s and `apply` waited 165 ms on average, up to half
/// a second (docs/benchmarks.md). A low-priority thread whose work others wait for is a
/// priority inversion; the flush thread hands its writes here while it is behind.
pub(super) struct Prompt {
    jobs: mpsc::Sender<Job>,
}

impl Prompt {
    /// Start the thread, named `name`; it ends once the `Prompt` is dropped.
    pub(super) fn start(name: &str) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for job in rx {
                    // A job that panics drops its answer: the waiter sees it, not this thread.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            })?;
        Ok(Prompt { jobs })
    }

    /// Run `work` on the thread and wait for its result; here, if the thread is gone.
    /// Panics if `work` panicked, as if it had run here.
    pub(super) fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
        });
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            job();
        }
        rx.recv().expect("the prompt thread's work panicked")
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn work_runs_at_a_lower_priority_and_the_caller_is_untouched() {
        let nice = super::run("test-build", || {
            // SAFETY: getpriority reads no memory of ours.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        })
        .await
        .unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(nice, super::NICE);
        }
        // SAFETY: as above.
        let ours = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_ne!(ours, super::NICE);
    }

    /// The nice value of the calling thread.
    fn nice() -> libc::c_int {
        // SAFETY: getpriority reads no memory of ours.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn a_low_priority_thread_gets_work_done_at_the_starting_threads_priority() {
        let prompt = std::sync::Arc::new(super::Prompt::start("test-prompt").unwrap());
        let ours = nice();
        let (low, prompted) = std::thread::spawn({
            let prompt = prompt.clone();
            move || {
                super::lower_priority();
                (nice(), prompt.run(nice))
            }
        })
        .join()
        .unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(low, super::NICE);
        }
        assert_eq!(prompted, ours);
    }

    #[test]
    fn work_that_panics_panics_in_the_waiter_and_the_thread_goes_on() {
        let prompt = std::sync::Arc::new(super::Prompt::start("test-prompt").unwrap());
        let p = prompt.clone();
        let waited = std::thread::spawn(move || p.run(|| panic!("boom"))).join();
        assert!(waited.is_err());
        assert_eq!(prompt.run(|| 7), 7);
    }
}
