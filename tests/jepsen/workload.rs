//! The clients: a register workload (read / create / write / compare-and-set on many keys,
//! each a versioned register), a set workload (unique creates) and walks of the list, page
//! by page, that delete the records a drain client creates for them as they pass. Every register operation goes to the history; a client whose operation has an
//! unknown outcome retires and a new process id takes its place, as in Jepsen.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::history::{Call, History, Op, Outcome};
use super::rng::Rng;

/// Operations per key before the clients move on to fresh keys (keeps each key's history
/// small enough for the checker).
pub const OPS_PER_KEY: u64 = 120;
/// Keys in use at any time.
pub const ACTIVE_KEYS: u64 = 4;

pub struct Ctx {
    pub urls: Vec<String>,
    pub history: History,
    pub client: reqwest::Client,
    pub seed: u64,
    processes: AtomicU64,
    ops: AtomicU64,
    values: AtomicI64,
    set_next: AtomicU64,
    drain_next: AtomicU64,
    pub set_attempted: Mutex<BTreeSet<String>>,
    pub set_acked: Mutex<BTreeSet<String>>,
    /// Set creates answered as certain failures ([`write_outcome`]), with the status: none
    /// may be in the store at the end (api.md section 6: a write is never reported as
    /// failed when it may have applied).
    pub set_failed: Mutex<BTreeMap<String, u16>>,
    /// The keyed-retry workload: what it tried, what was acknowledged, the answers that
    /// show a key not honoured, and how many retries were answered as replays.
    pub keyed: Mutex<KeyedLog>,
    /// When each acknowledged create of the set and keyed workloads was answered
    /// ([`History::now`]) and its id: what a walk that began later must find.
    pub acks: Mutex<Vec<(u64, String)>>,
    /// The walks of the list.
    pub walks: Mutex<Walks>,
}

/// What the keyed-retry clients saw.
#[derive(Debug, Default, Clone)]
pub struct KeyedLog {
    pub attempted: BTreeSet<String>,
    pub acked: BTreeSet<String>,
    /// Ids whose keyed create was answered 409 (only its own client ever creates an id, so
    /// 409 means an earlier attempt applied and the retry was not answered from its key),
    /// 422 (the same request called different), or any other 4xx but 408: a valid create
    /// with a fresh id earns none, and one that applied must be answered from its key (found in
    /// review: a 400 was retried as if nothing had been said, and an id whose create
    /// applied could end the run answered by nothing but such refusals).
    pub violations: Vec<String>,
    pub retries: u64,
    pub replays: u64,
    /// Ids still unresolved when the run ended (every attempt unknown).
    pub unresolved: u64,
}

impl Ctx {
    /// `ca`: the CA to trust when the nodes speak HTTPS.
    pub fn new(urls: Vec<String>, seed: u64, ca: Option<&std::path::Path>) -> Self {
        cookie_raft::network::install_crypto_provider();
        // Longer than the nodes' own 2 s write timeout plus forwarding, so a node's answer
        // (even "outcome unknown") normally arrives before we give up.
        let mut client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(4))
            .connect_timeout(Duration::from_millis(500));
        if let Some(ca) = ca {
            let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
            client = client.tls_certs_only([ca]);
        }
        Ctx {
            urls,
            history: History::default(),
            client: client.build().unwrap(),
            seed,
            processes: AtomicU64::new(1),
            ops: AtomicU64::new(0),
            values: AtomicI64::new(1),
            set_next: AtomicU64::new(0),
            drain_next: AtomicU64::new(0),
            set_attempted: Mutex::new(BTreeSet::new()),
            set_acked: Mutex::new(BTreeSet::new()),
            set_failed: Mutex::default(),
            keyed: Mutex::default(),
            acks: Mutex::default(),
            walks: Mutex::default(),
        }
    }

    /// Note that the create of `id` was acknowledged just now.
    fn acked(&self, id: &str) {
        let at = self.history.now();
        self.acks.lock().unwrap().push((at, id.to_owned()));
    }

    fn new_process(&self) -> u64 {
        self.processes.fetch_add(1, Ordering::Relaxed)
    }
}

fn etag(r: &reqwest::Response) -> Option<u64> {
    r.headers()
        .get("etag")?
        .to_str()
        .ok()?
        .trim_matches('"')
        .parse()
        .ok()
}

/// Map a write's HTTP result to an outcome. 503 "No leader available", 503 "Write not
/// applied" (dropped before it was proposed, or refused by a full queue), 507
/// "Insufficient storage" and refused connections are certain failures; timeouts, resets
/// and other 5xx are unknown.
async fn write_outcome(res: Result<reqwest::Response, reqwest::Error>, value: i64) -> Outcome {
    match res {
        Ok(r) => {
            let status = r.status().as_u16();
            let version = etag(&r);
            let body = r.text().await.unwrap_or_default();
            match status {
                200 | 201 => Outcome::Ok {
                    version,
                    value: Some(value),
                },
                400..=499 => Outcome::Fail { status },
                503 if body.contains("No leader available")
                    || body.contains("Write not applied") =>
                {
                    Outcome::Fail { status }
                }
                // Refused before it was proposed: the leader's disk is short of its reserve.
                507 if body.contains("Insufficient storage") => Outcome::Fail { status },
                _ => Outcome::Unknown {
                    why: format!("{status} {body}"),
                },
            }
        }
        Err(e) if e.is_connect() => Outcome::Fail { status: 0 },
        Err(e) => Outcome::Unknown { why: e.to_string() },
    }
}

async fn read_outcome(res: Result<reqwest::Response, reqwest::Error>) -> Outcome {
    match res {
        Ok(r) if r.status() == 200 => {
            let version = etag(&r);
            match r.json::<serde_json::Value>().await {
                Ok(v) => Outcome::Ok {
                    version,
                    value: v["v"].as_i64(),
                },
                Err(_) => Outcome::ReadFailed,
            }
        }
        Ok(r) if r.status() == 404 => Outcome::Ok {
            version: None,
            value: None,
        },
        _ => Outcome::ReadFailed,
    }
}

fn sabotage(what: &str) -> bool {
    std::env::var("JEPSEN_SABOTAGE").is_ok_and(|v| v == what)
}

fn sabotage_local_reads() -> bool {
    sabotage("local-reads")
}

/// One register client, until `deadline`.
pub async fn register_client(ctx: Arc<Ctx>, worker: u64, deadline: Instant) {
    let mut rng = Rng::new(ctx.seed ^ (worker.wrapping_mul(0x9E37_79B9)));
    let mut process = ctx.new_process();
    // The last version this worker saw per key, to aim its compare-and-sets.
    let mut seen: std::collections::HashMap<String, u64> = Default::default();
    while Instant::now() < deadline {
        let n = ctx.ops.fetch_add(1, Ordering::Relaxed);
        let generation = n / (OPS_PER_KEY * ACTIVE_KEYS);
        let key = format!(
            "r{}-{}-{}",
            ctx.seed % 10_000,
            generation,
            rng.below(ACTIVE_KEYS)
        );
        let node = rng.below(ctx.urls.len() as u64) as usize;
        let url = &ctx.urls[node];
        let value = ctx.values.fetch_add(1, Ordering::Relaxed);
        let dice = rng.below(100);
        let call = match dice {
            0..=39 => Call::Read { local: false },
            40..=49 => Call::Read { local: true },
            50..=61 => Call::Create { value },
            62..=81 => Call::Write { value },
            _ => Call::Cas {
                expected: seen.get(&key).copied().unwrap_or(1),
                value,
            },
        };
        let invoke_ns = ctx.history.now();
        let path = format!("{url}/cookies/{key}");
        let outcome = match &call {
            Call::Read { local } => {
                // JEPSEN_SABOTAGE=local-reads sends "linearizable" reads as local ones: a
                // deliberate bug, to show the checker catches stale reads end to end.
                let level = if *local || sabotage_local_reads() {
                    "local"
                } else {
                    "linearizable"
                };
                read_outcome(
                    ctx.client
                        .get(format!("{path}?consistency={level}"))
                        .send()
                        .await,
                )
                .await
            }
            Call::Create { value } => {
                let body = json!({"cookie": key, "user_id": 1, "v": value});
                write_outcome(
                    ctx.client
                        .post(format!("{url}/cookies"))
                        .json(&body)
                        .send()
                        .await,
                    *value,
                )
                .await
            }
            Call::Write { value } => {
                write_outcome(
                    ctx.client
                        .put(&path)
                        .json(&json!({"v": value}))
                        .send()
                        .await,
                    *value,
                )
                .await
            }
            Call::Cas { expected, value } => {
                let req = ctx
                    .client
                    .put(&path)
                    .header("if-match", format!("\"{expected}\""))
                    .json(&json!({"v": value}));
                write_outcome(req.send().await, *value).await
            }
        };
        let complete_ns = ctx.history.now();
        if let Outcome::Ok {
            version: Some(v), ..
        } = &outcome
        {
            seen.insert(key.clone(), *v);
        }
        let unknown = matches!(outcome, Outcome::Unknown { .. });
        // A node that is down refuses at once: pause instead of spinning through keys.
        let refused = matches!(outcome, Outcome::Fail { status: 0 } | Outcome::ReadFailed);
        ctx.history.push(Op {
            process,
            node,
            key,
            call,
            invoke_ns,
            complete_ns,
            outcome,
        });
        if unknown {
            process = ctx.new_process();
        }
        if refused {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One set client: unique creates until `deadline`.
pub async fn set_client(ctx: Arc<Ctx>, worker: u64, deadline: Instant) {
    let mut rng = Rng::new(ctx.seed ^ 0xA5A5 ^ worker);
    while Instant::now() < deadline {
        let n = ctx.set_next.fetch_add(1, Ordering::Relaxed);
        let id = format!("s{}-{n}", ctx.seed % 10_000);
        let url = &ctx.urls[rng.below(ctx.urls.len() as u64) as usize];
        ctx.set_attempted.lock().unwrap().insert(id.clone());
        let body = json!({"cookie": id, "user_id": 1});
        match write_outcome(
            ctx.client
                .post(format!("{url}/cookies"))
                .json(&body)
                .send()
                .await,
            0,
        )
        .await
        {
            Outcome::Ok { .. } => {
                ctx.acked(&id);
                ctx.set_acked.lock().unwrap().insert(id);
            }
            Outcome::Fail { status } => {
                ctx.set_failed.lock().unwrap().insert(id, status);
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            // JEPSEN_SABOTAGE=unknown-as-failed takes an unknown outcome (a timeout) for a
            // certain failure: a deliberate bug, to show the set check catches a create
            // reported as failed that applied.
            Outcome::Unknown { .. } if sabotage("unknown-as-failed") => {
                ctx.set_failed.lock().unwrap().insert(id, 599);
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Keyed retries: each client creates fresh ids, each with its own `Idempotency-Key`, and
/// retries every attempt whose outcome is unknown (or certainly not applied) with the same
/// key and body, on a random node, until it gets a definite answer. A retry of a create
/// that did apply must come back as a replay (201, `Idempotency-Replayed`), never as 409.
pub async fn keyed_client(ctx: Arc<Ctx>, worker: u64, deadline: Instant) {
    let mut rng = Rng::new(ctx.seed ^ 0x5EED ^ worker);
    // Retries may go on a little past the run, while the cluster heals.
    let give_up = deadline + Duration::from_secs(20);
    while Instant::now() < deadline {
        let n = ctx.set_next.fetch_add(1, Ordering::Relaxed);
        let id = format!("k{}-{n}", ctx.seed % 10_000);
        let key = format!("key-{id}");
        let body = json!({"cookie": id, "user_id": 1});
        ctx.keyed.lock().unwrap().attempted.insert(id.clone());
        let mut attempt = 0u64;
        loop {
            let url = &ctx.urls[rng.below(ctx.urls.len() as u64) as usize];
            let mut req = ctx.client.post(format!("{url}/cookies")).json(&body);
            // JEPSEN_SABOTAGE=no-keys retries without the key: a retry of a create that did
            // apply then answers 409, which the checker must catch.
            if !std::env::var("JEPSEN_SABOTAGE").is_ok_and(|v| v == "no-keys") {
                req = req.header("idempotency-key", &key);
            }
            let res = req.send().await;
            let answer = match res {
                Ok(r) => {
                    let replayed = r.headers().contains_key("idempotency-replayed");
                    Some((r.status().as_u16(), replayed))
                }
                Err(_) => None,
            };
            let done = {
                let mut log = ctx.keyed.lock().unwrap();
                log.retries += u64::from(attempt > 0);
                match answer {
                    Some((201, replayed)) => {
                        ctx.acked(&id);
                        log.replays += u64::from(replayed);
                        log.acked.insert(id.clone());
                        true
                    }
                    // (408: the body came too slowly, as a pause of the node can make it:
                    // certainly not applied, retried like a 503.)
                    Some((status @ 400..=499, _)) if status != 408 => {
                        log.violations.push(format!("{id} ({status})"));
                        true
                    }
                    _ if Instant::now() >= give_up => {
                        log.unresolved += 1;
                        true
                    }
                    // Unknown (504, timeout, reset) or certainly not applied (503): same key.
                    _ => false,
                }
            };
            if done {
                break;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One complete walk of the list: `GET /cookies?limit=&after=` from the first page until a
/// page names no `next_after`, each page read on a node chosen at random.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// When the first page was asked for, and when the last one came back.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The page size asked for.
    pub limit: usize,
    pub pages: u64,
    /// The records in the order they came: id and `created`.
    pub rows: Vec<(String, i64)>,
    /// Pages asked for from the place of a record the walk had deleted (answered 200)
    /// after the page before named it.
    pub from_deleted: u64,
}

/// What the walking clients saw.
#[derive(Debug, Clone, Default)]
pub struct Walks {
    pub done: Vec<Walk>,
    /// Walks given up because a page kept failing: they tell nothing.
    pub abandoned: u64,
    /// Pages answered 200 that break the contract's shape (no `cookies` array, a record
    /// without its id or `created`): each a failure of the run.
    pub malformed: Vec<String>,
    /// Pages refused with 400, which a walk by the pages' own cursors never earns: each a
    /// failure of the run.
    pub refused: Vec<String>,
}

/// How a walk ended, when it did not reach its last page.
enum Unfinished {
    /// A page kept failing.
    GaveUp,
    /// A page answered 200 in a shape the contract does not allow.
    Malformed(String),
    /// A page was answered 400.
    Refused(String),
}

/// The page sizes walks take turns with. A page of up to 100 records is served on the
/// worker that took the request, a longer one on the blocking pool (`INLINE_PAGE`,
/// `src/http/cookies.rs`): both paths are walked.
const WALK_LIMITS: [usize; 4] = [25, 100, 101, 1000];

/// Tries of one page (each on a node chosen at random) before its walk is given up.
const PAGE_TRIES: u32 = 10;

/// One walking client: walks of the list, one after the other, until `deadline`.
pub async fn walk_client(ctx: Arc<Ctx>, worker: u64, deadline: Instant) {
    let mut rng = Rng::new(ctx.seed ^ 0x3A1C ^ worker);
    let mut turn = worker as usize;
    while Instant::now() < deadline {
        let limit = WALK_LIMITS[turn % WALK_LIMITS.len()];
        turn += 1;
        let walk = walk(&ctx, &mut rng, limit).await;
        let mut walks = ctx.walks.lock().unwrap();
        match walk {
            Ok(w) => walks.done.push(w),
            Err(Unfinished::GaveUp) => walks.abandoned += 1,
            Err(Unfinished::Malformed(why)) => walks.malformed.push(why),
            Err(Unfinished::Refused(why)) => walks.refused.push(why),
        }
    }
}

/// Records for the walks to delete: one client creates `d<seed>-<n>` one after the other
/// until `deadline`, and each walk deletes those its pages hold as it goes, as a client
/// draining a queue would. A page that ends on one asks for the next from the place of a
/// deleted record. (They are no set's: the walk check neither expects nor forbids them.)
pub async fn drain_client(ctx: Arc<Ctx>, worker: u64, deadline: Instant) {
    let mut rng = Rng::new(ctx.seed ^ 0xD7A1 ^ worker);
    while Instant::now() < deadline {
        let n = ctx.drain_next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{n}", drain_prefix(ctx.seed));
        let url = &ctx.urls[rng.below(ctx.urls.len() as u64) as usize];
        let body = json!({"cookie": id, "user_id": 1});
        // Its outcome does not matter: the walks delete whatever they find.
        let res = ctx
            .client
            .post(format!("{url}/cookies"))
            .json(&body)
            .send()
            .await;
        if !res.is_ok_and(|r| r.status() == 201) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn drain_prefix(seed: u64) -> String {
    format!("d{}-", seed % 10_000)
}

/// Delete `id` on node `node`: whether it was acknowledged.
async fn delete(ctx: &Ctx, node: u64, id: &str) -> bool {
    let url = &ctx.urls[node as usize];
    let res = ctx
        .client
        .delete(format!("{url}/cookies/{id}"))
        .send()
        .await;
    res.is_ok_and(|r| r.status() == 200)
}

/// Walk the list with pages of `limit`. A walk that meets a record it has already seen ends
/// there, the repeat included, for the check to report: a cursor that sent the walk back
/// would otherwise never let it end.
async fn walk(ctx: &Ctx, rng: &mut Rng, limit: usize) -> Result<Walk, Unfinished> {
    // JEPSEN_SABOTAGE=local-lists reads the pages as local reads: a deliberate bug, to show
    // the walk check catches a stale page end to end.
    let level = if sabotage("local-lists") {
        "local"
    } else {
        "linearizable"
    };
    let mut walk = Walk {
        start_ns: ctx.history.now(),
        limit,
        ..Walk::default()
    };
    // Where the next page starts: `("cursor", token)` or `("after", id)`.
    let mut from: Option<(&str, String)> = None;
    let mut seen = std::collections::HashSet::new();
    let drain = drain_prefix(ctx.seed);
    loop {
        // (The serializer is not `Send`: it is gone before the page is awaited.)
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &limit.to_string());
            q.append_pair("consistency", level);
            if let Some((k, v)) = &from {
                q.append_pair(k, v);
            }
            q.finish()
        };
        let page = page(ctx, rng, &query).await?;
        walk.pages += 1;
        let malformed = |what: &str| {
            let shown: String = page.to_string().chars().take(300).collect();
            Unfinished::Malformed(format!("{what} in a page: {shown}"))
        };
        let rows = page["cookies"]
            .as_array()
            .ok_or_else(|| malformed("no cookies array"))?;
        for row in rows {
            let id = row["cookie"]
                .as_str()
                .ok_or_else(|| malformed("a record without its id"))?
                .to_owned();
            // `created` comes back as the string of a number of seconds (the original's).
            let created = match &row["created"] {
                serde_json::Value::String(s) => s.parse().ok(),
                other => other.as_i64(),
            }
            .ok_or_else(|| malformed("a record without a created time"))?;
            let again = !seen.insert(id.clone());
            walk.rows.push((id, created));
            if again {
                walk.end_ns = ctx.history.now();
                return Ok(walk);
            }
        }
        // JEPSEN_SABOTAGE=back-cursor goes on from the page's first record instead of the
        // one it names: a deliberate cursor bug, which the walk check must catch.
        // JEPSEN_SABOTAGE=after-cursor goes on after the id the page names (`next_after`),
        // as walks did before `next_cursor`: once that record is deleted, the page is
        // refused.
        let next = if sabotage("back-cursor") && rows.len() > 1 {
            rows[0]["cookie"].as_str().map(|id| ("after", id))
        } else if sabotage("after-cursor") {
            page["next_after"].as_str().map(|id| ("after", id))
        } else {
            page["next_cursor"].as_str().map(|token| ("cursor", token))
        };
        let Some((k, v)) = next else { break };
        from = Some((k, v.to_owned()));
        // The drain records this page held go, all at once, before the next page is asked
        // for.
        let doomed: Vec<(&str, u64)> = rows
            .iter()
            .filter_map(|row| row["cookie"].as_str())
            .filter(|id| id.starts_with(&drain))
            .map(|id| (id, rng.below(ctx.urls.len() as u64)))
            .collect();
        let deleted =
            futures::future::join_all(doomed.iter().map(|&(id, node)| delete(ctx, node, id))).await;
        let last = rows.last().and_then(|row| row["cookie"].as_str());
        walk.from_deleted += u64::from(
            doomed
                .iter()
                .zip(deleted)
                .any(|(&(id, _), ok)| ok && Some(id) == last),
        );
    }
    walk.end_ns = ctx.history.now();
    Ok(walk)
}

/// One page (`query`: its limit, consistency and cursor), from the first node of up to
/// [`PAGE_TRIES`] chosen at random that answers 200. Each page is a read of its own; any
/// node may serve it. A 400 ends the walk at once: every node would refuse the same query.
async fn page(ctx: &Ctx, rng: &mut Rng, query: &str) -> Result<serde_json::Value, Unfinished> {
    for _ in 0..PAGE_TRIES {
        let url = &ctx.urls[rng.below(ctx.urls.len() as u64) as usize];
        let res = ctx
            .client
            .get(format!("{url}/cookies?{query}"))
            .send()
            .await;
        if let Ok(r) = res {
            match r.status().as_u16() {
                200 => {
                    if let Ok(v) = r.json().await {
                        return Ok(v);
                    }
                }
                400 => {
                    let body = r.text().await.unwrap_or_default();
                    let query: String = query.chars().take(200).collect();
                    return Err(Unfinished::Refused(format!("?{query}: 400 {body}")));
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Unfinished::GaveUp)
}
