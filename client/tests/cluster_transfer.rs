//! `mirage push` to playground clusters (real processes on loopback): a derived image sends
//! only its new content; a push cut midway — its client SIGKILLed, then every node of the
//! destination — resumes with the same command and checks out identical; two clients pushing overlapping images at
//! once store each item once per replica.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `mirage` on the store directory `store` (its own catalog), as alice.
fn local(store: &Path, args: &[&str]) -> Output {
    Command::new(bin("mirage"))
        .arg("--store")
        .arg(store)
        .args(["--as", "alice"])
        .args(args)
        .env("MIRAGE_LOG", "error")
        .output()
        .unwrap()
}

fn bytes_in(pg: &Pg, nodes: usize) -> u64 {
    (1..=nodes)
        .map(|n| pg.metric(n, "mirage_bytes_in_total"))
        .sum()
}

fn push_to(pg: &Pg, store: &Path, name: &str) -> Command {
    let mut c = Command::new(bin("mirage"));
    c.arg("--store")
        .arg(store)
        .args(["--as", "alice", "--json", "push", name, "--to"])
        .arg(pg.urls.join(","))
        .env("MIRAGE_TO_TOKEN", &pg.token)
        .env("MIRAGE_LOG", "error");
    c
}

#[test]
fn a_derived_image_sends_only_its_new_content() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let imgs = images(w, "app", 7, 2, 1);
    let pg = Pg::start(3, 1, 2, 2);
    // What b adds to a, measured on two stores holding one image each.
    let (sa, sb) = (w.join("only-a"), w.join("only-b"));
    ok(local(&sa, &["checkin", imgs[0].to_str().unwrap()]));
    ok(local(&sb, &["checkin", imgs[1].to_str().unwrap()]));
    let (new_items, new_bytes) = bytes_beyond(&sb, &sa);
    assert!(new_items > 0);

    let src = w.join("src");
    ok(local(
        &src,
        &["checkin", imgs[0].to_str().unwrap(), "--name", "app"],
    ));
    ok(push_to(&pg, &src, "app").output().unwrap());
    ok(local(
        &src,
        &["checkin", imgs[1].to_str().unwrap(), "--name", "app"],
    ));
    let before = bytes_in(&pg, 3);
    let out: Value =
        serde_json::from_str(&ok(push_to(&pg, &src, "app").output().unwrap())).unwrap();
    let sent = bytes_in(&pg, 3) - before;
    // Every item goes to its 2 replicas; frames add 4 bytes per item.
    let unique = 2 * (new_bytes + 4 * new_items as u64);
    eprintln!("derived image: {sent} bytes sent for {unique} bytes of new content x 2 replicas");
    assert!(
        sent as f64 <= 1.1 * unique as f64,
        "sent {sent} bytes for {unique} bytes of new content (2 replicas)"
    );
    assert_eq!(out[0]["default"], 2);
    let v = ok(pg.mirage("c", &["--json", "versions", "app"]));
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
}

#[test]
fn a_push_killed_midway_resumes_and_checks_out_identical() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let img = images(w, "big", 11, 16, 0).remove(0);
    let src = w.join("src");
    ok(local(
        &src,
        &["checkin", img.to_str().unwrap(), "--name", "big"],
    ));
    let mut pg = Pg::start(3, 1, 2, 2);
    let config = pg.path("cluster.toml");
    // Starts a push and waits until `more` bytes have arrived since `from`.
    let start = |pg: &Pg, from: u64, more: u64| {
        let mut child = push_to(pg, &src, "big")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while bytes_in(pg, 3) < from + more {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the push ended before it was cut"
            );
            assert!(Instant::now() < deadline, "no content arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    };

    // First the client is SIGKILLed midway.
    let mut child = start(&pg, bytes_in(&pg, 3), 4 << 20);
    child.kill().unwrap();
    child.wait().unwrap();
    // Then, during the next attempt, every node of the destination.
    let sent_before = bytes_in(&pg, 3);
    let mut child = start(&pg, sent_before, 4 << 20);
    let first = bytes_in(&pg, 3);
    for n in 1..=3 {
        pg.kill(n);
    }
    assert!(
        !child.wait().unwrap().success(),
        "the push survived its destination"
    );
    for n in 1..=3 {
        pg.serve(n, &config);
    }
    // Nothing named yet: the image is registered only once its content is complete.
    let e = pg.mirage("c0", &["versions", "big"]);
    assert!(!e.status.success());

    // Resume: the same command. What arrived before is not sent again.
    let out: Value =
        serde_json::from_str(&ok(push_to(&pg, &src, "big").output().unwrap())).unwrap();
    let resumed = out[0]["bytes"].as_u64().unwrap();
    let empty = w.join("empty");
    ok(local(&empty, &["init"]));
    let (_, total) = bytes_beyond(&src, &empty);
    // The three attempts together send each item to its 2 replicas about once: at most the
    // uploads in flight at each cut (8 MiB per node) go twice.
    assert!(first > 0 && resumed > 0);
    let bound = 2.2 * total as f64 + 6.0 * 8.0 * 1048576.0;
    eprintln!("killed push: {first} bytes before, {resumed} after, content {total} x 2 replicas");
    assert!(
        (first + resumed) as f64 <= bound,
        "sent {first} + {resumed} bytes for 2 x {total}"
    );
    let (a, b) = (w.join("here.img"), w.join("there.img"));
    ok(local(&src, &["checkout", "big", "-o", a.to_str().unwrap()]));
    ok(pg.mirage("c1", &["checkout", "big", "-o", b.to_str().unwrap()]));
    assert_eq!(sha(&a), sha(&b));
}

#[test]
fn concurrent_pushes_of_overlapping_images_store_each_item_once() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let imgs = images(w, "app", 13, 2, 1);
    let (s1, s2) = (w.join("s1"), w.join("s2"));
    ok(local(
        &s1,
        &["checkin", imgs[0].to_str().unwrap(), "--name", "x"],
    ));
    ok(local(
        &s2,
        &["checkin", imgs[1].to_str().unwrap(), "--name", "y"],
    ));
    let pg = Pg::start(3, 1, 2, 2);
    let (a, b) = (
        push_to(&pg, &s1, "x").spawn().unwrap(),
        push_to(&pg, &s2, "y").spawn().unwrap(),
    );
    for c in [a, b] {
        ok(c.wait_with_output().unwrap());
    }
    let mut union = digests_in(&s1);
    union.extend(digests_in(&s2));
    union.sort();
    union.dedup();
    assert!(pg.copies(&[1, 2, 3], &union).iter().all(|&c| c == 2));
    let stored: u64 = (1..=3)
        .map(|n| pg.metric(n, "mirage_items_new_total"))
        .sum();
    assert_eq!(
        stored,
        2 * union.len() as u64,
        "each item stored once per replica"
    );
}

/// A name's chain on a cluster: (image, deleted) per version, the default, the readers.
type Chain = (Vec<(String, bool)>, u64, Vec<String>);

fn chain(pg: &Pg, name: &str) -> Option<Chain> {
    let o = pg.mirage(
        &format!("chain-{}", pg.urls[0].len()),
        &["--json", "versions", name],
    );
    if !o.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    let versions = v["versions"]
        .as_array()?
        .iter()
        .map(|x| {
            (
                x["image"].as_str().unwrap().to_string(),
                x["deleted"].as_bool().unwrap(),
            )
        })
        .collect();
    let readers = v["readers"]
        .as_array()?
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    Some((versions, v["default"].as_u64()?, readers))
}

#[test]
fn a_mirror_follows_twenty_versions_and_a_delete_across_restarts() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let imgs = images(w, "m", 17, 1, 2);
    let a = Pg::start(3, 1, 2, 2);
    let mut b = Pg::start(3, 1, 2, 2);
    ok(a.mirage("ca", &["user", "add", "bob"]));
    ok(b.mirage("cb", &["user", "add", "robert"]));
    ok(a.mirage(
        "ca",
        &["checkin", imgs[0].to_str().unwrap(), "--name", "app"],
    ));
    ok(a.mirage("ca", &["acl", "app", "--grant-read", "bob"]));
    let log = std::fs::File::create(w.join("mirror.log")).unwrap();
    let mut mirror = Command::new(bin("mirage"))
        .arg("--cluster")
        .arg(a.urls.join(","))
        .args(["--token", &a.token, "--store"])
        .arg(a.path("cache-mirror"))
        .args([
            "--json",
            "mirror",
            "--interval",
            "1",
            "--acl",
            "--map-user",
            "bob=robert",
        ])
        .arg("--to")
        .arg(b.urls.join(","))
        .env("MIRAGE_TO_TOKEN", &b.token)
        .env("MIRAGE_LOG", "error")
        .stdout(log)
        .spawn()
        .unwrap();
    for i in 1..=20 {
        ok(a.mirage(
            "ca",
            &["checkin", imgs[i % 3].to_str().unwrap(), "--name", "app"],
        ));
        if i == 10 {
            // The other side goes away and comes back; the mirror carries on.
            for n in 1..=3 {
                b.kill(n);
            }
            let config = b.path("cluster.toml");
            for n in 1..=3 {
                b.serve(n, &config);
            }
        }
    }
    ok(a.mirage("ca", &["delete", "app@5"]));
    ok(a.mirage("ca", &["default", "app", "7"]));
    let want = chain(&a, "app").unwrap();
    assert_eq!(want.0.len(), 21);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let got = chain(&b, "app");
        if got.as_ref().is_some_and(|g| g.0 == want.0 && g.1 == want.1) {
            assert_eq!(got.unwrap().2, vec!["robert".to_string()]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror did not catch up: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    mirror.kill().unwrap();
    mirror.wait().unwrap();
    let passes: Vec<Value> = std::fs::read_to_string(w.join("mirror.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(passes
        .iter()
        .any(|p| p["behind_versions"].as_u64().unwrap() > 0));
    assert!(passes.iter().any(|p| p["deletes"].as_u64().unwrap() == 1));
    let added: u64 = passes
        .iter()
        .map(|p| p["versions_added"].as_u64().unwrap())
        .sum();
    // A pass whose report was lost (the mirror killed right after the destination committed,
    // or a destination killed after committing but before answering) added versions it never
    // reported; none is ever added twice (the chains are equal above).
    assert!((1..=21).contains(&added), "{added} versions reported added");
}
