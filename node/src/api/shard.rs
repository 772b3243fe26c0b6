//! Routes of the sharded data path: between nodes (`/v1/peer/*`, cluster secret) for
//! anti-entropy, repair and closure walks, and for admins (`/v1/admin/node`, `/repair`,
//! `/scrub`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Serialize;

use super::raft::{cluster, require_admin};
use super::{blocking, ApiError, AppState, Caller, Peer};
use crate::shard::peer::{
    DigestList, DigestsAnswer, DigestsRequest, RefsAnswer, SummariesAnswer, SummariesRequest,
    WireSummary,
};
use crate::shard::{local_refs, RepairTotals, RoundReport, ScrubReport, ScrubTotals, Shard};

/// Partition counts a request may name (a power of two up to 2^16).
fn check_partitions(n: u32) -> Result<u32, ApiError> {
    if n.is_power_of_two() && n <= 1 << 16 {
        Ok(n)
    } else {
        Err(ApiError::bad_request(
            "invalid",
            format!("partitions must be a power of two up to 65536, not {n}"),
        ))
    }
}

fn shard(st: &AppState) -> Result<Arc<Shard>, ApiError> {
    Ok(cluster(st)?.shard.clone())
}

pub(super) async fn summaries(
    State(st): State<AppState>,
    _: Peer,
    Json(r): Json<SummariesRequest>,
) -> Result<Json<SummariesAnswer>, ApiError> {
    let parts = check_partitions(r.partitions)?;
    let store = st.store.clone();
    let s = blocking(move || store.partition_summaries(parts)).await??;
    Ok(Json(SummariesAnswer {
        summaries: s.into_iter().map(WireSummary::from).collect(),
    }))
}

pub(super) async fn digests(
    State(st): State<AppState>,
    _: Peer,
    Json(r): Json<DigestsRequest>,
) -> Result<Json<DigestsAnswer>, ApiError> {
    let parts = check_partitions(r.partitions)?;
    if r.partition >= parts {
        return Err(ApiError::bad_request(
            "invalid",
            format!("partition {} of {parts}", r.partition),
        ));
    }
    let store = st.store.clone();
    let digests = blocking(move || store.partition_digests(parts, r.partition)).await??;
    Ok(Json(DigestsAnswer { digests }))
}

pub(super) async fn get(
    State(st): State<AppState>,
    _: Peer,
    Json(r): Json<DigestList>,
) -> Result<Response, ApiError> {
    Ok(super::items::serve(&st, r.digests, Vec::new(), false, true))
}

pub(super) async fn refs(
    State(st): State<AppState>,
    _: Peer,
    Json(r): Json<DigestList>,
) -> Result<Json<RefsAnswer>, ApiError> {
    let store = st.store.clone();
    let items = blocking(move || local_refs(&store, &r.digests)).await??;
    Ok(Json(RefsAnswer { items }))
}

/// Answer of `GET /v1/admin/node`.
#[derive(Debug, Serialize)]
pub(super) struct NodeStatus {
    id: u64,
    layout_version: Option<u64>,
    items: u64,
    bytes: u64,
    repair: RepairTotals,
    scrub: ScrubTotals,
}

pub(super) async fn node(
    State(st): State<AppState>,
    Caller(caller, _): Caller,
) -> Result<Json<NodeStatus>, ApiError> {
    require_admin(&st, &caller).await?;
    let sh = shard(&st)?;
    let store = st.store.clone();
    let (counts, layout) = blocking(move || -> Result<_, ApiError> {
        Ok((store.counts()?, store.catalog().layout(None)?))
    })
    .await??;
    Ok(Json(NodeStatus {
        id: sh.id,
        layout_version: layout.map(|l| l.version),
        items: counts.items,
        bytes: counts.stored_bytes,
        repair: sh.repair_totals(),
        scrub: sh.scrub_totals(),
    }))
}

pub(super) async fn repair(
    State(st): State<AppState>,
    Caller(caller, _): Caller,
) -> Result<Json<RoundReport>, ApiError> {
    require_admin(&st, &caller).await?;
    // An administrator asks for a round now: at full speed.
    Ok(Json(shard(&st)?.repair_round(None).await))
}

pub(super) async fn scrub(
    State(st): State<AppState>,
    Caller(caller, _): Caller,
) -> Result<Json<ScrubReport>, ApiError> {
    require_admin(&st, &caller).await?;
    Ok(Json(shard(&st)?.scrub_pass(None).await))
}
