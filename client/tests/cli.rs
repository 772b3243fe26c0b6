//! The `mirage` binary end to end: init, demo, stats, verify, put/get of a tree, errors.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn mirage(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirage"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("MIRAGE_STORE")
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).unwrap()
}

#[test]
fn demo_on_a_sha1_store_round_trips_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let v = json(&mirage(&store, &["init", "--digest", "sha1", "--json"]));
    assert_eq!(v["digest"], "sha1");
    assert_eq!(v["created"], true);
    // init again: same algorithm is fine, another one is refused.
    ok(&mirage(&store, &["init", "--digest", "sha1"]));
    let o = mirage(&store, &["init", "--digest", "sha256"]);
    assert!(!o.status.success());
    let v = json(&mirage(&store, &["demo", "--json"]));
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["root"].as_str().unwrap().starts_with("sha1:"));
    assert_eq!(v["differences"].as_array().unwrap().len(), 0);
    // The disk-image part: checked in, listed, checked out, fsck'd, same serial number again.
    assert_eq!(v["checkout_same_serial"], true, "{v}");
    assert_eq!(v["checkin"]["filesystems"], 2);
    assert!(v["image"].as_str().unwrap().starts_with("sha1:"));
    assert!(v["listing"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l.as_str().unwrap().ends_with(" etc")));
    let stats = json(&mirage(&store, &["store", "stats", "--json"]));
    assert!(stats["items"].as_u64().unwrap() > 100);
    // The default codec writes raw while the disk keeps up; compaction recompresses.
    ok(&mirage(&store, &["store", "compact", "--level", "3"]));
    let stats = json(&mirage(&store, &["store", "stats", "--json"]));
    assert!(stats["stored_bytes"].as_u64().unwrap() < stats["logical_bytes"].as_u64().unwrap());
    // A second demo run generates the same contents with new timestamps: every content item
    // is deduplicated, only the directory trees (which hold the times) are new.
    let v2 = json(&mirage(&store, &["demo", "--json"]));
    assert_ne!(v2["root"], v["root"]);
    let trees = v2["ingest"]["dirs"].as_u64().unwrap() + 1;
    // (The empty directory's tree is identical too.)
    assert_eq!(
        v2["ingest"]["items_new"].as_u64().unwrap(),
        trees - 1,
        "{}",
        v2["ingest"]
    );
    assert!(
        v2["ingest"]["new_bytes"].as_u64().unwrap() < 64 << 10,
        "{}",
        v2["ingest"]
    );
    let report = json(&mirage(&store, &["store", "verify", "--json"]));
    assert_eq!(report["damaged"].as_array().unwrap().len(), 0);
    let stats = json(&mirage(&store, &["store", "stats", "--json"]));
    assert_eq!(report["items_ok"], stats["items"]);
}

#[test]
fn put_tree_get_tree_and_item_view() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let src = dir.path().join("src");
    mirage_client::demo::generate(&src, 3, 1).unwrap();
    let root = ok(&mirage(&store, &["put-tree", src.to_str().unwrap()]))
        .trim()
        .to_string();
    assert!(root.starts_with("sha256:"), "{root}");
    let out = dir.path().join("out");
    ok(&mirage(
        &store,
        &["get-tree", &root, "-o", out.to_str().unwrap()],
    ));
    assert_eq!(
        mirage_client::demo::compare(&src, &out).unwrap(),
        Vec::<String>::new()
    );
    let item = json(&mirage(&store, &["item", &root]));
    assert_eq!(item["kind"], "tree");
    assert!(item["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "usr"));
}

#[test]
fn errors_are_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    for args in [
        &["store", "stats"][..],
        &["store", "verify"],
        &["item", "sha256:00"],
        &[
            "get-tree",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "-o",
            "/tmp/x",
        ],
    ] {
        let o = mirage(&missing, args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("mirage: error: "), "{err}");
    }
    assert!(
        !missing.exists(),
        "read-only commands must not create a store"
    );
    // A damaged store makes verify exit 3 and name the item.
    let store = dir.path().join("s");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), mirage_client::demo::pseudo_random(1, 5000)).unwrap();
    ok(&mirage(&store, &["put-tree", src.to_str().unwrap()]));
    let vol = store.join("volumes/00000001.vol");
    let mut bytes = std::fs::read(&vol).unwrap();
    let at = 16 + 52 + 100; // inside the first record's payload
    bytes[at] ^= 0xff;
    std::fs::write(&vol, bytes).unwrap();
    let o = mirage(&store, &["store", "verify"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).contains("sha256:"));
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["init", "--help"],
        &["store", "--help"],
        &["store", "stats", "--help"],
        &["store", "verify", "--help"],
        &["item", "--help"],
        &["put-tree", "--help"],
        &["get-tree", "--help"],
        &["demo", "--help"],
        &["bench", "store", "--help"],
    ] {
        let out = ok(&mirage(dir.path(), args));
        assert!(out.contains("Usage:"), "{args:?}");
    }
}
