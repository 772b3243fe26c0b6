//! Where the group descriptors live: the classic table after the superblock (and its backups
//! in the groups that hold a superblock backup), and with `meta_bg` one descriptor block per
//! meta group (as many groups as a block holds descriptors) in that meta group's first group,
//! backed up in its second and last. Sans-IO: block numbers from the superblock alone.

use super::{le16, le32, Superblock, INCOMPAT_META_BG};

const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;

fn is_power_of(mut g: u64, base: u64) -> bool {
    while g > 1 && g % base == 0 {
        g /= base;
    }
    g == 1
}

/// The layout of one filesystem's group descriptors.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    first_data_block: u64,
    /// The block holding the primary superblock (1 with 1 KiB blocks, else 0; `bigalloc`
    /// makes `first_data_block` 0 even with 1 KiB blocks).
    sb_block: u64,
    blocks_per_group: u64,
    /// Descriptors per block.
    per_block: u64,
    /// Blocks the descriptors of every group take.
    desc_blocks: u64,
    /// Descriptor blocks in the classic table (all of them without `meta_bg`).
    classic: u64,
    /// Reserved blocks for growing the classic table (`resize_inode`).
    reserved: u64,
    /// The superblock fields `has_super` needs.
    sparse_super2: Option<(u64, u64)>,
    sparse_super: bool,
}

impl Layout {
    /// The layout of a filesystem of `ngroups` groups; an error names a superblock field
    /// that contradicts the geometry.
    pub(crate) fn new(sb: &Superblock, ngroups: u64) -> Result<Layout, String> {
        let bs = 1024u64 << sb.log_block_size;
        let per_block = bs / u64::from(sb.desc_size).max(1);
        if per_block == 0 {
            return Err(format!("group descriptor size {}", sb.desc_size));
        }
        let desc_blocks = ngroups.div_ceil(per_block);
        let classic = if sb.feature_incompat & INCOMPAT_META_BG != 0 {
            let first_meta_bg = u64::from(le32(&sb.raw, 0x104));
            if first_meta_bg > desc_blocks {
                return Err(format!(
                    "first meta block group {first_meta_bg} past the {desc_blocks} descriptor blocks"
                ));
            }
            first_meta_bg
        } else {
            desc_blocks
        };
        Ok(Layout {
            first_data_block: u64::from(sb.first_data_block),
            sb_block: u64::from(bs == 1024),
            blocks_per_group: u64::from(sb.blocks_per_group),
            per_block,
            desc_blocks,
            classic,
            reserved: u64::from(le16(&sb.raw, 0xCE)),
            sparse_super2: (sb.feature_compat & COMPAT_SPARSE_SUPER2 != 0).then(|| {
                (
                    u64::from(le32(&sb.raw, 0x24C)),
                    u64::from(le32(&sb.raw, 0x250)),
                )
            }),
            sparse_super: sb.feature_ro_compat & RO_COMPAT_SPARSE_SUPER != 0,
        })
    }

    /// True when group `g` holds a superblock (group 0) or a backup of it.
    pub(crate) fn has_super(&self, g: u64) -> bool {
        if let Some((a, b)) = self.sparse_super2 {
            return g == 0 || g == a || g == b;
        }
        if !self.sparse_super {
            return true;
        }
        g <= 1 || is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)
    }

    fn group_start(&self, g: u64) -> u64 {
        self.first_data_block + g * self.blocks_per_group
    }

    /// The first block of group `g` after its superblock copy, if it has one.
    fn super_end(&self, g: u64) -> u64 {
        match g {
            0 => self.sb_block + 1,
            _ => self.group_start(g) + u64::from(self.has_super(g)),
        }
    }

    /// The block holding descriptor block `i` (descriptors of groups `i * per_block ..`).
    pub(crate) fn desc_block(&self, i: u64) -> u64 {
        if i < self.classic {
            return self.sb_block + 1 + i;
        }
        let g = i * self.per_block;
        self.super_end(g)
    }

    /// Descriptor blocks in all.
    pub(crate) fn desc_blocks(&self) -> u64 {
        self.desc_blocks
    }

    /// Blocks of group `g` that hold superblock and descriptor copies (primary or backup),
    /// as `[start, end)` block ranges.
    pub(crate) fn metadata_of_group(&self, g: u64) -> Vec<(u64, u64)> {
        let start = self.group_start(g);
        let mut out = Vec::new();
        if self.has_super(g) {
            out.push((start, self.super_end(g) + self.classic + self.reserved));
        }
        let meta = g / self.per_block;
        let at = g % self.per_block;
        if meta >= self.classic
            && meta < self.desc_blocks
            && (at == 0 || at == 1 || at == self.per_block - 1)
        {
            let b = self.super_end(g);
            out.push((b, b + 1));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(bs_log: u32, desc: u16, meta_bg: bool, first_meta_bg: u32) -> Superblock {
        let mut raw = vec![0u8; 1024];
        raw[0x104..0x108].copy_from_slice(&first_meta_bg.to_le_bytes());
        Superblock {
            inodes_count: 0,
            blocks_count: 0,
            first_data_block: u32::from(bs_log == 0),
            log_block_size: bs_log,
            blocks_per_group: 8192 << bs_log,
            inodes_per_group: 0,
            inode_size: 256,
            feature_compat: 0,
            feature_incompat: if meta_bg { INCOMPAT_META_BG } else { 0 },
            feature_ro_compat: RO_COMPAT_SPARSE_SUPER,
            desc_size: desc,
            raw,
        }
    }

    #[test]
    fn superblock_backups() {
        assert!(is_power_of(27, 3) && is_power_of(125, 5) && !is_power_of(6, 3));
    }

    #[test]
    fn classic_and_meta_bg_descriptor_blocks() {
        // Classic, 1 KiB blocks, 64-byte descriptors: 16 per block, the table from block 2.
        let l = Layout::new(&sb(0, 64, false, 0), 40).unwrap();
        assert_eq!(l.desc_blocks(), 3);
        assert_eq!(
            (0..3).map(|i| l.desc_block(i)).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!(l.metadata_of_group(0), [(1, 5)]);
        assert_eq!(l.metadata_of_group(3), [(3 * 8192 + 1, 3 * 8192 + 5)]);
        assert!(l.metadata_of_group(2).is_empty());
        // meta_bg from the first descriptor block: block 0's in group 0 after the superblock,
        // block 1's in group 16 (no backup superblock there), block 2's in group 32.
        let l = Layout::new(&sb(0, 64, true, 0), 40).unwrap();
        assert_eq!(
            (0..3).map(|i| l.desc_block(i)).collect::<Vec<_>>(),
            [2, 16 * 8192 + 1, 32 * 8192 + 1]
        );
        // Group 1: superblock backup, no classic table, and meta group 0's backup.
        assert_eq!(
            l.metadata_of_group(1),
            [(8193, 8194), (8194, 8195)],
            "backup superblock then the meta group's descriptor backup"
        );
        assert_eq!(l.metadata_of_group(15), [(15 * 8192 + 1, 15 * 8192 + 2)]);
        assert!(l.metadata_of_group(14).is_empty());
        // Groups 25 (5²) and 27 (3³) hold superblock backups; 17 only a descriptor backup.
        assert_eq!(l.metadata_of_group(25), [(25 * 8192 + 1, 25 * 8192 + 2)]);
        assert_eq!(l.metadata_of_group(17), [(17 * 8192 + 1, 17 * 8192 + 2)]);
        // A classic part of one block, then meta groups.
        let l = Layout::new(&sb(2, 32, true, 1), 300).unwrap();
        assert_eq!(l.desc_blocks(), 3);
        assert_eq!(l.desc_block(0), 1);
        assert_eq!(l.desc_block(1), 128 * 32768);
        assert_eq!(l.metadata_of_group(0), [(0, 2)]);
        assert!(Layout::new(&sb(2, 32, true, 4), 300).is_err());
        // bigalloc with 1 KiB blocks: the first data block is 0, the superblock still in
        // block 1, the table from block 2.
        let mut s = sb(0, 64, false, 0);
        s.first_data_block = 0;
        let l = Layout::new(&s, 2).unwrap();
        assert_eq!(l.desc_block(0), 2);
        assert_eq!(l.metadata_of_group(0), [(0, 3)]);
    }
}
