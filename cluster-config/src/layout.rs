//! The data layout: which storage nodes hold partitions, in which zones, with what weight, and
//! with how many replicas. The catalog keeps every version of it (DESIGN.md §3, §4); a change
//! makes the next version, and the partitions whose owners differ between two versions are
//! what a rebalance moves. Pure decision logic: no I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::placement::Placement;
use crate::topology::{Node, Role, Topology};

/// Whether a node takes partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Holds partitions.
    Active,
    /// Keeps serving what it holds but is given no partitions: a rebalance moves them away,
    /// then it can be removed.
    Draining,
    /// Declared dead: unreachable for longer than the cluster's timeout. It is given no
    /// partitions, so the other nodes copy its partitions back to N replicas; when it answers
    /// again it is made active again (its copies are then reconciled by anti-entropy).
    Dead,
}

/// A storage node in a layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutNode {
    /// Node id (never reused: placement depends on it).
    pub id: u64,
    /// `host:port` of its API.
    pub address: String,
    /// Failure domain.
    pub zone: String,
    /// Capacity in GB: the placement weight.
    pub capacity_gb: u64,
    /// Active or draining.
    pub state: NodeState,
}

/// One version of the layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Record version (1).
    pub v: u8,
    /// Layout version: 1 for the first, one more for each change.
    pub version: u64,
    /// Replicas of each item (N).
    pub replication: usize,
    /// Replicas that must have an item durable before it counts as stored (W).
    pub write_quorum: usize,
    /// Partition count.
    pub partitions: u32,
    /// Storage nodes, by id.
    pub nodes: Vec<LayoutNode>,
    /// Ids of removed nodes (never given to another node).
    #[serde(default)]
    pub retired: BTreeSet<u64>,
}

/// A change to the layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum LayoutChange {
    /// A new storage node.
    Add {
        /// Its id.
        id: u64,
        /// Its `host:port`.
        address: String,
        /// Its zone.
        zone: String,
        /// Its capacity in GB.
        capacity_gb: u64,
    },
    /// Stop giving a node partitions (it keeps serving what it holds).
    Drain {
        /// The node.
        id: u64,
    },
    /// Take a node out of the layout.
    Remove {
        /// The node.
        id: u64,
    },
    /// Declare an active node dead (it stops taking partitions until it is alive again).
    Dead {
        /// The node.
        id: u64,
    },
    /// Make a dead node active again.
    Alive {
        /// The node.
        id: u64,
    },
}

impl LayoutChange {
    /// Whether the cluster's own failure detector may make this change (no admin needed).
    pub fn is_liveness(&self) -> bool {
        matches!(self, LayoutChange::Dead { .. } | LayoutChange::Alive { .. })
    }
}

/// Why a layout change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The change names a node the layout does not have.
    #[error("node {0} is not in the layout")]
    NoSuchNode(u64),
    /// The id is taken, now or before.
    #[error("node id {0} is in use or was used by a removed node; ids are never reused")]
    IdTaken(u64),
    /// A field of the change is not valid.
    #[error("{0}")]
    Invalid(String),
}

impl Layout {
    /// Version 1: the storage nodes of a topology, all active.
    pub fn from_topology(t: &Topology) -> Layout {
        Layout {
            v: 1,
            version: 1,
            replication: t.replication,
            write_quorum: t.write_quorum,
            partitions: t.partitions,
            nodes: t
                .nodes
                .iter()
                .filter(|n| n.roles.contains(&Role::Storage))
                .map(|n| LayoutNode {
                    id: n.id,
                    address: n.address.clone(),
                    zone: n.zone.clone(),
                    capacity_gb: n.capacity_gb,
                    state: NodeState::Active,
                })
                .collect(),
            retired: BTreeSet::new(),
        }
    }

    /// A node by id.
    pub fn node(&self, id: u64) -> Option<&LayoutNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The next version: this one with `change` made.
    pub fn change(&self, change: &LayoutChange) -> Result<Layout, LayoutError> {
        let mut next = self.clone();
        next.version += 1;
        match change {
            LayoutChange::Add {
                id,
                address,
                zone,
                capacity_gb,
            } => {
                if self.node(*id).is_some() || self.retired.contains(id) {
                    return Err(LayoutError::IdTaken(*id));
                }
                if address.is_empty() || zone.is_empty() || *capacity_gb == 0 {
                    return Err(LayoutError::Invalid(
                        "a node needs an address, a zone and a capacity above 0 GB".into(),
                    ));
                }
                next.nodes.push(LayoutNode {
                    id: *id,
                    address: address.clone(),
                    zone: zone.clone(),
                    capacity_gb: *capacity_gb,
                    state: NodeState::Active,
                });
                next.nodes.sort_by_key(|n| n.id);
            }
            LayoutChange::Drain { id } => {
                let n = next
                    .nodes
                    .iter_mut()
                    .find(|n| n.id == *id)
                    .ok_or(LayoutError::NoSuchNode(*id))?;
                n.state = NodeState::Draining;
            }
            LayoutChange::Remove { id } => {
                if self.node(*id).is_none() {
                    return Err(LayoutError::NoSuchNode(*id));
                }
                next.nodes.retain(|n| n.id != *id);
                next.retired.insert(*id);
            }
            LayoutChange::Dead { id } | LayoutChange::Alive { id } => {
                let dead = matches!(change, LayoutChange::Dead { .. });
                let (from, to) = if dead {
                    (NodeState::Active, NodeState::Dead)
                } else {
                    (NodeState::Dead, NodeState::Active)
                };
                let n = next
                    .nodes
                    .iter_mut()
                    .find(|n| n.id == *id)
                    .ok_or(LayoutError::NoSuchNode(*id))?;
                if n.state != from {
                    return Err(LayoutError::Invalid(format!(
                        "node {id} is {:?}, not {from:?}",
                        n.state
                    )));
                }
                n.state = to;
            }
        }
        next.check()?;
        Ok(next)
    }

    /// Refuses a layout no write could be stored under: 1 ≤ W ≤ N, a power-of-two partition
    /// count, and at least W active storage nodes. (A layout may arrive from a client.)
    pub fn check(&self) -> Result<(), LayoutError> {
        if self.replication == 0 || self.write_quorum == 0 || self.write_quorum > self.replication {
            return Err(LayoutError::Invalid(
                "a layout needs 1 ≤ write quorum ≤ replication".into(),
            ));
        }
        if !self.partitions.is_power_of_two() {
            return Err(LayoutError::Invalid(
                "the partition count is a power of two".into(),
            ));
        }
        let active = self.active().count();
        if active < self.write_quorum {
            return Err(LayoutError::Invalid(format!(
                "that would leave {active} active storage node(s), fewer than the write quorum \
                 ({}): no write could be stored",
                self.write_quorum
            )));
        }
        Ok(())
    }

    /// Every node of this layout, then the nodes of `previous` that are not in it (a node
    /// just removed may still hold items a rebalance has not moved yet): the nodes a reader
    /// or a repair asks.
    pub fn nodes_with<'a>(&'a self, previous: Option<&'a Layout>) -> Vec<&'a LayoutNode> {
        let mut out: Vec<&LayoutNode> = self.nodes.iter().collect();
        for n in previous.iter().flat_map(|p| &p.nodes) {
            if self.node(n.id).is_none() {
                out.push(n);
            }
        }
        out
    }

    /// The nodes that take partitions.
    pub fn active(&self) -> impl Iterator<Item = &LayoutNode> {
        self.nodes.iter().filter(|n| n.state == NodeState::Active)
    }

    /// Where every partition's replicas are in this layout (active nodes only).
    pub fn placement(&self) -> Placement {
        let nodes: Vec<Node> = self
            .active()
            .map(|n| Node {
                id: n.id,
                address: n.address.clone(),
                zone: n.zone.clone(),
                capacity_gb: n.capacity_gb,
                roles: BTreeSet::from([Role::Storage]),
            })
            .collect();
        Placement::compute(&nodes, self.partitions, self.replication)
    }

    /// The partitions whose replica set differs from `previous`'s: what a rebalance from
    /// `previous` to this layout moves.
    pub fn moved_partitions(&self, previous: &Layout) -> Vec<u32> {
        let (now, before) = (self.placement(), previous.placement());
        (0..self.partitions.min(previous.partitions))
            .filter(|&p| {
                let (a, b) = (now.partition(p), before.partition(p));
                a.len() != b.len() || a.iter().any(|x| !b.contains(x))
            })
            .collect()
    }
}
