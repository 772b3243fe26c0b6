//! Search across the library: which images (and versions) hold a path matching a glob, or a
//! given content. Trees are walked once per distinct digest (and, for paths, per directory
//! prefix): an image family shares most of its subtrees, so the cost follows the number of
//! distinct directories, not the number of images.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};
use mirage_format::{Digest, EntryKind, Item};
use mirage_node::Store;
use serde::Serialize;

use crate::browse::item;

/// What to look for.
#[derive(Clone, Debug)]
pub enum Query {
    /// Paths matching a glob: `*` and `?` within a name, `**` across directories.
    Path(String),
    /// Files with this content digest.
    Content(Digest),
    /// An installed package (dpkg or apk), optionally of one version.
    Package {
        /// Name, exactly.
        name: String,
        /// Version, exactly.
        version: Option<String>,
    },
}

/// One image holding matches.
#[derive(Clone, Debug, Serialize)]
pub struct Hit {
    /// The image.
    pub image: Digest,
    /// Versions naming it that the caller may read (`name@version`).
    pub versions: Vec<String>,
    /// Matches as (partition, path).
    pub paths: Vec<(u32, String)>,
}

/// Glob match on whole paths: `*` and `?` never cross `/`, `**` does.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    match pat.first() {
        None => s.is_empty(),
        Some(b'*') if pat.get(1) == Some(&b'*') => {
            let rest = &pat[2..];
            (0..=s.len()).any(|i| glob_match(rest, &s[i..]))
        }
        Some(b'*') => {
            let rest = &pat[1..];
            let mut i = 0;
            loop {
                if glob_match(rest, &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some(b'?') => s.first().is_some_and(|c| *c != b'/') && glob_match(&pat[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob_match(&pat[1..], &s[1..]),
    }
}

/// Could something under directory `dir` (ending in `/`) match `pat`? Compares the literal
/// start of the pattern with the directory.
fn may_match_below(pat: &[u8], dir: &[u8]) -> bool {
    let lit = pat
        .iter()
        .position(|c| matches!(c, b'*' | b'?'))
        .unwrap_or(pat.len());
    let n = lit.min(dir.len());
    pat[..n] == dir[..n]
}

#[derive(Default)]
struct Searcher {
    /// Per (tree, directory prefix): matching paths below it.
    paths: HashMap<(Digest, Vec<u8>), Vec<Vec<u8>>>,
    /// Per tree: does it hold the content anywhere below?
    holds: HashMap<Digest, bool>,
    trees_read: u64,
}

impl Searcher {
    fn tree(&mut self, store: &Store, d: &Digest) -> Result<mirage_format::Tree> {
        self.trees_read += 1;
        match item(store, d)? {
            Item::Tree(t) => Ok(t),
            other => bail!("{} is a {}, expected a tree", d.to_text(), other.kind()),
        }
    }

    fn by_path(
        &mut self,
        store: &Store,
        d: &Digest,
        dir: &[u8],
        pat: &[u8],
    ) -> Result<Vec<Vec<u8>>> {
        let key = (*d, dir.to_vec());
        if let Some(hit) = self.paths.get(&key) {
            return Ok(hit.clone());
        }
        let mut out = Vec::new();
        if may_match_below(pat, dir) {
            let t = self.tree(store, d)?;
            for e in &t.entries {
                let mut p = dir.to_vec();
                p.extend_from_slice(&e.name);
                if glob_match(pat, &p) {
                    out.push(p.clone());
                }
                if e.kind == EntryKind::Dir {
                    if let Some(sub) = &e.content {
                        p.push(b'/');
                        out.extend(self.by_path(store, sub, &p, pat)?);
                    }
                }
            }
        }
        self.paths.insert(key, out.clone());
        Ok(out)
    }

    fn holds(&mut self, store: &Store, d: &Digest, want: &Digest) -> Result<bool> {
        if let Some(h) = self.holds.get(d) {
            return Ok(*h);
        }
        let t = self.tree(store, d)?;
        let mut found = false;
        for e in &t.entries {
            found |= match (e.kind, &e.content) {
                (EntryKind::Dir, Some(sub)) => self.holds(store, sub, want)?,
                (_, Some(c)) => c == want,
                _ => false,
            };
        }
        self.holds.insert(*d, found);
        Ok(found)
    }

    fn by_content(
        &mut self,
        store: &Store,
        d: &Digest,
        dir: &[u8],
        want: &Digest,
    ) -> Result<Vec<Vec<u8>>> {
        if !self.holds(store, d, want)? {
            return Ok(Vec::new());
        }
        let t = self.tree(store, d)?;
        let mut out = Vec::new();
        for e in &t.entries {
            let mut p = dir.to_vec();
            p.extend_from_slice(&e.name);
            match (e.kind, &e.content) {
                (EntryKind::Dir, Some(sub)) => {
                    p.push(b'/');
                    out.extend(self.by_content(store, sub, &p, want)?);
                }
                (_, Some(c)) if c == want => out.push(p),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// What a search found, and what it read.
#[derive(Clone, Debug, Serialize)]
pub struct Found {
    /// Images with matches, by digest.
    pub hits: Vec<Hit>,
    /// Images searched.
    pub images: u64,
    /// Trees read.
    pub trees_read: u64,
}

/// Searches every version of `named` (the named images the caller may read; deleted versions
/// left out).
pub fn search(store: &Store, named: &[mirage_node::catalog::Named], q: &Query) -> Result<Found> {
    let mut versions: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for n in named {
        for v in n.versions.iter().filter(|v| !v.deleted) {
            versions
                .entry(v.image)
                .or_default()
                .push(format!("{}@{}", n.name, v.number));
        }
    }
    let mut s = Searcher::default();
    let mut hits = Vec::new();
    for (image, names) in &versions {
        let mut paths = Vec::new();
        if let Query::Package { name, version } = q {
            for (part, pkgs) in crate::inventory::of_image(store, image)? {
                for p in pkgs
                    .iter()
                    .filter(|p| &p.name == name && version.as_ref().is_none_or(|v| *v == p.version))
                {
                    paths.push((part, format!("{}={} ({})", p.name, p.version, p.db)));
                }
            }
        }
        for (part, root) in crate::diff::filesystems(store, image)? {
            let found = match q {
                Query::Path(p) => s.by_path(store, &root, b"/", p.as_bytes())?,
                Query::Content(d) => s.by_content(store, &root, b"/", d)?,
                Query::Package { .. } => Vec::new(),
            };
            paths.extend(
                found
                    .into_iter()
                    .map(|p| (part, String::from_utf8_lossy(&p).into_owned())),
            );
        }
        if !paths.is_empty() {
            hits.push(Hit {
                image: *image,
                versions: names.clone(),
                paths,
            });
        }
    }
    Ok(Found {
        hits,
        images: versions.len() as u64,
        trees_read: s.trees_read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, s: &str| glob_match(p.as_bytes(), s.as_bytes());
        assert!(m("/usr/bin/*", "/usr/bin/ls"));
        assert!(!m("/usr/bin/*", "/usr/bin/x/ls"));
        assert!(m("/usr/**/ls", "/usr/bin/x/ls"));
        assert!(m("**/postgres*", "/usr/lib/postgresql/15/bin/postgres"));
        assert!(m("/etc/?asswd", "/etc/passwd"));
        assert!(!m("/etc/?asswd", "/etc//asswd"));
        assert!(m("/a/**", "/a/b/c"));
        assert!(!m("/a", "/ab"));
        assert!(may_match_below(b"/usr/lib/*", b"/usr/"));
        assert!(!may_match_below(b"/usr/lib/*", b"/etc/"));
        assert!(may_match_below(b"**/x", b"/anything/"));
    }
}
