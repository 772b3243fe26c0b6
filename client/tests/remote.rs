//! Remote mode: every verb run against a node over HTTP (`--cluster URL --token T`) prints
//! what the same verb prints on an embedded store given the same history — checkin, browse,
//! versions, provenance, defaults, ACLs, users, diff, search, checkout — and refuses what the
//! embedded store refuses.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Side {
    args: Vec<String>,
}

impl Side {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mirage"))
            .args(&self.args)
            .args(args)
            .env_remove("MIRAGE_CLUSTER")
            .env_remove("MIRAGE_TOKEN")
            .output()
            .unwrap()
    }
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

fn embedded(store: &Path, user: &str) -> Side {
    Side {
        args: vec![
            "--store".into(),
            store.display().to_string(),
            "--as".into(),
            user.into(),
        ],
    }
}

fn remote(url: &str, token: &str, cache: &Path) -> Side {
    Side {
        args: vec![
            "--cluster".into(),
            url.into(),
            "--token".into(),
            token.into(),
            "--store".into(),
            cache.display().to_string(),
        ],
    }
}

/// A node in this process, on port 0, with its own store in `dir`: its runtime (keep it), URL
/// and admin token.
fn serve_node(dir: &Path) -> (tokio::runtime::Runtime, String, String) {
    let node_store = mirage_node::Store::open(
        dir,
        mirage_node::StoreOptions {
            create: true,
            ..Default::default()
        },
    )
    .unwrap();
    let token = mirage_node::api::bootstrap_admin(&node_store)
        .unwrap()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(mirage_node::api::run(
        listener,
        node_store,
        None,
        std::future::pending(),
    ));
    (rt, url, token)
}

/// Two images: B is A plus a file.
fn images(dir: &Path) -> (PathBuf, PathBuf) {
    let tree = dir.join("tree");
    let gen = mirage_client::demo::generate(&tree, 3, 1).unwrap();
    let a = dir.join("a.img");
    mirage_client::demo::build_disk_image(&tree, &a, gen.bytes).unwrap();
    let b = dir.join("b.img");
    std::fs::copy(&a, &b).unwrap();
    let motd = dir.join("motd");
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
    (a, b)
}

#[test]
fn verbs_against_a_node_print_what_they_print_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = images(dir.path());
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    let (_rt, url, token) = serve_node(&dir.path().join("node"));

    let emb = embedded(&dir.path().join("emb"), "admin");
    let rem = remote(&url, &token, &dir.path().join("cache"));
    let both = |args: &[&str]| -> String {
        let e = ok(emb.run(args));
        let r = ok(rem.run(args));
        assert_eq!(e, r, "mirage {args:?}");
        e
    };
    let both_fail = |e: &Side, r: &Side, args: &[&str], needle: &str| {
        let (ee, re) = (err(e.run(args)), err(r.run(args)));
        assert!(ee.contains(needle), "embedded {args:?}: {ee}");
        assert!(re.contains(needle), "remote {args:?}: {re}");
    };

    let first = both(&["checkin", a, "--name", "web"]);
    assert!(first.trim().ends_with("web@1"), "{first}");
    let second = both(&["checkin", b, "--name", "web", "--description", "patched"]);
    let (d1, d2) = (
        first.split_whitespace().next().unwrap().to_string(),
        second.split_whitespace().next().unwrap().to_string(),
    );
    assert_eq!(both(&["cat", "web", "/patched.txt"]), "patched\n");
    both(&["ls", "web@1:3", "/", "-l"]);
    both(&["--json", "show", "web@2"]);
    both(&["provenance", "web"]);
    both(&["provenance", "web@1", "--dot"]);
    both(&["default", "web", "1"]);
    both(&["images"]);
    both(&["diff", "web@1", "web@2"]);
    both(&["search", "--path", "**/patched.txt"]);
    both(&["derive", "web@2", "web-copy"]);
    both(&["lock", "web-copy", "--reason", "audit"]);
    both_fail(
        &emb,
        &rem,
        &["default", "web-copy", "1"],
        "locked for maintenance",
    );
    both(&["unlock", "web-copy"]);
    both(&["delete", "web-copy@1"]);
    both_fail(&emb, &rem, &["cat", "web-copy", "/patched.txt"], "deleted");

    // A second user: nothing visible until granted, then read but not write.
    let added = ok(rem.run(&["user", "add", "bob"]));
    let bob_token = added.trim().rsplit(' ').next().unwrap().to_string();
    assert!(bob_token.starts_with("mrg_"), "{added}");
    let emb_added = ok(emb.run(&["user", "add", "bob"]));
    assert!(
        emb_added.starts_with("token for bob (shown once): mrg_"),
        "{emb_added}"
    );
    // A new token replaces the old one.
    let rotated = ok(rem.run(&["user", "token", "bob"]));
    let new_token = rotated.trim().rsplit(' ').next().unwrap().to_string();
    assert_ne!(new_token, bob_token);
    let old_bob = remote(&url, &bob_token, &dir.path().join("cache-old"));
    assert!(err(old_bob.run(&["images"])).contains("401"));
    let bob_token = new_token;
    assert_eq!(both(&["user", "list"]), "admin  (admin)\nbob\n");
    let emb_bob = embedded(&dir.path().join("emb"), "bob");
    let rem_bob = remote(&url, &bob_token, &dir.path().join("cache-bob"));
    assert_eq!(ok(emb_bob.run(&["images"])), ok(rem_bob.run(&["images"])));
    both_fail(&emb_bob, &rem_bob, &["ls", "web", "/"], "no image named");
    // Items are read as part of an image the caller may see, and only that image's items.
    let http = reqwest::blocking::Client::new();
    let get = |token: &str, image: Option<&str>, digest: &str| {
        let r = http
            .post(format!("{url}/v1/items/get"))
            .bearer_auth(token)
            .json(&serde_json::json!({"digests": [digest], "image": image}))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().unwrap())
    };
    assert_eq!(
        get(&bob_token, Some(&d1), &d1).0,
        404,
        "bob may not see web yet"
    );
    let (s, body) = get(&bob_token, None, &d1);
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("name the image"), "{body}");
    assert_eq!(get(&token, None, &d1).0, 200, "an admin reads any item");
    both(&["acl", "web", "--grant-read", "bob"]);
    assert_eq!(get(&bob_token, Some(&d1), &d1).0, 200);
    let (s, body) = get(&bob_token, Some(&d1), &d2);
    assert_eq!(s, 403, "web@2 is not inside web@1: {body}");
    assert!(body.contains("is not part of image"), "{body}");
    let (e, r) = (
        ok(emb_bob.run(&["ls", "web", "/"])),
        ok(rem_bob.run(&["ls", "web", "/"])),
    );
    assert_eq!(e, r);
    both_fail(
        &emb_bob,
        &rem_bob,
        &["delete", "web@1"],
        "permission denied",
    );

    // Checkout through the node's content gives the same disk as the embedded store's.
    let (oe, or) = (dir.path().join("e.img"), dir.path().join("r.img"));
    ok(emb.run(&["checkout", "web@2", "-o", oe.to_str().unwrap()]));
    ok(rem_bob.run(&["checkout", "web@2", "-o", or.to_str().unwrap()]));
    assert_eq!(std::fs::read(&oe).unwrap(), std::fs::read(&or).unwrap());

    // Several node URLs: one that does not answer is skipped.
    let failover = remote(
        &format!("http://127.0.0.1:1,{url}"),
        &token,
        &dir.path().join("cache"),
    );
    assert_eq!(ok(failover.run(&["images"])), ok(rem.run(&["images"])));

    // Bad credentials and a standalone node's admin routes: clear refusals.
    let wrong = remote(&url, "mrg_nope", &dir.path().join("cache-x"));
    assert!(err(wrong.run(&["images"])).contains("401"));
    assert!(err(rem.run(&["admin", "raft", "status"])).contains("not_clustered"));
    assert!(err(emb.run(&["admin", "raft", "status"])).contains("--cluster"));
}

/// `mirage admin cluster init|status` and `mirage admin node add|drain|remove` against a node:
/// each change is a new layout version; a stale `--expect` and a reused id are refused with a
/// clear message; status counts each node's partitions and what the last change moved.
#[test]
fn admin_layout_commands_make_versions_and_status_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_rt, url, token) = serve_node(&dir.path().join("node"));
    let rem = remote(&url, &token, &dir.path().join("cache"));
    assert!(err(rem.run(&["admin", "cluster", "status"])).contains("no layout yet"));
    let topo = dir.path().join("cluster.toml");
    std::fs::write(
        &topo,
        include_str!("../../cluster-config/examples/three-nodes.toml"),
    )
    .unwrap();
    let t = topo.to_str().unwrap();
    assert_eq!(
        ok(rem.run(&["admin", "cluster", "init", t])),
        "layout version 1\n"
    );
    let add4 = [
        "admin",
        "node",
        "add",
        "4",
        "--address",
        "10.0.0.4:7300",
        "--zone",
        "rack1",
        "--capacity-gb",
        "4000",
    ];
    assert_eq!(ok(rem.run(&add4)), "layout version 2\n");
    assert!(err(rem.run(&add4)).contains("never reused"));
    assert!(err(rem.run(&["admin", "node", "drain", "2", "--expect", "1"])).contains("look again"));
    let out = ok(rem.run(&["--json", "admin", "cluster", "status"]));
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["layout"]["version"], 2);
    let counts = st["partitions"].as_object().unwrap();
    let total: u64 = counts.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 2 * 1024, "N = 2 replicas of 1024 partitions: {out}");
    let moved = st["moved_by_last_change"].as_u64().unwrap();
    assert_eq!(
        moved,
        counts["4"].as_u64().unwrap(),
        "only the partitions node 4 joined move"
    );
    assert_eq!(
        ok(rem.run(&["admin", "node", "drain", "4", "--expect", "2"])),
        "layout version 3\n"
    );
    let text = ok(rem.run(&["admin", "cluster", "status"]));
    assert!(text.contains("layout version 3"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("draining") && l.trim_end().ends_with(" 0 partitions")),
        "{text}"
    );
}
