//! The node's HTTP API (axum on hyper): items in batches with streamed bodies, health,
//! readiness and Prometheus metrics. `docs/API.md` documents every route; a test checks the
//! router against it. Servers start with [`run`] on a bound listener (tests bind port 0) and
//! stop when the shutdown future completes, finishing the requests in flight.

mod access;
mod auth;
pub mod catalog;
mod error;
mod items;
mod metrics;
mod raft;
mod shard;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

pub use auth::{Caller, Peer};
pub use error::ApiError;
pub use metrics::Metrics;

use crate::raft::node::CatalogNode;
use crate::store::Store;

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Cluster mode: the catalog group member and the cluster secret.
    pub cluster: Option<Cluster>,
    /// Closures of recently read images (item read authorization).
    pub closures: Arc<access::Closures>,
}

/// What a cluster node adds to a standalone one.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// This node's member of the catalog group.
    pub node: CatalogNode,
    /// The secret nodes present to each other.
    pub secret: Arc<str>,
    /// This node's part of the sharded CAS.
    pub shard: Arc<crate::shard::Shard>,
}

/// Runs blocking work (RocksDB, files) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Every route, as `METHOD PATH` (checked against `docs/API.md` by a test).
pub const ROUTES: [&str; 28] = [
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "POST /v1/items",
    "POST /v1/items/has",
    "POST /v1/items/get",
    "POST /v1/items/locations",
    "POST /v1/items/tables",
    "POST /v1/catalog/command",
    "POST /v1/catalog/commands",
    "POST /v1/catalog/query",
    "POST /v1/raft/append",
    "POST /v1/raft/vote",
    "POST /v1/raft/snapshot",
    "POST /v1/raft/forward",
    "GET /v1/raft/applied",
    "GET /v1/admin/raft",
    "POST /v1/admin/raft/add-learner",
    "POST /v1/admin/raft/promote",
    "POST /v1/admin/raft/remove",
    "GET /v1/whoami",
    "POST /v1/peer/summaries",
    "POST /v1/peer/digests",
    "POST /v1/peer/items/get",
    "POST /v1/peer/items/refs",
    "GET /v1/admin/node",
    "POST /v1/admin/repair",
    "POST /v1/admin/scrub",
];

/// The router of a standalone node (`cluster: None`) or a cluster node.
pub fn router(store: Store, cluster: Option<Cluster>) -> Router {
    let state = AppState {
        store,
        metrics: Arc::new(Metrics::default()),
        cluster,
        closures: Arc::default(),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics::render))
        .route("/v1/items", post(items::put))
        .route("/v1/items/has", post(items::has))
        .route("/v1/items/get", post(items::get))
        .route("/v1/items/locations", post(items::locations))
        .route("/v1/items/tables", post(items::tables))
        .route("/v1/catalog/command", post(catalog::command))
        .route("/v1/catalog/commands", post(catalog::commands))
        .route("/v1/catalog/query", post(catalog::query))
        .route("/v1/raft/append", post(raft::append))
        .route("/v1/raft/vote", post(raft::vote))
        .route("/v1/raft/snapshot", post(raft::snapshot))
        .route("/v1/raft/forward", post(raft::forward))
        .route("/v1/raft/applied", get(raft::applied))
        .route("/v1/admin/raft", get(raft::status))
        .route("/v1/admin/raft/add-learner", post(raft::add_learner))
        .route("/v1/admin/raft/promote", post(raft::promote))
        .route("/v1/admin/raft/remove", post(raft::remove))
        .route("/v1/whoami", get(whoami))
        .route("/v1/peer/summaries", post(shard::summaries))
        .route("/v1/peer/digests", post(shard::digests))
        .route("/v1/peer/items/get", post(shard::get))
        .route("/v1/peer/items/refs", post(shard::refs))
        .route("/v1/admin/node", get(shard::node))
        .route("/v1/admin/repair", post(shard::repair))
        .route("/v1/admin/scrub", post(shard::scrub))
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(state)
}

async fn ready(State(st): State<AppState>) -> (StatusCode, &'static str) {
    if st.store.writable() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "writes disabled after a storage failure\n",
        )
    }
}

async fn whoami(Caller(c, _): Caller) -> String {
    format!("{c}\n")
}

/// Serves `store` on `listener` until `shutdown` completes; requests in flight finish.
pub async fn run(
    listener: tokio::net::TcpListener,
    store: Store,
    cluster: Option<Cluster>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(store, cluster))
        .with_graceful_shutdown(shutdown)
        .await
}

/// If the catalog has no users yet, adds `admin` (an administrator) with a new token and
/// returns the token; else `None`. Standalone nodes call it at start; a cluster's first node
/// does the same through Raft once the group is initialized.
pub fn bootstrap_admin(store: &Store) -> Result<Option<String>, crate::catalog::CatalogError> {
    let c = store.catalog();
    if !c.users()?.is_empty() {
        return Ok(None);
    }
    let (token, h) = crate::auth::new_token();
    c.submit(
        "admin",
        crate::catalog::Command::AddUser {
            name: "admin".into(),
            admin: true,
            token_sha256: Some(h),
        },
    )?;
    Ok(Some(token))
}
