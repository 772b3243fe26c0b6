//! The catalog: users, named images with version chains and ACLs, image records with
//! provenance. A command becomes a log entry (caller and time included) that the deterministic
//! [`apply::apply`] turns into writes; the embedded store commits the entry, its writes and the
//! applied index in one synced RocksDB batch (the cluster will replicate the same log with
//! openraft). A refused command changes nothing and is not logged. Queries filter by ACL: a
//! caller learns nothing about a named image it may not read.

pub mod apply;
mod cache;
mod import;
mod layout;
pub mod model;
pub mod ops;
pub mod query;
mod replicated;

use std::collections::BTreeMap;

use mirage_format::Digest;

pub use apply::{apply, can_read, can_write, Applied, Pairs, View};
pub(crate) use cache::{StateCache, DEFAULT_CAP as STATE_CACHE_KEYS};
pub use model::{
    DeltaRecord, ImageRecord, ImageState, Lease, LockInfo, Named, Time, User, Version,
};
pub use ops::{
    check_name, CatalogError, Command, ImportedAcl, ImportedVersion, LogEntry, Response,
};
pub use query::{Query, QueryAnswer};
pub use replicated::{apply_run, Pending, Replicated, RunOutcome};

use crate::index::{CatalogSnapshot, RocksIndex};
use crate::keys::catalog as keys;
use crate::store::Store;

/// The stored state, read through the state cache.
pub(crate) struct RocksView<'a> {
    index: &'a RocksIndex,
    cache: &'a StateCache,
}

pub(crate) fn storage(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Storage(e.to_string())
}

/// The state as a read sees it: live (through the state cache; what writers read, under the
/// catalog lock) or pinned to one moment ([`Catalog::consistent`]).
pub(crate) enum CatalogView<'a> {
    Live(RocksView<'a>),
    Pinned(&'a CatalogSnapshot<'a>),
}

impl View for CatalogView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CatalogError> {
        match self {
            CatalogView::Live(v) => v.get(key),
            CatalogView::Pinned(s) => s.get(key).map_err(storage),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, CatalogError> {
        match self {
            CatalogView::Live(v) => v.scan_prefix(prefix),
            CatalogView::Pinned(s) => s.scan(prefix, None).map_err(storage),
        }
    }

    fn scan_range(&self, prefix: &[u8], end: &[u8]) -> Result<Pairs, CatalogError> {
        match self {
            CatalogView::Live(v) => v.scan_range(prefix, end),
            CatalogView::Pinned(s) => s.scan(prefix, Some(end)).map_err(storage),
        }
    }
}

impl View for RocksView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CatalogError> {
        match self.cache.lookup(key) {
            Ok(v) => Ok(v),
            Err(epoch) => {
                let v = self.index.catalog_get(key).map_err(storage)?;
                self.cache.fill(epoch, key, &v);
                Ok(v)
            }
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, CatalogError> {
        self.index.catalog_scan(prefix, None).map_err(storage)
    }

    fn scan_range(&self, prefix: &[u8], end: &[u8]) -> Result<Pairs, CatalogError> {
        self.index.catalog_scan(prefix, Some(end)).map_err(storage)
    }
}

/// Writes a batch of catalog log entries and state writes (the caller holds the catalog
/// lock), and brings the state cache up to date with it.
pub(crate) fn commit(
    sh: &crate::store::Shared,
    log: &[(u64, Vec<u8>)],
    writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    sync: bool,
) -> Result<(), CatalogError> {
    sh.catalog_cache.write_begin();
    let r = match sh.index.inner().catalog_commit(log, writes, sync) {
        Ok(()) => {
            sh.catalog_cache.committed(writes);
            Ok(())
        }
        Err(e) => {
            // A failed synced write may still have reached the memtable: trust nothing cached.
            sh.catalog_cache.clear();
            Err(storage(e))
        }
    };
    sh.catalog_cache.write_end();
    r
}

/// Why a lookup in the state cache alone gave no answer.
enum NotCached {
    /// A record it needs is not cached.
    Yes,
    /// A cached record did not decode.
    Failed(CatalogError),
}

impl From<CatalogError> for NotCached {
    fn from(e: CatalogError) -> Self {
        NotCached::Failed(e)
    }
}

/// The user a token hash belongs to (token record, then user record), read through `get`.
fn token_user<E: From<CatalogError>>(
    sha256_hex: &str,
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, E>,
) -> Result<Option<User>, E> {
    let key = keys::token(sha256_hex);
    let Some(v) = get(&key)? else {
        return Ok(None);
    };
    let name: String = apply::decode(&key, &v)?;
    let ukey = keys::user(&name);
    Ok(get(&ukey)?.map(|v| apply::decode(&ukey, &v)).transpose()?)
}

/// The whole catalog: state, log, and the values of the keys asked for.
pub(crate) type Export = (Pairs, Vec<(u64, Vec<u8>)>, Vec<Option<Vec<u8>>>);

/// A reference resolved to an image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    /// The image.
    pub image: Digest,
    /// The named image and version it came from, for a name reference.
    pub name: Option<String>,
    /// Version number.
    pub version: Option<u32>,
}

/// The catalog of a store.
#[derive(Clone, Copy)]
pub struct Catalog<'a> {
    store: &'a Store,
    /// Which moment of the state reads see (see [`Catalog::consistent`]).
    moment: Moment<'a>,
}

/// Which moment of the state a [`Catalog`]'s reads see.
#[derive(Clone, Copy)]
enum Moment<'a> {
    /// Whatever is current at each read.
    Any,
    /// Live, inside a [`Catalog::consistent`] read whose caller checks afterwards that no
    /// write began.
    Checked,
    /// A RocksDB snapshot.
    Pinned(&'a CatalogSnapshot<'a>),
}

impl std::fmt::Debug for Catalog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let moment = match self.moment {
            Moment::Any => "any",
            Moment::Checked => "checked",
            Moment::Pinned(_) => "pinned",
        };
        f.debug_struct("Catalog")
            .field("store", &self.store)
            .field("moment", &moment)
            .finish()
    }
}

impl Store {
    /// The catalog kept in this store.
    pub fn catalog(&self) -> Catalog<'_> {
        Catalog {
            store: self,
            moment: Moment::Any,
        }
    }
}

/// The caller name of the cluster's own proposals (the failure detector's layout changes).
/// No user can have it: user names never contain '@', and nodes propose it only over the
/// secret-authenticated node-to-node channel.
pub const SYSTEM_CALLER: &str = "@cluster";

/// The wall clock as a catalog time.
pub(crate) fn now() -> Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time {
        secs: d.as_secs() as i64,
        nanos: d.subsec_nanos(),
    }
}

impl Catalog<'_> {
    /// What reads see: the pinned moment, if any, else the live state.
    pub(crate) fn view(&self) -> CatalogView<'_> {
        match self.moment {
            Moment::Pinned(s) => CatalogView::Pinned(s),
            Moment::Any | Moment::Checked => CatalogView::Live(self.live()),
        }
    }

    /// The live state, through the state cache: what writers read (under the catalog lock).
    pub(crate) fn live(&self) -> RocksView<'_> {
        let sh = self.store.shared();
        RocksView {
            index: sh.index.inner(),
            cache: &sh.catalog_cache,
        }
    }

    /// Runs `read` against the state at one moment: a read of several keys -- a name and
    /// then its versions, a name and then one version -- sees them as one command left them.
    /// Read live, a command applied between the two reads gave a chain of 13 versions with
    /// the default of the 12-chain before it (a linearizability failure of the chaos smoke,
    /// seed 20810002). First live, through the state cache, valid if no write began meanwhile
    /// ([`StateCache::read_begin`]); after two tries, from a RocksDB snapshot (past the cache,
    /// which may be newer). Nested calls share the moment of the outermost.
    pub(crate) fn consistent<T>(
        &self,
        read: impl Fn(Catalog<'_>) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        if !matches!(self.moment, Moment::Any) {
            return read(*self);
        }
        let sh = self.store.shared();
        for _ in 0..2 {
            if let Some(begun) = sh.catalog_cache.read_begin() {
                let r = read(Catalog {
                    store: self.store,
                    moment: Moment::Checked,
                });
                if sh.catalog_cache.read_valid(begun) {
                    return r;
                }
            }
        }
        let snap = sh.index.inner().catalog_snapshot().map_err(storage)?;
        read(Catalog {
            store: self.store,
            moment: Moment::Pinned(&snap),
        })
    }

    /// Applies a command as `caller`; returns once it is durable.
    pub fn submit(&self, caller: &str, command: Command) -> Result<Response, CatalogError> {
        let sh = self.store.shared();
        let _serial = sh.catalog_lock.lock();
        let view = self.live();
        let applied = match view.get(keys::APPLIED)? {
            Some(v) => u64::from_be_bytes(
                <[u8; 8]>::try_from(v.as_slice()).map_err(|_| storage("applied index"))?,
            ),
            None => 0,
        };
        let entry = LogEntry {
            v: 1,
            index: applied + 1,
            time: now(),
            caller: caller.to_string(),
            command,
        };
        let done = apply(&view, &entry)?;
        let bytes = serde_json::to_vec(&entry).map_err(storage)?;
        let mut writes = done.writes;
        writes.insert(
            keys::APPLIED.to_vec(),
            Some(entry.index.to_be_bytes().to_vec()),
        );
        commit(sh, &[(entry.index, bytes)], &writes, true)?;
        Ok(done.response)
    }

    /// The whole catalog (every key but those in `meta`, and the log) plus the value of each
    /// key in `meta`, all as of one moment. Replicated runs are written without a sync, so the
    /// write-ahead log is synced first: a snapshot lets the Raft log behind it be purged. The
    /// catalog lock is held only to fix that moment, not while reading.
    pub(crate) fn export(&self, meta: &[&[u8]]) -> Result<Export, CatalogError> {
        let sh = self.store.shared();
        let (mut state, log, values) = sh
            .index
            .inner()
            .catalog_dump(meta, &sh.catalog_lock)
            .map_err(storage)?;
        // The keys asked for travel separately (a snapshot's metadata); everything else,
        // the state machine's counters and remembered requests included, is state.
        state.retain(|(k, _)| !meta.contains(&k.as_slice()));
        Ok((state, log, values))
    }

    /// Replaces the whole catalog (installing a snapshot); `state` includes the state
    /// machine's own keys.
    pub(crate) fn replace(
        &self,
        state: &Pairs,
        log: &[(u64, Vec<u8>)],
    ) -> Result<(), CatalogError> {
        let sh = self.store.shared();
        let _serial = sh.catalog_lock.lock();
        sh.catalog_cache.write_begin();
        let done = sh
            .index
            .inner()
            .catalog_replace(state, log)
            .map_err(storage);
        sh.catalog_cache.clear();
        sh.catalog_cache.write_end();
        done
    }

    /// A value of the catalog's state (`m/` keys included).
    pub(crate) fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CatalogError> {
        self.view().get(key)
    }

    /// The log, in order.
    pub fn log(&self) -> Result<Vec<LogEntry>, CatalogError> {
        self.store
            .shared()
            .index
            .inner()
            .catalog_log()
            .map_err(storage)?
            .into_iter()
            .map(|(i, v)| apply::decode(&keys::log(i), &v))
            .collect()
    }

    /// Every key and value of the state (for replay checks and backups).
    pub fn dump(&self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, CatalogError> {
        let mut all: BTreeMap<Vec<u8>, Vec<u8>> =
            self.view().scan_prefix(b"")?.into_iter().collect();
        all.retain(|k, _| !k.starts_with(keys::META_PREFIX));
        Ok(all)
    }

    /// A user.
    pub fn user(&self, name: &str) -> Result<Option<User>, CatalogError> {
        self.view()
            .get(&keys::user(name))?
            .map(|v| apply::decode(&keys::user(name), &v))
            .transpose()
    }

    /// The user whose bearer token hashes to `sha256_hex`.
    pub fn user_by_token(&self, sha256_hex: &str) -> Result<Option<User>, CatalogError> {
        // The token record, then its user's: one moment, or a token just replaced could
        // name a user whose record no longer carries it.
        self.consistent(|c| {
            let view = c.view();
            token_user(sha256_hex, |k| view.get(k))
        })
    }

    /// [`Catalog::user_by_token`] answered from the state cache alone, without reading
    /// RocksDB (so an async task may ask it): `None` when a record it needs is not cached.
    pub fn user_by_token_cached(
        &self,
        sha256_hex: &str,
    ) -> Option<Result<Option<User>, CatalogError>> {
        let cache = &self.store.shared().catalog_cache;
        match token_user(sha256_hex, |k| cache.lookup(k).map_err(|_| NotCached::Yes)) {
            Ok(u) => Some(Ok(u)),
            Err(NotCached::Yes) => None,
            Err(NotCached::Failed(e)) => Some(Err(e)),
        }
    }

    /// Every user.
    pub fn users(&self) -> Result<Vec<User>, CatalogError> {
        self.view()
            .scan_prefix(keys::USER_PREFIX)?
            .into_iter()
            .map(|(k, v)| apply::decode(&k, &v))
            .collect()
    }

    fn caller(&self, caller: &str) -> Result<User, CatalogError> {
        self.user(caller)?
            .ok_or_else(|| CatalogError::NoSuchUser(caller.to_string()))
    }

    /// A named image `caller` may read (`NotFound` otherwise, exactly as if it did not exist).
    pub fn named(&self, caller: &str, name: &str) -> Result<Named, CatalogError> {
        self.consistent(|c| c.named_at(caller, name))
    }

    fn named_at(&self, caller: &str, name: &str) -> Result<Named, CatalogError> {
        let u = self.caller(caller)?;
        let key = keys::named(name);
        match self.view().get(&key)? {
            Some(v) => {
                let n: Named = apply::decode(&key, &v)?;
                if can_read(&n, &u) {
                    return self.with_versions(n);
                }
                Err(CatalogError::NotFound(name.to_string()))
            }
            None => Err(CatalogError::NotFound(name.to_string())),
        }
    }

    /// `n` as stored (record version 2: without its versions) with its whole chain.
    fn with_versions(&self, mut n: Named) -> Result<Named, CatalogError> {
        if n.versions.is_empty() && n.count > 0 {
            for (k, v) in self.view().scan_prefix(&keys::versions(&n.name))? {
                n.versions.push(apply::decode(&k, &v)?);
            }
        }
        n.count = n.versions.len() as u32;
        Ok(n)
    }

    /// Every named image `caller` may read, by name.
    pub fn list(&self, caller: &str) -> Result<Vec<Named>, CatalogError> {
        self.consistent(|c| c.list_at(caller))
    }

    fn list_at(&self, caller: &str) -> Result<Vec<Named>, CatalogError> {
        let u = self.caller(caller)?;
        let mut out = Vec::new();
        for (k, v) in self.view().scan_prefix(keys::NAMED_PREFIX)? {
            let n: Named = apply::decode(&k, &v)?;
            if can_read(&n, &u) {
                out.push(self.with_versions(n)?);
            }
        }
        Ok(out)
    }

    /// The record of an image.
    pub fn image(&self, d: &Digest) -> Result<Option<ImageRecord>, CatalogError> {
        let key = keys::image(d);
        self.view()
            .get(&key)?
            .map(|v| apply::decode(&key, &v))
            .transpose()
    }

    /// Every upload lease (garbage collection keeps their roots until they expire).
    pub fn leases(&self) -> Result<Vec<Lease>, CatalogError> {
        self.view()
            .scan_prefix(keys::LEASE_PREFIX)?
            .into_iter()
            .map(|(k, v)| apply::decode(&k, &v))
            .collect()
    }

    /// The delta recorded from `source` to `target`, if any.
    pub fn delta(
        &self,
        source: &Digest,
        target: &Digest,
    ) -> Result<Option<DeltaRecord>, CatalogError> {
        let key = keys::delta(source, target);
        self.view()
            .get(&key)?
            .map(|v| apply::decode(&key, &v))
            .transpose()
    }

    /// The cluster layout: the current version, or version `v`.
    pub fn layout(
        &self,
        v: Option<u64>,
    ) -> Result<Option<mirage_cluster_config::Layout>, CatalogError> {
        let v = match v {
            Some(v) => v,
            None => match self.view().get(keys::LAYOUT_CURRENT)? {
                Some(b) => apply::decode(keys::LAYOUT_CURRENT, &b)?,
                None => return Ok(None),
            },
        };
        let key = keys::layout_version(v);
        self.view()
            .get(&key)?
            .map(|b| apply::decode(&key, &b))
            .transpose()
    }

    /// Every image record.
    pub fn images(&self) -> Result<Vec<ImageRecord>, CatalogError> {
        self.view()
            .scan_prefix(keys::IMAGE_PREFIX)?
            .into_iter()
            .map(|(k, v)| apply::decode(&k, &v))
            .collect()
    }

    /// The versions (`name`, number) that refer to `image` and are not deleted, whoever may
    /// read them.
    pub fn refs(&self, image: &Digest) -> Result<Vec<(String, u32)>, CatalogError> {
        self.consistent(|c| apply::image_refs(&c.view(), image))
    }

    /// May `caller` see `image`: an admin, its creator, or a reader of a name that refers to
    /// it (a live version, found through the image's references; failing that, a deleted
    /// one)?
    pub fn may_see(&self, caller: &str, image: &ImageRecord) -> Result<bool, CatalogError> {
        self.consistent(|c| apply::sees(&c.view(), &c.caller(caller)?, image))
    }

    /// Resolves `NAME`, `NAME@VERSION` or a digest (`sha256:…`).
    pub fn resolve(&self, caller: &str, reference: &str) -> Result<Resolved, CatalogError> {
        self.consistent(|c| c.resolve_at(caller, reference))
    }

    fn resolve_at(&self, caller: &str, reference: &str) -> Result<Resolved, CatalogError> {
        if let Ok(d) = reference.parse::<Digest>() {
            return Ok(Resolved {
                image: d,
                name: None,
                version: None,
            });
        }
        let (name, version) = match reference.rsplit_once('@') {
            Some((n, v)) => {
                let v: u32 = v.parse().map_err(|_| {
                    CatalogError::Invalid(format!("{reference:?}: the version after @ is a number"))
                })?;
                (n, Some(v))
            }
            None => (reference, None),
        };
        // The head record and one version: resolving costs the same however long the chain.
        let u = self.caller(caller)?;
        let key = keys::named(name);
        let n: Named = match self.view().get(&key)? {
            Some(v) => apply::decode(&key, &v)?,
            None => return Err(CatalogError::NotFound(name.to_string())),
        };
        if !can_read(&n, &u) {
            return Err(CatalogError::NotFound(name.to_string()));
        }
        let number = match version {
            Some(v) => v,
            None if n.default == 0 => {
                return Err(CatalogError::Invalid(format!(
                    "every version of {name} is deleted"
                )))
            }
            None => n.default,
        };
        let v = apply::version_of(&self.view(), &n, number)?;
        let v = v.ok_or_else(|| CatalogError::NoSuchVersion {
            name: name.to_string(),
            version: number,
        })?;
        if v.deleted {
            return Err(CatalogError::Deleted {
                name: name.to_string(),
                version: number,
            });
        }
        Ok(Resolved {
            image: v.image,
            name: Some(name.to_string()),
            version: Some(number),
        })
    }
}
