//! A cluster node's part of the sharded CAS (DESIGN.md §4, `docs/CLUSTER.md` "Data path"):
//! the node holds the items of the partitions the current layout gives it, and in the
//! background keeps them complete and sound — anti-entropy with the other holders of each
//! partition (which also carries rebalances and re-replication: a new owner pulls what it
//! lacks, a former owner hands off once every owner holds its items), and a scrub that
//! re-hashes stored items and replaces a damaged copy from another replica. Both run on a
//! timer with a rate limit and can be started by an admin (`/v1/admin/repair`, `/scrub`).

mod closure;
pub mod liveness;
pub mod peer;
pub mod plan;
mod repair;
mod scrub;

use std::sync::Arc;
use std::time::Duration;

use mirage_cluster_config::{Layout, LayoutNode};
use mirage_format::{Digest, Item, ItemKind};
use parking_lot::Mutex;
use serde::Serialize;

pub use peer::{ItemRefs, PeerError, Peers};
pub use repair::RoundReport;
pub use scrub::ScrubReport;

use crate::store::{Store, StoreError};

/// How often and how fast the background work runs.
#[derive(Clone, Copy, Debug)]
pub struct ShardTuning {
    /// Time between anti-entropy rounds.
    pub repair_every: Duration,
    /// Time between scrub passes.
    pub scrub_every: Duration,
    /// Bytes per second a background scrub reads at most.
    pub scrub_rate: u64,
    /// Bytes per second background anti-entropy rounds pull at most.
    pub repair_rate: u64,
    /// How long a node may fail every probe before the catalog leader declares it dead
    /// (`None`: never).
    pub dead_after: Option<Duration>,
}

impl Default for ShardTuning {
    fn default() -> Self {
        ShardTuning {
            repair_every: Duration::from_secs(30),
            scrub_every: Duration::from_secs(24 * 3600),
            scrub_rate: 32 << 20,
            repair_rate: 64 << 20,
            dead_after: Some(Duration::from_secs(300)),
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

    /// Runs store work off the async threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The current layout (or version `v`) as this node's catalog replica has it.
    pub(crate) async fn layout(&self, v: Option<u64>) -> Option<Layout> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.catalog().layout(v)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the layout");
                None
            }
            Err(_) => None,
        }
    }

    /// The current layout, and its nodes followed by those of the previous version that it
    /// no longer has (they may still hold items a rebalance has not moved yet).
    pub(crate) async fn layout_and_nodes(&self) -> Option<(Layout, Vec<LayoutNode>)> {
        let now = self.layout(None).await?;
        let before = match now.version.checked_sub(1).filter(|v| *v > 0) {
            Some(v) => self.layout(Some(v)).await,
            None => None,
        };
        let nodes = now
            .nodes_with(before.as_ref())
            .into_iter()
            .cloned()
            .collect();
        Some((now, nodes))
    }

    /// Starts the background rounds and scrubs (on the current tokio runtime).
    pub fn spawn(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(me.tuning.repair_every).await;
                me.repair_round(Some(me.tuning.repair_rate)).await;
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
}

/// Keeps background work to a rate: after each step, waits until the bytes done so far are
/// due at `rate` bytes per second since the start (`None` or 0: no limit).
pub(crate) struct Pace {
    start: std::time::Instant,
    rate: Option<u64>,
    bytes: u64,
}

impl Pace {
    pub(crate) fn new(rate: Option<u64>) -> Pace {
        Pace {
            start: std::time::Instant::now(),
            rate: rate.filter(|r| *r > 0),
            bytes: 0,
        }
    }

    /// Counts `bytes` more done, and waits if they came early.
    pub(crate) async fn done(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// What this store knows of each of `ds` for a closure walk: its kind and references, `None`
/// where it does not hold it (or holds it damaged). Blobs are answered from the index alone.
pub fn local_refs(store: &Store, ds: &[Digest]) -> Result<Vec<Option<ItemRefs>>, StoreError> {
    let mut out = Vec::with_capacity(ds.len());
    for d in ds {
        out.push(match store.location(d)? {
            None => None,
            Some(l) if l.kind == ItemKind::Blob => Some(ItemRefs {
                kind: l.kind.name().into(),
                refs: Vec::new(),
            }),
            Some(l) => store.get(d)?.and_then(|bytes| {
                Item::decode(&bytes).ok().map(|i| ItemRefs {
                    kind: l.kind.name().into(),
                    refs: i.refs(),
                })
            }),
        });
    }
    Ok(out)
}
