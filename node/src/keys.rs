//! Every RocksDB column family and key prefix of a node, in one place.

/// Item index: `Digest::key_bytes()` → encoded [`crate::store::Location`].
pub const CF_ITEMS: &str = "items";
/// Location tables: parent `Digest::key_bytes()` → encoded [`crate::store::LocationTable`].
pub const CF_LOCTAB: &str = "loctab";
/// Store metadata: the keys below.
pub const CF_META: &str = "meta";
/// Checkin hints: a 32-byte key naming a file as a filesystem describes it (the client derives
/// it) → an opaque value the client decodes and checks. Hints are never trusted on their own
/// and are not durable (losing one costs a re-hash), so they are written without a sync.
pub const CF_HINTS: &str = "hints";

/// All column families, in creation order.
pub const ALL_CFS: [&str; 4] = [CF_ITEMS, CF_LOCTAB, CF_META, CF_HINTS];

/// `meta`: digest algorithm code of the store (one byte).
pub const META_ALGORITHM: &[u8] = b"algorithm";
/// `meta`: on-disk layout version of the store (u32 big-endian).
pub const META_LAYOUT_VERSION: &[u8] = b"layout_version";
/// `meta`: the random seed of checkin-hint checksums (u64 little-endian).
pub const META_HINT_SEED: &[u8] = b"hint_seed";
/// `meta`: prefix of per-volume checkpoints; the full key is the prefix then the volume id
/// (u32 big-endian), the value the offset (u64 big-endian) up to which every record is indexed.
pub const META_CHECKPOINT_PREFIX: &[u8] = b"ckpt/";

/// Checkpoint key of volume `vol`.
pub fn checkpoint_key(vol: u32) -> Vec<u8> {
    let mut k = META_CHECKPOINT_PREFIX.to_vec();
    k.extend_from_slice(&vol.to_be_bytes());
    k
}
