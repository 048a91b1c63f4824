//! The write path's decisions as tables, in the manner of toydb's test scripts: each line
//! is something the writer can meet, then `=>` and what it must make of it. The outcomes
//! are built for real (openraft's own error types, a real elapsed timeout), so no process
//! and no cluster is needed.

use cookie_raft::{CmdResult, Response};
use openraft::error::{ChangeMembershipError, ClientWriteError, EmptyMembership, ForwardToLeader};
use openraft::raft::ClientWriteResponse;
use openraft::{CommittedLeaderId, LogId};

use super::group_commit::{batch_outcome, settle, Answer, LocalError};
use super::*;

const SCRIPT: &str = r#"
# A command offered to this node's group commit.
local applied                 => done
local not-leader              => retry
local unknown                 => unknown: timed out waiting for commit
local busy                    => refused: too many writes waiting
local expired                 => refused: timed out before it was proposed

# The same refusals for a write sent with an Idempotency-Key: a request sent earlier with
# its key may still be applied, so the outcome is unknown (api.md section 6), never "not
# applied".
keyed busy                    => unknown: too many writes waiting; this request was not proposed, but one sent earlier with its Idempotency-Key may still be applied: retry with the same key
keyed expired                 => unknown: timed out before it was proposed; this request was not proposed, but one sent earlier with its Idempotency-Key may still be applied: retry with the same key
keyed not-applied             => unknown: too many writes waiting; this request was not proposed, but one sent earlier with its Idempotency-Key may still be applied: retry with the same key
keyed unknown                 => unknown: timed out waiting for commit
keyed no-room                 => no room: the leader's disk is full

# A command forwarded to the leader; [label] is what forward_errors_total counts.
forward applied               => done
forward not-leader            => retry [not_leader]
forward unknown               => unknown: leadership lost [outcome_unknown]
forward not-sent              => retry [not_sent]
forward maybe-sent            => unknown: forwarding to the leader failed: reset [maybe_sent]
forward not-applied           => refused: too many writes waiting [not_applied]
forward no-room               => no room: the leader's disk is full [no_room]
# Held back by the leader's answer budget (write/answers.rs): not proposed, sent again.
forward later                 => again: the answers fill one reply [answer_budget]

# openraft's answer for a batch of two commands, as each command sees it. A truncated
# entry answers ForwardToLeader, exactly as "refused before proposing" does, and may still
# be committed by a later leader: it is never retried (issue 12). Group commit checks
# leadership just before proposing, so a write offered to a follower is still retried.
raft two-results              => each: Deleted, NotFound
raft one-result               => unknown: result count mismatch
raft forward-to-leader        => unknown: leadership changed after the write was proposed
raft truncated                => unknown: leadership changed after the write was proposed
raft membership-error         => unknown: new membership can not be empty
raft stopped                  => unknown: raft stopped before answering

# A submitter waiting for its command's answer.
wait answered                 => done
wait dropped                  => unknown: the node shut down
wait timeout                  => unknown: timed out waiting for commit
"#;

fn render(a: &Attempt) -> String {
    match a {
        Attempt::Done(_) => "done".into(),
        Attempt::Retry => "retry".into(),
        Attempt::Again(e) => format!("again: {e}"),
        Attempt::Unknown(e) => format!("unknown: {e}"),
        Attempt::Refused(e) => format!("refused: {e}"),
        Attempt::NoRoom(e) => format!("no room: {e}"),
    }
}

fn response(results: Vec<CmdResult>) -> Answer {
    Ok(ClientWriteResponse {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 7),
        data: Response { results },
        membership: None,
    })
}

async fn elapsed() -> tokio::time::error::Elapsed {
    tokio::time::timeout(Duration::ZERO, std::future::pending::<()>())
        .await
        .unwrap_err()
}

async fn run(input: &str) -> String {
    let (kind, case) = input.split_once(' ').expect("kind and case");
    match (kind, case) {
        ("local", c) => render(&Attempt::local(match c {
            "applied" => Ok(CmdResult::Deleted),
            "not-leader" => Err(LocalError::NotLeader),
            "unknown" => Err(LocalError::Unknown("timed out waiting for commit".into())),
            "busy" => Err(LocalError::Busy),
            "expired" => Err(LocalError::Expired),
            other => panic!("unknown case {other}"),
        })),
        ("keyed", c) => render(
            &match c {
                "busy" => Attempt::local(Err(LocalError::Busy)),
                "expired" => Attempt::local(Err(LocalError::Expired)),
                "not-applied" => {
                    Attempt::forwarded(Ok(ForwardReply::NotApplied(
                        "too many writes waiting".into(),
                    )))
                    .0
                }
                "unknown" => Attempt::local(Err(LocalError::Unknown(
                    "timed out waiting for commit".into(),
                ))),
                "no-room" => Attempt::NoRoom("the leader's disk is full".into()),
                other => panic!("unknown case {other}"),
            }
            .keyed(true),
        ),
        ("forward", c) => {
            let (attempt, label) = Attempt::forwarded(match c {
                "applied" => Ok(ForwardReply::Applied(CmdResult::Deleted)),
                "not-leader" => Ok(ForwardReply::NotLeader),
                "unknown" => Ok(ForwardReply::Unknown("leadership lost".into())),
                "not-sent" => Err(PeerError::NotSent("refused".into())),
                "maybe-sent" => Err(PeerError::MaybeSent("reset".into())),
                "not-applied" => Ok(ForwardReply::NotApplied("too many writes waiting".into())),
                "no-room" => Ok(ForwardReply::NoRoom("the leader's disk is full".into())),
                "later" => Ok(ForwardReply::Later("the answers fill one reply".into())),
                other => panic!("unknown case {other}"),
            });
            match label {
                Some(l) => format!("{} [{l}]", render(&attempt)),
                None => render(&attempt),
            }
        }
        ("raft", c) => {
            let answer = match c {
                "two-results" => Some(response(vec![CmdResult::Deleted, CmdResult::NotFound])),
                "one-result" => Some(response(vec![CmdResult::Deleted])),
                "forward-to-leader" => {
                    Some(Err(ForwardToLeader::new(2, Default::default()).into()))
                }
                "truncated" => Some(Err(ClientWriteError::ForwardToLeader(
                    ForwardToLeader::empty(),
                ))),
                "membership-error" => Some(Err(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::EmptyMembership(EmptyMembership {}),
                ))),
                "stopped" => None,
                other => panic!("unknown case {other}"),
            };
            match batch_outcome(2, answer) {
                Ok(results) => format!("each: {results:?}").replace(['[', ']'], ""),
                Err(LocalError::NotLeader) => "not-leader".into(),
                Err(e) => format!("unknown: {e}"),
            }
        }
        ("wait", c) => {
            let waited = match c {
                "answered" => Ok(Ok(Ok(CmdResult::Deleted))),
                "dropped" => Ok(Err(())),
                "timeout" => Err(elapsed().await),
                other => panic!("unknown case {other}"),
            };
            render(&Attempt::local(settle(waited)))
        }
        (other, _) => panic!("unknown kind {other}"),
    }
}

#[tokio::test]
async fn the_writer_decides_as_the_script_says() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for line in SCRIPT.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (input, want) = line.split_once("=>").expect("input => expected");
        let got = run(input.trim()).await;
        cases += 1;
        if got != want.trim() {
            failures.push(format!(
                "{}\n   want: {}\n    got: {got}",
                input.trim(),
                want.trim()
            ));
        }
    }
    assert!(cases >= 20, "the script ran only {cases} cases");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
