//! `mirage bench search`: search by path, content and package over a library of many images:
//! the four corpus images plus variants derived from them the way an image library grows — each
//! variant is one of the corpus images with one file added to `/etc`, stored as the new items
//! that change makes (root tree, filesystem, disk, image) and registered under its own name.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use mirage_format::chunking::EncodedItem;
use mirage_format::{Digest, EntryKind, Item, PartitionContent, Tree, TreeEntry};
use mirage_node::catalog::Command;
use mirage_node::{Store, StoreOptions};
use serde::Serialize;

use crate::browse::item;
use crate::search::{search, Query};

/// One timed query.
#[derive(Clone, Debug, Serialize)]
pub struct Timed {
    /// The query, as given on the command line.
    pub query: String,
    /// Seconds.
    pub seconds: f64,
    /// Images with matches.
    pub matching_images: u64,
    /// Trees read.
    pub trees_read: u64,
}

/// What the benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct SearchBench {
    /// Images in the library.
    pub images: u64,
    /// Seconds to build the variants.
    pub setup_seconds: f64,
    /// Each query.
    pub queries: Vec<Timed>,
}

fn put(store: &Store, item: &Item) -> Result<Digest> {
    let e = EncodedItem::new(store.algorithm(), item)?;
    let d = e.digest();
    store.put_encoded(vec![e])?;
    Ok(d)
}

/// `image` with a file `/etc/<name>` holding `text` added to its largest filesystem.
fn variant(store: &Store, image: &Digest, name: &str, text: &str) -> Result<Digest> {
    let Item::Image(mut img) = item(store, image)? else {
        bail!("not an image")
    };
    let Item::Disk(mut disk) = item(store, &img.disks[0].disk)? else {
        bail!("not a disk")
    };
    let Some(part) = disk
        .partitions
        .iter_mut()
        .filter(|p| matches!(p.content, PartitionContent::Filesystem { .. }))
        .max_by_key(|p| p.size)
    else {
        bail!("no filesystem")
    };
    let PartitionContent::Filesystem { digest } = part.content else {
        bail!("no filesystem")
    };
    let Item::Filesystem(mut fs) = item(store, &digest)? else {
        bail!("not a filesystem")
    };
    let Item::Tree(root) = item(store, &fs.root)? else {
        bail!("not a tree")
    };
    let mut entries = root.entries;
    let etc = entries
        .iter_mut()
        .find(|e| e.name == b"etc")
        .and_then(|e| e.content.as_mut());
    let Some(etc) = etc else { bail!("no /etc") };
    let Item::Tree(etc_tree) = item(store, etc)? else {
        bail!("not a tree")
    };
    let blob = EncodedItem::blob(store.algorithm(), text.as_bytes())?;
    let mut file = TreeEntry::new(name.as_bytes().to_vec(), EntryKind::File);
    file.mode = 0o644;
    file.size = text.len() as u64;
    file.content = Some(blob.digest());
    store.put_encoded(vec![blob])?;
    let mut etc_entries = etc_tree.entries;
    etc_entries.push(file);
    etc_entries.sort_by(|a, b| a.name.cmp(&b.name));
    *etc = put(store, &Item::Tree(Tree::new(etc_entries)?))?;
    fs.root = put(store, &Item::Tree(Tree::new(entries)?))?;
    fs.skeleton = None;
    part.content = PartitionContent::Filesystem {
        digest: put(store, &Item::Filesystem(fs))?,
    };
    img.disks[0].disk = put(store, &Item::Disk(disk))?;
    put(store, &Item::Image(img))
}

/// Builds a library of `n` images in `work` from `sources` and times the searches.
pub fn bench_search(sources: &[PathBuf], work: &Path, n: u64) -> Result<SearchBench> {
    let dir = work.join("search-bench");
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(
        &dir,
        StoreOptions {
            create: true,
            ..Default::default()
        },
    )?;
    let c = store.catalog();
    c.submit(
        "bench",
        Command::AddUser {
            name: "bench".into(),
            admin: true,
            token_sha256: None,
        },
    )?;
    let mut bases = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let (d, _) = crate::indexer::checkin(&store, src, 2)?;
        c.submit(
            "bench",
            Command::Checkin {
                name: format!("corpus-{i}"),
                image: d,
                parent: None,
                description: String::new(),
            },
        )?;
        bases.push(d);
    }
    let t = Instant::now();
    for k in bases.len() as u64..n {
        let base = bases[(k as usize) % bases.len()];
        let v = variant(&store, &base, "mirage-variant", &format!("variant {k}\n"))?;
        c.submit(
            "bench",
            Command::Checkin {
                name: format!("variant-{k:04}"),
                image: v,
                parent: Some(base),
                description: String::new(),
            },
        )?;
    }
    let setup_seconds = t.elapsed().as_secs_f64();
    let hostname = {
        let found = crate::browse::ls(&store, &bases[0], None, "/etc/hostname")?;
        found.first().and_then(|e| e.content)
    };
    let mut queries = vec![
        (
            "--path '/usr/lib/postgresql/*/bin/postgres'".to_string(),
            Query::Path("/usr/lib/postgresql/*/bin/postgres".into()),
        ),
        (
            "--path '**/sshd'".to_string(),
            Query::Path("**/sshd".into()),
        ),
        (
            "--package postgresql-15".to_string(),
            Query::Package {
                name: "postgresql-15".into(),
                version: None,
            },
        ),
    ];
    if let Some(h) = hostname {
        queries.push((format!("--content {h} (/etc/hostname)"), Query::Content(h)));
    }
    let mut out = Vec::new();
    for (text, q) in queries {
        // Twice: the first run parses package databases into the cache.
        for _ in 0..2 {
            let t = Instant::now();
            let f = search(&store, &store.catalog().list("bench")?, &q)?;
            out.push(Timed {
                query: text.clone(),
                seconds: t.elapsed().as_secs_f64(),
                matching_images: f.hits.len() as u64,
                trees_read: f.trees_read,
            });
        }
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(SearchBench {
        images: n,
        setup_seconds,
        queries: out,
    })
}
