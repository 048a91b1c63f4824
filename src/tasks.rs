//! The node's background tasks, owned in one place so that shutdown stops every one of
//! them.
//!
//! Each long-lived task (group commit, forwarding, read rounds, bootstrap, the health
//! monitor, the cache sweep, the election counter, install-quiet releases) is spawned
//! through [`Tasks::spawn`]: it runs until it ends by itself or until [`Tasks::shutdown`]
//! cancels the shared token, and shutdown then waits for all of them (with a bound), so a
//! stopped node leaves nothing running behind it and tests can check that it stopped.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Handle to the node's task set. Cloning shares it; dropping the last handle aborts every
/// task still running (a `JoinSet` does), so the owner keeps one for the node's life.
#[derive(Clone, Default)]
pub struct Tasks {
    token: CancellationToken,
    set: Arc<Mutex<JoinSet<&'static str>>>,
}

/// What [`Tasks::shutdown`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// Tasks that ended within the bound.
    pub stopped: usize,
    /// Tasks still running when the bound passed, then aborted.
    pub aborted: usize,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `fut` as the task `name` until it ends or shutdown begins. A task spawned after
    /// shutdown began never starts.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        // Finished tasks are reaped here, so short-lived ones do not pile up in the set.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            tokio::select! {
                // Checked first, so a task spawned after shutdown began never runs.
                biased;
                _ = token.cancelled() => {}
                _ = fut => {}
            }
            name
        });
    }

    /// A token that is cancelled when shutdown begins (for loops that want to finish a step
    /// before stopping).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Cancel every task and wait up to `bound` for all of them to end; the rest are
    /// aborted and named.
    pub async fn shutdown(&self, bound: Duration) -> Stopped {
        self.token.cancel();
        let mut set = std::mem::take(&mut *self.set.lock().unwrap_or_else(|e| e.into_inner()));
        let mut stopped = 0;
        let drained = tokio::time::timeout(bound, async {
            while let Some(done) = set.join_next().await {
                if let Ok(name) = done {
                    tracing::debug!(task = name, "stopped");
                    stopped += 1;
                }
            }
        })
        .await;
        let mut aborted = 0;
        if drained.is_err() {
            while let Some(done) = set.try_join_next() {
                stopped += usize::from(done.is_ok());
            }
            aborted = set.len();
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
        Stopped { stopped, aborted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_stops_every_task_and_refuses_new_ones() {
        let tasks = Tasks::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        for _ in 0..3 {
            let tx = tx.clone();
            // Forever, unless cancelled: holds a sender so the channel stays open.
            tasks.spawn("forever", async move {
                let _tx = tx;
                std::future::pending::<()>().await
            });
        }
        tasks.spawn("quick", async {});
        drop(tx);
        let out = tasks.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            out,
            Stopped {
                stopped: 4,
                aborted: 0
            }
        );
        // Every sender was dropped with its task: nothing is left running.
        assert!(rx.recv().await.is_none());
        // After shutdown a new task is cancelled before it runs.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tasks.spawn("late", async move {
            let _ = tx.send(()).await;
        });
        tokio::task::yield_now().await;
        assert!(rx.recv().await.is_none());
    }
}
