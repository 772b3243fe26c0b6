//! Location tables for parents held elsewhere. In a cluster an item's references are spread
//! over the nodes by digest, so the table a node builds when it stores a parent covers only
//! the references it holds itself. The writer of an image therefore tells every node which
//! children of each new parent it holds (`POST /v1/items/tables`); the node records their
//! locations under the parent, and a read "in the context of" that parent is then served
//! from the table in (volume, offset) order without index lookups. Tables are hints: an
//! entry that is missing or stale costs one index lookup, never a wrong answer (every read
//! checks the record's digest).

use std::collections::HashSet;

use mirage_format::Digest;

use super::{Store, StoreError};
use crate::index::{Index, IndexBatch};

impl Store {
    /// Adds to each parent's table the locations of the given children this store holds
    /// (children it lacks, or already in the table, are skipped). Returns the entries added.
    pub fn add_tables(&self, tables: &[(Digest, Vec<Digest>)]) -> Result<u64, StoreError> {
        let sh = self.shared();
        let mut batch = IndexBatch::default();
        let mut added = 0u64;
        for (parent, children) in tables {
            let mut table = sh.index.table(parent)?.unwrap_or_default();
            let known: HashSet<Digest> = table.entries.iter().map(|(d, _)| *d).collect();
            let mut ask: Vec<Digest> = children
                .iter()
                .filter(|c| !known.contains(c))
                .copied()
                .collect();
            ask.sort_unstable();
            ask.dedup();
            let before = table.entries.len();
            for (c, l) in ask.iter().zip(sh.index.get_many(&ask)?) {
                if let Some(l) = l {
                    table.entries.push((*c, l));
                }
            }
            if table.entries.len() > before {
                added += (table.entries.len() - before) as u64;
                batch.tables.push((*parent, table));
            }
        }
        if !batch.is_empty() {
            sh.index.write(batch, false)?;
        }
        Ok(added)
    }
}
