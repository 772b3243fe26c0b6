//! Crash recovery: every volume is scanned from its last index checkpoint to its end; valid
//! records are (re-)indexed; a torn tail — invalid bytes with no valid record after them — is
//! cut; damage followed by valid records is skipped and reported, never cut.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use mirage_format::{Digest, Item};

use super::location::Location;
use super::record::{
    align_up, check_crc, parse_header, parse_volume_header, volume_header, RecordFault,
    RecordHeader, HEADER_LEN, VOLUME_HEADER_LEN,
};
use super::volume::{layout_version, sync_dir, ActiveVolume};
use super::write::build_table;
use super::{io_err, Shared, StoreError};
use crate::index::{Index, IndexBatch};
use crate::keys;

/// One step of a sequential volume scan.
pub(crate) enum Scanned {
    /// A record whose header and CRC are valid.
    Record {
        offset: u64,
        header: RecordHeader,
        rec: Vec<u8>,
    },
    /// Invalid bytes at `offset`; scanning resumes at `resume` if a valid record follows.
    Fault {
        offset: u64,
        fault: String,
        resume: Option<u64>,
    },
}

/// Sequential reader of the records of one volume.
pub(crate) struct Scanner {
    file: File,
    reader: BufReader<File>,
    pos: u64,
    len: u64,
    /// Whether zero padding may stand between records (layout version 2 on; also assumed when
    /// the header is damaged, since padding is a superset and records carry their own checks).
    padded: bool,
}

impl Scanner {
    pub(crate) fn open(file: File, from: u64) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        let padded = layout_version(&file).is_none_or(|v| v >= 2);
        let mut clone = file.try_clone()?;
        clone.seek(SeekFrom::Start(from))?;
        Ok(Scanner {
            file,
            reader: BufReader::with_capacity(1 << 20, clone),
            pos: from,
            len,
            padded,
        })
    }

    /// Where the zero padding starting at `offset` ends, if there is padding there: `offset`
    /// is not aligned and every byte from it to the next boundary (or the end) is zero.
    fn padding_end(&self, offset: u64) -> std::io::Result<Option<u64>> {
        let end = align_up(offset).min(self.len);
        if !self.padded || end == offset {
            return Ok(None);
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf.iter().all(|b| *b == 0).then_some(end))
    }

    fn seek(&mut self, to: u64) -> std::io::Result<()> {
        self.reader.seek(SeekFrom::Start(to))?;
        self.pos = to;
        Ok(())
    }

    /// Validates the record at `offset` by positional reads.
    fn valid_at(&self, offset: u64) -> bool {
        let mut h = [0u8; HEADER_LEN];
        if offset + HEADER_LEN as u64 > self.len || self.file.read_exact_at(&mut h, offset).is_err()
        {
            return false;
        }
        let Ok(header) = parse_header(&h) else {
            return false;
        };
        let end = offset + HEADER_LEN as u64 + u64::from(header.stored_len);
        if end > self.len {
            return false;
        }
        let mut rec = vec![0u8; (end - offset) as usize];
        self.file.read_exact_at(&mut rec, offset).is_ok() && check_crc(&rec).is_ok()
    }

    /// First offset after `after` where a valid record starts.
    fn resync(&self, after: u64) -> std::io::Result<Option<u64>> {
        let magic = super::record::RECORD_MAGIC;
        let mut at = after + 1;
        let window = 8u64 << 20;
        while at + HEADER_LEN as u64 <= self.len {
            let n = window.min(self.len - at);
            let mut buf = vec![0u8; n as usize];
            self.file.read_exact_at(&mut buf, at)?;
            for i in 0..buf.len().saturating_sub(3) {
                if &buf[i..i + 4] == magic && self.valid_at(at + i as u64) {
                    return Ok(Some(at + i as u64));
                }
            }
            at += n.saturating_sub(3).max(1);
        }
        Ok(None)
    }

    /// The next record or fault; `None` at the end of the volume. Zero padding is skipped
    /// silently.
    pub(crate) fn next(&mut self) -> std::io::Result<Option<Scanned>> {
        if self.pos >= self.len {
            return Ok(None);
        }
        let offset = self.pos;
        let first = self.read_record();
        if first.is_err() || matches!(first, Ok(None)) {
            if let Some(end) = self.padding_end(offset)? {
                self.seek(end)?;
                return self.next();
            }
        }
        let fault = match first {
            Ok(Some((header, rec))) => {
                self.pos += rec.len() as u64;
                return Ok(Some(Scanned::Record {
                    offset,
                    header,
                    rec,
                }));
            }
            Ok(None) => "record runs past the end of the volume".to_string(),
            Err(f) => f.to_string(),
        };
        let resume = self.resync(offset)?;
        match resume {
            Some(r) => self.seek(r)?,
            None => self.pos = self.len,
        }
        Ok(Some(Scanned::Fault {
            offset,
            fault,
            resume,
        }))
    }

    fn read_record(&mut self) -> Result<Option<(RecordHeader, Vec<u8>)>, RecordFault> {
        if self.pos + HEADER_LEN as u64 > self.len {
            return Ok(None);
        }
        let mut rec = vec![0u8; HEADER_LEN];
        self.reader
            .read_exact(&mut rec)
            .map_err(|_| RecordFault::Short)?;
        let header = parse_header(&rec)?;
        let end = self.pos + HEADER_LEN as u64 + u64::from(header.stored_len);
        if end > self.len {
            return Ok(None);
        }
        rec.resize(HEADER_LEN + header.stored_len as usize, 0);
        self.reader
            .read_exact(&mut rec[HEADER_LEN..])
            .map_err(|_| RecordFault::Short)?;
        check_crc(&rec)?;
        Ok(Some((header, rec)))
    }
}

/// Decompresses and checks a CRC-valid record: the encoded item, or why it is damaged.
pub(crate) fn open_record(header: &RecordHeader, rec: &[u8]) -> Result<Vec<u8>, String> {
    let payload = &rec[HEADER_LEN..];
    let bytes = super::record::decompress(header.compression, payload, header.raw_len as usize)?;
    if bytes.first() != Some(&header.kind.code()) {
        return Err("item kind differs from the header".into());
    }
    let got = Digest::of(header.digest.algorithm(), &bytes).map_err(|e| e.to_string())?;
    if got != header.digest {
        return Err(format!(
            "content hashes to {got:#}, header says {:#}",
            header.digest
        ));
    }
    Ok(bytes)
}

const FLUSH_EVERY: usize = 10_000;

/// Recovers every volume; returns the volume to append to.
pub(crate) fn recover(sh: &Shared) -> Result<ActiveVolume, StoreError> {
    let ids = sh.volumes.list()?;
    let Some(&last) = ids.last() else {
        return ActiveVolume::create(&sh.volumes, 1);
    };
    let mut last_len = VOLUME_HEADER_LEN;
    for &id in &ids {
        last_len = recover_volume(sh, id)?;
    }
    ActiveVolume::open(&sh.volumes, last, last_len)
}

/// Whether a valid record (magic, layout version, CRC) follows the volume header anywhere.
fn first_record(file: File) -> std::io::Result<bool> {
    let mut scanner = Scanner::open(file, VOLUME_HEADER_LEN)?;
    while let Some(step) = scanner.next()? {
        match step {
            Scanned::Record { .. } => return Ok(true),
            Scanned::Fault { resume: None, .. } => return Ok(false),
            Scanned::Fault { .. } => {}
        }
    }
    Ok(false)
}

fn recover_volume(sh: &Shared, id: u32) -> Result<u64, StoreError> {
    let path = sh.volumes.path(id);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    let len = file.metadata().map_err(io_err("stat", &path))?.len();
    if len < VOLUME_HEADER_LEN {
        // Torn while being created: it never held a record.
        tracing::warn!(volume = id, "volume shorter than its header; recreating it");
        drop(file);
        let v = ActiveVolume::create(&sh.volumes, id)?;
        return Ok(v.len);
    }
    let mut head = [0u8; VOLUME_HEADER_LEN as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(io_err("read", &path))?;
    let damaged = match parse_volume_header(&head) {
        Ok((found, _)) if found == id => None,
        Ok((found, _)) => Some(format!("volume header names volume {found}")),
        Err(why) => Some(format!("volume header: {why}")),
    };
    if let Some(why) = damaged {
        // A damaged header in front of intact records (a flipped bit) must not keep the
        // store from opening: the records carry their own checks, the file name the id.
        // Without one valid record after it, the file is not ours to rewrite.
        let ours = len == VOLUME_HEADER_LEN
            || first_record(file.try_clone().map_err(io_err("open", &path))?)
                .map_err(io_err("scan", &path))?;
        if !ours {
            return Err(StoreError::BadStore {
                path: path.clone(),
                why: format!("{why}, and no valid record follows it"),
            });
        }
        tracing::error!(volume = id, %why, "damaged volume header rewritten; its records are intact");
        file.write_all_at(&volume_header(id), 0)
            .map_err(io_err("write", &path))?;
        file.sync_data().map_err(io_err("fdatasync", &path))?;
    }
    let ckpt = sh
        .index
        .meta(&keys::checkpoint_key(id))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(VOLUME_HEADER_LEN, u64::from_be_bytes);
    let shrunk = ckpt > len;
    let from = if shrunk {
        tracing::error!(
            volume = id,
            checkpoint = ckpt,
            len,
            "volume is shorter than its checkpoint; rescanning it whole"
        );
        // Entries pointing past the end are gone; drop them first so that a valid copy of the
        // same item earlier in the volume can be indexed instead.
        purge_beyond(sh, id, len)?;
        VOLUME_HEADER_LEN
    } else {
        ckpt
    };
    if from == len {
        return Ok(len);
    }
    // The bytes past the checkpoint may still be only in the page cache (the writer died before
    // its fdatasync): make them durable before the index may point at them.
    file.sync_data().map_err(io_err("fdatasync", &path))?;
    let mut scanner = Scanner::open(file.try_clone().map_err(io_err("open", &path))?, from)
        .map_err(io_err("scan", &path))?;
    let mut found: Vec<(Digest, Location, Vec<Digest>)> = Vec::new();
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut end = from;
    let mut cut = None;
    while let Some(step) = scanner.next().map_err(io_err("scan", &path))? {
        match step {
            Scanned::Record {
                offset,
                header,
                rec,
            } => {
                end = offset + rec.len() as u64;
                let bytes = match open_record(&header, &rec) {
                    Ok(b) => b,
                    Err(why) => {
                        tracing::error!(volume = id, offset, digest = %header.digest, %why, "damaged record left in place");
                        continue;
                    }
                };
                if !seen.insert(header.digest) || sh.index.get(&header.digest)?.is_some() {
                    continue;
                }
                let loc = Location {
                    volume: id,
                    offset,
                    stored_len: header.stored_len,
                    raw_len: header.raw_len,
                    kind: header.kind,
                    compression: header.compression,
                };
                let refs = if header.kind.has_refs() {
                    match Item::decode(&bytes) {
                        Ok(item) => item.refs(),
                        Err(e) => {
                            tracing::error!(volume = id, offset, digest = %header.digest, error = %e, "record holds an invalid item; not indexed");
                            continue;
                        }
                    }
                } else {
                    Vec::new()
                };
                found.push((header.digest, loc, refs));
            }
            Scanned::Fault {
                offset,
                fault,
                resume: Some(r),
            } => {
                tracing::error!(volume = id, offset, resume = r, %fault, "damaged bytes skipped; valid records follow");
            }
            Scanned::Fault {
                offset,
                fault,
                resume: None,
            } => {
                tracing::warn!(volume = id, offset, cut = len - offset, %fault, "cutting torn volume tail");
                file.set_len(offset).map_err(io_err("truncate", &path))?;
                file.sync_all().map_err(io_err("fsync", &path))?;
                sync_dir(sh.volumes.dir())?;
                sh.volumes.forget(id);
                end = offset;
                cut = Some(offset);
            }
        }
    }
    if let Some(at) = cut {
        // An index entry for a record in the cut range (e.g. written to the WAL just before
        // the crash) must not survive it.
        purge_beyond(sh, id, at)?;
    }
    let reindexed = index_closed(sh, id, found)?;
    if reindexed > 0 {
        tracing::info!(
            volume = id,
            items = reindexed,
            "re-indexed records past the checkpoint"
        );
    }
    sh.index.write(
        IndexBatch {
            meta: vec![(keys::checkpoint_key(id), end.to_be_bytes().to_vec())],
            ..Default::default()
        },
        true,
    )?;
    Ok(end)
}

/// Indexes recovered records whose references are all present (in the index or among the
/// records accepted here), repeating until nothing changes: a crash in the middle of a group
/// can keep a parent's bytes and lose a child's, and such a parent was never acknowledged.
/// A shard store indexes every valid record (its references may live on other nodes).
fn index_closed(
    sh: &Shared,
    id: u32,
    mut pending: Vec<(Digest, Location, Vec<Digest>)>,
) -> Result<u64, StoreError> {
    let mut accepted: HashMap<Digest, Location> = HashMap::new();
    let mut order: Vec<(Digest, Vec<Digest>)> = Vec::new();
    loop {
        let before = pending.len();
        let mut rest = Vec::new();
        for (d, loc, refs) in pending {
            let mut complete = true;
            for r in refs.iter().filter(|_| !sh.opts.shard) {
                if !accepted.contains_key(r) && sh.index.get(r)?.is_none() {
                    complete = false;
                    break;
                }
            }
            if complete {
                accepted.insert(d, loc);
                order.push((d, refs));
            } else {
                rest.push((d, loc, refs));
            }
        }
        pending = rest;
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
    if !pending.is_empty() {
        tracing::warn!(
            volume = id,
            items = pending.len(),
            "records whose references are missing were not indexed (never acknowledged)"
        );
    }
    let n = order.len() as u64;
    for chunk in order.chunks(FLUSH_EVERY) {
        let mut b = IndexBatch::default();
        for (d, refs) in chunk {
            b.items.push((*d, accepted[d]));
            if !refs.is_empty() {
                b.tables
                    .push((*d, build_table(sh, &|d| accepted.get(d).copied(), refs)));
            }
        }
        sh.index.write(b, false)?;
    }
    Ok(n)
}

/// Removes index entries that point past the end of a volume that lost bytes.
fn purge_beyond(sh: &Shared, id: u32, end: u64) -> Result<(), StoreError> {
    let mut gone = Vec::new();
    sh.index.scan(&mut |d, l| {
        if l.volume == id && l.end() > end {
            gone.push(d);
        }
        true
    })?;
    if !gone.is_empty() {
        tracing::error!(
            volume = id,
            items = gone.len(),
            "items lost with the end of the volume were removed from the index"
        );
        sh.index.write(
            IndexBatch {
                remove: gone,
                ..Default::default()
            },
            true,
        )?;
    }
    Ok(())
}
