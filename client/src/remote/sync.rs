//! Moving an image's closure between a local store and a node.
//!
//! Both directions walk the Merkle DAG top-down, level by level, asking the receiving side in
//! batches which digests it lacks and never descending into a subtree it holds (the closure
//! invariant: a stored item's whole subtree is stored). Blobs (no references: the bulk of the
//! bytes) are sent as soon as they are read; inner items (manifests, trees, chunk lists: small)
//! are kept until the walk ends and then sent children first, in a post-order of the DAG, so
//! the receiving side's closure check always passes. Every received item is hashed and must be
//! one that was asked for.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use mirage_format::item::{peek, ItemKind};
use mirage_format::{Digest, Item};
use mirage_node::{ReadOptions, Store};
use serde::Serialize;

use super::Remote;

/// Bytes per upload request or local write batch.
const BATCH_BYTES: usize = 8 << 20;

/// What a transfer moved.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct SyncStats {
    /// Items the receiving side was asked about.
    pub checked: u64,
    /// Items sent.
    pub items: u64,
    /// Encoded bytes sent.
    pub bytes: u64,
    /// Of the items sent, copies written to another node for a replica that was down
    /// (hinted handoff; cluster pushes only).
    pub hinted: u64,
}

impl SyncStats {
    /// Counts items moved, here and in [`MOVED`].
    pub fn add(&mut self, items: u64, bytes: u64) {
        self.items += items;
        self.bytes += bytes;
        MOVED.items.fetch_add(items, Ordering::Relaxed);
        MOVED.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Items and bytes this process has moved so far, for progress reports.
#[derive(Debug, Default)]
pub struct Moved {
    /// Items sent or received.
    pub items: AtomicU64,
    /// Their encoded bytes.
    pub bytes: AtomicU64,
}

/// The process's transfer counters.
pub static MOVED: Moved = Moved {
    items: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};

/// Inner items waiting for their children: digest → (encoded bytes, references).
pub(super) type Inner = HashMap<Digest, (Vec<u8>, Vec<Digest>)>;

/// Items found during a download walk → the parent they were found in (whose location table
/// tells the node where they are).
pub type Parents = HashMap<Digest, Digest>;

/// `inner`'s items reachable from `root`, children before parents.
fn post_order(root: &Digest, inner: &Inner) -> Vec<Digest> {
    let mut out = Vec::with_capacity(inner.len());
    let mut done: HashSet<Digest> = HashSet::with_capacity(inner.len());
    // (digest, children pushed yet)
    let mut stack = vec![(*root, false)];
    while let Some((d, expanded)) = stack.pop() {
        let Some((_, refs)) = inner.get(&d) else {
            continue;
        };
        if expanded {
            if done.insert(d) {
                out.push(d);
            }
            continue;
        }
        if done.contains(&d) {
            continue;
        }
        stack.push((d, true));
        for r in refs {
            if inner.contains_key(r) && !done.contains(r) {
                stack.push((*r, false));
            }
        }
    }
    out
}

/// The references of an encoded item, `None` for a blob (which has none and is not decoded).
pub(super) fn refs_of(d: &Digest, bytes: &[u8]) -> Result<Option<Vec<Digest>>> {
    let (kind, _) = peek(bytes).with_context(|| format!("item {}", d.to_text()))?;
    if kind == ItemKind::Blob {
        return Ok(None);
    }
    let item = Item::decode(bytes).with_context(|| format!("item {}", d.to_text()))?;
    Ok(Some(item.refs()))
}

/// Queues each of `refs` not seen yet on `next`.
pub(super) fn descend(refs: &[Digest], seen: &mut HashSet<Digest>, next: &mut Vec<Digest>) {
    for r in refs {
        if seen.insert(*r) {
            next.push(*r);
        }
    }
}

/// Records an item read during a walk: a blob goes to `blobs`, an inner item to `inner`
/// with its references queued on `next`.
pub(super) fn route(
    d: Digest,
    bytes: Vec<u8>,
    seen: &mut HashSet<Digest>,
    next: &mut Vec<Digest>,
    parents: &mut Parents,
    inner: &mut Inner,
    blobs: &mut Vec<Vec<u8>>,
) -> Result<()> {
    match refs_of(&d, &bytes)? {
        None => blobs.push(bytes),
        Some(refs) => {
            let from = next.len();
            descend(&refs, seen, next);
            for r in &next[from..] {
                parents.insert(*r, d);
            }
            inner.insert(d, (bytes, refs));
        }
    }
    Ok(())
}

/// Reads `ds` from the local store and hands each to `f` (in the store's read order); fails
/// on the first error of `f` or of a read, and when the store lacks some of them.
pub(super) fn read_local(
    local: &Store,
    root: &Digest,
    ds: &[Digest],
    mut f: impl FnMut(Digest, Bytes) -> Result<()>,
) -> Result<()> {
    let mut failure = None;
    let mut count = 0usize;
    local.get_many(ds, None, ReadOptions::default(), |d, r| {
        if failure.is_some() {
            return;
        }
        count += 1;
        failure = match r {
            Ok(bytes) => f(d, bytes).err(),
            Err(e) => Some(anyhow::Error::new(e).context(format!("reading {}", d.to_text()))),
        };
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if count != ds.len() {
        bail!(
            "the local store lacks {} items of {} (it is incomplete; check it in again)",
            ds.len() - count,
            root.to_text()
        );
    }
    Ok(())
}

/// Hashes an item a node sent and checks that it was asked for (`wanted`) and not sent before
/// (`got`, which it joins).
pub(super) fn accept(
    alg: mirage_format::Algorithm,
    bytes: &[u8],
    wanted: &HashSet<Digest>,
    got: &mut HashSet<Digest>,
) -> Result<Digest> {
    let d = Digest::of(alg, bytes)?;
    if !wanted.contains(&d) || !got.insert(d) {
        bail!("a node sent {}, which was not asked for", d.to_text());
    }
    Ok(d)
}

/// Hands `inner`'s items to `sink` in batches, children before parents.
pub(super) fn finish(
    root: &Digest,
    mut inner: Inner,
    mut sink: impl FnMut(&mut Vec<Vec<u8>>) -> Result<()>,
) -> Result<()> {
    let mut batch = Vec::new();
    for d in post_order(root, &inner) {
        if let Some((bytes, _)) = inner.remove(&d) {
            batch.push(bytes);
            if batch_bytes(&batch) >= BATCH_BYTES {
                sink(&mut batch)?;
            }
        }
    }
    sink(&mut batch)
}

/// The digests of `frontier` whose presence answer is false.
pub(super) fn absent(frontier: &[Digest], present: Vec<bool>) -> Vec<Digest> {
    frontier
        .iter()
        .zip(present)
        .filter(|(_, p)| !p)
        .map(|(d, _)| *d)
        .collect()
}

fn batch_bytes(b: &[Vec<u8>]) -> usize {
    b.iter().map(Vec::len).sum()
}

/// Sends `root`'s closure from `local` to `remote`, skipping what the nodes hold: to the
/// replicas the layout places each item on (`shard.rs`), or to the one node of a cluster
/// without a layout.
pub fn push(local: &Store, remote: &Remote, root: &Digest) -> Result<SyncStats> {
    if let Some(shards) = remote.shards()? {
        return shards.push(local, root);
    }
    push_to(local, remote, root)
}

/// Where a walk sends items: one node, or another local store.
pub trait Sink {
    /// Which of `ds` it holds.
    fn has(&self, ds: &[Digest]) -> Result<Vec<bool>>;
    /// Stores encoded items (children before parents), durably.
    fn put(&self, items: &[Vec<u8>]) -> Result<()>;
}

impl Sink for Remote {
    fn has(&self, ds: &[Digest]) -> Result<Vec<bool>> {
        Remote::has(self, ds)
    }
    fn put(&self, items: &[Vec<u8>]) -> Result<()> {
        Remote::put(self, items).map(|_| ())
    }
}

impl Sink for Store {
    fn has(&self, ds: &[Digest]) -> Result<Vec<bool>> {
        Ok(self.has_many(ds)?)
    }
    fn put(&self, items: &[Vec<u8>]) -> Result<()> {
        self.put_many(items.to_vec())?;
        Ok(())
    }
}

/// Sends `root`'s closure from `local` to `sink`, skipping every subtree it holds.
pub fn push_to(local: &Store, sink: &dyn Sink, root: &Digest) -> Result<SyncStats> {
    let mut stats = SyncStats::default();
    let mut seen = HashSet::from([*root]);
    let mut frontier = vec![*root];
    let mut inner = Inner::new();
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let send = |batch: &mut Vec<Vec<u8>>, stats: &mut SyncStats| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        sink.put(batch)?;
        stats.add(batch.len() as u64, batch_bytes(batch) as u64);
        batch.clear();
        Ok(())
    };
    while !frontier.is_empty() {
        stats.checked += frontier.len() as u64;
        let missing = absent(&frontier, sink.has(&frontier)?);
        let mut next = Vec::new();
        read_local(local, root, &missing, |d, bytes| {
            let parents = &mut Parents::new();
            route(
                d,
                bytes.to_vec(),
                &mut seen,
                &mut next,
                parents,
                &mut inner,
                &mut blobs,
            )?;
            if batch_bytes(&blobs) >= BATCH_BYTES {
                send(&mut blobs, &mut stats)?;
            }
            Ok(())
        })?;
        frontier = next;
    }
    send(&mut blobs, &mut stats)?;
    finish(root, inner, |b| send(b, &mut stats))?;
    Ok(stats)
}

/// Fetches `root`'s closure from `remote` into `local`, skipping what `local` holds: from the
/// nearest replica of each item (`shard.rs`), or from the one node of a cluster without a
/// layout.
pub fn pull(local: &Store, remote: &Remote, root: &Digest) -> Result<SyncStats> {
    if let Some(shards) = remote.shards()? {
        return shards.pull(local, root);
    }
    let alg = local.algorithm();
    let mut stats = SyncStats::default();
    let mut seen = HashSet::from([*root]);
    let mut frontier = vec![*root];
    let mut inner = Inner::new();
    let mut parents = Parents::new();
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let store = |batch: &mut Vec<Vec<u8>>, stats: &mut SyncStats| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        stats.add(batch.len() as u64, batch_bytes(batch) as u64);
        local.put_many(std::mem::take(batch))?;
        Ok(())
    };
    while !frontier.is_empty() {
        stats.checked += frontier.len() as u64;
        let missing = absent(&frontier, local.has_many(&frontier)?);
        let wanted: HashSet<Digest> = missing.iter().copied().collect();
        let mut got: HashSet<Digest> = HashSet::with_capacity(missing.len());
        let mut next = Vec::new();
        let mut next_parents = Parents::new();
        remote.get_each(&missing, Some(root), &parents, |bytes| {
            let d = accept(alg, &bytes, &wanted, &mut got)?;
            let p = &mut next_parents;
            route(d, bytes, &mut seen, &mut next, p, &mut inner, &mut blobs)?;
            if batch_bytes(&blobs) >= BATCH_BYTES {
                store(&mut blobs, &mut stats)?;
            }
            Ok(())
        })?;
        if got.len() != missing.len() {
            let first = missing
                .iter()
                .find(|d| !got.contains(d))
                .map(Digest::to_text);
            bail!(
                "{} lacks {} items of {} (first: {})",
                remote.url(),
                missing.len() - got.len(),
                root.to_text(),
                first.unwrap_or_default()
            );
        }
        frontier = next;
        parents = next_parents;
    }
    store(&mut blobs, &mut stats)?;
    finish(root, inner, |b| store(b, &mut stats))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirage_format::Algorithm;

    fn d(i: u8) -> Digest {
        Digest::of(Algorithm::Sha256, &[i]).unwrap()
    }

    #[test]
    fn post_order_puts_every_child_before_its_parents_in_a_dag() {
        // root -> a, b; a -> c; b -> a (a shared at two depths); c -> (leaf outside inner)
        let mut inner = Inner::new();
        inner.insert(d(0), (vec![], vec![d(1), d(2)]));
        inner.insert(d(1), (vec![], vec![d(3)]));
        inner.insert(d(2), (vec![], vec![d(1), d(9)]));
        inner.insert(d(3), (vec![], vec![d(8)]));
        let order = post_order(&d(0), &inner);
        assert_eq!(order.len(), 4);
        let pos = |x: u8| order.iter().position(|o| *o == d(x)).unwrap();
        assert!(pos(3) < pos(1));
        assert!(pos(1) < pos(2));
        assert!(pos(1) < pos(0) && pos(2) < pos(0));
        assert_eq!(*order.last().unwrap(), d(0));
    }
}
