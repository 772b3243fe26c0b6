//! The catalog's Raft group and the placement logic under the deterministic simulator
//! (`mirage_chaos_tests::sim`, docs/SIMULATION.md).
//!
//! - `seeds`: many seeds per run (`MIRAGE_SIM_SEEDS=N` widens it, `MIRAGE_SIM_SEED=S` runs
//!   one, `MIRAGE_SIM_FIRST=F` starts elsewhere); a failure prints the seed and the command
//!   that replays it.
//! - `replay_is_deterministic`: one seed twice, the same trace digest.
//! - `a_restarted_leader_serves_no_stale_reads`: the seeds of the one real bug found so far.
//! - `…_is_caught` / `…_are_caught`: a node that forgets acknowledged writes, stale reads and
//!   broken histories are caught (the checks can fail).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mirage_chaos_tests::check::linear::{self, CatOp, CatRet, Event, NameView};
use mirage_chaos_tests::sim::storage::SmState;
use mirage_chaos_tests::sim::{self, verify, FailureKind, Inject, SimConfig};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Seeds of this run: one given, or a range (24 by default).
fn seed_list() -> Vec<u64> {
    if let Some(s) = env_u64("MIRAGE_SIM_SEED") {
        return vec![s];
    }
    let first = env_u64("MIRAGE_SIM_FIRST").unwrap_or(1);
    let n = env_u64("MIRAGE_SIM_SEEDS").unwrap_or(24);
    (first..first + n).collect()
}

fn config_for(seed: u64) -> SimConfig {
    SimConfig::varied(seed)
}

#[test]
fn seeds() {
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut ops, mut faults, mut sim_ms) = (0u64, 0u64, 0u64);
    let list = seed_list();
    for &seed in &list {
        let cfg = config_for(seed);
        let t = sim::run_traced(seed, &cfg);
        match t.result {
            Ok(r) => {
                ops += r.ops_total;
                faults += r.faults.values().sum::<u64>();
                sim_ms += r.simulated_ms;
                let installed: u64 = r.storage.values().map(|s| s.snapshots_installed).sum();
                eprintln!(
                    "seed {seed}: {} nodes, {} ops ({} unknown), faults {:?}, layout v{}, \
                     index {}, term {}, {installed} snapshots installed, converged {} ms after \
                     the heal, {} ms wall, digest {}",
                    r.nodes,
                    r.ops_total,
                    r.linearizability.unknown,
                    r.faults,
                    r.layout_versions,
                    r.final_log_index,
                    r.final_term,
                    r.converged_after_ms,
                    r.wall_ms,
                    &r.trace_digest[..20.min(r.trace_digest.len())]
                );
            }
            Err(e) => {
                eprintln!("FAILED {e}");
                if std::env::var_os("MIRAGE_SIM_DUMP").is_some() {
                    let path = std::env::temp_dir().join(format!("mirage-sim-{seed}.txt"));
                    let mut text = t.trace.join("\n");
                    text.push_str("\n\nhistory:\n");
                    for ev in &t.history {
                        text.push_str(&format!("{ev:?}\n"));
                    }
                    if std::fs::write(&path, text).is_ok() {
                        eprintln!("  trace and history: {}", path.display());
                    }
                }
                failures.push(e);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} seeds in {secs:.1} s ({:.2} seeds/s): {ops} ops, {faults} fault episodes, \
         {:.0} simulated s",
        list.len(),
        list.len() as f64 / secs.max(1e-9),
        sim_ms as f64 / 1000.0
    );
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        list.len(),
        failures
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn replay_is_deterministic() {
    let seed = env_u64("MIRAGE_SIM_SEED").unwrap_or(7);
    let cfg = SimConfig {
        duration: Duration::from_secs(12),
        ..config_for(seed)
    };
    let a = sim::run_traced(seed, &cfg);
    let b = sim::run_traced(seed, &cfg);
    if let Some(i) =
        (0..a.trace.len().max(b.trace.len())).find(|i| a.trace.get(*i) != b.trace.get(*i))
    {
        let from = i.saturating_sub(5);
        panic!(
            "seed {seed}: the traces differ from line {i}:\n{:#?}\nvs\n{:#?}",
            &a.trace[from.min(a.trace.len())..(i + 3).min(a.trace.len())],
            &b.trace[from.min(b.trace.len())..(i + 3).min(b.trace.len())]
        );
    }
    let (a, b) = (a.result.unwrap(), b.result.unwrap());
    assert_eq!(a.trace_digest, b.trace_digest);
    assert_eq!(a.final_log_index, b.final_log_index);
    assert!(a.ops_total > 0 && !a.faults.is_empty(), "{a:?}");
    // Another seed is another run.
    let c = sim::run(seed + 1, &SimConfig { ..cfg }).unwrap();
    assert_ne!(a.trace_digest, c.trace_digest);
}

/// A seed that found a real bug: a leader restarted after a power loss (its state machine and
/// committed index, written without a sync, older than what it had acknowledged) was restored
/// as leader without an election and answered read-index requests with its stale committed
/// index, so reads missed acknowledged writes. Fixed in `mirage_node::raft::node::raft_config`
/// (`enable_leader_restore` off); with it on again, this seed fails the linearizability check.
#[test]
fn a_restarted_leader_serves_no_stale_reads() {
    for seed in [156] {
        if let Err(e) = sim::run(seed, &SimConfig::varied(seed)) {
            panic!("{e}");
        }
    }
}

#[test]
fn a_node_that_forgets_acknowledged_writes_is_caught() {
    let cfg = SimConfig {
        nodes: 3,
        duration: Duration::from_secs(8),
        inject: Some(Inject::ForgetWrites { node: 2, every: 5 }),
        ..SimConfig::default()
    };
    let e = sim::run(11, &cfg).unwrap_err();
    assert!(
        matches!(e.kind, FailureKind::LostWrite(ref m) if m.starts_with("n2 ")),
        "{e}"
    );
}

#[test]
fn stale_reads_are_caught() {
    // Reads served without a read barrier: some seed among a few shows a stale read.
    let cfg = SimConfig {
        nodes: 5,
        duration: Duration::from_secs(12),
        inject: Some(Inject::StaleReads),
        ..SimConfig::default()
    };
    let caught = (1..=6).any(|seed| {
        matches!(
            sim::run(seed, &cfg),
            Err(e) if matches!(e.kind, FailureKind::NotLinearizable(_))
        )
    });
    assert!(caught, "no seed caught a stale read");
}

fn checkin(image: &str) -> CatOp {
    CatOp::Checkin {
        name: "img-0".into(),
        image: image.into(),
    }
}

#[test]
fn broken_histories_are_caught() {
    // A read that misses a checkin acknowledged before it started.
    let read = CatOp::Read {
        name: "img-0".into(),
    };
    let h = vec![
        Event::new(0, checkin("x"), CatRet::Version(1), 0, 10),
        Event::new(1, read.clone(), CatRet::Named(None), 20, 30),
    ];
    assert!(linear::check(&h).is_err());
    // The same checkin applied twice (a retry not recognised).
    let view = NameView {
        versions: vec![("x".into(), false), ("x".into(), false)],
        default: 2,
        readers: BTreeSet::new(),
        writers: BTreeSet::new(),
    };
    let h = vec![
        Event::new(0, checkin("x"), CatRet::Version(1), 0, 10),
        Event::new(1, read, CatRet::Named(Some(view)), 20, 30),
    ];
    assert!(linear::check(&h).is_err());
    // An acknowledged checkin missing from a node's final state.
    let h = vec![Event::new(0, checkin("x"), CatRet::Version(1), 0, 10)];
    let err = verify::acked_present(&h, 3, &SmState::default()).unwrap_err();
    assert!(err.starts_with("n3 lost an acknowledged write"), "{err}");
}
