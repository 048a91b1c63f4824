//! Node-to-node application traffic: forwarded writes, read-index requests, and the probes
//! that bootstrap and `/cache` make. It has its own connection pool, apart from the Raft
//! RPCs, so a burst of forwarded writes never queues behind (or delays) heartbeats.

use std::time::Duration;

use cookie_raft::codec;
use cookie_raft::{AddressBook, CmdResult, CookieNode, NodeId, Raft};
use serde::{Deserialize, Serialize};

use crate::forward::ForwardedWrite;

/// What the leader answers a forwarded write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    /// Committed and applied; this is its result.
    Applied(CmdResult),
    /// The receiver is not the leader and did not propose the write: safe to retry elsewhere.
    NotLeader,
    /// Proposed, but its fate is unknown (timeout, leadership lost, shutdown).
    Unknown(String),
}

/// What the leader answers a read-index request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReadIndexReply {
    /// Leadership confirmed by a quorum after the request arrived; reads must wait for this
    /// index to be applied.
    Index(u64),
    NotLeader,
}

/// Why a forwarded write got no answer.
#[derive(Debug)]
pub enum SendError {
    /// The request never reached the peer (connection refused): nothing was proposed.
    NotSent(String),
    /// The request may have been received and proposed.
    MaybeSent(String),
}

#[derive(Clone)]
pub struct PeerClient {
    client: reqwest::Client,
    secret: Option<String>,
    book: AddressBook,
}

impl PeerClient {
    pub fn new(secret: Option<String>, book: AddressBook) -> Result<Self, reqwest::Error> {
        // Its own pool, apart from the Raft RPCs' (see the module docs).
        let client = cookie_raft::network::peer_http_client()?;
        Ok(PeerClient {
            client,
            secret,
            book,
        })
    }

    /// The address this node uses to reach node `id`.
    pub fn addr(&self, id: NodeId, node: &CookieNode) -> String {
        self.book.resolve(id, node)
    }

    /// The current leader as this node sees it, and the address to reach it.
    pub fn leader(&self, raft: &Raft) -> (Option<NodeId>, Option<String>) {
        let m = raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader;
        let addr = leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| self.addr(l, n))
        });
        (leader, addr)
    }

    fn post(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .post(format!("http://{addr}{path}"))
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(secret) = &self.secret {
            req = req.bearer_auth(secret);
        }
        req
    }

    /// Send writes to the leader at `addr`: one answer per write, in order.
    pub async fn forward_writes(
        &self,
        addr: &str,
        writes: &[ForwardedWrite],
        timeout: Duration,
    ) -> Result<Vec<ForwardReply>, SendError> {
        let body = codec::encode(&writes).map_err(|e| SendError::NotSent(e.to_string()))?;
        let resp = self
            .post(addr, "/raft/write", body, timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    SendError::NotSent(e.to_string())
                } else {
                    SendError::MaybeSent(e.to_string())
                }
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| SendError::MaybeSent(e.to_string()))?;
        if !status.is_success() {
            // The handler refused the request before decoding it (auth, body): not proposed.
            return Err(SendError::NotSent(format!(
                "leader answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        codec::decode(&bytes).map_err(|e| SendError::MaybeSent(e.to_string()))
    }

    /// Ask the leader at `addr` for a read index.
    pub async fn read_index(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<ReadIndexReply, String> {
        let resp = self
            .post(addr, "/raft/read-index", Vec::new(), timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("read-index answered {status}"));
        }
        codec::decode(&bytes).map_err(|e| e.to_string())
    }

    /// GET a JSON document from a peer, e.g. `/cluster` or `/cache`.
    pub async fn get_json(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let resp = self
            .client
            .get(format!("http://{addr}{path}"))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{path} answered {}", resp.status()));
        }
        resp.json().await.map_err(|e| e.to_string())
    }
}
