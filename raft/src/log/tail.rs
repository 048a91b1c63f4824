//! The log's newest entries, kept decoded in memory for the readers that want them soon
//! after they are appended: each follower's replication stream on a leader, and the apply
//! on every node. Without it each of those read every entry back from the WAL (a `pread`
//! and a decode per entry, up to three times an entry on a leader of three).
//!
//! The tail is always a suffix of the WAL: it is changed only under the WAL's lock, in the
//! same step as the WAL (an append pushes, a truncation cuts, a purge drops its front), so a
//! read that finds an index here finds what the WAL holds there. A push that does not follow
//! on from the newest entry (the first after an install, whose log starts past a gap) starts
//! the tail afresh. Its size is bounded by an estimate of the entries' memory; the oldest go
//! first, and a reader behind the tail reads the WAL as before.

use std::collections::VecDeque;

use openraft::{Entry, EntryPayload};

use crate::command::Command;
use crate::types::TypeConfig;

/// What one entry is counted as: its encoded bytes (the strings' contents, about what
/// the decoded entry allocates) plus the entry's and each command's fixed part (twice for
/// a keyed command, whose write is boxed inside it).
pub(super) fn cost(entry: &Entry<TypeConfig>, encoded: usize) -> usize {
    let cmds: usize = match &entry.payload {
        EntryPayload::Normal(req) => req
            .cmds
            .iter()
            .map(|c| match c {
                Command::Keyed { .. } => 2,
                _ => 1,
            })
            .sum(),
        _ => 0,
    };
    encoded + std::mem::size_of::<Entry<TypeConfig>>() + cmds * std::mem::size_of::<Command>()
}

/// The newest entries, in index order, each with its [`cost`].
pub(super) struct Tail {
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    /// The sum of the entries' costs.
    bytes: usize,
    /// The most `bytes` may be; 0 keeps nothing.
    cap: usize,
}

impl Tail {
    pub(super) fn new(cap: usize) -> Self {
        Tail {
            entries: VecDeque::new(),
            bytes: 0,
            cap,
        }
    }

    /// The index of the oldest entry held.
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    /// The index after the newest entry held.
    fn next(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }

    /// Entries just appended to the WAL, in order, with their costs. Ones that do not follow
    /// on from the newest held replace the whole tail.
    pub(super) fn push(&mut self, appended: Vec<(Entry<TypeConfig>, usize)>) {
        if self.cap == 0 {
            return;
        }
        let Some((head, _)) = appended.first() else {
            return;
        };
        if self.next().is_some_and(|n| n != head.log_id.index) {
            self.clear();
        }
        for (entry, cost) in appended {
            self.bytes += cost;
            self.entries.push_back((entry, cost));
        }
        while self.bytes > self.cap {
            match self.entries.pop_front() {
                Some((_, c)) => self.bytes -= c,
                None => break,
            }
        }
    }

    /// Forget `index` and everything after it (a truncation).
    pub(super) fn truncate(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(e, _)| e.log_id.index >= index)
        {
            if let Some((_, c)) = self.entries.pop_back() {
                self.bytes -= c;
            }
        }
    }

    /// Forget `index` and everything before it (a purge). The entries are handed back
    /// rather than freed here: a snapshot's purge takes most of the tail, and freeing its
    /// tens of thousands of strings took 2-5 ms under the WAL's lock, on openraft's core
    /// (which waits for the purge, and with it every write); the caller frees them on the
    /// blocking pool.
    pub(super) fn purge(&mut self, index: u64) -> VecDeque<(Entry<TypeConfig>, usize)> {
        let n = match self.first() {
            Some(first) if first <= index => usize::try_from(index - first + 1)
                .map_or(self.entries.len(), |n| n.min(self.entries.len())),
            _ => 0,
        };
        let kept = self.entries.split_off(n);
        let gone = std::mem::replace(&mut self.entries, kept);
        self.bytes -= gone.iter().map(|(_, c)| c).sum::<usize>();
        gone
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries of `from..to` that the tail holds, and the index they start at: those
    /// from `max(from, first)` to the newest held or `to`. `from..` that index is for the
    /// WAL. `None` where the tail holds none of the range.
    pub(super) fn get(&self, from: u64, to: u64) -> Option<(u64, Vec<Entry<TypeConfig>>)> {
        let (first, next) = (self.first()?, self.next()?);
        let start = from.max(first);
        let end = to.min(next);
        if start >= end {
            return None;
        }
        let skip = (start - first) as usize;
        let take = (end - start) as usize;
        let out = self
            .entries
            .iter()
            .skip(skip)
            .take(take)
            .map(|(e, _)| e.clone())
            .collect();
        Some((start, out))
    }

    #[cfg(test)]
    fn indexes(&self) -> Vec<u64> {
        self.entries.iter().map(|(e, _)| e.log_id.index).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId};

    fn entry(index: u64) -> (Entry<TypeConfig>, usize) {
        let e = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        };
        (e, 100)
    }

    fn run(from: u64, to: u64) -> Vec<(Entry<TypeConfig>, usize)> {
        (from..to).map(entry).collect()
    }

    fn got(t: &Tail, from: u64, to: u64) -> Option<(u64, Vec<u64>)> {
        t.get(from, to)
            .map(|(s, es)| (s, es.iter().map(|e| e.log_id.index).collect()))
    }

    #[test]
    fn the_oldest_entries_go_past_the_cap() {
        let mut t = Tail::new(500);
        t.push(run(1, 4));
        t.push(run(4, 8));
        assert_eq!(t.indexes(), [3, 4, 5, 6, 7]);
        assert_eq!(t.bytes, 500);
        // Nothing is kept with a cap of 0.
        let mut none = Tail::new(0);
        none.push(run(1, 4));
        assert_eq!(got(&none, 1, 4), None);
    }

    #[test]
    fn a_read_gets_what_the_tail_holds_and_where_the_wal_must_go_on() {
        let mut t = Tail::new(10_000);
        t.push(run(5, 10));
        assert_eq!(got(&t, 6, 8), Some((6, vec![6, 7])));
        // From before the tail: the WAL serves 1..5.
        assert_eq!(got(&t, 1, 8), Some((5, vec![5, 6, 7])));
        // Up to the end, however far `to` says.
        assert_eq!(got(&t, 8, u64::MAX), Some((8, vec![8, 9])));
        assert_eq!(got(&t, 1, 5), None);
        assert_eq!(got(&t, 10, 20), None);
        assert_eq!(got(&t, 7, 7), None);
    }

    #[test]
    fn a_truncation_cuts_and_the_next_append_follows_on() {
        let mut t = Tail::new(10_000);
        t.push(run(1, 10));
        t.truncate(6);
        assert_eq!(t.indexes(), [1, 2, 3, 4, 5]);
        assert_eq!(t.bytes, 500);
        t.push(run(6, 8));
        assert_eq!(t.indexes(), [1, 2, 3, 4, 5, 6, 7]);
        // Past the newest held, or before the oldest: a truncation from below empties it.
        t.truncate(20);
        assert_eq!(t.indexes().len(), 7);
        t.truncate(0);
        assert!(t.indexes().is_empty());
        assert_eq!(t.bytes, 0);
    }

    #[test]
    fn a_purge_drops_the_front_and_a_gap_starts_afresh() {
        let mut t = Tail::new(10_000);
        t.push(run(1, 10));
        assert_eq!(t.purge(4).len(), 4);
        assert_eq!(t.indexes(), [5, 6, 7, 8, 9]);
        assert_eq!(t.bytes, 500);
        assert_eq!(t.purge(2).len(), 0);
        // An install: the log goes on past a gap.
        assert_eq!(t.purge(100).len(), 5);
        assert_eq!(t.bytes, 0);
        t.push(run(101, 103));
        assert_eq!(t.indexes(), [101, 102]);
        // An append that does not follow on replaces what is held.
        t.push(run(200, 201));
        assert_eq!(t.indexes(), [200]);
        assert_eq!(t.bytes, 100);
    }
}
