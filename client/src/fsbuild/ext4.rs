//! Recreating an ext2/3/4 filesystem in place, without root and without mounting:
//! 1. the stored tree is restored into a staging directory (contents, directories, symlinks,
//!    hard links, fifos, sockets; a fifo stands in for each device node);
//! 2. `mke2fs -d` builds the filesystem from it at the partition's offset, with the stored
//!    identity and parameters (UUID, label, block and inode size, inode count, features, hash
//!    seed, journal size, ...);
//! 3. one `debugfs` script sets what `mke2fs -d` cannot carry: device types and numbers, owners,
//!    times to the nanosecond (and past 2038), creation times, inode flags, every extended
//!    attribute, and the superblock fields users and tools see.
//!
//! Each new inode is found by walking the new filesystem with Mirage's own reader, so names
//! never have to be quoted for debugfs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mirage_format::{EntryKind, Filesystem, Item, Param, Timestamp, TreeEntry};
use mirage_node::Store;

use crate::browse::item;
use crate::fs::ext4::features::{COMPAT, INCOMPAT, RO_COMPAT};
use crate::fs::ext4::{Ext4, INLINE_DATA_FL};
use crate::fs::{FileExtent, FsReader};
use crate::image::BlockSource;

/// A directory with an htree index.
const INDEX_FL: u64 = 0x1000;

/// The most links ext4 counts; a directory with more subdirectories has a link count of 1.
const EXT4_LINK_MAX: usize = 65_000;

/// Inode flags users set (chattr); the rest belongs to the filesystem's own layout.
const USER_FLAGS: u64 = 0x1
    | 0x2
    | 0x4
    | 0x8
    | 0x10
    | 0x20
    | 0x40
    | 0x80
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000
    | 0x80_0000
    | 0x200_0000
    | 0x2000_0000
    | CASEFOLD_FL;

/// `EXT4_CASEFOLD_FL`: names in this directory are looked up without regard to case (set on a
/// rebuilt directory after `mke2fs -d` filled it; an indexed one is hashed again by `e2fsck -D`).
pub(crate) const CASEFOLD_FL: u64 = 0x4000_0000;

fn p_u64(fs: &Filesystem, key: &str) -> Result<u64> {
    match fs.params.get(key) {
        Some(Param::U64(v)) => Ok(*v),
        _ => bail!("filesystem parameter {key} is missing"),
    }
}

fn p_bytes<'a>(fs: &'a Filesystem, key: &str) -> &'a [u8] {
    match fs.params.get(key) {
        Some(Param::Bytes(b)) => b,
        _ => &[],
    }
}

fn uuid_text(b: &[u8]) -> Option<String> {
    (b.len() == 16).then(|| crate::browse::uuid_text(b))
}

/// Feature list for `mke2fs -O none,...`; unknown bits are an error.
fn features(fs: &Filesystem) -> Result<String> {
    let mut out = vec!["none".to_string()];
    for (key, table) in [
        ("feature_compat", COMPAT),
        ("feature_incompat", INCOMPAT),
        ("feature_ro_compat", RO_COMPAT),
    ] {
        let mut bits = p_u64(fs, key)? as u32;
        if key == "feature_incompat" {
            bits &= !0x4; // needs_recovery is state, not a feature
        }
        if key == "feature_ro_compat" {
            bits &= !0x10000; // orphan_present is state
        }
        for (bit, name) in table {
            if bits & bit != 0 {
                out.push((*name).to_string());
                bits &= !bit;
            }
        }
        if bits != 0 {
            bail!("{key} bits {bits:#x} cannot be recreated by mke2fs");
        }
    }
    Ok(out.join(","))
}

/// The `mke2fs` command that recreates `fs` at `offset` of `image`.
pub fn mke2fs_command(
    fs: &Filesystem,
    image: &Path,
    offset: u64,
    staging: &Path,
) -> Result<Command> {
    let bs = p_u64(fs, "block_size")?;
    let feats = features(fs)?;
    let has = |name: &str| feats.split(',').any(|f| f == name);
    if has("dirdata") {
        bail!(
            "recreating {} with {feats} is not supported yet",
            fs.fs_type
        );
    }
    let mut c = Command::new("mke2fs");
    c.args(["-F", "-q", "-t", &fs.fs_type, "-O", &feats]);
    c.args([
        "-b",
        &bs.to_string(),
        "-I",
        &p_u64(fs, "inode_size")?.to_string(),
    ]);
    c.args(["-N", &p_u64(fs, "inodes_count")?.to_string()]);
    if has("bigalloc") {
        // mke2fs takes the cluster size, and no block count per group beyond 8 per bitmap
        // byte (a bigalloc group counts clusters there): its default.
        c.args([
            "-C",
            &(1024u64 << p_u64(fs, "log_cluster_size")?.min(30)).to_string(),
        ]);
    } else {
        c.args(["-g", &p_u64(fs, "blocks_per_group")?.to_string()]);
    }
    c.args(["-m", "0", "-r", &p_u64(fs, "rev_level")?.to_string()]);
    if has("flex_bg") {
        c.args([
            "-G",
            &(1u64 << p_u64(fs, "log_groups_per_flex")?.min(31)).to_string(),
        ]);
    }
    if has("has_journal") {
        let jb = p_bytes(fs, "journal_blocks");
        if jb.len() == 68 {
            let size = u64::from(u32::from_le_bytes([jb[64], jb[65], jb[66], jb[67]]))
                | (u64::from(u32::from_le_bytes([jb[60], jb[61], jb[62], jb[63]])) << 32);
            if size >= 1 << 20 {
                c.args(["-J", &format!("size={}", size >> 20)]);
            }
        }
    }
    if let Some(u) = uuid_text(&fs.uuid) {
        c.args(["-U", &u]);
    }
    c.arg("-L")
        .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&fs.label));
    let lm = p_bytes(fs, "last_mounted");
    if !lm.is_empty() {
        c.arg("-M")
            .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(lm));
    }
    let mut ext = format!("offset={offset},nodiscard,root_owner=0:0");
    if let Some(seed) = uuid_text(p_bytes(fs, "hash_seed")) {
        write!(ext, ",hash_seed={seed}")?;
    }
    if has("casefold") {
        // The only encoding ext4 defines: 1, UTF-8 12.1; flag 1: refuse invalid names.
        match p_u64(fs, "encoding")? {
            1 => ext.push_str(",encoding=utf8-12.1"),
            e => bail!("recreating a casefold filesystem with encoding {e} is not supported"),
        }
        match p_u64(fs, "encoding_flags")? {
            0 => {}
            1 => ext.push_str(",encoding_flags=strict"),
            f => bail!(
                "recreating a casefold filesystem with encoding flags {f:#x} is not supported"
            ),
        }
    }
    c.args(["-E", &ext]);
    if let Ok(t) = p_u64(fs, "mkfs_time") {
        c.env("E2FSPROGS_FAKE_TIME", t.to_string());
    }
    c.arg("-d")
        .arg(staging)
        .arg(image)
        .arg(p_u64(fs, "blocks_count")?.to_string());
    Ok(c)
}

fn time_cmds(cmds: &mut String, ino: u64, field: &str, t: Timestamp) {
    let low = t.secs as i32;
    let epoch = ((t.secs - i64::from(low)) >> 32) as u32 & 3;
    let _ = writeln!(cmds, "sif <{ino}> {field} @{low}");
    let _ = writeln!(cmds, "sif <{ino}> {field}_extra {}", (t.nanos << 2) | epoch);
}

fn type_bits(k: EntryKind) -> u32 {
    match k {
        EntryKind::File => 0o100000,
        EntryKind::Dir => 0o040000,
        EntryKind::Symlink => 0o120000,
        EntryKind::CharDev => 0o020000,
        EntryKind::BlockDev => 0o060000,
        EntryKind::Fifo => 0o010000,
        EntryKind::Socket => 0o140000,
    }
}

/// debugfs commands that give inode `ino` (named `e.name` in directory `parent`) the metadata
/// of `e`.
#[allow(clippy::too_many_arguments)]
fn entry_cmds(
    cmds: &mut String,
    xdir: &Path,
    nx: &mut usize,
    block_size: u64,
    parent: u64,
    ino: u64,
    cur_flags: u64,
    e: &TreeEntry,
) -> Result<()> {
    let _ = writeln!(cmds, "sif <{ino}> mode 0{:o}", type_bits(e.kind) | e.mode);
    if let Some(rdev) = e.rdev {
        let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
        let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
        let enc = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        let _ = writeln!(cmds, "sif <{ino}> block[0] 0\nsif <{ino}> block[1] {enc}");
        // The placeholder was a fifo: relink so the directory entry carries the device type.
        let name = std::str::from_utf8(&e.name)
            .ok()
            .filter(|n| {
                n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+:@,=".contains(&b))
            })
            .with_context(|| {
                format!(
                    "device name {:?} cannot be recreated with debugfs",
                    String::from_utf8_lossy(&e.name)
                )
            })?;
        let _ = writeln!(cmds, "cd <{parent}>\nunlink {name}\nlink <{ino}> {name}");
    }
    let _ = writeln!(cmds, "sif <{ino}> uid {}\nsif <{ino}> gid {}", e.uid, e.gid);
    time_cmds(cmds, ino, "atime", e.atime);
    time_cmds(cmds, ino, "mtime", e.mtime);
    time_cmds(cmds, ino, "ctime", e.ctime);
    if let Some(c) = e.crtime {
        time_cmds(cmds, ino, "crtime", c);
    }
    let flags = (cur_flags & !USER_FLAGS) | (e.flags & USER_FLAGS);
    if flags != cur_flags {
        let _ = writeln!(cmds, "sif <{ino}> flags {flags:#x}");
    }
    for x in &e.xattrs {
        let name = std::str::from_utf8(&x.name)
            .ok()
            .filter(|n| n.bytes().all(|b| b.is_ascii_graphic() && b != b'"'));
        let Some(name) = name else {
            bail!(
                "xattr name {:?} cannot be recreated",
                String::from_utf8_lossy(&x.name)
            )
        };
        // `ea_set -f` reads one block of the value file (e2fsprogs 1.47.0): a larger value
        // (an `ea_inode` filesystem's) would be cut short without a word.
        if x.value.len() as u64 > block_size {
            bail!(
                "{:?}: xattr {name} holds {} bytes, more than debugfs can set ({block_size}, \
                 one block); this filesystem can be checked out by its layout, not rebuilt",
                String::from_utf8_lossy(&e.name),
                x.value.len()
            );
        }
        let f = xdir.join(format!("x{nx}"));
        *nx += 1;
        std::fs::write(&f, &x.value)?;
        let _ = writeln!(cmds, "ea_set -f {} <{ino}> {name}", f.display());
    }
    Ok(())
}

/// `debugfs` commands that give file `ino` blocks wherever the source had them but `mke2fs -d`
/// left a hole (it writes no block that is all zeros): preallocated ranges and written zeros,
/// which a swap file needs (`swapon` refuses a file with holes). The holes the source had stay.
fn alloc_cmds(cmds: &mut String, ino: u64, e: &TreeEntry, made: &[FileExtent], block_size: u64) {
    let blocks = |(off, len): (u64, u64)| (off / block_size, (off + len).div_ceil(block_size));
    let keep: Vec<(u64, u64)> = e.holes.iter().map(|&h| blocks(h)).collect();
    for (start, to) in FileExtent::holes(made, e.size).into_iter().map(blocks) {
        let mut from = start;
        for &(k_from, k_to) in keep.iter().filter(|&&(a, b)| b > start && a < to) {
            if k_from > from {
                let _ = writeln!(cmds, "fallocate <{ino}> {from} {}", k_from - 1);
            }
            from = from.max(k_to);
        }
        if from < to {
            let _ = writeln!(cmds, "fallocate <{ino}> {from} {}", to - 1);
        }
    }
}

/// Recreates `fs` in `[offset, offset + len)` of the raw image file `image`.
pub fn recreate(store: &Store, fs: &Filesystem, image: &Path, offset: u64, len: u64) -> Result<()> {
    let work = super::staging_dir(image, super::staged_bytes(store, &fs.root)?)?;
    let staging = work.path().join("root");
    let t = std::time::Instant::now();
    crate::restore::restore_tree_with(store, &fs.root, &staging, true)
        .context("staging the tree")?;
    tracing::info!(
        seconds = t.elapsed().as_secs_f64(),
        "ext: staging tree written"
    );
    let t = std::time::Instant::now();
    let out = mke2fs_command(fs, image, offset, &staging)?
        .output()
        .context("running mke2fs")?;
    if !out.status.success() {
        use std::os::unix::process::ExitStatusExt;
        // Measured with e2fsprogs 1.47.0: `mke2fs -d` aborts on a tree 1,200 directories deep.
        let why = match out.status.signal() {
            Some(sig) => format!(
                " (killed by signal {sig}; mke2fs -d is known to abort on trees more than about \
                 1,100 directories deep: check this filesystem out by its layout)"
            ),
            None => String::new(),
        };
        bail!(
            "mke2fs failed: {}{why}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tracing::info!(seconds = t.elapsed().as_secs_f64(), "ext: mke2fs -d done");
    let t = std::time::Instant::now();
    // Walk the stored tree and the new filesystem together.
    let src: Arc<dyn BlockSource> = Arc::from(crate::image::open(image)?);
    let ext = Ext4::open(src, offset, len)?;
    let xdir = work.path().join("xattrs");
    std::fs::create_dir(&xdir)?;
    let mut cmds = String::new();
    let mut nx = 0usize;
    let block_size = p_u64(fs, "block_size")?;
    entry_cmds(
        &mut cmds,
        &xdir,
        &mut nx,
        block_size,
        2,
        2,
        u64::from(ext.inode(2)?.flags),
        &fs.root_attrs,
    )?;
    let dir_index = features(fs)?.split(',').any(|f| f == "dir_index");
    let mut indexed = dir_index && fs.root_attrs.flags & INDEX_FL != 0;
    let mut stack = vec![(fs.root, 2u64)];
    while let Some((tree_d, ino)) = stack.pop() {
        let Item::Tree(tree) = item(store, &tree_d)? else {
            bail!("{} is not a tree", tree_d.to_text())
        };
        let made: HashMap<Vec<u8>, u64> = ext.read_dir(ino)?.into_iter().collect();
        // A directory with more links than ext4 counts (dir_nlink) has a link count of 1;
        // mke2fs -d (e2fsprogs 1.47.0) stores the count modulo 2^16 instead, which e2fsck
        // rejects.
        let subdirs = tree
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Dir)
            .count();
        indexed |= dir_index
            && tree
                .entries
                .iter()
                .any(|e| e.kind == EntryKind::Dir && e.flags & INDEX_FL != 0);
        if 2 + subdirs > EXT4_LINK_MAX {
            let _ = writeln!(cmds, "sif <{ino}> links_count 1");
        }
        for e in &tree.entries {
            let Some(&child) = made.get(&e.name) else {
                bail!(
                    "{:?} was not created by mke2fs",
                    String::from_utf8_lossy(&e.name)
                );
            };
            let made_inode = ext.inode(child as u32)?;
            let cur = u64::from(made_inode.flags);
            if e.kind == EntryKind::File {
                // e2fsprogs 1.47.0 with inline_data: `mke2fs -d` gives a file that ends in a
                // hole the size of what it wrote (an 8 MiB swap file came out 4 KiB long).
                if made_inode.size != e.size {
                    let _ = writeln!(cmds, "sif <{child}> size {}", e.size);
                }
                // A file it left inline (all zeros) has no blocks to give.
                if made_inode.flags & INLINE_DATA_FL == 0 {
                    alloc_cmds(&mut cmds, child, e, &ext.extents(child)?, block_size);
                }
            }
            entry_cmds(&mut cmds, &xdir, &mut nx, block_size, ino, child, cur, e)?;
            if e.kind == EntryKind::Dir {
                if let Some(c) = e.content {
                    stack.push((c, child));
                }
            }
        }
    }
    // Superblock fields that tools and people look at.
    let mut sb_cmds = String::new();
    for key in [
        "mtime",
        "wtime",
        "lastcheck",
        "mkfs_time",
        "mnt_count",
        "max_mnt_count",
        "checkinterval",
        "errors",
        "default_mount_opts",
        "creator_os",
        "min_extra_isize",
        "want_extra_isize",
        "raid_stride",
        "raid_stripe_width",
        "r_blocks_count",
    ] {
        if let Some(Param::U64(v)) = fs.params.get(key) {
            let time = matches!(key, "mtime" | "wtime" | "lastcheck" | "mkfs_time");
            let _ = writeln!(
                sb_cmds,
                "ssv {key} {}{}",
                if time { "@" } else { "" },
                *v as i64
            );
        }
    }
    tracing::info!(
        seconds = t.elapsed().as_secs_f64(),
        lines = cmds.lines().count(),
        "ext: debugfs script built"
    );
    let t = std::time::Instant::now();
    let target = format!("{}?offset={offset}", image.display());
    if indexed {
        // mke2fs -d writes every directory linear; a large one the source had indexed (htree)
        // would stay linear, each lookup a scan. `e2fsck -D` indexes the large ones; it also
        // stamps the superblock, so the superblock's fields are set after it.
        debugfs(fs, work.path(), &target, &cmds)?;
        let out = Command::new("e2fsck")
            .args(["-f", "-y", "-D"])
            .arg(&target)
            .output()
            .context("running e2fsck -D")?;
        // 0: nothing changed, 1: directories rewritten; anything else is an error.
        if !matches!(out.status.code(), Some(0 | 1)) {
            bail!(
                "e2fsck -D ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        debugfs(fs, work.path(), &target, &sb_cmds)?;
    } else {
        cmds.push_str(&sb_cmds);
        debugfs(fs, work.path(), &target, &cmds)?;
    }
    tracing::info!(
        seconds = t.elapsed().as_secs_f64(),
        indexed,
        "ext: debugfs done"
    );
    Ok(())
}

/// Runs the `debugfs` script `cmds` on `target` (`IMAGE?offset=N`).
fn debugfs(fs: &Filesystem, work: &Path, target: &str, cmds: &str) -> Result<()> {
    let script = work.join("debugfs.cmds");
    std::fs::write(&script, cmds)?;
    let mut debugfs = Command::new("debugfs");
    // debugfs stamps the superblock's write time when it closes the filesystem.
    if let Some(Param::U64(w)) = fs.params.get("wtime") {
        debugfs.env("E2FSPROGS_FAKE_TIME", w.to_string());
    }
    let out = debugfs
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(target)
        .output()
        .context("running debugfs")?;
    // debugfs exits 0 even when a command fails: its errors are the stderr lines that are not
    // the banner or an echo of a command.
    let errors: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| {
            !l.starts_with("debugfs ") && !l.starts_with("debugfs:") && !l.trim().is_empty()
        })
        .map(str::to_string)
        .collect();
    if !out.status.success() || !errors.is_empty() {
        bail!("debugfs: {}", errors.join("; "));
    }
    Ok(())
}
