//! The catalog as an openraft state machine. State lives in the store's `catalog` column
//! family, exactly as in the embedded store; the applied log id and membership are kept next
//! to it (`m/raft_applied`, `m/raft_membership`) and written in the same synced batch as each
//! entry's changes. Snapshots are the whole catalog ([`super::snapshot`]), and the current one
//! is kept in `<dir>/snapshot`.

use std::io;
use std::path::{Path, PathBuf};

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};

use super::snapshot::{self, Contents};
use super::{io_err, Answer, Answers, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::catalog::{CatalogError, Pending, Replicated};
use crate::keys::catalog as keys;
use crate::store::Store;

/// The catalog state machine of one node.
#[derive(Clone, Debug)]
pub struct CatalogStateMachine {
    store: Store,
    dir: PathBuf,
}

/// A snapshot of the catalog group.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;

fn json<T: serde::Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io_err)
}

fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    b: Option<Vec<u8>>,
) -> io::Result<Option<T>> {
    b.map(|b| {
        serde_json::from_slice(&b).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("catalog state machine: undecodable {what}: {e}"),
            )
        })
    })
    .transpose()
}

fn storage(e: CatalogError) -> io::Error {
    io_err(e)
}

impl CatalogStateMachine {
    /// The state machine over `store`'s catalog; snapshots are kept in `dir`.
    pub fn new(store: Store, dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(CatalogStateMachine {
            store,
            dir: dir.to_path_buf(),
        })
    }

    fn applied(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let c = self.store.catalog();
        let applied = from_json::<Option<LogId>>(
            "applied log id",
            c.get_raw(keys::RAFT_APPLIED).map_err(storage)?,
        )?
        .flatten();
        let membership = from_json(
            "membership",
            c.get_raw(keys::RAFT_MEMBERSHIP).map_err(storage)?,
        )?
        .unwrap_or_default();
        Ok((applied, membership))
    }

    /// Turns a log entry into what the catalog applies.
    fn prepare(entry: super::Entry) -> io::Result<Replicated> {
        let log_id = entry.log_id;
        let mut meta: Vec<(&'static [u8], Vec<u8>)> =
            vec![(keys::RAFT_APPLIED, json(&Some(&log_id))?)];
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
                meta.push((
                    keys::RAFT_MEMBERSHIP,
                    json(&StoredMembership::new(Some(log_id), m))?,
                ));
                Vec::new()
            }
        };
        Ok(Replicated {
            index: log_id.index,
            commands,
            meta,
        })
    }

    fn build(&self) -> io::Result<Snapshot> {
        let (state, log, meta) = self
            .store
            .catalog()
            .export(&[keys::RAFT_APPLIED, keys::RAFT_MEMBERSHIP])
            .map_err(storage)?;
        let mut meta = meta.into_iter();
        let last_log_id =
            from_json::<Option<LogId>>("applied log id", meta.next().flatten())?.flatten();
        let last_membership = from_json("membership", meta.next().flatten())?.unwrap_or_default();
        let data = snapshot::encode(&Contents { state, log });
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        snapshot::save(&self.dir, &meta, &data)?;
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }

    fn install(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let mut c = snapshot::decode(data)?;
        c.state
            .retain(|(k, _)| k != keys::RAFT_APPLIED && k != keys::RAFT_MEMBERSHIP);
        c.state
            .push((keys::RAFT_APPLIED.to_vec(), json(&meta.last_log_id)?));
        c.state
            .push((keys::RAFT_MEMBERSHIP.to_vec(), json(&meta.last_membership)?));
        c.state.sort();
        // The file first: after a crash between the two, the state is older than the file
        // (openraft installs the file again), never newer (the log behind it may be purged).
        snapshot::save(&self.dir, meta, data)?;
        self.store
            .catalog()
            .replace(&c.state, &c.log)
            .map_err(storage)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Self) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(io_err)?
    }
}

impl RaftSnapshotBuilder<TypeConfig> for CatalogStateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        self.blocking(|me| me.build()).await
    }
}

impl RaftStateMachine<TypeConfig> for CatalogStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.blocking(|me| me.applied()).await
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Everything openraft hands over at once is applied as one run: one synced batch.
        let mut run = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            run.push(Self::prepare(entry)?);
            responders.push(responder);
        }
        if run.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let answers = self
            .blocking(move |me| me.store.catalog().apply_replicated(&run).map_err(storage))
            .await?;
        if started.elapsed() > std::time::Duration::from_millis(50) {
            tracing::warn!(took = ?started.elapsed(), "slow catalog apply");
        }
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
        let meta = meta.clone();
        self.blocking(move |me| me.install(&meta, &snapshot)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let dir = self.dir.clone();
        let s = tokio::task::spawn_blocking(move || snapshot::load(&dir))
            .await
            .map_err(io_err)??;
        Ok(s.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}
