//! A queue that hands out everything waiting as one group: what group commit (a group is
//! one batch, one log entry) and write forwarding (a group is one request to the leader)
//! share.
//!
//! Both keep a single task that, once it may send another group, takes whatever is
//! waiting. Some waiting items cannot join the group being formed (a second write to the
//! same record; a write for another leader address): they keep their place, ahead of
//! anything newer, for the next group.

use std::collections::VecDeque;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What to do with the next waiting item.
pub enum Verdict {
    /// Into this group.
    Take,
    /// Not into this group: it waits for the next one, in order.
    Defer,
    /// The group is full: stop before this item, which stays first in line.
    Stop,
    /// No longer wanted (its client gave up, its deadline passed): out of the queue, never
    /// sent, handed back with the dropped ones.
    Drop,
}

/// One group, and the items dropped while it was formed.
pub struct Gathered<T> {
    pub group: Vec<T>,
    pub dropped: Vec<T>,
}

/// A queue that yields groups. How many groups may be outstanding is the caller's to bound
/// (group commit's window, the forwarder's slots): it takes a slot first, then the next
/// group, so waiting for the slot is what lets the group fill up.
pub struct Queue<T> {
    rx: mpsc::Receiver<T>,
    carry: VecDeque<T>,
}

impl<T> Queue<T> {
    pub fn new(rx: mpsc::Receiver<T>) -> Self {
        Queue {
            rx,
            carry: VecDeque::new(),
        }
    }

    /// Wait for at least one item; `false` when every sender is gone and none is left.
    pub async fn ready(&mut self) -> bool {
        if self.carry.is_empty() {
            match self.rx.recv().await {
                Some(x) => self.carry.push_back(x),
                None => return false,
            }
        }
        true
    }

    /// Items waiting now: set aside from earlier groups, or in the channel.
    pub fn waiting(&self) -> usize {
        self.carry.len() + self.rx.len()
    }

    /// Wait until at least `want` items wait (taken from the channel, in order) or until
    /// `until`, whichever comes first.
    pub async fn fill(&mut self, want: usize, until: Instant) {
        while self.carry.len() < want {
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Some(x)) => self.carry.push_back(x),
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// The next group (see [`gather`]), once at least one item waits; `None` when every
    /// sender is gone.
    pub async fn next(
        &mut self,
        max: usize,
        judge: impl FnMut(&T, &[T]) -> Verdict,
    ) -> Option<Gathered<T>> {
        if !self.ready().await {
            return None;
        }
        Some(gather(&mut self.carry, &mut self.rx, max, judge))
    }
}

/// Take items from `carry` (left over from earlier groups), then from `rx`, without waiting,
/// while `judge` takes them and the group is below `max` items.
pub fn gather<T>(
    carry: &mut VecDeque<T>,
    rx: &mut mpsc::Receiver<T>,
    max: usize,
    mut judge: impl FnMut(&T, &[T]) -> Verdict,
) -> Gathered<T> {
    let mut group = Vec::new();
    let mut dropped = Vec::new();
    let mut deferred = VecDeque::new();
    while group.len() < max {
        let next = match carry.pop_front() {
            Some(x) => x,
            None => match rx.try_recv() {
                Ok(x) => x,
                Err(_) => break,
            },
        };
        match judge(&next, &group) {
            Verdict::Take => group.push(next),
            Verdict::Defer => deferred.push_back(next),
            Verdict::Drop => dropped.push(next),
            Verdict::Stop => {
                carry.push_front(next);
                break;
            }
        }
    }
    deferred.append(carry);
    *carry = deferred;
    Gathered { group, dropped }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fill_waits_for_enough_items_or_until_the_deadline() {
        let (tx, rx) = mpsc::channel(16);
        let mut q = Queue::new(rx);
        tx.send(1).await.unwrap();
        assert!(q.ready().await);
        assert_eq!(q.waiting(), 1);
        let sender = tokio::spawn(async move {
            for i in 2..=3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                tx.send(i).await.unwrap();
            }
            tx
        });
        let start = Instant::now();
        q.fill(3, start + Duration::from_secs(1)).await;
        assert_eq!(q.waiting(), 3, "returns once three wait");
        assert!(start.elapsed() < Duration::from_secs(1));
        let tx = sender.await.unwrap();
        let start = Instant::now();
        q.fill(5, start + Duration::from_millis(10)).await;
        assert_eq!(q.waiting(), 3, "nothing more came");
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        let g = q.next(10, |_, _| Verdict::Take).await.unwrap();
        assert_eq!(g.group, [1, 2, 3], "in order");
        drop(tx);
        assert!(!q.ready().await, "every sender gone");
    }

    #[tokio::test]
    async fn deferred_items_keep_their_place_ahead_of_newer_ones() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 1..=6 {
            tx.send(i).await.unwrap();
        }
        let mut carry = VecDeque::from([0]);
        // Odd numbers wait for the next group; 4 is no longer wanted; 6 ends this one.
        let g = gather(&mut carry, &mut rx, 10, |x, _| match x {
            6 => Verdict::Stop,
            4 => Verdict::Drop,
            x if x % 2 == 1 => Verdict::Defer,
            _ => Verdict::Take,
        });
        assert_eq!((g.group, g.dropped), (vec![0, 2], vec![4]));
        assert_eq!(Vec::from(carry.clone()), [1, 3, 5, 6]);
        let g = gather(&mut carry, &mut rx, 2, |_, _| Verdict::Take);
        assert_eq!(g.group, [1, 3]);
        assert_eq!(Vec::from(carry), [5, 6]);
    }
}
