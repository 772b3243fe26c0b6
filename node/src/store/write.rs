//! The committer's half of the write path (the writers' half is `store::prepare`): one
//! committer thread dedups, checks the closure invariant, appends a whole group of requests,
//! hands it to the syncer, which fsyncs once, indexes, and only then acknowledges.

use std::sync::{mpsc, Arc};

use mirage_format::Digest;

use super::group::{GroupBuf, Pool};
use super::location::{Location, LocationTable};
use super::prepare::{record_bytes, Prepared};
use super::record::{HEADER_LEN, VOLUME_HEADER_LEN};
use super::sync::{answer, Appended, Pipe, SyncMsg, Unsynced};
use super::volume::ActiveVolume;
use super::{Shared, StoreError};
use crate::digest_map::{DigestMap, DigestSet};
use crate::index::{Index, IndexBatch};
use crate::keys;

pub(crate) type Reply = mpsc::SyncSender<Result<Vec<bool>, StoreError>>;

/// Messages to the committer.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A request, laid out by its writer when it is large (see `store::group`).
    Write(Vec<Prepared>, Option<GroupBuf>, Reply),
    /// Compaction: append these copies of stored items and point the index at them.
    Relocate(Vec<Prepared>, mpsc::SyncSender<Result<(), StoreError>>),
    /// Compaction: seal the active volume (if it holds records); answers the active id.
    Seal(mpsc::SyncSender<Result<u32, StoreError>>),
    Checkpoint(mpsc::SyncSender<Result<(), StoreError>>),
    Shutdown(mpsc::SyncSender<()>),
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
            Msg::Write(items, segment, reply) => {
                // A segment is a group of its own; other requests are gathered into one.
                let alone = segment.is_some();
                let mut bytes = record_bytes(&items);
                let mut group = vec![(items, segment, reply)];
                while bytes < sh.opts.max_group_bytes && !alone {
                    match rx.try_recv() {
                        Ok(Msg::Write(i, None, r)) => {
                            bytes += record_bytes(&i);
                            group.push((i, None, r));
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
    group: Vec<(Vec<Prepared>, Option<GroupBuf>, Reply)>,
    pipe: &Pipe,
) -> u64 {
    let mut buf = pool.get();
    // Sized once: growing it would copy every record again.
    let estimate: usize = group.iter().map(|(items, ..)| record_bytes(items)).sum();
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
    for (mut items, segment, reply) in group {
        let refused = if sh.failed.lock().is_some() {
            Some(Ok(Vec::new()))
        } else {
            admit(sh, &new_locs, pipe, &items, &mut looked_up)
                .err()
                .map(Err)
        };
        if let Some(answer) = refused {
            answers.push((reply, answer));
            if let Some(s) = segment {
                recycle(sh, pool, s);
            }
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
        // A segment (alone in its group) is written as it is when every item in it is new;
        // otherwise its payloads go back to its items, laid out below like any others.
        let mut segment = match segment {
            Some(s) if known.iter().all(|k| !k) && buf.len() == 0 => Some(s),
            Some(s) => {
                s.payloads_back(&mut items);
                recycle(sh, pool, s);
                None
            }
            None => None,
        };
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
        // A segment becomes the group's buffer, its records in place; otherwise each record
        // is appended to the committer's buffer.
        let in_place = match segment.take() {
            Some(mut s) => {
                s.place(active);
                pool.put(std::mem::replace(&mut buf, s));
                true
            }
            None => false,
        };
        let mut at = buf.next_offset() - if in_place { buf.len() as u64 } else { 0 };
        for p in fresh {
            let loc = Location {
                volume: active.id,
                offset: at,
                stored_len: p.stored_len,
                raw_len: p.raw_len,
                kind: p.kind,
                compression: p.compression,
            };
            if !in_place {
                buf.append(&p);
            }
            at += (HEADER_LEN + p.stored_len as usize) as u64;
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
        _ => recycle(sh, pool, buf),
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
        if let Err(mpsc::SendError(SyncMsg::Group(g))) =
            pipe.tx.send(SyncMsg::Group(Box::new(group)))
        {
            // No syncer: nothing can be made durable.
            fail(sh, &StoreError::Closed);
            answer(sh, g.answers);
            records = g.records;
        }
    } else {
        answer(sh, answers);
    }
    if let Some(b) = records {
        recycle(sh, pool, b);
    }
    appended
}

/// A buffer back where it came from: a segment to the writers' pool, the committer's own
/// to its pool.
fn recycle(sh: &Shared, pool: &mut Pool, b: GroupBuf) {
    if let Some(own) = b.release_segment(sh) {
        pool.put(own);
    }
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
        p.record_into(&mut buf);
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
