//! How many batches group commit keeps in flight, adapting to the load.
//!
//! With one batch in flight, a write that arrives just after a batch was proposed waits for
//! that batch's whole round (append, replication, fsyncs, apply) before its own starts. A
//! second batch in flight lets it start at once, at the price of a second entry's round:
//! another AppendEntries per follower, another fsync per node, and smaller batches.
//!
//! Which wins depends on the load. With few writes outstanding the batches are small
//! anyway, the round's latency is the whole cost, and pipelining saves it: on the 2-core
//! bench machine two in flight gave +4-8% writes/s at 16 clients, with a lower p99. With
//! many outstanding, each batch is large, the per-entry cost decides, and splitting them
//! spends CPU the load needs: -3% at 64 clients (docs/benchmarks.md).
//!
//! The load is the number of writes outstanding here (waiting for a batch, or in one in
//! flight), about the number of clients writing at once: it does not depend on how the
//! writes are batched, so the choice does not feed back on itself. It is averaged over
//! batches, and the mode changes with hysteresis (pipelining starts below `pipeline_below`
//! and stops above one and a half times that). Deciding on each batch's own count was
//! measured worse than either fixed mode near the threshold (-10% at 64 clients with the
//! threshold at 48): just after a batch is proposed few writes are waiting, so a tiny
//! second batch went, and the next large one waited behind it.
//!
//! The load stands in for CPU: many writes outstanding mean large batches, where a second
//! entry's round costs CPU the load needs. That holds where CPU is short, not where rounds
//! are bound by latency (nodes on separate machines; more cores than the load uses): there
//! a second batch in flight also saves openraft 0.9 a round trip per batch (it keeps one
//! AppendEntries in flight per follower, and with nothing else to send it spends one on the
//! commit index alone). So the window also pipelines at any load while at least
//! `pipeline_idle_above` of the node's CPU sat idle ([`cookie_raft::idle`]), and stops once less
//! than half that does (hysteresis again: pipelining itself uses some of what was idle).
//! With nodes 1 ms apart (the bench's `BENCH_PEER_DELAY_MS=1`) that gave +15-17% writes/s
//! at 64 clients and +8-10% at 256; on the 2-core bench machine those loads leave 4-21% of
//! the CPU idle, below the default 40%, and nothing changes there (docs/benchmarks.md).
use std::sync::Arc;

use cookie_raft::idle::{IdleSampler, SpareCpu};
use tokio::sync::watch;

/// Batches in flight, and the commands they carry.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    batches: usize,
    commands: usize,
}

/// The slots for batches in flight.
pub struct Window {
    state: Arc<watch::Sender<InFlight>>,
    max: usize,
    pipeline_below: usize,
    /// The writes outstanding, averaged over the last batches (about eight).
    load: f64,
    /// Whether more than one batch may be in flight now, by the load.
    pipelining: bool,
    /// The idle share of CPU at which pipelining goes at any load (1.0 or more: never).
    idle_above: f64,
    /// Whether enough CPU sat idle at the last samples to pipeline whatever the load; shared
    /// with whoever else acts on it (the replication streams, [`Window::publish_spare`]).
    spare: SpareCpu,
    /// Where the idle share comes from ([`Window::sample_idle`]); `None` where the kernel's
    /// counters cannot be read.
    sampler: Option<IdleSampler>,
}

impl Window {
    /// At most `max` batches in flight (at least one), more than one only while fewer than
    /// `pipeline_below` writes are outstanding.
    pub fn new(max: usize, pipeline_below: usize) -> Self {
        Window {
            state: Arc::new(watch::Sender::new(InFlight::default())),
            max: max.max(1),
            pipeline_below,
            load: 0.0,
            pipelining: pipeline_below > 0,
            idle_above: 1.0,
            spare: SpareCpu::default(),
            sampler: IdleSampler::for_this_process(),
        }
    }

    /// Tell `to` whether the node has CPU to spare, each time it is measured ([`Window::idle`]).
    pub fn publish_spare(mut self, to: SpareCpu) -> Self {
        to.set(self.spare.get());
        self.spare = to;
        self
    }

    /// Also keep more than one batch in flight, at any load, while at least `share` of the
    /// node's CPU sits idle (see [`Window::idle`]); `share >= 1` never does.
    pub fn pipeline_when_idle(mut self, share: f64) -> Self {
        self.idle_above = share;
        self
    }

    /// Sample the node's idle CPU (a new sample at most every half second) and note it
    /// ([`Window::idle`]): the share, when a new sample was taken.
    pub fn sample_idle(&mut self) -> Option<f64> {
        let share = self.sampler.as_mut()?.poll(std::time::Instant::now())?;
        self.idle(share);
        Some(share)
    }

    /// Note the idle share of the node's CPU over the last sample: pipelining by it starts
    /// at `idle_above` and stops below half that.
    pub fn idle(&mut self, share: f64) {
        if self.idle_above >= 1.0 {
            return;
        }
        let spare = self.spare.get();
        if !spare && share >= self.idle_above {
            self.spare.set(true);
        } else if spare && share < self.idle_above / 2.0 {
            self.spare.set(false);
        }
    }

    /// Note that the batch in `slot` was proposed with `commands`, while `waiting` commands
    /// still wait, and decide the mode for the next.
    pub fn proposed(&mut self, slot: &mut Slot, commands: usize, waiting: usize) {
        slot.carry(commands);
        let now = self.state.borrow().commands + waiting;
        self.load += (now as f64 - self.load) / 8.0;
        let below = self.pipeline_below as f64;
        if self.pipelining && self.load > below * 1.5 {
            self.pipelining = false;
        } else if !self.pipelining && self.load < below {
            self.pipelining = true;
        }
    }

    /// Whether the node counts as having CPU to spare now (see [`Window::idle`]).
    pub fn spare(&self) -> bool {
        self.spare.get()
    }

    /// How many batches may be in flight now.
    pub fn allowed(&self) -> usize {
        if self.pipelining || self.spare.get() {
            self.max
        } else {
            1
        }
    }

    /// A free slot, once there is one: only a batch that ends can free one.
    pub async fn slot(&self) -> Slot {
        let mut rx = self.state.subscribe();
        loop {
            if rx.borrow_and_update().batches < self.allowed() {
                break;
            }
            // The sender lives in `self`: this never ends with an error while we wait.
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.state.send_modify(|s| s.batches += 1);
        Slot {
            state: self.state.clone(),
            commands: 0,
        }
    }
}

/// One batch's place in the window, given back when dropped (its batch applied, failed or
/// abandoned).
pub struct Slot {
    state: Arc<watch::Sender<InFlight>>,
    commands: usize,
}

impl Slot {
    /// The batch in this slot carries `n` commands (counted as outstanding until it ends).
    fn carry(&mut self, n: usize) {
        let before = self.commands;
        self.state
            .send_modify(|s| s.commands = s.commands - before + n);
        self.commands = n;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let n = self.commands;
        self.state.send_modify(|s| {
            s.batches -= 1;
            s.commands -= n;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn free(window: &Window) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(50), window.slot())
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_light_load_gets_a_second_batch_in_flight_and_a_heavy_one_waits() {
        let mut window = Window::new(2, 24);
        let mut first = free(&window).await.expect("the first slot is always free");
        window.proposed(&mut first, 10, 0);
        let mut second = free(&window)
            .await
            .expect("a second batch under light load");
        window.proposed(&mut second, 5, 0);
        assert!(free(&window).await.is_none(), "at most max in flight");
        drop(second);
        // The load grows to ~60 outstanding: not at once (one busy batch is no trend), but
        // after a few batches, one at a time.
        let mut batches = 0;
        while window.pipelining && batches < 50 {
            let mut s = free(&window).await.expect("still pipelining");
            window.proposed(&mut s, 40, 10);
            drop(s);
            batches += 1;
        }
        assert!(
            (3..50).contains(&batches),
            "{batches} batches to notice the load"
        );
        assert!(free(&window).await.is_none(), "one batch in flight already");
        // The first batch ends: its slot frees whatever the load.
        let waiter = tokio::spawn(async move {
            let slot = window.slot().await;
            (window, slot)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "waits while a batch is in flight");
        drop(first);
        let (mut window, mut slot) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the batch ended")
            .unwrap();
        // Load between the thresholds (24..36) keeps the mode; below 24 pipelining resumes.
        for _ in 0..32 {
            window.proposed(&mut slot, 30, 0);
            slot.carry(0);
        }
        assert!(!window.pipelining, "30 outstanding: no change");
        for _ in 0..32 {
            window.proposed(&mut slot, 8, 0);
            slot.carry(0);
        }
        assert!(window.pipelining, "8 outstanding: pipelining again");
        drop(slot);
        assert_eq!(*window.state.borrow(), InFlight::default());
    }

    #[tokio::test]
    async fn pipeline_below_zero_keeps_one_batch_in_flight() {
        let mut window = Window::new(4, 0);
        let mut first = free(&window).await.unwrap();
        window.proposed(&mut first, 1, 0);
        assert!(free(&window).await.is_none());
    }

    /// Under a heavy load, CPU to spare brings the second batch back, and it stays until
    /// less than half the threshold is idle.
    #[tokio::test]
    async fn idle_cpu_pipelines_at_any_load_with_hysteresis() {
        let mut window = Window::new(2, 24).pipeline_when_idle(0.4);
        for _ in 0..50 {
            let mut s = free(&window).await.unwrap();
            window.proposed(&mut s, 200, 100);
        }
        assert_eq!(window.allowed(), 1, "a heavy load, no CPU signal yet");
        window.idle(0.3);
        assert_eq!(window.allowed(), 1, "not enough idle");
        window.idle(0.45);
        assert_eq!(window.allowed(), 2, "CPU to spare");
        let mut first = free(&window).await.unwrap();
        window.proposed(&mut first, 200, 100);
        let _second = free(&window).await.expect("a second batch in flight");
        window.idle(0.25);
        assert_eq!(
            window.allowed(),
            2,
            "above half the threshold: still pipelining"
        );
        window.idle(0.15);
        assert_eq!(window.allowed(), 1, "CPU short again");
    }

    /// The replication streams act on the same measure, with the same hysteresis: they send
    /// a further append at once exactly while the window pipelines by CPU.
    #[test]
    fn the_spare_cpu_is_told_with_its_hysteresis() {
        let spare = SpareCpu::default();
        spare.set(true);
        let mut window = Window::new(2, 24)
            .pipeline_when_idle(0.4)
            .publish_spare(spare.clone());
        assert!(!spare.get(), "not measured yet: not spare");
        for (share, want) in [(0.3, false), (0.45, true), (0.25, true), (0.15, false)] {
            window.idle(share);
            assert_eq!(spare.get(), want, "idle {share}");
        }
        // Never spare with the CPU signal off, whatever the share.
        let off = SpareCpu::default();
        let mut window = Window::new(2, 0)
            .pipeline_when_idle(1.0)
            .publish_spare(off.clone());
        window.idle(1.0);
        assert!(!off.get());
    }

    #[tokio::test]
    async fn an_idle_threshold_of_one_never_pipelines_by_cpu() {
        let mut window = Window::new(2, 0).pipeline_when_idle(1.0);
        window.idle(1.0);
        assert_eq!(window.allowed(), 1);
    }
}
