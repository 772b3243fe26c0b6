//! `mirage-node playground`: a local cluster of real `mirage-node` processes on loopback, with
//! a generated topology and secret, the catalog group formed (node 1 initializes, the others
//! join as learners and are promoted), and the admin token printed. Ctrl-C stops every node.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Options of `mirage-node playground`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Number of zones the nodes are spread over (round robin).
    #[arg(long, default_value_t = 1)]
    pub zones: u64,
    /// Directory for the topology, the secret, each node's store and log (default: a new
    /// directory under /tmp).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Form the cluster, print how to reach it and exit, leaving the nodes running (their
    /// pids are in DIR/pids).
    #[arg(long)]
    pub detach: bool,
    /// Replicas of each item (N; default: the node count, at most 3).
    #[arg(long)]
    pub replication: Option<usize>,
    /// Replicas that must hold an item durably before it counts as stored (W; default: a
    /// majority of N).
    #[arg(long)]
    pub write_quorum: Option<usize>,
    /// Seconds between each node's anti-entropy rounds.
    #[arg(long, default_value_t = 30)]
    pub repair_every: u64,
    /// Seconds a node may fail every probe before it is declared dead (0: never).
    #[arg(long, default_value_t = 300)]
    pub dead_after: u64,
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM for a clean stop, then reap.
            let _ = Command::new("kill")
                .arg(c.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// What a node's log says last, for an error message: the error it exited with (without
/// the backtrace that follows when RUST_BACKTRACE is set), else its last lines.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = match text.rfind("Error: ") {
        Some(i) => text[i..]
            .split("Stack backtrace:")
            .next()
            .unwrap_or_default(),
        None => &text,
    };
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Node `id`'s store directory in the playground directory.
fn node_store(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node{id}"))
}

/// Node `id`'s log (its stdout and stderr).
fn node_log(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node{id}.log"))
}

fn topology(args: &Args, ports: &[u16], secret_file: &Path) -> String {
    let n = args.nodes;
    let replication = args.replication.unwrap_or(n.min(3) as usize);
    let quorum = args.write_quorum.unwrap_or(replication / 2 + 1);
    // Catalog voters must be odd: with an even count the last node only stores.
    let voters = if n % 2 == 0 { n - 1 } else { n };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# mirage-node playground\n[cluster]\nname = \"playground\"\nreplication = {replication}\n\
         write_quorum = {}\npartitions = 256\nsecret_file = {:?}\n",
        quorum,
        secret_file.display().to_string()
    );
    for (i, port) in ports.iter().enumerate() {
        let id = i as u64 + 1;
        let roles = if id <= voters {
            "[\"storage\", \"catalog\"]"
        } else {
            "[\"storage\"]"
        };
        let _ = writeln!(
            t,
            "[[node]]\nid = {id}\naddress = \"127.0.0.1:{port}\"\nzone = \"z{}\"\n\
             capacity_gb = 100\nroles = {roles}\n",
            i as u64 % args.zones.max(1) + 1
        );
    }
    t
}

async fn admin_call(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> Result<()> {
    let r = client
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "{path}: {}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

enum Launch {
    /// Every node listens and node 1 has initialized the group: its admin token.
    Up(Nodes, String),
    /// This node exited because another process took its port first.
    PortTaken(u64),
}

/// Starts one process per node on `ports` and waits until each listens and node 1 has formed
/// the group. A node that exits meanwhile fails the start with its log, at once.
async fn launch(args: &Args, dir: &Path, ports: &[u16], secret_file: &Path) -> Result<Launch> {
    let config = dir.join("cluster.toml");
    std::fs::write(&config, topology(args, ports, secret_file))?;
    let exe = std::env::current_exe()?;
    let mut nodes = Nodes(Vec::new());
    for id in 1..=args.nodes {
        let store = node_store(dir, id);
        let log = std::fs::File::create(node_log(dir, id))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .arg("--store")
            .arg(&store)
            .arg("--cluster")
            .arg(&config)
            .arg("--id")
            .arg(id.to_string())
            .arg("--repair-every")
            .arg(args.repair_every.to_string())
            .arg("--dead-after")
            .arg(args.dead_after.to_string())
            .stdout(log.try_clone()?)
            .stderr(log);
        if id == 1 {
            cmd.arg("--init");
        }
        nodes.0.push(cmd.spawn().context("starting a node")?);
    }
    let token_file = node_store(dir, 1).join("admin.token");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut listening = 0;
        for (i, child) in nodes.0.iter_mut().enumerate() {
            let id = i as u64 + 1;
            let log = node_log(dir, id);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(status) = child.try_wait()? {
                if text.contains("Address already in use") || text.contains("AddrInUse") {
                    return Ok(Launch::PortTaken(id));
                }
                bail!(
                    "node {id} exited ({status}) while the playground started; the end of {}:\n{}",
                    log.display(),
                    log_tail(&log)
                );
            }
            if text.contains("listening on http://") {
                listening += 1;
            }
        }
        if listening == nodes.0.len() {
            // The token is written as one line: a file without its newline is still being written.
            match std::fs::read_to_string(&token_file) {
                Ok(t) if t.ends_with('\n') => {
                    return Ok(Launch::Up(nodes, t.trim().to_string()));
                }
                _ => {}
            }
        }
        if std::time::Instant::now() > deadline {
            let log = node_log(dir, 1);
            bail!(
                "the nodes did not all listen, or node 1 did not initialize the catalog, within \
                 60 s; the end of {}:\n{}",
                log.display(),
                log_tail(&log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running playground.
pub struct Running {
    nodes: Nodes,
    /// Base URL of each node.
    pub urls: Vec<String>,
    /// The admin's token.
    pub token: String,
    /// Its directory.
    pub dir: PathBuf,
}

impl Running {
    /// Process ids of the nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.0.iter().map(Child::id).collect()
    }
}

/// Runs the playground.
pub async fn run(args: Args) -> Result<()> {
    let p = start(&args).await?;
    println!(
        "playground: {} nodes in {} zone(s), files in {}",
        args.nodes,
        args.zones,
        p.dir.display()
    );
    for (i, url) in p.urls.iter().enumerate() {
        println!(
            "  node {}: {url}  (log {})",
            i + 1,
            p.dir.join(format!("node{}.log", i + 1)).display()
        );
    }
    println!("export MIRAGE_CLUSTER={}", p.urls[0]);
    println!("export MIRAGE_TOKEN={}", p.token);
    if args.detach {
        let pids: Vec<String> = p.nodes.0.iter().map(|c| c.id().to_string()).collect();
        std::fs::write(p.dir.join("pids"), pids.join("\n") + "\n")?;
        std::mem::forget(p.nodes);
        return Ok(());
    }
    println!("Ctrl-C (or SIGTERM) stops the cluster.");
    // SIGTERM too: a playground killed without stopping its nodes would leave them running.
    crate::shutdown_signal(Default::default()).await;
    drop(p);
    Ok(())
}

/// Starts the nodes and forms the catalog group.
pub async fn start(args: &Args) -> Result<Running> {
    if args.nodes == 0 || args.zones == 0 || args.zones > args.nodes {
        bail!("--nodes must be at least 1 and --zones between 1 and --nodes");
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("mirage-playground-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret_file = dir.join("cluster.secret");
    if !secret_file.exists() {
        let bytes: [u8; 32] = rand::random();
        std::fs::write(&secret_file, format!("{}\n", hex::encode(bytes)))?;
    }
    // Node stores that exist already belong to an earlier playground in this directory; the
    // ones made here are removed before a retry, so no node keeps a group formed on old ports.
    let fresh: Vec<u64> = (1..=args.nodes)
        .filter(|&id| !node_store(&dir, id).exists())
        .collect();
    let mut attempt = 1;
    let (nodes, ports, token) = loop {
        let ports = mirage_node::ports::free_local_ports(args.nodes as usize)?;
        match launch(args, &dir, &ports, &secret_file).await? {
            Launch::Up(nodes, token) => break (nodes, ports, token),
            Launch::PortTaken(id) if attempt < 3 => {
                tracing::warn!("node {id}: its port was taken before it bound it; new ports");
                for id in &fresh {
                    let _ = std::fs::remove_dir_all(node_store(&dir, *id));
                }
                attempt += 1;
            }
            Launch::PortTaken(id) => bail!(
                "node {id} could not bind its port in {attempt} attempts (see {})",
                node_log(&dir, id).display()
            ),
        }
    };
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", ports[0]);
    let voters = if args.nodes % 2 == 0 {
        args.nodes - 1
    } else {
        args.nodes
    };
    for (i, port) in ports.iter().enumerate().skip(1) {
        let id = i as u64 + 1;
        let body = serde_json::json!({"id": id, "addr": format!("127.0.0.1:{port}")});
        admin_call(&client, &base, &token, "/v1/admin/raft/add-learner", body).await?;
        if id <= voters {
            admin_call(
                &client,
                &base,
                &token,
                "/v1/admin/raft/promote",
                serde_json::json!({"id": id}),
            )
            .await?;
        }
    }
    Ok(Running {
        nodes,
        urls: ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
        token,
        dir,
    })
}
