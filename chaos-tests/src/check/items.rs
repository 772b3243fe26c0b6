//! The data-path invariant: every item of every acknowledged image is held by at least W
//! nodes after the faults are healed, and after repair by all N of its replica nodes, each
//! copy hashing to its digest.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;

use mirage_format::{Digest, Item};
use mirage_node::{Store, StoreOptions};
use serde_json::json;

use crate::harness::cluster::Cluster;
use crate::harness::HarnessError;

/// The closure of every image in `images` (digest, cache store holding it).
pub fn closures(images: &[(String, PathBuf)]) -> Result<BTreeSet<Digest>, String> {
    let mut by_cache: BTreeMap<&PathBuf, Vec<&str>> = BTreeMap::new();
    for (d, cache) in images {
        by_cache.entry(cache).or_default().push(d);
    }
    let mut all = BTreeSet::new();
    for (cache, roots) in by_cache {
        let store = Store::open(cache, StoreOptions::default())
            .map_err(|e| format!("{}: {e}", cache.display()))?;
        let mut seen: HashSet<Digest> = HashSet::new();
        let mut todo: Vec<Digest> = roots
            .iter()
            .map(|r| r.parse::<Digest>().map_err(|e| format!("{r}: {e}")))
            .collect::<Result<_, _>>()?;
        while let Some(d) = todo.pop() {
            if !seen.insert(d) {
                continue;
            }
            let bytes = store
                .get(&d)
                .map_err(|e| format!("{}: {d}: {e}", cache.display()))?
                .ok_or_else(|| format!("{}: {d} missing from the cache", cache.display()))?;
            let item = Item::decode(&bytes).map_err(|e| format!("{d}: {e}"))?;
            todo.extend(item.refs());
        }
        all.extend(seen);
    }
    Ok(all)
}

/// For each of `ds`: which nodes hold it (by their index), from `/v1/items/has` on each node.
pub fn holders(c: &Cluster, ds: &[Digest]) -> Result<Vec<Vec<usize>>, HarnessError> {
    let mut out = vec![Vec::new(); ds.len()];
    for id in 1..=c.spec.nodes {
        let mut k = 0;
        for chunk in ds.chunks(1000) {
            let texts: Vec<String> = chunk.iter().map(Digest::to_text).collect();
            let v = c.admin(id, "/v1/items/has", json!({ "digests": texts }))?;
            let present = v["present"]
                .as_array()
                .ok_or_else(|| HarnessError::Setup(format!("node {id}: has: {v}")))?;
            for p in present {
                if p.as_bool() == Some(true) {
                    out[k].push(id);
                }
                k += 1;
            }
        }
    }
    Ok(out)
}

/// The digests of `ds` node `id` serves intact (re-hashed on the node and here).
pub fn intact_on(c: &Cluster, id: usize, ds: &[Digest]) -> Result<HashSet<Digest>, HarnessError> {
    let mut good = HashSet::new();
    for chunk in ds.chunks(500) {
        let texts: Vec<String> = chunk.iter().map(Digest::to_text).collect();
        let body = c.admin_bytes(
            id,
            "/v1/items/get",
            json!({ "digests": texts, "verify": true }),
        )?;
        let wanted: HashSet<&Digest> = chunk.iter().collect();
        let mut at = 0usize;
        while at + 5 <= body.len() {
            let tag = body[at];
            let len = u32::from_be_bytes([body[at + 1], body[at + 2], body[at + 3], body[at + 4]])
                as usize;
            let Some(payload) = body.get(at + 5..at + 5 + len) else {
                return Err(HarnessError::Setup(format!(
                    "node {id}: a truncated frame in /v1/items/get"
                )));
            };
            if tag == 0 {
                if let Some(alg) = chunk.first().map(Digest::algorithm) {
                    if let Ok(d) = Digest::of(alg, payload) {
                        if wanted.contains(&d) {
                            good.insert(d);
                        }
                    }
                }
            }
            at += 5 + len;
        }
    }
    Ok(good)
}
