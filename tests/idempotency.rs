//! `Idempotency-Key` (api.md section 11) on real processes: a retried write is applied once
//! and answered with its first answer, on whatever node the retry lands; a key reused with
//! a different request is 422; keys expire by log time; bad keys are 400.

// clippy.toml keeps the server's functions to four arguments; test helpers name every knob.
#![allow(clippy::too_many_arguments)]

mod common;

use std::time::Duration;

use common::{metric, send, Cluster, Reply, FAST_RAFT};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

async fn keyed(
    c: &Cluster,
    i: usize,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> Reply {
    let url = format!("{}{path}", c.url(i));
    let mut req = match method {
        "POST" => c.client.post(url),
        "PUT" => c.client.put(url),
        _ => c.client.delete(url),
    }
    .header("idempotency-key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    send(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once_and_answered_as_the_first_time() {
    let c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(WAIT).await;
    let follower = (leader + 1) % 3;
    let body = json!({"cookie": "order-1", "user_id": 7});

    let first = keyed(
        &c,
        follower,
        "POST",
        "/cookies",
        "create-order-1",
        Some(body.clone()),
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.header("idempotency-replayed"), None);
    // The retry, on another node: the same answer, status, body and ETag, marked a replay.
    for node in [leader, (leader + 2) % 3] {
        let again = keyed(
            &c,
            node,
            "POST",
            "/cookies",
            "create-order-1",
            Some(body.clone()),
        )
        .await;
        assert_eq!(again.status, 201, "{}", again.text);
        assert_eq!(again.text, first.text);
        assert_eq!(again.etag(), first.etag());
        assert_eq!(again.header("idempotency-replayed"), Some("true"));
    }
    // Applied once: the record still has the first write's version.
    let now = c.get(leader, "order-1", "linearizable").await;
    assert_eq!(now.etag(), first.etag());

    // A merging PUT retried: merged once, the version moves once.
    let patch = json!({"note": "paid"});
    let put = keyed(
        &c,
        follower,
        "PUT",
        "/cookies/order-1",
        "pay-1",
        Some(patch.clone()),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let again = keyed(&c, leader, "PUT", "/cookies/order-1", "pay-1", Some(patch)).await;
    assert_eq!((again.status, again.etag()), (200, put.etag()));
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(
        c.get(leader, "order-1", "linearizable").await.etag(),
        put.etag()
    );

    // The same key with another request: 422, and nothing changes.
    let other = keyed(
        &c,
        leader,
        "PUT",
        "/cookies/order-1",
        "pay-1",
        Some(json!({"note": "x"})),
    )
    .await;
    assert_eq!(
        (other.status, other.json.clone()),
        (
            422,
            json!({"error": "Idempotency key reused with a different request"})
        )
    );
    let now = c.get(leader, "order-1", "linearizable").await;
    assert_eq!(
        (now.json["note"].clone(), now.etag()),
        (json!("paid"), put.etag())
    );

    // A replayed failure is the first failure: a DELETE with a stale If-Match, retried.
    let url = format!("{}/cookies/order-1", c.url(leader));
    let stale = || {
        c.client
            .delete(&url)
            .header("idempotency-key", "del-1")
            .header("if-match", "\"1\"")
    };
    let first = send(stale()).await;
    assert_eq!(first.status, 412, "{}", first.text);
    let again = send(stale()).await;
    assert_eq!((again.status, again.text.clone()), (412, first.text));
    assert_eq!(again.header("idempotency-replayed"), Some("true"));

    // A DELETE's body is part of the request the key is bound to (api.md section 11),
    // though it changes nothing: the key with another body is 422 (it was replayed).
    let del = |body: &'static str| {
        c.client
            .delete(format!("{}/cookies/gone-1", c.url(follower)))
            .header("idempotency-key", "del-2")
            .body(body)
    };
    let first = send(del("a")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let again = send(del("a")).await;
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    let other = send(del("b")).await;
    assert_eq!(other.status, 422, "{}", other.text);
    // Bad keys: 400 with the message, nothing written.
    for bad in [String::from("has space"), "k".repeat(129)] {
        let r = keyed(
            &c,
            leader,
            "POST",
            "/cookies",
            &bad,
            Some(json!({"cookie": "never", "user_id": 1})),
        )
        .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text);
        assert_eq!(
            r.json["error"],
            "Idempotency-Key must be 1 to 128 visible ASCII characters"
        );
    }
    assert_eq!(c.get(leader, "never", "linearizable").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_by_log_time() {
    let c = Cluster::start(1, &format!("idempotency_retention_secs = 1\n{FAST_RAFT}")).await;
    c.wait_leader(WAIT).await;
    let body = json!({"cookie": "short-lived", "user_id": 1});
    let first = keyed(&c, 0, "POST", "/cookies", "k-expiring", Some(body.clone())).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let again = keyed(&c, 0, "POST", "/cookies", "k-expiring", Some(body.clone())).await;
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Forgotten: the request is applied again, and the record exists now.
    let late = keyed(&c, 0, "POST", "/cookies", "k-expiring", Some(body)).await;
    assert_eq!(late.status, 409, "{}", late.text);
    assert_eq!(late.header("idempotency-replayed"), None);
}

/// The idempotency keys node `i` holds, applied or not yet swept, as its backup's header
/// counts them.
async fn keys_held(c: &Cluster, i: usize) -> u64 {
    let r = send(c.client.get(format!("{}/admin/backup", c.url(i)))).await;
    assert_eq!(r.status, 200, "backup of node {i}");
    let header: Value = r
        .text
        .lines()
        .nth(1)
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no backup header from node {i}"));
    header["idempotency_keys"].as_u64().expect("a key count")
}

/// Keys go once their retention ends even where no later keyed write comes to sweep them:
/// the leader proposes their expiry, and every replica forgets them. On the old code only
/// a keyed write swept due keys, so these stayed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_forgotten_when_their_retention_ends_without_more_keyed_writes() {
    const KEYS: u64 = 20;
    let c = Cluster::start(3, &format!("idempotency_retention_secs = 3\n{FAST_RAFT}")).await;
    let leader = c.wait_leader(WAIT).await;
    let started = std::time::Instant::now();
    for i in 0..KEYS {
        let body = json!({"cookie": format!("job-{i}"), "user_id": 1});
        let r = keyed(
            &c,
            i as usize % 3,
            "POST",
            "/cookies",
            &format!("job-key-{i}"),
            Some(body),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // Held while retained (the count is read well before the first key's retention ends,
    // unless this machine is too slow to tell).
    let held = keys_held(&c, leader).await;
    let counted = metric(&c, leader, "idempotency_keys").await;
    if started.elapsed() < Duration::from_secs(2) {
        assert_eq!(held, KEYS);
        assert_eq!(counted, Some(KEYS), "the idempotency_keys gauge");
    }
    // Plain writes go on meanwhile: they sweep nothing.
    for i in 0..5 {
        let r = c
            .create(
                leader,
                json!({"cookie": format!("plain-{i}"), "user_id": 1}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    for node in 0..3 {
        loop {
            let held = keys_held(&c, node).await;
            if held == 0 {
                assert_eq!(metric(&c, node, "idempotency_keys").await, Some(0));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {node} still holds {held} keys whose retention has ended"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // The records they wrote stay.
    assert_eq!(c.get(leader, "job-0", "linearizable").await.status, 200);
}

/// A keyed write that finds no leader is an unknown outcome (504), never "nothing written"
/// (503): one sent earlier with its key may still commit once a leader is back (found in
/// review: a retry was answered 503 after a 504, and the first attempt applied later).
/// Without a key nothing of it can be pending, and 503 stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_that_finds_no_leader_has_an_unknown_outcome() {
    let mut c = Cluster::start(3, &format!("write_timeout_ms = 2000\n{FAST_RAFT}")).await;
    let leader = c.wait_leader(WAIT).await;
    let alone = (leader + 1) % 3;
    // One voter of three left: no leader can be elected.
    c.kill(leader);
    c.kill((leader + 2) % 3);
    let body = json!({"cookie": "lonely", "user_id": 1});
    let r = keyed(
        &c,
        alone,
        "POST",
        "/cookies",
        "no-leader-1",
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.text);
    let why = r.json["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("No leader available") && why.contains("retry with the same key"),
        "{}",
        r.text
    );
    let r = send(
        c.client
            .post(format!("{}/cookies", c.url(alone)))
            .json(&body),
    )
    .await;
    assert_eq!(
        (r.status, r.json),
        (503, json!({"error": "No leader available"}))
    );
}
