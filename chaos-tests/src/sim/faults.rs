//! The faults of a run: a schedule drawn from the seed before the run starts (two tracks: the
//! network — partitions, the leader isolated, message loss, messages held — one episode at a
//! time, and crashes — of a minority of nodes, of the leader, now and then of all of them), applied between simulation steps, and healed
//! all at once when the fault phase ends.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use turmoil::Sim;

use super::ctx::{host_name, mix, Ctx};
use super::SimConfig;

/// The host name of the workload.
pub const CLIENTS_HOST: &str = "clients";

/// How often each kind of fault is chosen, and how long faults last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultRates {
    /// Mean quiet time between two network episodes.
    pub network_gap: Duration,
    /// Mean quiet time between two crash episodes.
    pub crash_gap: Duration,
    /// Shortest fault.
    pub min_length: Duration,
    /// Longest fault. (A follower keeps its leader's lease for the longest election timeout,
    /// then waits an election timeout: it takes a leader cut off for 3–4 s, with the default
    /// timing, before another node is elected.)
    pub max_length: Duration,
    /// Weight of a partition of a random minority from the majority.
    pub partition: u32,
    /// Weight of the current leader cut off from every other node.
    pub isolate_leader: u32,
    /// Weight of message loss on every link (clients' links included).
    pub loss: u32,
    /// Weight of one node's messages held, then delivered at once.
    pub hold: u32,
    /// Chance that a message starts a loss burst on a link during a loss episode.
    pub loss_rate: f64,
    /// Chance that a crash episode crashes every node.
    pub crash_all: f64,
    /// Chance that a crash episode that does not crash every node crashes the leader (else a
    /// random minority).
    pub crash_leader: f64,
    /// How long a crashed leader stays cut off from the other nodes after its restart (its
    /// clients still reach it).
    pub rejoin_late: Duration,
}

impl Default for FaultRates {
    fn default() -> Self {
        FaultRates {
            network_gap: Duration::from_millis(1500),
            crash_gap: Duration::from_millis(4000),
            min_length: Duration::from_millis(500),
            max_length: Duration::from_millis(6000),
            partition: 3,
            isolate_leader: 3,
            loss: 2,
            hold: 2,
            loss_rate: 0.1,
            crash_all: 0.15,
            crash_leader: 0.35,
            rejoin_late: Duration::from_millis(1500),
        }
    }
}

/// One kind of fault.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Fault {
    /// These nodes are cut off from the others.
    Partition(Vec<u64>),
    /// Whichever node leads when the episode starts is cut off from the others.
    IsolateLeader,
    /// Every link drops messages in bursts.
    Loss,
    /// Messages between this node and the others are held, then delivered.
    Hold(u64),
    /// These nodes crash, and restart when the episode ends.
    Crash(Vec<u64>),
    /// Whichever node leads when the episode starts crashes, and restarts when it ends, cut
    /// off from the other nodes for a while longer ([`FaultRates::rejoin_late`]).
    CrashLeader,
}

impl Fault {
    /// Its name in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Partition(_) => "partition",
            Fault::IsolateLeader => "isolate_leader",
            Fault::Loss => "loss",
            Fault::Hold(_) => "hold",
            Fault::Crash(_) => "crash",
            Fault::CrashLeader => "crash_leader",
        }
    }
}

/// A fault and when it starts and ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// Start.
    pub at: Duration,
    /// End.
    pub until: Duration,
    /// The fault.
    pub fault: Fault,
}

fn between(rng: &mut StdRng, lo: Duration, hi: Duration) -> Duration {
    let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
    Duration::from_millis(rng.gen_range(lo..=hi.max(lo)))
}

/// The schedule of a run: episodes in `[cfg.warmup, cfg.duration)`.
pub fn plan(seed: u64, cfg: &SimConfig) -> Vec<Episode> {
    let mut rng = StdRng::seed_from_u64(mix(seed, 7));
    let r = &cfg.faults;
    let ids: Vec<u64> = (1..=cfg.nodes as u64).collect();
    let minority = cfg.nodes.saturating_sub(1) / 2;
    let mut out = Vec::new();
    let weights = [r.partition, r.isolate_leader, r.loss, r.hold];
    let total: u32 = weights.iter().sum();
    if total == 0 || ids.is_empty() {
        return out;
    }
    let mut t = cfg.warmup;
    loop {
        t += between(&mut rng, Duration::ZERO, r.network_gap * 2);
        let until = (t + between(&mut rng, r.min_length, r.max_length)).min(cfg.duration);
        if t >= until {
            break;
        }
        let mut x = rng.gen_range(0..total);
        let mut which = 0;
        for w in weights {
            if x < w {
                break;
            }
            x -= w;
            which += 1;
        }
        let fault = match which {
            0 => {
                let k = rng.gen_range(1..=minority.max(1));
                Fault::Partition(ids.choose_multiple(&mut rng, k).copied().collect())
            }
            1 => Fault::IsolateLeader,
            2 => Fault::Loss,
            _ => Fault::Hold(ids.choose(&mut rng).copied().unwrap_or(1)),
        };
        out.push(Episode {
            at: t,
            until,
            fault,
        });
        t = until;
    }
    if minority > 0 && r.crash_gap > Duration::ZERO {
        crashes(&mut rng, cfg, &ids, &mut out);
    }
    out.sort_by_key(|e| e.at);
    out
}

/// The crash track: a minority of the nodes, now and then all of them.
fn crashes(rng: &mut StdRng, cfg: &SimConfig, ids: &[u64], out: &mut Vec<Episode>) {
    let r = &cfg.faults;
    let minority = ids.len().saturating_sub(1) / 2;
    let mut t = cfg.warmup;
    loop {
        t += between(rng, r.crash_gap / 2, r.crash_gap * 3 / 2);
        let until = (t + between(rng, r.min_length, r.max_length)).min(cfg.duration);
        if t >= until {
            break;
        }
        // A random minority, or the leader, or now and then every node at once (recovery from
        // the durable log and snapshots alone).
        let fault = if rng.gen_bool(r.crash_all) {
            Fault::Crash(ids.to_vec())
        } else if rng.gen_bool(r.crash_leader) {
            Fault::CrashLeader
        } else {
            let k = rng.gen_range(1..=minority);
            let mut who: Vec<u64> = ids.choose_multiple(rng, k).copied().collect();
            who.sort_unstable();
            Fault::Crash(who)
        };
        out.push(Episode {
            at: t,
            until,
            fault,
        });
        t = until;
    }
}

/// Applies a schedule to a simulation.
#[derive(Debug)]
pub struct Injector {
    pending: Vec<Episode>,
    /// Started episodes with the nodes they concern (resolved at start), by end time.
    active: Vec<(Duration, Fault, Vec<u64>)>,
    crashed: BTreeSet<u64>,
    healing: bool,
    /// Episodes started, by kind.
    pub counts: BTreeMap<String, u64>,
}

/// The running node that leads in the highest term, as published.
fn leader(ctx: &Ctx) -> Option<u64> {
    ctx.statuses()
        .iter()
        .filter(|(_, s)| s.running && s.state == "leader")
        .max_by_key(|(_, s)| s.term)
        .map(|(id, _)| *id)
}

fn pairs(a: &[u64], b: &[u64]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x != y {
                out.push((host_name(*x), host_name(*y)));
            }
        }
    }
    out
}

impl Injector {
    /// An injector of `plan`.
    pub fn new(plan: Vec<Episode>) -> Injector {
        Injector {
            pending: plan,
            active: Vec::new(),
            crashed: BTreeSet::new(),
            healing: false,
            counts: BTreeMap::new(),
        }
    }

    /// Starts and ends the episodes due at `now`.
    pub fn step(&mut self, sim: &mut Sim<'_>, ctx: &Ctx, now: Duration) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].0 <= now {
                let (_, fault, who) = self.active.remove(i);
                self.end(sim, ctx, &fault, &who, now);
            } else {
                i += 1;
            }
        }
        while self.pending.first().is_some_and(|e| e.at <= now) {
            let e = self.pending.remove(0);
            if let Some(who) = self.start(sim, ctx, &e.fault, now) {
                *self.counts.entry(e.fault.kind().into()).or_default() += 1;
                self.active.push((e.until, e.fault, who));
            }
        }
    }

    /// Ends every fault: links repaired and released, loss off, crashed nodes restarted.
    pub fn heal(&mut self, sim: &mut Sim<'_>, ctx: &Ctx, now: Duration) {
        self.healing = true;
        for (_, fault, who) in std::mem::take(&mut self.active) {
            self.end(sim, ctx, &fault, &who, now);
        }
        self.pending.clear();
        let ids = ctx.ids();
        for (a, b) in pairs(&ids, &ids) {
            sim.repair(a.as_str(), b.as_str());
            sim.release(a.as_str(), b.as_str());
            sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
        }
        for id in &ids {
            sim.repair(CLIENTS_HOST, host_name(*id));
            sim.set_link_fail_rate(CLIENTS_HOST, host_name(*id), 0.0);
        }
        for id in std::mem::take(&mut self.crashed) {
            sim.bounce(host_name(id));
        }
        ctx.trace_at(now, "heal: every fault ended");
    }

    fn start(
        &mut self,
        sim: &mut Sim<'_>,
        ctx: &Ctx,
        fault: &Fault,
        now: Duration,
    ) -> Option<Vec<u64>> {
        let ids = ctx.ids();
        let who = match fault {
            Fault::Partition(minority) => minority.clone(),
            Fault::IsolateLeader => vec![leader(ctx)?],
            Fault::CrashLeader => {
                let l = leader(ctx)?;
                if self.crashed.contains(&l) {
                    return None;
                }
                vec![l]
            }
            Fault::Loss => Vec::new(),
            Fault::Hold(n) => vec![*n],
            Fault::Crash(nodes) => nodes
                .iter()
                .copied()
                .filter(|n| !self.crashed.contains(n))
                .collect(),
        };
        let rest: Vec<u64> = ids.iter().copied().filter(|i| !who.contains(i)).collect();
        match fault {
            Fault::Partition(_) | Fault::IsolateLeader => {
                for (a, b) in pairs(&who, &rest) {
                    sim.partition(a.as_str(), b.as_str());
                }
            }
            Fault::Loss => {
                let rate = ctx.cfg.faults.loss_rate;
                for (a, b) in pairs(&ids, &ids) {
                    sim.set_link_fail_rate(a.as_str(), b.as_str(), rate);
                }
                for id in &ids {
                    sim.set_link_fail_rate(CLIENTS_HOST, host_name(*id), rate);
                }
            }
            Fault::Hold(_) => {
                for (a, b) in pairs(&who, &rest) {
                    sim.hold(a.as_str(), b.as_str());
                }
            }
            Fault::Crash(_) | Fault::CrashLeader => {
                if who.is_empty() {
                    return None;
                }
                for n in &who {
                    sim.crash(host_name(*n));
                    ctx.crashed(*n);
                    self.crashed.insert(*n);
                }
            }
        }
        ctx.trace_at(now, format!("fault start: {} {who:?}", fault.kind()));
        Some(who)
    }

    fn end(&mut self, sim: &mut Sim<'_>, ctx: &Ctx, fault: &Fault, who: &[u64], now: Duration) {
        let ids = ctx.ids();
        let rest: Vec<u64> = ids.iter().copied().filter(|i| !who.contains(i)).collect();
        match fault {
            Fault::Partition(_) | Fault::IsolateLeader => {
                for (a, b) in pairs(who, &rest) {
                    sim.repair(a.as_str(), b.as_str());
                }
            }
            Fault::Loss => {
                for (a, b) in pairs(&ids, &ids) {
                    sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
                    sim.repair(a.as_str(), b.as_str());
                }
                for id in &ids {
                    sim.set_link_fail_rate(CLIENTS_HOST, host_name(*id), 0.0);
                    sim.repair(CLIENTS_HOST, host_name(*id));
                }
            }
            Fault::Hold(_) => {
                for (a, b) in pairs(who, &rest) {
                    sim.release(a.as_str(), b.as_str());
                }
            }
            Fault::Crash(_) | Fault::CrashLeader => {
                for n in who {
                    if self.crashed.remove(n) {
                        sim.bounce(host_name(*n));
                    }
                }
            }
        }
        ctx.trace_at(now, format!("fault end: {} {who:?}", fault.kind()));
        if *fault == Fault::CrashLeader && !self.healing && !who.is_empty() {
            // Restarted, it rejoins late: a partition that ends on its own.
            for (a, b) in pairs(who, &rest) {
                sim.partition(a.as_str(), b.as_str());
            }
            let until = now + ctx.cfg.faults.rejoin_late;
            self.active
                .push((until, Fault::Partition(who.to_vec()), who.to_vec()));
            ctx.trace_at(now, format!("fault start: rejoin late {who:?}"));
        }
    }
}
