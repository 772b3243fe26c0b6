//! Layout versions: changes make the next version, refusals leave nothing half-done, and a
//! change moves only the partitions whose owners change (close to the 1/n minimum).
#![allow(clippy::unwrap_used)]

use mirage_cluster_config::{Layout, LayoutChange, LayoutError, NodeState, Topology};

fn three_nodes() -> Layout {
    let t = Topology::parse(include_str!("../examples/three-nodes.toml")).unwrap();
    Layout::from_topology(&t)
}

fn add(id: u64, zone: &str) -> LayoutChange {
    LayoutChange::Add {
        id,
        address: format!("127.0.0.1:{}", 7300 + id),
        zone: zone.into(),
        capacity_gb: 4000,
    }
}

#[test]
fn a_topology_is_version_1_with_its_storage_nodes_active() {
    let l = three_nodes();
    assert_eq!((l.version, l.replication, l.write_quorum), (1, 2, 2));
    assert_eq!(l.nodes.len(), 3);
    assert!(l.nodes.iter().all(|n| n.state == NodeState::Active));
    // Every partition has N replicas on distinct nodes.
    let p = l.placement();
    for i in 0..l.partitions {
        let r = p.partition(i);
        assert_eq!(r.len(), 2);
        assert_ne!(r[0], r[1]);
    }
}

#[test]
fn adding_a_node_moves_only_the_partitions_it_joins() {
    let before = three_nodes();
    let after = before.change(&add(4, "rack1")).unwrap();
    assert_eq!(after.version, 2);
    let moved = after.moved_partitions(&before);
    // Capacities 4000, 4000, 8000 and now 4000: node 4 has a fifth of the weight, so about a
    // fifth of the replica slots, i.e. two fifths of the partitions (N = 2) gain it as one
    // replica. Only those partitions move.
    let (np, p) = (after.partitions as f64, after.placement());
    let with_new = (0..after.partitions)
        .filter(|&i| p.partition(i).contains(&4))
        .count();
    assert_eq!(
        moved.len(),
        with_new,
        "only partitions that gained node 4 move"
    );
    let share = with_new as f64 / np;
    assert!(
        (0.30..=0.50).contains(&share),
        "node 4 is in {share:.2} of the partitions"
    );
    // Those that did not gain node 4 keep exactly their replicas.
    let old = before.placement();
    for i in 0..after.partitions {
        if !moved.contains(&i) {
            assert_eq!(old.partition(i), p.partition(i));
        }
    }
}

#[test]
fn a_drained_node_gets_no_partitions_and_a_removed_id_is_never_reused() {
    let l = three_nodes().change(&add(4, "rack1")).unwrap();
    let drained = l.change(&LayoutChange::Drain { id: 2 }).unwrap();
    let p = drained.placement();
    assert!((0..drained.partitions).all(|i| !p.partition(i).contains(&2)));
    assert_eq!(drained.node(2).unwrap().state, NodeState::Draining);
    let removed = drained.change(&LayoutChange::Remove { id: 2 }).unwrap();
    assert_eq!(removed.version, 4);
    assert!(removed.node(2).is_none());
    // Removing a drained node moves nothing more.
    assert!(removed.moved_partitions(&drained).is_empty());
    assert_eq!(
        removed.change(&add(2, "rack1")),
        Err(LayoutError::IdTaken(2))
    );
    assert_eq!(
        removed.change(&LayoutChange::Drain { id: 9 }),
        Err(LayoutError::NoSuchNode(9))
    );
}

#[test]
fn a_change_that_leaves_fewer_active_nodes_than_the_write_quorum_is_refused() {
    let l = three_nodes();
    let one_left = l.change(&LayoutChange::Remove { id: 1 }).unwrap();
    let e = one_left.change(&LayoutChange::Drain { id: 2 }).unwrap_err();
    assert!(
        matches!(e, LayoutError::Invalid(ref m) if m.contains("write quorum")),
        "{e}"
    );
    let bad = l.change(&LayoutChange::Add {
        id: 7,
        address: String::new(),
        zone: "z1".into(),
        capacity_gb: 1,
    });
    assert!(matches!(bad, Err(LayoutError::Invalid(_))));
}

#[test]
fn layouts_round_trip_as_json() {
    let l = three_nodes().change(&add(4, "rack2")).unwrap();
    let back: Layout = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
    assert_eq!(back, l);
}

#[test]
fn readers_ask_the_current_nodes_then_the_removed_ones_of_the_previous_version() {
    let v1 = three_nodes();
    let v2 = v1.change(&add(4, "rack1")).unwrap();
    let v3 = v2.change(&LayoutChange::Remove { id: 2 }).unwrap();
    let ids =
        |ns: Vec<&mirage_cluster_config::LayoutNode>| ns.iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(ids(v3.nodes_with(Some(&v2))), vec![1, 3, 4, 2]);
    assert_eq!(ids(v3.nodes_with(None)), vec![1, 3, 4]);
    assert_eq!(ids(v2.nodes_with(Some(&v1))), vec![1, 2, 3, 4]);
}

#[test]
fn a_dead_node_loses_its_partitions_and_gets_them_back_when_alive() {
    let l = three_nodes().change(&add(4, "rack1")).unwrap();
    let dead = l.change(&LayoutChange::Dead { id: 4 }).unwrap();
    assert_eq!(dead.node(4).unwrap().state, NodeState::Dead);
    let p = dead.placement();
    assert!((0..dead.partitions).all(|i| !p.partition(i).contains(&4)));
    assert!(!dead.moved_partitions(&l).is_empty());
    // Only an active node can die, only a dead one come back.
    assert!(matches!(
        dead.change(&LayoutChange::Dead { id: 4 }),
        Err(LayoutError::Invalid(_))
    ));
    assert!(matches!(
        l.change(&LayoutChange::Alive { id: 4 }),
        Err(LayoutError::Invalid(_))
    ));
    let alive = dead.change(&LayoutChange::Alive { id: 4 }).unwrap();
    assert_eq!(alive.placement(), l.placement());
    assert_eq!(alive.version, l.version + 2);
    assert!(LayoutChange::Dead { id: 4 }.is_liveness());
    assert!(!LayoutChange::Drain { id: 4 }.is_liveness());
}
