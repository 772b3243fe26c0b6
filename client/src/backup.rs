//! `mirage backup` and `mirage restore`: a whole library (every name the caller may read,
//! with chains, delete marks, defaults, provenance and ACLs) to and from a store directory,
//! as one mirror pass with every user standing for itself. The verify step reads every item
//! of every live version back from the backup and re-hashes it: a backup that verifies can
//! be restored. Users and their tokens are not carried (tokens are secrets): restore names
//! owners and grants by user name, and an administrator adds the users there.

use std::collections::HashSet;

use anyhow::{bail, Result};
use mirage_format::{Digest, Item};
use mirage_node::{ReadOptions, Store};
use serde::Serialize;

use crate::mirror::{pass, MirrorOptions, Pass};
use crate::transfer::Library;

/// What a verify read.
#[derive(Debug, Default, Serialize)]
pub struct Verified {
    /// Live versions checked.
    pub images: usize,
    /// Distinct items read and re-hashed.
    pub items: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Reads the whole closure of every live version `store`'s catalog names (as `caller`),
/// re-hashing every item; fails on the first item missing or damaged.
pub fn verify(store: &Store, caller: &str) -> Result<Verified> {
    crate::library::ensure_caller(store, caller)?;
    let mut roots: Vec<Digest> = Vec::new();
    for n in store.catalog().list(caller)? {
        roots.extend(n.versions.iter().filter(|v| !v.deleted).map(|v| v.image));
    }
    let mut v = Verified::default();
    let mut seen: HashSet<Digest> = HashSet::new();
    let opts = ReadOptions {
        verify_digest: true,
        ..Default::default()
    };
    for root in roots {
        if !seen.insert(root) {
            continue;
        }
        v.images += 1;
        let mut frontier = vec![root];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            let mut failure = None;
            let stats = store.get_many(&frontier, None, opts, |d, r| match r {
                Ok(bytes) => {
                    v.items += 1;
                    v.bytes += bytes.len() as u64;
                    match Item::decode(&bytes) {
                        Ok(item) => {
                            next.extend(item.refs().into_iter().filter(|c| seen.insert(*c)))
                        }
                        Err(e) => failure = Some(format!("{}: {e}", d.to_text())),
                    }
                }
                Err(e) => failure = Some(format!("{}: {e}", d.to_text())),
            })?;
            if let Some(d) = stats.missing.first() {
                bail!("{} of {} is missing", d.to_text(), root.to_text());
            }
            if let Some(f) = failure {
                bail!("damaged: {f}");
            }
            frontier = next;
        }
    }
    Ok(v)
}

/// Copies every name of `src` (matching `names`, if any) to `dst`, ACLs included.
pub fn copy_library(src: &Library, dst: &Library, names: &[String]) -> Result<Pass> {
    let opts = MirrorOptions {
        names: names.to_vec(),
        acl: true,
        same_users: true,
        ..Default::default()
    };
    let p = pass(src, dst, &opts);
    if let Some(e) = p.errors.first() {
        bail!("{} names not copied; the first: {e}", p.errors.len());
    }
    Ok(p)
}
