//! A node whose data disk fills up refuses writes but keeps serving, and once the disk has
//! room again restarts itself in place (same pid) and stores again — the bug the chaos runs
//! found (seed 2: a node stayed read-only forever after a full disk). Needs root.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mirage_chaos_tests::harness::cluster::{Cluster, Spec};
use serde_json::json;

fn checkin(c: &Cluster, cache: &Path, image: &Path) -> String {
    let o = Command::new(c.mirage())
        .arg("--cluster")
        .arg(c.urls().join(","))
        .args(["--token", &c.token, "--json", "--store"])
        .arg(cache)
        .arg("checkin")
        .arg(image)
        .env("MIRAGE_LOG", "error")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["image"].as_str().unwrap().to_string()
}

fn noise(path: &Path, seed: u8) {
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect();
    std::fs::write(path, data).unwrap();
}

#[test]
fn a_node_whose_disk_filled_up_stores_again_once_it_has_room() {
    assert!(
        mirage_chaos_tests::harness::privileged(),
        "this test needs root: network namespaces, loop mounts"
    );
    let exe = Path::new(env!("CARGO_BIN_EXE_mirage-chaos"));
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(Spec {
        nodes: 3,
        zones: 1,
        replication: 3,
        write_quorum: 2,
        bin_dir: exe.parent().unwrap().to_path_buf(),
        dir: dir.path().join("cluster"),
        disk_mb: 256,
        repair_every: 3600,
        dead_after: 0,
    })
    .unwrap();
    let pid = c.nodes[1].pid().unwrap();
    c.nodes[1].disk.fill().unwrap();
    // W = 2 of 3: the checkin succeeds on nodes 1 and 3 while node 2's writes fail.
    noise(&dir.path().join("a.raw"), 1);
    let a = checkin(&c, &dir.path().join("cache"), &dir.path().join("a.raw"));
    let held = c
        .admin(2, "/v1/items/has", json!({ "digests": [a] }))
        .unwrap();
    assert_eq!(held["present"][0], false, "node 2 stored on a full disk?");
    // Still serving while full, but not ready for writes.
    c.get(2, "/v1/admin/raft").unwrap();
    assert!(!c.ready(2));
    c.nodes[1].disk.free().unwrap();
    // It restarts in place (same pid) and recovers; then it stores again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = c.log(2);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("restarting in place") && c.ready(2) {
            break;
        }
        assert!(Instant::now() < deadline, "node 2 did not restart:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        c.nodes[1].pid(),
        Some(pid),
        "restarted in place, not replaced"
    );
    assert!(c.exited().is_empty());
    noise(&dir.path().join("b.raw"), 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = checkin(&c, &dir.path().join("cache"), &dir.path().join("b.raw"));
        let held = c
            .admin(2, "/v1/items/has", json!({ "digests": [b] }))
            .unwrap();
        if held["present"][0] == true {
            break;
        }
        assert!(Instant::now() < deadline, "node 2 does not store again");
        std::thread::sleep(Duration::from_secs(1));
    }
    // And repair brings it the image it missed while full.
    c.admin(2, "/v1/admin/repair", json!({})).unwrap();
    let held = c
        .admin(2, "/v1/items/has", json!({ "digests": [a] }))
        .unwrap();
    assert_eq!(held["present"][0], true);
}
