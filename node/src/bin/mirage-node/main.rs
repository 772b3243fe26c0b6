//! `mirage-node`: a storage node serving the HTTP API, standalone or as a member of a cluster
//! (catalog replicated with Raft), and `playground`, a local N-node cluster in one command.

mod bench;
mod playground;
mod watchdog;

/// mimalloc, as in the `mirage` CLI: request threads allocate the payloads the committer frees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use mirage_cluster_config::Topology;
use mirage_node::api::Cluster;
use mirage_node::raft::node::{CatalogNode, Tuning};
use mirage_node::shard::{Shard, ShardTuning};
use mirage_node::{Store, StoreOptions};

/// Mirage storage node.
#[derive(Parser, Debug)]
#[command(name = "mirage-node", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve a store over HTTP until SIGTERM or Ctrl-C.
    ///
    /// Standalone (no --cluster): the first start adds the user `admin` and writes its token
    /// to STORE/admin.token. With --cluster FILE --id N the node joins the catalog group of
    /// that topology; --init on one node (the first time only) starts the group with that
    /// node alone, adds `admin` and writes its token; the others join with
    /// `mirage admin raft add-learner` and `promote`.
    Serve {
        /// Store directory (created if missing).
        #[arg(long)]
        store: PathBuf,
        /// Address to listen on (default: the node's address in the topology, else
        /// 127.0.0.1:7300; port 0 picks a free port, printed on start).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Topology file (cluster mode).
        #[arg(long, requires = "id")]
        cluster: Option<PathBuf>,
        /// This node's id in the topology.
        #[arg(long)]
        id: Option<u64>,
        /// Start a new catalog group with this node as its only member.
        #[arg(long, requires = "cluster")]
        init: bool,
        /// Catalog log entries between snapshots (older entries are then purged). Default: a
        /// snapshot once the log written since the last one is larger than it and 64 MiB.
        #[arg(long)]
        raft_snapshot_every: Option<u64>,
        /// Seconds between anti-entropy rounds (cluster mode: compare partition summaries with
        /// the other nodes, pull what this node lacks, hand off what it no longer owns).
        #[arg(long, default_value_t = 30)]
        repair_every: u64,
        /// Seconds between background scrub passes (re-hash every stored item).
        #[arg(long, default_value_t = 86400)]
        scrub_every: u64,
        /// Most MB per second a background scrub reads.
        #[arg(long, default_value_t = 32)]
        scrub_rate_mb: u64,
        /// Most MB per second background anti-entropy rounds pull (repair, rebalance).
        #[arg(long, default_value_t = 64)]
        repair_rate_mb: u64,
        /// Seconds a storage node may fail every probe of the catalog leader before it is
        /// declared dead and its partitions are re-replicated on the other nodes (0: never).
        #[arg(long, default_value_t = 300)]
        dead_after: u64,
    },
    /// Start a local cluster of N nodes (real processes on loopback) and print how to use it.
    Playground(playground::Args),
    /// Benchmarks on a playground cluster.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Catalog writes and linearizable reads per second, p50/p99 latency, at 1, 8 and 64
    /// concurrent clients.
    Catalog(bench::Args),
}

/// Resolves on Ctrl-C or SIGTERM, after setting `stopping`.
async fn shutdown_signal(stopping: Arc<AtomicBool>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    stopping.store(true, Ordering::SeqCst);
    tracing::info!("shutting down");
}

/// Prints a line on stdout; a closed stdout (the parent stopped reading) is not an error for a
/// daemon.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Writes the admin token to `STORE/admin.token`, readable by the owner only.
fn write_token(store: &Path, token: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = store.join("admin.token");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(path)
}

struct ClusterSetup {
    node_id: u64,
    address: String,
    secret: String,
    /// Version 1 of the data layout, recorded by the node that starts the group.
    layout: mirage_cluster_config::Layout,
}

fn load_cluster(file: &Path, id: u64) -> Result<ClusterSetup> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let topo = Topology::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let node = topo
        .nodes
        .iter()
        .find(|n| n.id == id)
        .ok_or_else(|| anyhow!("{}: no node with id {id}", file.display()))?;
    let secret_path = Path::new(&topo.secret_file);
    let secret_path = if secret_path.is_relative() {
        file.parent().unwrap_or(Path::new(".")).join(secret_path)
    } else {
        secret_path.to_path_buf()
    };
    let secret = mirage_node::auth::read_secret(&secret_path)
        .with_context(|| format!("reading the cluster secret {}", secret_path.display()))?;
    Ok(ClusterSetup {
        node_id: id,
        address: node.address.clone(),
        secret,
        layout: mirage_cluster_config::Layout::from_topology(&topo),
    })
}

async fn serve(
    store_dir: PathBuf,
    listen: Option<SocketAddr>,
    cluster: Option<(PathBuf, u64)>,
    init: bool,
    (tuning, shard_tuning): (Tuning, ShardTuning),
) -> Result<()> {
    let setup = match &cluster {
        Some((file, id)) => Some(load_cluster(file, *id)?),
        None => None,
    };
    let dir = store_dir.clone();
    let sharded = setup.is_some();
    let st = tokio::task::spawn_blocking(move || {
        Store::open(
            &dir,
            StoreOptions {
                create: true,
                // A cluster node holds a shard: references may live on other nodes.
                shard: sharded,
                ..Default::default()
            },
        )
    })
    .await?
    .with_context(|| format!("opening store {}", store_dir.display()))?;
    let listen = match (listen, &setup) {
        (Some(l), _) => l,
        (None, Some(s)) => s
            .address
            .parse()
            .with_context(|| format!("node address {:?} is not ip:port", s.address))?,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 7300)),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let mut note = None;
    let layout = setup.as_ref().map(|s| s.layout.clone());
    let cluster = match setup {
        None => {
            let s = st.clone();
            if let Some(token) =
                tokio::task::spawn_blocking(move || mirage_node::api::bootstrap_admin(&s)).await??
            {
                let p = write_token(&store_dir, &token)?;
                note = Some(format!(
                    "created user admin; its token is in {}",
                    p.display()
                ));
            }
            None
        }
        Some(s) => {
            let node = CatalogNode::start(
                s.node_id,
                &s.address,
                st.clone(),
                &store_dir.join("raft"),
                &s.secret,
                tuning,
            )
            .await?;
            let shard = Shard::new(s.node_id, st.clone(), &s.secret, shard_tuning);
            shard.spawn();
            if let Some(t) = shard_tuning.dead_after {
                tokio::spawn(mirage_node::shard::liveness::watch(
                    shard.clone(),
                    node.clone(),
                    t,
                ));
            }
            Some(Cluster {
                node,
                secret: Arc::from(s.secret.as_str()),
                shard,
            })
        }
    };
    let stopping = Arc::new(AtomicBool::new(false));
    watchdog::spawn(
        st.clone(),
        store_dir.clone(),
        cluster.as_ref().map(|c| c.node.raft.clone()),
        stopping.clone(),
    );
    say(&format!("listening on http://{addr}"));
    if let Some(note) = note {
        say(&note);
    }
    let server = tokio::spawn(mirage_node::api::run(
        listener,
        st.clone(),
        cluster.clone(),
        shutdown_signal(stopping),
    ));
    if let (true, Some(c), Some(layout)) = (init, &cluster, layout) {
        init_group(&c.node, &store_dir, layout).await?;
    }
    server.await??;
    if let Some(c) = cluster {
        c.node.shutdown().await;
    }
    Ok(())
}

/// Starts a new group with this node alone, adds `admin` through it and records the first
/// data layout (the topology's storage nodes).
async fn init_group(
    node: &CatalogNode,
    store_dir: &Path,
    layout: mirage_cluster_config::Layout,
) -> Result<()> {
    if node.raft.is_initialized().await? {
        say("catalog group already initialized; --init ignored");
        return Ok(());
    }
    node.initialize().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while node.status().leader != Some(node.id()) {
        if tokio::time::Instant::now() > deadline {
            bail!("this node did not become leader of the new group within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (token, h) = mirage_node::auth::new_token();
    node.write(
        "admin",
        mirage_node::catalog::Command::AddUser {
            name: "admin".into(),
            admin: true,
            token_sha256: Some(h),
        },
    )
    .await?;
    node.write(
        "admin",
        mirage_node::catalog::Command::InitLayout { layout },
    )
    .await?;
    let p = write_token(store_dir, &token)?;
    say(&format!(
        "initialized the catalog group; user admin's token is in {}",
        p.display()
    ));
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIRAGE_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Before any thread or large allocation (mirage_node::memory says why).
    mirage_node::memory::no_transparent_huge_pages();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.cmd {
        Cmd::Serve {
            store,
            listen,
            cluster,
            id,
            init,
            raft_snapshot_every,
            repair_every,
            scrub_every,
            scrub_rate_mb,
            repair_rate_mb,
            dead_after,
        } => {
            let cluster = match (cluster, id) {
                (Some(f), Some(i)) => Some((f, i)),
                (None, _) => None,
                (Some(_), None) => bail!("--cluster needs --id"),
            };
            let tuning = Tuning {
                snapshot_every: raft_snapshot_every,
                ..Tuning::default()
            };
            let shard = ShardTuning {
                repair_every: Duration::from_secs(repair_every.max(1)),
                scrub_every: Duration::from_secs(scrub_every.max(1)),
                scrub_rate: scrub_rate_mb << 20,
                repair_rate: repair_rate_mb << 20,
                dead_after: (dead_after > 0).then(|| Duration::from_secs(dead_after)),
            };
            rt.block_on(serve(store, listen, cluster, init, (tuning, shard)))
        }
        Cmd::Playground(args) => rt.block_on(playground::run(args)),
        Cmd::Bench {
            cmd: BenchCmd::Catalog(args),
        } => rt.block_on(bench::run(args)),
    }
}
