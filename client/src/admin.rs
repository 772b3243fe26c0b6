//! `mirage admin`: cluster administration over the node API (admin users).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use mirage_cluster_config::{Layout, LayoutChange, Topology};
use mirage_node::catalog::Command;
use mirage_node::raft::node::GroupStatus;

use crate::remote::Remote;

/// Administration commands.
#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// The catalog's Raft group.
    Raft {
        #[command(subcommand)]
        cmd: RaftCmd,
    },
    /// Storage nodes of the data layout (each change makes a new layout version).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// The cluster's data layout.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Run an anti-entropy round now on every storage node (or one): each compares partition
    /// summaries with the others, pulls what it lacks, hands off what it no longer owns.
    Repair {
        /// Only this node.
        #[arg(long)]
        node: Option<u64>,
    },
    /// Run a scrub pass now on every storage node (or one): re-hash every stored item and
    /// replace damaged copies from other replicas.
    Scrub {
        /// Only this node.
        #[arg(long)]
        node: Option<u64>,
    },
}

/// Changes to the storage nodes of the layout.
#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Add storage node ID (an id never used before).
    Add {
        /// Node id.
        id: u64,
        /// Its host:port.
        #[arg(long)]
        address: String,
        /// Its zone (failure domain).
        #[arg(long)]
        zone: String,
        /// Its capacity in GB (the placement weight).
        #[arg(long)]
        capacity_gb: u64,
        /// Only if the layout is at this version.
        #[arg(long)]
        expect: Option<u64>,
    },
    /// Give node ID no more partitions (it keeps serving what it holds).
    Drain {
        /// Node id.
        id: u64,
        /// Only if the layout is at this version.
        #[arg(long)]
        expect: Option<u64>,
    },
    /// Take node ID out of the layout (its id is never used again).
    Remove {
        /// Node id.
        id: u64,
        /// Only if the layout is at this version.
        #[arg(long)]
        expect: Option<u64>,
    },
}

/// The layout as a whole.
#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Layout version, nodes, partitions per node and what the last change moved.
    Status,
    /// Record the first layout from a topology file (a cluster started with `--init` has one).
    Init {
        /// The topology file (TOML).
        topology: PathBuf,
    },
}

/// Membership of the catalog group.
#[derive(Subcommand, Debug)]
pub enum RaftCmd {
    /// Leader, term, voters, learners, log and applied indexes, as the node sees them.
    Status,
    /// Add node ID (reachable at ADDR, host:port) as a learner: it receives the log (or a
    /// snapshot) without voting; returns once it has caught up.
    AddLearner {
        /// Node id (as in the topology).
        id: u64,
        /// Its host:port.
        addr: String,
    },
    /// Make learner ID a voter.
    Promote {
        /// Node id.
        id: u64,
    },
    /// Remove node ID from the group (voter or learner).
    Remove {
        /// Node id.
        id: u64,
    },
}

fn print(s: &GroupStatus, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!("node      {} ({})", s.id, s.state);
    println!("term      {}", s.term);
    println!(
        "leader    {}",
        s.leader.map_or_else(|| "none".into(), |l| l.to_string())
    );
    for (id, addr) in &s.nodes {
        let role = if s.voters.contains(id) {
            "voter"
        } else {
            "learner"
        };
        println!("  {id:>4}  {addr:<22} {role}");
    }
    let idx = |o: Option<u64>| o.map_or_else(|| "-".into(), |i| i.to_string());
    println!(
        "log {}  applied {}  snapshot {}",
        idx(s.last_log_index),
        idx(s.applied),
        idx(s.snapshot)
    );
    Ok(())
}

/// Runs an admin command against `remote`.
pub fn run(remote: &Remote, cmd: &AdminCmd, json: bool) -> Result<()> {
    match cmd {
        AdminCmd::Raft { cmd } => raft(remote, cmd, json),
        AdminCmd::Node { cmd } => {
            let (expect, change) = match cmd {
                NodeCmd::Add {
                    id,
                    address,
                    zone,
                    capacity_gb,
                    expect,
                } => (
                    *expect,
                    LayoutChange::Add {
                        id: *id,
                        address: address.clone(),
                        zone: zone.clone(),
                        capacity_gb: *capacity_gb,
                    },
                ),
                NodeCmd::Drain { id, expect } => (*expect, LayoutChange::Drain { id: *id }),
                NodeCmd::Remove { id, expect } => (*expect, LayoutChange::Remove { id: *id }),
            };
            let a = remote.command(&Command::ChangeLayout { expect, change })?;
            let v = a
                .response
                .layout
                .ok_or_else(|| anyhow!("no layout version in the answer"))?;
            println!("layout version {v}");
            Ok(())
        }
        AdminCmd::Cluster {
            cmd: ClusterCmd::Init { topology },
        } => {
            let text = std::fs::read_to_string(topology)
                .with_context(|| format!("reading {}", topology.display()))?;
            let t = Topology::parse(&text).map_err(|e| anyhow!("{}: {e}", topology.display()))?;
            let layout = Layout::from_topology(&t);
            remote.command(&Command::InitLayout { layout })?;
            println!("layout version 1");
            Ok(())
        }
        AdminCmd::Cluster {
            cmd: ClusterCmd::Status,
        } => status(remote, json),
        AdminCmd::Repair { node } => each_node(remote, *node, "/v1/admin/repair", round_line, json),
        AdminCmd::Scrub { node } => each_node(remote, *node, "/v1/admin/scrub", scrub_line, json),
    }
}

/// The current layout and the one before it; an error if the cluster has none.
fn layouts(remote: &Remote) -> Result<(Layout, Option<Layout>)> {
    remote.layouts()?.ok_or_else(|| {
        anyhow!("the cluster has no layout yet (mirage admin cluster init TOPOLOGY)")
    })
}

/// POSTs `path` to every storage node (or `only`) in turn — the nodes of the current layout,
/// then those of the previous one it lacks (a removed node may still hold items) — and prints
/// each answer with `line`.
fn each_node(
    remote: &Remote,
    only: Option<u64>,
    path: &str,
    line: fn(&serde_json::Value) -> String,
    json: bool,
) -> Result<()> {
    let (now, before) = layouts(remote)?;
    let mut answers = BTreeMap::new();
    let mut failed = 0;
    for n in now.nodes_with(before.as_ref()) {
        if only.is_some_and(|o| o != n.id) {
            continue;
        }
        let r = remote
            .at(&format!("http://{}", n.address))
            .and_then(|r| r.post_json::<_, serde_json::Value>(path, &serde_json::json!({})));
        match r {
            Ok(v) => {
                if !json {
                    println!("node {}: {}", n.id, line(&v));
                }
                answers.insert(n.id, v);
            }
            Err(e) => {
                failed += 1;
                eprintln!("node {} ({}): {e:#}", n.id, n.address);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&answers)?);
    }
    if failed > 0 {
        bail!("{failed} node(s) did not answer");
    }
    Ok(())
}

/// One line for an anti-entropy round's report.
fn round_line(v: &serde_json::Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let len = |k: &str| v[k].as_array().map_or(0, Vec::len);
    format!(
        "layout {}, {} partitions owned, {} pulled ({} bytes), {} handed off, {} behind, \
         {} handing off, {} unreachable, {} ms",
        n("layout_version"),
        n("partitions_owned"),
        n("items_pulled"),
        n("bytes_pulled"),
        n("items_handed_off"),
        len("partitions_behind"),
        len("partitions_handing_off"),
        len("unreachable"),
        n("millis")
    )
}

/// One line for a scrub pass's report.
fn scrub_line(v: &serde_json::Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let len = |k: &str| v[k].as_array().map_or(0, Vec::len);
    format!(
        "{} items ({} bytes) re-hashed, {} damaged, {} replaced, {} ms",
        n("items"),
        n("bytes"),
        len("damaged"),
        len("repaired"),
        n("millis")
    )
}

/// `mirage admin cluster status`.
fn status(remote: &Remote, json: bool) -> Result<()> {
    let (now, before) = layouts(remote)?;
    let placement = now.placement();
    let mut partitions: BTreeMap<u64, u32> = BTreeMap::new();
    for p in 0..now.partitions {
        for id in placement.partition(p) {
            *partitions.entry(*id).or_default() += 1;
        }
    }
    let moved = before.as_ref().map(|prev| now.moved_partitions(prev).len());
    // What each node says: items, bytes, and its last anti-entropy round.
    let mut nodes: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    let mut unsettled: std::collections::BTreeSet<u64> = Default::default();
    let mut settled = true;
    for n in now.nodes_with(before.as_ref()) {
        let (id, address) = (n.id, &n.address);
        let v = remote
            .at(&format!("http://{address}"))
            .and_then(|n| n.get_json::<serde_json::Value>("/v1/admin/node"))
            .unwrap_or_else(|e| serde_json::json!({"error": format!("{e:#}")}));
        let last = &v["repair"]["last"];
        if v.get("error").is_some() || last["layout_version"].as_u64() != Some(now.version) {
            settled = false;
        }
        for k in ["partitions_behind", "partitions_handing_off"] {
            for p in last[k].as_array().into_iter().flatten() {
                if let Some(p) = p.as_u64() {
                    unsettled.insert(p);
                }
            }
        }
        nodes.insert(id, v);
    }
    let rebalance = if settled && unsettled.is_empty() {
        "complete".to_string()
    } else if settled {
        format!("in progress: {} partitions out of step", unsettled.len())
    } else {
        "in progress: not every node has run a round under this layout yet".to_string()
    };
    if json {
        let out = serde_json::json!({
            "layout": now,
            "partitions": partitions,
            "moved_by_last_change": moved,
            "nodes": nodes,
            "partitions_out_of_step": unsettled,
            "rebalance": rebalance,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "layout version {}: {} partitions, {} replicas, write quorum {}",
        now.version, now.partitions, now.replication, now.write_quorum
    );
    for n in &now.nodes {
        println!(
            "  {:>4}  {:<22} zone {:<10} {:>8} GB  {:<8} {:>6} partitions",
            n.id,
            n.address,
            n.zone,
            n.capacity_gb,
            format!("{:?}", n.state).to_lowercase(),
            partitions.get(&n.id).copied().unwrap_or(0)
        );
    }
    if let Some(m) = moved {
        println!("the last change moved {m} of {} partitions", now.partitions);
    }
    println!("storage:");
    for (id, v) in &nodes {
        if let Some(e) = v["error"].as_str() {
            println!("  {id:>4}  unreachable: {e}");
            continue;
        }
        let last = &v["repair"]["last"];
        println!(
            "  {id:>4}  {:>9} items {:>14} bytes  last round: {}",
            v["items"].as_u64().unwrap_or(0),
            v["bytes"].as_u64().unwrap_or(0),
            if last.is_null() {
                "none yet".to_string()
            } else {
                round_line(last)
            }
        );
    }
    println!("rebalance and repair: {rebalance}");
    Ok(())
}

fn raft(remote: &Remote, cmd: &RaftCmd, json: bool) -> Result<()> {
    let s: GroupStatus = match cmd {
        RaftCmd::Status => remote.get_json("/v1/admin/raft")?,
        RaftCmd::AddLearner { id, addr } => remote.post_json(
            "/v1/admin/raft/add-learner",
            &serde_json::json!({"id": id, "addr": addr}),
        )?,
        RaftCmd::Promote { id } => {
            remote.post_json("/v1/admin/raft/promote", &serde_json::json!({"id": id}))?
        }
        RaftCmd::Remove { id } => {
            remote.post_json("/v1/admin/raft/remove", &serde_json::json!({"id": id}))?
        }
    };
    print(&s, json)
}
