//! Mirage storage node.
//!
//! Today: the storage engine ([`store::Store`]) with its index ([`index`]), usable embedded.
//! The catalog state machine, Raft replication and the HTTP API build on it.

pub mod index;
pub mod keys;
pub mod store;

pub use store::{
    CompactOptions, CompactReport, PendingPut, PutOutcome, ReadOptions, ReadStats, Stats, Store,
    StoreError, StoreOptions, VerifyReport,
};
