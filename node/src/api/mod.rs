//! The node's HTTP API (axum on hyper): items in batches with streamed bodies, health,
//! readiness and Prometheus metrics. `docs/API.md` documents every route; a test checks the
//! router against it. Servers start with [`run`] on a bound listener (tests bind port 0) and
//! stop when the shutdown future completes, finishing the requests in flight.

mod error;
mod items;
mod metrics;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;
pub use metrics::Metrics;

use crate::store::Store;

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// Every route, as `METHOD PATH` (checked against `docs/API.md` by a test).
pub const ROUTES: [&str; 6] = [
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "POST /v1/items",
    "POST /v1/items/has",
    "POST /v1/items/get",
];

/// The router.
pub fn router(store: Store) -> Router {
    let state = AppState {
        store,
        metrics: Arc::new(Metrics::default()),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics::render))
        .route("/v1/items", post(items::put))
        .route("/v1/items/has", post(items::has))
        .route("/v1/items/get", post(items::get))
        .layer(DefaultBodyLimit::max(16 << 20))
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

/// Serves `store` on `listener` until `shutdown` completes; requests in flight finish.
pub async fn run(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(store))
        .with_graceful_shutdown(shutdown)
        .await
}
