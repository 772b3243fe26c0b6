//! The committer's group buffer: the records of one group, laid out so that a large group can
//! be written with direct I/O. On the project VM a buffered write costs a copy into freshly
//! allocated page-cache pages (0.6–0.7 s of system time for 320 MB), a direct one almost none
//! (docs/PERFORMANCE.md, "fifth session"). A direct group starts at the next [`ALIGN`]
//! boundary of the volume and is padded with zeros to the next one; readers of layout
//! version 2 skip that padding. Small groups (single manifests, catalog-driven puts) are
//! written through the page cache where they stand, so they waste no space.
//!
//! The buffer is kept from group to group: its pages stay mapped, so a long checkin does not
//! fault in (and zero) a fresh buffer for every group.

use super::record::{align_up, ALIGN};
use super::volume::ActiveVolume;
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
}

impl GroupBuf {
    /// Starts a group of about `estimate` bytes (records with headers) to append to `active`.
    pub(crate) fn begin(&mut self, active: &ActiveVolume, estimate: usize) {
        if self.mem.capacity() > KEEP_MAX {
            self.mem = Vec::new();
        }
        self.mem.clear();
        self.direct = estimate >= DIRECT_MIN && active.direct.is_some();
        if self.direct {
            // Room for the memory alignment in front and the padding behind.
            self.mem.reserve(estimate + 2 * ALIGN as usize);
            let skip = self.mem.as_ptr().align_offset(ALIGN as usize);
            self.mem.resize(skip, 0);
            self.start = skip;
            self.base = align_up(active.len);
        } else {
            self.mem.reserve(estimate);
            self.start = 0;
            self.base = active.len;
        }
    }

    /// Record bytes so far.
    pub(crate) fn len(&self) -> usize {
        self.mem.len() - self.start
    }

    /// Volume offset of the next record.
    pub(crate) fn next_offset(&self) -> u64 {
        self.base + self.len() as u64
    }

    /// The buffer records are appended to (see `record::append_record`).
    pub(crate) fn records(&mut self) -> &mut Vec<u8> {
        &mut self.mem
    }

    /// Writes the group at its place (durably if asked) and empties the buffer; returns the
    /// bytes the volume grew by (padding included).
    pub(crate) fn write(
        &mut self,
        active: &mut ActiveVolume,
        durable: bool,
    ) -> Result<u64, StoreError> {
        if self.len() == 0 {
            return Ok(0);
        }
        let before = active.len;
        let mut direct = self.direct;
        if direct {
            let padded = align_up(self.len() as u64) as usize;
            self.mem.resize(self.start + padded, 0);
            // The estimate bounds the group, so the buffer never moved; should it have, the
            // bytes go through the page cache at the same (aligned) place.
            direct = self.mem[self.start..].as_ptr().align_offset(ALIGN as usize) == 0;
        }
        let r = active.write_at(&self.mem[self.start..], self.base, durable, direct);
        self.mem.clear();
        self.start = 0;
        self.base = active.len;
        r.map(|()| active.len - before)
    }

    /// Drops the records gathered so far (the group failed before being written).
    pub(crate) fn discard(&mut self) {
        self.mem.clear();
        self.start = 0;
    }
}
