//! The client's side of the sharded CAS (DESIGN.md §4, `docs/CLUSTER.md` "Data path"): items
//! go to and come from the storage nodes the catalog's layout places them on.
//!
//! **Writes** walk the image top-down, asking each item's replica nodes whether they hold it
//! (an item held by any replica had its whole subtree stored at the write quorum before it was
//! sent, so the walk never descends below it), and send each item to the replicas that lack
//! it: blobs as they are read, inner items afterwards in levels by height, each level only once
//! every item of the level below is durable on W replicas. An item that fewer than W replicas
//! acknowledge fails the push, naming the nodes that failed; a replica that missed an item is
//! repaired later by anti-entropy.
//!
//! **Reads** ask, for each item, its replicas in the client's zone first, then the other
//! replicas, then the replicas of the previous layout (a rebalance may not have moved it yet),
//! then every other node; reads are grouped per node (the node reads them in (volume, offset)
//! order) and run against all nodes in parallel, so a large file's chunks come from several
//! nodes at once. Every item is hashed and must be one that was asked for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc;

use anyhow::{anyhow, bail, Context, Result};
use mirage_cluster_config::{Layout, Placement};
use mirage_format::Digest;
use mirage_node::Store;
use parking_lot::Mutex;

use super::sync::{accept, descend, read_local, refs_of, SyncStats};
use super::Remote;

/// Bytes per upload request to one node.
const PUT_BYTES: usize = 8 << 20;
/// Digests per download request to one node.
const GET_DIGESTS: usize = 512;
/// Children per `POST /v1/items/tables` request.
const TABLE_CHILDREN: usize = 8192;

/// The storage nodes of a cluster and where items live on them.
#[derive(Debug)]
pub struct Shards {
    pub(super) layout: Layout,
    placement: Placement,
    previous: Option<Placement>,
    nodes: BTreeMap<u64, Remote>,
    pub(super) zones: BTreeMap<u64, String>,
    zone: Option<String>,
}

/// The failures of `nodes`, for an error message.
fn describe(failed: &BTreeMap<u64, String>) -> String {
    if failed.is_empty() {
        return "none".into();
    }
    let why: Vec<String> = failed
        .iter()
        .map(|(id, e)| format!("node {id}: {e}"))
        .collect();
    why.join("; ")
}

/// How long a storage node may keep a transfer waiting before its items are asked of the
/// next replica: `MIRAGE_NODE_TIMEOUT` seconds, default 30.
fn node_timeout() -> std::time::Duration {
    let secs = std::env::var("MIRAGE_NODE_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(30);
    std::time::Duration::from_secs(secs)
}

impl Shards {
    /// The cluster's storage nodes as its catalog's current layout places items, or `None`
    /// when the catalog has no layout (a standalone node: it holds everything itself).
    pub fn connect(remote: &Remote, zone: Option<String>) -> Result<Option<Shards>> {
        let Some((layout, previous)) = remote.layouts()? else {
            return Ok(None);
        };
        let mut nodes = BTreeMap::new();
        let mut zones = BTreeMap::new();
        for n in layout.nodes_with(previous.as_ref()) {
            let node = remote.at(&format!("http://{}", n.address))?;
            nodes.insert(n.id, node.with_timeout(node_timeout()));
            zones.insert(n.id, n.zone.clone());
        }
        if let Some(z) = &zone {
            if !zones.values().any(|v| v == z) {
                tracing::warn!("zone {z:?} has no storage node; reading from any zone");
            }
        }
        Ok(Some(Shards {
            placement: layout.placement(),
            previous: previous.as_ref().map(Layout::placement),
            layout,
            nodes,
            zones,
            zone,
        }))
    }

    /// The nodes that should hold `d`.
    pub fn replicas(&self, d: &Digest) -> &[u64] {
        self.placement.nodes_for(d)
    }

    fn in_zone(&self, id: u64) -> bool {
        self.zone
            .as_deref()
            .is_some_and(|z| self.zones.get(&id).map(String::as_str) == Some(z))
    }

    /// Nodes to read `d` from, best first: its replicas in the client's zone, its other
    /// replicas, the previous layout's replicas, then every other node (each group zone
    /// first).
    pub fn read_order(&self, d: &Digest) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        let add = |ids: &mut dyn Iterator<Item = u64>, out: &mut Vec<u64>| {
            let mut group: Vec<u64> = ids.filter(|i| !out.contains(i)).collect();
            group.sort_by_key(|i| !self.in_zone(*i));
            out.extend(group);
        };
        add(&mut self.replicas(d).iter().copied(), &mut out);
        if let Some(p) = &self.previous {
            add(&mut p.nodes_for(d).iter().copied(), &mut out);
        }
        add(&mut self.nodes.keys().copied(), &mut out);
        out
    }

    fn node(&self, id: u64) -> Result<&Remote> {
        self.nodes
            .get(&id)
            .ok_or_else(|| anyhow!("node {id} is not in the layout"))
    }

    /// Which nodes of each digest's replicas hold it.
    fn holders(&self, ds: &[Digest]) -> Result<HashMap<Digest, Vec<u64>>> {
        let mut ask: BTreeMap<u64, Vec<Digest>> = BTreeMap::new();
        for d in ds {
            for n in self.replicas(d) {
                ask.entry(*n).or_default().push(*d);
            }
        }
        let answers: Vec<(u64, Vec<Digest>, Result<Vec<bool>>)> = std::thread::scope(|s| {
            let jobs: Vec<_> = ask
                .into_iter()
                .map(|(n, ds)| {
                    s.spawn(move || {
                        let r = self.node(n).and_then(|r| r.has(&ds));
                        (n, ds, r)
                    })
                })
                .collect();
            jobs.into_iter()
                .map(|j| {
                    j.join()
                        .unwrap_or_else(|_| (0, Vec::new(), Err(anyhow!("panicked"))))
                })
                .collect()
        });
        let mut out: HashMap<Digest, Vec<u64>> = HashMap::new();
        for (n, ds, r) in answers {
            match r {
                Ok(present) => {
                    for (d, p) in ds.into_iter().zip(present) {
                        if p {
                            out.entry(d).or_default().push(n);
                        }
                    }
                }
                // A node that does not answer holds nothing as far as this write knows; the
                // quorum decides whether the write can still succeed.
                Err(e) => tracing::warn!("node {n}: {e:#}"),
            }
        }
        Ok(out)
    }
}

/// Uploads to the nodes, one worker thread per node; counts durable copies per item.
pub(super) struct Senders<'s> {
    queues: BTreeMap<u64, mpsc::SyncSender<Job>>,
    pending: BTreeMap<u64, Vec<(Digest, Vec<u8>)>>,
    failed: &'s Mutex<BTreeMap<u64, String>>,
    stats: &'s Mutex<SyncStats>,
}

enum Job {
    Put(Vec<(Digest, Vec<u8>)>),
    Barrier(mpsc::SyncSender<()>),
}

impl<'s> Senders<'s> {
    fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, 's>,
        shards: &'s Shards,
        copies: &'s Mutex<HashMap<Digest, usize>>,
        failed: &'s Mutex<BTreeMap<u64, String>>,
        stats: &'s Mutex<SyncStats>,
    ) -> Senders<'s> {
        let mut queues = BTreeMap::new();
        for (&id, remote) in &shards.nodes {
            let (tx, rx) = mpsc::sync_channel::<Job>(2);
            queues.insert(id, tx);
            scope.spawn(move || {
                for job in rx {
                    match job {
                        Job::Barrier(done) => {
                            let _ = done.send(());
                        }
                        Job::Put(batch) => {
                            if failed.lock().contains_key(&id) {
                                continue;
                            }
                            let items: Vec<Vec<u8>> =
                                batch.iter().map(|(_, b)| b.clone()).collect();
                            match remote.put(&items) {
                                Ok(_) => {
                                    let mut c = copies.lock();
                                    for (d, _) in &batch {
                                        *c.entry(*d).or_default() += 1;
                                    }
                                    let bytes = items.iter().map(|i| i.len() as u64).sum();
                                    stats.lock().add(batch.len() as u64, bytes);
                                }
                                Err(e) => {
                                    tracing::warn!("node {id}: {e:#}");
                                    failed.lock().insert(id, format!("{e:#}"));
                                }
                            }
                        }
                    }
                }
            });
        }
        Senders {
            queues,
            pending: BTreeMap::new(),
            failed,
            stats,
        }
    }

    pub(super) fn send(&mut self, node: u64, d: Digest, bytes: Vec<u8>) {
        let q = self.pending.entry(node).or_default();
        q.push((d, bytes));
        if q.iter().map(|(_, b)| b.len()).sum::<usize>() >= PUT_BYTES {
            let batch = std::mem::take(q);
            self.dispatch(node, batch);
        }
    }

    fn dispatch(&self, node: u64, batch: Vec<(Digest, Vec<u8>)>) {
        if let Some(q) = self.queues.get(&node) {
            if q.send(Job::Put(batch)).is_err() {
                self.failed
                    .lock()
                    .insert(node, "upload worker stopped".into());
            }
        }
    }

    /// Sends everything queued and waits until every node has answered.
    pub(super) fn barrier(&mut self) {
        for (node, batch) in std::mem::take(&mut self.pending) {
            if !batch.is_empty() {
                self.dispatch(node, batch);
            }
        }
        let waits: Vec<mpsc::Receiver<()>> = self
            .queues
            .values()
            .filter_map(|q| {
                let (tx, rx) = mpsc::sync_channel(1);
                q.send(Job::Barrier(tx)).ok().map(|()| rx)
            })
            .collect();
        for w in waits {
            let _ = w.recv();
        }
    }

    fn close(self) {
        drop(self.queues);
        let _ = self.stats;
    }
}

/// Inner items waiting to be sent: digest → (encoded bytes, references, nodes to send to).
type Pending = HashMap<Digest, (Vec<u8>, Vec<Digest>, Vec<u64>)>;

/// Heights of inner items (an item whose references are all outside `inner` has height 0).
fn heights(inner: &Pending) -> HashMap<Digest, usize> {
    let mut h: HashMap<Digest, usize> = HashMap::with_capacity(inner.len());
    for start in inner.keys() {
        if h.contains_key(start) {
            continue;
        }
        // Iterative post-order.
        let mut stack = vec![(*start, false)];
        while let Some((d, expanded)) = stack.pop() {
            if h.contains_key(&d) {
                continue;
            }
            let refs = &inner[&d].1;
            if expanded {
                let v = refs
                    .iter()
                    .filter_map(|r| h.get(r).map(|x| x + 1))
                    .max()
                    .unwrap_or(0);
                h.insert(d, v);
                continue;
            }
            stack.push((d, true));
            for r in refs {
                if inner.contains_key(r) && !h.contains_key(r) {
                    stack.push((*r, false));
                }
            }
        }
    }
    h
}

impl Shards {
    /// Checks that every item of `ds` is on at least W replicas (present before, or
    /// acknowledged since).
    fn check_quorum(
        &self,
        ds: impl Iterator<Item = Digest>,
        before: &HashMap<Digest, Vec<u64>>,
        copies: &Mutex<HashMap<Digest, usize>>,
        failed: &Mutex<BTreeMap<u64, String>>,
    ) -> Result<()> {
        let w = self.layout.write_quorum;
        let copies = copies.lock();
        for d in ds {
            let n = before.get(&d).map_or(0, Vec::len) + copies.get(&d).copied().unwrap_or(0);
            if n < w {
                bail!(
                    "{} is durable on {n} of its replicas, fewer than the write quorum {w} \
                     (failed: {})",
                    d.to_text(),
                    describe(&failed.lock())
                );
            }
        }
        Ok(())
    }

    /// Sends `root`'s closure from `local` to the nodes that should hold it.
    pub fn push(&self, local: &Store, root: &Digest) -> Result<SyncStats> {
        let copies = Mutex::new(HashMap::new());
        let failed = Mutex::new(BTreeMap::new());
        let stats = Mutex::new(SyncStats::default());
        std::thread::scope(|s| -> Result<Vec<(Digest, Vec<Digest>)>> {
            let mut tx = Senders::start(s, self, &copies, &failed, &stats);
            let r = self.push_walk(local, root, &mut tx, &copies, &failed, &stats);
            tx.barrier();
            tx.close();
            r
        })
        .map(|new_parents| self.send_tables(&new_parents))?;
        let out = *stats.lock();
        Ok(out)
    }

    fn push_walk(
        &self,
        local: &Store,
        root: &Digest,
        tx: &mut Senders<'_>,
        copies: &Mutex<HashMap<Digest, usize>>,
        failed: &Mutex<BTreeMap<u64, String>>,
        stats: &Mutex<SyncStats>,
    ) -> Result<Vec<(Digest, Vec<Digest>)>> {
        let mut seen = HashSet::from([*root]);
        let mut new_parents = Vec::new();
        let mut frontier = vec![*root];
        let mut before: HashMap<Digest, Vec<u64>> = HashMap::new();
        let mut blobs: Vec<Digest> = Vec::new();
        let mut blobs_sent: Vec<(Digest, Vec<u64>)> = Vec::new();
        let mut inner = Pending::new();
        while !frontier.is_empty() {
            stats.lock().checked += frontier.len() as u64;
            let holders = self.holders(&frontier)?;
            let mut read = Vec::new();
            for d in &frontier {
                let h = holders.get(d).cloned().unwrap_or_default();
                if h.len() < self.replicas(d).len() {
                    read.push(*d);
                }
                before.insert(*d, h);
            }
            let mut next = Vec::new();
            read_local(local, root, &read, |d, bytes| {
                let held = &before[&d];
                let targets: Vec<u64> = self
                    .replicas(&d)
                    .iter()
                    .copied()
                    .filter(|n| !held.contains(n))
                    .collect();
                match refs_of(&d, &bytes)? {
                    None => {
                        blobs.push(d);
                        for n in &targets {
                            tx.send(*n, d, bytes.to_vec());
                        }
                        if !targets.is_empty() {
                            blobs_sent.push((d, targets));
                        }
                    }
                    Some(refs) => {
                        // Held somewhere: its subtree was stored before it was.
                        if held.is_empty() {
                            descend(&refs, &mut seen, &mut next);
                            new_parents.push((d, refs.clone()));
                        }
                        // A copy: the read's buffer is not kept for a parent's sake.
                        inner.insert(d, (bytes.to_vec(), refs, targets));
                    }
                }
                Ok(())
            })?;
            frontier = next;
        }
        tx.barrier();
        self.check_quorum(blobs.into_iter(), &before, copies, failed)?;
        let mut hinted = self.hint(local, root, tx, &blobs_sent, failed)?;
        let h = heights(&inner);
        let mut levels: BTreeMap<usize, Vec<Digest>> = BTreeMap::new();
        for (d, v) in &h {
            levels.entry(*v).or_default().push(*d);
        }
        for (_, level) in levels {
            let mut sent = Vec::with_capacity(level.len());
            for d in &level {
                if let Some((bytes, _, targets)) = inner.remove(d) {
                    for n in &targets {
                        tx.send(*n, *d, bytes.clone());
                    }
                    sent.push((*d, targets));
                }
            }
            tx.barrier();
            self.check_quorum(level.into_iter(), &before, copies, failed)?;
            hinted += self.hint(local, root, tx, &sent, failed)?;
        }
        stats.lock().hinted += hinted;
        Ok(new_parents)
    }

    /// Tells every node which children of the new parents it holds, so that reads in a
    /// parent's context find them in a location table (`POST /v1/items/tables`). Tables are
    /// hints: a node that misses them serves from its index, so a failure is only logged.
    fn send_tables(&self, parents: &[(Digest, Vec<Digest>)]) {
        let mut per_node: BTreeMap<u64, Vec<(Digest, Vec<Digest>)>> = BTreeMap::new();
        for (p, refs) in parents {
            let mut mine: BTreeMap<u64, Vec<Digest>> = BTreeMap::new();
            for r in refs {
                for n in self.replicas(r) {
                    mine.entry(*n).or_default().push(*r);
                }
            }
            for (n, cs) in mine {
                per_node.entry(n).or_default().push((*p, cs));
            }
        }
        std::thread::scope(|s| {
            for (n, tables) in &per_node {
                s.spawn(move || {
                    let r = self.node(*n).and_then(|remote| {
                        let mut batch: Vec<(Digest, Vec<Digest>)> = Vec::new();
                        let mut children = 0;
                        for t in tables {
                            children += t.1.len();
                            batch.push(t.clone());
                            if children >= TABLE_CHILDREN {
                                remote.tables(&std::mem::take(&mut batch))?;
                                children = 0;
                            }
                        }
                        if !batch.is_empty() {
                            remote.tables(&batch)?;
                        }
                        Ok(())
                    });
                    if let Err(e) = r {
                        tracing::warn!("node {n}: location tables not recorded: {e:#}");
                    }
                });
            }
        });
    }

    /// Fetches `root`'s closure from the nodes into `local`, skipping what `local` holds.
    pub fn pull(&self, local: &Store, root: &Digest) -> Result<SyncStats> {
        let alg = local.algorithm();
        let mut stats = SyncStats::default();
        let mut seen = HashSet::from([*root]);
        let mut frontier = vec![*root];
        let mut inner: super::sync::Inner = HashMap::new();
        let mut parents = super::sync::Parents::new();
        let mut blobs: Vec<Vec<u8>> = Vec::new();
        let mut down: BTreeMap<u64, String> = BTreeMap::new();
        while !frontier.is_empty() {
            stats.checked += frontier.len() as u64;
            let mut pending: Vec<Digest> =
                super::sync::absent(&frontier, local.has_many(&frontier)?);
            let mut tried: HashMap<Digest, usize> = HashMap::new();
            let mut next = Vec::new();
            let mut new_parents = super::sync::Parents::new();
            while !pending.is_empty() {
                // Each item to the best node not yet tried for it and not known down.
                let mut plan: BTreeMap<u64, Vec<Digest>> = BTreeMap::new();
                for d in pending.drain(..) {
                    let order = self.read_order(&d);
                    let k = tried.entry(d).or_default();
                    while *k < order.len() && down.contains_key(&order[*k]) {
                        *k += 1;
                    }
                    let Some(n) = order.get(*k) else {
                        bail!(
                            "no node could serve {} of {} (unreachable: {})",
                            d.to_text(),
                            root.to_text(),
                            describe(&down)
                        );
                    };
                    *k += 1;
                    plan.entry(*n).or_default().push(d);
                }
                let (itx, irx) = mpsc::sync_channel::<Vec<u8>>(64);
                let wanted: HashSet<Digest> = plan.values().flatten().copied().collect();
                let mut got: HashSet<Digest> = HashSet::with_capacity(wanted.len());
                let mut failure: Option<anyhow::Error> = None;
                let results: Vec<(u64, Result<()>)> = std::thread::scope(|s| {
                    let jobs: Vec<_> = plan
                        .iter()
                        .map(|(&n, ds)| {
                            let (itx, parents) = (itx.clone(), &parents);
                            s.spawn(move || {
                                let r = self.node(n).and_then(|remote| {
                                    for chunk in ds.chunks(GET_DIGESTS) {
                                        remote.get_each(chunk, Some(root), parents, |bytes| {
                                            itx.send(bytes).map_err(|_| anyhow!("stopped"))
                                        })?;
                                    }
                                    Ok(())
                                });
                                (n, r)
                            })
                        })
                        .collect();
                    drop(itx);
                    for bytes in irx {
                        if failure.is_some() {
                            continue;
                        }
                        let r = (|| -> Result<()> {
                            let d = accept(alg, &bytes, &wanted, &mut got)?;
                            stats.add(1, bytes.len() as u64);
                            super::sync::route(
                                d,
                                bytes,
                                &mut seen,
                                &mut next,
                                &mut new_parents,
                                &mut inner,
                                &mut blobs,
                            )?;
                            if blobs.iter().map(Vec::len).sum::<usize>() >= PUT_BYTES {
                                local.put_many(std::mem::take(&mut blobs))?;
                            }
                            Ok(())
                        })();
                        failure = r.err();
                    }
                    jobs.into_iter()
                        .map(|j| j.join().unwrap_or_else(|_| (0, Err(anyhow!("panicked")))))
                        .collect()
                });
                if let Some(e) = failure {
                    return Err(e);
                }
                for (n, r) in results {
                    if let Err(e) = r {
                        tracing::warn!("node {n}: {e:#}; reading from other replicas");
                        down.insert(n, format!("{e:#}"));
                    }
                }
                pending = wanted.into_iter().filter(|d| !got.contains(d)).collect();
            }
            frontier = next;
            parents = new_parents;
        }
        local.put_many(std::mem::take(&mut blobs))?;
        super::sync::finish(root, inner, |b| {
            local
                .put_many(std::mem::take(b))
                .map(|_| ())
                .context("storing")
        })?;
        Ok(stats)
    }
}
