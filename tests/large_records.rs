//! Records near the 16-MiB bound, written through a follower (found in review): the answers
//! to one forwarded request are whole records, and a follower reads them up to 256 MiB. Twenty
//! concurrent updates of 15-MiB records, forwarded together, were applied and answered 504
//! "outcome unknown" (19 of 20), and a retry failed the same way. The leader now proposes a
//! request's writes only up to an answer budget and answers the rest "later", which the
//! follower sends again at once (`src/write/answers.rs`).
//!
//! A test of its own: it writes about 300 MiB to each of three nodes.

mod common;

use std::time::Duration;

use common::{metric, Cluster, FAST_RAFT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_large_records_through_a_follower_are_all_answered() {
    const RECORDS: usize = 20;
    let c = Cluster::start(
        3,
        &format!("max_body_bytes = 16777216\nwrite_timeout_ms = 30000\n{FAST_RAFT}"),
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let follower = (leader + 1) % 3;
    let pad = "x".repeat(15 << 20);
    for i in 0..RECORDS {
        let r = c
            .create(
                leader,
                json!({"cookie": format!("big{i}"), "user_id": 1, "pad": pad}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let ids: Vec<String> = (0..RECORDS).map(|i| format!("big{i}")).collect();
    let updates = ids
        .iter()
        .enumerate()
        .map(|(i, id)| c.put(follower, id, json!({"n": i}), None));
    let replies = futures::future::join_all(updates).await;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(
            r.status,
            200,
            "update of big{i}: {}",
            &r.text[..r.text.len().min(300)]
        );
        assert_eq!(r.json["n"], i, "update of big{i} answered another record");
        assert_eq!(r.json["pad"].as_str().map(str::len), Some(15 << 20));
    }
    // They went in more than one request: the budget held some back.
    let later = metric(&c, follower, "forward_errors_total{kind=\"answer_budget\"}").await;
    assert!(later.is_some_and(|n| n > 0), "{later:?}");
}
