//! The closure of an image across the cluster: which digests a user who may see the image may
//! read. A node holds only its partitions, so the walk asks the other nodes for the kinds and
//! references of the items it does not hold (`/v1/peer/items/refs`), level by level, in
//! batches.

use std::collections::HashSet;

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
        let nodes = self
            .layout_and_nodes()
            .await
            .map(|(_, n)| n)
            .unwrap_or_default();
        let mut seen = HashSet::from([image]);
        let mut frontier = vec![image];
        let mut complete = true;
        while !frontier.is_empty() {
            let batch = std::mem::take(&mut frontier);
            let b = batch.clone();
            let local = self.blocking(move |s| super::local_refs(s, &b)).await?;
            let mut known: Vec<(Digest, Option<ItemRefs>)> = batch.into_iter().zip(local).collect();
            let pos: std::collections::HashMap<Digest, usize> = known
                .iter()
                .enumerate()
                .map(|(i, (d, _))| (*d, i))
                .collect();
            for n in nodes.iter().filter(|n| n.id != self.id) {
                let unresolved: Vec<Digest> = known
                    .iter()
                    .filter(|(_, r)| r.is_none())
                    .map(|(d, _)| *d)
                    .collect();
                if unresolved.is_empty() {
                    break;
                }
                for chunk in unresolved.chunks(BATCH) {
                    let Ok(answers) = self.peers.refs(n, chunk.to_vec()).await else {
                        break;
                    };
                    for (d, a) in chunk.iter().zip(answers) {
                        if let (Some(a), Some(&i)) = (a, pos.get(d)) {
                            known[i].1.get_or_insert(a);
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
