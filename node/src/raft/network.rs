//! Raft RPCs between nodes over HTTP (`POST /v1/raft/{append,vote,snapshot}`, see
//! `docs/API.md`). Every request carries the cluster secret; the receiving node refuses
//! anything else with 401.
//!
//! A snapshot travels as one body: `json_len:u32le` + JSON `{vote, meta}` + the snapshot
//! bytes. The catalog is metadata (thousands of images are a few MB), so a whole-body transfer
//! is enough.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::state_machine::Snapshot;
use super::{SnapshotMeta, TypeConfig, Vote};

/// Header that carries the cluster secret between nodes.
pub const SECRET_HEADER: &str = "x-mirage-cluster-secret";

/// Opens connections to the other nodes of the catalog group.
#[derive(Clone, Debug)]
pub struct Network {
    client: reqwest::Client,
    secret: Arc<str>,
}

impl Network {
    /// A network whose requests carry `secret`.
    pub fn new(secret: &str) -> Self {
        Network {
            client: node_client(None),
            secret: secret.into(),
        }
    }
}

/// The HTTP client a node uses to reach the other nodes (Raft and the data path): a short
/// connect timeout, so an unreachable node is noticed quickly, and `timeout` per request.
pub fn node_client(timeout: Option<Duration>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(30));
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().unwrap_or_default()
}

/// A connection to one node.
#[derive(Clone, Debug)]
pub struct Peer {
    client: reqwest::Client,
    secret: Arc<str>,
    base: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> Peer {
        Peer {
            client: self.client.clone(),
            secret: self.secret.clone(),
            base: format!("http://{}", node.addr),
        }
    }
}

/// Header of a snapshot body.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The leader's vote.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
}

/// Encodes a snapshot body.
pub fn snapshot_body(vote: &Vote, snapshot: &Snapshot) -> Result<Vec<u8>, serde_json::Error> {
    let header = serde_json::to_vec(&SnapshotHeader {
        vote: *vote,
        meta: snapshot.meta.clone(),
    })?;
    let mut body = Vec::with_capacity(4 + header.len() + snapshot.snapshot.len());
    body.extend_from_slice(&(header.len() as u32).to_le_bytes());
    body.extend_from_slice(&header);
    body.extend_from_slice(&snapshot.snapshot);
    Ok(body)
}

/// Decodes a snapshot body.
pub fn parse_snapshot_body(body: &[u8]) -> Result<(Vote, Snapshot), String> {
    let n = body
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("snapshot body shorter than its header length")?;
    let header = body
        .get(4..4 + n)
        .ok_or("snapshot body shorter than its header")?;
    let h: SnapshotHeader =
        serde_json::from_slice(header).map_err(|e| format!("snapshot header: {e}"))?;
    Ok((
        h.vote,
        Snapshot {
            meta: h.meta,
            snapshot: body[4 + n..].to_vec(),
        },
    ))
}

enum Failure {
    Unreachable(String),
    Network(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl<E: std::error::Error> From<Failure> for RPCError<TypeConfig, E> {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&Msg(m))),
            Failure::Network(m) => RPCError::Network(NetworkError::new(&Msg(m))),
        }
    }
}

impl From<Failure> for StreamingError<TypeConfig> {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Unreachable(m) => StreamingError::Unreachable(Unreachable::new(&Msg(m))),
            Failure::Network(m) => StreamingError::Network(NetworkError::new(&Msg(m))),
        }
    }
}

impl Peer {
    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: reqwest::Body,
        content_type: &str,
        timeout: Duration,
    ) -> Result<T, Failure> {
        let url = format!("{}/v1/raft/{path}", self.base);
        let resp = self
            .client
            .post(&url)
            .header(SECRET_HEADER, &*self.secret)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_timeout() {
                    Failure::Unreachable(format!("{url}: {e}"))
                } else {
                    Failure::Network(format!("{url}: {e}"))
                }
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::Network(format!("{url}: {e}")))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
            return Err(Failure::Network(format!("{url}: {status}: {text}")));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Network(format!("{url}: undecodable answer: {e}")))
    }

    async fn post_json<Q: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        req: &Q,
        timeout: Duration,
    ) -> Result<T, Failure> {
        let body = serde_json::to_vec(req).map_err(|e| Failure::Network(e.to_string()))?;
        self.post(path, body.into(), "application/json", timeout)
            .await
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.post_json("append", &rpc, option.soft_ttl()).await?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.post_json("vote", &rpc, option.soft_ttl()).await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let body = snapshot_body(&vote, &snapshot)
            .map_err(|e| Failure::Network(format!("encoding a snapshot: {e}")))?;
        let send = self.post(
            "snapshot",
            body.into(),
            "application/octet-stream",
            option.hard_ttl().max(Duration::from_secs(60)),
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => Ok(r?),
        }
    }
}
