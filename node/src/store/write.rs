//! The write path: callers validate, hash and compress; one committer thread dedups, checks
//! the closure invariant, appends a whole group of requests, fsyncs once, indexes, and only
//! then acknowledges.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use mirage_format::chunking::EncodedItem;
use mirage_format::item::peek;
use mirage_format::{Digest, Item, ItemKind};

use super::group::Pool;
use super::location::{Codec, Compression, Location, LocationTable};
use super::record::{append_record, record_crc, HEADER_LEN, VOLUME_HEADER_LEN};
use super::sync::{answer, Appended, Pipe, SyncMsg, Unsynced};
use super::volume::ActiveVolume;
use super::{Shared, Store, StoreError};
use crate::digest_map::{DigestMap, DigestSet};
use crate::index::{Index, IndexBatch};
use crate::keys;

/// Result of storing one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The item's digest (computed by the store).
    pub digest: Digest,
    /// True when this call stored it; false when it was already present.
    pub new: bool,
}

/// A batch queued for the committer; [`PendingPut::wait`] returns once it is durable.
#[derive(Debug)]
#[must_use = "a put is acknowledged only by waiting for it"]
pub struct PendingPut {
    out: Vec<PutOutcome>,
    slots: Vec<usize>,
    reply: Option<mpsc::Receiver<Result<Vec<bool>, StoreError>>>,
}

impl PendingPut {
    /// Waits until every new item of the batch is durable; one outcome per item, in order.
    pub fn wait(mut self) -> Result<Vec<PutOutcome>, StoreError> {
        if let Some(rrx) = self.reply.take() {
            // The committer answers with one flag per prepared item, in order: true where this
            // request appended it (a concurrent writer or an earlier copy in the batch may have).
            let flags = rrx.recv().map_err(|_| StoreError::Closed)??;
            for (slot, new) in self.slots.iter().zip(flags) {
                self.out[*slot].new = new;
            }
        }
        Ok(self.out)
    }
}

/// An item ready for the committer.
#[derive(Debug)]
pub(crate) struct Prepared {
    digest: Digest,
    kind: ItemKind,
    refs: Vec<Digest>,
    raw_len: u32,
    compression: Compression,
    payload: Vec<u8>,
    /// The record's CRC, computed by the writer's thread (the committer is one thread).
    crc: u32,
}

impl Prepared {
    /// Compresses the encoded item with `codec` and computes its record's CRC (on the
    /// writer's thread, not the committer's).
    fn new(
        digest: Digest,
        kind: ItemKind,
        refs: Vec<Digest>,
        encoded: Vec<u8>,
        codec: Codec,
    ) -> Self {
        let raw_len = encoded.len() as u32;
        let (compression, payload) = compress(encoded, codec);
        let crc = record_crc(&digest, kind, compression, raw_len, &payload);
        Prepared {
            digest,
            kind,
            refs,
            raw_len,
            compression,
            payload,
            crc,
        }
    }

    /// A copy of a stored item for compaction (no references to check: it is already in).
    pub(crate) fn relocated(
        header_digest: Digest,
        kind: ItemKind,
        encoded: Vec<u8>,
        codec: Codec,
    ) -> Self {
        Prepared::new(header_digest, kind, Vec::new(), encoded, codec)
    }
}

pub(crate) type Reply = mpsc::SyncSender<Result<Vec<bool>, StoreError>>;

/// Messages to the committer.
#[derive(Debug)]
pub(crate) enum Msg {
    Write(Vec<Prepared>, Reply),
    /// Compaction: append these copies of stored items and point the index at them.
    Relocate(Vec<Prepared>, mpsc::SyncSender<Result<(), StoreError>>),
    /// Compaction: seal the active volume (if it holds records); answers the active id.
    Seal(mpsc::SyncSender<Result<u32, StoreError>>),
    Checkpoint(mpsc::SyncSender<Result<(), StoreError>>),
    Shutdown(mpsc::SyncSender<()>),
}

impl Store {
    /// Stores one encoded item.
    pub fn put(&self, encoded: Vec<u8>) -> Result<PutOutcome, StoreError> {
        let mut v = self.put_many(vec![encoded])?;
        v.pop().ok_or(StoreError::Closed)
    }

    /// Stores a batch of encoded items, all or nothing. Each is decoded and validated, hashed by
    /// the store (never trusting a caller's digest) and must reference only items present in
    /// the store or in the same batch. Returns when every new item is durable.
    pub fn put_many(&self, encoded: Vec<Vec<u8>>) -> Result<Vec<PutOutcome>, StoreError> {
        self.put_inner(encoded.into_iter().map(|b| (None, b)).collect())?
            .wait()
    }

    /// Like [`Store::put_many`] for items encoded in this process: an [`EncodedItem`]'s digest
    /// is the hash of its bytes by construction, so it is not computed again.
    pub fn put_encoded(&self, items: Vec<EncodedItem>) -> Result<Vec<PutOutcome>, StoreError> {
        self.put_encoded_submit(items)?.wait()
    }

    /// Like [`Store::put_encoded`] without waiting: the batch is prepared (validated,
    /// compressed) and queued; [`PendingPut::wait`] returns when it is durable. Batches are
    /// committed in the order they are submitted, so a later batch may reference items of an
    /// earlier one; if the earlier one fails, the later is refused by the closure check.
    pub fn put_encoded_submit(&self, items: Vec<EncodedItem>) -> Result<PendingPut, StoreError> {
        self.put_inner(
            items
                .into_iter()
                .map(|e| {
                    let (d, b) = e.into_parts();
                    (Some(d), b)
                })
                .collect(),
        )
    }

    fn put_inner(
        &self,
        items: Vec<(Option<mirage_format::Digest>, Vec<u8>)>,
    ) -> Result<PendingPut, StoreError> {
        let (mut known, encoded): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        let sh = self.shared();
        if let Some(why) = sh.failed.lock().clone() {
            return Err(StoreError::WritesDisabled(why));
        }
        hash_unknown(sh.alg, &encoded, &mut known);
        let mut digests = Vec::with_capacity(encoded.len());
        let mut metas = Vec::with_capacity(encoded.len());
        for (index, bytes) in encoded.iter().enumerate() {
            let (d, kind, refs) = check_item(sh.alg, index, bytes, known[index])?;
            digests.push(d);
            metas.push((kind, refs));
        }
        let present = sh.index.get_many(&digests)?;
        let mut prepared = Vec::new();
        let mut slots = Vec::new();
        let codec = sh.codec_now();
        for (i, (((bytes, d), (kind, refs)), here)) in encoded
            .into_iter()
            .zip(&digests)
            .zip(metas)
            .zip(&present)
            .enumerate()
        {
            if here.is_some() {
                continue;
            }
            slots.push(i);
            prepared.push(Prepared::new(*d, kind, refs, bytes, codec));
        }
        let out: Vec<PutOutcome> = digests
            .iter()
            .map(|d| PutOutcome {
                digest: *d,
                new: false,
            })
            .collect();
        let reply = if prepared.is_empty() {
            None
        } else {
            let (rtx, rrx) = mpsc::sync_channel(1);
            let raw: usize = prepared
                .iter()
                .map(|p| HEADER_LEN + p.raw_len as usize)
                .sum();
            sh.submitted_raw.fetch_add(raw as u64, Ordering::Relaxed);
            self.send(Msg::Write(prepared, rtx))?;
            Some(rrx)
        };
        Ok(PendingPut { out, slots, reply })
    }
}

/// Bytes `items` take as records.
fn record_bytes(items: &[Prepared]) -> usize {
    items.iter().map(|p| HEADER_LEN + p.payload.len()).sum()
}

pub(crate) fn compress(bytes: Vec<u8>, codec: Codec) -> (Compression, Vec<u8>) {
    if bytes.len() < 128 {
        return (Compression::None, bytes);
    }
    let (compression, packed) = match codec {
        Codec::None | Codec::Auto => return (Compression::None, bytes),
        Codec::Lz4 => (Compression::Lz4, super::record::lz4_compress(&bytes)),
        Codec::Zstd(level) => (
            Compression::Zstd,
            super::record::zstd_compress(&bytes, level).ok(),
        ),
    };
    match packed {
        // Keep the compressed form only when it saves at least an eighth.
        Some(c) if c.len() + bytes.len() / 8 <= bytes.len() => (compression, c),
        _ => (Compression::None, bytes),
    }
}

/// The committer thread; it runs the syncer (`store::sync`) beside it.
pub(crate) fn committer(sh: Arc<Shared>, rx: mpsc::Receiver<Msg>, active: ActiveVolume) {
    let unsynced = Unsynced::default();
    let (stx, srx) = mpsc::channel();
    let (back_tx, back_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let (shr, unsynced) = (&sh, &unsynced);
        let spawned = std::thread::Builder::new()
            .name("mirage-syncer".into())
            .spawn_scoped(s, move || super::sync::syncer(shr, srx, unsynced, &back_tx));
        if let Err(e) = spawned {
            fail(&sh, &StoreError::Closed);
            tracing::error!(error = %e, "cannot start the syncer thread");
        }
        let pipe = Pipe { tx: stx, unsynced };
        commit_loop(&sh, &rx, active, &pipe, Pool::new(back_rx));
        // Dropping the pipe ends the syncer; the scope joins it.
    });
}

fn commit_loop(
    sh: &Shared,
    rx: &mpsc::Receiver<Msg>,
    mut active: ActiveVolume,
    pipe: &Pipe,
    mut pool: Pool,
) {
    let mut since_checkpoint = 0u64;
    let mut pending: Option<Msg> = None;
    loop {
        let first = match pending.take() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => {
                    pipe.barrier();
                    return;
                }
            },
        };
        match first {
            Msg::Shutdown(done) => {
                pipe.barrier();
                if let Err(e) = checkpoint(sh, &active) {
                    tracing::error!(error = %e, "final checkpoint failed");
                }
                let _ = done.send(());
                return;
            }
            Msg::Checkpoint(reply) => {
                pipe.barrier();
                let r = checkpoint(sh, &active);
                if r.is_ok() {
                    since_checkpoint = 0;
                }
                let _ = reply.send(r);
            }
            Msg::Seal(reply) => {
                pipe.barrier();
                let r = if active.len > VOLUME_HEADER_LEN {
                    rotate(sh, &mut active)
                } else {
                    Ok(())
                };
                if let Err(e) = &r {
                    fail(sh, e);
                }
                let _ = reply.send(r.map(|()| active.id));
            }
            Msg::Relocate(items, reply) => {
                pipe.barrier();
                let r = relocate(sh, &mut active, items);
                match &r {
                    Ok(n) => since_checkpoint += n,
                    Err(e) => fail(sh, e),
                }
                let _ = reply.send(r.map(|_| ()));
            }
            Msg::Write(items, reply) => {
                let mut group = vec![(items, reply)];
                let mut bytes: usize = group[0].0.iter().map(|p| p.payload.len()).sum();
                while bytes < sh.opts.max_group_bytes {
                    match rx.try_recv() {
                        Ok(Msg::Write(i, r)) => {
                            bytes += i.iter().map(|p| p.payload.len()).sum::<usize>();
                            group.push((i, r));
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let appended = commit_group(sh, &mut active, &mut pool, group, pipe);
                since_checkpoint += appended;
                if since_checkpoint >= sh.opts.checkpoint_bytes {
                    pipe.barrier();
                    match checkpoint(sh, &active) {
                        Ok(()) => since_checkpoint = 0,
                        Err(e) => tracing::warn!(error = %e, "index checkpoint failed; will retry"),
                    }
                }
            }
        }
    }
}

/// Records that every record before `active.len` is indexed, durably (this also syncs every
/// earlier index write, which share the same write-ahead log). Never after a failure: the
/// records of a failed group may be durable but unindexed, and recovery must scan them.
fn checkpoint(sh: &Shared, active: &ActiveVolume) -> Result<(), StoreError> {
    if let Some(why) = sh.failed.lock().clone() {
        return Err(StoreError::WritesDisabled(why));
    }
    sh.index.write(
        IndexBatch {
            meta: vec![(
                keys::checkpoint_key(active.id),
                active.len.to_be_bytes().to_vec(),
            )],
            ..Default::default()
        },
        true,
    )?;
    Ok(())
}

/// Lays out one group at the end of the active volume and hands it to the syncer, which writes
/// it; returns bytes appended. Every request gets its answer: `Ok` only when every byte of the
/// group is durable and indexed. A request never straddles two volumes, so a crash can never
/// leave half of a request (a parent without its references) durable.
fn commit_group(
    sh: &Shared,
    active: &mut ActiveVolume,
    pool: &mut Pool,
    group: Vec<(Vec<Prepared>, Reply)>,
    pipe: &Pipe,
) -> u64 {
    let mut buf = pool.get();
    // Sized once: growing it would copy every record again.
    let estimate: usize = group.iter().map(|(items, _)| record_bytes(items)).sum();
    buf.begin(active, estimate, sh.opts.max_group_bytes);
    let mut new_locs: DigestMap<Location> = DigestMap::default();
    // References the closure check found in the index (their location tables reuse them).
    let mut looked_up: DigestMap<Location> = DigestMap::default();
    // Every item the group indexes is new, unless the index could not say (below).
    let mut batch = IndexBatch {
        items_are_new: true,
        ..Default::default()
    };
    let mut answers: Vec<(Reply, Result<Vec<bool>, StoreError>)> = Vec::new();
    let mut with_refs: Vec<(Digest, Vec<Digest>)> = Vec::new();
    let mut appended = 0u64;
    for (items, reply) in group {
        if sh.failed.lock().is_some() {
            answers.push((reply, Ok(Vec::new())));
            continue;
        }
        if let Err(e) = admit(sh, &new_locs, pipe, &items, &mut looked_up) {
            answers.push((reply, Err(e)));
            continue;
        }
        // Dedup against the index, the pipeline and this group; duplicates inside the request
        // count once.
        let mut seen = DigestSet::default();
        let mut known: Vec<bool> = items
            .iter()
            .map(|p| {
                new_locs.contains_key(&p.digest)
                    || !seen.insert(p.digest)
                    || pipe.get(&p.digest).is_some()
            })
            .collect();
        // The rest are looked up in the index in one batch.
        let ask: Vec<Digest> = items
            .iter()
            .zip(&known)
            .filter(|(_, k)| !**k)
            .map(|(p, _)| p.digest)
            .collect();
        let present = if ask.is_empty() {
            Vec::new()
        } else {
            match sh.index.get_many(&ask) {
                Ok(v) => v.into_iter().map(|l| l.is_some()).collect(),
                // An index that cannot answer: store the items again (a duplicate is harmless,
                // but its location replaces one a reader may have read).
                Err(_) => {
                    batch.items_are_new = false;
                    vec![false; ask.len()]
                }
            }
        };
        let mut present = present.into_iter();
        for k in known.iter_mut().filter(|k| !**k) {
            *k = present.next().unwrap_or(false);
        }
        let mut fresh = Vec::with_capacity(items.len());
        let mut flags = Vec::with_capacity(items.len());
        for (p, known) in items.into_iter().zip(known) {
            flags.push(!known);
            if !known {
                fresh.push(p);
            }
        }
        let req_bytes = record_bytes(&fresh) as u64;
        let used = buf.next_offset();
        if used > VOLUME_HEADER_LEN && used + req_bytes > sh.opts.max_volume_size {
            // Seal the volume between requests: once the syncer has settled what it holds,
            // make what is buffered durable, index it (before the checkpoint that says the
            // sealed volume is fully indexed), then start the next.
            pipe.barrier();
            let sealed = IndexBatch {
                items: std::mem::take(&mut batch.items),
                items_are_new: batch.items_are_new,
                ..Default::default()
            };
            // Once indexed they are found there; they must not linger in the syncer's map.
            for (d, _) in &sealed.items {
                new_locs.remove(d);
            }
            let r = buf
                .write(active, true)
                .and_then(|n| {
                    appended += n;
                    write_new_items(sh, sealed)
                })
                .and_then(|()| rotate(sh, active));
            if let Err(e) = r {
                fail(sh, &e);
                answers.push((reply, Ok(Vec::new())));
                continue;
            }
            buf.begin(active, estimate, sh.opts.max_group_bytes);
        }
        for p in fresh {
            let loc = Location {
                volume: active.id,
                offset: buf.next_offset(),
                stored_len: p.payload.len() as u32,
                raw_len: p.raw_len,
                kind: p.kind,
                compression: p.compression,
            };
            append_record(
                buf.records(),
                &p.digest,
                p.kind,
                p.compression,
                p.raw_len,
                &p.payload,
                p.crc,
            );
            new_locs.insert(p.digest, loc);
            batch.items.push((p.digest, loc));
            if !p.refs.is_empty() {
                with_refs.push((p.digest, p.refs));
            }
        }
        answers.push((reply, Ok(flags)));
    }
    let mut records = None;
    match buf.close() {
        Some(end) if sh.failed.lock().is_none() => {
            appended += end - active.len;
            active.len = end;
            records = Some(buf);
        }
        // Not handed on: back to the pool (`begin` clears it).
        _ => pool.put(buf),
    }
    if sh.failed.lock().is_none() {
        for (parent, refs) in with_refs {
            let table = build_table(
                sh,
                &|d| {
                    new_locs
                        .get(d)
                        .or_else(|| looked_up.get(d))
                        .copied()
                        .or_else(|| pipe.get(d))
                },
                &refs,
            );
            batch.tables.push((parent, table));
        }
        pipe.unsynced.lock().extend(new_locs);
        let group = Appended {
            writer: active.writer.clone(),
            records: records.take(),
            batch,
            answers,
        };
        if let Err(mpsc::SendError(SyncMsg::Group(g))) = pipe.tx.send(SyncMsg::Group(group)) {
            // No syncer: nothing can be made durable.
            fail(sh, &StoreError::Closed);
            answer(sh, g.answers);
            records = g.records;
        }
    } else {
        answer(sh, answers);
    }
    if let Some(b) = records {
        pool.put(b);
    }
    appended
}

/// Appends copies of items the store holds and points the index at them (compaction). The
/// copies are durable before the index moves; the old copies stay until the caller deletes
/// their volume after a checkpoint.
fn relocate(
    sh: &Shared,
    active: &mut ActiveVolume,
    items: Vec<Prepared>,
) -> Result<u64, StoreError> {
    if let Some(why) = sh.failed.lock().clone() {
        return Err(StoreError::WritesDisabled(why));
    }
    let bytes: u64 = items
        .iter()
        .map(|p| (HEADER_LEN + p.payload.len()) as u64)
        .sum();
    if active.len > VOLUME_HEADER_LEN && active.len + bytes > sh.opts.max_volume_size {
        rotate(sh, active)?;
    }
    let mut buf = Vec::with_capacity(bytes as usize);
    let mut batch = IndexBatch::default();
    for p in items {
        let loc = Location {
            volume: active.id,
            offset: active.len + buf.len() as u64,
            stored_len: p.payload.len() as u32,
            raw_len: p.raw_len,
            kind: p.kind,
            compression: p.compression,
        };
        append_record(
            &mut buf,
            &p.digest,
            p.kind,
            p.compression,
            p.raw_len,
            &p.payload,
            p.crc,
        );
        batch.items.push((p.digest, loc));
    }
    let mut appended = 0;
    flush(sh, active, &mut buf, &mut appended)?;
    // The copies are recompressed: the stored bytes change, so the totals are counted again
    // when next asked for.
    let mut counts = sh.counts.lock();
    *counts = None;
    sh.index.write(batch, false)?;
    Ok(appended)
}

/// SHA-256 digests of the items of a batch that came without one (from the network), hashed
/// side by side ([`Digest::of_each`]); SHA-1 items are hashed one at a time by
/// [`check_item`], which names an item its collision detection refuses.
fn hash_unknown(alg: mirage_format::Algorithm, encoded: &[Vec<u8>], known: &mut [Option<Digest>]) {
    if alg != mirage_format::Algorithm::Sha256 {
        return;
    }
    let (slots, bytes): (Vec<usize>, Vec<&[u8]>) = known
        .iter()
        .zip(encoded)
        .enumerate()
        .filter(|(_, (k, _))| k.is_none())
        .map(|(i, (_, b))| (i, b.as_slice()))
        .unzip();
    if slots.len() < 2 {
        return;
    }
    if let Ok(digests) = Digest::of_each(alg, &bytes) {
        for (i, d) in slots.into_iter().zip(digests) {
            known[i] = Some(d);
        }
    }
}

/// Decodes and validates item #`index` of a batch for a store using `alg`: its kind, its
/// references (all of `alg`), the blob size limit, and its digest (`known` when it was made in
/// this process, else computed).
pub(crate) fn check_item(
    alg: mirage_format::Algorithm,
    index: usize,
    bytes: &[u8],
    known: Option<Digest>,
) -> Result<(Digest, ItemKind, Vec<Digest>), StoreError> {
    let (kind, _) = peek(bytes).map_err(|source| StoreError::InvalidItem { index, source })?;
    let refs = if kind.has_refs() {
        let item =
            Item::decode(bytes).map_err(|source| StoreError::InvalidItem { index, source })?;
        let refs = item.refs();
        if let Some(r) = refs.iter().find(|r| r.algorithm() != alg) {
            return Err(StoreError::WrongAlgorithm {
                index,
                found: r.algorithm(),
                store: alg,
            });
        }
        refs
    } else {
        if bytes.len() > mirage_format::item::MAX_ITEM {
            return Err(StoreError::InvalidItem {
                index,
                source: mirage_format::DecodeError::TooLong {
                    field: "blob",
                    len: bytes.len() as u64,
                    limit: mirage_format::item::MAX_ITEM as u64,
                },
            });
        }
        Vec::new()
    };
    let d = match known {
        Some(d) if d.algorithm() == alg => d,
        Some(d) => {
            return Err(StoreError::WrongAlgorithm {
                index,
                found: d.algorithm(),
                store: alg,
            })
        }
        None => Digest::of(alg, bytes).map_err(|source| StoreError::Digest { index, source })?,
    };
    Ok((d, kind, refs))
}

/// Indexes items that are new to the store, keeping [`Shared::counts`] in step (under its
/// lock, so a first count's scan sees either none or all of them).
pub(crate) fn write_new_items(sh: &Shared, batch: IndexBatch) -> Result<(), StoreError> {
    let items = batch.items.len() as u64;
    let bytes: u64 = batch.items.iter().map(|(_, l)| l.record_len()).sum();
    let mut counts = sh.counts.lock();
    let r = sh.index.write(batch, false);
    match (&r, counts.as_mut()) {
        (Ok(()), Some(c)) => {
            c.items += items;
            c.stored_bytes += bytes;
        }
        (Err(_), _) => *counts = None,
        (Ok(()), None) => {}
    }
    Ok(r?)
}

/// Closure invariant: every reference of every item is in the store, earlier in this group,
/// or in the same request. A shard store leaves the check to the cluster's writer. References
/// found in the index go into `found`, so that the group's location tables need not look them
/// up a second time.
fn admit(
    sh: &Shared,
    new_locs: &DigestMap<Location>,
    pipe: &Pipe,
    items: &[Prepared],
    found: &mut DigestMap<Location>,
) -> Result<(), StoreError> {
    if sh.opts.shard {
        return Ok(());
    }
    let in_req: DigestSet = items.iter().map(|p| p.digest).collect();
    // Every reference not otherwise known, looked up in one batch (one index call per request,
    // not one per item: a request of trees names tens of thousands of contents).
    let mut asked = DigestSet::default();
    let unknown: Vec<Digest> = items
        .iter()
        .flat_map(|p| p.refs.iter())
        .filter(|r| {
            !in_req.contains(r)
                && !new_locs.contains_key(r)
                && !found.contains_key(r)
                && pipe.get(r).is_none()
                && asked.insert(**r)
        })
        .copied()
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let locs = sh.index.get_many(&unknown)?;
    let mut absent = DigestSet::default();
    for (d, l) in unknown.into_iter().zip(locs) {
        match l {
            Some(l) => {
                found.insert(d, l);
            }
            None => {
                absent.insert(d);
            }
        }
    }
    if absent.is_empty() {
        return Ok(());
    }
    // The first item (in request order) that names a missing reference is the one refused.
    for p in items {
        let missing: Vec<Digest> = p
            .refs
            .iter()
            .filter(|r| absent.contains(r))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::MissingReferences {
                digest: p.digest,
                missing,
            });
        }
    }
    Ok(())
}

/// The location table of a parent with references `refs`: each found in `known` (items not
/// yet indexed) or else in the index.
pub(crate) fn build_table(
    sh: &Shared,
    known: &dyn Fn(&Digest) -> Option<Location>,
    refs: &[Digest],
) -> LocationTable {
    let mut entries: Vec<(Digest, Option<Location>)> =
        refs.iter().map(|r| (*r, known(r))).collect();
    let lookups: Vec<Digest> = entries
        .iter()
        .filter(|(_, l)| l.is_none())
        .map(|(r, _)| *r)
        .collect();
    if let Ok(locs) = sh.index.get_many(&lookups) {
        let found: DigestMap<Location> = lookups
            .into_iter()
            .zip(locs)
            .filter_map(|(d, l)| Some((d, l?)))
            .collect();
        for (r, l) in &mut entries {
            if l.is_none() {
                *l = found.get(r).copied();
            }
        }
    }
    LocationTable {
        entries: entries
            .into_iter()
            .filter_map(|(r, l)| Some((r, l?)))
            .collect(),
    }
}

fn flush(
    sh: &Shared,
    active: &mut ActiveVolume,
    buf: &mut Vec<u8>,
    appended: &mut u64,
) -> Result<(), StoreError> {
    if let Some(why) = sh.failed.lock().clone() {
        buf.clear();
        return Err(StoreError::WritesDisabled(why));
    }
    let r = active.append_durable(buf);
    if r.is_ok() {
        *appended += buf.len() as u64;
    }
    buf.clear();
    r
}

fn rotate(sh: &Shared, active: &mut ActiveVolume) -> Result<(), StoreError> {
    checkpoint(sh, active)?;
    let next = ActiveVolume::create(&sh.volumes, active.id + 1)?;
    *active = next;
    checkpoint(sh, active)
}

/// A storage failure stops all writes: the node must not acknowledge anything it may lose.
pub(crate) fn fail(sh: &Shared, e: &StoreError) {
    let mut f = sh.failed.lock();
    if f.is_none() {
        tracing::error!(error = %e, "storage failure: refusing all further writes");
        *f = Some(e.to_string());
    }
}
