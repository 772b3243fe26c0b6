//! Mirage item format: digests, items, manifests, their canonical encoding, and chunking.
//!
//! This crate is pure: no async runtime, storage engine or network stack. Everything that is
//! written to disk or sent over the wire as an item is defined here, byte for byte, and
//! documented in `docs/FORMAT.md`.

pub mod chunking;
pub mod codec;
pub mod delta;
pub mod digest;
pub mod item;
pub mod manifest;
pub mod params;
pub mod sha256_lanes;
#[cfg(test)]
mod test_util;
pub mod tree;

pub use codec::DecodeError;
pub use delta::{Change, ChangeOp, Delta};
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use item::{Item, ItemKind};
pub use manifest::{
    ChunkList, Disk, Extent, Filesystem, Image, ImageDisk, Partition, PartitionContent, TableType,
};
pub use params::{Param, Params};
pub use tree::{EntryKind, Timestamp, Tree, TreeEntry, Xattr};
