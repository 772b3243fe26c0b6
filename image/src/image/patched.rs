//! A disk with some of its blocks replaced in memory: what an in-memory journal recovery
//! (`fs::ext4::journal`) leaves, read like the image itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{merge_ranges, BlockSource, ImageError};

/// `inner` with `blocks` (image offset -> bytes, not overlapping) laid over it.
pub struct Patched {
    inner: Arc<dyn BlockSource>,
    blocks: BTreeMap<u64, Vec<u8>>,
    /// The longest replaced block (how far back a block overlapping an offset can start).
    longest: u64,
}

impl std::fmt::Debug for Patched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Patched({} blocks over {})",
            self.blocks.len(),
            self.inner.format()
        )
    }
}

impl Patched {
    /// `inner` read with `blocks` in place of its own bytes there.
    pub fn new(inner: Arc<dyn BlockSource>, blocks: BTreeMap<u64, Vec<u8>>) -> Self {
        let longest = blocks.values().map(|b| b.len() as u64).max().unwrap_or(0);
        Patched {
            inner,
            blocks,
            longest,
        }
    }

    /// Lays `more` (whole blocks at the same offsets as, or apart from, those already laid)
    /// over the view too, replacing what was there.
    pub fn extend(&mut self, more: BTreeMap<u64, Vec<u8>>) {
        for (at, b) in more {
            self.longest = self.longest.max(b.len() as u64);
            self.blocks.insert(at, b);
        }
    }

    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (&u64, &Vec<u8>)> {
        self.blocks
            .range(start.saturating_sub(self.longest)..end)
            .filter(move |(at, b)| **at + b.len() as u64 > start)
    }
}

impl BlockSource for Patched {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        self.inner.read_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        for (&at, b) in self.overlapping(offset, end) {
            let (s, e) = (at.max(offset), (at + b.len() as u64).min(end));
            buf[(s - offset) as usize..(e - offset) as usize]
                .copy_from_slice(&b[(s - at) as usize..(e - at) as usize]);
        }
        Ok(())
    }

    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>, ImageError> {
        let mut out = self.inner.data_ranges(start, end)?;
        out.extend(
            self.overlapping(start, end)
                .map(|(&at, b)| (at.max(start), (at + b.len() as u64).min(end))),
        );
        out.sort_unstable();
        merge_ranges(&mut out);
        Ok(out)
    }

    fn format(&self) -> &'static str {
        self.inner.format()
    }
}
