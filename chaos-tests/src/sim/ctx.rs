//! What the simulated hosts and the driver share: the nodes' disks (which outlive crashes),
//! their published status, the recorded history and trace, and counters. Everything runs on
//! the simulation's one thread, in an order fixed by the seed; ordered maps only, so nothing
//! depends on hashing.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::storage::{Disk, SharedDisk};
use super::SimConfig;
use crate::check::linear::Event;

/// Locks `m` (a poisoned lock still holds the data: the simulation is single-threaded).
pub fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A node as it last published itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its software runs (false while crashed).
    pub running: bool,
    /// Leader, follower, candidate, learner or shutdown.
    pub state: String,
    /// Current term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<u64>,
    /// Last log index.
    pub last_log: Option<u64>,
    /// Last applied index.
    pub applied: Option<u64>,
    /// Incarnation (1 for the first start, one more per restart).
    pub incarnation: u64,
}

/// Operations by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    /// Succeeded.
    pub ok: u64,
    /// Definitely refused by the catalog.
    pub refused: u64,
    /// No answer: may or may not have happened.
    pub unknown: u64,
}

/// Layout changes proposed during a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutOps {
    /// Changes by kind (`add`, `drain`, …) and outcome.
    pub changes: BTreeMap<String, Outcomes>,
    /// Layout versions acknowledged to the proposer.
    pub acked_versions: Vec<u64>,
}

/// Shared state of one run.
#[derive(Debug)]
pub struct Ctx {
    /// The run's seed.
    pub seed: u64,
    /// The configuration.
    pub cfg: SimConfig,
    /// Disks by node id.
    pub disks: BTreeMap<u64, SharedDisk>,
    /// Published status by node id.
    pub status: Mutex<BTreeMap<u64, NodeStatus>>,
    /// Completed (or abandoned) client operations, in completion order.
    pub history: Mutex<Vec<Event>>,
    /// Operations by kind and outcome.
    pub ops: Mutex<BTreeMap<String, Outcomes>>,
    /// Layout changes.
    pub layout: Mutex<LayoutOps>,
    /// Everything that happened, one line per event, in order.
    pub trace: Mutex<Vec<String>>,
    /// Set once the setup (users, first layout) is acknowledged.
    pub setup_done: Mutex<bool>,
    /// Set when the setup could not be completed.
    pub setup_failed: Mutex<Option<String>>,
}

/// The simulated time, in microseconds since the start (0 outside a host).
pub fn now_us() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_micros() as u64)
}

/// The simulated time.
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Host name of node `id`.
pub fn host_name(id: u64) -> String {
    format!("n{id}")
}

/// `splitmix64`-style mixing of a seed with a stream number: independent streams per use.
pub fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Ctx {
    /// The shared state of a run of `cfg` with `seed`.
    pub fn new(seed: u64, cfg: &SimConfig) -> Ctx {
        let ids = 1..=cfg.nodes as u64;
        Ctx {
            seed,
            cfg: cfg.clone(),
            disks: ids
                .clone()
                .map(|id| (id, Disk::new(id, cfg.inject)))
                .collect(),
            status: Mutex::new(ids.map(|id| (id, NodeStatus::default())).collect()),
            history: Mutex::default(),
            ops: Mutex::default(),
            layout: Mutex::default(),
            trace: Mutex::default(),
            setup_done: Mutex::new(false),
            setup_failed: Mutex::new(None),
        }
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.disks.keys().copied().collect()
    }

    /// Appends a line to the trace, stamped with the simulated time (of the host running).
    pub fn trace(&self, line: impl AsRef<str>) {
        self.trace_at(now(), line);
    }

    /// Appends a line to the trace stamped with `t` (the driver, between steps).
    pub fn trace_at(&self, t: Duration, line: impl AsRef<str>) {
        let t = t.as_micros();
        guard(&self.trace).push(format!("{t:>10} {}", line.as_ref()));
    }

    /// Records that node `id` starts; returns its incarnation.
    pub fn started(&self, id: u64) -> u64 {
        let mut st = guard(&self.status);
        let s = st.entry(id).or_default();
        s.running = true;
        s.incarnation += 1;
        let inc = s.incarnation;
        drop(st);
        self.trace(format!("n{id} starts (incarnation {inc})"));
        inc
    }

    /// Records that node `id` was crashed.
    pub fn crashed(&self, id: u64) {
        if let Some(s) = guard(&self.status).get_mut(&id) {
            s.running = false;
            s.state = "crashed".into();
        }
    }

    /// Publishes node `id`'s status (the running flag and incarnation are kept).
    pub fn publish(&self, id: u64, mut status: NodeStatus) {
        let mut st = guard(&self.status);
        let s = st.entry(id).or_default();
        status.running = s.running;
        status.incarnation = s.incarnation;
        *s = status;
    }

    /// A copy of every node's status.
    pub fn statuses(&self) -> BTreeMap<u64, NodeStatus> {
        guard(&self.status).clone()
    }

    /// Counts an operation's outcome.
    pub fn count(&self, kind: &str, outcome: Outcome) {
        let mut ops = guard(&self.ops);
        let o = ops.entry(kind.to_string()).or_default();
        match outcome {
            Outcome::Ok => o.ok += 1,
            Outcome::Refused => o.refused += 1,
            Outcome::Unknown => o.unknown += 1,
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded.
    Ok,
    /// Refused.
    Refused,
    /// Unknown.
    Unknown,
}
