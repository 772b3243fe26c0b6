//! Volume file and record layout (see `docs/FORMAT.md`, "Volumes").
//!
//! A volume starts with a 16-byte header (`MIRAGEVL`, layout version u32 LE, volume id u32 LE),
//! then holds records back to back. From layout version 2 a run of zero bytes from an offset
//! that is not a multiple of [`ALIGN`] up to the next multiple may stand between records (the
//! writer pads around groups it writes with direct I/O); readers skip it. A record is a 52-byte header and its payload:
//!
//! | off | len | field                                               |
//! |-----|-----|-----------------------------------------------------|
//! | 0   | 4   | magic `MRGR`                                        |
//! | 4   | 1   | record version (1)                                  |
//! | 5   | 1   | item kind code                                      |
//! | 6   | 1   | compression (0 none, 1 zstd)                        |
//! | 7   | 1   | digest algorithm code                               |
//! | 8   | 32  | digest bytes, zero-padded                           |
//! | 40  | 4   | raw length: encoded item bytes before compression   |
//! | 44  | 4   | stored length: payload bytes that follow            |
//! | 48  | 4   | CRC32C of bytes 0..48 and of the payload            |

use mirage_format::{Algorithm, Digest, ItemKind};

use crate::store::location::Compression;

/// Volume file magic.
pub const VOLUME_MAGIC: &[u8; 8] = b"MIRAGEVL";
/// Volume layout version written by this build (1: records back to back; 2: zero padding up
/// to an [`ALIGN`] boundary may stand between records).
pub const VOLUME_VERSION: u32 = 2;
/// Oldest volume layout version this build reads.
pub const VOLUME_VERSION_MIN: u32 = 1;
/// Alignment of directly written groups (offset, length and memory).
pub const ALIGN: u64 = 4096;
/// Volume header length.
pub const VOLUME_HEADER_LEN: u64 = 16;
/// Record magic.
pub const RECORD_MAGIC: &[u8; 4] = b"MRGR";
/// Record layout version.
pub const RECORD_VERSION: u8 = 1;
/// Record header length.
pub const HEADER_LEN: usize = 52;
/// Largest payload a record may claim (bounds reads of damaged headers).
pub const MAX_PAYLOAD: u32 = (mirage_format::item::MAX_ITEM as u32) + 1024;

/// Encodes a volume header.
pub fn volume_header(id: u32) -> [u8; VOLUME_HEADER_LEN as usize] {
    let mut h = [0u8; VOLUME_HEADER_LEN as usize];
    h[..8].copy_from_slice(VOLUME_MAGIC);
    h[8..12].copy_from_slice(&VOLUME_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&id.to_le_bytes());
    h
}

/// Checks a volume header; returns the volume id and layout version, or why the header is not
/// usable.
pub fn parse_volume_header(h: &[u8]) -> Result<(u32, u32), String> {
    if h.len() < VOLUME_HEADER_LEN as usize || &h[..8] != VOLUME_MAGIC {
        return Err("not a Mirage volume (bad magic)".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if !(VOLUME_VERSION_MIN..=VOLUME_VERSION).contains(&version) {
        return Err(format!(
            "unsupported volume version {version} (this build reads \
             {VOLUME_VERSION_MIN} to {VOLUME_VERSION})"
        ));
    }
    Ok((u32::from_le_bytes([h[12], h[13], h[14], h[15]]), version))
}

/// `n` rounded up to a multiple of [`ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// A parsed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Item kind.
    pub kind: ItemKind,
    /// Payload compression.
    pub compression: Compression,
    /// Item digest.
    pub digest: Digest,
    /// Encoded item length.
    pub raw_len: u32,
    /// Payload length.
    pub stored_len: u32,
    /// Stored CRC32C.
    pub crc: u32,
}

/// Why a header or record is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFault {
    /// Fewer bytes than a header.
    Short,
    /// Magic or version wrong.
    BadMagic,
    /// A field holds an impossible value.
    BadField(&'static str),
    /// CRC mismatch.
    Crc,
}

impl std::fmt::Display for RecordFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordFault::Short => f.write_str("short record"),
            RecordFault::BadMagic => f.write_str("bad record magic"),
            RecordFault::BadField(w) => write!(f, "impossible {w} in record header"),
            RecordFault::Crc => f.write_str("CRC32C mismatch"),
        }
    }
}

/// Builds a complete record (header and payload).
pub fn encode_record(
    digest: &Digest,
    kind: ItemKind,
    compression: Compression,
    raw_len: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut rec = Vec::with_capacity(HEADER_LEN + payload.len());
    let crc = record_crc(digest, kind, compression, raw_len, payload);
    append_record(&mut rec, digest, kind, compression, raw_len, payload, crc);
    rec
}

/// The header of a record up to its CRC.
fn header_fields(
    digest: &Digest,
    kind: ItemKind,
    compression: Compression,
    raw_len: u32,
    stored_len: usize,
) -> [u8; HEADER_LEN - 4] {
    let mut h = [0u8; HEADER_LEN - 4];
    h[..4].copy_from_slice(RECORD_MAGIC);
    h[4] = RECORD_VERSION;
    h[5] = kind.code();
    h[6] = compression.code();
    h[7] = digest.algorithm().code();
    h[8..8 + digest.as_bytes().len()].copy_from_slice(digest.as_bytes());
    h[40..44].copy_from_slice(&raw_len.to_le_bytes());
    h[44..48].copy_from_slice(&(stored_len as u32).to_le_bytes());
    h
}

/// The CRC32C a record of these fields and `payload` carries (it covers the header fields
/// and the payload, not the record's place, so writers compute it before the committer
/// places the record).
pub fn record_crc(
    digest: &Digest,
    kind: ItemKind,
    compression: Compression,
    raw_len: u32,
    payload: &[u8],
) -> u32 {
    let h = header_fields(digest, kind, compression, raw_len, payload.len());
    crc32c::crc32c_append(crc32c::crc32c(&h), payload)
}

/// Writes the header of an uncompressed record in place, in front of its payload (the
/// `HEADER_LEN` bytes of `header`), given the CRC32C of the payload alone (computed where
/// the payload was written, while it was in the cache); returns the record's CRC.
pub fn put_header(
    header: &mut [u8],
    digest: &Digest,
    kind: ItemKind,
    payload_len: usize,
    payload_crc: u32,
) -> u32 {
    let h = header_fields(
        digest,
        kind,
        Compression::None,
        payload_len as u32,
        payload_len,
    );
    let crc = crc32c_combine(crc32c::crc32c(&h), payload_crc, payload_len);
    header[..HEADER_LEN - 4].copy_from_slice(&h);
    header[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// The CRC-32C polynomial, bit-reflected as the CRC is.
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// `a · b` modulo the CRC-32C polynomial, both bit-reflected (`1 << 31` is 1).
const fn mult_mod_p(a: u32, mut b: u32) -> u32 {
    let (mut m, mut p) = (1u32 << 31, 0u32);
    while m != 0 {
        if a & m != 0 {
            p ^= b;
        }
        m >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32C_POLY
        } else {
            b >> 1
        };
    }
    p
}

/// `x^(2^k)` modulo the polynomial, for every k a length in bytes needs (`3 + 64`).
const X2N: [u32; 67] = {
    let mut t = [0u32; 67];
    // x^1
    let mut p = 1u32 << 30;
    let mut k = 0;
    while k < 67 {
        t[k] = p;
        p = mult_mod_p(p, p);
        k += 1;
    }
    t
};

/// The CRC-32C of `a ‖ b` from the CRC-32C of `a`, that of `b` and the length of `b`: `crc1`
/// times `x^(8·len2)` modulo the polynomial, plus `crc2` (Adler's method: one
/// multiplication per set bit of the length, against the `crc32c` crate's 32 × 32 matrix
/// squarings per bit, which were 10 % of a new image's checkin).
pub fn crc32c_combine(crc1: u32, crc2: u32, len2: usize) -> u32 {
    // x^0
    let mut x8n = 1u32 << 31;
    let (mut n, mut k) = (len2, 3);
    while n != 0 {
        if n & 1 != 0 {
            x8n = mult_mod_p(X2N[k], x8n);
        }
        n >>= 1;
        k += 1;
    }
    mult_mod_p(x8n, crc1) ^ crc2
}

/// Appends a complete record (header and payload, its CRC computed beforehand by
/// [`record_crc`]) to `out`: one copy of the payload.
pub fn append_record(
    out: &mut Vec<u8>,
    digest: &Digest,
    kind: ItemKind,
    compression: Compression,
    raw_len: u32,
    payload: &[u8],
    crc: u32,
) {
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header_fields(
        digest,
        kind,
        compression,
        raw_len,
        payload.len(),
    ));
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parses a header (no CRC check: that needs the payload).
pub fn parse_header(h: &[u8]) -> Result<RecordHeader, RecordFault> {
    if h.len() < HEADER_LEN {
        return Err(RecordFault::Short);
    }
    if &h[..4] != RECORD_MAGIC {
        return Err(RecordFault::BadMagic);
    }
    if h[4] != RECORD_VERSION {
        return Err(RecordFault::BadField("record version"));
    }
    let kind = ItemKind::from_code(h[5]).ok_or(RecordFault::BadField("kind"))?;
    let compression = Compression::from_code(h[6]).ok_or(RecordFault::BadField("compression"))?;
    let alg = Algorithm::from_code(h[7]).ok_or(RecordFault::BadField("algorithm"))?;
    let digest = Digest::from_bytes(alg, &h[8..8 + alg.digest_len()])
        .ok_or(RecordFault::BadField("digest"))?;
    if h[8 + alg.digest_len()..40].iter().any(|b| *b != 0) {
        return Err(RecordFault::BadField("digest padding"));
    }
    let le = |r: std::ops::Range<usize>| {
        u32::from_le_bytes([h[r.start], h[r.start + 1], h[r.start + 2], h[r.start + 3]])
    };
    let raw_len = le(40..44);
    let stored_len = le(44..48);
    let crc = le(48..52);
    if stored_len > MAX_PAYLOAD || raw_len > MAX_PAYLOAD {
        return Err(RecordFault::BadField("length"));
    }
    if compression == Compression::None && raw_len != stored_len {
        return Err(RecordFault::BadField("length"));
    }
    Ok(RecordHeader {
        kind,
        compression,
        digest,
        raw_len,
        stored_len,
        crc,
    })
}

/// Checks the CRC of a whole record (`rec` = header and payload).
pub fn check_crc(rec: &[u8]) -> Result<(), RecordFault> {
    if rec.len() < HEADER_LEN {
        return Err(RecordFault::Short);
    }
    let stored = u32::from_le_bytes([rec[48], rec[49], rec[50], rec[51]]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[..48]), &rec[HEADER_LEN..]);
    if crc == stored {
        Ok(())
    } else {
        Err(RecordFault::Crc)
    }
}

#[cfg(test)]
mod tests {

    proptest::proptest! {
        #[test]
        fn any_two_crcs_combine_as_the_crc_of_both(
            a in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
            b in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
        ) {
            let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
            proptest::prop_assert_eq!(
                crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len()),
                crc32c::crc32c(&whole)
            );
        }
    }

    #[test]
    fn crcs_combine_as_the_crc_of_the_whole() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        for a in [0usize, 1, 7, 52, 4096] {
            for b in (0..300).chain([1023, 4096, 65_536, 70_001, 250_000]) {
                cuts.push((a, b));
            }
        }
        for (a, b) in cuts {
            let (x, y) = (&data[..a], &data[a..a + b]);
            let whole = crc32c::crc32c(&data[..a + b]);
            assert_eq!(
                crc32c_combine(crc32c::crc32c(x), crc32c::crc32c(y), b),
                whole,
                "{a} + {b}"
            );
        }
    }

    use super::*;

    #[test]
    fn record_roundtrip_and_crc() {
        let d = Digest::of(Algorithm::Sha1, b"x").unwrap();
        let rec = encode_record(&d, ItemKind::Blob, Compression::None, 3, b"abc");
        let h = parse_header(&rec).unwrap();
        assert_eq!(h.digest, d);
        assert_eq!(h.stored_len, 3);
        check_crc(&rec).unwrap();
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            let detected = parse_header(&bad).is_err() || check_crc(&bad).is_err();
            assert!(detected, "flip at {i} undetected");
        }
    }
}

thread_local! {
    static LZ4_OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd decompression with a per-thread context (creating one costs more than decompressing
/// a small item).
/// zstd decompression of `payload` into `out` (empty, with room for `raw_len` bytes) with a
/// per-thread context.
fn zstd_decompress_into(payload: &[u8], raw_len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => {
                // Into the capacity from its start: a frame longer than `raw_len` that fits
                // is caught by the caller's length check, one that does not fails here.
                out.reserve(raw_len);
                d.decompress_to_buffer(payload, out).map(|_| ())
            }
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}

/// The encoded item a record's payload holds: decompressed as its header says, and exactly
/// `raw_len` bytes long.
pub(crate) fn decompress(
    compression: Compression,
    payload: &[u8],
    raw_len: usize,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw_len);
    decompress_into(compression, payload, raw_len, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out` (empty; it is given room for `raw_len` bytes).
pub(crate) fn decompress_into(
    compression: Compression,
    payload: &[u8],
    raw_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    out.clear();
    match compression {
        Compression::None => out.extend_from_slice(payload),
        Compression::Zstd => {
            zstd_decompress_into(payload, raw_len, out).map_err(|e| format!("zstd: {e}"))?
        }
        Compression::Lz4 => {
            out.resize(raw_len, 0);
            let n =
                lz4_flex::block::decompress_into(payload, out).map_err(|e| format!("lz4: {e}"))?;
            out.truncate(n);
        }
    }
    if out.len() != raw_len {
        return Err("decompressed length differs from the header".into());
    }
    Ok(())
}

/// LZ4 block compression (`None` if it fails, which a worst-case buffer rules out). The
/// output goes through a per-thread buffer sized for the worst case, so that only the
/// compressed bytes are allocated for each call.
pub(crate) fn lz4_compress(bytes: &[u8]) -> Option<Vec<u8>> {
    LZ4_OUT.with(|cell| {
        let mut out = cell.borrow_mut();
        let bound = lz4_flex::block::get_maximum_output_size(bytes.len());
        if out.len() < bound {
            out.resize(bound, 0);
        }
        let n = lz4_flex::block::compress_into(bytes, &mut out[..]).ok()?;
        Some(out[..n].to_vec())
    })
}

/// zstd compression at `level` with a per-thread context.
pub(crate) fn zstd_compress(bytes: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress(bytes),
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}
