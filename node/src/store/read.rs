//! The read path: single gets, and batch reads served in (volume, offset) order, located through
//! a manifest's location table (one index read for the whole batch) or through the index.

use std::collections::HashMap;

use mirage_format::Digest;

use super::location::Location;
use super::record::{check_crc, parse_header};
use super::{Store, StoreError};
use crate::index::Index;

/// Options of a read.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    /// Re-hash every item and compare with its digest (the CRC is always checked).
    pub verify_digest: bool,
    /// Merge reads of records closer than this many bytes into one read.
    pub coalesce_gap: u64,
    /// Largest merged read.
    pub max_read: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            verify_digest: true,
            coalesce_gap: 64 << 10,
            max_read: 8 << 20,
        }
    }
}

/// What a batch read did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Items handed to the callback.
    pub served: u64,
    /// Requested digests the store does not hold.
    pub missing: Vec<Digest>,
    /// Location tables read.
    pub tables_read: u64,
    /// Locations found in the location table.
    pub table_hits: u64,
    /// Locations looked up in the index.
    pub index_lookups: u64,
    /// Reads issued to volume files.
    pub read_ops: u64,
    /// Bytes read from volume files.
    pub bytes_read: u64,
}

impl Store {
    /// Reads one item (its encoded bytes), verified.
    pub fn get(&self, d: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_with(d, true)
    }

    /// Reads one item; `verify_digest` as in [`ReadOptions`] (the CRC and the record's own
    /// digest are always checked).
    pub fn get_with(&self, d: &Digest, verify_digest: bool) -> Result<Option<Vec<u8>>, StoreError> {
        match self.shared().index.get(d)? {
            None => Ok(None),
            Some(loc) => self.read_one(d, &loc, verify_digest).map(Some),
        }
    }

    /// Reads many items, in (volume, offset) order, calling `f` with each digest and its bytes
    /// or its integrity error. With `context`, locations come from that item's location table
    /// (the structure-aware path), falling back to the index for anything it lacks.
    pub fn get_many(
        &self,
        wanted: &[Digest],
        context: Option<&Digest>,
        opts: ReadOptions,
        f: impl FnMut(Digest, Result<Vec<u8>, StoreError>),
    ) -> Result<ReadStats, StoreError> {
        self.get_many_in(wanted, context.map_or(&[], std::slice::from_ref), opts, f)
    }

    /// [`Store::get_many`] in the context of several items: their location tables together
    /// (the items of one level of a walk have many parents).
    pub fn get_many_in(
        &self,
        wanted: &[Digest],
        contexts: &[Digest],
        opts: ReadOptions,
        mut f: impl FnMut(Digest, Result<Vec<u8>, StoreError>),
    ) -> Result<ReadStats, StoreError> {
        let sh = self.shared();
        let mut stats = ReadStats::default();
        // (digest, location, came from the location table)
        let mut located: Vec<(Digest, Location, bool)> = Vec::with_capacity(wanted.len());
        let mut lookup: Vec<Digest> = Vec::new();
        let mut map: HashMap<Digest, Location> = HashMap::new();
        for c in contexts {
            if let Some(table) = sh.index.table(c)? {
                stats.tables_read += 1;
                map.extend(table.entries);
            }
        }
        for d in wanted {
            match map.get(d) {
                Some(l) => {
                    stats.table_hits += 1;
                    located.push((*d, *l, true));
                }
                None => lookup.push(*d),
            }
        }
        if !lookup.is_empty() {
            stats.index_lookups += lookup.len() as u64;
            for (d, l) in lookup.iter().zip(sh.index.get_many(&lookup)?) {
                match l {
                    Some(l) => located.push((*d, l, false)),
                    None => stats.missing.push(*d),
                }
            }
        }
        located.sort_by_key(|(_, l, _)| (l.volume, l.offset));
        located.dedup_by_key(|(d, _, _)| *d);
        let mut i = 0;
        while i < located.len() {
            // Merge a run of nearby records in one volume into one sequential read.
            let (vol, start) = (located[i].1.volume, located[i].1.offset);
            let mut end = located[i].1.end();
            let mut j = i + 1;
            while j < located.len() {
                let l = &located[j].1;
                if l.volume != vol
                    || l.offset > end + opts.coalesce_gap
                    || l.end() - start > opts.max_read
                {
                    break;
                }
                end = end.max(l.end());
                j += 1;
            }
            stats.read_ops += 1;
            stats.bytes_read += end - start;
            let merged = sh.volumes.read_at(vol, start, end - start).ok();
            for (d, l, from_table) in &located[i..j] {
                stats.served += 1;
                let res = match &merged {
                    Some(buf) => {
                        let from = (l.offset - start) as usize;
                        self.decode_record(
                            d,
                            l,
                            &buf[from..from + l.record_len() as usize],
                            opts.verify_digest,
                        )
                    }
                    // One bad record must not fail its neighbours: read each on its own.
                    None => self.read_one(d, l, opts.verify_digest),
                };
                let res = match res {
                    Err(e) if *from_table => self.retry_from_index(d, l, e, opts.verify_digest),
                    other => other,
                };
                f(*d, res);
            }
            i = j;
        }
        Ok(stats)
    }

    /// Reads and checks the record at `loc`; a failed read is an integrity error of the item.
    fn read_one(
        &self,
        d: &Digest,
        loc: &Location,
        verify_digest: bool,
    ) -> Result<Vec<u8>, StoreError> {
        let rec = self
            .shared()
            .volumes
            .read_at(loc.volume, loc.offset, loc.record_len())
            .map_err(|e| integrity(d, loc, e.to_string()))?;
        self.decode_record(d, loc, &rec, verify_digest)
    }

    /// A location table can be stale (its parent was stored before a child's copy was lost
    /// and stored again elsewhere): when a table location fails, the index gets a say.
    fn retry_from_index(
        &self,
        d: &Digest,
        failed: &Location,
        first: StoreError,
        verify_digest: bool,
    ) -> Result<Vec<u8>, StoreError> {
        match self.shared().index.get(d) {
            Ok(Some(l)) if l != *failed => self.read_one(d, &l, verify_digest),
            _ => Err(first),
        }
    }

    /// Checks a raw record and returns the encoded item it holds.
    pub(crate) fn decode_record(
        &self,
        d: &Digest,
        loc: &Location,
        rec: &[u8],
        verify_digest: bool,
    ) -> Result<Vec<u8>, StoreError> {
        let h = parse_header(rec).map_err(|f| integrity(d, loc, f.to_string()))?;
        if h.digest != *d {
            return Err(integrity(
                d,
                loc,
                format!("record holds {:#} instead", h.digest),
            ));
        }
        if h.stored_len != loc.stored_len {
            return Err(integrity(
                d,
                loc,
                "record length differs from the index".into(),
            ));
        }
        check_crc(rec).map_err(|f| integrity(d, loc, f.to_string()))?;
        let payload = &rec[super::record::HEADER_LEN..];
        let bytes = super::record::decompress(h.compression, payload, h.raw_len as usize)
            .map_err(|why| integrity(d, loc, why))?;
        if bytes.first() != Some(&h.kind.code()) {
            return Err(integrity(
                d,
                loc,
                "item kind differs from the record header".into(),
            ));
        }
        if verify_digest {
            let got =
                Digest::of(d.algorithm(), &bytes).map_err(|e| integrity(d, loc, e.to_string()))?;
            if got != *d {
                return Err(integrity(d, loc, format!("content hashes to {got:#}")));
            }
        }
        Ok(bytes)
    }
}

fn integrity(d: &Digest, l: &Location, reason: String) -> StoreError {
    StoreError::Integrity {
        digest: *d,
        volume: l.volume,
        offset: l.offset,
        reason,
    }
}
