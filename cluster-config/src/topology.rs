//! The topology file.
//!
//! ```toml
//! [cluster]
//! name = "dc1"
//! replication = 3          # N: copies of every item
//! write_quorum = 2         # W: copies durable before a write is acknowledged
//! partitions = 1024        # a power of two; placement is per partition
//! secret_file = "/etc/mirage/cluster.secret"
//!
//! [[node]]
//! id = 1
//! address = "10.0.1.1:7300"
//! zone = "a"
//! capacity_gb = 4000
//! roles = ["storage", "catalog"]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// What a node does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds items (a placement target).
    Storage,
    /// Votes in the catalog's Raft group.
    Catalog,
}

/// A validated node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Unique id (never reused: placement depends on it).
    pub id: u64,
    /// `host:port` of its API.
    pub address: String,
    /// Failure domain.
    pub zone: String,
    /// Capacity in GB: the placement weight.
    pub capacity_gb: u64,
    /// Roles.
    pub roles: BTreeSet<Role>,
}

/// A validated topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Cluster name.
    pub name: String,
    /// N.
    pub replication: usize,
    /// W.
    pub write_quorum: usize,
    /// Partition count (a power of two).
    pub partitions: u32,
    /// Where the cluster secret is.
    pub secret_file: String,
    /// Nodes by id.
    pub nodes: Vec<Node>,
}

/// A configuration problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {message}")]
pub struct ConfigError {
    /// 1-based line of the offending value (0: the file as a whole).
    pub line: usize,
    /// Field path, e.g. `node[2].zone`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: Spanned<RawCluster>,
    #[serde(default)]
    node: Vec<Spanned<RawNode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    replication: Spanned<i64>,
    write_quorum: Spanned<i64>,
    partitions: Spanned<i64>,
    secret_file: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Spanned<i64>,
    address: Spanned<String>,
    zone: Spanned<String>,
    capacity_gb: Spanned<i64>,
    roles: Spanned<Vec<Role>>,
}

fn line_of(text: &str, span: Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

impl Topology {
    /// Parses and validates a topology file.
    pub fn parse(text: &str) -> Result<Topology, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError {
            line: e.span().map_or(0, |s| line_of(text, s)),
            field: "file".into(),
            message: e.message().to_string(),
        })?;
        let err = |span: Range<usize>, field: &str, message: String| ConfigError {
            line: line_of(text, span),
            field: field.to_string(),
            message,
        };
        let c = raw.cluster.get_ref();
        let name = c.name.get_ref().trim().to_string();
        if name.is_empty() {
            return Err(err(
                c.name.span(),
                "cluster.name",
                "must not be empty".into(),
            ));
        }
        let mut nodes: Vec<Node> = Vec::new();
        let mut ids = BTreeMap::new();
        let mut addresses = BTreeMap::new();
        for (i, n) in raw.node.iter().enumerate() {
            let n = n.get_ref();
            let f = |what: &str| format!("node[{i}].{what}");
            let id = *n.id.get_ref();
            if id < 1 {
                return Err(err(n.id.span(), &f("id"), format!("{id}: ids start at 1")));
            }
            if let Some(prev) = ids.insert(id, i) {
                return Err(err(
                    n.id.span(),
                    &f("id"),
                    format!("{id} is already the id of node[{prev}]"),
                ));
            }
            let address = n.address.get_ref().trim().to_string();
            let port_ok = address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(err(
                    n.address.span(),
                    &f("address"),
                    format!("{address:?} is not host:port"),
                ));
            }
            if let Some(prev) = addresses.insert(address.clone(), i) {
                return Err(err(
                    n.address.span(),
                    &f("address"),
                    format!("{address} is already the address of node[{prev}]"),
                ));
            }
            let zone = n.zone.get_ref().trim().to_string();
            if zone.is_empty() {
                return Err(err(n.zone.span(), &f("zone"), "must not be empty".into()));
            }
            let capacity = *n.capacity_gb.get_ref();
            if !(1..=1 << 40).contains(&capacity) {
                return Err(err(
                    n.capacity_gb.span(),
                    &f("capacity_gb"),
                    format!("{capacity}: must be between 1 and 2^40"),
                ));
            }
            let roles: BTreeSet<Role> = n.roles.get_ref().iter().copied().collect();
            if roles.is_empty() {
                return Err(err(
                    n.roles.span(),
                    &f("roles"),
                    "give at least one role".into(),
                ));
            }
            nodes.push(Node {
                id: id as u64,
                address,
                zone,
                capacity_gb: capacity as u64,
                roles,
            });
        }
        if nodes.is_empty() {
            return Err(err(
                raw.cluster.span(),
                "node",
                "the cluster has no [[node]]".into(),
            ));
        }
        let storage = nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Storage))
            .count();
        let voters = nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Catalog))
            .count();
        let n_rep = *c.replication.get_ref();
        if n_rep < 1 || n_rep as usize > storage {
            return Err(err(
                c.replication.span(),
                "cluster.replication",
                format!("{n_rep}: must be between 1 and the {storage} storage nodes"),
            ));
        }
        let w = *c.write_quorum.get_ref();
        if w < 1 || w > n_rep {
            return Err(err(
                c.write_quorum.span(),
                "cluster.write_quorum",
                format!("{w}: must be between 1 and replication ({n_rep})"),
            ));
        }
        let p = *c.partitions.get_ref();
        if !(1..=1 << 20).contains(&p) || (p as u64).count_ones() != 1 {
            return Err(err(
                c.partitions.span(),
                "cluster.partitions",
                format!("{p}: must be a power of two from 1 to 2^20"),
            ));
        }
        if voters == 0 || voters % 2 == 0 {
            let line = raw.node.first().map_or(0, |n| line_of(text, n.span()));
            return Err(ConfigError {
                line,
                field: "node.roles".into(),
                message: format!(
                    "{voters} nodes have the catalog role: Raft needs an odd number, at least 1"
                ),
            });
        }
        let secret = c.secret_file.get_ref().trim().to_string();
        if secret.is_empty() {
            return Err(err(
                c.secret_file.span(),
                "cluster.secret_file",
                "must not be empty".into(),
            ));
        }
        nodes.sort_by_key(|n| n.id);
        Ok(Topology {
            name,
            replication: n_rep as usize,
            write_quorum: w as usize,
            partitions: p as u32,
            secret_file: secret,
            nodes,
        })
    }

    /// Zones of the storage nodes.
    pub fn zones(&self) -> BTreeSet<&str> {
        self.nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Storage))
            .map(|n| n.zone.as_str())
            .collect()
    }
}
