//! The cluster's data layout in the catalog (DESIGN.md §3, §4): every version is kept
//! (`y/v/` + version), and `y/current` holds the current version's number. Only administrators change
//! it; every user may read it (clients place items by it).

use mirage_cluster_config::{Layout, LayoutChange};

use super::apply::Tx;
use super::{CatalogError, Response, User};
use crate::keys::catalog as keys;

fn admin(u: &User) -> Result<(), CatalogError> {
    if u.admin {
        Ok(())
    } else {
        Err(CatalogError::Denied(
            "only an admin changes the cluster layout".into(),
        ))
    }
}

fn put(tx: &mut Tx<'_>, layout: &Layout) -> Result<Response, CatalogError> {
    tx.put_json(keys::layout_version(layout.version), layout)?;
    tx.put_json(keys::LAYOUT_CURRENT.to_vec(), &layout.version)?;
    Ok(Response {
        layout: Some(layout.version),
        ..Default::default()
    })
}

/// Records the first layout (version 1); refused once there is one.
pub(super) fn init(tx: &mut Tx<'_>, u: &User, layout: &Layout) -> Result<Response, CatalogError> {
    admin(u)?;
    if tx.get(keys::LAYOUT_CURRENT)?.is_some() {
        return Err(CatalogError::Invalid(
            "the cluster already has a layout: change it node by node".into(),
        ));
    }
    if layout.version != 1 {
        return Err(CatalogError::Invalid(
            "the first layout is version 1".into(),
        ));
    }
    layout
        .check()
        .map_err(|e| CatalogError::Invalid(e.to_string()))?;
    put(tx, layout)
}

/// Makes the next layout version with `change`; if `expect` is given, only if the current
/// version is that one (so an administrator changes the layout they looked at).
/// `u` is `None` for the cluster itself (the failure detector; liveness changes only).
pub(super) fn change(
    tx: &mut Tx<'_>,
    u: Option<&User>,
    expect: Option<u64>,
    change: &LayoutChange,
) -> Result<Response, CatalogError> {
    if let Some(u) = u {
        admin(u)?;
    }
    let current: Layout = tx
        .get_json::<u64>(keys::LAYOUT_CURRENT)?
        .map(|v| tx.get_json(&keys::layout_version(v)))
        .transpose()?
        .flatten()
        .ok_or_else(|| CatalogError::Invalid("the cluster has no layout yet".into()))?;
    if let Some(v) = expect {
        if v != current.version {
            return Err(CatalogError::Invalid(format!(
                "the layout is at version {}, not {v}: look again",
                current.version
            )));
        }
    }
    let next = current
        .change(change)
        .map_err(|e| CatalogError::Invalid(e.to_string()))?;
    put(tx, &next)
}
