//! The image indexer: a disk image goes in as structured data. Partition table → partitions →
//! filesystems (ext2/3/4, vfat) walked file by file in user space; swap keeps its identity
//! only; everything else — unknown partitions, boot code, gaps, table sectors — is kept byte
//! for byte as raw ChunkLists with zero runs left out. Blocks no file reaches are not stored.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mirage_format::chunking::{ChunkError, EncodedItem};
use mirage_format::{
    Digest, Disk, EntryKind, Extent, Filesystem, Image, ImageDisk, Item, Param, Params, Partition,
    PartitionContent, TableType, TreeEntry,
};
use mirage_node::{Store, StoreError};

use crate::batch::{BatchCounts, Batcher};

mod contents;
mod trees;
mod walk;
use crate::fs::{FileExtent, FsError, Node};
use crate::image::regions::{store_region, Masked, RegionError};
use crate::image::{table, BlockSource, ImageError};
use walk::Walked;
pub use walk::{prepare, prepare_while, prepare_while_with, prepare_with, KeptRaw, Prepared};

/// Checkin errors. Nothing is registered when one occurs.
#[derive(Debug, thiserror::Error)]
pub enum CheckinError {
    /// The container or partition table is unusable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A filesystem is damaged or unsupported.
    #[error("partition {part}: {source}")]
    Fs {
        /// Partition number (0: the whole disk).
        part: u32,
        /// Cause.
        source: FsError,
    },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Content could not be hashed (SHA-1 collision) or a name breaks the format.
    #[error("{0}")]
    Content(String),
}

impl CheckinStats {
    fn merge(&mut self, o: &CheckinStats) {
        self.filesystems += o.filesystems;
        self.objects += o.objects;
        self.file_bytes += o.file_bytes;
        self.raw_bytes += o.raw_bytes;
        self.items_sent += o.items_sent;
        self.items_new += o.items_new;
        self.new_bytes += o.new_bytes;
        self.files_hinted += o.files_hinted;
    }

    fn add(&mut self, c: BatchCounts) {
        self.items_sent += c.sent;
        self.items_new += c.new;
        self.new_bytes += c.new_bytes;
    }
}

/// What a checkin did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckinStats {
    /// Container format.
    pub format: String,
    /// Virtual disk size.
    pub disk_bytes: u64,
    /// Filesystems indexed.
    pub filesystems: u64,
    /// Files, directories and other objects.
    pub objects: u64,
    /// Bytes of regular-file content.
    pub file_bytes: u64,
    /// Bytes kept as raw regions (before zero runs are left out).
    pub raw_bytes: u64,
    /// Items sent to the store.
    pub items_sent: u64,
    /// Items the store did not have.
    pub items_new: u64,
    /// Encoded bytes of new items.
    pub new_bytes: u64,
    /// Files whose content digest came from a checked checkin hint instead of hashing.
    pub files_hinted: u64,
    /// Filesystems kept as raw bytes (counted in `raw_bytes`) because they hold something the
    /// readers do not support, e.g. fscrypt-encrypted files.
    pub kept_raw: Vec<KeptRaw>,
    /// What the image's container holds that was not checked in (a qcow2 image's internal
    /// snapshots).
    pub left_out: Vec<String>,
}

/// How to check in.
#[derive(Clone, Copy, Debug)]
pub struct CheckinOptions {
    /// Worker threads for file contents.
    pub threads: usize,
    /// Use checkin hints for files an earlier checkin stored (see [`crate::hints`]).
    pub hints: bool,
}

/// Checks an image into the store; returns the Image digest (the serial number).
pub fn checkin(
    store: &Store,
    path: &Path,
    threads: usize,
) -> Result<(Digest, CheckinStats), CheckinError> {
    checkin_with(
        store,
        path,
        CheckinOptions {
            threads,
            hints: true,
        },
    )
}

/// Checks an image into the store with options.
pub fn checkin_with(
    store: &Store,
    path: &Path,
    opts: CheckinOptions,
) -> Result<(Digest, CheckinStats), CheckinError> {
    checkin_prepared(store, prepare(path, opts.threads)?, opts)
}

/// Stores an image [`prepare`]d (or [`prepare_while`] the store opened).
pub fn checkin_prepared(
    store: &Store,
    prepared: Prepared,
    opts: CheckinOptions,
) -> Result<(Digest, CheckinStats), CheckinError> {
    let Prepared {
        src,
        table: t,
        entries,
        walks,
        kept_raw,
    } = prepared;
    let mut stats = CheckinStats {
        format: src.format().into(),
        disk_bytes: src.len(),
        kept_raw,
        left_out: src.left_out(),
        ..Default::default()
    };
    let alg = store.algorithm();
    let mut b = Batcher::new(store);
    let mut partitions = Vec::new();
    // (start, end) of every partition whose bytes are represented by its content.
    let mut covered: Vec<(u64, u64)> = Vec::new();
    // How far each filesystem reaches into its partition.
    let spans: Vec<Option<u64>> = walks
        .iter()
        .map(|w| w.as_ref().map(|w| w.fs.span()))
        .collect();
    let parts: Vec<(&table::PartEntry, Option<&Walked>)> = entries
        .iter()
        .zip(walks.iter().map(Option::as_ref))
        .collect();
    // Partitions are indexed side by side (a few at a time), each with its own batcher,
    // flushed (durable) before the disk that references them is stored.
    let run = Run {
        store,
        opts,
        storing: AtomicUsize::new(
            parts
                .iter()
                .filter(|(p, w)| !p.container && w.is_some())
                .count(),
        ),
    };
    let done = contents::parallel(&parts, opts.threads.clamp(1, 2), |&(p, walked)| {
        if p.container {
            return Ok((PartitionContent::Empty, CheckinStats::default()));
        }
        let mut pb = Batcher::new(store);
        let mut st = CheckinStats::default();
        let c = partition_content(&run, &src, p, walked, &mut pb, &mut st)?;
        let t_flush = std::time::Instant::now();
        pb.flush()?;
        tracing::info!(part = p.number, flush = ?t_flush.elapsed(), "partition durable");
        st.add(pb.counts);
        Ok((c, st))
    })?;
    for ((p, (content, st)), span) in entries.iter().zip(done).zip(&spans) {
        stats.merge(&st);
        if !p.container
            && (!matches!(content, PartitionContent::Empty) || t.kind == TableType::None)
        {
            // A filesystem smaller than its partition: bytes past its end (an md RAID
            // superblock, what an older filesystem left) are kept raw with the gaps.
            let mut end = p.start + p.size;
            if let Some(span) = span.filter(|s| *s < p.size) {
                if holds_data(src.as_ref(), p.start + span, end)? {
                    end = p.start + span;
                }
            }
            covered.push((p.start, end));
        }
        if t.kind == TableType::None && matches!(content, PartitionContent::Raw { .. }) {
            // A bare disk with no filesystem we know: the whole disk is one raw region.
            covered.clear();
            break;
        }
        partitions.push(Partition {
            number: p.number,
            start: p.start,
            size: p.size,
            type_id: p.type_id.clone(),
            guid: p.guid.clone(),
            name: p.name.clone(),
            attributes: p.attributes,
            params: p.params.clone(),
            content,
        });
    }
    // Everything outside the covered partitions is kept raw: boot code, table sectors, gaps,
    // EBRs, the backup GPT.
    covered.sort_unstable();
    let mut regions = Vec::new();
    let mut pos = 0u64;
    for (s, e) in covered.iter().copied().chain([(src.len(), src.len())]) {
        if s > pos {
            let list =
                store_region(src.as_ref(), pos, s, alg, |i| b.push(i)).map_err(region_err)?;
            stats.raw_bytes += s - pos;
            let d = list.digest();
            b.push(list)?;
            regions.push(Extent {
                offset: pos,
                len: s - pos,
                digest: d,
            });
        }
        pos = pos.max(e);
    }
    let disk = Disk {
        size: src.len(),
        sector_size: t.sector_size as u32,
        table: t.kind,
        disk_id: t.disk_id.clone(),
        params: t.params.clone(),
        partitions: if t.kind == TableType::None && covered.is_empty() {
            Vec::new()
        } else {
            partitions
        },
        regions,
    };
    let disk_item = encode(store, &Item::Disk(disk))?;
    let disk_digest = disk_item.digest();
    b.push(disk_item)?;
    let image = encode(
        store,
        &Item::Image(Image {
            disks: vec![ImageDisk {
                name: b"disk0".to_vec(),
                disk: disk_digest,
            }],
            meta: Params::new(),
        }),
    )?;
    let root = image.digest();
    b.push(image)?;
    b.flush()?;
    stats.add(b.counts);
    Ok((root, stats))
}

/// Whether `[start, end)` of `src` holds a byte that is not zero.
fn holds_data(src: &dyn BlockSource, start: u64, end: u64) -> Result<bool, CheckinError> {
    let mut buf = vec![0u8; 1 << 20];
    for (s, e) in src.data_ranges(start, end)? {
        let mut at = s;
        while at < e {
            let n = (e - at).min(buf.len() as u64) as usize;
            src.read_at(&mut buf[..n], at)?;
            if buf[..n].iter().any(|b| *b != 0) {
                return Ok(true);
            }
            at += n as u64;
        }
    }
    Ok(false)
}

fn region_err(e: RegionError<StoreError>) -> CheckinError {
    match e {
        RegionError::Image(i) => CheckinError::Image(i),
        RegionError::Chunk(ChunkError::Sink(s)) => CheckinError::Store(s),
        RegionError::Chunk(other) => CheckinError::Content(other.to_string()),
    }
}

fn encode(store: &Store, item: &Item) -> Result<EncodedItem, CheckinError> {
    item.validate()
        .map_err(|e| CheckinError::Content(e.to_string()))?;
    EncodedItem::new(store.algorithm(), item).map_err(|e| CheckinError::Content(e.to_string()))
}

/// What every partition of one checkin shares.
struct Run<'a> {
    store: &'a Store,
    opts: CheckinOptions,
    /// Filesystems whose contents are still being stored (see `index_fs`).
    storing: AtomicUsize,
}

fn partition_content(
    run: &Run<'_>,
    src: &Arc<dyn BlockSource>,
    p: &table::PartEntry,
    walked: Option<&Walked>,
    b: &mut Batcher<'_>,
    stats: &mut CheckinStats,
) -> Result<PartitionContent, CheckinError> {
    let store = run.store;
    if let Some(w) = walked {
        let view = w.src.as_ref().unwrap_or(src);
        return index_fs(run, view.as_ref(), w, p, b, stats);
    }
    if let Some(swap) = swap_identity(src.as_ref(), p.start, p.size)? {
        return Ok(swap);
    }
    let list = store_region(
        src.as_ref(),
        p.start,
        p.start + p.size,
        store.algorithm(),
        |i| b.push(i),
    )
    .map_err(region_err)?;
    stats.raw_bytes += p.size;
    let digest = list.digest();
    b.push(list)?;
    Ok(PartitionContent::Raw { digest })
}

/// Linux swap (v1 header, `SWAPSPACE2` at the end of the first page): identity only.
fn swap_identity(
    src: &dyn BlockSource,
    start: u64,
    size: u64,
) -> Result<Option<PartitionContent>, ImageError> {
    let Some(page) = crate::fs::swap::page_size(src, start, size)? else {
        return Ok(None);
    };
    let mut h = [0u8; 1024];
    src.read_at(&mut h, start + 1024)?;
    let mut params = Params::new();
    params.insert("page_size".into(), Param::U64(page));
    params.insert(
        "version".into(),
        Param::U64(u64::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]]))),
    );
    params.insert(
        "last_page".into(),
        Param::U64(u64::from(u32::from_le_bytes([h[4], h[5], h[6], h[7]]))),
    );
    let label_end = h[28..44].iter().position(|x| *x == 0).unwrap_or(16);
    Ok(Some(PartitionContent::Swap {
        uuid: h[12..28].to_vec(),
        label: h[28..28 + label_end].to_vec(),
        params,
    }))
}

pub(crate) fn entry_of(node: &Node, name: Vec<u8>) -> TreeEntry {
    let mut e = TreeEntry::new(name, node.kind);
    e.mode = node.mode;
    e.uid = node.uid;
    e.gid = node.gid;
    e.size = node.size;
    e.mtime = node.mtime;
    e.atime = node.atime;
    e.ctime = node.ctime;
    e.crtime = node.crtime;
    e.flags = node.flags;
    e.xattrs = node.xattrs.clone();
    e.rdev = node.rdev;
    e.target = node.target.clone();
    e
}

/// Stores a walked filesystem: contents in parallel, then trees bottom-up.
fn index_fs(
    run: &Run<'_>,
    src: &dyn BlockSource,
    w: &Walked,
    p: &table::PartEntry,
    b: &mut Batcher<'_>,
    stats: &mut CheckinStats,
) -> Result<PartitionContent, CheckinError> {
    let (store, opts) = (run.store, run.opts);
    let part = p.number;
    let fs = w.fs.as_ref();
    let fs_err = |source| CheckinError::Fs { part, source };
    let alg = store.algorithm();
    let layouts = &w.layouts;
    let files = w.files();
    stats.objects += w.objects;
    stats.file_bytes += w.file_bytes;
    let t_contents = std::time::Instant::now();
    let file_data: Vec<(u64, u64)> = layouts
        .iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.physical.map(|p| (p, p + e.len)))
        .collect();
    let seed = if opts.hints {
        Some(store.hint_seed()?)
    } else {
        None
    };
    let job = contents::Job {
        store,
        src,
        fs,
        part,
        files: &files,
        layouts,
        seed,
    };
    let (stored, skeleton) = std::thread::scope(|s| {
        let sk = s.spawn(|| -> Result<(Option<Digest>, BatchCounts), CheckinError> {
            let Some(ranges) = fs.skeleton(&file_data).map_err(fs_err)? else {
                return Ok((None, BatchCounts::default()));
            };
            let mut sb = Batcher::new(store);
            let masked = Masked::new(src, ranges);
            let list = store_region(&masked, p.start, p.start + p.size, alg, |i| sb.push(i))
                .map_err(region_err)?;
            let d = list.digest();
            sb.push(list)?;
            sb.flush()?;
            Ok((Some(d), sb.counts))
        });
        let stored = job.run(opts.threads);
        let skeleton = sk
            .join()
            .unwrap_or_else(|_| Err(CheckinError::Content("skeleton worker panicked".into())));
        (stored, skeleton)
    });
    let contents::Stored {
        content,
        hinted,
        unsettled,
    } = stored?;
    stats.files_hinted += hinted;
    let (skeleton, sk_counts) = skeleton?;
    stats.add(sk_counts);
    let content_time = t_contents.elapsed();
    let holes: HashMap<u64, Vec<(u64, u64)>> = files
        .iter()
        .zip(layouts)
        .filter_map(|(n, l)| {
            let h = FileExtent::holes(l.as_deref()?, n.size);
            (!h.is_empty()).then_some((n.id, h))
        })
        .collect();
    // The trees are built while the workers' last items reach the disk; their hints are
    // stored once those are durable. Then, the last filesystem's contents being in, RocksDB
    // writes the index's memtables out beside the trees, which neither this store's close
    // nor the next open then has to.
    let (tree_of, settled) = std::thread::scope(|s| {
        let settling = s.spawn(|| {
            let counts = unsettled
                .into_iter()
                .map(contents::Unsettled::settle)
                .collect::<Result<Vec<_>, _>>();
            if run.storing.fetch_sub(1, Ordering::AcqRel) == 1 {
                store.flush_index_soon();
            }
            counts
        });
        let trees = trees::store_trees(store, w, part, (&content, &holes), opts.threads, b);
        let settled = settling
            .join()
            .unwrap_or_else(|_| Err(CheckinError::Content("indexer worker panicked".into())));
        (trees, settled)
    });
    for c in settled? {
        stats.add(c);
    }
    let tree_of = tree_of?;
    let root = *tree_of
        .get(&fs.root())
        .ok_or_else(|| CheckinError::Content("no root directory".into()))?;
    let root_node = fs.node(fs.root()).map_err(fs_err)?;
    if root_node.kind != EntryKind::Dir {
        return Err(fs_err(FsError::Corrupt {
            fs: "filesystem",
            what: "the root is not a directory".into(),
        }));
    }
    let mut root_attrs = entry_of(&root_node, Vec::new());
    root_attrs.size = 0;
    let info = fs.info();
    let trees_time = t_contents.elapsed() - content_time;
    tracing::info!(
        part,
        walk = ?w.took,
        contents = ?content_time,
        trees = ?trees_time,
        "filesystem indexed"
    );
    let fs_item = encode(
        store,
        &Item::Filesystem(Filesystem {
            fs_type: info.fs_type.clone(),
            uuid: info.uuid.clone(),
            label: info.label.clone(),
            params: info.params.clone(),
            root,
            root_attrs,
            skeleton,
            pinned: Vec::new(),
        }),
    )?;
    let digest = fs_item.digest();
    b.push(fs_item)?;
    stats.filesystems += 1;
    Ok(PartitionContent::Filesystem { digest })
}
