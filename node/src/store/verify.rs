//! Store statistics and full verification.

use std::collections::{BTreeMap, HashSet};

use mirage_format::{Digest, ItemKind};

use super::record::VOLUME_HEADER_LEN;
use super::recover::{open_record, Scanned, Scanner};
use super::{io_err, Store, StoreError};
use crate::index::Index;

/// Store statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Items in the index.
    pub items: u64,
    /// Sum of encoded item sizes (before compression).
    pub logical_bytes: u64,
    /// Sum of record sizes in volumes (headers and compressed payloads).
    pub stored_bytes: u64,
    /// Number of volume files.
    pub volumes: u64,
    /// Total size of the volume files.
    pub volume_bytes: u64,
    /// Items per kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Digest algorithm.
    pub algorithm: String,
}

/// One damaged record or index entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    /// The item concerned, when known.
    pub digest: Option<Digest>,
    /// Volume id.
    pub volume: u32,
    /// Offset in the volume.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

/// Result of [`Store::verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Records read from volumes.
    pub records: u64,
    /// Indexed items whose bytes re-hash to their digest.
    pub items_ok: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Everything damaged.
    pub damaged: Vec<Damage>,
}

/// Items in the index and the bytes of their records (see [`Store::counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Indexed items.
    pub items: u64,
    /// Bytes of their records (headers included).
    pub stored_bytes: u64,
}

impl Store {
    /// Items and stored bytes, cheap after the first call: that one scans the index (holding
    /// back the committer's index writes meanwhile), later ones read the totals the committer
    /// keeps. For gauges; [`Store::stats`] gives the full breakdown.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let sh = self.shared();
        let mut kept = sh.counts.lock();
        if let Some(c) = *kept {
            return Ok(c);
        }
        let mut c = Counts::default();
        sh.index.scan(&mut |_, l| {
            c.items += 1;
            c.stored_bytes += l.record_len();
            true
        })?;
        *kept = Some(c);
        Ok(c)
    }

    /// Counts items and bytes.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let sh = self.shared();
        let mut s = Stats {
            algorithm: sh.alg.to_string(),
            ..Stats::default()
        };
        let mut by_kind: BTreeMap<ItemKind, u64> = BTreeMap::new();
        sh.index.scan(&mut |_, l| {
            s.items += 1;
            s.logical_bytes += u64::from(l.raw_len);
            s.stored_bytes += l.record_len();
            *by_kind.entry(l.kind).or_default() += 1;
            true
        })?;
        s.by_kind = by_kind
            .into_iter()
            .map(|(k, n)| (k.name().to_string(), n))
            .collect();
        for id in sh.volumes.list()? {
            s.volumes += 1;
            s.volume_bytes += sh.volumes.len(id)?;
        }
        Ok(s)
    }

    /// Reads every record of every volume, checks CRC and digest, and checks that every index
    /// entry points at a valid record of its item. `progress` gets bytes scanned so far.
    pub fn verify(&self, mut progress: impl FnMut(u64)) -> Result<VerifyReport, StoreError> {
        let sh = self.shared();
        let mut report = VerifyReport::default();
        let mut good: HashSet<(u32, u64)> = HashSet::new();
        for id in sh.volumes.list()? {
            let path = sh.volumes.path(id);
            let file = std::fs::File::open(&path).map_err(io_err("open", &path))?;
            let mut sc = Scanner::open(file, VOLUME_HEADER_LEN).map_err(io_err("scan", &path))?;
            while let Some(step) = sc.next().map_err(io_err("scan", &path))? {
                match step {
                    Scanned::Record {
                        offset,
                        header,
                        rec,
                    } => {
                        report.records += 1;
                        report.bytes += rec.len() as u64;
                        match open_record(&header, &rec) {
                            Ok(_) => {
                                good.insert((id, offset));
                            }
                            Err(reason) => report.damaged.push(Damage {
                                digest: Some(header.digest),
                                volume: id,
                                offset,
                                reason,
                            }),
                        }
                        progress(report.bytes);
                    }
                    Scanned::Fault { offset, fault, .. } => report.damaged.push(Damage {
                        digest: None,
                        volume: id,
                        offset,
                        reason: fault,
                    }),
                }
            }
        }
        // Every index entry must point at a good record; name the items that do not.
        let mut bad_entries = Vec::new();
        sh.index.scan(&mut |d, l| {
            if good.contains(&(l.volume, l.offset)) {
                report.items_ok += 1;
            } else {
                bad_entries.push(Damage {
                    digest: Some(d),
                    volume: l.volume,
                    offset: l.offset,
                    reason: "indexed record is damaged or missing".into(),
                });
            }
            true
        })?;
        // A damaged record that the index points at is reported once, by name.
        let named: HashSet<(u32, u64)> = bad_entries.iter().map(|b| (b.volume, b.offset)).collect();
        report
            .damaged
            .retain(|d| !named.contains(&(d.volume, d.offset)));
        report.damaged.extend(bad_entries);
        report.damaged.sort_by_key(|d| (d.volume, d.offset));
        Ok(report)
    }
}
