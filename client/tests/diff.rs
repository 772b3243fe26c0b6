//! `mirage diff`: every kind of change is reported once, and unchanged subtrees are skipped.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use mirage_client::diff::{diff_images, ChangeKind, DiffOptions};
use mirage_client::indexer::checkin;
use mirage_node::Store;

fn debugfs(img: &Path, cmds: &str) -> String {
    let f = img.with_extension("cmds");
    std::fs::write(&f, cmds).unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&f)
        .arg(format!("{}?offset={}", img.display(), 69632 * 512))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file()
                && m.len() > 8192
                && std::os::unix::fs::MetadataExt::nlink(&m) == 1
            {
                out.push(format!("/{}", p.strip_prefix(root).unwrap().display()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn diff_reports_each_change_and_skips_unchanged_subtrees() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let gen = mirage_client::demo::generate(&tree, 6, 1).unwrap();
    let a = dir.path().join("a.img");
    mirage_client::demo::build_disk_image(&tree, &a, gen.bytes).unwrap();
    let list = files(&tree);
    let (edited, chmodded, removed) = (&list[0], &list[1], &list[2]);
    let b = dir.path().join("b.img");
    std::fs::copy(&a, &b).unwrap();
    // Content changed behind the filesystem's back (no metadata change), a mode change, a
    // deletion and a new file (debugfs leaves the directories' times alone).
    let blocks = debugfs(&b, &format!("blocks {edited}\n"));
    let first: u64 = blocks
        .lines()
        .filter(|l| !l.starts_with("debugfs"))
        .flat_map(|l| l.split_whitespace())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
    f.write_all_at(b"EDITED", 69632 * 512 + first * 4096)
        .unwrap();
    drop(f);
    let new = dir.path().join("new.txt");
    std::fs::write(&new, b"new\n").unwrap();
    debugfs(
        &b,
        &format!(
            "sif {chmodded} mode 0100600\nrm {removed}\nwrite {} /new.txt\n",
            new.display()
        ),
    );
    let store = Store::create(&dir.path().join("store")).unwrap();
    let (da, _) = checkin(&store, &a, 2).unwrap();
    let (db, _) = checkin(&store, &b, 2).unwrap();
    let diffs = diff_images(&store, &da, &db, DiffOptions::default()).unwrap();
    let root_fs = diffs.iter().find(|d| d.partition == 3).unwrap();
    let got: Vec<(ChangeKind, String)> = root_fs
        .changes
        .iter()
        .map(|c| (c.change, c.path.clone()))
        .collect();
    let mut want = vec![
        (ChangeKind::Added, "/new.txt".to_string()),
        (ChangeKind::Modified, edited.clone()),
        (ChangeKind::Metadata, chmodded.clone()),
        (ChangeKind::Deleted, removed.clone()),
    ];
    want.sort_by(|x, y| x.1.cmp(&y.1));
    let mut got_sorted = got.clone();
    got_sorted.sort_by(|x, y| x.1.cmp(&y.1));
    got_sorted.dedup();
    assert_eq!(got_sorted, want, "{got:#?}");
    let edit = root_fs.changes.iter().find(|c| &c.path == edited).unwrap();
    assert_eq!(edit.fields, vec!["content"]);
    let chmod = root_fs
        .changes
        .iter()
        .find(|c| &c.path == chmodded)
        .unwrap();
    assert_eq!(chmod.fields, vec!["mode"]);
    // Only the directories on the changed paths were read.
    let depth = |p: &str| p.matches('/').count() as u64;
    let bound: u64 = [edited, chmodded, removed]
        .iter()
        .map(|p| depth(p))
        .sum::<u64>()
        + 1;
    assert!(
        root_fs.trees_read <= bound,
        "{} directories read for changes in at most {bound}",
        root_fs.trees_read
    );
    // The same image against itself: nothing read, nothing reported.
    let same = diff_images(&store, &da, &da, DiffOptions::default()).unwrap();
    assert!(same
        .iter()
        .all(|d| d.changes.is_empty() && d.trees_read == 0));
}
