//! Stores a directory tree: file contents in parallel (Blob or ChunkList), then one Tree per
//! directory, bottom-up, so the closure invariant holds at every step. Used by `mirage demo`
//! and `mirage bench`; disk images go through the image indexer instead.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use mirage_format::chunking::{store_content, ChunkError, Dense, EncodedItem};
use mirage_format::{Digest, EntryKind, Item, Timestamp, Tree, TreeEntry};
use mirage_node::{Store, StoreError};

use crate::batch::{BatchCounts, Batcher};

/// Ingest errors.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Reading the source failed.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file's content could not be chunked or hashed.
    #[error("{path}: {why}")]
    Content {
        /// Path concerned.
        path: PathBuf,
        /// Cause.
        why: String,
    },
    /// A name or entry breaks a format rule.
    #[error("{path}: {why}")]
    Format {
        /// Path concerned.
        path: PathBuf,
        /// Cause.
        why: String,
    },
}

impl IngestStats {
    fn add(&mut self, c: BatchCounts) {
        self.items_sent += c.sent;
        self.items_new += c.new;
        self.new_bytes += c.new_bytes;
    }
}

/// What an ingest did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct IngestStats {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, devices, fifos, sockets.
    pub other: u64,
    /// Sum of regular file sizes.
    pub file_bytes: u64,
    /// Items sent to the store.
    pub items_sent: u64,
    /// Items the store did not have.
    pub items_new: u64,
    /// Encoded bytes of the new items.
    pub new_bytes: u64,
}

struct Node {
    name: Vec<u8>,
    path: PathBuf,
    meta: Metadata,
    children: Vec<usize>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IngestError + '_ {
    move |source| IngestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn walk(root: &Path) -> Result<Vec<Node>, IngestError> {
    let meta = std::fs::symlink_metadata(root).map_err(io(root))?;
    if !meta.is_dir() {
        return Err(IngestError::Format {
            path: root.into(),
            why: "not a directory".into(),
        });
    }
    let mut nodes = vec![Node {
        name: Vec::new(),
        path: root.into(),
        meta,
        children: Vec::new(),
    }];
    let mut stack = vec![0usize];
    while let Some(i) = stack.pop() {
        let path = nodes[i].path.clone();
        let mut kids = Vec::new();
        for e in std::fs::read_dir(&path).map_err(io(&path))? {
            let e = e.map_err(io(&path))?;
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).map_err(io(&p))?;
            let name = std::os::unix::ffi::OsStrExt::as_bytes(e.file_name().as_os_str()).to_vec();
            let is_dir = meta.is_dir();
            nodes.push(Node {
                name,
                path: p,
                meta,
                children: Vec::new(),
            });
            let id = nodes.len() - 1;
            kids.push(id);
            if is_dir {
                stack.push(id);
            }
        }
        nodes[i].children = kids;
    }
    Ok(nodes)
}

fn ts(secs: i64, nanos: i64) -> Timestamp {
    Timestamp::new(secs, nanos.clamp(0, 999_999_999) as u32)
}

fn crtime(meta: &Metadata) -> Option<Timestamp> {
    let t = meta.created().ok()?;
    Some(match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => Timestamp::new(d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                Timestamp::new(-(d.as_secs() as i64), 0)
            } else {
                Timestamp::new(-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    })
}

/// The entry kind of a local file type.
pub fn entry_kind(ft: &std::fs::FileType) -> EntryKind {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() {
        EntryKind::File
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_char_device() {
        EntryKind::CharDev
    } else if ft.is_block_device() {
        EntryKind::BlockDev
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else {
        EntryKind::Socket
    }
}

fn entry_for(node: &Node) -> Result<TreeEntry, IngestError> {
    let m = &node.meta;
    let ft = m.file_type();
    let kind = entry_kind(&ft);
    let mut e = TreeEntry::new(node.name.clone(), kind);
    e.mode = m.mode() & 0o7777;
    e.uid = m.uid();
    e.gid = m.gid();
    e.size = if kind == EntryKind::Dir { 0 } else { m.size() };
    e.mtime = ts(m.mtime(), m.mtime_nsec());
    e.atime = ts(m.atime(), m.atime_nsec());
    e.ctime = ts(m.ctime(), m.ctime_nsec());
    e.crtime = crtime(m);
    if matches!(kind, EntryKind::CharDev | EntryKind::BlockDev) {
        e.rdev = Some(m.rdev());
    }
    if kind == EntryKind::Symlink {
        let t = std::fs::read_link(&node.path).map_err(io(&node.path))?;
        e.target = Some(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()).to_vec());
    }
    Ok(e)
}

/// The holes of `f`, a file of `size` bytes, as its filesystem reports them
/// (`SEEK_HOLE`/`SEEK_DATA`); none where the filesystem cannot tell. Leaves the offset at 0.
fn file_holes(f: &mut File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    use std::io::Seek;
    let mut holes = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let hole = match seek(&*f, SeekFrom::Hole(pos)) {
            Ok(h) => h.min(size),
            // ENXIO: nothing past `pos` (the file shrank); EINVAL: the filesystem cannot say.
            Err(rustix::io::Errno::NXIO | rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(e.into()),
        };
        if hole >= size {
            break;
        }
        let data = match seek(&*f, SeekFrom::Data(hole)) {
            Ok(d) => d.min(size),
            Err(rustix::io::Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        if data <= hole {
            break;
        }
        holes.push((hole, data - hole));
        pos = data;
    }
    f.seek(std::io::SeekFrom::Start(0))?;
    Ok(holes)
}

/// Stores the tree under `root` with `threads` workers; returns the root Tree digest.
pub fn ingest_dir(
    store: &Store,
    root: &Path,
    threads: usize,
) -> Result<(Digest, IngestStats), IngestError> {
    let alg = store.algorithm();
    let nodes = walk(root)?;
    // Hard links: one content per inode, one group id per multiply-linked inode.
    let mut inode_first: HashMap<(u64, u64), usize> = HashMap::new();
    let mut groups: HashMap<(u64, u64), u64> = HashMap::new();
    let mut files: Vec<usize> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.meta.is_dir() {
            continue;
        }
        let key = (n.meta.dev(), n.meta.ino());
        if n.meta.nlink() > 1 {
            let next = groups.len() as u64 + 1;
            groups.entry(key).or_insert(next);
        }
        if n.meta.is_file() {
            if let std::collections::hash_map::Entry::Vacant(v) = inode_first.entry(key) {
                v.insert(i);
                files.push(i);
            }
        }
    }
    // Each file's content and holes, at its first path.
    type Stored = (Option<Digest>, Vec<(u64, u64)>);
    let content: Vec<parking_lot::Mutex<Stored>> = nodes
        .iter()
        .map(|_| parking_lot::Mutex::new((None, Vec::new())))
        .collect();
    let next = AtomicUsize::new(0);
    let results: Vec<Result<BatchCounts, IngestError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut b = Batcher::new(store);
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = files.get(k) else { break };
                        let n = &nodes[i];
                        let mut f = File::open(&n.path).map_err(io(&n.path))?;
                        let holes = file_holes(&mut f, n.meta.size()).map_err(io(&n.path))?;
                        let d = store_content(
                            Dense(std::io::BufReader::with_capacity(1 << 20, f)),
                            n.meta.size(),
                            alg,
                            |p| b.put(p),
                        )
                        .map_err(|e| match e {
                            ChunkError::Sink(se) => IngestError::Store(se),
                            other => IngestError::Content {
                                path: n.path.clone(),
                                why: other.to_string(),
                            },
                        })?;
                        *content[i].lock() = (d, holes);
                    }
                    b.flush()?;
                    Ok(b.counts)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(IngestError::Content {
                        path: root.into(),
                        why: "worker panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut stats = IngestStats::default();
    for r in results {
        stats.add(r?);
    }
    // Trees, children before parents.
    let mut order = Vec::with_capacity(nodes.len());
    let mut stack = vec![(0usize, false)];
    while let Some((i, done)) = stack.pop() {
        if done {
            order.push(i);
            continue;
        }
        stack.push((i, true));
        for &c in &nodes[i].children {
            if nodes[c].meta.is_dir() {
                stack.push((c, false));
            }
        }
    }
    let mut tree_digest: HashMap<usize, Digest> = HashMap::new();
    let mut b = Batcher::new(store);
    for &i in &order {
        let mut entries = Vec::with_capacity(nodes[i].children.len());
        for &c in &nodes[i].children {
            let n = &nodes[c];
            let mut e = entry_for(n)?;
            let key = (n.meta.dev(), n.meta.ino());
            match e.kind {
                EntryKind::Dir => {
                    stats.dirs += 1;
                    e.content = tree_digest.get(&c).copied();
                }
                EntryKind::File => {
                    stats.files += 1;
                    stats.file_bytes += n.meta.size();
                    let first = inode_first.get(&key).copied().unwrap_or(c);
                    (e.content, e.holes) = content[first].lock().clone();
                }
                _ => stats.other += 1,
            }
            if e.kind != EntryKind::Dir {
                e.link_group = groups.get(&key).copied();
            }
            entries.push(e);
        }
        let tree = Tree::new(entries).map_err(|err| IngestError::Format {
            path: nodes[i].path.clone(),
            why: err.to_string(),
        })?;
        let item =
            EncodedItem::new(alg, &Item::Tree(tree)).map_err(|err| IngestError::Content {
                path: nodes[i].path.clone(),
                why: err.to_string(),
            })?;
        tree_digest.insert(i, item.digest());
        b.push(item)?;
    }
    b.flush()?;
    stats.add(b.counts);
    let root_digest = tree_digest
        .get(&0)
        .copied()
        .ok_or_else(|| IngestError::Format {
            path: root.into(),
            why: "no root tree".into(),
        })?;
    Ok((root_digest, stats))
}
