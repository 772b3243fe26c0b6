//! Maps and sets keyed by digest. A digest is uniformly distributed already, so its first
//! eight bytes are its hash: SipHash (std's default, built to resist chosen keys) spent more
//! time on the committer's maps than the maps themselves, and someone who could choose
//! colliding digest prefixes would need SHA-256 preimages to do it.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use mirage_format::Digest;

/// Hashes a digest by its first eight bytes (other writes, such as the enum tag and the
/// array length that `derive(Hash)` adds, fold into the same word).
#[derive(Default, Debug)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        match bytes.get(..8) {
            Some(b) => {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                self.0 ^= u64::from_le_bytes(w);
            }
            None => {
                for b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(*b);
                }
            }
        }
    }
}

/// A map keyed by digest.
pub type DigestMap<V> = HashMap<Digest, V, BuildHasherDefault<PrefixHasher>>;
/// A set of digests.
pub type DigestSet = HashSet<Digest, BuildHasherDefault<PrefixHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn digests_hash_by_their_prefix_and_maps_work() {
        let a = Digest::of(mirage_format::Algorithm::Sha256, b"a").unwrap();
        let b = Digest::of(mirage_format::Algorithm::Sha256, b"b").unwrap();
        let h = BuildHasherDefault::<PrefixHasher>::default();
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
