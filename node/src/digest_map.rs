//! Maps and sets keyed by digest. A digest is uniformly distributed already, so its first
//! eight bytes, mixed with a per-process key, are its hash: SipHash (std's default) spent
//! more time on the committer's maps than the maps themselves. The key keeps a writer who
//! grinds digests (items are free to make) from choosing ones that fall into the same
//! buckets of a table: a bucket takes a few bits of the hash, which brute force would match
//! in a plain prefix.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use mirage_format::Digest;

/// The per-process key.
fn process_key() -> u64 {
    static KEY: OnceLock<u64> = OnceLock::new();
    *KEY.get_or_init(|| {
        std::collections::hash_map::RandomState::new().hash_one(0x6d69_7261_6765u64)
    })
}

/// Builds [`PrefixHasher`]s with the process's key.
#[derive(Clone, Copy, Debug)]
pub struct DigestState(u64);

impl Default for DigestState {
    fn default() -> Self {
        DigestState(process_key())
    }
}

impl BuildHasher for DigestState {
    type Hasher = PrefixHasher;

    fn build_hasher(&self) -> PrefixHasher {
        PrefixHasher {
            key: self.0,
            word: 0,
        }
    }
}

/// Hashes a digest by its first eight bytes (other writes, such as the enum tag and the
/// array length that `derive(Hash)` adds, fold into the same word), mixed with the key.
#[derive(Debug)]
pub struct PrefixHasher {
    key: u64,
    word: u64,
}

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        // Every bit of the product's upper half depends on every bit of the keyed word.
        let v = (self.word ^ self.key).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        v ^ (v >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        match bytes.get(..8) {
            Some(b) => {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                self.word ^= u64::from_le_bytes(w);
            }
            None => {
                for b in bytes {
                    self.word = self.word.rotate_left(8) ^ u64::from(*b);
                }
            }
        }
    }
}

/// A map keyed by digest.
pub type DigestMap<V> = HashMap<Digest, V, DigestState>;
/// A set of digests.
pub type DigestSet = HashSet<Digest, DigestState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_hash_by_their_prefix_and_maps_work() {
        let a = Digest::of(mirage_format::Algorithm::Sha256, b"a").unwrap();
        let b = Digest::of(mirage_format::Algorithm::Sha256, b"b").unwrap();
        let h = DigestState::default();
        assert_ne!(h.hash_one(a), h.hash_one(b));
        assert_eq!(h.hash_one(a), h.hash_one(a));
        let mut m = DigestMap::default();
        m.insert(a, 1);
        m.insert(b, 2);
        assert_eq!((m.get(&a), m.get(&b)), (Some(&1), Some(&2)));
        let s: DigestSet = [a, a, b].into_iter().collect();
        assert_eq!(s.len(), 2);
    }
}
