//! `Command::Import`: a named image's version chain brought from another library (push,
//! pull, mirror). The chain keeps its images, times, creators and delete marks; each image
//! keeps its provenance and description. Nothing is ever removed: a name here with the same
//! history (a prefix of the source's chain) grows, takes over the source's delete marks and
//! its default; a name with another history is refused unless the import is forced, which
//! appends.

use std::collections::HashSet;

use super::apply::{
    drop_ref, may_add_versions, owner_or_admin, put_named, put_version, upgrade, user, version_of,
    Tx,
};
use super::model::{ImageRecord, ImageState, Named, Version};
use super::ops::{check_name, CatalogError, ImportedAcl, ImportedVersion, LogEntry, Response};
use crate::keys::catalog as keys;

/// Applies an import by `e.caller`.
pub(super) fn import(
    tx: &mut Tx<'_>,
    e: &LogEntry,
    name: &str,
    versions: &[ImportedVersion],
    default: u32,
    acl: Option<&ImportedAcl>,
    force: bool,
) -> Result<Response, CatalogError> {
    let u = user(tx, &e.caller)?;
    check_name("image name", name)?;
    if versions.is_empty() {
        return Err(CatalogError::Invalid(format!(
            "nothing to import for {name}: the chain is empty"
        )));
    }
    if default as usize > versions.len() {
        return Err(CatalogError::Invalid(format!(
            "{name}: default version {default} of a chain of {}",
            versions.len()
        )));
    }
    let mut n = match tx.get_json::<Named>(&keys::named(name))? {
        None => {
            if acl.is_some_and(|a| a.owner != u.name) && !u.admin {
                return Err(CatalogError::Denied(
                    "only an admin imports a name for another owner".into(),
                ));
            }
            let mut n = Named {
                v: 2,
                name: name.to_string(),
                owner: u.name.clone(),
                readers: Default::default(),
                writers: Default::default(),
                versions: Vec::new(),
                count: 0,
                default: 0,
                lock: None,
            };
            append(tx, &mut n, versions)?;
            n.default = default;
            n
        }
        Some(mut n) => {
            may_add_versions(&n, &u)?;
            upgrade(tx, &mut n)?;
            let mut ours = Vec::with_capacity(n.count as usize);
            for number in 1..=n.count {
                ours.extend(version_of(tx, &n, number)?);
            }
            let common = ours
                .iter()
                .zip(versions)
                .take_while(|(a, b)| a.image == b.image)
                .count();
            if common == ours.len().min(versions.len()) {
                let ahead = ours.len() > versions.len();
                append(tx, &mut n, &versions[ours.len().min(versions.len())..])?;
                for (mut v, theirs) in ours.into_iter().zip(versions) {
                    if theirs.deleted && !v.deleted {
                        v.deleted = true;
                        put_version(tx, &n, &v)?;
                        drop_ref(tx, v.image, name, v.number)?;
                    }
                }
                if !ahead {
                    n.default = default;
                }
            } else if force {
                let have: HashSet<_> = ours.iter().map(|v| v.image).collect();
                let new: Vec<ImportedVersion> = versions
                    .iter()
                    .filter(|v| !v.deleted && !have.contains(&v.image))
                    .cloned()
                    .collect();
                append(tx, &mut n, &new)?;
                if !new.is_empty() {
                    n.default = n.count;
                }
            } else {
                let (a, b) = (&ours[common], &versions[common]);
                return Err(CatalogError::Conflict(format!(
                    "{name} has another history here: its version {} is {} here and {} there; \
                     bring it under another name (--rename NEW) or add the versions after this \
                     one's (--force)",
                    common + 1,
                    a.image.to_text(),
                    b.image.to_text()
                )));
            }
            if acl.is_some() && !owner_or_admin(&n, &u) {
                return Err(CatalogError::Denied(format!(
                    "only the owner ({}) or an admin changes the ACL of {name}",
                    n.owner
                )));
            }
            n
        }
    };
    if let Some(a) = acl {
        n.owner = a.owner.clone();
        n.readers = a.readers.clone();
        n.writers = a.writers.clone();
    }
    // The default must be a live version here: else the newest live one (0: none).
    let live = |tx: &Tx<'_>, n: &Named, number: u32| -> Result<bool, CatalogError> {
        Ok(version_of(tx, n, number)?.is_some_and(|v| !v.deleted))
    };
    if !live(tx, &n, n.default)? {
        n.default = 0;
        for number in (1..=n.count).rev() {
            if live(tx, &n, number)? {
                n.default = number;
                break;
            }
        }
    }
    let image = version_of(tx, &n, n.default)?.map(|v| v.image);
    put_named(tx, &mut n)?;
    Ok(Response {
        name: Some(name.to_string()),
        version: Some(n.default),
        image,
        ..Default::default()
    })
}

/// Adds `versions` after `n`'s last one, with their image records (and image references for
/// live ones).
fn append(
    tx: &mut Tx<'_>,
    n: &mut Named,
    versions: &[ImportedVersion],
) -> Result<(), CatalogError> {
    for v in versions {
        let number = n.count + 1;
        put_version(
            tx,
            n,
            &Version {
                number,
                image: v.image,
                created: v.created,
                creator: v.creator.clone(),
                deleted: v.deleted,
            },
        )?;
        n.count = number;
        if !v.deleted {
            tx.writes
                .insert(keys::image_ref(&v.image, &n.name, number), Some(Vec::new()));
        }
        let key = keys::image(&v.image);
        let rec = match tx.get_json::<ImageRecord>(&key)? {
            Some(mut r) => {
                if !v.deleted {
                    r.state = ImageState::Active;
                }
                r
            }
            None => ImageRecord {
                v: 1,
                digest: v.image,
                state: if v.deleted {
                    ImageState::Deleted
                } else {
                    ImageState::Active
                },
                created: v.created,
                parent: v.parent,
                creator: v.creator.clone(),
                description: v.description.clone(),
                labels: v.labels.clone(),
            },
        };
        tx.put_json(key, &rec)?;
    }
    Ok(())
}
