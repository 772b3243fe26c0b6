#![allow(clippy::unwrap_used)]
//! A FAT filesystem that has lived a while: files and directories whose cluster chains are
//! scattered between the clusters of other files, and deleted entries in its directories
//! (built with mtools: no mounts, no root). Checked in, laid out and rebuilt with every file
//! intact.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
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

#[test]
fn fragmented_files_and_directories_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (img, src, store) = (
        dir.path().join("fat.img"),
        dir.path().join("src"),
        dir.path().join("store"),
    );
    std::fs::create_dir(&src).unwrap();
    run(Command::new("mkfs.fat")
        .args(["-C", "-F", "16", "-n", "FRAG"])
        .arg(&img)
        .arg("16384"));
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

    let digest = ok(mirage(&store, &["checkin", img.to_str().unwrap()]))
        .trim()
        .to_string();
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
