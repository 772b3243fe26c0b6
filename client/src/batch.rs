//! Batching encoded items into `put_many` calls, counting what was new.

use mirage_format::chunking::EncodedItem;
use mirage_node::{Store, StoreError};

const BATCH_BYTES: usize = 8 << 20;
const BATCH_ITEMS: usize = 1024;

/// Items sent, items new to the store, and encoded bytes of the new ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Items sent to the store.
    pub sent: u64,
    /// Items the store did not have.
    pub new: u64,
    /// Encoded bytes of the new items.
    pub new_bytes: u64,
}

/// Collects items and stores them in batches of about 8 MiB. Items must arrive children
/// before parents (or in the same batch): the store's closure invariant.
#[derive(Debug)]
pub struct Batcher<'a> {
    store: &'a Store,
    items: Vec<Vec<u8>>,
    bytes: usize,
    /// What was stored so far.
    pub counts: BatchCounts,
}

impl<'a> Batcher<'a> {
    /// An empty batcher.
    pub fn new(store: &'a Store) -> Self {
        Batcher {
            store,
            items: Vec::new(),
            bytes: 0,
            counts: BatchCounts::default(),
        }
    }

    /// Adds an item, storing the batch when it is full.
    pub fn push(&mut self, item: EncodedItem) -> Result<(), StoreError> {
        self.bytes += item.bytes.len();
        self.items.push(item.bytes);
        if self.bytes >= BATCH_BYTES || self.items.len() >= BATCH_ITEMS {
            self.flush()?;
        }
        Ok(())
    }

    /// Stores what is pending.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.items.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(&mut self.items);
        let sizes: Vec<usize> = items.iter().map(Vec::len).collect();
        self.bytes = 0;
        for (o, n) in self.store.put_many(items)?.iter().zip(sizes) {
            self.counts.sent += 1;
            if o.new {
                self.counts.new += 1;
                self.counts.new_bytes += n as u64;
            }
        }
        Ok(())
    }
}
