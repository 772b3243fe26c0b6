//! The filesystem's skeleton: every block the filesystem has in use except regular-file data,
//! the journal's body (a clean journal's old transactions are never read again) and, with
//! group checksums, the never-used tail of each inode table. Kept with
//! a checkin as a layout hint, it lets a checkout put the metadata back byte for byte and each
//! file's content where it was, instead of rebuilding the filesystem.

use super::{le32, Ext4};
use crate::fs::FsError;

const INODE_UNINIT: u16 = 1;
const BLOCK_UNINIT: u16 = 2;
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// Merges sorted-or-not `[start, end)` ranges into sorted, disjoint ones.
pub fn merge_ranges(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.retain(|(s, e)| s < e);
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `keep` minus `cut`; both sorted and disjoint.
pub fn subtract_ranges(keep: &[(u64, u64)], cut: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(keep.len());
    let mut ci = 0;
    for &(s, e) in keep {
        let mut pos = s;
        while ci < cut.len() && cut[ci].1 <= pos {
            ci += 1;
        }
        let mut j = ci;
        while pos < e && j < cut.len() && cut[j].0 < e {
            if cut[j].0 > pos {
                out.push((pos, cut[j].0));
            }
            pos = pos.max(cut[j].1);
            j += 1;
        }
        if pos < e {
            out.push((pos, e));
        }
    }
    out
}

impl Ext4 {
    /// Absolute byte ranges of the skeleton: blocks in use (block bitmaps, plus every group's
    /// own metadata), minus `file_data` (absolute byte ranges of regular-file content; each is
    /// widened to whole blocks) and minus the journal's blocks after its superblock.
    pub fn skeleton_ranges(&self, file_data: &[(u64, u64)]) -> Result<Vec<(u64, u64)>, FsError> {
        let bs = self.block_size();
        let sb = &self.sb;
        let nblocks = sb.blocks_count;
        let bpg = u64::from(sb.blocks_per_group);
        // With bigalloc, a bitmap bit stands for a cluster of `ratio` blocks.
        let ratio = sb.cluster_ratio().max(1);
        let first = u64::from(sb.first_data_block);
        let itable_blocks =
            (u64::from(sb.inodes_per_group) * u64::from(sb.inode_size)).div_ceil(bs);
        let uninit_valid =
            sb.feature_ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0;
        let mut used: Vec<(u64, u64)> = vec![(0, first + 1)]; // boot block(s) and superblock
        let check = |what: &str, g: usize, blk: u64, count: u64| {
            if blk.checked_add(count).is_none_or(|e| e > nblocks) {
                Err(self.corrupt(format!(
                    "group {g}: {what} at block {blk} lies outside the filesystem"
                )))
            } else {
                Ok(())
            }
        };
        let mut bitmap = vec![0u8; bs as usize];
        let mut unused_tables: Vec<(u64, u64)> = Vec::new();
        for (g, grp) in self.groups.iter().enumerate() {
            let start = first + g as u64 * bpg;
            let count = bpg.min(nblocks - start);
            check("block bitmap", g, grp.block_bitmap, 1)?;
            check("inode bitmap", g, grp.inode_bitmap, 1)?;
            check("inode table", g, grp.inode_table, itable_blocks)?;
            used.push((grp.block_bitmap, grp.block_bitmap + 1));
            used.push((grp.inode_bitmap, grp.inode_bitmap + 1));
            // With group checksums, the inodes past `itable_unused` have never been used (the
            // kernel and e2fsck treat them as free and zero); only the rest of the table counts.
            let in_use = if uninit_valid {
                if grp.flags & INODE_UNINIT != 0 {
                    0
                } else {
                    u64::from(sb.inodes_per_group.saturating_sub(grp.itable_unused))
                }
            } else {
                u64::from(sb.inodes_per_group)
            };
            let table = (in_use * u64::from(sb.inode_size)).div_ceil(bs);
            used.push((grp.inode_table, grp.inode_table + table));
            // The block bitmap marks the whole table; its unused tail is cut below.
            unused_tables.push((grp.inode_table + table, grp.inode_table + itable_blocks));
            for (s, e) in self.layout.metadata_of_group(g as u64) {
                used.push((s.min(nblocks), e.min(nblocks)));
            }
            if uninit_valid && grp.flags & BLOCK_UNINIT != 0 {
                continue;
            }
            self.src
                .read_at(&mut bitmap, self.offset + grp.block_bitmap * bs)?;
            let mut run: Option<u64> = None;
            let block = |i: u64| (start + i * ratio).min(start + count);
            for i in 0..count.div_ceil(ratio) {
                let set = bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0;
                match (set, run) {
                    (true, None) => run = Some(block(i)),
                    (false, Some(s)) => {
                        used.push((s, block(i)));
                        run = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = run {
                used.push((s, start + count));
            }
            if used.len() > 64 << 20 {
                return Err(self.corrupt("block bitmaps are too fragmented".into()));
            }
        }
        let used: Vec<(u64, u64)> = merge_ranges(used)
            .into_iter()
            .map(|(s, e)| (self.offset + s * bs, self.offset + e * bs))
            .collect();
        let mut cut: Vec<(u64, u64)> = file_data
            .iter()
            .map(|&(s, e)| (s, s + (e - s).div_ceil(bs) * bs))
            .collect();
        cut.extend(
            unused_tables
                .iter()
                .map(|&(s, e)| (self.offset + s * bs, self.offset + e * bs)),
        );
        let jinum = le32(&sb.raw, 0xE0);
        if sb.feature_compat & COMPAT_HAS_JOURNAL != 0 && jinum != 0 {
            let j = self.inode(jinum)?;
            for e in self.file_extents(&j)? {
                if let Some(p) = e.physical {
                    let skip = if e.logical == 0 { bs.min(e.len) } else { 0 };
                    cut.push((p + skip, p + e.len));
                }
            }
        }
        Ok(subtract_ranges(&used, &merge_ranges(cut)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_arithmetic() {
        assert_eq!(
            merge_ranges(vec![(5, 9), (0, 2), (2, 3), (8, 12), (20, 20)]),
            vec![(0, 3), (5, 12)]
        );
        let keep = [(0, 10), (20, 30), (40, 50)];
        let cut = [(2, 4), (8, 25), (45, 60)];
        assert_eq!(
            subtract_ranges(&keep, &cut),
            vec![(0, 2), (4, 8), (25, 30), (40, 45)]
        );
        assert_eq!(subtract_ranges(&keep, &[]), keep.to_vec());
        assert_eq!(subtract_ranges(&keep, &[(0, 100)]), vec![]);
    }
}
