//! RocksDB implementation of [`Index`].

use std::path::Path;

use mirage_format::Digest;
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use super::{Index, IndexBatch, IndexError};
use crate::keys::{ALL_CFS, CF_CATALOG, CF_CATALOG_LOG, CF_HINTS, CF_ITEMS, CF_LOCTAB, CF_META};
use crate::store::{Location, LocationTable};

/// The index in a RocksDB database.
pub struct RocksIndex {
    db: DB,
}

impl std::fmt::Debug for RocksIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RocksIndex({})", self.db.path().display())
    }
}

/// Bytes of write-ahead log past which RocksDB flushes memtables (and drops the old logs); an
/// open replays at most about this much (8 ms per MB on the project VM).
const WAL_MAX: u64 = 4 << 20;

/// Log files past which a close flushes. Every open starts a new log and keeps the old ones
/// until a flush, so a run of commands that write little or nothing (`ls`, `show`, a
/// checkout) would leave one more small log each without bound: 2,328 of them made every
/// open of a store 20-30 ms slower and fill its directory.
const LOGS_MAX: usize = 32;

/// Closing with more log than [`WAL_MAX`], or more than [`LOGS_MAX`] log files, flushes first.
/// RocksDB's own flush (scheduled by the write that finds the logs past the limit) runs in the
/// background and is dropped if the database closes first, which a short command always does:
/// without this, a run of short commands would grow the log, and every open's replay, without
/// bound.
impl Drop for RocksIndex {
    fn drop(&mut self) {
        let (count, logs) = self.logs();
        if logs <= WAL_MAX && count <= LOGS_MAX {
            return;
        }
        if let Err(e) = self.flush_all(true) {
            tracing::warn!(error = %e, logs, count, "index flush at close failed; the next open replays the log");
        }
    }
}

/// The files of `dir` named `*.{ext}` and their sizes (none if it cannot be read).
fn files(dir: &Path, ext: &str) -> Vec<(std::path::PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == ext))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect()
}

fn engine(e: rocksdb::Error) -> IndexError {
    IndexError::Engine(e.into_string())
}

impl RocksIndex {
    /// Opens (creating if needed) the index in `dir`.
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        // Every CLI command opens the index. By default RocksDB flushes what the last writer
        // left in its write-ahead log to new level-0 tables at open, compressing and syncing
        // them while the command waits, and leaves a small table per command for compactions
        // to merge. Here an open replays the log into the memtable and leaves it there; the
        // logs stay until RocksDB flushes in the background, once together they pass
        // `WAL_MAX`, which bounds what an open replays. docs/PERFORMANCE.md (thirteenth
        // session): opening after base.img's checkin (2.2 MB of log) 60 ms -> 35 ms.
        let mut opts = Options::default()
            .get_options_from_string("avoid_flush_during_recovery=true")
            .map_err(engine)?;
        opts.set_max_total_wal_size(WAL_MAX);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Tables flushed from the memtable (level 0, written while a command waits, at its
        // close when the log has grown past `WAL_MAX`) are not compressed: the keys are
        // digests, which do not compress, and zstd made the flush after a large checkin take
        // 50 ms instead of about 12. Compactions into the last level compress with zstd.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
        opts.set_max_background_jobs(2);
        // At open RocksDB loads every table's handle on `max_file_opening_threads` (16)
        // threads per column family, started and joined for each: about 190 threads for a
        // few small tables. With 1 the opening thread loads them itself, as fast here.
        opts.set_max_file_opening_threads(1);
        // Background writes (flushes, compactions) go out a megabyte at a time instead of in
        // one burst at their final fsync, which would stall the synced appends behind it.
        opts.set_bytes_per_sync(1 << 20);
        // Every open of a store (each CLI command) starts a new info log and keeps the old
        // one: at the default level each holds RocksDB's 120 KB options dump, written line by
        // line while the command waits. Warnings and errors only, and the last ten logs.
        opts.set_log_level(rocksdb::LogLevel::Warn);
        opts.set_keep_log_file_num(10);
        let mut items = opts.clone();
        // Point lookups by digest dominate: a bloom filter avoids most disk reads for misses.
        let mut bbo = rocksdb::BlockBasedOptions::default();
        bbo.set_bloom_filter(10.0, false);
        bbo.set_cache_index_and_filter_blocks(true);
        items.set_block_based_table_factory(&bbo);
        // The catalog is read by key on every command (users, names, images, request ids),
        // mostly keys that were just written or do not exist: bloom filters in the tables and
        // in the memtable answer most misses without a search.
        let mut catalog = opts.clone();
        let mut cbo = rocksdb::BlockBasedOptions::default();
        cbo.set_bloom_filter(10.0, false);
        cbo.set_cache_index_and_filter_blocks(true);
        catalog.set_block_based_table_factory(&cbo);
        catalog.set_memtable_whole_key_filtering(true);
        catalog.set_memtable_prefix_bloom_ratio(0.1);
        let cfs = ALL_CFS.iter().map(|name| {
            let o = match *name {
                CF_ITEMS => items.clone(),
                CF_CATALOG => catalog.clone(),
                _ => opts.clone(),
            };
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
            // RocksDB's words for a held LOCK file: another process's flock, or this one's.
            let msg = e.into_string();
            if msg.contains("lock")
                && (msg.contains("temporarily unavailable") || msg.contains("current process"))
            {
                IndexError::InUse(dir.display().to_string())
            } else {
                IndexError::Engine(msg)
            }
        })?;
        Ok(RocksIndex { db })
    }

    /// A value of the `catalog` column family.
    pub(crate) fn catalog_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        self.db.get_cf(self.cf(CF_CATALOG)?, key).map_err(engine)
    }

    /// Every key/value of the `catalog` column family under `prefix` (and before `end`, if
    /// given), in key order.
    pub(crate) fn catalog_scan(
        &self,
        prefix: &[u8],
        end: Option<&[u8]>,
    ) -> Result<crate::catalog::Pairs, IndexError> {
        self.scan_catalog_at(None, prefix, end)
    }

    /// The `catalog` column family as of now, for reads that must all see one state.
    pub(crate) fn catalog_snapshot(&self) -> Result<CatalogSnapshot<'_>, IndexError> {
        Ok(CatalogSnapshot {
            index: self,
            cf: self.cf(CF_CATALOG)?,
            snap: self.db.snapshot(),
        })
    }

    fn scan_catalog_at(
        &self,
        snap: Option<&rocksdb::Snapshot<'_>>,
        prefix: &[u8],
        end: Option<&[u8]>,
    ) -> Result<crate::catalog::Pairs, IndexError> {
        // An upper bound lets RocksDB stop at it instead of stepping over what lies beyond
        // (deleted keys included).
        let mut ro = rocksdb::ReadOptions::default();
        if let Some(upper) = end.map(<[u8]>::to_vec).or_else(|| prefix_end(prefix)) {
            ro.set_iterate_upper_bound(upper);
        }
        if let Some(s) = snap {
            ro.set_snapshot(s);
        }
        let it = self.db.iterator_cf_opt(
            self.cf(CF_CATALOG)?,
            ro,
            rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for kv in it {
            let (k, v) = kv.map_err(engine)?;
            if !k.starts_with(prefix) || end.is_some_and(|e| k.as_ref() >= e) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Stores catalog log entries and the writes they made (state machine keys included) in
    /// one batch, synced if `sync` (the embedded catalog, whose only log this is; a Raft
    /// state machine need not: its log is durable and replays).
    pub(crate) fn catalog_commit(
        &self,
        entries: &[(u64, Vec<u8>)],
        writes: &std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        sync: bool,
    ) -> Result<(), IndexError> {
        let (cat, log) = (self.cf(CF_CATALOG)?, self.cf(CF_CATALOG_LOG)?);
        let mut wb = WriteBatch::default();
        for (index, entry) in entries {
            wb.put_cf(log, crate::keys::catalog::log(*index), entry);
        }
        for (k, v) in writes {
            match v {
                Some(v) => wb.put_cf(cat, k, v),
                None => wb.delete_cf(cat, k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(engine)
    }

    /// Replaces the whole catalog (state and log) with `state` and `log`, in one synced batch
    /// (installing a Raft snapshot).
    pub(crate) fn catalog_replace(
        &self,
        state: &crate::catalog::Pairs,
        log: &[(u64, Vec<u8>)],
    ) -> Result<(), IndexError> {
        let (cat, logcf) = (self.cf(CF_CATALOG)?, self.cf(CF_CATALOG_LOG)?);
        let mut wb = WriteBatch::default();
        for (k, _) in self.catalog_scan(b"", None)? {
            wb.delete_cf(cat, k);
        }
        for (i, _) in self.catalog_log()? {
            wb.delete_cf(logcf, crate::keys::catalog::log(i));
        }
        for (k, v) in state {
            wb.put_cf(cat, k, v);
        }
        for (i, v) in log {
            wb.put_cf(logcf, crate::keys::catalog::log(*i), v);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo).map_err(engine)
    }

    /// The catalog log, in order.
    pub(crate) fn catalog_log(&self) -> Result<Vec<(u64, Vec<u8>)>, IndexError> {
        log_entries(
            self.db
                .iterator_cf(self.cf(CF_CATALOG_LOG)?, rocksdb::IteratorMode::Start),
        )
    }

    /// The whole catalog at one point in time: every state key/value, the log, and the values
    /// of `meta`. The point is taken while holding `lock` (the lock writers of the catalog
    /// hold), after syncing the write-ahead log; the reading happens after the lock is
    /// released, from a RocksDB snapshot, so writers go on meanwhile.
    #[allow(clippy::type_complexity)]
    pub(crate) fn catalog_dump(
        &self,
        meta: &[&[u8]],
        lock: &parking_lot::Mutex<()>,
    ) -> Result<
        (
            crate::catalog::Pairs,
            Vec<(u64, Vec<u8>)>,
            Vec<Option<Vec<u8>>>,
        ),
        IndexError,
    > {
        let (cat, log) = (self.cf(CF_CATALOG)?, self.cf(CF_CATALOG_LOG)?);
        let snap = {
            let _serial = lock.lock();
            self.db.flush_wal(true).map_err(engine)?;
            self.db.snapshot()
        };
        let mut state = Vec::new();
        for kv in snap.iterator_cf(cat, rocksdb::IteratorMode::Start) {
            let (k, v) = kv.map_err(engine)?;
            state.push((k.to_vec(), v.to_vec()));
        }
        let entries = log_entries(snap.iterator_cf(log, rocksdb::IteratorMode::Start))?;
        let values = meta
            .iter()
            .map(|k| snap.get_cf(cat, k).map_err(engine))
            .collect::<Result<_, _>>()?;
        Ok((state, entries, values))
    }

    /// Starts writing the memtables to level-0 tables in the background when the log holds
    /// more than `least` bytes; returns whether it did. A flush still running when the index
    /// closes is dropped (the log keeps everything), so this is for a moment when a core is
    /// free and the command has a little longer to run: the close then need not flush, nor
    /// the next open replay what the flush wrote.
    pub(crate) fn flush_in_background(&self, least: u64) -> bool {
        let (_, logs) = self.logs();
        if logs <= least {
            return false;
        }
        match self.flush_all(false) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, logs, "no background index flush");
                false
            }
        }
    }

    /// Starts reading every table of the database into the page cache (`POSIX_FADV_WILLNEED`,
    /// which returns without waiting), unless together they are more than `limit` bytes.
    /// RocksDB opens its tables for random access, so a cold point lookup reads one block at
    /// a time; a small index is read whole much sooner.
    pub(crate) fn prefetch(&self, limit: u64) -> bool {
        let tables = files(self.db.path(), "sst");
        if tables.is_empty() || tables.iter().map(|t| t.1).sum::<u64>() > limit {
            return false;
        }
        for (path, _) in tables {
            // A table a compaction removed meanwhile is simply not read ahead.
            if let Ok(f) = std::fs::File::open(&path) {
                let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::WillNeed);
            }
        }
        true
    }

    /// Flushes every column family's memtable (all of them, so the log can go), waiting for
    /// the tables to be written or only starting the flush.
    fn flush_all(&self, wait: bool) -> Result<(), IndexError> {
        let mut fo = rocksdb::FlushOptions::default();
        fo.set_wait(wait);
        let cfs = ALL_CFS
            .iter()
            .map(|n| self.cf(n))
            .collect::<Result<Vec<_>, _>>()?;
        self.db.flush_cfs_opt(&cfs, &fo).map_err(engine)
    }

    /// Write-ahead log files in the database directory and their bytes.
    fn logs(&self) -> (usize, u64) {
        let logs = files(self.db.path(), "log");
        (logs.len(), logs.iter().map(|l| l.1).sum())
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, IndexError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| IndexError::Engine(format!("column family {name} missing")))
    }
}

/// The catalog's column family at one moment ([`RocksIndex::catalog_snapshot`]): a query
/// that reads several keys (a name, then its versions) sees them as one write left them, never
/// half of a concurrent write.
pub(crate) struct CatalogSnapshot<'a> {
    index: &'a RocksIndex,
    cf: &'a rocksdb::ColumnFamily,
    snap: rocksdb::Snapshot<'a>,
}

impl CatalogSnapshot<'_> {
    /// One value of the catalog, as of the snapshot.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        self.snap.get_cf(self.cf, key).map_err(engine)
    }

    /// [`RocksIndex::catalog_scan`] as of the snapshot.
    pub(crate) fn scan(
        &self,
        prefix: &[u8],
        end: Option<&[u8]>,
    ) -> Result<crate::catalog::Pairs, IndexError> {
        self.index.scan_catalog_at(Some(&self.snap), prefix, end)
    }
}

fn decode_loc(key: &[u8], v: &[u8]) -> Result<Location, IndexError> {
    Location::decode(v).map_err(|e| IndexError::Corrupt {
        key: Digest::from_key_bytes(key).map_or_else(|| hex_of(key), |d| d.to_text()),
        why: e.to_string(),
    })
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Index for RocksIndex {
    fn get(&self, d: &Digest) -> Result<Option<Location>, IndexError> {
        let key = d.key_bytes();
        match self
            .db
            .get_pinned_cf(self.cf(CF_ITEMS)?, &key)
            .map_err(engine)?
        {
            Some(v) => Ok(Some(decode_loc(&key, &v)?)),
            None => Ok(None),
        }
    }

    fn get_many(&self, ds: &[Digest]) -> Result<Vec<Option<Location>>, IndexError> {
        let cf = self.cf(CF_ITEMS)?;
        let keys: Vec<Vec<u8>> = ds.iter().map(Digest::key_bytes).collect();
        let res = self.db.batched_multi_get_cf(cf, keys.iter(), false);
        keys.iter()
            .zip(res)
            .map(|(k, r)| match r.map_err(engine)? {
                Some(v) => Ok(Some(decode_loc(k, &v)?)),
                None => Ok(None),
            })
            .collect()
    }

    fn table(&self, parent: &Digest) -> Result<Option<LocationTable>, IndexError> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_LOCTAB)?, parent.key_bytes())
            .map_err(engine)?
        {
            Some(v) => LocationTable::decode(&v)
                .map(Some)
                .map_err(|e| IndexError::Corrupt {
                    key: parent.to_text(),
                    why: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        self.db.get_cf(self.cf(CF_META)?, key).map_err(engine)
    }

    fn hints(&self, keys: &[[u8; 32]]) -> Result<Vec<Option<Vec<u8>>>, IndexError> {
        let cf = self.cf(CF_HINTS)?;
        self.db
            .batched_multi_get_cf(cf, keys.iter(), false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(engine))
            .collect()
    }

    fn write(&self, batch: IndexBatch, durable: bool) -> Result<(), IndexError> {
        let mut wb = WriteBatch::default();
        let (items, tables, meta) = (self.cf(CF_ITEMS)?, self.cf(CF_LOCTAB)?, self.cf(CF_META)?);
        for (d, l) in &batch.items {
            wb.put_cf(items, d.key_bytes(), l.encode());
        }
        for d in &batch.remove {
            wb.delete_cf(items, d.key_bytes());
        }
        for (d, t) in &batch.tables {
            wb.put_cf(tables, d.key_bytes(), t.encode());
        }
        for (k, v) in &batch.meta {
            wb.put_cf(meta, k, v);
        }
        if !batch.hints.is_empty() {
            let hints = self.cf(CF_HINTS)?;
            for (k, v) in &batch.hints {
                wb.put_cf(hints, k, v);
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(durable);
        self.db.write_opt(wb, &wo).map_err(engine)
    }

    fn scan_tables(
        &self,
        f: &mut dyn FnMut(Digest, LocationTable) -> bool,
    ) -> Result<(), IndexError> {
        let it = self
            .db
            .iterator_cf(self.cf(CF_LOCTAB)?, rocksdb::IteratorMode::Start);
        for kv in it {
            let (k, v) = kv.map_err(engine)?;
            let d = Digest::from_key_bytes(&k).ok_or_else(|| IndexError::Corrupt {
                key: hex_of(&k),
                why: "not a digest key".into(),
            })?;
            let t = LocationTable::decode(&v).map_err(|e| IndexError::Corrupt {
                key: d.to_text(),
                why: e.to_string(),
            })?;
            if !f(d, t) {
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
        let it = self.db.iterator_cf(
            self.cf(CF_ITEMS)?,
            rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
        );
        for kv in it {
            let (k, v) = kv.map_err(engine)?;
            let d = Digest::from_key_bytes(&k).ok_or_else(|| IndexError::Corrupt {
                key: hex_of(&k),
                why: "not a digest key".into(),
            })?;
            if !f(d, decode_loc(&k, &v)?) {
                break;
            }
        }
        Ok(())
    }
}

/// Catalog log entries (index, JSON) from an iterator over the `catalog_log` column family.
fn log_entries(
    it: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
) -> Result<Vec<(u64, Vec<u8>)>, IndexError> {
    let mut out = Vec::new();
    for kv in it {
        let (k, v) = kv.map_err(engine)?;
        let i = <[u8; 8]>::try_from(&k[..]).map_err(|_| IndexError::Corrupt {
            key: hex_of(&k),
            why: "not a log index".into(),
        })?;
        out.push((u64::from_be_bytes(i), v.to_vec()));
    }
    Ok(out)
}

/// The smallest key after every key that starts with `prefix` (`None`: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::conformance::{digest, put};

    #[test]
    fn a_background_flush_starts_past_its_threshold_only_and_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tables = || files(dir.path(), "sst").len();
        let ix = RocksIndex::open(dir.path()).expect("open");
        put(&ix, 0..100);
        assert!(!ix.flush_in_background(1 << 20), "a small log was flushed");
        put(&ix, 100..30_000);
        assert!(ix.logs().1 > 1 << 20, "{} bytes of log", ix.logs().1);
        assert!(ix.flush_in_background(1 << 20));
        for _ in 0..500 {
            if tables() > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(tables() > 0, "no table was written");
        drop(ix);
        let ix = RocksIndex::open(dir.path()).expect("reopen");
        let ds: Vec<Digest> = (0..30_000).map(digest).collect();
        let got = ix.get_many(&ds).expect("get_many");
        assert!(got.iter().all(Option::is_some), "an item was lost");
    }

    #[test]
    fn an_open_replays_the_log_without_writing_tables_and_large_logs_are_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tables = || files(dir.path(), "sst").len();
        let all_there = |ix: &RocksIndex, n: u32| {
            let ds: Vec<Digest> = (0..n).map(digest).collect();
            let got = ix.get_many(&ds).expect("get_many");
            assert!(got.iter().all(Option::is_some), "an item was lost");
        };
        put(&RocksIndex::open(dir.path()).expect("open"), 0..2000);
        for _ in 0..3 {
            let ix = RocksIndex::open(dir.path()).expect("reopen");
            assert_eq!(tables(), 0, "an open flushed the replayed log");
            all_there(&ix, 2000);
        }
        // Short commands that each write a little: the one that leaves the logs past WAL_MAX
        // flushes at its close, so no open replays more than that.
        let per = 20_000u32;
        let rounds = (2 * WAL_MAX / (u64::from(per) * 60)) as u32 + 1;
        for r in 0..rounds {
            let ix = RocksIndex::open(dir.path()).expect("reopen");
            put(&ix, 2000 + r * per..2000 + (r + 1) * per);
        }
        let ix = RocksIndex::open(dir.path()).expect("reopen");
        assert!(tables() > 0, "logs past WAL_MAX were never flushed");
        let logs = ix.logs().1;
        assert!(logs <= WAL_MAX, "{logs} bytes of log kept");
        all_there(&ix, 2000 + rounds * per);
    }

    #[test]
    fn an_index_open_elsewhere_is_named_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = RocksIndex::open(dir.path()).expect("open");
        let second = RocksIndex::open(dir.path()).expect_err("opened twice");
        assert!(matches!(second, IndexError::InUse(_)), "{second}");
        assert!(
            second.to_string().contains("in use by another process"),
            "{second}"
        );
    }

    #[test]
    fn the_tables_are_read_ahead_only_below_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ix = RocksIndex::open(dir.path()).expect("open");
        put(&ix, 0..5000);
        ix.flush_all(true).expect("flush");
        let bytes: u64 = files(dir.path(), "sst").iter().map(|t| t.1).sum();
        assert!(bytes > 0, "no tables");
        assert!(!ix.prefetch(bytes - 1), "read ahead past the limit");
        assert!(ix.prefetch(bytes), "not read ahead at the limit");
        let ds: Vec<Digest> = (0..5000).map(digest).collect();
        assert!(ix
            .get_many(&ds)
            .expect("get_many")
            .iter()
            .all(Option::is_some));
    }

    #[test]
    fn commands_that_write_nothing_do_not_pile_up_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        put(&RocksIndex::open(dir.path()).expect("open"), 0..2000);
        let mut most = 0;
        for _ in 0..3 * LOGS_MAX {
            let ix = RocksIndex::open(dir.path()).expect("reopen");
            most = most.max(ix.logs().0);
        }
        assert!(most <= LOGS_MAX + 1, "{most} log files at once");
        let ix = RocksIndex::open(dir.path()).expect("reopen");
        let ds: Vec<Digest> = (0..2000).map(digest).collect();
        let got = ix.get_many(&ds).expect("get_many");
        assert!(got.iter().all(Option::is_some), "an item was lost");
    }
}
