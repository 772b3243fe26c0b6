//! Partition tables: MBR (primary, extended and logical partitions) and GPT (with its
//! protective MBR; primary header and entries checked by CRC, the backup used when either is
//! damaged). Partitions past the end of the disk, overlapping partitions, EBR loops and bad
//! CRCs are errors that name the problem.

use mirage_format::{Param, Params, TableType};

use super::{malformed, BlockSource, ImageError};
use crate::le::{le32, le64};

/// Logical sector size assumed for tables (512; 4 KiB-sector GPT and MBR are detected).
pub const SECTOR: u64 = 512;
const MAX_LOGICAL: usize = 256;
const MAX_GPT_ENTRIES: u32 = 4096;

/// One partition as found in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartEntry {
    /// Number: 1-4 primary, 5+ logical (MBR); 1-based entry index (GPT).
    pub number: u32,
    /// Start in bytes.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// MBR type byte or GPT type GUID (16 bytes, on-disk order).
    pub type_id: Vec<u8>,
    /// GPT unique GUID (on-disk order), empty for MBR.
    pub guid: Vec<u8>,
    /// GPT name (UTF-16LE, trailing NULs trimmed), empty for MBR.
    pub name: Vec<u8>,
    /// GPT attributes; MBR: the status byte (0x80 = bootable).
    pub attributes: u64,
    /// Other fields.
    pub params: Params,
    /// MBR extended-partition container (holds the logical partitions, no content itself).
    pub container: bool,
}

/// A parsed partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Kind of table.
    pub kind: TableType,
    /// Sector size the table uses.
    pub sector_size: u64,
    /// MBR disk signature (4 bytes) or GPT disk GUID (16 bytes).
    pub disk_id: Vec<u8>,
    /// Table-level fields (GPT header values).
    pub params: Params,
    /// Partitions sorted by number.
    pub partitions: Vec<PartEntry>,
}

fn read(src: &dyn BlockSource, offset: u64, len: u64, what: &str) -> Result<Vec<u8>, ImageError> {
    if offset.checked_add(len).is_none_or(|e| e > src.len()) {
        return Err(malformed(format!(
            "{what} at byte {offset} lies past the end of the {}-byte disk",
            src.len()
        )));
    }
    let mut b = vec![0u8; len as usize];
    src.read_at(&mut b, offset)?;
    Ok(b)
}

/// Finds and parses the partition table; `TableType::None` when the disk has none.
pub fn parse(src: &dyn BlockSource) -> Result<Table, ImageError> {
    let none = Table {
        kind: TableType::None,
        sector_size: SECTOR,
        disk_id: Vec::new(),
        params: Params::new(),
        partitions: Vec::new(),
    };
    if src.len() < SECTOR {
        return Ok(none);
    }
    let mbr = read(src, 0, SECTOR, "MBR")?;
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        return Ok(none);
    }
    let entries: Vec<&[u8]> = (0..4)
        .map(|i| &mbr[446 + 16 * i..446 + 16 * (i + 1)])
        .collect();
    // A boot sector of a bare filesystem (FAT, NTFS) also ends in 55 AA: a partition table
    // needs sane status bytes.
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok(none);
    }
    // A FAT boot sector whose boot code happens to look like an empty table is a bare
    // filesystem, not a partitioned disk.
    if entries.iter().all(|e| e[4] == 0) && crate::fs::vfat::probe(src, 0, src.len()) {
        return Ok(none);
    }
    if entries.iter().any(|e| e[4] == 0xEE) {
        for sector in [SECTOR, 4096] {
            if src.len() >= 2 * sector {
                let h = read(src, sector, sector, "GPT header")?;
                if &h[..8] == b"EFI PART" {
                    return parse_gpt(src, sector);
                }
            }
        }
        return Err(malformed("protective MBR (type 0xEE) without a GPT header"));
    }
    let classic = parse_mbr(src, &mbr, SECTOR);
    if classic.as_ref().is_ok_and(|t| holds_filesystems(src, t)) {
        return classic;
    }
    // A disk of 4 KiB logical sectors (4Kn) counts its MBR and EBRs in them: taken so only
    // when the table reads that way and a partition then holds a filesystem Mirage knows,
    // where in 512-byte sectors none does (or the table does not read at all).
    match parse_mbr(src, &mbr, 4096) {
        Ok(t) if holds_filesystems(src, &t) => Ok(t),
        _ => classic,
    }
}

/// Whether a partition of `t` starts with an ext2/3/4 or FAT filesystem or Linux swap.
fn holds_filesystems(src: &dyn BlockSource, t: &Table) -> bool {
    t.partitions.iter().filter(|p| !p.container).any(|p| {
        crate::fs::swap::page_size(src, p.start, p.size).is_ok_and(|page| page.is_some())
            || crate::fs::ext4::probe(src, p.start, p.size)
            || crate::fs::vfat::probe(src, p.start, p.size)
    })
}

fn chs(b: &[u8]) -> Param {
    Param::Bytes(b.to_vec())
}

/// The MBR and its EBR chain in `sector`-byte sectors.
fn parse_mbr(src: &dyn BlockSource, mbr: &[u8], sector: u64) -> Result<Table, ImageError> {
    let disk_len = src.len();
    let mut parts = Vec::new();
    let mut extended: Option<(u64, u64)> = None;
    for i in 0..4 {
        let e = &mbr[446 + 16 * i..446 + 16 * (i + 1)];
        let ty = e[4];
        let (lba, sectors) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        if ty == 0 || sectors == 0 {
            continue;
        }
        let (start, size) = (lba * sector, sectors * sector);
        check_bounds(i as u32 + 1, start, size, disk_len)?;
        let container = matches!(ty, 0x05 | 0x0F | 0x85);
        if container {
            if extended.is_some() {
                return Err(malformed("MBR has two extended partitions"));
            }
            extended = Some((lba, sectors));
        }
        let mut params = Params::new();
        params.insert("chs_first".into(), chs(&e[1..4]));
        params.insert("chs_last".into(), chs(&e[5..8]));
        parts.push(PartEntry {
            number: i as u32 + 1,
            start,
            size,
            type_id: vec![ty],
            guid: Vec::new(),
            name: Vec::new(),
            attributes: u64::from(e[0]),
            params,
            container,
        });
    }
    if let Some((ext_lba, ext_sectors)) = extended {
        let mut next = 0u64; // relative to the extended partition
        let mut seen = std::collections::HashSet::new();
        let mut number = 5;
        loop {
            if !seen.insert(next) || seen.len() > MAX_LOGICAL {
                return Err(malformed(format!(
                    "extended partition chain loops or exceeds {MAX_LOGICAL} logical partitions"
                )));
            }
            if next >= ext_sectors {
                return Err(malformed(format!(
                    "EBR at sector {} lies outside the extended partition",
                    ext_lba + next
                )));
            }
            let ebr_lba = ext_lba + next;
            let ebr = read(src, ebr_lba * sector, sector, "EBR")?;
            if ebr[510] != 0x55 || ebr[511] != 0xAA {
                return Err(malformed(format!(
                    "EBR at sector {ebr_lba} has no 55 AA signature"
                )));
            }
            let (e1, e2) = (&ebr[446..462], &ebr[462..478]);
            if e1[4] != 0 && le32(e1, 12) != 0 {
                let start = (ebr_lba + u64::from(le32(e1, 8))) * sector;
                let size = u64::from(le32(e1, 12)) * sector;
                check_bounds(number, start, size, disk_len)?;
                let (ext_start, ext_end) = (ext_lba * sector, (ext_lba + ext_sectors) * sector);
                if start < ext_start || start + size > ext_end {
                    return Err(malformed(format!(
                        "logical partition {number} lies outside its extended partition"
                    )));
                }
                let mut params = Params::new();
                params.insert("chs_first".into(), chs(&e1[1..4]));
                params.insert("chs_last".into(), chs(&e1[5..8]));
                params.insert("ebr_lba".into(), Param::U64(ebr_lba));
                parts.push(PartEntry {
                    number,
                    start,
                    size,
                    type_id: vec![e1[4]],
                    guid: Vec::new(),
                    name: Vec::new(),
                    attributes: u64::from(e1[0]),
                    params,
                    container: false,
                });
                number += 1;
            }
            if e2[4] == 0 || le32(e2, 12) == 0 {
                break;
            }
            next = u64::from(le32(e2, 8));
        }
    }
    check_overlaps(&parts)?;
    parts.sort_by_key(|p| p.number);
    Ok(Table {
        kind: TableType::Mbr,
        sector_size: sector,
        disk_id: mbr[440..444].to_vec(),
        params: Params::new(),
        partitions: parts,
    })
}

fn check_bounds(number: u32, start: u64, size: u64, disk_len: u64) -> Result<(), ImageError> {
    if start.checked_add(size).is_none_or(|e| e > disk_len) {
        return Err(malformed(format!(
            "partition {number} ({start}+{size} bytes) extends past the end of the {disk_len}-byte disk"
        )));
    }
    Ok(())
}

fn check_overlaps(parts: &[PartEntry]) -> Result<(), ImageError> {
    let mut v: Vec<&PartEntry> = parts.iter().filter(|p| !p.container).collect();
    v.sort_by_key(|p| p.start);
    for w in v.windows(2) {
        if w[0].start + w[0].size > w[1].start {
            return Err(malformed(format!(
                "partitions {} and {} overlap",
                w[0].number, w[1].number
            )));
        }
    }
    // Primary partitions must not overlap the extended container either.
    if let Some(c) = parts.iter().find(|p| p.container) {
        for p in parts.iter().filter(|p| !p.container && p.number <= 4) {
            if p.start < c.start + c.size && c.start < p.start + p.size {
                return Err(malformed(format!(
                    "partition {} overlaps the extended partition {}",
                    p.number, c.number
                )));
            }
        }
    }
    Ok(())
}

fn crc32(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

/// Reads and checks a GPT header at byte `at`; returns the header bytes.
fn gpt_header(src: &dyn BlockSource, at: u64, sector: u64) -> Result<Vec<u8>, String> {
    let h = read(src, at, sector, "GPT header").map_err(|e| e.to_string())?;
    if &h[..8] != b"EFI PART" {
        return Err("no EFI PART signature".into());
    }
    let hsize = le32(&h, 12) as usize;
    if !(92..=sector as usize).contains(&hsize) {
        return Err(format!("header size {hsize}"));
    }
    let mut copy = h[..hsize].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != le32(&h, 16) {
        return Err("header CRC mismatch".into());
    }
    Ok(h)
}

/// A GPT header at byte `at` and its partition entry array, both checked by CRC.
fn gpt_at(src: &dyn BlockSource, at: u64, sector: u64) -> Result<(Vec<u8>, Vec<u8>), String> {
    let h = gpt_header(src, at, sector)?;
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80);
    let esize = le32(&h, 84);
    if count > MAX_GPT_ENTRIES || esize < 128 || esize % 128 != 0 || esize > 4096 {
        return Err(format!(
            "{count} entries of {esize} bytes is not a valid table"
        ));
    }
    let table = read(
        src,
        entries_lba.saturating_mul(sector),
        u64::from(count) * u64::from(esize),
        "GPT partition entries",
    )
    .map_err(|e| e.to_string())?;
    if crc32(&table) != le32(&h, 88) {
        return Err("partition entry array CRC mismatch".into());
    }
    Ok((h, table))
}

fn parse_gpt(src: &dyn BlockSource, sector: u64) -> Result<Table, ImageError> {
    let disk_len = src.len();
    // As the kernel and the partitioning tools do: the backup when the primary header or its
    // entries are damaged (the damaged bytes stay in the raw regions, so checkout still
    // writes the disk as it was).
    let (h, table, which) = match gpt_at(src, sector, sector) {
        Ok((h, t)) => (h, t, "primary"),
        Err(primary) => {
            let last = (disk_len / sector - 1) * sector;
            match gpt_at(src, last, sector) {
                Ok((h, t)) => (h, t, "backup"),
                Err(backup) => {
                    return Err(malformed(format!(
                        "GPT: primary table unusable ({primary}), backup unusable ({backup})"
                    )))
                }
            }
        }
    };
    let first_usable = le64(&h, 40);
    let last_usable = le64(&h, 48);
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80);
    let esize = le32(&h, 84);
    if first_usable > last_usable || last_usable.saturating_mul(sector) >= disk_len {
        return Err(malformed(format!(
            "GPT: usable range {first_usable}..={last_usable} does not fit the disk"
        )));
    }
    let mut parts = Vec::new();
    for (i, e) in table.chunks(esize as usize).enumerate() {
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let number = i as u32 + 1;
        if last < first {
            return Err(malformed(format!(
                "GPT partition {number}: last LBA {last} before first {first}"
            )));
        }
        if first < first_usable || last > last_usable {
            return Err(malformed(format!(
                "GPT partition {number} ({first}..={last}) lies outside the usable range {first_usable}..={last_usable}"
            )));
        }
        let start = first * sector;
        let size = (last - first + 1) * sector;
        check_bounds(number, start, size, disk_len)?;
        let mut name = e[56..128].to_vec();
        while name.len() >= 2 && name[name.len() - 2..] == [0, 0] {
            name.truncate(name.len() - 2);
        }
        parts.push(PartEntry {
            number,
            start,
            size,
            type_id: e[..16].to_vec(),
            guid: e[16..32].to_vec(),
            name,
            attributes: le64(e, 48),
            params: Params::new(),
            container: false,
        });
    }
    check_overlaps(&parts)?;
    let mut params = Params::new();
    params.insert("first_usable_lba".into(), Param::U64(first_usable));
    params.insert("last_usable_lba".into(), Param::U64(last_usable));
    params.insert("entries_lba".into(), Param::U64(entries_lba));
    params.insert("entry_count".into(), Param::U64(u64::from(count)));
    params.insert("entry_size".into(), Param::U64(u64::from(esize)));
    params.insert("header_used".into(), Param::Text(which.into()));
    Ok(Table {
        kind: TableType::Gpt,
        sector_size: sector,
        disk_id: h[56..72].to_vec(),
        params,
        partitions: parts,
    })
}

/// Formats a GUID stored in GPT's mixed-endian order as text.
pub fn guid_text(b: &[u8]) -> String {
    if b.len() != 16 {
        return b.iter().map(|x| format!("{x:02x}")).collect();
    }
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}
