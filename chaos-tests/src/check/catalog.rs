//! Every acknowledged catalog write is present after the faults: each acknowledged checkin's
//! version holds its image, and each acknowledged delete's version is marked deleted, in the
//! final (linearizable) read of its name. (Defaults and ACLs may be changed again by later
//! writes; the linearizability checker covers them.)

use std::collections::BTreeMap;

use super::linear::{CatOp, CatRet, Event, NameView};

/// Checks the acknowledged writes of `events` against the final reads `last`.
pub fn acknowledged_present(
    events: &[Event],
    last: &BTreeMap<String, Option<NameView>>,
) -> Result<usize, String> {
    let mut checked = 0;
    let mut missing = Vec::new();
    for e in events {
        let name = e.op.name();
        let Some(final_view) = last.get(name) else {
            continue;
        };
        let version = |v: u32| {
            final_view
                .as_ref()
                .and_then(|n| n.versions.get(v.checked_sub(1)? as usize))
        };
        match (&e.op, &e.ret) {
            (CatOp::Checkin { image, .. }, CatRet::Version(v)) => {
                checked += 1;
                if version(*v).map(|x| &x.0) != Some(image) {
                    missing.push(format!(
                        "{name}@{v} = {image} (acknowledged to client {})",
                        e.client
                    ));
                }
            }
            (CatOp::Delete { version: v, .. }, CatRet::Ok) => {
                checked += 1;
                if !version(*v).is_some_and(|x| x.1) {
                    missing.push(format!(
                        "delete of {name}@{v} (acknowledged to client {})",
                        e.client
                    ));
                }
            }
            _ => {}
        }
    }
    if missing.is_empty() {
        Ok(checked)
    } else {
        Err(format!(
            "{} of {checked} acknowledged writes are missing: {}",
            missing.len(),
            missing.join("; ")
        ))
    }
}
