//! A walked filesystem's directory trees, stored deepest level first. The directories of one
//! level are independent (each one's children are deeper, so already built), so a level is
//! built on several threads; only its items go to the store in order, from the caller's
//! thread. Built on one thread, derived-2's 2,400 trees (21,000 entries) took 20 ms at the
//! end of its checkin with the other core idle (docs/PERFORMANCE.md, fifteenth session).

use std::collections::HashMap;

use mirage_format::chunking::EncodedItem;
use mirage_format::{Digest, EntryKind, Item, Tree};
use mirage_node::Store;

use super::walk::{Dir, Walked};
use super::{entry_of, CheckinError};
use crate::batch::Batcher;

/// Levels with fewer directories than this are built on the calling thread.
const PARALLEL_MIN: usize = 64;

/// Indexes into `dirs` by depth, deepest level first. The walk lists a directory before its
/// subdirectories, so every parent's depth is known before its children's; a directory the
/// walk never reached from an earlier one counts as a root.
fn levels(dirs: &[Dir]) -> Vec<Vec<usize>> {
    let mut depth: HashMap<u64, usize> = HashMap::with_capacity(dirs.len());
    let mut levels: Vec<Vec<usize>> = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let here = depth.get(&d.id).copied().unwrap_or(0);
        for (_, n) in &d.children {
            if n.kind == EntryKind::Dir {
                let below = depth.entry(n.id).or_insert(here + 1);
                *below = (*below).max(here + 1);
            }
        }
        if levels.len() <= here {
            levels.resize_with(here + 1, Vec::new);
        }
        levels[here].push(i);
    }
    levels.reverse();
    levels
}

/// Each file's content digest and its holes (files without holes are not listed), by inode.
pub(super) type Files<'a> = (
    &'a HashMap<u64, Option<Digest>>,
    &'a HashMap<u64, Vec<(u64, u64)>>,
);

/// The tree of one directory, from its children's digests.
fn build(
    store: &Store,
    w: &Walked,
    part: u32,
    d: &Dir,
    (content, holes): Files<'_>,
    tree_of: &HashMap<u64, Digest>,
) -> Result<EncodedItem, CheckinError> {
    let mut entries = Vec::with_capacity(d.children.len());
    for (name, n) in &d.children {
        let mut e = entry_of(n, name.clone());
        match n.kind {
            EntryKind::Dir => e.content = tree_of.get(&n.id).copied(),
            EntryKind::File => {
                e.content = content.get(&n.id).copied().flatten();
                e.holes = holes.get(&n.id).cloned().unwrap_or_default();
            }
            _ => {}
        }
        if n.kind != EntryKind::Dir {
            e.link_group = w.groups.get(&n.id).copied();
        }
        entries.push(e);
    }
    let bad = |e: &dyn std::fmt::Display| {
        CheckinError::Content(format!("partition {part}, directory {}: {e}", d.id))
    };
    // `Tree::new` validates the entries, so the item needs no second check before encoding.
    let tree = Tree::new(entries).map_err(|e| bad(&e))?;
    EncodedItem::new(store.algorithm(), &Item::Tree(tree)).map_err(|e| bad(&e))
}

/// Stores every directory's tree; returns each directory's tree digest by inode.
pub(super) fn store_trees(
    store: &Store,
    w: &Walked,
    part: u32,
    content: Files<'_>,
    threads: usize,
    b: &mut Batcher<'_>,
) -> Result<HashMap<u64, Digest>, CheckinError> {
    let mut tree_of: HashMap<u64, Digest> = HashMap::with_capacity(w.dirs.len());
    let threads = threads.max(1);
    for level in levels(&w.dirs) {
        let built: Vec<Result<EncodedItem, CheckinError>> =
            if threads == 1 || level.len() < PARALLEL_MIN {
                level
                    .iter()
                    .map(|&i| build(store, w, part, &w.dirs[i], content, &tree_of))
                    .collect()
            } else {
                let per = level.len().div_ceil(threads);
                let tree_of = &tree_of;
                std::thread::scope(|s| {
                    let parts: Vec<_> = level
                        .chunks(per)
                        .map(|chunk| {
                            s.spawn(move || {
                                chunk
                                    .iter()
                                    .map(|&i| build(store, w, part, &w.dirs[i], content, tree_of))
                                    .collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    parts
                        .into_iter()
                        .flat_map(|p| {
                            p.join().unwrap_or_else(|_| {
                                vec![Err(CheckinError::Content("tree worker panicked".into()))]
                            })
                        })
                        .collect()
                })
            };
        for (&i, item) in level.iter().zip(built) {
            let item = item?;
            tree_of.insert(w.dirs[i].id, item.digest());
            b.push(item)?;
        }
    }
    Ok(tree_of)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Node;
    use mirage_format::Timestamp;

    fn dir(id: u64, subdirs: &[u64]) -> Dir {
        Dir {
            id,
            children: subdirs
                .iter()
                .map(|c| {
                    let n = Node {
                        id: *c,
                        kind: EntryKind::Dir,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        size: 0,
                        mtime: Timestamp::default(),
                        atime: Timestamp::default(),
                        ctime: Timestamp::default(),
                        crtime: None,
                        flags: 0,
                        xattrs: Vec::new(),
                        rdev: None,
                        target: None,
                        nlink: 2,
                    };
                    (c.to_string().into_bytes(), n)
                })
                .collect(),
        }
    }

    #[test]
    fn levels_put_every_directory_after_its_subdirectories() {
        // 1 ─ 2 ─ 4 ─ 6
        //   └ 3 ─ 5
        // in walk order (depth first), plus 9, which no listed directory names.
        let dirs = vec![
            dir(1, &[2, 3]),
            dir(2, &[4]),
            dir(4, &[6]),
            dir(6, &[]),
            dir(3, &[5]),
            dir(5, &[]),
            dir(9, &[]),
        ];
        let ids: Vec<Vec<u64>> = levels(&dirs)
            .into_iter()
            .map(|l| l.into_iter().map(|i| dirs[i].id).collect())
            .collect();
        assert_eq!(ids, vec![vec![6], vec![4, 5], vec![2, 3], vec![1, 9]]);
    }
}
