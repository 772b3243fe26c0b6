//! The closure of an image across the cluster: which digests a user who may see the image may
//! read. A node holds only its partitions, so the walk asks the other nodes for the kinds and
//! references of the items it does not hold (`/v1/peer/items/refs`), level by level, in
//! batches: each item first of its replicas in the current layout, then of every other node,
//! all nodes at once; a node that fails or hangs (the quick peer timeout) is not asked again
//! during the walk.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures_util::future::join_all;
use mirage_format::Digest;

use super::peer::ItemRefs;
use super::Shard;

/// Digests per request.
const BATCH: usize = 1000;

impl Shard {
    /// Every digest reachable from `image` (itself included), and whether the walk found every
    /// inner item (false while an upload is still arriving, or while nodes are unreachable).
    pub async fn closure(&self, image: Digest) -> Result<(HashSet<Digest>, bool), String> {
        // The nodes of the current layout and the previous one's it lacks: the items may not
        // have moved yet.
        let (placement, nodes) = match self.layout_and_nodes().await {
            Some((layout, nodes)) => (Some(layout.placement()), nodes),
            None => (None, Vec::new()),
        };
        let others: Vec<u64> = nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| *id != self.id)
            .collect();
        // Where to ask for `d`: its replicas first, then everyone else.
        let order = |d: &Digest| -> Vec<u64> {
            let mut o: Vec<u64> = placement
                .as_ref()
                .map(|p| p.nodes_for(d).to_vec())
                .unwrap_or_default();
            o.retain(|id| *id != self.id);
            o.extend(
                others
                    .iter()
                    .filter(|id| !o.contains(id))
                    .collect::<Vec<_>>(),
            );
            o
        };
        let by_id: HashMap<u64, _> = nodes.iter().map(|n| (n.id, n)).collect();
        let mut down: HashSet<u64> = HashSet::new();
        let mut seen = HashSet::from([image]);
        let mut frontier = vec![image];
        let mut complete = true;
        while !frontier.is_empty() {
            let batch = std::mem::take(&mut frontier);
            let b = batch.clone();
            let local = self.blocking(move |s| super::local_refs(s, &b)).await?;
            let mut known: HashMap<Digest, Option<ItemRefs>> =
                batch.into_iter().zip(local).collect();
            let mut orders: HashMap<Digest, (Vec<u64>, usize)> = HashMap::new();
            loop {
                // Each unresolved digest to the next node in its order not known down.
                let mut plan: BTreeMap<u64, Vec<Digest>> = BTreeMap::new();
                for (d, r) in &known {
                    if r.is_some() {
                        continue;
                    }
                    let (o, k) = orders.entry(*d).or_insert_with(|| (order(d), 0));
                    while *k < o.len() && down.contains(&o[*k]) {
                        *k += 1;
                    }
                    if let Some(n) = o.get(*k) {
                        plan.entry(*n).or_default().push(*d);
                        *k += 1;
                    }
                }
                if plan.is_empty() {
                    break;
                }
                let asks = plan.into_iter().filter_map(|(id, ds)| {
                    let n = by_id.get(&id).copied()?;
                    Some(async move {
                        let mut got = Vec::new();
                        for chunk in ds.chunks(BATCH) {
                            match self.peers.refs(n, chunk.to_vec()).await {
                                Ok(a) => got.extend(chunk.iter().copied().zip(a)),
                                Err(e) => return (id, got, Some(e)),
                            }
                        }
                        (id, got, None)
                    })
                });
                for (id, got, err) in join_all(asks).await {
                    if let Some(e) = err {
                        tracing::warn!(node = id, error = %e, "closure walk: node skipped");
                        down.insert(id);
                    }
                    for (d, a) in got {
                        if let (Some(a), Some(slot)) = (a, known.get_mut(&d)) {
                            slot.get_or_insert(a);
                        }
                    }
                }
            }
            for (_, r) in known {
                match r {
                    None => complete = false,
                    Some(r) => frontier.extend(r.refs.into_iter().filter(|c| seen.insert(*c))),
                }
            }
        }
        Ok((seen, complete))
    }
}
