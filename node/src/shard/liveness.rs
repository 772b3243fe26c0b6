//! The failure detector: the catalog leader probes every storage node of the layout and
//! declares a node dead once it has failed every probe for `dead_after` (a layout version in
//! which the node takes no partitions, so anti-entropy copies its partitions back to N
//! replicas on the others), and alive again once it answers two probes in a row.
//!
//! The decision ([`Liveness`]) is pure; [`watch`] does the probing and proposing. Only the
//! leader decides, from its own observations: a new leader starts counting afresh, so a node
//! is never declared dead on hearsay. At most half of the layout's nodes are ever dead at once
//! (a leader on the wrong side of a partition, or a cluster-wide outage, must not move every
//! partition); beyond that, and when fewer than W nodes would remain active, nodes stay as
//! they are until an administrator acts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mirage_cluster_config::{Layout, LayoutChange, NodeState};
use tokio::time::Instant;

use super::Shard;
use crate::catalog::{Command, SYSTEM_CALLER};
use crate::raft::node::CatalogNode;

/// Consecutive answered probes that bring a dead node back.
const ALIVE_AFTER: u32 = 2;

#[derive(Clone, Copy, Debug, Default)]
struct Health {
    /// Start of the current run of failed probes.
    failing_since: Option<Instant>,
    /// Answered probes in a row.
    answered: u32,
}

/// What the leader has seen of each node, and what it concludes.
#[derive(Debug)]
pub struct Liveness {
    dead_after: Duration,
    seen: BTreeMap<u64, Health>,
}

impl Liveness {
    /// A detector that declares a node dead after `dead_after` of failed probes.
    pub fn new(dead_after: Duration) -> Liveness {
        Liveness {
            dead_after,
            seen: BTreeMap::new(),
        }
    }

    /// Forgets everything (this node stopped leading, or a change was made).
    pub fn reset(&mut self) {
        self.seen.clear();
    }

    /// Records one probe of node `id`.
    pub fn observe(&mut self, id: u64, answered: bool, now: Instant) {
        let h = self.seen.entry(id).or_default();
        if answered {
            h.failing_since = None;
            h.answered = h.answered.saturating_add(1);
        } else {
            h.failing_since.get_or_insert(now);
            h.answered = 0;
        }
    }

    /// The one layout change the observations call for, if any: a dead node that answers
    /// comes back first; then the lowest-numbered active node that failed every probe for
    /// `dead_after` is declared dead, while that leaves at most half of the nodes dead and at
    /// least W active.
    pub fn decide(&self, layout: &Layout, now: Instant) -> Option<LayoutChange> {
        let state = |id: u64| self.seen.get(&id).copied().unwrap_or_default();
        if let Some(n) = layout
            .nodes
            .iter()
            .find(|n| n.state == NodeState::Dead && state(n.id).answered >= ALIVE_AFTER)
        {
            return Some(LayoutChange::Alive { id: n.id });
        }
        let dead = layout
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Dead)
            .count();
        if (dead + 1) * 2 > layout.nodes.len() {
            return None;
        }
        layout
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Active)
            .find(|n| {
                state(n.id)
                    .failing_since
                    .is_some_and(|t| now.duration_since(t) >= self.dead_after)
            })
            .map(|n| LayoutChange::Dead { id: n.id })
            .filter(|c| layout.change(c).is_ok())
    }
}

/// How often the leader probes, given the timeout: five probes per timeout, 1–10 s apart.
pub fn probe_interval(dead_after: Duration) -> Duration {
    (dead_after / 5).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Runs the failure detector for as long as the process lives: while this node leads the
/// catalog group, probes every node of the current layout and proposes what
/// [`Liveness::decide`] concludes.
pub async fn watch(shard: Arc<Shard>, node: CatalogNode, dead_after: Duration) {
    let every = probe_interval(dead_after);
    let client = crate::raft::network::node_client(Some(every.min(Duration::from_secs(3))));
    let mut live = Liveness::new(dead_after);
    loop {
        tokio::time::sleep(every).await;
        if node.status().state != "leader" {
            live.reset();
            continue;
        }
        let Some(layout) = shard.layout(None).await else {
            continue;
        };
        let probes = layout
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Draining)
            .map(|n| {
                let (id, client) = (n.id, client.clone());
                let url = format!("http://{}/healthz", n.address);
                let me = id == shard.id;
                async move {
                    let ok = me
                        || matches!(client.get(&url).send().await,
                                    Ok(r) if r.status().is_success());
                    (id, ok)
                }
            });
        let now = Instant::now();
        for (id, ok) in futures_util::future::join_all(probes).await {
            live.observe(id, ok, now);
        }
        let Some(change) = live.decide(&layout, Instant::now()) else {
            continue;
        };
        let cmd = Command::ChangeLayout {
            expect: Some(layout.version),
            change: change.clone(),
        };
        match node.write(SYSTEM_CALLER, cmd).await {
            Ok(_) => {
                tracing::warn!(
                    ?change,
                    from = layout.version,
                    "failure detector changed the layout"
                );
                live.reset();
            }
            Err(e) => {
                tracing::warn!(?change, error = %e, "failure detector: layout change refused")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirage_cluster_config::LayoutNode;
    use std::collections::BTreeSet;

    fn layout(states: &[NodeState]) -> Layout {
        Layout {
            v: 1,
            version: 7,
            replication: 2,
            write_quorum: 1,
            partitions: 64,
            nodes: states
                .iter()
                .enumerate()
                .map(|(i, s)| LayoutNode {
                    id: i as u64 + 1,
                    address: format!("127.0.0.1:{}", 7301 + i),
                    zone: "z".into(),
                    capacity_gb: 100,
                    state: *s,
                })
                .collect(),
            retired: BTreeSet::new(),
        }
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn a_node_is_dead_only_after_failing_every_probe_for_the_timeout() {
        use NodeState::Active;
        let l = layout(&[Active, Active, Active]);
        let mut live = Liveness::new(T);
        let t0 = Instant::now();
        live.observe(3, false, t0);
        assert_eq!(live.decide(&l, t0 + T / 2), None);
        // One answer in between starts the count again.
        live.observe(3, true, t0 + T / 2);
        live.observe(3, false, t0 + T * 3 / 4);
        assert_eq!(live.decide(&l, t0 + T), None);
        assert_eq!(
            live.decide(&l, t0 + T * 7 / 4),
            Some(LayoutChange::Dead { id: 3 })
        );
        // Never heard of is not dead.
        assert_eq!(Liveness::new(T).decide(&l, t0 + T * 9), None);
    }

    #[test]
    fn a_dead_node_comes_back_after_two_answers() {
        use NodeState::{Active, Dead};
        let l = layout(&[Active, Active, Dead]);
        let mut live = Liveness::new(T);
        let t0 = Instant::now();
        live.observe(3, true, t0);
        assert_eq!(live.decide(&l, t0), None);
        live.observe(3, true, t0 + Duration::from_secs(1));
        assert_eq!(live.decide(&l, t0), Some(LayoutChange::Alive { id: 3 }));
    }

    #[test]
    fn at_most_half_the_nodes_are_declared_dead() {
        use NodeState::{Active, Dead};
        let t0 = Instant::now();
        let mut live = Liveness::new(T);
        for id in 1..=4 {
            live.observe(id, false, t0);
        }
        let later = t0 + T * 2;
        let l = layout(&[Active, Active, Dead, Active]);
        assert_eq!(live.decide(&l, later), Some(LayoutChange::Dead { id: 1 }));
        let l = layout(&[Dead, Active, Dead, Active]);
        assert_eq!(live.decide(&l, later), None);
        // Nor below the write quorum: 2 nodes, W = 2.
        let mut l = layout(&[Active, Active]);
        l.write_quorum = 2;
        assert_eq!(live.decide(&l, later), None);
    }
}
