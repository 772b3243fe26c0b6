//! Helpers for tests: running tools, and playground clusters (real `mirage-node` processes on
//! loopback and the `mirage` CLI against them).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mirage_format::Digest;
use serde_json::{json, Value};

pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_mirage"))
        .parent()
        .unwrap()
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace (cargo build --workspace) first",
        p.display()
    );
    p
}

/// Runs `cmd` and fails the test (with its stderr) unless it succeeds.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a `debugfs -w` script (one request per line) on `img`, from a file in `dir`.
pub fn debugfs_script(dir: &Path, img: impl AsRef<std::ffi::OsStr>, script: &str) {
    let f = dir.join("debugfs.cmds");
    std::fs::write(&f, script).unwrap();
    run(Command::new("debugfs").arg("-w").arg("-f").arg(&f).arg(img));
}

/// Whether the test runs as root (loop mounts).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Fails the test unless `e2fsck -fn` finds `img` clean.
pub fn assert_fsck_clean(img: &Path) {
    let fsck = Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
    assert!(
        fsck.status.success(),
        "{}: {}",
        img.display(),
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// `mirage --store STORE ARGS` (the embedded store, as the invoking user).
pub fn mirage(store: &Path, args: &[&str]) -> Output {
    Command::new(bin("mirage"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A playground cluster; every node process is killed when it is dropped.
pub struct Pg {
    pub dir: tempfile::TempDir,
    pub urls: Vec<String>,
    pub token: String,
    pub pids: Vec<Option<u32>>,
    /// Nodes this test started (restarts, new nodes), by id.
    pub children: Vec<(usize, Child)>,
    pub http: reqwest::blocking::Client,
}

impl Drop for Pg {
    fn drop(&mut self) {
        for pid in self.pids.iter().flatten() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pg {
    pub fn start(nodes: u64, zones: u64, replication: usize, quorum: usize) -> Pg {
        Pg::start_with(nodes, zones, replication, quorum, &[])
    }

    pub fn start_with(
        nodes: u64,
        zones: u64,
        replication: usize,
        quorum: usize,
        extra: &[&str],
    ) -> Pg {
        let dir = tempfile::tempdir().unwrap();
        let out = ok(Command::new(bin("mirage-node"))
            .args(["playground", "--detach", "--repair-every", "3600"])
            .args(extra)
            .args(["--nodes", &nodes.to_string(), "--zones", &zones.to_string()])
            .args(["--replication", &replication.to_string()])
            .args(["--write-quorum", &quorum.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .env("MIRAGE_LOG", "warn")
            .output()
            .unwrap());
        let urls: Vec<String> = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("node "))
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(String::from)
            .collect();
        let token = out
            .lines()
            .find_map(|l| l.strip_prefix("export MIRAGE_TOKEN="))
            .unwrap()
            .to_string();
        let pids = std::fs::read_to_string(dir.path().join("pids"))
            .unwrap()
            .lines()
            .map(|p| Some(p.parse().unwrap()))
            .collect();
        assert_eq!(urls.len() as u64, nodes, "{out}");
        Pg {
            dir,
            urls,
            token,
            pids,
            children: Vec::new(),
            http: reqwest::blocking::Client::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `mirage` against the cluster as the admin, with `cache` as its local store.
    pub fn mirage(&self, cache: &str, args: &[&str]) -> Output {
        self.mirage_as(&self.token.clone(), cache, args)
    }

    pub fn mirage_as(&self, token: &str, cache: &str, args: &[&str]) -> Output {
        Command::new(bin("mirage"))
            .arg("--cluster")
            .arg(self.urls.join(","))
            .args(["--token", token, "--store"])
            .arg(self.path(cache))
            .args(args)
            .env_remove("MIRAGE_ZONE")
            .env("MIRAGE_LOG", "error")
            .output()
            .unwrap()
    }

    pub fn post(&self, node: usize, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.urls[node - 1]))
            .bearer_auth(&self.token)
            .json(&body)
            .timeout(Duration::from_secs(300))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().unwrap()
    }

    pub fn metric(&self, node: usize, name: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.urls[node - 1]))
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Which of `ds` node `node` holds.
    pub fn has(&self, node: usize, ds: &[Digest]) -> Vec<bool> {
        let mut out = Vec::new();
        for chunk in ds.chunks(1000) {
            let texts: Vec<String> = chunk.iter().map(Digest::to_text).collect();
            let v = self.post(node, "/v1/items/has", json!({ "digests": texts }));
            out.extend(
                v["present"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_bool().unwrap()),
            );
        }
        out
    }

    /// Copies of each of `ds` over `nodes`.
    pub fn copies(&self, nodes: &[usize], ds: &[Digest]) -> Vec<usize> {
        let mut n = vec![0; ds.len()];
        for &node in nodes {
            for (c, h) in n.iter_mut().zip(self.has(node, ds)) {
                *c += usize::from(h);
            }
        }
        n
    }

    pub fn kill(&mut self, node: usize) {
        if let Some(pid) = self.pids[node - 1].take() {
            ok(Command::new("kill")
                .args(["-9", &pid.to_string()])
                .output()
                .unwrap());
        }
        if let Some(i) = self.children.iter().position(|(id, _)| *id == node) {
            let (_, mut c) = self.children.remove(i);
            c.kill().unwrap();
            c.wait().unwrap();
        }
        // Reaped by init (the playground detached it): wait until the port is free.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .http
            .get(format!("{}/healthz", self.urls[node - 1]))
            .send()
            .is_ok()
        {
            assert!(Instant::now() < deadline, "node {node} still answers");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts node `id` with the topology `config` (its store under the playground).
    pub fn serve(&mut self, id: usize, config: &Path) {
        let log = std::fs::File::create(self.path(&format!("node{id}.restart.log"))).unwrap();
        let mut child = Command::new(bin("mirage-node"))
            .arg("serve")
            .arg("--store")
            .arg(self.path(&format!("node{id}")))
            .arg("--cluster")
            .arg(config)
            .args(["--id", &id.to_string(), "--repair-every", "3600"])
            .env("MIRAGE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening on"), "{line:?}");
        self.children.push((id, child));
    }
}

/// Every digest a local (cache) store holds: the closure of what was checked in or read.
pub fn digests_in(store: &Path) -> Vec<Digest> {
    let s = mirage_node::Store::open(store, mirage_node::StoreOptions::default()).unwrap();
    s.partition_digests(1, 0).unwrap()
}

/// The error output of a command that must fail.
pub fn err(o: Output) -> String {
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr).unwrap()
}

/// A small ext4 disk image with a generated tree (`seed` varies its files).
pub fn image(dir: &Path, name: &str, seed: u64) -> PathBuf {
    images(dir, name, seed, 1, 0).remove(0)
}

/// `1 + derived` ext4 disk images: a generated tree of `scale` (about 5 MB each), then
/// each derived one with one more file of 400 kB and one file changed (a new version of the
/// one before: most content shared).
pub fn images(dir: &Path, name: &str, seed: u64, scale: usize, derived: usize) -> Vec<PathBuf> {
    let tree = dir.join(format!("{name}-tree"));
    let gen = mirage_client::demo::generate(&tree, seed, scale).unwrap();
    let mut out = Vec::new();
    for i in 0..=derived {
        if i > 0 {
            let noise: Vec<u8> = (0..400_000u32)
                .map(|k| (k.wrapping_mul(2_654_435_761) >> (i % 7 + 3)) as u8)
                .collect();
            std::fs::write(tree.join(format!("added-{i}.bin")), noise).unwrap();
            std::fs::write(tree.join("usr/share/doc/pkg000/README"), format!("v{i}\n")).unwrap();
        }
        let img = dir.join(format!("{name}-{i}.img"));
        mirage_client::demo::build_disk_image(&tree, &img, gen.bytes + 1_000_000).unwrap();
        out.push(img);
    }
    out
}

/// Encoded bytes of the items `store` holds that `base` does not.
pub fn bytes_beyond(store: &Path, base: &Path) -> (usize, u64) {
    let opts = mirage_node::StoreOptions::default;
    let (s, b) = (
        mirage_node::Store::open(store, opts()).unwrap(),
        mirage_node::Store::open(base, opts()).unwrap(),
    );
    let ds = s.partition_digests(1, 0).unwrap();
    let held = b.has_many(&ds).unwrap();
    let mut n = (0, 0);
    for (d, h) in ds.iter().zip(held) {
        if !h {
            n.0 += 1;
            n.1 += s.get(d).unwrap().unwrap().len() as u64;
        }
    }
    n
}

pub fn sha(path: &Path) -> Digest {
    Digest::of(
        mirage_format::Algorithm::Sha256,
        &std::fs::read(path).unwrap(),
    )
    .unwrap()
}
