//! The example topologies parse; every kind of mistake is named with its line and field.
#![allow(clippy::unwrap_used)]

use mirage_cluster_config::{Role, Topology};

/// An example file, embedded when the test is built (so the binary does not depend on where
/// the tree it was built from lies when it runs).
fn example(name: &str) -> Topology {
    let text = match name {
        "one-node" => include_str!("../examples/one-node.toml"),
        "three-nodes" => include_str!("../examples/three-nodes.toml"),
        "six-nodes-three-zones" => include_str!("../examples/six-nodes-three-zones.toml"),
        other => panic!("no example {other}"),
    };
    Topology::parse(text).unwrap()
}

#[test]
fn examples_parse() {
    let one = example("one-node");
    assert_eq!(
        (one.replication, one.write_quorum, one.nodes.len()),
        (1, 1, 1)
    );
    let three = example("three-nodes");
    assert_eq!(
        (three.replication, three.write_quorum, three.partitions),
        (2, 2, 1024)
    );
    assert_eq!(three.zones().len(), 1);
    let six = example("six-nodes-three-zones");
    assert_eq!(six.nodes.len(), 6);
    assert_eq!(
        six.zones().into_iter().collect::<Vec<_>>(),
        vec!["dc1", "dc2", "dc3"]
    );
    assert_eq!(
        six.nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Catalog))
            .count(),
        5
    );
}

const GOOD: &str = r#"[cluster]
name = "t"
replication = 2
write_quorum = 1
partitions = 64
secret_file = "/s"

[[node]]
id = 1
address = "a:1"
zone = "z1"
capacity_gb = 10
roles = ["storage", "catalog"]

[[node]]
id = 2
address = "b:1"
zone = "z2"
capacity_gb = 10
roles = ["storage"]
"#;

#[test]
fn mistakes_name_their_line_and_field() {
    assert!(Topology::parse(GOOD).is_ok());
    let cases: [(&str, &str, usize, &str, &str); 11] = [
        (
            "replication = 2",
            "replication = 3",
            3,
            "cluster.replication",
            "storage nodes",
        ),
        (
            "write_quorum = 1",
            "write_quorum = 3",
            4,
            "cluster.write_quorum",
            "between 1",
        ),
        (
            "partitions = 64",
            "partitions = 100",
            5,
            "cluster.partitions",
            "power of two",
        ),
        (
            "address = \"b:1\"",
            "address = \"a:1\"",
            17,
            "node[1].address",
            "already",
        ),
        (
            "address = \"b:1\"",
            "address = \"b\"",
            17,
            "node[1].address",
            "host:port",
        ),
        ("id = 2", "id = 1", 16, "node[1].id", "already"),
        ("id = 2", "id = 0", 16, "node[1].id", "start at 1"),
        ("zone = \"z2\"", "zone = \"\"", 18, "node[1].zone", "empty"),
        (
            "capacity_gb = 10\nroles = [\"storage\"]",
            "capacity_gb = -5\nroles = [\"storage\"]",
            19,
            "node[1].capacity_gb",
            "between",
        ),
        (
            "roles = [\"storage\"]",
            "roles = [\"storage\", \"catalog\"]",
            8,
            "node.roles",
            "odd",
        ),
        (
            "name = \"t\"",
            "name = \"t\"\ncolour = \"blue\"",
            3,
            "file",
            "unknown field",
        ),
    ];
    for (from, to, line, field, words) in cases {
        let text = GOOD.replacen(from, to, 1);
        let e = Topology::parse(&text).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (line, field), "{to}: {e}");
        assert!(e.to_string().contains(words), "{to}: {e}");
        assert!(
            e.to_string()
                .starts_with(&format!("line {line}: {field}: ")),
            "{e}"
        );
    }
    let e = Topology::parse("[cluster\nname = 1").unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (1, "file"), "{e}");
}
