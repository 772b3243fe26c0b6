//! The `mirage-node` binary as a real process: it binds port 0 and prints its address, serves
//! uploads, and on SIGTERM finishes and exits cleanly with everything it acknowledged durable.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use mirage_format::Algorithm;

/// Uploads 20 blobs and their tree; returns them once the node has acknowledged them.
fn upload(base: &str, token: &str, seed: u64) -> Vec<mirage_format::chunking::EncodedItem> {
    let alg = Algorithm::Sha256;
    let blobs: Vec<_> = (0..20).map(|i| blob(alg, seed + i)).collect();
    let tree = tree_of(alg, &blobs.iter().collect::<Vec<_>>());
    let body = frames(
        &blobs
            .iter()
            .chain([&tree])
            .map(|i| i.bytes())
            .collect::<Vec<_>>(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = http_client(token);
        let health = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        let r = http
            .post(format!("{base}/v1/items"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["new"].as_u64(), Some(21), "{v}");
        let m = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(m.contains("mirage_items_new_total 21"), "{m}");
    });
    let mut all = blobs;
    all.push(tree);
    all
}

#[test]
fn serves_until_sigterm_then_exits_cleanly_with_acknowledged_items_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let (mut child, base) = start_standalone(&store_dir);
    let items = upload(&base, &admin_token(&store_dir), 1000);

    let st = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "mirage-node did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");

    // Every acknowledged item is in the store the node left behind.
    let store = open(&store_dir);
    for item in &items {
        assert_eq!(read_ok(&store, &item.digest()), item.bytes());
    }
}

#[test]
fn items_acknowledged_over_http_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let (mut child, base) = start_standalone(&store_dir);
    let token = admin_token(&store_dir);
    let items = upload(&base, &token, 5000);
    child.kill().unwrap();
    child.wait().unwrap();
    // Recovery on open: every acknowledged item reads back and hashes to its digest.
    let store = open(&store_dir);
    for item in &items {
        assert_eq!(read_ok(&store, &item.digest()), item.bytes());
    }
    drop(store);
    // And the node starts again on the recovered store, which still holds them.
    let (mut child, base) = start_standalone(&store_dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let present: serde_json::Value = rt.block_on(async {
        let digests: Vec<String> = items.iter().map(|i| format!("{:#}", i.digest())).collect();
        post_json(
            &http_client(&token),
            format!("{base}/v1/items/has"),
            &serde_json::json!({ "digests": digests }),
        )
        .await
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let present = present["present"].as_array().unwrap();
    assert_eq!(present.len(), items.len());
    assert!(
        present.iter().all(|p| p.as_bool() == Some(true)),
        "{present:?}"
    );
}
