//! The sharded data path on real processes: playground clusters of `mirage-node` on loopback
//! and the `mirage` CLI against them. Copies of every item are counted on every node
//! (`POST /v1/items/has`), nodes are SIGKILLed and restarted, removed and added, a stored copy
//! is corrupted on disk, and zones are checked with the nodes' own byte counters.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use mirage_format::Digest;
use serde_json::{json, Value};

#[test]
fn n_copies_through_a_kill_hinted_handoff_a_restart_and_a_corrupt_copy() {
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (image(work.path(), "a", 1), image(work.path(), "b", 2));
    let mut pg = Pg::start(4, 1, 3, 2);
    ok(pg.mirage("ca", &["checkin", a.to_str().unwrap(), "--name", "a"]));
    let items_a = digests_in(&pg.path("ca"));
    assert!(items_a.len() > 50, "{} items", items_a.len());
    assert!(
        pg.copies(&[1, 2, 3, 4], &items_a).iter().all(|&c| c == 3),
        "every item of a has exactly 3 copies"
    );
    let out0 = work.path().join("a0.img");
    ok(pg.mirage("r0", &["checkout", "a", "-o", out0.to_str().unwrap()]));

    // Node 3 dies: reads and writes (W = 2) go on.
    pg.kill(3);
    let out1 = work.path().join("a1.img");
    ok(pg.mirage("r1", &["checkout", "a", "-o", out1.to_str().unwrap()]));
    assert_eq!(sha(&out0), sha(&out1));
    ok(pg.mirage("cb", &["checkin", b.to_str().unwrap(), "--name", "b"]));
    let items_b = digests_in(&pg.path("cb"));
    let new_b: Vec<Digest> = items_b
        .iter()
        .filter(|d| !items_a.contains(d))
        .copied()
        .collect();
    assert!(!new_b.is_empty());
    // Hinted handoff: the copies of b's new items that node 3 missed went to node 4, so
    // they have 3 copies anyway.
    assert!(pg.copies(&[1, 2, 4], &new_b).iter().all(|&c| c == 3));

    // It returns; its repair round pulls exactly what it missed (from the fallback among
    // others), and the fallback hands its hints off: exactly 3 copies of everything, on
    // every item's own replicas.
    let config = pg.path("cluster.toml");
    pg.serve(3, &config);
    let placement = layout(&pg).placement();
    let missed: Vec<Digest> = new_b
        .iter()
        .filter(|d| placement.nodes_for(d).contains(&3))
        .copied()
        .collect();
    assert!(!missed.is_empty());
    assert!(pg.has(3, &new_b).iter().all(|h| !h), "node 3 missed b");
    let round = pg.post(3, "/v1/admin/repair", json!({}));
    assert_eq!(
        round["items_pulled"].as_u64().unwrap(),
        missed.len() as u64,
        "{round}"
    );
    repair_until(&pg, &[1, 2, 3, 4], &items_b, 3);

    // A copy damaged on disk is found by scrub and replaced from another replica.
    let victim = *items_b
        .iter()
        .zip(pg.has(3, &items_b))
        .filter(|(_, on_3)| *on_3)
        .map(|(d, _)| d)
        .max_by_key(|d| d.as_bytes()[0])
        .unwrap();
    pg.kill(3);
    {
        let s = mirage_node::Store::open(&pg.path("node3"), mirage_node::StoreOptions::default())
            .unwrap();
        let loc = s.location(&victim).unwrap().unwrap();
        let vol = pg.path(&format!("node3/volumes/{:08}.vol", loc.volume));
        let mut bytes = std::fs::read(&vol).unwrap();
        let at = (loc.offset + loc.record_len() - 1) as usize;
        bytes[at] ^= 0xff;
        std::fs::write(&vol, bytes).unwrap();
    }
    pg.serve(3, &config);
    let scrub = pg.post(3, "/v1/admin/scrub", json!({}));
    let victim_text = json!(victim.to_text());
    assert_eq!(scrub["damaged"], json!([victim_text]), "{scrub}");
    assert_eq!(scrub["repaired"], json!([victim_text]), "{scrub}");
    let again = pg.post(3, "/v1/admin/scrub", json!({}));
    assert_eq!(again["damaged"], json!([]), "{again}");
    assert_eq!(
        again["items"].as_u64().unwrap(),
        scrub["items"].as_u64().unwrap()
    );
}

#[test]
fn removing_and_adding_nodes_rebalances_to_n_copies_without_a_failed_read() {
    let work = tempfile::tempdir().unwrap();
    let a = image(work.path(), "a", 3);
    let mut pg = Pg::start(4, 1, 2, 2);
    ok(pg.mirage("ca", &["checkin", a.to_str().unwrap(), "--name", "a"]));
    let items = digests_in(&pg.path("ca"));
    assert!(pg.copies(&[1, 2, 3, 4], &items).iter().all(|&c| c == 2));

    // Readers run through the whole rebalance.
    let stop = AtomicBool::new(false);
    let (reads, failures) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let cache = format!("reader{i}");
                let o = pg.mirage(&cache, &["ls", "a", "/", "--json"]);
                reads.fetch_add(1, Ordering::Relaxed);
                if !o.status.success() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("read failed: {}", String::from_utf8_lossy(&o.stderr));
                }
                let _ = std::fs::remove_dir_all(pg.path(&cache));
            }
        });
        ok(pg.mirage("adm", &["admin", "node", "remove", "4"]));
        let mut settled = false;
        for _ in 0..5 {
            for n in [1, 2, 3, 4] {
                pg.post(n, "/v1/admin/repair", json!({}));
            }
            let on_3 = pg.copies(&[1, 2, 3], &items);
            let on_4 = pg.has(4, &items).iter().filter(|h| **h).count();
            if on_3.iter().all(|&c| c == 2) && on_4 == 0 {
                settled = true;
                break;
            }
        }
        assert!(
            settled,
            "the rebalance after removing node 4 did not settle"
        );
        // Let the readers see the settled layout too.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "a read failed during the rebalance"
    );
    pg.kill(4);

    // A new node 5 joins the catalog group and the layout, and takes about 1/n of the copies.
    let port = mirage_node::ports::free_local_ports(1).unwrap()[0];
    let addr = format!("127.0.0.1:{port}");
    let mut topo = std::fs::read_to_string(pg.path("cluster.toml")).unwrap();
    topo += &format!(
        "\n[[node]]\nid = 5\naddress = \"{addr}\"\nzone = \"z1\"\ncapacity_gb = 100\n\
         roles = [\"storage\"]\n"
    );
    let config5 = pg.path("cluster5.toml");
    std::fs::write(&config5, topo).unwrap();
    pg.serve(5, &config5);
    pg.urls.push(String::new());
    pg.urls[4] = format!("http://{addr}");
    ok(pg.mirage("adm", &["admin", "raft", "add-learner", "5", &addr]));
    ok(pg.mirage(
        "adm",
        &[
            "admin",
            "node",
            "add",
            "5",
            "--address",
            &addr,
            "--zone",
            "z1",
            "--capacity-gb",
            "100",
        ],
    ));
    let mut settled = false;
    for _ in 0..5 {
        for n in [5, 1, 2, 3] {
            pg.post(n, "/v1/admin/repair", json!({}));
        }
        if pg.copies(&[1, 2, 3, 5], &items).iter().all(|&c| c == 2) {
            settled = true;
            break;
        }
    }
    assert!(settled, "the rebalance after adding node 5 did not settle");
    let on_5 = pg.has(5, &items).iter().filter(|h| **h).count() as f64;
    let share = on_5 / (2.0 * items.len() as f64);
    assert!(
        (0.15..=0.35).contains(&share),
        "node 5 holds {share:.2} of the copies, expected about 1/4"
    );
    let status = ok(pg.mirage("adm", &["admin", "cluster", "status", "--json"]));
    let v: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["rebalance"], json!("complete"), "{status}");
}

/// The current layout, as `mirage admin cluster status` shows it.
fn layout(pg: &Pg) -> mirage_cluster_config::Layout {
    let status = ok(pg.mirage("adm", &["admin", "cluster", "status", "--json"]));
    let v: Value = serde_json::from_str(&status).unwrap();
    serde_json::from_value(v["layout"].clone()).unwrap()
}

/// The state of node `id` in the current layout.
fn node_state(pg: &Pg, id: u64) -> String {
    let l = layout(pg);
    let n = l.node(id).unwrap();
    serde_json::to_value(n.state)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_for_state(pg: &Pg, id: u64, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while node_state(pg, id) != want {
        assert!(Instant::now() < deadline, "node {id} never became {want}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Repair rounds on `nodes` until every item has `n` copies on them.
fn repair_until(pg: &Pg, nodes: &[usize], items: &[Digest], n: usize) {
    for _ in 0..5 {
        for &node in nodes {
            pg.post(node, "/v1/admin/repair", json!({}));
        }
        if pg.copies(nodes, items).iter().all(|&c| c == n) {
            return;
        }
    }
    panic!("repair on {nodes:?} did not settle at {n} copies");
}

#[test]
fn a_node_silent_past_the_timeout_is_declared_dead_and_its_copies_made_again() {
    let work = tempfile::tempdir().unwrap();
    let a = image(work.path(), "a", 4);
    let mut pg = Pg::start_with(4, 1, 2, 1, &["--dead-after", "2"]);
    ok(pg.mirage("ca", &["checkin", a.to_str().unwrap(), "--name", "a"]));
    let items = digests_in(&pg.path("ca"));
    assert!(pg.copies(&[1, 2, 3, 4], &items).iter().all(|&c| c == 2));
    let on_4 = pg.has(4, &items).iter().filter(|h| **h).count();
    assert!(on_4 > 0);
    // Every item but the root is read through its parent's location table, though parents
    // and children live on different nodes; without tables every item is an index lookup.
    let reads = |pg: &Pg| -> (u64, u64) {
        (1..=4).fold((0, 0), |(t, i), n| {
            (
                t + pg.metric(n, "mirage_read_table_hits_total"),
                i + pg.metric(n, "mirage_read_index_lookups_total"),
            )
        })
    };
    let out0 = work.path().join("a0.img");
    let before = reads(&pg);
    ok(pg.mirage("r0", &["checkout", "a", "-o", out0.to_str().unwrap()]));
    let after = reads(&pg);
    let n = items.len() as u64;
    assert_eq!((after.0 - before.0, after.1 - before.1), (n - 1, 1));
    let untabled = work.path().join("a-untabled.img");
    let o = Command::new(bin("mirage"))
        .arg("--cluster")
        .arg(pg.urls.join(","))
        .args(["--token", &pg.token, "--store"])
        .arg(pg.path("r-untabled"))
        .args(["checkout", "a", "-o", untabled.to_str().unwrap()])
        .env("MIRAGE_LOCATION_TABLES", "0")
        .output()
        .unwrap();
    ok(o);
    let last = reads(&pg);
    assert_eq!((last.0 - after.0, last.1 - after.1), (0, n));
    assert_eq!(sha(&out0), sha(&untabled));

    // Node 4 goes silent: the leader declares it dead on its own, and repair rounds (on a
    // timer in a deployment, asked for here) copy its partitions back to 2 replicas.
    pg.kill(4);
    wait_for_state(&pg, 4, "dead");
    repair_until(&pg, &[1, 2, 3], &items, 2);
    let out1 = work.path().join("a1.img");
    ok(pg.mirage("r1", &["checkout", "a", "-o", out1.to_str().unwrap()]));
    assert_eq!(sha(&out0), sha(&out1));

    // It comes back: alive again, and the copies settle at exactly 2 over all four nodes.
    let config = pg.path("cluster.toml");
    pg.serve(4, &config);
    wait_for_state(&pg, 4, "active");
    repair_until(&pg, &[4, 1, 2, 3], &items, 2);
    assert!(pg.has(4, &items).iter().any(|h| *h));
}

#[test]
fn a_client_in_zone_a_reads_nothing_from_other_zones() {
    let work = tempfile::tempdir().unwrap();
    let a = image(work.path(), "a", 4);
    let pg = Pg::start(6, 3, 3, 2);
    // A user who is not an admin: every download is authorized by walking the image's
    // closure across the nodes.
    let out = ok(pg.mirage("adm", &["--json", "user", "add", "bob"]));
    let bob: Value = serde_json::from_str(&out).unwrap();
    let bob = bob["token"].as_str().unwrap().to_string();
    ok(pg.mirage_as(
        &bob,
        "cb",
        &["checkin", a.to_str().unwrap(), "--name", "bobs"],
    ));
    let zone_of = |n: usize| (n - 1) % 3 + 1;
    let before: Vec<u64> = (1..=6)
        .map(|n| pg.metric(n, "mirage_bytes_out_total"))
        .collect();
    let out = work.path().join("a.out");
    ok(pg.mirage_as(
        &bob,
        "rb",
        &[
            "--zone",
            "z1",
            "checkout",
            "bobs",
            "-o",
            out.to_str().unwrap(),
        ],
    ));
    let served: Vec<u64> = (1..=6)
        .map(|n| pg.metric(n, "mirage_bytes_out_total") - before[n - 1])
        .collect();
    for n in 1..=6 {
        if zone_of(n) == 1 {
            continue;
        }
        assert_eq!(
            served[n - 1],
            0,
            "node {n} (zone z{}) served bytes: {served:?}",
            zone_of(n)
        );
    }
    assert!(served[0] + served[3] > 0, "{served:?}");
    // The image checks out identical to what was checked in: check it in again.
    let again = ok(pg.mirage_as(&bob, "cb2", &["checkin", out.to_str().unwrap()]));
    let first = ok(pg.mirage_as(&bob, "cb", &["show", "bobs", "--json"]));
    let first: Value = serde_json::from_str(&first).unwrap();
    assert!(
        first.to_string().contains(again.trim()),
        "checked-out image has another serial number: {again}"
    );

    // A node of the client's zone hangs (SIGSTOP): after the node timeout (8 s here; longer
    // than the 5 s the other nodes' closure walks give it) its items come from the other
    // replicas, and the image is the same.
    let pid = pg.pids[3].unwrap().to_string();
    ok(Command::new("kill").args(["-STOP", &pid]).output().unwrap());
    let hung = work.path().join("a.hung");
    let t0 = Instant::now();
    let o = Command::new(bin("mirage"))
        .arg("--cluster")
        .arg(pg.urls.join(","))
        .args(["--token", &bob, "--store"])
        .arg(pg.path("rb-hung"))
        .args([
            "--zone",
            "z1",
            "checkout",
            "bobs",
            "-o",
            hung.to_str().unwrap(),
        ])
        .env("MIRAGE_NODE_TIMEOUT", "8")
        .env("MIRAGE_LOG", "error")
        .output()
        .unwrap();
    ok(Command::new("kill").args(["-CONT", &pid]).output().unwrap());
    ok(o);
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert_eq!(sha(&out), sha(&hung));
}
