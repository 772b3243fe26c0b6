//! The simulated nodes' one protocol over turmoil's TCP: a request and its reply are each a
//! frame (`len:u32be` + JSON). Raft RPCs between nodes, leader-only operations forwarded by
//! followers (the real node's [`Forwarded`]), and the clients' writes and reads all travel
//! this way; a connection carries one request at a time.

use std::future::Future;
use std::io;
use std::time::Duration;

use mirage_cluster_config::Layout;
use mirage_node::raft::node::{ForwardAnswer, Forwarded};
use mirage_node::raft::{Answer, Proposal};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::TcpStream;

use super::types::{SimTypes, Snapshot, SnapshotMeta, Vote};
use crate::check::linear::NameView;

/// The port every simulated node listens on.
pub const PORT: u16 = 9000;

/// Largest frame accepted.
const MAX_FRAME: usize = 64 << 20;

/// A request to a node.
#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Raft: append entries.
    Append(AppendEntriesRequest<SimTypes>),
    /// Raft: vote.
    Vote(VoteRequest<SimTypes>),
    /// Raft: a whole snapshot.
    Snapshot {
        /// The leader's vote.
        vote: Vote,
        /// What it covers.
        meta: SnapshotMeta,
        /// The catalog snapshot.
        data: Vec<u8>,
    },
    /// A leader-only operation forwarded by a follower.
    Forward(Forwarded),
    /// A client's catalog command (its request id and time chosen by the client, so a retry
    /// through another node is recognised).
    Write(Proposal),
    /// A client's linearizable read of a named image.
    Read {
        /// The name.
        name: String,
    },
    /// A linearizable read of the current cluster layout.
    ReadLayout,
}

/// A node's reply.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// To [`Msg::Append`].
    Append(AppendEntriesResponse<SimTypes>),
    /// To [`Msg::Vote`].
    Vote(VoteResponse<SimTypes>),
    /// To [`Msg::Snapshot`].
    Snapshot(SnapshotResponse<SimTypes>),
    /// A Raft RPC failed on the receiving node.
    Fatal(String),
    /// To [`Msg::Forward`].
    Forward(ForwardAnswer),
    /// To [`Msg::Write`]: the state machine's answer.
    Written(Answer),
    /// To [`Msg::Read`].
    Named(Option<NameView>),
    /// To [`Msg::ReadLayout`].
    Layout(Option<Layout>),
    /// The operation failed without an answer (`no_leader`, `raft`, …): it may or may not
    /// have taken effect.
    Failed {
        /// Stable code.
        code: String,
        /// Message.
        message: String,
    },
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(s: &mut TcpStream, v: &T) -> io::Result<()> {
    let body = serde_json::to_vec(v).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    s.write_all(&buf).await?;
    s.flush().await
}

/// Reads one frame; `None` at a clean end of stream.
pub async fn read_frame<T: DeserializeOwned>(s: &mut TcpStream) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Never connected (the request was not sent).
    #[error("{0}: cannot connect")]
    Connect(String),
    /// Sent, but no reply in time or the connection broke: the outcome is unknown.
    #[error("{0}: {1}")]
    Lost(String, String),
}

/// One request/reply on a connection to `addr`, reusing `conn` if given; returns the reply and
/// the connection for reuse.
async fn exchange(
    addr: &str,
    conn: Option<TcpStream>,
    msg: &Msg,
) -> Result<(Reply, TcpStream), CallError> {
    let mut s = match conn {
        Some(s) => s,
        None => TcpStream::connect(addr)
            .await
            .map_err(|_| CallError::Connect(addr.to_string()))?,
    };
    let lost = |e: io::Error| CallError::Lost(addr.to_string(), e.to_string());
    write_frame(&mut s, msg).await.map_err(lost)?;
    match read_frame(&mut s).await.map_err(lost)? {
        Some(r) => Ok((r, s)),
        None => Err(CallError::Lost(addr.into(), "closed".into())),
    }
}

/// One request on a connection of its own, within `ttl`.
pub async fn call(addr: &str, msg: &Msg, ttl: Duration) -> Result<Reply, CallError> {
    match tokio::time::timeout(ttl, exchange(addr, None, msg)).await {
        Ok(r) => r.map(|(r, _)| r),
        Err(_) => Err(CallError::Lost(addr.into(), "timed out".into())),
    }
}

/// Opens Raft connections to the other nodes.
#[derive(Clone, Debug, Default)]
pub struct NetFactory;

/// A Raft connection to one node (kept open between calls; dropped after a failure).
#[derive(Debug)]
pub struct Peer {
    addr: String,
    conn: Option<TcpStream>,
}

impl RaftNetworkFactory<SimTypes> for NetFactory {
    type Network = Peer;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> Peer {
        Peer {
            addr: node.addr.clone(),
            conn: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msgs(String);

impl Peer {
    async fn rpc(&mut self, msg: &Msg, ttl: Duration) -> Result<Reply, CallError> {
        let conn = self.conn.take();
        match tokio::time::timeout(ttl, exchange(&self.addr, conn, msg)).await {
            Ok(Ok((r, s))) => {
                self.conn = Some(s);
                Ok(r)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CallError::Lost(self.addr.clone(), "timed out".into())),
        }
    }
}

fn rpc_error<E: std::error::Error>(e: CallError) -> RPCError<SimTypes, E> {
    // As the real node: a connection refused or a timeout is "unreachable" (openraft backs
    // off), anything else a network error.
    RPCError::Unreachable(Unreachable::new(&Msgs(e.to_string())))
}

fn unexpected<E: std::error::Error>(r: Reply) -> RPCError<SimTypes, E> {
    let m = match r {
        Reply::Fatal(m) => m,
        other => format!("unexpected reply {other:?}"),
    };
    RPCError::Network(NetworkError::new(&Msgs(m)))
}

impl RaftNetworkV2<SimTypes> for Peer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimTypes>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<SimTypes>, RPCError<SimTypes>> {
        match self.rpc(&Msg::Append(rpc), option.soft_ttl()).await {
            Ok(Reply::Append(r)) => Ok(r),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<SimTypes>,
        option: RPCOption,
    ) -> Result<VoteResponse<SimTypes>, RPCError<SimTypes>> {
        match self.rpc(&Msg::Vote(rpc), option.soft_ttl()).await {
            Ok(Reply::Vote(r)) => Ok(r),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<SimTypes>, StreamingError<SimTypes>> {
        let msg = Msg::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let ttl = option.hard_ttl().max(Duration::from_secs(10));
        let send = self.rpc(&msg, ttl);
        let r = tokio::select! {
            biased;
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send => r,
        };
        let msg = match r {
            Ok(Reply::Snapshot(r)) => return Ok(r),
            Ok(Reply::Fatal(m)) => m,
            Ok(other) => format!("unexpected reply {other:?}"),
            Err(e) => {
                return Err(StreamingError::Unreachable(Unreachable::new(&Msgs(
                    e.to_string(),
                ))))
            }
        };
        Err(StreamingError::Network(NetworkError::new(&Msgs(msg))))
    }
}
