//! ext2/3/4 inodes: mode, owner, times with nanoseconds and epoch bits, flags, device numbers,
//! and extended attributes (in the inode and in an external block), with POSIX ACLs converted
//! from ext4's on-disk form to the `system.posix_acl_*` xattr form that Linux presents.

use mirage_format::{EntryKind, Timestamp, Xattr};

use super::{itable, le16, le32, Ext4};
use crate::fs::FsError;

/// `EXT4_EXTENTS_FL`.
pub const EXTENTS_FL: u32 = 0x0008_0000;
/// `EXT4_INLINE_DATA_FL`.
pub const INLINE_DATA_FL: u32 = 0x1000_0000;
/// `EXT4_ENCRYPT_FL`: names (of a directory) or contents and target are fscrypt ciphertext.
pub const ENCRYPT_FL: u32 = 0x800;
/// `EXT4_VERITY_FL`: an fs-verity Merkle tree is kept past the end of the file.
pub const VERITY_FL: u32 = 0x0010_0000;

/// A parsed inode.
#[derive(Clone, Debug)]
pub struct Inode {
    /// Inode number.
    pub ino: u32,
    /// Raw bytes (the whole on-disk inode).
    pub raw: Vec<u8>,
    /// `i_mode`.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size.
    pub size: u64,
    /// Link count.
    pub links: u16,
    /// `i_flags`.
    pub flags: u32,
    /// `i_block` area (60 bytes).
    pub block: [u8; 60],
    /// External xattr block.
    pub file_acl: u64,
    /// `i_extra_isize`.
    pub extra_isize: u16,
    /// 512-byte sectors (or blocks with HUGE_FILE) in use.
    pub blocks: u64,
}

impl Inode {
    /// The object type.
    pub fn kind(&self) -> Option<EntryKind> {
        Some(match self.mode & 0xF000 {
            0x8000 => EntryKind::File,
            0x4000 => EntryKind::Dir,
            0xA000 => EntryKind::Symlink,
            0x2000 => EntryKind::CharDev,
            0x6000 => EntryKind::BlockDev,
            0x1000 => EntryKind::Fifo,
            0xC000 => EntryKind::Socket,
            _ => return None,
        })
    }

    fn extra(&self, field_end: usize) -> bool {
        // Extra fields start at byte 128; `field_end` is the end of the field relative to 128.
        usize::from(self.extra_isize) >= field_end && self.raw.len() >= 128 + field_end
    }

    fn time(&self, base: usize, extra: Option<(usize, usize)>) -> Timestamp {
        let secs = i64::from(le32(&self.raw, base) as i32);
        match extra {
            Some((at, end)) if self.extra(end) => {
                let x = le32(&self.raw, 128 + at);
                let epoch = i64::from(x & 3);
                Timestamp::new(secs + (epoch << 32), (x >> 2).min(999_999_999))
            }
            _ => Timestamp::new(secs, 0),
        }
    }

    /// Modification time.
    pub fn mtime(&self) -> Timestamp {
        self.time(0x10, Some((0x08, 0x0C)))
    }
    /// Access time.
    pub fn atime(&self) -> Timestamp {
        self.time(0x08, Some((0x0C, 0x10)))
    }
    /// Change time.
    pub fn ctime(&self) -> Timestamp {
        self.time(0x0C, Some((0x04, 0x08)))
    }
    /// Creation time, when the inode is large enough to hold it.
    pub fn crtime(&self) -> Option<Timestamp> {
        if !self.extra(0x14) {
            return None;
        }
        let secs = i64::from(le32(&self.raw, 128 + 0x10) as i32);
        let t = if self.extra(0x18) {
            let x = le32(&self.raw, 128 + 0x14);
            Timestamp::new(secs + (i64::from(x & 3) << 32), (x >> 2).min(999_999_999))
        } else {
            Timestamp::new(secs, 0)
        };
        Some(t)
    }

    /// Device number in Linux `makedev` encoding.
    pub fn rdev(&self) -> u64 {
        let old = le32(&self.block, 0);
        let (major, minor) = if old != 0 {
            ((old >> 8) & 0xff, old & 0xff)
        } else {
            let new = le32(&self.block, 4);
            ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
        };
        let (major, minor) = (u64::from(major), u64::from(minor));
        ((major & 0xffff_f000) << 32)
            | ((major & 0xfff) << 8)
            | ((minor & 0xffff_ff00) << 12)
            | (minor & 0xff)
    }
}

impl Ext4 {
    /// Reads inode `ino`.
    pub fn inode(&self, ino: u32) -> Result<Inode, FsError> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(self.corrupt(format!(
                "inode number {ino} out of range 1..={}",
                self.sb.inodes_count
            )));
        }
        let group = (ino - 1) / self.sb.inodes_per_group;
        let index = u64::from((ino - 1) % self.sb.inodes_per_group);
        let table = self
            .groups
            .get(group as usize)
            .map(|g| g.inode_table)
            .ok_or_else(|| self.corrupt(format!("inode {ino}: group {group} missing")))?;
        let isz = u64::from(self.sb.inode_size);
        // The page of the group's table that holds the inode, clipped to the table: inode
        // sizes are powers of two, so an inode never straddles pages.
        let table_len = u64::from(self.sb.inodes_per_group) * isz;
        let page_size = itable::PAGE.max(isz);
        let at = index * isz;
        let page = at / page_size;
        let page_start = page * page_size;
        let page_len = page_size.min(table_len - page_start);
        let bytes = self.itable.get(u64::from(group), page, || {
            self.read_fs(
                table * self.block_size() + page_start,
                page_len,
                &format!("inode table of group {group}"),
            )
        })?;
        let within = (at - page_start) as usize;
        let raw = bytes
            .get(within..within + isz as usize)
            .ok_or_else(|| self.corrupt(format!("inode {ino}: beyond its table page")))?
            .to_vec();
        let mut block = [0u8; 60];
        block.copy_from_slice(&raw[0x28..0x28 + 60]);
        let extra_isize = if isz > 128 { le16(&raw, 0x80) } else { 0 };
        if u64::from(extra_isize) > isz - 128 {
            return Err(self.corrupt(format!(
                "inode {ino}: extra size {extra_isize} exceeds the inode size {isz}"
            )));
        }
        let flags = le32(&raw, 0x20);
        let blocks_lo = u64::from(le32(&raw, 0x1C));
        let blocks_hi = u64::from(le16(&raw, 0x74));
        Ok(Inode {
            ino,
            mode: le16(&raw, 0),
            uid: u32::from(le16(&raw, 0x02)) | (u32::from(le16(&raw, 0x78)) << 16),
            gid: u32::from(le16(&raw, 0x18)) | (u32::from(le16(&raw, 0x7A)) << 16),
            size: u64::from(le32(&raw, 0x04)) | (u64::from(le32(&raw, 0x6C)) << 32),
            links: le16(&raw, 0x1A),
            flags,
            block,
            file_acl: u64::from(le32(&raw, 0x68)) | (u64::from(le16(&raw, 0x76)) << 32),
            extra_isize,
            blocks: blocks_lo | (blocks_hi << 32),
            raw,
        })
    }

    /// Extended attributes of an inode: in-inode ones, then the external block's, sorted by
    /// full name. `system.data` (inline data) is not an attribute users see and is left out.
    pub fn xattrs(&self, inode: &Inode) -> Result<Vec<Xattr>, FsError> {
        let mut out = Vec::new();
        let ibody = 128 + usize::from(inode.extra_isize);
        if inode.raw.len() >= ibody + 4 && le32(&inode.raw, ibody) == 0xEA02_0000 {
            let region = &inode.raw[ibody + 4..];
            self.parse_xattrs(inode.ino, region, region, &mut out)?;
        }
        if inode.file_acl != 0 {
            let bs = self.block_size();
            if inode.file_acl >= self.sb.blocks_count {
                return Err(self.corrupt(format!(
                    "inode {}: xattr block {} beyond the filesystem",
                    inode.ino, inode.file_acl
                )));
            }
            let block = self.read_fs(inode.file_acl * bs, bs, "xattr block")?;
            if le32(&block, 0) != 0xEA02_0000 {
                return Err(self.corrupt(format!(
                    "inode {}: xattr block {} has a bad magic",
                    inode.ino, inode.file_acl
                )));
            }
            self.parse_xattrs(inode.ino, &block[32..], &block, &mut out)?;
        }
        out.retain(|x| x.name != b"system.data");
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    /// Parses entries starting at `entries`; value offsets are relative to `values_base`.
    fn parse_xattrs(
        &self,
        ino: u32,
        entries: &[u8],
        values_base: &[u8],
        out: &mut Vec<Xattr>,
    ) -> Result<(), FsError> {
        let bad = |why: &str| self.corrupt(format!("inode {ino}: xattr {why}"));
        let mut pos = 0usize;
        while pos + 4 <= entries.len() && le32(entries, pos) != 0 {
            if pos + 16 > entries.len() {
                return Err(bad("entry runs past its area"));
            }
            let name_len = usize::from(entries[pos]);
            let index = entries[pos + 1];
            let value_offs = usize::from(le16(entries, pos + 2));
            let value_inum = le32(entries, pos + 4);
            let value_size = le32(entries, pos + 8) as usize;
            let name_end = pos + 16 + name_len;
            if name_end > entries.len() {
                return Err(bad("name runs past its area"));
            }
            let suffix = &entries[pos + 16..name_end];
            let value = if value_inum != 0 {
                self.ea_inode_value(value_inum, value_size)?
            } else {
                let end = value_offs
                    .checked_add(value_size)
                    .ok_or_else(|| bad("value size overflows"))?;
                if end > values_base.len() {
                    return Err(bad("value lies outside its block"));
                }
                values_base[value_offs..end].to_vec()
            };
            let (mut name, value) = match index {
                1 => (b"user.".to_vec(), value),
                2 => (
                    b"system.posix_acl_access".to_vec(),
                    acl_to_xattr(&value).ok_or_else(|| bad("POSIX ACL is malformed"))?,
                ),
                3 => (
                    b"system.posix_acl_default".to_vec(),
                    acl_to_xattr(&value).ok_or_else(|| bad("POSIX ACL is malformed"))?,
                ),
                4 => (b"trusted.".to_vec(), value),
                6 => (b"security.".to_vec(), value),
                7 => (b"system.".to_vec(), value),
                8 => (b"system.richacl".to_vec(), value),
                other => (format!("unknown{other}.").into_bytes(), value),
            };
            name.extend_from_slice(suffix);
            out.push(Xattr { name, value });
            pos = (name_end + 3) & !3;
        }
        Ok(())
    }

    fn ea_inode_value(&self, inum: u32, size: usize) -> Result<Vec<u8>, FsError> {
        if size > 64 << 20 {
            return Err(self.corrupt(format!("xattr value in inode {inum} claims {size} bytes")));
        }
        let inode = self.inode(inum)?;
        let mut v = vec![0u8; size];
        for e in self.file_extents(&inode)? {
            let Some(p) = e.physical else { continue };
            if e.logical >= size as u64 {
                break;
            }
            let n = e.len.min(size as u64 - e.logical) as usize;
            let bytes = self.read_abs(p, n as u64, "xattr value inode")?;
            v[e.logical as usize..e.logical as usize + n].copy_from_slice(&bytes);
        }
        Ok(v)
    }
}

/// ext4's on-disk ACL (version 1, short entries for the owner/group/mask/other tags) to the
/// `posix_acl_xattr` form (version 2, every entry 8 bytes).
pub fn acl_to_xattr(disk: &[u8]) -> Option<Vec<u8>> {
    if disk.len() < 4 || le32(disk, 0) != 1 {
        return None;
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut pos = 4;
    while pos < disk.len() {
        if pos + 4 > disk.len() {
            return None;
        }
        let tag = le16(disk, pos);
        let perm = le16(disk, pos + 2);
        let (id, len) = match tag {
            0x02 | 0x08 => {
                if pos + 8 > disk.len() {
                    return None;
                }
                (le32(disk, pos + 4), 8)
            }
            0x01 | 0x04 | 0x10 | 0x20 => (u32::MAX, 4),
            _ => return None,
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
        pos += len;
    }
    Some(out)
}
