//! Hinted handoff: while a replica is down, a checkin keeps N copies by writing the copy that
//! replica missed to another node (a fallback that does not own the item's partition). The
//! fallback holds it like any copy of a partition it does not own: when the replica is back,
//! its anti-entropy round finds the fallback's summary different and pulls the item, and the
//! fallback hands its copy off once every owner holds it (`node/src/shard/plan.rs`). No hint
//! queue is needed: the hint is the copy itself.
//!
//! Hints do not count towards the write quorum W: an item is stored when W of its own
//! replicas hold it; the hint only keeps the N-th copy meanwhile.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use mirage_cluster_config::placement::partition_of;
use mirage_format::Digest;
use mirage_node::Store;
use parking_lot::Mutex;

use super::shard::{Senders, Shards};
use super::sync::read_local;

impl Shards {
    /// Where to write the copies of `d` that the `missed` replicas lack: nodes of the layout
    /// that are active, not replicas of `d` and not `failed` — in the zone of a missed
    /// replica first, then the others, rotated by partition so the hints of a lost node
    /// spread over the cluster. At most one per missed replica.
    pub(super) fn fallbacks(
        &self,
        d: &Digest,
        missed: &[u64],
        failed: &BTreeMap<u64, String>,
    ) -> Vec<u64> {
        let replicas = self.replicas(d);
        let p = partition_of(d, self.layout.partitions) as usize;
        let lost_zones: Vec<&str> = missed
            .iter()
            .filter_map(|n| self.zones.get(n).map(String::as_str))
            .collect();
        let mut candidates: Vec<(bool, usize, u64)> = self
            .layout
            .active()
            .filter(|n| !replicas.contains(&n.id) && !failed.contains_key(&n.id))
            .enumerate()
            .map(|(i, n)| (!lost_zones.contains(&n.zone.as_str()), i, n.id))
            .collect();
        let count = candidates.len().max(1);
        candidates.sort_by_key(|(other_zone, i, _)| (*other_zone, (i + count - p % count) % count));
        candidates
            .into_iter()
            .map(|(_, _, id)| id)
            .take(missed.len())
            .collect()
    }

    /// After a stage of a push (`sent`: each item and the replicas it was sent to), writes a
    /// hint for every copy a failed replica missed, and waits for the fallbacks' answers.
    /// A hint that fails is only logged: the write already has its quorum.
    pub(super) fn hint(
        &self,
        local: &Store,
        root: &Digest,
        tx: &mut Senders<'_>,
        sent: &[(Digest, Vec<u64>)],
        failed: &Mutex<BTreeMap<u64, String>>,
    ) -> Result<u64> {
        let failed_now = failed.lock().clone();
        if failed_now.is_empty() {
            return Ok(0);
        }
        let mut to: HashMap<Digest, Vec<u64>> = HashMap::new();
        for (d, targets) in sent {
            let missed: Vec<u64> = targets
                .iter()
                .copied()
                .filter(|n| failed_now.contains_key(n))
                .collect();
            if !missed.is_empty() {
                let f = self.fallbacks(d, &missed, &failed_now);
                if !f.is_empty() {
                    to.insert(*d, f);
                }
            }
        }
        if to.is_empty() {
            return Ok(0);
        }
        let ds: Vec<Digest> = to.keys().copied().collect();
        let mut hints = 0u64;
        read_local(local, root, &ds, |d, bytes| {
            for n in &to[&d] {
                tx.send(*n, d, bytes.to_vec());
                hints += 1;
            }
            Ok(())
        })?;
        tx.barrier();
        tracing::warn!(
            "{hints} copies for unreachable replicas written to other nodes (hinted handoff)"
        );
        Ok(hints)
    }
}
