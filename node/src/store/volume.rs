//! Volume files: the active one appended by the committer, all of them read positionally.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::RwLock;

use super::direct_read::{fully_cached, pread_append, read_direct, DIRECT_READ_MIN};
use super::read_bufs::ReadBufs;
use super::read_way::{ReadAhead, ReadWays, SpanReads, Way, READ_AHEAD};
use super::record::{parse_volume_header, volume_header, VOLUME_HEADER_LEN};
use super::{io_err, StoreError};

/// File name of volume `id`.
pub(crate) fn volume_name(id: u32) -> String {
    format!("{id:08}.vol")
}

/// Volume id of a file name, if it is a volume.
pub(crate) fn parse_volume_name(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".vol")?;
    if !(8..=10).contains(&stem.len()) || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Time spent writing and syncing volumes and the bytes written (`Codec::Auto` reads them).
#[derive(Debug, Default)]
pub(crate) struct IoMeter {
    busy_ns: AtomicU64,
    written: AtomicU64,
}

impl IoMeter {
    /// Counts the time since `t` as volume I/O that wrote `bytes`.
    pub(crate) fn record(&self, t: Instant, bytes: u64) {
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        self.written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Nanoseconds of volume I/O and bytes written so far.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.busy_ns.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }
}

/// The layout version in the header of the volume `file`, if the header is readable and valid.
pub(crate) fn layout_version(file: &File) -> Option<u32> {
    let mut head = [0u8; VOLUME_HEADER_LEN as usize];
    file.read_exact_at(&mut head, 0).ok()?;
    parse_volume_header(&head).ok().map(|(_, version)| version)
}

/// Read handles of every volume.
#[derive(Debug)]
pub(crate) struct Volumes {
    dir: PathBuf,
    files: RwLock<BTreeMap<u32, Arc<File>>>,
    /// Direct-I/O read handles (`None`: the filesystem refuses them).
    direct: RwLock<BTreeMap<u32, Option<Arc<File>>>>,
    /// Shared with the active volume and the syncer.
    pub(crate) io: Arc<IoMeter>,
    /// How long spans are read from the device (`store::read_way`).
    ways: ReadWays,
    /// Where the buffered way has read ahead lately.
    ahead: parking_lot::Mutex<ReadAhead>,
    /// Whether the way is measured or set.
    reads: SpanReads,
    /// Buffers of reads and decompressions, for reuse.
    pub(crate) bufs: Arc<ReadBufs>,
}

impl Volumes {
    pub(crate) fn new(dir: PathBuf, reads: SpanReads) -> Self {
        Volumes {
            reads,
            dir,
            files: RwLock::new(BTreeMap::new()),
            direct: RwLock::new(BTreeMap::new()),
            io: Arc::default(),
            ways: ReadWays::default(),
            ahead: Default::default(),
            bufs: Arc::default(),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self, id: u32) -> PathBuf {
        self.dir.join(volume_name(id))
    }

    /// Ids of the volume files on disk, ascending.
    pub(crate) fn list(&self) -> Result<Vec<u32>, StoreError> {
        let mut ids = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))? {
            let e = e.map_err(io_err("list", &self.dir))?;
            if let Some(id) = e.file_name().to_str().and_then(parse_volume_name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn handle(&self, id: u32) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self.files.read().get(&id) {
            return Ok(f.clone());
        }
        let path = self.path(id);
        let f = Arc::new(File::open(&path).map_err(io_err("open", &path))?);
        self.files.write().insert(id, f.clone());
        Ok(f)
    }

    fn direct_handle(&self, id: u32) -> Option<Arc<File>> {
        if let Some(f) = self.direct.read().get(&id) {
            return f.clone();
        }
        let f = open_direct(&self.path(id), false).map(Arc::new);
        self.direct.write().insert(id, f.clone());
        f
    }

    /// Forgets cached handles (after truncation or recreation).
    pub(crate) fn forget(&self, id: u32) {
        self.files.write().remove(&id);
        self.direct.write().remove(&id);
    }

    /// Reads exactly `len` bytes at `offset` of volume `id`: a long span the page cache does
    /// not hold all of is read past the cache or through it, whichever has been faster on
    /// this host (`store::read_way`, `store::direct_read`); says whether it went direct.
    pub(crate) fn read_span(
        &self,
        id: u32,
        offset: u64,
        len: u64,
    ) -> Result<(Bytes, bool), StoreError> {
        // (A length beyond what `read_at` accepts goes there to be refused.)
        if !(DIRECT_READ_MIN..=1 << 31).contains(&len) {
            return Ok((self.read_at(id, offset, len)?, false));
        }
        let cached = fully_cached(&*self.handle(id)?, offset, len);
        // A span in the page cache is read from there; it counts for the buffered way when
        // that way's own read-ahead put it there.
        let ahead = cached && self.ahead.lock().covers(id, offset, len);
        if cached && !ahead {
            return Ok((self.read_at(id, offset, len)?, false));
        }
        // From the device: the way that has been faster on this host, now and then the other
        // (unless the store is set to one way: then nothing is measured).
        let (ticket, way) = match self.reads.forced() {
            Some(way) => (None, way),
            None => {
                let t = self.ways.pick();
                (Some(t), t.way)
            }
        };
        let record = |got: u64| {
            if let Some(t) = ticket {
                self.ways.record(t, got);
            }
        };
        if way == Way::Direct && !cached {
            if let Some(b) = self
                .direct_handle(id)
                .and_then(|d| read_direct(&d, offset, len, &self.bufs))
            {
                record(len);
                return Ok((b, true));
            }
        }
        // A read of the buffered way, or a direct one that the filesystem refused or that
        // failed (it goes through the page cache like a buffered one, read-ahead included, so
        // that a store where direct reads never work reads as well as a buffered one).
        if way == Way::Buffered || !cached {
            // Only for reads that go on from recent ones: random reads (a node serving
            // scattered items) would read 8 MiB for each.
            let follows = self.ahead.lock().follows(id, offset, offset + len);
            if follows {
                self.read_ahead(id, offset + len);
            }
        }
        let b = self.read_at(id, offset, len);
        record(match (&b, way) {
            (Ok(_), Way::Buffered) => len,
            // A direct read that fell back or found the span cached, or a failed read, says
            // nothing of its way: an epoch of them closes with no figure, which the chooser
            // counts against the way (`read_way::Ways::next_way`).
            _ => 0,
        });
        Ok((b?, false))
    }

    /// Asks the kernel to read the [`READ_AHEAD`] bytes of volume `id` from `from` into the
    /// page cache in the background: the buffered way's reads come in volume order, and the
    /// kernel's own read-ahead, which follows one open file's sequential reads, loses track of
    /// the checkout's workers (and of reads that went direct in between).
    fn read_ahead(&self, id: u32, from: u64) {
        if let Ok(f) = self.handle(id) {
            let len = std::num::NonZeroU64::new(READ_AHEAD);
            if rustix::fs::fadvise(&*f, from, len, rustix::fs::Advice::WillNeed).is_ok() {
                self.ahead.lock().add(id, from, from + READ_AHEAD);
            }
        }
    }

    /// Reads exactly `len` bytes at `offset` of volume `id`.
    pub(crate) fn read_at(&self, id: u32, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let f = self.handle(id)?;
        if len > 1 << 31 {
            return Err(StoreError::Io {
                op: "read (length out of range)",
                path: self.path(id),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        let len = len as usize;
        let mut buf = self.bufs.take(len);
        while buf.len() < len {
            let (at, want) = (offset + buf.len() as u64, len - buf.len());
            match pread_append(&f, &mut buf, want, at) {
                Ok(0) => {
                    let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    return Err(io_err("read", &self.path(id))(eof));
                }
                Ok(_) => {}
                Err(e) => return Err(io_err("read", &self.path(id))(e)),
            }
        }
        Ok(self.bufs.share(buf))
    }

    /// Size of volume `id` on disk.
    pub(crate) fn len(&self, id: u32) -> Result<u64, StoreError> {
        let f = self.handle(id)?;
        Ok(f.metadata().map_err(io_err("stat", &self.path(id)))?.len())
    }
}

/// The volume being appended to. Owned by the committer thread.
#[derive(Debug)]
pub(crate) struct ActiveVolume {
    pub(crate) id: u32,
    /// Its write side, shared with the syncer, which writes the committer's groups and makes
    /// them durable.
    pub(crate) writer: Arc<VolumeWriter>,
    /// Bytes appended (the next record starts here): handed to the syncer, not always written
    /// yet; durable once the syncer says so (`store::sync`).
    pub(crate) len: u64,
}

/// A volume's write handles.
#[derive(Debug)]
pub(crate) struct VolumeWriter {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    /// A second handle opened with `O_DIRECT`, for large groups: only on a volume of layout
    /// version 2 or later (which may hold padding) and a filesystem that supports it.
    direct: Option<File>,
    /// Set when a direct write failed: the volume is then written through the page cache.
    direct_failed: AtomicBool,
    io: Arc<IoMeter>,
}

impl VolumeWriter {
    fn new(file: File, path: PathBuf, direct: Option<File>, io: Arc<IoMeter>) -> Self {
        VolumeWriter {
            file,
            path,
            direct,
            direct_failed: AtomicBool::new(false),
            io,
        }
    }

    /// Whether aligned groups can be written with direct I/O.
    pub(crate) fn direct_usable(&self) -> bool {
        self.direct.is_some() && !self.direct_failed.load(Ordering::Relaxed)
    }

    /// Writes `buf` at `offset`, not durably. With `direct`, `buf`, `offset` and the length
    /// must be aligned for `O_DIRECT`; if the direct write fails, it is done again through the
    /// page cache (and the volume stops using direct I/O).
    pub(crate) fn write(&self, buf: &[u8], offset: u64, direct: bool) -> Result<(), StoreError> {
        let t = Instant::now();
        let mut written = false;
        if let (true, Some(d)) = (direct && self.direct_usable(), &self.direct) {
            match d.write_all_at(buf, offset) {
                Ok(()) => written = true,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "direct write failed; writing through the page cache from now on");
                    self.direct_failed.store(true, Ordering::Relaxed);
                }
            }
        }
        let res = if written {
            Ok(())
        } else {
            self.file
                .write_all_at(buf, offset)
                .map_err(io_err("append to", &self.path))
        };
        self.io
            .record(t, if res.is_ok() { buf.len() as u64 } else { 0 });
        res
    }

    /// Makes everything written so far durable (fdatasync).
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self
            .file
            .sync_data()
            .map_err(io_err("fdatasync", &self.path));
        self.io.record(t, 0);
        r
    }
}

/// Opens `path` for direct writes or reads, if its filesystem allows it (tmpfs does not).
fn open_direct(path: &Path, write: bool) -> Option<File> {
    match OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, write, "no direct I/O; volume I/O stays buffered");
            None
        }
    }
}

impl ActiveVolume {
    /// Opens an existing volume for appending at `len`.
    pub(crate) fn open(vols: &Volumes, id: u32, len: u64) -> Result<Self, StoreError> {
        let path = vols.path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("open for append", &path))?;
        let padded = layout_version(&file).is_some_and(|v| v >= 2);
        let direct = if padded {
            open_direct(&path, true)
        } else {
            None
        };
        Ok(ActiveVolume {
            id,
            writer: Arc::new(VolumeWriter::new(file, path, direct, vols.io.clone())),
            len,
        })
    }

    /// Creates volume `id` with its header, durably (file and directory entry).
    pub(crate) fn create(vols: &Volumes, id: u32) -> Result<Self, StoreError> {
        let path = vols.path(id);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        file.write_all(&volume_header(id))
            .map_err(io_err("write header of", &path))?;
        file.sync_all().map_err(io_err("fsync", &path))?;
        sync_dir(vols.dir())?;
        vols.forget(id);
        let direct = open_direct(&path, true);
        Ok(ActiveVolume {
            id,
            writer: Arc::new(VolumeWriter::new(file, path, direct, vols.io.clone())),
            len: VOLUME_HEADER_LEN,
        })
    }

    /// Appends `buf` at the end and makes it durable. On failure the file is cut back to its
    /// previous length where possible, and the error is returned.
    pub(crate) fn append_durable(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        self.write_at(buf, self.len, true, false)
    }

    /// Writes `buf` at `offset` (at or past the end; the gap reads as zeros, which readers of
    /// a padded volume skip), durably if asked, and moves the end past it (see
    /// [`VolumeWriter::write`] for `direct`). Only while nothing is pipelined (the syncer has
    /// written everything handed to it). On failure the file is cut back to its previous
    /// length where possible.
    pub(crate) fn write_at(
        &mut self,
        buf: &[u8],
        offset: u64,
        durable: bool,
        direct: bool,
    ) -> Result<(), StoreError> {
        if buf.is_empty() {
            return Ok(());
        }
        debug_assert!(offset >= self.len);
        let res = self.writer.write(buf, offset, direct).and_then(|()| {
            if durable {
                self.writer.sync()
            } else {
                Ok(())
            }
        });
        match res {
            Ok(()) => {
                self.len = offset + buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.writer.file.set_len(self.len);
                Err(e)
            }
        }
    }
}

/// fsyncs a directory so that a created or renamed entry is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}
