//! The checks run once the cluster has converged: every node holds the same catalog, every
//! acknowledged write is in it, the layout's versions are gap-free and each one's placement
//! keeps replicas on distinct nodes in distinct zones. (Linearizability is
//! [`crate::check::linear`]; convergence is [`converged`].)

use std::collections::{BTreeMap, BTreeSet};

use mirage_cluster_config::Layout;
use mirage_node::catalog::apply::decode;
use mirage_node::catalog::{Command, LogEntry};
use mirage_node::keys::catalog as keys;

use super::ctx::NodeStatus;
use super::node::{layout_version, name_view};
use super::storage::{MemView, SmState};
use crate::check::linear::{CatOp, CatRet, Event, NameView};

/// Whether the group has converged, as of this instant: every node runs and follows the same
/// leader in the same term (as they last published it), and every node's disk holds the same
/// last log index and has applied exactly it. Returns that index. (`disks`: each node's last
/// log index and applied index, read now.)
pub fn converged(
    st: &BTreeMap<u64, NodeStatus>,
    disks: &BTreeMap<u64, (Option<u64>, Option<u64>)>,
) -> Option<u64> {
    let (lid, l) = st
        .iter()
        .filter(|(_, s)| s.running && s.state == "leader")
        .max_by_key(|(_, s)| s.term)?;
    let agreed = st
        .values()
        .all(|s| s.running && s.leader == Some(*lid) && s.term == l.term);
    let (last, _) = disks.get(lid)?;
    let last = (*last)?;
    let caught_up = disks
        .values()
        .all(|(log, applied)| *log == Some(last) && *applied == Some(last));
    (agreed && caught_up).then_some(last)
}

/// Compares every node's state machine with the first one's; names the first difference.
pub fn same_state(states: &BTreeMap<u64, SmState>) -> Result<(), String> {
    let mut it = states.iter();
    let Some((first_id, first)) = it.next() else {
        return Ok(());
    };
    for (id, s) in it {
        if s.applied != first.applied {
            return Err(format!(
                "n{id} applied {:?}, n{first_id} applied {:?}",
                s.applied, first.applied
            ));
        }
        if s.kv != first.kv {
            let keys: BTreeSet<&Vec<u8>> = s.kv.keys().chain(first.kv.keys()).collect();
            let k = keys
                .into_iter()
                .find(|k| s.kv.get(*k) != first.kv.get(*k))
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            return Err(format!("n{id} and n{first_id} differ at catalog key {k:?}"));
        }
        if s.log != first.log {
            let k = s
                .log
                .keys()
                .chain(first.log.keys())
                .find(|i| s.log.get(*i) != first.log.get(*i))
                .copied()
                .unwrap_or_default();
            return Err(format!(
                "n{id} and n{first_id} differ at catalog log entry {k}"
            ));
        }
    }
    Ok(())
}

/// Whether `b` may take effect after `a` (it did not complete before `a` was invoked, and it
/// was not refused).
fn may_follow(a: &Event, b: &Event) -> bool {
    !std::ptr::eq(a, b) && b.done >= a.call && !matches!(b.ret, CatRet::Err(_))
}

/// Checks that every acknowledged write is reflected in `state` (node `node`'s catalog):
/// every acknowledged checkin's version with its image, every acknowledged delete, and an
/// acknowledged grant, revoke or default change unless a later write may have undone it.
/// Returns how many acknowledged writes were checked.
pub fn acked_present(history: &[Event], node: u64, state: &SmState) -> Result<usize, String> {
    let mut views: BTreeMap<&str, Option<NameView>> = BTreeMap::new();
    let mut checked = 0;
    for e in history {
        if !matches!(e.ret, CatRet::Version(_) | CatRet::Ok) || !e.op.is_write() {
            continue;
        }
        let name = e.op.name();
        if !views.contains_key(name) {
            views.insert(name, name_view(&state.kv, name)?);
        }
        let view = views.get(name).and_then(|v| v.as_ref());
        let later = |pred: &dyn Fn(&CatOp) -> bool| {
            history
                .iter()
                .any(|b| b.op.name() == name && pred(&b.op) && may_follow(e, b))
        };
        let lost = |what: String| {
            format!(
                "n{node} lost an acknowledged write: {what} (client {}, {:?} answered {:?} \
                 at {} us); the name there: {view:?}",
                e.client, e.op, e.ret, e.done
            )
        };
        let Some(v) = view else {
            return Err(lost(format!("{name} does not exist")));
        };
        checked += 1;
        match (&e.op, &e.ret) {
            (CatOp::Checkin { image, .. }, CatRet::Version(n)) => {
                let at = n.checked_sub(1).and_then(|i| v.versions.get(i as usize));
                if at.map(|(img, _)| img) != Some(image) {
                    return Err(lost(format!("version {n} is {at:?}, not {image}")));
                }
            }
            (CatOp::Delete { version, .. }, CatRet::Ok) => {
                let at = version
                    .checked_sub(1)
                    .and_then(|i| v.versions.get(i as usize));
                if !at.is_some_and(|(_, deleted)| *deleted) {
                    return Err(lost(format!("version {version} is {at:?}, not deleted")));
                }
            }
            (CatOp::Grant { user, .. }, CatRet::Ok) => {
                let undone = later(&|op| matches!(op, CatOp::Revoke { user: u, .. } if u == user));
                if !undone && !v.readers.contains(user) {
                    return Err(lost(format!("{user} is not a reader")));
                }
            }
            (CatOp::Revoke { user, .. }, CatRet::Ok) => {
                let undone = later(&|op| matches!(op, CatOp::Grant { user: u, .. } if u == user));
                if !undone && (v.readers.contains(user) || v.writers.contains(user)) {
                    return Err(lost(format!("{user} still has access")));
                }
            }
            (CatOp::SetDefault { version, .. }, CatRet::Ok) => {
                let undone = later(&|op| {
                    matches!(
                        op,
                        CatOp::Checkin { .. } | CatOp::SetDefault { .. } | CatOp::Delete { .. }
                    )
                });
                if !undone && v.default != *version {
                    return Err(lost(format!("the default is {}, not {version}", v.default)));
                }
            }
            _ => {}
        }
    }
    Ok(checked)
}

/// What the layout checks covered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayoutCheck {
    /// Layout versions.
    pub versions: u64,
    /// (version, partition) placements checked.
    pub placements: u64,
}

/// Checks the layouts in `state`: versions 1..=current all present and numbered, each the
/// previous one with the change the catalog log records, every acknowledged version present,
/// and every version's placement sound.
pub fn layouts(state: &SmState, acked: &[u64]) -> Result<LayoutCheck, String> {
    let current: u64 = match state.kv.get(keys::LAYOUT_CURRENT) {
        Some(v) => decode(keys::LAYOUT_CURRENT, v).map_err(|e| e.to_string())?,
        None => return Err("no layout".into()),
    };
    let stored = mirage_node::catalog::View::scan_prefix(&MemView(&state.kv), keys::LAYOUT_PREFIX)
        .map_err(|e| e.to_string())?
        .len() as u64;
    if stored != current {
        return Err(format!(
            "{stored} layout versions are stored, the current one is {current}"
        ));
    }
    let mut versions = Vec::new();
    for v in 1..=current {
        let l = layout_version(&state.kv, v)?.ok_or(format!("layout version {v} is missing"))?;
        if l.version != v {
            return Err(format!("layout version {v} says it is {}", l.version));
        }
        versions.push(l);
    }
    if let Some(v) = acked.iter().find(|v| **v == 0 || **v > current) {
        return Err(format!(
            "layout version {v} was acknowledged but the current one is {current}"
        ));
    }
    replay(state, &versions)?;
    let mut placements = 0;
    for l in &versions {
        placements += placement(l)?;
    }
    Ok(LayoutCheck {
        versions: current,
        placements,
    })
}

/// Replays the layout commands of the catalog log and compares with the stored versions.
fn replay(state: &SmState, versions: &[Layout]) -> Result<(), String> {
    let mut made: Vec<Layout> = Vec::new();
    for (i, b) in &state.log {
        let e: LogEntry = decode(&keys::log(*i), b).map_err(|e| e.to_string())?;
        match e.command {
            Command::InitLayout { layout } => made.push(layout),
            Command::ChangeLayout { change, .. } => {
                let prev = made
                    .last()
                    .ok_or(format!("log entry {i} changes a layout before the first"))?;
                let next = prev
                    .change(&change)
                    .map_err(|err| format!("log entry {i}: {change:?} does not apply: {err}"))?;
                made.push(next);
            }
            _ => {}
        }
    }
    if made.as_slice() != versions {
        return Err(format!(
            "the catalog log makes {} layout versions that differ from the {} stored",
            made.len(),
            versions.len()
        ));
    }
    Ok(())
}

/// Checks one layout's placement: each partition on `min(replication, active)` distinct
/// active nodes, in as many distinct zones as there are (up to the replication).
fn placement(l: &Layout) -> Result<u64, String> {
    let p = l.placement();
    let active: BTreeMap<u64, &str> = l.active().map(|n| (n.id, n.zone.as_str())).collect();
    let zones: BTreeSet<&str> = active.values().copied().collect();
    let want = l.replication.min(active.len());
    for part in 0..l.partitions {
        let reps = p.partition(part);
        let ids: BTreeSet<u64> = reps.iter().copied().collect();
        let rep_zones: BTreeSet<&str> = reps
            .iter()
            .filter_map(|id| active.get(id).copied())
            .collect();
        let bad = if reps.len() != want {
            Some(format!("{} replicas, not {want}", reps.len()))
        } else if ids.len() != reps.len() {
            Some("a node holds two replicas".into())
        } else if let Some(id) = reps.iter().find(|id| !active.contains_key(id)) {
            Some(format!("node {id} is not active"))
        } else if rep_zones.len() != reps.len().min(zones.len()) {
            Some(format!(
                "replicas in {} zones while {} zones have active nodes",
                rep_zones.len(),
                zones.len()
            ))
        } else {
            None
        };
        if let Some(why) = bad {
            return Err(format!(
                "layout version {}: partition {part} on {reps:?}: {why}",
                l.version
            ));
        }
    }
    Ok(u64::from(l.partitions))
}

/// One read per name of the converged state, at `at` (after every other operation), for the
/// linearizability check: the final state must be explained by the history too.
pub fn final_reads(
    state: &SmState,
    names: usize,
    client: usize,
    at: u64,
) -> Result<Vec<Event>, String> {
    (0..names)
        .map(|i| {
            let name = format!("img-{i}");
            Ok(Event {
                client,
                ret: CatRet::Named(name_view(&state.kv, &name)?),
                op: CatOp::Read { name },
                call: at,
                done: at,
            })
        })
        .collect()
}
