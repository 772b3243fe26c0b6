//! One anti-entropy round: compare partition summaries with every other node of the layout,
//! pull what this node lacks in the partitions it owns, and hand off the partitions it holds
//! without owning them once every owner holds those items.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

use futures_util::future::join_all;
use mirage_format::Digest;
use serde::Serialize;

use mirage_cluster_config::{Layout, LayoutNode};

use super::peer::WireSummary;
use super::plan::{missing, plan};
use super::Shard;

/// Items per peer download.
const PULL_BATCH: usize = 256;
/// Errors kept in a report.
const KEEP_ERRORS: usize = 8;

/// What one round did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RoundReport {
    /// Layout version the round worked under (0: no layout yet).
    pub layout_version: u64,
    /// Start, seconds since the epoch.
    pub started_unix: u64,
    /// Duration in milliseconds.
    pub millis: u64,
    /// Partitions this node owns.
    pub partitions_owned: usize,
    /// Owned partitions whose summary differed from a peer's.
    pub partitions_compared: usize,
    /// Owned partitions still missing items a peer holds after the round (a pull failed).
    pub partitions_behind: Vec<u32>,
    /// Partitions held here without being owned, still waiting for their owners.
    pub partitions_handing_off: Vec<u32>,
    /// Items copied from peers.
    pub items_pulled: u64,
    /// Their bytes.
    pub bytes_pulled: u64,
    /// Items dropped after hand-off.
    pub items_handed_off: u64,
    /// Peers that did not answer.
    pub unreachable: Vec<u64>,
    /// The first errors met.
    pub errors: Vec<String>,
}

impl RoundReport {
    fn error(&mut self, e: impl std::fmt::Display) {
        let e = e.to_string();
        tracing::warn!(error = %e, "anti-entropy");
        if self.errors.len() < KEEP_ERRORS {
            self.errors.push(e);
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Shard {
    /// Runs one anti-entropy round now (waiting for a round in progress first), pulling at
    /// most `rate` bytes per second (`None`: as fast as the peers send).
    pub async fn repair_round(&self, rate: Option<u64>) -> RoundReport {
        let _one = self.round.lock().await;
        let t0 = Instant::now();
        let mut rep = RoundReport {
            started_unix: now_unix(),
            ..Default::default()
        };
        if let Some((layout, nodes)) = self.layout_and_nodes().await {
            let mut pace = super::Pace::new(rate);
            self.round_under(&layout, &nodes, &mut rep, &mut pace).await;
        }
        rep.millis = t0.elapsed().as_millis() as u64;
        let mut t = self.repair.lock();
        t.rounds += 1;
        t.items_pulled += rep.items_pulled;
        t.bytes_pulled += rep.bytes_pulled;
        t.items_handed_off += rep.items_handed_off;
        t.last = Some(rep.clone());
        rep
    }

    /// A round under `layout`, with every node of `nodes` (this layout's and the previous
    /// one's) as a peer.
    async fn round_under(
        &self,
        layout: &Layout,
        nodes: &[LayoutNode],
        rep: &mut RoundReport,
        pace: &mut super::Pace,
    ) {
        rep.layout_version = layout.version;
        let parts = layout.partitions;
        let ours: Vec<WireSummary> =
            match self.blocking(move |s| s.partition_summaries(parts)).await {
                Ok(v) => v.into_iter().map(WireSummary::from).collect(),
                Err(e) => return rep.error(format!("summaries of this node: {e}")),
            };
        let others: Vec<&LayoutNode> = nodes.iter().filter(|n| n.id != self.id).collect();
        let answers = join_all(others.iter().map(|n| self.peers.summaries(n, parts))).await;
        let mut theirs = BTreeMap::new();
        for (n, a) in others.iter().zip(answers) {
            match a {
                Ok(s) => {
                    theirs.insert(n.id, s);
                }
                Err(e) => {
                    rep.unreachable.push(n.id);
                    tracing::debug!(error = %e, "anti-entropy: peer unreachable");
                }
            }
        }
        let plan = plan(self.id, layout, &ours, &theirs);
        rep.partitions_owned = plan.owned.len();
        // Every peer named by the plan answered, so it is one of `others`.
        let node = |id: u64| others.iter().copied().find(|n| n.id == id);
        let mut by_partition: BTreeMap<u32, Vec<&LayoutNode>> = BTreeMap::new();
        for (p, peer) in &plan.pulls {
            by_partition.entry(*p).or_default().extend(node(*peer));
        }
        rep.partitions_compared = by_partition.len();
        for (p, peers) in by_partition {
            if !self.pull_partition(parts, p, &peers, rep, pace).await {
                rep.partitions_behind.push(p);
            }
        }
        for (p, owners) in &plan.handoffs {
            let owners: Vec<&LayoutNode> = owners.iter().filter_map(|o| node(*o)).collect();
            let same: Vec<bool> = owners
                .iter()
                .map(|o| {
                    theirs.get(&o.id).and_then(|s| s.get(*p as usize)) == ours.get(*p as usize)
                })
                .collect();
            self.hand_off(parts, *p, &owners, &same, rep).await;
        }
    }

    /// Pulls what `peers` hold of partition `p` and this node lacks; false if something could
    /// not be pulled.
    async fn pull_partition(
        &self,
        parts: u32,
        p: u32,
        peers: &[&LayoutNode],
        rep: &mut RoundReport,
        pace: &mut super::Pace,
    ) -> bool {
        let mut have: BTreeSet<Digest> =
            match self.blocking(move |s| s.partition_digests(parts, p)).await {
                Ok(v) => v.into_iter().collect(),
                Err(e) => {
                    rep.error(format!("partition {p} here: {e}"));
                    return false;
                }
            };
        let mut complete = true;
        for &peer in peers {
            let theirs = match self.peers.digests(peer, parts, p).await {
                Ok(v) => v,
                Err(e) => {
                    rep.error(e);
                    complete = false;
                    continue;
                }
            };
            let ours: Vec<Digest> = have.iter().copied().collect();
            let mut sorted = theirs;
            sorted.sort();
            let want = missing(&ours, &sorted);
            for batch in want.chunks(PULL_BATCH) {
                match self.pull_batch(peer, batch, rep, pace).await {
                    Ok(got) => {
                        if got.len() != batch.len() {
                            complete = false;
                        }
                        have.extend(got);
                    }
                    Err(e) => {
                        rep.error(e);
                        complete = false;
                        break;
                    }
                }
            }
        }
        complete
    }

    /// Downloads `batch` from a peer, keeps each item that hashes to a digest asked for, and
    /// stores them; answers the digests stored.
    async fn pull_batch(
        &self,
        peer: &LayoutNode,
        batch: &[Digest],
        rep: &mut RoundReport,
        pace: &mut super::Pace,
    ) -> Result<Vec<Digest>, String> {
        let items = self
            .peers
            .get(peer, batch.to_vec())
            .await
            .map_err(|e| e.to_string())?;
        let wanted: HashSet<Digest> = batch.iter().copied().collect();
        let alg = self.store.algorithm();
        let mut good = Vec::with_capacity(items.len());
        let mut digests = Vec::with_capacity(items.len());
        for bytes in items {
            match Digest::of(alg, &bytes) {
                Ok(d) if wanted.contains(&d) => {
                    digests.push(d);
                    good.push(bytes);
                }
                _ => rep.error(format!(
                    "node {} sent an item that was not asked for",
                    peer.id
                )),
            }
        }
        let bytes: u64 = good.iter().map(|b| b.len() as u64).sum();
        let n = good.len() as u64;
        if !good.is_empty() {
            self.blocking(move |s| s.put_many(good)).await?;
        }
        rep.items_pulled += n;
        rep.bytes_pulled += bytes;
        pace.done(bytes).await;
        Ok(digests)
    }

    /// Drops this node's copies of partition `p` (which it does not own) that every owner
    /// holds; `same[i]` says the summary of `owners[i]` equals this node's (the same set).
    async fn hand_off(
        &self,
        parts: u32,
        p: u32,
        owners: &[&LayoutNode],
        same: &[bool],
        rep: &mut RoundReport,
    ) {
        let ours = match self.blocking(move |s| s.partition_digests(parts, p)).await {
            Ok(v) => v,
            Err(e) => return rep.error(format!("partition {p} here: {e}")),
        };
        let mut droppable: BTreeSet<Digest> = ours.iter().copied().collect();
        for (o, same) in owners.iter().zip(same) {
            if *same {
                continue;
            }
            match self.peers.digests(o, parts, p).await {
                Ok(list) => {
                    let at: HashSet<Digest> = list.into_iter().collect();
                    droppable.retain(|d| at.contains(d));
                }
                Err(e) => {
                    rep.error(e);
                    droppable.clear();
                    break;
                }
            }
        }
        if droppable.len() < ours.len() {
            rep.partitions_handing_off.push(p);
        }
        if droppable.is_empty() {
            return;
        }
        let list: Vec<Digest> = droppable.into_iter().collect();
        match self.blocking(move |s| s.forget(&list)).await {
            Ok(n) => rep.items_handed_off += n,
            Err(e) => rep.error(format!("dropping handed-off items: {e}")),
        }
    }
}
