//! Client tokens and roles (api.md section 12), on real processes.
// clippy.toml keeps the server's functions to four arguments; a test request names them all.
#![allow(clippy::too_many_arguments)]

mod common;

use std::time::Duration;

use common::{send, Cluster, FAST_RAFT};
use serde_json::{json, Value};

const TOKENS: &str = r#"
cluster_secret = "peer-secret"
client_tokens = [
  { token = "reader-token", role = "read" },
  { token = "writer-token", role = "write" },
  { token = "admin-token", role = "admin" },
]
"#;

async fn call(
    c: &Cluster,
    i: usize,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = c.client.request(method, format!("{}{path}", c.url(i)));
    if path == "/cookies" {
        req = req.json(&json!({"cookie": format!("c-{}", token.unwrap_or("none")), "user_id": 1}));
    } else if path.starts_with("/cookies/") {
        req = req.json(&json!({"seen": true}));
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = send(req).await;
    (r.status, r.json)
}

#[tokio::test]
async fn each_role_may_do_what_the_contract_says_and_nothing_more() {
    let c = Cluster::start(1, TOKENS).await;
    let unauthorized = json!({"error": "Unauthorized"});
    let forbidden = json!({"error": "Forbidden"});

    // Probes stay open; everything else needs a known token.
    assert_eq!(call(&c, 0, "GET", "/health", None).await.0, 200);
    assert_eq!(call(&c, 0, "GET", "/ready", None).await.0, 200);
    for (method, path) in [
        ("GET", "/cookies"),
        ("POST", "/cookies"),
        ("GET", "/metrics"),
        ("GET", "/cluster"),
    ] {
        assert_eq!(
            call(&c, 0, method, path, None).await,
            (401, unauthorized.clone()),
            "{method} {path}"
        );
        assert_eq!(
            call(&c, 0, method, path, Some("made-up")).await,
            (401, unauthorized.clone())
        );
    }
    let r = send(c.client.get(format!("{}/cookies", c.url(0)))).await;
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    // A path no route matches is 404 to everyone, token or not: the check runs on routed
    // requests only. A routed path with a method it lacks is checked like the rest, then
    // 405 to a token that may read.
    for token in [None, Some("made-up"), Some("reader-token")] {
        assert_eq!(
            call(&c, 0, "GET", "/no-such-route", token).await,
            (404, json!({"error": "Not Found"})),
            "{token:?}"
        );
    }
    assert_eq!(
        call(&c, 0, "PATCH", "/cookies", None).await,
        (401, unauthorized.clone())
    );
    assert_eq!(
        call(&c, 0, "PATCH", "/cookies", Some("admin-token")).await,
        (405, json!({"error": "Method Not Allowed"}))
    );
    // A safe method no route serves is 405 to a reader too, not 403 (it was 403).
    for (method, path) in [
        ("HEAD", "/cookies"),
        ("OPTIONS", "/cookies/a"),
        ("HEAD", "/cache"),
    ] {
        assert_eq!(
            call(&c, 0, method, path, Some("reader-token")).await.0,
            405,
            "{method} {path}"
        );
    }

    // read: GETs only.
    assert_eq!(
        call(&c, 0, "GET", "/cookies", Some("reader-token")).await.0,
        200
    );
    assert_eq!(
        call(&c, 0, "GET", "/metrics", Some("reader-token")).await.0,
        200
    );
    assert_eq!(
        call(&c, 0, "POST", "/cookies", Some("reader-token")).await,
        (403, forbidden.clone())
    );
    // write: also POST, PUT, DELETE on /cookies; not the admin endpoints.
    assert_eq!(
        call(&c, 0, "POST", "/cookies", Some("writer-token"))
            .await
            .0,
        201
    );
    assert_eq!(
        call(
            &c,
            0,
            "PUT",
            "/cookies/c-writer-token",
            Some("writer-token")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(&c, 0, "DELETE", "/cache", Some("writer-token")).await,
        (403, forbidden.clone())
    );
    assert_eq!(
        call(&c, 0, "GET", "/cluster", Some("writer-token")).await,
        (403, forbidden.clone())
    );
    // admin: everything.
    assert_eq!(
        call(&c, 0, "DELETE", "/cache", Some("admin-token")).await.0,
        200
    );
    assert_eq!(
        call(&c, 0, "GET", "/cluster", Some("admin-token")).await.0,
        200
    );
    assert_eq!(
        call(
            &c,
            0,
            "DELETE",
            "/cookies/c-writer-token",
            Some("admin-token")
        )
        .await
        .0,
        200
    );

    // A refused request changed nothing: the reader's create never happened.
    let (status, list) = call(&c, 0, "GET", "/cookies", Some("admin-token")).await;
    assert_eq!((status, list), (200, json!({"cookies": []})));
}

/// With tokens on a cluster, the nodes still find each other (bootstrap and the health
/// monitor probe `/cluster` and `/cache` on each other's peer listener, with the cluster
/// secret) and a follower's write reaches the leader.
#[tokio::test]
async fn a_cluster_with_tokens_forms_and_forwards() {
    let c = Cluster::start(3, &format!("{TOKENS}\n{FAST_RAFT}")).await;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let follower = (leader + 1) % 3;
    assert_eq!(
        call(&c, follower, "POST", "/cookies", Some("writer-token"))
            .await
            .0,
        201
    );
    let (status, list) = call(&c, leader, "GET", "/cookies", Some("reader-token")).await;
    assert_eq!(
        (status, list["cookies"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    // `/cache` gathers every peer's statistics through their guarded endpoint.
    let (status, cache) = call(&c, follower, "GET", "/cache", Some("reader-token")).await;
    assert_eq!(status, 200, "{cache}");
    let peers = cache["node_statuses"].as_object().unwrap();
    assert_eq!(peers.len(), 2, "{cache}");
    assert!(peers.values().all(|p| p["status"] == "ok"), "{cache}");
}

#[tokio::test]
async fn tokens_on_a_cluster_without_a_cluster_secret_refuse_to_start() {
    let text = r#"
node_id = 1
listen = "127.0.0.1:1"
nodes = [{ id = 1, addr = "127.0.0.1:1" }, { id = 2, addr = "127.0.0.1:2" }]
client_tokens = [{ token = "t", role = "admin" }]
"#;
    let err = cookie_crud::config::Config::parse(text).unwrap_err();
    assert!(err.to_string().contains("cluster_secret"), "{err}");
}
