//! Algorithm-tagged digests and streaming hashing.
//!
//! A [`Digest`] is `(algorithm, bytes)`. Its text form is `sha256:<64 hex>` or `sha1:<40 hex>`;
//! `Display` prints a short form (`sha256:0123456789ab`) for people, `Debug` and
//! [`Digest::to_text`] the full form. SHA-1 is always computed with collision detection
//! (Stevens' counter-cryptanalysis): input carrying a known collision attack is rejected.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// Hash algorithm of a store. Chosen once, at `init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Algorithm {
    /// SHA-256 (default).
    #[default]
    Sha256,
    /// SHA-1 with collision detection, for compatibility with the paper's format.
    Sha1,
}

impl Algorithm {
    /// Stable one-byte code used in every binary encoding.
    pub const fn code(self) -> u8 {
        match self {
            Algorithm::Sha256 => 1,
            Algorithm::Sha1 => 2,
        }
    }

    /// Inverse of [`Algorithm::code`].
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Algorithm::Sha256),
            2 => Some(Algorithm::Sha1),
            _ => None,
        }
    }

    /// Length of a digest in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha1 => 20,
        }
    }

    /// Name used in text forms (`sha256`, `sha1`).
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha1 => "sha1",
        }
    }

    /// A fresh streaming hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        Hasher::new(self)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "sha1" => Ok(Algorithm::Sha1),
            other => Err(DigestError::UnknownAlgorithm(other.to_owned())),
        }
    }
}

/// Errors from parsing or computing digests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The algorithm name or code is not known.
    #[error("unknown digest algorithm {0:?} (expected sha256 or sha1)")]
    UnknownAlgorithm(String),
    /// The text form is malformed.
    #[error("malformed digest {0:?}: expected <algorithm>:<hex>")]
    Malformed(String),
    /// The hex part has the wrong length for the algorithm.
    #[error("digest {text:?} has {got} hex digits, {alg} needs {want}")]
    WrongLength {
        /// The text as given.
        text: String,
        /// Algorithm named in the text.
        alg: Algorithm,
        /// Hex digits found.
        got: usize,
        /// Hex digits required.
        want: usize,
    },
    /// SHA-1 input carries a known cryptanalytic collision attack.
    #[error("SHA-1 collision attack detected in the input; refusing to compute its digest")]
    Sha1Collision,
}

/// A content digest: algorithm plus hash bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    alg: Algorithm,
    bytes: [u8; 32],
}

impl Digest {
    /// Builds a digest from raw bytes; `None` when the length does not fit the algorithm.
    pub fn from_bytes(alg: Algorithm, raw: &[u8]) -> Option<Self> {
        if raw.len() != alg.digest_len() {
            return None;
        }
        let mut bytes = [0u8; 32];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(Digest { alg, bytes })
    }

    /// Hashes `data` in one go.
    pub fn of(alg: Algorithm, data: &[u8]) -> Result<Self, DigestError> {
        let mut h = Hasher::new(alg);
        h.update(data);
        h.finalize()
    }

    /// Hashes each of `datas`: SHA-256 four at a time where the CPU allows
    /// ([`crate::sha256_lanes`]), the same digests as [`Digest::of`] of each.
    pub fn of_each(alg: Algorithm, datas: &[&[u8]]) -> Result<Vec<Self>, DigestError> {
        Digest::of_each_after(alg, b"", datas)
    }

    /// Hashes `prefix` followed by each of `datas`, as [`Digest::of_each`] does (a blob's
    /// envelope header before its bytes: `item::blob_digests`).
    pub fn of_each_after(
        alg: Algorithm,
        prefix: &[u8],
        datas: &[&[u8]],
    ) -> Result<Vec<Self>, DigestError> {
        match alg {
            Algorithm::Sha256 => Ok(crate::sha256_lanes::sha256_each(prefix, datas)
                .into_iter()
                .map(|bytes| Digest { alg, bytes })
                .collect()),
            // (Collision detection names the item it refuses, one at a time.)
            Algorithm::Sha1 => datas
                .iter()
                .map(|d| {
                    let mut h = Hasher::new(alg);
                    h.update(prefix);
                    h.update(d);
                    h.finalize()
                })
                .collect(),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The hash bytes (32 for SHA-256, 20 for SHA-1).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.alg.digest_len()]
    }

    /// Full hex of the hash bytes, without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// Full text form, `sha256:<hex>`.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.alg.name(), self.hex())
    }

    /// Key bytes for indexes: algorithm code then hash bytes. Sorts like the digest.
    pub fn key_bytes(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + self.alg.digest_len());
        k.push(self.alg.code());
        k.extend_from_slice(self.as_bytes());
        k
    }

    /// Inverse of [`Digest::key_bytes`].
    pub fn from_key_bytes(k: &[u8]) -> Option<Self> {
        let (&code, rest) = k.split_first()?;
        Digest::from_bytes(Algorithm::from_code(code)?, rest)
    }
}

impl fmt::Display for Digest {
    /// Short form for people: algorithm and the first 12 hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        if f.alternate() {
            write!(f, "{}:{}", self.alg.name(), hex)
        } else {
            write!(f, "{}:{}", self.alg.name(), &hex[..12])
        }
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_text())
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex_part) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_owned()))?;
        let alg: Algorithm = alg.parse()?;
        if hex_part.len() != alg.digest_len() * 2 {
            return Err(DigestError::WrongLength {
                text: s.to_owned(),
                alg,
                got: hex_part.len(),
                want: alg.digest_len() * 2,
            });
        }
        let raw = hex::decode(hex_part).map_err(|_| DigestError::Malformed(s.to_owned()))?;
        Digest::from_bytes(alg, &raw).ok_or_else(|| DigestError::Malformed(s.to_owned()))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_text())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Streaming hasher. SHA-1 runs with collision detection.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// SHA-1 with collision detection.
    Sha1(Box<sha1collisiondetection::Sha1CD>),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algorithm())
    }
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(alg: Algorithm) -> Self {
        match alg {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha1 => Hasher::Sha1(Box::new(
                sha1collisiondetection::Sha1CD::configure()
                    .detect_collisions(true)
                    .safe_hash(false)
                    .build(),
            )),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha1(_) => Algorithm::Sha1,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
        }
    }

    /// Finishes; a detected SHA-1 collision attack is an error.
    pub fn finalize(self) -> Result<Digest, DigestError> {
        match self {
            Hasher::Sha256(h) => {
                let out = h.finalize();
                Ok(Digest::from_bytes(Algorithm::Sha256, &out).expect("sha256 output is 32 bytes"))
            }
            Hasher::Sha1(h) => match h.finalize_cd() {
                Ok(out) => {
                    Ok(Digest::from_bytes(Algorithm::Sha1, &out).expect("sha1 output is 20 bytes"))
                }
                Err(_) => Err(DigestError::Sha1Collision),
            },
        }
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_roundtrip_and_short_display() {
        let d = Digest::of(Algorithm::Sha256, b"abc").unwrap();
        assert_eq!(
            d.to_text(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string(), "sha256:ba7816bf8f01");
        assert_eq!(d.to_text().parse::<Digest>().unwrap(), d);
        let s = Digest::of(Algorithm::Sha1, b"abc").unwrap();
        assert_eq!(s.to_text(), "sha1:a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(Digest::from_key_bytes(&s.key_bytes()), Some(s));
    }

    #[test]
    fn malformed_text_is_refused() {
        for bad in ["", "sha256", "md5:00", "sha256:zz", "sha1:abcd", "sha256:"] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    fn shattered_prefix(second: bool) -> Vec<u8> {
        // The first 320 bytes of the two SHAttered PDFs (Stevens et al., 2017): an identical
        // prefix, then two different near-collision blocks with the same SHA-1 state after them.
        let head = "255044462d312e330a25e2e3cfd30a0a0a312030206f626a0a3c3c2f57696474682032203020522f4865696768742033203020522f547970652034203020522f537562747970652035203020522f46696c7465722036203020522f436f6c6f7253706163652037203020522f4c656e6774682038203020522f42697473506572436f6d706f6e656e7420383e3e0a73747265616d0affd8fffe00245348412d3120697320646561642121212121852fec092339759c39b1a1c63c4c97e1fffe01";
        let block1 = "7f46dc93a6b67e013b029aaa1db2560b45ca67d688c7f84b8c4c791fe02b3df614f86db1690901c56b45c1530afedfb76038e972722fe7ad728f0e4904e046c230570fe9d41398abe12ef5bc942be33542a4802d98b5d70f2a332ec37fac3514e74ddc0f2cc1a874cd0c78305a21566461309789606bd0bf3f98cda8044629a1";
        let block2 = "7346dc9166b67e118f029ab621b2560ff9ca67cca8c7f85ba84c79030c2b3de218f86db3a90901d5df45c14f26fedfb3dc38e96ac22fe7bd728f0e45bce046d23c570feb141398bb552ef5a0a82be331fea48037b8b5d71f0e332edf93ac3500eb4ddc0decc1a864790c782c76215660dd309791d06bd0af3f98cda4bc4629b1";
        let mut v = hex::decode(head).unwrap();
        v.extend(hex::decode(if second { block2 } else { block1 }).unwrap());
        v
    }

    #[test]
    fn shattered_pair_is_a_real_collision_and_is_detected() {
        let (a, b) = (shattered_prefix(false), shattered_prefix(true));
        assert_ne!(a, b);
        assert_eq!(a.len(), 320);
        // Plain SHA-1 (detection off) really collides on these two inputs, even with a suffix.
        let plain = |m: &[u8]| {
            let mut h = sha1collisiondetection::Sha1CD::configure()
                .detect_collisions(false)
                .build();
            h.update(m);
            h.finalize_cd().unwrap()
        };
        assert_eq!(plain(&a), plain(&b));
        let (mut a2, mut b2) = (a.clone(), b.clone());
        a2.extend_from_slice(b"identical suffix");
        b2.extend_from_slice(b"identical suffix");
        assert_eq!(plain(&a2), plain(&b2));
        // Mirage's SHA-1 refuses both, whole or streamed in pieces.
        for m in [&a, &b, &a2, &b2] {
            assert_eq!(
                Digest::of(Algorithm::Sha1, m),
                Err(DigestError::Sha1Collision)
            );
            let mut h = Hasher::new(Algorithm::Sha1);
            for piece in m.chunks(7) {
                h.update(piece);
            }
            assert_eq!(h.finalize(), Err(DigestError::Sha1Collision));
        }
        // SHA-256 tells them apart as usual.
        assert_ne!(
            Digest::of(Algorithm::Sha256, &a).unwrap(),
            Digest::of(Algorithm::Sha256, &b).unwrap()
        );
    }
}
