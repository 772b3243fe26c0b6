//! The catalog replicated with openraft: the same deterministic [`crate::catalog::apply`] as
//! the embedded store, fed by a Raft log instead of a local one.
//!
//! - [`log_store::RocksLogStore`]: the Raft log, vote and purge point in their own RocksDB
//!   (`<store>/raft`), every write synced before it is acknowledged.
//! - [`state_machine::CatalogStateMachine`]: applies entries to the store's `catalog` column
//!   family; each entry's writes, the catalog log entry and the applied log id go in one synced
//!   batch, so a restart resumes exactly where the state stands.
//! - [`snapshot`]: the catalog's snapshot format (both catalog column families, checksummed).
//! - [`network`]: the Raft RPCs over HTTP between nodes, authenticated with the cluster secret.
//! - [`node::CatalogNode`]: what the API uses — writes (forwarded to the leader), linearizable
//!   reads (read index from the leader, then wait for the local state machine), membership.

pub mod log_store;
pub mod network;
pub mod node;
pub mod snapshot;
pub mod state_machine;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::{CatalogError, Command, Response, Time};

/// A catalog command as proposed to the Raft group: who submitted it and when (the only clock
/// the state machine sees), so every replica applies it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Format version (1).
    pub v: u8,
    /// Caller, already authenticated by the node that accepted the request.
    pub caller: String,
    /// Submission time.
    pub time: Time,
    /// The command.
    pub command: Command,
    /// Request id (random, chosen by the node that accepted the command): a proposal sent
    /// again with the same id — a retry after an unknown outcome — is answered from the first
    /// time instead of being applied twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// SHA-256 of the token the caller authenticated with, if any: applying refuses the
    /// command if the caller's token has been replaced since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} by {}", command_name(&self.command), self.caller)
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::AddUser { .. } => "add_user",
        Command::Checkin { .. } => "checkin",
        Command::Derive { .. } => "derive",
        Command::SetDefault { .. } => "set_default",
        Command::Delete { .. } => "delete",
        Command::Lock { .. } => "lock",
        Command::Unlock { .. } => "unlock",
        Command::AddDelta { .. } => "add_delta",
        Command::Lease { .. } => "lease",
        Command::ReleaseLease { .. } => "release_lease",
        Command::Acl { .. } => "acl",
        Command::SetToken { .. } => "set_token",
        Command::InitLayout { .. } => "init_layout",
        Command::ChangeLayout { .. } => "change_layout",
        Command::Import { .. } => "import",
    }
}

/// The payload of one Raft entry: the commands a node gathered while its previous batch was
/// in flight (group commit), applied in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposals(pub Vec<Proposal>);

impl fmt::Display for Proposals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => write!(f, "{} commands", many.len()),
        }
    }
}

/// What applying a [`Proposal`] answered: a refused command is still in the log (it changed
/// nothing) and its refusal is the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer(pub Result<Response, CatalogError>);

/// The answers to the [`Proposals`] of one entry, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answers(pub Vec<Answer>);

openraft::declare_raft_types!(
    /// Raft types of the catalog group.
    pub TypeConfig:
        D = Proposals,
        R = Answers,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// The catalog's Raft handle.
pub type CatalogRaft = openraft::Raft<TypeConfig, state_machine::CatalogStateMachine>;
/// A log id of the catalog group.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry of the catalog group.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// Vote of the catalog group.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Membership as stored.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

fn io_err(e: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
