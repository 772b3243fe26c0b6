//! The node's item index behind a small trait, with one conformance suite that every
//! implementation passes. The shipped implementation is [`RocksIndex`].

mod cached;
pub mod conformance;
mod rocks;

pub use cached::Cached;
pub(crate) use rocks::CatalogSnapshot;
pub use rocks::RocksIndex;

use mirage_format::Digest;

use crate::store::{Location, LocationTable};

/// Index errors.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The engine failed.
    #[error("index engine: {0}")]
    Engine(String),
    /// Another process has the index open (RocksDB's lock file is held).
    #[error(
        "the index {0} is in use by another process (a running mirage command or mirage-node \
         on this store): wait for it to finish, or reach the store through that node"
    )]
    InUse(String),
    /// A stored value does not decode.
    #[error("index value for {key} is corrupt: {why}")]
    Corrupt {
        /// Key, as text.
        key: String,
        /// Decoder message.
        why: String,
    },
}

/// One atomic group of index writes.
#[derive(Debug, Default)]
pub struct IndexBatch {
    /// New or replaced item locations.
    pub items: Vec<(Digest, Location)>,
    /// Item locations to remove.
    pub remove: Vec<Digest>,
    /// Location tables of new items.
    pub tables: Vec<(Digest, LocationTable)>,
    /// Metadata key/value pairs.
    pub meta: Vec<(Vec<u8>, Vec<u8>)>,
    /// Checkin hints (see [`crate::keys::CF_HINTS`]).
    pub hints: Vec<([u8; 32], Vec<u8>)>,
    /// No item of `items` is in the index yet (none moves): a reader meanwhile finds each
    /// either absent or where this batch puts it, so a cache need not turn its reads away.
    pub items_are_new: bool,
}

impl IndexBatch {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
            && self.remove.is_empty()
            && self.tables.is_empty()
            && self.meta.is_empty()
            && self.hints.is_empty()
    }
}

/// The index a store keeps: digest → location, parent → location table, and metadata.
pub trait Index: Send + Sync + std::fmt::Debug {
    /// Location of one item.
    fn get(&self, d: &Digest) -> Result<Option<Location>, IndexError>;
    /// Locations of many items, in the same order (one round trip where the engine allows).
    fn get_many(&self, ds: &[Digest]) -> Result<Vec<Option<Location>>, IndexError> {
        ds.iter().map(|d| self.get(d)).collect()
    }
    /// The location table stored with `parent`.
    fn table(&self, parent: &Digest) -> Result<Option<LocationTable>, IndexError>;
    /// A metadata value.
    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError>;
    /// Checkin hints, in the same order as `keys`.
    fn hints(&self, keys: &[[u8; 32]]) -> Result<Vec<Option<Vec<u8>>>, IndexError>;
    /// Applies a batch atomically. With `durable`, it is on stable storage when this returns
    /// (and so is every write before it).
    fn write(&self, batch: IndexBatch, durable: bool) -> Result<(), IndexError>;
    /// Visits every location table (by parent digest) until `f` returns false.
    fn scan_tables(
        &self,
        f: &mut dyn FnMut(Digest, LocationTable) -> bool,
    ) -> Result<(), IndexError>;
    /// Visits every item in digest order until `f` returns false.
    fn scan(&self, f: &mut dyn FnMut(Digest, Location) -> bool) -> Result<(), IndexError> {
        self.scan_from(&[], f)
    }
    /// Visits, in digest order, the items whose key bytes (`Digest::key_bytes`) are at or after
    /// `from`, until `f` returns false (a partition is one such run: see `Store::partition_digests`).
    fn scan_from(
        &self,
        from: &[u8],
        f: &mut dyn FnMut(Digest, Location) -> bool,
    ) -> Result<(), IndexError>;
}
