//! Filesystems imaged while mounted: after the journal replay, the orphans (files deleted while
//! open, truncates cut short) are released as a mount would, so the checkout is `e2fsck -fn`
//! clean.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;

use mirage_client::checkout::{checkout, CheckoutOptions};
use mirage_client::demo::pseudo_random;
use mirage_client::fs::ext4::Ext4;
use mirage_client::fs::FsReader;
use mirage_client::image::{self, BlockSource};
use mirage_client::indexer::checkin;
use mirage_node::Store;

mod common;
use common::{assert_fsck_clean, debugfs_script, is_root, run};

#[test]
fn files_deleted_while_open_are_released_as_a_mount_would() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for a loop mount");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("store")).unwrap();
    // The orphans named by the orphan list, or by the orphan file (`orphan_file`, whose
    // `orphan_present` flag stays set while mounted even once the file is empty again).
    // `frozen`: copied under `fsfreeze`, as a snapshot is taken: the journal is clean then,
    // and the orphans are still there.
    for (n, (t, bs, features, keep_open, frozen)) in [
        ("ext4", "4096", "^orphan_file", true, false),
        ("ext4", "1024", "^orphan_file", true, false),
        ("ext3", "4096", "^orphan_file", true, false),
        ("ext4", "4096", "orphan_file", true, false),
        ("ext4", "1024", "orphan_file", false, false),
        ("ext4", "4096", "bigalloc", true, false),
        ("ext4", "4096", "^orphan_file", true, true),
        ("ext4", "4096", "orphan_file", true, true),
    ]
    .into_iter()
    .enumerate()
    {
        let img = dir.path().join(format!("live-{n}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        run(Command::new("mke2fs")
            .args(["-q", "-F", "-t", t, "-b", bs, "-O", features])
            .arg(&img));
        let mnt = dir.path().join(format!("mnt-{n}"));
        std::fs::create_dir(&mnt).unwrap();
        run(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&img)
            .arg(&mnt));
        // Copied while mounted, with two files deleted and still open: the image needs
        // recovery and its orphan list names them.
        let snap = dir.path().join(format!("snap-{n}.img"));
        let copied = (|| -> std::io::Result<()> {
            // Xattrs too large for the inode live in a block, shared by files with the same
            // set: A by `keep` and two deleted files (one reference stays), B by one deleted
            // file only (freed).
            let big = |seed| pseudo_random(seed, 700);
            let setx = |name: &str, v: &[u8]| {
                rustix::fs::setxattr(
                    mnt.join(name),
                    "user.big",
                    v,
                    rustix::fs::XattrFlags::empty(),
                )
            };
            std::fs::write(mnt.join("keep"), pseudo_random(1, 200_000))?;
            setx("keep", &big(7))?;
            let mut held = Vec::new();
            for (name, len, x) in [
                ("held", 3_000_000, Some(7)),
                ("small", 100, None),
                ("shares", 10, Some(7)),
                ("alone", 10, Some(8)),
            ] {
                std::fs::write(mnt.join(name), pseudo_random(2, len))?;
                if let Some(seed) = x {
                    setx(name, &big(seed))?;
                }
                held.push(std::fs::File::open(mnt.join(name))?);
                std::fs::remove_file(mnt.join(name))?;
            }
            if !keep_open {
                held.clear();
            }
            std::fs::write(mnt.join("new"), b"after\n")?;
            run(&mut Command::new("sync"));
            if frozen {
                run(Command::new("fsfreeze").arg("-f").arg(&mnt));
            }
            let copy = std::fs::copy(&img, &snap);
            if frozen {
                run(Command::new("fsfreeze").arg("-u").arg(&mnt));
            }
            copy.map(|_| ())
        })();
        run(Command::new("umount").arg(&mnt));
        copied.unwrap();
        let raw = std::fs::read(&snap).unwrap();
        assert_eq!(
            le32_at(&raw, 1024 + 0x60) & 4 != 0,
            !frozen,
            "the copy needs recovery unless frozen"
        );
        if features == "orphan_file" {
            assert!(
                le32_at(&raw, 1024 + 0x64) & 0x1_0000 != 0,
                "the copy has no orphan_present"
            );
        }
        let (d, _) = checkin(&store, &snap, 2).unwrap();
        let out = dir.path().join(format!("out-{n}.img"));
        checkout(&store, &d, &out, CheckoutOptions::default()).unwrap();
        assert_fsck_clean(&out);
        let s: Arc<dyn BlockSource> = Arc::from(image::open(&out).unwrap());
        let fs = Ext4::open(s, 0, 64 << 20).unwrap();
        let mut names: Vec<Vec<u8>> = fs.read_dir(2).unwrap().into_iter().map(|e| e.0).collect();
        names.sort();
        assert_eq!(
            names,
            [&b"keep"[..], b"lost+found", b"new"],
            "{t} {bs} {features} frozen: {frozen}"
        );
    }
}

fn le32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn truncates_cut_short_are_finished_as_a_mount_would() {
    // `big` is cut to `cut` bytes: inside its one extent, or on ext3 inside its block map
    // (single indirect kept and cut, double indirect freed with everything under it), or to
    // nothing (`copytruncate`).
    // `held`: the blocks it keeps (on ext3 with 1 KiB blocks, 98 and the indirect block that
    // maps the 86 past the 12 direct ones).
    for (t, bs, cut, held) in [
        ("ext4", "1024", 100_000u64, 98),
        ("ext4", "4096", 100_000, 25),
        ("ext3", "1024", 0, 0),
        ("ext3", "1024", 100_000, 99),
    ] {
        let ext4 = t == "ext4";
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("big"), pseudo_random(1, 3_000_000)).unwrap();
        std::fs::write(tree.join("gone"), pseudo_random(2, 50_000)).unwrap();
        std::fs::write(tree.join("keep"), b"k\n").unwrap();
        if ext4 {
            std::fs::write(tree.join("pre"), b"p").unwrap();
            std::fs::write(tree.join("log"), b"l").unwrap();
            std::fs::write(tree.join("frag"), b"f").unwrap();
        }
        let img = dir.path().join("t.img");
        run(Command::new("mke2fs")
            .args(["-q", "-F", "-t", t, "-b", bs, "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("64M"));
        let src: Arc<dyn BlockSource> = Arc::from(image::open(&img).unwrap());
        let inos: std::collections::HashMap<Vec<u8>, u64> = Ext4::open(src, 0, 64 << 20)
            .unwrap()
            .read_dir(2)
            .unwrap()
            .into_iter()
            .collect();
        let ino = |name: &str| inos[name.as_bytes()];
        // As a copy taken in the middle of truncates and a delete: `big` cut with its blocks
        // still held (and, on ext4, preallocated blocks past them); `pre` preallocated and
        // cut inside that extent; `log` in five pieces (an extent tree with a leaf block) cut
        // to nothing; `frag` in 101 pieces (two leaves with 1 KiB blocks) cut after its
        // 31st; `gone` deleted while open. All on the orphan list (each dtime naming the
        // next), the journal to be recovered.
        let block = bs.parse::<u64>().unwrap();
        // (name, size, blocks held after the cut)
        let mut cut_short = vec![("big", cut, held)];
        let mut script = String::new();
        if ext4 {
            script.push_str("fallocate /big 3000 3100\nfallocate /pre 0 199\n");
            for piece in 0..5 {
                script.push_str(&format!(
                    "fallocate /log {} {}\n",
                    20 * piece + 1,
                    20 * piece + 9
                ));
            }
            for piece in 0..100 {
                script.push_str(&format!("fallocate /frag {0} {0}\n", 2 * piece + 1));
            }
            // frag keeps blocks 0, 1, 3, ..., 59 and its one leaf.
            cut_short.extend([
                ("pre", 51_300, 51_300u64.div_ceil(block)),
                ("log", 0, 0),
                ("frag", 61 * block, 32),
            ]);
        }
        let mut last = ino("gone");
        for (name, size, _) in &cut_short {
            script.push_str(&format!(
                "sif /{name} size {size}\nsif /{name} dtime {last}\n"
            ));
            last = ino(name);
        }
        script.push_str(&format!(
            "unlink /gone\nsif <{}> links_count 0\nssv last_orphan {last}\nfeature needs_recovery\n",
            ino("gone")
        ));
        debugfs_script(dir.path(), &img, &script);
        let store = Store::create(&dir.path().join("store")).unwrap();
        let (d, _) = checkin(&store, &img, 2).unwrap();
        let out = dir.path().join("out.img");
        checkout(&store, &d, &out, CheckoutOptions::default()).unwrap();
        assert_fsck_clean(&out);
        let s: Arc<dyn BlockSource> = Arc::from(image::open(&out).unwrap());
        let fs = Ext4::open(s, 0, 64 << 20).unwrap();
        let mut names = Vec::new();
        for (name, ino) in fs.read_dir(2).unwrap() {
            let name = String::from_utf8(name).unwrap();
            names.push(name.clone());
            let Some(&(_, size, held)) = cut_short.iter().find(|(n, _, _)| *n == name) else {
                continue;
            };
            // The blocks it holds (e2fsck has checked them against its map).
            let inode = fs.inode(ino as u32).unwrap();
            assert_eq!(inode.size, size);
            assert_eq!(inode.blocks, held * block / 512, "{t} {bs}: {name}");
        }
        names.sort();
        let mut want: Vec<&str> = vec!["big", "keep", "lost+found"];
        if ext4 {
            want.extend(["frag", "log", "pre"]);
        }
        want.sort();
        assert_eq!(names, want);
    }
}
