//! File-level compare of two images: per filesystem (paired by partition number), files and
//! directories added, deleted, modified (content or type) and changed in metadata only.
//! Subtrees with the same digest are skipped without being read, so the cost follows the size
//! of the change, not the size of the images.

use std::cmp::Ordering;

use anyhow::{bail, Context, Result};
use mirage_format::{Digest, EntryKind, Item, PartitionContent, Tree, TreeEntry};
use mirage_node::Store;
use serde::Serialize;

use crate::browse::item;

/// What happened to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only in the second image.
    Added,
    /// Only in the first image.
    Deleted,
    /// Content or type differs.
    Modified,
    /// Same content, other metadata (mode, owner, times, flags, xattrs, …).
    Metadata,
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// What happened.
    pub change: ChangeKind,
    /// Path in the filesystem (names as bytes, shown lossily).
    pub path: String,
    /// Object type (in the second image, or the first for a deletion).
    pub kind: EntryKind,
    /// Metadata fields that differ (for `modified` and `metadata`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<&'static str>,
}

/// Changes of one filesystem.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsDiff {
    /// Partition number.
    pub partition: u32,
    /// Changes, in path order.
    pub changes: Vec<Change>,
    /// Trees read (pairs of directories that differ).
    pub trees_read: u64,
    /// Entries compared.
    pub entries_compared: u64,
}

/// Options.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiffOptions {
    /// Count access- and change-time differences as metadata changes (by default they are
    /// left out: reading a file changes its atime, and copying or rebuilding a filesystem
    /// changes every ctime, so they would bury the real changes).
    pub all_times: bool,
}

/// The filesystems of an image: (partition number, root tree).
pub(crate) fn filesystems(store: &Store, image: &Digest) -> Result<Vec<(u32, Digest)>> {
    let Item::Image(img) = item(store, image)? else {
        bail!("{} is not an image", image.to_text())
    };
    let mut out = Vec::new();
    for d in &img.disks {
        let Item::Disk(disk) = item(store, &d.disk)? else {
            bail!("damaged image: not a disk")
        };
        for p in &disk.partitions {
            if let PartitionContent::Filesystem { digest } = &p.content {
                let Item::Filesystem(fs) = item(store, digest)? else {
                    bail!("damaged image: not a filesystem")
                };
                out.push((p.number, fs.root));
            }
        }
    }
    Ok(out)
}

/// Metadata fields of `a` and `b` that differ, content aside.
fn fields(a: &TreeEntry, b: &TreeEntry, o: DiffOptions) -> Vec<&'static str> {
    let mut f = Vec::new();
    let mut check = |differs: bool, name| {
        if differs {
            f.push(name);
        }
    };
    check(a.mode != b.mode, "mode");
    check(a.uid != b.uid, "uid");
    check(a.gid != b.gid, "gid");
    check(a.size != b.size, "size");
    check(a.mtime != b.mtime, "mtime");
    check(o.all_times && a.atime != b.atime, "atime");
    check(o.all_times && a.ctime != b.ctime, "ctime");
    check(a.crtime != b.crtime, "crtime");
    check(a.flags != b.flags, "flags");
    check(a.xattrs != b.xattrs, "xattrs");
    check(a.target != b.target, "target");
    check(a.rdev != b.rdev, "rdev");
    // Link groups are numbered per filesystem; only being linked or not is comparable.
    check(
        a.link_group.is_some() != b.link_group.is_some(),
        "hard link",
    );
    f
}

fn tree(store: &Store, d: &Digest) -> Result<Tree> {
    match item(store, d)? {
        Item::Tree(t) => Ok(t),
        other => bail!("{} is a {}, expected a tree", d.to_text(), other.kind()),
    }
}

fn join(dir: &str, name: &[u8]) -> String {
    format!("{dir}{}", String::from_utf8_lossy(name))
}

fn diff_trees(
    store: &Store,
    a: &Digest,
    b: &Digest,
    dir: &str,
    o: DiffOptions,
    out: &mut FsDiff,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let (ta, tb) = (tree(store, a)?, tree(store, b)?);
    out.trees_read += 1;
    let (mut i, mut j) = (0, 0);
    while i < ta.entries.len() || j < tb.entries.len() {
        let order = match (ta.entries.get(i), tb.entries.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        out.entries_compared += 1;
        match order {
            Ordering::Less => {
                let e = &ta.entries[i];
                out.changes.push(Change {
                    change: ChangeKind::Deleted,
                    path: join(dir, &e.name),
                    kind: e.kind,
                    fields: Vec::new(),
                });
                i += 1;
            }
            Ordering::Greater => {
                let e = &tb.entries[j];
                out.changes.push(Change {
                    change: ChangeKind::Added,
                    path: join(dir, &e.name),
                    kind: e.kind,
                    fields: Vec::new(),
                });
                j += 1;
            }
            Ordering::Equal => {
                let (x, y) = (&ta.entries[i], &tb.entries[j]);
                let path = join(dir, &x.name);
                let meta = fields(x, y, o);
                if x.kind != y.kind {
                    out.changes.push(Change {
                        change: ChangeKind::Modified,
                        path,
                        kind: y.kind,
                        fields: vec!["type"],
                    });
                } else if x.kind == EntryKind::Dir {
                    if !meta.is_empty() {
                        out.changes.push(Change {
                            change: ChangeKind::Metadata,
                            path: path.clone(),
                            kind: EntryKind::Dir,
                            fields: meta,
                        });
                    }
                    match (&x.content, &y.content) {
                        (Some(ca), Some(cb)) => {
                            diff_trees(store, ca, cb, &format!("{path}/"), o, out)?
                        }
                        _ => bail!("{path}: directory without a tree"),
                    }
                } else if x.content != y.content {
                    let mut f = vec!["content"];
                    f.extend(meta);
                    out.changes.push(Change {
                        change: ChangeKind::Modified,
                        path,
                        kind: y.kind,
                        fields: f,
                    });
                } else if !meta.is_empty() {
                    out.changes.push(Change {
                        change: ChangeKind::Metadata,
                        path,
                        kind: y.kind,
                        fields: meta,
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// Compares the filesystems of images `a` and `b`, paired by partition number.
pub fn diff_images(store: &Store, a: &Digest, b: &Digest, o: DiffOptions) -> Result<Vec<FsDiff>> {
    let fa = filesystems(store, a).with_context(|| format!("reading {}", a.to_text()))?;
    let fb = filesystems(store, b).with_context(|| format!("reading {}", b.to_text()))?;
    let mut out = Vec::new();
    for (part, ra) in &fa {
        let Some((_, rb)) = fb.iter().find(|(p, _)| p == part) else {
            continue;
        };
        let mut d = FsDiff {
            partition: *part,
            ..Default::default()
        };
        diff_trees(store, ra, rb, "/", o, &mut d)?;
        out.push(d);
    }
    Ok(out)
}

/// The one-line form of a change: `A /path`, `D`, `M`, `m` (metadata only).
pub fn change_line(c: &Change) -> String {
    let tag = match c.change {
        ChangeKind::Added => "A",
        ChangeKind::Deleted => "D",
        ChangeKind::Modified => "M",
        ChangeKind::Metadata => "m",
    };
    if c.fields.is_empty() {
        format!("{tag} {}", c.path)
    } else {
        format!("{tag} {}  ({})", c.path, c.fields.join(", "))
    }
}
