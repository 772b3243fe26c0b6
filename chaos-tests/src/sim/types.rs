//! The Raft types of the simulated catalog group: the catalog's own entries
//! ([`Proposals`]) and answers ([`Answers`]), on the deterministic runtime
//! ([`super::runtime::SimRt`]).

use mirage_node::raft::{Answers, Proposals};

use super::storage::MemStateMachine;

/// The runtime of the simulated nodes: a host runs inside [`super::runtime::scope`]
/// with a seed derived from the run's seed, the node id and its incarnation, so every
/// election timeout is a function of the seed.
pub type SimRuntime = super::runtime::SimRt;

openraft::declare_raft_types!(
    /// Raft types of the simulated catalog group: the real catalog's entry and answer types on
    /// the seeded runtime.
    pub SimTypes:
        D = Proposals,
        R = Answers,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = SimRuntime,
);

/// A simulated catalog member's Raft handle.
pub type SimRaft = openraft::Raft<SimTypes, MemStateMachine>;
/// A log id.
pub type LogId = openraft::alias::LogIdOf<SimTypes>;
/// A log entry.
pub type Entry = openraft::alias::EntryOf<SimTypes>;
/// A vote.
pub type Vote = openraft::alias::VoteOf<SimTypes>;
/// Membership as stored.
pub type StoredMembership = openraft::alias::StoredMembershipOf<SimTypes>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<SimTypes>;
/// A snapshot (the catalog's own snapshot encoding, `mirage_node::raft::snapshot`).
pub type Snapshot = openraft::alias::SnapshotOf<SimTypes, Vec<u8>>;

/// Spawns `fut` on the host's runtime so that it inherits the seeded randomness of the task
/// that spawns it.
pub fn spawn<F>(fut: F)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use openraft::AsyncRuntime;
    drop(SimRuntime::spawn(fut));
}
