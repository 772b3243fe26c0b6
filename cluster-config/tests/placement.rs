//! Placement: stable (golden values), balanced by capacity, minimal movement, zone spread.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use mirage_cluster_config::{partition_of, Node, Placement, Role};
use mirage_format::{Algorithm, Digest};

fn node(id: u64, zone: &str, capacity_gb: u64) -> Node {
    Node {
        id,
        address: format!("n{id}:7300"),
        zone: zone.into(),
        capacity_gb,
        roles: BTreeSet::from([Role::Storage]),
    }
}

fn counts(p: &Placement) -> BTreeMap<u64, usize> {
    let mut c = BTreeMap::new();
    for i in 0..p.partitions() {
        for n in p.partition(i) {
            *c.entry(*n).or_default() += 1;
        }
    }
    c
}

#[test]
fn golden_placements_never_change() {
    let nodes: Vec<Node> = (1..=6)
        .map(|i| node(i, ["a", "b", "c"][(i as usize - 1) / 2], 100 * (1 + i % 2)))
        .collect();
    let p = Placement::compute(&nodes, 1024, 3);
    let got: Vec<(u32, Vec<u64>)> = (0..6)
        .map(|i| {
            let d = Digest::of(Algorithm::Sha256, format!("golden-{i}").as_bytes()).unwrap();
            (partition_of(&d, 1024), p.nodes_for(&d).to_vec())
        })
        .collect();
    let want: Vec<(u32, Vec<u64>)> = GOLDEN
        .to_vec()
        .into_iter()
        .map(|(a, b)| (a, b.to_vec()))
        .collect();
    assert_eq!(got, want);
}

/// Computed once; a change here means every stored item would be looked for on other nodes.
const GOLDEN: [(u32, [u64; 3]); 6] = [
    (478, [6, 3, 1]),
    (145, [3, 6, 1]),
    (511, [1, 4, 6]),
    (205, [3, 1, 5]),
    (550, [1, 5, 3]),
    (862, [5, 2, 4]),
];

#[test]
fn balance_follows_capacity() {
    let equal: Vec<Node> = (1..=10).map(|i| node(i, "z", 100)).collect();
    let p = Placement::compute(&equal, 4096, 3);
    let c = counts(&p);
    let mean = (4096 * 3) as f64 / 10.0;
    let max = *c.values().max().unwrap() as f64;
    let min = *c.values().min().unwrap() as f64;
    eprintln!(
        "balance: 10 equal nodes, 4096 partitions x 3: max/mean {:.3}, min/mean {:.3}",
        max / mean,
        min / mean
    );
    assert!(max / mean < 1.08 && min / mean > 0.92, "{c:?}");
    // A node with twice the capacity holds about twice as much (N = 1: no cap from replicas).
    let mut mixed: Vec<Node> = (1..=9).map(|i| node(i, "z", 100)).collect();
    mixed.push(node(10, "z", 200));
    let c = counts(&Placement::compute(&mixed, 8192, 1));
    let others = c
        .iter()
        .filter(|(k, _)| **k != 10)
        .map(|(_, v)| *v as f64)
        .sum::<f64>()
        / 9.0;
    let ratio = c[&10] as f64 / others;
    eprintln!("balance: double capacity holds {ratio:.3}x the others' mean");
    assert!((1.8..2.2).contains(&ratio), "{ratio}: {c:?}");
}

#[test]
fn adding_or_removing_a_node_moves_close_to_the_minimum() {
    let nodes: Vec<Node> = (1..=10).map(|i| node(i, "z", 100)).collect();
    let before = Placement::compute(&nodes, 4096, 3);
    let mut more = nodes.clone();
    more.push(node(11, "z", 100));
    let after = Placement::compute(&more, 4096, 3);
    let moved = before.moved(&after);
    let ideal = 4096.0 * 3.0 / 11.0;
    eprintln!("movement: adding an 11th node moved {moved} replicas, ideal {ideal:.0}");
    assert!(
        (moved as f64) < ideal * 1.15,
        "{moved} moved, ideal {ideal}"
    );
    // Every move goes to the new node.
    let c = counts(&after);
    assert_eq!(c[&11], moved);
    // Removing a node moves exactly what it held.
    let fewer: Vec<Node> = nodes.iter().filter(|n| n.id != 4).cloned().collect();
    let removed = Placement::compute(&fewer, 4096, 3);
    assert_eq!(before.moved(&removed), counts(&before)[&4]);
}

#[test]
fn replicas_spread_over_zones_while_zones_remain() {
    let nodes = vec![
        node(1, "dc1", 100),
        node(2, "dc1", 100),
        node(3, "dc1", 100),
        node(4, "dc2", 100),
        node(5, "dc2", 100),
        node(6, "dc3", 50),
    ];
    let zone: BTreeMap<u64, &str> = nodes.iter().map(|n| (n.id, n.zone.as_str())).collect();
    let p = Placement::compute(&nodes, 2048, 3);
    for i in 0..2048 {
        let z: BTreeSet<&str> = p.partition(i).iter().map(|n| zone[n]).collect();
        assert_eq!(z.len(), 3, "partition {i}: {:?}", p.partition(i));
    }
    // More replicas than zones: every zone used, then the best remaining nodes.
    let p = Placement::compute(&nodes, 256, 4);
    for i in 0..256 {
        let ids = p.partition(i);
        assert_eq!(ids.len(), 4);
        assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 4);
        let z: BTreeSet<&str> = ids.iter().map(|n| zone[n]).collect();
        assert_eq!(z.len(), 3);
    }
}

#[test]
fn partitions_come_from_the_digest_prefix() {
    let d = Digest::of(Algorithm::Sha256, b"x").unwrap();
    let top = u64::from_be_bytes(d.as_bytes()[..8].try_into().unwrap());
    assert_eq!(partition_of(&d, 1024), (top >> 54) as u32);
    assert_eq!(partition_of(&d, 1), 0);
}
