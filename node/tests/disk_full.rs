//! A full disk: the failing write is refused, every later write is refused (fail-stop), every
//! acknowledged item survives, and the store reopens cleanly once there is room again.
//! Needs root to mount a small tmpfs under the volumes directory (CI runs as root).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mirage_format::Algorithm;
use mirage_node::StoreError;

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(at).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then(|| Mount(at.to_path_buf()))
}

#[test]
fn disk_full_stops_writes_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let vols = dir.path().join("volumes");
    let Some(mount) = mount_tmpfs(&vols, "2m") else {
        eprintln!("SKIPPED: cannot mount tmpfs (not root?)");
        return;
    };
    let alg = Algorithm::Sha256;
    let store = open(dir.path());
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..200u64 {
        // 60 KB of incompressible bytes per item: 2 MiB fill up after ~34 items.
        let item = mirage_format::chunking::EncodedItem::blob(alg, &bytes(i, 60_000)).unwrap();
        match store.put(item.bytes().to_vec()) {
            Ok(o) => acked.push(o.digest),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("a 2 MiB disk never filled up");
    // The request that hit the full disk learns why.
    assert!(
        failure.to_string().contains("No space left on device"),
        "{failure}"
    );
    assert!(
        acked.len() > 10,
        "only {} items before the disk filled",
        acked.len()
    );
    // Fail-stop: even a tiny item is refused now.
    let tiny = mirage_format::chunking::EncodedItem::blob(alg, b"tiny").unwrap();
    assert!(matches!(
        store.put(tiny.bytes().to_vec()),
        Err(StoreError::WritesDisabled(_))
    ));
    drop(store);
    // Make room and reopen: everything acknowledged is there, nothing is damaged.
    assert!(Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&vols)
        .status()
        .unwrap()
        .success());
    let store = open(dir.path());
    for d in &acked {
        read_ok(&store, d);
    }
    let report = store.verify(|_| {}).unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert_eq!(report.items_ok, acked.len() as u64);
    assert!(store.put(tiny.into_bytes()).unwrap().new);
    drop(store);
    drop(mount);
}
