#![allow(clippy::unwrap_used)]
//! FAT filesystems as they are found, not as mkfs.fat makes them by default: one that has
//! lived a while (files and directories whose cluster chains are scattered between the
//! clusters of other files, deleted entries in its directories), and a FAT32 of few clusters.
//! Built with mtools (no mounts, no root), checked in, laid out and rebuilt with every file
//! intact.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{mirage, ok, run};
use mirage_client::demo::pseudo_random;

fn mtool(tool: &str, img: &Path) -> Command {
    let mut c = Command::new(tool);
    c.env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .arg("-i")
        .arg(img);
    c
}

/// The runs of clusters `mshowfat` gives for `path` (`<2-5> <10-13>`: two).
fn runs(img: &Path, path: &str) -> usize {
    let out = mtool("mshowfat", img).arg(path).output().unwrap();
    assert!(out.status.success(), "mshowfat {path}");
    String::from_utf8_lossy(&out.stdout).matches('<').count()
}

fn content(img: &Path, path: &str) -> Vec<u8> {
    let out = mtool("mcopy", img)
        .args(["-n", path, "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "mcopy {path}: {:?}", out);
    out.stdout
}

/// Names in a directory, from `mdir -b` (bare paths).
fn names(img: &Path, dir: &str) -> BTreeSet<String> {
    let out = mtool("mdir", img).args(["-b", dir]).output().unwrap();
    assert!(out.status.success(), "mdir {dir}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect()
}

/// A scratch directory: an image path named `name`, a source directory for mcopy (created)
/// and a store path.
fn scratch(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (img, src, store) = (
        dir.path().join(name),
        dir.path().join("src"),
        dir.path().join("store"),
    );
    std::fs::create_dir_all(&src).unwrap();
    (dir, img, src, store)
}

/// `mkfs.fat -C ARGS IMG KIB`: a new image file holding a FAT filesystem.
fn mkfs_fat(img: &Path, args: &[&str], kib: &str) {
    run(Command::new("mkfs.fat")
        .arg("-C")
        .args(args)
        .arg(img)
        .arg(kib));
}

/// `mirage checkout DIGEST --rebuild -o OUT`.
fn rebuild(store: &Path, digest: &str, out: &Path) -> std::process::Output {
    mirage(
        store,
        &["checkout", digest, "--rebuild", "-o", out.to_str().unwrap()],
    )
}

/// Checks `img` in; its digest.
fn checkin(store: &Path, img: &Path) -> String {
    ok(mirage(store, &["checkin", img.to_str().unwrap()]))
        .trim()
        .to_string()
}

#[test]
fn fragmented_files_and_directories_round_trip() {
    let (dir, img, src, store) = scratch("fat.img");
    mkfs_fat(&img, &["-F", "16", "-n", "FRAG"], "16384");
    // Sixty files, every other one deleted: the clusters free for what comes next are gaps.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut copy = mtool("mcopy", &img);
    for i in 1..=60u64 {
        let p = src.join(format!("a{i}.bin"));
        std::fs::write(&p, pseudo_random(i, 8192)).unwrap();
        copy.arg(p);
    }
    run(copy.arg("::/"));
    let mut del = mtool("mdel", &img);
    for i in (1..=60).step_by(2) {
        del.arg(format!("::/a{i}.bin"));
    }
    run(&mut del);
    for i in (2..=60u64).step_by(2) {
        files.push((format!("::/a{i}.bin"), pseudo_random(i, 8192)));
    }
    let big = pseudo_random(1000, 300_000);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    run(mtool("mcopy", &img).arg(src.join("big.bin")).arg("::/"));
    files.push(("::/big.bin".into(), big));
    // A directory that outgrows its first cluster after the gaps are taken, with entries
    // deleted in the middle.
    run(mtool("mmd", &img).arg("::/d"));
    let mut copy = mtool("mcopy", &img);
    for i in 1..=150u64 {
        let p = src.join(format!("name_number_{i}.txt"));
        std::fs::write(&p, format!("file {i}\n")).unwrap();
        copy.arg(p);
    }
    run(copy.arg("::/d/"));
    let mut del = mtool("mdel", &img);
    let deleted: BTreeSet<u64> = (5..=150).step_by(7).collect();
    for i in &deleted {
        del.arg(format!("::/d/name_number_{i}.txt"));
    }
    run(&mut del);
    let mut in_d = BTreeSet::new();
    for i in (1..=150u64).filter(|i| !deleted.contains(i)) {
        files.push((
            format!("::/d/name_number_{i}.txt"),
            format!("file {i}\n").into_bytes(),
        ));
        in_d.insert(format!("name_number_{i}.txt"));
    }
    // What this test is about: chains in many pieces.
    assert!(runs(&img, "::/big.bin") >= 10, "big.bin is not fragmented");
    assert!(runs(&img, "::/d") >= 2, "d is not fragmented");

    let digest = checkin(&store, &img);
    for (how, extra) in [("layout", None), ("rebuild", Some("--rebuild"))] {
        let out = dir.path().join(format!("{how}.img"));
        let mut args = vec!["checkout", &digest, "-o", out.to_str().unwrap()];
        args.extend(extra);
        ok(mirage(&store, &args));
        run(Command::new("fsck.vfat").arg("-n").arg(&out));
        for (path, want) in &files {
            assert!(content(&out, path) == *want, "{how}: {path} differs");
        }
        assert_eq!(names(&out, "::/d"), in_d, "{how}: the names in d");
        let again = ok(mirage(&store, &["checkin", out.to_str().unwrap()]));
        if how == "layout" {
            // Laid out, the filesystem is the one checked in, deleted entries and all (the
            // content of freed clusters aside).
            assert_eq!(
                again.trim(),
                digest,
                "the layout re-checks in to another image"
            );
        }
        let diff = ok(mirage(&store, &["diff", &digest, again.trim()]));
        assert!(
            diff.contains("0 added, 0 deleted, 0 modified, 0 metadata only"),
            "{how}: {diff}"
        );
    }
}

/// Bytes of the image at `at`, little-endian, `n` of them.
fn le(img: &[u8], at: usize, n: usize) -> u64 {
    img[at..at + n]
        .iter()
        .rev()
        .fold(0, |v, b| (v << 8) | u64::from(*b))
}

/// A FAT32 volume of fewer than the 65,525 clusters the specification asks of FAT32, which
/// `mkfs.fat -F 32` makes for small volumes and 4 KiB-sector disks often hold: Linux and
/// dosfstools take the type from the boot sector (a 16-bit FAT size of 0), and so does the
/// reader. It was kept as raw bytes before, without a word. mtools cannot write to such a
/// volume (it reads it as FAT16), so this one is made with enough clusters, filled, and then cut to 60,000 clusters
/// as a smaller mkfs.fat would have made it (total sectors, free count).
#[test]
fn a_fat32_of_few_clusters_is_read_as_fat32() {
    let dir = tempfile::tempdir().unwrap();
    let (img, src, store) = (
        dir.path().join("small32.img"),
        dir.path().join("src"),
        dir.path().join("store"),
    );
    std::fs::create_dir_all(src.join("sub")).unwrap();
    mkfs_fat(&img, &["-F", "32", "-s", "1", "-n", "SMALL32"], "40960");
    let big = pseudo_random(7, 200_000);
    std::fs::write(src.join("hello.txt"), b"hello\n").unwrap();
    std::fs::write(src.join("sub").join("A long file name.bin"), &big).unwrap();
    run(mtool("mcopy", &img)
        .arg("-s")
        .arg(src.join("hello.txt"))
        .arg(src.join("sub"))
        .arg("::/"));
    let mut bytes = std::fs::read(&img).unwrap();
    let (bps, spc) = (le(&bytes, 11, 2), le(&bytes, 13, 1));
    let meta = le(&bytes, 14, 2) + le(&bytes, 16, 1) * le(&bytes, 36, 4);
    let clusters = (le(&bytes, 32, 4) - meta) / spc;
    assert!(clusters >= 65_525, "mkfs.fat made {clusters} clusters");
    let fewer = 60_000;
    let total = (meta + fewer * spc) as u32;
    let (fsinfo, backup) = (le(&bytes, 48, 2), le(&bytes, 50, 2));
    let free_at = (fsinfo * bps + 488) as usize;
    let free = (le(&bytes, free_at, 4) - (clusters - fewer)) as u32;
    for boot in [0, backup] {
        let at = (boot * bps) as usize;
        bytes[at + 32..at + 36].copy_from_slice(&total.to_le_bytes());
        let info = at + (fsinfo * bps) as usize + 488;
        bytes[info..info + 4].copy_from_slice(&free.to_le_bytes());
    }
    bytes.truncate((u64::from(total) * bps) as usize);
    std::fs::write(&img, &bytes).unwrap();
    // dosfstools takes it as it is (with a warning on stderr).
    run(Command::new("fsck.vfat").arg("-n").arg(&img));

    let digest = checkin(&store, &img);
    let show = ok(mirage(&store, &["show", &digest]));
    assert!(show.contains("vfat") && show.contains("SMALL32"), "{show}");
    let ls = ok(mirage(&store, &["ls", &digest, "/sub"]));
    assert!(ls.contains("A long file name.bin"), "{ls}");
    let out = dir.path().join("layout.img");
    ok(mirage(
        &store,
        &["checkout", &digest, "-o", out.to_str().unwrap()],
    ));
    assert!(std::fs::read(&out).unwrap() == bytes, "the layout differs");
    // mtools takes the type from the cluster count (and finds no files), so the content is
    // read back through the store.
    let cat = mirage(&store, &["cat", &digest, "/sub/A long file name.bin"]);
    assert!(cat.status.success() && cat.stdout == big);
    // mtools cannot write it: a rebuild says so, and leaves nothing behind.
    let rebuilt = dir.path().join("rebuilt.img");
    let o = rebuild(&store, &digest, &rebuilt);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("fewer than the 65,525"),
        "{msg}"
    );
    assert!(!rebuilt.exists());
}

/// A FAT of 4 KiB sectors in a partition at 1 MiB (as on a 4Kn disk): mkfs.fat counts its
/// `--offset` in the volume's own sectors, so a rebuild that gave it 512-byte units wrote the
/// volume at 8 MiB and failed in mcopy ("non DOS media").
#[test]
fn a_fat_of_4k_sectors_is_rebuilt_at_its_place() {
    let (dir, img, src, store) = scratch("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(80 << 20)
        .unwrap();
    mirage_client::demo::sfdisk(
        &img,
        "label: gpt\nstart=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
    )
    .unwrap();
    run(Command::new("mkfs.fat")
        .args(["-F", "16", "-S", "4096", "-n", "ESP4K", "--offset", "256"])
        .arg(&img)
        .arg("65536"));
    let spec = format!("{}@@1048576", img.display());
    let big = pseudo_random(9, 100_000);
    std::fs::write(src.join("Boot loader.efi"), &big).unwrap();
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &spec])
        .arg(src.join("Boot loader.efi"))
        .arg("::/"));
    let digest = checkin(&store, &img);
    let show = ok(mirage(&store, &["show", &digest]));
    assert!(show.contains("vfat") && show.contains("ESP4K"), "{show}");
    let out = dir.path().join("rebuilt.img");
    ok(rebuild(&store, &digest, &out));
    // The volume is where the partition is, and only there.
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[(1 << 20) + 3..(1 << 20) + 11], b"mkfs.fat");
    let part = dir.path().join("part.img");
    std::fs::write(&part, &bytes[1 << 20..(1 << 20) + (64 << 20)]).unwrap();
    run(Command::new("fsck.vfat").arg("-n").arg(&part));
    assert!(content(&part, "::/Boot loader.efi") == big);
    let again = ok(mirage(&store, &["checkin", out.to_str().unwrap()]));
    let diff = ok(mirage(&store, &["diff", &digest, again.trim()]));
    assert!(
        diff.contains("0 added, 0 deleted, 0 modified, 0 metadata only"),
        "{diff}"
    );
}

/// Files whose cluster chains are longer than their sizes need, as a truncate that did not
/// free the rest leaves them (a crash, some firmware): one of 10,000 bytes whose entry says
/// 3,000, and one whose entry says 0 but keeps its first cluster. Linux reads them to their
/// sizes, fsck.fat would truncate the chains; the checkin failed ("'f0' is empty but starts
/// at cluster 7"). Now they read as Linux reads them, the layout keeps the chains, and a
/// rebuild makes them clean.
#[test]
fn chains_longer_than_their_files_read_to_the_size() {
    let (dir, img, src, store) = scratch("long.img");
    mkfs_fat(&img, &["-F", "16", "-n", "LONG"], "16384");
    let data = pseudo_random(11, 10_000);
    std::fs::write(src.join("cut.bin"), &data).unwrap();
    std::fs::write(src.join("empty.bin"), b"was not empty\n").unwrap();
    run(mtool("mcopy", &img)
        .arg(src.join("cut.bin"))
        .arg(src.join("empty.bin"))
        .arg("::/"));
    let mut bytes = std::fs::read(&img).unwrap();
    let bps = le(&bytes, 11, 2);
    let root = ((le(&bytes, 14, 2) + le(&bytes, 16, 1) * le(&bytes, 22, 2)) * bps) as usize;
    let mut patched = 0;
    for e in (root..root + 32 * 16).step_by(32) {
        let size: u32 = match &bytes[e..e + 11] {
            b"CUT     BIN" => 3000,
            b"EMPTY   BIN" => 0,
            _ => continue,
        };
        bytes[e + 28..e + 32].copy_from_slice(&size.to_le_bytes());
        patched += 1;
    }
    assert_eq!(patched, 2);
    std::fs::write(&img, &bytes).unwrap();

    let digest = checkin(&store, &img);
    let cat = |path: &str| mirage(&store, &["cat", &digest, path]).stdout;
    assert!(cat("/cut.bin") == data[..3000]);
    assert!(cat("/empty.bin").is_empty());
    let out = dir.path().join("layout.img");
    ok(mirage(
        &store,
        &["checkout", &digest, "-o", out.to_str().unwrap()],
    ));
    // The same filesystem, chains and all; only the bytes of cut.bin's last cluster past its
    // size are not kept (the old content there, zeros in the copy), as for any file.
    let again = ok(mirage(&store, &["checkin", out.to_str().unwrap()]));
    assert_eq!(again.trim(), digest);
    let laid = std::fs::read(&out).unwrap();
    let differ: Vec<usize> = (0..bytes.len()).filter(|&i| laid[i] != bytes[i]).collect();
    let cluster = (bps * le(&bytes, 13, 1)) as usize;
    assert!(
        differ.is_empty() || differ[differ.len() - 1] - differ[0] < cluster,
        "{} bytes differ from {:?} to {:?}",
        differ.len(),
        differ.first(),
        differ.last()
    );
    let rebuilt = dir.path().join("rebuilt.img");
    ok(rebuild(&store, &digest, &rebuilt));
    run(Command::new("fsck.vfat").arg("-n").arg(&rebuilt));
    assert!(content(&rebuilt, "::/cut.bin") == data[..3000]);
    assert!(content(&rebuilt, "::/empty.bin").is_empty());
}
