//! Prometheus text-format metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;

/// Counters the handlers update.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Items received by `POST /v1/items`.
    pub items_put: AtomicU64,
    /// Of those, items the store did not hold.
    pub items_new: AtomicU64,
    /// Request body bytes of item uploads.
    pub bytes_in: AtomicU64,
    /// Items served by `POST /v1/items/get`.
    pub items_served: AtomicU64,
    /// Item bytes served.
    pub bytes_out: AtomicU64,
    /// Items served to other nodes (`/v1/peer/items/get`: repair, scrub, rebalance).
    pub peer_items_served: AtomicU64,
    /// Item bytes served to other nodes.
    pub peer_bytes_out: AtomicU64,
    /// Item locations a download found in location tables.
    pub read_table_hits: AtomicU64,
    /// Item locations a download looked up in the index.
    pub read_index_lookups: AtomicU64,
    /// Volume reads of downloads (nearby records are merged into one read).
    pub read_ops: AtomicU64,
    /// Location-table entries recorded by `POST /v1/items/tables`.
    pub table_entries_added: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
}

pub(super) async fn render(State(st): State<AppState>) -> impl IntoResponse {
    let m = &st.metrics;
    let mut s = String::new();
    let mut counter = |name: &str, help: &str, v: &AtomicU64| {
        let _ = writeln!(
            s,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    };
    counter(
        "mirage_items_put_total",
        "Items received for storage.",
        &m.items_put,
    );
    counter(
        "mirage_items_new_total",
        "Items received that the store did not hold.",
        &m.items_new,
    );
    counter(
        "mirage_bytes_in_total",
        "Bytes of item uploads.",
        &m.bytes_in,
    );
    counter(
        "mirage_items_served_total",
        "Items served.",
        &m.items_served,
    );
    counter(
        "mirage_bytes_out_total",
        "Item bytes served to clients.",
        &m.bytes_out,
    );
    counter(
        "mirage_peer_items_served_total",
        "Items served to other nodes (repair, scrub, rebalance).",
        &m.peer_items_served,
    );
    counter(
        "mirage_peer_bytes_out_total",
        "Item bytes served to other nodes.",
        &m.peer_bytes_out,
    );
    counter(
        "mirage_read_table_hits_total",
        "Item locations downloads found in location tables.",
        &m.read_table_hits,
    );
    counter(
        "mirage_read_index_lookups_total",
        "Item locations downloads looked up in the index.",
        &m.read_index_lookups,
    );
    counter(
        "mirage_read_ops_total",
        "Volume reads of downloads (nearby records merged into one).",
        &m.read_ops,
    );
    counter(
        "mirage_table_entries_added_total",
        "Location-table entries recorded for parents (POST /v1/items/tables).",
        &m.table_entries_added,
    );
    counter(
        "mirage_request_errors_total",
        "Requests answered with an error.",
        &m.errors,
    );
    let store = st.store.clone();
    if let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || store.counts()).await {
        let _ = writeln!(
            s,
            "# HELP mirage_store_items Items in the store.\n# TYPE mirage_store_items gauge\nmirage_store_items {}\n# HELP mirage_store_bytes Stored bytes.\n# TYPE mirage_store_bytes gauge\nmirage_store_bytes {}",
            stats.items, stats.stored_bytes
        );
    }
    if let Some(c) = &st.cluster {
        let g = c.node.status();
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "mirage_raft_term",
            "Current Raft term of the catalog group.",
            g.term,
        );
        gauge(
            "mirage_raft_is_leader",
            "1 if this node leads the catalog group.",
            u64::from(g.leader == Some(g.id)),
        );
        gauge(
            "mirage_raft_has_leader",
            "1 if this node knows a leader.",
            u64::from(g.leader.is_some()),
        );
        gauge(
            "mirage_raft_last_log_index",
            "Last catalog log index on this node.",
            g.last_log_index.unwrap_or(0),
        );
        gauge(
            "mirage_raft_applied_index",
            "Last catalog log index applied on this node.",
            g.applied.unwrap_or(0),
        );
        gauge(
            "mirage_raft_voters",
            "Voters of the catalog group.",
            g.voters.len() as u64,
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s)
}
