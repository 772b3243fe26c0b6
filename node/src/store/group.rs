//! The committer's group buffer: the records of one group, laid out so that a large group can
//! be written with direct I/O. On the project VM a buffered write costs a copy into freshly
//! allocated page-cache pages (0.6–0.7 s of system time for 320 MB), a direct one almost none
//! (docs/PERFORMANCE.md, "fifth session"). A direct group starts at the next [`ALIGN`]
//! boundary of the volume and is padded with zeros to the next one; readers of layout
//! version 2 skip that padding. Small groups (single manifests, catalog-driven puts) are
//! written through the page cache where they stand, so they waste no space.
//!
//! The committer fills one buffer while the syncer writes the previous one (`store::sync`);
//! the two buffers go back and forth between them ([`Pool`]), so their pages stay mapped and a
//! long checkin does not fault in (and zero) a fresh buffer for every group.
//!
//! A large request is laid out by its writer instead ([`GroupBuf::lay_out`], a **segment**):
//! on the writer's thread, each payload is copied into its record right after its CRC was
//! computed, while it is in the core's cache, and its memory is freed where it was allocated.
//! The committer then writes the segment in place as a group of its own, unless the request
//! holds an item the store already has (then its payloads are taken back out and it is laid
//! out as any other). The committer's copy of every payload, from memory another core wrote
//! long before, was 9 % of a new image's checkin (docs/PERFORMANCE.md). Segment buffers go
//! back to the writers through a [`SegmentPool`] once written.

use super::prepare::Prepared;
use super::record::{align_up, ALIGN, HEADER_LEN};
use std::sync::mpsc;

use super::volume::{ActiveVolume, VolumeWriter};
use super::StoreError;

/// Groups of at least this many bytes are written directly.
pub(crate) const DIRECT_MIN: usize = 1 << 20;

/// A buffer larger than this is given back after its group.
const KEEP_MAX: usize = 256 << 20;

/// The records of one group and where they go.
#[derive(Debug, Default)]
pub(crate) struct GroupBuf {
    mem: Vec<u8>,
    /// Index in `mem` of the first record byte (aligned in memory for a direct group).
    start: usize,
    /// Volume offset of `mem[start]`.
    base: u64,
    direct: bool,
    /// Where its memory goes back to.
    origin: Origin,
    /// Where the records end when the memory is longer than they are (a blob segment's
    /// buffer stays initialized to its full length, `store::blobs`); `None`: at its end.
    filled: Option<usize>,
}

/// Whose memory a [`GroupBuf`] is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The committer's own ([`Pool`]).
    #[default]
    Committer,
    /// A writer's segment ([`GroupBuf::segment`], `Shared::segments`).
    Segment,
    /// A segment blobs were read into (`store::blobs`, `Shared::blob_segments`).
    Blobs,
}

impl GroupBuf {
    /// Starts a group of about `estimate` bytes (records with headers) to append to `active`.
    /// A new buffer has room for at least `group_bytes` (the store's usual group size,
    /// `StoreOptions::max_group_bytes`), so a checkin's buffers are allocated once; pages
    /// never written are never faulted in, so a small group costs no more than its size.
    pub(crate) fn begin(&mut self, active: &ActiveVolume, estimate: usize, group_bytes: usize) {
        if self.mem.capacity() > KEEP_MAX {
            self.mem = Vec::new();
        }
        self.mem.clear();
        self.filled = None;
        let slack = 2 * ALIGN as usize;
        if self.mem.capacity() < estimate + slack {
            // A new buffer, not a grown one: `reserve` would reallocate, and the allocator
            // copies the whole old capacity (stale records) into fresh pages.
            let least = estimate.max(group_bytes) + slack;
            self.mem = Vec::with_capacity(least.max(2 * self.mem.capacity()));
        }
        self.direct = estimate >= DIRECT_MIN && active.writer.direct_usable();
        // The capacity holds the memory alignment in front and the padding behind.
        if self.direct {
            let skip = self.mem.as_ptr().align_offset(ALIGN as usize);
            self.mem.resize(skip, 0);
            self.start = skip;
            self.base = align_up(active.len);
        } else {
            self.start = 0;
            self.base = active.len;
        }
    }

    /// A segment to lay records out in (see [`GroupBuf::lay_out`]): `mem` is a buffer from
    /// the [`SegmentPool`] with room for them and the alignment; the records start at an
    /// aligned address. Placed at the end of a volume by [`GroupBuf::place`].
    pub(crate) fn segment(mut mem: Vec<u8>) -> Self {
        mem.clear();
        let skip = mem.as_ptr().align_offset(ALIGN as usize);
        mem.resize(skip, 0);
        GroupBuf {
            mem,
            start: skip,
            base: 0,
            direct: false,
            origin: Origin::Segment,
            filled: None,
        }
    }

    /// A segment whose records were written in place into `mem` (initialized to its full
    /// length): from `start` (aligned in memory) to `end`.
    pub(crate) fn filled_segment(mem: Vec<u8>, start: usize, end: usize) -> Self {
        GroupBuf {
            mem,
            start,
            base: 0,
            direct: false,
            origin: Origin::Blobs,
            filled: Some(end),
        }
    }

    /// Appends an item's record to a segment, moving its payload in (and freeing it).
    pub(crate) fn lay_out(&mut self, p: &mut Prepared) {
        self.append(p);
        p.payload = Vec::new();
    }

    /// Appends an item's record (its CRC computed beforehand): one copy of the payload.
    pub(crate) fn append(&mut self, p: &Prepared) {
        debug_assert!(
            self.filled.is_none(),
            "records are appended at the memory's end"
        );
        p.record_into(&mut self.mem);
    }

    /// Whether this is a writer's segment.
    #[cfg(test)]
    pub(crate) fn is_segment(&self) -> bool {
        self.origin != Origin::Committer
    }

    /// A segment's memory back to its writers' pool (`None`); the committer's own buffer is
    /// returned for its pool.
    pub(crate) fn release_segment(self, sh: &super::Shared) -> Option<GroupBuf> {
        match self.origin {
            Origin::Committer => Some(self),
            Origin::Segment => {
                sh.segments.give(self.mem);
                None
            }
            Origin::Blobs => {
                sh.blob_segments.give(self.mem);
                None
            }
        }
    }

    /// The records' end in `mem`.
    fn end(&self) -> usize {
        self.filled.unwrap_or(self.mem.len())
    }

    /// Places a segment at the end of `active` (at the next aligned offset when it is to be
    /// written directly).
    pub(crate) fn place(&mut self, active: &ActiveVolume) {
        self.direct = self.len() >= DIRECT_MIN
            && active.writer.direct_usable()
            && self.mem[self.start..].as_ptr().align_offset(ALIGN as usize) == 0;
        self.base = if self.direct {
            align_up(active.len)
        } else {
            active.len
        };
    }

    /// Gives the payloads of a segment's records back to `items` (the items it was laid out
    /// from, in order), for the committer to lay them out itself.
    pub(crate) fn payloads_back(&self, items: &mut [Prepared]) {
        let mut at = self.start;
        for p in items {
            at += HEADER_LEN;
            let end = at + p.stored_len as usize;
            p.payload = self
                .mem
                .get(at..end)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            at = end;
        }
    }

    /// The memory, for the pool it came from.
    #[cfg(test)]
    pub(crate) fn into_mem(self) -> Vec<u8> {
        self.mem
    }

    /// Record bytes so far.
    pub(crate) fn len(&self) -> usize {
        self.end() - self.start
    }

    /// Volume offset of the next record.
    pub(crate) fn next_offset(&self) -> u64 {
        self.base + self.len() as u64
    }

    /// The buffer records are appended to (tests write raw bytes).
    #[cfg(test)]
    pub(crate) fn records(&mut self) -> &mut Vec<u8> {
        &mut self.mem
    }

    /// Ends the group: a direct one is padded to the alignment. Returns the volume offset
    /// just past it, `None` when it holds no records.
    pub(crate) fn close(&mut self) -> Option<u64> {
        if self.len() == 0 {
            return None;
        }
        if self.direct {
            let padded = self.start + align_up(self.len() as u64) as usize;
            match self.filled {
                // Padded with zeros in place, the memory beyond left as it is.
                Some(end) if padded <= self.mem.len() => {
                    self.mem[end..padded].fill(0);
                    self.filled = Some(padded);
                }
                _ => {
                    self.mem.truncate(self.end());
                    self.filled = None;
                    self.mem.resize(padded, 0);
                }
            }
            // The estimate bounds the group, so the buffer never moved; should it have, the
            // bytes go through the page cache at the same (aligned) place.
            self.direct = self.mem[self.start..].as_ptr().align_offset(ALIGN as usize) == 0;
        }
        Some(self.next_offset())
    }

    /// Writes a closed group at its place (not durably; the syncer's part).
    pub(crate) fn write_out(&self, w: &VolumeWriter) -> Result<(), StoreError> {
        w.write(&self.mem[self.start..self.end()], self.base, self.direct)
    }

    /// Writes the group at its place now (durably if asked) and empties the buffer; returns
    /// the bytes the volume grew by (padding included). Only while nothing is pipelined.
    pub(crate) fn write(
        &mut self,
        active: &mut ActiveVolume,
        durable: bool,
    ) -> Result<u64, StoreError> {
        if self.close().is_none() {
            return Ok(0);
        }
        let before = active.len;
        let r = active.write_at(
            &self.mem[self.start..self.end()],
            self.base,
            durable,
            self.direct,
        );
        self.mem.clear();
        self.filled = None;
        self.start = 0;
        self.base = active.len;
        r.map(|()| active.len - before)
    }
}

/// Buffers for writers' segments, kept once written so that their pages stay mapped.
#[derive(Debug, Default)]
pub(crate) struct SegmentPool {
    free: parking_lot::Mutex<Vec<Vec<u8>>>,
}

/// Segment buffers a pool keeps (writers with a few requests in flight each).
const SEGMENTS_KEPT: usize = 16;
/// The largest segment buffer a pool keeps (a checkin's requests are about 8 MiB).
const SEGMENT_KEEP_MAX: usize = 32 << 20;

impl SegmentPool {
    /// A buffer for a segment of `bytes` record bytes, with room for the alignment in front
    /// and the padding behind.
    pub(crate) fn take(&self, bytes: usize) -> Vec<u8> {
        let least = bytes + 2 * ALIGN as usize;
        // Powers of two, so that buffers of similar requests fit each other.
        self.reuse(least)
            .unwrap_or_else(|| Vec::with_capacity(least.next_power_of_two()))
    }

    /// A kept buffer with room for `least` bytes.
    fn reuse(&self, least: usize) -> Option<Vec<u8>> {
        let mut free = self.free.lock();
        let i = free.iter().position(|m| m.capacity() >= least)?;
        Some(free.swap_remove(i))
    }

    /// A buffer for records written in place (`store::blobs`): initialized to its full
    /// length, at least `bytes` record bytes and the alignment's room in front and behind.
    /// Buffers come back from their segments as they were left, so only a new one (fresh
    /// pages, zero without being cleared) or a shortened one is filled with zeros.
    pub(crate) fn take_filled(&self, bytes: usize) -> Vec<u8> {
        let least = bytes + 2 * ALIGN as usize;
        match self.reuse(least) {
            Some(mut m) => {
                m.resize(m.capacity(), 0);
                m
            }
            None => vec![0u8; least.next_power_of_two()],
        }
    }

    /// Keeps a written segment's buffer for the next.
    pub(crate) fn give(&self, mem: Vec<u8>) {
        let mut free = self.free.lock();
        if mem.capacity() <= SEGMENT_KEEP_MAX && free.len() < SEGMENTS_KEPT {
            free.push(mem);
        }
    }
}

/// Group buffers: at most two, one being filled by the committer while the syncer writes the
/// other; the syncer sends each back once written.
#[derive(Debug)]
pub(crate) struct Pool {
    spare: Vec<GroupBuf>,
    back: mpsc::Receiver<GroupBuf>,
    made: usize,
}

impl Pool {
    /// A pool whose buffers come back through `back`.
    pub(crate) fn new(back: mpsc::Receiver<GroupBuf>) -> Self {
        Pool {
            spare: Vec::new(),
            back,
            made: 0,
        }
    }

    /// A buffer: a spare one, one the syncer has written, a new one (up to two), or else the
    /// next the syncer sends back.
    pub(crate) fn get(&mut self) -> GroupBuf {
        if let Some(b) = self.spare.pop() {
            return b;
        }
        if let Ok(b) = self.back.try_recv() {
            return b;
        }
        if self.made < 2 {
            self.made += 1;
            return GroupBuf::default();
        }
        // No syncer (it failed to start or has ended): a fresh buffer.
        self.back.recv().unwrap_or_default()
    }

    /// Returns a buffer that was not handed to the syncer.
    pub(crate) fn put(&mut self, b: GroupBuf) {
        self.spare.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_allocated_once_for_default_groups_and_replaced_not_grown() {
        let dir = tempfile::tempdir().unwrap();
        let vols = super::super::volume::Volumes::new(dir.path().to_path_buf(), Default::default());
        let active = ActiveVolume::create(&vols, 1).unwrap();
        let group_bytes = 32 << 20;
        let least = group_bytes + 2 * ALIGN as usize;
        let mut g = GroupBuf::default();
        g.begin(&active, 100, group_bytes);
        assert!(g.mem.capacity() >= least);
        let first = g.mem.as_ptr();
        // Groups up to the default size, small or direct, reuse the same allocation.
        for estimate in [8 << 20, 50, 32 << 20, DIRECT_MIN] {
            g.begin(&active, estimate, group_bytes);
            assert_eq!(g.mem.as_ptr(), first, "estimate {estimate}");
            assert!(g.mem.capacity() - g.start >= estimate + ALIGN as usize);
        }
        // A larger group gets a new buffer (at least double), its records laid out as before.
        g.begin(&active, 40 << 20, group_bytes);
        assert!(g.mem.capacity() >= 2 * least);
        assert!(g.mem.capacity() - g.start >= (40 << 20) + ALIGN as usize);
        g.records().extend_from_slice(&[1; 1000]);
        assert_eq!(g.len(), 1000);
        // Padded to the alignment when written directly (not on a filesystem without O_DIRECT).
        let end = g.base + if g.direct { ALIGN } else { 1000 };
        assert_eq!(g.close(), Some(end));
    }

    #[test]
    fn a_segment_lays_records_out_aligned_and_gives_payloads_back_unchanged() {
        use super::super::location::Codec;
        use super::super::record::parse_header;
        use mirage_format::{Algorithm, ItemKind};
        let pool = SegmentPool::default();
        let payloads: Vec<Vec<u8>> = [0usize, 1, 4095, 70_000]
            .iter()
            .map(|n| (0..*n).map(|i| (i * 7 + n) as u8).collect())
            .collect();
        let mut items: Vec<Prepared> = payloads
            .iter()
            .map(|b| {
                let d = mirage_format::Digest::of(Algorithm::Sha256, b).unwrap();
                Prepared::relocated(d, ItemKind::Blob, b.clone(), Codec::None)
            })
            .collect();
        let bytes: usize = payloads.iter().map(|b| HEADER_LEN + b.len()).sum();
        let mut seg = GroupBuf::segment(pool.take(bytes));
        for p in &mut items {
            seg.lay_out(p);
            assert!(p.payload.is_empty(), "moved into the segment");
        }
        assert!(seg.is_segment());
        assert_eq!(seg.len(), bytes);
        assert_eq!(
            seg.mem[seg.start..].as_ptr().align_offset(ALIGN as usize),
            0
        );
        // Records back to back, each header naming its payload's length.
        let mut at = seg.start;
        for b in &payloads {
            let h = parse_header(&seg.mem[at..at + HEADER_LEN]).unwrap();
            assert_eq!(h.stored_len as usize, b.len());
            assert_eq!(&seg.mem[at + HEADER_LEN..at + HEADER_LEN + b.len()], &b[..]);
            at += HEADER_LEN + b.len();
        }
        seg.payloads_back(&mut items);
        let back: Vec<Vec<u8>> = items.iter().map(|p| p.payload.clone()).collect();
        assert_eq!(back, payloads);
        // The buffer goes back to the pool and serves the next segment of that size.
        let first = seg.mem.as_ptr();
        pool.give(seg.into_mem());
        let again = pool.take(bytes);
        assert_eq!(again.as_ptr(), first);
    }

    #[test]
    fn the_pool_makes_two_buffers_then_waits_for_one_back() {
        let (tx, rx) = mpsc::channel();
        let mut pool = Pool::new(rx);
        let mut a = pool.get();
        a.mem.reserve(4096);
        let b = pool.get();
        assert_eq!(pool.made, 2);
        // A buffer not handed on comes back first.
        pool.put(b);
        assert_eq!(pool.get().mem.capacity(), 0);
        // The third buffer is the one the syncer sends back, pages and all.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send(a).unwrap();
            tx
        });
        assert!(pool.get().mem.capacity() >= 4096);
        assert_eq!(pool.made, 2);
        // With the syncer gone, a fresh one.
        drop(sender.join().unwrap());
        let _ = pool.get();
        assert_eq!(pool.made, 2);
    }
}
