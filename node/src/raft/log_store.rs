//! The Raft log in RocksDB: entries by index, the vote, the committed and purged log ids.
//! Every write but one is a synced batch: an append is acknowledged to openraft only once
//! durable, and a vote is durable before it is answered. The exception is the committed index,
//! a hint that may lag after a crash.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use parking_lot::Mutex;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{io_err, Entry, LogId, TypeConfig, Vote};
use crate::keys::raft as keys;

/// The Raft log of the catalog group. Cheap to clone (one database, shared).
#[derive(Clone)]
pub struct RocksLogStore {
    db: Arc<rocksdb::DB>,
    recent: Arc<Mutex<Recent>>,
    appended: Arc<AtomicU64>,
}

/// An append slower than this is logged (a disk stalling the whole group).
const SLOW_APPEND: std::time::Duration = std::time::Duration::from_millis(50);

/// Most commands kept in [`Recent`].
const RECENT_COMMANDS: usize = 32 * 1024;

/// The last entries appended, as appended: replication to each follower and the state machine
/// read every entry right after it is written, and serve themselves here instead of decoding it
/// again from RocksDB. Always a contiguous run of the log's tail (or empty).
#[derive(Default)]
struct Recent {
    entries: BTreeMap<u64, Entry>,
    /// Commands in `entries` (an entry weighs at least 1).
    weight: usize,
}

fn weight(e: &Entry) -> usize {
    match &e.payload {
        openraft::EntryPayload::Normal(p) => p.0.len().max(1),
        _ => 1,
    }
}

impl Recent {
    /// Adds appended entries; a gap before them (after a truncation or a snapshot) restarts
    /// the run.
    fn push(&mut self, new: Vec<Entry>) {
        for e in new {
            let index = e.log_id.index;
            if let Some((&last, _)) = self.entries.last_key_value() {
                if index != last + 1 {
                    self.entries.clear();
                    self.weight = 0;
                }
            }
            self.weight += weight(&e);
            self.entries.insert(index, e);
        }
        while self.weight > RECENT_COMMANDS && self.entries.len() > 1 {
            if let Some((_, e)) = self.entries.pop_first() {
                self.weight -= weight(&e);
            }
        }
    }

    /// Forgets entries with index ≥ `from` (a truncation).
    fn truncate(&mut self, from: u64) {
        for (_, e) in self.entries.split_off(&from) {
            self.weight -= weight(&e);
        }
    }

    /// Forgets entries with index ≤ `upto` (a purge).
    fn purge(&mut self, upto: u64) {
        let keep = self.entries.split_off(&(upto.saturating_add(1)));
        for e in self.entries.values() {
            self.weight -= weight(e);
        }
        self.entries = keep;
    }

    /// Entries `[start, end)` if all of them are here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let (&first, _) = self.entries.first_key_value()?;
        let (&last, _) = self.entries.last_key_value()?;
        if start < first || end > last + 1 {
            return None;
        }
        Some(
            self.entries
                .range(start..end)
                .map(|(_, e)| e.clone())
                .collect(),
        )
    }
}

impl Debug for RocksLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RocksLogStore({})", self.db.path().display())
    }
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("raft log: undecodable {what}: {e}"),
        )
    })
}

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io_err)
}

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

impl RocksLogStore {
    /// Opens (creating if needed) the log in `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(1);
        // Background writes (flushes, compactions) go out a megabyte at a time instead of in
        // one burst at their final fsync, which would stall the synced appends behind it.
        opts.set_bytes_per_sync(1 << 20);
        let cfs = keys::ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
        let db = rocksdb::DB::open_cf_descriptors(&opts, dir, cfs).map_err(io_err)?;
        Ok(RocksLogStore {
            db: Arc::new(db),
            recent: Arc::default(),
            appended: Arc::default(),
        })
    }

    /// Bytes of entries appended since the log was opened (grows; shared with the caller).
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended.clone()
    }

    fn cf(&self, name: &str) -> io::Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| io_err(format!("raft log: missing column family {name}")))
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self
            .db
            .get_cf(self.cf(keys::CF_META)?, key)
            .map_err(io_err)?
        {
            Some(v) => Ok(Some(decode(
                std::str::from_utf8(key).unwrap_or("meta"),
                &v,
            )?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], v: &T) -> io::Result<()> {
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(keys::CF_META)?, key, encode(v)?);
        self.db.write_opt(wb, &synced()).map_err(io_err)
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        let mut it = self
            .db
            .iterator_cf(self.cf(keys::CF_LOG)?, IteratorMode::End);
        match it.next() {
            Some(kv) => {
                let (_, v) = kv.map_err(io_err)?;
                Ok(Some(decode("entry", &v)?))
            }
            None => Ok(None),
        }
    }

    /// Entries with index in `range`, in order.
    fn entries(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<Entry>> {
        let start = first_index(&range);
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(keys::CF_LOG)?,
            IteratorMode::From(&keys::log(start), Direction::Forward),
        );
        for kv in it {
            let (k, v) = kv.map_err(io_err)?;
            let index = u64::from_be_bytes(
                <[u8; 8]>::try_from(k.as_ref()).map_err(|_| io_err("raft log: bad key"))?,
            );
            if !range.contains(&index) {
                break;
            }
            let e: Entry = decode("entry", &v)?;
            if e.log_id.index != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("raft log: entry at {index} says it is {}", e.log_id.index),
                ));
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Deletes the entries with index in `[from, to)` and writes `meta` in one synced batch.
    fn delete_range(&self, from: u64, to: u64, meta: Option<(&[u8], Vec<u8>)>) -> io::Result<()> {
        let mut wb = WriteBatch::default();
        if from < to {
            wb.delete_range_cf(self.cf(keys::CF_LOG)?, keys::log(from), keys::log(to));
            if to == u64::MAX {
                wb.delete_cf(self.cf(keys::CF_LOG)?, keys::log(u64::MAX));
            }
        }
        if let Some((k, v)) = meta {
            wb.put_cf(self.cf(keys::CF_META)?, k, v);
        }
        self.db.write_opt(wb, &synced()).map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for RocksLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = first_index(&range);
        let end = match range.end_bound() {
            Bound::Included(e) => Some(e.saturating_add(1)),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        if let Some(end) = end {
            if start >= end {
                return Ok(Vec::new());
            }
            if let Some(hit) = self.recent.lock().get(start, end) {
                return Ok(hit);
            }
        }
        let me = self.clone();
        let owned = (range.start_bound().cloned(), range.end_bound().cloned());
        tokio::task::spawn_blocking(move || me.entries(owned))
            .await
            .map_err(io_err)?
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(keys::VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for RocksLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_meta(keys::PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id);
        Ok(LogState {
            last_log_id: last.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(keys::VOTE, vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: openraft calls this on every commit, inline in its core loop, and a
        // committed index lost in a crash only means a restarted node applies a little less
        // before the leader tells it again (never more than was committed).
        let mut wb = WriteBatch::default();
        wb.put_cf(
            self.cf(keys::CF_META)?,
            keys::COMMITTED,
            encode(&committed)?,
        );
        self.db.write(wb).map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(keys::COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.cf(keys::CF_LOG)?;
        let mut wb = WriteBatch::default();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut bytes = 0;
        for e in &entries {
            let v = encode(e)?;
            bytes += v.len() as u64;
            wb.put_cf(cf, keys::log(e.log_id.index), v);
        }
        let me = self.clone();
        let started = std::time::Instant::now();
        let res = tokio::task::spawn_blocking(move || me.db.write_opt(wb, &synced()))
            .await
            .map_err(io_err)?
            .map_err(io_err);
        if started.elapsed() > SLOW_APPEND {
            tracing::warn!(took = ?started.elapsed(), "slow raft log append (synced write)");
        }
        match res {
            Ok(()) => {
                self.recent.lock().push(entries);
                self.appended.fetch_add(bytes, Ordering::Relaxed);
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.recent.lock().truncate(from);
        self.delete_range(from, u64::MAX, None)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let meta = encode(&log_id)?;
        self.recent.lock().purge(log_id.index);
        self.delete_range(0, log_id.index + 1, Some((keys::PURGED, meta)))
    }
}

/// The first log index in `range`.
fn first_index(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    }
}
