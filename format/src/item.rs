//! Items: the unit of the content-addressed store. An encoded item is
//! `kind (1 byte) | version (1 byte) | payload`; its digest covers all of it, so a blob can
//! never be read as a manifest.

use crate::codec::{invalid, DecodeError, Reader, Writer};
use crate::delta::Delta;
use crate::digest::{Algorithm, Digest, DigestError, Hasher};
use crate::manifest::{ChunkList, Disk, Filesystem, Image, PartitionContent};
use crate::tree::Tree;

/// Kinds of item, with their stable one-byte codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// File content or one chunk.
    Blob = 1,
    /// Large file or raw region as chunks.
    ChunkList = 2,
    /// A directory.
    Tree = 3,
    /// A filesystem.
    Filesystem = 4,
    /// A disk.
    Disk = 5,
    /// A VM image (root of the Merkle tree; its digest is the serial number).
    Image = 6,
    /// A file-level delta between two images.
    Delta = 7,
}

impl ItemKind {
    /// All kinds.
    pub const ALL: [ItemKind; 7] = [
        ItemKind::Blob,
        ItemKind::ChunkList,
        ItemKind::Tree,
        ItemKind::Filesystem,
        ItemKind::Disk,
        ItemKind::Image,
        ItemKind::Delta,
    ];

    /// The one-byte code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Kind from its code.
    pub fn from_code(c: u8) -> Option<Self> {
        ItemKind::ALL.into_iter().find(|k| k.code() == c)
    }

    /// Current encoding version written for this kind.
    pub fn current_version(self) -> u8 {
        1
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            ItemKind::Blob => "blob",
            ItemKind::ChunkList => "chunklist",
            ItemKind::Tree => "tree",
            ItemKind::Filesystem => "filesystem",
            ItemKind::Disk => "disk",
            ItemKind::Image => "image",
            ItemKind::Delta => "delta",
        }
    }

    /// True for kinds that reference other items.
    pub fn has_refs(self) -> bool {
        self != ItemKind::Blob
    }
}

impl std::fmt::Display for ItemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded item. (Items are handled one at a time, so the size difference between variants
/// does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Item {
    /// Raw bytes.
    Blob {
        /// Content length (the JSON view never prints content).
        #[serde(rename = "size", serialize_with = "ser_len")]
        data: Vec<u8>,
    },
    /// Chunk list.
    ChunkList(ChunkList),
    /// Directory.
    Tree(Tree),
    /// Filesystem.
    Filesystem(Filesystem),
    /// Disk.
    Disk(Disk),
    /// Image.
    Image(Image),
    /// Delta.
    Delta(Delta),
}

fn ser_len<S: serde::Serializer>(d: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.len() as u64)
}

/// Largest encoded item the format accepts (a directory of ~100k entries fits).
pub const MAX_ITEM: usize = 64 << 20;

/// Envelope header of a blob: kind and version.
pub const BLOB_HEADER: [u8; 2] = [ItemKind::Blob as u8, 1];

/// Encodes a blob without building an [`Item`].
pub fn encode_blob(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + data.len());
    v.extend_from_slice(&BLOB_HEADER);
    v.extend_from_slice(data);
    v
}

/// Digest of the blob holding `data`, without copying it.
pub fn blob_digest(alg: Algorithm, data: &[u8]) -> Result<Digest, DigestError> {
    let mut h = Hasher::new(alg);
    h.update(&BLOB_HEADER);
    h.update(data);
    h.finalize()
}

/// Digests of the blobs holding each of `datas`, hashed side by side where the CPU allows
/// ([`crate::sha256_lanes`]); the same digests as [`blob_digest`] of each.
pub fn blob_digests(alg: Algorithm, datas: &[&[u8]]) -> Result<Vec<Digest>, DigestError> {
    Digest::of_each_after(alg, &BLOB_HEADER, datas)
}

/// Digest of an encoded item.
pub fn digest_encoded(alg: Algorithm, encoded: &[u8]) -> Result<Digest, DigestError> {
    Digest::of(alg, encoded)
}

/// The content of an encoded blob, without copying it; `None` for any other kind of item.
/// Checked as [`Item::decode`] checks a blob (length limit, kind, version).
pub fn blob_data(encoded: &[u8]) -> Result<Option<&[u8]>, DecodeError> {
    check_len(encoded)?;
    match peek(encoded)? {
        (ItemKind::Blob, _) => Ok(encoded.get(BLOB_HEADER.len()..)),
        _ => Ok(None),
    }
}

/// An encoded item may not be longer than [`MAX_ITEM`].
fn check_len(encoded: &[u8]) -> Result<(), DecodeError> {
    if encoded.len() > MAX_ITEM {
        return Err(DecodeError::TooLong {
            field: "item",
            len: encoded.len() as u64,
            limit: MAX_ITEM as u64,
        });
    }
    Ok(())
}

/// Kind and version of an encoded item, without decoding the payload.
pub fn peek(encoded: &[u8]) -> Result<(ItemKind, u8), DecodeError> {
    let mut r = Reader::new(encoded);
    let code = r.u8("item kind")?;
    let kind = ItemKind::from_code(code).ok_or(DecodeError::UnknownKind(code))?;
    let version = r.u8("item version")?;
    if version != kind.current_version() {
        return Err(DecodeError::UnsupportedVersion {
            kind: kind.name(),
            version,
        });
    }
    Ok((kind, version))
}

impl Item {
    /// The kind.
    pub fn kind(&self) -> ItemKind {
        match self {
            Item::Blob { .. } => ItemKind::Blob,
            Item::ChunkList(_) => ItemKind::ChunkList,
            Item::Tree(_) => ItemKind::Tree,
            Item::Filesystem(_) => ItemKind::Filesystem,
            Item::Disk(_) => ItemKind::Disk,
            Item::Image(_) => ItemKind::Image,
            Item::Delta(_) => ItemKind::Delta,
        }
    }

    /// Canonical encoding: envelope plus payload.
    pub fn encode(&self) -> Vec<u8> {
        if let Item::Blob { data } = self {
            return encode_blob(data);
        }
        let mut w = Writer::new();
        let kind = self.kind();
        w.u8(kind.code());
        w.u8(kind.current_version());
        match self {
            Item::Blob { .. } => unreachable!("handled above"),
            Item::ChunkList(c) => c.write(&mut w),
            Item::Tree(t) => t.write(&mut w),
            Item::Filesystem(f) => f.write(&mut w),
            Item::Disk(d) => d.write(&mut w),
            Item::Image(i) => i.write(&mut w),
            Item::Delta(d) => d.write(&mut w),
        }
        w.into_bytes()
    }

    /// Decodes and validates an encoded item. Hostile input gives an error, never a panic,
    /// and allocation stays proportional to the input.
    pub fn decode(encoded: &[u8]) -> Result<Item, DecodeError> {
        check_len(encoded)?;
        let (kind, _version) = peek(encoded)?;
        let mut r = Reader::new(&encoded[2..]);
        let item = match kind {
            ItemKind::Blob => Item::Blob {
                data: r.rest().to_vec(),
            },
            ItemKind::ChunkList => Item::ChunkList(ChunkList::read(&mut r)?),
            ItemKind::Tree => Item::Tree(Tree::read(&mut r)?),
            ItemKind::Filesystem => Item::Filesystem(Filesystem::read(&mut r)?),
            ItemKind::Disk => Item::Disk(Disk::read(&mut r)?),
            ItemKind::Image => Item::Image(Image::read(&mut r)?),
            ItemKind::Delta => Item::Delta(Delta::read(&mut r)?),
        };
        r.finish()?;
        Ok(item)
    }

    /// Checks every rule of the format. The decoder is the single source of truth: a value is
    /// valid exactly when its encoding decodes back to it.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if let Item::Blob { data } = self {
            if data.len() + 2 > MAX_ITEM {
                return Err(DecodeError::TooLong {
                    field: "blob",
                    len: data.len() as u64,
                    limit: MAX_ITEM as u64,
                });
            }
            return Ok(());
        }
        let back = Item::decode(&self.encode())?;
        if back != *self {
            return Err(invalid(
                "item",
                "does not survive its own encoding (unsorted or out-of-range fields)",
            ));
        }
        Ok(())
    }

    /// Digest of the canonical encoding.
    pub fn digest(&self, alg: Algorithm) -> Result<Digest, DigestError> {
        match self {
            Item::Blob { data } => blob_digest(alg, data),
            other => Digest::of(alg, &other.encode()),
        }
    }

    /// Every item this one references, in order of appearance, without repeats.
    pub fn refs(&self) -> Vec<Digest> {
        let mut out = Vec::new();
        let mut push = |d: &Digest| out.push(*d);
        match self {
            Item::Blob { .. } => {}
            Item::ChunkList(c) => c.chunks.iter().for_each(|e| push(&e.digest)),
            Item::Tree(t) => t
                .entries
                .iter()
                .filter_map(|e| e.content.as_ref())
                .for_each(push),
            Item::Filesystem(f) => {
                push(&f.root);
                f.skeleton.iter().for_each(&mut push);
                f.pinned.iter().for_each(|e| push(&e.digest));
            }
            Item::Disk(d) => {
                for p in &d.partitions {
                    match &p.content {
                        PartitionContent::Filesystem { digest }
                        | PartitionContent::Raw { digest } => push(digest),
                        PartitionContent::Empty | PartitionContent::Swap { .. } => {}
                    }
                }
                d.regions.iter().for_each(|e| push(&e.digest));
            }
            Item::Image(i) => i.disks.iter().for_each(|d| push(&d.disk)),
            Item::Delta(d) => {
                push(&d.source);
                push(&d.target);
                d.changes
                    .iter()
                    .filter_map(|c| c.entry.as_ref()?.content.as_ref())
                    .for_each(push);
            }
        }
        dedup_in_order(out)
    }
}

/// Removes repeats, keeping first occurrences in order.
pub fn dedup_in_order(v: Vec<Digest>) -> Vec<Digest> {
    if v.len() < 2 {
        return v;
    }
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    v.into_iter().filter(|d| seen.insert(*d)).collect()
}
