//! The storage engine of a node: append-only volumes, a RocksDB index, location tables, group
//! commit, crash recovery and verification. See `docs/ARCHITECTURE.md` for the invariants.
//!
//! Writes go through one committer thread that batches every pending request into one volume
//! append and one `fdatasync` (group commit); callers hash, validate and compress in their own
//! threads first. Nothing is acknowledged before its volume bytes are durable; the index is
//! rebuilt from the volume tails after a crash, so it never needs its own fsync per write.

mod auto;
mod blobs;
mod compact;
mod direct_read;
mod group;
mod location;
mod partition;
mod prepare;
mod read;
mod read_bufs;
mod read_way;
pub mod record;
mod recover;
mod sync;
mod tables;
mod verify;
mod volume;
mod write;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

pub use blobs::BlobSegment;
pub use compact::{CompactOptions, CompactReport};
pub use location::{Codec, Compression, Location, LocationTable};
use mirage_format::{Algorithm, DecodeError, Digest, DigestError};
pub use partition::PartitionSummary;
pub use prepare::{PendingPut, PutOutcome};
pub use read::{ReadOptions, ReadStats};
pub use read_way::SpanReads;
pub use verify::{Counts, Damage, Stats, VerifyReport};

use crate::index::{Cached, Index, IndexError, RocksIndex};
use crate::keys;
use volume::Volumes;

/// Layout version of a store directory.
pub const LAYOUT_VERSION: u32 = 1;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// File concerned.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// An item does not decode or breaks a rule of the format.
    #[error("item #{index} of the batch is invalid: {source}")]
    InvalidItem {
        /// Position in the batch.
        index: usize,
        /// Decoder message.
        source: DecodeError,
    },
    /// An item references items the store does not hold (closure invariant).
    #[error("item {digest:#} refused: {} referenced item(s) missing, first {}", missing.len(), first_text(missing))]
    MissingReferences {
        /// The refused item.
        digest: Digest,
        /// References not present in the store nor in the batch.
        missing: Vec<Digest>,
    },
    /// An item or reference uses another digest algorithm than the store.
    #[error("item #{index} uses {found} digests but this store uses {store}")]
    WrongAlgorithm {
        /// Position in the batch.
        index: usize,
        /// Algorithm found.
        found: Algorithm,
        /// Store algorithm.
        store: Algorithm,
    },
    /// Hashing refused an item (SHA-1 collision attack).
    #[error("item #{index}: {source}")]
    Digest {
        /// Position in the batch.
        index: usize,
        /// Cause.
        source: DigestError,
    },
    /// Stored bytes are damaged; the item is not served.
    #[error("integrity error in item {digest:#} (volume {volume}, offset {offset}): {reason}")]
    Integrity {
        /// The damaged item.
        digest: Digest,
        /// Volume id.
        volume: u32,
        /// Record offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write failure (e.g. fsync) stopped all writes.
    #[error("writes are disabled after a storage failure: {0}")]
    WritesDisabled(String),
    /// The directory is not a usable store.
    #[error("{path}: {why}")]
    BadStore {
        /// Store directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The committer is gone.
    #[error("the store is shutting down")]
    Closed,
}

fn first_text(v: &[Digest]) -> String {
    v.first()
        .map_or_else(|| "none".to_string(), Digest::to_text)
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// Options for opening a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Digest algorithm when creating; when opening, must match if given.
    pub algorithm: Option<Algorithm>,
    /// Create the store if the directory holds none.
    pub create: bool,
    /// A volume is sealed and a new one started beyond this size.
    pub max_volume_size: u64,
    /// How payloads are compressed as they are written.
    pub codec: Codec,
    /// Most bytes one group commit appends.
    pub max_group_bytes: usize,
    /// Index checkpoint after this many appended bytes.
    pub checkpoint_bytes: u64,
    /// The store holds one node's shard of a cluster's items: an item's references may live
    /// on other nodes, so the closure check (on writes and in recovery) is the cluster
    /// writer's, not this store's (`docs/CLUSTER.md`, "Data path").
    pub shard: bool,
    /// How long spans the page cache does not hold are read: measured per host (the
    /// default), or always one way.
    pub span_reads: SpanReads,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            algorithm: None,
            create: false,
            max_volume_size: 1 << 30,
            codec: Codec::Auto,
            max_group_bytes: 32 << 20,
            checkpoint_bytes: 256 << 20,
            shard: false,
            span_reads: SpanReads::Measured,
        }
    }
}

/// State shared by callers and the committer thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) alg: Algorithm,
    pub(crate) opts: StoreOptions,
    pub(crate) index: Cached<RocksIndex>,
    pub(crate) volumes: Volumes,
    pub(crate) failed: parking_lot::Mutex<Option<String>>,
    pub(crate) closing: AtomicBool,
    /// Serialises catalog commands (one log, applied in order).
    pub(crate) catalog_lock: parking_lot::Mutex<()>,
    /// The catalog's hot state keys (see `catalog::StateCache`).
    pub(crate) catalog_cache: crate::catalog::StateCache,
    /// Items and stored bytes the index holds: counted by one scan when first asked for
    /// ([`Store::counts`]), then kept up to date by the committer under this lock; `None`
    /// until then, and again after a write the committer cannot account for.
    pub(crate) counts: parking_lot::Mutex<Option<Counts>>,
    /// Record bytes submitted by writers since `epoch`, before compression.
    pub(crate) submitted_raw: AtomicU64,
    pub(crate) epoch: std::time::Instant,
    /// [`Codec::Auto`]'s state.
    pub(crate) auto: parking_lot::Mutex<auto::AutoCodec>,
    /// Buffers for large requests laid out by their writers (`group`).
    pub(crate) segments: group::SegmentPool,
    /// Buffers blobs are read into (`blobs`).
    pub(crate) blob_segments: group::SegmentPool,
}

impl Shared {
    /// The codec for the batch being prepared now.
    pub(crate) fn codec_now(&self) -> Codec {
        if self.opts.codec != Codec::Auto {
            return self.opts.codec;
        }
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let (busy, written) = self.volumes.io.totals();
        let totals = auto::Totals {
            busy,
            written,
            raw: self.submitted_raw.load(Ordering::Relaxed),
            cpu: process_cpu_ns(),
        };
        if self.auto.lock().compress(now, totals) {
            Codec::Lz4
        } else {
            Codec::None
        }
    }
}

/// CPU time the whole process has used, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// An open store. Cheap to clone; the last clone dropped shuts the committer down cleanly.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    tx: parking_lot::Mutex<Option<mpsc::Sender<write::Msg>>>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(tx) = self.tx.lock().take() {
            let (rtx, rrx) = mpsc::sync_channel(1);
            if tx.send(write::Msg::Shutdown(rtx)).is_ok() {
                let _ = rrx.recv();
            }
        }
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Opens the store in `dir` with the default options, creating it if there is none.
    pub fn create(dir: &Path) -> Result<Store, StoreError> {
        Store::open(
            dir,
            StoreOptions {
                create: true,
                ..Default::default()
            },
        )
    }

    /// Opens the store in `dir`, recovering from a crash if needed.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let index_dir = dir.join("index");
        let exists = index_dir.join("CURRENT").exists();
        if !exists && !opts.create {
            return Err(StoreError::BadStore {
                path: dir.to_path_buf(),
                why: "no Mirage store here (run `mirage init` first)".into(),
            });
        }
        std::fs::create_dir_all(dir.join("volumes")).map_err(io_err("create", dir))?;
        let index = RocksIndex::open(&index_dir)?;
        let alg = match index.meta(keys::META_ALGORITHM)? {
            Some(code) => {
                let stored = code
                    .first()
                    .and_then(|c| Algorithm::from_code(*c))
                    .ok_or_else(|| StoreError::BadStore {
                        path: dir.to_path_buf(),
                        why: "unknown digest algorithm in store metadata".into(),
                    })?;
                if let Some(want) = opts.algorithm {
                    if want != stored {
                        return Err(StoreError::BadStore {
                            path: dir.to_path_buf(),
                            why: format!("store uses {stored}, {want} was requested"),
                        });
                    }
                }
                let layout = index
                    .meta(keys::META_LAYOUT_VERSION)?
                    .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                    .map(u32::from_be_bytes);
                if layout != Some(LAYOUT_VERSION) {
                    return Err(StoreError::BadStore {
                        path: dir.to_path_buf(),
                        why: format!("unsupported store layout {layout:?}"),
                    });
                }
                stored
            }
            None => {
                let alg = opts.algorithm.unwrap_or_default();
                index.write(
                    crate::index::IndexBatch {
                        meta: vec![
                            (keys::META_ALGORITHM.to_vec(), vec![alg.code()]),
                            (
                                keys::META_LAYOUT_VERSION.to_vec(),
                                LAYOUT_VERSION.to_be_bytes().to_vec(),
                            ),
                        ],
                        ..Default::default()
                    },
                    true,
                )?;
                alg
            }
        };
        let volumes = Volumes::new(dir.join("volumes"), opts.span_reads);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            alg,
            opts,
            index: Cached::new(index),
            volumes,
            failed: parking_lot::Mutex::new(None),
            catalog_lock: parking_lot::Mutex::new(()),
            catalog_cache: crate::catalog::StateCache::new(crate::catalog::STATE_CACHE_KEYS),
            closing: AtomicBool::new(false),
            counts: parking_lot::Mutex::new(None),
            submitted_raw: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            auto: parking_lot::Mutex::new(auto::AutoCodec::default()),
            segments: group::SegmentPool::default(),
            blob_segments: group::SegmentPool::default(),
        });
        let active = recover::recover(&shared)?;
        let (tx, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mirage-committer".into())
            .spawn(move || write::committer(thread_shared, rx, active))
            .map_err(io_err("spawn committer for", dir))?;
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                tx: parking_lot::Mutex::new(Some(tx)),
                thread: parking_lot::Mutex::new(Some(thread)),
            }),
        })
    }

    /// The store's digest algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.inner.shared.alg
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn send(&self, m: write::Msg) -> Result<(), StoreError> {
        let guard = self.inner.tx.lock();
        let tx = guard.as_ref().ok_or(StoreError::Closed)?;
        tx.send(m).map_err(|_| StoreError::Closed)
    }

    /// False once a storage failure has disabled writes (see `StoreError::WritesDisabled`).
    pub fn writable(&self) -> bool {
        self.inner.shared.failed.lock().is_none()
    }

    /// Is the item present?
    pub fn has(&self, d: &Digest) -> Result<bool, StoreError> {
        Ok(self.inner.shared.index.get(d)?.is_some())
    }

    /// Which of these items are present, in order.
    pub fn has_many(&self, ds: &[Digest]) -> Result<Vec<bool>, StoreError> {
        Ok(self
            .inner
            .shared
            .index
            .get_many(ds)?
            .into_iter()
            .map(|l| l.is_some())
            .collect())
    }

    /// Checkin hints (see [`crate::keys::CF_HINTS`]), in the order of `keys`.
    pub fn hints(&self, keys: &[[u8; 32]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        Ok(self.inner.shared.index.hints(keys)?)
    }

    /// The store's random seed for checkin-hint checksums, created on first use.
    pub fn hint_seed(&self) -> Result<u64, StoreError> {
        let ix = &self.inner.shared.index;
        if let Some(v) = ix.meta(crate::keys::META_HINT_SEED)? {
            if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                return Ok(u64::from_le_bytes(b));
            }
        }
        let mut b = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .map_err(|source| StoreError::Io {
                op: "reading",
                path: "/dev/urandom".into(),
                source,
            })?;
        let batch = crate::index::IndexBatch {
            meta: vec![(crate::keys::META_HINT_SEED.to_vec(), b.to_vec())],
            ..Default::default()
        };
        ix.write(batch, true)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Records checkin hints. Not synced: a hint lost in a crash only costs a re-hash.
    pub fn put_hints(&self, hints: Vec<([u8; 32], Vec<u8>)>) -> Result<(), StoreError> {
        let batch = crate::index::IndexBatch {
            hints,
            ..Default::default()
        };
        Ok(self.inner.shared.index.write(batch, false)?)
    }

    /// Location of an item, if present.
    pub fn location(&self, d: &Digest) -> Result<Option<Location>, StoreError> {
        Ok(self.inner.shared.index.get(d)?)
    }

    /// The location table stored with `parent`.
    pub fn location_table(&self, parent: &Digest) -> Result<Option<LocationTable>, StoreError> {
        Ok(self.inner.shared.index.table(parent)?)
    }

    /// Starts flushing the index's memtables in the background if its log holds more than a
    /// megabyte: for a writer about to spend a while on one core (a checkin building its
    /// trees), so that neither this store's close nor the next open has to (an open replays
    /// the log at about 8 ms a megabyte; docs/PERFORMANCE.md, fifteenth session).
    pub fn flush_index_soon(&self) {
        self.inner.shared.index.inner().flush_in_background(1 << 20);
    }

    /// Asks the kernel to read the index's tables into the page cache in the background, when
    /// together they are at most `limit` bytes: for a reader about to look many items up in a
    /// store whose index is not cached (a checkout), so that its lookups find their blocks in
    /// memory instead of each waiting for a read from the disk. Returns whether it did.
    pub fn prefetch_index(&self, limit: u64) -> bool {
        self.inner.shared.index.inner().prefetch(limit)
    }

    /// Makes every indexed item's index entry durable and records volume checkpoints, so the
    /// next open scans nothing.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.send(write::Msg::Checkpoint(rtx))?;
        rrx.recv().map_err(|_| StoreError::Closed)?
    }
}
