//! A simulated catalog node: a real `openraft::Raft` over the in-memory log and state machine,
//! serving Raft RPCs, forwarded leader operations and client requests on [`wire::PORT`]. Its
//! write and read paths follow `mirage_node::raft::node::CatalogNode`: writes are grouped
//! (one entry per group, several groups in flight) and run on the leader (forwarded there by a
//! follower, retried while an election is under way); a read asks the leader for a read index
//! and waits for the local state machine to apply it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mirage_cluster_config::Layout;
use mirage_node::catalog::apply::decode;
use mirage_node::catalog::{Named, Version};
use mirage_node::keys::catalog as keys;
use mirage_node::raft::node::{raft_config, ForwardAnswer, Forwarded, Tuning};
use mirage_node::raft::{Proposal, Proposals};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ReadPolicy, ServerState};
use tokio::sync::{mpsc, oneshot, Semaphore};
use turmoil::net::{TcpListener, TcpStream};

use super::ctx::{host_name, mix, Ctx, NodeStatus};
use super::storage::{lock, Inject, MemLogStore, MemStateMachine, MemView, SharedDisk};
use super::types::{spawn, SimRaft, SimTypes};
use super::wire::{self, CallError, Msg, NetFactory, Reply, PORT};
use crate::check::linear::NameView;

/// How long a forwarded operation may take at the leader (as the real node).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation is retried while no leader answers (as the real node).
const LEAD_DEADLINE: Duration = Duration::from_secs(10);
/// Most commands in one entry.
const MAX_GROUP: usize = 64;
/// Most groups of one node in flight at once.
const IN_FLIGHT: usize = 4;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(10);
/// How often a node publishes its status.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

/// A failure without an answer: (code, message).
type Failure = (String, String);

type Queued = (Proposal, oneshot::Sender<Reply>);

/// One running node.
#[derive(Debug)]
struct SimNode {
    id: u64,
    raft: SimRaft,
    disk: SharedDisk,
    ctx: Arc<Ctx>,
    queue: mpsc::UnboundedSender<Queued>,
}

fn failed(code: &str, message: impl Into<String>) -> ForwardAnswer {
    ForwardAnswer::Failed {
        code: code.into(),
        message: message.into(),
    }
}

fn write_failed(e: RaftError<SimTypes, ClientWriteError<SimTypes>>) -> ForwardAnswer {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            failed("not_leader", f.to_string())
        }
        RaftError::APIError(e) => failed("refused", e.to_string()),
        e => failed("raft", e.to_string()),
    }
}

/// The software of node `id`'s host: started again after each crash.
pub async fn host(ctx: Arc<Ctx>, id: u64) -> turmoil::Result {
    let incarnation = ctx.started(id);
    let seed = mix(ctx.seed, id << 32 | incarnation);
    super::runtime::scope(seed, run(ctx, id)).await
}

async fn run(ctx: Arc<Ctx>, id: u64) -> turmoil::Result {
    let disk = ctx
        .disks
        .get(&id)
        .cloned()
        .ok_or_else(|| format!("no disk for node {id}"))?;
    lock(&disk).restart()?;
    // The real node's configuration, with the simulation's timing.
    let cfg = &ctx.cfg;
    let tuning = Tuning {
        heartbeat: cfg.heartbeat,
        election: cfg.election,
        snapshot_every: Some(cfg.snapshot_every),
    };
    let config = Arc::new(raft_config(&tuning).validate()?);
    let raft = SimRaft::new(
        id,
        config,
        NetFactory,
        MemLogStore::new(disk.clone()),
        MemStateMachine::new(disk.clone()),
    )
    .await?;
    if id == 1 && !raft.is_initialized().await? {
        let members: BTreeMap<u64, BasicNode> = ctx
            .ids()
            .into_iter()
            .map(|i| (i, BasicNode::new(format!("{}:{PORT}", host_name(i)))))
            .collect();
        if let Err(e) = raft.initialize(members).await {
            ctx.trace(format!("n{id} initialize: {e}"));
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let node = Arc::new(SimNode {
        id,
        raft,
        disk,
        ctx,
        queue: tx,
    });
    spawn(group_commit(node.clone(), rx));
    spawn(publish(node.clone()));
    let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (s, _) = listener.accept().await?;
        spawn(serve(node.clone(), s));
    }
}

/// Publishes the node's status, and traces its changes of term, leader and role.
async fn publish(node: Arc<SimNode>) {
    let mut last = (0, None, String::new());
    loop {
        let status = {
            let m = node.raft.metrics();
            let m = m.borrow_watched();
            NodeStatus {
                running: true,
                state: match m.state {
                    ServerState::Leader => "leader",
                    ServerState::Follower => "follower",
                    ServerState::Candidate => "candidate",
                    ServerState::Learner => "learner",
                    ServerState::Shutdown => "shutdown",
                }
                .into(),
                term: m.current_term,
                leader: m.current_leader,
                last_log: m.last_log_index,
                applied: m.last_applied.map(|l| l.index),
                incarnation: 0,
            }
        };
        let now = (status.term, status.leader, status.state.clone());
        if now != last {
            node.ctx.trace(format!(
                "n{} term {} leader {:?} {}",
                node.id, now.0, now.1, now.2
            ));
            last = now;
        }
        node.ctx.publish(node.id, status);
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
}

/// Serves one connection: one request at a time until it closes or idles.
async fn serve(node: Arc<SimNode>, mut s: TcpStream) {
    loop {
        let msg = match tokio::time::timeout(IDLE, wire::read_frame::<Msg>(&mut s)).await {
            Ok(Ok(Some(m))) => m,
            _ => return,
        };
        let reply = node.handle(msg).await;
        if wire::write_frame(&mut s, &reply).await.is_err() {
            return;
        }
    }
}

/// Gathers queued writes into groups (as the real node): what arrives while earlier groups
/// are in flight goes as one entry.
async fn group_commit(node: Arc<SimNode>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(q) => group.push(q),
                Err(_) => break,
            }
        }
        let me = node.clone();
        spawn(async move {
            me.propose_group(group).await;
            drop(slot);
        });
    }
}

impl SimNode {
    async fn handle(&self, msg: Msg) -> Reply {
        match msg {
            Msg::Append(rpc) => match self.raft.append_entries(rpc).await {
                Ok(r) => Reply::Append(r),
                Err(e) => Reply::Fatal(e.to_string()),
            },
            Msg::Vote(rpc) => match self.raft.vote(rpc).await {
                Ok(r) => Reply::Vote(r),
                Err(e) => Reply::Fatal(e.to_string()),
            },
            Msg::Snapshot { vote, meta, data } => {
                // A damaged snapshot is refused here, as the real node does.
                if let Err(e) = mirage_node::raft::snapshot::decode(&data) {
                    return Reply::Fatal(format!("bad snapshot: {e}"));
                }
                let snap = super::types::Snapshot {
                    meta,
                    snapshot: data,
                };
                match self.raft.install_full_snapshot(vote, snap).await {
                    Ok(r) => Reply::Snapshot(r),
                    Err(e) => Reply::Fatal(e.to_string()),
                }
            }
            Msg::Forward(op) => Reply::Forward(self.execute(op).await),
            Msg::Write(p) => {
                let (tx, rx) = oneshot::channel();
                if self.queue.send((p, tx)).is_err() {
                    return fail("raft", "the node is shutting down");
                }
                rx.await
                    .unwrap_or_else(|_| fail("raft", "the node is shutting down"))
            }
            Msg::Read { name } => match self.read(|kv| name_view(kv, &name)).await {
                Ok(v) => Reply::Named(v),
                Err((code, message)) => Reply::Failed { code, message },
            },
            Msg::ReadLayout => match self.read(current_layout).await {
                Ok(l) => Reply::Layout(l),
                Err((code, message)) => Reply::Failed { code, message },
            },
        }
    }

    /// A linearizable read of the local state machine (read index from the leader, then wait
    /// until it is applied here).
    async fn read<T>(
        &self,
        f: impl FnOnce(&BTreeMap<Vec<u8>, Vec<u8>>) -> Result<T, String>,
    ) -> Result<T, Failure> {
        if self.ctx.cfg.inject != Some(Inject::StaleReads) {
            self.read_barrier().await?;
        }
        let d = lock(&self.disk);
        f(&d.state().kv).map_err(|m| ("storage".to_string(), m))
    }

    async fn read_barrier(&self) -> Result<(), Failure> {
        let index = match self.lead(Forwarded::ReadIndex).await? {
            ForwardAnswer::ReadIndex(i) => i,
            other => return Err(("raft".into(), format!("unexpected answer {other:?}"))),
        };
        self.raft
            .wait(Some(LEAD_DEADLINE))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| ("raft".to_string(), e.to_string()))?;
        Ok(())
    }

    /// Proposes one group and answers each of its writers.
    async fn propose_group(&self, group: Vec<Queued>) {
        let proposals = group.iter().map(|(p, _)| p.clone()).collect();
        match self.lead(Forwarded::Write { proposals }).await {
            Ok(ForwardAnswer::Answers(a)) if a.len() == group.len() => {
                for ((_, tx), a) in group.into_iter().zip(a) {
                    let _ = tx.send(Reply::Written(a));
                }
            }
            other => {
                let (code, message) = match other {
                    Err(f) => f,
                    Ok(a) => ("raft".into(), format!("unexpected answer {a:?}")),
                };
                for (_, tx) in group {
                    let _ = tx.send(fail(&code, message.clone()));
                }
            }
        }
    }

    /// Runs `op` on the leader: here if this node leads, else forwarded; retried while an
    /// election is under way, for at most [`LEAD_DEADLINE`].
    async fn lead(&self, op: Forwarded) -> Result<ForwardAnswer, Failure> {
        let deadline = tokio::time::Instant::now() + LEAD_DEADLINE;
        loop {
            let answer = match self.raft.current_leader().await {
                Some(l) if l == self.id => {
                    match tokio::time::timeout(FORWARD_TIMEOUT, self.execute(op.clone())).await {
                        Ok(a) => a,
                        Err(_) => failed(
                            "raft",
                            "no quorum answered in time; a write may or may not be applied",
                        ),
                    }
                }
                Some(l) => self.forward(l, &op).await,
                None => failed("no_leader", ""),
            };
            match answer {
                ForwardAnswer::Failed { code, message } => {
                    let retry = code == "no_leader" || code == "not_leader" || code == "raft";
                    if !retry {
                        return Err((code, message));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(("no_leader".into(), format!("{code}: {message}")));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                a => return Ok(a),
            }
        }
    }

    async fn forward(&self, leader: u64, op: &Forwarded) -> ForwardAnswer {
        let addr = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            m.membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.addr.clone())
        };
        let Some(addr) = addr else {
            return failed("no_leader", format!("leader {leader} has no known address"));
        };
        match wire::call(&addr, &Msg::Forward(op.clone()), FORWARD_TIMEOUT).await {
            Ok(Reply::Forward(a)) => a,
            Ok(other) => failed("raft", format!("{addr}: unexpected reply {other:?}")),
            Err(e @ CallError::Connect(_)) => failed("no_leader", e.to_string()),
            Err(e) => failed("raft", e.to_string()),
        }
    }

    /// Performs a leader operation here (a follower answers `not_leader`).
    async fn execute(&self, op: Forwarded) -> ForwardAnswer {
        match op {
            Forwarded::Write { proposals } => {
                match self.raft.client_write(Proposals(proposals)).await {
                    Ok(r) => ForwardAnswer::Answers(r.data.0),
                    Err(e) => write_failed(e),
                }
            }
            Forwarded::ReadIndex => {
                match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                    Ok(r) => ForwardAnswer::ReadIndex(r.index()),
                    Err(RaftError::APIError(e)) => failed("not_leader", e.to_string()),
                    Err(e) => failed("raft", e.to_string()),
                }
            }
            other => failed("refused", format!("not simulated: {other:?}")),
        }
    }
}

fn fail(code: &str, message: impl Into<String>) -> Reply {
    Reply::Failed {
        code: code.into(),
        message: message.into(),
    }
}

/// A named image as a read shows it (as an admin sees it: every name).
pub fn name_view(kv: &BTreeMap<Vec<u8>, Vec<u8>>, name: &str) -> Result<Option<NameView>, String> {
    let key = keys::named(name);
    let Some(v) = kv.get(&key) else {
        return Ok(None);
    };
    let n: Named = decode(&key, v).map_err(|e| e.to_string())?;
    let versions: Vec<Version> = if n.versions.is_empty() {
        let view = MemView(kv);
        mirage_node::catalog::View::scan_prefix(&view, &keys::versions(name))
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?
    } else {
        n.versions.clone()
    };
    Ok(Some(NameView {
        versions: versions
            .iter()
            .map(|v| (v.image.to_text(), v.deleted))
            .collect(),
        default: n.default,
        readers: n.readers,
        writers: n.writers,
    }))
}

/// The current cluster layout.
pub fn current_layout(kv: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Option<Layout>, String> {
    let Some(v) = kv.get(keys::LAYOUT_CURRENT) else {
        return Ok(None);
    };
    let version: u64 = decode(keys::LAYOUT_CURRENT, v).map_err(|e| e.to_string())?;
    layout_version(kv, version)
}

/// Layout version `v`.
pub fn layout_version(kv: &BTreeMap<Vec<u8>, Vec<u8>>, v: u64) -> Result<Option<Layout>, String> {
    let key = keys::layout_version(v);
    kv.get(&key)
        .map(|b| decode(&key, b).map_err(|e| e.to_string()))
        .transpose()
}

/// Every node's state, for the checks (by node id).
pub fn states(ctx: &Ctx) -> BTreeMap<u64, super::storage::SmState> {
    ctx.disks
        .iter()
        .map(|(id, d)| (*id, lock(d).state().clone()))
        .collect()
}
