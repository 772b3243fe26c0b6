//! Content-defined chunking (FastCDC 2020, crate `fastcdc` pinned exactly: boundaries are part
//! of the format) and the file-content rule: small content is one Blob, large content a
//! ChunkList whose all-zero chunks are not stored.

use std::io::Read;

use crate::digest::{Algorithm, Digest, DigestError};
use crate::item::{blob_digest, blob_digests, encode_blob, Item, BLOB_HEADER};
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

    /// The blob holding the next `size` bytes of `reader`, read straight into its encoding
    /// (no second copy); an error if the reader ends first.
    pub fn read_blob(alg: Algorithm, reader: impl Read, size: u64) -> std::io::Result<Self> {
        let bytes = read_blob_encoding(reader, size)?;
        // A blob's digest is the hash of its encoding (`blob_digest`).
        let digest = Digest::of(alg, &bytes).map_err(std::io::Error::other)?;
        Ok(EncodedItem { digest, bytes })
    }

    /// A blob, hashed once.
    pub fn blob(alg: Algorithm, data: &[u8]) -> Result<Self, DigestError> {
        Ok(EncodedItem {
            digest: blob_digest(alg, data)?,
            bytes: encode_blob(data),
        })
    }

    /// Items from their encodings (e.g. blobs read by [`read_blob_encoding`]), each hashed,
    /// side by side where the CPU allows ([`Digest::of_each`]); in order. Whatever the bytes
    /// encode, each digest is the hash of its item's bytes.
    pub fn hashed(alg: Algorithm, encodings: Vec<Vec<u8>>) -> Result<Vec<Self>, DigestError> {
        let all: Vec<&[u8]> = encodings.iter().map(|e| e.as_slice()).collect();
        let digests = Digest::of_each(alg, &all)?;
        Ok(digests
            .into_iter()
            .zip(encodings)
            .map(|(digest, bytes)| EncodedItem { digest, bytes })
            .collect())
    }
}

/// A chunk cut and hashed by [`chunk_stream`], its content still in the chunker's window:
/// a blob's content and its digest, the hash of the blob's encoding by construction (the
/// fields are private and only the chunker makes one), so a store in the same process may
/// copy the content straight into its record and take the digest as given.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    digest: Digest,
    content: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// Its digest (that of the blob holding it).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The content (the blob's encoding without its header).
    pub fn content(&self) -> &'a [u8] {
        self.content
    }

    /// The blob as an item of its own: one copy of the content.
    pub fn into_item(self) -> EncodedItem {
        EncodedItem {
            digest: self.digest,
            bytes: encode_blob(self.content),
        }
    }
}

/// What [`store_content`] hands its sink: an item, or a chunk still in the window.
#[derive(Debug)]
pub enum Piece<'a> {
    /// An encoded item (a small file's blob, a chunk list).
    Item(EncodedItem),
    /// A chunk of a large file.
    Chunk(Chunk<'a>),
}

impl Piece<'_> {
    /// The piece as an encoded item (a chunk copied into its own).
    pub fn into_item(self) -> EncodedItem {
        match self {
            Piece::Item(i) => i,
            Piece::Chunk(c) => c.into_item(),
        }
    }
}

/// The encoding of the blob holding the next `size` bytes of `reader`, not yet hashed (for
/// [`EncodedItem::hashed`]); an error if the reader ends first.
pub fn read_blob_encoding(reader: impl Read, size: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = blob_encoding(size)?;
    read_blob_rest(&mut bytes, 0, reader)?;
    Ok(bytes)
}

/// A blob's encoding for `size` bytes of content: its header, then `size` zero bytes that
/// the content is read into ([`blob_content`]), in pieces if need be, the last by
/// [`read_blob_rest`]. Allocated zeroed: memory fresh from the system is not cleared again
/// (clearing before reads was 2 % of a new image's checkin).
pub fn blob_encoding(size: u64) -> std::io::Result<Vec<u8>> {
    let want = usize::try_from(size)
        .ok()
        .and_then(|n| n.checked_add(BLOB_HEADER.len()))
        .ok_or_else(|| std::io::Error::other(format!("a blob of {size} bytes")))?;
    let mut bytes = vec![0u8; want];
    bytes[..BLOB_HEADER.len()].copy_from_slice(&BLOB_HEADER);
    Ok(bytes)
}

/// The content part of a blob's encoding made by [`blob_encoding`].
pub fn blob_content(bytes: &mut [u8]) -> &mut [u8] {
    let h = BLOB_HEADER.len().min(bytes.len());
    &mut bytes[h..]
}

/// Reads a blob's content from byte `have` on (the first `have` bytes are in it already) to
/// its end from `reader`; an error if the reader ends first.
pub fn read_blob_rest(bytes: &mut [u8], have: u64, mut reader: impl Read) -> std::io::Result<()> {
    let content = blob_content(bytes);
    let size = content.len();
    let mut got = usize::try_from(have).unwrap_or(usize::MAX).min(size);
    while got < size {
        match reader.read(&mut content[got..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("content shorter than its size: {got} of {size} bytes"),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Bytes of the window [`chunk_stream`] reads ahead into (a few chunks).
const WINDOW: usize = 4 * CHUNK_MAX;
/// Bytes [`chunk_stream`] asks its reader for at a time.
const READ_PIECE: usize = 256 << 10;

thread_local! {
    /// [`chunk_stream`]'s window, kept between calls (taken out while in use).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Content that may know where it holds zeros without reading them: a file's holes. A run of
/// such zeros long enough to fill whole chunks is skipped unread by [`chunk_stream`], so a
/// sparse file costs its data, not its size.
pub trait SparseRead: Read {
    /// Bytes from the current position on that are known to be zero (0: none known).
    fn zeros_ahead(&self) -> u64;
    /// Moves `n` bytes on, `n` at most [`SparseRead::zeros_ahead`], without reading them.
    fn skip_zeros(&mut self, n: u64);
}

/// Any reader, knowing nothing of its zeros.
#[derive(Debug)]
pub struct Dense<R>(pub R);

impl<R: Read> Read for Dense<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> SparseRead for Dense<R> {
    fn zeros_ahead(&self) -> u64 {
        0
    }

    fn skip_zeros(&mut self, _n: u64) {}
}

impl<T: SparseRead + ?Sized> SparseRead for &mut T {
    fn zeros_ahead(&self) -> u64 {
        (**self).zeros_ahead()
    }

    fn skip_zeros(&mut self, n: u64) {
        (**self).skip_zeros(n)
    }
}

/// The first `left` bytes of a reader (`Read::take`, keeping what it knows of its zeros).
struct Limited<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

impl<R: SparseRead> SparseRead for Limited<R> {
    fn zeros_ahead(&self) -> u64 {
        self.inner.zeros_ahead().min(self.left)
    }

    fn skip_zeros(&mut self, n: u64) {
        let n = n.min(self.left);
        self.inner.skip_zeros(n);
        self.left -= n;
    }
}

/// Cuts `reader` into content-defined chunks starting at logical offset `base`. Each non-zero
/// chunk goes to `sink` as a Blob, hashed and still in the window ([`Chunk::into_item`] makes
/// it an item of its own); all-zero chunks are skipped (they become holes). Returns the
/// extents in order and the number of bytes read (skipped zeros included).
pub fn chunk_stream<R: SparseRead, E: std::error::Error + 'static>(
    mut reader: R,
    base: u64,
    alg: Algorithm,
    mut sink: impl FnMut(Chunk<'_>) -> Result<(), E>,
) -> Result<(Vec<Extent>, u64), ChunkError<E>> {
    use fastcdc::v2020::{cut, select_masks, Normalization};
    // The same cut points as `fastcdc::v2020::StreamCDC` (the cut of a window of at least
    // CHUNK_MAX bytes, or of what is left at the end), without its two copies per chunk: the
    // window slides over a buffer several chunks long that is refilled only when less than
    // CHUNK_MAX bytes remain, and each chunk goes to the sink from there.
    let (mask_s, mask_l) = select_masks(CHUNK_AVG, Normalization::Level1);
    let mut buf = SCRATCH.with(|b| std::mem::take(&mut *b.borrow_mut()));
    buf.resize(WINDOW, 0);
    let mut extents = Vec::new();
    // Chunks cut and not yet hashed: their offsets and where they are in `buf`.
    let mut pending: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
    let mut total = 0u64;
    let (mut start, mut end, mut eof) = (0usize, 0usize, false);
    let result: Result<(), ChunkError<E>> = 'chunks: loop {
        // Zeros from the chunk's start on, as far as the reader knows them (a hole): every
        // whole CHUNK_MAX of them is an all-zero chunk of exactly that size, since the gear
        // hash of zeros never meets a mask (`zeros_are_cut_at_the_largest_chunk`), and so a
        // hole in the ChunkList: skipped without reading.
        let ahead = reader.zeros_ahead();
        if ahead > 0 && buf[start..end].iter().all(|b| *b == 0) {
            let buffered = (end - start) as u64;
            let skip = (buffered + ahead) / CHUNK_MAX as u64 * CHUNK_MAX as u64;
            if skip > buffered {
                reader.skip_zeros(skip - buffered);
                (start, end) = (0, 0);
                total += skip;
            } else if skip > 0 {
                start += skip as usize;
                total += skip;
            }
        }
        if end - start < CHUNK_MAX && !eof {
            // The chunks cut so far leave the buffer before it is refilled.
            if let Err(e) = emit(&buf, &mut pending, alg, &mut extents, &mut sink) {
                break Err(e);
            }
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
            while end < buf.len() && !eof {
                // In pieces that stay in the cache while the reader's own pass (a checksum)
                // looks at them.
                let piece = (end + READ_PIECE).min(buf.len());
                match reader.read(&mut buf[end..piece]) {
                    Ok(0) => eof = true,
                    Ok(n) => end += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break 'chunks Err(ChunkError::Io(e)),
                }
            }
        }
        if start == end {
            break Ok(());
        }
        let window = &buf[start..end];
        let (_, n) = cut(
            window,
            CHUNK_MIN,
            CHUNK_AVG,
            CHUNK_MAX,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        let data = &window[..n.clamp(1, window.len())];
        let offset = base + total;
        total += data.len() as u64;
        start += data.len();
        if data.iter().all(|b| *b == 0) {
            continue;
        }
        pending.push((offset, start - data.len()..start));
    };
    let result = result.and_then(|()| emit(&buf, &mut pending, alg, &mut extents, &mut sink));
    SCRATCH.with(|b| *b.borrow_mut() = buf);
    result.map(|()| (extents, total))
}

/// Hashes the chunks cut from `buf` (their offsets and places in it) side by side, and hands
/// them to `sink` in order.
fn emit<E: std::error::Error + 'static>(
    buf: &[u8],
    pending: &mut Vec<(u64, std::ops::Range<usize>)>,
    alg: Algorithm,
    extents: &mut Vec<Extent>,
    sink: &mut impl FnMut(Chunk<'_>) -> Result<(), E>,
) -> Result<(), ChunkError<E>> {
    let datas: Vec<&[u8]> = pending.iter().map(|(_, r)| &buf[r.clone()]).collect();
    let digests = blob_digests(alg, &datas)?;
    for ((offset, _), (content, digest)) in pending.drain(..).zip(datas.into_iter().zip(digests)) {
        extents.push(Extent {
            offset,
            len: content.len() as u64,
            digest,
        });
        sink(Chunk { digest, content }).map_err(ChunkError::Sink)?;
    }
    Ok(())
}

/// Stores the content of a file of `size` bytes read from `reader`: `None` when empty, a Blob
/// when small, otherwise a ChunkList (whose chunks go to `sink` first, then the list itself).
pub fn store_content<R: SparseRead, E: std::error::Error + 'static>(
    reader: R,
    size: u64,
    alg: Algorithm,
    mut sink: impl FnMut(Piece<'_>) -> Result<(), E>,
) -> Result<Option<Digest>, ChunkError<E>> {
    if size == 0 {
        return Ok(None);
    }
    if size <= INLINE_MAX {
        let item = EncodedItem::read_blob(alg, reader, size)?;
        let d = item.digest;
        sink(Piece::Item(item)).map_err(ChunkError::Sink)?;
        return Ok(Some(d));
    }
    let limited = Limited {
        inner: reader,
        left: size,
    };
    let (chunks, read) = chunk_stream(limited, 0, alg, |c| sink(Piece::Chunk(c)))?;
    if read != size {
        return Err(ChunkError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("content shorter than its size: {read} of {size} bytes"),
        )));
    }
    let list = EncodedItem::new(alg, &Item::ChunkList(ChunkList { size, chunks }))?;
    let d = list.digest;
    sink(Piece::Item(list)).map_err(ChunkError::Sink)?;
    Ok(Some(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::pseudo_random;

    fn chunks_of(data: &[u8]) -> Vec<Extent> {
        let (v, n) =
            chunk_stream::<_, std::convert::Infallible>(Dense(data), 0, Algorithm::Sha256, |_| {
                Ok(())
            })
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

    /// Hands out at most `step` bytes per read, cycling through a few sizes.
    struct Dribble<'a> {
        data: &'a [u8],
        steps: &'a [usize],
        k: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let step = self.steps[self.k % self.steps.len()];
            self.k += 1;
            let n = step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// The window over a reused buffer cuts exactly where fastcdc's own `StreamCDC` does,
        /// whatever the read sizes, with zero runs and at every length around the limits.
        #[test]
        fn cuts_match_fastcdc_stream(
            len in 0usize..(6 << 20),
            seed in 1u64..u64::MAX,
            zeros in 0usize..(3 << 20),
            steps in proptest::collection::vec(1usize..(3 << 20), 1..4),
        ) {
            let mut data = pseudo_random(len, seed);
            let z = zeros.min(data.len());
            data[..z].fill(0);
            let want: Vec<(u64, u64)> =
                fastcdc::v2020::StreamCDC::new(&data[..], CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
                    .map(|c| c.unwrap())
                    .filter(|c| c.data.iter().any(|b| *b != 0))
                    .map(|c| (c.offset, c.length as u64))
                    .collect();
            let r = Dribble { data: &data, steps: &steps, k: 0 };
            let mut items = Vec::new();
            let (got, read) = chunk_stream::<_, std::convert::Infallible>(
                Dense(r),
                0,
                Algorithm::Sha256,
                |c| {
                    items.push(c.into_item());
                    Ok(())
                },
            )
            .unwrap();
            // Each chunk (hashed in groups, side by side) is the blob of its bytes, in order.
            proptest::prop_assert_eq!(items.len(), got.len());
            for (e, i) in got.iter().zip(&items) {
                let bytes = &data[e.offset as usize..(e.offset + e.len) as usize];
                let blob = encode_blob(bytes);
                proptest::prop_assert_eq!(i.bytes(), blob.as_slice());
                proptest::prop_assert_eq!(e.digest, blob_digest(Algorithm::Sha256, bytes).unwrap());
                proptest::prop_assert_eq!(i.digest, e.digest);
            }
            let got: Vec<(u64, u64)> = got.iter().map(|e| (e.offset, e.len)).collect();
            proptest::prop_assert_eq!(read, len as u64);
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn zero_chunks_are_holes_and_sizes_round_trip() {
        let mut data = pseudo_random(3 << 20, 7);
        data[(1 << 20)..(5 << 19)].fill(0);
        data.extend(std::iter::repeat_n(0u8, 4 << 20));
        let mut stored = Vec::new();
        let d = store_content::<_, std::convert::Infallible>(
            Dense(data.as_slice()),
            data.len() as u64,
            Algorithm::Sha256,
            |p| {
                stored.push(p.into_item());
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
    fn blobs_read_then_hashed_together_are_the_blobs_hashed_alone() {
        for alg in [Algorithm::Sha256, Algorithm::Sha1] {
            let datas: Vec<Vec<u8>> = [0usize, 1, 61, 62, 64, 5000, 1 << 20]
                .iter()
                .map(|n| pseudo_random(*n, *n as u64 + 3))
                .collect();
            let encodings = datas
                .iter()
                .map(|d| read_blob_encoding(d.as_slice(), d.len() as u64).unwrap())
                .collect();
            let got = EncodedItem::hashed(alg, encodings).unwrap();
            assert_eq!(got.len(), datas.len());
            for (g, d) in got.iter().zip(&datas) {
                let alone = EncodedItem::blob(alg, d).unwrap();
                assert_eq!((g.digest(), g.bytes()), (alone.digest(), alone.bytes()));
            }
        }
        // A reader that ends before the size is an error.
        assert!(read_blob_encoding(&b"ab"[..], 3).is_err());
    }

    #[test]
    fn small_content_is_one_blob_and_short_reads_fail() {
        let mut stored = Vec::new();
        let d = store_content::<_, std::convert::Infallible>(
            Dense(&b"hello"[..]),
            5,
            Algorithm::Sha1,
            |p| {
                stored.push(p.into_item());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(d, Some(blob_digest(Algorithm::Sha1, b"hello").unwrap()));
        assert_eq!(stored.len(), 1);
        let short = store_content::<_, std::convert::Infallible>(
            Dense(&b"hi"[..]),
            5,
            Algorithm::Sha256,
            |_| Ok(()),
        );
        assert!(matches!(short, Err(ChunkError::Io(_))));
        assert_eq!(
            store_content::<_, std::convert::Infallible>(
                Dense(&b""[..]),
                0,
                Algorithm::Sha256,
                |_| Ok(())
            )
            .unwrap(),
            None
        );
    }

    /// Content of `len` bytes that is `data` at each of `spots` (offset, seed) and zeros
    /// elsewhere, the zeros outside the spots known as holes; counts the bytes read.
    struct Spotty {
        spots: Vec<(u64, Vec<u8>)>,
        len: u64,
        pos: u64,
        read: u64,
    }

    impl Spotty {
        fn new(len: u64, spots: &[(u64, usize, u64)]) -> Self {
            let mut spots: Vec<(u64, Vec<u8>)> = spots
                .iter()
                .map(|&(at, n, seed)| {
                    (
                        at.min(len),
                        pseudo_random(n.min((len - at.min(len)) as usize), seed),
                    )
                })
                .collect();
            spots.sort_by_key(|s| s.0);
            // Overlapping spots: a later one starts where the earlier ends.
            let mut end = 0u64;
            for (at, d) in spots.iter_mut() {
                let skip = end.saturating_sub(*at).min(d.len() as u64);
                *at += skip;
                d.drain(..skip as usize);
                end = *at + d.len() as u64;
            }
            Spotty {
                spots,
                len,
                pos: 0,
                read: 0,
            }
        }

        fn dense(&self) -> Vec<u8> {
            let mut v = vec![0u8; self.len as usize];
            for (at, d) in &self.spots {
                v[*at as usize..*at as usize + d.len()].copy_from_slice(d);
            }
            v
        }
    }

    impl Read for Spotty {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (buf.len() as u64).min(self.len - self.pos) as usize;
            buf[..n].fill(0);
            for (at, d) in &self.spots {
                let (s, e) = (
                    (*at).max(self.pos),
                    (at + d.len() as u64).min(self.pos + n as u64),
                );
                if s < e {
                    buf[(s - self.pos) as usize..(e - self.pos) as usize]
                        .copy_from_slice(&d[(s - at) as usize..(e - at) as usize]);
                }
            }
            self.pos += n as u64;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl SparseRead for Spotty {
        fn zeros_ahead(&self) -> u64 {
            if self
                .spots
                .iter()
                .any(|(at, d)| *at <= self.pos && self.pos < at + d.len() as u64)
            {
                return 0;
            }
            let next = self
                .spots
                .iter()
                .map(|(at, _)| *at)
                .filter(|at| *at > self.pos)
                .min();
            next.unwrap_or(self.len) - self.pos
        }

        fn skip_zeros(&mut self, n: u64) {
            assert!(n <= self.zeros_ahead(), "skipped past the known zeros");
            self.pos += n;
        }
    }

    #[test]
    fn zeros_are_cut_at_the_largest_chunk() {
        use fastcdc::v2020::{cut, select_masks, Normalization};
        let (ms, ml) = select_masks(CHUNK_AVG, Normalization::Level1);
        let zeros = vec![0u8; 3 * CHUNK_MAX];
        let (_, n) = cut(
            &zeros,
            CHUNK_MIN,
            CHUNK_AVG,
            CHUNK_MAX,
            ms,
            ml,
            ms << 1,
            ml << 1,
        );
        assert_eq!(n, CHUNK_MAX);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Holes skipped unread give the very extents a dense read of the same bytes gives.
        #[test]
        fn skipped_holes_chunk_as_read_zeros(
            len in 0u64..(12 << 20),
            spots in proptest::collection::vec((0u64..(12 << 20), 1usize..(3 << 20), 1u64..u64::MAX), 0..5),
        ) {
            let mut sparse = Spotty::new(len, &spots);
            let data = sparse.dense();
            let want = chunks_of(&data);
            let (got, total) =
                chunk_stream::<_, std::convert::Infallible>(&mut sparse, 0, Algorithm::Sha256, |_| Ok(()))
                    .unwrap();
            proptest::prop_assert_eq!(total, len);
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_terabyte_hole_costs_its_data_only() {
        let len = 1u64 << 40;
        let spots = [
            (0, 5000, 1),
            (3 << 30, 70_000, 2),
            ((1 << 39) + 12_345, 2 << 20, 3),
            (len - 100, 100, 4),
        ];
        let mut sparse = Spotty::new(len, &spots);
        let mut blobs = 0;
        let d = store_content::<_, std::convert::Infallible>(
            &mut sparse,
            len,
            Algorithm::Sha256,
            |p| {
                blobs += usize::from(p.into_item().bytes()[..BLOB_HEADER.len()] == BLOB_HEADER);
                Ok(())
            },
        )
        .unwrap();
        assert!(d.is_some());
        assert!(sparse.read < 64 << 20, "{} bytes read", sparse.read);
        assert!((4..=12).contains(&blobs), "{blobs} chunks");
    }
}
