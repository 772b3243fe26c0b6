//! Kill -9 recovery: a child process writes items with several threads and is SIGKILLed at a
//! random moment; after reopening, every item acknowledged before the kill reads back and
//! hashes to its digest, and verification finds no damaged or half-written record. A
//! compaction loop runs alongside the writers, so kills also land in the middle of compactions.
//!
//! Rounds: `MIRAGE_CRASH_ROUNDS` (default 50). Seed: `MIRAGE_CRASH_SEED` (printed on failure).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mirage_format::{Algorithm, Digest};
use mirage_node::StoreOptions;
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "MIRAGE_CRASH_CHILD_DIR";

fn crash_opts() -> StoreOptions {
    StoreOptions {
        create: true,
        max_volume_size: 4 << 20,
        checkpoint_bytes: 1 << 20,
        ..StoreOptions::default()
    }
}

/// Runs in the child: write forever, print `ACK <digest>` after each acknowledged batch.
fn child(dir: &str) {
    let round: u64 = std::env::var("MIRAGE_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let store = mirage_node::Store::open(std::path::Path::new(dir), crash_opts()).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let alg = Algorithm::Sha256;
                for n in 0u64.. {
                    let base = (round << 32) | (t << 24) | (n * 8);
                    let blobs: Vec<_> = (0..6).map(|i| blob(alg, base + i)).collect();
                    let tree = tree_of(alg, &blobs.iter().collect::<Vec<_>>());
                    let mut batch: Vec<Vec<u8>> =
                        blobs.iter().map(|b| b.bytes().to_vec()).collect();
                    batch.push(tree.bytes().to_vec());
                    let out = store.put_many(batch).unwrap();
                    let mut lines = String::new();
                    for o in out {
                        lines.push_str(&format!("ACK {}\n", o.digest.to_text()));
                    }
                    let mut so = std::io::stdout().lock();
                    so.write_all(lines.as_bytes()).unwrap();
                    so.flush().unwrap();
                }
            })
        })
        .collect();
    // Compaction runs alongside the writers, so kills land in the middle of it too.
    let compactor = {
        let store = store.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(25));
            let line = match store.compact(mirage_node::CompactOptions {
                level: 3,
                threads: 1,
            }) {
                Ok(r) => format!("COMPACTED {}\n", r.volumes),
                Err(e) => format!("COMPACT_FAILED {e}\n"),
            };
            let mut so = std::io::stdout().lock();
            so.write_all(line.as_bytes()).unwrap();
            so.flush().unwrap();
        })
    };
    for t in threads {
        t.join().unwrap();
    }
    compactor.join().unwrap();
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let rounds: u64 = std::env::var("MIRAGE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("MIRAGE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("crash test: {rounds} rounds, replay with MIRAGE_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: HashSet<Digest> = HashSet::new();
    let mut total_kills = 0;
    let mut volumes_compacted = 0u64;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_at_random_moments_loses_nothing_acknowledged",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("MIRAGE_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (compacted_tx, compacted_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut compacted = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(why) = line.strip_prefix("COMPACT_FAILED ") {
                    panic!("compaction failed in the child: {why}");
                }
                if let Some(n) = line.strip_prefix("COMPACTED ") {
                    let n = n.parse::<u64>().unwrap_or(0);
                    compacted += n;
                    if n > 0 {
                        let _ = compacted_tx.send(());
                    }
                }
                if let Some(d) = line
                    .strip_prefix("ACK ")
                    .and_then(|t| t.parse::<Digest>().ok())
                {
                    got.push(d);
                }
            }
            (got, compacted)
        });
        let delay = Duration::from_millis(rng.gen_range(30..400));
        // On a loaded machine a child may be killed before any compaction finishes in every
        // round; the last round then waits for one (and kills right after), so the test
        // always covers compaction.
        if round + 1 == rounds && volumes_compacted == 0 {
            let _ = compacted_rx.recv_timeout(Duration::from_secs(120));
        } else {
            std::thread::sleep(delay);
        }
        // SAFETY-free: plain kill(2) through libc-free std: Child::kill sends SIGKILL on Unix.
        child.kill().unwrap();
        child.wait().unwrap();
        total_kills += 1;
        let (got, compacted) = reader
            .join()
            .unwrap_or_else(|_| panic!("seed {seed} round {round}: child reported a failure"));
        volumes_compacted += compacted;
        let full = round % 10 == 9 || round + 1 == rounds;
        // Every round checks this round's acknowledgements and a sample of older ones; every
        // tenth round (and the last) checks all of them and verifies every record.
        let mut check: Vec<Digest> = got.clone();
        if full {
            check.extend(acked.iter().copied());
        } else {
            check.extend(acked.iter().take(200).copied());
        }
        acked.extend(got);

        let store = mirage_node::Store::open(dir.path(), crash_opts())
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: reopen failed: {e}"));
        for d in &check {
            let bytes = store
                .get(d)
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: {d:#}: {e}"))
                .unwrap_or_else(|| panic!("seed {seed} round {round}: acknowledged {d:#} lost"));
            assert_eq!(
                Digest::of(d.algorithm(), &bytes).unwrap(),
                *d,
                "seed {seed} round {round}"
            );
        }
        if full {
            let report = store.verify(|_| {}).unwrap();
            assert!(
                report.damaged.is_empty(),
                "seed {seed} round {round}: {:?}",
                report.damaged
            );
            assert_eq!(report.items_ok, store.stats().unwrap().items);
        }
    }
    assert_eq!(total_kills, rounds);
    eprintln!("crash test: {volumes_compacted} volumes compacted away under the kills");
    assert!(
        volumes_compacted > 0,
        "no compaction completed: the test did not test it"
    );
    assert!(
        acked.len() > rounds as usize,
        "children acknowledged too little to test anything: {}",
        acked.len()
    );
    eprintln!(
        "crash test: {} acknowledged items survived {total_kills} kills",
        acked.len()
    );
}
