//! Raw regions (boot code, gaps, unknown partitions) as ChunkLists. The result depends only on
//! the bytes, never on how the container stores them: the region is cut into 4 KiB blocks from
//! its start; runs of at least [`ZERO_RUN_BLOCKS`] all-zero blocks are left out; every other
//! stretch ("segment") is chunked with FastCDC from its own start. A raw image and its qcow2
//! conversion therefore give the same ChunkList and the same digest.

use mirage_format::chunking::{chunk_stream, ChunkError, Dense, EncodedItem};
use mirage_format::{Algorithm, ChunkList, Extent};

use super::{BlockSource, ImageError};

/// Block size of zero detection.
pub const BLOCK: u64 = 4096;
/// Shortest zero run (in blocks) left out of a region.
pub const ZERO_RUN_BLOCKS: u64 = 16;
const READ: u64 = 4 << 20;

/// Errors building a region.
#[derive(Debug, thiserror::Error)]
pub enum RegionError<E: std::error::Error + 'static> {
    /// Reading the image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Chunking or the sink failed.
    #[error(transparent)]
    Chunk(ChunkError<E>),
}

/// Non-zero segments of `[start, end)`, relative to the image, by the rule above.
pub fn segments(
    src: &dyn BlockSource,
    start: u64,
    end: u64,
) -> Result<Vec<(u64, u64)>, ImageError> {
    let mut zero_runs: Vec<(u64, u64)> = Vec::new();
    let mut run_start: Option<u64> = None;
    let mut close = |run_start: &mut Option<u64>, at: u64| {
        if let Some(s) = run_start.take() {
            if at - s >= ZERO_RUN_BLOCKS * BLOCK {
                zero_runs.push((s, at));
            }
        }
    };
    let data = src.data_ranges(start, end)?;
    let mut pos = start;
    let mut buf = Vec::new();
    let mut di = 0;
    // Walk the region block by block (blocks aligned to its start); blocks wholly inside a
    // hole are zero without reading.
    while pos < end {
        while di < data.len() && data[di].1 <= pos {
            di += 1;
        }
        if di >= data.len() {
            if run_start.is_none() {
                run_start = Some(pos);
            }
            break;
        }
        let next_data = data[di].0.max(pos);
        let zero_until = start + (next_data - start) / BLOCK * BLOCK;
        if zero_until > pos {
            if run_start.is_none() {
                run_start = Some(pos);
            }
            pos = zero_until;
            continue;
        }
        let data_end = start + (data[di].1 - start).div_ceil(BLOCK) * BLOCK;
        let window_end = (pos + READ).min(data_end).min(end);
        buf.resize((window_end - pos) as usize, 0);
        src.read_at(&mut buf, pos)?;
        for (i, b) in buf.chunks(BLOCK as usize).enumerate() {
            let at = pos + i as u64 * BLOCK;
            if b.iter().all(|x| *x == 0) {
                if run_start.is_none() {
                    run_start = Some(at);
                }
            } else {
                close(&mut run_start, at);
            }
        }
        pos = window_end;
    }
    close(&mut run_start, end);
    let mut segs = Vec::new();
    let mut cur = start;
    for (s, e) in zero_runs {
        if s > cur {
            segs.push((cur, s));
        }
        cur = e;
    }
    if cur < end {
        segs.push((cur, end));
    }
    Ok(segs)
}

/// A view of a block source that keeps only the given ranges: everything else reads as zeros
/// and is never read from the source.
pub struct Masked<'a> {
    src: &'a dyn BlockSource,
    keep: Vec<(u64, u64)>,
}

impl std::fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masked({} ranges)", self.keep.len())
    }
}

impl<'a> Masked<'a> {
    /// `keep`: sorted, disjoint `[start, end)` byte ranges.
    pub fn new(src: &'a dyn BlockSource, keep: Vec<(u64, u64)>) -> Self {
        Masked { src, keep }
    }
}

impl BlockSource for Masked<'_> {
    fn len(&self) -> u64 {
        self.src.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let end = offset + buf.len() as u64;
        buf.fill(0);
        let i = self.keep.partition_point(|r| r.1 <= offset);
        for &(s, e) in self.keep[i..].iter().take_while(|r| r.0 < end) {
            let (s, e) = (s.max(offset), e.min(end));
            self.src
                .read_at(&mut buf[(s - offset) as usize..(e - offset) as usize], s)?;
        }
        Ok(())
    }

    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>, ImageError> {
        // One query of the source over the whole span, intersected with the kept ranges (a
        // skeleton has thousands of small ranges; one query each would cost a syscall pair).
        let i = self.keep.partition_point(|r| r.1 <= start);
        let kept: Vec<(u64, u64)> = self.keep[i..]
            .iter()
            .take_while(|r| r.0 < end)
            .map(|&(s, e)| (s.max(start), e.min(end)))
            .collect();
        let (Some(first), Some(last)) = (kept.first(), kept.last()) else {
            return Ok(Vec::new());
        };
        let data = self.src.data_ranges(first.0, last.1)?;
        let mut out = Vec::new();
        let mut di = 0;
        for (s, e) in kept {
            while di < data.len() && data[di].1 <= s {
                di += 1;
            }
            let mut j = di;
            while j < data.len() && data[j].0 < e {
                out.push((data[j].0.max(s), data[j].1.min(e)));
                j += 1;
            }
        }
        Ok(out)
    }

    fn format(&self) -> &'static str {
        self.src.format()
    }
}

/// A reader over `[pos, end)` of a block source.
struct SourceReader<'a> {
    src: &'a dyn BlockSource,
    pos: u64,
    end: u64,
}

impl std::io::Read for SourceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.end - self.pos) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.src
            .read_at(&mut buf[..n], self.pos)
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Stores `[start, end)` of `src` as a ChunkList (chunks go to `sink` first, then the list).
pub fn store_region<E: std::error::Error + 'static>(
    src: &dyn BlockSource,
    start: u64,
    end: u64,
    alg: Algorithm,
    mut sink: impl FnMut(EncodedItem) -> Result<(), E>,
) -> Result<EncodedItem, RegionError<E>> {
    let mut chunks: Vec<Extent> = Vec::new();
    for (s, e) in segments(src, start, end)? {
        // Unbuffered: the chunker reads ahead in windows of several chunks.
        let reader = SourceReader {
            src,
            pos: s,
            end: e,
        };
        let (mut ext, _) = chunk_stream(Dense(reader), s - start, alg, |c| sink(c.into_item()))
            .map_err(RegionError::Chunk)?;
        chunks.append(&mut ext);
    }
    let list = EncodedItem::new(
        alg,
        &mirage_format::Item::ChunkList(ChunkList {
            size: end - start,
            chunks,
        }),
    )
    .map_err(|e| RegionError::Chunk(ChunkError::Digest(e)))?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 MiB of bytes `(i % 251) + 1` where the source says there is data, zeros elsewhere.
    struct Sparse {
        data: Vec<(u64, u64)>,
    }

    impl BlockSource for Sparse {
        fn len(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
            for (i, b) in buf.iter_mut().enumerate() {
                let at = offset + i as u64;
                let inside = self.data.iter().any(|&(s, e)| s <= at && at < e);
                *b = if inside { (at % 251) as u8 + 1 } else { 0 };
            }
            Ok(())
        }
        fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>, ImageError> {
            Ok(self
                .data
                .iter()
                .filter(|r| r.0 < end && r.1 > start)
                .map(|&(s, e)| (s.max(start), e.min(end)))
                .collect())
        }
        fn format(&self) -> &'static str {
            "test"
        }
    }

    #[test]
    fn masked_sources_keep_only_their_ranges() {
        let src = Sparse {
            data: vec![(0, 100), (200, 5000), (9000, 9100)],
        };
        let m = Masked::new(&src, vec![(50, 300), (4000, 4100), (6000, 9050)]);
        assert_eq!(
            m.data_ranges(0, 1 << 20).unwrap(),
            vec![(50, 100), (200, 300), (4000, 4100), (9000, 9050)]
        );
        assert_eq!(m.data_ranges(60, 250).unwrap(), vec![(60, 100), (200, 250)]);
        assert_eq!(m.data_ranges(5000, 6000).unwrap(), vec![]);
        let mut buf = vec![0xAAu8; 10_000];
        m.read_at(&mut buf, 0).unwrap();
        for (i, b) in buf.iter().enumerate() {
            let i = i as u64;
            let kept = [(50, 300), (4000, 4100), (6000, 9050)]
                .iter()
                .any(|&(s, e)| s <= i && i < e);
            let mut one = [0u8];
            src.read_at(&mut one, i).unwrap();
            assert_eq!(*b, if kept { one[0] } else { 0 }, "byte {i}");
        }
    }
}
