//! Where an item lives, and location tables (the structure-aware CAS).

use mirage_format::codec::{DecodeError, Reader, Writer};
use mirage_format::{Digest, ItemKind};

/// Compression of a stored payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// zstd frame.
    Zstd,
    /// LZ4 block (no frame; the record header holds the raw length).
    Lz4,
}

impl Compression {
    pub(crate) fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
            Compression::Lz4 => 2,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            2 => Some(Compression::Lz4),
            _ => None,
        }
    }
}

/// How a store compresses the payloads it writes. Every record names its own compression,
/// so a store reads records of every codec whatever it writes now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// The default: batches are stored as is while the disk keeps up with the writers, with
    /// LZ4 while it does not (most of the time is spent writing and syncing; see
    /// `store::auto`). Compression at write time only saves disk bandwidth: `mirage store
    /// compact` recompresses everything with zstd later, so CPU is spent on it at write time
    /// only when the disk is the bottleneck.
    Auto,
    /// Stored as is.
    None,
    /// LZ4: about twice zstd level 1's speed, a third larger output.
    Lz4,
    /// zstd at this level (negative levels are zstd's fast modes).
    Zstd(i32),
}

impl std::str::FromStr for Codec {
    type Err = String;

    /// `auto`, `none`, `lz4`, `zstd` (level 1) or `zstd:N`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Codec::Auto),
            "none" => Ok(Codec::None),
            "lz4" => Ok(Codec::Lz4),
            "zstd" => Ok(Codec::Zstd(1)),
            _ => match s.strip_prefix("zstd:").map(str::parse::<i32>) {
                Some(Ok(l)) if (-7..=22).contains(&l) && l != 0 => Ok(Codec::Zstd(l)),
                _ => Err(format!(
                    "unknown codec {s:?}: expected auto, none, lz4, zstd or zstd:LEVEL (-7..=22, not 0)"
                )),
            },
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Codec::Auto => f.write_str("auto"),
            Codec::None => f.write_str("none"),
            Codec::Lz4 => f.write_str("lz4"),
            Codec::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

/// Location of one record in a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Volume id.
    pub volume: u32,
    /// Offset of the record header in the volume.
    pub offset: u64,
    /// Payload bytes on disk (after compression).
    pub stored_len: u32,
    /// Encoded item length (before compression).
    pub raw_len: u32,
    /// Item kind.
    pub kind: ItemKind,
    /// Payload compression.
    pub compression: Compression,
}

const LOCATION_VERSION: u8 = 1;

impl Location {
    /// Bytes from the record start to the end of its payload.
    pub fn record_len(&self) -> u64 {
        crate::store::record::HEADER_LEN as u64 + u64::from(self.stored_len)
    }

    /// End offset of the record in its volume.
    pub fn end(&self) -> u64 {
        self.offset + self.record_len()
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.uvar(u64::from(self.volume));
        w.uvar(self.offset);
        w.uvar(u64::from(self.stored_len));
        w.uvar(u64::from(self.raw_len));
        w.u8(self.kind.code());
        w.u8(self.compression.code());
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let volume = r.u32var("volume")?;
        let offset = r.uvar("offset")?;
        let stored_len = r.u32var("stored length")?;
        let raw_len = r.u32var("raw length")?;
        let k = r.u8("kind")?;
        let kind = ItemKind::from_code(k).ok_or(DecodeError::UnknownKind(k))?;
        let c = r.u8("compression")?;
        let compression = Compression::from_code(c).ok_or(DecodeError::UnknownTag {
            field: "compression",
            tag: u64::from(c),
        })?;
        let max = crate::store::record::MAX_PAYLOAD;
        if stored_len > max || raw_len > max || offset > 1 << 48 {
            return Err(DecodeError::TooLong {
                field: "location",
                len: u64::from(stored_len.max(raw_len)).max(offset),
                limit: u64::from(max),
            });
        }
        Ok(Location {
            volume,
            offset,
            stored_len,
            raw_len,
            kind,
            compression,
        })
    }

    /// Encoded index value (versioned).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(LOCATION_VERSION);
        self.write(&mut w);
        w.into_bytes()
    }

    /// Decodes an index value.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let v = r.u8("location version")?;
        if v != LOCATION_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                kind: "location",
                version: v,
            });
        }
        let l = Location::read(&mut r)?;
        r.finish()?;
        Ok(l)
    }
}

/// Locations of the references of one item that this node holds, in reference order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocationTable {
    /// (reference, where it is).
    pub entries: Vec<(Digest, Location)>,
}

const LOCTAB_VERSION: u8 = 1;

impl LocationTable {
    /// Encoded value (versioned).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(LOCTAB_VERSION);
        w.uvar(self.entries.len() as u64);
        for (d, l) in &self.entries {
            w.digest(d);
            l.write(&mut w);
        }
        w.into_bytes()
    }

    /// Decodes a stored table.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let v = r.u8("location table version")?;
        if v != LOCTAB_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                kind: "location table",
                version: v,
            });
        }
        let n = r.count("location table", 27)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let d = r.digest("location table digest")?;
            entries.push((d, Location::read(&mut r)?));
        }
        r.finish()?;
        Ok(LocationTable { entries })
    }
}

#[cfg(test)]
mod codec_tests {
    use super::*;

    #[test]
    fn codecs_parse_and_print() {
        for c in [
            Codec::Auto,
            Codec::None,
            Codec::Lz4,
            Codec::Zstd(1),
            Codec::Zstd(-5),
            Codec::Zstd(19),
        ] {
            assert_eq!(c.to_string().parse::<Codec>(), Ok(c));
        }
        assert_eq!("zstd".parse::<Codec>(), Ok(Codec::Zstd(1)));
        for bad in ["", "gzip", "zstd:0", "zstd:23", "zstd:x", "LZ4"] {
            let e = bad.parse::<Codec>().unwrap_err();
            assert!(e.contains("expected auto, none, lz4"), "{e}");
        }
    }

    #[test]
    fn compression_codes_round_trip_and_unknown_ones_are_refused() {
        for c in [Compression::None, Compression::Zstd, Compression::Lz4] {
            assert_eq!(Compression::from_code(c.code()), Some(c));
        }
        assert_eq!(Compression::from_code(3), None);
    }
}
