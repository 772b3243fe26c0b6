//! `mirage admin`: cluster administration over the node API (admin users).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use mirage_cluster_config::{Layout, LayoutChange, Topology};
use mirage_node::catalog::{Command, Query, QueryAnswer};
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
    }
}

fn layout(remote: &Remote, version: Option<u64>) -> Result<Option<Layout>> {
    match remote.query(&Query::Layout { version })? {
        QueryAnswer::Layout(l) => Ok(l),
        other => bail!("unexpected answer to a layout query: {other:?}"),
    }
}

/// `mirage admin cluster status`.
fn status(remote: &Remote, json: bool) -> Result<()> {
    let Some(now) = layout(remote, None)? else {
        bail!("the cluster has no layout yet (mirage admin cluster init TOPOLOGY)");
    };
    let placement = now.placement();
    let mut partitions: BTreeMap<u64, u32> = BTreeMap::new();
    for p in 0..now.partitions {
        for id in placement.partition(p) {
            *partitions.entry(*id).or_default() += 1;
        }
    }
    let moved = match now.version.checked_sub(1).filter(|v| *v > 0) {
        Some(v) => layout(remote, Some(v))?.map(|prev| now.moved_partitions(&prev).len()),
        None => None,
    };
    if json {
        let out = serde_json::json!({"layout": now, "partitions": partitions, "moved_by_last_change": moved});
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
