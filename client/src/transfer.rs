//! Push and pull between libraries (`docs/TRANSFER.md`): an embedded store directory or a
//! cluster on either side. Content moves by the walks of [`crate::remote::sync`] — top-down,
//! asking the receiving side which digests it lacks, skipping every subtree it holds,
//! sending children before parents, every item verified — so an interrupted transfer resumes
//! with the same command without sending again what arrived. The catalog side moves as one
//! `Import` command per name, submitted only once the content of every live version is
//! complete at the destination: the destination never shows an incomplete image.

use std::path::Path;

use anyhow::{bail, Context, Result};
use mirage_format::Digest;
use mirage_node::catalog::{
    CatalogError, Command, ImageRecord, ImportedAcl, ImportedVersion, Named, Query, QueryAnswer,
    Response,
};
use mirage_node::{Store, StoreOptions};
use serde::Serialize;

use crate::remote::sync::{self, SyncStats};
use crate::remote::{Remote, RemoteError};

/// One side of a transfer: its content store (a cluster's: the local cache a source cluster
/// is read through; a destination cluster needs none) and, for a cluster, the cluster.
#[derive(Debug)]
pub struct Library {
    /// Where it is, for messages.
    pub label: String,
    store: Option<Store>,
    remote: Option<Remote>,
    caller: String,
}

impl Library {
    /// An embedded store directory, as `caller`; created if `create` and missing.
    pub fn dir(path: &Path, caller: &str, create: bool) -> Result<Library> {
        let store = Store::open(
            path,
            StoreOptions {
                create,
                ..StoreOptions::default()
            },
        )
        .with_context(|| format!("opening store {}", path.display()))?;
        Ok(Library {
            label: path.display().to_string(),
            store: Some(store),
            remote: None,
            caller: caller.to_string(),
        })
    }

    /// A cluster; a source is read through the local cache `cache` (created if missing).
    pub fn cluster(remote: Remote, cache: Option<&Path>) -> Result<Library> {
        let store = cache
            .map(|c| {
                Store::open(
                    c,
                    StoreOptions {
                        create: true,
                        ..StoreOptions::default()
                    },
                )
                .with_context(|| format!("opening cache store {}", c.display()))
            })
            .transpose()?;
        let caller = remote.whoami()?;
        Ok(Library {
            label: remote.url().to_string(),
            store,
            remote: Some(remote),
            caller,
        })
    }

    /// A side given on the command line: `http(s)://…` (a cluster, with `token`) or a store
    /// directory; a `source` cluster gets its default cache, a source directory must exist.
    pub fn open(spec: &str, token: Option<&str>, caller: &str, source: bool) -> Result<Library> {
        if spec.starts_with("http://") || spec.starts_with("https://") {
            let token = token.with_context(|| format!("{spec} needs a token"))?;
            let remote = Remote::new(spec, token)?;
            let cache = source.then(|| crate::paths::default_cache(spec));
            Library::cluster(remote, cache.as_deref())
        } else {
            Library::dir(Path::new(spec), caller, !source)
        }
    }

    /// Reads back and re-hashes every item of every live version (a store directory only).
    pub fn verify(&self) -> Result<crate::backup::Verified> {
        if self.remote.is_some() {
            bail!("{}: only a store directory is verified here", self.label);
        }
        crate::backup::verify(self.store()?, &self.caller)
    }

    /// Who this side's catalog knows the caller as.
    pub fn caller(&self) -> &str {
        &self.caller
    }

    fn store(&self) -> Result<&Store> {
        self.store
            .as_ref()
            .with_context(|| format!("{} has no local cache to read through", self.label))
    }

    /// Its catalog, as the caller.
    fn query(&self, q: &Query) -> Result<QueryAnswer> {
        match &self.remote {
            Some(r) => r.query(q),
            None => {
                let store = self.store()?;
                crate::library::ensure_caller(store, &self.caller)?;
                Ok(store.catalog().query(&self.caller, q)?)
            }
        }
    }

    fn submit(&self, cmd: Command) -> Result<Response> {
        match &self.remote {
            Some(r) => Ok(r.command(&cmd)?.response),
            None => {
                let store = self.store()?;
                crate::library::ensure_caller(store, &self.caller)?;
                Ok(store.catalog().submit(&self.caller, cmd)?)
            }
        }
    }

    /// Every named image the caller may read, with its chain.
    pub(crate) fn list(&self) -> Result<Vec<Named>> {
        match self.query(&Query::List)? {
            QueryAnswer::List(v) => Ok(v),
            other => bail!("unexpected catalog answer {other:?}"),
        }
    }

    /// The named image, `None` if there is none the caller may see.
    pub(crate) fn named(&self, name: &str) -> Result<Option<Named>> {
        match self.query(&Query::Named { name: name.into() }) {
            Ok(QueryAnswer::Named(n)) => Ok(Some(n)),
            Ok(other) => bail!("unexpected catalog answer {other:?}"),
            Err(e) if code_of(&e) == Some("not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The catalog's record of `image` (an error if the caller may not see it).
    fn image(&self, image: Digest) -> Result<Option<ImageRecord>> {
        match self.query(&Query::Images { image: Some(image) })? {
            QueryAnswer::Images(v) => Ok(v.into_iter().next()),
            other => bail!("unexpected catalog answer {other:?}"),
        }
    }
}

/// How names are brought across.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// The name at the destination (one name only).
    pub rename: Option<String>,
    /// Add to a destination name with another history instead of refusing.
    pub force: bool,
}

/// What a transfer did for one name or digest.
#[derive(Debug, Serialize)]
pub struct Moved {
    /// The name or digest given.
    pub source: String,
    /// The name at the destination (`None` for a digest).
    pub name: Option<String>,
    /// Versions in the source's chain.
    pub versions: usize,
    /// Live images whose content was brought across (or found there).
    pub images: usize,
    /// The destination's default version afterwards.
    pub default: Option<u32>,
    /// Items sent and their encoded bytes.
    pub items: u64,
    /// Encoded bytes sent.
    pub bytes: u64,
}

fn code_of(e: &anyhow::Error) -> Option<&str> {
    e.chain().find_map(|c| {
        c.downcast_ref::<CatalogError>()
            .map(CatalogError::code)
            .or_else(|| c.downcast_ref::<RemoteError>().map(|r| r.code.as_str()))
    })
}

/// Copies `root`'s closure from `src` to `dst`. A cluster source is read into its cache
/// first (what the cache holds already is not read again).
fn copy(src: &Library, dst: &Library, root: &Digest) -> Result<SyncStats> {
    match (&src.remote, &dst.remote) {
        (None, None) => sync::push_to(src.store()?, dst.store()?, root),
        (None, Some(to)) => sync::push(src.store()?, to, root),
        (Some(from), None) => sync::pull(dst.store()?, from, root),
        (Some(from), Some(to)) => {
            sync::pull(src.store()?, from, root)?;
            sync::push(src.store()?, to, root)
        }
    }
}

/// The first version where two chains differ, if they do within the shorter one.
fn diverges(ours: &Named, theirs: &Named) -> Option<usize> {
    ours.versions
        .iter()
        .zip(&theirs.versions)
        .position(|(a, b)| a.image != b.image)
}

/// Brings each of `refs` (names with their whole chains, or digests) from `src` to `dst`.
pub fn transfer(
    src: &Library,
    dst: &Library,
    refs: &[String],
    opts: &Options,
) -> Result<Vec<Moved>> {
    if opts.rename.is_some() && refs.len() != 1 {
        bail!("--rename takes one name at a time");
    }
    let mut out = Vec::new();
    for r in refs {
        if let Ok(d) = r.parse::<Digest>() {
            src.image(d)?; // refused like an unknown name if the caller may not see it
            let s = with_lease(dst, &[d], || copy(src, dst, &d))?;
            out.push(Moved {
                source: r.clone(),
                name: None,
                versions: 0,
                images: 1,
                default: None,
                items: s.items,
                bytes: s.bytes,
            });
            continue;
        }
        if r.contains('@') || r.contains(':') {
            bail!("{r:?}: give a name (it goes with its whole version chain) or a digest");
        }
        out.push(transfer_name(src, dst, r, opts, None)?);
    }
    Ok(out)
}

/// Brings `name` with its chain from `src` to `dst`, setting `acl` there if given.
pub(crate) fn transfer_name(
    src: &Library,
    dst: &Library,
    name: &str,
    opts: &Options,
    acl: Option<ImportedAcl>,
) -> Result<Moved> {
    let theirs = src
        .named(name)?
        .with_context(|| format!("no image named {name:?} at {}", src.label))?;
    let to = opts.rename.clone().unwrap_or_else(|| name.to_string());
    // Refuse a conflict before moving any content.
    if let Some(ours) = dst.named(&to)? {
        if let Some(i) = diverges(&ours, &theirs).filter(|_| !opts.force) {
            bail!(
                "{to} has another history at {}: its version {} is {} there and {} here; \
                 bring it under another name (--rename NEW) or add these versions after \
                 its own (--force)",
                dst.label,
                i + 1,
                ours.versions[i].image.to_text(),
                theirs.versions[i].image.to_text()
            );
        }
    }
    let mut seen = std::collections::HashSet::new();
    let live: Vec<Digest> = theirs
        .versions
        .iter()
        .filter(|v| !v.deleted && seen.insert(v.image))
        .map(|v| v.image)
        .collect();
    let mut versions = Vec::with_capacity(theirs.versions.len());
    for v in &theirs.versions {
        let rec = src.image(v.image)?.unwrap_or_else(|| ImageRecord {
            v: 1,
            digest: v.image,
            state: mirage_node::catalog::ImageState::Active,
            created: v.created,
            parent: None,
            creator: v.creator.clone(),
            description: String::new(),
            labels: Default::default(),
        });
        versions.push(ImportedVersion {
            image: v.image,
            created: v.created,
            creator: v.creator.clone(),
            deleted: v.deleted,
            parent: rec.parent,
            description: rec.description,
            labels: rec.labels,
        });
    }
    let mut moved = Moved {
        source: name.to_string(),
        name: Some(to.clone()),
        versions: theirs.versions.len(),
        images: live.len(),
        default: None,
        items: 0,
        bytes: 0,
    };
    let answer = with_lease(dst, &live, || {
        for d in &live {
            let s = copy(src, dst, d)?;
            moved.items += s.items;
            moved.bytes += s.bytes;
        }
        dst.submit(Command::Import {
            name: to.clone(),
            versions,
            default: theirs.default,
            acl,
            force: opts.force,
        })
    })?;
    moved.default = answer.version;
    Ok(moved)
}

/// Runs `f` under an upload lease on `roots` when `dst` is a cluster (its garbage collection
/// keeps what is in flight); the lease is released however `f` ends.
fn with_lease<T>(dst: &Library, roots: &[Digest], f: impl FnOnce() -> Result<T>) -> Result<T> {
    let Some(r) = &dst.remote else {
        return f();
    };
    let id = r.lease(roots)?;
    let out = f();
    if let Err(e) = r.release(&id) {
        tracing::warn!("releasing upload lease {id}: {e:#}");
    }
    out
}

/// Reports the process's transfer counters on stderr while it lives: a line redrawn every
/// second on a terminal, or (`json`) one JSON event per second
/// (`{"event":"progress","items","bytes","seconds"}`) and a last one when it ends.
#[derive(Debug)]
pub struct Progress {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting (nothing on a stderr that is not a terminal, unless `json`).
    pub fn start(json: bool) -> Progress {
        use std::io::IsTerminal;
        let tty = std::io::stderr().is_terminal();
        if !json && !tty {
            return Progress {
                stop: None,
                thread: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t0 = std::time::Instant::now();
        let thread = std::thread::spawn(move || loop {
            let done = !matches!(
                rx.recv_timeout(std::time::Duration::from_secs(1)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            );
            let items = sync::MOVED.items.load(std::sync::atomic::Ordering::Relaxed);
            let bytes = sync::MOVED.bytes.load(std::sync::atomic::Ordering::Relaxed);
            let secs = t0.elapsed().as_secs_f64();
            if json {
                eprintln!(
                    "{}",
                    serde_json::json!({"event": "progress", "items": items, "bytes": bytes,
                                       "seconds": (secs * 10.0).round() / 10.0, "done": done})
                );
            } else {
                eprint!(
                    "\r{items} items, {:.1} MB, {:.1} MB/s{}",
                    bytes as f64 / 1e6,
                    bytes as f64 / 1e6 / secs.max(0.001),
                    if done { "\n" } else { "   " }
                );
            }
            if done {
                break;
            }
        });
        Progress {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
