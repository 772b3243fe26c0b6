//! Native qcow2 reader (versions 2 and 3): L1/L2 tables, zero clusters, compressed clusters
//! (deflate or zstd), extended L2 entries (32 subclusters per cluster). Backing files,
//! encryption and external data files are refused with a clear message; asked to follow the
//! files an image names, `image::open_with` reads such an image through `qemu-img` instead.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{malformed, merge_ranges, BlockSource, ImageError};

/// `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;
const MAX_L1_ENTRIES: u64 = 32 << 20;
const L2_CACHE_TABLES: usize = 256;
/// Inflated clusters kept: reads smaller than a cluster (file heads, metadata blocks) come in
/// runs, and each would otherwise inflate the whole cluster again.
const INFLATED_KEPT: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codec {
    Deflate,
    Zstd,
}

/// Subclusters per cluster with extended L2 entries.
const SUBCLUSTERS: u64 = 32;

/// One guest cluster's mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cluster {
    Zero,
    /// Host offset, and which of its 32 subclusters hold data (all of them without extended
    /// L2 entries; the others read as zeros).
    Data {
        host: u64,
        sub: u32,
    },
    Compressed {
        offset: u64,
        len: u64,
    },
}

/// An open qcow2 image.
#[derive(Debug)]
pub struct Qcow2 {
    file: File,
    path: String,
    file_len: u64,
    size: u64,
    cluster_bits: u32,
    /// Extended L2 entries: 128 bits each, the second half a subcluster bitmap.
    extended: bool,
    l1: Vec<u64>,
    codec: Codec,
    l2_cache: Mutex<HashMap<usize, Arc<Vec<u64>>>>,
    /// The latest inflated clusters by guest cluster, newest last.
    inflated: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
    /// Internal snapshots the image holds (not read: only the current state is).
    snapshots: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// True when the qcow2 image in `file` names another file to be read with: a backing file,
/// or (version 3) an external data file. This reader opens neither; `image::open_with` can
/// read such an image through `qemu-img`.
pub fn names_other_files(file: &File) -> std::io::Result<bool> {
    let mut h = [0u8; 80];
    let n = file.read_at(&mut h, 0)?;
    let backing = n >= 16 && be64(&h, 8) != 0;
    let data_file = n == 80 && be32(&h, 4) >= 3 && be64(&h, 72) & 4 != 0;
    Ok(backing || data_file)
}

impl Qcow2 {
    /// Parses the header and L1 table.
    pub fn open(file: File, path: &Path) -> Result<Self, ImageError> {
        let path = path.display().to_string();
        let io = |source| ImageError::Io {
            path: path.clone(),
            source,
        };
        let file_len = super::size_of(&file).map_err(io)?;
        let mut h = [0u8; 112];
        let n = file.read_at(&mut h, 0).map_err(io)?;
        if n < 72 {
            return Err(malformed(format!(
                "{path}: qcow2 header truncated ({n} bytes)"
            )));
        }
        if h[..4] != MAGIC {
            return Err(malformed(format!("{path}: not a qcow2 image")));
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(ImageError::Unsupported(format!(
                "{path}: qcow2 version {version}"
            )));
        }
        if be64(&h, 8) != 0 {
            return Err(ImageError::Unsupported(format!(
                "{path}: qcow2 with a backing file (check it in with --follow-backing if you \
                 trust the image, or flatten it with `qemu-img convert` first)"
            )));
        }
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(malformed(format!(
                "{path}: qcow2 cluster_bits {cluster_bits} out of range 9..=21"
            )));
        }
        let size = be64(&h, 24);
        if size > 1 << 60 {
            return Err(malformed(format!(
                "{path}: qcow2 virtual size {size} is absurd"
            )));
        }
        if be32(&h, 32) != 0 {
            return Err(ImageError::Unsupported(format!("{path}: encrypted qcow2")));
        }
        let l1_size = u64::from(be32(&h, 36));
        let l1_offset = be64(&h, 40);
        let mut codec = Codec::Deflate;
        let mut extended = false;
        if version == 3 {
            if n < 104 {
                return Err(malformed(format!("{path}: qcow2 v3 header truncated")));
            }
            let incompat = be64(&h, 72);
            if incompat & 2 != 0 {
                return Err(malformed(format!("{path}: qcow2 image is marked corrupt")));
            }
            if incompat & 4 != 0 {
                return Err(ImageError::Unsupported(format!(
                    "{path}: qcow2 with an external data file (check it in with \
                     --follow-backing if you trust the image, or convert it with \
                     `qemu-img convert` first)"
                )));
            }
            extended = incompat & 16 != 0;
            if incompat & !0b1_1111 != 0 {
                return Err(ImageError::Unsupported(format!(
                    "{path}: unknown qcow2 incompatible features {incompat:#x}"
                )));
            }
            let header_len = be32(&h, 100);
            if incompat & 8 != 0 {
                if header_len <= 104 || n < 105 {
                    return Err(malformed(format!(
                        "{path}: qcow2 compression type missing from the header"
                    )));
                }
                codec = match h[104] {
                    0 => Codec::Deflate,
                    1 => Codec::Zstd,
                    t => {
                        return Err(ImageError::Unsupported(format!(
                            "{path}: qcow2 compression type {t}"
                        )))
                    }
                };
            }
        }
        let cluster = 1u64 << cluster_bits;
        if extended && cluster_bits < 14 {
            return Err(malformed(format!(
                "{path}: qcow2 extended L2 entries need clusters of 16 KiB or more"
            )));
        }
        let l2_entries = cluster / if extended { 16 } else { 8 };
        let needed = size.div_ceil(cluster * l2_entries);
        if l1_size < needed || l1_size > MAX_L1_ENTRIES {
            return Err(malformed(format!(
                "{path}: qcow2 L1 table has {l1_size} entries, the virtual size needs {needed}"
            )));
        }
        let l1_end = l1_offset.checked_add(l1_size * 8);
        if l1_end.is_none_or(|e| e > file_len) || l1_offset % 8 != 0 {
            return Err(malformed(format!(
                "{path}: qcow2 L1 table at {l1_offset} lies outside the {file_len}-byte file"
            )));
        }
        let mut raw = vec![0u8; (l1_size * 8) as usize];
        file.read_exact_at(&mut raw, l1_offset).map_err(io)?;
        let l1: Vec<u64> = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let q = Qcow2 {
            file,
            path,
            file_len,
            size,
            cluster_bits,
            extended,
            l1,
            codec,
            l2_cache: Mutex::new(HashMap::new()),
            inflated: Mutex::new(VecDeque::with_capacity(INFLATED_KEPT)),
            snapshots: be32(&h, 60),
        };
        for (i, e) in q.l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off != 0 && (off % cluster != 0 || off + cluster > q.file_len) {
                return Err(malformed(format!(
                    "{}: qcow2 L1 entry {i} points to {off}, outside the file or unaligned",
                    q.path
                )));
            }
        }
        Ok(q)
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// L2 entries per table.
    fn per_l2(&self) -> u64 {
        self.cluster_size() / if self.extended { 16 } else { 8 }
    }

    fn io(&self, source: std::io::Error) -> ImageError {
        ImageError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn l2(&self, l1_index: usize) -> Result<Option<Arc<Vec<u64>>>, ImageError> {
        let off = self.l1.get(l1_index).copied().unwrap_or(0) & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if let Some(t) = self.l2_cache.lock().get(&l1_index) {
            return Ok(Some(t.clone()));
        }
        let mut raw = vec![0u8; self.cluster_size() as usize];
        self.file
            .read_exact_at(&mut raw, off)
            .map_err(|e| self.io(e))?;
        let table = Arc::new(
            raw.chunks_exact(8)
                .map(|c| be64(c, 0))
                .collect::<Vec<u64>>(),
        );
        let mut cache = self.l2_cache.lock();
        if cache.len() >= L2_CACHE_TABLES {
            cache.clear();
        }
        cache.insert(l1_index, table.clone());
        Ok(Some(table))
    }

    /// Mapping of guest cluster `vc`.
    fn cluster(&self, vc: u64) -> Result<Cluster, ImageError> {
        let per_l2 = self.per_l2();
        let (l1i, l2i) = ((vc / per_l2) as usize, (vc % per_l2) as usize);
        let Some(table) = self.l2(l1i)? else {
            return Ok(Cluster::Zero);
        };
        let (e, bitmap) = if self.extended {
            (table[2 * l2i], table[2 * l2i + 1])
        } else {
            (table[l2i], u64::from(u32::MAX))
        };
        let cluster = self.cluster_size();
        if e & L2_COMPRESSED != 0 {
            let x = 62 - (self.cluster_bits - 8);
            let offset = e & ((1u64 << x) - 1);
            let sectors = ((e >> x) & ((1u64 << (62 - x)) - 1)) + 1;
            let len = sectors * 512 - (offset & 511);
            if offset >= self.file_len {
                return Err(malformed(format!(
                    "{}: qcow2 compressed cluster {vc} at {offset} lies outside the file",
                    self.path
                )));
            }
            // The last compressed cluster may claim sectors past the end of the file.
            let len = len.min(self.file_len - offset).min(2 * cluster + 512);
            return Ok(Cluster::Compressed { offset, len });
        }
        let off = e & OFFSET_MASK;
        // Subclusters marked zero read as zeros whatever their allocation says.
        let sub = (bitmap as u32) & !((bitmap >> 32) as u32);
        if (!self.extended && e & L2_ZERO != 0) || off == 0 || sub == 0 {
            return Ok(Cluster::Zero);
        }
        // With subclusters, the file may end after the last allocated one.
        let used = if self.extended {
            u64::from(32 - sub.leading_zeros()) * (cluster / SUBCLUSTERS)
        } else {
            cluster
        };
        if off % cluster != 0 || off.checked_add(used).is_none_or(|end| end > self.file_len) {
            return Err(malformed(format!(
                "{}: qcow2 L2 entry for cluster {vc} points to {off}, outside the {}-byte file",
                self.path, self.file_len
            )));
        }
        Ok(Cluster::Data { host: off, sub })
    }

    /// Guest cluster `vc` inflated, from the cache of recent ones when it is there.
    fn inflated(&self, vc: u64, offset: u64, len: u64) -> Result<Arc<Vec<u8>>, ImageError> {
        if let Some((_, d)) = self.inflated.lock().iter().find(|(c, _)| *c == vc) {
            return Ok(d.clone());
        }
        let d = Arc::new(self.inflate(vc, offset, len)?);
        let mut kept = self.inflated.lock();
        if kept.len() >= INFLATED_KEPT {
            kept.pop_front();
        }
        kept.push_back((vc, d.clone()));
        Ok(d)
    }

    fn inflate(&self, vc: u64, offset: u64, len: u64) -> Result<Vec<u8>, ImageError> {
        let mut src = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut src, offset)
            .map_err(|e| self.io(e))?;
        let cluster = self.cluster_size() as usize;
        let mut out = Vec::with_capacity(cluster);
        let bad = |why: String| {
            malformed(format!(
                "{}: qcow2 compressed cluster {vc}: {why}",
                self.path
            ))
        };
        match self.codec {
            Codec::Deflate => {
                flate2::read::DeflateDecoder::new(&src[..])
                    .take(cluster as u64)
                    .read_to_end(&mut out)
                    .map_err(|e| bad(e.to_string()))?;
            }
            Codec::Zstd => {
                zstd::stream::read::Decoder::new(&src[..])
                    .map_err(|e| bad(e.to_string()))?
                    .take(cluster as u64)
                    .read_to_end(&mut out)
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
        if out.len() != cluster {
            return Err(bad(format!(
                "inflates to {} bytes, not {cluster}",
                out.len()
            )));
        }
        Ok(out)
    }
}

impl BlockSource for Qcow2 {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(malformed(format!(
                "{}: read of {} bytes at {offset} is past the end of the {}-byte disk",
                self.path,
                buf.len(),
                self.size
            )));
        }
        let cluster = self.cluster_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (vc, within) = (pos / cluster, pos % cluster);
            let n = ((cluster - within) as usize).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            match self.cluster(vc)? {
                Cluster::Zero => dst.fill(0),
                Cluster::Data { host, sub } if sub == u32::MAX => self
                    .file
                    .read_exact_at(dst, host + within)
                    .map_err(|e| self.io(e))?,
                Cluster::Data { host, sub } => {
                    let size = cluster / SUBCLUSTERS;
                    let mut at = 0usize;
                    while at < n {
                        let w = within + at as u64;
                        let m = ((size - w % size) as usize).min(n - at);
                        let part = &mut dst[at..at + m];
                        if sub & (1 << (w / size)) != 0 {
                            self.file
                                .read_exact_at(part, host + w)
                                .map_err(|e| self.io(e))?;
                        } else {
                            part.fill(0);
                        }
                        at += m;
                    }
                }
                Cluster::Compressed { offset: o, len } => {
                    let data = self.inflated(vc, o, len)?;
                    dst.copy_from_slice(&data[within as usize..within as usize + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>, ImageError> {
        let end = end.min(self.size);
        let cluster = self.cluster_size();
        let per_l2 = self.per_l2();
        let mut out = Vec::new();
        let mut vc = start / cluster;
        while vc * cluster < end {
            let l1i = (vc / per_l2) as usize;
            if self.l1.get(l1i).copied().unwrap_or(0) & OFFSET_MASK == 0 {
                vc = (vc / per_l2 + 1) * per_l2;
                continue;
            }
            match self.cluster(vc)? {
                Cluster::Zero => {}
                Cluster::Data { sub, .. } if sub != u32::MAX => {
                    let size = cluster / SUBCLUSTERS;
                    for i in (0..SUBCLUSTERS).filter(|i| sub & (1 << i) != 0) {
                        let s = vc * cluster + i * size;
                        if s + size > start && s < end {
                            out.push((s.max(start), (s + size).min(end)));
                        }
                    }
                }
                _ => {
                    let s = (vc * cluster).max(start);
                    out.push((s, ((vc + 1) * cluster).min(end)));
                }
            }
            vc += 1;
        }
        merge_ranges(&mut out);
        Ok(out)
    }

    fn format(&self) -> &'static str {
        "qcow2"
    }

    fn left_out(&self) -> Vec<String> {
        if self.snapshots == 0 {
            return Vec::new();
        }
        vec![format!(
            "{}: {} internal snapshot(s) not read, only the current state \
             (`qemu-img snapshot -l` lists them; `qemu-img convert -l` reads one)",
            self.path, self.snapshots
        )]
    }
}
