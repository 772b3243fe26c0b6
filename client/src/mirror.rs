//! `mirage mirror`: keeps a second library (typically a cluster in another datacenter) in
//! step with this one. Each pass lists the names this side has, and for each one whose chain,
//! delete marks, default or (with `--acl`) ACL differ on the other side, brings it across as
//! a push does (content first, then one `Import`). A pass keeps no state: the mirror can be
//! stopped and started, and either side restarted, at any time; a pass that fails for a name
//! (the other side down, a conflicting history) says so, and the next pass tries again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use mirage_node::catalog::{ImportedAcl, Named};
use serde::Serialize;

use crate::search::glob_match;
use crate::transfer::{transfer_name, Library, Options};

/// What to mirror and how.
#[derive(Debug, Default, Clone)]
pub struct MirrorOptions {
    /// Names to mirror (globs: `*`, `?` within a path segment, `**` across); empty: all.
    pub names: Vec<String>,
    /// Carry ACLs across: owner, readers and writers, each user through `users` (users
    /// without a mapping are left out; an unmapped owner becomes the mirror's user there).
    pub acl: bool,
    /// Users here → users there.
    pub users: BTreeMap<String, String>,
    /// Every user stands for the user of the same name there (backup, restore).
    pub same_users: bool,
}

/// One pass.
#[derive(Debug, Default, Serialize)]
pub struct Pass {
    /// Start, seconds since the epoch.
    pub started_unix: u64,
    /// Names this side has that the pass looked at.
    pub names: usize,
    /// Names that differed and were brought across.
    pub updated: Vec<String>,
    /// Versions added there.
    pub versions_added: u64,
    /// Delete marks added there.
    pub deletes: u64,
    /// Items and bytes sent.
    pub items: u64,
    /// Encoded bytes sent.
    pub bytes: u64,
    /// Lag at the start of the pass: versions the other side lacked …
    pub behind_versions: u64,
    /// … and the age, in seconds, of the oldest of them (0: in step).
    pub lag_seconds: u64,
    /// Names left behind and why.
    pub errors: Vec<String>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The ACL `n` should have on the other side, users mapped.
fn mapped_acl(n: &Named, opts: &MirrorOptions, mirror_user: &str) -> ImportedAcl {
    let one = |u: &String| -> Option<String> {
        if opts.same_users {
            Some(u.clone())
        } else {
            opts.users.get(u).cloned()
        }
    };
    let map = |set: &BTreeSet<String>| -> BTreeSet<String> { set.iter().filter_map(one).collect() };
    ImportedAcl {
        owner: one(&n.owner).unwrap_or_else(|| mirror_user.to_string()),
        readers: map(&n.readers),
        writers: map(&n.writers),
    }
}

/// Whether `theirs` (the other side) matches `ours` in every way a pass carries.
fn in_step(ours: &Named, theirs: Option<&Named>, acl: Option<&ImportedAcl>) -> bool {
    let Some(t) = theirs else {
        return false;
    };
    let chain = |n: &Named| -> Vec<_> { n.versions.iter().map(|v| (v.image, v.deleted)).collect() };
    chain(ours) == chain(t)
        && ours.default == t.default
        && acl
            .is_none_or(|a| a.owner == t.owner && a.readers == t.readers && a.writers == t.writers)
}

/// One pass from `src` to `dst`.
pub fn pass(src: &Library, dst: &Library, opts: &MirrorOptions) -> Pass {
    let mut p = Pass {
        started_unix: now_unix(),
        ..Default::default()
    };
    let names = match src.list() {
        Ok(v) => v,
        Err(e) => {
            p.errors.push(format!("listing {}: {e:#}", src.label));
            return p;
        }
    };
    for n in names {
        if !opts.names.is_empty()
            && !opts
                .names
                .iter()
                .any(|g| glob_match(g.as_bytes(), n.name.as_bytes()))
        {
            continue;
        }
        p.names += 1;
        let theirs = match dst.named(&n.name) {
            Ok(t) => t,
            Err(e) => {
                p.errors.push(format!("{}: {e:#}", n.name));
                continue;
            }
        };
        let acl = opts.acl.then(|| mapped_acl(&n, opts, dst.caller()));
        if in_step(&n, theirs.as_ref(), acl.as_ref()) {
            continue;
        }
        let had = theirs.as_ref().map_or(0, |t| t.versions.len());
        let missing = &n.versions[had.min(n.versions.len())..];
        p.behind_versions += missing.len() as u64;
        if let Some(oldest) = missing.first() {
            let age = now_unix().saturating_sub(oldest.created.secs.max(0) as u64);
            p.lag_seconds = p.lag_seconds.max(age);
        }
        let marks =
            |t: Option<&Named>| t.map_or(0, |t| t.versions.iter().filter(|v| v.deleted).count());
        let before = marks(theirs.as_ref());
        match transfer_name(src, dst, &n.name, &Options::default(), acl) {
            Ok(m) => {
                p.updated.push(n.name.clone());
                p.versions_added += missing.len() as u64;
                p.items += m.items;
                p.bytes += m.bytes;
                let after = dst.named(&n.name).ok().flatten();
                p.deletes += marks(after.as_ref()).saturating_sub(before) as u64;
            }
            Err(e) => p.errors.push(format!("{}: {e:#}", n.name)),
        }
    }
    p
}

/// Runs passes every `interval` (once without), handing each to `report`.
pub fn run(
    src: &Library,
    dst: &Library,
    opts: &MirrorOptions,
    interval: Option<Duration>,
    mut report: impl FnMut(&Pass),
) -> Result<()> {
    loop {
        let p = pass(src, dst, opts);
        report(&p);
        match interval {
            Some(i) => std::thread::sleep(i),
            None => {
                if let Some(e) = p.errors.first() {
                    anyhow::bail!("{} names not mirrored; the first: {e}", p.errors.len());
                }
                return Ok(());
            }
        }
    }
}
