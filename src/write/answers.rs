//! How much the answers to one forwarded request may hold.
//!
//! A follower reads the leader's answers to a request of forwarded writes whole, up to
//! `MAX_PEER_BODY_BYTES` (256 MiB), and an update's answer is the whole record, up to
//! `MAX_RECORD_BYTES` (16 MiB). So 16 concurrent updates of records near that size,
//! forwarded together, were applied and then answered 504 "outcome unknown" (the answer
//! was over the follower's cap), and a retry failed the same way (found in review).
//!
//! So the leader, before it proposes a request's writes, estimates each one's answer from
//! its own state and proposes them in order until the next would take the answers past
//! [`ANSWER_BUDGET`]; the rest are answered "later" (`ForwardReply::Later`): not proposed,
//! sent again by the follower at once. An update's answer is its record as stored, grown
//! by every earlier write to it in the request and by its own patch (a rename moves the
//! size to the new id); a write under an idempotency key already recorded is answered
//! with the answer stored then, counted at the largest a record may be. The budget is half
//! the cap: an estimate is off by what writes applied between the estimate and the request
//! add to its records. The records are looked up only when the request could reach the
//! budget at all (every update at the largest size), and then without copying them.

use std::collections::HashMap;

use cookie_raft::command::MAX_RECORD_BYTES;
use cookie_raft::Command;

/// What the answers to one forwarded request may hold, by the leader's estimate.
pub const ANSWER_BUDGET: usize = cookie_raft::network::MAX_PEER_BODY_BYTES / 2;

/// An answer's bytes beside the record it carries (version, result, encoding).
const OVERHEAD: usize = 256;

/// What the leader's state says of the records and keys a request names.
pub struct Stored<'a> {
    /// The stored size of each record named (0 for one not stored).
    pub sizes: &'a dyn Fn(&[&str]) -> Vec<usize>,
    /// Whether an idempotency key is recorded: a write under it is answered with the answer
    /// stored then, whose size the record's now does not tell.
    pub replayed: &'a dyn Fn(&str) -> bool,
}

/// The ids whose stored size `cmd`'s answer, or a later one in the request, depends on.
fn named(cmd: &Command) -> Option<&str> {
    match cmd {
        Command::Update { id, .. } | Command::Delete { id, .. } => Some(id),
        Command::Keyed { cmd, .. } => named(cmd),
        _ => None,
    }
}

/// `cmd`'s answer in bytes, at most, as it would be answered alone on top of the whole
/// worst case: every update's record at the largest a record may be.
fn worst(cmd: &Command) -> usize {
    OVERHEAD
        + match cmd {
            Command::Create { id, object } => id.len() + object.len(),
            Command::Update { id, .. } => id.len() + MAX_RECORD_BYTES,
            Command::Keyed { cmd, .. } => worst(cmd),
            Command::Delete { .. } | Command::Register { .. } | Command::Expire { .. } => 0,
        }
}

/// The size each record will have, as the request's writes before the one at hand leave
/// it: an update's answer is its record after every earlier write to it in the request
/// (they go as entries back to back), so each is counted from there, not from the state.
struct Predicted<'a> {
    size: HashMap<&'a str, usize>,
}

impl<'a> Predicted<'a> {
    /// `cmd`'s answer in bytes, at most, and the sizes it leaves.
    fn answer(&mut self, cmd: &'a Command, stored: &Stored<'_>) -> usize {
        OVERHEAD
            + match cmd {
                Command::Create { id, object } => {
                    // Refused when `id` exists: then the answer is smaller, and the record
                    // keeps the size it has.
                    let size = self.size.entry(id).or_insert(0);
                    if *size == 0 {
                        *size = object.len();
                    }
                    id.len() + object.len()
                }
                Command::Update {
                    id,
                    patch,
                    rename_to,
                    ..
                } => {
                    let now = self.size.get(id.as_str()).copied().unwrap_or(0);
                    let after = now.saturating_add(patch.len()).min(MAX_RECORD_BYTES);
                    match rename_to {
                        Some(to) => {
                            self.size.insert(id, 0);
                            self.size.insert(to, after);
                        }
                        None => {
                            self.size.insert(id, after);
                        }
                    }
                    id.len() + after
                }
                Command::Delete { id, .. } => {
                    self.size.insert(id, 0);
                    0
                }
                // A key seen before is answered with what it was answered then: of a record
                // as it was, at most the largest a record may be.
                Command::Keyed { key, cmd, .. } if (stored.replayed)(key) => worst(cmd),
                Command::Keyed { cmd, .. } => self.answer(cmd, stored),
                Command::Register { .. } | Command::Expire { .. } => 0,
            }
    }
}

/// Which of `cmds` to propose now: a prefix of them whose answers fit [`ANSWER_BUDGET`]
/// (the first always), by what `stored` says of the records and keys they name.
pub fn admitted(cmds: &[&Command], stored: &Stored<'_>) -> usize {
    let whole: usize = cmds.iter().map(|c| worst(c)).sum();
    if whole <= ANSWER_BUDGET {
        return cmds.len();
    }
    let mut ids: Vec<&str> = cmds.iter().filter_map(|c| named(c)).collect();
    ids.sort_unstable();
    ids.dedup();
    let sizes = (stored.sizes)(&ids);
    let mut predicted = Predicted {
        size: ids.into_iter().zip(sizes).collect(),
    };
    let mut total = 0usize;
    for (n, cmd) in cmds.iter().enumerate() {
        total = total.saturating_add(predicted.answer(cmd, stored));
        if n > 0 && total > ANSWER_BUDGET {
            return n;
        }
    }
    cmds.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn update(id: &str, patch_bytes: usize) -> Command {
        Command::Update {
            id: id.into(),
            patch: format!(r#"{{"a":"{}"}}"#, "x".repeat(patch_bytes)),
            rename_to: None,
            now: 1,
            if_match: None,
        }
    }

    fn none_replayed(_: &str) -> bool {
        false
    }

    fn admitted_with(cmds: &[Command], sizes: &dyn Fn(&[&str]) -> Vec<usize>) -> usize {
        let refs: Vec<&Command> = cmds.iter().collect();
        admitted(
            &refs,
            &Stored {
                sizes,
                replayed: &none_replayed,
            },
        )
    }

    /// Records of 15 MiB: 8 updates fit 128 MiB of answers, the 9th waits; small records
    /// are never looked up when the worst case fits, and are all admitted when it does not.
    #[test]
    fn a_request_is_admitted_up_to_the_answer_budget() {
        let big = |ids: &[&str]| vec![15 * MIB; ids.len()];
        let small = |ids: &[&str]| vec![100; ids.len()];
        let looked_up = std::cell::Cell::new(0);
        let counted = |ids: &[&str]| {
            looked_up.set(looked_up.get() + ids.len());
            vec![100; ids.len()]
        };
        let updates: Vec<Command> = (0..20).map(|i| update(&format!("r{i}"), 10)).collect();
        assert_eq!(admitted_with(&updates, &big), 8);
        assert_eq!(admitted_with(&updates, &small), 20);
        // Seven updates cannot reach the budget whatever their records: none looked up.
        assert_eq!(admitted_with(&updates[..7], &counted), 7);
        assert_eq!(looked_up.get(), 0);
        assert_eq!(admitted_with(&updates, &counted), 20);
        assert_eq!(looked_up.get(), 20);
        // The first write always goes.
        assert_eq!(admitted_with(&updates[..1], &big), 1);
    }

    /// Writes to one record in one request go as entries back to back, and each answer is
    /// the record after all the earlier ones (found in review): 60 patches of 256 KiB to
    /// one small record answer about 457 MiB, not 15.
    #[test]
    fn each_answer_counts_the_earlier_writes_to_its_record_in_the_request() {
        let small = |ids: &[&str]| vec![1024; ids.len()];
        let grows: Vec<Command> = (0..60).map(|_| update("shared", 256 << 10)).collect();
        let n = admitted_with(&grows, &small);
        // 1 KiB + i x 256 KiB for i = 1..=n stays within 128 MiB up to n = 31.
        assert!((30..=32).contains(&n), "{n} admitted");
        // A create then updates of the record it makes; a rename moves the size along.
        let created = Command::Create {
            id: "new".into(),
            object: "x".repeat(10 * MIB),
        };
        let mut cmds = vec![created];
        cmds.extend((0..20).map(|_| update("new", 10)));
        let absent = |ids: &[&str]| vec![0; ids.len()];
        assert_eq!(admitted_with(&cmds, &absent), 12);
        let renamed = Command::Update {
            id: "big".into(),
            patch: "{}".into(),
            rename_to: Some("moved".into()),
            now: 1,
            if_match: None,
        };
        let mut cmds = vec![renamed];
        cmds.extend((0..20).map(|_| update("moved", 10)));
        let sizes = |ids: &[&str]| {
            ids.iter()
                .map(|id| if *id == "big" { 15 * MIB } else { 0 })
                .collect()
        };
        assert_eq!(admitted_with(&cmds, &sizes), 8);
    }

    /// A keyed write whose key is recorded is answered with the answer stored then: counted
    /// at the largest a record may be, whatever the record is now (found in review: renames
    /// retried with their keys were counted at their source's size, 0).
    #[test]
    fn a_replayed_key_counts_at_the_largest_record() {
        let gone = |ids: &[&str]| vec![0; ids.len()];
        let keyed: Vec<Command> = (0..20)
            .map(|i| {
                Command::keyed(
                    format!("k{i}"),
                    [0; 32],
                    (0, 1),
                    update(&format!("r{i}"), 10),
                )
            })
            .collect();
        let refs: Vec<&Command> = keyed.iter().collect();
        let fresh = Stored {
            sizes: &gone,
            replayed: &none_replayed,
        };
        assert_eq!(admitted(&refs, &fresh), 20);
        let seen = |_: &str| true;
        let replayed = Stored {
            sizes: &gone,
            replayed: &seen,
        };
        assert_eq!(admitted(&refs, &replayed), 7);
    }
}
