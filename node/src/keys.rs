//! Every RocksDB column family and key prefix of a node, in one place.

/// Item index: `Digest::key_bytes()` → encoded [`crate::store::Location`].
pub const CF_ITEMS: &str = "items";
/// Location tables: parent `Digest::key_bytes()` → encoded [`crate::store::LocationTable`].
pub const CF_LOCTAB: &str = "loctab";
/// Store metadata: the keys below.
pub const CF_META: &str = "meta";
/// Derived-data cache: a 32-byte key the client derives → an opaque value it decodes and
/// checks (checkin hints: content found by checksum; parsed package databases by content
/// digest). Never trusted on its own and not durable (losing an entry costs recomputing it),
/// so it is written without a sync.
pub const CF_HINTS: &str = "hints";

/// Catalog state: the keys of [`catalog`] → versioned JSON records.
pub const CF_CATALOG: &str = "catalog";
/// Catalog log: entry index (u64 big-endian) → JSON `LogEntry`.
pub const CF_CATALOG_LOG: &str = "catalog_log";

/// All column families, in creation order.
pub const ALL_CFS: [&str; 6] = [
    CF_ITEMS,
    CF_LOCTAB,
    CF_META,
    CF_HINTS,
    CF_CATALOG,
    CF_CATALOG_LOG,
];

/// Keys of the `catalog` column family.
pub mod catalog {
    use mirage_format::Digest;

    /// Prefix of users: `u/` + name → `User`.
    pub const USER_PREFIX: &[u8] = b"u/";
    /// Prefix of named images: `n/` + name → `Named`.
    pub const NAMED_PREFIX: &[u8] = b"n/";
    /// Prefix of versions of named images: `v/` + name + NUL + number (u32 BE) → `Version`.
    pub const VERSION_PREFIX: &[u8] = b"v/";
    /// Prefix of image records: `i/` + digest key bytes → `ImageRecord`.
    pub const IMAGE_PREFIX: &[u8] = b"i/";
    /// Prefix of image references: `r/` + digest key bytes + `/` + name + NUL + version (u32
    /// BE) → empty; one per version that is not deleted.
    pub const REF_PREFIX: &[u8] = b"r/";
    /// Prefix of deltas: `d/` + source key bytes + `/` + target key bytes → `DeltaRecord`.
    pub const DELTA_PREFIX: &[u8] = b"d/";
    /// Prefix of upload leases: `l/` + holder + NUL + id → `Lease`.
    pub const LEASE_PREFIX: &[u8] = b"l/";
    /// Index of the last applied log entry (u64 BE).
    pub const APPLIED: &[u8] = b"m/applied";
    /// Prefix of the state machine's own keys (not catalog state; left out of dumps).
    pub const META_PREFIX: &[u8] = b"m/";
    /// Cluster mode: the last applied Raft log id (JSON).
    pub const RAFT_APPLIED: &[u8] = b"m/raft_applied";
    /// Cluster mode: the last applied membership (JSON).
    pub const RAFT_MEMBERSHIP: &[u8] = b"m/raft_membership";
    /// Cluster mode: answers of recent proposals, `m/r/` + submission time (seconds, u64
    /// BE) + request id → JSON `{time, answer}` (so a retried proposal is not applied twice).
    /// Ordered by time, so forgetting old ones reads only those.
    pub const REQUEST_PREFIX: &[u8] = b"m/r/";
    /// Before layout 2 of the request keys: `m/q/` + id, all scanned to forget old ones. Swept
    /// by the next prune.
    pub const LEGACY_REQUEST_PREFIX: &[u8] = b"m/q/";
    /// The current cluster layout's version (JSON number).
    pub const LAYOUT_CURRENT: &[u8] = b"y/current";
    /// Prefix of every layout version: `y/v/` + version (u64 BE) → `Layout` JSON.
    pub const LAYOUT_PREFIX: &[u8] = b"y/v/";
    /// Prefix of the token index: `t/` + hex SHA-256 of a token → user name.
    pub const TOKEN_PREFIX: &[u8] = b"t/";

    fn join(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut k = prefix.to_vec();
        k.extend_from_slice(rest);
        k
    }

    /// Key of a user.
    pub fn user(name: &str) -> Vec<u8> {
        join(USER_PREFIX, name.as_bytes())
    }

    /// Key of a named image.
    pub fn named(name: &str) -> Vec<u8> {
        join(NAMED_PREFIX, name.as_bytes())
    }

    /// Prefix of the versions of a named image.
    pub fn versions(name: &str) -> Vec<u8> {
        let mut k = join(VERSION_PREFIX, name.as_bytes());
        k.push(0);
        k
    }

    /// Key of version `number` of a named image.
    pub fn version(name: &str, number: u32) -> Vec<u8> {
        let mut k = versions(name);
        k.extend_from_slice(&number.to_be_bytes());
        k
    }

    /// Key of an image record.
    pub fn image(d: &Digest) -> Vec<u8> {
        join(IMAGE_PREFIX, &d.key_bytes())
    }

    /// Prefix of the references to an image.
    pub fn image_ref_prefix(d: &Digest) -> Vec<u8> {
        let mut k = join(REF_PREFIX, &d.key_bytes());
        k.push(b'/');
        k
    }

    /// Key of the reference `name@version` → image.
    pub fn image_ref(d: &Digest, name: &str, version: u32) -> Vec<u8> {
        let mut k = image_ref_prefix(d);
        k.extend_from_slice(name.as_bytes());
        k.push(0);
        k.extend_from_slice(&version.to_be_bytes());
        k
    }

    /// Key of a delta.
    pub fn delta(source: &Digest, target: &Digest) -> Vec<u8> {
        let mut k = join(DELTA_PREFIX, &source.key_bytes());
        k.push(b'/');
        k.extend_from_slice(&target.key_bytes());
        k
    }

    /// Key of a lease.
    pub fn lease(holder: &str, id: &str) -> Vec<u8> {
        let mut k = join(LEASE_PREFIX, holder.as_bytes());
        k.push(0);
        k.extend_from_slice(id.as_bytes());
        k
    }

    /// Key of a log entry.
    pub fn log(index: u64) -> [u8; 8] {
        index.to_be_bytes()
    }

    /// Key of the answer to request `id` submitted at `secs` (seconds since the epoch; a time
    /// before 1970 counts as 0).
    pub fn request(secs: i64, id: &str) -> Vec<u8> {
        let mut k = request_before(secs);
        k.extend_from_slice(id.as_bytes());
        k
    }

    /// Every request key submitted before `secs` sorts before this key.
    pub fn request_before(secs: i64) -> Vec<u8> {
        join(REQUEST_PREFIX, &(secs.max(0) as u64).to_be_bytes())
    }

    /// Key of layout version `v`.
    pub fn layout_version(v: u64) -> Vec<u8> {
        join(LAYOUT_PREFIX, &v.to_be_bytes())
    }

    /// Key of a token hash (hex SHA-256).
    pub fn token(sha256_hex: &str) -> Vec<u8> {
        join(TOKEN_PREFIX, sha256_hex.as_bytes())
    }
}

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

/// The Raft log of the catalog group: its own RocksDB (`<store>/raft`), so the log can be
/// synced, truncated and purged without touching the item index.
pub mod raft {
    /// Log entries: index (u64 big-endian) → JSON entry.
    pub const CF_LOG: &str = "raft_log";
    /// Vote, committed and purge point: the keys below → JSON.
    pub const CF_META: &str = "raft_meta";
    /// All column families of the Raft database.
    pub const ALL_CFS: [&str; 2] = [CF_LOG, CF_META];
    /// `raft_meta`: the last vote.
    pub const VOTE: &[u8] = b"vote";
    /// `raft_meta`: the last committed log id known.
    pub const COMMITTED: &[u8] = b"committed";
    /// `raft_meta`: the last purged log id.
    pub const PURGED: &[u8] = b"purged";

    /// Key of a log entry.
    pub fn log(index: u64) -> [u8; 8] {
        index.to_be_bytes()
    }
}
