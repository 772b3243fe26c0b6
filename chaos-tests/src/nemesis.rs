//! Faults: a schedule drawn from the run's seed (the same seed gives the same schedule: kinds,
//! durations, gaps and the random numbers that pick targets), applied to the cluster one at a
//! time, each undone before the next.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::harness::cluster::Cluster;
use crate::harness::HarnessError;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL a minority of nodes, restart them at the end.
    Kill,
    /// SIGSTOP a minority of nodes, SIGCONT at the end.
    Pause,
    /// Split the nodes into a majority and a minority.
    Partition,
    /// Cut the catalog leader off from every other node.
    IsolateLeader,
    /// Two halves that cannot reach each other, and one node both reach.
    Bridge,
    /// One node cannot send to some others (they can still send to it).
    Asymmetric,
    /// A node cannot reach the clients, nor they it.
    IsolateClients,
    /// A minority of nodes' data disks are full.
    DiskFull,
    /// Bytes flipped in one node's stored volumes (instant; found by scrub).
    Corrupt,
}

impl Fault {
    /// Every kind, with its weight in the schedule.
    pub const WEIGHTS: [(Fault, u32); 9] = [
        (Fault::Kill, 22),
        (Fault::Pause, 18),
        (Fault::Partition, 15),
        (Fault::IsolateLeader, 12),
        (Fault::Bridge, 6),
        (Fault::Asymmetric, 6),
        (Fault::IsolateClients, 5),
        (Fault::DiskFull, 9),
        (Fault::Corrupt, 7),
    ];

    /// Whether this is one of the kill, partition and pause faults the issue counts.
    pub fn counted(self) -> bool {
        !matches!(self, Fault::DiskFull | Fault::Corrupt)
    }
}

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What.
    pub fault: Fault,
    /// How long it lasts, ms.
    pub hold_ms: u64,
    /// Quiet time after it is undone, ms.
    pub gap_ms: u64,
    /// Seed of the choices it makes (which nodes).
    pub pick: u64,
}

/// The schedule of a run with `seed`: `count` faults (enough for any duration; the run stops
/// using it when its time is up).
pub fn schedule(seed: u64, count: usize, kinds: &[Fault]) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let table: Vec<(Fault, u32)> = Fault::WEIGHTS
        .iter()
        .copied()
        .filter(|(f, _)| kinds.contains(f))
        .collect();
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    (0..count)
        .map(|_| {
            let mut r = rng.gen_range(0..total.max(1));
            let mut fault = Fault::Kill;
            for (f, w) in &table {
                if r < *w {
                    fault = *f;
                    break;
                }
                r -= w;
            }
            Step {
                fault,
                hold_ms: rng.gen_range(1_000..6_000),
                gap_ms: rng.gen_range(500..2_500),
                pick: rng.gen(),
            }
        })
        .collect()
}

/// Faults injected so far, per kind.
pub type Counts = BTreeMap<Fault, u64>;

/// Starts fault `step` on `c`; answers a description of what it did.
pub fn start(c: &mut Cluster, step: &Step) -> Result<String, HarnessError> {
    let n = c.spec.nodes;
    let mut rng = StdRng::seed_from_u64(step.pick);
    let mut ids: Vec<usize> = (1..=n).collect();
    ids.shuffle(&mut rng);
    let minority = (n - 1) / 2;
    let k = rng.gen_range(1..=minority.max(1));
    Ok(match step.fault {
        Fault::Kill => {
            let v = &ids[..k];
            for &id in v {
                c.kill(id)?;
            }
            format!("killed {v:?}")
        }
        Fault::Pause => {
            let v = &ids[..k];
            for &id in v {
                c.pause(id)?;
            }
            format!("paused {v:?}")
        }
        Fault::Partition => {
            let (a, b) = ids.split_at(k);
            c.net.split(a, b)?;
            format!("partition {a:?} | {b:?}")
        }
        Fault::IsolateLeader => {
            let leader = c.leader().unwrap_or(ids[0]);
            let rest: Vec<usize> = (1..=n).filter(|&i| i != leader).collect();
            c.net.split(&[leader], &rest)?;
            format!("isolated leader {leader}")
        }
        Fault::Bridge => {
            // ids[0] is the bridge; the rest split in two halves.
            let rest = &ids[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            c.net.split(a, b)?;
            format!("bridge {} between {a:?} and {b:?}", ids[0])
        }
        Fault::Asymmetric => {
            let from = ids[0];
            let to: Vec<usize> = ids[1..]
                .iter()
                .copied()
                .filter(|_| rng.gen_bool(0.6))
                .collect();
            for &t in &to {
                c.net.cut(from, t)?;
            }
            format!("{from} cannot send to {to:?}")
        }
        Fault::IsolateClients => {
            c.net.cut_host(ids[0])?;
            format!("clients cut off from {}", ids[0])
        }
        Fault::DiskFull => {
            let v = &ids[..k];
            let mut taken = Vec::new();
            for &id in v {
                taken.push(c.nodes[id - 1].disk.fill()?);
            }
            format!("disk full on {v:?} (bytes taken {taken:?})")
        }
        Fault::Corrupt => {
            let id = ids[0];
            let flips = rng.gen_range(1..=4);
            let done = c.nodes[id - 1].disk.corrupt(&mut rng, flips)?;
            format!("corrupted node {id}: {}", done.join(", "))
        }
    })
}
