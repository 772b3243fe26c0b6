//! File contents of one filesystem, stored by worker threads: where each file's bytes are
//! (its extents), then its content — from a checked checkin hint, or chunked and hashed.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

use mirage_format::chunking::{store_content, ChunkError};
use mirage_format::Digest;
use mirage_node::Store;

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
    extents: Vec<FileExtent>,
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

/// Content digest per inode, counts of what was stored, files recognised by a hint.
type Stored = (HashMap<u64, Option<Digest>>, BatchCounts, u64);

impl Job<'_> {
    /// Stores every file's content on `threads` threads.
    pub(super) fn run(&self, threads: usize) -> Result<Stored, CheckinError> {
        let next = AtomicUsize::new(0);
        let content = parking_lot::Mutex::new(HashMap::new());
        let results: Vec<Result<(BatchCounts, u64), CheckinError>> = std::thread::scope(|s| {
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
        let mut counts = BatchCounts::default();
        let mut hinted = 0;
        for r in results {
            let (c, h) = r?;
            counts.sent += c.sent;
            counts.new += c.new;
            counts.new_bytes += c.new_bytes;
            hinted += h;
        }
        Ok((content.into_inner(), counts, hinted))
    }

    fn worker(
        &self,
        next: &AtomicUsize,
        content: &parking_lot::Mutex<HashMap<u64, Option<Digest>>>,
    ) -> Result<(BatchCounts, u64), CheckinError> {
        let (store, part, seed) = (self.store, self.part, self.seed);
        let alg = store.algorithm();
        let mut wb = Batcher::new(store);
        let mut new_hints = Vec::new();
        let mut hinted = 0u64;
        // One read buffer per worker, sized to stay in the core's cache.
        let mut scratch = vec![0u8; SCRATCH];
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let (Some(n), Some(layout)) = (self.files.get(k), self.layouts.get(k)) else {
                break;
            };
            let (id, size) = (n.id, n.size);
            let content_err = |e| match e {
                ChunkError::Sink(s) => CheckinError::Store(s),
                other => CheckinError::Content(format!("partition {part}, inode {id}: {other}")),
            };
            let d = match layout {
                None => {
                    let data = self
                        .fs
                        .inline_data(id)
                        .map_err(fs_error(part))?
                        .unwrap_or_default();
                    store_content(&data[..], size, alg, |i| wb.push(i)).map_err(content_err)?
                }
                Some(extents) => {
                    let reader = || ExtentReader {
                        src: self.src,
                        extents: extents.clone(),
                        next: 0,
                        pos: 0,
                        size,
                    };
                    let read_err = |e: std::io::Error| {
                        CheckinError::Content(format!("partition {part}, inode {id}: {e}"))
                    };
                    match seed {
                        // No hints (`--rehash`): chunk and hash every file.
                        None => store_content(reader(), size, alg, |i| wb.push(i))
                            .map_err(content_err)?,
                        Some(seed) => {
                            let probe = hints::Probe::new(reader(), size, seed, &mut scratch)
                                .map_err(read_err)?;
                            let (k, from) = (probe.key, probe.read());
                            let rest = || {
                                let mut r = reader();
                                r.pos = from;
                                r
                            };
                            let mut r = match hints::lookup(store, &k)? {
                                Some((d, want)) => {
                                    let got =
                                        probe.finish(rest(), &mut scratch).map_err(read_err)?;
                                    if got == want {
                                        hinted += 1;
                                        content.lock().insert(id, Some(d));
                                        continue;
                                    }
                                    // The same key, other content: read it all again.
                                    (&scratch[..0]).chain(hints::Checksummed::new(reader(), seed))
                                }
                                // New content: the prefix the probe read is not read again.
                                // Unbuffered: a small file lands in one call in its own
                                // buffer, a large one in chunk-sized reads by the chunker.
                                None => (&scratch[..from as usize]).chain(probe.rest(rest())),
                            };
                            let d = store_content(&mut r, size, alg, |i| wb.push(i))
                                .map_err(content_err)?;
                            if let Some(d) = d {
                                new_hints.push((k, hints::encode(&d, r.get_ref().1.checksum())));
                            }
                            d
                        }
                    }
                }
            };
            content.lock().insert(id, d);
        }
        wb.flush()?;
        // Only now is every content these hints name durable in the store.
        if !new_hints.is_empty() {
            store.put_hints(new_hints)?;
        }
        Ok((wb.counts, hinted))
    }
}
