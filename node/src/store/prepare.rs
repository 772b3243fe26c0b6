//! The writers' half of the write path: each writer's thread validates, hashes and
//! compresses its request, computes each record's CRC and, for a large request, lays its
//! records out (`store::group`), then queues it for the committer (`store::write`).

use std::sync::atomic::Ordering;
use std::sync::mpsc;

use mirage_format::chunking::EncodedItem;
use mirage_format::item::peek;
use mirage_format::{Digest, Item, ItemKind};

use super::group::{GroupBuf, DIRECT_MIN};
use super::location::{Codec, Compression};
use super::record::{append_record, record_crc, HEADER_LEN};
use super::write::Msg;
use super::{Store, StoreError};
use crate::index::Index;

/// Result of storing one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The item's digest (computed by the store).
    pub digest: Digest,
    /// True when this call stored it; false when it was already present.
    pub new: bool,
}

/// A batch queued for the committer; [`PendingPut::wait`] returns once it is durable.
#[derive(Debug)]
#[must_use = "a put is acknowledged only by waiting for it"]
pub struct PendingPut {
    out: Vec<PutOutcome>,
    slots: Vec<usize>,
    reply: Option<mpsc::Receiver<Result<Vec<bool>, StoreError>>>,
}

impl PendingPut {
    pub(super) fn new(
        out: Vec<PutOutcome>,
        slots: Vec<usize>,
        reply: Option<mpsc::Receiver<Result<Vec<bool>, StoreError>>>,
    ) -> Self {
        PendingPut { out, slots, reply }
    }

    /// The digest of each item of the batch, in order (known before it is durable).
    pub fn digests(&self) -> impl Iterator<Item = Digest> + '_ {
        self.out.iter().map(|o| o.digest)
    }

    /// Waits until every new item of the batch is durable; one outcome per item, in order.
    pub fn wait(mut self) -> Result<Vec<PutOutcome>, StoreError> {
        if let Some(rrx) = self.reply.take() {
            // The committer answers with one flag per prepared item, in order: true where this
            // request appended it (a concurrent writer or an earlier copy in the batch may have).
            let flags = rrx.recv().map_err(|_| StoreError::Closed)??;
            for (slot, new) in self.slots.iter().zip(flags) {
                self.out[*slot].new = new;
            }
        }
        Ok(self.out)
    }
}

/// An item ready for the committer.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) digest: Digest,
    pub(crate) kind: ItemKind,
    pub(crate) refs: Vec<Digest>,
    pub(crate) raw_len: u32,
    pub(crate) compression: Compression,
    /// Empty once laid out in its request's segment (`group::GroupBuf::lay_out`).
    pub(crate) payload: Vec<u8>,
    pub(crate) stored_len: u32,
    /// The record's CRC, computed by the writer's thread (the committer is one thread).
    pub(crate) crc: u32,
}

impl Prepared {
    /// Compresses the encoded item with `codec` and computes its record's CRC (on the
    /// writer's thread, not the committer's).
    fn new(
        digest: Digest,
        kind: ItemKind,
        refs: Vec<Digest>,
        encoded: Vec<u8>,
        codec: Codec,
    ) -> Self {
        let raw_len = encoded.len() as u32;
        let (compression, payload) = compress(encoded, codec);
        let crc = record_crc(&digest, kind, compression, raw_len, &payload);
        Prepared {
            digest,
            kind,
            refs,
            raw_len,
            compression,
            stored_len: payload.len() as u32,
            payload,
            crc,
        }
    }

    /// Appends the item's record to `out` (its CRC computed beforehand): one copy of the
    /// payload.
    pub(crate) fn record_into(&self, out: &mut Vec<u8>) {
        append_record(
            out,
            &self.digest,
            self.kind,
            self.compression,
            self.raw_len,
            &self.payload,
            self.crc,
        );
    }

    /// A copy of a stored item for compaction (no references to check: it is already in).
    pub(crate) fn relocated(
        header_digest: Digest,
        kind: ItemKind,
        encoded: Vec<u8>,
        codec: Codec,
    ) -> Self {
        Prepared::new(header_digest, kind, Vec::new(), encoded, codec)
    }
}

impl Store {
    /// Stores one encoded item.
    pub fn put(&self, encoded: Vec<u8>) -> Result<PutOutcome, StoreError> {
        let mut v = self.put_many(vec![encoded])?;
        v.pop().ok_or(StoreError::Closed)
    }

    /// Stores a batch of encoded items, all or nothing. Each is decoded and validated, hashed by
    /// the store (never trusting a caller's digest) and must reference only items present in
    /// the store or in the same batch. Returns when every new item is durable.
    pub fn put_many(&self, encoded: Vec<Vec<u8>>) -> Result<Vec<PutOutcome>, StoreError> {
        self.put_inner(encoded.into_iter().map(|b| (None, b)).collect())?
            .wait()
    }

    /// Like [`Store::put_many`] for items encoded in this process: an [`EncodedItem`]'s digest
    /// is the hash of its bytes by construction, so it is not computed again.
    pub fn put_encoded(&self, items: Vec<EncodedItem>) -> Result<Vec<PutOutcome>, StoreError> {
        self.put_encoded_submit(items)?.wait()
    }

    /// Like [`Store::put_encoded`] without waiting: the batch is prepared (validated,
    /// compressed) and queued; [`PendingPut::wait`] returns when it is durable. Batches are
    /// committed in the order they are submitted, so a later batch may reference items of an
    /// earlier one; if the earlier one fails, the later is refused by the closure check.
    pub fn put_encoded_submit(&self, items: Vec<EncodedItem>) -> Result<PendingPut, StoreError> {
        self.put_inner(
            items
                .into_iter()
                .map(|e| {
                    let (d, b) = e.into_parts();
                    (Some(d), b)
                })
                .collect(),
        )
    }

    pub(super) fn put_inner(
        &self,
        items: Vec<(Option<mirage_format::Digest>, Vec<u8>)>,
    ) -> Result<PendingPut, StoreError> {
        let (mut known, encoded): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        let sh = self.shared();
        if let Some(why) = sh.failed.lock().clone() {
            return Err(StoreError::WritesDisabled(why));
        }
        hash_unknown(sh.alg, &encoded, &mut known);
        let mut digests = Vec::with_capacity(encoded.len());
        let mut metas = Vec::with_capacity(encoded.len());
        for (index, bytes) in encoded.iter().enumerate() {
            let (d, kind, refs) = check_item(sh.alg, index, bytes, known[index])?;
            digests.push(d);
            metas.push((kind, refs));
        }
        let present = sh.index.get_many(&digests)?;
        let mut prepared = Vec::new();
        let mut slots = Vec::new();
        let codec = sh.codec_now();
        // A large request is laid out as it is prepared: each payload copied into its record
        // right after its CRC, while it is in this core's cache (compression only shrinks).
        let bound: usize = encoded
            .iter()
            .zip(&present)
            .filter(|(_, here)| here.is_none())
            .map(|(b, _)| HEADER_LEN + b.len())
            .sum();
        let mut segment = (bound >= DIRECT_MIN).then(|| GroupBuf::segment(sh.segments.take(bound)));
        for (i, (((bytes, d), (kind, refs)), here)) in encoded
            .into_iter()
            .zip(&digests)
            .zip(metas)
            .zip(&present)
            .enumerate()
        {
            if here.is_some() {
                continue;
            }
            slots.push(i);
            let mut p = Prepared::new(*d, kind, refs, bytes, codec);
            if let Some(s) = segment.as_mut() {
                s.lay_out(&mut p);
            }
            prepared.push(p);
        }
        let out: Vec<PutOutcome> = digests
            .iter()
            .map(|d| PutOutcome {
                digest: *d,
                new: false,
            })
            .collect();
        let reply = if prepared.is_empty() {
            None
        } else {
            let (rtx, rrx) = mpsc::sync_channel(1);
            // Record bytes before compression (`bound`: the new items' encodings).
            sh.submitted_raw.fetch_add(bound as u64, Ordering::Relaxed);
            self.send(Msg::Write(prepared, segment, rtx))?;
            Some(rrx)
        };
        Ok(PendingPut { out, slots, reply })
    }
}

/// Bytes `items` take as records.
pub(crate) fn record_bytes(items: &[Prepared]) -> usize {
    items
        .iter()
        .map(|p| HEADER_LEN + p.stored_len as usize)
        .sum()
}

pub(crate) fn compress(bytes: Vec<u8>, codec: Codec) -> (Compression, Vec<u8>) {
    if bytes.len() < 128 {
        return (Compression::None, bytes);
    }
    let (compression, packed) = match codec {
        Codec::None | Codec::Auto => return (Compression::None, bytes),
        Codec::Lz4 => (Compression::Lz4, super::record::lz4_compress(&bytes)),
        Codec::Zstd(level) => (
            Compression::Zstd,
            super::record::zstd_compress(&bytes, level).ok(),
        ),
    };
    match packed {
        // Keep the compressed form only when it saves at least an eighth.
        Some(c) if c.len() + bytes.len() / 8 <= bytes.len() => (compression, c),
        _ => (Compression::None, bytes),
    }
}

/// SHA-256 digests of the items of a batch that came without one (from the network), hashed
/// side by side ([`Digest::of_each`]); SHA-1 items are hashed one at a time by
/// [`check_item`], which names an item its collision detection refuses.
fn hash_unknown(alg: mirage_format::Algorithm, encoded: &[Vec<u8>], known: &mut [Option<Digest>]) {
    if alg != mirage_format::Algorithm::Sha256 {
        return;
    }
    let (slots, bytes): (Vec<usize>, Vec<&[u8]>) = known
        .iter()
        .zip(encoded)
        .enumerate()
        .filter(|(_, (k, _))| k.is_none())
        .map(|(i, (_, b))| (i, b.as_slice()))
        .unzip();
    if slots.len() < 2 {
        return;
    }
    if let Ok(digests) = Digest::of_each(alg, &bytes) {
        for (i, d) in slots.into_iter().zip(digests) {
            known[i] = Some(d);
        }
    }
}

/// Decodes and validates item #`index` of a batch for a store using `alg`: its kind, its
/// references (all of `alg`), the blob size limit, and its digest (`known` when it was made in
/// this process, else computed).
pub(crate) fn check_item(
    alg: mirage_format::Algorithm,
    index: usize,
    bytes: &[u8],
    known: Option<Digest>,
) -> Result<(Digest, ItemKind, Vec<Digest>), StoreError> {
    let (kind, _) = peek(bytes).map_err(|source| StoreError::InvalidItem { index, source })?;
    let refs = if kind.has_refs() {
        let item =
            Item::decode(bytes).map_err(|source| StoreError::InvalidItem { index, source })?;
        let refs = item.refs();
        if let Some(r) = refs.iter().find(|r| r.algorithm() != alg) {
            return Err(StoreError::WrongAlgorithm {
                index,
                found: r.algorithm(),
                store: alg,
            });
        }
        refs
    } else {
        if bytes.len() > mirage_format::item::MAX_ITEM {
            return Err(StoreError::InvalidItem {
                index,
                source: mirage_format::DecodeError::TooLong {
                    field: "blob",
                    len: bytes.len() as u64,
                    limit: mirage_format::item::MAX_ITEM as u64,
                },
            });
        }
        Vec::new()
    };
    let d = match known {
        Some(d) if d.algorithm() == alg => d,
        Some(d) => {
            return Err(StoreError::WrongAlgorithm {
                index,
                found: d.algorithm(),
                store: alg,
            })
        }
        None => Digest::of(alg, bytes).map_err(|source| StoreError::Digest { index, source })?,
    };
    Ok((d, kind, refs))
}
