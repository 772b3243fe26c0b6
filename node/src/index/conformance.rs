//! The conformance suite every [`Index`] implementation passes. Call [`run`] with a factory
//! of fresh, empty indexes.

use mirage_format::{Algorithm, Digest, ItemKind};

use super::{Index, IndexBatch};
use crate::store::{Compression, Location, LocationTable};

/// The digest of test item `i`.
pub(crate) fn digest(i: u32) -> Digest {
    Digest::of(Algorithm::Sha256, &i.to_le_bytes()).expect("sha256 never refuses")
}

fn loc(i: u32) -> Location {
    Location {
        volume: i % 3,
        offset: u64::from(i) * 100,
        stored_len: i,
        raw_len: i + 1,
        kind: ItemKind::Blob,
        compression: if i % 2 == 0 {
            Compression::None
        } else {
            Compression::Zstd
        },
    }
}

/// Runs every check; panics with a message naming the failed property.
pub fn run<I: Index>(mut fresh: impl FnMut() -> I) {
    missing_items_are_none(&fresh());
    written_items_read_back(&fresh());
    get_many_keeps_order(&fresh());
    removal_and_overwrite(&fresh());
    tables_and_meta(&fresh());
    hints_read_back_in_order(&fresh());
    scan_visits_in_digest_order_and_stops(&fresh());
}

/// Writes test items `range` durably.
pub(crate) fn put(ix: &impl Index, range: std::ops::Range<u32>) {
    let batch = IndexBatch {
        items: range.map(|i| (digest(i), loc(i))).collect(),
        ..IndexBatch::default()
    };
    ix.write(batch, true).expect("write");
}

fn missing_items_are_none(ix: &impl Index) {
    assert_eq!(
        ix.get(&digest(1)).expect("get"),
        None,
        "empty index returned an item"
    );
    assert_eq!(ix.table(&digest(1)).expect("table"), None);
    assert_eq!(ix.meta(b"nothing").expect("meta"), None);
}

fn written_items_read_back(ix: &impl Index) {
    put(ix, 0..100);
    for i in 0..100 {
        assert_eq!(ix.get(&digest(i)).expect("get"), Some(loc(i)), "item {i}");
    }
    assert_eq!(ix.get(&digest(100)).expect("get"), None);
}

fn get_many_keeps_order(ix: &impl Index) {
    put(ix, 0..10);
    let ask: Vec<Digest> = [7, 200, 0, 3, 3].iter().map(|i| digest(*i)).collect();
    let got = ix.get_many(&ask).expect("get_many");
    assert_eq!(
        got,
        vec![Some(loc(7)), None, Some(loc(0)), Some(loc(3)), Some(loc(3))]
    );
}

fn removal_and_overwrite(ix: &impl Index) {
    put(ix, 0..5);
    ix.write(
        IndexBatch {
            items: vec![(digest(1), loc(42))],
            remove: vec![digest(2)],
            ..IndexBatch::default()
        },
        false,
    )
    .expect("write");
    assert_eq!(ix.get(&digest(1)).expect("get"), Some(loc(42)));
    assert_eq!(ix.get(&digest(2)).expect("get"), None);
    assert_eq!(ix.get(&digest(3)).expect("get"), Some(loc(3)));
}

fn tables_and_meta(ix: &impl Index) {
    let t = LocationTable {
        entries: (0..50).map(|i| (digest(i), loc(i))).collect(),
    };
    ix.write(
        IndexBatch {
            tables: vec![(digest(999), t.clone())],
            meta: vec![(b"k".to_vec(), b"v".to_vec())],
            ..IndexBatch::default()
        },
        true,
    )
    .expect("write");
    assert_eq!(ix.table(&digest(999)).expect("table"), Some(t.clone()));
    let mut seen = Vec::new();
    ix.scan_tables(&mut |d, table| {
        seen.push((d, table));
        true
    })
    .expect("scan tables");
    assert_eq!(seen, vec![(digest(999), t)]);
    assert_eq!(ix.meta(b"k").expect("meta"), Some(b"v".to_vec()));
    // An empty batch is fine.
    ix.write(IndexBatch::default(), true).expect("empty write");
}

fn hints_read_back_in_order(ix: &impl Index) {
    let keys: Vec<[u8; 32]> = (0..20u8).map(|i| [i; 32]).collect();
    ix.write(
        IndexBatch {
            hints: keys
                .iter()
                .step_by(2)
                .map(|k| (*k, vec![k[0]; 3]))
                .collect(),
            ..IndexBatch::default()
        },
        false,
    )
    .expect("write hints");
    let got = ix.hints(&keys).expect("hints");
    for (k, v) in keys.iter().zip(got) {
        assert_eq!(v, (k[0] % 2 == 0).then(|| vec![k[0]; 3]), "hint {}", k[0]);
    }
    // Overwrite.
    ix.write(
        IndexBatch {
            hints: vec![(keys[0], b"new".to_vec())],
            ..IndexBatch::default()
        },
        false,
    )
    .expect("overwrite hint");
    assert_eq!(
        ix.hints(&keys[..1]).expect("hints")[0],
        Some(b"new".to_vec())
    );
}

fn scan_visits_in_digest_order_and_stops(ix: &impl Index) {
    put(ix, 0..40);
    let mut seen = Vec::new();
    ix.scan(&mut |d, l| {
        seen.push((d, l));
        true
    })
    .expect("scan");
    assert_eq!(seen.len(), 40);
    assert!(
        seen.windows(2)
            .all(|w| w[0].0.key_bytes() < w[1].0.key_bytes()),
        "scan out of order"
    );
    let mut n = 0;
    ix.scan(&mut |_, _| {
        n += 1;
        n < 5
    })
    .expect("scan");
    assert_eq!(n, 5, "scan did not stop when asked");
    // From a key in the middle: exactly the items at or after it, in order.
    let from = seen[17].0.key_bytes();
    let mut tail = Vec::new();
    ix.scan_from(&from, &mut |d, _| {
        tail.push(d);
        true
    })
    .expect("scan_from");
    let want: Vec<Digest> = seen[17..].iter().map(|(d, _)| *d).collect();
    assert_eq!(tail, want, "scan_from did not start at its key");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use parking_lot::RwLock;

    use super::*;
    use crate::index::{IndexError, RocksIndex};

    /// A map-backed index: here only to show that the suite tests the contract, not RocksDB.
    #[derive(Debug, Default)]
    struct MapIndex {
        items: RwLock<BTreeMap<Vec<u8>, Location>>,
        tables: RwLock<BTreeMap<Vec<u8>, LocationTable>>,
        meta: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
        hints: RwLock<BTreeMap<[u8; 32], Vec<u8>>>,
    }

    impl Index for MapIndex {
        fn get(&self, d: &Digest) -> Result<Option<Location>, IndexError> {
            Ok(self.items.read().get(&d.key_bytes()).copied())
        }
        fn table(&self, p: &Digest) -> Result<Option<LocationTable>, IndexError> {
            Ok(self.tables.read().get(&p.key_bytes()).cloned())
        }
        fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
            Ok(self.meta.read().get(key).cloned())
        }
        fn hints(&self, keys: &[[u8; 32]]) -> Result<Vec<Option<Vec<u8>>>, IndexError> {
            let h = self.hints.read();
            Ok(keys.iter().map(|k| h.get(k).cloned()).collect())
        }
        fn write(&self, b: IndexBatch, _durable: bool) -> Result<(), IndexError> {
            let mut items = self.items.write();
            for (d, l) in b.items {
                items.insert(d.key_bytes(), l);
            }
            for d in b.remove {
                items.remove(&d.key_bytes());
            }
            for (d, t) in b.tables {
                self.tables.write().insert(d.key_bytes(), t);
            }
            for (k, v) in b.meta {
                self.meta.write().insert(k, v);
            }
            for (k, v) in b.hints {
                self.hints.write().insert(k, v);
            }
            Ok(())
        }
        fn scan_tables(
            &self,
            f: &mut dyn FnMut(Digest, LocationTable) -> bool,
        ) -> Result<(), IndexError> {
            for (k, t) in self.tables.read().iter() {
                if !f(Digest::from_key_bytes(k).expect("key"), t.clone()) {
                    break;
                }
            }
            Ok(())
        }
        fn scan_from(
            &self,
            from: &[u8],
            f: &mut dyn FnMut(Digest, Location) -> bool,
        ) -> Result<(), IndexError> {
            for (k, l) in self.items.read().range(from.to_vec()..) {
                if !f(Digest::from_key_bytes(k).expect("key"), *l) {
                    break;
                }
            }
            Ok(())
        }
    }

    #[test]
    fn rocks_index_conforms() {
        let dirs = RwLock::new(Vec::new());
        run(|| {
            let d = tempfile::tempdir().expect("tempdir");
            let ix = RocksIndex::open(d.path()).expect("open");
            dirs.write().push(d);
            ix
        });
    }

    #[test]
    fn map_index_conforms() {
        run(MapIndex::default);
    }

    #[test]
    fn cached_rocks_index_conforms() {
        let dirs = RwLock::new(Vec::new());
        run(|| {
            let d = tempfile::tempdir().expect("tempdir");
            let ix = crate::index::Cached::new(RocksIndex::open(d.path()).expect("open"));
            dirs.write().push(d);
            ix
        });
    }

    #[test]
    fn rocks_index_durable_writes_survive_reopen() {
        let d = tempfile::tempdir().expect("tempdir");
        {
            let ix = RocksIndex::open(d.path()).expect("open");
            put(&ix, 0..20);
        }
        let ix = RocksIndex::open(d.path()).expect("reopen");
        assert_eq!(ix.get(&digest(19)).expect("get"), Some(loc(19)));
    }
}
