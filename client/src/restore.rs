//! Recreates a stored directory tree on the local filesystem. Each directory's children are
//! read in one batch in the context of their Tree (its location table, in volume order), each
//! large file's chunks in the context of its ChunkList. Every item is verified by digest.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, FileTimes, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use mirage_format::{Digest, EntryKind, Extent, Item, Timestamp, Tree, TreeEntry};
use mirage_node::{ReadOptions, Store, StoreError};

/// Restore errors.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Writing the output failed.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An item is missing or not what its parent says.
    #[error("{0}")]
    Structure(String),
}

/// What a restore did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreStats {
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Device nodes, fifos and sockets not recreated (a directory restore does not mknod).
    pub skipped_special: u64,
    /// Fifos, sockets and device placeholders created (staging only).
    pub specials: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Items read.
    pub items: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    if t.secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nanos))
    }
}

pub(crate) fn decode_tree(d: &Digest, bytes: &[u8]) -> Result<Tree, RestoreError> {
    match Item::decode(bytes) {
        Ok(Item::Tree(t)) => Ok(t),
        Ok(other) => Err(RestoreError::Structure(format!(
            "{d:#} is a {}, expected a tree",
            other.kind()
        ))),
        Err(e) => Err(RestoreError::Structure(format!("{d:#}: {e}"))),
    }
}

/// Restores the tree `root` into `out`, which must not exist yet.
pub fn restore_tree(
    store: &Store,
    root: &Digest,
    out: &Path,
) -> Result<RestoreStats, RestoreError> {
    restore_tree_with(store, root, out, false)
}

/// Like [`restore_tree`]; with `staging`, no metadata is applied (everything stays readable
/// for a filesystem builder) and fifos, sockets and device nodes are created as unprivileged
/// placeholders (a fifo stands in for a device node).
pub fn restore_tree_with(
    store: &Store,
    root: &Digest,
    out: &Path,
    staging: bool,
) -> Result<RestoreStats, RestoreError> {
    let mut stats = RestoreStats::default();
    let bytes = store
        .get(root)?
        .ok_or_else(|| RestoreError::Structure(format!("{root:#} is not in the store")))?;
    let tree = decode_tree(root, &bytes)?;
    std::fs::create_dir(out).map_err(io(out))?;
    let mut queue: VecDeque<(Digest, Tree, PathBuf)> =
        VecDeque::from([(*root, tree, out.to_path_buf())]);
    let mut dir_meta: Vec<(PathBuf, TreeEntry)> = Vec::new();
    let mut links: HashMap<u64, PathBuf> = HashMap::new();
    let mut pending_links: Vec<(u64, PathBuf)> = Vec::new();
    let opts = ReadOptions::default();
    while let Some((digest, tree, dir)) = queue.pop_front() {
        // Entries whose content comes from the store, by content digest.
        let mut wanted: HashMap<Digest, Vec<usize>> = HashMap::new();
        for (i, e) in tree.entries.iter().enumerate() {
            let path = dir.join(std::ffi::OsStr::from_bytes(&e.name));
            if e.kind != EntryKind::Dir {
                if let Some(g) = e.link_group.filter(|g| links.contains_key(g)) {
                    // The first path of the group may not exist yet: link at the end.
                    pending_links.push((g, path));
                    continue;
                }
                if let Some(g) = e.link_group {
                    links.insert(g, path.clone());
                }
            }
            match (e.kind, e.content) {
                (EntryKind::Dir, _) | (EntryKind::File, Some(_)) => {
                    if let Some(c) = e.content {
                        wanted.entry(c).or_default().push(i);
                    }
                }
                (EntryKind::File, None) => {
                    let f = File::create(&path).map_err(io(&path))?;
                    f.set_len(e.size).map_err(io(&path))?;
                    if !staging {
                        finish_file(&f, &path, e)?;
                    }
                    stats.files += 1;
                }
                (EntryKind::Symlink, _) => {
                    let target =
                        std::ffi::OsStr::from_bytes(e.target.as_deref().unwrap_or_default());
                    std::os::unix::fs::symlink(target, &path).map_err(io(&path))?;
                    stats.symlinks += 1;
                }
                (EntryKind::Socket, _) if staging => {
                    drop(std::os::unix::net::UnixListener::bind(&path).map_err(io(&path))?);
                    stats.specials += 1;
                }
                (EntryKind::Fifo | EntryKind::CharDev | EntryKind::BlockDev, _) if staging => {
                    rustix::fs::mknodat(
                        rustix::fs::CWD,
                        &path,
                        rustix::fs::FileType::Fifo,
                        rustix::fs::Mode::from_raw_mode(0o644),
                        0,
                    )
                    .map_err(|e| RestoreError::Io {
                        path: path.clone(),
                        source: e.into(),
                    })?;
                    stats.specials += 1;
                }
                _ => stats.skipped_special += 1,
            }
        }
        let keys: Vec<Digest> = wanted.keys().copied().collect();
        let missing = |m: &Digest| {
            RestoreError::Structure(format!(
                "{m:#} referenced by {digest:#} is not in the store"
            ))
        };
        get_each(store, &keys, Some(&digest), opts, missing, |d, bytes| {
            stats.items += 1;
            for &i in &wanted[&d] {
                let e = &tree.entries[i];
                let path = dir.join(std::ffi::OsStr::from_bytes(&e.name));
                if e.kind == EntryKind::Dir {
                    std::fs::create_dir(&path).map_err(io(&path))?;
                    queue.push_back((d, decode_tree(&d, &bytes)?, path.clone()));
                    dir_meta.push((path, e.clone()));
                    stats.dirs += 1;
                } else {
                    stats.bytes +=
                        write_file(store, &d, &bytes, &path, e, &mut stats.items, staging)?;
                    stats.files += 1;
                }
            }
            Ok(())
        })?;
    }
    for (g, path) in &pending_links {
        std::fs::hard_link(&links[g], path).map_err(io(path))?;
        stats.files += 1;
    }
    // Directory metadata last, deepest first, so creating children does not disturb it.
    for (path, e) in dir_meta.iter().rev() {
        if !staging {
            let f = File::open(path).map_err(io(path))?;
            finish_file(&f, path, e)?;
        }
    }
    Ok(stats)
}

/// Chunk bytes below which a chunk list is read by one thread.
const PARALLEL_BYTES: u64 = 8 << 20;
/// Readers of one large chunk list (a filesystem's skeleton, a raw region): a store on a cold
/// disk answers several reads in flight faster than one after another (PERFORMANCE.md, checkout).
const READERS: usize = 4;

/// Writes the chunks of the ChunkList `list` (digest `d`) into `f` at `base`, read in the
/// context of the list (its location table, in volume order); holes are left unwritten. Each
/// record's CRC and digest field are checked; `verify` also re-hashes each chunk. A large list
/// is read in [`READERS`] runs of chunks side by side. Returns the chunks read and the bytes
/// written.
pub(crate) fn write_chunks(
    store: &Store,
    f: &File,
    path: &Path,
    base: u64,
    (d, list): (&Digest, &mirage_format::ChunkList),
    verify: bool,
) -> Result<(u64, u64), RestoreError> {
    let opts = ReadOptions {
        verify_digest: verify,
        ..ReadOptions::default()
    };
    let write = |data: &Bytes, off: u64| f.write_all_at(data, base + off).map_err(io(path));
    let runs = runs_of(&list.chunks, READERS, PARALLEL_BYTES);
    if runs.len() < 2 {
        return for_each_chunk(store, d, &list.chunks, opts, write);
    }
    std::thread::scope(|s| {
        let readers: Vec<_> = runs
            .iter()
            .map(|run| s.spawn(move || for_each_chunk(store, d, run, opts, write)))
            .collect();
        let mut total = (0, 0);
        let mut first_err = None;
        for r in readers {
            match r.join() {
                Ok(Ok((n, b))) => total = (total.0 + n, total.1 + b),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => {
                    first_err = first_err.or(Some(RestoreError::Structure(
                        "a chunk reader panicked".into(),
                    )))
                }
            }
        }
        first_err.map_or(Ok(total), Err)
    })
}

/// Splits `chunks` into at most `n` runs of about equal bytes, none below `min_bytes` unless
/// the whole list is (then one run).
fn runs_of(chunks: &[Extent], n: usize, min_bytes: u64) -> Vec<&[Extent]> {
    let total: u64 = chunks.iter().map(|c| c.len).sum();
    let n = n.min((total / min_bytes.max(1)) as usize).max(1);
    let per = total.div_ceil(n as u64).max(1);
    let mut out = Vec::with_capacity(n);
    let (mut start, mut acc) = (0, 0);
    for (i, c) in chunks.iter().enumerate() {
        acc += c.len;
        if acc >= per && out.len() + 1 < n {
            out.push(&chunks[start..=i]);
            (start, acc) = (i + 1, 0);
        }
    }
    if start < chunks.len() || out.is_empty() {
        out.push(&chunks[start..]);
    }
    out
}

/// Writes `data` at `at` of `f`, except the parts that fall in one of the file's `holes` and are
/// all zeros (a chunk around a little data in a large hole is mostly zeros): those stay holes.
fn write_outside_holes(
    f: &File,
    data: &[u8],
    at: u64,
    holes: &[(u64, u64)],
) -> std::io::Result<()> {
    let end = at + data.len() as u64;
    let mut pos = at;
    let first = holes.partition_point(|&(h, len)| h + len <= at);
    for &(h, len) in holes[first..].iter().take_while(|&&(h, _)| h < end) {
        let (from, to) = (h.max(pos), (h + len).min(end));
        let part = &data[(from - at) as usize..(to - at) as usize];
        if part.iter().all(|&b| b == 0) {
            f.write_all_at(&data[(pos - at) as usize..(from - at) as usize], pos)?;
            pos = to;
        }
    }
    f.write_all_at(&data[(pos - at) as usize..], pos)
}

/// [`Store::get_many`] with a callback that can fail: items stop being handed over at the first
/// error, from the store or from `f`, which is returned; a digest the store does not hold is
/// the error `missing` makes of it.
pub(crate) fn get_each<E: From<StoreError>>(
    store: &Store,
    wanted: &[Digest],
    context: Option<&Digest>,
    opts: ReadOptions,
    missing: impl FnOnce(&Digest) -> E,
    mut f: impl FnMut(Digest, Bytes) -> Result<(), E>,
) -> Result<(), E> {
    let mut failure = None;
    let read = store.get_many(wanted, context, opts, |d, r| {
        if failure.is_none() {
            if let Err(e) = r.map_err(E::from).and_then(|bytes| f(d, bytes)) {
                failure = Some(e);
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    match read.missing.first() {
        Some(m) => Err(missing(m)),
        None => Ok(()),
    }
}

/// Reads `chunks` (all or some of the chunks of the ChunkList `d`) in the context of the list
/// (its location table, in volume order) and hands each one's bytes to `put` at each of its
/// offsets. Returns the chunks read and the bytes handed over.
pub(crate) fn for_each_chunk(
    store: &Store,
    d: &Digest,
    chunks: &[Extent],
    opts: ReadOptions,
    mut put: impl FnMut(&Bytes, u64) -> Result<(), RestoreError>,
) -> Result<(u64, u64), RestoreError> {
    let want: Vec<Digest> = chunks.iter().map(|c| c.digest).collect();
    let mut at: HashMap<Digest, Vec<u64>> = HashMap::new();
    for c in chunks {
        at.entry(c.digest).or_default().push(c.offset);
    }
    let (mut items, mut bytes) = (0u64, 0u64);
    let missing =
        |m: &Digest| RestoreError::Structure(format!("chunk {m:#} of {d:#} is not in the store"));
    get_each(store, &want, Some(d), opts, missing, |cd, chunk| {
        items += 1;
        if chunk.len() < 2 {
            return Err(RestoreError::Structure(format!("chunk {cd:#} is empty")));
        }
        let data = chunk.slice(2..);
        for off in &at[&cd] {
            put(&data, *off)?;
            bytes += data.len() as u64;
        }
        Ok(())
    })?;
    Ok((items, bytes))
}

fn write_file(
    store: &Store,
    d: &Digest,
    bytes: &[u8],
    path: &Path,
    e: &TreeEntry,
    items: &mut u64,
    staging: bool,
) -> Result<u64, RestoreError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(path))?;
    match Item::decode(bytes) {
        Ok(Item::Blob { data }) => f.write_all_at(&data, 0).map_err(io(path))?,
        Ok(Item::ChunkList(list)) => {
            let (n, _) = for_each_chunk(
                store,
                d,
                &list.chunks,
                ReadOptions::default(),
                |data, at| write_outside_holes(&f, data, at, &e.holes).map_err(io(path)),
            )?;
            *items += n;
        }
        Ok(other) => {
            return Err(RestoreError::Structure(format!(
                "{d:#} is a {}, expected file content",
                other.kind()
            )))
        }
        Err(err) => return Err(RestoreError::Structure(format!("{d:#}: {err}"))),
    }
    f.set_len(e.size).map_err(io(path))?;
    if !staging {
        finish_file(&f, path, e)?;
    }
    Ok(e.size)
}

/// Gives the file blocks everywhere but its recorded holes, as its source had them: the ranges
/// the store keeps as zeros (all-zero chunks) were left unwritten. A filesystem that cannot
/// preallocate keeps them as holes.
fn preallocate(f: &File, e: &TreeEntry) -> std::io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    let mut pos = 0u64;
    let ends = e.holes.iter().copied().chain([(e.size, 0)]);
    for (hole, len) in ends {
        if hole > pos {
            match fallocate(f, FallocateFlags::KEEP_SIZE, pos, hole - pos) {
                Ok(()) => {}
                Err(rustix::io::Errno::OPNOTSUPP) => return Ok(()),
                Err(err) => return Err(err.into()),
            }
        }
        pos = hole + len;
    }
    Ok(())
}

fn finish_file(f: &File, path: &Path, e: &TreeEntry) -> Result<(), RestoreError> {
    preallocate(f, e).map_err(io(path))?;
    f.set_permissions(std::fs::Permissions::from_mode(e.mode))
        .map_err(io(path))?;
    let times = FileTimes::new()
        .set_accessed(system_time(e.atime))
        .set_modified(system_time(e.mtime));
    f.set_times(times).map_err(io(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(lens: &[u64]) -> Vec<Extent> {
        let mut at = 0;
        lens.iter()
            .map(|&len| {
                let e = Extent {
                    offset: at,
                    len,
                    digest: Digest::of(mirage_format::Algorithm::Sha256, &at.to_le_bytes())
                        .unwrap(),
                };
                at += len;
                e
            })
            .collect()
    }

    /// The runs are the list in order, each chunk once, at most `n` of them.
    fn joined(runs: &[&[Extent]]) -> Vec<Extent> {
        runs.iter().flat_map(|r| r.iter().copied()).collect()
    }

    #[test]
    fn a_chunk_list_is_split_into_runs_of_about_equal_bytes() {
        let list = chunks(&[1 << 20; 40]);
        let runs = runs_of(&list, 4, 8 << 20);
        assert_eq!(runs.len(), 4);
        assert!(
            runs.iter().all(|r| r.len() == 10),
            "{:?}",
            runs.iter().map(|r| r.len())
        );
        assert_eq!(joined(&runs), list);

        // Uneven chunks: every run but the last holds at least its share.
        let list = chunks(&(1..=30).map(|i| i * 100_000).collect::<Vec<_>>());
        let total: u64 = list.iter().map(|c| c.len).sum();
        let runs = runs_of(&list, 4, 1 << 20);
        assert_eq!(runs.len(), 4);
        assert_eq!(joined(&runs), list);
        for r in &runs[..3] {
            assert!(r.iter().map(|c| c.len).sum::<u64>() >= total / 4);
        }
    }

    #[test]
    fn a_small_chunk_list_is_one_run_and_an_empty_one_too() {
        let list = chunks(&[1 << 20; 12]);
        assert_eq!(runs_of(&list, 4, 8 << 20).len(), 1);
        // 12 MiB at 4 MiB per run at least: three runs.
        let runs = runs_of(&list, 4, 4 << 20);
        assert_eq!(runs.len(), 3);
        assert_eq!(joined(&runs), list);
        let runs = runs_of(&[], 4, 8 << 20);
        assert_eq!(runs.len(), 1);
        assert!(runs[0].is_empty());
        // One huge chunk cannot be split.
        let list = chunks(&[1 << 30]);
        assert_eq!(joined(&runs_of(&list, 4, 8 << 20)), list);
    }
}
