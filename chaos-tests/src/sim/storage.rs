//! In-memory Raft log and catalog state machine with the durability of the real ones
//! (`mirage_node::raft::{log_store, state_machine}`), kept outside the simulated host so a
//! crash loses exactly what the real node could lose:
//!
//! - log entries, the vote and the purge point are written synced: a crash keeps them;
//! - the committed index is written without a sync: a crash keeps the value as of the last
//!   synced write (a synced RocksDB write syncs the earlier unsynced ones too);
//! - the state machine is written without a sync and is made durable by a snapshot (which
//!   syncs first): a crash takes it back to the last snapshot built or installed, and openraft
//!   applies the committed log again.
//!
//! Entries are applied with the catalog's own pure logic, [`mirage_node::catalog::apply_run`]
//! (request-id dedup included), over a `BTreeMap` view, and snapshots use the catalog's own
//! encoding ([`mirage_node::raft::snapshot`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{Stream, TryStreamExt};
use mirage_node::catalog::{apply_run, CatalogError, Pairs, Pending, Replicated, View};
use mirage_node::raft::snapshot::{self, Contents};
use mirage_node::raft::{Answer, Answers};
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftStateMachine,
};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::types::{Entry, LogId, SimTypes, Snapshot, SnapshotMeta, StoredMembership, Vote};

/// A deliberate defect, for showing that the checks catch what they claim to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Inject {
    /// Node `node`'s state machine drops the writes of every log entry whose index is a
    /// multiple of `every` (it still answers as if it had applied them).
    ForgetWrites {
        /// The faulty node.
        node: u64,
        /// Period, in log indexes.
        every: u64,
    },
    /// Every node answers reads from its local state machine without a read barrier.
    StaleReads,
}

/// The catalog state machine's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmState {
    /// Last applied log id.
    pub applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// The catalog's keys and values (the `catalog` column family).
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The catalog log: index → JSON `LogEntry` (the `catalog_log` column family).
    pub log: BTreeMap<u64, Vec<u8>>,
}

/// Counters of one node's storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStats {
    /// Snapshots built.
    pub snapshots_built: u64,
    /// Snapshots installed (sent by a leader).
    pub snapshots_installed: u64,
    /// Restarts after a crash.
    pub restarts: u64,
    /// Entries whose state was lost in a crash and applied again.
    pub reverted_entries: u64,
}

/// What survives a node's crash, and what it loses.
#[derive(Debug, Default)]
pub struct Disk {
    node: u64,
    inject: Option<Inject>,
    vote: Option<Vote>,
    log: BTreeMap<u64, Entry>,
    purged: Option<LogId>,
    committed: Option<LogId>,
    committed_synced: Option<LogId>,
    sm: SmState,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    stats: DiskStats,
}

/// A node's disk, shared by its log store, its state machine and the checks.
pub type SharedDisk = Arc<Mutex<Disk>>;

/// Locks a disk (a poisoned lock is still the data: the simulation is single-threaded).
pub fn lock(d: &Mutex<Disk>) -> MutexGuard<'_, Disk> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Disk {
    /// An empty disk of node `node`.
    pub fn new(node: u64, inject: Option<Inject>) -> SharedDisk {
        Arc::new(Mutex::new(Disk {
            node,
            inject,
            ..Disk::default()
        }))
    }

    /// What a restart finds: everything synced, the state machine as of the last snapshot.
    pub fn restart(&mut self) -> io::Result<()> {
        let applied = self.sm.applied.map_or(0, |l| l.index);
        self.committed = self.committed_synced;
        self.sm = match &self.snapshot {
            Some((meta, data)) => state_of(meta, data)?,
            None => SmState::default(),
        };
        self.stats.restarts += 1;
        self.stats.reverted_entries +=
            applied.saturating_sub(self.sm.applied.map_or(0, |l| l.index));
        Ok(())
    }

    /// The state machine's current state.
    pub fn state(&self) -> &SmState {
        &self.sm
    }

    /// Counters.
    pub fn stats(&self) -> DiskStats {
        self.stats
    }

    /// The last log index this disk holds.
    pub fn last_log_index(&self) -> Option<u64> {
        self.log
            .keys()
            .next_back()
            .copied()
            .or(self.purged.map(|l| l.index))
    }

    /// One line about the disk: vote, log range, committed index, applied index, snapshot.
    pub fn summary(&self) -> String {
        let idx = |l: &Option<LogId>| l.map(|l| format!("{}-{}", l.leader_id, l.index));
        format!(
            "n{}: vote {:?}, log {:?}..={:?} (purged {:?}), committed {:?} (synced {:?}), \
             applied {:?}, snapshot {:?}",
            self.node,
            self.vote.map(|v| v.to_string()),
            self.log.keys().next(),
            self.log.keys().next_back(),
            idx(&self.purged),
            idx(&self.committed),
            idx(&self.committed_synced),
            idx(&self.sm.applied),
            self.snapshot.as_ref().map(|(m, _)| idx(&m.last_log_id)),
        )
    }

    fn sync(&mut self) {
        self.committed_synced = self.committed;
    }
}

fn state_of(meta: &SnapshotMeta, data: &[u8]) -> io::Result<SmState> {
    let c = snapshot::decode(data)?;
    Ok(SmState {
        applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        kv: c.state.into_iter().collect(),
        log: c.log.into_iter().collect(),
    })
}

/// A `BTreeMap` as the catalog's [`View`].
#[derive(Debug)]
pub struct MemView<'a>(pub &'a BTreeMap<Vec<u8>, Vec<u8>>);

impl View for MemView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CatalogError> {
        Ok(self.0.get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, CatalogError> {
        Ok(self
            .0
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_range(&self, prefix: &[u8], end: &[u8]) -> Result<Pairs, CatalogError> {
        Ok(self
            .0
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix) && k.as_slice() < end)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// The Raft log of one simulated node.
#[derive(Clone, Debug)]
pub struct MemLogStore {
    disk: SharedDisk,
}

impl MemLogStore {
    /// The log on `disk`.
    pub fn new(disk: SharedDisk) -> Self {
        MemLogStore { disk }
    }
}

impl RaftLogReader<SimTypes> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let d = lock(&self.disk);
        Ok(d.log.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(lock(&self.disk).vote)
    }
}

impl RaftLogStorage<SimTypes> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<SimTypes>, io::Error> {
        let d = lock(&self.disk);
        let last = d.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_log_id: last.or(d.purged),
            last_purged_log_id: d.purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut d = lock(&self.disk);
        d.vote = Some(*vote);
        d.sync();
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        lock(&self.disk).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(lock(&self.disk).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<SimTypes>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut d = lock(&self.disk);
            for e in entries {
                d.log.insert(e.log_id.index, e);
            }
            d.sync();
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let mut d = lock(&self.disk);
        d.log.split_off(&from);
        d.sync();
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut d = lock(&self.disk);
        d.log = d.log.split_off(&(log_id.index + 1));
        d.purged = Some(log_id);
        d.sync();
        Ok(())
    }
}

/// The catalog state machine of one simulated node.
#[derive(Clone, Debug)]
pub struct MemStateMachine {
    disk: SharedDisk,
}

impl MemStateMachine {
    /// The state machine on `disk`.
    pub fn new(disk: SharedDisk) -> Self {
        MemStateMachine { disk }
    }
}

/// Turns a log entry into what the catalog applies; a membership entry also returns the
/// membership it sets.
fn prepare(entry: Entry) -> (Replicated, Option<StoredMembership>) {
    let log_id = entry.log_id;
    let mut membership = None;
    let commands = match entry.payload {
        EntryPayload::Blank => Vec::new(),
        EntryPayload::Normal(ps) => {
            ps.0.into_iter()
                .map(|p| Pending {
                    time: p.time,
                    caller: p.caller,
                    command: p.command,
                    id: p.id,
                    token_sha256: p.token_sha256,
                })
                .collect()
        }
        EntryPayload::Membership(m) => {
            membership = Some(StoredMembership::new(Some(log_id), m));
            Vec::new()
        }
    };
    let r = Replicated {
        index: log_id.index,
        commands,
        meta: Vec::new(),
    };
    (r, membership)
}

fn merge(sm: &mut SmState, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>, log: Vec<(u64, Vec<u8>)>) {
    for (k, v) in writes {
        match v {
            Some(v) => sm.kv.insert(k, v),
            None => sm.kv.remove(&k),
        };
    }
    sm.log.extend(log);
}

type AnswerList = Vec<Vec<Result<mirage_node::catalog::Response, CatalogError>>>;

impl Disk {
    /// Applies a run of entries as one batch (as the real state machine does), or entry by
    /// entry when a defect is injected on this node.
    fn apply_run(&mut self, run: &[Replicated]) -> io::Result<AnswerList> {
        if let Some(Inject::ForgetWrites { node, every }) = self.inject {
            if node == self.node {
                let mut answers = Vec::new();
                for r in run {
                    let out = apply_run(&MemView(&self.sm.kv), std::slice::from_ref(r))
                        .map_err(io_err)?;
                    if r.commands.is_empty() || r.index % every.max(1) != 0 {
                        merge(&mut self.sm, out.writes, out.log);
                    }
                    answers.extend(out.answers);
                }
                return Ok(answers);
            }
        }
        let out = apply_run(&MemView(&self.sm.kv), run).map_err(io_err)?;
        merge(&mut self.sm, out.writes, out.log);
        Ok(out.answers)
    }
}

impl RaftSnapshotBuilder<SimTypes> for MemStateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let mut d = lock(&self.disk);
        let contents = Contents {
            state: d
                .sm
                .kv
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            log: d.sm.log.iter().map(|(i, v)| (*i, v.clone())).collect(),
        };
        let data = snapshot::encode(&contents);
        let meta = SnapshotMeta {
            last_log_id: d.sm.applied,
            last_membership: d.sm.membership.clone(),
        };
        d.snapshot = Some((meta.clone(), data.clone()));
        d.stats.snapshots_built += 1;
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<SimTypes> for MemStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let d = lock(&self.disk);
        Ok((d.sm.applied, d.sm.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<SimTypes>, io::Error>> + Unpin + OptionalSend,
    {
        let mut run = Vec::new();
        let mut responders = Vec::new();
        let mut last = None;
        let mut membership = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            last = Some(entry.log_id);
            let (r, m) = prepare(entry);
            if m.is_some() {
                membership = m;
            }
            run.push(r);
            responders.push(responder);
        }
        let Some(last) = last else {
            return Ok(());
        };
        let answers = {
            let mut d = lock(&self.disk);
            let answers = d.apply_run(&run)?;
            d.sm.applied = Some(last);
            if let Some(m) = membership {
                d.sm.membership = m;
            }
            answers
        };
        for (answers, responder) in answers.into_iter().zip(responders) {
            if let Some(r) = responder {
                r.send(Answers(answers.into_iter().map(Answer).collect()));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state = state_of(meta, &snapshot)?;
        let mut d = lock(&self.disk);
        d.sm = state;
        d.snapshot = Some((meta.clone(), snapshot));
        d.stats.snapshots_installed += 1;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let d = lock(&self.disk);
        Ok(d.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: data.clone(),
        }))
    }
}
