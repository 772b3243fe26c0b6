//! Requests a node makes to the other storage nodes (`/v1/peer/*`, cluster secret): partition
//! summaries and digest lists for anti-entropy, items for repair, scrub and closure walks.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mirage_format::Digest;
use serde::{Deserialize, Serialize};

use mirage_cluster_config::LayoutNode;

use crate::raft::network::{node_client, SECRET_HEADER};
use crate::store::PartitionSummary;

/// Why a request to another node failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection, a timeout, or a broken body.
    #[error("node {node} ({address}): {why}")]
    Unreachable {
        /// Node id.
        node: u64,
        /// Its address.
        address: String,
        /// What happened.
        why: String,
    },
    /// The node answered with an error or something that does not parse.
    #[error("node {node} ({address}) answered: {why}")]
    Refused {
        /// Node id.
        node: u64,
        /// Its address.
        address: String,
        /// The answer.
        why: String,
    },
}

/// A partition summary on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSummary {
    /// Items held.
    pub items: u64,
    /// Bytes of their records.
    pub bytes: u64,
    /// XOR of their digests, hex.
    pub xor: String,
}

impl From<PartitionSummary> for WireSummary {
    fn from(s: PartitionSummary) -> Self {
        WireSummary {
            items: s.items,
            bytes: s.bytes,
            xor: hex::encode(s.xor),
        }
    }
}

/// Body of `POST /v1/peer/summaries`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SummariesRequest {
    /// Partition count of the layout the asker uses.
    pub partitions: u32,
}

/// Answer of `POST /v1/peer/summaries`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SummariesAnswer {
    /// One per partition.
    pub summaries: Vec<WireSummary>,
}

/// Body of `POST /v1/peer/digests`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DigestsRequest {
    /// Partition count.
    pub partitions: u32,
    /// The partition.
    pub partition: u32,
}

/// Answer of `POST /v1/peer/digests`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DigestsAnswer {
    /// Every digest the node holds in the partition, in order.
    pub digests: Vec<Digest>,
}

/// Body of `POST /v1/peer/items/get` and `POST /v1/peer/items/refs`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DigestList {
    /// The digests.
    pub digests: Vec<Digest>,
}

/// What a node knows of one item for a closure walk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ItemRefs {
    /// The item's kind name.
    pub kind: String,
    /// Its references (empty for a blob).
    pub refs: Vec<Digest>,
}

/// Answer of `POST /v1/peer/items/refs`: one entry per digest asked, `null` where the node
/// does not hold the item.
#[derive(Debug, Serialize, Deserialize)]
pub struct RefsAnswer {
    /// In request order.
    pub items: Vec<Option<ItemRefs>>,
}

/// The other nodes, reached with the cluster secret.
#[derive(Clone, Debug)]
pub struct Peers {
    http: reqwest::Client,
    /// For the small requests a reader waits on (closure walks): a node that hangs is given
    /// up on quickly, and the items asked of another.
    quick: reqwest::Client,
    secret: Arc<str>,
}

fn unreachable(n: &LayoutNode, why: impl std::fmt::Display) -> PeerError {
    PeerError::Unreachable {
        node: n.id,
        address: n.address.clone(),
        why: why.to_string(),
    }
}

fn refused(n: &LayoutNode, why: impl std::fmt::Display) -> PeerError {
    PeerError::Refused {
        node: n.id,
        address: n.address.clone(),
        why: why.to_string(),
    }
}

/// Refuses an answer with another number of entries than asked for.
fn expect_len<T>(
    n: &LayoutNode,
    got: Vec<T>,
    want: usize,
    what: &str,
) -> Result<Vec<T>, PeerError> {
    if got.len() == want {
        Ok(got)
    } else {
        Err(refused(n, format!("{} {what} for {want} asked", got.len())))
    }
}

impl Peers {
    /// Requests carrying `secret`.
    pub fn new(secret: &str) -> Self {
        Peers {
            http: node_client(Some(Duration::from_secs(120))),
            quick: node_client(Some(Duration::from_secs(5))),
            secret: secret.into(),
        }
    }

    async fn post(
        &self,
        http: &reqwest::Client,
        n: &LayoutNode,
        path: &str,
        body: &impl Serialize,
    ) -> Result<reqwest::Response, PeerError> {
        let r = http
            .post(format!("http://{}{path}", n.address))
            .header(SECRET_HEADER, &*self.secret)
            .json(body)
            .send()
            .await
            .map_err(|e| unreachable(n, e))?;
        if !r.status().is_success() {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let text: String = text.chars().take(300).collect();
            return Err(refused(n, format!("{status}: {text}")));
        }
        Ok(r)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        http: &reqwest::Client,
        n: &LayoutNode,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, PeerError> {
        let r = self.post(http, n, path, body).await?;
        r.json().await.map_err(|e| refused(n, e))
    }

    /// A node's summaries of every partition.
    pub async fn summaries(
        &self,
        n: &LayoutNode,
        partitions: u32,
    ) -> Result<Vec<WireSummary>, PeerError> {
        let a: SummariesAnswer = self
            .json(
                &self.http,
                n,
                "/v1/peer/summaries",
                &SummariesRequest { partitions },
            )
            .await?;
        expect_len(n, a.summaries, partitions as usize, "summaries")
    }

    /// The digests a node holds in one partition.
    pub async fn digests(
        &self,
        n: &LayoutNode,
        partitions: u32,
        partition: u32,
    ) -> Result<Vec<Digest>, PeerError> {
        let body = DigestsRequest {
            partitions,
            partition,
        };
        let a: DigestsAnswer = self.json(&self.http, n, "/v1/peer/digests", &body).await?;
        Ok(a.digests)
    }

    /// The kinds and references of items a node holds.
    pub async fn refs(
        &self,
        n: &LayoutNode,
        digests: Vec<Digest>,
    ) -> Result<Vec<Option<ItemRefs>>, PeerError> {
        let want = digests.len();
        let a: RefsAnswer = self
            .json(
                &self.quick,
                n,
                "/v1/peer/items/refs",
                &DigestList { digests },
            )
            .await?;
        expect_len(n, a.items, want, "answers")
    }

    /// Items a node holds, as it sends them (encoded bytes, unverified: the caller hashes
    /// each). Items the node lacks or holds damaged are left out.
    pub async fn get(
        &self,
        n: &LayoutNode,
        digests: Vec<Digest>,
    ) -> Result<Vec<Vec<u8>>, PeerError> {
        let r = self
            .post(&self.http, n, "/v1/peer/items/get", &DigestList { digests })
            .await?;
        let mut stream = r.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        loop {
            let mut pos = 0;
            while buf.len() - pos >= 5 {
                let len =
                    u32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]])
                        as usize;
                if len > mirage_format::item::MAX_ITEM + 1024 {
                    return Err(unreachable(n, format!("a frame of {len} bytes")));
                }
                if buf.len() - pos - 5 < len {
                    break;
                }
                if buf[pos] == 0 {
                    out.push(buf[pos + 5..pos + 5 + len].to_vec());
                }
                pos += 5 + len;
            }
            buf.drain(..pos);
            match stream.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(unreachable(n, e)),
                None => break,
            }
        }
        if !buf.is_empty() {
            return Err(unreachable(n, "the answer ends inside a frame"));
        }
        Ok(out)
    }
}
