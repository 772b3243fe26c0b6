//! Named images through the CLI: versions, references, provenance, defaults, ACLs, users and
//! locks, on disk images the test builds.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn mirage(store: &Path, user: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirage"))
        .arg("--store")
        .arg(store)
        .args(["--as", user])
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn err(o: Output) -> String {
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn named_images_versions_provenance_and_access() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let gen = mirage_client::demo::generate(&tree, 4, 1).unwrap();
    let a = dir.path().join("a.img");
    mirage_client::demo::build_disk_image(&tree, &a, gen.bytes).unwrap();
    // B: A with /etc/motd... a new file written by debugfs.
    let b = dir.path().join("b.img");
    std::fs::copy(&a, &b).unwrap();
    let motd = dir.path().join("motd");
    std::fs::write(&motd, b"patched\n").unwrap();
    let st = Command::new("debugfs")
        .args([
            "-w",
            "-R",
            &format!("write {} /patched.txt", motd.display()),
        ])
        .arg(format!("{}?offset={}", b.display(), 69632 * 512))
        .output()
        .unwrap();
    assert!(st.status.success());
    let store = dir.path().join("store");
    let s = store.as_path();
    let first = ok(mirage(
        s,
        "alice",
        &["checkin", a.to_str().unwrap(), "--name", "web"],
    ));
    assert!(first.trim().ends_with("web@1"), "{first}");
    let da = first.split_whitespace().next().unwrap().to_string();
    let second = ok(mirage(
        s,
        "alice",
        &["checkin", b.to_str().unwrap(), "--name", "web"],
    ));
    assert!(second.trim().ends_with("web@2"), "{second}");
    let db = second.split_whitespace().next().unwrap().to_string();
    // References: name (default), name@version, with a partition.
    assert_eq!(
        ok(mirage(s, "alice", &["cat", "web", "/patched.txt"])),
        "patched\n"
    );
    assert!(!ok(mirage(s, "alice", &["ls", "web@1:3", "/"])).contains("patched.txt"));
    let show: serde_json::Value =
        serde_json::from_str(&ok(mirage(s, "alice", &["--json", "show", "web@2"]))).unwrap();
    assert_eq!(show["image"], db.as_str());
    // Provenance: version 2 derives from version 1.
    let prov = ok(mirage(s, "alice", &["provenance", "web"]));
    assert!(
        prov.contains(&format!("ancestor    {}", &da[..19])),
        "{prov}"
    );
    let dot = ok(mirage(s, "alice", &["provenance", "web@1", "--dot"]));
    assert!(dot.starts_with("digraph") && dot.contains("->"), "{dot}");
    // Rollback.
    ok(mirage(s, "alice", &["default", "web", "1"]));
    assert!(ok(mirage(s, "alice", &["images"])).starts_with("web@1"));
    // The first caller is the admin; others need adding, and see nothing until granted.
    assert!(err(mirage(s, "bob", &["images"])).contains("no user named \"bob\""));
    ok(mirage(s, "alice", &["user", "add", "bob"]));
    assert_eq!(ok(mirage(s, "bob", &["images"])), "");
    let hidden = err(mirage(s, "bob", &["ls", "web", "/"]));
    let absent = err(mirage(s, "bob", &["ls", "nosuch", "/"]));
    assert_eq!(hidden.replace("web", "X"), absent.replace("nosuch", "X"));
    // Nor by digest: checkout, show, diff and search all refuse or find nothing.
    let out0 = dir.path().join("stolen.img");
    for args in [
        vec!["checkout", da.as_str(), "-o", out0.to_str().unwrap()],
        vec!["show", da.as_str()],
        vec!["diff", da.as_str(), db.as_str()],
        vec!["provenance", da.as_str()],
    ] {
        let e = err(mirage(s, "bob", &args));
        assert!(e.contains("no image named"), "{args:?}: {e}");
    }
    assert!(!out0.exists());
    assert_eq!(ok(mirage(s, "bob", &["search", "--path", "**"])), "");
    ok(mirage(s, "alice", &["acl", "web", "--grant-read", "bob"]));
    assert!(ok(mirage(s, "bob", &["ls", "web", "/"])).contains("etc"));
    assert!(err(mirage(s, "bob", &["delete", "web@1"])).contains("permission denied"));
    assert!(err(mirage(s, "bob", &["default", "web", "2"])).contains("permission denied"));
    // Derive: bob owns the copy.
    ok(mirage(s, "bob", &["derive", "web@2", "bob-web"]));
    let v: serde_json::Value =
        serde_json::from_str(&ok(mirage(s, "bob", &["--json", "versions", "bob-web"]))).unwrap();
    assert_eq!(v["owner"], "bob");
    assert_eq!(v["versions"][0]["image"], db.as_str());
    // Search: by path and by content, over what the caller may read.
    let hits = ok(mirage(s, "alice", &["search", "--path", "/patched.*"]));
    assert_eq!(hits.lines().count(), 1, "{hits}");
    assert!(
        hits.starts_with("bob-web@1,web@2  ") && hits.contains(&db),
        "{hits}"
    );
    assert!(hits.trim_end().ends_with("3:/patched.txt"), "{hits}");
    let ls: serde_json::Value = serde_json::from_str(&ok(mirage(
        s,
        "bob",
        &["--json", "ls", "web@2", "/patched.txt"],
    )))
    .unwrap();
    let content = ls[0]["content"].as_str().unwrap().to_string();
    let by_content = ok(mirage(s, "bob", &["search", "--content", &content]));
    assert_eq!(by_content, hits, "bob may read both names");
    ok(mirage(s, "alice", &["user", "add", "carol"]));
    assert_eq!(ok(mirage(s, "carol", &["search", "--path", "**"])), "");
    // Locks (admin only) refuse changes with the reason.
    assert!(err(mirage(s, "bob", &["lock", "bob-web", "--reason", "x"])).contains("admin"));
    ok(mirage(
        s,
        "alice",
        &["lock", "web", "--reason", "CVE-2026-1 patching"],
    ));
    let e = err(mirage(
        s,
        "alice",
        &["checkin", a.to_str().unwrap(), "--name", "web"],
    ));
    assert!(
        e.contains("locked") && e.contains("CVE-2026-1 patching"),
        "{e}"
    );
    ok(mirage(s, "alice", &["unlock", "web"]));
    // Delete keeps the metadata; the deleted version no longer resolves.
    ok(mirage(s, "alice", &["delete", "web@2"]));
    assert!(ok(mirage(s, "alice", &["versions", "web"])).contains("(deleted)"));
    assert!(err(mirage(s, "alice", &["ls", "web@2", "/"])).contains("deleted"));
    // bob-web still holds that image: a checkout by name works and is the same disk.
    let out = dir.path().join("out.img");
    ok(mirage(
        s,
        "bob",
        &["checkout", "bob-web", "-o", out.to_str().unwrap()],
    ));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&b).unwrap());
}

#[test]
fn checkout_search_and_diff_visibility_per_role() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let gen = mirage_client::demo::generate(&tree, 12, 1).unwrap();
    let img = dir.path().join("a.img");
    mirage_client::demo::build_disk_image(&tree, &img, gen.bytes).unwrap();
    let store = dir.path().join("store");
    let s = store.as_path();
    ok(mirage(s, "admin", &["user", "list"])); // the first caller becomes the admin
    for u in ["owner", "writer", "reader", "stranger"] {
        ok(mirage(s, "admin", &["user", "add", u]));
    }
    let digest = ok(mirage(
        s,
        "owner",
        &["checkin", img.to_str().unwrap(), "--name", "web"],
    ))
    .split_whitespace()
    .next()
    .unwrap()
    .to_string();
    ok(mirage(
        s,
        "owner",
        &[
            "acl",
            "web",
            "--grant-write",
            "writer",
            "--grant-read",
            "reader",
        ],
    ));
    for (user, sees) in [
        ("admin", true),
        ("owner", true),
        ("writer", true),
        ("reader", true),
        ("stranger", false),
    ] {
        let out = dir.path().join(format!("{user}.img"));
        let runs = [
            mirage(s, user, &["checkout", "web", "-o", out.to_str().unwrap()]),
            mirage(
                s,
                user,
                &["checkout", &digest, "-o", &format!("{}.2", out.display())],
            ),
            mirage(s, user, &["diff", "web", &digest]),
            mirage(s, user, &["show", "web"]),
            mirage(s, user, &["versions", "web"]),
        ];
        for (i, o) in runs.iter().enumerate() {
            assert_eq!(o.status.success(), sees, "{user}, command {i}");
            if !sees {
                let e = String::from_utf8_lossy(&o.stderr);
                assert!(e.contains("no image named"), "{user}, command {i}: {e}");
            }
        }
        assert_eq!(out.exists(), sees, "{user}");
        let found = ok(mirage(s, user, &["search", "--path", "/*"]));
        assert_eq!(!found.is_empty(), sees, "{user}: {found}");
        let images = ok(mirage(s, user, &["images"]));
        assert_eq!(images.contains("web@1"), sees, "{user}");
    }
}
