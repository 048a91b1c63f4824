//! The status page (issue 15): `GET /` on every node, and what it shows in a real headless
//! browser (Debian's `chromium`, installed by `scripts/chromium.sh` when missing) against a
//! running 3-node cluster.
//!
//! `STATUS_PAGE_SCREENSHOT=docs/status-page.png cargo test --release --test status_page`
//! also writes a screenshot of the leader's page (the one in the README).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{send, Cluster, FAST_RAFT};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// The chromium binary, installed first if missing (`scripts/chromium.sh`).
fn chromium() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/chromium.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/chromium.sh");
    assert!(out.status.success(), "scripts/chromium.sh failed");
    let path = String::from_utf8(out.stdout).unwrap();
    let path = path.lines().last().expect("a path").trim().to_owned();
    assert!(!path.is_empty(), "scripts/chromium.sh printed no path");
    PathBuf::from(path)
}

/// Runs headless chromium on `url` with `args` (a throwaway profile, virtual time so the
/// page's polls run) and returns its standard output.
async fn browse(url: &str, args: &[&str]) -> String {
    let profile = tempfile::TempDir::new().unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true)
    .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text inside the element with `id` (up to the next tag).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = format!("id=\"{id}\"");
    let at = dom
        .find(&start)
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let rest = &dom[at..];
    let open = rest.find('>').unwrap() + 1;
    let rest = &rest[open..];
    &rest[..rest.find('<').unwrap_or(rest.len())]
}

/// The element whose id is `id`, from its start tag to the matching-ish end (`</{tag}>`).
fn element<'a>(dom: &'a str, tag: &str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let end = dom[at..].find(&format!("</{tag}>")).unwrap() + at;
    &dom[at..end]
}

/// Every `<tr ...>` start tag's attribute `name` (None where the tag lacks it), in order,
/// with the row's text.
fn rows(table_body: &str) -> Vec<(String, String)> {
    table_body
        .split("<tr")
        .skip(1)
        .map(|row| {
            let tag = &row[..row.find('>').unwrap()];
            let mut text = String::new();
            let mut inside = false;
            for ch in row[tag.len()..].chars() {
                match ch {
                    '<' => {
                        inside = true;
                        text.push(' ');
                    }
                    '>' => inside = false,
                    c if !inside => text.push(c),
                    _ => {}
                }
            }
            (
                tag.to_owned(),
                text.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let at = tag.find(&key)? + key.len();
    Some(tag[at..at + tag[at..].find('"')?].to_owned())
}

/// The text of the cell `data-field="{field}"` in one row's HTML.
fn field<'a>(row_html: &'a str, field: &str) -> &'a str {
    let key = format!("data-field=\"{field}\">");
    let at = row_html
        .find(&key)
        .unwrap_or_else(|| panic!("no {field} cell in {row_html}"))
        + key.len();
    &row_html[at..at + row_html[at..].find('<').unwrap()]
}

fn number(text: &str) -> Option<u64> {
    text.replace(',', "").trim().parse().ok()
}

/// Waits until every node's health monitor has seen every peer answer (so each row of the
/// page has the peer's role, term and applied index), and returns each node's `/cluster`.
async fn settled(c: &Cluster) -> Vec<Value> {
    let mut views = Vec::new();
    for i in 0..c.nodes.len() {
        let v = c
            .wait_cluster_info(i, WAIT, |v| {
                let peers = v["peers"].as_array().map_or(&[][..], Vec::as_slice);
                peers.len() == 2
                    && peers
                        .iter()
                        .all(|p| p["status"] == "ok" && p["last_applied"].as_u64() >= Some(3))
            })
            .await;
        views.push(v);
    }
    views
}

#[tokio::test]
async fn every_node_serves_the_page_openly_with_a_strict_policy_and_records_its_leaders() {
    let mut c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(WAIT).await;
    for i in 0..3 {
        let r = send(c.client.get(format!("{}/", c.url(i)))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        let csp = r.header("content-security-policy").expect("a CSP");
        for part in [
            "default-src 'none'",
            "connect-src 'self'",
            "script-src 'sha256-",
            "style-src 'sha256-",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{part} not in {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(r.text.contains("<title>cookie-crud status</title>"));
        // Other methods are refused as everywhere else.
        let r = send(c.client.post(format!("{}/", c.url(i)))).await;
        assert_eq!(r.status, 405);
    }

    // Every node remembers the leader of the current term; the leader reports replication.
    let name = format!("node{}", leader + 1);
    let info = c
        .wait_cluster_info(leader, WAIT, |v| {
            v["leader_changes"][0]["leader"] == name.as_str()
        })
        .await;
    let change = &info["leader_changes"][0];
    assert_eq!(change["term"], info["term"]);
    assert_eq!(change["leader_id"], json!(leader + 1));
    assert!(change["at_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(info["leader_name"], name.as_str());
    assert_eq!(info["replication"].as_array().unwrap().len(), 2, "{info}");
    assert!(info["committed"].as_u64().is_some(), "{info}");
    for i in 0..3 {
        let v = c
            .wait_cluster_info(i, WAIT, |v| {
                v["leader_changes"][0]["leader"] == name.as_str()
            })
            .await;
        if i != leader {
            assert!(v["replication"].is_null(), "{v}");
        }
    }

    // A new leader is recorded above the old one, in a later term.
    c.kill(leader);
    let next = c.wait_leader(WAIT).await;
    let next_name = format!("node{}", next + 1);
    let v = c
        .wait_cluster_info(next, WAIT, |v| {
            v["leader_changes"][0]["leader"] == next_name.as_str()
        })
        .await;
    let changes = v["leader_changes"].as_array().unwrap();
    assert!(changes.len() >= 2, "{v}");
    assert_eq!(changes[0]["term"], v["term"]);
    assert!(
        changes[0]["term"].as_u64() > changes[1]["term"].as_u64(),
        "{v}"
    );
    assert!(
        changes[0]["at_ms"].as_u64() >= changes[1]["at_ms"].as_u64(),
        "{v}"
    );
    assert!(
        changes.iter().any(|ch| ch["leader"] == name.as_str()),
        "the old leader is remembered: {v}"
    );
}

#[tokio::test]
async fn a_headless_browser_shows_the_cluster_live() {
    let mut c = Cluster::start(3, FAST_RAFT).await;
    let leader = c.wait_leader(WAIT).await;
    for n in 0..5 {
        let r = c
            .create(n % 3, json!({"cookie": format!("page-{n}"), "user_id": 1}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // Some cache traffic, so the hit rate is not 0.
    for _ in 0..3 {
        assert_eq!(c.get(leader, "page-0", "local").await.status, 200);
    }
    let views = settled(&c).await;
    let leader_name = format!("node{}", leader + 1);

    for i in [leader, (leader + 1) % 3] {
        let dom = browse(&format!("{}/", c.url(i)), &["--dump-dom"]).await;
        let me = format!("node{}", i + 1);
        let view = &views[i];
        assert_eq!(text_of(&dom, "served-by"), me, "{dom}");
        assert_eq!(text_of(&dom, "conn"), "live", "{dom}");
        assert_eq!(text_of(&dom, "leader"), leader_name);
        assert_eq!(text_of(&dom, "term"), view["term"].to_string());
        assert_eq!(text_of(&dom, "member-count"), "3");
        assert!(number(text_of(&dom, "committed")).is_some_and(|n| n >= 6));
        // Two polls happened: the request rate is a number.
        let rate = text_of(&dom, "req-rate").replace(',', "");
        assert!(rate.parse::<f64>().is_ok(), "req/s {rate:?}\n{dom}");
        assert!(text_of(&dom, "hit-rate").ends_with('%'));

        // One row per member, exactly one leader, every applied index a number.
        let body = element(&dom, "tbody", "member-rows");
        let members: Vec<_> = rows(body);
        assert_eq!(members.len(), 3, "{body}");
        let mut leaders = 0;
        for (n, row_html) in body.split("<tr").skip(1).enumerate() {
            let (tag, text) = &members[n];
            let name = attr(tag, "data-member").unwrap();
            let role = attr(tag, "data-role").unwrap();
            assert_eq!(name, format!("node{}", n + 1), "{text}");
            if role == "leader" {
                leaders += 1;
                assert_eq!(name, leader_name);
            } else {
                assert_eq!(role, "follower", "{text}");
            }
            let applied = number(field(row_html, "applied"));
            assert!(applied.is_some_and(|a| a >= 3), "{name} applied: {text}");
            assert!(
                number(field(row_html, "term")).is_some(),
                "{name} term: {text}"
            );
            assert!(text.contains("voter"), "{text}");
            if name == me {
                assert!(text.contains("serving"), "{text}");
            } else {
                assert!(text.contains("reachable"), "{text}");
            }
            assert!(field(row_html, "hit-rate").ends_with('%'), "{text}");
            // The leader's page has each follower's lag; a follower's says who leads.
            let lag = field(row_html, "lag");
            if i == leader {
                assert!(number(lag).is_some(), "{name} lag {lag:?}");
            } else {
                assert_eq!(lag, "–");
            }
        }
        assert_eq!(leaders, 1, "{body}");
        let note = element(&dom, "span", "members-note");
        if i == leader {
            assert!(note.contains("this node leads"), "{note}");
        } else {
            assert!(
                note.contains(&format!("the leader is {leader_name}")),
                "{note}"
            );
        }

        // The recent leader changes name the current leader in the current term.
        let changes = rows(element(&dom, "tbody", "change-rows"));
        let (tag, text) = &changes[0];
        assert_eq!(attr(tag, "data-term"), Some(view["term"].to_string()));
        assert!(text.contains(&leader_name), "{text}");
    }

    if let Ok(path) = std::env::var("STATUS_PAGE_SCREENSHOT") {
        // One failover first, so the page has a history to show, and some traffic.
        c.kill(leader);
        let next = c.wait_leader(WAIT).await;
        c.spawn(leader);
        c.wait_ready_all(WAIT).await;
        for n in 5..25 {
            c.create(n % 3, json!({"cookie": format!("page-{n}"), "user_id": 1}))
                .await;
            c.get(n % 3, "page-1", "local").await;
        }
        settled(&c).await;
        // Until the peers' last health checks report them caught up.
        c.wait_cluster_info(next, WAIT, |v| {
            let committed = v["committed"].as_u64();
            v["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| p["last_applied"].as_u64() >= committed))
        })
        .await;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        browse(
            &format!("{}/", c.url(next)),
            &[
                &format!("--screenshot={}", path.display()),
                "--window-size=1200,700",
                "--hide-scrollbars",
            ],
        )
        .await;
        assert!(path.exists());
    }
}

#[tokio::test]
async fn the_page_is_open_but_asks_for_a_token_when_the_data_needs_one() {
    let tokens =
        format!("client_tokens = [{{ token = \"admin-token\", role = \"admin\" }}]\n{FAST_RAFT}");
    let c = Cluster::start(1, &tokens).await;
    let r = send(c.client.get(format!("{}/", c.url(0)))).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        send(c.client.get(format!("{}/cluster", c.url(0))))
            .await
            .status,
        401
    );
    let dom = browse(&format!("{}/", c.url(0)), &["--dump-dom"]).await;
    assert_eq!(text_of(&dom, "conn"), "token needed", "{dom}");
    let banner = element(&dom, "div", "banner");
    assert!(
        banner.contains("This node requires a client token"),
        "{banner}"
    );
    // What /health (open) says is still shown.
    assert_eq!(text_of(&dom, "served-by"), "node1");
    assert_eq!(text_of(&dom, "leader"), "node1");
}

/// A stand-in for a node that served the page and then went away: it answers `GET /` with
/// `page` (and the node's policy) and closes every other connection unanswered.
async fn serve_page_then_nothing(page: String, csp: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (page, csp) = (page.clone(), csp.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if buf.starts_with(b"GET / ") {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                         content-security-policy: {csp}\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n",
                        page.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(page.as_bytes()).await;
                }
                // Anything else: the connection closes with no answer.
            });
        }
    });
    format!("http://{addr}/")
}

#[tokio::test]
async fn the_page_says_so_when_its_node_cannot_be_reached() {
    let c = Cluster::start(1, FAST_RAFT).await;
    let r = send(c.client.get(format!("{}/", c.url(0)))).await;
    let csp = r.header("content-security-policy").unwrap().to_owned();
    drop(c);
    let url = serve_page_then_nothing(r.text, csp).await;
    let dom = browse(&url, &["--dump-dom"]).await;
    assert_eq!(text_of(&dom, "conn"), "unreachable", "{dom}");
    let banner = element(&dom, "div", "banner");
    assert!(banner.contains("Cannot reach this node"), "{banner}");
    assert_eq!(text_of(&dom, "updated"), "never");
}

/// A node whose disk is short of its write reserve (here: a reserve larger than any disk)
/// shows "disk short" in its own row of its own page, and in its row of a peer's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_short_of_its_reserve_shows_on_the_page() {
    let mut c = Cluster::configure_with(3, FAST_RAFT, |i, _| {
        if i == 2 {
            format!("[storage]\nwrite_reserve_bytes = {}\n", 1u64 << 60)
        } else {
            String::new()
        }
    });
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_ready_all(WAIT).await;
    // Until node1's health monitor has heard node3 say so.
    c.wait_cluster_info(0, WAIT, |v| {
        v["peers"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["name"] == "node3" && p["disk_short"] == true)
        })
    })
    .await;
    for i in [0, 2] {
        let dom = browse(&format!("{}/", c.url(i)), &["--dump-dom"]).await;
        let members = rows(element(&dom, "tbody", "member-rows"));
        for (tag, text) in &members {
            let name = attr(tag, "data-member").unwrap_or_default();
            assert_eq!(
                text.contains("disk short"),
                name == "node3",
                "node{}'s page, {name}'s row: {text}",
                i + 1
            );
        }
        assert_eq!(members.len(), 3, "{dom}");
    }
}
