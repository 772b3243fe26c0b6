//! Read-only FAT12/FAT16/FAT32 (vfat) reader.
//!
//! The FAT type follows the cluster count, as the Microsoft specification defines it. Node ids
//! are the absolute byte offsets of short directory entries in the image (the root is
//! [`ROOT_ID`]). Long names are decoded from VFAT LFN entries when their checksum matches the
//! short name; short names honour the NT lowercase flags and are decoded as code page 437.
//! Times are local times on disk and are read as UTC.
//!
//! Hostile input: every boot-sector field is validated against the region, FAT chains are
//! checked for loops, free or bad clusters, clusters outside the data area and lengths that do
//! not match the file size; directories are limited to 65536 entries, as on Linux and Windows.

mod skeleton;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mirage_format::{EntryKind, Param, Params, Timestamp};
use parking_lot::Mutex;

use super::{FileExtent, FsError, FsInfo, FsReader, Node};
use crate::image::BlockSource;
use crate::le::{le16, le32};

const FS: &str = "vfat";
/// Node id of the root directory (entry offsets are always larger).
pub const ROOT_ID: u64 = 1;
const ENTRY: u64 = 32;
/// Largest directory: 65536 entries of 32 bytes.
const MAX_DIR_BYTES: u64 = 65536 * ENTRY;
/// FAT bytes read and cached at a time.
const FAT_BLOCK: u64 = 64 * 1024;
/// FAT blocks kept in memory (4 MiB).
const FAT_CACHE_BLOCKS: usize = 64;

const ATTR_READ_ONLY: u8 = 0x01;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0F;
/// NT flags (byte 12): base name / extension stored in lowercase.
const NT_LOWER_BASE: u8 = 0x08;
const NT_LOWER_EXT: u8 = 0x10;

fn corrupt(what: impl Into<String>) -> FsError {
    FsError::Corrupt {
        fs: FS,
        what: what.into(),
    }
}

fn byte(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

fn bytes(b: &[u8], from: usize, to: usize) -> Vec<u8> {
    b.get(from..to).map(<[u8]>::to_vec).unwrap_or_default()
}

/// Volume layout, all offsets absolute in the image.
#[derive(Clone, Debug)]
struct Geometry {
    bits: u8,
    cluster_size: u64,
    /// First byte of the FAT in use.
    fat_start: u64,
    /// Bytes of one FAT.
    fat_bytes: u64,
    /// Fixed root directory (FAT12/16).
    root_start: u64,
    root_entries: u64,
    /// Root directory cluster (FAT32).
    root_cluster: u32,
    data_start: u64,
    /// Number of data clusters; valid cluster numbers are `2..clusters + 2`.
    clusters: u32,
    /// End of the filesystem.
    end: u64,
}

/// What the boot sector says besides the geometry.
struct Boot {
    geo: Geometry,
    params: Params,
    volume_id: Vec<u8>,
    boot_label: Option<Vec<u8>>,
}

/// Fails with a boot-sector error unless `ok`.
fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), FsError> {
    if ok {
        Ok(())
    } else {
        Err(corrupt(format!("boot sector: {}", what())))
    }
}

/// Validates the BIOS parameter block in `b` (the first 512 bytes of the filesystem).
fn parse_boot(b: &[u8], offset: u64, len: u64) -> Result<Boot, FsError> {
    let bps = le16(b, 11);
    let spc = byte(b, 13);
    let reserved = le16(b, 14);
    let num_fats = byte(b, 16);
    let root_entries = u64::from(le16(b, 17));
    let total = match le16(b, 19) {
        0 => le32(b, 32),
        n => u32::from(n),
    };
    let media = byte(b, 21);
    let fat16_size = le16(b, 22);
    let fat_sectors = match fat16_size {
        0 => le32(b, 36),
        n => u32::from(n),
    };
    ensure([512, 1024, 2048, 4096].contains(&bps), || {
        format!("{bps} bytes per sector (must be 512, 1024, 2048 or 4096)")
    })?;
    ensure(spc.is_power_of_two(), || {
        format!("sectors per cluster {spc} is not a power of two")
    })?;
    ensure(reserved != 0, || "reserved sector count is 0".into())?;
    ensure(num_fats != 0, || "FAT count is 0".into())?;
    ensure(media == 0xF0 || media >= 0xF8, || {
        format!("media descriptor {media:#04x} is invalid")
    })?;
    ensure(total != 0, || "total sector count is 0".into())?;
    ensure(fat_sectors != 0, || "sectors per FAT is 0".into())?;
    let (bps64, spc64, total64) = (u64::from(bps), u64::from(spc), u64::from(total));
    let root_sectors = (root_entries * ENTRY).div_ceil(bps64);
    let meta = u64::from(reserved) + u64::from(num_fats) * u64::from(fat_sectors) + root_sectors;
    let data_sectors = total64.saturating_sub(meta);
    ensure(data_sectors > 0, || {
        format!(
            "{num_fats} FATs of {fat_sectors} sectors, {reserved} reserved and {root_sectors} \
             root directory sectors leave no data area in {total} sectors"
        )
    })?;
    let fs_bytes = total64 * bps64;
    ensure(fs_bytes <= len, || {
        format!(
            "the filesystem of {total} sectors ({fs_bytes} bytes) exceeds its {len}-byte \
             region (truncated image?)"
        )
    })?;
    let clusters = data_sectors / spc64;
    ensure(clusters > 0, || "no data clusters".into())?;
    // The type as Linux and dosfstools read it: FAT32 when the 16-bit FAT size is 0, whatever
    // the cluster count (`mkfs.fat -F 32` makes FAT32 volumes of fewer than 65,525 clusters,
    // and 4 KiB-sector disks often have them); otherwise the cluster count tells FAT12 from
    // FAT16, and a FAT16 cannot have more clusters than its cluster numbers reach.
    let bits: u8 = match (fat16_size, clusters) {
        (0, _) => 32,
        (_, 0..4085) => 12,
        (_, 4085..65525) => 16,
        _ => {
            return Err(corrupt(format!(
                "{clusters} clusters are too many for FAT16 (at most 65,524), but the 16-bit \
                 FAT size is {fat16_size}, not 0 as FAT32 has it"
            )))
        }
    };
    ensure(clusters <= 0x0FFF_FFF5, || {
        format!("{clusters} clusters is more than FAT32 allows")
    })?;
    let fat_bytes = u64::from(fat_sectors) * bps64;
    ensure(fat_bytes * 8 / u64::from(bits) >= clusters + 2, || {
        format!("a FAT of {fat_sectors} sectors cannot describe {clusters} clusters")
    })?;
    let mut params = Params::new();
    let mut put = |k: &str, v: u64| params.insert(k.to_owned(), Param::U64(v));
    put("fat_bits", u64::from(bits));
    put("sector_size", bps64);
    put("sectors_per_cluster", spc64);
    put("reserved_sectors", u64::from(reserved));
    put("num_fats", u64::from(num_fats));
    put("total_sectors", total64);
    put("media", u64::from(media));
    put("sectors_per_fat", u64::from(fat_sectors));
    put("hidden_sectors", u64::from(le32(b, 28)));
    put("sectors_per_track", u64::from(le16(b, 24)));
    put("heads", u64::from(le16(b, 26)));
    let (mut active, mut root_cluster, ext) = (0u64, 0u32, if bits == 32 { 64 } else { 36 });
    if bits == 32 {
        ensure(root_entries == 0, || {
            format!("FAT32 volume with {root_entries} fixed root directory entries")
        })?;
        let flags = le16(b, 40);
        if flags & 0x80 != 0 {
            active = u64::from(flags & 0x0F);
            ensure(active < u64::from(num_fats), || {
                format!("active FAT {active} of only {num_fats} FATs")
            })?;
        }
        root_cluster = le32(b, 44);
        ensure((2..clusters + 2).contains(&u64::from(root_cluster)), || {
            format!("root directory cluster {root_cluster} is outside the data area")
        })?;
        put("root_cluster", u64::from(root_cluster));
        put("fsinfo_sector", u64::from(le16(b, 48)));
        put("backup_boot_sector", u64::from(le16(b, 50)));
    } else {
        ensure(root_entries != 0, || {
            format!("FAT{bits} volume without root directory entries")
        })?;
        put("root_entries", root_entries);
    }
    put("drive_number", u64::from(byte(b, ext)));
    let sig = byte(b, ext + 2);
    let volume_id = if sig == 0x28 || sig == 0x29 {
        bytes(b, ext + 3, ext + 7)
    } else {
        Vec::new()
    };
    let boot_label = (sig == 0x29).then(|| bytes(b, ext + 7, ext + 18));
    params.insert("oem_name".into(), Param::Bytes(bytes(b, 3, 11)));
    if let Some(l) = &boot_label {
        params.insert("boot_label".into(), Param::Bytes(l.clone()));
    }
    let fat_area = offset + u64::from(reserved) * bps64;
    let root_start = fat_area + u64::from(num_fats) * fat_bytes;
    let geo = Geometry {
        bits,
        cluster_size: spc64 * bps64,
        fat_start: fat_area + active * fat_bytes,
        fat_bytes,
        root_start,
        root_entries,
        root_cluster,
        data_start: root_start + root_sectors * bps64,
        // Bounded by 0x0FFF_FFF5 above.
        clusters: u32::try_from(clusters).unwrap_or(0),
        end: offset + fs_bytes,
    };
    Ok(Boot {
        geo,
        params,
        volume_id,
        boot_label,
    })
}

/// Reads the first 512 bytes of the filesystem at `offset`.
fn read_boot(src: &dyn BlockSource, offset: u64, len: u64) -> Result<[u8; 512], FsError> {
    let mut b = [0u8; 512];
    if len < 512 || offset.checked_add(len).is_none_or(|e| e > src.len()) {
        return Err(corrupt(format!(
            "region of {len} bytes at {offset} does not fit a boot sector in the {}-byte image",
            src.len()
        )));
    }
    src.read_at(&mut b, offset)?;
    Ok(b)
}

/// True when the sector at `offset` looks like a FAT boot sector (for filesystem detection).
pub fn probe(src: &dyn BlockSource, offset: u64, len: u64) -> bool {
    match read_boot(src, offset, len) {
        Ok(b) => (b[0] == 0xEB || b[0] == 0xE9) && parse_boot(&b, offset, len).is_ok(),
        Err(_) => false,
    }
}

/// The fields of a short directory entry.
#[derive(Clone, Debug)]
struct Entry {
    raw_name: [u8; 11],
    nt: u8,
    attr: u8,
    cluster: u32,
    size: u32,
    crt_tenths: u8,
    crt_time: u16,
    crt_date: u16,
    acc_date: u16,
    wrt_time: u16,
    wrt_date: u16,
}

impl Entry {
    fn parse(e: &[u8], fat32: bool) -> Entry {
        let mut raw_name = [0u8; 11];
        if let Some(n) = e.get(..11) {
            raw_name.copy_from_slice(n);
        }
        let hi = if fat32 { u32::from(le16(e, 20)) } else { 0 };
        Entry {
            raw_name,
            nt: byte(e, 12),
            attr: byte(e, 11),
            cluster: (hi << 16) | u32::from(le16(e, 26)),
            size: le32(e, 28),
            crt_tenths: byte(e, 13),
            crt_time: le16(e, 14),
            crt_date: le16(e, 16),
            acc_date: le16(e, 18),
            wrt_time: le16(e, 22),
            wrt_date: le16(e, 24),
        }
    }

    fn is_dir(&self) -> bool {
        self.attr & ATTR_DIRECTORY != 0
    }

    /// The 8.3 name as UTF-8 (code page 437, NT lowercase flags applied).
    fn short_name(&self) -> Vec<u8> {
        let mut raw = self.raw_name;
        if raw[0] == 0x05 {
            raw[0] = 0xE5;
        }
        let part = |s: &[u8], lower: bool| -> String {
            let end = s.iter().rposition(|&c| c != b' ').map_or(0, |p| p + 1);
            let t = cp437(&s[..end]);
            if lower {
                t.to_ascii_lowercase()
            } else {
                t
            }
        };
        let mut name = part(&raw[..8], self.nt & NT_LOWER_BASE != 0);
        let ext = part(&raw[8..], self.nt & NT_LOWER_EXT != 0);
        if !ext.is_empty() {
            name.push('.');
            name.push_str(&ext);
        }
        name.into_bytes()
    }

    /// The short name for messages.
    fn display(&self) -> String {
        String::from_utf8_lossy(&self.short_name()).into_owned()
    }
}

/// Checksum of a short name that LFN entries carry.
fn lfn_checksum(raw: &[u8; 11]) -> u8 {
    raw.iter()
        .fold(0u8, |s, &c| s.rotate_right(1).wrapping_add(c))
}

/// Upper half of code page 437.
const CP437_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐\
└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";

fn cp437(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if c < 0x80 {
                char::from(c)
            } else {
                CP437_HIGH.chars().nth(usize::from(c - 0x80)).unwrap_or('?')
            }
        })
        .collect()
}

/// Label bytes without trailing spaces, as UTF-8.
fn trim_label(raw: &[u8]) -> Vec<u8> {
    let end = raw.iter().rposition(|&c| c != b' ').map_or(0, |p| p + 1);
    cp437(raw.get(..end).unwrap_or_default()).into_bytes()
}

/// Converts a FAT date and time (local time, read as UTC) to a timestamp; `centis` adds
/// units of 10 ms. Date 0 means "not recorded" and gives the epoch.
fn fat_time(date: u16, time: u16, centis: u8) -> Timestamp {
    if date == 0 {
        return Timestamp::default();
    }
    let year = 1980 + i64::from(date >> 9);
    let month = i64::from((date >> 5) & 0x0F).clamp(1, 12);
    let day = i64::from(date & 0x1F).max(1);
    // Days since 1970-01-01 of a proleptic Gregorian date, counting years from March.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400
        + i64::from(time >> 11) * 3600
        + i64::from((time >> 5) & 0x3F) * 60
        + i64::from(time & 0x1F) * 2
        + i64::from(centis / 100);
    Timestamp::new(secs, u32::from(centis % 100) * 10_000_000)
}

/// Directory entries as (name, node id).
type Listing = Vec<(Vec<u8>, u64)>;

/// A long name being assembled from LFN entries (which come last part first).
struct LongName {
    units: Vec<u16>,
    next: u8,
    checksum: u8,
}

const LFN_CHARS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

impl LongName {
    /// Feeds one LFN entry; returns the state after it.
    fn feed(prev: Option<LongName>, e: &[u8]) -> Option<LongName> {
        let ord = byte(e, 0);
        let seq = ord & 0x1F;
        let checksum = byte(e, 13);
        let mut cur = if ord & 0x40 != 0 {
            if seq == 0 || seq > 20 {
                return None;
            }
            LongName {
                units: vec![0xFFFF; usize::from(seq) * 13],
                next: seq + 1,
                checksum,
            }
        } else {
            prev?
        };
        if seq == 0 || cur.next != seq + 1 || cur.checksum != checksum {
            return None;
        }
        let base = usize::from(seq - 1) * 13;
        for (i, &at) in LFN_CHARS.iter().enumerate() {
            if let Some(slot) = cur.units.get_mut(base + i) {
                *slot = le16(e, at);
            }
        }
        cur.next = seq;
        Some(cur)
    }

    /// The name, if complete, matching `raw` and valid.
    fn finish(self, raw: &[u8; 11]) -> Option<Vec<u8>> {
        if self.next != 1 || self.checksum != lfn_checksum(raw) {
            return None;
        }
        let end = self
            .units
            .iter()
            .position(|&u| u == 0)
            .unwrap_or(self.units.len());
        let name = String::from_utf16(self.units.get(..end)?).ok()?;
        let ok = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
        ok.then(|| name.into_bytes())
    }
}

/// How long a chain must be.
#[derive(Clone, Copy)]
enum Need {
    /// Exactly this many clusters (a file of the given size).
    Exact(u64, u64),
    /// Up to end of chain, at most this many clusters (a directory).
    AtMost(u64),
}

/// A read-only FAT filesystem.
pub struct Vfat {
    src: Arc<dyn BlockSource>,
    /// First byte of the filesystem in the image.
    offset: u64,
    geo: Geometry,
    info: FsInfo,
    fat_cache: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    /// First cluster of each directory listed so far, with its node id: a second directory
    /// on the same cluster would make the tree a graph.
    dir_clusters: Mutex<HashMap<u32, u64>>,
}

impl std::fmt::Debug for Vfat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vfat")
            .field("geometry", &self.geo)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Vfat {
    /// Parses the boot sector of the FAT filesystem occupying [offset, offset+len) of `src`.
    pub fn open(src: Arc<dyn BlockSource>, offset: u64, len: u64) -> Result<Vfat, FsError> {
        let b = read_boot(src.as_ref(), offset, len)?;
        let boot = parse_boot(&b, offset, len)?;
        let mut fs = Vfat {
            src,
            offset,
            geo: boot.geo,
            info: FsInfo {
                fs_type: FS.into(),
                uuid: boot.volume_id,
                label: Vec::new(),
                params: boot.params,
            },
            fat_cache: Mutex::new(HashMap::new()),
            dir_clusters: Mutex::new(HashMap::new()),
        };
        let (_, root_label) = fs.scan_dir(ROOT_ID)?;
        let boot_label = boot.boot_label.map(|l| trim_label(&l));
        fs.info.label = match root_label {
            Some(raw) => {
                let l = trim_label(&raw);
                fs.info
                    .params
                    .insert("root_label".into(), Param::Bytes(raw.to_vec()));
                l
            }
            None => boot_label.filter(|l| l != b"NO NAME").unwrap_or_default(),
        };
        Ok(fs)
    }

    fn fat_block(&self, index: u64) -> Result<Arc<Vec<u8>>, FsError> {
        let mut cache = self.fat_cache.lock();
        if let Some(b) = cache.get(&index) {
            return Ok(Arc::clone(b));
        }
        let start = index * FAT_BLOCK;
        let n = self.geo.fat_bytes.saturating_sub(start).min(FAT_BLOCK);
        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
        self.src.read_at(&mut buf, self.geo.fat_start + start)?;
        if cache.len() >= FAT_CACHE_BLOCKS {
            cache.clear();
        }
        let buf = Arc::new(buf);
        cache.insert(index, Arc::clone(&buf));
        Ok(buf)
    }

    /// The FAT entry of `cluster` (a valid cluster number, so within the FAT).
    fn fat_entry(&self, cluster: u32) -> Result<u32, FsError> {
        let n = u64::from(cluster);
        let (at, width) = match self.geo.bits {
            12 => (n + n / 2, 2),
            16 => (n * 2, 2),
            _ => (n * 4, 4),
        };
        let past = || corrupt(format!("FAT entry of cluster {cluster} is past the FAT"));
        let mut v = [0u8; 4];
        if at / FAT_BLOCK == (at + width - 1) / FAT_BLOCK {
            // The usual case: one block lookup for the whole entry.
            let block = self.fat_block(at / FAT_BLOCK)?;
            let from = usize::try_from(at % FAT_BLOCK).map_err(|_| past())?;
            let bytes = block.get(from..from + width as usize).ok_or_else(past)?;
            v[..width as usize].copy_from_slice(bytes);
        } else {
            for (i, out) in v.iter_mut().take(width as usize).enumerate() {
                let pos = at + i as u64;
                let block = self.fat_block(pos / FAT_BLOCK)?;
                *out = usize::try_from(pos % FAT_BLOCK)
                    .ok()
                    .and_then(|p| block.get(p).copied())
                    .ok_or_else(past)?;
            }
        }
        let v = u32::from_le_bytes(v);
        Ok(match self.geo.bits {
            12 if cluster & 1 == 1 => v >> 4,
            12 => v & 0x0FFF,
            16 => v,
            _ => v & 0x0FFF_FFFF,
        })
    }

    fn valid_cluster(&self, c: u32) -> bool {
        c >= 2 && u64::from(c) < u64::from(self.geo.clusters) + 2
    }

    /// Follows the chain from `first`; returns runs of contiguous clusters (start, count).
    fn chain(&self, first: u32, what: &str, need: Need) -> Result<Vec<(u32, u64)>, FsError> {
        let last = u64::from(self.geo.clusters) + 1;
        if !self.valid_cluster(first) {
            return Err(corrupt(format!(
                "{what} starts at cluster {first}, outside the data area (clusters 2..={last})"
            )));
        }
        let (bad, eoc) = match self.geo.bits {
            12 => (0xFF7, 0xFF8),
            16 => (0xFFF7, 0xFFF8),
            _ => (0x0FFF_FFF7, 0x0FFF_FFF8),
        };
        let mut runs: Vec<(u32, u64)> = Vec::new();
        let mut seen = HashSet::new();
        let mut cur = first;
        let mut count = 0u64;
        let looped = |at: u32| {
            corrupt(format!(
                "FAT chain of {what} (starting at cluster {first}) loops at cluster {at}"
            ))
        };
        // Clusters followed past what a file's size needs: a chain longer than its file (a
        // truncate that did not free the rest) is read to the size, as Linux reads it, and its
        // tail is checked to end cleanly; those clusters stay in the skeleton, in use.
        let mut tail = 0u64;
        loop {
            if tail == 0 {
                if !seen.insert(cur) {
                    return Err(looped(cur));
                }
                count += 1;
                match runs.last_mut() {
                    Some((s, n)) if u64::from(*s) + *n == u64::from(cur) => *n += 1,
                    _ => runs.push((cur, 1)),
                }
            } else if seen.contains(&cur) || tail > u64::from(self.geo.clusters) {
                // Back into the file, or longer than the volume: without a set of its own.
                return Err(looped(cur));
            }
            let next = self.fat_entry(cur)?;
            let at_end = tail == 0
                && match need {
                    Need::Exact(n, _) => count == n,
                    Need::AtMost(max) => {
                        if count > max {
                            return Err(corrupt(format!(
                                "directory {what} is longer than {} entries",
                                MAX_DIR_BYTES / ENTRY
                            )));
                        }
                        false
                    }
                };
            if next >= eoc {
                if let Need::Exact(n, size) = need {
                    if count < n {
                        return Err(corrupt(format!(
                            "FAT chain of {what} ends after {count} clusters, but its size \
                             {size} needs {n}"
                        )));
                    }
                }
                return Ok(runs);
            }
            if at_end || tail > 0 {
                tail += 1;
            }
            let problem = match next {
                0 => "reaches a free cluster",
                v if v == bad => "reaches a bad-cluster mark",
                v if !self.valid_cluster(v) => "points outside the data area",
                _ => {
                    cur = next;
                    continue;
                }
            };
            return Err(corrupt(format!(
                "FAT chain of {what} {problem} after cluster {cur} (entry {next:#x}; data \
                 clusters are 2..={last})"
            )));
        }
    }

    fn cluster_offset(&self, c: u32) -> u64 {
        self.geo.data_start + u64::from(c - 2) * self.geo.cluster_size
    }

    /// The short directory entry at image offset `id`.
    fn entry(&self, id: u64) -> Result<Entry, FsError> {
        let g = &self.geo;
        let start = if g.bits == 32 {
            g.data_start
        } else {
            g.root_start
        };
        let fits = id >= start
            && (id - start) % ENTRY == 0
            && id.checked_add(ENTRY).is_some_and(|e| e <= g.end);
        if !fits {
            return Err(corrupt(format!("node {id} is not a directory entry")));
        }
        let mut b = [0u8; 32];
        self.src.read_at(&mut b, id)?;
        let e = Entry::parse(&b, g.bits == 32);
        // Long-name entries carry the volume-label bit too.
        if b[0] == 0 || b[0] == 0xE5 || e.attr & ATTR_VOLUME_ID != 0 {
            return Err(corrupt(format!(
                "node {id} is not a file or directory entry"
            )));
        }
        Ok(e)
    }

    /// Image ranges (offset, length) holding the directory `id`.
    fn dir_ranges(&self, id: u64) -> Result<Vec<(u64, u64)>, FsError> {
        let g = &self.geo;
        let max = MAX_DIR_BYTES.div_ceil(g.cluster_size);
        let (first, what) = if id == ROOT_ID {
            if g.bits != 32 {
                return Ok(vec![(g.root_start, g.root_entries * ENTRY)]);
            }
            (g.root_cluster, "the root directory".to_owned())
        } else {
            let e = self.entry(id)?;
            let what = format!("'{}'", e.display());
            if !e.is_dir() {
                return Err(corrupt(format!("{what} (node {id}) is not a directory")));
            }
            (e.cluster, what)
        };
        if let Some(&other) = self.dir_clusters.lock().get(&first) {
            if other != id {
                return Err(corrupt(format!(
                    "directory {what} (node {id}) starts at cluster {first}, which directory \
                     node {other} also uses"
                )));
            }
        }
        let runs = self.chain(first, &what, Need::AtMost(max))?;
        self.dir_clusters.lock().insert(first, id);
        Ok(runs
            .iter()
            .map(|&(s, n)| (self.cluster_offset(s), n * g.cluster_size))
            .collect())
    }

    /// Lists directory `id` as (name, node id); also returns the raw volume label entry name, if any.
    fn scan_dir(&self, id: u64) -> Result<(Listing, Option<[u8; 11]>), FsError> {
        let fat32 = self.geo.bits == 32;
        let mut items = Vec::new();
        let mut label = None;
        let mut long: Option<LongName> = None;
        for (start, len) in self.dir_ranges(id)? {
            let mut buf = vec![0u8; usize::try_from(len).map_err(|_| corrupt("huge directory"))?];
            self.src.read_at(&mut buf, start)?;
            for (i, e) in buf.chunks_exact(ENTRY as usize).enumerate() {
                let first = byte(e, 0);
                let attr = byte(e, 11);
                if first == 0 {
                    return Ok((items, label));
                }
                if first == 0xE5 {
                    long = None;
                } else if attr & 0x3F == ATTR_LONG_NAME {
                    long = LongName::feed(long.take(), e);
                } else if attr & ATTR_VOLUME_ID != 0 {
                    let entry = Entry::parse(e, fat32);
                    if id == ROOT_ID && label.is_none() {
                        label = Some(entry.raw_name);
                    }
                    long = None;
                } else {
                    let entry = Entry::parse(e, fat32);
                    let lfn = long.take().and_then(|l| l.finish(&entry.raw_name));
                    if &entry.raw_name == b".          " || &entry.raw_name == b"..         " {
                        continue;
                    }
                    let off = start + i as u64 * ENTRY;
                    if entry.is_dir() && entry.cluster == 0 {
                        return Err(corrupt(format!(
                            "directory '{}' (node {off}) has no cluster",
                            entry.display()
                        )));
                    }
                    let name = match lfn {
                        Some(n) => n,
                        None => {
                            let n = entry.short_name();
                            if n.is_empty()
                                || n == b"."
                                || n == b".."
                                || n.iter().any(|&c| c == b'/' || c == 0)
                            {
                                return Err(corrupt(format!(
                                    "directory entry at byte {off} has an invalid name {:?}",
                                    String::from_utf8_lossy(&n)
                                )));
                            }
                            n
                        }
                    };
                    items.push((name, off));
                }
            }
        }
        Ok((items, label))
    }
}

fn node_of(id: u64, e: &Entry) -> Node {
    let dir = e.is_dir();
    let mtime = fat_time(e.wrt_date, e.wrt_time, 0);
    Node {
        id,
        kind: if dir { EntryKind::Dir } else { EntryKind::File },
        mode: if dir {
            0o755
        } else if e.attr & ATTR_READ_ONLY != 0 {
            0o444
        } else {
            0o644
        },
        uid: 0,
        gid: 0,
        size: if dir { 0 } else { u64::from(e.size) },
        mtime,
        atime: fat_time(e.acc_date, 0, 0),
        ctime: mtime,
        crtime: (e.crt_date != 0).then(|| fat_time(e.crt_date, e.crt_time, e.crt_tenths)),
        flags: u64::from(e.attr),
        xattrs: Vec::new(),
        rdev: None,
        target: None,
        nlink: 1,
    }
}

impl FsReader for Vfat {
    fn info(&self) -> &FsInfo {
        &self.info
    }

    fn root(&self) -> u64 {
        ROOT_ID
    }

    fn span(&self) -> u64 {
        self.geo.end - self.offset
    }

    fn node(&self, id: u64) -> Result<Node, FsError> {
        if id == ROOT_ID {
            // The root has no entry of its own: no times, just the directory attribute.
            let mut root = Entry::parse(&[0u8; 32], false);
            root.attr = ATTR_DIRECTORY;
            return Ok(node_of(id, &root));
        }
        Ok(node_of(id, &self.entry(id)?))
    }

    fn read_dir(&self, id: u64) -> Result<Vec<(Vec<u8>, u64)>, FsError> {
        Ok(self.scan_dir(id)?.0)
    }

    fn skeleton(&self, file_data: &[(u64, u64)]) -> Result<Option<Vec<(u64, u64)>>, FsError> {
        self.skeleton_ranges(file_data).map(Some)
    }

    fn extents(&self, id: u64) -> Result<Vec<FileExtent>, FsError> {
        if id == ROOT_ID {
            return Err(corrupt("the root directory is not a regular file"));
        }
        let e = self.entry(id)?;
        let what = format!("'{}'", e.display());
        if e.is_dir() {
            return Err(corrupt(format!("{what} (node {id}) is a directory")));
        }
        let size = u64::from(e.size);
        let cs = self.geo.cluster_size;
        let need = size.div_ceil(cs);
        if need == 0 {
            // An empty file that kept a chain (Linux reads it empty; fsck.fat would truncate
            // it): the chain must still be sound, and stays in the skeleton.
            if e.cluster != 0 {
                self.chain(e.cluster, &what, Need::Exact(1, 0))?;
            }
            return Ok(Vec::new());
        }
        if need > u64::from(self.geo.clusters) {
            return Err(corrupt(format!(
                "size {size} of {what} exceeds the data area"
            )));
        }
        let runs = self.chain(e.cluster, &what, Need::Exact(need, size))?;
        let mut out = Vec::with_capacity(runs.len());
        let mut logical = 0u64;
        for (start, n) in runs {
            let len = (n * cs).min(size - logical);
            out.push(FileExtent {
                logical,
                len,
                physical: Some(self.cluster_offset(start)),
            });
            logical += len;
        }
        Ok(out)
    }
}
