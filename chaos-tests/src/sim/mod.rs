//! Deterministic simulation of the catalog's Raft group and the placement logic (turmoil).
//!
//! A run starts `nodes` catalog members — each a real `openraft::Raft` with the catalog's
//! entry types, over an in-memory log and state machine that apply entries with the
//! catalog's own code ([`storage`]) — and one host of clients, on turmoil's simulated network
//! and clock. The clients write and read a few named images (and a layout client changes the
//! cluster layout) while a schedule drawn from the seed partitions, isolates the leader, drops
//! and holds messages and crashes nodes ([`faults`]). Then every fault is healed and the run
//! checks that the group converges in time, that every node holds the same catalog with every
//! acknowledged write in it, that the history is linearizable against the sequential model
//! ([`crate::check::linear`]), and that every layout version is gap-free and places replicas
//! soundly ([`verify`]).
//!
//! Everything that varies — the network's delays and losses, the fault schedule, the clients'
//! choices, openraft's election timeouts ([`runtime::SimRt`]) — comes from the seed, and
//! nothing depends on hashing or on tokio's own randomness, so a seed replays exactly; [`SimReport::trace_digest`] hashes the whole event trace and final
//! state to show it.

pub mod client;
pub mod ctx;
pub mod faults;
pub mod node;
pub mod runtime;
pub mod storage;
pub mod types;
pub mod verify;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirage_format::{Algorithm, Hasher};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::check::linear::{self, CheckStats, Event, Violation};
use ctx::{guard, host_name, mix, Ctx, LayoutOps, Outcomes};
pub use faults::FaultRates;
pub use storage::{DiskStats, Inject};

/// What a run simulates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Catalog nodes (Raft voters).
    pub nodes: usize,
    /// Concurrent catalog clients (plus one layout client).
    pub clients: usize,
    /// Named images the clients work on.
    pub names: usize,
    /// Faults start after this.
    pub warmup: Duration,
    /// Faults and the workload stop here (simulated time from the start); then every fault is
    /// healed.
    pub duration: Duration,
    /// After the heal, the group must converge within this.
    pub converge_within: Duration,
    /// Faults.
    pub faults: FaultRates,
    /// A client's pause between two operations (range).
    pub think: (Duration, Duration),
    /// How long a client retries one operation (through other nodes, with the same request
    /// id) before recording it as unknown.
    pub op_deadline: Duration,
    /// Mean time between two layout changes (zero: none).
    pub layout_every: Duration,
    /// Simulation step.
    pub tick: Duration,
    /// Shortest network delay.
    pub min_latency: Duration,
    /// Longest network delay.
    pub max_latency: Duration,
    /// Raft heartbeat.
    pub heartbeat: Duration,
    /// Raft election timeout range.
    pub election: (Duration, Duration),
    /// Entries between two snapshots (the log is purged behind them, so lagging nodes get
    /// snapshots installed).
    pub snapshot_every: u64,
    /// A deliberate defect (for testing the checks).
    pub inject: Option<Inject>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 5,
            clients: 4,
            names: 3,
            warmup: Duration::from_secs(3),
            duration: Duration::from_secs(20),
            converge_within: Duration::from_secs(30),
            faults: FaultRates::default(),
            think: (Duration::from_millis(20), Duration::from_millis(200)),
            op_deadline: Duration::from_secs(8),
            layout_every: Duration::from_millis(1500),
            tick: Duration::from_millis(2),
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(15),
            heartbeat: Duration::from_millis(250),
            election: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_every: 64,
            inject: None,
        }
    }
}

impl SimConfig {
    /// The default configuration varied by seed, so that a range of seeds covers three- and
    /// five-node groups, frequent and rare snapshots (a node that falls behind gets a snapshot
    /// installed), and light and heavy message loss.
    pub fn varied(seed: u64) -> SimConfig {
        let mut cfg = SimConfig {
            nodes: if seed % 2 == 0 { 3 } else { 5 },
            snapshot_every: [64, 16, 256][(seed % 3) as usize],
            ..SimConfig::default()
        };
        cfg.faults.loss_rate = [0.1, 0.3][((seed / 2) % 2) as usize];
        cfg
    }
}

/// What a run did and found (every check passed).
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Catalog nodes.
    pub nodes: usize,
    /// Catalog clients.
    pub clients: usize,
    /// The configuration run.
    pub config: SimConfig,
    /// Client operations by kind and outcome.
    pub ops: BTreeMap<String, Outcomes>,
    /// Client operations in all.
    pub ops_total: u64,
    /// Fault episodes by kind.
    pub faults: BTreeMap<String, u64>,
    /// Layout changes proposed, by kind and outcome.
    pub layout: LayoutOps,
    /// Layout versions at the end.
    pub layout_versions: u64,
    /// (layout version, partition) placements checked.
    pub placements_checked: u64,
    /// What the linearizability check covered.
    pub linearizability: CheckStats,
    /// Acknowledged writes found on every node.
    pub acked_writes_checked: usize,
    /// Simulated time from the heal to convergence (the moment the group had stayed converged
    /// for 600 ms).
    pub converged_after_ms: u64,
    /// The bound on that.
    pub converge_limit_ms: u64,
    /// The group's last log index at the end.
    pub final_log_index: u64,
    /// The leader's term at the end.
    pub final_term: u64,
    /// Storage counters by node.
    pub storage: BTreeMap<u64, DiskStats>,
    /// SHA-256 of the event trace, the history and the final state: equal for equal seeds.
    pub trace_digest: String,
    /// Lines in the trace.
    pub trace_events: usize,
    /// Simulated time of the run.
    pub simulated_ms: u64,
    /// Wall time of the run.
    pub wall_ms: u64,
}

/// Why a run failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FailureKind {
    /// The configuration cannot be simulated.
    #[error("configuration: {0}")]
    Config(String),
    /// The simulator or a host's software failed.
    #[error("simulator: {0}")]
    Simulator(String),
    /// The users or the first layout could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// The group did not converge in time after the heal.
    #[error("no convergence: {0}")]
    NoConvergence(String),
    /// An acknowledged write is missing.
    #[error("lost write: {0}")]
    LostWrite(String),
    /// Nodes hold different catalogs after converging.
    #[error("diverged: {0}")]
    Diverged(String),
    /// The history is not linearizable (or could not be shown to be).
    #[error(transparent)]
    NotLinearizable(Violation),
    /// A layout or placement check failed.
    #[error("layout: {0}")]
    Layout(String),
}

/// A failed run: the seed and what failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "seed {seed}: {kind}\n  replay: MIRAGE_SIM_SEED={seed} cargo test -p mirage-chaos-tests \
     --test sim -- --nocapture seeds"
)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// What failed.
    pub kind: FailureKind,
}

/// A run with everything it recorded, for debugging a failure.
#[derive(Debug)]
pub struct Traced {
    /// The outcome.
    pub result: Result<SimReport, SimFailure>,
    /// Client operations, in completion order.
    pub history: Vec<Event>,
    /// The trace.
    pub trace: Vec<String>,
}

/// Runs one seed; see the module documentation.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<SimReport, SimFailure> {
    run_traced(seed, cfg).result
}

/// [`run`], also returning the history and the trace.
pub fn run_traced(seed: u64, cfg: &SimConfig) -> Traced {
    let ctx = Arc::new(Ctx::new(seed, cfg));
    let result = drive(&ctx).map_err(|kind| SimFailure { seed, kind });
    let history = guard(&ctx.history).clone();
    let trace = guard(&ctx.trace).clone();
    Traced {
        result,
        history,
        trace,
    }
}

fn check_config(cfg: &SimConfig) -> Result<(), FailureKind> {
    let bad = |m: &str| Err(FailureKind::Config(m.into()));
    if !(1..=9).contains(&cfg.nodes) {
        return bad("1 to 9 nodes");
    }
    if cfg.names == 0 || cfg.clients == 0 {
        return bad("at least one client and one name");
    }
    if cfg.tick.is_zero()
        || cfg.op_deadline.is_zero()
        || cfg.max_latency < cfg.min_latency
        || cfg.think.1 < cfg.think.0
    {
        return bad("a tick above zero, and ordered latency and think ranges");
    }
    if cfg.election.0 <= cfg.heartbeat || cfg.election.1 <= cfg.election.0 {
        return bad("heartbeat < election min < election max");
    }
    let f = &cfg.faults;
    if f.max_length < f.min_length
        || !(0.0..1.0).contains(&f.loss_rate)
        || !(0.0..=1.0).contains(&f.crash_all)
    {
        return bad(
            "fault lengths ordered, a loss rate in [0, 1) and a crash-all chance in [0, 1]",
        );
    }
    Ok(())
}

/// How long the group must stay converged (more than a heartbeat, so that a commit index on
/// its way to a follower is seen).
const SETTLE: Duration = Duration::from_millis(600);

/// Each node's last log index and applied index, from its disk.
fn disk_indexes(ctx: &Ctx) -> BTreeMap<u64, (Option<u64>, Option<u64>)> {
    ctx.disks
        .iter()
        .map(|(id, d)| {
            let d = storage::lock(d);
            (
                *id,
                (d.last_log_index(), d.state().applied.map(|l| l.index)),
            )
        })
        .collect()
}

fn drive(ctx: &Arc<Ctx>) -> Result<SimReport, FailureKind> {
    let cfg = &ctx.cfg;
    check_config(cfg)?;
    let wall = Instant::now();
    let heal_at = cfg.duration;
    let limit = heal_at + cfg.converge_within;
    let mut sim = turmoil::Builder::new()
        .simulation_duration(limit + Duration::from_secs(60))
        .tick_duration(cfg.tick)
        .min_message_latency(cfg.min_latency)
        .max_message_latency(cfg.max_latency)
        .tcp_capacity(4096)
        .repair_rate(0.5)
        .build_with_rng(Box::new(StdRng::seed_from_u64(mix(ctx.seed, 1))));
    for id in ctx.ids() {
        let c = ctx.clone();
        sim.host(host_name(id), move || node::host(c.clone(), id));
    }
    sim.client(faults::CLIENTS_HOST, client::run(ctx.clone()));
    let mut injector = faults::Injector::new(faults::plan(ctx.seed, cfg));
    let sim_err = |e: Box<dyn std::error::Error>| FailureKind::Simulator(e.to_string());
    let mut healed = false;
    // The index last seen converged, and since when: convergence must hold for `SETTLE`.
    let mut stable: Option<(u64, Duration)> = None;
    let (converged_at, last_index) = loop {
        let t = sim.elapsed();
        if t < heal_at {
            injector.step(&mut sim, ctx, t);
        } else if !healed {
            injector.heal(&mut sim, ctx, t);
            healed = true;
        }
        let clients_done = sim.step().map_err(sim_err)?;
        if let Some(e) = guard(&ctx.setup_failed).clone() {
            return Err(FailureKind::Setup(e));
        }
        if healed && clients_done {
            let now = sim.elapsed();
            match (
                verify::converged(&ctx.statuses(), &disk_indexes(ctx)),
                stable,
            ) {
                (Some(i), Some((j, since))) if i == j => {
                    if now >= since + SETTLE {
                        break (now, i);
                    }
                }
                (Some(i), _) => stable = Some((i, now)),
                (None, _) => stable = None,
            }
        }
        if sim.elapsed() > limit {
            return Err(FailureKind::NoConvergence(format!(
                "{} s after the heal (clients done: {clients_done}): {:?}",
                cfg.converge_within.as_secs(),
                ctx.statuses()
            )));
        }
    };
    ctx.trace_at(converged_at, format!("converged at index {last_index}"));
    let history = guard(&ctx.history).clone();
    let states = node::states(ctx);
    let mut acked = 0;
    for (id, s) in &states {
        acked += verify::acked_present(&history, *id, s).map_err(FailureKind::LostWrite)?;
    }
    verify::same_state(&states).map_err(|e| {
        let disks: Vec<String> = ctx
            .disks
            .values()
            .map(|d| storage::lock(d).summary())
            .collect();
        FailureKind::Diverged(format!("{e}\n  {}", disks.join("\n  ")))
    })?;
    let Some(state) = states.values().next() else {
        return Err(FailureKind::Config("no nodes".into()));
    };
    let at = converged_at.as_micros() as u64;
    let mut full = history.clone();
    full.extend(
        verify::final_reads(state, cfg.names, cfg.clients + 1, at)
            .map_err(FailureKind::Diverged)?,
    );
    let lin = linear::check(&full).map_err(FailureKind::NotLinearizable)?;
    let layout = guard(&ctx.layout).clone();
    let lc = verify::layouts(state, &layout.acked_versions).map_err(FailureKind::Layout)?;
    let statuses = ctx.statuses();
    let ops = guard(&ctx.ops).clone();
    let trace = guard(&ctx.trace).clone();
    let digest = digest(&trace, &history, state);
    Ok(SimReport {
        seed: ctx.seed,
        nodes: cfg.nodes,
        clients: cfg.clients,
        config: cfg.clone(),
        ops_total: ops.values().map(|o| o.ok + o.refused + o.unknown).sum(),
        ops,
        faults: injector.counts.clone(),
        layout,
        layout_versions: lc.versions,
        placements_checked: lc.placements,
        linearizability: lin,
        acked_writes_checked: acked,
        converged_after_ms: (converged_at.saturating_sub(heal_at)).as_millis() as u64,
        converge_limit_ms: cfg.converge_within.as_millis() as u64,
        final_log_index: last_index,
        final_term: statuses.values().map(|s| s.term).max().unwrap_or(0),
        storage: ctx
            .disks
            .iter()
            .map(|(id, d)| (*id, storage::lock(d).stats()))
            .collect(),
        trace_digest: digest,
        trace_events: trace.len(),
        simulated_ms: converged_at.as_millis() as u64,
        wall_ms: wall.elapsed().as_millis() as u64,
    })
}

/// SHA-256 over the trace, the history and the final state.
fn digest(trace: &[String], history: &[Event], state: &storage::SmState) -> String {
    let mut h = Hasher::new(Algorithm::Sha256);
    for line in trace {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    h.update(&serde_json::to_vec(history).unwrap_or_default());
    for (k, v) in &state.kv {
        h.update(&(k.len() as u64).to_be_bytes());
        h.update(k);
        h.update(&(v.len() as u64).to_be_bytes());
        h.update(v);
    }
    for (i, v) in &state.log {
        h.update(&i.to_be_bytes());
        h.update(v);
    }
    h.finalize().map(|d| d.to_text()).unwrap_or_default()
}
