//! The client for node-to-node application traffic: forwarded writes, read-index requests,
//! and the JSON probes that bootstrap, the health monitor and `/cache` make. It has its own
//! connection pool, apart from the Raft RPCs', so a burst of forwarded writes never queues
//! behind (or delays) heartbeats.

use std::sync::Arc;
use std::time::Duration;

use cookie_raft::codec;
use cookie_raft::network::{read_capped, MAX_PEER_BODY_BYTES, MAX_RESPONSE_BYTES};
use cookie_raft::{AddressBook, CookieNode, Identity, NodeId, PeerHttp};

use super::proto::{
    Change, ChangeError, ForwardReply, ForwardedWrite, Handover, HandoverReply, Members,
    ReadIndexReply, CLUSTER_PATH, HANDOVER_PATH, MEMBERSHIP_PATH, READ_INDEX_PATH, WRITE_PATH,
};

/// Why a peer request got no answer. For a forwarded write the difference matters:
/// [`PeerError::NotSent`] promises the leader never saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The request never reached the peer (connection refused, refused before decoding):
    /// nothing was proposed.
    #[error("{0}")]
    NotSent(String),
    /// The request may have been received and acted on.
    #[error("{0}")]
    MaybeSent(String),
}

#[derive(Clone)]
pub struct PeerClient {
    client: PeerHttp,
    secret: Option<String>,
    book: AddressBook,
    identity: Arc<Identity>,
}

impl PeerClient {
    /// `client` must be this client's own: its own pool, apart from the Raft RPCs' (see
    /// the module docs).
    pub fn new(
        secret: Option<String>,
        book: AddressBook,
        identity: Arc<Identity>,
        client: PeerHttp,
    ) -> Self {
        PeerClient {
            client,
            secret,
            book,
            identity,
        }
    }

    /// The address this node uses to reach node `id`.
    pub fn addr(&self, id: NodeId, node: &CookieNode) -> String {
        self.book.resolve(id, node)
    }

    /// A bincode POST to a peer's `/raft/*` route, with the secret when there is one.
    fn post(&self, addr: &str, path: &str, timeout: Duration) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .client()
            .post(self.client.url(addr, path))
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
        if let Some(secret) = &self.secret {
            req = req.bearer_auth(secret);
        }
        for (name, value) in self.identity.sender_headers() {
            req = req.header(name, value);
        }
        req
    }

    /// Send writes to the leader at `addr`: one answer per write, in order.
    pub async fn forward_writes(
        &self,
        addr: &str,
        writes: &[ForwardedWrite],
        timeout: Duration,
    ) -> Result<Vec<ForwardReply>, PeerError> {
        let body = codec::encode(&writes).map_err(|e| PeerError::NotSent(e.to_string()))?;
        let resp = self
            .post(addr, WRITE_PATH, timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    PeerError::NotSent(e.to_string())
                } else {
                    PeerError::MaybeSent(e.to_string())
                }
            })?;
        let status = resp.status();
        // A batch's answer carries its records: as large as the writes, at most.
        let bytes = read_capped(resp, MAX_PEER_BODY_BYTES)
            .await
            .map_err(|e| PeerError::MaybeSent(e.to_string()))?;
        if !status.is_success() {
            let why = format!(
                "leader answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
            return Err(refused_forward(status, why));
        }
        codec::decode(&bytes).map_err(|e| PeerError::MaybeSent(e.to_string()))
    }

    /// Ask the leader at `addr` for a read index.
    pub async fn read_index(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<ReadIndexReply, PeerError> {
        self.call(addr, (READ_INDEX_PATH, None), timeout).await
    }

    /// Tell the voter at `addr` that this leader hands leadership over ([`Handover`]).
    pub async fn handover(
        &self,
        addr: &str,
        msg: &Handover,
        timeout: Duration,
    ) -> Result<HandoverReply, PeerError> {
        let body = codec::encode(msg).map_err(|e| PeerError::NotSent(e.to_string()))?;
        self.call(addr, (HANDOVER_PATH, Some(body)), timeout).await
    }

    /// POST `body` (bincode, or none) to `path` at `addr` and decode the answer, read up to
    /// [`MAX_RESPONSE_BYTES`]. Any failure may have come after the peer acted on it.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        (path, body): (&str, Option<Vec<u8>>),
        timeout: Duration,
    ) -> Result<T, PeerError> {
        let maybe = |e: String| PeerError::MaybeSent(e);
        let mut req = self.post(addr, path, timeout);
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await.map_err(|e| maybe(e.to_string()))?;
        let status = resp.status();
        let bytes = read_capped(resp, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| maybe(e.to_string()))?;
        if !status.is_success() {
            return Err(maybe(format!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        codec::decode(&bytes).map_err(|e| maybe(e.to_string()))
    }

    /// Ask the node at `addr` (the leader, or any member for a joining node) to make a
    /// membership change. A request that got no answer is `Unfinished`: it may have been
    /// made.
    pub async fn forward_change(
        &self,
        addr: &str,
        change: &Change,
        timeout: Duration,
    ) -> Result<Members, ChangeError> {
        let body = codec::encode(change).map_err(|e| ChangeError::Invalid(e.to_string()))?;
        let resp = self
            .post(addr, MEMBERSHIP_PATH, timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    ChangeError::NotLeader // not sent: try the leader again
                } else {
                    ChangeError::Unfinished(e.to_string())
                }
            })?;
        let status = resp.status();
        let bytes = read_capped(resp, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| ChangeError::Unfinished(e.to_string()))?;
        if status == reqwest::StatusCode::CONFLICT {
            // The peer gate refused this node as it is (another incarnation of its id, or
            // another cluster): an operator must act, as for any conflict. It was taken for
            // an unreachable member, and a joining node said so at info level for ever
            // (found in review).
            return Err(ChangeError::Conflict(format!(
                "{addr} refused this node: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        if !status.is_success() {
            return Err(ChangeError::Unreachable(format!(
                "{addr} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        codec::decode::<Result<Members, ChangeError>>(&bytes)
            .map_err(|e| ChangeError::Unfinished(e.to_string()))?
    }

    /// GET a JSON document from a peer, e.g. `/cluster` or `/cache`.
    pub async fn get_json(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, PeerError> {
        // The peer listener's probes need the peer credential like its RPCs.
        self.get_json_as(addr, (path, self.secret.as_deref()), timeout)
            .await
    }

    /// Who the node at `addr` is, proven: the identity it states, when it holds the cluster
    /// secret (`super::prove`); nothing carrying the secret goes there. `None` for the
    /// secret when this node has none (then there is none to give away either: `/cluster`
    /// is asked as before).
    pub async fn prove(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, PeerError> {
        let Some(secret) = &self.secret else {
            return self.get_json(addr, CLUSTER_PATH, timeout).await;
        };
        let nonce = super::prove::nonce();
        let path = format!("{}?nonce={nonce}", super::prove::PROVE_PATH);
        let answer = self.get_json_as(addr, (&path, None), timeout).await?;
        if !super::prove::verify(secret, &nonce, &answer) {
            return Err(PeerError::MaybeSent(
                "its answer does not prove that it holds the cluster secret".into(),
            ));
        }
        Ok(answer)
    }

    /// GET a JSON document with `bearer` as the credential, if any.
    async fn get_json_as(
        &self,
        addr: &str,
        (path, bearer): (&str, Option<&str>),
        timeout: Duration,
    ) -> Result<serde_json::Value, PeerError> {
        let maybe = |e: String| PeerError::MaybeSent(e);
        let mut req = self
            .client
            .client()
            .get(self.client.url(addr, path))
            .timeout(timeout);
        if let Some(secret) = bearer {
            req = req.bearer_auth(secret);
        }
        let resp = req.send().await.map_err(|e| maybe(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(maybe(format!("{path} answered {}", resp.status())));
        }
        let bytes = read_capped(resp, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| maybe(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| maybe(e.to_string()))
    }
}

/// A forwarded write's non-2xx answer. A 4xx is the handler refusing the request before
/// decoding it (credential, target, identity, body): nothing was proposed, and the write
/// may go again. Anything else may come after the proposal (a panic caught as 500, an
/// answer that failed to encode), so it may have applied: retried as not sent, it could
/// apply twice. (Found in review, by reading; no path to it was found.)
fn refused_forward(status: reqwest::StatusCode, why: String) -> PeerError {
    if status.is_client_error() {
        PeerError::NotSent(why)
    } else {
        PeerError::MaybeSent(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_before_decoding_counts_as_not_sent() {
        let not_sent = [400, 401, 408, 409, 413, 421].map(|c| (c, true));
        let maybe = [500, 502, 503, 504, 302].map(|c| (c, false));
        for (code, want_not_sent) in not_sent.into_iter().chain(maybe) {
            let status = reqwest::StatusCode::from_u16(code).unwrap();
            let got = refused_forward(status, String::new());
            assert_eq!(
                matches!(got, PeerError::NotSent(_)),
                want_not_sent,
                "{code}: {got:?}"
            );
        }
    }
}
