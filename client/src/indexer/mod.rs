//! The image indexer: a disk image goes in as structured data. Partition table → partitions →
//! filesystems (ext2/3/4, vfat) walked file by file in user space; swap keeps its identity
//! only; everything else — unknown partitions, boot code, gaps, table sectors — is kept byte
//! for byte as raw ChunkLists with zero runs left out. Blocks no file reaches are not stored.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use mirage_format::chunking::{ChunkError, EncodedItem};
use mirage_format::{
    Digest, Disk, EntryKind, Extent, Filesystem, Image, ImageDisk, Item, Param, Params, Partition,
    PartitionContent, TableType, Tree, TreeEntry,
};
use mirage_node::{Store, StoreError};

use crate::batch::{BatchCounts, Batcher};

mod contents;
use crate::fs::ext4::Ext4;
use crate::fs::vfat::Vfat;
use crate::fs::{FsError, FsReader, Node};
use crate::image::regions::{store_region, Masked, RegionError};
use crate::image::{self, table, BlockSource, ImageError};

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
    let src: Arc<dyn BlockSource> = Arc::from(image::open(path)?);
    let mut stats = CheckinStats {
        format: src.format().into(),
        disk_bytes: src.len(),
        ..Default::default()
    };
    let t = table::parse(src.as_ref())?;
    let alg = store.algorithm();
    let mut b = Batcher::new(store);
    let mut partitions = Vec::new();
    // (start, end) of every partition whose bytes are represented by its content.
    let mut covered: Vec<(u64, u64)> = Vec::new();
    let entries: Vec<table::PartEntry> = if t.kind == TableType::None {
        vec![table::PartEntry {
            number: 1,
            start: 0,
            size: src.len(),
            type_id: Vec::new(),
            guid: Vec::new(),
            name: Vec::new(),
            attributes: 0,
            params: Params::new(),
            container: false,
        }]
    } else {
        t.partitions.clone()
    };
    // Partitions are indexed side by side (a few at a time), each with its own batcher,
    // flushed (durable) before the disk that references them is stored.
    let done = contents::parallel(&entries, opts.threads.clamp(1, 2), |p| {
        if p.container {
            return Ok((PartitionContent::Empty, CheckinStats::default()));
        }
        let mut pb = Batcher::new(store);
        let mut st = CheckinStats::default();
        let c = partition_content(store, &src, p, opts, &mut pb, &mut st)?;
        let t_flush = std::time::Instant::now();
        pb.flush()?;
        tracing::info!(part = p.number, flush = ?t_flush.elapsed(), "partition durable");
        st.add(pb.counts);
        Ok((c, st))
    })?;
    for (p, (content, st)) in entries.iter().zip(done) {
        stats.merge(&st);
        if !p.container
            && (!matches!(content, PartitionContent::Empty) || t.kind == TableType::None)
        {
            covered.push((p.start, p.start + p.size));
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

fn partition_content(
    store: &Store,
    src: &Arc<dyn BlockSource>,
    p: &table::PartEntry,
    opts: CheckinOptions,
    b: &mut Batcher<'_>,
    stats: &mut CheckinStats,
) -> Result<PartitionContent, CheckinError> {
    let fs_err = |source| CheckinError::Fs {
        part: p.number,
        source,
    };
    if crate::fs::ext4::probe(src.as_ref(), p.start, p.size) {
        let fs = Ext4::open(src.clone(), p.start, p.size).map_err(fs_err)?;
        return index_fs(store, src.as_ref(), &fs, p, opts, b, stats);
    }
    if crate::fs::vfat::probe(src.as_ref(), p.start, p.size) {
        let fs = Vfat::open(src.clone(), p.start, p.size).map_err(fs_err)?;
        return index_fs(store, src.as_ref(), &fs, p, opts, b, stats);
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
    for page in [4096u64, 8192, 16384, 65536] {
        if size < page * 2 {
            continue;
        }
        let mut sig = [0u8; 10];
        src.read_at(&mut sig, start + page - 10)?;
        if &sig == b"SWAPSPACE2" {
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
            return Ok(Some(PartitionContent::Swap {
                uuid: h[12..28].to_vec(),
                label: h[28..28 + label_end].to_vec(),
                params,
            }));
        }
    }
    Ok(None)
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

/// Walks a filesystem and stores it: contents in parallel, then trees bottom-up.
fn index_fs(
    store: &Store,
    src: &dyn BlockSource,
    fs: &dyn FsReader,
    p: &table::PartEntry,
    opts: CheckinOptions,
    b: &mut Batcher<'_>,
    stats: &mut CheckinStats,
) -> Result<PartitionContent, CheckinError> {
    let part = p.number;
    let fs_err = |source| CheckinError::Fs { part, source };
    let alg = store.algorithm();
    // Deterministic walk: directories in name order, depth first.
    struct Dir {
        id: u64,
        children: Vec<(Vec<u8>, Node)>,
    }
    let t_walk = std::time::Instant::now();
    let mut dirs: Vec<Dir> = Vec::new();
    let mut stack = vec![fs.root()];
    let mut seen_dirs = std::collections::HashSet::new();
    while let Some(id) = stack.pop() {
        if !seen_dirs.insert(id) {
            return Err(fs_err(FsError::Corrupt {
                fs: "filesystem",
                what: format!("directory {id} is reachable twice (loop)"),
            }));
        }
        let mut entries = fs.read_dir(id).map_err(fs_err)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut children = Vec::with_capacity(entries.len());
        for (name, child) in entries {
            let node = fs.node(child).map_err(fs_err)?;
            if node.kind == EntryKind::Dir {
                stack.push(child);
            }
            children.push((name, node));
        }
        dirs.push(Dir { id, children });
        if dirs.len() > 50_000_000 {
            return Err(fs_err(FsError::Corrupt {
                fs: "filesystem",
                what: "too many directories".into(),
            }));
        }
    }
    let walk_time = t_walk.elapsed();
    // Hard-link groups numbered in walk order; one content per inode.
    let mut groups: HashMap<u64, u64> = HashMap::new();
    let mut files: Vec<&Node> = Vec::new();
    let mut first: std::collections::HashSet<u64> = std::collections::HashSet::new();
    for d in &dirs {
        for (_, n) in &d.children {
            stats.objects += 1;
            if n.kind != EntryKind::Dir && n.nlink > 1 {
                let next = groups.len() as u64 + 1;
                groups.entry(n.id).or_insert(next);
            }
            if n.kind == EntryKind::File && first.insert(n.id) {
                files.push(n);
                stats.file_bytes += n.size;
            }
        }
    }
    // Where each file's bytes are (inline files have no extents), found first so that the
    // skeleton, which leaves file data out, can be stored alongside the file contents.
    let layouts = contents::layouts(fs, &files, opts.threads, part)?;
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
        layouts: &layouts,
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
    let (content, counts, hinted) = stored?;
    stats.add(counts);
    stats.files_hinted += hinted;
    let (skeleton, sk_counts) = skeleton?;
    stats.add(sk_counts);
    let content_time = t_walk.elapsed() - walk_time;
    // Trees, deepest first (the walk order reversed puts every child before its parent).
    let mut tree_of: HashMap<u64, Digest> = HashMap::new();
    for d in dirs.iter().rev() {
        let mut entries = Vec::with_capacity(d.children.len());
        for (name, n) in &d.children {
            let mut e = entry_of(n, name.clone());
            match n.kind {
                EntryKind::Dir => e.content = tree_of.get(&n.id).copied(),
                EntryKind::File => e.content = content.get(&n.id).copied().flatten(),
                _ => {}
            }
            if n.kind != EntryKind::Dir {
                e.link_group = groups.get(&n.id).copied();
            }
            entries.push(e);
        }
        let tree = Tree::new(entries).map_err(|e| {
            CheckinError::Content(format!("partition {part}, directory {}: {e}", d.id))
        })?;
        let item = encode(store, &Item::Tree(tree))?;
        tree_of.insert(d.id, item.digest());
        b.push(item)?;
    }
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
    let trees_time = t_walk.elapsed() - walk_time - content_time;
    tracing::info!(
        part,
        walk = ?walk_time,
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
