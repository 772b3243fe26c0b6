//! Blobs read straight into their records. A caller in this process that reads many small
//! contents (the indexer, a file at a time) reserves each one's record in a
//! [`BlobSegment`] and reads the content into it; [`Store::put_blobs_submit`] then hashes
//! the blobs where they lie, drops those the store has, writes the headers in place and
//! hands the segment to the committer as a group of its own. Against blobs allocated one by
//! one and copied into a segment by [`Store::put_encoded_submit`], this saves each blob's
//! allocation (fresh pages, faulted in and zeroed) and its copy into the record.
//!
//! The store hashes the bytes itself, from the segment, after the caller has written them;
//! a chunk copied in by [`BlobSegment::push_chunk`] brings the digest the chunker computed
//! from the bytes copied (a `Chunk` is only made by hashing), and writing into a blob again
//! drops what was computed of it. Either way a digest is that of the bytes the record holds.

use std::sync::atomic::Ordering;
use std::sync::mpsc;

use mirage_format::chunking::Chunk;
use mirage_format::item::BLOB_HEADER;
use mirage_format::{Algorithm, Digest, ItemKind};

use super::group::GroupBuf;
use super::location::{Codec, Compression};
use super::prepare::{PendingPut, Prepared, PutOutcome};
use super::record::{put_header, ALIGN, HEADER_LEN};
use super::write::Msg;
use super::{Store, StoreError};
use crate::digest_map::DigestSet;
use crate::index::Index;

/// New blobs reserved and read into their records, waiting to be hashed and stored.
#[derive(Debug)]
pub struct BlobSegment {
    /// Initialized to its full length (a pooled buffer is not cleared again).
    mem: Vec<u8>,
    /// First record byte (aligned in memory, for direct I/O).
    start: usize,
    /// Just past the last reserved record.
    end: usize,
    slots: Vec<Slot>,
}

#[derive(Debug)]
struct Slot {
    /// The record's first byte in `mem`.
    at: usize,
    /// The payload's length: the blob's encoding.
    len: usize,
    /// The payload's CRC32C, once it is complete ([`BlobSegment::seal`]).
    crc: Option<u32>,
    /// Its digest, when it came hashed ([`BlobSegment::push_chunk`]).
    digest: Option<Digest>,
    live: bool,
}

impl BlobSegment {
    /// Reserves the record of a blob of `size` content bytes: its index, or `None` when the
    /// segment has no room left (or the blob is too large for one).
    pub fn reserve(&mut self, size: u64) -> Option<usize> {
        let len = usize::try_from(size).ok()?.checked_add(BLOB_HEADER.len())?;
        if len > mirage_format::item::MAX_ITEM {
            return None;
        }
        let at = self.end;
        let rec_end = at.checked_add(HEADER_LEN + len)?;
        // Room behind for the padding of a direct write.
        if rec_end + ALIGN as usize > self.mem.len() {
            return None;
        }
        self.mem[at + HEADER_LEN..][..BLOB_HEADER.len()].copy_from_slice(&BLOB_HEADER);
        self.end = rec_end;
        self.slots.push(Slot {
            at,
            len,
            crc: None,
            digest: None,
            live: true,
        });
        Some(self.slots.len() - 1)
    }

    /// Copies a chunk the chunker cut and hashed into a record of its own: its index, or
    /// `None` when the segment has no room left.
    pub fn push_chunk(&mut self, c: &Chunk<'_>) -> Option<usize> {
        let content = c.content();
        let slot = self.reserve(content.len() as u64)?;
        self.encoding_mut(slot)[BLOB_HEADER.len()..].copy_from_slice(content);
        self.seal(slot);
        self.slots[slot].digest = Some(c.digest());
        Some(slot)
    }

    /// The encoding of reserved blob `slot` (its header, then room for the content), to be
    /// read into (e.g. by `mirage_format::chunking::read_blob_rest`).
    pub fn encoding_mut(&mut self, slot: usize) -> &mut [u8] {
        let s = &mut self.slots[slot];
        // What was computed of the bytes no longer holds once they may change.
        (s.crc, s.digest) = (None, None);
        &mut self.mem[s.at + HEADER_LEN..][..s.len]
    }

    /// The content of blob `slot` is complete: its CRC is computed now, while it is in the
    /// cache (otherwise when it is stored).
    pub fn seal(&mut self, slot: usize) {
        let s = &self.slots[slot];
        let crc = crc32c::crc32c(&self.mem[s.at + HEADER_LEN..][..s.len]);
        self.slots[slot].crc = Some(crc);
    }

    /// Gives up blob `slot`: it is not stored (its room is reclaimed when the segment is).
    pub fn release(&mut self, slot: usize) {
        self.slots[slot].live = false;
        // The last record's room comes back at once.
        while self.slots.last().is_some_and(|s| !s.live) {
            if let Some(s) = self.slots.pop() {
                self.end = s.at;
            }
        }
    }

    /// Blobs reserved and not released, in order: what [`Store::put_blobs_submit`] reports
    /// on, one outcome each.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.live).count()
    }

    /// Whether no blob is reserved.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record bytes reserved.
    pub fn bytes(&self) -> usize {
        self.end - self.start
    }

    /// Encoded sizes of the blobs [`BlobSegment::len`] counts, in order.
    pub fn sizes(&self) -> Vec<usize> {
        self.live().map(|s| s.len).collect()
    }

    /// The digest of each live blob: those that came hashed as they came (of the store's
    /// algorithm), the others hashed now, side by side.
    fn digests(&self, alg: Algorithm) -> Result<Vec<Digest>, StoreError> {
        // The caller may have written over a blob's header: every record must be a blob.
        if let Some(index) = self
            .live()
            .position(|s| self.payload(s)[..BLOB_HEADER.len()] != BLOB_HEADER)
        {
            return Err(StoreError::InvalidItem {
                index,
                source: mirage_format::DecodeError::Invalid {
                    what: "blob segment",
                    why: "a record that is not a blob's encoding".into(),
                },
            });
        }
        let unhashed: Vec<&[u8]> = self
            .live()
            .filter(|s| s.digest.is_none())
            .map(|s| self.payload(s))
            .collect();
        let mut hashed = hash_each(alg, &unhashed)?.into_iter();
        self.live()
            .enumerate()
            .map(|(index, s)| match s.digest {
                Some(d) if d.algorithm() == alg => Ok(d),
                Some(d) => Err(StoreError::WrongAlgorithm {
                    index,
                    found: d.algorithm(),
                    store: alg,
                }),
                None => hashed.next().ok_or(StoreError::Closed),
            })
            .collect()
    }

    /// Lays the records of the live blobs kept (`keep`, one flag each, with their
    /// `digests`) out from the start, each moved down over those not kept, and writes their
    /// headers in place. Returns the items for the committer and the end of the records.
    fn settle(&mut self, digests: &[Digest], keep: &[bool]) -> (Vec<Prepared>, usize) {
        let live: Vec<(usize, usize, Option<u32>)> =
            self.live().map(|s| (s.at, s.len, s.crc)).collect();
        let mut prepared = Vec::new();
        let mut to = self.start;
        for ((at, len, crc), (d, keep)) in live.into_iter().zip(digests.iter().zip(keep)) {
            if !keep {
                continue;
            }
            let rec = HEADER_LEN + len;
            if at != to {
                self.mem.copy_within(at..at + rec, to);
            }
            let (header, payload) = self.mem[to..to + rec].split_at_mut(HEADER_LEN);
            let payload_crc = crc.unwrap_or_else(|| crc32c::crc32c(payload));
            let crc = put_header(header, d, ItemKind::Blob, len, payload_crc);
            prepared.push(Prepared {
                digest: *d,
                kind: ItemKind::Blob,
                refs: Vec::new(),
                raw_len: len as u32,
                compression: Compression::None,
                payload: Vec::new(),
                stored_len: len as u32,
                crc,
            });
            to += rec;
        }
        (prepared, to)
    }

    fn live(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| s.live)
    }

    fn payload(&self, s: &Slot) -> &[u8] {
        &self.mem[s.at + HEADER_LEN..][..s.len]
    }
}

impl Store {
    /// An empty segment with room for about `bytes` bytes of records.
    pub fn blob_segment(&self, bytes: usize) -> BlobSegment {
        let mem = self.shared().blob_segments.take_filled(bytes);
        let start = mem.as_ptr().align_offset(ALIGN as usize).min(mem.len());
        BlobSegment {
            mem,
            start,
            end: start,
            slots: Vec::new(),
        }
    }

    /// Stores the blobs of `seg` (those not released), as [`Store::put_encoded_submit`] does
    /// items: hashed by the store, from the segment, side by side; those the store has, or
    /// that come twice, are dropped; the others are written in place as one group.
    /// [`PendingPut::digests`] names each blob now, in order; [`PendingPut::wait`] returns
    /// once the new ones are durable.
    pub fn put_blobs_submit(&self, mut seg: BlobSegment) -> Result<PendingPut, StoreError> {
        let sh = self.shared();
        if let Some(why) = sh.failed.lock().clone() {
            sh.blob_segments.give(seg.mem);
            return Err(StoreError::WritesDisabled(why));
        }
        let digests = seg.digests(sh.alg)?;
        let present = sh.index.get_many(&digests)?;
        let codec = sh.codec_now();
        if !matches!(codec, Codec::None | Codec::Auto) {
            // Compressed payloads are laid out by the ordinary path.
            let items = seg
                .live()
                .zip(&digests)
                .map(|(s, d)| (Some(*d), seg.payload(s).to_vec()))
                .collect();
            sh.blob_segments.give(seg.mem);
            return self.put_inner(items);
        }
        let mut seen = DigestSet::default();
        let keep: Vec<bool> = digests
            .iter()
            .zip(&present)
            .map(|(d, here)| here.is_none() && seen.insert(*d))
            .collect();
        let (prepared, to) = seg.settle(&digests, &keep);
        let slots: Vec<usize> = (0..keep.len()).filter(|i| keep[*i]).collect();
        let out = digests
            .iter()
            .map(|d| PutOutcome {
                digest: *d,
                new: false,
            })
            .collect();
        if prepared.is_empty() {
            sh.blob_segments.give(seg.mem);
            return Ok(PendingPut::new(out, slots, None));
        }
        sh.submitted_raw
            .fetch_add((to - seg.start) as u64, Ordering::Relaxed);
        let group = GroupBuf::filled_segment(seg.mem, seg.start, to);
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.send(Msg::Write(prepared, Some(group), rtx))?;
        Ok(PendingPut::new(out, slots, Some(rrx)))
    }
}

/// Each payload's digest: SHA-256 side by side; SHA-1 one at a time, so that the item its
/// collision detection refuses is named.
fn hash_each(alg: Algorithm, payloads: &[&[u8]]) -> Result<Vec<Digest>, StoreError> {
    match alg {
        Algorithm::Sha256 => {
            Digest::of_each(alg, payloads).map_err(|source| StoreError::Digest { index: 0, source })
        }
        _ => payloads
            .iter()
            .enumerate()
            .map(|(index, p)| {
                Digest::of(alg, p).map_err(|source| StoreError::Digest { index, source })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{check_crc, parse_header};

    fn segment(bytes: usize) -> BlobSegment {
        let mem = vec![0u8; bytes];
        let start = mem.as_ptr().align_offset(ALIGN as usize);
        BlobSegment {
            mem,
            start,
            end: start,
            slots: Vec::new(),
        }
    }

    #[test]
    fn records_settle_in_place_valid_and_give_their_payloads_back() {
        let alg = Algorithm::Sha256;
        let contents: Vec<Vec<u8>> = [3000usize, 0, 70_000, 1, 5000]
            .iter()
            .map(|n| (0..*n).map(|i| (i * 31 + n) as u8).collect())
            .collect();
        let mut seg = segment(1 << 20);
        // Stale bytes where the records go: a reused buffer.
        seg.mem.fill(0xa5);
        for (i, c) in contents.iter().enumerate() {
            let slot = seg.reserve(c.len() as u64).unwrap();
            seg.encoding_mut(slot)[BLOB_HEADER.len()..].copy_from_slice(c);
            if i % 2 == 0 {
                seg.seal(slot);
            }
        }
        let digests = seg.digests(alg).unwrap();
        let keep = [true, false, true, false, true];
        let (mut prepared, end) = seg.settle(&digests, &keep);
        let kept: Vec<&Vec<u8>> = contents
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(c, _)| c)
            .collect();
        assert_eq!(prepared.len(), kept.len());
        // Back to back from the start, each a whole record: header, CRC, the blob.
        let mut at = seg.start;
        for (p, c) in prepared.iter().zip(&kept) {
            let encoding = mirage_format::item::encode_blob(c);
            let rec = &seg.mem[at..at + HEADER_LEN + encoding.len()];
            let h = parse_header(rec).unwrap();
            assert_eq!(h.digest, p.digest);
            assert_eq!(h.digest, Digest::of(alg, &encoding).unwrap());
            assert_eq!(h.stored_len as usize, encoding.len());
            assert_eq!(&rec[HEADER_LEN..], &encoding[..]);
            check_crc(rec).unwrap();
            at += rec.len();
        }
        assert_eq!(at, end);
        // The committer can take them back out (when another writer stored one meanwhile).
        let group = GroupBuf::filled_segment(seg.mem, seg.start, end);
        assert_eq!(group.len(), end - seg.start);
        group.payloads_back(&mut prepared);
        for (p, c) in prepared.iter().zip(&kept) {
            assert_eq!(p.payload, mirage_format::item::encode_blob(c));
        }
    }
}
