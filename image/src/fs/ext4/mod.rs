//! ext2/ext3/ext4 reader in user space: superblock, group descriptors, inodes with every
//! metadata field Mirage keeps, extent trees and indirect maps, linear and hashed directories,
//! inline data, extended attributes. A journal that needs recovery is replayed in memory by
//! [`journal::recovered`], whose view of the image the reader then opens.

mod blocks;
pub mod features;
mod gdt;
mod inode;
mod itable;
pub mod journal;
mod orphan;
pub mod skeleton;

use std::sync::Arc;

use mirage_format::{EntryKind, Param, Params};

pub use inode::{acl_to_xattr, Inode, INLINE_DATA_FL};

use crate::fs::{FileExtent, FsError, FsInfo, FsReader, Node};
use crate::image::BlockSource;
pub(crate) use crate::le::{le16, le32};

const MAGIC: u16 = 0xEF53;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
/// fscrypt: the feature alone changes nothing this reader reads; an encrypted inode is
/// refused where it is met (`Ext4::readable`).
const INCOMPAT_ENCRYPT: u32 = 0x10000;
const INCOMPAT_COMPRESSION: u32 = 0x1;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
/// Incompatible features this reader understands.
const INCOMPAT_KNOWN: u32 = 0x2
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | 0x40
    | INCOMPAT_64BIT
    | 0x100
    | 0x200
    | 0x400
    | 0x2000
    | 0x4000
    | 0x8000
    | INCOMPAT_ENCRYPT
    | 0x20000;

/// Superblock fields the reader uses.
#[derive(Clone, Debug)]
pub struct Superblock {
    /// Inode count.
    pub inodes_count: u32,
    /// Block count.
    pub blocks_count: u64,
    /// First data block (1 for 1 KiB blocks).
    pub first_data_block: u32,
    /// log2(block size) - 10.
    pub log_block_size: u32,
    /// Blocks per group.
    pub blocks_per_group: u32,
    /// Inodes per group.
    pub inodes_per_group: u32,
    /// Inode size.
    pub inode_size: u16,
    /// Compatible features.
    pub feature_compat: u32,
    /// Incompatible features.
    pub feature_incompat: u32,
    /// Read-only compatible features.
    pub feature_ro_compat: u32,
    /// Group descriptor size.
    pub desc_size: u16,
    /// The raw 1024 bytes.
    pub raw: Vec<u8>,
}

impl Superblock {
    /// Blocks per allocation cluster: 1 unless the filesystem has `bigalloc` (then a power of
    /// two up to 2^16; a cluster smaller than a block or larger than that reads as 0, which
    /// the open refuses as corrupt).
    pub fn cluster_ratio(&self) -> u64 {
        if self.feature_ro_compat & RO_COMPAT_BIGALLOC == 0 {
            return 1;
        }
        match le32(&self.raw, 0x1C).checked_sub(self.log_block_size) {
            Some(shift) if shift <= 16 => 1 << shift,
            _ => 0,
        }
    }
}

/// One block group's locations.
#[derive(Clone, Copy, Debug)]
pub struct Group {
    /// First block of the inode table.
    pub inode_table: u64,
    /// Block of the block bitmap.
    pub block_bitmap: u64,
    /// Block of the inode bitmap.
    pub inode_bitmap: u64,
    /// `bg_flags` (`INODE_UNINIT` 1, `BLOCK_UNINIT` 2, `ITABLE_ZEROED` 4).
    pub flags: u16,
    /// `bg_itable_unused`: inodes at the end of the group's table never used.
    pub itable_unused: u32,
}

/// An open ext2/3/4 filesystem.
pub struct Ext4 {
    src: Arc<dyn BlockSource>,
    /// Byte offset of the filesystem in the image.
    offset: u64,
    /// Length of the region holding it.
    len: u64,
    sb: Superblock,
    /// Where the superblock and group descriptor copies are.
    layout: gdt::Layout,
    groups: Vec<Group>,
    info: FsInfo,
    /// Inode-table pages read so far.
    itable: itable::InodePages,
}

impl std::fmt::Debug for Ext4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ext4({} at {})", self.info.fs_type, self.offset)
    }
}

/// True when `[offset, offset + len)` starts with an ext2/3/4 superblock.
pub fn probe(src: &dyn BlockSource, offset: u64, len: u64) -> bool {
    let mut b = [0u8; 2];
    len >= 2048
        && src.read_at(&mut b, offset + 1024 + 0x38).is_ok()
        && u16::from_le_bytes(b) == MAGIC
}

impl Ext4 {
    /// Opens the filesystem occupying `[offset, offset + len)` of `src`. One whose journal
    /// needs recovery is refused: open the view [`journal::recovered`] gives instead.
    pub fn open(src: Arc<dyn BlockSource>, offset: u64, len: u64) -> Result<Ext4, FsError> {
        Self::open_as(src, offset, len, false)
    }

    /// Opens a filesystem whose journal needs recovery as it stands (to read its journal).
    pub(crate) fn open_unrecovered(
        src: Arc<dyn BlockSource>,
        offset: u64,
        len: u64,
    ) -> Result<Ext4, FsError> {
        Self::open_as(src, offset, len, true)
    }

    fn open_as(
        src: Arc<dyn BlockSource>,
        offset: u64,
        len: u64,
        unrecovered: bool,
    ) -> Result<Ext4, FsError> {
        let corrupt = |what: String| FsError::Corrupt { fs: "ext4", what };
        if len < 2048 || offset.checked_add(len).is_none_or(|e| e > src.len()) {
            return Err(corrupt(format!(
                "region {offset}+{len} cannot hold a filesystem on a {}-byte disk",
                src.len()
            )));
        }
        let mut raw = vec![0u8; 1024];
        src.read_at(&mut raw, offset + 1024)?;
        if le16(&raw, 0x38) != MAGIC {
            return Err(corrupt("no ext2/3/4 superblock (bad magic)".into()));
        }
        let log_block_size = le32(&raw, 0x18);
        if log_block_size > 6 {
            return Err(corrupt(format!(
                "superblock: block size 2^(10+{log_block_size}) is out of range"
            )));
        }
        let incompat = le32(&raw, 0x60);
        let rev = le32(&raw, 0x4C);
        let sb = Superblock {
            inodes_count: le32(&raw, 0x00),
            blocks_count: u64::from(le32(&raw, 0x04))
                | if incompat & INCOMPAT_64BIT != 0 {
                    u64::from(le32(&raw, 0x150)) << 32
                } else {
                    0
                },
            first_data_block: le32(&raw, 0x14),
            log_block_size,
            blocks_per_group: le32(&raw, 0x20),
            inodes_per_group: le32(&raw, 0x28),
            inode_size: if rev == 0 { 128 } else { le16(&raw, 0x58) },
            feature_compat: le32(&raw, 0x5C),
            feature_incompat: incompat,
            feature_ro_compat: le32(&raw, 0x64),
            desc_size: if incompat & INCOMPAT_64BIT != 0 {
                le16(&raw, 0xFE)
            } else {
                32
            },
            raw,
        };
        let fs = Ext4::check(src, offset, len, sb, unrecovered)?;
        Ok(fs)
    }

    fn check(
        src: Arc<dyn BlockSource>,
        offset: u64,
        len: u64,
        sb: Superblock,
        unrecovered: bool,
    ) -> Result<Ext4, FsError> {
        let corrupt = |what: String| FsError::Corrupt { fs: "ext4", what };
        let unsupported = |what: String| FsError::Unsupported { fs: "ext4", what };
        let bs = 1024u64 << sb.log_block_size;
        // Features first: a feature this reader does not handle is named as such, not taken
        // for damage in the geometry it changes (bigalloc's groups, say).
        let inc = sb.feature_incompat;
        if inc & INCOMPAT_RECOVER != 0 && !unrecovered {
            return Err(unsupported(
                "the journal needs recovery (open the view journal::recovered gives)".into(),
            ));
        }
        let refused = inc & (INCOMPAT_JOURNAL_DEV | INCOMPAT_COMPRESSION) | inc & !INCOMPAT_KNOWN;
        if refused != 0 {
            return Err(unsupported(format!(
                "incompatible feature {} ({refused:#x})",
                features::names(refused, features::INCOMPAT)
            )));
        }
        // bigalloc: blocks are allocated in clusters, and the block bitmaps have a bit per
        // cluster (what the skeleton reads); the rest of the format counts blocks.
        let ratio = sb.cluster_ratio();
        if sb.feature_ro_compat & RO_COMPAT_BIGALLOC != 0 {
            let log_cluster = le32(&sb.raw, 0x1C);
            let per_group = le32(&sb.raw, 0x24);
            if ratio == 0
                || sb.first_data_block != 0
                || u64::from(per_group) * ratio != u64::from(sb.blocks_per_group)
                || u64::from(per_group) > 8 * bs
            {
                return Err(corrupt(format!(
                    "superblock: bigalloc with clusters of 2^(10+{log_cluster}) bytes, {per_group} per group, {} blocks per group",
                    sb.blocks_per_group
                )));
            }
        }
        if sb.blocks_count == 0 || sb.blocks_count.checked_mul(bs).is_none_or(|b| b > len) {
            return Err(corrupt(format!(
                "superblock: {} blocks of {bs} bytes exceed the {len}-byte region",
                sb.blocks_count
            )));
        }
        if sb.blocks_per_group == 0
            || sb.inodes_per_group == 0
            || u64::from(sb.blocks_per_group) > 8 * bs * ratio
            || u64::from(sb.inodes_per_group) > 8 * bs
        {
            return Err(corrupt(format!(
                "superblock: {} blocks and {} inodes per group",
                sb.blocks_per_group, sb.inodes_per_group
            )));
        }
        if !sb.inode_size.is_power_of_two() || sb.inode_size < 128 || u64::from(sb.inode_size) > bs
        {
            return Err(corrupt(format!("superblock: inode size {}", sb.inode_size)));
        }
        if u64::from(sb.first_data_block) >= sb.blocks_count {
            return Err(corrupt(format!(
                "superblock: first data block {} past the {} blocks",
                sb.first_data_block, sb.blocks_count
            )));
        }
        let ngroups = (sb.blocks_count - u64::from(sb.first_data_block))
            .div_ceil(u64::from(sb.blocks_per_group));
        if u64::from(sb.inodes_count) > ngroups * u64::from(sb.inodes_per_group) {
            return Err(corrupt(format!(
                "superblock: {} inodes do not fit {ngroups} groups",
                sb.inodes_count
            )));
        }
        let inc = sb.feature_incompat;
        if sb.desc_size < 32
            || (inc & INCOMPAT_64BIT != 0 && sb.desc_size < 64)
            || u64::from(sb.desc_size) > bs
        {
            return Err(corrupt(format!(
                "superblock: group descriptor size {}",
                sb.desc_size
            )));
        }
        // Group descriptors: a table after the superblock, or (meta_bg) a block per meta
        // group; consecutive blocks are read at once.
        let dsz = u64::from(sb.desc_size);
        let layout =
            gdt::Layout::new(&sb, ngroups).map_err(|w| corrupt(format!("superblock: {w}")))?;
        let per_block = (bs / dsz) as usize;
        let mut gdt = vec![0u8; (layout.desc_blocks() * bs) as usize];
        let mut i = 0;
        while i < layout.desc_blocks() {
            let at = layout.desc_block(i);
            let mut n = 1;
            while i + n < layout.desc_blocks() && layout.desc_block(i + n) == at + n {
                n += 1;
            }
            if (at + n) * bs > len {
                return Err(corrupt(format!(
                    "group descriptor block {at} lies past the filesystem"
                )));
            }
            let buf = &mut gdt[(i * bs) as usize..((i + n) * bs) as usize];
            src.read_at(buf, offset + at * bs)?;
            i += n;
        }
        let mut groups = Vec::with_capacity(ngroups as usize);
        let itable_blocks =
            (u64::from(sb.inodes_per_group) * u64::from(sb.inode_size)).div_ceil(bs);
        for g in 0..ngroups as usize {
            // Descriptors fill each block from its start (a block may end in unused bytes).
            let at = (g / per_block) * bs as usize + (g % per_block) * dsz as usize;
            let d = &gdt[at..at + dsz as usize];
            let mut table = u64::from(le32(d, 8));
            if dsz >= 64 {
                table |= u64::from(le32(d, 0x28)) << 32;
            }
            if table < u64::from(sb.first_data_block) || table + itable_blocks > sb.blocks_count {
                return Err(corrupt(format!(
                    "group {g}: inode table at block {table} lies outside the filesystem"
                )));
            }
            let hi = |at: usize| {
                if dsz >= 64 {
                    u64::from(le32(d, at)) << 32
                } else {
                    0
                }
            };
            groups.push(Group {
                inode_table: table,
                block_bitmap: u64::from(le32(d, 0)) | hi(0x20),
                inode_bitmap: u64::from(le32(d, 4)) | hi(0x24),
                flags: le16(d, 0x12),
                itable_unused: u32::from(le16(d, 0x1C))
                    | if dsz >= 64 {
                        u32::from(le16(d, 0x32)) << 16
                    } else {
                        0
                    },
            });
        }
        let info = fs_info(&sb);
        Ok(Ext4 {
            src,
            offset,
            len,
            sb,
            layout,
            groups,
            info,
            itable: itable::InodePages::new(),
        })
    }

    pub(crate) fn block_size(&self) -> u64 {
        1024 << self.sb.log_block_size
    }

    pub(crate) fn corrupt(&self, what: String) -> FsError {
        FsError::Corrupt { fs: "ext4", what }
    }

    /// Refuses, as unsupported, an inode whose meaning this reader cannot carry file by file:
    /// fscrypt ciphertext (names and symlink targets are binary, a file's last block holds
    /// ciphertext past its size) and fs-verity (the Merkle tree lies past the file's end).
    fn readable(&self, ino: u32, i: &inode::Inode) -> Result<(), FsError> {
        let what = if i.flags & inode::ENCRYPT_FL != 0 {
            "is encrypted (fscrypt)"
        } else if i.flags & inode::VERITY_FL != 0 {
            "has fs-verity enabled"
        } else {
            return Ok(());
        };
        Err(FsError::Unsupported {
            fs: "ext4",
            what: format!("inode {ino} {what}"),
        })
    }

    /// Reads bytes at an offset relative to the filesystem start.
    pub(crate) fn read_fs(&self, off: u64, len: u64, what: &str) -> Result<Vec<u8>, FsError> {
        if off.checked_add(len).is_none_or(|e| e > self.len) || len > 1 << 30 {
            return Err(self.corrupt(format!("{what} at {off}+{len} lies outside the filesystem")));
        }
        self.read_abs(self.offset + off, len, what)
    }

    /// Reads bytes at an absolute image offset.
    pub(crate) fn read_abs(&self, off: u64, len: u64, what: &str) -> Result<Vec<u8>, FsError> {
        if len > 1 << 30 {
            return Err(self.corrupt(format!("{what}: {len} bytes is too large")));
        }
        let mut v = vec![0u8; len as usize];
        self.src.read_at(&mut v, off)?;
        Ok(v)
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    fn symlink_target(&self, inode: &Inode) -> Result<Vec<u8>, FsError> {
        let fast = inode.size < 60
            && inode.flags & (inode::EXTENTS_FL | inode::INLINE_DATA_FL) == 0
            && (inode.blocks == 0 || inode.file_acl != 0);
        let t = if fast {
            inode.block[..inode.size as usize].to_vec()
        } else {
            self.read_content(inode, 4096)?
        };
        if t.is_empty() || t.contains(&0) {
            return Err(self.corrupt(format!(
                "symlink inode {}: target is empty or holds NUL",
                inode.ino
            )));
        }
        Ok(t)
    }
}

fn u(raw: &[u8], at: usize, width: usize) -> Param {
    Param::U64(match width {
        1 => u64::from(raw[at]),
        2 => u64::from(le16(raw, at)),
        _ => u64::from(le32(raw, at)),
    })
}

fn fs_info(sb: &Superblock) -> FsInfo {
    let r = &sb.raw;
    let journal = sb.feature_compat & 0x4 != 0;
    let ext4ish = sb.feature_incompat & !(0x2 | INCOMPAT_RECOVER | INCOMPAT_META_BG) != 0
        || sb.feature_ro_compat & !0x7 != 0;
    let fs_type = if ext4ish {
        "ext4"
    } else if journal {
        "ext3"
    } else {
        "ext2"
    };
    let mut p = Params::new();
    p.insert("block_size".into(), Param::U64(1024 << sb.log_block_size));
    p.insert("blocks_count".into(), Param::U64(sb.blocks_count));
    p.insert(
        "inodes_count".into(),
        Param::U64(u64::from(sb.inodes_count)),
    );
    p.insert("inode_size".into(), Param::U64(u64::from(sb.inode_size)));
    p.insert(
        "r_blocks_count".into(),
        Param::U64(
            u64::from(le32(r, 0x08))
                | if sb.feature_incompat & INCOMPAT_64BIT != 0 {
                    u64::from(le32(r, 0x154)) << 32
                } else {
                    0
                },
        ),
    );
    p.insert("desc_size".into(), Param::U64(u64::from(sb.desc_size)));
    for (name, at, w) in [
        ("first_data_block", 0x14, 4),
        ("log_cluster_size", 0x1C, 4),
        ("blocks_per_group", 0x20, 4),
        ("inodes_per_group", 0x28, 4),
        ("mtime", 0x2C, 4),
        ("wtime", 0x30, 4),
        ("mnt_count", 0x34, 2),
        ("max_mnt_count", 0x36, 2),
        ("state", 0x3A, 2),
        ("errors", 0x3C, 2),
        ("minor_rev_level", 0x3E, 2),
        ("lastcheck", 0x40, 4),
        ("checkinterval", 0x44, 4),
        ("creator_os", 0x48, 4),
        ("rev_level", 0x4C, 4),
        ("def_resuid", 0x50, 2),
        ("def_resgid", 0x52, 2),
        ("first_ino", 0x54, 4),
        ("feature_compat", 0x5C, 4),
        ("feature_incompat", 0x60, 4),
        ("feature_ro_compat", 0x64, 4),
        ("reserved_gdt_blocks", 0xCE, 2),
        ("journal_inum", 0xE0, 4),
        ("def_hash_version", 0xFC, 1),
        ("jnl_backup_type", 0xFD, 1),
        ("default_mount_opts", 0x100, 4),
        ("mkfs_time", 0x108, 4),
        ("min_extra_isize", 0x15C, 2),
        ("want_extra_isize", 0x15E, 2),
        ("flags", 0x160, 4),
        ("raid_stride", 0x164, 2),
        ("raid_stripe_width", 0x170, 4),
        ("log_groups_per_flex", 0x174, 1),
        ("checksum_type", 0x175, 1),
        ("encoding", 0x27C, 2),
        ("encoding_flags", 0x27E, 2),
        ("checksum_seed", 0x270, 4),
    ] {
        p.insert(name.into(), u(r, at, w));
    }
    p.insert("hash_seed".into(), Param::Bytes(r[0xEC..0xFC].to_vec()));
    p.insert("journal_uuid".into(), Param::Bytes(r[0xD0..0xE0].to_vec()));
    p.insert(
        "journal_blocks".into(),
        Param::Bytes(r[0x10C..0x150].to_vec()),
    );
    p.insert(
        "last_mounted".into(),
        Param::Bytes(trim_nul(&r[0x88..0xC8])),
    );
    p.insert(
        "mount_opts".into(),
        Param::Bytes(trim_nul(&r[0x200..0x240])),
    );
    FsInfo {
        fs_type: fs_type.into(),
        uuid: r[0x68..0x78].to_vec(),
        label: trim_nul(&r[0x78..0x88]),
        params: p,
    }
}

fn trim_nul(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|x| *x == 0).unwrap_or(b.len());
    b[..end].to_vec()
}

impl FsReader for Ext4 {
    fn info(&self) -> &FsInfo {
        &self.info
    }

    fn root(&self) -> u64 {
        2
    }

    fn span(&self) -> u64 {
        // Checked against the partition at the open.
        self.sb.blocks_count * self.block_size()
    }

    fn node(&self, id: u64) -> Result<Node, FsError> {
        let ino = u32::try_from(id)
            .map_err(|_| self.corrupt(format!("inode number {id} out of range")))?;
        let i = self.inode(ino)?;
        self.readable(ino, &i)?;
        let kind = i.kind().ok_or_else(|| {
            self.corrupt(format!(
                "inode {ino}: unknown file type in mode {:o}",
                i.mode
            ))
        })?;
        let target = if kind == EntryKind::Symlink {
            Some(self.symlink_target(&i)?)
        } else {
            None
        };
        let rdev = matches!(kind, EntryKind::CharDev | EntryKind::BlockDev).then(|| i.rdev());
        Ok(Node {
            id,
            kind,
            mode: u32::from(i.mode & 0o7777),
            uid: i.uid,
            gid: i.gid,
            size: if kind == EntryKind::Dir { 0 } else { i.size },
            mtime: i.mtime(),
            atime: i.atime(),
            ctime: i.ctime(),
            crtime: i.crtime(),
            flags: u64::from(i.flags),
            xattrs: self.xattrs(&i)?,
            rdev,
            target,
            nlink: u32::from(i.links),
        })
    }

    fn read_dir(&self, id: u64) -> Result<Vec<(Vec<u8>, u64)>, FsError> {
        let ino = u32::try_from(id)
            .map_err(|_| self.corrupt(format!("inode number {id} out of range")))?;
        let i = self.inode(ino)?;
        self.readable(ino, &i)?;
        if i.kind() != Some(EntryKind::Dir) {
            return Err(self.corrupt(format!("inode {ino} is not a directory")));
        }
        Ok(self
            .dir_entries(&i)?
            .into_iter()
            .map(|(n, ino)| (n, u64::from(ino)))
            .collect())
    }

    fn extents(&self, id: u64) -> Result<Vec<FileExtent>, FsError> {
        let ino = u32::try_from(id)
            .map_err(|_| self.corrupt(format!("inode number {id} out of range")))?;
        self.file_extents(&self.inode(ino)?)
    }

    fn skeleton(&self, file_data: &[(u64, u64)]) -> Result<Option<Vec<(u64, u64)>>, FsError> {
        self.skeleton_ranges(file_data).map(Some)
    }

    fn inline_data(&self, id: u64) -> Result<Option<Vec<u8>>, FsError> {
        let ino = u32::try_from(id)
            .map_err(|_| self.corrupt(format!("inode number {id} out of range")))?;
        let i = self.inode(ino)?;
        if i.flags & inode::INLINE_DATA_FL != 0 {
            Ok(Some(self.inline(&i)?))
        } else {
            Ok(None)
        }
    }
}
