//! The Raft log in RocksDB: entries by index, the vote, the committed and purged log ids.
//! Every write is a synced batch: an append is acknowledged to openraft only once durable,
//! and a vote is durable before it is answered.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{io_err, Entry, LogId, TypeConfig, Vote};
use crate::keys::raft as keys;

/// The Raft log of the catalog group. Cheap to clone (one database, shared).
#[derive(Clone)]
pub struct RocksLogStore {
    db: Arc<rocksdb::DB>,
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
        let cfs = keys::ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
        let db = rocksdb::DB::open_cf_descriptors(&opts, dir, cfs).map_err(io_err)?;
        Ok(RocksLogStore { db: Arc::new(db) })
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
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
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
        self.put_meta(keys::COMMITTED, &committed)
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
        for e in entries {
            wb.put_cf(cf, keys::log(e.log_id.index), encode(&e)?);
        }
        let me = self.clone();
        let res = tokio::task::spawn_blocking(move || me.db.write_opt(wb, &synced()))
            .await
            .map_err(io_err)?
            .map_err(io_err);
        match res {
            Ok(()) => {
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
        self.delete_range(from, u64::MAX, None)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let meta = encode(&log_id)?;
        self.delete_range(0, log_id.index + 1, Some((keys::PURGED, meta)))
    }
}
