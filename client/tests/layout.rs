//! Checkout by layout: a stored skeleton that does not describe the stored tree is never
//! trusted; the filesystem is rebuilt from the tree instead.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use mirage_client::checkout::{checkout, CheckoutOptions};
use mirage_client::indexer::checkin;
use mirage_format::chunking::EncodedItem;
use mirage_format::{Digest, Filesystem, Item, PartitionContent};
use mirage_node::Store;

fn get(store: &Store, d: &Digest) -> Item {
    Item::decode(&store.get(d).unwrap().unwrap()).unwrap()
}

fn put(store: &Store, item: &Item) -> Digest {
    let e = EncodedItem::new(store.algorithm(), item).unwrap();
    let d = e.digest();
    store.put_many(vec![e.into_bytes()]).unwrap();
    d
}

/// The image's ext4 filesystem item (partition 3 of the demo disk).
fn root_fs(store: &Store, image: &Digest) -> (Item, Item, Filesystem) {
    let img = get(store, image);
    let Item::Image(i) = &img else { panic!() };
    let disk = get(store, &i.disks[0].disk);
    let Item::Disk(dk) = &disk else { panic!() };
    let PartitionContent::Filesystem { digest } = &dk.partitions[2].content else {
        panic!()
    };
    let Item::Filesystem(fs) = get(store, digest) else {
        panic!()
    };
    (img, disk, fs)
}

fn without_layout(mut fs: Filesystem) -> Filesystem {
    fs.skeleton = None;
    fs
}

#[test]
fn a_skeleton_that_disagrees_with_the_tree_falls_back_to_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let gen = mirage_client::demo::generate(&tree, 3, 1).unwrap();
    let a = dir.path().join("a.img");
    let layout = mirage_client::demo::build_disk_image(&tree, &a, gen.bytes).unwrap();
    // The same disk with one timestamp changed: same UUID, same geometry, another tree.
    let b = dir.path().join("b.img");
    std::fs::copy(&a, &b).unwrap();
    let st = Command::new("debugfs")
        .args(["-w", "-R", "sif /usr mtime @1234567890"])
        .arg(format!("{}?offset={}", b.display(), 69632 * 512))
        .output()
        .unwrap();
    assert!(st.status.success());
    let store = Store::create(&dir.path().join("store")).unwrap();
    let (da, _) = checkin(&store, &a, 2).unwrap();
    let (db, _) = checkin(&store, &b, 2).unwrap();
    assert_ne!(da, db);
    let (img, disk, fs_a) = root_fs(&store, &da);
    let (_, _, fs_b) = root_fs(&store, &db);
    assert_ne!(fs_a.root, fs_b.root);
    assert_ne!(fs_a.skeleton, fs_b.skeleton);
    // A's tree with B's layout.
    let mut forged = fs_a.clone();
    forged.skeleton = fs_b.skeleton;
    let fsd = put(&store, &Item::Filesystem(forged));
    let Item::Disk(mut dk) = disk else { panic!() };
    dk.partitions[2].content = PartitionContent::Filesystem { digest: fsd };
    let dd = put(&store, &Item::Disk(dk));
    let Item::Image(mut im) = img else { panic!() };
    im.disks[0].disk = dd;
    let forged_image = put(&store, &Item::Image(im));

    let out = dir.path().join("out.img");
    let stats = checkout(&store, &forged_image, &out, CheckoutOptions::default()).unwrap();
    assert_eq!((stats.by_layout, stats.rebuilt), (1, 1), "{stats:?}");
    mirage_client::demo::fsck_disk(&out, &layout).unwrap();
    let (again, _) = checkin(&store, &out, 2).unwrap();
    let (_, _, fs_out) = root_fs(&store, &again);
    assert_eq!(without_layout(fs_out), without_layout(fs_a.clone()));

    // The honest image lays out with no rebuild, byte for byte.
    let out2 = dir.path().join("out2.img");
    let stats = checkout(&store, &da, &out2, CheckoutOptions::default()).unwrap();
    assert_eq!((stats.by_layout, stats.rebuilt), (2, 0), "{stats:?}");
    assert!(std::fs::read(&out2).unwrap() == std::fs::read(&a).unwrap());
}

#[test]
fn a_rebuild_refuses_an_xattr_debugfs_would_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), b"content\n").unwrap();
    let img = dir.path().join("ea.img");
    let st = Command::new("mke2fs")
        .args([
            "-q", "-F", "-t", "ext4", "-b", "1024", "-O", "ea_inode", "-d",
        ])
        .arg(&tree)
        .arg(&img)
        .arg("8M")
        .output()
        .unwrap();
    assert!(st.status.success());
    let store = Store::create(&dir.path().join("store")).unwrap();
    let (d, _) = checkin(&store, &img, 2).unwrap();
    // The same image whose file holds a 3000-byte xattr (ea_inode allows up to 64 KiB).
    let Item::Image(mut im) = get(&store, &d) else {
        panic!()
    };
    let Item::Disk(mut dk) = get(&store, &im.disks[0].disk) else {
        panic!()
    };
    let PartitionContent::Filesystem { digest } = &dk.partitions[0].content else {
        panic!()
    };
    let Item::Filesystem(mut fs) = get(&store, digest) else {
        panic!()
    };
    let Item::Tree(mut root) = get(&store, &fs.root) else {
        panic!()
    };
    let f = root.entries.iter_mut().find(|e| e.name == b"f").unwrap();
    f.xattrs.push(mirage_format::Xattr {
        name: b"user.big".to_vec(),
        value: vec![7u8; 3000],
    });
    fs.root = put(&store, &Item::Tree(root));
    fs.skeleton = None;
    dk.partitions[0].content = PartitionContent::Filesystem {
        digest: put(&store, &Item::Filesystem(fs)),
    };
    im.disks[0].disk = put(&store, &Item::Disk(dk));
    let forged = put(&store, &Item::Image(im));
    let out = dir.path().join("out.img");
    let e = checkout(&store, &forged, &out, CheckoutOptions::default())
        .err()
        .unwrap();
    let e = format!("{e:#}");
    assert!(e.contains("\"f\": xattr user.big holds 3000 bytes"), "{e}");
    assert!(!out.exists());
}

/// The Filesystem item of a bare filesystem image (no partition table).
fn bare_fs(store: &Store, image: &Digest) -> Filesystem {
    let Item::Image(i) = get(store, image) else {
        panic!()
    };
    let Item::Disk(dk) = get(store, &i.disks[0].disk) else {
        panic!()
    };
    let PartitionContent::Filesystem { digest } = &dk.partitions[0].content else {
        panic!()
    };
    let Item::Filesystem(fs) = get(store, digest) else {
        panic!()
    };
    fs
}

#[test]
fn a_rebuild_indexes_the_directories_the_source_had_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("big")).unwrap();
    std::fs::create_dir_all(tree.join("small")).unwrap();
    for i in 0..3000 {
        std::fs::write(tree.join("big").join(format!("entry-{i}")), b"").unwrap();
    }
    std::fs::write(tree.join("small/f"), b"x").unwrap();
    let img = dir.path().join("src.img");
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    // mke2fs -d writes linear directories; e2fsck -D indexes the large one.
    let (store, d, src_fs, root) = index_and_check_in(&img, dir.path());
    let flags = |t: &mirage_format::Tree, name: &[u8]| {
        t.entries.iter().find(|e| e.name == name).unwrap().flags
    };
    assert_ne!(flags(&root, b"big") & 0x1000, 0, "the source is indexed");
    assert_eq!(flags(&root, b"small") & 0x1000, 0);
    // Indexed again, and the superblock's times and counters as checked in, though e2fsck
    // ran after debugfs had set them.
    assert_rebuild_round_trips(&store, &d, dir.path(), src_fs);
}

/// Runs `e2fsck -fyD` on the bare filesystem `img` (indexing its large directories, as a
/// kernel would have while they grew) and checks it into a new store under `dir`: the store,
/// the image, its filesystem and root tree.
fn index_and_check_in(
    img: &std::path::Path,
    dir: &std::path::Path,
) -> (Store, Digest, Filesystem, mirage_format::Tree) {
    let st = Command::new("e2fsck")
        .arg("-fyD")
        .arg(img)
        .output()
        .unwrap();
    assert!(matches!(st.status.code(), Some(0 | 1)), "{st:?}");
    let store = Store::create(&dir.join("store")).unwrap();
    let (d, _) = checkin(&store, img, 2).unwrap();
    let src_fs = bare_fs(&store, &d);
    let Item::Tree(root) = get(&store, &src_fs.root) else {
        panic!()
    };
    (store, d, src_fs, root)
}

/// Checks `d` (a bare filesystem) out rebuilt, and asserts that `e2fsck -fn` finds it clean
/// and that checking it in again gives `src_fs` apart from its skeleton (identity,
/// parameters, root attributes, tree).
fn assert_rebuild_round_trips(
    store: &Store,
    d: &Digest,
    dir: &std::path::Path,
    src_fs: Filesystem,
) {
    let out = dir.join("rebuilt.img");
    let opts = CheckoutOptions {
        rebuild: true,
        ..Default::default()
    };
    checkout(store, d, &out, opts).unwrap();
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&out)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{fsck:?}");
    let (again, _) = checkin(store, &out, 2).unwrap();
    assert_eq!(
        without_layout(bare_fs(store, &again)),
        without_layout(src_fs)
    );
}

#[test]
fn a_rebuild_keeps_casefolded_directories_and_the_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("cf/big")).unwrap();
    std::fs::create_dir_all(tree.join("plain")).unwrap();
    std::fs::write(tree.join("cf/MixedCase.TXT"), b"hi\n").unwrap();
    std::fs::write(tree.join("cf/Straße"), b"x\n").unwrap();
    for i in 0..3000 {
        std::fs::write(tree.join("cf/big").join(format!("File-{i}")), b"").unwrap();
    }
    let img = dir.path().join("src.img");
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-O", "casefold"])
        .args(["-E", "encoding=utf8,encoding_flags=strict", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    // `chattr +F` works on empty directories of a mounted filesystem only (and needs a kernel
    // with CONFIG_UNICODE); debugfs sets the flag, and e2fsck -D indexes the large directory
    // with the case-folded hash, as the kernel would have while it grew.
    for d in ["/cf", "/cf/big"] {
        let st = Command::new("debugfs")
            .args(["-w", "-R", &format!("sif {d} flags 0x40080000")])
            .arg(&img)
            .output()
            .unwrap();
        assert!(st.status.success());
    }
    let (store, d, src_fs, root) = index_and_check_in(&img, dir.path());
    let cf = root.entries.iter().find(|e| e.name == b"cf").unwrap();
    assert_ne!(cf.flags & 0x4000_0000, 0, "the source is case-folded");
    // Browsing looks names up as the kernel would: without regard to case in the case-folded
    // directories only.
    let cat = |path: &str| {
        let mut out = Vec::new();
        mirage_client::browse::cat(&store, &d, None, path, &mut out).map(|()| out)
    };
    assert_eq!(cat("/cf/mixedcase.txt").unwrap(), b"hi\n");
    assert_eq!(cat("/cf/BIG/file-7").unwrap(), b"");
    assert_eq!(cat("/cf/STRAßE").unwrap(), b"x\n");
    assert!(
        cat("/CF/MixedCase.TXT").is_err(),
        "the root is not case-folded"
    );
    // The same tree (flags included) and the same superblock (encoding and its strict flag).
    assert_rebuild_round_trips(&store, &d, dir.path(), src_fs);
}
