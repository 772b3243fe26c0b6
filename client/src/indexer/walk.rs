//! The half of a checkin that needs no store: the container and partition table read, each
//! filesystem found and walked, and where its files' bytes are. [`prepare_while`] runs it
//! while the store opens on another thread: an open replays what the previous command left in
//! the index's log, 25 ms after the corpus's first two checkins, as long as the walk of a
//! Debian root filesystem.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirage_format::{EntryKind, Params, TableType};

use super::{contents, CheckinError};
use crate::fs::ext4::journal::recovered;
use crate::fs::ext4::Ext4;
use crate::fs::vfat::Vfat;
use crate::fs::{FileExtent, FsError, FsReader, Node};
use crate::image::{self, table, BlockSource};

/// A directory and its entries (sorted by name) as the walk found them.
pub(super) struct Dir {
    pub(super) id: u64,
    pub(super) children: Vec<(Vec<u8>, Node)>,
}

/// A filesystem walked: its directories depth first in name order, the files whose contents
/// are to be stored (one per inode) and their layouts.
pub(super) struct Walked {
    pub(super) fs: Box<dyn FsReader>,
    /// The view of the image to read this filesystem through when it is not the image itself
    /// (a journal replayed in memory).
    pub(super) src: Option<Arc<dyn BlockSource>>,
    pub(super) dirs: Vec<Dir>,
    /// (directory, entry) of each file to store, in walk order.
    files: Vec<(usize, usize)>,
    /// Hard-link group of each inode with more than one link, numbered in walk order.
    pub(super) groups: HashMap<u64, u64>,
    /// Where each file's bytes are (`None`: inline data), aligned with [`Walked::files`].
    pub(super) layouts: Vec<Option<Vec<FileExtent>>>,
    pub(super) objects: u64,
    pub(super) file_bytes: u64,
    pub(super) took: Duration,
}

impl Walked {
    /// The files to store, in walk order.
    pub(super) fn files(&self) -> Vec<&Node> {
        self.files
            .iter()
            .map(|&(d, c)| &self.dirs[d].children[c].1)
            .collect()
    }
}

/// An image opened and walked, ready for [`super::checkin_prepared`].
pub struct Prepared {
    pub(super) src: Arc<dyn BlockSource>,
    pub(super) table: table::Table,
    /// The partitions (a disk without a table is one partition spanning it).
    pub(super) entries: Vec<table::PartEntry>,
    /// The walk of each partition that holds a filesystem, aligned with `entries`.
    pub(super) walks: Vec<Option<Walked>>,
    /// Filesystems kept as raw bytes because they hold something the readers do not support.
    pub(super) kept_raw: Vec<KeptRaw>,
}

/// A filesystem kept byte for byte as a raw region instead of file by file, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeptRaw {
    /// Partition number.
    pub partition: u32,
    /// What the reader does not support.
    pub reason: String,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("format", &self.src.format())
            .field("partitions", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// Opens the image at `path` and walks its filesystems (`threads` read file layouts).
pub fn prepare(path: &Path, threads: usize) -> Result<Prepared, CheckinError> {
    prepare_with(path, threads, false)
}

/// [`prepare`]; `follow_backing` as in [`image::open_with`].
pub fn prepare_with(
    path: &Path,
    threads: usize,
    follow_backing: bool,
) -> Result<Prepared, CheckinError> {
    let src: Arc<dyn BlockSource> = Arc::from(image::open_with(path, follow_backing)?);
    for what in src.left_out() {
        tracing::warn!("{what}");
    }
    let t = table::parse(src.as_ref())?;
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
    // Filesystems are walked side by side, a few at a time.
    let walks = contents::parallel(&entries, threads.clamp(1, 2), |p| {
        if p.container {
            return Ok(None);
        }
        match open_and_walk(&src, p, threads) {
            // A valid filesystem with something this reader cannot carry file by file loses
            // nothing kept raw; damage stays an error.
            Err(CheckinError::Fs {
                part,
                source: e @ FsError::Unsupported { .. },
            }) => {
                tracing::warn!(part, "kept as raw bytes, not file by file: {e}");
                Ok(Some(Err(KeptRaw {
                    partition: part,
                    reason: e.to_string(),
                })))
            }
            r => r.map(|w| w.map(Ok)),
        }
    })?;
    let mut kept_raw = Vec::new();
    let walks = walks
        .into_iter()
        .map(|w| match w {
            Some(Err(k)) => {
                kept_raw.push(k);
                None
            }
            Some(Ok(w)) => Some(w),
            None => None,
        })
        .collect();
    Ok(Prepared {
        src,
        table: t,
        entries,
        walks,
        kept_raw,
    })
}

/// Finds the filesystem of partition `p` (ext2/3/4, its journal replayed in memory when it
/// needs recovery, or vfat) and walks it; `None` when it holds neither.
fn open_and_walk(
    src: &Arc<dyn BlockSource>,
    p: &table::PartEntry,
    threads: usize,
) -> Result<Option<Walked>, CheckinError> {
    let fs_err = |source| CheckinError::Fs {
        part: p.number,
        source,
    };
    let mut view = None;
    let fs: Box<dyn FsReader> = if crate::fs::ext4::probe(src.as_ref(), p.start, p.size) {
        // A filesystem imaged while mounted: its journal replayed, as a mount would.
        view = recovered(src, p.start, p.size).map_err(fs_err)?;
        let from = view.clone().unwrap_or_else(|| src.clone());
        Box::new(Ext4::open(from, p.start, p.size).map_err(fs_err)?)
    } else if crate::fs::vfat::probe(src.as_ref(), p.start, p.size) {
        Box::new(Vfat::open(src.clone(), p.start, p.size).map_err(fs_err)?)
    } else {
        return Ok(None);
    };
    let mut w = walk(fs, p.number, threads)?;
    w.src = view;
    Ok(Some(w))
}

/// Runs `open` (the store's) on another thread while this one prepares the image at `path`.
pub fn prepare_while<S: Send, E: Send>(
    open: impl FnOnce() -> Result<S, E> + Send,
    path: &Path,
    threads: usize,
) -> (Result<S, E>, Result<Prepared, CheckinError>) {
    prepare_while_with(open, path, threads, false)
}

/// [`prepare_while`]; `follow_backing` as in [`image::open_with`].
pub fn prepare_while_with<S: Send, E: Send>(
    open: impl FnOnce() -> Result<S, E> + Send,
    path: &Path,
    threads: usize,
    follow_backing: bool,
) -> (Result<S, E>, Result<Prepared, CheckinError>) {
    std::thread::scope(|s| {
        let opening = s.spawn(open);
        let prepared = prepare_with(path, threads, follow_backing);
        let opened = opening
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (opened, prepared)
    })
}

/// Walks `fs`: directories in name order, depth first; then the files' layouts.
fn walk(fs: Box<dyn FsReader>, part: u32, threads: usize) -> Result<Walked, CheckinError> {
    let fs_err = |source| CheckinError::Fs { part, source };
    let started = Instant::now();
    let mut dirs: Vec<Dir> = Vec::new();
    let mut stack = vec![fs.root()];
    let mut seen_dirs = HashSet::new();
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
    // Hard-link groups numbered in walk order; one content per inode.
    let mut groups: HashMap<u64, u64> = HashMap::new();
    let mut files = Vec::new();
    let mut first = HashSet::new();
    let (mut objects, mut file_bytes) = (0, 0);
    for (di, d) in dirs.iter().enumerate() {
        for (ci, (_, n)) in d.children.iter().enumerate() {
            objects += 1;
            if n.kind != EntryKind::Dir && n.nlink > 1 {
                let next = groups.len() as u64 + 1;
                groups.entry(n.id).or_insert(next);
            }
            if n.kind == EntryKind::File && first.insert(n.id) {
                files.push((di, ci));
                file_bytes += n.size;
            }
        }
    }
    let mut walked = Walked {
        fs,
        src: None,
        dirs,
        files,
        groups,
        layouts: Vec::new(),
        objects,
        file_bytes,
        took: Duration::ZERO,
    };
    // Where each file's bytes are (inline files have no extents), found first so that the
    // skeleton, which leaves file data out, can be stored alongside the file contents.
    walked.layouts = contents::layouts(walked.fs.as_ref(), &walked.files(), threads, part)?;
    walked.took = started.elapsed();
    Ok(walked)
}
