//! One chaos run: a cluster in network namespaces, concurrent clients, the seeded fault
//! schedule for the run's duration, then heal, and every checker; a summary written as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::check::linear::{self, CatOp, CatRet, Event};
use crate::check::{catalog, checkout, items, liveness};
use crate::harness::cluster::{Cluster, Spec};
use crate::harness::HarnessError;
use crate::history::{self, History, Op, Outcome};
use crate::nemesis::{self, Counts, Fault};
use crate::workload::{Client, Shared, Stored, Target, NOT_SENT, USERS};

/// What a run does.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Seed of the fault schedule and of every client's choices.
    pub seed: u64,
    /// How long faults are injected under load.
    pub duration: Duration,
    /// Nodes.
    pub nodes: usize,
    /// Zones.
    pub zones: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Replicas per item (N).
    pub replication: usize,
    /// Write quorum (W).
    pub write_quorum: usize,
    /// Fault kinds in the schedule.
    pub faults: Vec<Fault>,
    /// Working directory (history, summary, logs, disks).
    pub dir: PathBuf,
    /// Directory of the `mirage` and `mirage-node` binaries.
    pub bin_dir: PathBuf,
    /// The stated convergence bound after the faults stop.
    pub converge: Duration,
    /// How long repair may take to bring every item back to N intact copies.
    pub repair: Duration,
    /// Acknowledged images checked out once more after the faults.
    pub final_checkouts: usize,
}

impl RunConfig {
    /// The command that replays this run.
    pub fn replay(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|f| {
                serde_json::to_value(f)
                    .ok()
                    .and_then(|v| v.as_str().map(|s| s.replace('_', "-")))
                    .unwrap_or_default()
            })
            .collect();
        format!(
            "sudo mirage-chaos run --seed {} --duration {} --nodes {} --zones {} --clients {} \
             --replication {} --write-quorum {} --faults {}",
            self.seed,
            self.duration.as_secs(),
            self.nodes,
            self.zones,
            self.clients,
            self.replication,
            self.write_quorum,
            faults.join(",")
        )
    }
}

/// The result of one checker.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    /// Invariant.
    pub name: &'static str,
    /// Whether it held.
    pub ok: bool,
    /// Figures, or the violation.
    pub detail: String,
}

/// What a run did and found.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Seed.
    pub seed: u64,
    /// Command that replays it.
    pub replay: String,
    /// Nodes, clients, N, W.
    pub nodes: usize,
    /// Clients.
    pub clients: usize,
    /// Seconds of faults under load.
    pub duration_s: u64,
    /// Wall time of the whole run, s.
    pub wall_s: u64,
    /// Faults injected, per kind.
    pub faults: Counts,
    /// Kill, partition and pause faults.
    pub counted_faults: u64,
    /// Operations per kind and outcome.
    pub ops: BTreeMap<String, BTreeMap<String, u64>>,
    /// Node processes that exited on their own during the run (id, status).
    pub node_exits: Vec<(usize, String)>,
    /// Checker results.
    pub checks: Vec<CheckResult>,
    /// Whether every checker passed.
    pub passed: bool,
    /// The history file.
    pub history: String,
}

/// Runs one chaos run.
pub fn run(cfg: &RunConfig) -> Result<Summary, HarnessError> {
    let wall = Instant::now();
    std::fs::create_dir_all(&cfg.dir).map_err(|e| HarnessError::io(&cfg.dir, e))?;
    let mut c = Cluster::start(Spec {
        nodes: cfg.nodes,
        zones: cfg.zones,
        replication: cfg.replication,
        write_quorum: cfg.write_quorum,
        bin_dir: cfg.bin_dir.clone(),
        dir: cfg.dir.join("cluster"),
        disk_mb: 3072,
        repair_every: 5,
        dead_after: 60,
    })?;
    for u in USERS {
        c.admin(
            1,
            "/v1/catalog/command",
            json!({"op": "add_user", "name": u, "admin": false}),
        )?;
    }
    let history_path = cfg.dir.join("history.jsonl");
    let shared = Arc::new(Shared {
        history: History::create(&history_path).map_err(|e| HarnessError::io(&history_path, e))?,
        stored: Mutex::new(Vec::new()),
        stop: Default::default(),
        start: Instant::now(),
        seed: cfg.seed,
    });
    let target = Target {
        urls: c.urls(),
        token: c.token.clone(),
        mirage: c.mirage(),
    };
    let mut threads = Vec::new();
    for id in 0..cfg.clients {
        let client = Client::new(
            id,
            cfg.seed,
            target.clone(),
            &cfg.dir.join(format!("client{id}")),
        )
        .map_err(|e| HarnessError::io(&cfg.dir, e))?;
        let sh = shared.clone();
        threads.push(std::thread::spawn(move || client.run(sh)));
    }

    // Faults, one at a time, for the duration.
    let mut counts = Counts::new();
    let mut exits = Vec::new();
    let schedule = nemesis::schedule(cfg.seed, 100_000, &cfg.faults);
    let start = Instant::now();
    for step in &schedule {
        if start.elapsed() >= cfg.duration {
            break;
        }
        let what = nemesis::start(&mut c, step)?;
        shared.history.nemesis(&format!("{:?}", step.fault), &what);
        tracing::info!("fault: {what}");
        *counts.entry(step.fault).or_insert(0) += 1;
        watch(&mut c, &shared.history, &mut exits, step.hold_ms);
        c.heal()?;
        shared.history.nemesis("heal", "");
        watch(&mut c, &shared.history, &mut exits, step.gap_ms);
    }
    shared.stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let stopped = Instant::now();
    c.heal()?;
    exits.extend(c.exited());

    let mut checks = Vec::new();
    // Liveness first: the other checkers need a working cluster.
    let live = liveness::converge(&c, cfg.converge);
    checks.push(result(
        "liveness",
        live.map(|d| {
            format!(
                "converged {:.1} s after the faults stopped (bound {} s)",
                d.as_secs_f64(),
                cfg.converge.as_secs()
            )
        }),
    ));

    // Final reads of every name, and a sample of checkouts, into the history; first the
    // nodes' retries of proposals still in flight run out (`raft::node`: about 15 s).
    std::thread::sleep(Duration::from_secs(20).saturating_sub(stopped.elapsed()));
    let names: std::collections::BTreeSet<String> = history::read(&history_path)
        .map(|(pairs, _)| {
            pairs
                .iter()
                .filter_map(|p| match &p.op {
                    Op::Catalog { op } => Some(op.name().to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut finisher = Client::new(cfg.clients, cfg.seed, target, &cfg.dir.join("final"))
        .map_err(|e| HarnessError::io(&cfg.dir, e))?;
    let mut last = BTreeMap::new();
    for name in &names {
        match finisher.catalog_op(&shared, CatOp::Read { name: name.clone() }) {
            CatRet::Named(v) => {
                last.insert(name.clone(), v);
            }
            other => tracing::warn!("final read of {name}: {other:?}"),
        }
    }
    let stored: Vec<Stored> = shared.stored.lock().map(|s| s.clone()).unwrap_or_default();
    for s in stored
        .iter()
        .step_by((stored.len() / cfg.final_checkouts.max(1)).max(1))
    {
        finisher.checkout_image(&shared, s.image.clone());
    }
    shared
        .history
        .finish()
        .map_err(|e| HarnessError::io(&history_path, e))?;

    let (pairs, _) =
        history::read(&history_path).map_err(|e| HarnessError::io(&history_path, e))?;
    let mut events = catalog_events(&pairs);
    let before = events.len();
    linear::prune_unknown(&mut events, &last);
    let pruned = before - events.len();
    checks.push(result(
        "linearizable",
        linear::check(&events)
            .map(|mut s| {
                s.pruned = pruned;
                s
            })
            .map(|s| format!("{} names, {} operations ({} without an answer, {} more shown by the final reads not to have happened), {} states searched", s.names, s.ops, s.unknown, s.pruned, s.states))
            .map_err(|v| v.to_string()),
    ));
    checks.push(result(
        "acknowledged-writes-present",
        catalog::acknowledged_present(&events, &last)
            .map(|n| format!("{n} acknowledged checkins and deletes found")),
    ));
    checks.push(result(
        "checkouts-identical",
        checkout::identical(&pairs).map(|n| format!("{n} checkouts identical to what was stored")),
    ));
    let roots: Vec<(String, PathBuf)> = stored
        .iter()
        .map(|s| (s.image.clone(), s.cache.clone()))
        .collect();
    let (w, n) = data_checks(&c, cfg, &roots);
    checks.push(w);
    checks.push(n);
    exits.extend(c.exited());

    let passed = checks.iter().all(|x| x.ok);
    let summary = Summary {
        seed: cfg.seed,
        replay: cfg.replay(),
        nodes: cfg.nodes,
        clients: cfg.clients,
        duration_s: cfg.duration.as_secs(),
        wall_s: wall.elapsed().as_secs(),
        counted_faults: counts
            .iter()
            .filter(|(f, _)| f.counted())
            .map(|(_, n)| n)
            .sum(),
        faults: counts,
        ops: op_counts(&pairs),
        node_exits: exits,
        checks,
        passed,
        history: history_path.display().to_string(),
    };
    let path = cfg.dir.join("summary.json");
    if let Ok(text) = serde_json::to_string_pretty(&summary) {
        std::fs::write(&path, text).map_err(|e| HarnessError::io(&path, e))?;
    }
    Ok(summary)
}

/// Sleeps `ms`, noting node processes that exit on their own meanwhile.
fn watch(c: &mut Cluster, h: &History, exits: &mut Vec<(usize, String)>, ms: u64) {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        for (id, status) in c.exited() {
            // Its last words: why it stopped (the working directory may be gone by the time
            // a failed run is read).
            let text = std::fs::read_to_string(c.log(id)).unwrap_or_default();
            let last: Vec<&str> = text.lines().rev().take(3).collect();
            let said = last.into_iter().rev().collect::<Vec<_>>().join(" | ");
            h.nemesis("node-exit", &format!("node {id} exited: {status}: {said}"));
            tracing::warn!("node {id} exited on its own: {status}; its log ends: {said}");
            exits.push((id, format!("{status}: {said}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn result(name: &'static str, r: Result<String, String>) -> CheckResult {
    match r {
        Ok(detail) => CheckResult {
            name,
            ok: true,
            detail,
        },
        Err(detail) => CheckResult {
            name,
            ok: false,
            detail,
        },
    }
}

/// The catalog operations of a history as the linearizability checker takes them.
pub fn catalog_events(pairs: &[history::Pair]) -> Vec<Event> {
    pairs
        .iter()
        .filter_map(|p| {
            let Op::Catalog { op } = &p.op else {
                return None;
            };
            let (ret, done) = match &p.done {
                Some((
                    _,
                    Outcome::Catalog {
                        ret: CatRet::Err(e),
                    },
                )) if e == NOT_SENT => return None,
                Some((seq, Outcome::Catalog { ret })) if *ret != CatRet::Unknown => {
                    (ret.clone(), *seq)
                }
                _ => (CatRet::Unknown, u64::MAX),
            };
            Some(Event {
                client: p.client,
                op: op.clone(),
                ret,
                call: p.call,
                done,
            })
        })
        .collect()
}

fn op_counts(pairs: &[history::Pair]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for p in pairs {
        let kind = match &p.op {
            Op::Catalog { op } => match op {
                CatOp::Checkin { .. } => "add-version",
                CatOp::SetDefault { .. } => "set-default",
                CatOp::Delete { .. } => "delete",
                CatOp::Grant { .. } | CatOp::Revoke { .. } => "acl",
                CatOp::Read { .. } => "read",
            },
            Op::Store { .. } => "checkin",
            Op::Checkout { .. } => "checkout",
        };
        let outcome = match &p.done {
            None => "unfinished",
            Some((
                _,
                Outcome::Catalog {
                    ret: CatRet::Unknown,
                },
            )) => "unknown",
            Some((
                _,
                Outcome::Catalog {
                    ret: CatRet::Err(e),
                },
            )) if e == NOT_SENT => "not-sent",
            Some((
                _,
                Outcome::Catalog {
                    ret: CatRet::Err(_),
                },
            )) => "refused",
            Some((_, Outcome::Failed { .. })) => "failed",
            Some(_) => "ok",
        };
        *out.entry(kind.to_string())
            .or_default()
            .entry(outcome.to_string())
            .or_insert(0) += 1;
    }
    out
}

/// The two data-path checkers: at least W holders after heal, then N intact copies on the
/// replica nodes after scrub and repair.
fn data_checks(
    c: &Cluster,
    cfg: &RunConfig,
    roots: &[(String, PathBuf)],
) -> (CheckResult, CheckResult) {
    let ds: Vec<mirage_format::Digest> = match items::closures(roots) {
        Ok(s) => s.into_iter().collect(),
        Err(e) => {
            let r = |name| {
                result(
                    name,
                    Err(format!("closure of the acknowledged images: {e}")),
                )
            };
            return (r("items-on-w-nodes"), r("items-on-n-nodes-after-repair"));
        }
    };
    let w = match items::holders(c, &ds) {
        Ok(h) => {
            let short: Vec<String> = ds
                .iter()
                .zip(&h)
                .filter(|(_, h)| h.len() < cfg.write_quorum)
                .map(|(d, h)| format!("{d} on {h:?}"))
                .collect();
            let min = h.iter().map(Vec::len).min().unwrap_or(0);
            if short.is_empty() {
                Ok(format!(
                    "{} items of {} images, fewest copies {min} (W = {})",
                    ds.len(),
                    roots.len(),
                    cfg.write_quorum
                ))
            } else {
                Err(format!(
                    "{} of {} items on fewer than W = {} nodes: {}",
                    short.len(),
                    ds.len(),
                    cfg.write_quorum,
                    short
                        .iter()
                        .take(20)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
        Err(e) => Err(e.to_string()),
    };
    let n = repaired(c, cfg, &ds);
    (
        result("items-on-w-nodes", w),
        result("items-on-n-nodes-after-repair", n),
    )
}

fn repaired(c: &Cluster, cfg: &RunConfig, ds: &[mirage_format::Digest]) -> Result<String, String> {
    let layout = c
        .admin(1, "/v1/catalog/query", json!({"q": "layout"}))
        .map_err(|e| e.to_string())?;
    let layout: mirage_cluster_config::Layout =
        serde_json::from_value(layout["layout"].clone()).map_err(|e| format!("layout: {e}"))?;
    let placement = layout.placement();
    let start = Instant::now();
    let mut rounds = 0;
    loop {
        rounds += 1;
        for id in 1..=c.spec.nodes {
            let _ = c.admin(id, "/v1/admin/scrub", json!({}));
        }
        for id in 1..=c.spec.nodes {
            let _ = c.admin(id, "/v1/admin/repair", json!({}));
        }
        let mut bad = Vec::new();
        for id in 1..=c.spec.nodes {
            let owned: Vec<_> = ds
                .iter()
                .copied()
                .filter(|d| placement.nodes_for(d).contains(&(id as u64)))
                .collect();
            match items::intact_on(c, id, &owned) {
                Ok(good) => bad.extend(
                    owned
                        .iter()
                        .filter(|d| !good.contains(d))
                        .map(|d| format!("{d} on node {id}")),
                ),
                Err(e) => bad.push(format!("node {id}: {e}")),
            }
        }
        if bad.is_empty() {
            return Ok(format!(
                "{} items intact on all {} replica nodes after {rounds} scrub+repair round(s), {:.1} s",
                ds.len(),
                cfg.replication,
                start.elapsed().as_secs_f64()
            ));
        }
        if start.elapsed() > cfg.repair {
            return Err(format!(
                "{} copies still missing or damaged {} s after repair started: {}",
                bad.len(),
                cfg.repair.as_secs(),
                bad.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
