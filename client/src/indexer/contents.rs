//! File contents of one filesystem, stored by worker threads: where each file's bytes are
//! (its extents), then its content — from a checked checkin hint, or chunked and hashed.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

use mirage_format::chunking::{
    blob_content, blob_encoding, read_blob_rest, store_content, ChunkError, Dense, EncodedItem,
    SparseRead, CHUNK_MAX, INLINE_MAX,
};
use mirage_format::{Algorithm, Digest};
use mirage_node::{BlobSegment, Store, StoreError};

use super::CheckinError;
use crate::batch::{BatchCounts, Batcher};
use crate::fs::{FileExtent, FsError, FsReader, Node};
use crate::hints;
use crate::image::BlockSource;

/// Bytes of a worker's read buffer (at least [`hints::PREFIX`]).
const SCRATCH: usize = 256 << 10;

/// Reads a file's content from its extents; holes read as zeros.
pub(super) struct ExtentReader<'a> {
    src: &'a dyn BlockSource,
    extents: &'a [FileExtent],
    next: usize,
    pos: u64,
    size: u64,
}

impl Read for ExtentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        while self.next < self.extents.len()
            && self.extents[self.next].logical + self.extents[self.next].len <= self.pos
        {
            self.next += 1;
        }
        let want = (buf.len() as u64).min(self.size - self.pos);
        let n = match self.extents.get(self.next) {
            Some(e) if e.logical <= self.pos => {
                let n = want.min(e.logical + e.len - self.pos) as usize;
                match e.physical {
                    Some(p) => self
                        .src
                        .read_at(&mut buf[..n], p + (self.pos - e.logical))
                        .map_err(std::io::Error::other)?,
                    None => buf[..n].fill(0),
                }
                n
            }
            Some(e) => {
                let n = want.min(e.logical - self.pos) as usize;
                buf[..n].fill(0);
                n
            }
            None => {
                buf[..want as usize].fill(0);
                want as usize
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl SparseRead for ExtentReader<'_> {
    /// Holes and unwritten extents from the position on, up to the next written extent.
    fn zeros_ahead(&self) -> u64 {
        let written = self.extents[self.next..]
            .iter()
            .find(|e| e.physical.is_some() && e.logical + e.len > self.pos)
            .map_or(self.size, |e| e.logical);
        written.min(self.size).saturating_sub(self.pos)
    }

    fn skip_zeros(&mut self, n: u64) {
        self.pos += n;
        while self.next < self.extents.len()
            && self.extents[self.next].logical + self.extents[self.next].len <= self.pos
        {
            self.next += 1;
        }
    }
}

impl ExtentReader<'_> {
    /// Whether the file has a run of zeros it does not store (a hole or unwritten extents)
    /// long enough to be skipped unread ([`mirage_format::chunking::SparseRead`]).
    fn is_sparse(extents: &[FileExtent], size: u64) -> bool {
        let big = CHUNK_MAX as u64;
        let mut written_to = 0u64;
        for e in extents.iter().filter(|e| e.physical.is_some()) {
            if e.logical.saturating_sub(written_to) >= big {
                return true;
            }
            written_to = written_to.max(e.logical + e.len);
        }
        size.saturating_sub(written_to) >= big
    }
}

/// Inline bytes, then zeros up to the size.
struct Padded<'a> {
    data: &'a [u8],
    pos: u64,
    size: u64,
}

impl Read for Padded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.size.saturating_sub(self.pos)) as usize;
        let from = self.data.get(self.pos as usize..).unwrap_or_default();
        let copied = n.min(from.len());
        buf[..copied].copy_from_slice(&from[..copied]);
        buf[copied..n].fill(0);
        self.pos += n as u64;
        Ok(n)
    }
}

impl SparseRead for Padded<'_> {
    fn zeros_ahead(&self) -> u64 {
        if self.pos < self.data.len() as u64 {
            return 0;
        }
        self.size.saturating_sub(self.pos)
    }

    fn skip_zeros(&mut self, n: u64) {
        self.pos += n;
    }
}

fn fs_error(part: u32) -> impl Fn(FsError) -> CheckinError + Copy {
    move |source| CheckinError::Fs { part, source }
}

/// Runs `f` over `items` on `threads` threads; results in order.
pub(super) fn parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<R, CheckinError> + Sync,
) -> Result<Vec<R>, CheckinError> {
    let next = AtomicUsize::new(0);
    let slots: Vec<parking_lot::Mutex<Option<Result<R, CheckinError>>>> = items
        .iter()
        .map(|_| parking_lot::Mutex::new(None))
        .collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.clamp(1, items.len().max(1)))
            .map(|_| {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    *slots[i].lock() = Some(f(item));
                })
            })
            .collect();
        for w in workers {
            // A panicked worker leaves its slots empty: reported below.
            let _ = w.join();
        }
    });
    slots
        .into_iter()
        .map(|s| {
            s.into_inner()
                .unwrap_or_else(|| Err(CheckinError::Content("indexer worker panicked".into())))
        })
        .collect()
}

/// Each file's extents (`None` for inline data).
pub(super) fn layouts(
    fs: &dyn FsReader,
    files: &[&Node],
    threads: usize,
    part: u32,
) -> Result<Vec<Option<Vec<FileExtent>>>, CheckinError> {
    let err = fs_error(part);
    parallel(files, threads, |n| {
        if fs.inline_data(n.id).map_err(err)?.is_some() {
            return Ok(None);
        }
        fs.extents(n.id).map(Some).map_err(err)
    })
}

/// The contents of `files` to store.
pub(super) struct Job<'a> {
    pub(super) store: &'a Store,
    pub(super) src: &'a dyn BlockSource,
    pub(super) fs: &'a dyn FsReader,
    pub(super) part: u32,
    pub(super) files: &'a [&'a Node],
    pub(super) layouts: &'a [Option<Vec<FileExtent>>],
    pub(super) seed: Option<u64>,
}

/// Files a worker takes at a time (their hints are looked up together).
const BLOCK: usize = 32;

/// What a worker keeps between files.
struct Worker<'a> {
    wb: Batcher<'a>,
    new_hints: Vec<([u8; 32], Vec<u8>)>,
    /// New small files read into their records, not yet hashed ...
    seg: Option<BlobSegment>,
    /// ... and each one's inode, hint key and checksum, in order.
    seg_files: Vec<(u64, [u8; 32], u128)>,
    hinted: u64,
    scratch: Vec<u8>,
    /// The first [`hints::PREFIX`] bytes of each file of a block.
    heads: Vec<u8>,
}

/// What the workers did: each file's content digest (by inode), the files a hint recognised,
/// and each worker's items still on their way to the disk, with the hints naming them.
pub(super) struct Stored<'a> {
    pub(super) content: HashMap<u64, Option<Digest>>,
    pub(super) hinted: u64,
    pub(super) unsettled: Vec<Unsettled<'a>>,
}

/// A worker's items submitted to the store and not yet known to be durable, and the hints
/// that name their contents.
pub(super) struct Unsettled<'a> {
    wb: Batcher<'a>,
    hints: Vec<([u8; 32], Vec<u8>)>,
}

impl Unsettled<'_> {
    /// Waits until every item is durable, then stores the hints (a hint must never name
    /// content the store could still lose); returns the counts of what was stored.
    pub(super) fn settle(mut self) -> Result<BatchCounts, CheckinError> {
        self.wb.flush()?;
        if !self.hints.is_empty() {
            self.wb.store().put_hints(self.hints)?;
        }
        Ok(self.wb.counts)
    }
}

impl<'a> Job<'a> {
    /// Stores every file's content on `threads` threads. The items are submitted, not yet
    /// durable: the trees that name them can be built and submitted meanwhile (the store
    /// takes children submitted before their parents), and [`Unsettled::settle`] waits.
    pub(super) fn run(&self, threads: usize) -> Result<Stored<'a>, CheckinError> {
        let next = AtomicUsize::new(0);
        let content = parking_lot::Mutex::new(HashMap::new());
        let results: Vec<Result<(Unsettled<'a>, u64), CheckinError>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|_| s.spawn(|| self.worker(&next, &content)))
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(CheckinError::Content("indexer worker panicked".into()))
                    })
                })
                .collect()
        });
        let (mut unsettled, mut hinted) = (Vec::new(), 0);
        for r in results {
            let (u, h) = r?;
            unsettled.push(u);
            hinted += h;
        }
        Ok(Stored {
            content: content.into_inner(),
            hinted,
            unsettled,
        })
    }

    fn worker(
        &self,
        next: &AtomicUsize,
        content: &parking_lot::Mutex<HashMap<u64, Option<Digest>>>,
    ) -> Result<(Unsettled<'a>, u64), CheckinError> {
        let mut w = Worker {
            wb: Batcher::new(self.store),
            new_hints: Vec::new(),
            seg: None,
            seg_files: Vec::new(),
            hinted: 0,
            // One read buffer per worker, sized to stay in the core's cache, and room for
            // the first bytes of a block's files.
            scratch: vec![0u8; SCRATCH],
            heads: Vec::new(),
        };
        loop {
            let first = next.fetch_add(BLOCK, Ordering::Relaxed);
            let end = (first + BLOCK).min(self.files.len().min(self.layouts.len()));
            if first >= end {
                break;
            }
            let stored = match self.seed {
                Some(seed) => self.block(first..end, seed, &mut w)?,
                // No hints (`--rehash`): chunk and hash every file.
                None => (first..end)
                    .map(|k| self.store_plain(k, &mut w.wb).map(Some))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let mut c = content.lock();
            for (k, d) in (first..end).zip(stored) {
                // (Small files waiting to be hashed are entered when they are.)
                if let Some(d) = d {
                    c.insert(self.files[k].id, d);
                }
            }
            drop(c);
            if w.seg.as_ref().is_some_and(|s| s.bytes() >= SMALL_BYTES) {
                w.store_segment(content)?;
            }
        }
        w.store_segment(content)?;
        // On their way before any tree naming them.
        w.wb.submit()?;
        let unsettled = Unsettled {
            wb: w.wb,
            hints: w.new_hints,
        };
        Ok((unsettled, w.hinted))
    }

    fn content_err(&self, id: u64) -> impl Fn(ChunkError<StoreError>) -> CheckinError + '_ {
        move |e| match e {
            ChunkError::Sink(s) => CheckinError::Store(s),
            other => CheckinError::Content(format!("partition {}, inode {id}: {other}", self.part)),
        }
    }

    fn read_err(&self, id: u64) -> impl Fn(std::io::Error) -> CheckinError + '_ {
        move |e| CheckinError::Content(format!("partition {}, inode {id}: {e}", self.part))
    }

    fn reader<'e>(&self, extents: &'e [FileExtent], size: u64, pos: u64) -> ExtentReader<'e>
    where
        Self: 'e,
    {
        ExtentReader {
            src: self.src,
            extents,
            next: 0,
            pos,
            size,
        }
    }

    /// Whether new content of `size` bytes is read into a blob and hashed beside others
    /// ([`BlobSegment`]). Not with SHA-1, which hashes one message at a time and names the file
    /// its collision detection refuses.
    fn batched(&self, size: u64) -> bool {
        size > 0 && size <= INLINE_MAX && self.store.algorithm() == Algorithm::Sha256
    }

    /// Stores file `k` of the job without hints (inline data included).
    fn store_plain(&self, k: usize, wb: &mut Batcher<'_>) -> Result<Option<Digest>, CheckinError> {
        let (n, alg) = (self.files[k], self.store.algorithm());
        match &self.layouts[k] {
            None => self.store_inline(n, wb),
            Some(extents) => {
                store_content(self.reader(extents, n.size, 0), n.size, alg, |p| wb.put(p))
                    .map_err(self.content_err(n.id))
            }
        }
    }

    fn store_inline(&self, n: &Node, wb: &mut Batcher<'_>) -> Result<Option<Digest>, CheckinError> {
        let data = self
            .fs
            .inline_data(n.id)
            .map_err(fs_error(self.part))?
            .unwrap_or_default();
        // Inline bytes may end before the size: the rest reads as zeros (holes, not stored,
        // and not read either: the size is the inode's word).
        let padded = Padded {
            data: &data,
            pos: 0,
            size: n.size,
        };
        store_content(padded, n.size, self.store.algorithm(), |p| wb.put(p))
            .map_err(self.content_err(n.id))
    }

    /// Stores files `ks` of the job, using checkin hints: every file's first bytes are read
    /// first, so that the block's hints and their contents' presence are looked up in one
    /// batch each (one lookup of each per file cost derived-2's checkin 90 ms of its two
    /// workers' time; docs/PERFORMANCE.md, fifteenth session).
    ///
    /// Each file's content digest; `None` for a new small file left in [`Worker::seg`].
    fn block(
        &self,
        ks: std::ops::Range<usize>,
        seed: u64,
        w: &mut Worker<'_>,
    ) -> Result<Vec<Option<Option<Digest>>>, CheckinError> {
        let (store, alg) = (self.store, self.store.algorithm());
        let prefix = hints::PREFIX as usize;
        w.heads.resize(ks.len() * prefix, 0);
        let mut probes = Vec::with_capacity(ks.len());
        // Small files (one blob each) are probed straight into the encoding of their blob,
        // reserved in the worker's segment (or, when it is full, on its own): new content
        // then needs no copy of its first bytes (6.7 % of base.img's CPU).
        let mut blobs: Vec<Option<Blob>> = Vec::with_capacity(ks.len());
        for (slot, k) in ks.clone().enumerate() {
            let n = self.files[k];
            let mut blob = None;
            probes.push(match &self.layouts[k] {
                // A sparse file is stored for what it holds, unread where it holds nothing;
                // a whole-content checksum would read its holes.
                Some(extents) if ExtentReader::is_sparse(extents, n.size) => None,
                Some(extents) => {
                    let r = self.reader(extents, n.size, 0);
                    let probe = if self.batched(n.size) {
                        let seg = w
                            .seg
                            .get_or_insert_with(|| store.blob_segment(SEGMENT_BYTES));
                        let b = blob.insert(match seg.reserve(n.size) {
                            Some(s) => Blob::In(s),
                            None => Blob::Own(blob_encoding(n.size).map_err(self.read_err(n.id))?),
                        });
                        let enc = match b {
                            Blob::In(s) => seg.encoding_mut(*s),
                            Blob::Own(v) => v.as_mut_slice(),
                        };
                        let head = &mut blob_content(enc)[..n.size.min(hints::PREFIX) as usize];
                        hints::Probe::new(r, n.size, seed, head)
                    } else {
                        let head = &mut w.heads[slot * prefix..(slot + 1) * prefix];
                        hints::Probe::new(r, n.size, seed, head)
                    };
                    Some(probe.map_err(self.read_err(n.id))?)
                }
                None => None,
            });
            blobs.push(blob);
        }
        let keys: Vec<[u8; 32]> = probes.iter().flatten().map(|p| p.key).collect();
        let mut found = hints::lookup_many(store, &keys)?.into_iter();
        let mut out = vec![None; ks.len()];
        for (((slot, k), probe), blob) in ks.enumerate().zip(probes).zip(blobs) {
            let n = self.files[k];
            let (Some(probe), Some(extents)) = (probe, &self.layouts[k]) else {
                out[slot] = Some(self.store_plain(k, &mut w.wb)?);
                continue;
            };
            let hint = found.next().flatten();
            let (key, from) = (probe.key, probe.read());
            // Content bytes in the blob already.
            let mut have = from;
            // The first bytes, unless they are in the blob already.
            let head = match blob {
                Some(_) => &[][..],
                None => &w.heads[slot * prefix..][..from as usize],
            };
            let rest = || self.reader(extents, n.size, from);
            let mut r = match hint {
                Some((d, want)) => {
                    let got = probe
                        .finish(rest(), &mut w.scratch)
                        .map_err(self.read_err(n.id))?;
                    if got == want {
                        w.hinted += 1;
                        out[slot] = Some(Some(d));
                        if let (Some(Blob::In(s)), Some(seg)) = (&blob, w.seg.as_mut()) {
                            seg.release(*s);
                        }
                        continue;
                    }
                    // The same key, other content: read it all again.
                    have = 0;
                    head[..0].chain(hints::Checksummed::new(
                        self.reader(extents, n.size, 0),
                        seed,
                    ))
                }
                // New content: the first bytes the probe read are not read again.
                // Unbuffered: a small file lands in one call in its own buffer, a large one
                // in chunk-sized reads by the chunker.
                None => head.chain(probe.rest(rest())),
            };
            let short = |e| self.content_err(n.id)(ChunkError::Io(e));
            match blob {
                Some(Blob::In(s)) => {
                    // (A slot is reserved only in the worker's segment.)
                    let Some(seg) = w.seg.as_mut() else {
                        return Err(CheckinError::Content("a blob without its segment".into()));
                    };
                    read_blob_rest(seg.encoding_mut(s), have, &mut r).map_err(short)?;
                    seg.seal(s);
                    w.seg_files.push((n.id, key, r.get_ref().1.checksum()));
                    continue;
                }
                Some(Blob::Own(mut bytes)) => {
                    // (The segment was full: hashed on its own.)
                    read_blob_rest(&mut bytes, have, &mut r).map_err(short)?;
                    let item = EncodedItem::hashed(alg, vec![bytes])
                        .map_err(|e| self.content_err(n.id)(ChunkError::Digest(e)))?
                        .pop()
                        .ok_or_else(|| CheckinError::Content("a blob not hashed".into()))?;
                    let d = item.digest();
                    w.wb.push(item)?;
                    w.new_hints
                        .push((key, hints::encode(&d, r.get_ref().1.checksum())));
                    out[slot] = Some(Some(d));
                    continue;
                }
                None => {}
            }
            let d = store_content(Dense(&mut r), n.size, alg, |p| w.wb.put(p))
                .map_err(self.content_err(n.id))?;
            if let Some(d) = d {
                w.new_hints
                    .push((key, hints::encode(&d, r.get_ref().1.checksum())));
            }
            out[slot] = Some(d);
        }
        Ok(out)
    }
}

/// Bytes of new small files a worker reads into its segment before they are stored.
const SMALL_BYTES: usize = 8 << 20;
/// Room in a worker's segment: the files of the block that fills it to [`SMALL_BYTES`]
/// fit too, unless they are large ones.
const SEGMENT_BYTES: usize = 12 << 20;

/// Where a new small file's blob is read into.
enum Blob {
    /// Its record in the worker's segment ([`BlobSegment::reserve`]).
    In(usize),
    /// Its own encoding.
    Own(Vec<u8>),
}

impl Worker<'_> {
    /// Stores the blobs read into the worker's segment (hashed by the store, where they lie)
    /// and notes their digests and hints.
    fn store_segment(
        &mut self,
        content: &parking_lot::Mutex<HashMap<u64, Option<Digest>>>,
    ) -> Result<(), CheckinError> {
        let Some(seg) = self.seg.take() else {
            return Ok(());
        };
        if seg.len() != self.seg_files.len() {
            return Err(CheckinError::Content(format!(
                "{} blobs in the segment for {} files",
                seg.len(),
                self.seg_files.len()
            )));
        }
        let sizes = seg.sizes();
        let put = self.wb.store().put_blobs_submit(seg)?;
        let mut c = content.lock();
        for ((id, key, check), d) in self.seg_files.drain(..).zip(put.digests()) {
            self.new_hints.push((key, hints::encode(&d, check)));
            c.insert(id, Some(d));
        }
        drop(c);
        self.wb.submitted(put, sizes)?;
        Ok(())
    }
}
