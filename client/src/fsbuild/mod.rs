//! Recreating filesystems at checkout.

pub mod ext4;
pub mod layout;
mod output;
pub mod vfat;

use std::path::Path;

use anyhow::{bail, Context, Result};
use mirage_format::{Digest, EntryKind, Item};
use mirage_node::Store;

/// What staging the tree below `root` takes at most: every regular file's size (holes too,
/// and a hard-linked file once per name) in whole pages, and a page for every other entry.
pub(crate) fn staged_bytes(store: &Store, root: &Digest) -> Result<u64> {
    const PAGE: u64 = 4096;
    let mut total = 0u64;
    let mut stack = vec![*root];
    while let Some(d) = stack.pop() {
        let Item::Tree(tree) = crate::browse::item(store, &d)? else {
            bail!("{} is not a tree", d.to_text())
        };
        for e in &tree.entries {
            total = total.saturating_add(match e.kind {
                EntryKind::File => e.size.div_ceil(PAGE).saturating_mul(PAGE),
                _ => PAGE,
            });
            if let (EntryKind::Dir, Some(c)) = (e.kind, e.content) {
                stack.push(c);
            }
        }
    }
    Ok(total)
}

/// A staging directory for a tree of at most `bound` bytes ([`staged_bytes`]): in `/dev/shm`
/// when it has room to spare (creating thousands of files there is two orders of magnitude
/// cheaper than on a disk filesystem, and so is removing them), else next to the output image.
pub(crate) fn staging_dir(image: &Path, bound: u64) -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if let Ok(st) = rustix::fs::statvfs(shm) {
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free / 4 > bound {
            if let Ok(d) = tempfile::Builder::new()
                .prefix("mirage-staging-")
                .tempdir_in(shm)
            {
                return Ok(d);
            }
        }
    }
    let parent = image
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::Builder::new()
        .prefix(".mirage-staging-")
        .tempdir_in(parent)
        .context("creating a staging directory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirage_format::PartitionContent;

    /// Pages the entries below `dir` take: files by size, anything else one page.
    fn on_disk(dir: &Path) -> u64 {
        let mut total = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            total += if meta.is_file() {
                meta.len().div_ceil(4096) * 4096
            } else {
                4096
            };
            if meta.is_dir() {
                total += on_disk(&e.path());
            }
        }
        total
    }

    #[test]
    fn staging_is_sized_by_the_files_not_the_partition() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("store")).unwrap();
        let tree = dir.path().join("tree");
        let gen = crate::demo::generate(&tree, 5, 1).unwrap();
        let img = dir.path().join("disk.img");
        crate::demo::build_disk_image(&tree, &img, gen.bytes).unwrap();
        let (image, _) = crate::indexer::checkin(&store, &img, 2).unwrap();
        let Item::Image(image) = crate::browse::item(&store, &image).unwrap() else {
            panic!()
        };
        let Item::Disk(disk) = crate::browse::item(&store, &image.disks[0].disk).unwrap() else {
            panic!()
        };
        let (fs, size) = disk
            .partitions
            .iter()
            .find_map(|p| match &p.content {
                PartitionContent::Filesystem { digest } => {
                    match crate::browse::item(&store, digest).unwrap() {
                        Item::Filesystem(fs) if fs.fs_type == "ext4" => Some((fs, p.size)),
                        _ => None,
                    }
                }
                _ => None,
            })
            .unwrap();
        // The demo tree, and the lost+found mke2fs adds.
        let want = on_disk(&tree) + 4096;
        assert_eq!(staged_bytes(&store, &fs.root).unwrap(), want);
        assert!(
            want * 2 < size,
            "{want} bytes staged, {size} in the partition"
        );
    }
}
