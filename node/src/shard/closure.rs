//! The closure of an image across the cluster: which digests a user who may see the image may
//! read. A node holds only its partitions, so the walk asks the other nodes for the kinds and
//! references of the items it does not hold (`/v1/peer/items/refs`), level by level, in
//! batches.

use std::collections::HashSet;

use mirage_format::{Digest, Item, ItemKind};

use super::peer::ItemRefs;
use super::Shard;

/// Digests per request.
const BATCH: usize = 1000;

impl Shard {
    /// Every digest reachable from `image` (itself included), and whether the walk found every
    /// inner item (false while an upload is still arriving, or while nodes are unreachable).
    pub async fn closure(&self, image: Digest) -> Result<(HashSet<Digest>, bool), String> {
        let layout = self.layout().await;
        let mut seen = HashSet::from([image]);
        let mut frontier = vec![image];
        let mut complete = true;
        while !frontier.is_empty() {
            let batch = std::mem::take(&mut frontier);
            let b = batch.clone();
            let local: Vec<Option<ItemRefs>> = self
                .blocking(move |s| {
                    let mut out = Vec::with_capacity(b.len());
                    for d in &b {
                        out.push(match s.location(d)? {
                            None => None,
                            Some(l) if l.kind == ItemKind::Blob => Some(ItemRefs {
                                kind: l.kind.name().into(),
                                refs: Vec::new(),
                            }),
                            Some(l) => s.get(d)?.and_then(|bytes| {
                                Item::decode(&bytes).ok().map(|i| ItemRefs {
                                    kind: l.kind.name().into(),
                                    refs: i.refs(),
                                })
                            }),
                        });
                    }
                    Ok(out)
                })
                .await?;
            let mut known: Vec<(Digest, Option<ItemRefs>)> = batch.into_iter().zip(local).collect();
            let pos: std::collections::HashMap<Digest, usize> = known
                .iter()
                .enumerate()
                .map(|(i, (d, _))| (*d, i))
                .collect();
            for n in layout
                .iter()
                .flat_map(|l| &l.nodes)
                .filter(|n| n.id != self.id)
            {
                let unresolved: Vec<Digest> = known
                    .iter()
                    .filter(|(_, r)| r.is_none())
                    .map(|(d, _)| *d)
                    .collect();
                if unresolved.is_empty() {
                    break;
                }
                for chunk in unresolved.chunks(BATCH) {
                    let Ok(answers) = self.peers.refs(n.id, &n.address, chunk.to_vec()).await
                    else {
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
                    Some(r) => {
                        for c in r.refs {
                            if seen.insert(c) {
                                frontier.push(c);
                            }
                        }
                    }
                }
            }
        }
        Ok((seen, complete))
    }
}
