//! Raft routes. Between nodes (cluster secret): `POST /v1/raft/{append,vote,snapshot}` carry
//! openraft's RPCs and `POST /v1/raft/forward` runs a leader-only operation for a follower.
//! For administrators (bearer token of an admin user): `GET /v1/admin/raft` shows the group,
//! `POST /v1/admin/raft/{add-learner,promote,remove}` change it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::auth::{Caller, Peer};
use super::{blocking, ApiError, AppState, Cluster};
use crate::raft::network::parse_snapshot_body;
use crate::raft::node::{ForwardAnswer, Forwarded, GroupStatus};
use crate::raft::TypeConfig;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};

pub(super) fn cluster(st: &AppState) -> Result<&Cluster, ApiError> {
    st.cluster.as_ref().ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_clustered",
        message: "this node runs without a cluster configuration".into(),
    })
}

fn fatal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("catalog raft: {e}"))
}

pub(super) async fn append(
    State(st): State<AppState>,
    _: Peer,
    Json(rpc): Json<AppendEntriesRequest<TypeConfig>>,
) -> Result<Json<AppendEntriesResponse<TypeConfig>>, ApiError> {
    let c = cluster(&st)?;
    Ok(Json(c.node.raft.append_entries(rpc).await.map_err(fatal)?))
}

pub(super) async fn vote(
    State(st): State<AppState>,
    _: Peer,
    Json(rpc): Json<VoteRequest<TypeConfig>>,
) -> Result<Json<VoteResponse<TypeConfig>>, ApiError> {
    let c = cluster(&st)?;
    Ok(Json(c.node.raft.vote(rpc).await.map_err(fatal)?))
}

pub(super) async fn snapshot(
    State(st): State<AppState>,
    _: Peer,
    body: Bytes,
) -> Result<Json<SnapshotResponse<TypeConfig>>, ApiError> {
    let c = cluster(&st)?;
    let (vote, snap) =
        parse_snapshot_body(&body).map_err(|m| ApiError::bad_request("bad_snapshot", m))?;
    // A damaged snapshot is refused here: handed to the state machine it would stop Raft.
    crate::raft::snapshot::decode(&snap.snapshot)
        .map_err(|e| ApiError::bad_request("bad_snapshot", e.to_string()))?;
    Ok(Json(
        c.node
            .raft
            .install_full_snapshot(vote, snap)
            .await
            .map_err(fatal)?,
    ))
}

pub(super) async fn applied(
    State(st): State<AppState>,
    _: Peer,
) -> Result<Json<Option<u64>>, ApiError> {
    Ok(Json(cluster(&st)?.node.status().applied))
}

pub(super) async fn forward(
    State(st): State<AppState>,
    _: Peer,
    Json(op): Json<Forwarded>,
) -> Result<Json<ForwardAnswer>, ApiError> {
    let c = cluster(&st)?;
    Ok(Json(c.node.execute(op).await))
}

pub(super) async fn require_admin(st: &AppState, caller: &str) -> Result<(), ApiError> {
    if let Some(c) = &st.cluster {
        c.node.read_barrier().await?;
    }
    let store = st.store.clone();
    let name = caller.to_string();
    let u = blocking(move || store.catalog().user(&name)).await??;
    if u.is_some_and(|u| u.admin) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "denied",
            message: "permission denied: only an admin changes the catalog group".into(),
        })
    }
}

pub(super) async fn status(
    State(st): State<AppState>,
    Caller(..): Caller,
) -> Result<Json<GroupStatus>, ApiError> {
    Ok(Json(cluster(&st)?.node.status()))
}

/// Body of the membership routes.
#[derive(Debug, Deserialize)]
pub(super) struct MemberRequest {
    id: u64,
    /// `host:port` (add-learner only).
    #[serde(default)]
    addr: Option<String>,
}

pub(super) async fn add_learner(
    State(st): State<AppState>,
    Caller(caller, _): Caller,
    Json(r): Json<MemberRequest>,
) -> Result<Json<GroupStatus>, ApiError> {
    require_admin(&st, &caller).await?;
    let c = cluster(&st)?;
    let addr = r
        .addr
        .ok_or_else(|| ApiError::bad_request("invalid", "add-learner needs the node's addr"))?;
    c.node
        .add_learner(r.id, &addr, std::time::Duration::from_secs(120))
        .await?;
    Ok(Json(c.node.status()))
}

pub(super) async fn promote(
    State(st): State<AppState>,
    Caller(caller, _): Caller,
    Json(r): Json<MemberRequest>,
) -> Result<Json<GroupStatus>, ApiError> {
    require_admin(&st, &caller).await?;
    let c = cluster(&st)?;
    c.node.promote(r.id).await?;
    Ok(Json(c.node.status()))
}

pub(super) async fn remove(
    State(st): State<AppState>,
    Caller(caller, _): Caller,
    Json(r): Json<MemberRequest>,
) -> Result<Json<GroupStatus>, ApiError> {
    require_admin(&st, &caller).await?;
    let c = cluster(&st)?;
    c.node.remove(r.id).await?;
    Ok(Json(c.node.status()))
}
