//! Scrub: re-read and re-hash every item this node holds, partition by partition, at a
//! bounded rate; a damaged copy is replaced by a good one from another node (the owners of its
//! partition first), verified by its digest before it is stored.

use std::time::Instant;

use mirage_cluster_config::placement::partition_of;
use mirage_cluster_config::LayoutNode;
use mirage_format::Digest;
use serde::Serialize;

use super::Shard;
use crate::store::ReadOptions;

/// Items read per batch.
const BATCH: usize = 512;

/// What one scrub pass found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScrubReport {
    /// Start, seconds since the epoch.
    pub started_unix: u64,
    /// Duration in milliseconds.
    pub millis: u64,
    /// Items re-hashed.
    pub items: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Damaged copies found.
    pub damaged: Vec<Digest>,
    /// Of those, replaced by a good copy from another node.
    pub repaired: Vec<Digest>,
    /// The first errors met.
    pub errors: Vec<String>,
}

impl Shard {
    /// One scrub pass now, reading at most `rate` bytes per second (`None`: as fast as the
    /// disk goes). Waits for a pass in progress first.
    pub async fn scrub_pass(&self, rate: Option<u64>) -> ScrubReport {
        let _one = self.scrubbing.lock().await;
        let t0 = Instant::now();
        let mut pace = super::Pace::new(rate);
        let mut rep = ScrubReport {
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            ..Default::default()
        };
        let layout = self.layout(None).await;
        let parts = layout.as_ref().map_or(1, |l| l.partitions);
        for p in 0..parts {
            let ds = match self.blocking(move |s| s.partition_digests(parts, p)).await {
                Ok(v) => v,
                Err(e) => {
                    rep.errors.push(e);
                    continue;
                }
            };
            for batch in ds.chunks(BATCH) {
                let batch = batch.to_vec();
                let r = self
                    .blocking(move |s| {
                        let mut bad = Vec::new();
                        let mut bytes = 0u64;
                        let opts = ReadOptions {
                            verify_digest: true,
                            ..Default::default()
                        };
                        s.get_many(&batch, None, opts, |d, r| match r {
                            Ok(b) => bytes += b.len() as u64,
                            Err(e) => {
                                tracing::error!(item = %d, error = %e, "scrub: damaged copy");
                                bad.push(d);
                            }
                        })?;
                        Ok((batch.len() as u64, bytes, bad))
                    })
                    .await;
                match r {
                    Ok((n, bytes, bad)) => {
                        rep.items += n;
                        rep.bytes += bytes;
                        rep.damaged.extend(bad);
                        pace.done(bytes).await;
                    }
                    Err(e) => rep.errors.push(e),
                }
            }
        }
        for d in rep.damaged.clone() {
            match self.replace_from_peers(&d, layout.as_ref()).await {
                Ok(()) => rep.repaired.push(d),
                Err(e) => rep.errors.push(format!("{}: {e}", d.to_text())),
            }
        }
        rep.millis = t0.elapsed().as_millis() as u64;
        let mut t = self.scrub.lock();
        t.passes += 1;
        t.items_checked += rep.items;
        t.damaged += rep.damaged.len() as u64;
        t.repaired += rep.repaired.len() as u64;
        t.last = Some(rep.clone());
        rep
    }

    /// Fetches a good copy of `d` from another node and stores it over the damaged one.
    async fn replace_from_peers(
        &self,
        d: &Digest,
        layout: Option<&mirage_cluster_config::Layout>,
    ) -> Result<(), String> {
        let Some(layout) = layout else {
            return Err("no layout: no other replica to copy from".into());
        };
        let owners = layout
            .placement()
            .partition(partition_of(d, layout.partitions))
            .to_vec();
        // The owners of its partition first, then every other node.
        let mut order: Vec<&LayoutNode> = layout.nodes.iter().filter(|n| n.id != self.id).collect();
        order.sort_by_key(|n| !owners.contains(&n.id));
        let mut why = String::from("no other node holds it");
        for n in order {
            let got = match self.peers.get(n, vec![*d]).await {
                Ok(items) => items,
                Err(e) => {
                    why = e.to_string();
                    continue;
                }
            };
            let alg = self.store.algorithm();
            if let Some(bytes) = got
                .into_iter()
                .find(|b| Digest::of(alg, b).ok().as_ref() == Some(d))
            {
                self.blocking(move |s| s.replace(bytes)).await?;
                tracing::info!(item = %d, from = n.id, "scrub: damaged copy replaced");
                return Ok(());
            }
            why = format!("node {} sent no good copy", n.id);
        }
        Err(why)
    }
}
