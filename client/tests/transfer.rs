//! `mirage push` and `mirage pull` between store directories: whole version chains with
//! provenance and delete marks, only what the other side lacks sent, conflicts refused unless
//! renamed or forced, and the copy checking out byte for byte.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{err, image, ok};
use serde_json::Value;

fn mirage(store: &Path, args: &[&str]) -> Output {
    mirage_as(store, "alice", args)
}

fn mirage_as(store: &Path, user: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirage"))
        .arg("--store")
        .arg(store)
        .args(["--as", user])
        .args(args)
        .env("MIRAGE_LOG", "error")
        .output()
        .unwrap()
}

fn json(o: Output) -> Value {
    serde_json::from_str(&ok(o)).unwrap()
}

fn versions(store: &Path, name: &str) -> Vec<(String, bool, String)> {
    let v = json(mirage(store, &["--json", "versions", name]));
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["image"].as_str().unwrap().to_string(),
                x["deleted"].as_bool().unwrap(),
                x["creator"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn sent(v: &Value) -> (u64, u64) {
    (
        v[0]["items"].as_u64().unwrap(),
        v[0]["bytes"].as_u64().unwrap(),
    )
}

#[test]
fn push_and_pull_move_whole_chains_and_only_what_is_missing() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (a, b, c) = (image(w, "a", 1), image(w, "b", 2), image(w, "c", 3));
    let (here, there) = (w.join("here"), w.join("there"));
    for img in [&a, &b] {
        ok(mirage(
            &here,
            &["checkin", img.to_str().unwrap(), "--name", "web"],
        ));
    }
    ok(mirage(&here, &["delete", "web@1"]));

    // The chain arrives whole: images, creators and the delete mark; content of the live
    // version only (version 1 is deleted).
    let there_s = there.to_str().unwrap();
    let o = mirage(&here, &["--json", "push", "web", "--to", there_s]);
    // Progress events on stderr, the last one saying what was sent.
    let last: Value = String::from_utf8_lossy(&o.stderr)
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "progress")
        .unwrap();
    let first = json(o);
    assert!(sent(&first).0 > 0);
    assert_eq!(last["done"], true);
    assert_eq!(
        (
            last["items"].as_u64().unwrap(),
            last["bytes"].as_u64().unwrap()
        ),
        sent(&first)
    );
    assert_eq!(versions(&there, "web"), versions(&here, "web"));
    let out_here = w.join("here.img");
    let out_there = w.join("there.img");
    ok(mirage(
        &here,
        &["checkout", "web", "-o", out_here.to_str().unwrap()],
    ));
    ok(mirage(
        &there,
        &["checkout", "web", "-o", out_there.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read(&out_here).unwrap(),
        std::fs::read(&out_there).unwrap()
    );

    // Again: nothing to send. A new version: only its new items.
    assert_eq!(
        sent(&json(mirage(
            &here,
            &["--json", "push", "web", "--to", there_s]
        ))),
        (0, 0)
    );
    ok(mirage(
        &here,
        &["checkin", c.to_str().unwrap(), "--name", "web"],
    ));
    let third = json(mirage(&here, &["--json", "push", "web", "--to", there_s]));
    assert!(sent(&third).0 > 0 && sent(&third).0 < sent(&first).0 * 2);
    assert_eq!(versions(&there, "web"), versions(&here, "web"));
    assert_eq!(third[0]["default"], 3);

    // Access: pushing needs read here and write there.
    ok(mirage(&here, &["user", "add", "bob"]));
    let e = err(mirage_as(&here, "bob", &["push", "web", "--to", there_s]));
    assert!(e.contains("no image named"), "{e}");
    ok(mirage(&here, &["acl", "web", "--grant-read", "bob"]));
    ok(mirage(&there, &["user", "add", "bob"]));
    let e = err(mirage_as(&here, "bob", &["push", "web", "--to", there_s]));
    assert!(e.contains("not available"), "{e}");
    ok(mirage(&there, &["acl", "web", "--grant-write", "bob"]));
    ok(mirage_as(&here, "bob", &["push", "web", "--to", there_s]));

    // Pull works the other way round, into an empty store.
    let back = w.join("back");
    ok(mirage(&back, &["init"]));
    ok(mirage(&back, &["pull", "web", "--from", there_s]));
    assert_eq!(versions(&back, "web"), versions(&here, "web"));

    // Another history under the same name: refused, nothing registered; --rename and
    // --force say otherwise.
    let other = w.join("other");
    ok(mirage(
        &other,
        &["checkin", c.to_str().unwrap(), "--name", "web"],
    ));
    let e = err(mirage(&other, &["push", "web", "--to", there_s]));
    assert!(e.contains("another history"), "{e}");
    assert_eq!(versions(&there, "web").len(), 3);
    ok(mirage(
        &other,
        &["push", "web", "--to", there_s, "--rename", "web-other"],
    ));
    assert_eq!(versions(&there, "web-other").len(), 1);
    ok(mirage(&other, &["push", "web", "--to", there_s, "--force"]));
    // c is version 3 there already: forcing adds nothing new.
    assert_eq!(versions(&there, "web").len(), 3);
}

#[test]
fn a_backup_restores_into_an_empty_store_identical_and_a_damaged_one_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (a, b, c) = (image(w, "a", 4), image(w, "b", 5), image(w, "c", 6));
    let lib = w.join("lib");
    for (img, name) in [(&a, "web"), (&b, "web"), (&c, "db")] {
        ok(mirage(
            &lib,
            &["checkin", img.to_str().unwrap(), "--name", name],
        ));
    }
    ok(mirage(&lib, &["delete", "web@1"]));
    ok(mirage(&lib, &["user", "add", "bob"]));
    ok(mirage(&lib, &["acl", "db", "--grant-read", "bob"]));

    let backup = w.join("backup");
    let out = json(mirage(
        &lib,
        &["--json", "backup", "--to", backup.to_str().unwrap()],
    ));
    assert_eq!(out["copied"]["names"], 2);
    assert_eq!(out["verified"]["images"], 2, "{out}");

    let restored = w.join("restored");
    ok(mirage(&restored, &["init"]));
    ok(mirage(
        &restored,
        &["restore", "--from", backup.to_str().unwrap()],
    ));
    for name in ["web", "db"] {
        assert_eq!(versions(&restored, name), versions(&lib, name));
        let (x, y) = (
            w.join(format!("{name}-lib.img")),
            w.join(format!("{name}-restored.img")),
        );
        ok(mirage(&lib, &["checkout", name, "-o", x.to_str().unwrap()]));
        ok(mirage(
            &restored,
            &["checkout", name, "-o", y.to_str().unwrap()],
        ));
        assert_eq!(
            std::fs::read(&x).unwrap(),
            std::fs::read(&y).unwrap(),
            "{name}"
        );
    }
    let acl = json(mirage(&restored, &["--json", "acl", "db"]));
    assert!(acl.to_string().contains("bob"), "{acl}");

    // A damaged backup is refused before anything is restored.
    let db: mirage_format::Digest = versions(&lib, "db")[0].0.parse().unwrap();
    {
        let s = mirage_node::Store::open(&backup, mirage_node::StoreOptions::default()).unwrap();
        let loc = s.location(&db).unwrap().unwrap();
        let vol = backup.join(format!("volumes/{:08}.vol", loc.volume));
        let mut bytes = std::fs::read(&vol).unwrap();
        bytes[(loc.offset + loc.record_len() - 1) as usize] ^= 0x55;
        std::fs::write(&vol, bytes).unwrap();
    }
    let again = w.join("again");
    ok(mirage(&again, &["init"]));
    let e = err(mirage(
        &again,
        &["restore", "--from", backup.to_str().unwrap()],
    ));
    assert!(e.contains("damaged") || e.contains("integrity"), "{e}");
    assert!(err(mirage(&again, &["versions", "web"])).contains("no image named"));
}
