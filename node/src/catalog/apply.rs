//! The deterministic state machine: [`apply`] computes the writes of one log entry from the
//! state it reads. No clock (the entry carries its time), no randomness, no I/O of its own, so
//! the same log gives the same state on every replica and on every replay.

use std::collections::BTreeMap;

use mirage_format::Digest;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::model::{
    DeltaRecord, ImageRecord, ImageState, Lease, LockInfo, Named, Time, User, Version,
};
use super::ops::{check_name, CatalogError, Command, LogEntry, Response};
use crate::keys::catalog as keys;

/// Key/value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Read access to the catalog's keys.
pub trait View {
    /// One value.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CatalogError>;
    /// Every key/value under a prefix, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, CatalogError>;
    /// The key/values under `prefix` that sort before `end`, in key order.
    fn scan_range(&self, prefix: &[u8], end: &[u8]) -> Result<Pairs, CatalogError> {
        let mut all = self.scan_prefix(prefix)?;
        all.retain(|(k, _)| k.as_slice() < end);
        Ok(all)
    }
}

/// The effect of one entry: puts (`Some`) and deletes (`None`), and the answer.
#[derive(Debug, Default)]
pub struct Applied {
    /// Key → new value, or `None` to delete.
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// What the command answers.
    pub response: Response,
}

/// Reads through the writes of the entry being applied.
pub(super) struct Tx<'a> {
    view: &'a dyn View,
    pub(super) writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Tx<'_> {
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CatalogError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.view.get(key),
        }
    }

    pub(super) fn get_json<T: DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, CatalogError> {
        self.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    pub(super) fn put_json<T: Serialize>(
        &mut self,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), CatalogError> {
        let v = serde_json::to_vec(value).map_err(|e| CatalogError::Storage(e.to_string()))?;
        self.writes.insert(key, Some(v));
        Ok(())
    }

    fn has_prefix(&self, prefix: &[u8]) -> Result<bool, CatalogError> {
        Ok(!View::scan_prefix(self, prefix)?.is_empty())
    }
}

/// `base` (stored key/values under `prefix`, before `end` if given) with `writes` made over
/// them: what a scan sees through pending writes.
pub(super) fn merged(
    base: Pairs,
    writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    prefix: &[u8],
    end: Option<&[u8]>,
) -> Pairs {
    let mut all: BTreeMap<Vec<u8>, Vec<u8>> = base.into_iter().collect();
    for (k, v) in writes
        .range(prefix.to_vec()..)
        .take_while(|(k, _)| k.starts_with(prefix) && end.is_none_or(|e| k.as_slice() < e))
    {
        match v {
            Some(v) => all.insert(k.clone(), v.clone()),
            None => all.remove(k),
        };
    }
    all.into_iter().collect()
}

impl View for Tx<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CatalogError> {
        Tx::get(self, key)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, CatalogError> {
        Ok(merged(
            self.view.scan_prefix(prefix)?,
            &self.writes,
            prefix,
            None,
        ))
    }
}

/// Records that the token hashing to `h` belongs to `name`.
fn claim_token(tx: &mut Tx<'_>, h: &str, name: &str) -> Result<(), CatalogError> {
    if h.len() != 64
        || !h
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(CatalogError::Invalid(
            "a token hash is 64 lowercase hex digits".into(),
        ));
    }
    if tx.get(&keys::token(h))?.is_some() {
        return Err(CatalogError::Invalid("that token is in use".into()));
    }
    tx.put_json(keys::token(h), &name)
}

/// Decodes a stored record.
pub fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, CatalogError> {
    serde_json::from_slice(v).map_err(|e| {
        CatalogError::Storage(format!(
            "record {} does not decode: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

/// May `u` read `n`?
pub fn can_read(n: &Named, u: &User) -> bool {
    u.admin || n.owner == u.name || n.readers.contains(&u.name) || n.writers.contains(&u.name)
}

/// May `u` add versions to `n` or move its default?
pub fn can_write(n: &Named, u: &User) -> bool {
    u.admin || n.owner == u.name || n.writers.contains(&u.name)
}

pub(super) fn owner_or_admin(n: &Named, u: &User) -> bool {
    u.admin || n.owner == u.name
}

pub(super) fn user(tx: &Tx<'_>, name: &str) -> Result<User, CatalogError> {
    tx.get_json(&keys::user(name))?
        .ok_or_else(|| CatalogError::NoSuchUser(name.to_string()))
}

/// The named image if `u` may read it; else `NotFound`, exactly as if it did not exist.
fn visible(tx: &Tx<'_>, name: &str, u: &User) -> Result<Named, CatalogError> {
    match tx.get_json::<Named>(&keys::named(name))? {
        Some(n) if can_read(&n, u) => Ok(n),
        _ => Err(CatalogError::NotFound(name.to_string())),
    }
}

/// A name the caller wants to create: free, or refused without saying whether it exists
/// unless the caller may read it.
fn free_name(tx: &Tx<'_>, name: &str, u: &User) -> Result<(), CatalogError> {
    check_name("image name", name)?;
    match tx.get_json::<Named>(&keys::named(name))? {
        None => Ok(()),
        Some(n) if can_read(&n, u) => Err(CatalogError::Exists(name.to_string())),
        Some(_) => Err(CatalogError::Denied(format!(
            "the name {name:?} is not available"
        ))),
    }
}

/// Refuses `u` adding versions to the existing name `n`: as unavailable (saying nothing of it)
/// if `u` may not read it, as denied if `u` may only read it, and while it is locked.
pub(super) fn may_add_versions(n: &Named, u: &User) -> Result<(), CatalogError> {
    if !can_read(n, u) {
        return Err(CatalogError::Denied(format!(
            "the name {:?} is not available",
            n.name
        )));
    }
    if !can_write(n, u) {
        return Err(CatalogError::Denied(format!(
            "{} may read {} but not add versions",
            u.name, n.name
        )));
    }
    unlocked(n)
}

pub(super) fn unlocked(n: &Named) -> Result<(), CatalogError> {
    match &n.lock {
        Some(l) => Err(CatalogError::Locked {
            name: n.name.clone(),
            by: l.by.clone(),
            reason: l.reason.clone(),
        }),
        None => Ok(()),
    }
}

/// Version `number` of `n` as `view` holds it: inline in a record of version 1, else under
/// its own key.
pub(super) fn version_of(
    view: &dyn View,
    n: &Named,
    number: u32,
) -> Result<Option<Version>, CatalogError> {
    if !n.versions.is_empty() {
        return Ok(n.version(number).cloned());
    }
    if number == 0 || number > n.count {
        return Ok(None);
    }
    let key = keys::version(&n.name, number);
    view.get(&key)?.map(|v| decode(&key, &v)).transpose()
}

/// Version `number` of `n`, which must exist and not be deleted.
fn live_version(tx: &Tx<'_>, n: &Named, number: u32) -> Result<Version, CatalogError> {
    let v = version_of(tx, n, number)?.ok_or_else(|| CatalogError::NoSuchVersion {
        name: n.name.clone(),
        version: number,
    })?;
    if v.deleted {
        return Err(CatalogError::Deleted {
            name: n.name.clone(),
            version: number,
        });
    }
    Ok(v)
}

/// Writes `v` as a version of `n` (its own key; `n` must be of record version 2).
pub(super) fn put_version(tx: &mut Tx<'_>, n: &Named, v: &Version) -> Result<(), CatalogError> {
    tx.put_json(keys::version(&n.name, v.number), v)
}

/// Moves the versions of a record of version 1 to their own keys (record version 2).
pub(super) fn upgrade(tx: &mut Tx<'_>, n: &mut Named) -> Result<(), CatalogError> {
    if !n.versions.is_empty() {
        n.count = n.versions.len() as u32;
        for v in std::mem::take(&mut n.versions) {
            put_version(tx, n, &v)?;
        }
    }
    n.v = 2;
    Ok(())
}

/// Stores `n` (record version 2: without its versions).
pub(super) fn put_named(tx: &mut Tx<'_>, n: &mut Named) -> Result<(), CatalogError> {
    upgrade(tx, n)?;
    tx.put_json(keys::named(&n.name), n)
}

/// Records that `name@version` refers to `image`, creating or reviving the image's record.
fn add_ref(
    tx: &mut Tx<'_>,
    image: Digest,
    name: &str,
    version: u32,
    parent: Option<Digest>,
    description: &str,
    e: &LogEntry,
) -> Result<(), CatalogError> {
    tx.writes
        .insert(keys::image_ref(&image, name, version), Some(Vec::new()));
    let key = keys::image(&image);
    let rec = match tx.get_json::<ImageRecord>(&key)? {
        Some(mut r) => {
            r.state = ImageState::Active;
            r
        }
        None => ImageRecord {
            v: 1,
            digest: image,
            state: ImageState::Active,
            created: e.time,
            parent,
            creator: e.caller.clone(),
            description: description.to_string(),
            labels: BTreeMap::new(),
        },
    };
    tx.put_json(key, &rec)
}

/// Drops the reference of `name@version`; an image no live version refers to is marked deleted.
pub(super) fn drop_ref(
    tx: &mut Tx<'_>,
    image: Digest,
    name: &str,
    version: u32,
) -> Result<(), CatalogError> {
    tx.writes
        .insert(keys::image_ref(&image, name, version), None);
    if !tx.has_prefix(&keys::image_ref_prefix(&image))? {
        let key = keys::image(&image);
        if let Some(mut r) = tx.get_json::<ImageRecord>(&key)? {
            r.state = ImageState::Deleted;
            tx.put_json(key, &r)?;
        }
    }
    Ok(())
}

/// May `u` see `image`?
fn sees_image(tx: &Tx<'_>, u: &User, image: &Digest) -> Result<bool, CatalogError> {
    match tx.get_json::<ImageRecord>(&keys::image(image))? {
        Some(rec) => sees(tx, u, &rec),
        None => Ok(false),
    }
}

/// May `u` see the image of `rec`, as `view` holds the catalog: an admin, its creator, or a
/// reader of a name holding it (a live version, found through the image's references; failing
/// that, a deleted one)?
pub(super) fn sees(view: &dyn View, u: &User, rec: &ImageRecord) -> Result<bool, CatalogError> {
    if u.admin || rec.creator == u.name {
        return Ok(true);
    }
    for (name, _) in image_refs(view, &rec.digest)? {
        let key = keys::named(&name);
        if let Some(v) = view.get(&key)? {
            if can_read(&decode::<Named>(&key, &v)?, u) {
                return Ok(true);
            }
        }
    }
    for (k, v) in view.scan_prefix(keys::NAMED_PREFIX)? {
        let n: Named = decode(&k, &v)?;
        if !can_read(&n, u) {
            continue;
        }
        for number in 1..=n.version_count() {
            if version_of(view, &n, number)?.is_some_and(|x| x.image == rec.digest) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The versions (`name`, number) that refer to `image` and are not deleted.
pub(super) fn image_refs(
    view: &dyn View,
    image: &Digest,
) -> Result<Vec<(String, u32)>, CatalogError> {
    let prefix = keys::image_ref_prefix(image);
    let mut out = Vec::new();
    for (k, _) in view.scan_prefix(&prefix)? {
        let rest = &k[prefix.len()..];
        if let Some(nul) = rest.iter().position(|b| *b == 0) {
            let name = String::from_utf8_lossy(&rest[..nul]).into_owned();
            let v = <[u8; 4]>::try_from(&rest[nul + 1..])
                .map(u32::from_be_bytes)
                .map_err(|_| CatalogError::Storage("undecodable image reference key".into()))?;
            out.push((name, v));
        }
    }
    Ok(out)
}

/// Creates the named image `name` with `image` as version 1.
fn new_named(
    tx: &mut Tx<'_>,
    name: &str,
    owner: &str,
    image: Digest,
    at: Time,
) -> Result<(), CatalogError> {
    let mut n = Named {
        v: 2,
        name: name.to_string(),
        owner: owner.to_string(),
        readers: Default::default(),
        writers: Default::default(),
        versions: Vec::new(),
        count: 1,
        default: 1,
        lock: None,
    };
    let first = Version {
        number: 1,
        image,
        created: at,
        creator: owner.to_string(),
        deleted: false,
    };
    put_version(tx, &n, &first)?;
    put_named(tx, &mut n)
}

/// Applies one log entry to the state `view` shows.
pub fn apply(view: &dyn View, e: &LogEntry) -> Result<Applied, CatalogError> {
    let mut tx = Tx {
        view,
        writes: BTreeMap::new(),
    };
    let response = match &e.command {
        Command::AddUser {
            name,
            admin,
            token_sha256,
        } => {
            check_name("user name", name)?;
            let first = !tx.has_prefix(keys::USER_PREFIX)?;
            if first {
                if *name != e.caller {
                    return Err(CatalogError::Invalid(format!(
                        "the catalog has no users yet: the first user must be the caller ({})",
                        e.caller
                    )));
                }
            } else if !user(&tx, &e.caller)?.admin {
                return Err(CatalogError::Denied("only an admin adds users".into()));
            }
            if tx.get(&keys::user(name))?.is_some() {
                return Err(CatalogError::Invalid(format!("user {name:?} exists")));
            }
            let u = User {
                v: 1,
                name: name.clone(),
                admin: *admin || first,
                created: e.time,
                token_sha256: token_sha256.clone(),
            };
            if let Some(h) = token_sha256 {
                claim_token(&mut tx, h, name)?;
            }
            tx.put_json(keys::user(name), &u)?;
            Response::default()
        }
        Command::SetToken { name, token_sha256 } => {
            let caller = user(&tx, &e.caller)?;
            if caller.name != *name && !caller.admin {
                return Err(CatalogError::Denied(
                    "only the user itself or an admin sets its token".into(),
                ));
            }
            let mut u = user(&tx, name)?;
            if let Some(old) = &u.token_sha256 {
                tx.writes.insert(keys::token(old), None);
            }
            claim_token(&mut tx, token_sha256, name)?;
            u.token_sha256 = Some(token_sha256.clone());
            tx.put_json(keys::user(name), &u)?;
            Response::default()
        }
        Command::Checkin {
            name,
            image,
            parent,
            description,
        } => {
            let u = user(&tx, &e.caller)?;
            check_name("image name", name)?;
            let (number, parent) = match tx.get_json::<Named>(&keys::named(name))? {
                None => {
                    new_named(&mut tx, name, &u.name, *image, e.time)?;
                    (1, *parent)
                }
                Some(mut n) => {
                    may_add_versions(&n, &u)?;
                    let parent = match parent {
                        Some(p) => Some(*p),
                        None => version_of(&tx, &n, n.default)?.map(|v| v.image),
                    };
                    upgrade(&mut tx, &mut n)?;
                    let number = n.count + 1;
                    let v = Version {
                        number,
                        image: *image,
                        created: e.time,
                        creator: u.name.clone(),
                        deleted: false,
                    };
                    put_version(&mut tx, &n, &v)?;
                    n.count = number;
                    n.default = number;
                    put_named(&mut tx, &mut n)?;
                    (number, parent)
                }
            };
            add_ref(&mut tx, *image, name, number, parent, description, e)?;
            Response {
                name: Some(name.clone()),
                version: Some(number),
                image: Some(*image),
                ..Default::default()
            }
        }
        Command::Derive {
            source,
            version,
            name,
        } => {
            let u = user(&tx, &e.caller)?;
            let src = visible(&tx, source, &u)?;
            let number = version.unwrap_or(src.default);
            let image = live_version(&tx, &src, number)?.image;
            free_name(&tx, name, &u)?;
            new_named(&mut tx, name, &u.name, image, e.time)?;
            add_ref(&mut tx, image, name, 1, Some(image), "", e)?;
            Response {
                name: Some(name.clone()),
                version: Some(1),
                image: Some(image),
                ..Default::default()
            }
        }
        Command::SetDefault { name, version } => {
            let u = user(&tx, &e.caller)?;
            let mut n = visible(&tx, name, &u)?;
            if !can_write(&n, &u) {
                return Err(CatalogError::Denied(format!(
                    "{} may read {name} but not change its default",
                    u.name
                )));
            }
            unlocked(&n)?;
            let image = live_version(&tx, &n, *version)?.image;
            n.default = *version;
            put_named(&mut tx, &mut n)?;
            Response {
                name: Some(name.clone()),
                version: Some(*version),
                image: Some(image),
                ..Default::default()
            }
        }
        Command::Delete { name, version } => {
            let u = user(&tx, &e.caller)?;
            let mut n = visible(&tx, name, &u)?;
            if !owner_or_admin(&n, &u) {
                return Err(CatalogError::Denied(format!(
                    "only the owner ({}) or an admin deletes versions of {name}",
                    n.owner
                )));
            }
            unlocked(&n)?;
            let Some(mut v) = version_of(&tx, &n, *version)? else {
                return Err(CatalogError::NoSuchVersion {
                    name: name.clone(),
                    version: *version,
                });
            };
            let image = v.image;
            if !v.deleted {
                upgrade(&mut tx, &mut n)?;
                v.deleted = true;
                put_version(&mut tx, &n, &v)?;
                if n.default == *version {
                    // The newest version left, if any.
                    n.default = 0;
                    for number in (1..=n.count).rev() {
                        if version_of(&tx, &n, number)?.is_some_and(|x| !x.deleted) {
                            n.default = number;
                            break;
                        }
                    }
                }
                put_named(&mut tx, &mut n)?;
                drop_ref(&mut tx, image, name, *version)?;
            }
            Response {
                name: Some(name.clone()),
                version: Some(*version),
                image: Some(image),
                ..Default::default()
            }
        }
        Command::Lock { name, reason } => {
            let u = user(&tx, &e.caller)?;
            let mut n = visible(&tx, name, &u)?;
            if !u.admin {
                return Err(CatalogError::Denied("only an admin locks images".into()));
            }
            n.lock = Some(LockInfo {
                by: u.name.clone(),
                reason: reason.clone(),
                at: e.time,
            });
            put_named(&mut tx, &mut n)?;
            Response {
                name: Some(name.clone()),
                ..Default::default()
            }
        }
        Command::Unlock { name } => {
            let u = user(&tx, &e.caller)?;
            let mut n = visible(&tx, name, &u)?;
            if !u.admin {
                return Err(CatalogError::Denied("only an admin unlocks images".into()));
            }
            n.lock = None;
            put_named(&mut tx, &mut n)?;
            Response {
                name: Some(name.clone()),
                ..Default::default()
            }
        }
        Command::AddDelta {
            source,
            target,
            delta,
        } => {
            let u = user(&tx, &e.caller)?;
            for d in [source, target] {
                if !sees_image(&tx, &u, d)? {
                    return Err(CatalogError::NotFound(d.to_text()));
                }
            }
            let rec = DeltaRecord {
                v: 1,
                source: *source,
                target: *target,
                delta: *delta,
                created: e.time,
                creator: u.name.clone(),
            };
            tx.put_json(keys::delta(source, target), &rec)?;
            Response {
                image: Some(*delta),
                ..Default::default()
            }
        }
        Command::Lease { id, roots, expires } => {
            let u = user(&tx, &e.caller)?;
            check_name("lease id", id)?;
            let lease = Lease {
                v: 1,
                id: id.clone(),
                holder: u.name.clone(),
                roots: roots.clone(),
                renewed: e.time,
                expires: *expires,
            };
            tx.put_json(keys::lease(&u.name, id), &lease)?;
            Response::default()
        }
        Command::ReleaseLease { id } => {
            let u = user(&tx, &e.caller)?;
            let key = keys::lease(&u.name, id);
            if tx.get(&key)?.is_none() {
                return Err(CatalogError::Invalid(format!(
                    "{} holds no lease {id:?}",
                    u.name
                )));
            }
            tx.writes.insert(key, None);
            Response::default()
        }
        Command::InitLayout { layout } => {
            let u = user(&tx, &e.caller)?;
            super::layout::init(&mut tx, &u, layout)?
        }
        Command::Import {
            name,
            versions,
            default,
            acl,
            force,
        } => super::import::import(&mut tx, e, name, versions, *default, acl.as_ref(), *force)?,
        Command::ChangeLayout { expect, change } => {
            // The failure detector declares nodes dead or alive as the cluster itself.
            let system = e.caller == super::SYSTEM_CALLER && change.is_liveness();
            let u = if system {
                None
            } else {
                Some(user(&tx, &e.caller)?)
            };
            super::layout::change(&mut tx, u.as_ref(), *expect, change)?
        }
        Command::Acl {
            name,
            grant_read,
            grant_write,
            revoke,
        } => {
            let u = user(&tx, &e.caller)?;
            let mut n = visible(&tx, name, &u)?;
            if !owner_or_admin(&n, &u) {
                return Err(CatalogError::Denied(format!(
                    "only the owner ({}) or an admin changes the ACL of {name}",
                    n.owner
                )));
            }
            for who in grant_read.iter().chain(grant_write).chain(revoke) {
                user(&tx, who)?;
            }
            for who in revoke {
                n.readers.remove(who);
                n.writers.remove(who);
            }
            n.readers.extend(grant_read.iter().cloned());
            n.writers.extend(grant_write.iter().cloned());
            put_named(&mut tx, &mut n)?;
            Response {
                name: Some(name.clone()),
                ..Default::default()
            }
        }
    };
    Ok(Applied {
        writes: tx.writes,
        response,
    })
}
