//! Where an inode's bytes are: extent trees (ext4) and indirect block maps (ext2/3), and the
//! directory entries stored in those bytes.

use super::inode::{Inode, EXTENTS_FL, INLINE_DATA_FL};
use super::{le16, le32, Ext4};
use crate::fs::{FileExtent, FsError};

pub(super) const EXTENT_MAGIC: u16 = 0xF30A;
pub(super) const MAX_DEPTH: u16 = 5;
/// An extent length at or above this is an unwritten extent of `len - UNWRITTEN` blocks.
pub(super) const UNWRITTEN: u16 = 32768;

/// An extent tree leaf entry (12 bytes): logical block, length, physical block, unwritten.
pub(super) fn leaf_entry(e: &[u8]) -> (u64, u64, u64, bool) {
    let raw_len = le16(e, 4);
    let (len, unwritten) = match raw_len > UNWRITTEN {
        true => (raw_len - UNWRITTEN, true),
        false => (raw_len, false),
    };
    let pblk = (u64::from(le16(e, 6)) << 32) | u64::from(le32(e, 8));
    (u64::from(le32(e, 0)), u64::from(len), pblk, unwritten)
}

/// An extent tree index entry's child block.
pub(super) fn index_child(e: &[u8]) -> u64 {
    (u64::from(le16(e, 8)) << 32) | u64::from(le32(e, 4))
}

impl Ext4 {
    /// Content extents of an inode (absolute image offsets), sorted by logical offset, cut to
    /// the inode's size. Inline-data inodes have none.
    pub fn file_extents(&self, inode: &Inode) -> Result<Vec<FileExtent>, FsError> {
        if inode.flags & INLINE_DATA_FL != 0 {
            return Ok(Vec::new());
        }
        let bs = self.block_size();
        let nblocks = inode.size.div_ceil(bs);
        let mut runs: Vec<(u64, u64, Option<u64>)> = Vec::new(); // (logical block, count, physical block)
        if inode.flags & EXTENTS_FL != 0 {
            let mut leaves = Vec::new();
            let root = &inode.block;
            self.walk_extents(
                inode.ino,
                root,
                MAX_DEPTH + 1,
                &mut leaves,
                &mut Vec::new(),
                nblocks,
            )?;
            runs = leaves
                .into_iter()
                .map(|(lblk, count, pblk, unwritten)| (lblk, count, (!unwritten).then_some(pblk)))
                .collect();
        } else {
            self.walk_indirect(inode, nblocks, &mut runs)?;
        }
        runs.sort_by_key(|r| r.0);
        let mut out: Vec<FileExtent> = Vec::with_capacity(runs.len());
        let mut covered = 0u64;
        for (lblk, count, pblk) in runs {
            if lblk < covered {
                return Err(self.corrupt(format!(
                    "inode {}: extents overlap at block {lblk}",
                    inode.ino
                )));
            }
            let logical = lblk * bs;
            if logical >= inode.size {
                continue;
            }
            let len = (count * bs).min(inode.size - logical);
            covered = lblk + count;
            let physical = pblk.map(|p| self.offset + p * bs);
            match out.last_mut() {
                Some(last)
                    if last.logical + last.len == logical
                        && matches!((last.physical, physical), (Some(a), Some(b)) if a + last.len == b) =>
                {
                    last.len += len
                }
                _ => out.push(FileExtent {
                    logical,
                    len,
                    physical,
                }),
            }
        }
        Ok(out)
    }

    fn check_block(&self, ino: u32, pblk: u64, count: u64) -> Result<(), FsError> {
        if pblk
            .checked_add(count)
            .is_none_or(|e| e > self.sb.blocks_count)
            || pblk < u64::from(self.sb.first_data_block)
        {
            return Err(self.corrupt(format!(
                "inode {ino}: blocks {pblk}+{count} lie outside the filesystem"
            )));
        }
        Ok(())
    }

    /// Every block an extent-mapped inode holds, as (first, count) runs: its extents (written
    /// or not, past its size too) and the tree's own index and leaf blocks.
    pub(super) fn extent_blocks(&self, inode: &Inode) -> Result<Vec<(u64, u64)>, FsError> {
        let (mut leaves, mut nodes) = (Vec::new(), Vec::new());
        let bound = self.sb.blocks_count;
        self.walk_extents(
            inode.ino,
            &inode.block,
            MAX_DEPTH + 1,
            &mut leaves,
            &mut nodes,
            bound,
        )?;
        Ok(leaves
            .into_iter()
            .map(|(_, count, pblk, _)| (pblk, count))
            .chain(nodes.into_iter().map(|n| (n, 1)))
            .collect())
    }

    /// Every block an inode mapped by indirect blocks (ext2/3) holds, as (first, 1) runs: its
    /// data blocks and the indirect blocks themselves, at most `limit` of them (`None`: more,
    /// which the inode's own block count does not allow).
    pub(super) fn indirect_blocks(
        &self,
        inode: &Inode,
        limit: u64,
    ) -> Result<Option<Vec<(u64, u64)>>, FsError> {
        let mut out = Vec::new();
        let mut todo: Vec<(u64, u32)> = Vec::new();
        for slot in 0..15usize {
            let p = u64::from(le32(&inode.block, 4 * slot));
            if p != 0 {
                todo.push((p, slot.saturating_sub(11) as u32));
            }
        }
        let bs = self.block_size();
        while let Some((p, level)) = todo.pop() {
            self.check_block(inode.ino, p, 1)?;
            out.push((p, 1));
            if out.len() as u64 > limit {
                return Ok(None);
            }
            if level > 0 {
                let data = self.read_fs(p * bs, bs, "indirect block")?;
                for c in data.chunks_exact(4) {
                    let q = u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                    if q != 0 {
                        todo.push((q, level - 1));
                    }
                }
            }
        }
        Ok(Some(out))
    }

    /// Walks an extent tree from `node`: each leaf entry as (logical block, count, physical
    /// block, unwritten) into `leaves`, each index or leaf block below the inode into `nodes`;
    /// more than `max_leaves` + 16 entries is damage.
    fn walk_extents(
        &self,
        ino: u32,
        node: &[u8],
        depth_left: u16,
        leaves: &mut Vec<(u64, u64, u64, bool)>,
        nodes: &mut Vec<u64>,
        max_leaves: u64,
    ) -> Result<(), FsError> {
        let bad = |why: String| self.corrupt(format!("inode {ino}: extent tree: {why}"));
        if node.len() < 12 || le16(node, 0) != EXTENT_MAGIC {
            return Err(bad("bad node magic".into()));
        }
        let entries = usize::from(le16(node, 2));
        let max = usize::from(le16(node, 4));
        let depth = le16(node, 6);
        if entries > max || 12 + 12 * max > node.len() {
            return Err(bad(format!(
                "{entries} entries of at most {max} do not fit the node"
            )));
        }
        if depth >= depth_left {
            return Err(bad(format!("depth {depth} is too deep")));
        }
        for i in 0..entries {
            let e = &node[12 + 12 * i..24 + 12 * i];
            if depth == 0 {
                let (lblk, len, pblk, unwritten) = leaf_entry(e);
                if len == 0 {
                    continue;
                }
                self.check_block(ino, pblk, len)?;
                if leaves.len() as u64 > max_leaves + 16 {
                    return Err(bad("more extents than the file has blocks".into()));
                }
                leaves.push((lblk, len, pblk, unwritten));
            } else {
                let child = index_child(e);
                self.check_block(ino, child, 1)?;
                let bs = self.block_size();
                let block = self.read_fs(child * bs, bs, "extent tree node")?;
                if le16(&block, 6) != depth - 1 {
                    return Err(bad(format!(
                        "node at block {child} has depth {}, expected {}",
                        le16(&block, 6),
                        depth - 1
                    )));
                }
                nodes.push(child);
                self.walk_extents(ino, &block, depth, leaves, nodes, max_leaves)?;
            }
        }
        Ok(())
    }

    fn walk_indirect(
        &self,
        inode: &Inode,
        nblocks: u64,
        runs: &mut Vec<(u64, u64, Option<u64>)>,
    ) -> Result<(), FsError> {
        let per = self.block_size() / 4;
        let mut push =
            |runs: &mut Vec<(u64, u64, Option<u64>)>, lblk: u64, pblk: u64| match runs.last_mut() {
                Some((l, c, Some(p))) if *l + *c == lblk && *p + *c == pblk => *c += 1,
                _ => runs.push((lblk, 1, Some(pblk))),
            };
        for i in 0..12u64 {
            if i >= nblocks {
                return Ok(());
            }
            let p = u64::from(le32(&inode.block, 4 * i as usize));
            if p != 0 {
                self.check_block(inode.ino, p, 1)?;
                push(runs, i, p);
            }
        }
        let mut base = 12u64;
        for (level, slot) in [(1u32, 12usize), (2, 13), (3, 14)] {
            let span = per.pow(level);
            if base >= nblocks {
                break;
            }
            let p = u64::from(le32(&inode.block, 4 * slot));
            if p != 0 {
                self.indirect(inode.ino, p, level, base, nblocks, runs, &mut push)?;
            }
            base += span;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn indirect(
        &self,
        ino: u32,
        block: u64,
        level: u32,
        base: u64,
        nblocks: u64,
        runs: &mut Vec<(u64, u64, Option<u64>)>,
        push: &mut impl FnMut(&mut Vec<(u64, u64, Option<u64>)>, u64, u64),
    ) -> Result<(), FsError> {
        self.check_block(ino, block, 1)?;
        let bs = self.block_size();
        let per = bs / 4;
        let data = self.read_fs(block * bs, bs, "indirect block")?;
        let span = per.pow(level - 1);
        for i in 0..per {
            let lblk = base + i * span;
            if lblk >= nblocks {
                break;
            }
            let p = u64::from(le32(&data, 4 * i as usize));
            if p == 0 {
                continue;
            }
            if level == 1 {
                self.check_block(ino, p, 1)?;
                push(runs, lblk, p);
            } else {
                self.indirect(ino, p, level - 1, lblk, nblocks, runs, push)?;
            }
        }
        Ok(())
    }

    /// All bytes of an inode's content (directories, slow symlinks); bounded by `limit`.
    pub fn read_content(&self, inode: &Inode, limit: u64) -> Result<Vec<u8>, FsError> {
        if inode.size > limit {
            return Err(self.corrupt(format!(
                "inode {}: size {} exceeds the {limit}-byte limit for this object",
                inode.ino, inode.size
            )));
        }
        if inode.flags & INLINE_DATA_FL != 0 {
            let mut v = self.inline(inode)?;
            v.resize(inode.size as usize, 0);
            return Ok(v);
        }
        let mut out = vec![0u8; inode.size as usize];
        for e in self.file_extents(inode)? {
            if let Some(p) = e.physical {
                let bytes = self.read_abs(p, e.len, "file content")?;
                out[e.logical as usize..(e.logical + e.len) as usize].copy_from_slice(&bytes);
            }
        }
        Ok(out)
    }

    /// Inline data: the 60 bytes of `i_block`, then the `system.data` attribute's value, cut
    /// to the inode's size. It may be shorter than the size: the rest reads as zeros.
    pub fn inline(&self, inode: &Inode) -> Result<Vec<u8>, FsError> {
        let mut v = inode.block.to_vec();
        let ibody = 128 + usize::from(inode.extra_isize);
        if inode.size > 60 && inode.raw.len() >= ibody + 4 && le32(&inode.raw, ibody) == 0xEA02_0000
        {
            let region = &inode.raw[ibody + 4..];
            let mut pos = 0;
            while pos + 16 <= region.len() && le32(region, pos) != 0 {
                let name_len = usize::from(region[pos]);
                let (index, offs, size) = (
                    region[pos + 1],
                    usize::from(le16(region, pos + 2)),
                    le32(region, pos + 8) as usize,
                );
                if pos + 16 + name_len > region.len() {
                    break;
                }
                if index == 7 && &region[pos + 16..pos + 16 + name_len] == b"data" {
                    let end = offs.checked_add(size).filter(|e| *e <= region.len());
                    let Some(end) = end else {
                        return Err(self.corrupt(format!(
                            "inode {}: inline data attribute out of bounds",
                            inode.ino
                        )));
                    };
                    v.extend_from_slice(&region[offs..end]);
                }
                pos = (pos + 16 + name_len + 3) & !3;
            }
        }
        // Past the inline bytes a file reads as zeros (the kernel's `ext4_readpage_inline`;
        // `mke2fs -d` writes a sparse file this way); the callers pad, bounded by their limits.
        v.truncate(usize::try_from(inode.size).unwrap_or(usize::MAX));
        Ok(v)
    }

    /// Directory entries (name, inode), without `.` and `..`.
    pub fn dir_entries(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, u32)>, FsError> {
        let bs = self.block_size() as usize;
        let limit = 1u64 << 30;
        let data = self.read_content(inode, limit)?;
        let mut out = Vec::new();
        let (body, block) = if inode.flags & INLINE_DATA_FL != 0 {
            // Inline directories: the parent inode number, then entries in the rest.
            if data.len() < 4 {
                return Err(self.corrupt(format!("directory {}: inline data too short", inode.ino)));
            }
            (&data[4..], data.len() - 4)
        } else {
            (&data[..], bs)
        };
        for (bi, blk) in body.chunks(block.max(1)).enumerate() {
            let mut pos = 0usize;
            while pos + 8 <= blk.len() {
                let ino = le32(blk, pos);
                let rec_len = rec_len_from_disk(le16(blk, pos + 4), block);
                // The name length is one byte (e2fsprogs: `name_len & 0xff`); the next byte is
                // the file type, 0 without `filetype`, 0xDE in a checksum tail.
                let name_len = usize::from(blk[pos + 6]);
                if rec_len < 8
                    || rec_len % 4 != 0
                    || pos + rec_len > blk.len()
                    || name_len + 8 > rec_len
                {
                    return Err(self.corrupt(format!(
                        "directory {}: bad entry at block {bi} offset {pos} (rec_len {rec_len}, name_len {name_len})",
                        inode.ino
                    )));
                }
                let name = &blk[pos + 8..pos + 8 + name_len];
                if ino != 0 && name != b"." && name != b".." {
                    if ino > self.sb.inodes_count {
                        return Err(self.corrupt(format!(
                            "directory {}: entry names inode {ino} beyond the inode count",
                            inode.ino
                        )));
                    }
                    out.push((name.to_vec(), ino));
                }
                pos += rec_len;
            }
        }
        Ok(out)
    }
}

/// A directory entry's record length as stored (`ext4_rec_len_from_disk`, e2fsprogs'
/// `ext2fs_get_rec_len`): in blocks of 64 KiB a record spanning the whole block (an emptied
/// block, an htree node) is stored as 65535 or 0, and larger lengths keep their top bits in
/// the low two.
fn rec_len_from_disk(raw: u16, block: usize) -> usize {
    if block < 65536 {
        return usize::from(raw);
    }
    match raw {
        0 | 65535 => block,
        n => usize::from(n & 65532) | (usize::from(n & 3) << 16),
    }
}

#[cfg(test)]
mod tests {
    use super::rec_len_from_disk;

    #[test]
    fn record_lengths_of_64k_blocks_decode_as_the_kernel_does() {
        assert_eq!(rec_len_from_disk(12, 4096), 12);
        assert_eq!(
            rec_len_from_disk(0, 4096),
            0,
            "zero stays an error below 64 KiB"
        );
        assert_eq!(rec_len_from_disk(65535, 65536), 65536);
        assert_eq!(rec_len_from_disk(0, 65536), 65536);
        assert_eq!(rec_len_from_disk(65524, 65536), 65524);
        // 65,540 would not fit in 16 bits: its top bit goes to the low two.
        assert_eq!(rec_len_from_disk(4 | 1, 65536), 65540);
    }
}
