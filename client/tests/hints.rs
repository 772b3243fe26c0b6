//! Checkin hints: a second checkin of mostly the same files skips hashing them, and still sees
//! every change, even one made behind the filesystem's back (bytes rewritten in place with no
//! timestamp or size change).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use mirage_client::indexer::{checkin_with, CheckinOptions};
use mirage_node::Store;

fn store(dir: &Path) -> Store {
    Store::create(dir).unwrap()
}

/// The largest regular file of at most `max` bytes.
fn largest_file(root: &Path, max: u64) -> (PathBuf, u64) {
    let mut best = (PathBuf::new(), 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && m.len() > best.1 && m.len() <= max {
                best = (e.path(), m.len());
            }
        }
    }
    best
}

#[test]
fn hints_skip_unchanged_files_and_miss_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let gen = mirage_client::demo::generate(&tree, 5, 1).unwrap();
    // The largest file, and the largest that is stored as one blob (new small files are
    // hashed in groups): each gets bytes rewritten past its first 64 KiB.
    let (big, size) = largest_file(&tree, u64::MAX);
    assert!(size > 3 * 64 * 1024, "need a file past the hint prefix");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mid: Vec<u8> = (0..300 << 10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(tree.join("mid.bin"), mid).unwrap();
    let (small, small_size) = largest_file(&tree, mirage_format::chunking::INLINE_MAX);
    assert!(
        small_size > 3 * 64 * 1024,
        "need a small file past the hint prefix"
    );
    let rel = format!("/{}", big.strip_prefix(&tree).unwrap().display());
    let rel_small = format!("/{}", small.strip_prefix(&tree).unwrap().display());
    let a = dir.path().join("a.img");
    mirage_client::demo::build_disk_image(&tree, &a, gen.bytes).unwrap();
    // B: the same disk with bytes of those files rewritten in place, past the first 64 KiB.
    let b = dir.path().join("b.img");
    std::fs::copy(&a, &b).unwrap();
    let fs_off = 69632 * 512u64;
    let f = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
    for path in [&rel, &rel_small] {
        let out = Command::new("debugfs")
            .args(["-R", &format!("blocks {path}")])
            .arg(format!("{}?offset={fs_off}", b.display()))
            .output()
            .unwrap();
        let blocks: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        // Block 20, or the last; at least the 17th (past 64 KiB).
        let k = blocks.len().min(21) - 1;
        assert!(k >= 16, "{path}: {} blocks", blocks.len());
        let target = fs_off + blocks[k] * 4096 + 100;
        f.write_all_at(b"changed behind the filesystem's back", target)
            .unwrap();
    }
    drop(f);

    let s = store(&dir.path().join("store"));
    let on = CheckinOptions {
        threads: 2,
        hints: true,
    };
    let (da, first) = checkin_with(&s, &a, on).unwrap();
    let (da2, again) = checkin_with(&s, &a, on).unwrap();
    assert_eq!(da, da2);
    assert_eq!(first.files_hinted, 0, "{first:?}");
    assert!(again.files_hinted > 100, "{again:?}");
    assert_eq!(again.items_new, 0, "{again:?}");

    let (db, stats) = checkin_with(&s, &b, on).unwrap();
    assert_ne!(db, da, "the change was missed");
    assert!(stats.files_hinted > 100, "{stats:?}");
    // Every file but the changed one came from a hint, and the result is what hashing
    // everything gives.
    let fresh = store(&dir.path().join("fresh"));
    let off = CheckinOptions {
        threads: 2,
        hints: false,
    };
    let (db_rehash, rehashed) = checkin_with(&fresh, &b, off).unwrap();
    assert_eq!(rehashed.files_hinted, 0);
    assert_eq!(db, db_rehash);
    for path in [&rel, &rel_small] {
        let mut shown = Vec::new();
        mirage_client::browse::cat(&s, &db, Some(3), path, &mut shown).unwrap();
        assert!(
            shown
                .windows(36)
                .any(|w| w == b"changed behind the filesystem's back"),
            "{path}"
        );
    }
}

#[test]
fn hints_name_only_contents_the_store_holds_and_answer_in_key_order() {
    use mirage_client::hints;
    use mirage_format::chunking::EncodedItem;
    use mirage_format::Digest;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let alg = s.algorithm();
    let held = EncodedItem::blob(alg, b"held").unwrap();
    s.put_encoded(vec![held.clone()]).unwrap();
    let gone = Digest::of(alg, b"never stored").unwrap();
    let (k1, k2, k3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    s.put_hints(vec![
        (k1, hints::encode(&held.digest(), 11)),
        (k2, hints::encode(&gone, 22)),
        (k3, vec![9, 9, 9]),
    ])
    .unwrap();
    // A hint whose content is gone, one this build cannot read, and a missing key are no
    // hints; a key asked twice is answered twice.
    let got = hints::lookup_many(&s, &[k2, k3, k1, [4u8; 32], k1]).unwrap();
    let want = Some((held.digest(), 11));
    assert_eq!(got, vec![None, None, want, None, want]);
    assert!(hints::lookup_many(&s, &[]).unwrap().is_empty());
}
