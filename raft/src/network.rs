//! Raft RPCs over HTTP: `POST /raft/{append,vote,snapshot}` with bincode bodies.
//!
//! One pooled reqwest client serves every peer (the factory hands out cheap clones). The
//! server answers 200 with a bincode `Result<Resp, RaftError>`; a connection that cannot be
//! made is `Unreachable` (openraft backs off instead of hot-looping); anything else is a
//! `Network` error. Each request names its target node id in [`RAFT_TARGET_HEADER`], so a
//! misconfigured address that reaches the wrong node is refused rather than obeyed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::types::{CookieNode, NodeId, TypeConfig};

/// Header naming the node id an RPC is meant for.
pub const RAFT_TARGET_HEADER: &str = "x-raft-target";

/// The routes of openraft's three RPCs: called here, served by the root crate's router, so
/// both name them from one place.
pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// Where this node reaches each peer: the address in the replicated membership, unless
/// this node's config overrides it (split-horizon addressing, or a fault-injection proxy
/// placed on one node-to-node link).
#[derive(Clone, Debug, Default)]
pub struct AddressBook {
    overrides: Arc<BTreeMap<NodeId, String>>,
}

impl AddressBook {
    pub fn new(overrides: BTreeMap<NodeId, String>) -> Self {
        AddressBook {
            overrides: Arc::new(overrides),
        }
    }

    pub fn resolve(&self, id: NodeId, node: &CookieNode) -> String {
        self.overrides
            .get(&id)
            .cloned()
            .unwrap_or_else(|| node.addr.clone())
    }
}

/// The network factory: one shared HTTP client, the address book and an optional secret.
#[derive(Clone)]
pub struct Network {
    client: reqwest::Client,
    secret: Option<String>,
    book: AddressBook,
}

/// An HTTP client for node-to-node traffic: pooled, no proxy, no Nagle, quick to give up
/// on a connection that cannot be made (the peer is down) so callers can back off.
pub fn peer_http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
}

impl Network {
    pub fn new(secret: Option<String>, book: AddressBook) -> Result<Self, reqwest::Error> {
        let client = peer_http_client()?;
        Ok(Network {
            client,
            secret,
            book,
        })
    }
}

/// A connection to one peer. Creating it never connects: that happens per request.
pub struct Conn {
    client: reqwest::Client,
    secret: Option<String>,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &CookieNode) -> Conn {
        Conn {
            client: self.client.clone(),
            secret: self.secret.clone(),
            target,
            addr: self.book.resolve(target, node),
        }
    }
}

type RpcErr<E> = RPCError<NodeId, CookieNode, RaftError<NodeId, E>>;

impl Conn {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let url = format!("http://{}{path}", self.addr);
        let mut request = self
            .client
            .post(url)
            .timeout(timeout)
            .header(RAFT_TARGET_HEADER, self.target.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(secret) = &self.secret {
            request = request.bearer_auth(secret);
        }
        let resp = request.send().await.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if !status.is_success() {
            // Errors name the RPC by its last segment (`append`), as they always have.
            let name = path.rsplit('/').next().unwrap_or(path);
            let msg = format!(
                "{name} to node {} answered {status}: {}",
                self.target,
                String::from_utf8_lossy(&bytes)
            );
            return Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(msg),
            )));
        }
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(APPEND_PATH, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(SNAPSHOT_PATH, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(VOTE_PATH, &rpc, option.hard_ttl()).await
    }
}
