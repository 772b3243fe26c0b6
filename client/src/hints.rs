//! Checkin hints: skipping the chunking and SHA-256 of file contents the store already holds.
//!
//! Hashing is what a checkin spends its time on, and a derived image is mostly its parent's
//! files again, often under other inode numbers and at other disk addresses (a rebuilt
//! filesystem), with timestamps that say nothing (reproducible builds fix them all). So a hint
//! is found by content, not by metadata: its key is the file size and a seeded XXH3-128 of the
//! first [`PREFIX`] bytes; its value is the XXH3-128 of the whole content and the content's
//! digest. A hint is used only when the store still holds that content and the file's bytes,
//! read again, have the same whole-content XXH3-128 — reading and XXH3 run at memory speed,
//! several times faster than FastCDC plus SHA-256. The seed is random per store, so nobody can
//! prepare colliding contents for a store they cannot read; still, XXH3 is not a cryptographic
//! hash, and `mirage checkin --rehash` hashes everything for images that someone may have
//! crafted to misrepresent themselves.

use std::io::Read;

use mirage_format::{Algorithm, Digest};
use mirage_node::{Store, StoreError};
use xxhash_rust::xxh3::Xxh3;

const VERSION: u8 = 1;
/// Bytes of a file's start that name its hint.
pub const PREFIX: u64 = 64 << 10;

/// A hint key: the size and the checksum of the first [`PREFIX`] bytes.
pub fn key(size: u64, prefix_check: u128) -> [u8; 32] {
    let mut h = Algorithm::Sha256.hasher();
    h.update(b"mirage-checkin-hint/1\0");
    h.update(&size.to_le_bytes());
    h.update(&prefix_check.to_le_bytes());
    let mut k = [0u8; 32];
    // SHA-256 cannot refuse input (only SHA-1 collision detection can).
    if let Ok(d) = h.finalize() {
        k.copy_from_slice(d.as_bytes());
    }
    k
}

/// A file's hint key, read from its first [`PREFIX`] bytes, with the whole-content checksum
/// started on the same bytes (so a hit reads every byte once).
pub struct Probe {
    /// The hint key.
    pub key: [u8; 32],
    whole: Xxh3,
    read: u64,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Probe({} bytes read)", self.read)
    }
}

impl Probe {
    /// Reads up to [`PREFIX`] bytes of `r` (a file of `size` bytes) into `scratch` (which must
    /// hold at least [`PREFIX`] bytes; a worker reuses one for every file).
    pub fn new(r: impl Read, size: u64, seed: u64, scratch: &mut [u8]) -> std::io::Result<Probe> {
        let n = size.min(PREFIX) as usize;
        let head = &mut scratch[..n];
        let got = read_full(r, head)?;
        let head = &head[..got];
        let mut whole = Xxh3::with_seed(seed);
        whole.update(head);
        // The streaming state's digest is the one-shot XXH3-128 of the same bytes (test
        // prefix_checks_are_the_one_shot_xxh3): the first bytes are hashed once, not twice.
        let prefix = whole.digest128();
        Ok(Probe {
            key: key(size, prefix),
            whole,
            read: got as u64,
        })
    }

    /// Bytes read so far (where the rest starts).
    pub fn read(&self) -> u64 {
        self.read
    }

    /// The whole-content checksum, reading the rest from `rest` (positioned at [`Probe::read`])
    /// through `scratch`.
    pub fn finish(self, rest: impl Read, scratch: &mut [u8]) -> std::io::Result<u128> {
        let mut c = self.rest(rest);
        while c.read(scratch)? > 0 {}
        Ok(c.checksum())
    }

    /// A reader of the rest of the file (`rest`, positioned at [`Probe::read`]) that carries
    /// the whole-content checksum on: chained after the prefix the probe read, it yields the
    /// whole file and its checksum without reading the prefix again.
    pub fn rest<R: Read>(self, rest: R) -> Checksummed<R> {
        Checksummed {
            inner: rest,
            state: self.whole,
        }
    }
}

/// Reads until `buf` is full or `r` ends; returns the bytes read.
fn read_full(mut r: impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Encodes a hint value.
pub fn encode(content: &Digest, check: u128) -> Vec<u8> {
    let mut v = vec![VERSION];
    v.extend_from_slice(&check.to_le_bytes());
    v.extend_from_slice(&content.key_bytes());
    v
}

/// Decodes a hint value; `None` for anything this build does not understand.
pub fn decode(v: &[u8]) -> Option<(Digest, u128)> {
    if v.first() != Some(&VERSION) || v.len() < 17 {
        return None;
    }
    let check = u128::from_le_bytes(v[1..17].try_into().ok()?);
    Some((Digest::from_key_bytes(&v[17..])?, check))
}

/// A reader that checksums what passes through it.
pub struct Checksummed<R> {
    inner: R,
    state: Xxh3,
}

impl<R> std::fmt::Debug for Checksummed<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checksummed")
    }
}

impl<R: Read> Checksummed<R> {
    /// Wraps `inner`; `seed` is the store's hint seed.
    pub fn new(inner: R, seed: u64) -> Self {
        Checksummed {
            inner,
            state: Xxh3::with_seed(seed),
        }
    }

    /// The checksum of everything read so far.
    pub fn checksum(&self) -> u128 {
        self.state.digest128()
    }
}

impl<R: Read> Read for Checksummed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.state.update(&buf[..n]);
        Ok(n)
    }
}

/// The checksum of everything `r` yields.
pub fn checksum_of(r: impl Read, seed: u64, buf_len: usize) -> std::io::Result<u128> {
    let mut c = Checksummed::new(r, seed);
    let mut buf = vec![0u8; buf_len];
    while c.read(&mut buf)? > 0 {}
    Ok(c.checksum())
}

/// The hint under each key, if there is one and the store still holds its content: the
/// content digest and the whole-content checksum a file must have to be that content. Two
/// batched lookups, whatever the number of keys.
pub fn lookup_many(
    store: &Store,
    keys: &[[u8; 32]],
) -> Result<Vec<Option<(Digest, u128)>>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut found: Vec<Option<(Digest, u128)>> = store
        .hints(keys)?
        .into_iter()
        .map(|v| decode(&v?))
        .collect();
    let named: Vec<Digest> = found.iter().flatten().map(|(d, _)| *d).collect();
    let mut present = store.has_many(&named)?.into_iter();
    for f in found.iter_mut().filter(|f| f.is_some()) {
        if !present.next().unwrap_or(false) {
            *f = None;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values() {
        assert_eq!(key(10, 5), key(10, 5));
        assert_ne!(key(10, 5), key(11, 5));
        assert_ne!(key(10, 5), key(10, 6));
        let d = Digest::of(Algorithm::Sha256, b"x").unwrap();
        assert_eq!(decode(&encode(&d, 77)), Some((d, 77)));
        assert_eq!(decode(&[2, 0, 0]), None);
        assert_eq!(decode(&encode(&d, 77)[..10]), None);
        let c = |b: &[u8], seed, buf| checksum_of(b, seed, buf).unwrap();
        // A probe plus the rest is the checksum of the whole; its key depends on the prefix.
        let data: Vec<u8> = (0..PREFIX as usize * 2 + 7)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut scratch = vec![0u8; PREFIX as usize];
        let p = Probe::new(&data[..], data.len() as u64, 9, &mut scratch).unwrap();
        assert_eq!(p.read(), PREFIX);
        let k = p.key;
        assert_eq!(
            p.finish(&data[PREFIX as usize..], &mut scratch[..100])
                .unwrap(),
            c(&data, 9, 4096)
        );
        let mut other = data.clone();
        *other.last_mut().unwrap() ^= 1;
        assert_eq!(
            Probe::new(&other[..], data.len() as u64, 9, &mut scratch)
                .unwrap()
                .key,
            k
        );
        other[5] ^= 1;
        assert_ne!(
            Probe::new(&other[..], data.len() as u64, 9, &mut scratch)
                .unwrap()
                .key,
            k
        );
        assert_eq!(c(b"abc", 1, 2), c(b"abc", 1, 4096));
        assert_eq!(
            c(b"abc", 1, 2),
            xxhash_rust::xxh3::xxh3_128_with_seed(b"abc", 1)
        );
        assert_ne!(c(b"abc", 1, 2), c(b"abd", 1, 2));
        assert_ne!(
            c(b"abc", 1, 2),
            c(b"abc", 2, 2),
            "the seed changes the checksum"
        );
    }

    /// Hint keys are stored: the prefix check must stay the one-shot XXH3-128 of the first
    /// bytes, at every length the streaming state treats differently (up to 240 bytes, one
    /// stripe, one block, the buffer, the whole prefix).
    #[test]
    fn prefix_checks_are_the_one_shot_xxh3() {
        let data: Vec<u8> = (0..PREFIX as usize + 100)
            .map(|i| (i * 131 % 253) as u8)
            .collect();
        let mut scratch = vec![0u8; PREFIX as usize];
        let mut lens: Vec<usize> = (0..300).collect();
        for edge in [1024, 4096, 16384, 32768, PREFIX as usize] {
            lens.extend(edge - 65..edge + 65);
        }
        for len in lens {
            let seed = len as u64 * 0x9e37_79b9;
            let p = Probe::new(&data[..len], len as u64, seed, &mut scratch).unwrap();
            let head = &data[..len.min(PREFIX as usize)];
            let want = xxhash_rust::xxh3::xxh3_128_with_seed(head, seed);
            assert_eq!(p.key, key(len as u64, want), "length {len}");
        }
    }
}
