//! The second stage of the write pipeline. The committer lays out each group of requests in a
//! buffer, places it at the end of the active volume and hands it here; the syncer writes
//! every group handed to it, makes them durable with one fdatasync, then indexes each group
//! and answers its requests, in order. While the syncer writes and syncs, the committer lays
//! out the next groups, so under load one fdatasync covers many groups, and the disk is written
//! in long runs (on the project machine 400 MB synced 4 MB at a time took 1.97 s, 32 MB at a
//! time 0.93 s).
//!
//! Nothing is answered before its bytes are durable and indexed. Items appended and not yet
//! indexed are listed in [`Unsynced`], which the committer consults wherever it would ask the
//! index (dedup, the closure check, location tables); an item leaves it only after the index
//! holds it.

use std::sync::{mpsc, Arc};

use mirage_format::Digest;

use super::group::GroupBuf;
use super::location::Location;
use super::volume::VolumeWriter;
use super::write::{fail, write_new_items, Reply};
use super::{Shared, StoreError};
use crate::index::IndexBatch;

/// Items appended by the committer and not yet indexed by the syncer.
pub(crate) type Unsynced = parking_lot::Mutex<crate::digest_map::DigestMap<Location>>;

/// A group appended to a volume, waiting to be made durable, indexed and answered.
pub(crate) struct Appended {
    /// The volume it goes to.
    pub(crate) writer: Arc<VolumeWriter>,
    /// Its records, laid out at their place (`None`: nothing new to write).
    pub(crate) records: Option<GroupBuf>,
    pub(crate) batch: IndexBatch,
    pub(crate) answers: Vec<(Reply, Result<Vec<bool>, StoreError>)>,
}

/// Messages to the syncer.
pub(crate) enum SyncMsg {
    Group(Box<Appended>),
    /// Answered once every group sent before it is indexed and answered.
    Barrier(mpsc::SyncSender<()>),
}

/// The committer's handle on the syncer.
pub(crate) struct Pipe<'a> {
    pub(crate) tx: mpsc::Sender<SyncMsg>,
    pub(crate) unsynced: &'a Unsynced,
}

impl Pipe<'_> {
    /// Waits until every group sent so far is durable, indexed and answered.
    pub(crate) fn barrier(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(SyncMsg::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Where an item appended but not yet indexed lives.
    pub(crate) fn get(&self, d: &Digest) -> Option<Location> {
        self.unsynced.lock().get(d).copied()
    }
}

/// The syncer thread: runs until the committer drops its sender. Written group buffers go
/// back to the committer through `back`.
pub(crate) fn syncer(
    sh: &Shared,
    rx: mpsc::Receiver<SyncMsg>,
    unsynced: &Unsynced,
    back: &mpsc::Sender<GroupBuf>,
) {
    let mut next: Option<SyncMsg> = None;
    loop {
        let first = match next.take() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => return,
            },
        };
        let mut groups = Vec::new();
        let mut barrier = None;
        match first {
            SyncMsg::Group(g) => groups.push(*g),
            SyncMsg::Barrier(b) => barrier = Some(b),
        }
        // Everything already appended goes into the same fdatasync; a barrier ends the run.
        while barrier.is_none() {
            match rx.try_recv() {
                Ok(SyncMsg::Group(g)) => groups.push(*g),
                Ok(SyncMsg::Barrier(b)) => barrier = Some(b),
                Err(_) => break,
            }
        }
        if !groups.is_empty() {
            settle(sh, groups, unsynced, back);
        }
        if let Some(b) = barrier {
            let _ = b.send(());
        }
    }
}

/// Writes `groups`, makes them durable (one fdatasync per volume), indexes them and answers
/// them, in order.
fn settle(
    sh: &Shared,
    mut groups: Vec<Appended>,
    unsynced: &Unsynced,
    back: &mpsc::Sender<GroupBuf>,
) {
    for g in &mut groups {
        let Some(records) = g.records.take() else {
            continue;
        };
        if sh.failed.lock().is_none() {
            if let Err(e) = records.write_out(&g.writer) {
                fail(sh, &e);
            }
        }
        if let Some(own) = records.release_segment(sh) {
            // The committer may be waiting for it.
            let _ = back.send(own);
        }
    }
    let mut synced: Vec<&Arc<VolumeWriter>> = Vec::new();
    for g in &groups {
        if sh.failed.lock().is_some() {
            break;
        }
        if synced.iter().any(|w| Arc::ptr_eq(w, &g.writer)) {
            continue;
        }
        match g.writer.sync() {
            Ok(()) => synced.push(&g.writer),
            Err(e) => fail(sh, &e),
        }
    }
    for g in groups {
        let digests: Vec<Digest> = g.batch.items.iter().map(|(d, _)| *d).collect();
        if sh.failed.lock().is_none() {
            if let Err(e) = write_new_items(sh, g.batch) {
                // The bytes are durable and recovery re-indexes them; this process cannot
                // serve them.
                fail(sh, &e);
            }
        }
        {
            let mut u = unsynced.lock();
            for d in &digests {
                u.remove(d);
            }
        }
        answer(sh, g.answers);
    }
}

/// Sends each request its answer; once the store has failed, nothing is acknowledged: an `Ok`
/// becomes `WritesDisabled`.
pub(crate) fn answer(sh: &Shared, answers: Vec<(Reply, Result<Vec<bool>, StoreError>)>) {
    let failed = sh.failed.lock().clone();
    for (reply, ans) in answers {
        let ans = match (&failed, ans) {
            (Some(why), Ok(_)) => Err(StoreError::WritesDisabled(why.clone())),
            (_, a) => a,
        };
        let _ = reply.send(ans);
    }
}
