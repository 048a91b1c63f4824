//! The order of inbound appends. A leader with `raft.appends_in_flight` above 1 sends a
//! follower several AppendEntries at once, each on a connection of its own, so one can
//! reach this node before the one sent ahead of it. Handed to openraft at once it would be
//! refused (its `prev` is not here yet) and the leader would send it again after the first
//! one's answer: a round lost. So such an append waits a moment for its predecessor
//! (`EARLY_HOLD`). The lane also counts appends with entries that arrive while another
//! is being answered: how much of the leader's pipelining reaches this node; and the
//! entries appends carry that this node's log already held (sent twice).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cookie_raft::{Raft, TypeConfig};
use openraft::raft::AppendEntriesRequest;

use crate::metrics::Metrics;

/// How long an early append is held for the one sent ahead of it. An overtaking append is
/// ahead by the time a thread takes to wake, well under this; a follower that is behind
/// (not an overtaking) pays it once per probe.
const EARLY_HOLD: Duration = Duration::from_millis(5);

/// How far past this node's log an append's `prev` may be and still be taken for one that
/// overtook its predecessor: the most rounds in flight, of the default payload's 256
/// entries. Past it the follower is behind, and the leader's probe gets its conflict at once.
const EARLY_WINDOW: u64 = crate::config::MAX_APPENDS_IN_FLIGHT * 256;

/// The index an append waits for before it goes to openraft, if it looks early: it
/// carries entries and its `prev` lies just past this node's last log index. A heartbeat
/// never waits (it carries the matching log id, which is here).
fn early(req: &AppendEntriesRequest<TypeConfig>, last: Option<u64>) -> Option<u64> {
    let prev = req.prev_log_id?.index;
    if req.entries.is_empty() {
        return None;
    }
    let next = last.map_or(0, |l| l + 1);
    (prev >= next && prev - next < EARLY_WINDOW).then_some(prev)
}

/// How many of the append's entries lie at indexes this node's log (last index `last`)
/// has reached: sent again. Entries come in index order.
fn already_held(req: &AppendEntriesRequest<TypeConfig>, last: Option<u64>) -> u64 {
    let Some(last) = last else { return 0 };
    req.entries.partition_point(|e| e.log_id.index <= last) as u64
}

/// Wait, at most [`EARLY_HOLD`], until this node's log reaches `index` (openraft's metrics
/// count an entry once it is accepted, before it is flushed).
async fn wait_for_log(raft: &Raft, index: u64) -> bool {
    let mut metrics = raft.metrics();
    let reached = metrics.wait_for(|m| m.last_log_index >= Some(index));
    let in_time = tokio::time::timeout(EARLY_HOLD, reached).await;
    matches!(in_time, Ok(Ok(_)))
}

/// This node's inbound appends.
#[derive(Default)]
pub struct AppendLane {
    answering: AtomicUsize,
}

/// An append with entries being answered; dropped with its answer (or its handler).
pub struct Answering<'a>(Option<&'a AppendLane>);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if let Some(lane) = self.0 {
            lane.answering.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl AppendLane {
    /// Take in an append: count it if it carries entries while another that does is
    /// being answered (heartbeats go beside a round whatever the setting, so they are not
    /// counted), and hold it while it looks early (see `early`). It goes to openraft
    /// after this returns.
    pub async fn arrive<'a>(
        &'a self,
        req: &AppendEntriesRequest<TypeConfig>,
        raft: &Raft,
        metrics: &Metrics,
    ) -> Answering<'a> {
        let answering = if req.entries.is_empty() {
            Answering(None)
        } else {
            if self.answering.fetch_add(1, Ordering::Relaxed) > 0 {
                metrics.append_overlapped.inc();
            }
            Answering(Some(self))
        };
        // Read apart: the metrics' guard must not live across the wait.
        let last = raft.metrics().borrow().last_log_index;
        let held = already_held(req, last);
        metrics.append_entries(req.entries.len() as u64 - held, held);
        if let Some(prev) = early(req, last) {
            let in_order = wait_for_log(raft, prev).await;
            metrics.append_early(if in_order { "in_order" } else { "gave_up" });
        }
        answering
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;

    fn append(prev: Option<u64>, entries: u64) -> AppendEntriesRequest<TypeConfig> {
        let id = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
        let first = prev.map_or(1, |p| p + 1);
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: prev.map(id),
            leader_commit: None,
            entries: (first..first + entries)
                .map(|i| Entry {
                    log_id: id(i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
        }
    }

    #[test]
    fn only_an_append_just_past_the_log_waits() {
        // Its prev is here (or is the log's start): it goes at once.
        assert_eq!(early(&append(Some(10), 3), Some(10)), None);
        assert_eq!(early(&append(Some(4), 3), Some(10)), None);
        assert_eq!(early(&append(None, 3), None), None);
        // Its prev is just past the log: the round before it is still on its way.
        assert_eq!(early(&append(Some(11), 3), Some(10)), Some(11));
        assert_eq!(early(&append(Some(0), 3), None), Some(0));
        assert_eq!(
            early(&append(Some(10 + EARLY_WINDOW), 3), Some(10)),
            Some(10 + EARLY_WINDOW)
        );
        // Too far past: this node is behind, and the leader's probe is answered at once.
        assert_eq!(early(&append(Some(11 + EARLY_WINDOW), 3), Some(10)), None);
        // A heartbeat never waits.
        assert_eq!(early(&append(Some(11), 0), Some(10)), None);
    }

    #[test]
    fn entries_at_indexes_the_log_reached_count_as_already_held() {
        // Entries 5..=7 against a log at 10: all sent again; at 6: two of them.
        assert_eq!(already_held(&append(Some(4), 3), Some(10)), 3);
        assert_eq!(already_held(&append(Some(4), 3), Some(6)), 2);
        assert_eq!(already_held(&append(Some(10), 3), Some(10)), 0);
        // An empty log holds none; a heartbeat carries none.
        assert_eq!(already_held(&append(None, 3), None), 0);
        assert_eq!(already_held(&append(Some(10), 0), Some(10)), 0);
    }
}
