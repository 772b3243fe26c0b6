//! Content-defined chunking (FastCDC 2020, crate `fastcdc` pinned exactly: boundaries are part
//! of the format) and the file-content rule: small content is one Blob, large content a
//! ChunkList whose all-zero chunks are not stored.

use std::io::Read;

use crate::digest::{Algorithm, Digest, DigestError};
use crate::item::{blob_digest, encode_blob, Item};
use crate::manifest::{ChunkList, Extent};

/// Smallest chunk.
pub const CHUNK_MIN: usize = 64 * 1024;
/// Target average chunk.
pub const CHUNK_AVG: usize = 256 * 1024;
/// Largest chunk.
pub const CHUNK_MAX: usize = 1024 * 1024;
/// Content up to this size is stored as a single Blob.
pub const INLINE_MAX: u64 = CHUNK_MAX as u64;

/// Chunking errors.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError<E: std::error::Error + 'static> {
    /// Reading the source failed.
    #[error("reading content: {0}")]
    Io(#[from] std::io::Error),
    /// Hashing refused the content.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The sink refused an item.
    #[error("storing a chunk: {0}")]
    Sink(#[source] E),
}

/// One encoded item ready for the store. Its digest is always the hash of its bytes: the
/// fields are private and every constructor hashes, so a store in the same process may take
/// the digest as given instead of hashing the bytes a second time.
#[derive(Debug, Clone)]
pub struct EncodedItem {
    digest: Digest,
    bytes: Vec<u8>,
}

impl EncodedItem {
    /// Its digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Envelope plus payload.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Digest and bytes.
    pub fn into_parts(self) -> (Digest, Vec<u8>) {
        (self.digest, self.bytes)
    }

    /// Encodes `item` and computes its digest.
    pub fn new(alg: Algorithm, item: &Item) -> Result<Self, DigestError> {
        let bytes = item.encode();
        Ok(EncodedItem {
            digest: Digest::of(alg, &bytes)?,
            bytes,
        })
    }

    /// A blob, hashed once.
    pub fn blob(alg: Algorithm, data: &[u8]) -> Result<Self, DigestError> {
        Ok(EncodedItem {
            digest: blob_digest(alg, data)?,
            bytes: encode_blob(data),
        })
    }
}

/// Cuts `reader` into content-defined chunks starting at logical offset `base`. Each non-zero
/// chunk goes to `sink` as a Blob; all-zero chunks are skipped (they become holes). Returns the
/// extents in order and the number of bytes read.
pub fn chunk_stream<R: Read, E: std::error::Error + 'static>(
    reader: R,
    base: u64,
    alg: Algorithm,
    mut sink: impl FnMut(EncodedItem) -> Result<(), E>,
) -> Result<(Vec<Extent>, u64), ChunkError<E>> {
    let mut extents = Vec::new();
    let mut total = 0u64;
    for chunk in fastcdc::v2020::StreamCDC::new(reader, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => ChunkError::Io(io),
            other => ChunkError::Io(std::io::Error::other(other.to_string())),
        })?;
        let len = chunk.length as u64;
        total += len;
        if chunk.data.iter().all(|b| *b == 0) {
            continue;
        }
        let item = EncodedItem::blob(alg, &chunk.data)?;
        extents.push(Extent {
            offset: base + chunk.offset,
            len,
            digest: item.digest,
        });
        sink(item).map_err(ChunkError::Sink)?;
    }
    Ok((extents, total))
}

/// Stores the content of a file of `size` bytes read from `reader`: `None` when empty, a Blob
/// when small, otherwise a ChunkList (whose chunks go to `sink` first, then the list itself).
pub fn store_content<R: Read, E: std::error::Error + 'static>(
    mut reader: R,
    size: u64,
    alg: Algorithm,
    mut sink: impl FnMut(EncodedItem) -> Result<(), E>,
) -> Result<Option<Digest>, ChunkError<E>> {
    if size == 0 {
        return Ok(None);
    }
    if size <= INLINE_MAX {
        let mut data = Vec::with_capacity(size as usize);
        (&mut reader).take(size).read_to_end(&mut data)?;
        if data.len() as u64 != size {
            return Err(ChunkError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "content shorter than its size: {} of {size} bytes",
                    data.len()
                ),
            )));
        }
        let item = EncodedItem::blob(alg, &data)?;
        let d = item.digest;
        sink(item).map_err(ChunkError::Sink)?;
        return Ok(Some(d));
    }
    let (chunks, read) = chunk_stream(reader.take(size), 0, alg, &mut sink)?;
    if read != size {
        return Err(ChunkError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("content shorter than its size: {read} of {size} bytes"),
        )));
    }
    let list = EncodedItem::new(alg, &Item::ChunkList(ChunkList { size, chunks }))?;
    let d = list.digest;
    sink(list).map_err(ChunkError::Sink)?;
    Ok(Some(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunks_of(data: &[u8]) -> Vec<Extent> {
        let (v, n) =
            chunk_stream::<_, std::convert::Infallible>(data, 0, Algorithm::Sha256, |_| Ok(()))
                .unwrap();
        assert_eq!(n, data.len() as u64);
        v
    }

    #[test]
    fn boundaries_are_content_defined_and_pinned() {
        let data = pseudo_random(8 << 20, 42);
        let a = chunks_of(&data);
        assert!(a.len() > 8, "8 MiB in {} chunks", a.len());
        for e in &a {
            assert!(e.len <= CHUNK_MAX as u64);
        }
        // Golden: the first boundaries of this input are part of the format.
        let firsts: Vec<u64> = a.iter().take(4).map(|e| e.offset + e.len).collect();
        assert_eq!(firsts, GOLDEN_BOUNDARIES);
        // An insertion near the start changes only nearby chunks.
        let mut edited = data.clone();
        edited.splice(1000..1000, b"inserted bytes".iter().copied());
        let b = chunks_of(&edited);
        let set_a: std::collections::HashSet<_> = a.iter().map(|e| e.digest).collect();
        let shared = b.iter().filter(|e| set_a.contains(&e.digest)).count();
        assert!(
            shared + 3 >= a.len(),
            "only {shared} of {} chunks shared",
            a.len()
        );
    }

    const GOLDEN_BOUNDARIES: [u64; 4] = [325_267, 961_221, 1_453_140, 2_314_116];

    #[test]
    fn zero_chunks_are_holes_and_sizes_round_trip() {
        let mut data = pseudo_random(3 << 20, 7);
        data[(1 << 20)..(5 << 19)].fill(0);
        data.extend(std::iter::repeat_n(0u8, 4 << 20));
        let mut stored = Vec::new();
        let d = store_content::<_, std::convert::Infallible>(
            data.as_slice(),
            data.len() as u64,
            Algorithm::Sha256,
            |i| {
                stored.push(i);
                Ok(())
            },
        )
        .unwrap()
        .unwrap();
        let list = stored.last().unwrap();
        assert_eq!(list.digest, d);
        let Item::ChunkList(cl) = Item::decode(&list.bytes).unwrap() else {
            panic!("not a chunk list")
        };
        assert_eq!(cl.size, data.len() as u64);
        let covered: u64 = cl.chunks.iter().map(|e| e.len).sum();
        assert!(covered <= (3 << 20) - (1 << 19) + CHUNK_MAX as u64 * 2);
        // Rebuild and compare.
        let mut out = vec![0u8; data.len()];
        for e in &cl.chunks {
            let blob = stored.iter().find(|i| i.digest == e.digest).unwrap();
            out[e.offset as usize..(e.offset + e.len) as usize].copy_from_slice(&blob.bytes[2..]);
        }
        assert_eq!(out, data);
    }

    #[test]
    fn small_content_is_one_blob_and_short_reads_fail() {
        let mut stored = Vec::new();
        let d =
            store_content::<_, std::convert::Infallible>(&b"hello"[..], 5, Algorithm::Sha1, |i| {
                stored.push(i);
                Ok(())
            })
            .unwrap();
        assert_eq!(d, Some(blob_digest(Algorithm::Sha1, b"hello").unwrap()));
        assert_eq!(stored.len(), 1);
        let short =
            store_content::<_, std::convert::Infallible>(&b"hi"[..], 5, Algorithm::Sha256, |_| {
                Ok(())
            });
        assert!(matches!(short, Err(ChunkError::Io(_))));
        assert_eq!(
            store_content::<_, std::convert::Infallible>(
                &b""[..],
                0,
                Algorithm::Sha256,
                |_| Ok(())
            )
            .unwrap(),
            None
        );
    }
}
