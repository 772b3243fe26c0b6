//! A bounded cache of the catalog's state keys in front of RocksDB. Every command reads the
//! same few records (its caller, the named image, its default version) and every
//! authenticated request reads its token and user: served from RocksDB's memtable, those
//! lookups were a tenth of a cluster node's CPU under write load (skip-list searches), so they
//! are kept here.
//!
//! Coherence: only catalog writers change the state (they hold the catalog lock), and each
//! one, after its batch is in RocksDB, caches the keys it wrote with their new values and moves
//! the epoch on ([`StateCache::committed`]). A reader that missed fills the cache only if no
//! write committed since before it read RocksDB (the epoch it saw is still current), so a
//! value read before a write can never be left behind by it. Memory is bounded by two
//! generations of at most `cap` keys each: a full young generation becomes the old one, and
//! the previous old one is dropped; a hit in the old generation moves the key to the young.
//!
//! The cache also counts writes for readers that read several keys ([`WriteSeq`]): a write in
//! progress leaves the count odd, so a reader that saw the same even count before and after
//! its reads saw no write half done.

use std::collections::{BTreeMap, HashMap};

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::keys::catalog as keys;

/// A key's value, or `None` if the key is absent (absence is cached too).
type Value = Option<Vec<u8>>;

/// Keys per generation, by default (at most twice this many are held).
pub(crate) const DEFAULT_CAP: usize = 16 * 1024;

/// Whether `key` is kept: not request ids (each is new, and read again only by a retry) nor
/// an image's references (only ever scanned), which would only push the hot keys out.
fn cacheable(key: &[u8]) -> bool {
    !key.starts_with(keys::REQUEST_PREFIX) && !key.starts_with(keys::REF_PREFIX)
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct StateCache {
    inner: Mutex<Generations>,
    /// Writes begun plus writes ended (odd while one is in progress).
    seq: AtomicU64,
}

/// The write count a reader saw before its reads ([`StateCache::read_begin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WriteSeq(u64);

#[derive(Debug)]
struct Generations {
    epoch: u64,
    cap: usize,
    young: HashMap<Vec<u8>, Value>,
    old: HashMap<Vec<u8>, Value>,
}

impl Generations {
    fn insert(&mut self, key: Vec<u8>, value: Value) {
        if self.young.len() >= self.cap && !self.young.contains_key(&key) {
            self.old = std::mem::replace(&mut self.young, HashMap::with_capacity(self.cap));
        }
        self.young.insert(key, value);
    }
}

impl StateCache {
    /// An empty cache holding up to `cap` keys per generation.
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        StateCache {
            inner: Mutex::new(Generations {
                epoch: 0,
                cap,
                young: HashMap::with_capacity(cap),
                old: HashMap::new(),
            }),
            seq: AtomicU64::new(0),
        }
    }

    /// A writer (holding the catalog lock) is about to change the stored state.
    pub(crate) fn write_begin(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    /// The writer's change is stored, and the cache brought up to date with it (or cleared).
    pub(crate) fn write_end(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    /// Before reads that must see the state as of one moment: `None` while a write is in
    /// progress.
    pub(crate) fn read_begin(&self) -> Option<WriteSeq> {
        let s = self.seq.load(Ordering::SeqCst);
        (s % 2 == 0).then_some(WriteSeq(s))
    }

    /// After those reads: whether no write began since [`StateCache::read_begin`], so that
    /// everything read (from the cache or the store) is the state between two writes. A write
    /// that a read observed began before it (the writer counts, then writes), so it shows.
    pub(crate) fn read_valid(&self, begun: WriteSeq) -> bool {
        self.seq.load(Ordering::SeqCst) == begun.0
    }

    /// The cached value of `key` (`Ok`), or the epoch to fill it under after reading it
    /// from RocksDB (`Err`).
    pub(crate) fn lookup(&self, key: &[u8]) -> Result<Value, u64> {
        let mut g = self.inner.lock();
        if let Some(v) = g.young.get(key) {
            return Ok(v.clone());
        }
        match g.old.remove_entry(key) {
            Some((k, v)) => {
                g.insert(k, v.clone());
                Ok(v)
            }
            None => Err(g.epoch),
        }
    }

    /// Caches `value` of `key`, read from RocksDB after [`StateCache::lookup`] returned
    /// `epoch`, unless a write committed since.
    pub(crate) fn fill(&self, epoch: u64, key: &[u8], value: &Value) {
        if !cacheable(key) {
            return;
        }
        let mut g = self.inner.lock();
        if g.epoch == epoch {
            g.insert(key.to_vec(), value.clone());
        }
    }

    /// A batch of writes is in RocksDB (`None`: deleted): the keys are cached with their new
    /// values, and fills read before now are refused.
    pub(crate) fn committed(&self, writes: &BTreeMap<Vec<u8>, Value>) {
        let mut g = self.inner.lock();
        g.epoch += 1;
        for (k, v) in writes.iter().filter(|(k, _)| cacheable(k)) {
            // The next command often reads what this one wrote (the version it made
            // default, the name it created): written keys are cached as well.
            g.old.remove(k);
            g.insert(k.clone(), v.clone());
        }
    }

    /// Forgets everything (the state was replaced, or a write's outcome is unknown).
    pub(crate) fn clear(&self) {
        let mut g = self.inner.lock();
        g.epoch += 1;
        g.young.clear();
        g.old.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.inner.lock();
        g.young.len() + g.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(pairs: &[(&[u8], Option<&[u8]>)]) -> BTreeMap<Vec<u8>, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect()
    }

    #[test]
    fn a_fill_read_before_a_commit_is_refused() {
        let c = StateCache::new(8);
        let epoch = c.lookup(b"n/a").unwrap_err();
        // A writer commits a new value between the reader's RocksDB read and its fill.
        c.committed(&writes(&[(b"n/a", Some(b"new"))]));
        c.fill(epoch, b"n/a", &Some(b"old".to_vec()));
        assert_eq!(
            c.lookup(b"n/a"),
            Ok(Some(b"new".to_vec())),
            "not overwritten"
        );
        // Any commit refuses fills read before it, whichever keys it wrote.
        let epoch = c.lookup(b"n/b").unwrap_err();
        c.committed(&writes(&[(b"n/c", None)]));
        c.fill(epoch, b"n/b", &None);
        assert!(
            c.lookup(b"n/b").is_err(),
            "a fill from before a commit is not cached"
        );
        let epoch = c.lookup(b"n/b").unwrap_err();
        c.fill(epoch, b"n/b", &Some(b"1".to_vec()));
        assert_eq!(c.lookup(b"n/b"), Ok(Some(b"1".to_vec())));
    }

    #[test]
    fn reads_are_valid_only_without_a_write_begun_or_in_progress() {
        let c = StateCache::new(8);
        let r = c.read_begin().unwrap();
        assert!(c.read_valid(r));
        c.write_begin();
        assert_eq!(c.read_begin(), None, "a write is in progress");
        assert!(!c.read_valid(r), "a write began during the reads");
        c.write_end();
        assert!(!c.read_valid(r), "a write happened during the reads");
        let r = c.read_begin().unwrap();
        assert!(c.read_valid(r));
    }

    #[test]
    fn commits_update_and_delete_cached_keys() {
        let c = StateCache::new(8);
        for k in [&b"u/x"[..], b"u/y"] {
            let e = c.lookup(k).unwrap_err();
            c.fill(e, k, &Some(b"1".to_vec()));
        }
        let e = c.lookup(b"u/z").unwrap_err();
        c.fill(e, b"u/z", &None);
        assert_eq!(c.lookup(b"u/z"), Ok(None), "absence is cached");
        c.committed(&writes(&[
            (b"u/x", Some(b"2")),
            (b"u/y", None),
            (b"u/z", Some(b"3")),
            (b"u/w", Some(b"4")),
        ]));
        assert_eq!(c.lookup(b"u/x"), Ok(Some(b"2".to_vec())));
        assert_eq!(c.lookup(b"u/y"), Ok(None));
        assert_eq!(c.lookup(b"u/z"), Ok(Some(b"3".to_vec())));
        assert_eq!(
            c.lookup(b"u/w"),
            Ok(Some(b"4".to_vec())),
            "written keys are cached"
        );
        c.clear();
        assert!(c.lookup(b"u/x").is_err());
    }

    #[test]
    fn request_ids_and_references_are_not_kept() {
        let c = StateCache::new(8);
        let (req, rf) = (b"m/r/0000000001/abc".as_slice(), b"r/xyz/name/1".as_slice());
        let e = c.lookup(req).unwrap_err();
        c.fill(e, req, &None);
        c.committed(&writes(&[(req, Some(b"answer")), (rf, Some(b""))]));
        assert!(c.lookup(req).is_err());
        assert!(c.lookup(rf).is_err());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn memory_stays_bounded_and_hot_keys_stay() {
        let c = StateCache::new(100);
        let e = c.lookup(b"hot").unwrap_err();
        c.fill(e, b"hot", &Some(b"v".to_vec()));
        for i in 0..10_000u32 {
            let k = format!("i/{i}").into_bytes();
            let e = c.lookup(&k).unwrap_err();
            c.fill(e, &k, &None);
            assert!(
                c.lookup(b"hot").is_ok(),
                "a key read often survives the churn"
            );
            assert!(c.len() <= 200);
        }
    }
}
