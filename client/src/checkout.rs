//! Checkout: recreating a disk image from the store. Raw regions and raw partitions come back
//! byte for byte (which restores the partition table, boot code and gaps exactly); swap gets
//! its header with the same UUID and label; ext2/3/4 and vfat filesystems are rebuilt with
//! their identity, parameters and every file's metadata (`crate::fsbuild`). What cannot be
//! rebuilt is refused before anything is written.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use mirage_format::{Digest, Item, Param, PartitionContent};
use mirage_image::image::BlockSource;
use mirage_node::Store;

use crate::browse::item;

/// Output container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A sparse raw file.
    Raw,
    /// qcow2 (written through `qemu-img convert`).
    Qcow2,
}

/// What a checkout wrote.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckoutStats {
    /// Disk size.
    pub disk_bytes: u64,
    /// Bytes written (holes and zero runs are not written).
    pub written_bytes: u64,
    /// Items read.
    pub items: u64,
    /// Filesystems written from their stored layout.
    pub by_layout: u64,
    /// Filesystems rebuilt from their trees.
    pub rebuilt: u64,
}

/// Writes the ChunkList `list` at `base` of `out`; holes stay sparse. `verify` re-hashes each
/// chunk.
fn write_chunklist(
    store: &Store,
    (out, path): (&File, &Path),
    base: u64,
    list: &Digest,
    verify: bool,
    stats: &mut CheckoutStats,
) -> Result<()> {
    let Item::ChunkList(cl) = item(store, list)? else {
        bail!("{} is not a chunk list", list.to_text())
    };
    let (items, bytes) = crate::restore::write_chunks(store, out, path, base, (list, &cl), verify)?;
    stats.items += 1 + items;
    stats.written_bytes += bytes;
    Ok(())
}

/// Writes a Linux swap v1 header for a partition of `size` bytes at `base`; returns its bytes.
fn write_swap(
    out: &File,
    base: u64,
    size: u64,
    uuid: &[u8],
    label: &[u8],
    params: &mirage_format::Params,
) -> Result<u64> {
    let page = match params.get("page_size") {
        Some(Param::U64(p)) if (4096..=65536).contains(p) && p.is_power_of_two() => *p,
        _ => 4096,
    };
    let last_page = match params.get("last_page") {
        Some(Param::U64(p)) => *p,
        _ => size / page - 1,
    };
    let mut h = vec![0u8; page as usize];
    h[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    h[1028..1032].copy_from_slice(&(last_page as u32).to_le_bytes());
    let u = uuid.get(..16).context("swap UUID must be 16 bytes")?;
    h[1036..1052].copy_from_slice(u);
    let l = &label[..label.len().min(16)];
    h[1052..1052 + l.len()].copy_from_slice(l);
    h[page as usize - 10..].copy_from_slice(crate::fs::swap::SIGNATURE);
    out.write_all_at(&h, base)?;
    Ok(page)
}

/// How to check out.
#[derive(Clone, Copy, Debug)]
pub struct CheckoutOptions {
    /// Output container.
    pub format: Format,
    /// Rebuild every filesystem from its tree, even where its layout (skeleton) is stored.
    pub rebuild: bool,
    /// Worker threads for file contents.
    pub threads: usize,
    /// Re-hash every file content read (records are always CRC-checked).
    pub verify: bool,
}

impl Default for CheckoutOptions {
    fn default() -> Self {
        CheckoutOptions {
            format: Format::Raw,
            rebuild: false,
            verify: false,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Writes one filesystem: by its stored layout where it has one (unless `rebuild`), falling
/// back to rebuilding it from its tree when the layout does not match the tree.
fn write_filesystem(
    store: &Store,
    fs: &mirage_format::Filesystem,
    path: &Path,
    start: u64,
    size: u64,
    opts: CheckoutOptions,
    stats: &mut CheckoutStats,
) -> Result<()> {
    if fs.skeleton.is_some() && !opts.rebuild {
        let layout = crate::fsbuild::layout::LayoutOptions {
            threads: opts.threads,
            verify: opts.verify,
            scratch: opts.format == Format::Qcow2,
        };
        match crate::fsbuild::layout::recreate(store, fs, path, (start, size), layout) {
            Ok(st) => {
                stats.items += st.items;
                stats.written_bytes += st.bytes;
                stats.by_layout += 1;
                return Ok(());
            }
            Err(e) if e.is::<crate::fsbuild::layout::Mismatch>() => {
                tracing::warn!("{e:#}; rebuilding the filesystem from its tree");
                let f = OpenOptions::new().write(true).open(path)?;
                rustix::fs::fallocate(
                    &f,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    start,
                    size,
                )
                .context("clearing the partition before rebuilding it")?;
            }
            Err(e) => return Err(e),
        }
    }
    stats.rebuilt += 1;
    if fs.fs_type == "vfat" {
        crate::fsbuild::vfat::recreate(store, fs, path, start, size)?;
    } else {
        crate::fsbuild::ext4::recreate(store, fs, path, start, size)?;
    }
    // The builders write through their own tools: count what the partition now holds.
    let raw = mirage_image::image::raw::RawFile::open(File::open(path)?, path)?;
    let ranges = raw.data_ranges(start, start.saturating_add(size))?;
    stats.written_bytes += ranges.iter().map(|(a, b)| b - a).sum::<u64>();
    Ok(())
}

/// Largest index a checkout reads into the page cache ahead of its lookups (about a million
/// items); a larger one is left to be read a block per lookup.
const INDEX_PREFETCH_MAX: u64 = 64 << 20;

/// Recreates the image `image` into `out` (which must not exist).
pub fn checkout(
    store: &Store,
    image: &Digest,
    out: &Path,
    opts: CheckoutOptions,
) -> Result<CheckoutStats> {
    let format = opts.format;
    // Every tree, chunk and file of the image is looked up in the index: a small index is
    // read whole, in the background, rather than a block per lookup (cold derived-1: the
    // skeleton and trees 114-120 -> 48-75 ms; docs/PERFORMANCE.md, checkout).
    store.prefetch_index(INDEX_PREFETCH_MAX);
    let Item::Image(img) = item(store, image)? else {
        bail!("{} is not an image", image.to_text())
    };
    if img.disks.len() != 1 {
        bail!(
            "images with {} disks cannot be checked out yet",
            img.disks.len()
        );
    }
    let Item::Disk(disk) = item(store, &img.disks[0].disk)? else {
        bail!("damaged image: not a disk")
    };
    // Refuse early, before writing anything, what cannot be recreated yet.
    let mut filesystems = Vec::new();
    for p in &disk.partitions {
        if let PartitionContent::Filesystem { digest } = &p.content {
            let Item::Filesystem(fs) = item(store, digest)? else {
                bail!("{} is not a filesystem", digest.to_text())
            };
            if !matches!(fs.fs_type.as_str(), "ext2" | "ext3" | "ext4" | "vfat") {
                bail!(
                    "partition {} holds {}: recreating it is not implemented yet",
                    p.number,
                    fs.fs_type
                );
            }
            filesystems.push((p.start, p.size, fs));
        }
    }
    let raw_path = match format {
        Format::Raw => out.to_path_buf(),
        Format::Qcow2 => out.with_extension("raw.partial"),
    };
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&raw_path)
        .with_context(|| format!("creating {}", raw_path.display()))?;
    if let Err(e) = f.set_len(disk.size) {
        let _ = std::fs::remove_file(&raw_path);
        return Err(e).with_context(|| {
            format!(
                "sizing {} to the disk's {} bytes (the raw form{} is written first; its \
                 filesystem must hold a sparse file this large)",
                raw_path.display(),
                disk.size,
                if format == Format::Qcow2 {
                    " of a qcow2 checkout"
                } else {
                    ""
                }
            )
        });
    }
    let mut stats = CheckoutStats {
        disk_bytes: disk.size,
        ..Default::default()
    };
    // Raw regions and raw partitions, byte for byte (in one thread beside the filesystems).
    let raw = |f: &File| -> Result<CheckoutStats> {
        let mut st = CheckoutStats::default();
        for r in &disk.regions {
            write_chunklist(
                store,
                (f, &raw_path),
                r.offset,
                &r.digest,
                opts.verify,
                &mut st,
            )?;
        }
        for p in &disk.partitions {
            match &p.content {
                PartitionContent::Raw { digest } => {
                    write_chunklist(store, (f, &raw_path), p.start, digest, opts.verify, &mut st)?
                }
                PartitionContent::Swap {
                    uuid,
                    label,
                    params,
                } => st.written_bytes += write_swap(f, p.start, p.size, uuid, label, params)?,
                PartitionContent::Empty | PartitionContent::Filesystem { .. } => {}
            }
        }
        Ok(st)
    };
    let result = (|| -> Result<()> {
        // Regions, raw partitions and filesystems occupy disjoint byte ranges: they are
        // written side by side.
        let results: Vec<Result<CheckoutStats>> = std::thread::scope(|s| {
            let raw_job = s.spawn(|| raw(&f));
            let jobs: Vec<_> = filesystems
                .iter()
                .map(|(start, size, fs)| {
                    let raw_path = &raw_path;
                    s.spawn(move || {
                        let t = std::time::Instant::now();
                        let mut st = CheckoutStats::default();
                        write_filesystem(store, fs, raw_path, *start, *size, opts, &mut st)
                            .with_context(|| {
                                format!("recreating the {} filesystem at byte {start}", fs.fs_type)
                            })?;
                        tracing::info!(fs = %fs.fs_type, start, elapsed = ?t.elapsed(), "filesystem written");
                        Ok(st)
                    })
                })
                .collect();
            std::iter::once(raw_job)
                .chain(jobs)
                .map(|j| {
                    j.join()
                        .unwrap_or_else(|_| bail!("a checkout writer panicked"))
                })
                .collect()
        });
        for r in results {
            let st = r?;
            stats.items += st.items;
            stats.written_bytes += st.written_bytes;
            stats.by_layout += st.by_layout;
            stats.rebuilt += st.rebuilt;
        }
        // The raw form of a qcow2 checkout is scratch: what must be durable is the qcow2.
        if format == Format::Raw {
            f.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&raw_path);
        return Err(e);
    }
    if format == Format::Qcow2 {
        // `-t unsafe`: no flush after each metadata update of the qcow2 (with its default
        // cache mode, qemu-img flushed 2.7 s away converting derived-1); the finished file is
        // flushed once, below, before the checkout reports it written.
        let st = Command::new("qemu-img")
            .args(["convert", "-t", "unsafe", "-f", "raw", "-O", "qcow2"])
            .arg(&raw_path)
            .arg(out)
            .status();
        let _ = std::fs::remove_file(&raw_path);
        if !st.context("running qemu-img")?.success() {
            let _ = std::fs::remove_file(out);
            bail!("qemu-img convert failed");
        }
        File::open(out)
            .and_then(|q| q.sync_all())
            .with_context(|| format!("flushing {}", out.display()))?;
    }
    // The new name too, not only the bytes behind it.
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("flushing the directory {}", dir.display()))?;
    Ok(stats)
}
