//! Catalog snapshots: the whole catalog (state and log) as one checksummed byte string, and
//! the file that keeps the current one (`<store>/raft/snapshot`).
//!
//! ```text
//! snapshot  = "MRGSNAP\n" version:u32le record* 0x00 crc32c:u32le
//! record    = tag:u8 (1 state, 2 log) klen:u32le key vlen:u32le value
//! file      = "MRGSNAPF" metalen:u32le meta(JSON SnapshotMeta) snapshot
//! ```
//!
//! The checksum covers everything before it. Decoding never panics: a short, damaged or
//! unknown snapshot is an error naming what is wrong.

use std::io::{self, Write};
use std::path::Path;

use super::SnapshotMeta;
use crate::catalog::Pairs;

const MAGIC: &[u8; 8] = b"MRGSNAP\n";
const FILE_MAGIC: &[u8; 8] = b"MRGSNAPF";
const VERSION: u32 = 1;
const TAG_END: u8 = 0;
const TAG_STATE: u8 = 1;
const TAG_LOG: u8 = 2;

/// What a snapshot holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Contents {
    /// Catalog state, key order.
    pub state: Pairs,
    /// Catalog log entries by index.
    pub log: Vec<(u64, Vec<u8>)>,
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("catalog snapshot: {}", why.into()),
    )
}

fn put_record(out: &mut Vec<u8>, tag: u8, k: &[u8], v: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(k.len() as u32).to_le_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    out.extend_from_slice(v);
}

/// Encodes `c`.
pub fn encode(c: &Contents) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for (k, v) in &c.state {
        put_record(&mut out, TAG_STATE, k, v);
    }
    for (i, v) in &c.log {
        put_record(&mut out, TAG_LOG, &i.to_be_bytes(), v);
    }
    out.push(TAG_END);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| bad(format!("truncated at byte {}", self.at)))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> io::Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// Decodes a snapshot, checking its checksum first.
pub fn decode(b: &[u8]) -> io::Result<Contents> {
    if b.len() < MAGIC.len() + 4 + 1 + 4 || &b[..MAGIC.len()] != MAGIC {
        return Err(bad("not a catalog snapshot"));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != want {
        return Err(bad("checksum mismatch"));
    }
    let mut c = Cursor {
        b: body,
        at: MAGIC.len(),
    };
    let version = c.u32()?;
    if version != VERSION {
        return Err(bad(format!("unknown version {version}")));
    }
    let mut out = Contents::default();
    loop {
        let tag = c.take(1)?[0];
        if tag == TAG_END {
            break;
        }
        let klen = c.u32()? as usize;
        let k = c.take(klen)?;
        let vlen = c.u32()? as usize;
        let v = c.take(vlen)?.to_vec();
        match tag {
            TAG_STATE => out.state.push((k.to_vec(), v)),
            TAG_LOG => {
                let i = <[u8; 8]>::try_from(k).map_err(|_| bad("log key is not 8 bytes"))?;
                out.log.push((u64::from_be_bytes(i), v));
            }
            t => return Err(bad(format!("unknown record tag {t}"))),
        }
    }
    if c.at != body.len() {
        return Err(bad("bytes after the end record"));
    }
    Ok(out)
}

/// Serializes snapshot file writes in a process (a snapshot is built in a task of its own
/// while another may be installed).
static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes the current snapshot file atomically (a temporary file of its own, fsync, rename,
/// fsync of the directory), unless the file there already covers a later log id: the file
/// never goes back in the log.
pub fn save(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
    let _one = SAVING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Ok(Some((current, _))) = load(dir) {
        if current.last_log_id > meta.last_log_id {
            return Ok(());
        }
    }
    let encoded = serde_json::to_vec(meta).map_err(super::io_err)?;
    let tmp = dir.join(format!("snapshot.tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(FILE_MAGIC)?;
        f.write_all(&(encoded.len() as u32).to_le_bytes())?;
        f.write_all(&encoded)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("snapshot"))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads the current snapshot file, if there is one.
pub fn load(dir: &Path) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
    let b = match std::fs::read(dir.join("snapshot")) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut c = Cursor { b: &b, at: 0 };
    if c.take(8)? != FILE_MAGIC {
        return Err(bad("snapshot file has no header"));
    }
    let n = c.u32()? as usize;
    let meta: SnapshotMeta = serde_json::from_slice(c.take(n)?)
        .map_err(|e| bad(format!("snapshot file metadata: {e}")))?;
    let data = b[c.at..].to_vec();
    decode(&data)?;
    Ok(Some((meta, data)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(
            state in proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(any::<u8>(), 0..100), 0..20),
            log in proptest::collection::btree_map(any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..100), 0..20),
        ) {
            let c = Contents { state: state.into_iter().collect(), log: log.into_iter().collect() };
            prop_assert_eq!(decode(&encode(&c)).unwrap(), c);
        }

        #[test]
        fn damage_is_an_error_never_a_panic(
            cut in 0usize..200, flip in 0usize..200, bit in 0u8..8,
        ) {
            let c = Contents {
                state: vec![(b"u/alice".to_vec(), b"{}".to_vec()), (b"n/x".to_vec(), vec![1; 50])],
                log: vec![(1, b"entry".to_vec())],
            };
            let b = encode(&c);
            let cut = cut.min(b.len() - 1);
            prop_assert!(decode(&b[..cut]).is_err());
            let mut d = b.clone();
            let at = flip % d.len();
            d[at] ^= 1 << bit;
            prop_assert!(decode(&d).is_err());
        }
    }
}
