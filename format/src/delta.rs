//! `Delta`: a file-level delta between two images (paper: delta deployment).

use crate::codec::{invalid, DecodeError, Reader, Writer};
use crate::digest::Digest;
use crate::params::bytes_view;
use crate::tree::{validate_name, TreeEntry};

/// Longest path in a delta.
pub const MAX_PATH: usize = 16 * 1024;

/// What happens to one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// The path is new in the target.
    Add,
    /// Content (and possibly metadata) changed.
    Modify,
    /// The path is gone in the target.
    Delete,
    /// Only metadata changed.
    Metadata,
}

/// One change.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// Which filesystem of the image, e.g. `vda/3` (disk name / partition number).
    #[serde(with = "bytes_view")]
    pub scope: Vec<u8>,
    /// Path inside the filesystem, components joined by `/`, no leading `/`.
    #[serde(with = "bytes_view")]
    pub path: Vec<u8>,
    /// Operation.
    pub op: ChangeOp,
    /// Target entry (its name is the last path component); absent for deletes.
    pub entry: Option<TreeEntry>,
}

/// A file-level delta from `source` to `target`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Delta {
    /// Source image.
    pub source: Digest,
    /// Target image.
    pub target: Digest,
    /// Changes sorted by (scope, path), unique.
    pub changes: Vec<Change>,
}

impl Delta {
    /// Checks order, paths and entries.
    pub fn validate(&self) -> Result<(), DecodeError> {
        for c in &self.changes {
            if c.path.len() > MAX_PATH || c.scope.len() > MAX_PATH {
                return Err(invalid("delta path", "too long"));
            }
            let mut last: &[u8] = &[];
            for comp in c.path.split(|b| *b == b'/') {
                validate_name(comp)?;
                last = comp;
            }
            match (&c.entry, c.op) {
                (None, ChangeOp::Delete) => {}
                (Some(e), op) if op != ChangeOp::Delete => {
                    e.validate()?;
                    if e.name != last {
                        return Err(invalid("delta", "entry name differs from the path"));
                    }
                }
                _ => return Err(invalid("delta", "entry required iff not a delete")),
            }
        }
        for pair in self.changes.windows(2) {
            if (&pair[0].scope, &pair[0].path) >= (&pair[1].scope, &pair[1].path) {
                return Err(invalid("delta", "changes unsorted or duplicate"));
            }
        }
        Ok(())
    }
    pub(crate) fn write(&self, w: &mut Writer) {
        w.digest(&self.source);
        w.digest(&self.target);
        w.uvar(self.changes.len() as u64);
        for c in &self.changes {
            w.bytes(&c.scope);
            w.bytes(&c.path);
            w.u8(match c.op {
                ChangeOp::Add => 1,
                ChangeOp::Modify => 2,
                ChangeOp::Delete => 3,
                ChangeOp::Metadata => 4,
            });
            if let Some(e) = &c.entry {
                e.write(w);
            }
        }
    }
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let source = r.digest("delta source")?;
        let target = r.digest("delta target")?;
        let n = r.count("delta changes", 4)?;
        let mut changes = Vec::with_capacity(n);
        for _ in 0..n {
            let scope = r.bytes("delta scope", MAX_PATH)?.to_vec();
            let path = r.bytes("delta path", MAX_PATH)?.to_vec();
            let op = match r.u8("delta op")? {
                1 => ChangeOp::Add,
                2 => ChangeOp::Modify,
                3 => ChangeOp::Delete,
                4 => ChangeOp::Metadata,
                t => {
                    return Err(DecodeError::UnknownTag {
                        field: "delta op",
                        tag: u64::from(t),
                    })
                }
            };
            let entry = if op == ChangeOp::Delete {
                None
            } else {
                Some(TreeEntry::read(r)?)
            };
            changes.push(Change {
                scope,
                path,
                op,
                entry,
            });
        }
        let d = Delta {
            source,
            target,
            changes,
        };
        d.validate()?;
        Ok(d)
    }
}
