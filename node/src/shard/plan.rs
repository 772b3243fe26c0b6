//! What one anti-entropy round does, decided from the layout and the partition summaries
//! alone (no I/O, unit-tested): which partitions this node pulls from which peers, and which
//! partitions it holds without owning them (a rebalance moved them, or the node drains) and
//! may hand off once every owner holds its items.

use std::collections::BTreeMap;

use mirage_cluster_config::Layout;

use super::peer::WireSummary;

/// The work of one round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `(partition, peer)`: the peer holds items of a partition this node owns, and its
    /// summary differs from this node's (it may hold items this node lacks).
    pub pulls: Vec<(u32, u64)>,
    /// `(partition, owners)`: this node holds items of a partition it does not own, and every
    /// owner answered; the items every owner holds may be dropped here.
    pub handoffs: Vec<(u32, Vec<u64>)>,
    /// Partitions this node owns.
    pub owned: Vec<u32>,
}

/// Plans a round for node `me` under `layout`, given its own summaries and those of the
/// peers that answered (`theirs`; a peer that did not answer is absent).
pub fn plan(
    me: u64,
    layout: &Layout,
    ours: &[WireSummary],
    theirs: &BTreeMap<u64, Vec<WireSummary>>,
) -> Plan {
    let placement = layout.placement();
    let mut out = Plan::default();
    let empty = WireSummary::default();
    for p in 0..layout.partitions {
        let owners = placement.partition(p);
        let mine = ours.get(p as usize).unwrap_or(&empty);
        if owners.contains(&me) {
            out.owned.push(p);
            for (peer, s) in theirs {
                let Some(s) = s.get(p as usize) else { continue };
                if *peer != me && s.items > 0 && s != mine {
                    out.pulls.push((p, *peer));
                }
            }
        } else if mine.items > 0 && owners.iter().all(|o| theirs.contains_key(o)) {
            out.handoffs.push((p, owners.to_vec()));
        }
    }
    out
}

/// The digests of `theirs` not in `ours` (both sorted, as partition lists are).
pub fn missing<T: Ord + Copy>(ours: &[T], theirs: &[T]) -> Vec<T> {
    let mut out = Vec::new();
    let mut i = 0;
    for t in theirs {
        while i < ours.len() && ours[i] < *t {
            i += 1;
        }
        if i >= ours.len() || ours[i] != *t {
            out.push(*t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirage_cluster_config::{LayoutNode, NodeState};

    fn layout(nodes: &[(u64, &str, NodeState)], replication: usize) -> Layout {
        Layout {
            v: 1,
            version: 1,
            replication,
            write_quorum: 1,
            partitions: 16,
            nodes: nodes
                .iter()
                .map(|(id, zone, state)| LayoutNode {
                    id: *id,
                    address: format!("127.0.0.1:{}", 7000 + id),
                    zone: (*zone).into(),
                    capacity_gb: 1,
                    state: *state,
                })
                .collect(),
            retired: Default::default(),
        }
    }

    fn summaries(items: &[u64]) -> Vec<WireSummary> {
        items
            .iter()
            .map(|&n| WireSummary {
                items: n,
                bytes: n * 10,
                xor: format!("{n:x}"),
            })
            .collect()
    }

    #[test]
    fn an_owner_pulls_only_where_a_peer_holds_something_different() {
        let l = layout(
            &[
                (1, "a", NodeState::Active),
                (2, "a", NodeState::Active),
                (3, "a", NodeState::Active),
            ],
            2,
        );
        let placement = l.placement();
        let ours = summaries(&[5; 16]);
        let mut peer = summaries(&[5; 16]);
        peer[3] = WireSummary {
            items: 6,
            bytes: 60,
            xor: "ff".into(),
        };
        peer[4] = WireSummary::default();
        let theirs = BTreeMap::from([(2, peer)]);
        let p = plan(1, &l, &ours, &theirs);
        let owned: Vec<u32> = (0..16)
            .filter(|&q| placement.partition(q).contains(&1))
            .collect();
        assert_eq!(p.owned, owned);
        let want: Vec<(u32, u64)> = if owned.contains(&3) {
            vec![(3, 2)]
        } else {
            vec![]
        };
        assert_eq!(p.pulls, want, "pull only partition 3, and only if owned");
    }

    #[test]
    fn a_node_hands_off_what_it_no_longer_owns_once_every_owner_answered() {
        // Node 3 drains: it owns nothing and holds items of every partition.
        let l = layout(
            &[
                (1, "a", NodeState::Active),
                (2, "b", NodeState::Active),
                (3, "c", NodeState::Draining),
            ],
            2,
        );
        let ours = summaries(&[1; 16]);
        let theirs = BTreeMap::from([(1, summaries(&[1; 16])), (2, summaries(&[1; 16]))]);
        let p = plan(3, &l, &ours, &theirs);
        assert!(p.owned.is_empty() && p.pulls.is_empty());
        assert_eq!(p.handoffs.len(), 16);
        assert!(p.handoffs.iter().all(|(_, o)| {
            let mut o = o.clone();
            o.sort_unstable();
            o == vec![1, 2]
        }));
        // An owner that did not answer: nothing is handed off.
        let theirs = BTreeMap::from([(1, summaries(&[1; 16]))]);
        assert!(plan(3, &l, &ours, &theirs).handoffs.is_empty());
    }

    #[test]
    fn missing_is_the_sorted_difference() {
        assert_eq!(missing(&[1, 3, 5], &[1, 2, 3, 4, 5, 6]), vec![2, 4, 6]);
        assert_eq!(missing::<u8>(&[], &[1, 2]), vec![1, 2]);
        assert_eq!(missing(&[1, 2], &[]), Vec::<i32>::new());
    }
}
