//! Batching encoded items into `put_encoded_submit` calls, counting what was new. Up to
//! [`IN_FLIGHT`] batches are queued at once, so that preparing (compressing) the next batch
//! overlaps with the committer's write and fsync of the previous one.

use std::collections::VecDeque;

use mirage_format::chunking::{Chunk, EncodedItem, Piece};
use mirage_node::{BlobSegment, PendingPut, Store, StoreError};

const BATCH_BYTES: usize = 8 << 20;
const BATCH_ITEMS: usize = 1024;
const IN_FLIGHT: usize = 4;
/// Room in the segment chunks are copied into (a batch and the largest chunk).
const SEGMENT_BYTES: usize = 12 << 20;

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
/// before parents (or in the same batch): the store's closure invariant. Nothing is known to
/// be durable until [`Batcher::flush`] returns.
#[derive(Debug)]
pub struct Batcher<'a> {
    store: &'a Store,
    items: Vec<EncodedItem>,
    bytes: usize,
    /// Chunks copied from the chunker's window into their records, submitted before the
    /// items (the chunk lists naming them).
    seg: Option<BlobSegment>,
    pending: VecDeque<(PendingPut, Vec<usize>)>,
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
            seg: None,
            pending: VecDeque::new(),
            counts: BatchCounts::default(),
        }
    }

    /// The store the items go to.
    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// Adds an item, submitting the batch when it is full.
    pub fn push(&mut self, item: EncodedItem) -> Result<(), StoreError> {
        self.bytes += item.bytes().len();
        self.items.push(item);
        if self.bytes >= BATCH_BYTES || self.items.len() >= BATCH_ITEMS {
            self.submit()?;
        }
        Ok(())
    }

    /// Adds what the chunker hands on: an item, or a chunk, copied from the chunker's window
    /// straight into its record.
    pub fn put(&mut self, piece: Piece<'_>) -> Result<(), StoreError> {
        match piece {
            Piece::Item(item) => self.push(item),
            Piece::Chunk(c) => self.push_chunk(c),
        }
    }

    fn push_chunk(&mut self, c: Chunk<'_>) -> Result<(), StoreError> {
        let store = self.store;
        let seg = self
            .seg
            .get_or_insert_with(|| store.blob_segment(SEGMENT_BYTES));
        if seg.push_chunk(&c).is_none() {
            self.submit()?;
            let seg = self.seg.insert(store.blob_segment(SEGMENT_BYTES));
            if seg.push_chunk(&c).is_none() {
                return self.push(c.into_item());
            }
        }
        if self.seg.as_ref().is_some_and(|s| s.bytes() >= BATCH_BYTES) {
            self.submit()?;
        }
        Ok(())
    }

    /// Submits the items collected so far without waiting for them: items pushed to another
    /// batcher afterwards (parents) reach the store after them.
    pub fn submit(&mut self) -> Result<(), StoreError> {
        if let Some(seg) = self.seg.take_if(|s| !s.is_empty()) {
            let sizes = seg.sizes();
            let put = self.store.put_blobs_submit(seg)?;
            self.submitted(put, sizes)?;
        }
        if self.items.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(&mut self.items);
        let sizes: Vec<usize> = items.iter().map(|i| i.bytes().len()).collect();
        self.bytes = 0;
        let put = self.store.put_encoded_submit(items)?;
        self.submitted(put, sizes)
    }

    /// Counts in a batch submitted by the caller (e.g. [`Store::put_blobs_submit`]) whose
    /// items have these encoded sizes, waiting as [`Batcher::submit`] does when too many
    /// are in flight.
    pub fn submitted(&mut self, put: PendingPut, sizes: Vec<usize>) -> Result<(), StoreError> {
        self.pending.push_back((put, sizes));
        while self.pending.len() > IN_FLIGHT {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<(), StoreError> {
        if let Some((p, sizes)) = self.pending.pop_front() {
            for (o, n) in p.wait()?.iter().zip(sizes) {
                self.counts.sent += 1;
                if o.new {
                    self.counts.new += 1;
                    self.counts.new_bytes += n as u64;
                }
            }
        }
        Ok(())
    }

    /// Stores what is pending and waits until everything pushed so far is durable.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.submit()?;
        while !self.pending.is_empty() {
            self.wait_oldest()?;
        }
        Ok(())
    }
}
