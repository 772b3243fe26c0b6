//! Journal recovery (jbd2) in memory, for a filesystem whose image was taken while it was
//! mounted (`needs_recovery`). The committed transactions of the log are replayed with the
//! kernel's and e2fsck's rules (the log up to its last complete commit, revoke records, each
//! logged block copied to its home, later transactions winning), from one pass over the log's
//! headers and a read of each block to replay, into a [`Patched`] view of the image instead of
//! the image itself. The view also marks
//! the filesystem recovered: `needs_recovery` cleared in the superblock and the journal's log
//! emptied, checksums recomputed, as e2fsck leaves them. The image file is never written.
//!
//! Checksums of the log's blocks are not verified; the sequence numbers that chain a
//! transaction's blocks decide where the log ends. Fast commits (kept beside the log) are not
//! replayed: such a journal is refused by name.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{le32, Ext4, INCOMPAT_RECOVER};
use crate::fs::{FileExtent, FsError};
use crate::image::patched::Patched;
use crate::image::BlockSource;

const JBD2_MAGIC: u32 = 0xC03B_3998;
const DESCRIPTOR: u32 = 1;
const COMMIT: u32 = 2;
const SUPERBLOCK_V1: u32 = 3;
const SUPERBLOCK_V2: u32 = 4;
const REVOKE: u32 = 5;

const FEATURE_REVOKE: u32 = 0x1;
const FEATURE_64BIT: u32 = 0x2;
const FEATURE_ASYNC_COMMIT: u32 = 0x4;
const FEATURE_CSUM_V2: u32 = 0x8;
const FEATURE_CSUM_V3: u32 = 0x10;
const FEATURE_FAST_COMMIT: u32 = 0x20;
const FEATURES_KNOWN: u32 = FEATURE_REVOKE
    | FEATURE_64BIT
    | FEATURE_ASYNC_COMMIT
    | FEATURE_CSUM_V2
    | FEATURE_CSUM_V3
    | FEATURE_FAST_COMMIT;

const FLAG_ESCAPE: u32 = 1;
const FLAG_SAME_UUID: u32 = 2;
const FLAG_LAST_TAG: u32 = 8;

/// The most bytes of replayed blocks held in memory.
const REPLAY_MAX: u64 = 2 << 30;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The filesystem at `[offset, offset + len)` of `src` as a mount leaves it: a view of `src`
/// with its journal replayed and its orphans released; `None` when it neither needs recovery
/// nor has orphans (a filesystem frozen for a snapshot has a clean journal and may still have
/// files deleted while open).
pub fn recovered(
    src: &Arc<dyn BlockSource>,
    offset: u64,
    len: u64,
) -> Result<Option<Arc<dyn BlockSource>>, FsError> {
    let mut sb = vec![0u8; 1024];
    src.read_at(&mut sb, offset + 1024)?;
    if le32(&sb, 0x60) & INCOMPAT_RECOVER == 0 {
        if le32(&sb, 0xE8) == 0 && le32(&sb, 0x64) & super::orphan::RO_COMPAT_ORPHAN_PRESENT == 0 {
            return Ok(None);
        }
        // A damaged filesystem is reported by the open that follows, not here.
        let edits = Ext4::open(src.clone(), offset, len)
            .and_then(|fs| super::orphan::release(&fs))
            .unwrap_or_default();
        if edits.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Arc::new(Patched::new(src.clone(), edits))));
    }
    let fs = Ext4::open_unrecovered(src.clone(), offset, len)?;
    let mut log = Log::open(&fs)?;
    let replayed = log.replay()?;
    let bs = fs.block_size();
    let mut blocks: BTreeMap<u64, Vec<u8>> = replayed
        .into_iter()
        .map(|(b, data)| (offset + b * bs, data))
        .collect();
    // The superblock as recovered: the logged copy if the log held one, without
    // `needs_recovery`, its checksum (metadata_csum) recomputed.
    let sb_block = 1024 / bs;
    let at = (1024 % bs) as usize;
    let mut home = match blocks.remove(&(offset + sb_block * bs)) {
        Some(b) => b,
        None => fs.read_fs(sb_block * bs, bs, "superblock block")?,
    };
    let sbuf = &mut home[at..at + 1024];
    let incompat = le32(sbuf, 0x60) & !INCOMPAT_RECOVER;
    sbuf[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
    if le32(sbuf, 0x64) & 0x400 != 0 {
        super::orphan::set_superblock_csum(sbuf);
    }
    blocks.insert(offset + sb_block * bs, home);
    // The journal emptied: no log to replay, the next transaction's sequence.
    let (jsb_at, jsb) = log.emptied_superblock();
    blocks.insert(jsb_at, jsb);
    let view = Arc::new(Patched::new(src.clone(), blocks));
    // Then what a mount does next: files deleted while open (the orphan list) released. A
    // list that cannot be released (damaged, or a case `orphan` leaves) stays as it is, for
    // the next mount or e2fsck, as the image has it.
    let edits = Ext4::open(view.clone(), offset, len)
        .and_then(|recovered| super::orphan::release(&recovered))
        .unwrap_or_default();
    let mut patched = match Arc::try_unwrap(view) {
        Ok(p) => p,
        Err(shared) => return Ok(Some(shared)),
    };
    patched.extend(edits);
    Ok(Some(Arc::new(patched)))
}

/// What a log block says, by transaction.
enum Record {
    /// A descriptor: each tag's home block, flags and the log position of its data.
    Logged {
        seq: u32,
        tags: Vec<(u64, u32, u64)>,
    },
    /// A revoke block: home blocks not to replay from this or an earlier transaction.
    Revoked { seq: u32, homes: Vec<u64> },
}

/// A journal's log, read through the journal inode's block map.
struct Log<'a> {
    fs: &'a Ext4,
    /// Image byte offset of each journal block.
    map: Vec<u64>,
    sb: Vec<u8>,
    first: u64,
    last: u64,
    start: u64,
    sequence: u32,
    features: u32,
    tag_bytes: usize,
    /// Bytes at the end of descriptor and revoke blocks that hold their checksum.
    tail: usize,
    /// The sequence after the last complete transaction (set by the scan).
    end: u32,
}

impl<'a> Log<'a> {
    fn open(fs: &'a Ext4) -> Result<Self, FsError> {
        let corrupt = |what: String| fs.corrupt(format!("journal: {what}"));
        let sb = fs.superblock();
        if sb.feature_compat & 0x4 == 0 {
            return Err(corrupt(
                "needs recovery, but the filesystem has none".into(),
            ));
        }
        let ino = le32(&sb.raw, 0xE0);
        if ino == 0 {
            return Err(FsError::Unsupported {
                fs: "ext4",
                what: "an external journal needs recovery".into(),
            });
        }
        let bs = fs.block_size();
        let inode = fs.inode(ino)?;
        let extents = fs.file_extents(&inode)?;
        let blocks = inode.size / bs;
        if !(2..=1 << 22).contains(&blocks) {
            return Err(corrupt(format!("{} bytes is not a journal", inode.size)));
        }
        let map = block_map(&extents, blocks, bs).ok_or_else(|| {
            corrupt("the journal inode does not map every block of the journal".into())
        })?;
        let jsb = fs.read_abs(map[0], bs, "journal superblock")?;
        if be32(&jsb, 0) != JBD2_MAGIC {
            return Err(corrupt("no jbd2 superblock".into()));
        }
        let kind = be32(&jsb, 4);
        if kind != SUPERBLOCK_V1 && kind != SUPERBLOCK_V2 {
            return Err(corrupt(format!("superblock of type {kind}")));
        }
        if u64::from(be32(&jsb, 0xC)) != bs {
            return Err(corrupt(format!(
                "block size {} differs from the filesystem's {bs}",
                be32(&jsb, 0xC)
            )));
        }
        let maxlen = u64::from(be32(&jsb, 0x10));
        let first = u64::from(be32(&jsb, 0x14));
        let features = if kind == SUPERBLOCK_V2 {
            be32(&jsb, 0x28)
        } else {
            0
        };
        if features & !FEATURES_KNOWN != 0 {
            return Err(FsError::Unsupported {
                fs: "ext4",
                what: format!(
                    "journal feature {:#x} (run e2fsck on a copy of the image first)",
                    features & !FEATURES_KNOWN
                ),
            });
        }
        let start = u64::from(be32(&jsb, 0x1C));
        if features & FEATURE_FAST_COMMIT != 0 && start != 0 {
            return Err(FsError::Unsupported {
                fs: "ext4",
                what: "a journal with fast commits needs recovery (run e2fsck on a copy of \
                       the image first)"
                    .into(),
            });
        }
        if maxlen > blocks
            || first == 0
            || first >= maxlen
            || (start != 0 && !(first..maxlen).contains(&start))
        {
            return Err(corrupt(format!(
                "log bounds first {first}, start {start}, length {maxlen} do not fit {blocks} blocks"
            )));
        }
        let csum = features & (FEATURE_CSUM_V2 | FEATURE_CSUM_V3) != 0;
        let tag_bytes = if features & FEATURE_CSUM_V3 != 0 {
            16
        } else {
            let mut n = 12;
            if features & FEATURE_CSUM_V2 != 0 {
                n += 2;
            }
            if features & FEATURE_64BIT == 0 {
                n -= 4;
            }
            n
        };
        Ok(Log {
            fs,
            map,
            sequence: be32(&jsb, 0x18),
            sb: jsb,
            first,
            last: maxlen,
            start,
            features,
            tag_bytes,
            tail: if csum { 4 } else { 0 },
            end: 0,
        })
    }

    fn next(&self, b: u64) -> u64 {
        if b + 1 >= self.last {
            self.first
        } else {
            b + 1
        }
    }

    fn read(&self, b: u64) -> Result<Vec<u8>, FsError> {
        self.fs
            .read_abs(self.map[b as usize], self.fs.block_size(), "journal block")
    }

    /// The block's type if it is a log block of transaction `seq`.
    fn header(&self, block: &[u8], seq: u32) -> Option<u32> {
        (be32(block, 0) == JBD2_MAGIC && be32(block, 8) == seq).then(|| be32(block, 4))
    }

    /// The (home block, flags) of each tag of a descriptor block.
    fn tags(&self, block: &[u8]) -> Vec<(u64, u32)> {
        let size = block.len() - self.tail;
        let mut at = 12;
        let mut out = Vec::new();
        while at + self.tag_bytes <= size {
            let t = &block[at..];
            let (flags, high) = if self.features & FEATURE_CSUM_V3 != 0 {
                (be32(t, 4), be32(t, 8))
            } else {
                let high = if self.features & FEATURE_64BIT != 0 {
                    be32(t, 8)
                } else {
                    0
                };
                (u32::from(u16::from_be_bytes([t[6], t[7]])), high)
            };
            let mut home = u64::from(be32(t, 0));
            if self.features & FEATURE_64BIT != 0 {
                home |= u64::from(high) << 32;
            }
            out.push((home, flags));
            at += self.tag_bytes;
            if flags & FLAG_SAME_UUID == 0 {
                at += 16;
            }
            if flags & FLAG_LAST_TAG != 0 {
                break;
            }
        }
        out
    }

    /// The home blocks a revoke block names.
    fn revoked(&self, block: &[u8]) -> Vec<u64> {
        let wide = self.features & FEATURE_64BIT != 0;
        let step = if wide { 8 } else { 4 };
        let count = (be32(block, 12) as usize).min(block.len() - self.tail);
        let mut out = Vec::new();
        let mut at = 16;
        while at + step <= count {
            out.push(if wide {
                (u64::from(be32(block, at)) << 32) | u64::from(be32(block, at + 4))
            } else {
                u64::from(be32(block, at))
            });
            at += step;
        }
        out
    }

    /// One pass over the log from its start, as far as its blocks chain (each names the
    /// transaction the last commit leads to): what each descriptor and revoke block says,
    /// and the transaction after the last commit found (the log's end).
    fn scan(&self) -> Result<(Vec<Record>, u32), FsError> {
        let (mut b, mut seq) = (self.start, self.sequence);
        let mut records = Vec::new();
        let mut steps = 0u64;
        while steps <= self.last {
            let block = self.read(b)?;
            let Some(kind) = self.header(&block, seq) else {
                break;
            };
            steps += 1;
            match kind {
                DESCRIPTOR => {
                    let mut tags = Vec::new();
                    for (home, flags) in self.tags(&block) {
                        b = self.next(b);
                        tags.push((home, flags, b));
                    }
                    steps += tags.len() as u64;
                    records.push(Record::Logged { seq, tags });
                }
                COMMIT => seq = seq.wrapping_add(1),
                REVOKE => records.push(Record::Revoked {
                    seq,
                    homes: self.revoked(&block),
                }),
                _ => break,
            }
            b = self.next(b);
        }
        Ok((records, seq))
    }

    /// The logged blocks of the complete transactions, by home block (filesystem block
    /// number), as recovery leaves them.
    fn replay(&mut self) -> Result<HashMap<u64, Vec<u8>>, FsError> {
        if self.start == 0 {
            self.end = self.sequence;
            return Ok(HashMap::new());
        }
        let (records, end) = self.scan()?;
        self.end = end;
        // What the scan found of the transaction it ended in has no commit: left out.
        let records = records.iter().filter(|r| match r {
            Record::Logged { seq, .. } | Record::Revoked { seq, .. } => *seq != end,
        });
        let mut revoked: HashMap<u64, u32> = HashMap::new();
        if self.features & FEATURE_REVOKE != 0 {
            for r in records.clone() {
                if let Record::Revoked { seq, homes } = r {
                    for home in homes {
                        let e = revoked.entry(*home).or_insert(*seq);
                        if seq.wrapping_sub(*e) as i32 > 0 {
                            *e = *seq;
                        }
                    }
                }
            }
        }
        let blocks_count = self.fs.superblock().blocks_count;
        let mut out: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut held = 0u64;
        for r in records {
            let Record::Logged { seq, tags } = r else {
                continue;
            };
            for &(home, flags, at) in tags {
                if revoked
                    .get(&home)
                    .is_some_and(|r| r.wrapping_sub(*seq) as i32 >= 0)
                {
                    continue;
                }
                if home >= blocks_count {
                    return Err(self.fs.corrupt(format!(
                        "journal: transaction {seq} logs block {home}, past the filesystem's {blocks_count}"
                    )));
                }
                let mut content = self.read(at)?;
                if flags & FLAG_ESCAPE != 0 {
                    content[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
                }
                if out.insert(home, content).is_none() {
                    held += self.fs.block_size();
                    if held > REPLAY_MAX {
                        return Err(self
                            .fs
                            .corrupt("journal: the log replays more than 2 GiB".into()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The journal superblock with an empty log (image offset and block).
    fn emptied_superblock(&self) -> (u64, Vec<u8>) {
        let mut jsb = self.sb.clone();
        jsb[0x18..0x1C].copy_from_slice(&self.end.to_be_bytes());
        jsb[0x1C..0x20].copy_from_slice(&0u32.to_be_bytes());
        if be32(&jsb, 4) == SUPERBLOCK_V2
            && self.features & (FEATURE_CSUM_V2 | FEATURE_CSUM_V3) != 0
        {
            jsb[0xFC..0x100].fill(0);
            let c = !crc32c::crc32c(&jsb[..1024]);
            jsb[0xFC..0x100].copy_from_slice(&c.to_be_bytes());
        }
        (self.map[0], jsb)
    }
}

/// Image offset of each of the first `blocks` blocks of a file, `None` if one is a hole.
fn block_map(extents: &[FileExtent], blocks: u64, bs: u64) -> Option<Vec<u64>> {
    let mut map = Vec::with_capacity(blocks as usize);
    for e in extents {
        let phys = e.physical?;
        if e.logical != map.len() as u64 * bs {
            return None;
        }
        let n = e.len / bs;
        for i in 0..n {
            if map.len() as u64 == blocks {
                break;
            }
            map.push(phys + i * bs);
        }
    }
    (map.len() as u64 == blocks).then_some(map)
}
