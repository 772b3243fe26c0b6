//! Who may read which items. A user reads items only as part of an image it may see: a
//! download names the image, the caller must see it (`Catalog::may_see`, or the catalog does
//! not know the image: an unnamed image's digest is its checker-in's to share), and every
//! requested digest must be in that image's closure. The closure is computed from location
//! tables (each parent lists its children and their kinds, so no item is read or decoded) and
//! kept for the most recently used images.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use mirage_format::item::ItemKind;
use mirage_format::{Digest, Item};
use parking_lot::Mutex;

use crate::store::{Store, StoreError};

/// Images whose closures are kept.
const KEEP: usize = 32;

/// The digests reachable from an image.
type Closure = Arc<HashSet<Digest>>;

/// Closures of recently read images.
#[derive(Debug, Default)]
pub struct Closures {
    inner: Mutex<(HashMap<Digest, Closure>, VecDeque<Digest>)>,
}

impl Closures {
    /// Every digest reachable from `image` (itself included).
    pub fn of(&self, store: &Store, image: &Digest) -> Result<Closure, StoreError> {
        if let Some(c) = self.inner.lock().0.get(image) {
            return Ok(c.clone());
        }
        let (c, complete) = closure(store, image)?;
        Ok(self.keep(image, c, complete))
    }

    /// [`Closures::of`] on a cluster node: the walk crosses the nodes that hold the items.
    pub async fn of_cluster(
        &self,
        shard: &crate::shard::Shard,
        image: &Digest,
    ) -> Result<Closure, String> {
        if let Some(c) = self.inner.lock().0.get(image) {
            return Ok(c.clone());
        }
        let (c, complete) = shard.closure(*image).await?;
        Ok(self.keep(image, c, complete))
    }

    fn keep(&self, image: &Digest, c: HashSet<Digest>, complete: bool) -> Closure {
        let c = Arc::new(c);
        if !complete {
            // Items still arriving (or held elsewhere): answer from what is here, keep nothing.
            return c;
        }
        let mut g = self.inner.lock();
        let (map, order) = &mut *g;
        if map.insert(*image, c.clone()).is_none() {
            order.push_back(*image);
            while order.len() > KEEP {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        c
    }
}

/// The digests reachable from `image` that this node can see, and whether that is all of
/// them (no inner item missing).
fn closure(store: &Store, image: &Digest) -> Result<(HashSet<Digest>, bool), StoreError> {
    let mut complete = true;
    let mut seen = HashSet::from([*image]);
    let mut queue = vec![*image];
    while let Some(d) = queue.pop() {
        let children: Vec<(Digest, bool)> = match store.location_table(&d)? {
            Some(t) => t
                .entries
                .into_iter()
                .map(|(c, l)| (c, l.kind != ItemKind::Blob))
                .collect(),
            // No table (an item without references, or one stored before tables existed):
            // read it to learn its references.
            None => match store.get(&d)? {
                Some(bytes) => match Item::decode(&bytes) {
                    Ok(item) => item.refs().into_iter().map(|c| (c, true)).collect(),
                    Err(_) => Vec::new(),
                },
                None => {
                    complete = false;
                    Vec::new()
                }
            },
        };
        for (c, inner) in children {
            if seen.insert(c) && inner {
                queue.push(c);
            }
        }
    }
    Ok((seen, complete))
}
