//! A cluster node's part of the sharded CAS (DESIGN.md §4, `docs/CLUSTER.md` "Data path"):
//! the node holds the items of the partitions the current layout gives it, and in the
//! background keeps them complete and sound — anti-entropy with the other holders of each
//! partition (which also carries rebalances and re-replication: a new owner pulls what it
//! lacks, a former owner hands off once every owner holds its items), and a scrub that
//! re-hashes stored items and replaces a damaged copy from another replica. Both run on a
//! timer with a rate limit and can be started by an admin (`/v1/admin/repair`, `/scrub`).

mod closure;
pub mod peer;
pub mod plan;
mod repair;
mod scrub;

use std::sync::Arc;
use std::time::Duration;

use mirage_cluster_config::Layout;
use parking_lot::Mutex;
use serde::Serialize;

pub use peer::{PeerError, Peers};
pub use repair::RoundReport;
pub use scrub::ScrubReport;

use crate::store::Store;

/// How often and how fast the background work runs.
#[derive(Clone, Copy, Debug)]
pub struct ShardTuning {
    /// Time between anti-entropy rounds.
    pub repair_every: Duration,
    /// Time between scrub passes.
    pub scrub_every: Duration,
    /// Bytes per second a background scrub reads at most.
    pub scrub_rate: u64,
}

impl Default for ShardTuning {
    fn default() -> Self {
        ShardTuning {
            repair_every: Duration::from_secs(30),
            scrub_every: Duration::from_secs(24 * 3600),
            scrub_rate: 32 << 20,
        }
    }
}

/// Totals since the node started (`/v1/admin/node`, `mirage admin cluster status`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairTotals {
    /// Anti-entropy rounds run.
    pub rounds: u64,
    /// Items copied from other nodes.
    pub items_pulled: u64,
    /// Their encoded bytes.
    pub bytes_pulled: u64,
    /// Copies of partitions this node no longer owns, dropped after every owner held them.
    pub items_handed_off: u64,
    /// The last round.
    pub last: Option<RoundReport>,
}

/// Scrub totals since the node started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScrubTotals {
    /// Passes run.
    pub passes: u64,
    /// Items re-hashed.
    pub items_checked: u64,
    /// Damaged copies found.
    pub damaged: u64,
    /// Damaged copies replaced from another replica.
    pub repaired: u64,
    /// The last pass.
    pub last: Option<ScrubReport>,
}

/// One node's share of the data path.
#[derive(Debug)]
pub struct Shard {
    /// This node's id.
    pub id: u64,
    store: Store,
    peers: Peers,
    tuning: ShardTuning,
    repair: Mutex<RepairTotals>,
    scrub: Mutex<ScrubTotals>,
    /// One round (or scrub pass) at a time.
    round: tokio::sync::Mutex<()>,
    scrubbing: tokio::sync::Mutex<()>,
}

impl Shard {
    /// The shard of node `id` over `store`, talking to peers with `secret`.
    pub fn new(id: u64, store: Store, secret: &str, tuning: ShardTuning) -> Arc<Shard> {
        Arc::new(Shard {
            id,
            store,
            peers: Peers::new(secret),
            tuning,
            repair: Mutex::default(),
            scrub: Mutex::default(),
            round: tokio::sync::Mutex::new(()),
            scrubbing: tokio::sync::Mutex::new(()),
        })
    }

    /// The current layout as this node's catalog replica has it.
    pub(crate) async fn layout(&self) -> Option<Layout> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.catalog().layout(None)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the layout");
                None
            }
            Err(_) => None,
        }
    }

    /// The layout before the current one, if any (its nodes may still hold items that a
    /// rebalance has not moved yet).
    pub(crate) async fn previous_layout(&self, current: &Layout) -> Option<Layout> {
        let v = current.version.checked_sub(1).filter(|v| *v > 0)?;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.catalog().layout(Some(v))).await {
            Ok(Ok(l)) => l,
            _ => None,
        }
    }

    /// Starts the background rounds and scrubs (on the current tokio runtime).
    pub fn spawn(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(me.tuning.repair_every).await;
                me.repair_round().await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(me.tuning.scrub_every).await;
                me.scrub_pass(Some(me.tuning.scrub_rate)).await;
            }
        });
    }

    /// Repair totals.
    pub fn repair_totals(&self) -> RepairTotals {
        self.repair.lock().clone()
    }

    /// Scrub totals.
    pub fn scrub_totals(&self) -> ScrubTotals {
        self.scrub.lock().clone()
    }

    /// The node's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The peer client.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }
}
