//! Manifests above the file level: `ChunkList`, `Filesystem`, `Disk`, `Image`.

use crate::codec::{invalid, DecodeError, Reader, Writer};
use crate::digest::Digest;
use crate::params::{bytes_view, read_params, write_params, Params};

/// Longest identifier, label, name or type field of a manifest.
pub const MAX_FIELD: usize = 4096;

/// A piece of a byte range: `len` bytes at `offset`, with content `digest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Extent {
    /// Offset from the start of the range.
    pub offset: u64,
    /// Length in bytes (> 0).
    pub len: u64,
    /// Content digest.
    pub digest: Digest,
}

fn write_extents(w: &mut Writer, v: &[Extent]) {
    w.uvar(v.len() as u64);
    let mut end = 0u64;
    for e in v {
        // Offsets are stored as the gap after the previous extent: compact and canonical.
        w.uvar(e.offset.wrapping_sub(end));
        w.uvar(e.len);
        w.digest(&e.digest);
        end = e.offset.wrapping_add(e.len);
    }
}

fn read_extents(r: &mut Reader<'_>, limit: u64) -> Result<Vec<Extent>, DecodeError> {
    let n = r.count("extents", 23)?;
    let mut out = Vec::with_capacity(n);
    let mut end = 0u64;
    for _ in 0..n {
        let gap = r.uvar("extent gap")?;
        let len = r.uvar("extent length")?;
        let digest = r.digest("extent digest")?;
        let offset = end
            .checked_add(gap)
            .ok_or_else(|| invalid("extent", "offset overflows"))?;
        let new_end = offset
            .checked_add(len)
            .ok_or_else(|| invalid("extent", "end overflows"))?;
        if len == 0 {
            return Err(invalid("extent", format!("empty extent at {offset}")));
        }
        if new_end > limit {
            return Err(invalid("extent", format!("{offset}+{len} beyond {limit}")));
        }
        out.push(Extent {
            offset,
            len,
            digest,
        });
        end = new_end;
    }
    Ok(out)
}

fn validate_extents(v: &[Extent], limit: u64) -> Result<(), DecodeError> {
    let mut end = 0u64;
    for e in v {
        let stop = e
            .offset
            .checked_add(e.len)
            .ok_or_else(|| invalid("extent", "end overflows"))?;
        if e.len == 0 || e.offset < end || stop > limit {
            return Err(invalid(
                "extents",
                format!(
                    "{}+{} empty, overlapping, unsorted or beyond {limit}",
                    e.offset, e.len
                ),
            ));
        }
        end = stop;
    }
    Ok(())
}

/// A large file or raw disk region: ordered chunks; gaps are holes or zero runs.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct ChunkList {
    /// Logical size of the whole range.
    pub size: u64,
    /// Chunks (each a Blob), sorted, non-overlapping, inside `size`.
    pub chunks: Vec<Extent>,
}

impl ChunkList {
    /// Checks order and bounds.
    pub fn validate(&self) -> Result<(), DecodeError> {
        validate_extents(&self.chunks, self.size)
    }
    pub(crate) fn write(&self, w: &mut Writer) {
        w.uvar(self.size);
        write_extents(w, &self.chunks);
    }
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let size = r.uvar("chunklist size")?;
        let chunks = read_extents(r, size)?;
        Ok(ChunkList { size, chunks })
    }
}

/// A filesystem and everything needed to recreate it with the same identity.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Filesystem {
    /// Type: `ext2`, `ext3`, `ext4`, `vfat`, ...
    pub fs_type: String,
    /// Filesystem UUID or volume id bytes.
    #[serde(with = "bytes_view")]
    pub uuid: Vec<u8>,
    /// Label bytes.
    #[serde(with = "bytes_view")]
    pub label: Vec<u8>,
    /// Creation parameters (block size, inode size, features, hash seed, ...).
    pub params: Params,
    /// Root directory (a Tree).
    pub root: Digest,
    /// Metadata of the root directory itself (unnamed, no content).
    pub root_attrs: crate::tree::TreeEntry,
    /// Hybrid indexing: digest of the skeleton backup, if any.
    pub skeleton: Option<Digest>,
    /// Hybrid indexing: raw extents pinned at their byte offsets.
    pub pinned: Vec<Extent>,
}

impl Filesystem {
    /// Checks the rules of the format.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.fs_type.is_empty() || self.fs_type.len() > MAX_FIELD {
            return Err(invalid("filesystem type", "empty or too long"));
        }
        self.root_attrs.validate_root()?;
        validate_extents(&self.pinned, u64::MAX)
    }
    pub(crate) fn write(&self, w: &mut Writer) {
        w.bytes(self.fs_type.as_bytes());
        w.bytes(&self.uuid);
        w.bytes(&self.label);
        write_params(w, &self.params);
        w.digest(&self.root);
        self.root_attrs.write_unnamed(w);
        match &self.skeleton {
            Some(d) => {
                w.u8(1);
                w.digest(d);
            }
            None => w.u8(0),
        }
        write_extents(w, &self.pinned);
    }
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let fs_type = std::str::from_utf8(r.bytes("fs type", MAX_FIELD)?)
            .map_err(|_| invalid("filesystem type", "not UTF-8"))?
            .to_owned();
        let uuid = r.bytes("fs uuid", MAX_FIELD)?.to_vec();
        let label = r.bytes("fs label", MAX_FIELD)?.to_vec();
        let params = read_params(r)?;
        let root = r.digest("fs root")?;
        let root_attrs = crate::tree::TreeEntry::read_unnamed(r, Vec::new())?;
        let skeleton = match r.u8("skeleton flag")? {
            0 => None,
            1 => Some(r.digest("skeleton")?),
            t => {
                return Err(DecodeError::UnknownTag {
                    field: "skeleton flag",
                    tag: u64::from(t),
                })
            }
        };
        let pinned = read_extents(r, u64::MAX)?;
        let fs = Filesystem {
            fs_type,
            uuid,
            label,
            params,
            root,
            root_attrs,
            skeleton,
            pinned,
        };
        fs.validate()?;
        Ok(fs)
    }
}

/// Partition table type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableType {
    /// No partition table: the disk is one partition-less region.
    None,
    /// MBR (DOS) with primary, extended and logical partitions.
    Mbr,
    /// GPT with its protective MBR.
    Gpt,
}

/// What a partition holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum PartitionContent {
    /// Nothing worth storing (all zeros or unused).
    Empty,
    /// A filesystem manifest.
    Filesystem {
        /// The Filesystem item.
        digest: Digest,
    },
    /// Raw bytes as a ChunkList.
    Raw {
        /// The ChunkList item.
        digest: Digest,
    },
    /// Linux swap: identity only, never contents.
    Swap {
        /// Swap UUID.
        #[serde(with = "bytes_view")]
        uuid: Vec<u8>,
        /// Swap label.
        #[serde(with = "bytes_view")]
        label: Vec<u8>,
        /// Other header fields (page size, version, ...).
        params: Params,
    },
}

/// One partition with its exact geometry and identifiers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// Number in the table (1-based; logical MBR partitions from 5).
    pub number: u32,
    /// Start in bytes.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Type: one byte for MBR, 16 for a GPT type GUID.
    #[serde(with = "bytes_view")]
    pub type_id: Vec<u8>,
    /// GPT unique partition GUID (empty for MBR).
    #[serde(with = "bytes_view")]
    pub guid: Vec<u8>,
    /// GPT partition name (UTF-16LE as stored) or empty.
    #[serde(with = "bytes_view")]
    pub name: Vec<u8>,
    /// GPT attribute bits, or the MBR boot flag in bit 7.
    pub attributes: u64,
    /// Other table fields (CHS values, extended-partition chain, ...).
    pub params: Params,
    /// Content.
    pub content: PartitionContent,
}

/// A disk: table, partitions, and the raw regions outside them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Disk {
    /// Size in bytes.
    pub size: u64,
    /// Logical sector size.
    pub sector_size: u32,
    /// Partition table type.
    pub table: TableType,
    /// MBR disk signature or GPT disk GUID.
    #[serde(with = "bytes_view")]
    pub disk_id: Vec<u8>,
    /// Other table parameters (GPT header fields, ...).
    pub params: Params,
    /// Partitions sorted by number.
    pub partitions: Vec<Partition>,
    /// Raw regions outside partitions (boot code, gaps), each a ChunkList item.
    pub regions: Vec<Extent>,
}

impl Disk {
    /// Checks the rules of the format.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if !(512..=65536).contains(&self.sector_size) || !self.sector_size.is_power_of_two() {
            return Err(invalid("sector size", self.sector_size.to_string()));
        }
        for pair in self.partitions.windows(2) {
            if pair[0].number >= pair[1].number {
                return Err(invalid("partitions", "unsorted or duplicate numbers"));
            }
        }
        if self.partitions.first().is_some_and(|p| p.number == 0) {
            return Err(invalid("partitions", "numbers start at 1"));
        }
        for p in &self.partitions {
            let end = p.start.checked_add(p.size);
            if end.is_none_or(|e| e > self.size) {
                return Err(invalid(
                    "partition",
                    format!(
                        "{} at {}+{} beyond disk size {}",
                        p.number, p.start, p.size, self.size
                    ),
                ));
            }
        }
        validate_extents(&self.regions, self.size)
    }
    pub(crate) fn write(&self, w: &mut Writer) {
        w.uvar(self.size);
        w.uvar(u64::from(self.sector_size));
        w.u8(match self.table {
            TableType::None => 0,
            TableType::Mbr => 1,
            TableType::Gpt => 2,
        });
        w.bytes(&self.disk_id);
        write_params(w, &self.params);
        w.uvar(self.partitions.len() as u64);
        for p in &self.partitions {
            w.uvar(u64::from(p.number));
            w.uvar(p.start);
            w.uvar(p.size);
            w.bytes(&p.type_id);
            w.bytes(&p.guid);
            w.bytes(&p.name);
            w.uvar(p.attributes);
            write_params(w, &p.params);
            match &p.content {
                PartitionContent::Empty => w.u8(0),
                PartitionContent::Filesystem { digest } => {
                    w.u8(1);
                    w.digest(digest);
                }
                PartitionContent::Raw { digest } => {
                    w.u8(2);
                    w.digest(digest);
                }
                PartitionContent::Swap {
                    uuid,
                    label,
                    params,
                } => {
                    w.u8(3);
                    w.bytes(uuid);
                    w.bytes(label);
                    write_params(w, params);
                }
            }
        }
        write_extents(w, &self.regions);
    }
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let size = r.uvar("disk size")?;
        let sector_size = r.u32var("sector size")?;
        let table = match r.u8("table type")? {
            0 => TableType::None,
            1 => TableType::Mbr,
            2 => TableType::Gpt,
            t => {
                return Err(DecodeError::UnknownTag {
                    field: "table type",
                    tag: u64::from(t),
                })
            }
        };
        let disk_id = r.bytes("disk id", MAX_FIELD)?.to_vec();
        let params = read_params(r)?;
        let n = r.count("partitions", 9)?;
        let mut partitions = Vec::with_capacity(n);
        for _ in 0..n {
            let number = r.u32var("partition number")?;
            let start = r.uvar("partition start")?;
            let psize = r.uvar("partition size")?;
            let type_id = r.bytes("partition type", MAX_FIELD)?.to_vec();
            let guid = r.bytes("partition guid", MAX_FIELD)?.to_vec();
            let name = r.bytes("partition name", MAX_FIELD)?.to_vec();
            let attributes = r.uvar("partition attributes")?;
            let pparams = read_params(r)?;
            let content = match r.u8("partition content")? {
                0 => PartitionContent::Empty,
                1 => PartitionContent::Filesystem {
                    digest: r.digest("partition filesystem")?,
                },
                2 => PartitionContent::Raw {
                    digest: r.digest("partition raw")?,
                },
                3 => PartitionContent::Swap {
                    uuid: r.bytes("swap uuid", MAX_FIELD)?.to_vec(),
                    label: r.bytes("swap label", MAX_FIELD)?.to_vec(),
                    params: read_params(r)?,
                },
                t => {
                    return Err(DecodeError::UnknownTag {
                        field: "partition content",
                        tag: u64::from(t),
                    })
                }
            };
            partitions.push(Partition {
                number,
                start,
                size: psize,
                type_id,
                guid,
                name,
                attributes,
                params: pparams,
                content,
            });
        }
        let regions = read_extents(r, size)?;
        let d = Disk {
            size,
            sector_size,
            table,
            disk_id,
            params,
            partitions,
            regions,
        };
        d.validate()?;
        Ok(d)
    }
}

/// One disk of an image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImageDisk {
    /// Disk name within the image (e.g. `vda`), unique.
    #[serde(with = "bytes_view")]
    pub name: Vec<u8>,
    /// The Disk item.
    pub disk: Digest,
}

/// A VM image: its disks and the metadata that is part of the image itself. Never names,
/// owners or times: those belong to the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct Image {
    /// Disks in boot order.
    pub disks: Vec<ImageDisk>,
    /// Image metadata (architecture, firmware, ...).
    pub meta: Params,
}

impl Image {
    /// Checks the rules of the format.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let mut names: Vec<&[u8]> = self.disks.iter().map(|d| d.name.as_slice()).collect();
        if names.iter().any(|n| n.is_empty()) {
            return Err(invalid("image", "empty disk name"));
        }
        names.sort_unstable();
        if names.windows(2).any(|p| p[0] == p[1]) {
            return Err(invalid("image", "duplicate disk names"));
        }
        Ok(())
    }
    pub(crate) fn write(&self, w: &mut Writer) {
        w.uvar(self.disks.len() as u64);
        for d in &self.disks {
            w.bytes(&d.name);
            w.digest(&d.disk);
        }
        write_params(w, &self.meta);
    }
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count("image disks", 23)?;
        let mut disks = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.bytes("disk name", MAX_FIELD)?.to_vec();
            let disk = r.digest("disk")?;
            disks.push(ImageDisk { name, disk });
        }
        let meta = read_params(r)?;
        let i = Image { disks, meta };
        i.validate()?;
        Ok(i)
    }
}
