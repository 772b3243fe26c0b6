//! The sequential model of one named image in the catalog, as the workload drives it (as an
//! administrator): the semantics of `node/src/catalog/apply.rs` for `checkin`, `set_default`,
//! `delete` and `acl`, reduced to what a read of the name shows.

use std::collections::BTreeSet;

use mirage_node::catalog::Command;
use serde::{Deserialize, Serialize};

/// A catalog operation on one name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CatOp {
    /// Adds `image` as the next version (creating the name at version 1).
    Checkin {
        /// Name.
        name: String,
        /// Image digest (text form).
        image: String,
    },
    /// Moves the default.
    SetDefault {
        /// Name.
        name: String,
        /// Version.
        version: u32,
    },
    /// Marks a version deleted.
    Delete {
        /// Name.
        name: String,
        /// Version.
        version: u32,
    },
    /// Gives `user` read access.
    Grant {
        /// Name.
        name: String,
        /// User.
        user: String,
    },
    /// Removes `user`'s access.
    Revoke {
        /// Name.
        name: String,
        /// User.
        user: String,
    },
    /// Reads the name (linearizable read).
    Read {
        /// Name.
        name: String,
    },
}

impl CatOp {
    /// The name the operation concerns.
    pub fn name(&self) -> &str {
        match self {
            CatOp::Checkin { name, .. }
            | CatOp::SetDefault { name, .. }
            | CatOp::Delete { name, .. }
            | CatOp::Grant { name, .. }
            | CatOp::Revoke { name, .. }
            | CatOp::Read { name } => name,
        }
    }

    /// The catalog command of a write (`None` for a read, or an image that is no digest).
    pub fn command(&self) -> Option<Command> {
        Some(match self {
            CatOp::Checkin { name, image } => Command::Checkin {
                name: name.clone(),
                image: image.parse().ok()?,
                parent: None,
                description: String::new(),
            },
            CatOp::SetDefault { name, version } => Command::SetDefault {
                name: name.clone(),
                version: *version,
            },
            CatOp::Delete { name, version } => Command::Delete {
                name: name.clone(),
                version: *version,
            },
            CatOp::Grant { name, user } => Command::Acl {
                name: name.clone(),
                grant_read: vec![user.clone()],
                grant_write: Vec::new(),
                revoke: Vec::new(),
            },
            CatOp::Revoke { name, user } => Command::Acl {
                name: name.clone(),
                grant_read: Vec::new(),
                grant_write: Vec::new(),
                revoke: vec![user.clone()],
            },
            CatOp::Read { .. } => return None,
        })
    }

    /// Whether the operation changes state (reads do not).
    pub fn is_write(&self) -> bool {
        !matches!(self, CatOp::Read { .. })
    }
}

/// What a read of a name shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NameView {
    /// (image digest text, deleted) of each version from version 1.
    pub versions: Vec<(String, bool)>,
    /// The default version (0: none left).
    pub default: u32,
    /// Readers.
    pub readers: BTreeSet<String>,
    /// Writers.
    pub writers: BTreeSet<String>,
}

/// What an operation answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatRet {
    /// A checkin succeeded as this version.
    Version(u32),
    /// `set_default`, `delete`, `grant` or `revoke` succeeded.
    Ok,
    /// A definite refusal: the catalog error code (`not_found`, `no_such_version`, …).
    Err(String),
    /// A read: the name, or `None` when it does not exist.
    Named(Option<NameView>),
    /// No answer (timeout, connection lost, ambiguous server error): it may or may not have
    /// taken effect.
    Unknown,
}

/// The model's state of one name: `None` until its first checkin.
pub type State = Option<NameView>;

/// Applies `op` to `state` as the catalog does; returns the answer.
pub fn step(state: &mut State, op: &CatOp) -> CatRet {
    let not_found = || CatRet::Err("not_found".into());
    match op {
        CatOp::Read { .. } => CatRet::Named(state.clone()),
        CatOp::Checkin { image, .. } => match state {
            None => {
                *state = Some(NameView {
                    versions: vec![(image.clone(), false)],
                    default: 1,
                    ..NameView::default()
                });
                CatRet::Version(1)
            }
            Some(n) => {
                n.versions.push((image.clone(), false));
                n.default = n.versions.len() as u32;
                CatRet::Version(n.default)
            }
        },
        CatOp::SetDefault { version, .. } => {
            let Some(n) = state else { return not_found() };
            match version
                .checked_sub(1)
                .and_then(|i| n.versions.get(i as usize))
            {
                None => CatRet::Err("no_such_version".into()),
                Some((_, true)) => CatRet::Err("deleted".into()),
                Some((_, false)) => {
                    n.default = *version;
                    CatRet::Ok
                }
            }
        }
        CatOp::Delete { version, .. } => {
            let Some(n) = state else { return not_found() };
            let Some(i) = version.checked_sub(1).map(|i| i as usize) else {
                return CatRet::Err("no_such_version".into());
            };
            let Some(v) = n.versions.get_mut(i) else {
                return CatRet::Err("no_such_version".into());
            };
            if !v.1 {
                v.1 = true;
                if n.default == *version {
                    n.default = n
                        .versions
                        .iter()
                        .rposition(|(_, deleted)| !deleted)
                        .map_or(0, |i| i as u32 + 1);
                }
            }
            CatRet::Ok
        }
        CatOp::Grant { user, .. } => {
            let Some(n) = state else { return not_found() };
            n.readers.insert(user.clone());
            CatRet::Ok
        }
        CatOp::Revoke { user, .. } => {
            let Some(n) = state else { return not_found() };
            n.readers.remove(user);
            n.writers.remove(user);
            CatRet::Ok
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// A checkin of `image` as a new version of the name "a" (also the linearizability
    /// checker's tests' operation).
    pub(crate) fn ck(image: &str) -> CatOp {
        CatOp::Checkin {
            name: "a".into(),
            image: image.into(),
        }
    }

    #[test]
    fn deleting_the_default_moves_it_to_the_newest_live_version() {
        let mut s = None;
        assert_eq!(step(&mut s, &ck("x")), CatRet::Version(1));
        assert_eq!(step(&mut s, &ck("y")), CatRet::Version(2));
        assert_eq!(step(&mut s, &ck("z")), CatRet::Version(3));
        let del = |v| CatOp::Delete {
            name: "a".into(),
            version: v,
        };
        assert_eq!(step(&mut s, &del(3)), CatRet::Ok);
        assert_eq!(s.as_ref().unwrap().default, 2);
        assert_eq!(step(&mut s, &del(1)), CatRet::Ok);
        assert_eq!(s.as_ref().unwrap().default, 2);
        assert_eq!(step(&mut s, &del(2)), CatRet::Ok);
        assert_eq!(s.as_ref().unwrap().default, 0);
        assert_eq!(step(&mut s, &del(4)), CatRet::Err("no_such_version".into()));
        let set = CatOp::SetDefault {
            name: "a".into(),
            version: 2,
        };
        assert_eq!(step(&mut s, &set), CatRet::Err("deleted".into()));
    }

    #[test]
    fn operations_on_a_missing_name_are_not_found() {
        let mut s = None;
        let g = CatOp::Grant {
            name: "a".into(),
            user: "u".into(),
        };
        assert_eq!(step(&mut s, &g), CatRet::Err("not_found".into()));
        assert_eq!(step(&mut s, &ck("x")), CatRet::Version(1));
        assert_eq!(step(&mut s, &g), CatRet::Ok);
        assert!(s.unwrap().readers.contains("u"));
    }
}
