//! Confirmation rounds: concurrent linearizable reads share one leadership confirmation.
//!
//! A confirmation round (a quorum heartbeat on the leader, or one read-index RPC from a
//! follower to the leader) serves every read that was waiting when the round *started*.
//! Reads that arrive while a round is running wait for the next one: a read never uses a
//! confirmation that began before it arrived, which is what makes the shared answer valid
//! for it (the read index then covers every write acknowledged before the read began).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::tasks::Tasks;

type Confirm<T> = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = T> + Send>> + Send + Sync>;

/// Handle to one round-running task. Cloning shares it.
pub struct Rounds<T> {
    tx: mpsc::UnboundedSender<oneshot::Sender<T>>,
}

impl<T> Clone for Rounds<T> {
    fn clone(&self) -> Self {
        Rounds {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Clone + Send + 'static> Rounds<T> {
    /// Start the task in `tasks`; `confirm` runs one round and yields its answer for all
    /// its readers.
    pub fn spawn<F, Fut>(name: &'static str, tasks: &Tasks, confirm: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let confirm: Confirm<T> = Arc::new(move || Box::pin(confirm()));
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<T>>();
        tasks.spawn(name, async move {
            while let Some(first) = rx.recv().await {
                // Everyone queued now arrived before this round starts.
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let answer = confirm().await;
                for w in waiters {
                    let _ = w.send(answer.clone());
                }
            }
        });
        Rounds { tx }
    }

    /// Join the next round that starts after this call; `None` if the task is gone.
    pub async fn join(&self) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::{BoxFuture, FutureExt, Shared};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::time::Instant;

    /// Rounds record when they started; each read records when it arrived and which round
    /// answered it.
    #[derive(Default)]
    struct RoundLog {
        starts: Mutex<Vec<Instant>>,
        count: AtomicU64,
    }

    impl RoundLog {
        async fn run(self: Arc<Self>) -> u64 {
            let id = self.count.fetch_add(1, Ordering::SeqCst);
            self.starts.lock().unwrap().push(Instant::now());
            tokio::time::sleep(Duration::from_millis(5)).await; // the heartbeat round
            id
        }
    }

    /// The property: every read was answered by a round that started after it arrived.
    fn check(rounds: &RoundLog, reads: &[(Instant, u64)]) -> Result<(), String> {
        let starts = rounds.starts.lock().unwrap();
        for (arrived, round) in reads {
            if starts[*round as usize] < *arrived {
                return Err(format!(
                    "round {round} started before a read it answered arrived"
                ));
            }
        }
        Ok(())
    }

    async fn drive<J, F>(join: J) -> Vec<(Instant, u64)>
    where
        J: Fn() -> F + Clone + Send + 'static,
        F: Future<Output = u64> + Send,
    {
        let tasks: Vec<_> = (0..400u64)
            .map(|i| {
                let join = join.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(i * 37 % 20_000)).await;
                    let arrived = Instant::now();
                    (arrived, join().await)
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_never_uses_a_round_that_started_before_it_arrived() {
        let rounds = Arc::new(RoundLog::default());
        let r = rounds.clone();
        // The task set owns the round runner: it must outlive the test's reads.
        let tasks = Tasks::new();
        let b = super::Rounds::spawn("test", &tasks, move || r.clone().run());
        let reads = drive(move || {
            let b = b.clone();
            async move { b.join().await.unwrap() }
        })
        .await;
        check(&rounds, &reads).unwrap();
        let n = rounds.count.load(Ordering::SeqCst);
        assert!(n < 400, "{n} rounds for 400 reads: nothing was shared");
    }

    /// The check can fail: a round runner that lets a read join a round already running (the
    /// bug sharing invites) is caught.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joining_a_running_round_is_caught() {
        let rounds = Arc::new(RoundLog::default());
        let running: Arc<Mutex<Option<Shared<BoxFuture<'static, u64>>>>> = Arc::default();
        let r = rounds.clone();
        let reads = drive(move || {
            let r = r.clone();
            let running = running.clone();
            async move {
                let round = {
                    let mut slot = running.lock().unwrap();
                    match slot.as_ref() {
                        Some(f) if f.peek().is_none() => f.clone(),
                        _ => {
                            let f = r.run().boxed().shared();
                            *slot = Some(f.clone());
                            f
                        }
                    }
                };
                round.await
            }
        })
        .await;
        assert!(check(&rounds, &reads).is_err());
    }
}
