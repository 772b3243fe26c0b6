//! Liveness: once the faults stop, the cluster converges within a stated time — every node
//! ready, one leader that every node knows, every node's catalog applied to the same index,
//! and a catalog write committed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::cluster::Cluster;

/// Waits until `c` has converged; answers how long it took, or what was still wrong at `bound`.
pub fn converge(c: &Cluster, bound: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < bound {
        match converged(c) {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!(
        "not converged {} s after the faults stopped: {last}",
        bound.as_secs()
    ))
}

fn converged(c: &Cluster) -> Result<(), String> {
    // A write first: it moves the log on, so "applied" below means caught up with it.
    match c.admin(
        1 + c.spec.nodes / 2,
        "/v1/catalog/command",
        json!({"op": "release_lease", "id": "chaos-liveness-probe"}),
    ) {
        Ok(_) => {}
        // A refusal is an answer: the command was committed and applied.
        Err(e) if e.to_string().contains(": 4") => {}
        Err(e) => return Err(format!("probe write: {e}")),
    }
    let mut leaders = Vec::new();
    let mut applied = Vec::new();
    for id in 1..=c.spec.nodes {
        let v = c
            .get(id, "/v1/admin/raft")
            .map_err(|e| format!("node {id}: {e}"))?;
        leaders.push(v["leader"].as_u64());
        applied.push(v["applied"].as_u64());
    }
    if leaders.iter().any(Option::is_none) || leaders.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!("leaders as the nodes see them: {leaders:?}"));
    }
    if applied.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!("applied indexes: {applied:?}"));
    }
    Ok(())
}
