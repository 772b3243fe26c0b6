//! A node's view of the catalog group: start the Raft member, write (forwarded to the leader
//! when this node is not it), read linearizably (a read index from the leader, then wait until
//! the local state machine has applied it), change membership.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};

use super::log_store::RocksLogStore;
use super::network::{Network, SECRET_HEADER};
use super::state_machine::CatalogStateMachine;
use super::{Answer, CatalogRaft, Proposal, Proposals};
use crate::catalog::{now, CatalogError, Command, Response};
use crate::store::Store;
use tokio::sync::{mpsc, oneshot};

/// How long a forwarded operation may take at the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a catalog operation in cluster mode failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// The catalog refused the command or query.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// No leader is known (an election is under way, or no quorum is reachable).
    #[error("the catalog has no leader right now (no quorum reachable?); retry")]
    NoLeader,
    /// The operation is not allowed in the group's current state.
    #[error("{0}")]
    Refused(String),
    /// Raft or the network between nodes failed.
    #[error("catalog replication: {0}")]
    Raft(String),
}

/// Timing of the catalog group.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range (a random value in it per term).
    pub election: (Duration, Duration),
    /// Entries between snapshots; `None`: a snapshot once the log written since the last one
    /// outgrows it (and [`MIN_LOG_BYTES`]), so building snapshots costs a constant share of
    /// the writes whatever the catalog's size.
    pub snapshot_every: Option<u64>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            heartbeat: Duration::from_millis(250),
            election: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_every: None,
        }
    }
}

/// The openraft configuration of the catalog group (not yet validated).
///
/// A leader that restarts must be elected again before it serves anything
/// (`enable_leader_restore` off): neither the state machine's writes nor the committed index
/// are synced (the Raft log is), so after a power loss a restarted leader may hold a state
/// machine and a committed index older than what it acknowledged. Restored as leader without
/// an election, it would answer read-index requests with that stale committed index, and
/// linearizable reads would miss acknowledged writes; elected again, it first commits an entry
/// of its new term, which the read index then covers.
pub fn raft_config(tuning: &Tuning) -> openraft::Config {
    openraft::Config {
        cluster_name: "mirage-catalog".into(),
        heartbeat_interval: tuning.heartbeat.as_millis() as u64,
        election_timeout_min: tuning.election.0.as_millis() as u64,
        election_timeout_max: tuning.election.1.as_millis() as u64,
        snapshot_policy: match tuning.snapshot_every {
            Some(n) => openraft::SnapshotPolicy::LogsSinceLast(n.max(1)),
            None => openraft::SnapshotPolicy::Never,
        },
        max_in_snapshot_log_to_keep: tuning.snapshot_every.unwrap_or(1000).min(1000),
        enable_leader_restore: Some(false),
        ..Default::default()
    }
}

/// An operation that only the leader performs; followers forward it
/// (`POST /v1/raft/forward`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Forwarded {
    /// Catalog commands, applied in order as one entry.
    Write {
        /// The proposals.
        proposals: Vec<Proposal>,
    },
    /// The log index a linearizable read must wait for.
    ReadIndex,
    /// Adds a learner.
    AddLearner {
        /// Node id.
        id: u64,
        /// Its `host:port`.
        addr: String,
    },
    /// Makes a learner a voter.
    Promote {
        /// Node id.
        id: u64,
    },
    /// Removes a node from the group.
    Remove {
        /// Node id.
        id: u64,
    },
}

/// What the leader answers to a [`Forwarded`] operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardAnswer {
    /// The commands' answers, in order.
    Answers(Vec<Answer>),
    /// A read index.
    ReadIndex(u64),
    /// A membership change was committed.
    Done,
    /// The operation failed.
    Failed {
        /// Stable code: `no_leader`, `refused` or `raft`.
        code: String,
        /// Message.
        message: String,
    },
}

/// Membership and health of the group, as this node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    /// This node.
    pub id: u64,
    /// Leader, voter, learner, candidate or follower.
    pub state: String,
    /// Current term.
    pub term: u64,
    /// Known leader.
    pub leader: Option<u64>,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Addresses of every member.
    pub nodes: BTreeMap<u64, String>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub applied: Option<u64>,
    /// Last snapshot index.
    pub snapshot: Option<u64>,
}

/// Writes (one request's, kept together and in order) waiting for the next group commit,
/// and where their answers go.
type Queued = (
    Vec<Proposal>,
    oneshot::Sender<Result<Vec<Result<Response, ClusterError>>, ClusterError>>,
);

/// Most commands in one entry.
pub const MAX_GROUP: usize = 512;

/// Most groups of one node in flight at once.
const IN_FLIGHT: usize = 4;

/// A node's member of the catalog group.
#[derive(Clone)]
pub struct CatalogNode {
    /// The Raft handle.
    pub raft: CatalogRaft,
    id: u64,
    addr: String,
    client: reqwest::Client,
    secret: Arc<str>,
    /// Group commit: writes queue here; one task proposes what gathered while the previous
    /// group was in flight as one entry (`None` in that task's own handle).
    queue: Option<mpsc::UnboundedSender<Queued>>,
}

impl std::fmt::Debug for CatalogNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CatalogNode({} at {})", self.id, self.addr)
    }
}

fn raft_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Raft(e.to_string())
}

impl CatalogNode {
    /// Starts node `id` (reachable by the others at `addr`) over `store`'s catalog; the Raft
    /// log and snapshots live in `dir`.
    pub async fn start(
        id: u64,
        addr: &str,
        store: Store,
        dir: &Path,
        secret: &str,
        tuning: Tuning,
    ) -> Result<Self, ClusterError> {
        // A standalone catalog must not become a replica: the group's log would be applied on
        // top of state the other members do not have.
        // Every applied command sets `m/applied`; a member also has `m/raft_applied` (written
        // in the same batch), so two point reads tell, without scanning the catalog.
        let c = store.catalog();
        if c.get_raw(crate::keys::catalog::RAFT_APPLIED)?.is_none()
            && c.get_raw(crate::keys::catalog::APPLIED)?.is_some()
        {
            return Err(ClusterError::Refused(format!(
                "{} already holds a standalone catalog; a cluster member starts from an empty \
                 store (or one that was a member before)",
                store.dir().display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(raft_err)?;
        let log = RocksLogStore::open(&dir.join("log")).map_err(raft_err)?;
        let appended = log.appended_bytes();
        let sm = CatalogStateMachine::new(store, &dir.join("snapshots")).map_err(raft_err)?;
        let config = Arc::new(raft_config(&tuning).validate().map_err(raft_err)?);
        let raft = CatalogRaft::new(id, config, Network::new(secret), log, sm)
            .await
            .map_err(raft_err)?;
        let core = CatalogNode {
            raft,
            id,
            addr: addr.to_string(),
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(FORWARD_TIMEOUT)
                .build()
                .unwrap_or_default(),
            secret: secret.into(),
            queue: None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(core.clone().group_commit(rx));
        if tuning.snapshot_every.is_none() {
            tokio::spawn(snapshot_by_size(
                core.raft.clone(),
                appended,
                dir.join("snapshots"),
            ));
        }
        Ok(CatalogNode {
            queue: Some(tx),
            ..core
        })
    }

    /// Proposes queued writes in groups: everything that arrived while earlier groups were in
    /// flight goes as one entry (one forward, one log append, one state machine batch). Up to
    /// [`IN_FLIGHT`] groups travel at once, so the next group forms and replicates while the
    /// previous one is applied. Ends when every handle with the queue is dropped.
    async fn group_commit(self, mut rx: mpsc::UnboundedReceiver<Queued>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            // Wait for a free slot before gathering: what arrives meanwhile joins this group.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut commands = first.0.len();
            let mut group = vec![first];
            while commands < MAX_GROUP {
                match rx.try_recv() {
                    Ok(q) => {
                        commands += q.0.len();
                        group.push(q);
                    }
                    Err(_) => break,
                }
            }
            let me = self.clone();
            tokio::spawn(async move {
                me.propose_group(group).await;
                drop(slot);
            });
        }
    }

    /// Proposes one group and answers each of its writers.
    async fn propose_group(&self, group: Vec<Queued>) {
        let proposals: Vec<Proposal> = group.iter().flat_map(|(p, _)| p.clone()).collect();
        match self.propose(proposals).await {
            Ok(answers) => {
                let mut answers = answers.into_iter();
                for (p, tx) in group {
                    let _ = tx.send(Ok(answers.by_ref().take(p.len()).collect()));
                }
            }
            Err(e) => {
                for (_, tx) in group {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }

    /// Proposes `proposals` as one entry through the leader; one answer each, in order.
    async fn propose(
        &self,
        proposals: Vec<Proposal>,
    ) -> Result<Vec<Result<Response, ClusterError>>, ClusterError> {
        let n = proposals.len();
        match self.lead(Forwarded::Write { proposals }).await? {
            ForwardAnswer::Answers(a) if a.len() == n => Ok(a
                .into_iter()
                .map(|a| a.0.map_err(ClusterError::from))
                .collect()),
            other => Err(raft_err(format!("unexpected answer {other:?}"))),
        }
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Makes this node the first member of a new group (only on an empty log).
    pub async fn initialize(&self) -> Result<(), ClusterError> {
        let mut members = BTreeMap::new();
        members.insert(self.id, BasicNode::new(&self.addr));
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(e) => ClusterError::Refused(e.to_string()),
            e => raft_err(e),
        })
    }

    /// Applies `command` as `caller`, through the leader; returns once it is committed and
    /// applied.
    pub async fn write(&self, caller: &str, command: Command) -> Result<Response, ClusterError> {
        self.write_as(caller, None, command).await
    }

    /// [`CatalogNode::write`] for a caller authenticated by the token hashing to
    /// `token_sha256`: the command is refused when it is applied if that is no longer the
    /// caller's token (replaced meanwhile through another node).
    pub async fn write_as(
        &self,
        caller: &str,
        token_sha256: Option<String>,
        command: Command,
    ) -> Result<Response, ClusterError> {
        self.write_many_as(caller, token_sha256, vec![command])
            .await?
            .pop()
            .unwrap_or_else(|| Err(raft_err("no answer")))
    }

    /// [`CatalogNode::write_as`] for several commands at once: they are proposed together,
    /// applied in order (in one log entry, with what other writers queued meanwhile), each
    /// with its own answer. The outer error means none of them is known to be applied.
    pub async fn write_many_as(
        &self,
        caller: &str,
        token_sha256: Option<String>,
        commands: Vec<Command>,
    ) -> Result<Vec<Result<Response, ClusterError>>, ClusterError> {
        let time = now();
        let proposals: Vec<Proposal> = commands
            .into_iter()
            .map(|command| {
                let id: [u8; 16] = rand::random();
                Proposal {
                    v: 1,
                    caller: caller.to_string(),
                    time,
                    command,
                    id: Some(hex::encode(id)),
                    token_sha256: token_sha256.clone(),
                }
            })
            .collect();
        // Queued together for the next group commit; the group commit task's own handle has
        // no queue and proposes at once.
        match &self.queue {
            Some(q) => {
                let (tx, rx) = oneshot::channel();
                q.send((proposals, tx))
                    .map_err(|_| raft_err("the node is shutting down"))?;
                rx.await
                    .map_err(|_| raft_err("the node is shutting down"))?
            }
            None => self.propose(proposals).await,
        }
    }

    /// Waits until this node's catalog reflects every write committed before the call.
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let index = match self.lead(Forwarded::ReadIndex).await? {
            ForwardAnswer::ReadIndex(i) => i,
            other => return Err(raft_err(format!("unexpected answer {other:?}"))),
        };
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(raft_err)?;
        Ok(())
    }

    /// Adds node `id` at `addr` as a learner (it receives the log, does not vote); returns
    /// once the learner has applied what was committed when it was added (or after `wait`).
    pub async fn add_learner(
        &self,
        id: u64,
        addr: &str,
        wait: Duration,
    ) -> Result<(), ClusterError> {
        self.lead(Forwarded::AddLearner {
            id,
            addr: addr.to_string(),
        })
        .await?;
        let target = self.status().applied;
        let client = &self.client;
        let url = format!("http://{addr}/v1/raft/applied");
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            let r = client
                .get(&url)
                .header(SECRET_HEADER, &*self.secret)
                .send()
                .await;
            if let Ok(r) = r {
                if let Ok(applied) = r.json::<Option<u64>>().await {
                    if applied >= target {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ClusterError::Raft(format!(
            "node {id} was added as a learner but has not caught up within {wait:?}; \
             watch it with `mirage admin raft status`"
        )))
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, id: u64) -> Result<(), ClusterError> {
        self.lead(Forwarded::Promote { id }).await.map(|_| ())
    }

    /// Removes node `id` from the group.
    pub async fn remove(&self, id: u64) -> Result<(), ClusterError> {
        self.lead(Forwarded::Remove { id }).await.map(|_| ())
    }

    /// The group as this node sees it.
    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let mem = m.membership_config.membership();
        GroupStatus {
            id: self.id,
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
            voters: mem.voter_ids().collect(),
            learners: mem.learner_ids().collect(),
            nodes: mem.nodes().map(|(i, n)| (*i, n.addr.clone())).collect(),
            last_log_index: m.last_log_index,
            applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
        }
    }

    /// Runs `op` on the leader: here if this node leads, else forwarded to the leader. Retries
    /// briefly while an election is under way.
    async fn lead(&self, op: Forwarded) -> Result<ForwardAnswer, ClusterError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let leader = self.raft.current_leader().await;
            let answer = match leader {
                Some(l) if l == self.id => {
                    match tokio::time::timeout(FORWARD_TIMEOUT, self.execute(op.clone())).await {
                        Ok(a) => a,
                        // A leader cut off from its quorum cannot finish anything.
                        Err(_) => failed(
                            "raft",
                            "no quorum answered in time (the leader may be cut off); \
                             a write may or may not be applied",
                        ),
                    }
                }
                Some(l) => self.forward(l, &op).await,
                None => ForwardAnswer::Failed {
                    code: "no_leader".into(),
                    message: String::new(),
                },
            };
            // Every operation may be sent again when its outcome is unknown: writes carry
            // request ids, so the state machine answers a repeated one from the first time.
            match answer {
                ForwardAnswer::Failed { code, message } => {
                    let retry = code == "no_leader" || code == "not_leader" || code == "raft";
                    if !retry {
                        return Err(match code.as_str() {
                            "refused" => ClusterError::Refused(message),
                            _ => ClusterError::Raft(message),
                        });
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ClusterError::NoLeader);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                a => return Ok(a),
            }
        }
    }

    async fn forward(&self, leader: u64, op: &Forwarded) -> ForwardAnswer {
        let addr = {
            let m = self.raft.metrics().borrow_watched().clone();
            m.membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.addr.clone())
        };
        let Some(addr) = addr else {
            return failed("no_leader", format!("leader {leader} has no known address"));
        };
        let url = format!("http://{addr}/v1/raft/forward");
        let resp = self
            .client
            .post(&url)
            .header(SECRET_HEADER, &*self.secret)
            .json(op)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => match r.json::<ForwardAnswer>().await {
                Ok(a) => a,
                Err(e) => failed("raft", format!("{url}: {e}")),
            },
            Ok(r) => failed("raft", format!("{url}: {}", r.status())),
            // Never sent: the leader may just have gone; retry after the next election.
            Err(e) if e.is_connect() => failed("no_leader", format!("{url}: {e}")),
            // Sent, outcome unknown: retrying could apply a command twice, so say so.
            Err(e) => failed(
                "raft",
                format!("{url}: {e} (the leader may or may not have applied it)"),
            ),
        }
    }

    /// Performs a forwarded operation on this node, which should lead (a follower answers
    /// `not_leader` and the sender retries).
    pub async fn execute(&self, op: Forwarded) -> ForwardAnswer {
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
            // Added without waiting for it to catch up (that may take longer than a forward
            // may); the admin route then waits for it.
            Forwarded::AddLearner { id, addr } => {
                match self.raft.add_learner(id, BasicNode::new(addr), false).await {
                    Ok(_) => ForwardAnswer::Done,
                    Err(e) => write_failed(e),
                }
            }
            Forwarded::Promote { id } => {
                let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                match self.raft.change_membership(change, true).await {
                    Ok(_) => ForwardAnswer::Done,
                    Err(e) => write_failed(e),
                }
            }
            Forwarded::Remove { id } => {
                let voter = self.raft.voter_ids().any(|v| v == id);
                let change = if voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                match self.raft.change_membership(change, false).await {
                    Ok(_) => ForwardAnswer::Done,
                    Err(e) => write_failed(e),
                }
            }
        }
    }

    /// Stops the Raft member.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "catalog raft shutdown");
        }
    }
}

/// The least log written between two snapshots.
pub const MIN_LOG_BYTES: u64 = 64 << 20;

/// Asks for a snapshot whenever the log appended since the last one is larger than both that
/// snapshot and [`MIN_LOG_BYTES`]. Ends when the Raft member shuts down.
async fn snapshot_by_size(
    raft: CatalogRaft,
    appended: Arc<std::sync::atomic::AtomicU64>,
    dir: std::path::PathBuf,
) {
    use std::sync::atomic::Ordering;
    let mut last = raft.metrics().borrow_watched().snapshot;
    let mut base = appended.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m = raft.metrics().borrow_watched().clone();
        if m.state == ServerState::Shutdown {
            return;
        }
        let now = appended.load(Ordering::Relaxed);
        if m.snapshot != last {
            // Built or installed: count from here.
            last = m.snapshot;
            base = now;
            continue;
        }
        let size = tokio::fs::metadata(dir.join("snapshot"))
            .await
            .map_or(0, |m| m.len());
        if now.saturating_sub(base) >= size.max(MIN_LOG_BYTES) {
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "catalog snapshot trigger");
                return;
            }
            base = now;
        }
    }
}

fn failed(code: &str, message: impl Into<String>) -> ForwardAnswer {
    ForwardAnswer::Failed {
        code: code.into(),
        message: message.into(),
    }
}

fn write_failed(
    e: RaftError<super::TypeConfig, ClientWriteError<super::TypeConfig>>,
) -> ForwardAnswer {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            failed("not_leader", f.to_string())
        }
        RaftError::APIError(e) => failed("refused", e.to_string()),
        e => failed("raft", e.to_string()),
    }
}
