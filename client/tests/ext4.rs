//! The ext2/3/4 reader against trees the test builds itself (`mke2fs -d`, then `debugfs` for
//! what `mke2fs -d` drops: nanoseconds, times after 2038, inode flags). Needs root for device
//! nodes and ownership; CI runs as root.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mirage_client::checkout::{checkout, CheckoutOptions};
use mirage_client::demo::pseudo_random;
use mirage_client::fs::ext4::Ext4;
use mirage_client::fs::{FsReader, Node};
use mirage_client::image::{self, BlockSource};
use mirage_client::indexer::checkin;
use mirage_format::{Digest, EntryKind, Item, PartitionContent, Timestamp};
use mirage_node::Store;

mod common;
use common::{assert_fsck_clean, debugfs_script, is_root, run};

/// A tree with every kind of object and metadata.
fn build_tree(root: &Path) {
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::write(root.join("small"), b"hello ext4\n").unwrap();
    std::fs::write(root.join("big"), pseudo_random(5, 3 << 20)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    let sparse = std::fs::File::create(root.join("sparse")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"start", 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", 20 << 20).unwrap();
    drop(sparse);
    std::os::unix::fs::symlink("small", root.join("fast-link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), root.join("slow-link")).unwrap();
    std::fs::hard_link(root.join("small"), root.join("dir/hardlink")).unwrap();
    let weird = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"not-utf8-\xff\xfe");
    std::fs::write(root.join(weird), b"bytes").unwrap();
    std::fs::write(root.join("n".repeat(255)), b"long name").unwrap();
    let many = root.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..30_000 {
        std::fs::write(many.join(format!("entry-{i:05}")), b"").unwrap();
    }
    for (name, mode) in [
        ("setuid", 0o4755),
        ("setgid", 0o2710),
        ("sticky-dir", 0o1777),
    ] {
        let p = root.join(name);
        if name.ends_with("dir") {
            std::fs::create_dir(&p).unwrap();
        } else {
            std::fs::write(&p, name).unwrap();
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    run(Command::new("mknod")
        .arg(root.join("null"))
        .args(["c", "1", "3"]));
    run(Command::new("mknod")
        .arg(root.join("disk"))
        .args(["b", "259", "70000"]));
    run(Command::new("mkfifo").arg(root.join("fifo")));
    std::os::unix::fs::lchown(root.join("small"), Some(1000), Some(2000)).unwrap();
    std::os::unix::fs::lchown(root.join("fast-link"), Some(7), Some(8)).unwrap();
    // Socket, xattrs (user, trusted, security incl. a capability, POSIX ACLs) and old times
    // through Python's standard library.
    let script = r#"
import os, socket, struct, sys
r = sys.argv[1]
s = socket.socket(socket.AF_UNIX); s.bind(os.path.join(r, "socket")); s.close()
os.setxattr(os.path.join(r, "small"), "user.comment", b"hello")
os.setxattr(os.path.join(r, "small"), "trusted.t", b"\x00\x01")
os.setxattr(os.path.join(r, "big"), "security.capability", bytes.fromhex("0100000200200000000000000000000000000000"))
acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in [(1, 7, 0xffffffff), (2, 6, 1000), (4, 5, 0xffffffff), (16, 7, 0xffffffff), (32, 4, 0xffffffff)])
os.setxattr(os.path.join(r, "dir"), "system.posix_acl_access", acl)
os.setxattr(os.path.join(r, "dir"), "system.posix_acl_default", acl)
os.utime(os.path.join(r, "empty"), ns=(-86400 * 365 * 10 * 10**9, -86400 * 365 * 10 * 10**9))
"#;
    run(Command::new("python3").arg("-c").arg(script).arg(root));
}

/// Everything the reader returns, by path.
fn walk(fs: &dyn FsReader) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(Vec::new(), fs.root())];
    while let Some((path, id)) = stack.pop() {
        for (name, child) in fs.read_dir(id).unwrap() {
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&name);
            let node = fs.node(child).unwrap();
            if node.kind == EntryKind::Dir {
                stack.push((p.clone(), child));
            }
            out.insert(p, node);
        }
    }
    out
}

fn content(fs: &dyn FsReader, src: &dyn BlockSource, node: &Node) -> Vec<u8> {
    if let Some(d) = fs.inline_data(node.id).unwrap() {
        return d;
    }
    let mut v = vec![0u8; node.size as usize];
    for e in fs.extents(node.id).unwrap() {
        if let Some(p) = e.physical {
            src.read_at(&mut v[e.logical as usize..(e.logical + e.len) as usize], p)
                .unwrap();
        }
    }
    v
}

fn xattrs_of(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut names).unwrap();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let mut v = vec![0u8; 65536];
            let cname = std::ffi::CString::new(name).unwrap();
            let m = rustix::fs::lgetxattr(p, cname.as_c_str(), &mut v).unwrap();
            (name.to_vec(), v[..m].to_vec())
        })
        .collect();
    out.sort();
    out
}

fn check(fs_type: &str, extra_mkfs: &[&str], extents_flag: u64) {
    if !is_root() {
        eprintln!("SKIPPED: needs root for device nodes and ownership");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    build_tree(&src);
    let img = dir.path().join("fs.img");
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-t",
            fs_type,
            "-b",
            "4096",
            "-I",
            "256",
            "-U",
            "2c3e1d4f-0000-4000-8000-123456789abc",
            "-L",
            "mirage-test",
            "-N",
            "40000",
        ])
        .args(extra_mkfs)
        .arg("-d")
        .arg(&src)
        .arg(&img)
        .arg("96M"));
    // What mke2fs -d drops: nanoseconds, a time after 2038, crtime, inode flags.
    let cmds = format!(
        "sif /small mtime_extra {}\nsif /small crtime @1000000000\nsif /small crtime_extra {}\nsif /setuid mtime @4102444817\nsif /setuid mtime_extra {}\nsif /setgid flags {}\n",
        123_456_789u32 << 2,
        999_999_999u32 << 2,
        (5u32 << 2) | 1,
        0x10 | 0x20 | 0x40 | extents_flag,
    );
    debugfs_script(dir.path(), &img, &cmds);
    run(Command::new("e2fsck").arg("-fn").arg(&img));

    let source: Arc<dyn BlockSource> = Arc::from(image::open(&img).unwrap());
    let fs = Ext4::open(source.clone(), 0, source.len()).unwrap();
    assert_eq!(fs.info().fs_type, fs_type);
    assert_eq!(fs.info().label, b"mirage-test");
    assert_eq!(
        fs.info().uuid,
        hex_uuid("2c3e1d4f-0000-4000-8000-123456789abc")
    );
    let nodes = walk(&fs);
    // Compare every source path.
    let mut inode_of: HashMap<u64, u64> = HashMap::new();
    let mut count = 0;
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel =
                std::os::unix::ffi::OsStrExt::as_bytes(p.strip_prefix(&src).unwrap().as_os_str())
                    .to_vec();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let n = nodes
                .get(&rel)
                .unwrap_or_else(|| panic!("{} missing", String::from_utf8_lossy(&rel)));
            let what = String::from_utf8_lossy(&rel).into_owned();
            let kind = mirage_client::ingest::entry_kind(&m.file_type());
            if kind == EntryKind::Dir {
                stack.push(p.clone());
            }
            assert_eq!(n.kind, kind, "{what}");
            assert_eq!(n.mode, m.mode() & 0o7777, "{what}");
            assert_eq!((n.uid, n.gid), (m.uid(), m.gid()), "{what}");
            if kind != EntryKind::Dir {
                assert_eq!(n.size, m.size(), "{what}");
            }
            if rel != b"small" && rel != b"setuid" {
                assert_eq!(n.mtime.secs, m.mtime(), "{what}");
            }
            match kind {
                EntryKind::File => {
                    let want = std::fs::read(&p).unwrap();
                    assert!(
                        content(&fs, source.as_ref(), n) == want,
                        "{what}: content differs"
                    );
                    if let Some(prev) = inode_of.insert(m.ino(), n.id) {
                        assert_eq!(prev, n.id, "{what}: hard links must share an inode");
                    }
                }
                EntryKind::Symlink => {
                    let t = std::fs::read_link(&p).unwrap();
                    assert_eq!(
                        n.target.as_deref(),
                        Some(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
                        "{what}"
                    );
                }
                EntryKind::CharDev | EntryKind::BlockDev => {
                    assert_eq!(n.rdev, Some(m.rdev()), "{what}")
                }
                _ => {}
            }
            let want_x = xattrs_of(&p);
            let got_x: Vec<(Vec<u8>, Vec<u8>)> = n
                .xattrs
                .iter()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect();
            assert_eq!(got_x, want_x, "{what}: xattrs");
            count += 1;
        }
    }
    assert_eq!(
        nodes.len(),
        count + 1,
        "reader found more than the source holds (lost+found aside)"
    );
    // The fields set with debugfs.
    let small = &nodes[&b"small".to_vec()];
    assert_eq!(small.mtime.nanos, 123_456_789);
    assert_eq!(
        small.crtime,
        Some(Timestamp::new(1_000_000_000, 999_999_999))
    );
    assert_eq!(
        nodes[&b"setuid".to_vec()].mtime,
        Timestamp::new(4_102_444_817, 5)
    );
    assert_eq!(nodes[&b"setgid".to_vec()].flags & 0x70, 0x70);
    assert_eq!(nodes[&b"empty".to_vec()].mtime.secs, -86400 * 365 * 10);
    assert_eq!(nodes[&b"dir/hardlink".to_vec()].id, small.id);
    assert!(nodes.len() > 30_000);
}

fn hex_uuid(s: &str) -> Vec<u8> {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    (0..16)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn ext4_reads_every_object_and_metadata_kind() {
    check("ext4", &[], 0x80000);
}

#[test]
fn ext3_with_indirect_blocks_reads_the_same() {
    check("ext3", &[], 0);
}

#[test]
fn ext4_with_bigalloc_reads_the_same() {
    // One group of 131,072 blocks: at most 32,768 inodes (a bit each in one bitmap block).
    check(
        "ext4",
        &["-O", "bigalloc", "-C", "16384", "-N", "32000"],
        0x80000,
    );
}

#[test]
fn ext2_reads_the_same() {
    check("ext2", &[], 0);
}

#[test]
fn ext4_without_the_filetype_feature_reads_the_same() {
    // Entries carry no type byte, and the metadata_csum tail's 0xDE stands where a 16-bit
    // name length's high byte would be.
    check("ext4", &["-O", "^filetype"], 0x80000);
}

#[test]
fn emptied_directory_blocks_of_64k_filesystems_read() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let d = src.join("d");
    std::fs::create_dir_all(&d).unwrap();
    // About 1,300 entries of 48 bytes fill a 64 KiB block: 4,000 make four blocks (and take
    // 4,000 blocks of 64 KiB for their contents).
    let name = |i: usize| format!("{i:0>40}");
    for i in 0..4000 {
        std::fs::write(d.join(name(i)), b"x").unwrap();
    }
    let img = dir.path().join("fs.img");
    run(Command::new("mke2fs")
        // Without metadata_csum: its 12-byte tail would end every block.
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "65536",
            "-O",
            "^metadata_csum",
            "-d",
        ])
        .arg(&src)
        .arg(&img)
        .arg("1G"));
    // Removing all but the first few (in the directory's order) empties whole blocks: the
    // first entry of each becomes a free record spanning the block, stored as 65535.
    let listing = Command::new("debugfs")
        .args(["-R", "ls -p d"])
        .arg(&img)
        .output()
        .unwrap();
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_owned))
        .filter(|n| n.len() == 40)
        .collect();
    assert_eq!(names.len(), 4000, "debugfs listed {} files", names.len());
    let (kept, removed) = names.split_at(5);
    let script: String = removed.iter().map(|n| format!("rm d/{n}\n")).collect();
    debugfs_script(dir.path(), &img, &script);
    assert_fsck_clean(&img);
    let source: Arc<dyn BlockSource> = Arc::from(image::open(&img).unwrap());
    let fs = Ext4::open(source.clone(), 0, source.len()).unwrap();
    let d_ino = child(&fs, fs.root(), b"d");
    let mut names: Vec<Vec<u8>> = fs
        .read_dir(d_ino)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    names.sort();
    let mut want: Vec<Vec<u8>> = kept.iter().map(|n| n.clone().into_bytes()).collect();
    want.sort();
    assert_eq!(names, want);
    // And the image goes in and comes back out as the same image (the removed files' bytes,
    // left in free blocks, are not kept).
    let store = Store::create(&dir.path().join("store")).unwrap();
    let (digest, _) = checkin(&store, &img, 2).unwrap();
    let out = dir.path().join("out.img");
    checkout(&store, &digest, &out, CheckoutOptions::default()).unwrap();
    assert_fsck_clean(&out);
    assert_eq!(checkin(&store, &out, 2).unwrap().0, digest);
}

#[test]
fn hostile_ext4_images_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), pseudo_random(1, 300_000)).unwrap();
    let img = dir.path().join("fs.img");
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("16M"));
    let good = std::fs::read(&img).unwrap();
    let open = |bytes: &[u8]| -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String> {
        let p: PathBuf = dir.path().join("bad.img");
        std::fs::write(&p, bytes).unwrap();
        let s: Arc<dyn BlockSource> = Arc::from(image::open(&p).unwrap());
        let fs = Ext4::open(s.clone(), 0, s.len()).map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        let mut stack = vec![(Vec::new(), fs.root())];
        while let Some((path, id)) = stack.pop() {
            for (name, child) in fs.read_dir(id).map_err(|e| e.to_string())? {
                let n = fs.node(child).map_err(|e| e.to_string())?;
                let mut p = path.clone();
                p.extend_from_slice(&name);
                if n.kind == EntryKind::Dir {
                    stack.push((p.clone(), child));
                } else {
                    fs.extents(child).map_err(|e| e.to_string())?;
                }
                out.insert(p, Vec::new());
            }
        }
        Ok(out)
    };
    assert!(open(&good).is_ok());
    // Superblock: absurd block size, then zero inodes per group.
    let mut b = good.clone();
    b[1024 + 0x18] = 40;
    assert!(
        open(&b).unwrap_err().contains("block size"),
        "{:?}",
        open(&b)
    );
    let mut b = good.clone();
    b[1024 + 0x28..1024 + 0x2C].fill(0);
    assert!(
        open(&b).unwrap_err().contains("per group"),
        "{:?}",
        open(&b)
    );
    // A first data block past the block count (found by the fuzzer: the group count
    // underflowed into a descriptor table of terabytes).
    let mut b = good.clone();
    b[1024 + 0x14..1024 + 0x18].copy_from_slice(&65535u32.to_le_bytes());
    assert!(
        open(&b).unwrap_err().contains("first data block"),
        "{:?}",
        open(&b)
    );
    // Truncated image.
    assert!(open(&good[..8192]).is_err());
    // Inode table entry, extent tree and directory block: damage every candidate block that
    // holds an extent header or directory entries, and require an error, never a panic.
    let mut hits = 0;
    let candidates: Vec<usize> = (0..good.len() / 4096)
        .filter(|b| good[b * 4096..b * 4096 + 4096].iter().any(|x| *x != 0))
        .take(400)
        .collect();
    for blk in candidates {
        let at = blk * 4096;
        let mut b = good.clone();
        b[at..at + 64].iter_mut().for_each(|x| *x ^= 0x5a);
        if let Err(e) = open(&b) {
            assert!(!e.is_empty());
            hits += 1;
        }
    }
    assert!(hits > 3, "damage was never detected ({hits})");
}

/// Runs `mke2fs -t ext4` with 1 KiB blocks and `args` on an 8 MiB `img`.
fn mke2fs(img: &Path, args: &[&str]) {
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "1024"])
        .args(args)
        .arg(img)
        .arg("8M"));
}

/// The inode number of `name` in directory `dir`.
fn child(fs: &dyn FsReader, dir: u64, name: &[u8]) -> u64 {
    let entries = fs.read_dir(dir).unwrap();
    entries.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn filesystems_with_what_the_reader_lacks_are_named_and_kept_raw() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("secret")).unwrap();
    std::fs::write(tree.join("secret/file"), pseudo_random(5, 7000)).unwrap();
    std::fs::write(tree.join("plain"), b"plain\n").unwrap();
    let tree_arg = tree.to_str().unwrap();
    let store = Store::create(&dir.path().join("store")).unwrap();
    // fscrypt and fs-verity as features alone change nothing the reader reads.
    for feature in ["encrypt", "verity"] {
        let img = dir.path().join(format!("{feature}-unused.img"));
        mke2fs(&img, &["-O", feature, "-d", tree_arg]);
        let (_, stats) = checkin(&store, &img, 2).unwrap();
        assert_eq!(
            (stats.filesystems, stats.kept_raw.len()),
            (1, 0),
            "{feature}"
        );
    }
    // An external journal device holds no files; an encrypted directory (fscrypt, as
    // `e4crypt set_policy` leaves it) and a verity file (its Merkle tree lies past its end)
    // hold what a file-by-file copy would lose.
    for (feature, flag_path, flag, named) in [
        ("journal_dev", "", 0, "incompatible feature journal_dev"),
        ("encrypt", "/secret", 0x800, "is encrypted (fscrypt)"),
        ("verity", "/secret/file", 0x10_0000, "has fs-verity enabled"),
    ] {
        let img = dir.path().join(format!("{feature}.img"));
        if feature == "journal_dev" {
            mke2fs(&img, &["-O", feature]);
        } else {
            mke2fs(&img, &["-O", feature, "-d", tree_arg]);
            run(Command::new("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(format!("sif {flag_path} flags {flag:#x}"))
                .arg(&img));
        }
        let s: Arc<dyn BlockSource> = Arc::from(image::open(&img).unwrap());
        let e = match Ext4::open(s.clone(), 0, s.len()) {
            Err(e) => e.to_string(),
            Ok(fs) => {
                let secret = child(&fs, fs.root(), b"secret");
                let ino = match flag_path {
                    "/secret" => secret,
                    _ => child(&fs, secret, b"file"),
                };
                fs.node(ino).err().unwrap().to_string()
            }
        };
        assert!(
            e.contains(named) && e.contains("unsupported"),
            "{feature}: {e}"
        );
        // Checked in byte for byte instead, and said so; checked out the same.
        let (d, stats) = checkin(&store, &img, 2).unwrap();
        assert_eq!(stats.filesystems, 0, "{feature}");
        assert_eq!(stats.kept_raw.len(), 1, "{feature}");
        assert_eq!(stats.kept_raw[0].partition, 1);
        assert!(stats.kept_raw[0].reason.contains(named), "{stats:?}");
        let out = dir.path().join(format!("{feature}.out"));
        checkout(&store, &d, &out, CheckoutOptions::default()).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap(),
            "{feature}"
        );
    }
}

/// The root tree of the first filesystem of `image`.
fn fs_root(store: &Store, image: &Digest) -> Digest {
    let get = |d: &Digest| Item::decode(&store.get(d).unwrap().unwrap()).unwrap();
    let Item::Image(i) = get(image) else { panic!() };
    let Item::Disk(disk) = get(&i.disks[0].disk) else {
        panic!()
    };
    let PartitionContent::Filesystem { digest } = &disk.partitions[0].content else {
        panic!("{:?}", disk.partitions)
    };
    let Item::Filesystem(fs) = get(digest) else {
        panic!()
    };
    fs.root
}

#[test]
fn sparse_files_cost_their_data_not_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    // A terabyte with three pieces of data, and a file whose last 3 MiB are a hole.
    let huge = std::fs::File::create(tree.join("huge")).unwrap();
    huge.set_len(1 << 40).unwrap();
    for (at, seed) in [(0u64, 1u64), (1 << 39, 2), ((1 << 40) - 5000, 3)] {
        std::os::unix::fs::FileExt::write_all_at(&huge, &pseudo_random(seed, 70_000)[..5000], at)
            .unwrap();
    }
    let tail = std::fs::File::create(tree.join("tail")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&tail, &pseudo_random(4, 200_000), 0).unwrap();
    tail.set_len(200_000 + (3 << 20)).unwrap();
    drop((huge, tail));
    let img = dir.path().join("sparse.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("64M"));
    let store = Arc::new(Store::create(&dir.path().join("store")).unwrap());
    // Reading the terabyte's holes would take many minutes; a minute is plenty for its data
    // (even twice: the second checkin, with hints on, must not read them either).
    let (tx, rx) = std::sync::mpsc::channel();
    let (s, i) = (store.clone(), img.clone());
    std::thread::spawn(move || {
        let first = checkin(&s, &i, 2);
        let again = checkin(&s, &i, 2);
        let _ = tx.send((first, again));
    });
    let (first, again) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a sparse file's holes were read");
    let (d, stats) = first.unwrap();
    assert_eq!(again.unwrap().0, d);
    assert_eq!(stats.file_bytes, (1 << 40) + 200_000 + (3 << 20));
    // Laid out byte for byte; rebuilt with the same files, holes and all.
    let out = dir.path().join("out.img");
    checkout(&store, &d, &out, CheckoutOptions::default()).unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap());
    let rebuilt = dir.path().join("rebuilt.img");
    let opts = CheckoutOptions {
        rebuild: true,
        ..Default::default()
    };
    checkout(&store, &d, &rebuilt, opts).unwrap();
    let (r, _) = checkin(&store, &rebuilt, 2).unwrap();
    assert_eq!(fs_root(&store, &r), fs_root(&store, &d));
    assert_fsck_clean(&rebuilt);
}

/// `e2fsck -fn` finds nothing to say about the filesystem image `img`.
#[test]
fn bytes_past_a_filesystem_in_its_partition_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), pseudo_random(9, 10_000)).unwrap();
    let store = Store::create(&dir.path().join("store")).unwrap();
    // A 20 MiB partition holding a 16 MiB filesystem; the tail is zeros, then (as an md RAID
    // 1.0 member keeps its superblock) holds a marker 8 KiB before the partition's end.
    let (start, size) = (1u64 << 20, 20u64 << 20);
    let mut digests = Vec::new();
    for marked in [false, true] {
        let img = dir.path().join(format!("tail-{marked}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        mirage_client::demo::sfdisk(&img, "label: gpt\nstart=2048, size=40960, type=L\n").unwrap();
        run(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-E"])
            .arg(format!("offset={start}"))
            .arg("-d")
            .arg(&tree)
            .arg(&img)
            .arg("16M"));
        if marked {
            let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, b"md superblock", start + size - 8192)
                .unwrap();
        }
        let (d, stats) = checkin(&store, &img, 2).unwrap();
        assert_eq!(stats.filesystems, 1);
        let out = dir.path().join(format!("tail-{marked}.out"));
        checkout(&store, &d, &out, CheckoutOptions::default()).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap(),
            "{marked}"
        );
        let rebuilt = dir.path().join(format!("tail-{marked}.rebuilt"));
        let opts = CheckoutOptions {
            rebuild: true,
            ..Default::default()
        };
        checkout(&store, &d, &rebuilt, opts).unwrap();
        let tail = |p: &Path| {
            std::fs::read(p).unwrap()[(start + (16 << 20)) as usize..][..(4 << 20)].to_vec()
        };
        assert_eq!(tail(&rebuilt), tail(&img), "{marked}");
        digests.push(d);
    }
    // An all-zero tail is no region of its own: the disk is described as before.
    let Item::Image(a) = Item::decode(&store.get(&digests[0]).unwrap().unwrap()).unwrap() else {
        panic!()
    };
    let Item::Disk(disk) = Item::decode(&store.get(&a.disks[0].disk).unwrap().unwrap()).unwrap()
    else {
        panic!()
    };
    assert!(disk
        .regions
        .iter()
        .all(|r| r.offset + r.len <= start || r.offset >= start + size));
}

#[test]
fn a_rebuild_gives_files_blocks_where_the_source_had_them() {
    use mirage_client::fs::FileExtent;
    for (t, features) in [
        ("ext4", "^inline_data"),
        ("ext3", "^dir_index"),
        ("ext4", "inline_data"),
    ] {
        let inline = features == "inline_data";
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        // `pre` is preallocated; `sparse` has data at both ends, a preallocated MiB and holes
        // around it; `swap` is a header and preallocated zeros (swapon refuses holes).
        std::fs::File::create(tree.join("pre"))
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        let sparse = std::fs::File::create(tree.join("sparse")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"abc", 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"xyz", 3 << 20).unwrap();
        let swap = std::fs::File::create(tree.join("swap")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&swap, &pseudo_random(5, 4096), 0).unwrap();
        swap.set_len(8 << 20).unwrap();
        drop((sparse, swap));
        let img = dir.path().join("src.img");
        run(Command::new("mke2fs")
            .args(["-q", "-F", "-t", t, "-b", "1024", "-O", features, "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("32M"));
        // mke2fs -d writes no block of zeros; debugfs allocates them (unwritten on ext4,
        // written zeros on ext3). With inline_data it also cuts a file that ends in a hole
        // to what it wrote: the sizes are set again.
        for cmd in [
            "sif /pre size 2097152",
            "sif /sparse size 3145731",
            "sif /swap size 8388608",
            "fallocate /pre 0 2047",
            "fallocate /sparse 1024 2047",
            "fallocate /swap 4 8191",
        ] {
            run(Command::new("debugfs").args(["-w", "-R", cmd]).arg(&img));
        }
        // Size, holes and content of each file.
        let files = |img: &Path| {
            let src: Arc<dyn BlockSource> = Arc::from(image::open(img).unwrap());
            let len = src.len();
            let fs = Ext4::open(src.clone(), 0, len).unwrap();
            ["pre", "sparse", "swap"].map(|name| {
                let node = fs.node(child(&fs, fs.root(), name.as_bytes())).unwrap();
                let holes = match fs.inline_data(node.id).unwrap() {
                    Some(_) => vec![(0, node.size)],
                    None => FileExtent::holes(&fs.extents(node.id).unwrap(), node.size),
                };
                (node.size, holes, content(&fs, src.as_ref(), &node))
            })
        };
        let want = files(&img);
        assert_eq!(
            want.each_ref().map(|f| f.0),
            [2 << 20, (3 << 20) + 3, 8 << 20]
        );
        // (An all-zero file that mke2fs -d left inline cannot be given blocks by debugfs.)
        assert!(want[0].1.is_empty() || inline, "{t}: {:?}", want[0].1);
        assert!(want[2].1.is_empty(), "{t}: {:?}", want[2].1);
        assert_eq!(want[1].1.len(), 2, "{t}: {:?}", want[1].1);
        let store = Store::create(&dir.path().join("store")).unwrap();
        let (d, _) = checkin(&store, &img, 2).unwrap();
        let out = dir.path().join("rebuilt.img");
        let opts = CheckoutOptions {
            rebuild: true,
            ..Default::default()
        };
        checkout(&store, &d, &out, opts).unwrap();
        assert_fsck_clean(&out);
        let got = files(&out);
        if inline {
            // mke2fs -d leaves an all-zero file inline (no blocks to give) and writes a
            // block of zeros where it turns an inline file into extents: only the swap file
            // is held to its blocks here, and every file to its size and content.
            assert_eq!(got[2], want[2], "{t} {features}: the swap file");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((g.0, &g.2), (w.0, &w.2), "{t} {features}");
            }
        } else {
            assert_eq!(got, want, "{t} {features}");
            let (again, _) = checkin(&store, &out, 2).unwrap();
            assert_eq!(fs_root(&store, &again), fs_root(&store, &d), "{t}");
        }
    }
}
