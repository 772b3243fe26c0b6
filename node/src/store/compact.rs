//! Compaction: every volume written so far is read sequentially and each item the index still
//! points at is written again through the committer, recompressed at a chosen level (checkin
//! writes at a fast level; compaction spends the CPU once, later, for a smaller store), and
//! copies no longer indexed (duplicates left by races or recovery) are dropped. Then the
//! location tables that point into the old volumes are rewritten and the old volumes deleted.
//!
//! Crash safety: copies are durable before the index points at them; the old volume is deleted
//! only after a checkpoint has made every index move and table rewrite durable. A crash at any
//! point leaves every item readable (from its old or its new copy); at worst, copies written
//! before the crash are unreferenced garbage that the next compaction drops. A volume holding
//! damaged records is left in place (its damage is reported by `verify`).

use std::collections::HashMap;
use std::fs::File;
use std::sync::mpsc;

use mirage_format::Digest;

use super::location::{Codec, Location, LocationTable};
use super::prepare::Prepared;
use super::record::{RecordHeader, VOLUME_HEADER_LEN};
use super::recover::{open_record, Scanned, Scanner};
use super::volume::sync_dir;
use super::write::Msg;
use super::{io_err, Store, StoreError};
use crate::index::{Index, IndexBatch};

/// How to compact.
#[derive(Clone, Copy, Debug)]
pub struct CompactOptions {
    /// zstd level for every payload (kept only when it saves at least 1/8).
    pub level: i32,
    /// Compression threads.
    pub threads: usize,
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompactReport {
    /// Volumes rewritten and deleted.
    pub volumes: u64,
    /// Items rewritten.
    pub items: u64,
    /// Copies dropped because the index points elsewhere.
    pub dropped: u64,
    /// Damaged records found (their volumes are kept).
    pub damaged: u64,
    /// Bytes of the volumes before.
    pub bytes_before: u64,
    /// Bytes of the volumes after.
    pub bytes_after: u64,
}

const BATCH_BYTES: usize = 16 << 20;

impl Store {
    /// Rewrites every volume (see the module documentation). Other reads and writes may go on
    /// meanwhile.
    pub fn compact(&self, opts: CompactOptions) -> Result<CompactReport, StoreError> {
        let sh = self.shared();
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.send(Msg::Seal(rtx))?;
        let active = rrx.recv().map_err(|_| StoreError::Closed)??;
        let old: Vec<u32> = sh
            .volumes
            .list()?
            .into_iter()
            .filter(|v| *v < active)
            .collect();
        let mut report = CompactReport::default();
        let mut done = Vec::new();
        for &v in &old {
            report.bytes_before += sh.volumes.len(v)?;
            let path = sh.volumes.path(v);
            let file = File::open(&path).map_err(io_err("open", &path))?;
            let mut scan = Scanner::open(file, VOLUME_HEADER_LEN).map_err(io_err("scan", &path))?;
            let mut batch: Vec<(RecordHeader, Vec<u8>)> = Vec::new();
            let mut bytes = 0usize;
            let mut damaged = false;
            while let Some(step) = scan.next().map_err(io_err("scan", &path))? {
                match step {
                    Scanned::Record {
                        offset,
                        header,
                        rec,
                    } => {
                        let here = matches!(
                            sh.index.get(&header.digest)?,
                            Some(l) if l.volume == v && l.offset == offset
                        );
                        if !here {
                            report.dropped += 1;
                            continue;
                        }
                        bytes += rec.len();
                        batch.push((header, rec));
                        if bytes >= BATCH_BYTES {
                            damaged |=
                                self.relocate(std::mem::take(&mut batch), opts, &mut report)?;
                            bytes = 0;
                        }
                    }
                    Scanned::Fault { offset, fault, .. } => {
                        tracing::error!(volume = v, offset, %fault, "damaged record kept in place");
                        report.damaged += 1;
                        damaged = true;
                    }
                }
            }
            damaged |= self.relocate(batch, opts, &mut report)?;
            if !damaged {
                done.push(v);
            }
        }
        // Every move durable, then the tables, then (durably) the deletions.
        self.checkpoint()?;
        remap_tables(&sh.index, &done)?;
        for &v in &done {
            let path = sh.volumes.path(v);
            sh.volumes.forget(v);
            std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
            report.volumes += 1;
        }
        sync_dir(sh.volumes.dir())?;
        for v in sh.volumes.list()? {
            report.bytes_after += sh.volumes.len(v)?;
        }
        Ok(report)
    }

    /// Recompresses a batch of records in parallel and hands it to the committer; returns true
    /// when a record was damaged (it is left where it is).
    fn relocate(
        &self,
        batch: Vec<(RecordHeader, Vec<u8>)>,
        opts: CompactOptions,
        report: &mut CompactReport,
    ) -> Result<bool, StoreError> {
        if batch.is_empty() {
            return Ok(false);
        }
        let threads = opts.threads.max(1);
        let per = batch.len().div_ceil(threads);
        let parts: Vec<Vec<Option<Prepared>>> = std::thread::scope(|s| {
            let workers: Vec<_> = batch
                .chunks(per)
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|(h, rec)| match open_record(h, rec) {
                                Ok(bytes) => {
                                    Some(Prepared::relocated(
                                        h.digest,
                                        h.kind,
                                        bytes,
                                        Codec::Zstd(opts.level),
                                    ))
                                }
                                Err(why) => {
                                    tracing::error!(item = %h.digest, %why, "damaged record kept in place");
                                    None
                                }
                            })
                            .collect()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        let prepared: Vec<Option<Prepared>> = parts.into_iter().flatten().collect();
        let damaged = prepared.len() != batch.len() || prepared.iter().any(Option::is_none);
        let ok: Vec<Prepared> = prepared.into_iter().flatten().collect();
        report.items += ok.len() as u64;
        report.damaged += (batch.len() - ok.len()) as u64;
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.send(Msg::Relocate(ok, rtx))?;
        rrx.recv().map_err(|_| StoreError::Closed)??;
        Ok(damaged)
    }
}

/// Points every location-table entry that names one of `gone` at the item's indexed location.
fn remap_tables(index: &impl Index, gone: &[u32]) -> Result<(), StoreError> {
    if gone.is_empty() {
        return Ok(());
    }
    let mut stale: Vec<(Digest, LocationTable)> = Vec::new();
    index.scan_tables(&mut |parent, table| {
        if table.entries.iter().any(|(_, l)| gone.contains(&l.volume)) {
            stale.push((parent, table));
        }
        true
    })?;
    for chunk in stale.chunks(4096) {
        let wanted: Vec<Digest> = chunk
            .iter()
            .flat_map(|(_, t)| t.entries.iter().map(|(d, _)| *d))
            .collect();
        let now: HashMap<Digest, Location> = wanted
            .iter()
            .copied()
            .zip(index.get_many(&wanted)?)
            .filter_map(|(d, l)| l.map(|l| (d, l)))
            .collect();
        let tables = chunk
            .iter()
            .map(|(parent, t)| {
                let entries = t
                    .entries
                    .iter()
                    .filter_map(|(d, _)| now.get(d).map(|l| (*d, *l)))
                    .collect();
                (*parent, LocationTable { entries })
            })
            .collect();
        index.write(
            IndexBatch {
                tables,
                ..Default::default()
            },
            true,
        )?;
    }
    Ok(())
}
