//! `make bench`: a cheap closed-loop load generator, cookie-crud against etcd (Debian's
//! etcd-server 3.4 through its HTTP/JSON gateway), 3 nodes each on loopback, long enough
//! runs (30 s a phase) to show a periodic stall, full percentiles, and a per-second plot.
//!
//! Each client is its own HTTP/1.1 keep-alive connection on a `TcpStream`, in a closed loop:
//! the request written with one `write` from a reused buffer, the response read into another
//! and framed with httparse, all in the client's task (`LOAD_HTTP=hyper`: hyper's low-level
//! `conn::http1` client instead, for a cross-check). No pool, no URL parsing, no JSON encoding
//! per request: the body is a template with the record's unique id spliced in. A tokio
//! runtime with two worker threads. Every 2xx latency goes into a histogram for the phase and
//! one for its second; non-2xx answers and transport errors are only counted.
//!
//! `cargo bench --bench load`. Knobs: `LOAD_SECS` per phase (30), `LOAD_CLIENTS` ("16 64
//! 256": a creates phase each, then updates, linearizable reads, first pages of the list,
//! compare-and-set cycles, churn (create, then delete) and a mix of reads and updates at the
//! largest),
//! `LOAD_ONLY=<substring of "workload@clients">` (e.g. `creates@64`, `updates`, `reads`,
//! `lists`, `cas`, `churn`, `mixed`),
//! `LOAD_LIST_PAGE` (the records a list page asks for, 20), `LOAD_MIXED_EVERY` (one in this
//! many of the mixed phase's requests is an update, 10; 0: only reads),
//! `LOAD_UPDATE_KEYS` (the records the updates spread over, 10,000; 1: one hot record),
//! `LOAD_CAS_KEYS` (the records the compare-and-set cycles spread over, 10,000; 1: every
//! client increments one counter, and most cycles lose the race: non-2xx counts them),
//! `LOAD_WRITES_TO` (where the creates and updates go: `leader`, the default; `follower`,
//! every client on one follower, which forwards them; `spread`, client `i` on node `i % 3`,
//! as clients behind a load balancer are),
//! `LOAD_IDEMPOTENCY=1` (cookie-crud's creates and updates each carry an `Idempotency-Key` of
//! their own, as clients that retry safely send them; etcd has no such key and its requests
//! stay as they are), `LOAD_KEY_RETENTION_SECS` (the nodes' `idempotency_retention_secs`:
//! a few seconds makes the keys expire while the phases run, as they do in a store that has
//! run longer than the retention),
//! `ETCD=none` (or a path),
//! `LOAD_PLOT` (the SVG, default `target/load-latency.svg`; the per-second series go beside
//! it as CSV), `LOAD_THREADS` (the generator's worker threads, 2), `LOAD_HTTP` (raw, hyper),
//! `BENCH_CPU_QUOTA` (each server process limited to that many cores' CPU time:
//! [`support::cpu_quota`], `benches/cores.sh`).

// clippy.toml keeps the server's functions to four arguments; a bench's helpers name every knob.
#![allow(clippy::too_many_arguments)]

mod support;

use std::error::Error;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use support::{context_switches, cpu_quota, cpu_seconds, env_num, etcd_binary, Etcd, Nodes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Records preloaded for the read phase (`cookie:read-<i>`).
const READ_KEYS: usize = 1000;
/// Records preloaded for the update phase (`cookie:upd-<i>`) unless `LOAD_UPDATE_KEYS`
/// says otherwise: many more than clients, so that two clients seldom update one record at
/// once. `LOAD_UPDATE_KEYS=1` makes every client update one record (a counter, a shared
/// document): no log entry holds two writes to one record, so those go as several entries
/// a round.
const UPDATE_KEYS: usize = 10_000;
/// One in this many of a mixed phase's requests is an update, unless `LOAD_MIXED_EVERY`
/// says otherwise (0: none, only reads).
const MIXED_EVERY: usize = 10;
/// Records a list phase's page asks for, unless `LOAD_LIST_PAGE` says otherwise.
const LIST_PAGE: usize = 20;
/// Latency shards: a client records into shard `client % SHARDS` under its lock, so the two
/// worker threads seldom meet on one.
const SHARDS: usize = 8;
/// How long after the end of a phase a request may still be outstanding before its client is
/// aborted (and counted as an error).
const GRACE: Duration = Duration::from_secs(10);
/// The most slow requests kept a phase (`LOAD_SLOW_MS`).
const SLOW_KEPT: usize = 100_000;

/// The rest of the document the wrk scripts (shared/bench/cc_put.lua, etcd_put.lua) send:
/// with its id, ~200 bytes of JSON.
const DOC_REST: &str = r#""user_id":42,"created":1700000000,"last_used":1700000100,"domain":"example.com","path":"/","secure":true,"http_only":true,"value":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Sys {
    Cookie,
    Etcd,
}

impl Sys {
    fn name(self) -> &'static str {
        match self {
            Sys::Cookie => "cookie-crud",
            Sys::Etcd => "etcd",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Work {
    /// Unique-id creates to the leader: `POST /cookies`, etcd `POST /v3/kv/put`.
    Creates,
    /// Updates of preloaded records to the leader, the whole document again with another
    /// value: `PUT /cookies/{id}` (a merge at apply), etcd `POST /v3/kv/put` of an existing
    /// key.
    Updates,
    /// Linearizable point reads of preloaded records on a follower: `GET /cookies/{id}`,
    /// etcd `POST /v3/kv/range`.
    Reads,
    /// Read-modify-write cycles (compare-and-set) on preloaded records, where the writes go:
    /// a linearizable read for the record's version, then a write on condition that the
    /// version is still that one, again from the read until one applies. cookie-crud:
    /// `GET /cookies/{id}` (its `ETag`), then `PUT` with `If-Match` (412: lost the race);
    /// etcd: `POST /v3/kv/range` (its `mod_revision`), then `POST /v3/kv/txn` comparing it.
    /// A cycle that applied counts as a request (its latency from its read); each lost
    /// race counts as a non-2xx answer.
    Cas,
    /// Records that come and go, as sessions do: each client creates a record of its own,
    /// then deletes it, then creates the next, to the writers. cookie-crud: `POST
    /// /cookies`, then `DELETE /cookies/{id}`; etcd: a put, then `POST /v3/kv/deleterange`
    /// of the key. Each request counts, so req/s is writes/s, half of them deletes.
    Churn,
    /// The first page of the list, linearizable, on a follower: cookie-crud `GET
    /// /cookies?limit=20` (the newest 20 records); etcd `POST /v3/kv/range` of the
    /// records' prefix with `limit` 20 (in key order, its cheapest page: a page in order of
    /// creation would sort the whole range).
    Lists,
    /// Reads and writes at once, as a service's traffic is, from clients spread over the
    /// three nodes (client `i` on node `i % 3`, as behind a load balancer; a follower
    /// forwards its writes): of each client's requests, one in ten is an update of a
    /// preloaded record (as the updates phase's), the rest linearizable point reads (as
    /// the reads phase's).
    Mixed,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Creates => "creates",
            Work::Updates => "updates",
            Work::Reads => "reads",
            Work::Cas => "cas",
            Work::Churn => "churn",
            Work::Lists => "lists",
            Work::Mixed => "mixed",
        }
    }
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// What a system's requests share, made once: paths, the document, the reads' and
/// updates' requests.
struct Templates {
    sys: Sys,
    /// etcd's value: the document without its id, base64 (as etcd_put.lua sends it).
    doc64: String,
    /// The read phase's requests, one per preloaded record: (path, body).
    reads: Vec<(Uri, Bytes)>,
    /// The update phase's requests, one per preloaded record.
    updates: Vec<Req>,
    /// Creates and updates carry an `Idempotency-Key` each (`LOAD_IDEMPOTENCY`, cookie-crud).
    keyed: bool,
    /// The compare-and-set phase's records, one each (`cookie:cas-<i>`).
    cas: Vec<Cas>,
    /// One in this many of a mixed phase's requests is an update (`LOAD_MIXED_EVERY`).
    mixed_every: Option<usize>,
    /// The list phase's request: the first page of [`list_page`] records.
    list: Req,
}

/// One record's compare-and-set requests: the read, and the conditional write around the
/// version the read returns.
struct Cas {
    read: Req,
    /// cookie-crud: the `PUT`'s path and body (the version goes in `If-Match`). etcd: the
    /// txn's path and its body up to the `mod_revision`, and after it.
    write: Uri,
    head: Bytes,
    tail: String,
}

/// Where the writes go (`LOAD_WRITES_TO`).
#[derive(Clone, Copy, PartialEq, Debug)]
enum WritesTo {
    Leader,
    Follower,
    Spread,
}

impl WritesTo {
    fn from_env() -> WritesTo {
        match std::env::var("LOAD_WRITES_TO").as_deref() {
            Err(_) | Ok("") | Ok("leader") => WritesTo::Leader,
            Ok("follower") => WritesTo::Follower,
            Ok("spread") => WritesTo::Spread,
            Ok(other) => panic!("LOAD_WRITES_TO={other}: leader, follower or spread"),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            WritesTo::Leader => "to the leader",
            WritesTo::Follower => "to a follower (forwarded to the leader)",
            WritesTo::Spread => "spread over the three nodes (client i on node i % 3)",
        }
    }
}

/// Whether cookie-crud's writes carry idempotency keys (`LOAD_IDEMPOTENCY`).
fn keyed_writes() -> bool {
    env_num("LOAD_IDEMPOTENCY", 0) != 0
}

/// The nodes' configuration beyond the bench's defaults (`LOAD_KEY_RETENTION_SECS`).
fn node_config() -> String {
    match std::env::var("LOAD_KEY_RETENTION_SECS") {
        Ok(secs) if !secs.trim().is_empty() => {
            let secs: u64 = secs
                .trim()
                .parse()
                .expect("LOAD_KEY_RETENTION_SECS: seconds");
            format!("idempotency_retention_secs = {secs}\n")
        }
        _ => String::new(),
    }
}

/// Records the compare-and-set phase works on (`LOAD_CAS_KEYS`, at least 1): as many as
/// the updates by default, so that clients seldom race; 1: every client on one record (a
/// counter everyone increments).
fn cas_keys() -> usize {
    env_num("LOAD_CAS_KEYS", UPDATE_KEYS).max(1)
}

/// Records a list phase's page asks for (`LOAD_LIST_PAGE`, at least 1).
fn list_page() -> usize {
    env_num("LOAD_LIST_PAGE", LIST_PAGE).max(1)
}

/// Records the update phase updates (`LOAD_UPDATE_KEYS`, at least 1).
fn update_keys() -> usize {
    env_num("LOAD_UPDATE_KEYS", UPDATE_KEYS).max(1)
}

impl Templates {
    fn new(sys: Sys) -> Templates {
        let doc64 = b64(format!("{{{DOC_REST}").as_bytes());
        let reads = (0..READ_KEYS)
            .map(|i| {
                let id = format!("cookie:read-{i}");
                match sys {
                    Sys::Cookie => (
                        Uri::try_from(format!("/cookies/{id}")).unwrap(),
                        Bytes::new(),
                    ),
                    Sys::Etcd => (
                        Uri::from_static("/v3/kv/range"),
                        Bytes::from(format!(r#"{{"key":"{}"}}"#, b64(id.as_bytes()))),
                    ),
                }
            })
            .collect();
        // The same document with another value: the merge replaces every field.
        let rest = DOC_REST.replace('x', "y");
        let updates = (0..update_keys())
            .map(|i| {
                let id = format!("cookie:upd-{i}");
                match sys {
                    Sys::Cookie => Req(
                        Method::PUT,
                        Uri::try_from(format!("/cookies/{id}")).unwrap(),
                        Bytes::from(format!(r#"{{"cookie":"{id}",{rest}"#)),
                        None,
                    ),
                    Sys::Etcd => Req(
                        Method::POST,
                        Uri::from_static("/v3/kv/put"),
                        Bytes::from(format!(
                            r#"{{"key":"{}","value":"{}"}}"#,
                            b64(id.as_bytes()),
                            b64(format!("{{{rest}").as_bytes())
                        )),
                        None,
                    ),
                }
            })
            .collect();
        let rest = DOC_REST.replace('x', "z");
        let cas = (0..cas_keys())
            .map(|i| {
                let id = format!("cookie:cas-{i}");
                match sys {
                    Sys::Cookie => Cas {
                        read: Req::bodiless(Method::GET, format!("/cookies/{id}")),
                        write: Uri::try_from(format!("/cookies/{id}")).unwrap(),
                        head: Bytes::from(format!(r#"{{"cookie":"{id}",{rest}"#)),
                        tail: String::new(),
                    },
                    Sys::Etcd => {
                        let key = b64(id.as_bytes());
                        let value = b64(format!("{{{rest}").as_bytes());
                        Cas {
                            read: Req::etcd("/v3/kv/range", format!(r#"{{"key":"{key}"}}"#)),
                            write: Uri::from_static("/v3/kv/txn"),
                            head: Bytes::from(format!(
                                r#"{{"compare":[{{"key":"{key}","result":"EQUAL","target":"MOD","mod_revision":""#
                            )),
                            tail: format!(
                                r#""}}],"success":[{{"request_put":{{"key":"{key}","value":"{value}"}}}}]}}"#
                            ),
                        }
                    }
                }
            })
            .collect();
        let page = list_page();
        let list = match sys {
            Sys::Cookie => Req::bodiless(Method::GET, format!("/cookies?limit={page}")),
            Sys::Etcd => Req::etcd(
                "/v3/kv/range",
                format!(
                    r#"{{"key":"{}","range_end":"{}","limit":{page}}}"#,
                    b64(b"cookie:"),
                    b64(b"cookie;")
                ),
            ),
        };
        Templates {
            sys,
            doc64,
            list,
            reads,
            updates,
            keyed: sys == Sys::Cookie && keyed_writes(),
            cas,
            mixed_every: Some(env_num("LOAD_MIXED_EVERY", MIXED_EVERY)).filter(|&e| e > 0),
        }
    }

    /// A create of record `id`: cookie-crud's `POST /cookies` or etcd's put.
    fn create(&self, id: &str) -> Req {
        let mut body = Vec::with_capacity(400);
        match self.sys {
            Sys::Cookie => {
                body.extend_from_slice(br#"{"cookie":""#);
                body.extend_from_slice(id.as_bytes());
                body.extend_from_slice(b"\",");
                body.extend_from_slice(DOC_REST.as_bytes());
            }
            Sys::Etcd => {
                body.extend_from_slice(br#"{"key":""#);
                let at = body.len();
                body.resize(at + id.len().div_ceil(3) * 4, 0);
                base64::engine::general_purpose::STANDARD
                    .encode_slice(id.as_bytes(), &mut body[at..])
                    .unwrap();
                body.extend_from_slice(br#"","value":""#);
                body.extend_from_slice(self.doc64.as_bytes());
                body.extend_from_slice(b"\"}");
            }
        }
        let path = match self.sys {
            Sys::Cookie => Uri::from_static("/cookies"),
            Sys::Etcd => Uri::from_static("/v3/kv/put"),
        };
        Req(Method::POST, path, Bytes::from(body), None)
    }

    /// A delete of record `id`: cookie-crud's `DELETE /cookies/{id}` or etcd's deleterange.
    fn delete(&self, id: &str) -> Req {
        match self.sys {
            Sys::Cookie => Req::bodiless(Method::DELETE, format!("/cookies/{id}")),
            Sys::Etcd => Req::etcd(
                "/v3/kv/deleterange",
                format!(r#"{{"key":"{}"}}"#, b64(id.as_bytes())),
            ),
        }
    }

    /// The first page of the list.
    fn list(&self) -> Req {
        self.list.clone()
    }

    /// Whether a mixed phase's client's `n`th request is an update (else a read).
    fn mixed_update(&self, n: usize) -> bool {
        self.mixed_every
            .is_some_and(|every| n.is_multiple_of(every))
    }

    /// An update of preloaded record `i`.
    fn update(&self, i: usize) -> Req {
        self.updates[i % self.updates.len()].clone()
    }

    /// A linearizable read of preloaded record `i`.
    fn read(&self, i: usize) -> Req {
        let (path, body) = &self.reads[i % READ_KEYS];
        let method = match self.sys {
            Sys::Cookie => Method::GET,
            Sys::Etcd => Method::POST,
        };
        Req(method, path.clone(), body.clone(), None)
    }
}

/// A request: method, path, JSON body (none when empty), and one more header when given
/// (`Idempotency-Key`, `If-Match`).
#[derive(Clone)]
struct Req(Method, Uri, Bytes, Option<(&'static str, String)>);

impl Req {
    /// A cookie-crud request to `path` with no body.
    fn bodiless(method: Method, path: String) -> Req {
        Req(method, Uri::try_from(path).unwrap(), Bytes::new(), None)
    }

    /// A `POST` of the JSON `body` to etcd's gateway at `path`.
    fn etcd(path: &'static str, body: String) -> Req {
        Req(
            Method::POST,
            Uri::from_static(path),
            Bytes::from(body),
            None,
        )
    }

    fn hyper(self, host: &HeaderValue) -> Request<Full<Bytes>> {
        let Req(method, uri, body, key) = self;
        let json = !body.is_empty();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(HOST, host.clone());
        if let Some((name, v)) = key {
            h.insert(name, HeaderValue::from_str(&v).unwrap());
        }
        if json {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        req
    }

    /// The request as HTTP/1.1 puts it on the wire, into `out`.
    fn wire(&self, host: &str, out: &mut Vec<u8>) {
        let Req(method, uri, body, key) = self;
        out.clear();
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(host.as_bytes());
        if let Some((name, v)) = key {
            let _ = write!(out, "\r\n{name}: {v}");
        }
        if !body.is_empty() {
            let _ = write!(
                out,
                "\r\nContent-Type: application/json\r\nContent-Length: {}",
                body.len()
            );
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    }
}

/// One server to send to.
struct Target {
    addr: SocketAddr,
    /// `ip:port`, the Host header.
    host: String,
    host_value: HeaderValue,
    /// The client the load runs through.
    http: Http,
}

impl Target {
    fn new(url: &str, http: Http) -> Target {
        let host = url.trim_start_matches("http://");
        Target {
            addr: host.parse().expect("http://ip:port"),
            host: host.to_string(),
            host_value: HeaderValue::from_str(host).unwrap(),
            http,
        }
    }

    async fn connect(&self) -> Result<Conn, BoxError> {
        Conn::open(self.http, self.addr).await
    }
}

type BoxError = Box<dyn Error + Send + Sync>;

/// Which HTTP/1.1 client drives the connections (`LOAD_HTTP`).
#[derive(Clone, Copy, PartialEq)]
enum Http {
    /// Hand-rolled: the request written with one `write`, the response read into a reused
    /// buffer and framed with httparse, in the client's own task.
    Raw,
    /// hyper's low-level client connection (`conn::http1`), which runs the connection on a
    /// task of its own.
    Hyper,
}

impl Http {
    fn name(self) -> &'static str {
        match self {
            Http::Raw => "raw HTTP/1.1 (httparse)",
            Http::Hyper => "hyper conn::http1",
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
enum Conn {
    Raw(Raw),
    Hyper(SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn open(http: Http, addr: SocketAddr) -> Result<Conn, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(match http {
            Http::Raw => Conn::Raw(Raw {
                stream,
                rbuf: Vec::with_capacity(8192),
                wbuf: Vec::with_capacity(1024),
                closed: false,
            }),
            Http::Hyper => {
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Conn::Hyper(sender)
            }
        })
    }

    fn is_closed(&self) -> bool {
        match self {
            Conn::Raw(r) => r.closed,
            Conn::Hyper(h) => h.is_closed(),
        }
    }

    /// The last response whole, head and body (the raw client only).
    fn response(&self) -> Option<&[u8]> {
        match self {
            Conn::Raw(r) => Some(&r.rbuf),
            Conn::Hyper(_) => None,
        }
    }

    /// Send one request and read its whole response: its status.
    async fn exchange(&mut self, target: &Target, req: Req) -> Result<u16, BoxError> {
        match self {
            Conn::Raw(r) => Ok(r.exchange(&target.host, &req).await?),
            Conn::Hyper(h) => {
                h.ready().await?;
                let resp = h.send_request(req.hyper(&target.host_value)).await?;
                let status = resp.status().as_u16();
                let mut body = resp.into_body();
                while let Some(frame) = body.frame().await {
                    frame?;
                }
                Ok(status)
            }
        }
    }
}

/// The hand-rolled client: one request at a time on one connection.
struct Raw {
    stream: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// The server said `Connection: close`.
    closed: bool,
}

impl Raw {
    async fn exchange(&mut self, host: &str, req: &Req) -> std::io::Result<u16> {
        req.wire(host, &mut self.wbuf);
        self.stream.write_all(&self.wbuf).await?;
        self.rbuf.clear();
        loop {
            if self.rbuf.capacity() - self.rbuf.len() < 2048 {
                self.rbuf.reserve(8192);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                self.closed = true;
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(r) = parse_response(&self.rbuf)? {
                if r.len != self.rbuf.len() {
                    // A closed loop: the server has nothing else to send.
                    self.closed = true;
                    return Err(invalid("bytes after the response"));
                }
                self.closed = r.close;
                return Ok(r.status);
            }
        }
    }
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string())
}

/// A whole response at the start of a buffer.
#[derive(Debug, PartialEq)]
struct Parsed {
    status: u16,
    /// Its length, head and body.
    len: usize,
    /// `Connection: close`, or HTTP/1.0.
    close: bool,
}

/// The response at the start of `buf` if it is all there (`None`: read more). Bodies are
/// framed by Content-Length or chunked encoding; other framings are refused.
fn parse_response(buf: &[u8]) -> std::io::Result<Option<Parsed>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf).map_err(|e| invalid(&e.to_string()))? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.unwrap_or(0);
    let (mut length, mut chunked, mut close) = (None, false, resp.version == Some(0));
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| invalid("Content-Length"))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body = &buf[head..];
    let body_len = if chunked {
        match chunked_len(body)? {
            Some(n) => n,
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if body.len() < n {
            return Ok(None);
        }
        n
    } else if status / 100 == 1 || status == 204 || status == 304 {
        0
    } else {
        return Err(invalid(
            "a response without Content-Length or chunked encoding",
        ));
    };
    Ok(Some(Parsed {
        status,
        len: head + body_len,
        close,
    }))
}

/// The length of a complete chunked body at the start of `body` (trailers included).
fn chunked_len(body: &[u8]) -> std::io::Result<Option<usize>> {
    let line_end = |at: usize| body[at..].windows(2).position(|w| w == b"\r\n");
    let mut at = 0;
    loop {
        let Some(eol) = line_end(at) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&body[at..at + eol]).map_err(|_| invalid("chunk size"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("chunk size"))?;
        at += eol + 2;
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let Some(eol) = line_end(at) else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if body.len() < at + size + 2 {
            return Ok(None);
        }
        if &body[at + size..at + size + 2] != b"\r\n" {
            return Err(invalid("chunk without its CRLF"));
        }
        at += size + 2;
    }
}

/// The framing above on the shapes etcd's gateway and cookie-crud answer with, whole and cut
/// short at every byte: run at start, so a wrong parse cannot pass as fast answers.
fn check_parser() {
    let cases: [(&[u8], u16, bool); 4] = [
        (b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\n{\"a\"}", 201, false),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n", 200, false),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n", 200, false),
        (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 503, true),
    ];
    for (wire, status, close) in cases {
        let whole = Parsed {
            status,
            len: wire.len(),
            close,
        };
        assert_eq!(parse_response(wire).unwrap(), Some(whole));
        for cut in 0..wire.len() {
            assert_eq!(parse_response(&wire[..cut]).unwrap(), None, "cut at {cut}");
        }
    }
    assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nbody").is_err());
}

/// A one-off request (leader discovery): status and body, through hyper.
async fn once(target: &Target, req: Req) -> Option<(u16, String)> {
    let Ok(Conn::Hyper(mut conn)) = Conn::open(Http::Hyper, target.addr).await else {
        return None;
    };
    conn.ready().await.ok()?;
    let resp = conn
        .send_request(req.hyper(&target.host_value))
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Requests of one second, or of a whole phase.
struct Tally {
    hist: Histogram<u64>,
    non2xx: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Histogram::new(3).unwrap(),
            non2xx: 0,
            errors: 0,
        }
    }

    fn add(&mut self, o: &Tally) {
        self.hist.add(&o.hist).unwrap();
        self.non2xx += o.non2xx;
        self.errors += o.errors;
    }
}

/// Latencies (µs) of acknowledged (2xx) requests, for the phase and for each second of it
/// (by the second the response completed in; what completes after the end counts in the
/// last second). Non-2xx answers and transport errors are only counted.
struct Recorder {
    start: Instant,
    /// `start` on the wall clock, in seconds since the Unix epoch.
    wall_start: f64,
    secs: usize,
    shards: Vec<Mutex<Shard>>,
    /// `LOAD_SLOW_MS`, in µs.
    slow_us: Option<u64>,
}

/// What the clients of one shard recorded.
struct Shard {
    all: Tally,
    per_sec: Vec<Tally>,
    /// Requests over `LOAD_SLOW_MS`: (sent, seconds since the Unix epoch; latency, µs), kept
    /// under the lock the request already takes.
    slow: Vec<(f64, u64)>,
}

enum Outcome {
    Ok(u64),
    Non2xx,
    Error,
}

impl Recorder {
    fn new(start: Instant, secs: usize, slow_us: Option<u64>) -> Recorder {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Recorder {
            start,
            wall_start: wall.as_secs_f64() - start.elapsed().as_secs_f64(),
            secs,
            slow_us,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        all: Tally::new(),
                        per_sec: (0..secs).map(|_| Tally::new()).collect(),
                        slow: Vec::new(),
                    })
                })
                .collect(),
        }
    }

    fn record(&self, client: usize, at: Instant, outcome: Outcome) {
        let sec = ((at - self.start).as_secs() as usize).min(self.secs - 1);
        let mut shard = self.shards[client % SHARDS].lock().unwrap();
        let Shard { all, per_sec, slow } = &mut *shard;
        let this = &mut per_sec[sec];
        match outcome {
            Outcome::Ok(us) => {
                all.hist.record(us.max(1)).unwrap();
                this.hist.record(us.max(1)).unwrap();
                if self.slow_us.is_some_and(|limit| us > limit) && slow.len() < SLOW_KEPT / SHARDS {
                    let done = self.wall_start + (at - self.start).as_secs_f64();
                    slow.push((done - us as f64 / 1e6, us));
                }
            }
            Outcome::Non2xx => {
                all.non2xx += 1;
                this.non2xx += 1;
            }
            Outcome::Error => {
                all.errors += 1;
                this.errors += 1;
            }
        }
    }

    /// The slow requests, by the time they were sent.
    fn slow(&self) -> Vec<(f64, u64)> {
        let mut slow: Vec<(f64, u64)> = self
            .shards
            .iter()
            .flat_map(|s| std::mem::take(&mut s.lock().unwrap().slow))
            .collect();
        slow.sort_by(|a, b| a.0.total_cmp(&b.0));
        slow
    }

    /// The phase and each of its seconds, over all shards.
    fn merge(&self) -> (Tally, Vec<Tally>) {
        let mut all = Tally::new();
        let mut per_sec: Vec<Tally> = (0..self.secs).map(|_| Tally::new()).collect();
        for shard in &self.shards {
            let shard = shard.lock().unwrap();
            all.add(&shard.all);
            for (s, o) in per_sec.iter_mut().zip(&shard.per_sec) {
                s.add(o);
            }
        }
        (all, per_sec)
    }
}

/// One client: a closed loop on its own connection until `end`, reconnecting after an error.
async fn client(
    id: usize,
    mut conn: Option<Conn>,
    target: Arc<Target>,
    t: Arc<Templates>,
    work: Work,
    tag: String,
    rec: Arc<Recorder>,
    end: Instant,
) {
    let mut n: usize = 0;
    let mut key = String::with_capacity(64);
    let mut now = Instant::now();
    while now < end {
        let c = match &mut conn {
            Some(c) if !c.is_closed() => c,
            _ => match target.connect().await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    conn = None;
                    rec.record(id, Instant::now(), Outcome::Error);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    now = Instant::now();
                    continue;
                }
            },
        };
        n += 1;
        // Client `id` walks the records from its own start, 7,919 (a prime) apart.
        let walk = id.wrapping_mul(7919).wrapping_add(n);
        let mut req = match work {
            Work::Creates => {
                key.clear();
                let _ = write!(key, "cookie:{tag}-{id}-{n}");
                Some(t.create(&key))
            }
            Work::Updates => Some(t.update(walk)),
            Work::Reads => Some(t.read(walk)),
            // Two requests, made in `cas_once`.
            Work::Cas => None,
            // Odd: create a record; even: delete the one just created.
            Work::Churn => {
                let deletes = n.is_multiple_of(2);
                key.clear();
                let _ = write!(key, "cookie:{tag}-{id}-{}", n - deletes as usize);
                Some(match deletes {
                    false => t.create(&key),
                    true => t.delete(&key),
                })
            }
            Work::Lists => Some(t.list()),
            Work::Mixed if t.mixed_update(n) => Some(t.update(walk)),
            Work::Mixed => Some(t.read(walk)),
        };
        let writes = match work {
            Work::Reads | Work::Lists => false,
            Work::Mixed => t.mixed_update(n),
            _ => true,
        };
        if let Some(r) = req.as_mut().filter(|_| t.keyed && writes) {
            r.3 = Some(("Idempotency-Key", format!("{tag}-{id}-{n}")));
        }
        let sent = Instant::now();
        // Whether the request (or the cycle) did what it asked.
        let result = match req {
            Some(req) => c
                .exchange(&target, req)
                .await
                .map(|s| (200..300).contains(&s)),
            None => cas_once(c, &target, &t, walk).await,
        };
        now = Instant::now();
        let outcome = match result {
            Ok(true) => Outcome::Ok((now - sent).as_micros() as u64),
            Ok(false) => Outcome::Non2xx,
            Err(_) => {
                conn = None;
                Outcome::Error
            }
        };
        rec.record(id, now, outcome);
    }
}

/// One compare-and-set on record `i`: read its version, then write on condition that it is
/// still that one. Whether the write applied (`false`: another client's came first, or the
/// read found no record).
async fn cas_once(
    c: &mut Conn,
    target: &Target,
    t: &Templates,
    i: usize,
) -> Result<bool, BoxError> {
    let cas = &t.cas[i % t.cas.len()];
    if c.exchange(target, cas.read.clone()).await? != 200 {
        return Ok(false);
    }
    let read = c.response().ok_or("compare-and-set needs LOAD_HTTP=raw")?;
    let write = match t.sys {
        Sys::Cookie => {
            let etag = header(read, "etag").ok_or("a read without an ETag")?;
            Req(
                Method::PUT,
                cas.write.clone(),
                cas.head.clone(),
                Some(("If-Match", etag.to_owned())),
            )
        }
        Sys::Etcd => {
            let rev = json_string(read, "mod_revision").ok_or("a range without mod_revision")?;
            let mut body = Vec::with_capacity(cas.head.len() + rev.len() + cas.tail.len());
            body.extend_from_slice(&cas.head);
            body.extend_from_slice(rev.as_bytes());
            body.extend_from_slice(cas.tail.as_bytes());
            Req(Method::POST, cas.write.clone(), Bytes::from(body), None)
        }
    };
    let status = c.exchange(target, write).await?;
    Ok(match t.sys {
        Sys::Cookie => status == 200,
        // etcd answers a txn whose comparison failed with 200 too, without `succeeded`.
        Sys::Etcd => {
            status == 200
                && c.response()
                    .is_some_and(|r| r.windows(SUCCEEDED.len()).any(|w| w == SUCCEEDED))
        }
    })
}

/// What etcd's answer to a txn holds when its comparison held.
const SUCCEEDED: &[u8] = br#""succeeded":true"#;

/// Header `name`'s value in the response `resp` (head and body), if it has one.
fn header<'r>(resp: &'r [u8], name: &str) -> Option<&'r str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    parsed.parse(resp).ok()?;
    let value = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))?
        .value;
    std::str::from_utf8(value).ok()
}

/// The string value of the first `"field":"..."` in `resp`'s body (etcd's JSON gateway
/// writes its 64-bit numbers as strings).
fn json_string<'r>(resp: &'r [u8], field: &str) -> Option<&'r str> {
    let text = std::str::from_utf8(resp).ok()?;
    let at = text.find(&format!(r#""{field}":""#))? + field.len() + 4;
    let end = text[at..].find('"')?;
    Some(&text[at..at + end])
}

/// A phase's results.
struct Run {
    sys: Sys,
    work: Work,
    clients: usize,
    /// Wall seconds from the start to the last client's end.
    secs: f64,
    all: Tally,
    per_sec: Vec<Tally>,
    /// Requests over `LOAD_SLOW_MS`: (sent, Unix seconds; latency, µs).
    slow: Vec<(f64, u64)>,
    /// CPU seconds the servers and the load generator (this process) used in the phase.
    server_cpu: f64,
    gen_cpu: f64,
    /// Context switches of the servers' threads in the phase.
    server_switches: u64,
    /// With `BENCH_CPU_QUOTA`: the largest share of a server's CPU periods in the phase in
    /// which it ran out of quota (near 1: held by its CPU, as the quota bench means it to be).
    throttled: Option<f64>,
}

impl Run {
    fn ok(&self) -> u64 {
        self.all.hist.len()
    }
    /// Every request sent (acknowledged, refused, failed): what the CPU per request divides by.
    fn sent(&self) -> u64 {
        self.ok() + self.all.non2xx + self.all.errors
    }
    fn rate(&self) -> f64 {
        self.ok() as f64 / self.secs
    }
    /// Latency at quantile `q`, in ms.
    fn p(&self, q: f64) -> f64 {
        ms(self.all.hist.value_at_quantile(q))
    }
    fn server_us(&self) -> f64 {
        self.server_cpu * 1e6 / self.sent().max(1) as f64
    }
    fn switches_per_req(&self) -> f64 {
        self.server_switches as f64 / self.sent().max(1) as f64
    }
    fn gen_us(&self) -> f64 {
        self.gen_cpu * 1e6 / self.sent().max(1) as f64
    }
    fn label(&self) -> String {
        format!("{}@{}", self.work.name(), self.clients)
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A closed loop of `clients` connections for `secs` seconds, client `i` on `targets[i %
/// targets.len()]`.
async fn run(
    sys: Sys,
    targets: &[Arc<Target>],
    t: &Arc<Templates>,
    work: Work,
    clients: usize,
    secs: u64,
    server_pids: &[u32],
) -> Run {
    // Connect first, so that the phase measures requests, not 256 handshakes.
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        conns.push(targets[i % targets.len()].connect().await.ok());
    }
    let me = [std::process::id()];
    let (gen_before, server_before) = (cpu_seconds(&me), cpu_seconds(server_pids));
    let switches_before = context_switches(server_pids);
    let throttled_before: Vec<_> = server_pids
        .iter()
        .map(|&p| cpu_quota::throttled(p))
        .collect();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let slow_us = std::env::var("LOAD_SLOW_MS")
        .ok()
        .and_then(|ms| ms.parse::<f64>().ok())
        .map(|ms| (ms * 1000.0) as u64);
    let rec = Arc::new(Recorder::new(start, secs.max(1) as usize, slow_us));
    let tag = format!("{}{clients}", work.name());
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(id, conn)| {
            tokio::spawn(client(
                id,
                conn,
                targets[id % targets.len()].clone(),
                t.clone(),
                work,
                tag.clone(),
                rec.clone(),
                end,
            ))
        })
        .collect();
    let give_up = tokio::time::Instant::from_std(end + GRACE);
    for (id, task) in tasks.into_iter().enumerate() {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(give_up, task).await.is_err() {
            abort.abort();
            rec.record(id, Instant::now(), Outcome::Error);
        }
    }
    let secs_run = start.elapsed().as_secs_f64();
    let (gen_cpu, server_cpu) = (
        cpu_seconds(&me) - gen_before,
        cpu_seconds(server_pids) - server_before,
    );
    let server_switches = context_switches(server_pids).saturating_sub(switches_before);
    let throttled = server_pids
        .iter()
        .zip(throttled_before)
        .filter_map(|(&p, before)| {
            let ((t0, n0), (t1, n1)) = (before?, cpu_quota::throttled(p)?);
            Some((t1 - t0) as f64 / (n1 - n0).max(1) as f64)
        })
        .reduce(f64::max);
    let (all, per_sec) = rec.merge();
    Run {
        sys,
        work,
        clients,
        secs: secs_run,
        all,
        per_sec,
        slow: rec.slow(),
        server_cpu,
        gen_cpu,
        server_switches,
        throttled,
    }
}

/// Create records `cookie:<prefix>-<i>` for `i` below `n`: what a read or update phase
/// reads or updates.
async fn preload(target: &Arc<Target>, t: &Arc<Templates>, prefix: &'static str, n: usize) {
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let (target, t) = (target.clone(), t.clone());
            tokio::spawn(async move {
                let mut conn = target.connect().await.expect("connect");
                for i in (w..n).step_by(16) {
                    let req = t.create(&format!("cookie:{prefix}-{i}"));
                    let status = conn.exchange(&target, req).await.expect("preload");
                    assert!((200..300).contains(&status), "preload: status {status}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// The leader's URL and the followers', from each node's own view (a minute at most).
async fn leader_and_followers(sys: Sys, urls: &[String]) -> (String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut leader = None;
        let mut followers = Vec::new();
        for url in urls {
            let target = Target::new(url, Http::Hyper);
            let is_leader = match sys {
                Sys::Cookie => {
                    let req = Req(Method::GET, Uri::from_static("/health"), Bytes::new(), None);
                    once(&target, req).await.and_then(|(_, b)| {
                        let v: serde_json::Value = serde_json::from_str(&b).ok()?;
                        Some(v["role"] == "leader")
                    })
                }
                Sys::Etcd => {
                    let req = Req(
                        Method::POST,
                        Uri::from_static("/v3/maintenance/status"),
                        Bytes::from_static(b"{}"),
                        None,
                    );
                    once(&target, req).await.and_then(|(_, b)| {
                        let v: serde_json::Value = serde_json::from_str(&b).ok()?;
                        let me = v["header"]["member_id"].as_str()?;
                        Some(v["leader"].as_str()? == me)
                    })
                }
            };
            match is_leader {
                Some(true) => leader = Some(url.clone()),
                Some(false) => followers.push(url.clone()),
                None => {}
            }
        }
        if let (Some(l), false) = (leader, followers.is_empty()) {
            return (l, followers);
        }
        assert!(Instant::now() < deadline, "{}: no leader", sys.name());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run `phases` against one system, started here and stopped at the end.
async fn measure(sys: Sys, etcd: Option<&str>, phases: &[(Work, usize)], cfg: &Cfg) -> Vec<Run> {
    let (urls, pids, running): (Vec<String>, Vec<u32>, Box<dyn std::any::Any>) = match (sys, etcd) {
        (Sys::Cookie, _) => {
            let nodes = Nodes::start(3, &node_config()).await;
            (nodes.urls(), nodes.procs.pids(), Box::new(nodes))
        }
        (Sys::Etcd, Some(bin)) => {
            let etcd = Etcd::start(bin).await;
            (etcd.urls.clone(), etcd.procs.pids(), Box::new(etcd))
        }
        (Sys::Etcd, None) => unreachable!(),
    };
    let (leader, followers) = leader_and_followers(sys, &urls).await;
    eprintln!(
        "{}: leader {leader}, reads on follower {}, writes {}",
        sys.name(),
        followers[0],
        cfg.writes_to.describe()
    );
    let (leader, followers): (_, Vec<_>) = (
        Arc::new(Target::new(&leader, cfg.http)),
        followers
            .iter()
            .map(|f| Arc::new(Target::new(f, cfg.http)))
            .collect(),
    );
    let follower = vec![followers[0].clone()];
    let every: Vec<_> = std::iter::once(leader.clone())
        .chain(followers.iter().cloned())
        .collect();
    let writers = match cfg.writes_to {
        WritesTo::Leader => vec![leader.clone()],
        WritesTo::Follower => follower.clone(),
        WritesTo::Spread => every.clone(),
    };
    let t = Arc::new(Templates::new(sys));
    if phases
        .iter()
        .any(|(w, _)| matches!(w, Work::Reads | Work::Lists | Work::Mixed))
    {
        preload(&leader, &t, "read", READ_KEYS).await;
    }
    if phases
        .iter()
        .any(|(w, _)| matches!(w, Work::Updates | Work::Mixed))
    {
        preload(&leader, &t, "upd", update_keys()).await;
    }
    if phases.iter().any(|(w, _)| *w == Work::Cas) {
        preload(&leader, &t, "cas", cas_keys()).await;
    }
    let mut runs = Vec::new();
    for &(work, clients) in phases {
        let targets = match work {
            Work::Creates | Work::Updates | Work::Cas | Work::Churn => &writers,
            Work::Reads | Work::Lists => &follower,
            Work::Mixed => &every,
        };
        let r = run(sys, targets, &t, work, clients, cfg.secs, &pids).await;
        eprintln!(
            "{} {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, non-2xx {}, errors {}, load generator {:.1} µs/req{}",
            sys.name(),
            r.label(),
            r.rate(),
            r.p(0.5),
            r.p(0.99),
            ms(r.all.hist.max()),
            r.all.non2xx,
            r.all.errors,
            r.gen_us(),
            r.throttled
                .map(|t| format!(", busiest node throttled in {:.0}% of its CPU periods", t * 100.0))
                .unwrap_or_default()
        );
        runs.push(r);
    }
    drop(running);
    runs
}

fn print_tables(runs: &[Run], phases: &[(Work, usize)], cfg: &Cfg) {
    println!(
        "\n{} s per phase, 3 nodes each on 127.0.0.1, creates and updates (of {} records) {}, linearizable reads and first pages of the list ({} records; etcd: in key order) on a follower, compare-and-set cycles (read, then a write on condition of the version read; req/s: cycles that applied, non-2xx: races lost) on {} records and churn (each client creates a record, then deletes it; req/s counts both) where the writes go, mixed (1 update in 10 requests, the rest linearizable reads, client i on node i % 3), ~200-byte records, fsync on; load generator: {}, one keep-alive connection per client, {} worker threads",
        cfg.secs,
        update_keys(),
        cfg.writes_to.describe(),
        list_page(),
        cas_keys(),
        cfg.http.name(),
        cfg.threads
    );
    if let Some(cores) = cpu_quota::configured() {
        println!("CPU quota per server process (BENCH_CPU_QUOTA): {cores} cores");
    }
    if keyed_writes() {
        println!(
            "cookie-crud's creates and updates each carry an Idempotency-Key of their own (etcd's writes have no equivalent); the nodes' config adds: {:?}",
            node_config()
        );
    }
    println!("| workload | clients | system | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-2xx | errors | server CPU µs/req | server switches/req | load gen CPU µs/req |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0} | {:.1} | {:.1} |",
            r.work.name(),
            r.clients,
            r.sys.name(),
            r.rate(),
            r.p(0.5),
            r.p(0.9),
            r.p(0.99),
            r.p(0.999),
            ms(r.all.hist.max()),
            r.all.non2xx,
            r.all.errors,
            r.server_us(),
            r.switches_per_req(),
            r.gen_us()
        );
    }
    if runs.iter().any(|r| r.throttled.is_some()) {
        println!("\n| workload | clients | system | CPU periods throttled, busiest node |");
        println!("|---|---|---|---|");
        for r in runs {
            if let Some(t) = r.throttled {
                println!(
                    "| {} | {} | {} | {:.0}% |",
                    r.work.name(),
                    r.clients,
                    r.sys.name(),
                    t * 100.0
                );
            }
        }
    }
    let find = |sys, (w, c): (Work, usize)| {
        runs.iter()
            .find(|r| r.sys == sys && r.work == w && r.clients == c)
    };
    if runs.iter().any(|r| r.sys == Sys::Etcd) {
        println!("\n| workload | clients | throughput cookie-crud/etcd | p99 cookie-crud/etcd |");
        println!("|---|---|---|---|");
        for &p in phases {
            if let (Some(c), Some(e)) = (find(Sys::Cookie, p), find(Sys::Etcd, p)) {
                println!(
                    "| {} | {} | **{:.2}x** | {:.2}x |",
                    p.0.name(),
                    p.1,
                    c.rate() / e.rate(),
                    c.p(0.99) / e.p(0.99)
                );
            }
        }
    }
}

/// The per-second series, one row per system, phase and second.
fn write_csv(path: &Path, runs: &[Run]) -> std::io::Result<()> {
    let mut out = String::from(
        "system,workload,clients,second,requests,p50_ms,p90_ms,p99_ms,max_ms,non2xx,errors\n",
    );
    for r in runs {
        for (i, s) in r.per_sec.iter().enumerate() {
            let h = &s.hist;
            let _ = writeln!(
                out,
                "{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{},{}",
                r.sys.name(),
                r.work.name(),
                r.clients,
                i + 1,
                h.len(),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.9)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                s.non2xx,
                s.errors
            );
        }
    }
    std::fs::write(path, out)?;
    if runs.iter().any(|r| !r.slow.is_empty()) {
        let mut out = String::from("system,workload,clients,sent_unix,latency_ms\n");
        for r in runs {
            for (sent, us) in &r.slow {
                let (sys, work) = (r.sys.name(), r.work.name());
                let _ = writeln!(out, "{sys},{work},{},{sent:.6},{:.3}", r.clients, ms(*us));
            }
        }
        std::fs::write(path.with_extension("slow.csv"), out)?;
    }
    Ok(())
}

/// Per-second p99 (thick) and p50 (thin) over each phase, one panel a phase, both systems in
/// it; log-scale latency, so a stall of 10x the p99 stands out next to the median.
fn plot(
    path: &Path,
    runs: &[Run],
    phases: &[(Work, usize)],
    secs: u64,
) -> Result<(), Box<dyn Error>> {
    use plotters::prelude::*;

    let panels: Vec<(Work, usize)> = phases
        .iter()
        .copied()
        .filter(|&(w, c)| runs.iter().any(|r| r.work == w && r.clients == c))
        .collect();
    let root = SVGBackend::new(path, (1000, 330 * panels.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, &(work, clients)) in root
        .split_evenly((panels.len().max(1), 1))
        .iter()
        .zip(&panels)
    {
        let rs: Vec<&Run> = runs
            .iter()
            .filter(|r| r.work == work && r.clients == clients)
            .collect();
        let series = |r: &Run, q: f64| -> Vec<(f64, f64)> {
            r.per_sec
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.hist.is_empty())
                .map(|(i, s)| (i as f64 + 0.5, ms(s.hist.value_at_quantile(q)).max(0.001)))
                .collect()
        };
        let values: Vec<f64> = rs
            .iter()
            .flat_map(|r| series(r, 0.5).into_iter().chain(series(r, 0.99)))
            .map(|(_, y)| y)
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(0.0, f64::max);
        // Whole decades: plotters labels a log axis from its first power of ten up.
        let (lo, hi) = if lo.is_finite() && hi > 0.0 {
            (
                10f64.powf(lo.log10().floor()),
                10f64.powf((hi * 1.2).log10().ceil()),
            )
        } else {
            (0.1, 1000.0)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{} at {clients} clients: per-second latency", work.name()),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..secs as f64, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .x_desc("seconds into the phase")
            .y_desc("latency, ms (log scale)")
            .x_label_formatter(&|v| format!("{v}"))
            // A grid line at every 1..9 x 10^k (up to three decades), labels at 1, 2 and 5.
            .y_labels(30)
            .y_label_formatter(&|v| {
                let m = v / 10f64.powf(v.log10().floor());
                if [1.0, 2.0, 5.0].iter().any(|k| (m - k).abs() < 0.01) {
                    format!("{}", (v * 1000.0).round() / 1000.0)
                } else {
                    String::new()
                }
            })
            .draw()?;
        for r in rs {
            let color = match r.sys {
                Sys::Cookie => BLUE,
                Sys::Etcd => RED,
            };
            let thick = color.stroke_width(2);
            let thin = color.mix(0.5).stroke_width(1);
            chart
                .draw_series(LineSeries::new(series(r, 0.99), thick))?
                .label(format!("{} p99", r.sys.name()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], thick));
            chart
                .draw_series(LineSeries::new(series(r, 0.5), thin))?
                .label(format!("{} p50", r.sys.name()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], thin));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The run's knobs, from the environment.
struct Cfg {
    secs: u64,
    threads: usize,
    http: Http,
    writes_to: WritesTo,
}

fn main() {
    check_parser();
    let cfg = Cfg {
        secs: env_num("LOAD_SECS", 30).max(1),
        threads: env_num("LOAD_THREADS", 2).max(1),
        http: match std::env::var("LOAD_HTTP").as_deref() {
            Ok("hyper") => Http::Hyper,
            Ok("raw") | Err(_) => Http::Raw,
            Ok(other) => panic!("LOAD_HTTP={other}: raw or hyper"),
        },
        writes_to: WritesTo::from_env(),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(cfg));
}

async fn bench(cfg: Cfg) {
    let clients: Vec<usize> = std::env::var("LOAD_CLIENTS")
        .unwrap_or_else(|_| "16 64 256".into())
        .split([' ', ','])
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let mut phases: Vec<(Work, usize)> = clients.iter().map(|&c| (Work::Creates, c)).collect();
    if let Some(&most) = clients.iter().max() {
        phases.push((Work::Updates, most));
        phases.push((Work::Reads, most));
        phases.push((Work::Lists, most));
        phases.push((Work::Cas, most));
        phases.push((Work::Churn, most));
        phases.push((Work::Mixed, most));
    }
    let only = std::env::var("LOAD_ONLY").ok();
    phases.retain(|(w, c)| {
        only.as_ref()
            .is_none_or(|o| format!("{}@{c}", w.name()).contains(o.as_str()))
    });
    let plot_path = PathBuf::from(
        std::env::var("LOAD_PLOT").unwrap_or_else(|_| "target/load-latency.svg".into()),
    );

    let mut runs = measure(Sys::Cookie, None, &phases, &cfg).await;
    let etcd = etcd_binary();
    match &etcd {
        Some(bin) => runs.extend(measure(Sys::Etcd, Some(bin), &phases, &cfg).await),
        None => eprintln!("etcd not found (or ETCD=none): measuring cookie-crud alone"),
    }

    print_tables(&runs, &phases, &cfg);
    if let Some(dir) = plot_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).unwrap();
    }
    let csv = plot_path.with_extension("csv");
    write_csv(&csv, &runs).unwrap();
    plot(&plot_path, &runs, &phases, cfg.secs).unwrap();
    println!(
        "\nPer-second latency: {} (plot), {} (series)",
        plot_path.display(),
        csv.display()
    );
}
