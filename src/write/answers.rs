//! How much the answers to one forwarded request may hold.
//!
//! A follower reads the leader's answers to a request of forwarded writes whole, up to
//! `MAX_PEER_BODY_BYTES` (256 MiB), and an update's answer is the whole record, up to
//! `MAX_RECORD_BYTES` (16 MiB). So 16 concurrent updates of records near that size,
//! forwarded together, were applied and then answered 504 "outcome unknown" (the answer
//! was over the follower's cap), and a retry failed the same way (found in review).
//!
//! So the leader, before it proposes a request's writes, estimates each one's answer from
//! its own state (an update's record as stored now, plus the patch) and proposes them in
//! order until the next would take the answers past [`ANSWER_BUDGET`]; the rest are
//! answered "later" (`ForwardReply::Later`): not proposed, sent again by the follower at
//! once in a request of their own. The budget is half the cap: an estimate is off by what
//! writes applied between the estimate and the write itself added to its record. The
//! records are looked up only when the request could reach the budget at all.

use cookie_raft::command::MAX_RECORD_BYTES;
use cookie_raft::Command;

/// What the answers to one forwarded request may hold, by the leader's estimate.
pub const ANSWER_BUDGET: usize = cookie_raft::network::MAX_PEER_BODY_BYTES / 2;

/// An answer's bytes beside the record it carries (version, result, encoding).
const OVERHEAD: usize = 256;

/// The id of the record whose size `cmd`'s answer depends on: an update's.
fn updated(cmd: &Command) -> Option<&str> {
    match cmd {
        Command::Update { id, .. } => Some(id),
        Command::Keyed { cmd, .. } => updated(cmd),
        _ => None,
    }
}

/// `cmd`'s answer in bytes, at most; `stored` is the size of the record it updates.
fn estimate(cmd: &Command, stored: usize) -> usize {
    OVERHEAD
        + match cmd {
            Command::Create { id, object } => id.len() + object.len(),
            Command::Update { id, patch, .. } => {
                id.len() + stored.saturating_add(patch.len()).min(MAX_RECORD_BYTES)
            }
            Command::Keyed { cmd, .. } => estimate(cmd, stored),
            Command::Delete { .. } | Command::Register { .. } | Command::Expire { .. } => 0,
        }
}

/// Which of `cmds` to propose now: a prefix of them whose answers fit [`ANSWER_BUDGET`]
/// (the first always). `sizes` gives the stored sizes of records, by id.
pub fn admitted(cmds: &[&Command], sizes: &dyn Fn(&[&str]) -> Vec<usize>) -> usize {
    let worst: usize = cmds.iter().map(|c| estimate(c, MAX_RECORD_BYTES)).sum();
    if worst <= ANSWER_BUDGET {
        return cmds.len();
    }
    let ids: Vec<&str> = cmds.iter().filter_map(|c| updated(c)).collect();
    let mut stored = sizes(&ids).into_iter();
    let mut total = 0usize;
    for (n, cmd) in cmds.iter().enumerate() {
        let size = match updated(cmd) {
            Some(_) => stored.next().unwrap_or(MAX_RECORD_BYTES),
            None => 0,
        };
        total = total.saturating_add(estimate(cmd, size));
        if n > 0 && total > ANSWER_BUDGET {
            return n;
        }
    }
    cmds.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: &str, patch_bytes: usize) -> Command {
        Command::Update {
            id: id.into(),
            patch: format!(r#"{{"a":"{}"}}"#, "x".repeat(patch_bytes)),
            rename_to: None,
            now: 1,
            if_match: None,
        }
    }

    /// Records of 15 MiB: 8 updates fit 128 MiB of answers, the 9th waits; small records
    /// are never looked up at all when the worst case fits, and are all admitted when it
    /// does not.
    #[test]
    fn a_request_is_admitted_up_to_the_answer_budget() {
        let big = |ids: &[&str]| vec![15 << 20; ids.len()];
        let small = |ids: &[&str]| vec![100; ids.len()];
        let looked_up = std::cell::Cell::new(0);
        let counted = |ids: &[&str]| {
            looked_up.set(looked_up.get() + ids.len());
            vec![100; ids.len()]
        };
        let updates: Vec<Command> = (0..20).map(|i| update(&format!("r{i}"), 10)).collect();
        let refs: Vec<&Command> = updates.iter().collect();
        assert_eq!(admitted(&refs, &big), 8);
        assert_eq!(admitted(&refs, &small), 20);
        // Seven updates cannot reach the budget whatever their records: none looked up.
        assert_eq!(admitted(&refs[..7], &counted), 7);
        assert_eq!(looked_up.get(), 0);
        assert_eq!(admitted(&refs, &counted), 20);
        assert_eq!(looked_up.get(), 20);
        // The first write always goes, even alone over the budget's share.
        assert_eq!(admitted(&refs[..1], &big), 1);
        // Creates and deletes need no lookup; a keyed update counts as its update.
        let keyed = Command::keyed("k".into(), [0; 32], (0, 1), update("r0", 10));
        let create = Command::Create {
            id: "c".into(),
            object: "{}".into(),
        };
        let mix = [&create, &keyed, refs[1]];
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |ids: &[&str]| {
            seen.borrow_mut()
                .extend(ids.iter().map(|s| (*s).to_owned()));
            vec![100; ids.len()]
        };
        let many: Vec<&Command> = mix.iter().copied().cycle().take(30).collect();
        assert_eq!(admitted(&many, &record), 30);
        assert_eq!(seen.borrow().len(), 20);
        assert!(seen.borrow().iter().all(|id| id == "r0" || id == "r1"));
    }
}
