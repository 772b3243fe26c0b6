//! Orphans released, as a mount does after the journal replay: files deleted while they were
//! still open, named by the orphan list or by the orphan file (`orphan_file`), have their
//! inodes and blocks freed (bitmaps, group counts and their checksums); files whose truncate
//! (or extending direct write) was cut short lose the blocks past their size; the orphan file
//! is emptied and the superblock written as a mount writes it (`orphan_present` clear, the
//! free counts summed from the groups), so a filesystem imaged while mounted is as the kernel
//! would leave it and `e2fsck -fn` finds nothing to say. Only the common cases are released:
//! deleted inodes mapped by extents, by indirect blocks (ext2/3) or inline, with their external
//! xattr blocks (freed, or one reference fewer when shared); truncated regular files mapped
//! by extents (any depth; leaves rewritten with their checksums, emptied ones freed) or by a
//! block map (indirect blocks rewritten or freed), not with `bigalloc`; on a filesystem
//! without `quota` (whose files count the orphans). Anything else (an orphan file or a map
//! not as the kernel writes it) leaves everything as it is, for the next mount or `e2fsck -p`.

use std::collections::BTreeMap;

use super::blocks::{index_child, leaf_entry, EXTENT_MAGIC, MAX_DEPTH, UNWRITTEN};
use super::{le16, le32, Ext4};
use crate::fs::FsError;

const COMPAT_ORPHAN_FILE: u32 = 0x1000;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// `orphan_present`: the orphan file names orphans.
pub(super) const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x1_0000;
const RO_COMPAT_QUOTA: u32 = 0x100;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const ORPHAN_BLOCK_MAGIC: u32 = 0x0B10_CA04;

/// crc32c as ext4 chains it: no inversion on either side.
fn chain(crc: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!crc, data)
}

/// The superblock's own checksum (metadata_csum), over its first 1020 bytes.
pub(super) fn set_superblock_csum(sbuf: &mut [u8]) {
    let c = chain(!0, &sbuf[..0x3FC]);
    sbuf[0x3FC..0x400].copy_from_slice(&c.to_le_bytes());
}

/// CRC-16 (ANSI, reflected 0xA001), as `gdt_csum` uses it.
fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Blocks changed so far (filesystem block number -> bytes), read through.
struct Edits<'a> {
    fs: &'a Ext4,
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl Edits<'_> {
    fn block(&mut self, b: u64) -> Result<&mut Vec<u8>, FsError> {
        if !self.blocks.contains_key(&b) {
            let bs = self.fs.block_size();
            let data = self.fs.read_fs(b * bs, bs, "metadata block")?;
            self.blocks.insert(b, data);
        }
        Ok(self.blocks.get_mut(&b).expect("inserted above"))
    }
}

/// An orphan to release: the blocks it frees, and for a truncate (an orphan with links) what
/// the truncate leaves of it; without one, it is deleted.
struct Orphan {
    inode: super::Inode,
    freed: Vec<(u64, u64)>,
    cut: Option<Truncation>,
}

/// An orphan file's blocks (filesystem block numbers) with the inodes each names.
struct OrphanFile {
    ino: u32,
    generation: u32,
    blocks: Vec<(u64, Vec<u32>)>,
}

/// Blocks past which an orphan file is left to the next mount (the kernel makes them 32 to
/// 512 blocks long).
const ORPHAN_FILE_MAX_BLOCKS: u64 = 1 << 16;

/// The orphan file of a filesystem with `orphan_file`, its blocks checked (magic and, with
/// metadata_csum, checksum); `Ok(None)` when it is absent or not as the kernel writes it
/// (left to the next mount or e2fsck).
fn orphan_file(fs: &Ext4, csum: bool, seed: u32) -> Result<Option<OrphanFile>, FsError> {
    let sb = fs.superblock();
    let bs = fs.block_size();
    let ino = le32(&sb.raw, 0x280);
    if ino == 0 || ino > sb.inodes_count {
        return Ok(None);
    }
    let inode = fs.inode(ino)?;
    let nblocks = inode.size / bs;
    if inode.size % bs != 0 || nblocks > ORPHAN_FILE_MAX_BLOCKS {
        return Ok(None);
    }
    let generation = le32(&inode.raw, 0x64);
    let entries = ((bs - 8) / 4) as usize;
    let mut blocks = Vec::new();
    for e in fs.file_extents(&inode)? {
        let Some(at) = e.physical else {
            return Ok(None);
        };
        let first = (at - fs.offset) / bs;
        for b in first..first + e.len.div_ceil(bs) {
            if blocks.len() as u64 == nblocks {
                break;
            }
            let data = fs.read_fs(b * bs, bs, "orphan file block")?;
            let tail = bs as usize - 8;
            if le32(&data, tail) != ORPHAN_BLOCK_MAGIC
                || (csum
                    && le32(&data, tail + 4) != orphan_block_csum(&data, seed, ino, generation, b))
            {
                return Ok(None);
            }
            let names: Vec<u32> = (0..entries)
                .map(|i| le32(&data, 4 * i))
                .filter(|&n| n != 0)
                .collect();
            blocks.push((b, names));
        }
    }
    if blocks.len() as u64 != nblocks {
        // A hole in the orphan file: not as the kernel makes it.
        return Ok(None);
    }
    Ok(Some(OrphanFile {
        ino,
        generation,
        blocks,
    }))
}

/// An orphan file block's checksum: the inode number, its generation, the block's number and
/// its entries (not the tail), chained from the filesystem's seed.
fn orphan_block_csum(data: &[u8], seed: u32, ino: u32, generation: u32, block: u64) -> u32 {
    let c = chain(chain(seed, &ino.to_le_bytes()), &generation.to_le_bytes());
    chain(chain(c, &block.to_le_bytes()), &data[..data.len() - 8])
}

/// The blocks (image byte offset -> bytes) that release the orphans of `fs`, a view of a
/// recovered filesystem: those of the orphan list and those the orphan file names; then the
/// superblock as a mount writes it (no orphans, `orphan_present` clear, the free counts summed
/// from the groups). Empty when there is nothing to change, or when an orphan is of a kind
/// left to the next mount (then everything is left as the image has it).
pub(super) fn release(fs: &Ext4) -> Result<BTreeMap<u64, Vec<u8>>, FsError> {
    let sb = fs.superblock();
    let bs = fs.block_size();
    let isz = u64::from(sb.inode_size);
    // Geometry this code indexes by (the open checks most of it; a bitmap longer than its
    // block or an inode that straddles blocks is left alone rather than trusted).
    // With bigalloc a block bitmap's bit and a group's free count stand for a cluster.
    let ratio = sb.cluster_ratio();
    let cpg = match ratio {
        1 => u64::from(sb.blocks_per_group),
        _ => u64::from(le32(&sb.raw, 0x24)),
    };
    let odd = ratio == 0
        || cpg > 8 * bs
        || cpg.checked_mul(ratio) != Some(u64::from(sb.blocks_per_group))
        || u64::from(sb.inodes_per_group) > 8 * bs
        || !(128..=bs).contains(&isz)
        || bs % isz != 0;
    let has_file = sb.feature_compat & COMPAT_ORPHAN_FILE != 0;
    if odd || (!has_file && sb.feature_ro_compat & RO_COMPAT_ORPHAN_PRESENT != 0) {
        return Ok(BTreeMap::new());
    }
    let csum = sb.feature_ro_compat & RO_COMPAT_METADATA_CSUM != 0;
    let seed = if sb.feature_incompat & INCOMPAT_CSUM_SEED != 0 {
        le32(&sb.raw, 0x270)
    } else {
        chain(!0, &sb.raw[0x68..0x78])
    };
    let file = if has_file {
        match orphan_file(fs, csum, seed)? {
            Some(f) => Some(f),
            None => return Ok(BTreeMap::new()),
        }
    } else {
        None
    };
    // The list (each orphan's dtime names the next), then the orphan file's entries.
    let mut orphans = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // External xattr blocks the orphans name, with how many of them name each.
    let mut xattr_refs: BTreeMap<u64, u32> = BTreeMap::new();
    let mut next = le32(&sb.raw, 0xE8);
    let mut named = file
        .iter()
        .flat_map(|f| f.blocks.iter().flat_map(|(_, n)| n.iter().copied()));
    loop {
        let ino = if next != 0 {
            next
        } else if let Some(n) = named.next() {
            n
        } else {
            break;
        };
        if !seen.insert(ino) {
            return Err(fs.corrupt(format!("orphan inode {ino} is named twice")));
        }
        let inode = fs.inode(ino)?;
        if inode.links != 0 {
            // A truncate (or an extending direct write) cut short: the blocks past the size go.
            let Some(mut cut) = truncated(fs, &inode, csum.then_some(seed))? else {
                return Ok(BTreeMap::new());
            };
            if next != 0 {
                next = le32(&inode.raw, 0x14);
            }
            orphans.push(Orphan {
                inode,
                freed: std::mem::take(&mut cut.freed),
                cut: Some(cut),
            });
            continue;
        }
        if inode.file_acl != 0 {
            let b = inode.file_acl;
            if b >= sb.blocks_count || b < u64::from(sb.first_data_block) {
                return Ok(BTreeMap::new());
            }
            *xattr_refs.entry(b).or_insert(0u32) += 1;
        }
        let Some(blocks) = blocks_of(fs, &inode)? else {
            return Ok(BTreeMap::new());
        };
        if next != 0 {
            next = le32(&inode.raw, 0x14);
        }
        orphans.push(Orphan {
            inode,
            freed: blocks,
            cut: None,
        });
    }
    if !orphans.is_empty() && sb.feature_ro_compat & RO_COMPAT_QUOTA != 0 {
        // The quota files count the orphans' inodes and blocks; a mount releases them with
        // their quota, so they are left to it.
        return Ok(BTreeMap::new());
    }
    let mut ed = Edits {
        fs,
        blocks: BTreeMap::new(),
    };
    // An xattr block loses one reference per orphan naming it, and is freed with its last
    // (shared blocks are reference counted; their checksum covers the count).
    for (&b, &n) in &xattr_refs {
        let data = ed.block(b)?;
        let (magic, refs, nblocks) = (le32(data, 0), le32(data, 4), le32(data, 8));
        if magic != 0xEA02_0000 || nblocks != 1 || refs < n {
            return Ok(BTreeMap::new());
        }
        if refs == n {
            // Freed with the first orphan that names it.
            let deleted = |o: &&mut Orphan| o.cut.is_none() && o.inode.file_acl == b;
            if let Some(o) = orphans.iter_mut().find(deleted) {
                o.freed.push((b, 1));
            }
        } else {
            data[4..8].copy_from_slice(&(refs - n).to_le_bytes());
            if csum {
                data[0x10..0x14].fill(0);
                let c = chain(chain(seed, &b.to_le_bytes()), data);
                data[0x10..0x14].copy_from_slice(&c.to_le_bytes());
            }
        }
    }
    // The orphan file emptied: its entries zero, its checksums again.
    if let Some(f) = &file {
        for (b, names) in &f.blocks {
            if names.is_empty() {
                continue;
            }
            let data = ed.block(*b)?;
            let tail = data.len() - 8;
            data[..tail].fill(0);
            if csum {
                let c = orphan_block_csum(data, seed, f.ino, f.generation, *b);
                data[tail + 4..].copy_from_slice(&c.to_le_bytes());
            }
        }
    }
    let ipg = u64::from(sb.inodes_per_group);
    let bpg = u64::from(sb.blocks_per_group);
    let first = u64::from(sb.first_data_block);
    let when = le32(&sb.raw, 0x30).max(1);
    // Per group: blocks freed, inodes freed, directories freed.
    let mut freed: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    for Orphan {
        inode,
        freed: blocks,
        cut: truncate,
    } in &orphans
    {
        let ino = inode.ino;
        let (g, index) = (u64::from(ino - 1) / ipg, u64::from(ino - 1) % ipg);
        let Some(&grp) = fs.groups.get(g as usize) else {
            return Ok(BTreeMap::new());
        };
        let at = grp.inode_table * bs + index * isz;
        let blk = ed.block(at / bs)?;
        let raw = &mut blk[(at % bs) as usize..][..isz as usize];
        if let Some(cut) = truncate {
            // Truncated: its extents end at its size, its block count follows, and it is
            // off the list (dtime carried the chain).
            raw[0x28..0x28 + 60].copy_from_slice(&cut.area);
            let freed_blocks = blocks.iter().fold(0u64, |a, &(_, n)| a.saturating_add(n));
            let unit = if inode.flags & HUGE_FILE_FL != 0 {
                1
            } else {
                bs / 512
            };
            let count = u64::from(le32(raw, 0x1C)) | (u64::from(le16(raw, 0x74)) << 32);
            let count = count.saturating_sub(freed_blocks.saturating_mul(unit));
            raw[0x1C..0x20].copy_from_slice(&(count as u32).to_le_bytes());
            raw[0x74..0x76].copy_from_slice(&((count >> 32) as u16).to_le_bytes());
            raw[0x14..0x18].fill(0);
        } else {
            // Deleted now (dtime set; the chain it carried is gone).
            raw[0x14..0x18].copy_from_slice(&when.to_le_bytes());
        }
        if csum {
            inode_csum(raw, seed, ino);
        }
        for (b, data) in truncate.iter().flat_map(|c| c.rewritten.iter()) {
            ed.block(*b)?.clone_from(data);
        }
        if truncate.is_none() {
            let bit = ed.block(grp.inode_bitmap)?;
            bit[(index / 8) as usize] &= !(1 << (index % 8));
            let e = freed.entry(g).or_default();
            e.1 += 1;
            e.2 += u64::from(inode.mode & 0xF000 == 0x4000);
        }
        for &(start, count) in blocks {
            for b in start..start + count {
                let (g, index) = ((b - first) / bpg, (b - first) % bpg / ratio);
                let Some(grp) = fs.groups.get(g as usize) else {
                    return Ok(BTreeMap::new());
                };
                let bitmap = grp.block_bitmap;
                let byte = &mut ed.block(bitmap)?[(index / 8) as usize];
                if *byte & (1 << (index % 8)) != 0 {
                    *byte &= !(1 << (index % 8));
                    freed.entry(g).or_default().0 += 1;
                }
            }
        }
    }
    let dsz = u64::from(sb.desc_size);
    let per_block = bs / dsz;
    for (&g, &(nb, ni, nd)) in &freed {
        let grp = fs.groups[g as usize];
        // Only the bitmaps that changed get their checksums again (an untouched inode bitmap
        // may be uninitialised, INODE_UNINIT, with no checksum to keep).
        let block_bits = match nb {
            0 => None,
            _ => Some(ed.block(grp.block_bitmap)?[..(cpg / 8) as usize].to_vec()),
        };
        let inode_bits = match ni {
            0 => None,
            _ => Some(ed.block(grp.inode_bitmap)?[..(ipg / 8) as usize].to_vec()),
        };
        let at = fs.layout.desc_block(g / per_block);
        let d = &mut ed.block(at)?[((g % per_block) * dsz) as usize..][..dsz as usize];
        add(d, 0x0C, 0x2C, dsz, nb as i64);
        add(d, 0x0E, 0x2E, dsz, ni as i64);
        add(d, 0x10, 0x30, dsz, -(nd as i64));
        if csum {
            for (bits, lo, hi) in [(block_bits, 0x18, 0x38), (inode_bits, 0x1A, 0x3A)] {
                let Some(bits) = bits else { continue };
                let c = chain(seed, &bits);
                d[lo..lo + 2].copy_from_slice(&(c as u16).to_le_bytes());
                if dsz >= 64 {
                    d[hi..hi + 2].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
                }
            }
        }
        desc_csum(d, g as u32, sb, seed);
    }
    // The free counts a mount computes from the groups (the superblock's are kept lazily).
    let (mut free_blocks, mut free_inodes) = (0u64, 0u64);
    for g in 0..fs.groups.len() as u64 {
        let at = fs.layout.desc_block(g / per_block);
        let d = &ed.block(at)?[((g % per_block) * dsz) as usize..][..dsz as usize];
        free_blocks += count(d, 0x0C, 0x2C, dsz) * ratio;
        free_inodes += count(d, 0x0E, 0x2E, dsz);
    }
    // The superblock: no orphans, the counts a mount would write.
    let sb_at = 1024 / bs;
    let sbuf = &mut ed.block(sb_at)?[(1024 % bs) as usize..][..1024];
    let before = sbuf.to_vec();
    sbuf[0xE8..0xEC].fill(0);
    let ro_compat = le32(sbuf, 0x64) & !RO_COMPAT_ORPHAN_PRESENT;
    sbuf[0x64..0x68].copy_from_slice(&ro_compat.to_le_bytes());
    sbuf[0x0C..0x10].copy_from_slice(&(free_blocks as u32).to_le_bytes());
    if sb.feature_incompat & 0x80 != 0 {
        sbuf[0x158..0x15C].copy_from_slice(&((free_blocks >> 32) as u32).to_le_bytes());
    }
    sbuf[0x10..0x14].copy_from_slice(&(free_inodes as u32).to_le_bytes());
    if csum {
        set_superblock_csum(sbuf);
    }
    if orphans.is_empty() && *sbuf == before[..] {
        // Nothing a mount would change.
        return Ok(BTreeMap::new());
    }
    let off = fs.offset;
    Ok(ed
        .blocks
        .into_iter()
        .map(|(b, data)| (off + b * bs, data))
        .collect())
}

/// `EXT4_HUGE_FILE_FL`: the inode's block count is in filesystem blocks, not sectors.
const HUGE_FILE_FL: u32 = 0x4_0000;

/// What a truncate leaves of an inode: its new block area, the runs it frees and the extent
/// tree blocks it rewrites (filesystem block, bytes).
struct Truncation {
    area: [u8; 60],
    freed: Vec<(u64, u64)>,
    rewritten: Vec<(u64, Vec<u8>)>,
}

/// For a regular file (mapped by extents or by a block map), what the mount's truncate to its
/// size leaves; `None` for any other inode, or a tree not as the kernel writes it (left to the
/// mount).
fn truncated(
    fs: &Ext4,
    inode: &super::Inode,
    csum_seed: Option<u32>,
) -> Result<Option<Truncation>, FsError> {
    let mut area = inode.block;
    if inode.mode & 0xF000 != 0x8000 || inode.flags & super::inode::INLINE_DATA_FL != 0 {
        return Ok(None);
    }
    if fs.superblock().cluster_ratio() != 1 {
        // A cut inside a cluster keeps the cluster: left to the mount.
        return Ok(None);
    }
    let bs = fs.block_size();
    let keep = inode.size.div_ceil(bs);
    if keep == 0 {
        // Cut to nothing (as `copytruncate` does): every block goes, whatever maps them; an
        // extent root is left empty at depth 0, a block map all zero.
        let Some(all) = blocks_of(fs, inode)? else {
            return Ok(None);
        };
        area.fill(0);
        if inode.flags & super::inode::EXTENTS_FL != 0 {
            empty_root(&mut area);
        }
        return Ok(Some(Truncation {
            area,
            freed: all,
            rewritten: Vec::new(),
        }));
    }
    let mut cut = Cut {
        fs,
        inode,
        keep,
        freed: Vec::new(),
        rewritten: Vec::new(),
        budget: 1 << 16,
        csum_seed,
    };
    if inode.flags & super::inode::EXTENTS_FL == 0 {
        // A block map (ext2/3): 12 direct pointers, then one tree each of one, two and three
        // levels of indirect blocks.
        let per = bs / 4;
        let mut first = 0u64;
        for slot in 0..15usize {
            let level = slot.saturating_sub(11) as u32;
            let span = per.saturating_pow(level);
            let p = u64::from(le32(&area, 4 * slot));
            if p != 0 && first.saturating_add(span) > keep && !cut.map(p, level, first)? {
                return Ok(None);
            }
            if p != 0 && first >= keep {
                area[4 * slot..4 * slot + 4].fill(0);
            }
            first = first.saturating_add(span);
        }
        return Ok(Some(Truncation {
            area,
            freed: cut.freed,
            rewritten: cut.rewritten,
        }));
    }
    let depth = le16(&area, 6);
    match cut.node(&mut area, depth)? {
        None => Ok(None),
        Some(kept) => {
            if !kept {
                // Nothing left under the root: an empty leaf in the inode, as the kernel
                // leaves it.
                area.fill(0);
                empty_root(&mut area);
            }
            Ok(Some(Truncation {
                area,
                freed: cut.freed,
                rewritten: cut.rewritten,
            }))
        }
    }
}

/// An empty extent tree in an inode (zeroed before): a leaf at depth 0 with room for four.
fn empty_root(area: &mut [u8; 60]) {
    area[0..2].copy_from_slice(&EXTENT_MAGIC.to_le_bytes());
    area[4..6].copy_from_slice(&4u16.to_le_bytes());
}

/// An extent tree cut at `keep` blocks.
struct Cut<'a> {
    fs: &'a Ext4,
    inode: &'a super::Inode,
    keep: u64,
    freed: Vec<(u64, u64)>,
    rewritten: Vec<(u64, Vec<u8>)>,
    /// Tree blocks still allowed to be read (a hostile tree is left, not walked forever).
    budget: u32,
    /// The filesystem's checksum seed, with metadata_csum.
    csum_seed: Option<u32>,
}

impl Cut<'_> {
    /// Cuts the node in `node` (the inode's area, or a tree block), expected at `depth`:
    /// `Some(false)` when nothing is left in it, `None` when it is not as the kernel writes it.
    fn node(&mut self, node: &mut [u8], depth: u16) -> Result<Option<bool>, FsError> {
        let entries = usize::from(le16(node, 2));
        if le16(node, 0) != EXTENT_MAGIC
            || le16(node, 6) != depth
            || depth > MAX_DEPTH
            || entries > usize::from(le16(node, 4))
            || 12 + 12 * entries > node.len()
        {
            return Ok(None);
        }
        let blocks_count = self.fs.superblock().blocks_count;
        let mut kept: Vec<[u8; 12]> = Vec::new();
        for i in 0..entries {
            let mut e: [u8; 12] = node[12 + 12 * i..][..12].try_into().expect("12 bytes");
            let logical = u64::from(le32(&e, 0));
            if depth == 0 {
                let (_, len, physical, unwritten) = leaf_entry(&e);
                if physical + len > blocks_count {
                    return Ok(None);
                }
                if logical >= self.keep {
                    self.freed.push((physical, len));
                    continue;
                }
                if logical + len > self.keep {
                    let stays = self.keep - logical;
                    self.freed.push((physical + stays, len - stays));
                    let flag = if unwritten { UNWRITTEN } else { 0 };
                    e[4..6].copy_from_slice(&(stays as u16 + flag).to_le_bytes());
                }
                kept.push(e);
                continue;
            }
            let child = index_child(&e);
            if child >= blocks_count || self.budget == 0 {
                return Ok(None);
            }
            self.budget -= 1;
            let bs = self.fs.block_size();
            let mut data = self.fs.read_fs(child * bs, bs, "extent tree block")?;
            // A subtree that starts at or past the cut goes whole (cut at 0 within it).
            let keep = self.keep;
            if logical >= keep {
                self.keep = logical;
            }
            let left = self.node(&mut data, depth - 1)?;
            self.keep = keep;
            match left {
                None => return Ok(None),
                Some(false) => self.freed.push((child, 1)),
                Some(true) => {
                    self.checksum(&mut data);
                    self.rewritten.push((child, data));
                    kept.push(e);
                }
            }
        }
        node[2..4].copy_from_slice(&(kept.len() as u16).to_le_bytes());
        node[12..12 + 12 * entries].fill(0);
        for (i, e) in kept.iter().enumerate() {
            node[12 + 12 * i..][..12].copy_from_slice(e);
        }
        Ok(Some(!kept.is_empty()))
    }

    /// Cuts the block-map pointer `p` of `level` (0: a data block; 1–3: an indirect block)
    /// whose range starts at logical block `first`: a range at or past the cut is freed
    /// whole, an indirect block across it rewritten with the pointers past it zeroed. `false`
    /// when the map is not as the kernel writes it.
    fn map(&mut self, p: u64, level: u32, first: u64) -> Result<bool, FsError> {
        let fs = self.fs;
        if p >= fs.superblock().blocks_count || p < u64::from(fs.superblock().first_data_block) {
            return Ok(false);
        }
        if level == 0 {
            if first >= self.keep {
                self.freed.push((p, 1));
            }
            return Ok(true);
        }
        if self.budget == 0 {
            return Ok(false);
        }
        self.budget -= 1;
        let bs = fs.block_size();
        let per = bs / 4;
        let span = per.saturating_pow(level - 1);
        let mut data = fs.read_fs(p * bs, bs, "indirect block")?;
        let mut changed = false;
        for i in 0..per {
            let child = u64::from(le32(&data, 4 * i as usize));
            let at = first.saturating_add(i.saturating_mul(span));
            if child == 0 {
                continue;
            }
            if at >= self.keep && first < self.keep {
                data[4 * i as usize..4 * i as usize + 4].fill(0);
                changed = true;
            }
            if (at >= self.keep || at.saturating_add(span) > self.keep)
                && !self.map(child, level - 1, at)?
            {
                return Ok(false);
            }
        }
        if first >= self.keep {
            self.freed.push((p, 1));
        } else if changed {
            self.rewritten.push((p, data));
        }
        Ok(true)
    }

    /// A tree block's checksum (metadata_csum): after its last possible entry, over what
    /// comes before, chained from the inode's number and generation.
    fn checksum(&self, data: &mut [u8]) {
        let tail = 12 + 12 * usize::from(le16(data, 4));
        let Some(seed) = self.csum_seed.filter(|_| tail + 4 <= data.len()) else {
            return;
        };
        let generation = le32(&self.inode.raw, 0x64);
        let c = chain(
            chain(
                chain(seed, &self.inode.ino.to_le_bytes()),
                &generation.to_le_bytes(),
            ),
            &data[..tail],
        );
        data[tail..tail + 4].copy_from_slice(&c.to_le_bytes());
    }
}

/// Every block `inode` holds, as (first, count) runs; `None` when its map holds more blocks
/// than its block count says (left to the next mount's e2fsck-like checks).
fn blocks_of(fs: &Ext4, inode: &super::Inode) -> Result<Option<Vec<(u64, u64)>>, FsError> {
    if inode.flags & super::inode::INLINE_DATA_FL != 0 {
        return Ok(Some(Vec::new()));
    }
    if inode.flags & super::inode::EXTENTS_FL == 0 {
        // Devices, fifos, sockets and fast symlinks hold no blocks (and their block array is
        // not a map); anything else here is mapped by indirect blocks.
        if inode.blocks == 0 {
            return Ok(Some(Vec::new()));
        }
        // No more than its block count says, nor than the filesystem has; past 4 Mi blocks
        // the release is left to the next mount rather than held in memory here.
        let sectors_per_block = (fs.block_size() / 512).max(1);
        let limit = (inode.blocks / sectors_per_block)
            .min(fs.superblock().blocks_count)
            .min(1 << 22);
        return fs.indirect_blocks(inode, limit);
    }
    fs.extent_blocks(inode).map(Some)
}

/// The count split over `lo` and `hi` (see [`add`]).
fn count(d: &[u8], lo: usize, hi: usize, dsz: u64) -> u64 {
    let mut v = u64::from(le16(d, lo));
    if dsz >= 64 {
        v |= u64::from(le16(d, hi)) << 16;
    }
    v
}

/// Adds `by` to the count split over `lo` (16 bits) and `hi` (16 bits, 64-byte descriptors).
fn add(d: &mut [u8], lo: usize, hi: usize, dsz: u64, by: i64) {
    let v = (count(d, lo, hi, dsz) as i64 + by).max(0) as u64;
    d[lo..lo + 2].copy_from_slice(&(v as u16).to_le_bytes());
    if dsz >= 64 {
        d[hi..hi + 2].copy_from_slice(&((v >> 16) as u16).to_le_bytes());
    }
}

/// The inode's checksum (metadata_csum), over the whole on-disk inode with both halves of the
/// checksum taken as zero.
fn inode_csum(raw: &mut [u8], seed: u32, ino: u32) {
    let generation = le32(raw, 0x64);
    let has_hi = raw.len() > 128 && u32::from(le16(raw, 0x80)) >= 4;
    raw[0x7C..0x7E].fill(0);
    if has_hi {
        raw[0x82..0x84].fill(0);
    }
    let c = chain(
        chain(chain(seed, &ino.to_le_bytes()), &generation.to_le_bytes()),
        raw,
    );
    raw[0x7C..0x7E].copy_from_slice(&(c as u16).to_le_bytes());
    if has_hi {
        raw[0x82..0x84].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
    }
}

/// A group descriptor's checksum: crc32c with metadata_csum, crc16 with `gdt_csum`.
fn desc_csum(d: &mut [u8], group: u32, sb: &super::Superblock, seed: u32) {
    if sb.feature_ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
        d[0x1E..0x20].fill(0);
        let c = chain(chain(seed, &group.to_le_bytes()), d);
        d[0x1E..0x20].copy_from_slice(&(c as u16).to_le_bytes());
    } else if sb.feature_ro_compat & RO_COMPAT_GDT_CSUM != 0 {
        let mut c = crc16(!0, &sb.raw[0x68..0x78]);
        c = crc16(c, &group.to_le_bytes());
        c = crc16(c, &d[..0x1E]);
        if d.len() > 0x20 {
            c = crc16(c, &d[0x20..]);
        }
        d[0x1E..0x20].copy_from_slice(&c.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_chain_as_ext4_does() {
        // crc32c of "123456789" is 0xE3069283; raw chaining from ~0 is its inverse.
        assert_eq!(!chain(!0, b"123456789"), 0xE306_9283);
        assert_eq!(chain(chain(!0, b"1234"), b"56789"), chain(!0, b"123456789"));
        // CRC-16/ARC of "123456789" is 0xBB3D (init 0); ext4 starts from ~0.
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
    }
}
