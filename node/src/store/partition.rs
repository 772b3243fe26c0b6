//! A node's items by cluster partition: compact summaries that replicas compare
//! (anti-entropy), the digests of one partition, and the replacement of a damaged copy with a
//! good one from another replica (scrub). A partition is a contiguous run of the item index,
//! since partitions are the top bits of the digest (`mirage_cluster_config::partition_of`).

use std::sync::mpsc;

use mirage_cluster_config::placement::{partition_of, partition_start};
use mirage_format::Digest;

use super::prepare::{check_item, Prepared};
use super::write::Msg;
use super::{Store, StoreError};
use crate::index::{Index, IndexBatch};

/// What a node holds of one partition: equal summaries mean equal digest sets (up to a
/// 2^-256 chance), so replicas exchange digest lists only where summaries differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionSummary {
    /// Items held.
    pub items: u64,
    /// Bytes of their records.
    pub bytes: u64,
    /// XOR of their digests.
    pub xor: [u8; 32],
}

impl PartitionSummary {
    fn add(&mut self, d: &Digest, bytes: u64) {
        self.items += 1;
        self.bytes += bytes;
        for (x, b) in self.xor.iter_mut().zip(d.as_bytes()) {
            *x ^= b;
        }
    }
}

impl Store {
    /// One summary per partition of `partitions` (a power of two), from one index scan.
    pub fn partition_summaries(
        &self,
        partitions: u32,
    ) -> Result<Vec<PartitionSummary>, StoreError> {
        let mut out = vec![PartitionSummary::default(); partitions.max(1) as usize];
        self.shared().index.scan(&mut |d, l| {
            if let Some(s) = out.get_mut(partition_of(&d, partitions) as usize) {
                s.add(&d, l.record_len());
            }
            true
        })?;
        Ok(out)
    }

    /// The digests this store holds in partition `p` of `partitions`, in digest order.
    pub fn partition_digests(&self, partitions: u32, p: u32) -> Result<Vec<Digest>, StoreError> {
        let sh = self.shared();
        // The index key of a digest is its algorithm's code, then its bytes.
        let mut from = vec![sh.alg.code()];
        from.extend_from_slice(&partition_start(p, partitions).to_be_bytes());
        let mut out = Vec::new();
        sh.index.scan_from(&from, &mut |d, _| {
            if d.algorithm() != sh.alg || partition_of(&d, partitions) != p {
                return false;
            }
            out.push(d);
            true
        })?;
        Ok(out)
    }

    /// Removes `ds` from the index (their records become garbage for compaction): a node's
    /// copies of a partition it no longer owns, once every owner holds them. Answers how many
    /// were indexed.
    pub fn forget(&self, ds: &[Digest]) -> Result<u64, StoreError> {
        let sh = self.shared();
        let present = sh.index.get_many(ds)?;
        let gone: Vec<Digest> = ds
            .iter()
            .zip(present)
            .filter(|(_, l)| l.is_some())
            .map(|(d, _)| *d)
            .collect();
        let n = gone.len() as u64;
        let mut counts = sh.counts.lock();
        *counts = None;
        sh.index.write(
            IndexBatch {
                remove: gone,
                ..Default::default()
            },
            false,
        )?;
        Ok(n)
    }

    /// Stores `encoded` as a new copy of an item whose stored copy is damaged, and points the
    /// index at it. The bytes are validated and hashed here; the answer is their digest.
    pub fn replace(&self, encoded: Vec<u8>) -> Result<Digest, StoreError> {
        let (d, kind, _) = check_item(self.algorithm(), 0, &encoded, None)?;
        let codec = self.shared().opts.codec;
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Msg::Relocate(
            vec![Prepared::relocated(d, kind, encoded, codec)],
            tx,
        ))?;
        rx.recv().map_err(|_| StoreError::Closed)??;
        Ok(d)
    }
}
