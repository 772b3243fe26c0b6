//! The read path: single gets, and batch reads served in (volume, offset) order, located through
//! a manifest's location table (one index read for the whole batch) or through the index.

use std::collections::HashMap;

use bytes::Bytes;
use mirage_format::Digest;

use super::location::{Compression, Location};
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
    /// Reads that went past the page cache (long spans it did not hold).
    pub direct_reads: u64,
    /// Items handed out in memory of their own rather than as slices of their read, because
    /// their span was mostly records nobody asked for.
    pub copied: u64,
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
            Some(loc) => self
                .read_one(d, &loc, verify_digest)
                .map(|b| Some(b.into())),
        }
    }

    /// Reads many items, in (volume, offset) order, calling `f` with each digest and its bytes
    /// (an uncompressed item's bytes are usually shared with the read that brought them in,
    /// not copied: keeping one keeps that read's buffer, which is at most twice the bytes of
    /// the items handed out of it) or its integrity error. With `context`, locations come
    /// from that item's location table (the structure-aware path), falling back to the index
    /// for anything it lacks.
    pub fn get_many(
        &self,
        wanted: &[Digest],
        context: Option<&Digest>,
        opts: ReadOptions,
        f: impl FnMut(Digest, Result<Bytes, StoreError>),
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
        mut f: impl FnMut(Digest, Result<Bytes, StoreError>),
    ) -> Result<ReadStats, StoreError> {
        let sh = self.shared();
        let mut stats = ReadStats::default();
        let located = self.locate(wanted, contexts, &mut stats)?;
        for span in spans(&located, opts.coalesce_gap, opts.max_read) {
            stats.read_ops += 1;
            stats.bytes_read += span.end - span.start;
            let merged = match sh
                .volumes
                .read_span(span.volume, span.start, span.end - span.start)
            {
                Ok((buf, direct)) => {
                    stats.direct_reads += u64::from(direct);
                    Some(buf)
                }
                Err(_) => None,
            };
            // Items are slices of the span's buffer, which stays taken while any of them is
            // kept: of a span that is mostly records nobody asked for (merged across gaps),
            // each item is copied out instead, so that a slice never keeps more than twice
            // its bytes.
            let items = &located[span.items.clone()];
            let wanted: u64 = items.iter().map(|(_, l, _)| l.record_len()).sum();
            let own = wanted * 2 < span.end - span.start;
            for (d, l, from_table) in items {
                stats.served += 1;
                let res = match &merged {
                    Some(buf) => {
                        let from = (l.offset - span.start) as usize;
                        let rec = buf.slice(from..from + l.record_len() as usize);
                        stats.copied += u64::from(own);
                        self.decode_record(d, l, rec, opts.verify_digest, own)
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
        }
        Ok(stats)
    }

    /// Locates `wanted` through the location tables of `contexts`, then the index; returns them
    /// in (volume, offset) order, each with whether its location came from a table. Digests the
    /// store does not hold go to `stats.missing`.
    fn locate(
        &self,
        wanted: &[Digest],
        contexts: &[Digest],
        stats: &mut ReadStats,
    ) -> Result<Vec<(Digest, Location, bool)>, StoreError> {
        let sh = self.shared();
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
        Ok(located)
    }

    /// Reads and checks the record at `loc`; a failed read is an integrity error of the item.
    fn read_one(
        &self,
        d: &Digest,
        loc: &Location,
        verify_digest: bool,
    ) -> Result<Bytes, StoreError> {
        let rec = self
            .shared()
            .volumes
            .read_at(loc.volume, loc.offset, loc.record_len())
            .map_err(|e| integrity(d, loc, e.to_string()))?;
        self.decode_record(d, loc, rec, verify_digest, false)
    }

    /// A location table can be stale (its parent was stored before a child's copy was lost
    /// and stored again elsewhere): when a table location fails, the index gets a say.
    fn retry_from_index(
        &self,
        d: &Digest,
        failed: &Location,
        first: StoreError,
        verify_digest: bool,
    ) -> Result<Bytes, StoreError> {
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
        rec: Bytes,
        verify_digest: bool,
        own: bool,
    ) -> Result<Bytes, StoreError> {
        let h = parse_header(&rec).map_err(|f| integrity(d, loc, f.to_string()))?;
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
        check_crc(&rec).map_err(|f| integrity(d, loc, f.to_string()))?;
        let payload = rec.slice(super::record::HEADER_LEN..);
        let bytes = match h.compression {
            Compression::None if payload.len() == h.raw_len as usize && own => {
                Bytes::copy_from_slice(&payload)
            }
            Compression::None if payload.len() == h.raw_len as usize => payload,
            c => {
                let bufs = &self.shared().volumes.bufs;
                let mut out = bufs.take(h.raw_len as usize);
                super::record::decompress_into(c, &payload, h.raw_len as usize, &mut out)
                    .map_err(|why| integrity(d, loc, why))?;
                bufs.share(out)
            }
        };
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

/// Records of one volume read with one I/O: bytes `start..end` of `volume`, holding
/// `located[items]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Span {
    volume: u32,
    start: u64,
    end: u64,
    items: std::ops::Range<usize>,
}

/// Merges runs of records (sorted by volume and offset) that lie within `gap` bytes of each
/// other in one volume into spans of at most `max` bytes (a single larger record is a span of
/// its own).
fn spans(located: &[(Digest, Location, bool)], gap: u64, max: u64) -> Vec<Span> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < located.len() {
        let (volume, start) = (located[i].1.volume, located[i].1.offset);
        let mut end = located[i].1.end();
        let mut j = i + 1;
        while let Some((_, l, _)) = located.get(j) {
            if l.volume != volume || l.offset > end.saturating_add(gap) || l.end() - start > max {
                break;
            }
            end = end.max(l.end());
            j += 1;
        }
        out.push(Span {
            volume,
            start,
            end,
            items: i..j,
        });
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirage_format::Algorithm;

    fn at(n: u8, volume: u32, offset: u64, stored_len: u32) -> (Digest, Location, bool) {
        let d = Digest::of(Algorithm::Sha256, &[n]).unwrap();
        let l = Location {
            volume,
            offset,
            stored_len,
            raw_len: stored_len,
            kind: mirage_format::ItemKind::Blob,
            compression: super::super::Compression::None,
        };
        (d, l, false)
    }

    #[test]
    fn spans_merge_neighbours_and_split_on_gap_volume_and_size() {
        let rec = |n, v, o| at(n, v, o, 1000);
        let len = rec(0, 0, 0).1.record_len();
        let located = vec![
            rec(0, 1, 0),
            rec(1, 1, len + 10),           // within the gap: merged
            rec(2, 1, 2 * len + 10 + 500), // beyond a 100-byte gap: new span
            rec(3, 2, 0),                  // another volume
            rec(4, 2, len),
            rec(5, 2, 2 * len), // would make the span longer than max
        ];
        let s = spans(&located, 100, 2 * len + 10);
        let got: Vec<_> = s
            .iter()
            .map(|s| (s.volume, s.start, s.end, s.items.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 0, 2 * len + 10, 0..2),
                (1, 2 * len + 510, 3 * len + 510, 2..3),
                (2, 0, 2 * len, 3..5),
                (2, 2 * len, 3 * len, 5..6),
            ]
        );
        assert!(spans(&[], 100, 100).is_empty());
        // A record larger than `max` still gets a span.
        assert_eq!(spans(&located[..1], 0, 1)[0].items, 0..1);
    }
}
