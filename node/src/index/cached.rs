//! A bounded cache of item locations in front of an [`Index`].
//!
//! The committer checks every reference of every item it writes (the closure invariant), and a
//! checkin's directory trees name every file's content: tens of thousands of lookups, each a
//! walk through RocksDB's memtable and tables, made by the one committer thread after the
//! contents are stored (docs/PERFORMANCE.md, fifteenth session). Those contents were just
//! looked up (a checkin hint is used only for content the store holds) or just indexed, so
//! their locations are kept here.
//!
//! Only positive answers are kept, and the cache is coherent with the index it fronts:
//! [`Index::write`] applies its batch to the index first, then bumps a generation (unless the
//! batch only adds items new to the index) and updates the cache (new locations in, removed
//! ones out). A reader fills the cache with what it read
//! only if no write began since it started reading (the generation, checked under the shard
//! lock), so a location read before a concurrent write can never outlive that write's update.
//! Every shard is bounded; a full one is emptied.

use std::sync::atomic::{AtomicU64, Ordering};

use mirage_format::Digest;
use parking_lot::Mutex;

use super::{Index, IndexBatch, IndexError};
use crate::store::{Location, LocationTable};

/// Shards (by one digest byte), each with its own lock.
const SHARDS: usize = 64;
/// Locations a shard keeps (64 × 16,384 = 1 Mi locations, about 80 MB at most).
const SHARD_MAX: usize = 16_384;

type Shard = crate::digest_map::DigestMap<Location>;

/// An [`Index`] with a bounded, coherent cache of item locations.
#[derive(Debug)]
pub struct Cached<I> {
    inner: I,
    shards: Box<[Mutex<Shard>]>,
    /// Locations a shard keeps ([`SHARD_MAX`]; fewer in tests).
    shard_max: usize,
    /// Bumped by every write, after the index has it and before the cache is updated.
    generation: AtomicU64,
}

impl<I: Index> Cached<I> {
    /// Fronts `inner`.
    pub fn new(inner: I) -> Self {
        Self::with_shard_max(inner, SHARD_MAX)
    }

    fn with_shard_max(inner: I, shard_max: usize) -> Self {
        Cached {
            inner,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_max,
            generation: AtomicU64::new(0),
        }
    }

    /// The index behind the cache, for what is not an item location (the catalog's column
    /// families). Item locations must be written through [`Index::write`] on the cache.
    pub fn inner(&self) -> &I {
        &self.inner
    }

    fn shard(&self, d: &Digest) -> &Mutex<Shard> {
        // Not the bytes the in-shard hash uses.
        &self.shards[usize::from(d.as_bytes()[8]) % SHARDS]
    }

    fn cached(&self, d: &Digest) -> Option<Location> {
        self.shard(d).lock().get(d).copied()
    }

    /// Keeps locations read from the index when no write began since `generation` was read.
    fn fill(&self, generation: u64, found: impl Iterator<Item = (Digest, Location)>) {
        for (d, l) in found {
            let mut s = self.shard(&d).lock();
            if self.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if s.len() >= self.shard_max {
                s.clear();
            }
            s.insert(d, l);
        }
    }
}

impl<I: Index> Index for Cached<I> {
    fn get(&self, d: &Digest) -> Result<Option<Location>, IndexError> {
        if let Some(l) = self.cached(d) {
            return Ok(Some(l));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let l = self.inner.get(d)?;
        if let Some(l) = l {
            self.fill(generation, std::iter::once((*d, l)));
        }
        Ok(l)
    }

    fn get_many(&self, ds: &[Digest]) -> Result<Vec<Option<Location>>, IndexError> {
        let mut out: Vec<Option<Location>> = ds.iter().map(|d| self.cached(d)).collect();
        let missing: Vec<Digest> = ds
            .iter()
            .zip(&out)
            .filter(|(_, l)| l.is_none())
            .map(|(d, _)| *d)
            .collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let read = self.inner.get_many(&missing)?;
        self.fill(
            generation,
            missing
                .iter()
                .zip(&read)
                .filter_map(|(d, l)| Some((*d, (*l)?))),
        );
        let mut read = read.into_iter();
        for l in out.iter_mut().filter(|l| l.is_none()) {
            *l = read.next().flatten();
        }
        Ok(out)
    }

    fn table(&self, parent: &Digest) -> Result<Option<LocationTable>, IndexError> {
        self.inner.table(parent)
    }

    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        self.inner.meta(key)
    }

    fn hints(&self, keys: &[[u8; 32]]) -> Result<Vec<Option<Vec<u8>>>, IndexError> {
        self.inner.hints(keys)
    }

    fn write(&self, batch: IndexBatch, durable: bool) -> Result<(), IndexError> {
        let (items, remove) = (batch.items.clone(), batch.remove.clone());
        let moves = !batch.items_are_new || !remove.is_empty();
        let r = self.inner.write(batch, durable);
        // After the index has the batch (or may have it: a failed write is not known to have
        // left nothing), before the cache is brought in step with it. Items new to the index
        // move nothing a reader may have read (a checkin's writes, every few milliseconds).
        if moves {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        for d in &remove {
            self.shard(d).lock().remove(d);
        }
        for (d, l) in items {
            let mut s = self.shard(&d).lock();
            if r.is_err() {
                s.remove(&d);
                continue;
            }
            if s.len() >= self.shard_max {
                s.clear();
            }
            s.insert(d, l);
        }
        r
    }

    fn scan_tables(
        &self,
        f: &mut dyn FnMut(Digest, LocationTable) -> bool,
    ) -> Result<(), IndexError> {
        self.inner.scan_tables(f)
    }

    fn scan_from(
        &self,
        from: &[u8],
        f: &mut dyn FnMut(Digest, Location) -> bool,
    ) -> Result<(), IndexError> {
        self.inner.scan_from(from, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::conformance::digest;
    use crate::index::RocksIndex;
    use crate::store::Compression;
    use mirage_format::ItemKind;

    fn at(volume: u32, offset: u64) -> Location {
        Location {
            volume,
            offset,
            stored_len: 10,
            raw_len: 10,
            kind: ItemKind::Blob,
            compression: Compression::None,
        }
    }

    fn write(ix: &impl Index, items: Vec<(Digest, Location)>, remove: Vec<Digest>) {
        let batch = IndexBatch {
            items,
            remove,
            ..Default::default()
        };
        ix.write(batch, false).expect("write");
    }

    /// A cached RocksDB index in a fresh directory (kept alive with it).
    fn fresh() -> (tempfile::TempDir, Cached<RocksIndex>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ix = Cached::new(RocksIndex::open(dir.path()).expect("open"));
        (dir, ix)
    }

    /// A reader reads `d` past an empty cache, `batch` is written meanwhile, then the reader
    /// tries to keep what it read.
    fn read_overtaken_by(ix: &Cached<RocksIndex>, d: &Digest, batch: IndexBatch) {
        ix.shards.iter().for_each(|s| s.lock().clear());
        let generation = ix.generation.load(Ordering::SeqCst);
        let read = ix.inner().get(d).expect("get").expect("present");
        ix.write(batch, false).expect("write");
        ix.fill(generation, std::iter::once((*d, read)));
    }

    #[test]
    fn cached_locations_follow_moves_and_removals() {
        let (_dir, ix) = fresh();
        let (a, b) = (digest(1), digest(2));
        write(&ix, vec![(a, at(1, 100)), (b, at(1, 200))], vec![]);
        assert_eq!(ix.get(&a).expect("get"), Some(at(1, 100)));
        assert_eq!(ix.cached(&a), Some(at(1, 100)), "a read location is kept");
        // Compaction moves `a`; a collection removes `b`.
        write(&ix, vec![(a, at(2, 64))], vec![b]);
        assert_eq!(
            ix.get_many(&[a, b]).expect("get_many"),
            vec![Some(at(2, 64)), None]
        );
        assert_eq!(ix.inner().get(&a).expect("get"), Some(at(2, 64)));
        assert_eq!(ix.cached(&b), None);
    }

    #[test]
    fn a_read_that_a_write_overtook_is_not_kept() {
        let (_dir, ix) = fresh();
        let a = digest(1);
        write(&ix, vec![(a, at(1, 100))], vec![]);
        // Overtaken by a write that moves it.
        let moved = IndexBatch {
            items: vec![(a, at(3, 0))],
            ..Default::default()
        };
        read_overtaken_by(&ix, &a, moved);
        assert_eq!(ix.get(&a).expect("get"), Some(at(3, 0)));
        // The same with a removal: the old location must not come back.
        let removed = IndexBatch {
            remove: vec![a],
            ..Default::default()
        };
        read_overtaken_by(&ix, &a, removed);
        assert_eq!(ix.get(&a).expect("get"), None);
    }

    #[test]
    fn new_items_written_meanwhile_keep_a_read_but_a_move_turns_it_away() {
        let (_dir, ix) = fresh();
        let (a, b, c) = (digest(1), digest(2), digest(3));
        write(&ix, vec![(a, at(1, 100))], vec![]);
        let fresh = IndexBatch {
            items: vec![(b, at(1, 200))],
            items_are_new: true,
            ..Default::default()
        };
        read_overtaken_by(&ix, &a, fresh);
        assert_eq!(ix.cached(&a), Some(at(1, 100)), "a read was turned away");
        assert_eq!(ix.cached(&b), Some(at(1, 200)));
        // Flagged new but removing something: it moves, and a read made before is not kept.
        let mixed = IndexBatch {
            items: vec![(c, at(1, 300))],
            remove: vec![b],
            items_are_new: true,
            ..Default::default()
        };
        read_overtaken_by(&ix, &b, mixed);
        assert_eq!(ix.get(&b).expect("get"), None);
    }

    #[test]
    fn a_full_shard_starts_over_and_answers_stay_right() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Small shards: the same overflow as the real size, in a fraction of the writes.
        let shard_max = 256;
        let ix = Cached::with_shard_max(RocksIndex::open(dir.path()).expect("open"), shard_max);
        let n = (SHARDS * shard_max * 2) as u32;
        let items: Vec<(Digest, Location)> = (0..n).map(|i| (digest(i), at(1, i.into()))).collect();
        write(&ix, items, vec![]);
        let kept: usize = ix.shards.iter().map(|s| s.lock().len()).sum();
        assert!(kept <= SHARDS * shard_max, "{kept} locations kept");
        assert!(kept > 0);
        let ds: Vec<Digest> = (0..n).step_by(97).map(digest).collect();
        let got = ix.get_many(&ds).expect("get_many");
        for (i, l) in (0..n).step_by(97).zip(got) {
            assert_eq!(l, Some(at(1, i.into())));
        }
    }
}
