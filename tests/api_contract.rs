//! The HTTP contract of `../shared/docs/api.md` sections 2, 5, 7, 8 and 10, checked with
//! exact status codes, bodies and headers against a real node process.

mod common;

use common::{send, Cluster, FAST_RAFT};
use serde_json::{json, Value};

fn error(msg: &str) -> Value {
    json!({ "error": msg })
}

async fn one_node() -> Cluster {
    Cluster::start(1, FAST_RAFT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_round_trip_with_exact_replies() {
    let c = one_node().await;
    let u = c.url(0);

    // Empty store.
    let r = send(c.client.get(format!("{u}/cookies"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json, json!({"cookies": []}));
    assert_eq!(r.header("content-type"), Some("application/json"));

    // Create: 201 with the request fields plus created/last_used (client values overwritten).
    let r = c
        .create(
            0,
            json!({"cookie": "abc", "user_id": 1001, "created": "1", "extra": {"a": [1, 2]}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let created = r.json["created"].as_str().unwrap().to_owned();
    assert_ne!(created, "1");
    assert!(created.parse::<u64>().unwrap() > 1_700_000_000);
    assert_eq!(r.json["last_used"], r.json["created"]);
    assert_eq!(r.json["extra"], json!({"a": [1, 2]}));
    let v1 = r.etag();

    // Read back exactly, with version, cache and applied-index headers.
    let r = c.get(0, "abc", "linearizable").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["cookie"], "abc");
    assert_eq!(r.json["user_id"], 1001);
    assert_eq!(r.etag(), v1);
    assert_eq!(r.header("x-cache"), Some("MISS"));
    assert!(
        r.header("x-raft-applied-index")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= v1
    );
    let r = c.get(0, "abc", "local").await;
    assert_eq!(r.header("x-cache"), Some("HIT"));

    // Duplicate id: 409.
    let r = c.create(0, json!({"cookie": "abc", "user_id": 1})).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (409, error("Cookie already exists"))
    );

    // PUT merges: overwrite, add, keep; last_used set by the server; created kept.
    let r = c
        .put(
            0,
            "abc",
            json!({"user_id": 7, "new": true, "last_used": "0"}),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["user_id"], 7);
    assert_eq!(r.json["new"], true);
    assert_eq!(r.json["extra"], json!({"a": [1, 2]}));
    assert_eq!(r.json["created"].as_str(), Some(created.as_str()));
    assert_ne!(r.json["last_used"], "0");
    let v2 = r.etag();
    assert!(v2 > v1);

    // PUT may set created explicitly.
    let r = c.put(0, "abc", json!({"created": "5"}), None).await;
    assert_eq!(r.json["created"], "5");

    // PUT on a missing id: 404.
    let r = c.put(0, "missing", json!({"a": 1}), None).await;
    assert_eq!((r.status, r.json.clone()), (404, error("Cookie not found")));

    // GET missing: 404.
    let r = c.get(0, "missing", "linearizable").await;
    assert_eq!((r.status, r.json.clone()), (404, error("Cookie not found")));

    // DELETE: 200 with the message, also when absent.
    for _ in 0..2 {
        let r = c.delete(0, "abc").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json, json!({"message": "Cookie deleted successfully"}));
    }
    assert_eq!(c.get(0, "abc", "linearizable").await.status, 404);
}

/// A record's numbers come back as the client wrote them, through a create, an update that
/// merges into it, a read and a list: an integer past 64 bits is not rounded to a float, nor
/// a decimal to the nearest double (each once came back altered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_come_back_as_they_were_sent() {
    let c = one_node().await;
    let u = c.url(0);
    let numbers = [
        ("big", "123456789012345678901234567890"),
        ("negative_big", "-98765432109876543210987654321"),
        ("u64_max", "18446744073709551615"),
        ("decimal", "0.1000000000000000055511151231257827"),
        ("money", "19.90"),
        ("exponent", "6.02214076e+23"),
    ];
    let fields = |names: &[(&str, &str)]| -> String {
        names
            .iter()
            .map(|(k, v)| format!(r#""{k}":{v}"#))
            .collect::<Vec<_>>()
            .join(",")
    };
    // Nested as well as at the top: a body with a nested object takes the general path.
    let body = format!(
        r#"{{"cookie":"n","user_id":1,{},"nested":{{{}}}}}"#,
        fields(&numbers[..3]),
        fields(&numbers[3..])
    );
    let sent_text = |text: &str| {
        for (name, number) in numbers {
            assert!(
                text.contains(&format!(r#""{name}":{number}"#)),
                "{name} altered: {text}"
            );
        }
    };
    // A body sent as its text, not through a serde_json value of the test's own.
    let raw = |method: &str, path: &str, body: String| {
        send(
            c.client
                .request(method.parse().unwrap(), format!("{u}{path}"))
                .header("content-type", "application/json")
                .body(body),
        )
    };
    let r = raw("POST", "/cookies", body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    sent_text(&r.text);
    let patch = r#"{"note":"merged","more":340282366920938463463374607431768211456}"#;
    let r = raw("PUT", "/cookies/n", patch.into()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    sent_text(&r.text);
    for text in [
        send(c.client.get(format!("{u}/cookies/n"))).await.text,
        send(c.client.get(format!("{u}/cookies"))).await.text,
    ] {
        sent_text(&text);
        assert!(
            text.contains(r#""more":340282366920938463463374607431768211456"#),
            "{text}"
        );
    }
    // A user id is an integer of any size, as the original (Erlang) took it, and keeps its
    // text: one past 64 bits was refused as not a positive integer.
    let big = "123456789012345678901234567890";
    let r = raw(
        "POST",
        "/cookies",
        format!(r#"{{"cookie":"big_user","user_id":{big}}}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = raw("PUT", "/cookies/n", format!(r#"{{"user_id":{big}0}}"#)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.contains(&format!(r#""user_id":{big}0"#)),
        "{}",
        r.text
    );
    let text = send(c.client.get(format!("{u}/cookies/big_user")))
        .await
        .text;
    assert!(text.contains(&format!(r#""user_id":{big}"#)), "{text}");
    // The keys serde_json reads as its own markers are refused, flat or nested, on a create
    // and on an update: a flat one was stored as sent and failed every backup's check, a
    // nested one was stored as a number.
    for (method, path, body) in [
        (
            "POST",
            "/cookies",
            r#"{"$serde_json::private::Number":"5","cookie":"m","user_id":1}"#,
        ),
        (
            "POST",
            "/cookies",
            r#"{"cookie":"m","user_id":1,"x":{"$serde_json::private::Number":"12.50"}}"#,
        ),
        (
            "POST",
            "/cookies",
            r#"{"cookie":"m","user_id":1,"x":[{"$serde_json::private::RawValue":"1"}]}"#,
        ),
        (
            "PUT",
            "/cookies/n",
            r#"{"\u0024serde_json::private::Number":"5"}"#,
        ),
    ] {
        let r = raw(method, path, body.into()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(
            r.json["error"]
                .as_str()
                .unwrap()
                .ends_with("is a reserved field name"),
            "{body}: {}",
            r.text
        );
    }
    assert_eq!(c.get(0, "m", "linearizable").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_newest_created_first_ties_by_id() {
    let c = one_node().await;
    for id in ["b", "a", "c"] {
        assert_eq!(
            c.create(0, json!({"cookie": id, "user_id": 1}))
                .await
                .status,
            201
        );
    }
    // Give explicit created values through PUT to control the order.
    c.put(0, "a", json!({"created": "100"}), None).await;
    c.put(0, "b", json!({"created": "300"}), None).await;
    c.put(0, "c", json!({"created": "100"}), None).await;
    let ids: Vec<String> = c
        .list(0, "linearizable")
        .await
        .iter()
        .map(|v| v["cookie"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["b", "a", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_validation_messages_first_failure_wins() {
    let c = one_node().await;
    let u = c.url(0);
    let post = |ct: Option<&str>, body: &str| {
        let mut req = c.client.post(format!("{u}/cookies")).body(body.to_owned());
        if let Some(ct) = ct {
            req = req.header("content-type", ct.to_owned());
        }
        send(req)
    };
    let j = Some("application/json");
    let cases: Vec<(Option<&str>, &str, &str)> = vec![
        (
            None,
            r#"{"cookie":"x","user_id":1}"#,
            "Content-Type header is required",
        ),
        (
            Some("text/plain"),
            r#"{"cookie":"x","user_id":1}"#,
            "Content-Type must be application/json",
        ),
        (j, "{not json", "Invalid JSON"),
        (j, "", "Invalid JSON"),
        (j, "[1,2]", "Invalid JSON"),
        (j, "42", "Invalid JSON"),
        (j, r#""str""#, "Invalid JSON"),
        (j, r#"{"user_id":1}"#, "Cookie field is required"),
        (j, r#"{"cookie":"","user_id":1}"#, "Cookie cannot be empty"),
        (j, r#"{"cookie":5,"user_id":1}"#, "Cookie must be a string"),
        (j, r#"{"cookie":"x"}"#, "User ID field is required"),
        (
            j,
            r#"{"cookie":"x","user_id":0}"#,
            "User ID must be a positive integer",
        ),
        (
            j,
            r#"{"cookie":"x","user_id":-3}"#,
            "User ID must be a positive integer",
        ),
        (
            j,
            r#"{"cookie":"x","user_id":1001.0}"#,
            "User ID must be a positive integer",
        ),
        (
            j,
            r#"{"cookie":"x","user_id":"1001"}"#,
            "User ID must be a positive integer",
        ),
        (
            j,
            r#"{"cookie":"x","user_id":null}"#,
            "User ID must be a positive integer",
        ),
        (
            j,
            r#"{"cookie":"","user_id":"bad"}"#,
            "Cookie cannot be empty",
        ),
    ];
    for (ct, body, msg) in cases {
        let r = post(ct, body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert_eq!(r.json, error(msg), "{body}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // application/json with parameters is accepted; POST /cookies/{anything} ignores the path.
    let r = send(
        c.client
            .post(format!("{u}/cookies/ignored"))
            .header("content-type", "application/json; charset=utf-8")
            .body(r#"{"cookie":"real","user_id":3}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(c.get(0, "real", "linearizable").await.status, 200);
    assert_eq!(c.get(0, "ignored", "linearizable").await.status, 404);
    // Nothing else was stored by the rejected requests.
    assert_eq!(c.list(0, "linearizable").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_rules_rename_and_validation() {
    let c = one_node().await;
    let u = c.url(0);
    c.create(0, json!({"cookie": "a", "user_id": 1})).await;
    c.create(0, json!({"cookie": "b", "user_id": 2})).await;

    // No Content-Type check on PUT, but the body must be a JSON object.
    let r = send(c.client.put(format!("{u}/cookies/a")).body("[]")).await;
    assert_eq!((r.status, r.json.clone()), (400, error("Invalid JSON")));
    let r = send(c.client.put(format!("{u}/cookies/a")).body(r#"{"x":1}"#)).await;
    assert_eq!(r.status, 200);
    let r = c.put(0, "a", json!({"user_id": "nope"}), None).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (400, error("User ID must be a positive integer"))
    );

    // Rename onto an existing id: 409, nothing changes.
    let r = c.put(0, "a", json!({"cookie": "b"}), None).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (409, error("Cookie already exists"))
    );
    assert_eq!(c.get(0, "a", "linearizable").await.status, 200);

    // Rename to a free id moves the record.
    let r = c.put(0, "a", json!({"cookie": "a2"}), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["cookie"], "a2");
    assert_eq!(c.get(0, "a", "linearizable").await.status, 404);
    let r = c.get(0, "a2", "linearizable").await;
    assert_eq!((r.status, r.json["x"].clone()), (200, json!(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_conditional_writes() {
    let c = one_node().await;
    let v1 = c
        .create(0, json!({"cookie": "k", "user_id": 1}))
        .await
        .etag();
    assert_eq!(c.get(0, "k", "linearizable").await.etag(), v1);

    // Matching If-Match applies and yields a new version; a stale one is 412, no change.
    let r = c.put(0, "k", json!({"n": 1}), Some(v1)).await;
    assert_eq!(r.status, 200);
    let v2 = r.etag();
    assert!(v2 > v1);
    let r = c.put(0, "k", json!({"n": 2}), Some(v1)).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (412, error("Precondition Failed"))
    );
    let r = c.get(0, "k", "linearizable").await;
    assert_eq!((r.json["n"].clone(), r.etag()), (json!(1), v2));

    // If-Match on a missing record: 412. Malformed If-Match: 400.
    assert_eq!(c.put(0, "none", json!({}), Some(1)).await.status, 412);
    let r = send(
        c.client
            .put(format!("{}/cookies/k", c.url(0)))
            .header("if-match", "not-a-version")
            .body("{}"),
    )
    .await;
    assert_eq!(r.status, 400);
    // A weak tag, a sign, or two lines are not a version either (each was taken for one,
    // and two lines were decided by the first): 400, and nothing changes.
    let now = format!("\"{v2}\"");
    for lines in [
        vec![format!("W/{now}")],
        vec![format!("\"+{v2}\"")],
        vec![now.clone(), now.clone()],
        vec!["\"1\"".to_string(), now.clone()],
    ] {
        let mut req = c.client.put(format!("{}/cookies/k", c.url(0)));
        for l in &lines {
            req = req.header("if-match", l);
        }
        let r = send(req.json(&json!({"n": 9}))).await;
        assert_eq!(r.status, 400, "{lines:?}: {}", r.text);
    }
    assert_eq!(c.get(0, "k", "linearizable").await.etag(), v2);

    // Conditional DELETE.
    let del = |v: u64| {
        send(
            c.client
                .delete(format!("{}/cookies/k", c.url(0)))
                .header("if-match", format!("\"{v}\"")),
        )
    };
    let r = del(v1).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (412, error("Precondition Failed"))
    );
    assert_eq!(c.get(0, "k", "linearizable").await.status, 200);
    assert_eq!(del(v2).await.status, 200);
    assert_eq!(c.get(0, "k", "linearizable").await.status, 404);
    assert_eq!(del(v2).await.status, 412, "absent record with If-Match");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_limits_and_odd_input() {
    let c = one_node().await;
    let u = c.url(0);
    let client = &c.client;

    // 405 with the JSON body.
    for (method, path) in [
        ("PATCH", "/cookies/x"),
        ("HEAD", "/cookies"),
        ("PUT", "/cookies"),
        ("DELETE", "/cookies"),
        ("PATCH", "/cookies"),
        ("POST", "/health"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = send(client.request(m, format!("{u}{path}"))).await;
        assert_eq!(r.status, 405, "{method} {path}");
        if method != "HEAD" {
            assert_eq!(r.json, error("Method Not Allowed"), "{method} {path}");
        }
        // `Allow` names what the route serves, and HEAD only where it is served.
        let allow = r.header("allow").unwrap_or_default().replace(' ', "");
        let expected = match path {
            "/cookies" => "GET,POST",
            "/cookies/x" => "GET,POST,PUT,DELETE",
            _ => "GET,HEAD",
        };
        assert_eq!(allow, expected, "{method} {path}");
    }

    // 413 over the body limit, on POST and PUT, and the store is unchanged.
    let big = format!(
        r#"{{"cookie":"big","user_id":1,"pad":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let r = send(
        client
            .post(format!("{u}/cookies"))
            .header("content-type", "application/json")
            .body(big.clone()),
    )
    .await;
    assert_eq!(
        (r.status, r.json.clone()),
        (413, error("Payload too large"))
    );
    let r = send(client.put(format!("{u}/cookies/big")).body(big.clone())).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (413, error("Payload too large"))
    );
    // A DELETE's body is not read, but over the limit it is refused all the same, and the
    // record stays (it was deleted, 200).
    let r = c.create(0, json!({"cookie": "kept", "user_id": 1})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = send(client.delete(format!("{u}/cookies/kept")).body(big)).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (413, error("Payload too large"))
    );
    assert_eq!(c.get(0, "kept", "linearizable").await.status, 200);
    assert_eq!(c.delete(0, "kept").await.status, 200);

    // A record grows by PUT (each merges its fields in), never past 16 MiB: the PUT that
    // would take it over is 413 and changes nothing.
    let r = c.create(0, json!({"cookie": "grows", "user_id": 1})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let field = "y".repeat(1000 << 10);
    let mut refused = None;
    for n in 0..20 {
        let body = format!(r#"{{"cookie":"grows","f{n}":"{field}"}}"#);
        let r = send(client.put(format!("{u}/cookies/grows")).body(body)).await;
        if r.status == 413 {
            assert_eq!(r.json, error("Payload too large"));
            refused = Some(n);
            break;
        }
        assert_eq!(r.status, 200, "PUT {n}");
    }
    // 16 fields of 1,000 KiB fit in 16 MiB, a 17th does not.
    assert_eq!(refused, Some(16));
    let r = c.get(0, "grows", "linearizable").await;
    assert_eq!(r.status, 200);
    assert!(r.json["f15"].is_string() && r.json["f16"].is_null());
    assert_eq!(c.delete(0, "grows").await.status, 200);

    // Bad consistency level.
    let r = send(client.get(format!("{u}/cookies?consistency=eventual"))).await;
    assert_eq!(r.status, 400);

    // Odd ids round-trip: spaces, unicode, an encoded slash, the longest id (1,024 bytes,
    // api.md section 10; longer is refused, tests/hostile.rs).
    let long = "L".repeat(1024);
    for id in [
        "with space",
        "ünïcødé 🍪",
        "a/b",
        "%2F",
        long.as_str(),
        "?#&",
    ] {
        let r = c.create(0, json!({"cookie": id, "user_id": 1})).await;
        assert_eq!(r.status, 201, "{id}: {}", r.text);
        let r = c.get(0, id, "linearizable").await;
        assert_eq!(r.status, 200, "{id}");
        assert_eq!(r.json["cookie"], id);
        let r = c.put(0, id, json!({"seen": true}), None).await;
        assert_eq!(r.status, 200, "{id}");
        assert_eq!(c.delete(0, id).await.status, 200);
        assert_eq!(c.get(0, id, "linearizable").await.status, 404, "{id}");
    }

    // Invalid percent-encoding (not UTF-8) is a 400, not a panic.
    let r = send(client.get(format!("{u}/cookies/%FF%FE"))).await;
    assert_eq!(r.status, 400);
    // Unknown paths are JSON 404s.
    let r = send(client.get(format!("{u}/nope"))).await;
    assert_eq!((r.status, r.json.clone()), (404, error("Not Found")));

    // The Raft endpoints are not on the client listener at all.
    for p in ["append", "vote", "snapshot", "write", "read-index"] {
        let r = send(client.post(format!("{u}/raft/{p}")).body(vec![0xff; 64])).await;
        assert_eq!((r.status, r.json.clone()), (404, error("Not Found")), "{p}");
    }
    // Garbage on the peer listener's Raft endpoints changes nothing.
    let peer = c.nodes[0].peer_url();
    for p in ["append", "vote", "snapshot", "write", "read-index"] {
        let r = send(
            client
                .post(format!("{peer}/raft/{p}"))
                .header("x-raft-target", "1")
                .body(vec![0xff; 64]),
        )
        .await;
        assert!(r.status == 400 || r.status == 200, "{p}: {}", r.status);
        let r = send(
            client
                .post(format!("{peer}/raft/{p}"))
                .header("x-raft-target", "9")
                .body(vec![]),
        )
        .await;
        assert_eq!(r.status, 421, "{p} aimed at another node");
    }
    // Nor is the client API on the peer listener.
    let r = send(client.get(format!("{peer}/cookies"))).await;
    assert_eq!(r.status, 404);

    // The node still serves, and nothing was stored.
    assert_eq!(c.list(0, "linearizable").await.len(), 0);
    let h = c.health(0).await.unwrap();
    assert_eq!(h["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_shape() {
    let c = one_node().await;
    let h = c.health(0).await.unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["node"], "node1");
    assert_eq!(h["role"], "leader");
    assert_eq!(h["leader"], "node1");
    assert!(h["term"].as_u64().unwrap() >= 1);
    assert!(h["last_applied"].as_u64().is_some());
    assert!(c.is_ready(0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_list_walks_the_same_order_as_the_full_list() {
    let c = one_node().await;
    for i in 0..25 {
        let id = format!("p{i:02}");
        assert_eq!(
            c.create(0, json!({"cookie": id, "user_id": 1}))
                .await
                .status,
            201
        );
        // Spread created values, with ties, to exercise both sort keys.
        c.put(
            0,
            &id,
            json!({"created": format!("{}", 1000 + (i % 7))}),
            None,
        )
        .await;
    }
    c.delete(0, "p03").await;
    c.put(0, "p04", json!({"cookie": "p04-renamed"}), None)
        .await;
    let full: Vec<String> = c
        .list(0, "linearizable")
        .await
        .iter()
        .map(|v| v["cookie"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(full.len(), 24);

    // The records' ids in a page's reply, in its order.
    let ids = |r: &common::Reply| -> Vec<String> {
        r.json["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["cookie"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}/cookies?limit=5", c.url(0));
        if let Some(a) = &after {
            url.push_str(&format!("&after={}", common::encode(a)));
        }
        let r = send(c.client.get(url)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let page = ids(&r);
        assert!(page.len() <= 5);
        paged.extend(page);
        match r.json["next_after"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, full);
    // A long page is scanned on the blocking pool, a short one where it was asked for: both
    // give the same order.
    let r = send(c.client.get(format!(
        "{}/cookies?limit=10000&after={}",
        c.url(0),
        common::encode(&full[3])
    )))
    .await;
    assert_eq!((r.status, ids(&r)), (200, full[4..].to_vec()), "{}", r.text);
    assert!(r.json.get("next_after").is_none(), "{}", r.text);

    let r = send(c.client.get(format!("{}/cookies?limit=0", c.url(0)))).await;
    assert_eq!(r.status, 400);
    let r = send(c.client.get(format!("{}/cookies?after=nobody", c.url(0)))).await;
    assert_eq!(
        (r.status, r.json.clone()),
        (
            400,
            error("after must be the id of an existing cookie (a page's next_cursor goes on past a deleted one)")
        )
    );
    for (query, message) in [
        (
            "cursor=nobody",
            "cursor must be a next_cursor that a page returned",
        ),
        (
            "cursor=",
            "cursor must be a next_cursor that a page returned",
        ),
        ("after=p00&after=p01", "after is given twice"),
        (
            "after=p00&cursor=AX_________3aWQtMS0wMDAzNQ",
            "give one of after and cursor, once",
        ),
        ("limit=1&limit=2", "limit is given twice"),
        ("after=%FF", "after is not UTF-8 once percent-decoded"),
        (
            "consistency=local&consistency=linearizable",
            "consistency is given twice",
        ),
    ] {
        let r = send(c.client.get(format!("{}/cookies?{query}", c.url(0)))).await;
        assert_eq!((r.status, r.json.clone()), (400, error(message)), "{query}");
    }

    // By `next_cursor`, a walk goes on past the record its page ended on, after that record
    // is deleted: every record still there is walked once, in the list's order.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    let mut deleted = Vec::new();
    loop {
        let mut url = format!("{}/cookies?limit=4", c.url(0));
        if let Some(t) = &cursor {
            url.push_str(&format!("&cursor={t}"));
        }
        let r = send(c.client.get(url)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        walked.extend(ids(&r));
        let (Some(last), Some(next)) = (
            r.json["next_after"].as_str(),
            r.json["next_cursor"].as_str(),
        ) else {
            assert!(r.json.get("next_cursor").is_none(), "{}", r.text);
            break;
        };
        assert_eq!(c.delete(0, last).await.status, 200);
        let r = send(c.client.get(format!(
            "{}/cookies?limit=4&after={}",
            c.url(0),
            common::encode(last)
        )))
        .await;
        assert_eq!(r.status, 400, "by id, the walk stops: {}", r.text);
        deleted.push(last.to_owned());
        cursor = Some(next.to_owned());
    }
    assert_eq!(walked, full);
    assert_eq!(deleted.len(), 5);
}

/// A full `GET /cookies` is a scan of the whole store; it must not hold the node's async
/// runtime while it runs. With a single worker thread (a one-CPU container) a scan on the
/// runtime would leave every other request, Raft's included, waiting until it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_list_does_not_stall_the_node() {
    let c = Cluster::start(1, &format!("worker_threads = 1\n{FAST_RAFT}")).await;
    let payload = "x".repeat(8 << 10);
    let load: Vec<_> = (0..32)
        .map(|w| {
            let url = c.url(0);
            let client = c.client.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                for i in (w..20_000).step_by(32) {
                    let r = client
                        .post(format!("{url}/cookies"))
                        .json(&json!({"cookie": format!("big{i}"), "user_id": 1, "p": payload}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
            })
        })
        .collect();
    for t in load {
        t.await.unwrap();
    }
    // About 160 MB of JSON to scan and send. A health check sent while it streams must be
    // answered before the list's reply ends.
    let list = {
        let client = c.client.clone();
        let url = c.url(0);
        tokio::spawn(async move {
            let r = client.get(format!("{url}/cookies")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            // The head leaves at once; the body streams while the scan runs.
            let body = r.bytes().await.unwrap();
            (std::time::Instant::now(), body.len())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let health = send(c.client.get(format!("{}/health", c.url(0)))).await;
    let answered = std::time::Instant::now();
    assert_eq!(health.status, 200);
    let (listed, len) = list.await.unwrap();
    assert!(len > 150 << 20, "the list should be large: {len} bytes");
    assert!(
        answered < listed,
        "/health waited for the list: answered {:?} after it",
        answered - listed
    );
}
