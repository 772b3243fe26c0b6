//! Mirage storage node.
//!
//! Today: the storage engine ([`store::Store`]) with its index ([`index`]) and the catalog
//! state machine ([`catalog`]), usable embedded. Raft replication and the HTTP API build on
//! them.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod digest_map;
pub mod index;
pub mod keys;
pub mod memory;
pub mod ports;
pub mod raft;
pub mod shard;
pub mod store;

pub use store::{
    BlobSegment, Codec, CompactOptions, CompactReport, PartitionSummary, PendingPut, PutOutcome,
    ReadOptions, ReadStats, SpanReads, Stats, Store, StoreError, StoreOptions, VerifyReport,
};
