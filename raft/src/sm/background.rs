//! Snapshot builds on a thread of their own, at a lower CPU priority than the node's work.
//!
//! A build reads and compresses the whole state (about a second per 400,000 records), and
//! every node builds at the same log index, so on a small machine the three builds took the
//! CPU from client writes at once: a second or two of p99 in the hundreds of milliseconds
//! (docs/benchmarks.md, "The write tail"). At nice 10 the scheduler gives requests the CPU
//! first and the build the rest. The thread is its own, not the blocking pool's: a thread's
//! nice value cannot be lowered again without privileges, and a pool thread would carry it
//! into the next `apply`.

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
}
