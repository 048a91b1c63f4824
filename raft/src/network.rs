//! Raft RPCs over HTTP: `POST /raft/{append,vote,snapshot}` with bincode bodies.
//!
//! Each peer's RPCs go over a [`Link`] of their own: one HTTP/1.1 connection driven by the
//! task that calls (`link.rs` says why). The server answers 200 with a bincode
//! `Result<Resp, RaftError>`; a connection that cannot be made is `Unreachable` (openraft
//! backs off instead of hot-looping); anything else is a `Network` error. [`PeerHttp`], a
//! pooled reqwest client, carries the other node-to-node requests (forwarded writes,
//! read-index, membership changes, probes). Each request names its target node id in
//! [`RAFT_TARGET_HEADER`], so a misconfigured address that reaches the wrong node is
//! refused rather than obeyed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Entry, EntryPayload, LogId};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::capped::Capped;
use crate::codec;
use crate::identity::{self, Identity, INCARNATION_HEADER};
use crate::idle::SpareCpu;
use crate::link::{Idle, Link, LinkError, Post};
use crate::types::{CookieNode, NodeId, TypeConfig};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};

/// Header naming the node id an RPC is meant for.
pub const RAFT_TARGET_HEADER: &str = "x-raft-target";

/// The routes of openraft's three RPCs: called here, served by the root crate's router, so
/// both name them from one place.
pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// Where this node reaches each peer's listener: the peer address in the replicated
/// membership, unless this node's config overrides it (split-horizon addressing, or a
/// fault-injection proxy placed on one node-to-node link). A membership written before peer
/// listeners existed names no peer address: such a member is reached at the one this
/// node's config gives it (`known`), else at its only address.
#[derive(Clone, Debug, Default)]
pub struct AddressBook {
    overrides: Arc<BTreeMap<NodeId, String>>,
    known: Arc<BTreeMap<NodeId, String>>,
}

impl AddressBook {
    pub fn new(overrides: BTreeMap<NodeId, String>, known: BTreeMap<NodeId, String>) -> Self {
        AddressBook {
            overrides: Arc::new(overrides),
            known: Arc::new(known),
        }
    }

    pub fn resolve(&self, id: NodeId, node: &CookieNode) -> String {
        if let Some(a) = self.overrides.get(&id) {
            return a.clone();
        }
        match node.peer_addr() {
            Some(a) => a.to_owned(),
            None => self.known.get(&id).unwrap_or(&node.addr).clone(),
        }
    }
}

/// Told of every Raft RPC this node sent that the peer answered (whatever the status): the
/// peer, the RPC by name (`append`, `vote`, `snapshot`) and the time from sending it to its
/// answer. openraft 0.9 keeps one AppendEntries in flight per follower, so these times
/// summed over a while, divided by that while, are how much of it the follower's stream
/// was busy: near 1, writes queue behind the round, whatever CPU the nodes have.
pub type RpcTimer = Arc<dyn Fn(NodeId, &'static str, Duration) + Send + Sync>;

/// The network factory: the TLS settings for each peer's link (in `client`), the address
/// book, an optional secret and this node's identity (every request names sender and
/// target incarnations).
#[derive(Clone)]
pub struct Network {
    client: PeerHttp,
    secret: Option<String>,
    book: AddressBook,
    identity: Arc<Identity>,
    /// Links the dropped `Conn`s left open, for the next ones to the same peers.
    idle: Idle,
    timer: Option<RpcTimer>,
    /// While it is set, a further AppendEntries goes at once ([`Conn::send_at_once`]).
    spare: SpareCpu,
}

/// An HTTP client for node-to-node traffic: pooled, no proxy, no Nagle, quick to give up
/// on a connection that cannot be made (the peer is down) so callers can back off; over
/// mutual TLS when the node has a peer certificate (`tls`: its CA as the only trust
/// anchor, its certificate as the client's).
#[derive(Clone, Debug)]
pub struct PeerHttp {
    client: reqwest::Client,
    scheme: &'static str,
    /// The TLS config the client was built with: Raft's own links use it too.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Make ring the process's rustls crypto provider, once. reqwest is built without a
/// provider of its own (no aws-lc build) and looks for the process default whenever it
/// builds a client, TLS or not: call this before building any (it is idempotent).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: another provider is already the default, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl PeerHttp {
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self, reqwest::Error> {
        install_crypto_provider();
        let builder = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30));
        let (builder, scheme) = match &tls {
            Some(config) => (
                builder
                    .tls_backend_preconfigured(rustls::ClientConfig::clone(config))
                    .https_only(true),
                "https",
            ),
            None => (builder, "http"),
        };
        Ok(PeerHttp {
            client: builder.build()?,
            scheme,
            tls,
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The URL of `path` on the peer listener at `addr`.
    pub fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }
}

impl Network {
    /// `client` is this factory's own (its own pool: see `PeerHttp`).
    pub fn new(
        secret: Option<String>,
        book: AddressBook,
        identity: Arc<Identity>,
        client: PeerHttp,
    ) -> Self {
        Network {
            client,
            secret,
            book,
            identity,
            idle: Idle::default(),
            timer: None,
            spare: SpareCpu::default(),
        }
    }

    /// Send a further AppendEntries at once while `spare` is set (see [`SpareCpu`]).
    pub fn with_spare_cpu(mut self, spare: SpareCpu) -> Self {
        self.spare = spare;
        self
    }

    /// Tell `timer` of every answered RPC (see [`RpcTimer`]).
    pub fn with_rpc_timer(mut self, timer: RpcTimer) -> Self {
        self.timer = Some(timer);
        self
    }
}

/// A connection to one peer: a [`Link`] of its own while it lives, one an earlier `Conn`
/// left idle or else a new one that connects on the first RPC (creating a `Conn` never
/// connects). Dropped, it leaves its link to the next (see [`Idle`]). `Err`: the peer's
/// address cannot be used (no such host name for TLS, bytes a header cannot carry),
/// reported by every RPC.
pub struct Conn {
    ready: Result<Ready, String>,
    target: NodeId,
    identity: Arc<Identity>,
    idle: Idle,
    timer: Option<RpcTimer>,
    spare: SpareCpu,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Ok(ready) = std::mem::replace(&mut self.ready, Err(String::new())) {
            self.idle.keep(ready.link);
        }
    }
}

/// A usable peer: its link, and the headers of its next RPC. The first `fixed` of them (the
/// target, the body's type, the peer credential) are the same for every RPC, so they are
/// built once; only this node's identity headers, which change as the registry learns the
/// peer's incarnation, are rebuilt per RPC.
struct Ready {
    link: Link,
    headers: Vec<(HeaderName, HeaderValue)>,
    fixed: usize,
}

impl Ready {
    fn new(
        link: Result<Link, LinkError>,
        secret: Option<&str>,
        target: NodeId,
    ) -> Result<Self, String> {
        let link = link.map_err(|e| e.to_string())?;
        let mut headers = vec![
            (
                HeaderName::from_static(RAFT_TARGET_HEADER),
                HeaderValue::from(target),
            ),
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
        ];
        if let Some(secret) = secret {
            let mut value = HeaderValue::from_str(&format!("Bearer {secret}"))
                .map_err(|e| format!("the peer secret cannot be sent as a header: {e}"))?;
            value.set_sensitive(true);
            headers.push((AUTHORIZATION, value));
        }
        let fixed = headers.len();
        Ok(Ready {
            link,
            headers,
            fixed,
        })
    }

    /// The headers of the next RPC: the fixed ones, then `identity`'s.
    fn headers(&mut self, identity: Vec<(&'static str, String)>) -> Result<(), String> {
        self.headers.truncate(self.fixed);
        for (name, v) in identity {
            let v = HeaderValue::from_str(&v).map_err(|e| e.to_string())?;
            self.headers.push((HeaderName::from_static(name), v));
        }
        Ok(())
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &CookieNode) -> Conn {
        let addr = self.book.resolve(target, node);
        let link = match self.idle.take(&addr) {
            Some(link) => Ok(link),
            None => Link::new(&addr, self.client.tls.clone()),
        };
        Conn {
            ready: Ready::new(link, self.secret.as_deref(), target),
            target,
            identity: self.identity.clone(),
            idle: self.idle.clone(),
            timer: self.timer.clone(),
            spare: self.spare.clone(),
        }
    }
}

/// Payload bytes of entries sent in one AppendEntries, at most (one larger entry still goes
/// alone). openraft caps a request by entry count only (`max_payload_entries`), and 256
/// group-commit batches of up to 2 MiB each would exceed the Raft routes' body limit: the
/// follower refused it, the leader retried the same range forever, and the log could not
/// be purged behind the follower (issue 12). A capped request answers PartialSuccess, and
/// openraft continues after the last entry sent.
pub const MAX_APPEND_BYTES: usize = 8 << 20;

/// An entry's payload size, as group commit counts it (commands' ids and JSON).
fn entry_bytes(entry: &Entry<TypeConfig>) -> usize {
    match &entry.payload {
        EntryPayload::Normal(req) => req.cmds.iter().map(|c| c.size()).sum(),
        EntryPayload::Blank | EntryPayload::Membership(_) => 0,
    }
}

/// Keep the longest prefix of `entries` within `budget` payload bytes (at least one entry);
/// the log id of the last entry kept when some were cut.
fn cap_entries(entries: &mut Vec<Entry<TypeConfig>>, budget: usize) -> Option<LogId<NodeId>> {
    let mut total = 0;
    let keep = entries
        .iter()
        .position(|e| {
            total += entry_bytes(e);
            total > budget
        })
        .map_or(entries.len(), |first_over| first_over.max(1));
    if keep == entries.len() {
        return None;
    }
    entries.truncate(keep);
    entries.last().map(|e| e.log_id)
}

type RpcErr<E> = RPCError<NodeId, CookieNode, RaftError<NodeId, E>>;

/// An answer's vote with a term past [`crate::types::MAX_TERM`] is not taken: openraft
/// would adopt it as it adopts a request's (see there). Refused as a peer that does not
/// answer sensibly.
fn term_in_range<E: std::error::Error>(vote: &openraft::Vote<NodeId>) -> Result<(), RpcErr<E>> {
    crate::types::term_in_range(vote).map_err(|e| {
        let why = std::io::Error::other(format!("a peer answered with {e}"));
        RPCError::Unreachable(Unreachable::new(&why))
    })
}

/// The most bytes read of a Raft RPC's answer (and of the peer listener's other small
/// answers). They are a bincode `Result` of a few dozen bytes, or a short JSON error:
/// anything longer is not a cookie-crud peer answering (a stale address now served by
/// something else), and is refused before it is buffered.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The most bytes of one body between peers, either way: the peer listener's request
/// limit (batches of entries, snapshot chunks, forwarded writes), and the bound on a
/// forwarded batch's answer (its records, which can be as large as the batch's writes).
pub const MAX_PEER_BODY_BYTES: usize = 256 << 20;

/// The body of `resp`, refused once it passes `limit` bytes: by its declared length before
/// reading, else as its chunks arrive. Every answer `PeerHttp` brings back is read through
/// this (Raft's own RPCs go through `Link`, which bounds its answers the same way).
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut body =
        Capped::new(resp.content_length().unwrap_or(0), limit).map_err(std::io::Error::other)?;
    while let Some(chunk) = resp.chunk().await.map_err(std::io::Error::other)? {
        body.push(&chunk).map_err(std::io::Error::other)?;
    }
    Ok(body.into_bytes())
}

/// Answers that say the peer refuses this node, not that a request failed: unauthorized,
/// misdirected, an identity mismatch, or no room on its disk for a snapshot (which a
/// retry a few milliseconds later does not find either).
fn lasting_refusal(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode as S;
    matches!(
        status,
        S::UNAUTHORIZED
            | S::FORBIDDEN
            | S::CONFLICT
            | S::MISDIRECTED_REQUEST
            | S::INSUFFICIENT_STORAGE
    )
}

impl Conn {
    async fn call<Req, Resp, E>(
        &mut self,
        path: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let network = |e: &dyn std::fmt::Display| {
            RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
        };
        let body = codec::encode(req).map_err(|e| network(&e))?;
        let ready = match &mut self.ready {
            Ok(ready) => ready,
            // An address that cannot work backs off like a peer that is down.
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(e.clone()),
                )))
            }
        };
        ready
            .headers(self.identity.request_headers(self.target))
            .map_err(|e| network(&e))?;
        let Ready { link, headers, .. } = ready;
        let post = Post {
            path,
            headers,
            body: body.into(),
            limit: MAX_RESPONSE_BYTES,
        };
        let sent = Instant::now();
        let answer = link.post(&post, timeout).await.map_err(|e| match e {
            LinkError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            LinkError::Failed(_) => RPCError::Network(NetworkError::new(&e)),
        })?;
        // The RPC's name, for the timer and for errors: its path's last segment (`append`).
        let name = path.rsplit('/').next().unwrap_or(path);
        if let Some(timer) = &self.timer {
            timer(self.target, name, sent.elapsed());
        }
        let status = answer.status;
        // A member that served a request is not an empty node (those serve only a sender
        // that names them): its incarnation is one the registrar may register. A refusal's
        // is never taken, or a wiped node could name itself.
        if status.is_success() {
            if let Some(inc) = answer
                .headers
                .get(INCARNATION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(identity::parse_hex)
            {
                self.identity.observe(self.target, inc);
            }
        }
        let bytes = answer.body;
        if !status.is_success() {
            let msg = format!(
                "{name} to node {} answered {status}: {}",
                self.target,
                String::from_utf8_lossy(&bytes)
            );
            let err = std::io::Error::other(msg);
            // A refusal that will not change by retrying at once (wrong secret, wrong node,
            // another incarnation) backs off like an unreachable peer: as a network error,
            // openraft retried it in a tight loop (millions of log lines a minute).
            return Err(if lasting_refusal(status) {
                RPCError::Unreachable(Unreachable::new(&err))
            } else {
                RPCError::Network(NetworkError::new(&err))
            });
        }
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&bytes).map_err(|e| network(&e))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        let cut = cap_entries(&mut rpc.entries, MAX_APPEND_BYTES);
        let carried = rpc.entries.first().zip(rpc.entries.last());
        if let Some((first, _)) = carried {
            crate::stages::sending(first.log_id.index);
        }
        let resp = self.call(APPEND_PATH, &rpc, option.hard_ttl()).await?;
        if let AppendEntriesResponse::HigherVote(v) = &resp {
            term_in_range(v)?;
        }
        if let (AppendEntriesResponse::Success, Some((_, last))) = (&resp, carried) {
            crate::stages::answered(last.log_id.index);
        }
        Ok(match (resp, cut) {
            // Only a prefix went: openraft sends the rest next, from there.
            (AppendEntriesResponse::Success, Some(last_sent)) => {
                AppendEntriesResponse::PartialSuccess(Some(last_sent))
            }
            (resp, _) => resp,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let resp: InstallSnapshotResponse<NodeId> =
            self.call(SNAPSHOT_PATH, &rpc, option.hard_ttl()).await?;
        term_in_range(&resp.vote)?;
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        let resp: VoteResponse<NodeId> = self.call(VOTE_PATH, &rpc, option.hard_ttl()).await?;
        term_in_range(&resp.vote)?;
        Ok(resp)
    }

    /// While the node has CPU to spare, an append's round costs nothing the load needs, and
    /// overlapping it with the one in flight shortens the wait of what it carries; while
    /// CPU is short, what is appended meanwhile waits `raft.pipeline_after_us` for the
    /// answer and shares the next round (docs/benchmarks.md, thirty-fifth pass).
    fn send_at_once(&self) -> bool {
        self.spare.get()
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    #[test]
    fn an_answer_with_a_term_past_the_bound_is_not_taken() {
        let ok = openraft::Vote::new_committed(crate::types::MAX_TERM, 2);
        assert!(term_in_range::<openraft::error::Infallible>(&ok).is_ok());
        let huge = openraft::Vote::new_committed(u64::MAX, 2);
        assert!(term_in_range::<openraft::error::Infallible>(&huge).is_err());
    }
    use crate::command::Command;
    use crate::types::Request;

    #[test]
    fn refusals_back_off_and_failures_retry() {
        use reqwest::StatusCode as S;
        for s in [
            S::UNAUTHORIZED,
            S::FORBIDDEN,
            S::CONFLICT,
            S::MISDIRECTED_REQUEST,
            S::INSUFFICIENT_STORAGE,
        ] {
            assert!(lasting_refusal(s), "{s}");
        }
        for s in [
            S::BAD_REQUEST,
            S::PAYLOAD_TOO_LARGE,
            S::INTERNAL_SERVER_ERROR,
            S::SERVICE_UNAVAILABLE,
        ] {
            assert!(!lasting_refusal(s), "{s}");
        }
    }

    /// A server that answers every request with `body_len` bytes of body: with its length
    /// declared (`chunked` false) or as chunks of unknown total.
    async fn oversized_answerer(body_len: usize, chunked: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // The request is small: its head and body arrive within a few reads.
                    let mut buf = vec![0u8; 64 << 10];
                    let _ = sock.read(&mut buf).await;
                    let chunk = vec![b'x'; 64 << 10];
                    let head = if chunked {
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
                    } else {
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n\r\n")
                    };
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut sent = 0;
                    while sent < body_len {
                        let n = chunk.len().min(body_len - sent);
                        let framed = if chunked {
                            let mut f = format!("{n:x}\r\n").into_bytes();
                            f.extend_from_slice(&chunk[..n]);
                            f.extend_from_slice(b"\r\n");
                            f
                        } else {
                            chunk[..n].to_vec()
                        };
                        if sock.write_all(&framed).await.is_err() {
                            return;
                        }
                        sent += n;
                    }
                    if chunked {
                        let _ = sock.write_all(b"0\r\n\r\n").await;
                    }
                });
            }
        });
        addr
    }

    /// An answer longer than [`MAX_RESPONSE_BYTES`] (a stale address now served by
    /// something else) is refused as a network error, whether it declares its length or
    /// streams chunks, rather than buffered whole and then found undecodable.
    #[tokio::test]
    async fn an_oversized_answer_is_refused_before_it_is_buffered() {
        for chunked in [false, true] {
            let addr = oversized_answerer(4 * MAX_RESPONSE_BYTES, chunked).await;
            let mut conn = Conn {
                ready: Ready::new(Link::new(&addr, None), None, 2),
                target: 2,
                identity: Arc::new(Identity::new(1, 1, false)),
                idle: Idle::default(),
                timer: None,
                spare: SpareCpu::default(),
            };
            let rpc = VoteRequest::new(openraft::Vote::new(1, 1), None);
            let err = conn
                .vote(rpc, RPCOption::new(Duration::from_secs(5)))
                .await
                .expect_err("an oversized answer is not a vote");
            match err {
                RPCError::Network(e) => assert!(
                    e.to_string().contains("longer than"),
                    "chunked {chunked}: {e}"
                ),
                other => panic!("chunked {chunked}: {other}"),
            }
        }
    }

    /// The fixed headers are built once and kept; the identity headers are replaced on
    /// every RPC, never appended to the last one's.
    #[test]
    fn each_rpc_carries_the_fixed_headers_and_its_own_identity_headers() {
        let names =
            |r: &Ready| -> Vec<String> { r.headers.iter().map(|(n, _)| n.to_string()).collect() };
        let mut ready = Ready::new(Link::new("127.0.0.1:1", None), Some("s3cret"), 7).unwrap();
        let identity = Identity::new(1, 0xabc, false);
        for _ in 0..3 {
            ready.headers(identity.request_headers(7)).unwrap();
            let got = names(&ready);
            let want: Vec<String> = [RAFT_TARGET_HEADER, "content-type", "authorization"]
                .into_iter()
                .map(String::from)
                .chain(
                    identity
                        .request_headers(7)
                        .into_iter()
                        .map(|(n, _)| n.to_string()),
                )
                .collect();
            assert_eq!(got, want);
        }
        let auth = &ready.headers[2].1;
        assert_eq!(auth.to_str().unwrap(), "Bearer s3cret");
        assert!(auth.is_sensitive());
        assert_eq!(ready.headers[0].1.to_str().unwrap(), "7");

        let bad = Ready::new(Link::new("127.0.0.1:1", None), Some("line\nbreak"), 7);
        assert!(
            bad.is_err(),
            "a secret a header cannot carry is refused up front"
        );
    }

    /// A peer that grants every vote, over keep-alive connections; its address and a count
    /// of the connections it accepted.
    async fn vote_granter() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let ok: Result<VoteResponse<NodeId>, RaftError<NodeId>> = Ok(VoteResponse {
            vote: openraft::Vote::new(1, 1),
            vote_granted: true,
            last_log_id: None,
        });
        let body = codec::encode(&ok).unwrap();
        crate::link::test_peer::serve(Arc::new(move |_: &str| body.clone()), false).await
    }

    /// Every client of a factory given the node's measure answers with it as it changes;
    /// one without it never lets a further append skip `pipeline_after_us`.
    #[tokio::test]
    async fn a_further_append_goes_at_once_exactly_while_the_cpu_is_spare() {
        let spare = SpareCpu::default();
        let make = || {
            Network::new(
                None,
                AddressBook::default(),
                Arc::new(Identity::new(1, 1, false)),
                PeerHttp::new(None).unwrap(),
            )
        };
        let mut told = make().with_spare_cpu(spare.clone());
        let mut untold = make();
        let node = CookieNode::new("127.0.0.1:1", "127.0.0.1:2", "node2");
        let (a, b) = (
            told.new_client(2, &node).await,
            told.new_client(3, &node).await,
        );
        let other = untold.new_client(2, &node).await;
        for now in [false, true, false] {
            spare.set(now);
            assert_eq!((a.send_at_once(), b.send_at_once()), (now, now));
            assert!(!other.send_at_once());
        }
    }

    /// openraft makes a new client for every quorum check (each round of linearizable
    /// reads) and every election. Each must not cost a new connection per voter: over a
    /// network of machines that is ~1,000 connects a second under read load, and their
    /// TIME_WAIT sockets run the ephemeral ports out within a minute.
    #[tokio::test]
    async fn a_new_client_reuses_the_connection_an_earlier_one_left() {
        use std::sync::atomic::Ordering;
        let (addr, conns) = vote_granter().await;
        let mut network = Network::new(
            None,
            AddressBook::default(),
            Arc::new(Identity::new(1, 1, false)),
            PeerHttp::new(None).unwrap(),
        );
        let node = CookieNode::new("127.0.0.1:1", addr.clone(), "node2");
        for _ in 0..10 {
            let mut conn = network.new_client(2, &node).await;
            let rpc = VoteRequest::new(openraft::Vote::new(1, 1), None);
            let got = conn
                .vote(rpc, RPCOption::new(Duration::from_secs(5)))
                .await
                .unwrap();
            assert!(got.vote_granted);
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "ten clients, one connection"
        );

        // Two at once need two connections, and both are kept for later clients.
        let mut a = network.new_client(2, &node).await;
        let mut b = network.new_client(2, &node).await;
        for conn in [&mut a, &mut b] {
            let rpc = VoteRequest::new(openraft::Vote::new(1, 1), None);
            conn.vote(rpc, RPCOption::new(Duration::from_secs(5)))
                .await
                .unwrap();
        }
        drop((a, b));
        for _ in 0..4 {
            let mut conn = network.new_client(2, &node).await;
            let rpc = VoteRequest::new(openraft::Vote::new(1, 1), None);
            conn.vote(rpc, RPCOption::new(Duration::from_secs(5)))
                .await
                .unwrap();
        }
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    /// Every answered RPC is timed, under its peer and name; one that found no peer is not
    /// (it measured no round).
    #[tokio::test]
    async fn answered_rpcs_are_timed_by_peer_and_name() {
        let (addr, _) = vote_granter().await;
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let timer: RpcTimer = Arc::new({
            let heard = heard.clone();
            move |peer, rpc, took| heard.lock().unwrap().push((peer, rpc, took))
        });
        let mut network = Network::new(
            None,
            AddressBook::default(),
            Arc::new(Identity::new(1, 1, false)),
            PeerHttp::new(None).unwrap(),
        )
        .with_rpc_timer(timer);
        let started = Instant::now();
        let node = CookieNode::new("127.0.0.1:1", addr, "node2");
        let mut conn = network.new_client(2, &node).await;
        for _ in 0..3 {
            let rpc = VoteRequest::new(openraft::Vote::new(1, 1), None);
            conn.vote(rpc, RPCOption::new(Duration::from_secs(5)))
                .await
                .unwrap();
        }
        let down = CookieNode::new("127.0.0.1:1", "127.0.0.1:1", "node3");
        let mut conn = network.new_client(3, &down).await;
        let rpc = VoteRequest::new(openraft::Vote::new(1, 1), None);
        assert!(conn
            .vote(rpc, RPCOption::new(Duration::from_secs(5)))
            .await
            .is_err());
        let heard = heard.lock().unwrap();
        assert_eq!(heard.len(), 3);
        assert!(heard
            .iter()
            .all(|(peer, rpc, took)| *peer == 2 && *rpc == "vote" && *took <= started.elapsed()));
    }

    fn entry(index: u64, bytes: usize) -> Entry<TypeConfig> {
        let cmd = Command::Create {
            id: String::new(),
            object: "x".repeat(bytes),
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request { cmds: vec![cmd] }),
        }
    }

    fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn append_entries_are_capped_by_bytes_and_never_empty() {
        // Within the budget: all go, nothing to report.
        let mut e: Vec<_> = (1..=4).map(|i| entry(i, 10)).collect();
        assert_eq!(cap_entries(&mut e, 40), None);
        assert_eq!(indexes(&e), [1, 2, 3, 4]);
        // Over it: the prefix that fits, and the last index sent.
        let cut = cap_entries(&mut e, 25);
        assert_eq!(indexes(&e), [1, 2]);
        assert_eq!(cut.map(|l| l.index), Some(2));
        // One entry larger than the budget still goes, alone.
        let mut e = vec![entry(7, 100), entry(8, 1)];
        assert_eq!(cap_entries(&mut e, 10).map(|l| l.index), Some(7));
        assert_eq!(indexes(&e), [7]);
        // Heartbeats carry nothing.
        let mut e = Vec::new();
        assert_eq!(cap_entries(&mut e, 10), None);
    }

    /// The default cap and the largest group-commit batch fit the Raft routes' body limit
    /// (the root crate's router uses `MAX_PEER_BODY_BYTES`) with room for the request's
    /// framing.
    #[test]
    fn the_default_cap_leaves_room_under_the_body_limit() {
        const LARGEST_BATCH: usize = 2 << 20;
        const LARGEST_COMMAND: usize = 1 << 20;
        assert!(MAX_APPEND_BYTES + LARGEST_BATCH.max(LARGEST_COMMAND) < MAX_PEER_BODY_BYTES / 2);
    }

    /// An override wins; then the membership's peer address; a member from a membership
    /// written before peer listeners is reached where this node's config says, else at its
    /// only address.
    #[test]
    fn the_address_book_finds_a_peer_listener() {
        let book = AddressBook::new(
            [(3, "proxy:1".to_string())].into_iter().collect(),
            [(2, "b:9080".to_string()), (3, "c:9080".to_string())]
                .into_iter()
                .collect(),
        );
        let current = CookieNode::new("a:8080", "a:9080", "node1");
        let old = |addr: &str| CookieNode::new(addr, "", "old");
        assert_eq!(book.resolve(1, &current), "a:9080");
        assert_eq!(book.resolve(2, &old("b:8080")), "b:9080");
        assert_eq!(book.resolve(3, &current), "proxy:1");
        assert_eq!(book.resolve(4, &old("d:8080")), "d:8080");
    }
}
