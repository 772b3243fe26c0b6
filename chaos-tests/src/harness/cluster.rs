//! A cluster of real `mirage-node` processes in network namespaces: topology, bootstrap of
//! the catalog group, and the process faults (SIGKILL and restart, SIGSTOP and SIGCONT).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::disk::Disk;
use super::net::Net;
use super::HarnessError;

/// Port every node listens on (each has an address of its own).
pub const PORT: u16 = 7300;

/// How to build the cluster.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Storage nodes (every one a catalog voter when odd, all but the last when even).
    pub nodes: usize,
    /// Zones the nodes are spread over, round robin.
    pub zones: usize,
    /// Replicas per item.
    pub replication: usize,
    /// Replicas a write waits for.
    pub write_quorum: usize,
    /// Directory of the `mirage-node` and `mirage` binaries.
    pub bin_dir: PathBuf,
    /// Working directory (disks, logs, topology).
    pub dir: PathBuf,
    /// Size of each node's data disk, MiB.
    pub disk_mb: u64,
    /// Seconds between anti-entropy rounds.
    pub repair_every: u64,
    /// Seconds after which an unreachable node is declared dead (0: never).
    pub dead_after: u64,
}

/// One node process.
#[derive(Debug)]
pub struct NodeProc {
    /// Id in the topology (1-based).
    pub id: usize,
    /// Base URL.
    pub url: String,
    /// Its data disk.
    pub disk: Disk,
    child: Option<Child>,
    paused: bool,
}

impl NodeProc {
    /// Whether the process runs (it may be paused).
    pub fn up(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is stopped with SIGSTOP.
    pub fn paused(&self) -> bool {
        self.paused
    }
}

/// The running cluster; every process is killed when it is dropped.
#[derive(Debug)]
pub struct Cluster {
    /// How it was built.
    pub spec: Spec,
    /// Its network.
    pub net: Net,
    /// Its nodes, by id - 1.
    pub nodes: Vec<NodeProc>,
    /// The admin's bearer token.
    pub token: String,
    /// The cluster secret (nodes authenticate each other with it).
    pub secret: String,
    config: PathBuf,
    http: reqwest::blocking::Client,
}

impl Cluster {
    /// Creates the network and disks, starts every node and forms the catalog group.
    pub fn start(spec: Spec) -> Result<Cluster, HarnessError> {
        std::fs::create_dir_all(&spec.dir).map_err(|e| HarnessError::io(&spec.dir, e))?;
        let net = Net::create(spec.nodes)?;
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let secret_file = spec.dir.join("cluster.secret");
        write(&secret_file, &format!("{secret}\n"))?;
        let config = spec.dir.join("cluster.toml");
        write(&config, &topology(&spec, &net, &secret_file))?;
        let mut nodes = Vec::new();
        for id in 1..=spec.nodes {
            let disk = Disk::create(
                &spec.dir.join(format!("disk{id}.img")),
                &spec.dir.join(format!("node{id}")),
                spec.disk_mb,
            )?;
            nodes.push(NodeProc {
                id,
                url: format!("http://{}:{PORT}", net.ip(id)),
                disk,
                child: None,
                paused: false,
            });
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        let mut c = Cluster {
            spec,
            net,
            nodes,
            token: String::new(),
            secret,
            config,
            http,
        };
        for id in 1..=c.spec.nodes {
            c.spawn(id, id == 1)?;
        }
        let token_file = c.store(1).join("admin.token");
        let deadline = Instant::now() + Duration::from_secs(60);
        c.token = loop {
            if let Ok(t) = std::fs::read_to_string(&token_file) {
                break t.trim().to_string();
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Setup(format!(
                    "node 1 did not start the catalog group within 60 s (see {})",
                    c.log(1).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let voters = c.voters();
        for id in 2..=c.spec.nodes {
            let addr = format!("{}:{PORT}", c.net.ip(id));
            c.admin(
                1,
                "/v1/admin/raft/add-learner",
                json!({"id": id, "addr": addr}),
            )?;
            if id <= voters {
                c.admin(1, "/v1/admin/raft/promote", json!({"id": id}))?;
            }
        }
        Ok(c)
    }

    /// Catalog voters: every node when odd, all but the last when even.
    pub fn voters(&self) -> usize {
        let n = self.spec.nodes;
        if n % 2 == 0 {
            n - 1
        } else {
            n
        }
    }

    /// Node `id`'s store directory (on its data disk).
    pub fn store(&self, id: usize) -> PathBuf {
        self.nodes[id - 1].disk.path().join("store")
    }

    /// Node `id`'s log file.
    pub fn log(&self, id: usize) -> PathBuf {
        self.spec.dir.join(format!("node{id}.log"))
    }

    /// The base URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// The `mirage` binary.
    pub fn mirage(&self) -> PathBuf {
        self.spec.bin_dir.join("mirage")
    }

    fn spawn(&mut self, id: usize, init: bool) -> Result<(), HarnessError> {
        let log_path = self.log(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| HarnessError::io(&log_path, e))?;
        let err = log
            .try_clone()
            .map_err(|e| HarnessError::io(&log_path, e))?;
        let exe = self.spec.bin_dir.join("mirage-node");
        let mut cmd = self.net.command(id, &exe);
        cmd.arg("serve")
            .arg("--store")
            .arg(self.store(id))
            .arg("--cluster")
            .arg(&self.config)
            .args(["--id", &id.to_string()])
            .args(["--repair-every", &self.spec.repair_every.to_string()])
            .args(["--dead-after", &self.spec.dead_after.to_string()])
            .env("MIRAGE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        if init {
            cmd.arg("--init");
        }
        let child = cmd.spawn().map_err(|e| HarnessError::io(&exe, e))?;
        let n = &mut self.nodes[id - 1];
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    fn signal(&self, id: usize, sig: &str) -> Result<(), HarnessError> {
        if let Some(c) = &self.nodes[id - 1].child {
            super::sh("kill", &[sig, &c.id().to_string()])?;
        }
        Ok(())
    }

    /// SIGKILL (a crash: nothing flushed that was not synced).
    pub fn kill(&mut self, id: usize) -> Result<(), HarnessError> {
        if self.nodes[id - 1].paused {
            self.signal(id, "-CONT")?;
        }
        if let Some(mut c) = self.nodes[id - 1].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[id - 1].paused = false;
        Ok(())
    }

    /// Starts a killed node again.
    pub fn restart(&mut self, id: usize) -> Result<(), HarnessError> {
        if self.nodes[id - 1].child.is_none() {
            let _ = writeln!(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(self.log(id))
                    .map_err(|e| HarnessError::io(&self.log(id), e))?,
                "---- chaos: restart ----"
            );
            self.spawn(id, false)?;
        }
        Ok(())
    }

    /// SIGSTOP: the process hangs, its sockets stay open.
    pub fn pause(&mut self, id: usize) -> Result<(), HarnessError> {
        if self.nodes[id - 1].child.is_some() && !self.nodes[id - 1].paused {
            self.signal(id, "-STOP")?;
            self.nodes[id - 1].paused = true;
        }
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: usize) -> Result<(), HarnessError> {
        if self.nodes[id - 1].paused {
            self.signal(id, "-CONT")?;
            self.nodes[id - 1].paused = false;
        }
        Ok(())
    }

    /// Node processes that exited on their own (not killed by the harness): their ids and
    /// exit statuses. They are reaped and count as down.
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            if let Some(c) = &mut n.child {
                if let Ok(Some(status)) = c.try_wait() {
                    out.push((n.id, status.to_string()));
                    n.child = None;
                    n.paused = false;
                }
            }
        }
        out
    }

    /// Every fault undone: routes restored, processes resumed and restarted, disks freed.
    pub fn heal(&mut self) -> Result<(), HarnessError> {
        self.net.heal()?;
        for id in 1..=self.spec.nodes {
            self.nodes[id - 1].disk.free()?;
            self.resume(id)?;
            self.restart(id)?;
        }
        Ok(())
    }

    /// GET `path` on node `id` as the admin.
    pub fn get(&self, id: usize, path: &str) -> Result<Value, HarnessError> {
        let url = format!("{}{path}", self.nodes[id - 1].url);
        let r = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| HarnessError::Setup(format!("GET {url}: {e}")))?;
        answer(&url, r)
    }

    /// Whether node `id` answers `/readyz` with 200 (it accepts writes).
    pub fn ready(&self, id: usize) -> bool {
        self.http
            .get(format!("{}/readyz", self.nodes[id - 1].url))
            .send()
            .is_ok_and(|r| r.status().is_success())
    }

    /// POST `body` to `path` on node `id` as the admin; the JSON answer.
    pub fn admin(&self, id: usize, path: &str, body: Value) -> Result<Value, HarnessError> {
        let bytes = self.admin_bytes(id, path, body)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            HarnessError::Setup(format!(
                "{path} on node {id}: {e}: {}",
                String::from_utf8_lossy(&bytes)
            ))
        })
    }

    /// POST `body` to `path` on node `id` as the admin; the raw answer (a refusal is an error
    /// naming the status and the body).
    pub fn admin_bytes(&self, id: usize, path: &str, body: Value) -> Result<Vec<u8>, HarnessError> {
        let url = format!("{}{path}", self.nodes[id - 1].url);
        let r = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(&body)
            .timeout(Duration::from_secs(130))
            .send()
            .map_err(|e| HarnessError::Setup(format!("POST {url}: {e}")))?;
        let status = r.status();
        let bytes = r
            .bytes()
            .map_err(|e| HarnessError::Setup(format!("POST {url}: {e}")))?;
        if !status.is_success() {
            return Err(HarnessError::Setup(format!(
                "{url}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        Ok(bytes.to_vec())
    }

    /// The catalog leader as node `id` sees it.
    pub fn leader_seen_by(&self, id: usize) -> Option<usize> {
        let v = self.get(id, "/v1/admin/raft").ok()?;
        v["leader"].as_u64().map(|l| l as usize)
    }

    /// The leader most reachable nodes agree on, if any.
    pub fn leader(&self) -> Option<usize> {
        let mut votes = std::collections::BTreeMap::new();
        for n in &self.nodes {
            if n.up() && !n.paused {
                if let Some(l) = self.leader_seen_by(n.id) {
                    *votes.entry(l).or_insert(0) += 1;
                }
            }
        }
        votes.into_iter().max_by_key(|(_, v)| *v).map(|(l, _)| l)
    }
}

fn answer(url: &str, r: reqwest::blocking::Response) -> Result<Value, HarnessError> {
    let status = r.status();
    let text = r.text().unwrap_or_default();
    if !status.is_success() {
        return Err(HarnessError::Setup(format!("{url}: {status}: {text}")));
    }
    serde_json::from_str(&text).map_err(|e| HarnessError::Setup(format!("{url}: {e}: {text}")))
}

fn write(path: &Path, text: &str) -> Result<(), HarnessError> {
    std::fs::write(path, text).map_err(|e| HarnessError::io(path, e))
}

/// The topology file of the run: every node at its namespace's address.
fn topology(spec: &Spec, net: &Net, secret_file: &Path) -> String {
    let voters = if spec.nodes % 2 == 0 {
        spec.nodes - 1
    } else {
        spec.nodes
    };
    let mut t = format!(
        "# mirage-chaos\n[cluster]\nname = \"chaos\"\nreplication = {}\nwrite_quorum = {}\n\
         partitions = 64\nsecret_file = {:?}\n\n",
        spec.replication,
        spec.write_quorum,
        secret_file.display().to_string()
    );
    for id in 1..=spec.nodes {
        let roles = if id <= voters {
            "[\"storage\", \"catalog\"]"
        } else {
            "[\"storage\"]"
        };
        t.push_str(&format!(
            "[[node]]\nid = {id}\naddress = \"{}:{PORT}\"\nzone = \"z{}\"\ncapacity_gb = 100\n\
             roles = {roles}\n\n",
            net.ip(id),
            (id - 1) % spec.zones.max(1) + 1
        ));
    }
    t
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                if n.paused {
                    let _ = super::sh("kill", &["-CONT", &c.id().to_string()]);
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
