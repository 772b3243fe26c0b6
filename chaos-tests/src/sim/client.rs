//! The workload: one simulated host running the setup (the admin user, two more users, the
//! first layout), several catalog clients and one layout client. Every client operation goes
//! to a node (any node; another one after a failure) with a request id and time chosen once,
//! so a retry is answered from the first time instead of being applied twice; an operation
//! that gets no answer before its deadline is recorded as unknown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mirage_cluster_config::{Layout, LayoutChange, LayoutNode, NodeState};
use mirage_format::{Algorithm, Digest};
use mirage_node::catalog::{Command, Time};
use mirage_node::raft::{Answer, Proposal};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ctx::{guard, host_name, mix, now, now_us, Ctx, Outcome};
use super::wire::{self, Msg, Reply, PORT};
use crate::check::linear::{CatOp, CatRet, Event};

/// The administrator the workload acts as.
pub const ADMIN: &str = "admin";
/// Users that are granted and revoked read access.
pub const USERS: [&str; 2] = ["alice", "bob"];
/// Seconds since the epoch of the simulation's start (log entries carry times).
const EPOCH_SECS: i64 = 1_750_000_000;
/// One attempt at a node (a node retries for up to 10 s before it gives up).
const ATTEMPT: Duration = Duration::from_secs(11);
/// How long the setup keeps retrying.
const SETUP_DEADLINE: Duration = Duration::from_secs(60);

/// A client: its request ids, its randomness and the node it talks to.
struct Caller {
    ctx: Arc<Ctx>,
    id: usize,
    seq: u64,
    rng: StdRng,
    node: u64,
}

impl Caller {
    fn new(ctx: Arc<Ctx>, id: usize) -> Caller {
        let mut rng = StdRng::seed_from_u64(mix(ctx.seed, 1000u64.wrapping_add(id as u64)));
        let node = rng.gen_range(1..=ctx.cfg.nodes as u64);
        Caller {
            ctx,
            id,
            seq: 0,
            rng,
            node,
        }
    }

    /// A proposal of `command` with a fresh request id, stamped with the current time.
    fn proposal(&mut self, command: Command) -> Proposal {
        self.seq += 1;
        let t = now();
        Proposal {
            v: 1,
            caller: ADMIN.into(),
            time: Time {
                secs: EPOCH_SECS + t.as_secs() as i64,
                nanos: t.subsec_nanos(),
            },
            command,
            id: Some(format!("c{}-{}", self.id, self.seq)),
            token_sha256: None,
        }
    }

    /// Sends `msg` until a node answers it (any reply but a failure), trying another node
    /// after each failure; `None` once `deadline` has passed.
    async fn submit(&mut self, msg: &Msg, deadline: Duration) -> Option<Reply> {
        let until = now() + deadline;
        loop {
            let addr = format!("{}:{PORT}", host_name(self.node));
            let ttl = ATTEMPT
                .min(until.saturating_sub(now()))
                .max(Duration::from_millis(1));
            match wire::call(&addr, msg, ttl).await {
                Ok(Reply::Failed { .. }) | Err(_) => {}
                Ok(r) => return Some(r),
            }
            if now() >= until {
                return None;
            }
            let n = self.ctx.cfg.nodes as u64;
            if n > 1 {
                self.node = (self.node + self.rng.gen_range(1..n) - 1) % n + 1;
            }
            let pause = self.rng.gen_range(50..300);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

/// The workload host's software.
pub async fn run(ctx: Arc<Ctx>) -> turmoil::Result {
    if let Err(e) = setup(ctx.clone()).await {
        *guard(&ctx.setup_failed) = Some(e);
        return Ok(());
    }
    *guard(&ctx.setup_done) = true;
    ctx.trace("setup done");
    let mut tasks = Vec::new();
    for c in 0..ctx.cfg.clients {
        tasks.push(tokio::task::spawn_local(client(ctx.clone(), c)));
    }
    tasks.push(tokio::task::spawn_local(layout_client(ctx.clone())));
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// The first layout: six storage nodes in three zones.
pub fn first_layout() -> Layout {
    let nodes = (1..=6u64)
        .map(|id| LayoutNode {
            id,
            address: format!("s{id}:7300"),
            zone: ["a", "b", "c"][(id as usize - 1) % 3].into(),
            capacity_gb: [100, 200][(id as usize - 1) % 2],
            state: NodeState::Active,
        })
        .collect();
    Layout {
        v: 1,
        version: 1,
        replication: 3,
        write_quorum: 2,
        partitions: 64,
        nodes,
        retired: Default::default(),
    }
}

async fn setup(ctx: Arc<Ctx>) -> Result<(), String> {
    let mut c = Caller::new(ctx, 9999);
    let mut commands = vec![Command::AddUser {
        name: ADMIN.into(),
        admin: true,
        token_sha256: None,
    }];
    for u in USERS {
        commands.push(Command::AddUser {
            name: u.into(),
            admin: false,
            token_sha256: None,
        });
    }
    commands.push(Command::InitLayout {
        layout: first_layout(),
    });
    for command in commands {
        let what = format!("{command:?}");
        let p = c.proposal(command);
        match c.submit(&Msg::Write(p), SETUP_DEADLINE).await {
            Some(Reply::Written(Answer(Ok(_)))) => {}
            Some(Reply::Written(Answer(Err(e)))) => return Err(format!("setup {what}: {e}")),
            other => return Err(format!("setup {what}: no answer ({other:?})")),
        }
    }
    Ok(())
}

/// One catalog client: random operations on a few names until the fault phase ends. It
/// remembers the highest version it has seen of each name to pick plausible versions.
async fn client(ctx: Arc<Ctx>, id: usize) {
    let mut c = Caller::new(ctx.clone(), id);
    let names: Vec<String> = (0..ctx.cfg.names).map(|i| format!("img-{i}")).collect();
    let mut known: BTreeMap<String, u32> = BTreeMap::new();
    let mut count = 0u64;
    while now() < ctx.cfg.duration {
        count += 1;
        let (lo, hi) = ctx.cfg.think;
        let think = c
            .rng
            .gen_range(lo.as_millis() as u64..=hi.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(think)).await;
        if now() >= ctx.cfg.duration {
            break;
        }
        let name = names[c.rng.gen_range(0..names.len())].clone();
        let top = known.get(&name).copied().unwrap_or(0);
        let op = pick_op(&mut c.rng, &name, top, ctx.seed, id, count);
        let call = now_us();
        let ret = perform(&mut c, &op).await;
        let done = if ret == CatRet::Unknown {
            u64::MAX
        } else {
            now_us()
        };
        match &ret {
            CatRet::Version(v) => {
                known.insert(name.clone(), (*v).max(top));
            }
            CatRet::Named(Some(v)) => {
                known.insert(name.clone(), (v.versions.len() as u32).max(top));
            }
            _ => {}
        }
        let outcome = match ret {
            CatRet::Unknown => Outcome::Unknown,
            CatRet::Err(_) => Outcome::Refused,
            _ => Outcome::Ok,
        };
        ctx.count(kind(&op), outcome);
        ctx.trace(format!(
            "c{id} {op:?} -> {ret:?} [{call}..{done}] via n{}",
            c.node
        ));
        guard(&ctx.history).push(Event {
            client: id,
            op,
            ret,
            call,
            done,
        });
    }
}

/// The kind of an operation, for counting.
pub fn kind(op: &CatOp) -> &'static str {
    match op {
        CatOp::Checkin { .. } => "checkin",
        CatOp::SetDefault { .. } => "set_default",
        CatOp::Delete { .. } => "delete",
        CatOp::Grant { .. } => "grant",
        CatOp::Revoke { .. } => "revoke",
        CatOp::Read { .. } => "read",
    }
}

fn pick_op(rng: &mut StdRng, name: &str, top: u32, seed: u64, client: usize, n: u64) -> CatOp {
    let name = name.to_string();
    let version = rng.gen_range(0..=top + 1).max(u32::from(rng.gen_bool(0.9)));
    let user = USERS[rng.gen_range(0..USERS.len())].to_string();
    match rng.gen_range(0..100) {
        0..=29 => {
            let image = Digest::of(
                Algorithm::Sha256,
                format!("sim/{seed}/{client}/{n}").as_bytes(),
            )
            .map(|d| d.to_text())
            .unwrap_or_default();
            CatOp::Checkin { name, image }
        }
        30..=59 => CatOp::Read { name },
        60..=71 => CatOp::SetDefault { name, version },
        72..=79 => CatOp::Delete { name, version },
        80..=89 => CatOp::Grant { name, user },
        _ => CatOp::Revoke { name, user },
    }
}

async fn perform(c: &mut Caller, op: &CatOp) -> CatRet {
    let msg = match op {
        CatOp::Read { name } => Msg::Read { name: name.clone() },
        write => match write.command() {
            Some(cmd) => Msg::Write(c.proposal(cmd)),
            None => return CatRet::Err("invalid".into()),
        },
    };
    match c.submit(&msg, c.ctx.cfg.op_deadline).await {
        Some(Reply::Named(v)) => CatRet::Named(v),
        Some(Reply::Written(Answer(Ok(r)))) => match op {
            CatOp::Checkin { .. } => CatRet::Version(r.version.unwrap_or(0)),
            _ => CatRet::Ok,
        },
        Some(Reply::Written(Answer(Err(e)))) => CatRet::Err(e.code().into()),
        _ => CatRet::Unknown,
    }
}

/// Proposes a layout change every so often: read the current layout, pick a change that may
/// apply to it, propose it with `expect` set to the version read.
async fn layout_client(ctx: Arc<Ctx>) {
    let mut c = Caller::new(ctx.clone(), ctx.cfg.clients);
    let every = ctx.cfg.layout_every.as_millis() as u64;
    if every == 0 {
        return;
    }
    loop {
        let pause = c.rng.gen_range(every / 2..=every * 3 / 2);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if now() >= ctx.cfg.duration {
            return;
        }
        let Some(Reply::Layout(Some(current))) =
            c.submit(&Msg::ReadLayout, ctx.cfg.op_deadline).await
        else {
            continue;
        };
        let change = pick_change(&mut c.rng, &current);
        let what = change_kind(&change);
        let p = c.proposal(Command::ChangeLayout {
            expect: Some(current.version),
            change,
        });
        let reply = c.submit(&Msg::Write(p), ctx.cfg.op_deadline).await;
        let mut l = guard(&ctx.layout);
        let o = l.changes.entry(what.into()).or_default();
        match &reply {
            Some(Reply::Written(Answer(Ok(r)))) => {
                o.ok += 1;
                if let Some(v) = r.layout {
                    l.acked_versions.push(v);
                }
            }
            Some(Reply::Written(Answer(Err(_)))) => o.refused += 1,
            _ => o.unknown += 1,
        }
        drop(l);
        ctx.trace(format!(
            "layout {what} on v{} -> {reply:?}",
            current.version
        ));
    }
}

fn change_kind(c: &LayoutChange) -> &'static str {
    match c {
        LayoutChange::Add { .. } => "add",
        LayoutChange::Drain { .. } => "drain",
        LayoutChange::Remove { .. } => "remove",
        LayoutChange::Dead { .. } => "dead",
        LayoutChange::Alive { .. } => "alive",
    }
}

/// A change that may apply to `l` (the catalog still refuses one that would leave too few
/// active nodes).
fn pick_change(rng: &mut StdRng, l: &Layout) -> LayoutChange {
    let with = |s: NodeState| -> Vec<u64> {
        l.nodes
            .iter()
            .filter(|n| n.state == s)
            .map(|n| n.id)
            .collect()
    };
    let (active, draining, dead) = (
        with(NodeState::Active),
        with(NodeState::Draining),
        with(NodeState::Dead),
    );
    let pick = |rng: &mut StdRng, ids: &[u64]| ids.get(rng.gen_range(0..ids.len().max(1))).copied();
    let add = |rng: &mut StdRng| {
        let id = l
            .nodes
            .iter()
            .map(|n| n.id)
            .chain(l.retired.iter().copied())
            .max()
            .unwrap_or(0)
            + 1;
        LayoutChange::Add {
            id,
            address: format!("s{id}:7300"),
            zone: ["a", "b", "c", "d"][rng.gen_range(0..4)].into(),
            capacity_gb: [50, 100, 200][rng.gen_range(0..3)],
        }
    };
    let choice = match rng.gen_range(0..10) {
        0..=2 if l.nodes.len() < 10 => None,
        3..=4 => pick(rng, &active).map(|id| LayoutChange::Drain { id }),
        5..=6 => {
            let gone: Vec<u64> = draining.iter().chain(&dead).copied().collect();
            pick(rng, &gone).map(|id| LayoutChange::Remove { id })
        }
        7..=8 => pick(rng, &active).map(|id| LayoutChange::Dead { id }),
        _ => pick(rng, &dead).map(|id| LayoutChange::Alive { id }),
    };
    choice.unwrap_or_else(|| add(rng))
}
