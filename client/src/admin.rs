//! `mirage admin`: cluster administration over the node API (admin users).

use anyhow::Result;
use clap::Subcommand;
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
    let AdminCmd::Raft { cmd } = cmd;
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
