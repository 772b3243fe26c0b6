//! Where a file has blocks and where it has holes survives a directory's ingest and restore.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use mirage_client::ingest::ingest_dir;
use mirage_client::restore::restore_tree;
use mirage_format::{Item, TreeEntry};
use mirage_node::Store;

/// The holes of the file at `p` as its filesystem reports them.
fn holes_of(p: &Path) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let f = File::open(p).unwrap();
    let size = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let hole = seek(&f, SeekFrom::Hole(pos)).unwrap();
        if hole >= size {
            break;
        }
        let data = seek(&f, SeekFrom::Data(hole)).map_or(size, |d| d.min(size));
        out.push((hole, data - hole));
        pos = data;
    }
    out
}

#[test]
fn ingest_records_holes_and_restore_keeps_them_and_allocates_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // Written zeros (a swap file made with dd): blocks, no holes; the store keeps no chunk.
    std::fs::write(src.join("zeros"), vec![0u8; 3 << 20]).unwrap();
    // Data at both ends of 8 MiB, a hole between.
    let f = File::create(src.join("sparse")).unwrap();
    f.write_all_at(&[7u8; 5000], 0).unwrap();
    f.write_all_at(&[9u8; 5000], 8 << 20).unwrap();
    drop(f);
    let want = holes_of(&src.join("sparse"));
    if want.is_empty() {
        eprintln!("skipped: this filesystem reports no holes");
        return;
    }
    assert!(holes_of(&src.join("zeros")).is_empty());

    let store = Store::create(&dir.path().join("store")).unwrap();
    let (root, _) = ingest_dir(&store, &src, 2).unwrap();
    let Item::Tree(tree) = Item::decode(&store.get(&root).unwrap().unwrap()).unwrap() else {
        panic!("not a tree")
    };
    let entry =
        |name: &[u8]| -> &TreeEntry { tree.entries.iter().find(|e| e.name == name).unwrap() };
    assert_eq!(entry(b"sparse").holes, want);
    assert!(entry(b"zeros").holes.is_empty());

    let out = dir.path().join("out");
    restore_tree(&store, &root, &out).unwrap();
    assert_eq!(holes_of(&out.join("sparse")), want);
    // Preallocated blocks read as a hole through SEEK_HOLE; the block count tells.
    let blocks = std::os::unix::fs::MetadataExt::blocks(&out.join("zeros").metadata().unwrap());
    assert!(
        blocks * 512 >= 3 << 20,
        "the zeros were left a hole ({blocks} blocks)"
    );
    assert_eq!(
        std::fs::read(out.join("zeros")).unwrap(),
        vec![0u8; 3 << 20]
    );
    assert_eq!(
        std::fs::read(out.join("sparse")).unwrap(),
        std::fs::read(src.join("sparse")).unwrap()
    );
}
