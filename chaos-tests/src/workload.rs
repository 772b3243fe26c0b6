//! The workload: concurrent clients storing generated disk images (`mirage checkin` against
//! the cluster), adding them as versions of shared names, moving defaults, marking versions
//! deleted, changing ACLs, reading names (linearizable reads) and checking images out into an
//! empty cache — every operation recorded in the [`History`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirage_node::catalog::Query;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::check::linear::{CatOp, CatRet, NameView};
use crate::history::{History, Op, Outcome};

/// The answer of a request that never reached a node (connection refused): left out of the
/// checks, since it cannot have changed anything.
pub const NOT_SENT: &str = "not_sent";
/// Users the ACL operations grant and revoke (added before the run).
pub const USERS: [&str; 2] = ["alice", "bob"];
/// Names in use at a time; a new set every [`NAME_EPOCH_SECS`] (bounded histories per name).
pub const NAMES: usize = 4;
/// Seconds a set of names is in use.
pub const NAME_EPOCH_SECS: u64 = 90;
/// Longest a `mirage` command may take before it is killed and counted as failed.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(90);

/// An image a client stored and the store acknowledged.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Image digest.
    pub image: String,
    /// SHA-256 of the disk image file checked in.
    pub sha256: String,
    /// The client's cache store, which holds the image's whole closure.
    pub cache: PathBuf,
}

/// What the clients share.
#[derive(Debug)]
pub struct Shared {
    /// The history.
    pub history: History,
    /// Acknowledged images.
    pub stored: Mutex<Vec<Stored>>,
    /// Set to stop the clients.
    pub stop: AtomicBool,
    /// Start of the run (for the name epochs).
    pub start: Instant,
    /// Base seed of the run.
    pub seed: u64,
}

/// How clients reach the cluster.
#[derive(Clone, Debug)]
pub struct Target {
    /// Node base URLs.
    pub urls: Vec<String>,
    /// Admin token.
    pub token: String,
    /// The `mirage` binary.
    pub mirage: PathBuf,
}

/// One client.
#[derive(Debug)]
pub struct Client {
    id: usize,
    rng: StdRng,
    target: Target,
    dir: PathBuf,
    http: reqwest::blocking::Client,
    /// Versions this client has seen per name.
    known: BTreeMap<String, u32>,
    made: u64,
}

impl Client {
    /// Client `id` of a run with `seed`, working in `dir`.
    pub fn new(id: usize, seed: u64, target: Target, dir: &Path) -> std::io::Result<Client> {
        std::fs::create_dir_all(dir)?;
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Client {
            id,
            rng: StdRng::seed_from_u64(
                seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(id as u64 + 1)),
            ),
            target,
            dir: dir.to_path_buf(),
            http,
            known: BTreeMap::new(),
            made: 0,
        })
    }

    /// Runs operations until `shared.stop`.
    pub fn run(mut self, shared: Arc<Shared>) {
        while !shared.stop.load(Ordering::SeqCst) {
            self.one(&shared);
        }
    }

    fn name(&mut self, shared: &Shared) -> String {
        let epoch = shared.start.elapsed().as_secs() / NAME_EPOCH_SECS;
        format!("n{epoch}-{}", self.rng.gen_range(0..NAMES))
    }

    /// One operation, chosen at random.
    pub fn one(&mut self, shared: &Shared) {
        let images = shared.stored.lock().map(|s| s.len()).unwrap_or(0);
        let roll = self.rng.gen_range(0..100);
        let name = self.name(shared);
        let seen = self.known.get(&name).copied().unwrap_or(0);
        let version = self.rng.gen_range(1..=seen + 1);
        let op = match roll {
            _ if images == 0 || roll < 7 => return self.store(shared),
            7..=21 => return self.checkout(shared),
            22..=46 => {
                let pick = self.rng.gen_range(0..images);
                let image = shared
                    .stored
                    .lock()
                    .ok()
                    .and_then(|s| s.get(pick).map(|x| x.image.clone()))
                    .unwrap_or_default();
                CatOp::Checkin { name, image }
            }
            47..=71 => CatOp::Read { name },
            72..=81 => CatOp::SetDefault { name, version },
            82..=89 => CatOp::Delete { name, version },
            _ => {
                let user = USERS[self.rng.gen_range(0..USERS.len())].to_string();
                if self.rng.gen_bool(0.5) {
                    CatOp::Grant { name, user }
                } else {
                    CatOp::Revoke { name, user }
                }
            }
        };
        self.catalog_op(shared, op);
    }

    /// Runs a catalog operation, recorded in the history; answers what it answered.
    pub fn catalog_op(&mut self, shared: &Shared, op: CatOp) -> CatRet {
        let call = shared
            .history
            .invoke(self.id, &Op::Catalog { op: op.clone() });
        let ret = self.catalog(&op);
        match &ret {
            CatRet::Version(v) => self.note(op.name(), *v),
            CatRet::Named(Some(n)) => self.note(op.name(), n.versions.len() as u32),
            _ => {}
        }
        shared
            .history
            .complete(self.id, call, Outcome::Catalog { ret: ret.clone() });
        ret
    }

    fn note(&mut self, name: &str, versions: u32) {
        let k = self.known.entry(name.to_string()).or_insert(0);
        *k = (*k).max(versions);
    }

    fn url(&mut self) -> String {
        let i = self.rng.gen_range(0..self.target.urls.len());
        self.target.urls[i].clone()
    }

    /// A catalog command or read over HTTP to a random node, classified for the checker.
    fn catalog(&mut self, op: &CatOp) -> CatRet {
        let url = self.url();
        let (path, body) = match op {
            CatOp::Read { name } => (
                "/v1/catalog/query",
                serde_json::to_value(Query::Named { name: name.clone() }),
            ),
            _ => ("/v1/catalog/command", serde_json::to_value(op.command())),
        };
        let Ok(body) = body else {
            return CatRet::Unknown;
        };
        let r = match self
            .http
            .post(format!("{url}{path}"))
            .bearer_auth(&self.target.token)
            .json(&body)
            .send()
        {
            Ok(r) => r,
            // Never sent (connection refused): it cannot have taken effect.
            Err(e) if e.is_connect() && !e.is_timeout() => return CatRet::Err(NOT_SENT.into()),
            Err(_) => return CatRet::Unknown,
        };
        let status = r.status();
        let v: Value = match r.json() {
            Ok(v) => v,
            Err(_) => return CatRet::Unknown,
        };
        if status.is_success() {
            return match op {
                CatOp::Read { .. } => {
                    view(&v["named"]).map_or(CatRet::Unknown, |n| CatRet::Named(Some(n)))
                }
                CatOp::Checkin { .. } => v["version"]
                    .as_u64()
                    .map_or(CatRet::Unknown, |n| CatRet::Version(n as u32)),
                _ => CatRet::Ok,
            };
        }
        let code = v["error"]["code"].as_str().unwrap_or_default();
        match (op, code) {
            (CatOp::Read { .. }, "not_found") => CatRet::Named(None),
            (
                _,
                "not_found" | "no_such_version" | "deleted" | "exists" | "denied" | "locked"
                | "conflict" | "invalid" | "no_such_user",
            ) => CatRet::Err(code.to_string()),
            _ => CatRet::Unknown,
        }
    }

    /// Generates an image and stores it with `mirage checkin` (no name).
    fn store(&mut self, shared: &Shared) {
        self.made += 1;
        let file = self.dir.join(format!("img-{}.raw", self.made));
        let made = if self.rng.gen_ratio(1, 4) {
            ext4_image(&mut self.rng, &self.dir, &file)
        } else {
            raw_image(&mut self.rng, shared.seed, &file)
        };
        let sha256 = match made.and_then(|()| sha256_file(&file)) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("generating {}: {e}", file.display());
                return;
            }
        };
        let op = Op::Store {
            file: file.display().to_string(),
            sha256: sha256.clone(),
        };
        let call = shared.history.invoke(self.id, &op);
        let cache = self.dir.join("cache");
        let outcome = match self.mirage(&cache, &["checkin", &file.to_string_lossy()]) {
            Ok(v) => match v["image"].as_str() {
                Some(image) => {
                    if let Ok(mut s) = shared.stored.lock() {
                        s.push(Stored {
                            image: image.to_string(),
                            sha256,
                            cache,
                        });
                    }
                    Outcome::Stored {
                        image: image.to_string(),
                    }
                }
                None => Outcome::Failed {
                    error: format!("no image digest in {v}"),
                },
            },
            Err(error) => Outcome::Failed { error },
        };
        let _ = std::fs::remove_file(&file);
        shared.history.complete(self.id, call, outcome);
    }

    /// Checks an acknowledged image out into an empty cache.
    fn checkout(&mut self, shared: &Shared) {
        let pick = {
            let Ok(s) = shared.stored.lock() else { return };
            if s.is_empty() {
                return;
            }
            s[self.rng.gen_range(0..s.len())].image.clone()
        };
        self.checkout_image(shared, pick);
    }

    /// Checks `pick` out into an empty cache, recorded in the history.
    pub fn checkout_image(&mut self, shared: &Shared, pick: String) {
        let call = shared.history.invoke(
            self.id,
            &Op::Checkout {
                image: pick.clone(),
            },
        );
        let cache = self.dir.join("checkout-cache");
        let out = self.dir.join("checkout.img");
        let _ = std::fs::remove_dir_all(&cache);
        let _ = std::fs::remove_file(&out);
        let outcome = match self.mirage(&cache, &["checkout", &pick, "-o", &out.to_string_lossy()])
        {
            Ok(_) => match sha256_file(&out) {
                Ok(sha256) => Outcome::CheckedOut { sha256 },
                Err(e) => Outcome::Failed {
                    error: e.to_string(),
                },
            },
            Err(error) => Outcome::Failed { error },
        };
        let _ = std::fs::remove_dir_all(&cache);
        let _ = std::fs::remove_file(&out);
        shared.history.complete(self.id, call, outcome);
    }

    /// Runs `mirage --json` against the cluster with `cache`; its JSON output, or why it
    /// failed (error exit, timeout).
    fn mirage(&self, cache: &Path, args: &[&str]) -> Result<Value, String> {
        let out_path = self.dir.join("cli.out");
        let err_path = self.dir.join("cli.err");
        let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
        let err = std::fs::File::create(&err_path).map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.target.mirage)
            .arg("--cluster")
            .arg(self.target.urls.join(","))
            .args(["--token", &self.target.token, "--json", "--store"])
            .arg(cache)
            .args(args)
            .env("MIRAGE_LOG", "error")
            .env("MIRAGE_NODE_TIMEOUT", "5")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + CLI_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("timed out after {} s", CLI_TIMEOUT.as_secs()));
                }
            }
        };
        if !status.success() {
            let e = std::fs::read_to_string(&err_path).unwrap_or_default();
            return Err(format!("{status}: {}", e.trim()));
        }
        let text = std::fs::read_to_string(&out_path).map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    }
}

/// A named image as a read shows it, from the node's JSON (`Named`).
pub fn view(v: &Value) -> Option<NameView> {
    let versions = v["versions"]
        .as_array()?
        .iter()
        .map(|x| Some((x["image"].as_str()?.to_string(), x["deleted"].as_bool()?)))
        .collect::<Option<Vec<_>>>()?;
    let set = |k: &str| -> Option<std::collections::BTreeSet<String>> {
        v[k].as_array()?
            .iter()
            .map(|x| x.as_str().map(String::from))
            .collect()
    };
    Some(NameView {
        versions,
        default: u32::try_from(v["default"].as_u64()?).ok()?,
        readers: set("readers")?,
        writers: set("writers")?,
    })
}

/// SHA-256 of a file, in the digests' text form.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    mirage_format::Digest::of(mirage_format::Algorithm::Sha256, &bytes)
        .map(|d| d.to_text())
        .map_err(std::io::Error::other)
}

const BLOCK: usize = 64 * 1024;

/// A block shared by every run with the same seed (so images share content).
fn pool_block(seed: u64, k: u64) -> Vec<u8> {
    let mut r = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(k));
    let mut b = vec![0u8; BLOCK];
    r.fill(&mut b[..]);
    b
}

/// A raw disk image of 0.5–2 MiB: zero runs, blocks from a shared pool and unique blocks.
fn raw_image(rng: &mut StdRng, seed: u64, path: &Path) -> std::io::Result<()> {
    let blocks = rng.gen_range(8..=32);
    let mut data = Vec::with_capacity(blocks * BLOCK);
    for _ in 0..blocks {
        match rng.gen_range(0..10) {
            0..=1 => data.extend(std::iter::repeat_n(0u8, BLOCK)),
            2..=5 => data.extend(pool_block(seed, rng.gen_range(0..32))),
            _ => {
                let mut b = vec![0u8; BLOCK];
                rng.fill(&mut b[..]);
                data.extend(b);
            }
        }
    }
    std::fs::write(path, data)
}

/// An 8 MiB ext4 filesystem image (no partition table) holding a few generated files.
fn ext4_image(rng: &mut StdRng, dir: &Path, path: &Path) -> std::io::Result<()> {
    let tree = dir.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("etc"))?;
    for i in 0..rng.gen_range(3..12) {
        let mut b = vec![0u8; rng.gen_range(1..150_000)];
        rng.fill(&mut b[..]);
        std::fs::write(tree.join(format!("etc/file{i}")), b)?;
    }
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(path)
        .arg("8M")
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "mke2fs: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}
