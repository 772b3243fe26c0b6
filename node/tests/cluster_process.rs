//! A catalog group of real `mirage-node` processes on loopback: formed with --init,
//! add-learner and promote; writes through any node, linearizable reads on every node, tokens
//! and the cluster secret enforced (401/403), the leader SIGKILLed and the group going on,
//! the killed node catching up after a restart, a late joiner catching up from a snapshot, and
//! a node removed.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http_client;
use serde_json::{json, Value};

struct Node {
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    config: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Writes a topology of `n` nodes (all catalog voters when started) and a secret.
    fn new(n: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "playground-secret-0123456789\n").unwrap();
        let ports = mirage_node::ports::free_local_ports(n as usize).unwrap();
        let mut t = "[cluster]\nname = \"t\"\nreplication = 1\nwrite_quorum = 1\n\
                     partitions = 16\nsecret_file = \"secret\"\n"
            .to_string();
        // Raft voters must be odd in the topology: a fourth node only stores (and may join
        // the group as a learner).
        for (i, p) in ports.iter().enumerate() {
            let roles = if i < 3 {
                "[\"storage\", \"catalog\"]"
            } else {
                "[\"storage\"]"
            };
            t += &format!(
                "[[node]]\nid = {}\naddress = \"127.0.0.1:{p}\"\nzone = \"a\"\ncapacity_gb = 1\n\
                 roles = {roles}\n",
                i + 1
            );
        }
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, t).unwrap();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, p)| Node {
                port: *p,
                store: dir.path().join(format!("node{}", i + 1)),
                child: None,
            })
            .collect();
        Cluster {
            _dir: dir,
            config,
            nodes,
        }
    }

    fn start(&mut self, id: u64, init: bool) {
        let config = self.config.clone();
        let n = &mut self.nodes[id as usize - 1];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mirage-node"));
        cmd.arg("serve")
            .arg("--store")
            .arg(&n.store)
            .arg("--cluster")
            .arg(&config)
            .args(["--id", &id.to_string(), "--raft-snapshot-every", "20"])
            .env("MIRAGE_LOG", "error")
            .stdout(Stdio::piped());
        if init {
            cmd.arg("--init");
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("listening on"), "{line:?}");
        if init {
            line.clear();
            out.read_line(&mut line).unwrap();
            assert!(line.contains("admin.token"), "{line:?}");
        }
        n.child = Some(child);
    }

    fn kill(&mut self, id: u64) {
        let n = &mut self.nodes[id as usize - 1];
        let mut c = n.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn token(&self) -> String {
        common::admin_token(&self.node(1).store)
    }
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = http.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn status(http: &reqwest::Client, base: &str) -> Value {
    common::get_json(http, format!("{base}/v1/admin/raft")).await
}

/// Waits until `f` holds for node `base`'s view of the group.
async fn wait_status(
    http: &reqwest::Client,
    base: &str,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/v1/admin/raft")).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if f(&v) {
                    return v;
                }
                assert!(Instant::now() < deadline, "{what}: last status {v}");
            }
        }
        assert!(Instant::now() < deadline, "{what}: no answer from {base}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn users(http: &reqwest::Client, base: &str) -> Vec<String> {
    let (s, v) = post(
        http,
        format!("{base}/v1/catalog/query"),
        json!({"q": "users"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect()
}

async fn add_user(http: &reqwest::Client, base: &str, name: &str) -> String {
    let (s, v) = post(
        http,
        format!("{base}/v1/catalog/command"),
        json!({"op": "add_user", "name": name, "admin": false}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// Adds nodes 2 and 3 to node 1's group, as voters.
async fn form_group(c: &Cluster, admin: &reqwest::Client) {
    let b1 = c.node(1).base();
    for id in [2u64, 3] {
        let addr = format!("127.0.0.1:{}", c.node(id).port);
        let body = json!({"id": id, "addr": addr});
        let (s, v) = post(admin, format!("{b1}/v1/admin/raft/add-learner"), body).await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = post(
            admin,
            format!("{b1}/v1/admin/raft/promote"),
            json!({"id": id}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
}

#[test]
fn catalog_group_of_three_processes_survives_losing_its_leader() {
    let mut c = Cluster::new(4);
    c.start(1, true);
    c.start(2, false);
    c.start(3, false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = http_client(&c.token());
        let b1 = c.node(1).base();
        form_group(&c, &admin).await;
        let st = status(&admin, &b1).await;
        assert_eq!(st["voters"], json!([1, 2, 3]), "{st}");
        let m = admin
            .get(format!("{b1}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            m.contains("mirage_raft_is_leader 1") && m.contains("mirage_raft_voters 3"),
            "{m}"
        );

        // A write through a follower, then a read through the other follower, at once.
        let (b2, b3) = (c.node(2).base(), c.node(3).base());
        for i in 0..10 {
            let name = format!("user{i}");
            let (via, read) = if i % 2 == 0 { (&b2, &b3) } else { (&b3, &b2) };
            add_user(&admin, via, &name).await;
            assert!(
                users(&admin, read).await.contains(&name),
                "{name} not visible on {read}"
            );
        }

        // A checkin registered through node 2 resolves through node 3 at once.
        let image = format!("sha256:{}", "ab".repeat(32));
        let (s, v) = post(
            &admin,
            format!("{b2}/v1/catalog/command"),
            json!({"op": "checkin", "name": "web", "image": image, "parent": null}),
        )
        .await;
        assert_eq!((s, v["version"].as_u64()), (200, Some(1)), "{v}");
        let (s, v) = post(
            &admin,
            format!("{b3}/v1/catalog/query"),
            json!({"q": "resolve", "reference": "web"}),
        )
        .await;
        assert_eq!(
            (s, v["resolved"]["image"].as_str()),
            (200, Some(image.as_str())),
            "{v}"
        );

        // Several commands in one request through the other follower: applied in order, each
        // answered on its own (a refused one does not stop the next), visible on node 2 at once.
        let (image2, image3) = (
            format!("sha256:{}", "a2".repeat(32)),
            format!("sha256:{}", "a3".repeat(32)),
        );
        let (s, v) = post(
            &admin,
            format!("{b3}/v1/catalog/commands"),
            json!({"commands": [
                {"op": "checkin", "name": "web", "image": image2, "parent": null},
                {"op": "set_default", "name": "nope", "version": 1},
                {"op": "checkin", "name": "web", "image": image3, "parent": null},
            ]}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let a = &v["answers"];
        assert_eq!(a[0]["ok"]["version"].as_u64(), Some(2), "{v}");
        assert_eq!(a[1]["error"]["code"].as_str(), Some("not_found"), "{v}");
        assert_eq!(a[2]["ok"]["version"].as_u64(), Some(3), "{v}");
        for (reference, image) in [("web@2", &image2), ("web@3", &image3)] {
            let (s, v) = post(
                &admin,
                format!("{b2}/v1/catalog/query"),
                json!({"q": "resolve", "reference": reference}),
            )
            .await;
            assert_eq!(
                (s, v["resolved"]["image"].as_str()),
                (200, Some(image.as_str())),
                "{reference}: {v}"
            );
        }

        // Credentials: a new user's token works on another node at once; no or a wrong token
        // is 401; a user doing an admin's job is 403; node routes need the cluster secret.
        let bob = add_user(&admin, &b2, "bob").await;
        let bob = http_client(&bob);
        let (s, v) = post(
            &bob,
            format!("{b3}/v1/catalog/query"),
            json!({"q": "whoami"}),
        )
        .await;
        assert_eq!((s, v["user"]["name"].as_str()), (200, Some("bob")), "{v}");
        let (s, v) = post(
            &bob,
            format!("{b3}/v1/catalog/command"),
            json!({"op": "add_user", "name": "eve", "admin": true}),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("denied")),
            "{v}"
        );
        let (s, _) = post(&bob, format!("{b1}/v1/admin/raft/remove"), json!({"id": 2})).await;
        assert_eq!(s, 403);
        // A replaced token stops working at once, on every node, for writes too.
        let (s, v) = post(&admin, format!("{b2}/v1/catalog/command"), json!({"op": "set_token", "name": "bob", "token_sha256": ""})).await;
        assert_eq!(s, 200, "{v}");
        let bob2 = http_client(v["token"].as_str().unwrap());
        for base in [&b1, &b2, &b3] {
            let (s, v) = post(&bob, format!("{base}/v1/catalog/command"), json!({"op": "checkin", "name": "bobs", "image": format!("sha256:{}", "cd".repeat(32)), "parent": null})).await;
            assert!(s == 401 || s == 403, "old token on {base}: {s} {v}");
        }
        let (s, v) = post(&bob2, format!("{b3}/v1/catalog/query"), json!({"q": "whoami"})).await;
        assert_eq!((s, v["user"]["name"].as_str()), (200, Some("bob")), "{v}");
        // A damaged snapshot from a peer is refused before it reaches the state machine.
        let snap = mirage_node::raft::state_machine::Snapshot {
            meta: Default::default(),
            snapshot: b"MRGSNAP\n garbage".to_vec(),
        };
        let vote = mirage_node::raft::Vote::new(1, 1);
        let body = mirage_node::raft::network::snapshot_body(&vote, &snap).unwrap();
        let r = reqwest::Client::new()
            .post(format!("{b3}/v1/raft/snapshot"))
            .header("x-mirage-cluster-secret", "playground-secret-0123456789")
            .body(body)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(code, 400, "{text}");
        assert!(text.contains("bad_snapshot") && text.contains("catalog snapshot"), "{text}");
        let anon = reqwest::Client::new();
        let (s, v) = post(
            &anon,
            format!("{b3}/v1/catalog/query"),
            json!({"q": "users"}),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{v}"
        );
        let (s, _) = post(
            &http_client("mrg_wrong"),
            format!("{b3}/v1/catalog/query"),
            json!({"q": "users"}),
        )
        .await;
        assert_eq!(s, 401);
        let (s, _) = post(&admin, format!("{b3}/v1/raft/vote"), json!({})).await;
        assert_eq!(s, 401, "a user token is not the cluster secret");

        // SIGKILL the leader: the other two elect a new one and take writes and reads.
        let leader = status(&admin, &b1).await["leader"].as_u64().unwrap();
        let before = users(&admin, &b1).await;
        c.kill(leader);
        let alive: Vec<u64> = [1u64, 2, 3].into_iter().filter(|i| *i != leader).collect();
        let ba = c.node(alive[0]).base();
        // Right after the kill, with no leader yet: the node retries by itself and the client
        // gets one answer, applied once.
        let t = Instant::now();
        add_user(&admin, &ba, "right-after-kill").await;
        eprintln!("write during the election answered after {:?}", t.elapsed());
        let st = status(&admin, &ba).await;
        assert!(st["leader"].as_u64().is_some_and(|l| l != leader), "{st}");
        for i in 0..5 {
            add_user(&admin, &c.node(alive[i % 2]).base(), &format!("after{i}")).await;
        }
        let seen = users(&admin, &c.node(alive[1]).base()).await;
        assert!(seen.contains(&"after4".to_string()), "{seen:?}");
        // Every write acknowledged before the kill survived it, and the one during the
        // election is there exactly once.
        for u in &before {
            assert!(seen.contains(u), "{u} lost: {seen:?}");
        }
        assert_eq!(seen.iter().filter(|u| *u == "right-after-kill").count(), 1);

        // The killed node restarts and catches up: the same users, read on it.
        c.start(leader, false);
        let bl = c.node(leader).base();
        let want = users(&admin, &ba).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = admin
                .post(format!("{bl}/v1/catalog/query"))
                .json(&json!({"q": "users"}))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status() == 200 {
                    let v: Value = r.json().await.unwrap();
                    let got: Vec<String> = v["users"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|u| u["name"].as_str().unwrap().to_string())
                        .collect();
                    assert_eq!(got, want);
                    break;
                }
            }
            assert!(Instant::now() < deadline, "restarted node did not catch up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Enough writes for snapshots (every 20 entries) and purged logs, then a late joiner
        // that can only catch up from a snapshot.
        for i in 0..30 {
            add_user(&admin, &ba, &format!("bulk{i}")).await;
        }
        let st = wait_status(&admin, &ba, "snapshot taken", |v| {
            v["snapshot"].as_u64().is_some()
        })
        .await;
        assert!(st["snapshot"].as_u64().unwrap() >= 20, "{st}");
        c.start(4, false);
        let addr4 = format!("127.0.0.1:{}", c.node(4).port);
        let (s, v) = post(
            &admin,
            format!("{ba}/v1/admin/raft/add-learner"),
            json!({"id": 4, "addr": addr4}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let want = users(&admin, &ba).await;
        assert_eq!(users(&admin, &c.node(4).base()).await, want);
        let st4 = status(&admin, &c.node(4).base()).await;
        assert_eq!(st4["state"], "learner", "{st4}");
        assert!(
            st4["snapshot"].as_u64().is_some(),
            "the learner got a snapshot: {st4}"
        );

        // Remove it again: the group no longer lists it.
        let (s, v) = post(
            &admin,
            format!("{ba}/v1/admin/raft/remove"),
            json!({"id": 4}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let st = status(&admin, &ba).await;
        assert!(!st["nodes"].as_object().unwrap().contains_key("4"), "{st}");
        assert_eq!(st["voters"].as_array().unwrap().len(), 3, "{st}");
    });
}

/// `mirage-node playground --nodes 3 --detach` in `dir`: its output and the pids it recorded.
fn detached_playground(dir: &std::path::Path) -> (std::process::Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mirage-node"))
        .args(["playground", "--nodes", "3", "--detach", "--dir"])
        .arg(dir)
        .env("MIRAGE_LOG", "error")
        .output()
        .unwrap();
    let pids = std::fs::read_to_string(dir.join("pids")).unwrap_or_default();
    (out, pids)
}

/// Sends SIGTERM to each pid of a whitespace-separated list.
fn kill_each(pids: &str) {
    for p in pids.split_whitespace() {
        let _ = Command::new("kill").arg(p).status();
    }
}

#[test]
fn playground_forms_a_three_node_group_and_prints_how_to_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let (out, pids) = detached_playground(dir.path());
    let kill_all = || kill_each(&pids);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        kill_all();
        panic!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(str::to_string)
    };
    let (url, token) = (var("MIRAGE_CLUSTER"), var("MIRAGE_TOKEN"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got: Option<(Value, Value)> = rt.block_on(async {
        let http = http_client(token.as_deref()?);
        let url = url?;
        let r = http.get(format!("{url}/v1/admin/raft")).send().await.ok()?;
        let layout = http
            .post(format!("{url}/v1/catalog/query"))
            .json(&json!({"q": "layout"}))
            .send()
            .await
            .ok()?;
        Some((r.json().await.ok()?, layout.json().await.ok()?))
    });
    kill_all();
    let (st, layout) = got.unwrap_or_else(|| panic!("no status from the playground: {text}"));
    assert_eq!(st["voters"], json!([1, 2, 3]), "{st}\n{text}");
    assert_eq!(st["leader"], json!(1), "{st}");
    // The node that started the group recorded layout version 1: every storage node, active.
    let l = &layout["layout"];
    assert_eq!(l["version"], json!(1), "{layout}");
    let ids: Vec<&Value> = l["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| &n["id"])
        .collect();
    assert_eq!(ids, [&json!(1), &json!(2), &json!(3)], "{layout}");
    assert_eq!(pids.split_whitespace().count(), 3);
}

#[test]
fn a_playground_whose_node_cannot_start_fails_at_once_with_that_nodes_error() {
    let dir = tempfile::tempdir().unwrap();
    // Node 2's store path is a file: that node exits on start.
    std::fs::write(dir.path().join("node2"), "not a store").unwrap();
    let t0 = std::time::Instant::now();
    let (out, pids) = detached_playground(dir.path());
    let took = t0.elapsed();
    kill_each(&pids);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("node 2 exited"), "{err}");
    assert!(err.contains("opening store"), "{err}");
    assert!(pids.is_empty(), "a failed playground left nodes: {pids}");
    // It waited for no timeout (the start's deadline is 60 s).
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
}

fn signal(c: &Cluster, id: u64, sig: &str) {
    let pid = c.node(id).child.as_ref().unwrap().id();
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// A node that fell behind reads nothing stale once it is back; a node cut off from the
/// majority refuses catalog writes and reads instead of answering from its own copy; when the
/// majority returns, the group goes on.
#[test]
fn a_node_without_the_majority_refuses_and_a_lagging_node_reads_nothing_stale() {
    let mut c = Cluster::new(3);
    c.start(1, true);
    c.start(2, false);
    c.start(3, false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = http_client(&c.token());
        let b1 = c.node(1).base();
        form_group(&c, &admin).await;
        let old_token = add_user(&admin, &b1, "carl").await;
        let carl = http_client(&old_token);
        let (s, v) = post(
            &carl,
            format!("{}/v1/catalog/query", c.node(3).base()),
            json!({"q": "whoami"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        // Node 3 is paused (it misses writes, carl's new token among them), then resumes: its
        // first read sees them, and carl's old token no longer works there.
        signal(&c, 3, "-STOP");
        for i in 0..5 {
            add_user(&admin, &b1, &format!("while-paused-{i}")).await;
        }
        let (s, v) = post(
            &admin,
            format!("{b1}/v1/catalog/command"),
            json!({"op": "set_token", "name": "carl", "token_sha256": ""}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        signal(&c, 3, "-CONT");
        let (s, v) = post(
            &carl,
            format!("{}/v1/catalog/query", c.node(3).base()),
            json!({"q": "whoami"}),
        )
        .await;
        assert_eq!(
            s, 401,
            "the replaced token still read on the node that was behind: {v}"
        );
        let seen = users(&admin, &c.node(3).base()).await;
        assert!(
            seen.contains(&"while-paused-4".to_string()),
            "stale read on node 3: {seen:?}"
        );

        // Nodes 1 and 2 paused: node 3 alone has no quorum. It must neither take a write nor
        // answer a read from its own copy.
        signal(&c, 1, "-STOP");
        signal(&c, 2, "-STOP");
        let b3 = c.node(3).base();
        let t = Instant::now();
        let (s, v) = post(
            &admin,
            format!("{b3}/v1/catalog/command"),
            json!({"op": "add_user", "name": "cut-off", "admin": false}),
        )
        .await;
        assert!(s == 503, "a write without quorum answered {s}: {v}");
        let (s, v) = post(
            &admin,
            format!("{b3}/v1/catalog/query"),
            json!({"q": "users"}),
        )
        .await;
        assert_eq!(s, 503, "a read without quorum answered: {v}");
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "refusals took {:?}",
            t.elapsed()
        );

        // The majority returns: writes and reads work everywhere again, and the refused write
        // never appears.
        signal(&c, 1, "-CONT");
        signal(&c, 2, "-CONT");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, _) = post(
                &admin,
                format!("{b3}/v1/catalog/command"),
                json!({"op": "add_user", "name": "healed", "admin": false}),
            )
            .await;
            if s == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "the group did not heal");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for id in [1u64, 2, 3] {
            let seen = users(&admin, &c.node(id).base()).await;
            assert!(seen.contains(&"healed".to_string()), "node {id}: {seen:?}");
            // The refused write may or may not have been applied (its outcome was unknown to
            // the client, and said so), but every node agrees on it.
            let first = users(&admin, &b1).await;
            assert_eq!(seen, first, "node {id} disagrees");
        }
    });
}

/// A store with a standalone catalog does not join a cluster (its state would diverge from
/// the group's).
#[test]
fn a_standalone_store_refuses_to_join_a_cluster() {
    let c = Cluster::new(1);
    let store = &c.node(1).store;
    // Served standalone once: its catalog now has entries of its own.
    let (mut child, _) = common::start_standalone(store);
    child.kill().unwrap();
    child.wait().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mirage-node"))
        .args(["serve", "--id", "1", "--store"])
        .arg(store)
        .arg("--cluster")
        .arg(&c.config)
        .env("MIRAGE_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds a standalone catalog"), "{err}");
}
