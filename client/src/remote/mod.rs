//! Remote mode: the `mirage` verbs against a cluster (`--cluster URL --token T`, or
//! `MIRAGE_CLUSTER` / `MIRAGE_TOKEN`). The catalog is the cluster's (commands and queries over
//! HTTP, answered under the token's user); item content moves between the cluster and a local
//! cache store with [`sync`] — checkin indexes into the cache and pushes what the cluster
//! lacks, read verbs pull what the cache lacks and then run exactly as on an embedded store.

mod handoff;
pub mod shard;
pub mod sync;

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use mirage_format::Digest;
use mirage_node::api::catalog::CommandAnswer;
use mirage_node::catalog::{Command, Query, QueryAnswer};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest number of digests per has/get request.
pub const BATCH_DIGESTS: usize = 1000;

/// A cluster (or a standalone node) reached over HTTP. Given several node URLs, a request
/// that cannot connect to one goes to the next (and later requests start there).
#[derive(Debug)]
pub struct Remote {
    bases: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    http: reqwest::blocking::Client,
    token: String,
    /// The client's zone: reads go to replicas there first.
    zone: Option<String>,
    /// The storage nodes, once the layout was read (`None`: no layout, a standalone node).
    shards: std::sync::OnceLock<Option<shard::Shards>>,
    /// Longest wait for a response to start, and between two reads of its body.
    timeout: Duration,
}

/// The error body the node sends.
#[derive(Debug, serde::Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Debug, serde::Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
}

/// A refusal from the node, with its stable code.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({status} {code})")]
pub struct RemoteError {
    /// HTTP status.
    pub status: u16,
    /// Stable code (`docs/API.md`).
    pub code: String,
    /// Message.
    pub message: String,
}

impl Remote {
    /// A client of the nodes at `urls` (`http://host:port`, comma-separated) authenticating
    /// with `token`.
    pub fn new(urls: &str, token: &str) -> Result<Remote> {
        let bases: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if bases.is_empty() {
            bail!("--cluster: give at least one node URL");
        }
        for b in &bases {
            if !(b.starts_with("http://") || b.starts_with("https://")) {
                bail!("--cluster {b:?}: give http:// or https:// URLs");
            }
        }
        let mut headers = reqwest::header::HeaderMap::new();
        let auth = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| anyhow!("the token contains characters a header cannot carry"))?;
        headers.insert(reqwest::header::AUTHORIZATION, auth);
        let http = reqwest::blocking::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(600))
            .build()?;
        Ok(Remote {
            bases,
            current: Default::default(),
            http,
            token: token.trim().to_string(),
            zone: None,
            shards: std::sync::OnceLock::new(),
            timeout: Duration::from_secs(600),
        })
    }

    /// The same client, giving up on a node that sends nothing for `t` (a storage node that
    /// hangs is then skipped for another replica).
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The same client, reading from storage nodes in `zone` first.
    pub fn with_zone(mut self, zone: Option<String>) -> Self {
        self.zone = zone;
        self
    }

    /// A client of the one node at `url`, with the same token.
    pub fn at(&self, url: &str) -> Result<Remote> {
        Remote::new(url, &self.token)
    }

    /// The cluster's storage nodes and placement, read from the catalog's layout once; `None`
    /// when the catalog has no layout (a standalone node holds every item itself).
    pub fn shards(&self) -> Result<Option<&shard::Shards>> {
        if let Some(s) = self.shards.get() {
            return Ok(s.as_ref());
        }
        let s = shard::Shards::connect(self, self.zone.clone())?;
        Ok(self.shards.get_or_init(|| s).as_ref())
    }

    /// The URL of the node requests go to now.
    pub fn url(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    /// Sends the request `build` makes for a node's base URL, to the current node, then to
    /// each other one while the connection itself fails.
    fn send(
        &self,
        what: &str,
        build: impl Fn(&str) -> reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response> {
        use std::sync::atomic::Ordering;
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..self.bases.len() {
            let i = (start + k) % self.bases.len();
            let base = &self.bases[i];
            match build(base).timeout(self.timeout).send() {
                Ok(r) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e) if e.is_connect() => {
                    tracing::warn!("{base}: {e}; trying the next node");
                    last = Some(anyhow::Error::new(e).context(format!("{what} {base}")));
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("{what} {base}"))),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no node to send {what} to")))
    }

    fn check(&self, r: reqwest::blocking::Response) -> Result<reqwest::blocking::Response> {
        let status = r.status();
        if status.is_success() {
            return Ok(r);
        }
        let text = r.text().unwrap_or_default();
        let e = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => RemoteError {
                status: status.as_u16(),
                code: b.error.code,
                message: b.error.message,
            },
            Err(_) => RemoteError {
                status: status.as_u16(),
                code: "http".into(),
                message: text.chars().take(300).collect(),
            },
        };
        Err(e.into())
    }

    pub(crate) fn post_json<Q: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
    ) -> Result<T> {
        let r = self.send(&format!("POST {path}"), |b| {
            self.http.post(format!("{b}{path}")).json(body)
        })?;
        Ok(self.check(r)?.json()?)
    }

    pub(crate) fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.send(&format!("GET {path}"), |b| {
            self.http.get(format!("{b}{path}"))
        })?;
        Ok(self.check(r)?.json()?)
    }

    /// Applies a catalog command as the token's user.
    pub fn command(&self, cmd: &Command) -> Result<CommandAnswer> {
        self.post_json("/v1/catalog/command", cmd)
    }

    /// Takes an upload lease on `roots` for an hour: the items being sent are protected from
    /// garbage collection until the image is committed (or the lease ends). Answers its id.
    pub fn lease(&self, roots: &[Digest]) -> Result<String> {
        // A random id: the hash of a fresh random token, shortened.
        let id = mirage_node::auth::new_token().1[..24].to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.command(&Command::Lease {
            id: id.clone(),
            roots: roots.to_vec(),
            expires: mirage_node::catalog::Time {
                secs: now.as_secs() as i64 + 3600,
                nanos: 0,
            },
        })?;
        Ok(id)
    }

    /// Releases a lease taken with [`Remote::lease`].
    pub fn release(&self, id: &str) -> Result<()> {
        self.command(&Command::ReleaseLease { id: id.into() })?;
        Ok(())
    }

    /// The cluster's data layout: the current version, or version `v` (`None`: the catalog
    /// has none).
    pub fn layout(&self, v: Option<u64>) -> Result<Option<mirage_cluster_config::Layout>> {
        match self.query(&Query::Layout { version: v })? {
            QueryAnswer::Layout(l) => Ok(l),
            other => bail!("unexpected answer to a layout query: {other:?}"),
        }
    }

    /// The current layout and the one before it, if any.
    pub fn layouts(
        &self,
    ) -> Result<
        Option<(
            mirage_cluster_config::Layout,
            Option<mirage_cluster_config::Layout>,
        )>,
    > {
        let Some(now) = self.layout(None)? else {
            return Ok(None);
        };
        let before = match now.version.checked_sub(1).filter(|v| *v > 0) {
            Some(v) => self.layout(Some(v))?,
            None => None,
        };
        Ok(Some((now, before)))
    }

    /// Runs a catalog query as the token's user.
    pub fn query(&self, q: &Query) -> Result<QueryAnswer> {
        self.post_json("/v1/catalog/query", q)
    }

    /// The token's user name.
    pub fn whoami(&self) -> Result<String> {
        match self.query(&Query::Whoami)? {
            QueryAnswer::User(u) => Ok(u.name),
            other => bail!("unexpected answer to whoami: {other:?}"),
        }
    }

    /// Which of `ds` the node holds.
    pub fn has(&self, ds: &[Digest]) -> Result<Vec<bool>> {
        #[derive(serde::Deserialize)]
        struct Has {
            present: Vec<bool>,
        }
        let mut out = Vec::with_capacity(ds.len());
        for batch in ds.chunks(BATCH_DIGESTS) {
            let texts: Vec<String> = batch.iter().map(Digest::to_text).collect();
            let h: Has = self.post_json("/v1/items/has", &serde_json::json!({"digests": texts}))?;
            if h.present.len() != batch.len() {
                bail!(
                    "the node answered {} presences for {} digests",
                    h.present.len(),
                    batch.len()
                );
            }
            out.extend(h.present);
        }
        Ok(out)
    }

    /// Uploads encoded items, children before parents; returns how many were new.
    pub fn put(&self, items: &[Vec<u8>]) -> Result<u64> {
        let mut body = Vec::with_capacity(items.iter().map(|i| i.len() + 4).sum());
        for i in items {
            body.extend_from_slice(&(i.len() as u32).to_be_bytes());
            body.extend_from_slice(i);
        }
        let body = bytes::Bytes::from(body);
        let r = self.send("POST /v1/items", |b| {
            self.http.post(format!("{b}/v1/items")).body(body.clone())
        })?;
        let v: serde_json::Value = self.check(r)?.json()?;
        Ok(v["new"].as_u64().unwrap_or(0))
    }

    /// Records on this node where it holds the given children of each parent (location
    /// tables for parents stored elsewhere; see `docs/CLUSTER.md`). Returns entries added.
    pub fn tables(&self, tables: &[(Digest, Vec<Digest>)]) -> Result<u64> {
        let body = serde_json::json!({
            "tables": tables
                .iter()
                .map(|(p, cs)| serde_json::json!({
                    "parent": p.to_text(),
                    "children": cs.iter().map(Digest::to_text).collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>(),
        });
        let r = self.send("POST /v1/items/tables", |b| {
            self.http.post(format!("{b}/v1/items/tables")).json(&body)
        })?;
        let v: serde_json::Value = self.check(r)?.json()?;
        Ok(v["added"].as_u64().unwrap_or(0))
    }

    /// Downloads items of `image` (which a user other than an admin must name; see
    /// `docs/API.md`), streaming: `f` gets each encoded item as it arrives. Each batch is
    /// read in the context of its items' parents (`parents`: child → a parent that refers to
    /// it), so the node finds them in the parents' location tables instead of its index
    /// (unless `MIRAGE_LOCATION_TABLES=0`, a switch for benchmarks). Digests the node does
    /// not hold are skipped (the caller notices what is missing); a damaged copy on the node
    /// is an error.
    pub fn get_each(
        &self,
        ds: &[Digest],
        image: Option<&Digest>,
        parents: &sync::Parents,
        mut f: impl FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        use std::io::Read;
        let tables = std::env::var("MIRAGE_LOCATION_TABLES").map_or(true, |v| v != "0");
        for batch in ds.chunks(BATCH_DIGESTS) {
            let texts: Vec<String> = batch.iter().map(Digest::to_text).collect();
            let mut contexts: Vec<Digest> = if tables {
                batch
                    .iter()
                    .filter_map(|d| parents.get(d))
                    .copied()
                    .collect()
            } else {
                Vec::new()
            };
            contexts.sort_unstable();
            contexts.dedup();
            let body = serde_json::json!({
                "digests": texts,
                "image": image.map(Digest::to_text),
                "contexts": contexts.iter().map(Digest::to_text).collect::<Vec<_>>(),
            });
            let r = self.send("POST /v1/items/get", |b| {
                self.http.post(format!("{b}/v1/items/get")).json(&body)
            })?;
            let url = format!("{}/v1/items/get", self.url());
            let mut r = std::io::BufReader::with_capacity(1 << 20, self.check(r)?);
            loop {
                let mut head = [0u8; 5];
                match r.read(&mut head[..1])? {
                    0 => break,
                    _ => r
                        .read_exact(&mut head[1..])
                        .with_context(|| format!("{url}: the answer ends inside a frame header"))?,
                }
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                if len > mirage_format::item::MAX_ITEM + 1024 {
                    bail!("{url}: a frame of {len} bytes is longer than any item");
                }
                let mut payload = vec![0u8; len];
                r.read_exact(&mut payload)
                    .with_context(|| format!("{url}: the answer ends inside a frame"))?;
                match head[0] {
                    0 => f(payload)?,
                    1 => {}
                    2 => bail!(
                        "{url}: the node holds a damaged copy: {}",
                        String::from_utf8_lossy(&payload)
                    ),
                    t => bail!("{url}: unknown frame tag {t}"),
                }
            }
        }
        Ok(())
    }
}
