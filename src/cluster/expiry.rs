//! The leader forgets idempotency keys whose retention has ended.
//!
//! A keyed write sweeps up to 64 due keys itself as it is applied, which keeps up with a
//! steady stream of keyed writes. But where keyed writes stop coming (a batch job that
//! retried safely, then ended; clients that moved to plain writes), their keys would stay
//! for good: rows in `sm.redb` and in every snapshot, on every replica. So, as etcd's
//! leader revokes expired leases, the leader here looks now and then for keys that are due
//! and proposes a [`Command::Expire`] with its clock as the log time; every replica applies
//! it alike. Each entry forgets a bounded number, and a backlog goes as a paced series of
//! them, so an expiry never holds `apply` (or the writes behind it) for long.

use std::time::Duration;

use cookie_raft::{CmdResult, Command, Request, StoreReader};

use super::Cluster;
use crate::clock::unix_now_ms;

/// How often the leader looks for keys that are due. A key may thus outlive its retention
/// by this much (and a keyed write's own sweep often forgets it sooner).
const EVERY: Duration = Duration::from_secs(5);
/// Keys one entry forgets: a few milliseconds of `apply`.
const PER_ENTRY: u32 = 1024;
/// The pause between the entries of a backlog: at most ~50,000 keys a second go, so the
/// writes that share the log with them keep most of it.
const BETWEEN: Duration = Duration::from_millis(20);
/// How long one proposal may take before the next look.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run until the node stops: on the leader, forget what is due.
pub async fn run(cluster: Cluster, reader: StoreReader) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        while cluster.is_leader() && due(&reader) {
            if expire(&cluster).await < u64::from(PER_ENTRY) {
                break;
            }
            tokio::time::sleep(BETWEEN).await;
        }
    }
}

/// Whether this node's applied state holds keys due now.
fn due(reader: &StoreReader) -> bool {
    reader.keys_due(unix_now_ms()).unwrap_or_else(|e| {
        tracing::warn!("could not look for expired idempotency keys: {e}");
        false
    })
}

/// Propose one expiry: how many keys it forgot (0 when it failed).
async fn expire(cluster: &Cluster) -> u64 {
    let cmd = Command::Expire {
        now_ms: unix_now_ms(),
        max: PER_ENTRY,
    };
    let proposed = tokio::time::timeout(
        PROPOSE_TIMEOUT,
        cluster.raft.client_write(Request { cmds: vec![cmd] }),
    )
    .await;
    match proposed {
        Ok(Ok(reply)) => match reply.data.results.first() {
            Some(CmdResult::Expired(n)) => {
                tracing::debug!(keys = n, "expired idempotency keys");
                *n
            }
            other => {
                tracing::warn!("an expiry of idempotency keys answered {other:?}");
                0
            }
        },
        Ok(Err(e)) => {
            tracing::debug!("expiry not committed: {e}");
            0
        }
        Err(_) => {
            tracing::debug!("expiry timed out");
            0
        }
    }
}
