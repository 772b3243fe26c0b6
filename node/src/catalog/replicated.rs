//! Applying entries of a replicated log (cluster mode), many at a time: each entry sees the
//! writes of the entries before it through an overlay, and the whole run — catalog log
//! entries, state changes and the state machine's own keys (applied log id, membership) — is
//! one RocksDB batch. It is not synced: the Raft log is, and after a crash openraft applies
//! again what the state machine lost (from its committed index, or from the last snapshot,
//! which is taken only after the WAL is synced). A refused command changes nothing (it stays
//! in the Raft log) and its refusal is its answer. A command with a request id seen before is
//! answered from the first time and not applied again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    apply, storage, Catalog, CatalogError, Command, LogEntry, Pairs, Response, Time, View,
};
use crate::keys::catalog as keys;

/// How long a request id is remembered, in seconds of log time (entries carry the time their
/// command was submitted, so forgetting is the same on every replica). A node retries a
/// proposal for at most about 15 s (`raft::node`), so an hour is ample.
const REMEMBER_SECS: i64 = 3600;
/// Every this many log indexes, forgotten request ids are removed.
const PRUNE_EVERY: u64 = 1024;

/// A command of a replicated entry.
#[derive(Debug, Clone)]
pub struct Pending {
    /// When it was submitted.
    pub time: Time,
    /// Who submitted it.
    pub caller: String,
    /// What it does.
    pub command: Command,
    /// Request id, for retries.
    pub id: Option<String>,
    /// The token the caller authenticated with (hex SHA-256), if any.
    pub token_sha256: Option<String>,
}

/// One Raft entry to apply: its commands (none for Raft's own entries) and the state machine
/// keys to set once it is applied.
#[derive(Debug)]
pub struct Replicated {
    /// Raft log index of the entry.
    pub index: u64,
    /// The commands, in order.
    pub commands: Vec<Pending>,
    /// State machine keys (`m/…`) and their new values.
    pub meta: Vec<(&'static [u8], Vec<u8>)>,
}

/// What is remembered of a request id.
#[derive(Serialize, Deserialize)]
struct Remembered {
    time: Time,
    answer: Result<Response, CatalogError>,
}

/// Writes made so far in the run, over the stored state.
struct Overlay<'a, V: View> {
    base: &'a V,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<V: View> View for Overlay<'_, V> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CatalogError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, CatalogError> {
        let base = self.base.scan_prefix(prefix)?;
        Ok(self.merge(base, prefix, None))
    }

    fn scan_range(&self, prefix: &[u8], end: &[u8]) -> Result<Pairs, CatalogError> {
        let base = self.base.scan_range(prefix, end)?;
        Ok(self.merge(base, prefix, Some(end)))
    }
}

impl<V: View> Overlay<'_, V> {
    fn merge(&self, base: Pairs, prefix: &[u8], end: Option<&[u8]>) -> Pairs {
        apply::merged(base, &self.writes, prefix, end)
    }
}

impl<V: View> Overlay<'_, V> {
    /// Forgets request ids submitted more than `REMEMBER_SECS` before `now`: only those keys
    /// are read (they sort by time), plus any left in the layout before it.
    fn prune(&mut self, now: Time) -> Result<(), CatalogError> {
        let end = keys::request_before(now.secs.saturating_sub(REMEMBER_SECS));
        let mut old: Vec<Vec<u8>> = self
            .scan_range(keys::REQUEST_PREFIX, &end)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        old.extend(
            self.base
                .scan_prefix(keys::LEGACY_REQUEST_PREFIX)?
                .into_iter()
                .map(|(k, _)| k),
        );
        for k in old {
            self.writes.insert(k, None);
        }
        Ok(())
    }
}

/// What applying a run computed, to be committed as one batch: each entry's answers (one per
/// command), the catalog log entries of the applied commands (index, JSON `LogEntry`) and the
/// state's writes (`None`: delete), the applied index (`m/applied`) included.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Each entry's answers, one per command.
    pub answers: Vec<Vec<Result<Response, CatalogError>>>,
    /// Catalog log entries of the commands applied.
    pub log: Vec<(u64, Vec<u8>)>,
    /// Key → new value, or `None` to delete.
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// Applies `run` in order over the state `base` shows, without writing anything: the pure part
/// of [`Catalog::apply_replicated`] (request-id dedup included), so that any storage — the
/// store's RocksDB, or an in-memory map in a simulation — applies entries the same way. The
/// error is a storage failure of `base`.
pub fn apply_run<V: View>(base: &V, run: &[Replicated]) -> Result<RunOutcome, CatalogError> {
    let mut overlay = Overlay {
        base,
        writes: BTreeMap::new(),
    };
    let mut applied = match overlay.get(keys::APPLIED)? {
        Some(v) => u64::from_be_bytes(
            <[u8; 8]>::try_from(v.as_slice()).map_err(|_| storage("applied index"))?,
        ),
        None => 0,
    };
    let mut log = Vec::new();
    let mut answers = Vec::with_capacity(run.len());
    for r in run {
        let mut these = Vec::with_capacity(r.commands.len());
        for p in &r.commands {
            let seen = match &p.id {
                Some(id) => overlay
                    .get(&keys::request(p.time.secs, id))?
                    .and_then(|v| serde_json::from_slice::<Remembered>(&v).ok()),
                None => None,
            };
            if let Some(first) = seen {
                these.push(first.answer);
                continue;
            }
            let entry = LogEntry {
                v: 1,
                index: applied + 1,
                time: p.time,
                caller: p.caller.clone(),
                command: p.command.clone(),
            };
            let revoked = match &p.token_sha256 {
                Some(h) => overlay
                    .get(&keys::user(&p.caller))?
                    .and_then(|v| serde_json::from_slice::<super::User>(&v).ok())
                    .is_none_or(|u| u.token_sha256.as_deref() != Some(h.as_str())),
                None => false,
            };
            let answer = match apply(&overlay, &entry) {
                _ if revoked => Err(CatalogError::Denied(
                    "the token this request was made with is no longer valid".into(),
                )),
                Ok(done) => {
                    applied += 1;
                    log.push((entry.index, serde_json::to_vec(&entry).map_err(storage)?));
                    overlay.writes.extend(done.writes);
                    Ok(done.response)
                }
                Err(CatalogError::Storage(e)) => return Err(CatalogError::Storage(e)),
                Err(refused) => Err(refused),
            };
            if let Some(id) = &p.id {
                let remembered = Remembered {
                    time: p.time,
                    answer: answer.clone(),
                };
                overlay.writes.insert(
                    keys::request(p.time.secs, id),
                    Some(serde_json::to_vec(&remembered).map_err(storage)?),
                );
            }
            these.push(answer);
        }
        if r.index % PRUNE_EVERY == 0 {
            if let Some(p) = r.commands.last() {
                overlay.prune(p.time)?;
            }
        }
        for (k, v) in &r.meta {
            overlay.writes.insert(k.to_vec(), Some(v.clone()));
        }
        answers.push(these);
    }
    overlay
        .writes
        .insert(keys::APPLIED.to_vec(), Some(applied.to_be_bytes().to_vec()));
    Ok(RunOutcome {
        answers,
        log,
        writes: overlay.writes,
    })
}

impl Catalog<'_> {
    /// Applies `run` in order; returns each entry's answers, one per command. Applied
    /// commands are numbered on in the catalog log (`m/applied`), exactly as the embedded
    /// catalog numbers them. The outer error is a storage failure (nothing of the run is
    /// written then).
    #[allow(clippy::type_complexity)]
    pub fn apply_replicated(
        &self,
        run: &[Replicated],
    ) -> Result<Vec<Vec<Result<Response, CatalogError>>>, CatalogError> {
        let sh = self.store.shared();
        let _serial = sh.catalog_lock.lock();
        let base = self.live();
        let out = apply_run(&base, run)?;
        super::commit(sh, &out.log, &out.writes, false)?;
        Ok(out.answers)
    }
}
