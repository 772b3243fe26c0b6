//! Checkout by layout. A filesystem checked in with its skeleton (its metadata blocks, see
//! `mirage_image::fs::ext4::skeleton`) comes back with those blocks byte for byte and every
//! file's content in the blocks it had: no staging, no `mke2fs`, every byte written once.
//!
//! The skeleton is a hint, the tree is the truth: the skeleton is written first, then read back
//! with the same user-space reader the indexer uses and walked in step with the stored trees.
//! Every name, type and metadata field must match; any difference is a [`Mismatch`] and the
//! caller rebuilds the filesystem from the tree instead.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use mirage_format::chunking::INLINE_MAX;
use mirage_format::item::blob_data;
use mirage_format::{Digest, EntryKind, Filesystem, Item, Tree};
use mirage_image::fs::ext4::Ext4;
use mirage_image::fs::vfat::Vfat;
use mirage_image::fs::{FileExtent, FsReader};
use mirage_image::image::raw::RawFile;
use mirage_image::image::BlockSource;
use mirage_node::{ReadOptions, Store};

use super::output::{with_output, Output};
use crate::browse::item;
use crate::indexer::entry_of;
use crate::restore::{for_each_chunk, get_each, RestoreError};

/// The skeleton written does not describe the stored tree.
#[derive(Debug, thiserror::Error)]
#[error("the filesystem layout does not match its tree: {0}")]
pub struct Mismatch(pub String);

/// What a layout checkout wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct LayoutStats {
    /// Items read.
    pub items: u64,
    /// Bytes written (skeleton and contents).
    pub bytes: u64,
}

/// How a layout checkout runs.
#[derive(Clone, Copy, Debug)]
pub struct LayoutOptions {
    /// Cores to use (twice as many content workers).
    pub threads: usize,
    /// Re-hash every content read (records are always CRC-checked).
    pub verify: bool,
    /// The output is scratch that is converted and deleted (the raw form of a qcow2
    /// checkout): nothing flushes it to the disk early.
    pub scratch: bool,
}

/// Writes the filesystem `fs` (which has a skeleton) into `image` at `offset`. File contents
/// are read with the record CRC and the record's digest checked; `verify` also re-hashes them.
pub fn recreate(
    store: &Store,
    fs: &Filesystem,
    image: &Path,
    (offset, len): (u64, u64),
    opts: LayoutOptions,
) -> Result<LayoutStats> {
    let LayoutOptions {
        threads,
        verify,
        scratch,
    } = opts;
    let skeleton = fs.skeleton.context("the filesystem has no skeleton")?;
    let Item::ChunkList(list) = item(store, &skeleton)? else {
        bail!("skeleton {} is not a chunk list", skeleton.to_text())
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let mut stats = LayoutStats::default();
    let t0 = std::time::Instant::now();
    // The trees are read while the skeleton is written: neither needs the other, and on a cold
    // disk both wait for reads.
    let (written, trees) = std::thread::scope(|s| {
        let trees = s.spawn(|| trees_ahead(store, fs.root, TREES_AHEAD));
        let written =
            crate::restore::write_chunks(store, &f, image, offset, (&skeleton, &list), verify);
        let trees = trees
            .join()
            .unwrap_or_else(|_| bail!("reading the trees panicked"));
        (written, trees)
    });
    let (n, b) = written?;
    let trees = trees?;
    stats.items += 1 + n + trees.len() as u64;
    stats.bytes += b;
    let src: Arc<dyn BlockSource> = Arc::new(RawFile::open(f.try_clone()?, image)?);
    let reader: Box<dyn FsReader> = match fs.fs_type.as_str() {
        "vfat" => Box::new(Vfat::open(src, offset, len).map_err(|e| Mismatch(e.to_string()))?),
        _ => Box::new(Ext4::open(src, offset, len).map_err(|e| Mismatch(e.to_string()))?),
    };
    let reader = reader.as_ref();
    if reader.info().uuid != fs.uuid || reader.info().fs_type != fs.fs_type {
        return Err(Mismatch("the skeleton holds another filesystem".into()).into());
    }
    let t1 = std::time::Instant::now();
    let jobs = walk(store, &trees, fs, reader, &mut stats)?;
    let t2 = std::time::Instant::now();
    let units = units(&jobs);
    let next = AtomicUsize::new(0);
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let results: Vec<Result<LayoutStats>> = std::thread::scope(|s| {
        // Write back while the writer fills the page cache, so that the final fsync finds
        // little left to do and the disk works alongside the CPU. Dropping `stop` ends it.
        let file = &f;
        if !scratch {
            s.spawn(move || early_writeback(file, stopped));
        }
        let r = with_output(&f, image, |out| {
            // Twice as many workers as threads: a worker waiting for its read from a cold
            // store leaves its core to one that is copying. Four per thread measured 5 %
            // faster cold and 15 % slower warm (PERFORMANCE.md, checkout).
            Ok(std::thread::scope(|s| {
                let workers: Vec<_> = (0..2 * threads.max(1))
                    .map(|_| {
                        s.spawn(|| {
                            let mut st = LayoutStats::default();
                            while let Some(unit) = units.get(next.fetch_add(1, Ordering::Relaxed)) {
                                fill(store, out, reader, unit, verify, &mut st)?;
                            }
                            Ok(st)
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| {
                        w.join()
                            .unwrap_or_else(|_| bail!("a checkout worker panicked"))
                    })
                    .collect()
            }))
        });
        drop(stop);
        r
    })?;
    for r in results {
        let st = r?;
        stats.items += st.items;
        stats.bytes += st.bytes;
    }
    tracing::info!(
        skeleton = ?(t1 - t0),
        walk = ?(t2 - t1),
        contents = ?t2.elapsed(),
        files = jobs.len(),
        "filesystem laid out"
    );
    Ok(stats)
}

/// Bytes this process has had read from storage devices (`read_bytes` of `/proc/self/io`).
fn device_read_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads from the device below this many bytes per round do not hold a flush back.
const READS_IDLE: u64 = 1 << 20;

/// Whether the device was read between two samples of [`device_read_bytes`] (unknown: no).
fn reading(before: Option<u64>, now: Option<u64>) -> bool {
    match (before, now) {
        (Some(a), Some(b)) => b.saturating_sub(a) >= READS_IDLE,
        _ => false,
    }
}

/// The early writeback, every 40 ms until `stopped` says stop. While the store is being read
/// from the device, it only starts writing what is dirty (`sync_file_range`, no flush): a flush
/// holds up every read queued behind it. Otherwise it flushes (fdatasync), so that the disk
/// writes alongside the CPU and the final fsync finds little left (PERFORMANCE.md, checkout).
fn early_writeback(f: &File, stopped: std::sync::mpsc::Receiver<()>) {
    let mut last = device_read_bytes();
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stopped.recv_timeout(std::time::Duration::from_millis(40))
    {
        let now = device_read_bytes();
        let r = if reading(last, now) {
            start_writeback(f)
        } else {
            f.sync_data()
        };
        last = now;
        if let Err(e) = r {
            tracing::debug!("early writeback: {e}");
            return;
        }
    }
}

/// Starts writing the dirty pages of `f` without waiting for them or flushing the disk.
fn start_writeback(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    #[allow(unsafe_code)]
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// File bytes in one batch of small files (at most `INLINE_MAX` each: single blobs).
const BATCH_BYTES: u64 = 8 << 20;
/// Most files in one batch.
const BATCH_FILES: usize = 512;

/// Runs of small files, read together (one sorted, coalesced read of the store per batch), and
/// large files (chunk lists), one at a time: what each content worker takes next.
fn units(jobs: &[Job]) -> Vec<&[Job]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < jobs.len() {
        let mut j = i;
        let mut bytes = 0;
        while j < jobs.len()
            && jobs[j].size <= INLINE_MAX
            && j - i < BATCH_FILES
            && bytes + jobs[j].size <= BATCH_BYTES
        {
            bytes += jobs[j].size;
            j += 1;
        }
        let j = j.max(i + 1);
        out.push(&jobs[i..j]);
        i = j;
    }
    out
}

/// One file to fill: its inode, size and content.
struct Job {
    ino: u64,
    size: u64,
    content: Digest,
}

/// Encoded tree bytes read ahead of the walk at most; the walk reads the rest as it goes.
const TREES_AHEAD: usize = 128 << 20;

/// The trees below `root` (itself included), read a level at a time until about `budget`
/// encoded bytes: each level in one batch, in volume order. Their locations come from the
/// index, not from the parents' location tables: a table lists every child, files too, and
/// reading them all from a cold disk took three times as long (PERFORMANCE.md, checkout).
fn trees_ahead(store: &Store, root: Digest, budget: usize) -> Result<HashMap<Digest, Tree>> {
    let mut trees = HashMap::new();
    let mut level = vec![root];
    let mut read = 0;
    while !level.is_empty() && read < budget {
        let mut next = Vec::new();
        let missing = |m: &Digest| anyhow::anyhow!("tree {} is not in the store", m.to_text());
        get_each(
            store,
            &level,
            None,
            ReadOptions::default(),
            missing,
            |d, bytes| {
                read += bytes.len();
                let tree = crate::restore::decode_tree(&d, &bytes)?;
                let dirs = tree.entries.iter().filter(|e| e.kind == EntryKind::Dir);
                next.extend(dirs.filter_map(|e| e.content));
                trees.insert(d, tree);
                Ok(())
            },
        )?;
        next.sort_unstable();
        next.dedup();
        next.retain(|d| !trees.contains_key(d));
        level = next;
    }
    Ok(trees)
}

/// Walks the stored trees and the written skeleton in step; returns the files to fill.
fn walk(
    store: &Store,
    trees: &HashMap<Digest, Tree>,
    fs: &Filesystem,
    reader: &dyn FsReader,
    stats: &mut LayoutStats,
) -> Result<Vec<Job>> {
    let root = reader.root();
    let mut root_attrs = entry_of(&reader.node(root)?, Vec::new());
    root_attrs.size = 0;
    if root_attrs != fs.root_attrs {
        return Err(Mismatch("root directory attributes differ".into()).into());
    }
    let mut jobs = Vec::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut groups: HashMap<u64, u64> = HashMap::new();
    let mut stack: Vec<(Digest, u64, String)> = vec![(fs.root, root, "/".into())];
    while let Some((d, ino, path)) = stack.pop() {
        let read;
        let tree = match trees.get(&d) {
            Some(t) => t,
            None => {
                let Item::Tree(t) = item(store, &d)? else {
                    bail!("{} is not a tree", d.to_text())
                };
                stats.items += 1;
                read = t;
                &read
            }
        };
        let mut on_disk = reader.read_dir(ino).map_err(|e| Mismatch(e.to_string()))?;
        on_disk.sort_by(|a, b| a.0.cmp(&b.0));
        check_names(tree, &on_disk, &path)?;
        for (e, (_, child)) in tree.entries.iter().zip(&on_disk) {
            let child_path = format!("{path}{}", String::from_utf8_lossy(&e.name));
            let node = reader.node(*child).map_err(|x| Mismatch(x.to_string()))?;
            let mut got = entry_of(&node, e.name.clone());
            got.content = e.content;
            got.link_group = e.link_group;
            // Where a file has blocks is the layout's own: its extent trees are in the skeleton.
            got.holes.clone_from(&e.holes);
            if got != *e {
                return Err(Mismatch(format!("{child_path}: metadata differs")).into());
            }
            // Hard links: one inode per group, the same group for one inode.
            if let Some(g) = e.link_group {
                if *groups.entry(g).or_insert(*child) != *child {
                    return Err(Mismatch(format!("{child_path}: hard-link group differs")).into());
                }
            }
            match e.kind {
                EntryKind::Dir => {
                    let sub = e.content.context("directory without a tree")?;
                    stack.push((sub, *child, format!("{child_path}/")));
                }
                EntryKind::File => {
                    if let Some(content) = e.content {
                        if seen.insert(*child) {
                            jobs.push(Job {
                                ino: *child,
                                size: e.size,
                                content,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(jobs)
}

fn check_names(tree: &Tree, on_disk: &[(Vec<u8>, u64)], path: &str) -> Result<()> {
    let same = tree.entries.len() == on_disk.len()
        && tree.entries.iter().zip(on_disk).all(|(e, d)| e.name == d.0);
    if !same {
        return Err(Mismatch(format!("{path}: directory entries differ")).into());
    }
    Ok(())
}

/// Puts `data`, which belongs at `logical` in a file, into the file's extents; bytes that fall
/// in holes must be zero.
fn put_mapped(out: &Output, ext: &[FileExtent], data: &Bytes, logical: u64) -> Result<()> {
    let end = logical + data.len() as u64;
    let range = |s: u64, e: u64| (s - logical) as usize..(e - logical) as usize;
    let slice = |s: u64, e: u64| &data[range(s, e)];
    let zero = |s: u64, e: u64| -> Result<()> {
        if slice(s, e).iter().any(|b| *b != 0) {
            return Err(Mismatch(format!("content at file offset {s} falls in a hole")).into());
        }
        Ok(())
    };
    let mut pos = logical;
    let first = ext.partition_point(|e| e.logical + e.len <= pos);
    for e in ext[first..].iter().take_while(|e| e.logical < end) {
        if e.logical > pos {
            zero(pos, e.logical)?;
            pos = e.logical;
        }
        let stop = end.min(e.logical + e.len);
        match e.physical {
            Some(p) => out.put(data.slice(range(pos, stop)), p + (pos - e.logical))?,
            None => zero(pos, stop)?,
        }
        pos = stop;
    }
    if pos < end {
        zero(pos, end)?;
    }
    Ok(())
}

/// Fills the files of one unit: reads their contents in one batch and puts each where its
/// file's extents say.
fn fill(
    store: &Store,
    out: &Output,
    reader: &dyn FsReader,
    unit: &[Job],
    verify: bool,
    stats: &mut LayoutStats,
) -> Result<()> {
    let mut by_content: HashMap<Digest, Vec<&Job>> = HashMap::new();
    for job in unit {
        // Content inside the inode is in the skeleton already.
        if reader.inline_data(job.ino)?.is_none() {
            by_content.entry(job.content).or_default().push(job);
        }
    }
    let wanted: Vec<Digest> = by_content.keys().copied().collect();
    let opts = ReadOptions {
        verify_digest: verify,
        ..Default::default()
    };
    let missing = |m: &Digest| anyhow::anyhow!("{} is not in the store", m.to_text());
    get_each(store, &wanted, None, opts, missing, |d, bytes| {
        by_content[&d]
            .iter()
            .try_for_each(|job| write_file(store, out, reader, job, &bytes, verify, stats))
    })?;
    Ok(())
}

/// Puts the content `bytes` (the encoded item) of one file into its extents.
#[allow(clippy::too_many_arguments)]
fn write_file(
    store: &Store,
    out: &Output,
    reader: &dyn FsReader,
    job: &Job,
    bytes: &Bytes,
    verify: bool,
    stats: &mut LayoutStats,
) -> Result<()> {
    let ext = reader
        .extents(job.ino)
        .map_err(|e| Mismatch(e.to_string()))?;
    stats.items += 1;
    let opts = ReadOptions {
        verify_digest: verify,
        ..Default::default()
    };
    let wrong_size = |size: u64| {
        anyhow::anyhow!(
            "{} has {size} bytes, expected {}",
            job.content.to_text(),
            job.size
        )
    };
    // A blob's content is written without a copy.
    if let Some(data) = blob_data(bytes)? {
        let data = bytes.slice_ref(data);
        if data.len() as u64 != job.size {
            return Err(wrong_size(data.len() as u64));
        }
        put_mapped(out, &ext, &data, 0)?;
        stats.bytes += data.len() as u64;
        return Ok(());
    }
    match Item::decode(bytes)? {
        Item::ChunkList(list) => {
            if list.size != job.size {
                return Err(wrong_size(list.size));
            }
            let mut failure: Option<anyhow::Error> = None;
            let (n, b) = for_each_chunk(store, &job.content, &list.chunks, opts, |data, off| {
                put_mapped(out, &ext, data, off).map_err(|e| {
                    let msg = e.to_string();
                    failure = Some(e);
                    RestoreError::Structure(msg)
                })
            })
            .map_err(|e| failure.take().unwrap_or_else(|| e.into()))?;
            stats.items += n;
            stats.bytes += b;
        }
        other => bail!(
            "{} is a {}, expected file content",
            job.content.to_text(),
            other.kind()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirage_format::PartitionContent;

    /// A demo disk checked in; its ext4 filesystem, its partition's offset and length.
    fn checked_in(dir: &Path, store: &Store) -> (Filesystem, u64, u64) {
        let tree = dir.join("tree");
        let gen = crate::demo::generate(&tree, 11, 1).unwrap();
        let img = dir.join("disk.img");
        crate::demo::build_disk_image(&tree, &img, gen.bytes).unwrap();
        let (image, _) = crate::indexer::checkin(store, &img, 2).unwrap();
        let Item::Image(image) = item(store, &image).unwrap() else {
            panic!()
        };
        let Item::Disk(disk) = item(store, &image.disks[0].disk).unwrap() else {
            panic!()
        };
        for p in &disk.partitions {
            if let PartitionContent::Filesystem { digest } = &p.content {
                let Item::Filesystem(fs) = item(store, digest).unwrap() else {
                    panic!()
                };
                if fs.fs_type == "ext4" {
                    return (fs, p.start, p.size);
                }
            }
        }
        panic!("no ext4 filesystem")
    }

    #[test]
    fn the_walk_reads_the_trees_the_read_ahead_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("store")).unwrap();
        let (fs, start, size) = checked_in(dir.path(), &store);
        let all = trees_ahead(&store, fs.root, usize::MAX).unwrap();
        let first = trees_ahead(&store, fs.root, 1).unwrap();
        assert!(all.len() > 10, "{} trees", all.len());
        assert_eq!(first.len(), 1, "a budget of one byte stops after the root");
        assert!(first.contains_key(&fs.root));
        // Lay the skeleton out once and walk it with every tree at hand, with only the
        // root, and with none: the same files, in the same order.
        let out = dir.path().join("out.img");
        File::create(&out).unwrap().set_len(start + size).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&out)
            .unwrap();
        let skeleton = fs.skeleton.unwrap();
        let Item::ChunkList(list) = item(&store, &skeleton).unwrap() else {
            panic!()
        };
        crate::restore::write_chunks(&store, &f, &out, start, (&skeleton, &list), false).unwrap();
        let src: Arc<dyn BlockSource> = Arc::new(RawFile::open(f, &out).unwrap());
        let reader = Ext4::open(src, start, size).unwrap();
        let jobs = |trees: &HashMap<Digest, Tree>| -> Vec<(u64, u64, Digest)> {
            walk(&store, trees, &fs, &reader, &mut LayoutStats::default())
                .unwrap()
                .iter()
                .map(|j| (j.ino, j.size, j.content))
                .collect()
        };
        let want = jobs(&all);
        assert!(want.len() > 100, "{} files", want.len());
        assert_eq!(jobs(&first), want);
        assert_eq!(jobs(&HashMap::new()), want);
    }

    #[test]
    fn the_early_writeback_flushes_only_while_the_device_is_not_being_read() {
        assert!(!reading(Some(5), Some(5)));
        assert!(!reading(Some(5), Some(5 + READS_IDLE - 1)));
        assert!(reading(Some(5), Some(5 + READS_IDLE)));
        // Unknown (no task I/O accounting) or going backwards: not reading.
        assert!(!reading(None, Some(1 << 30)));
        assert!(!reading(Some(1 << 30), None));
        assert!(!reading(Some(7 << 20), Some(3)));
    }
}
