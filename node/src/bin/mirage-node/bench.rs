//! `mirage-node bench catalog`: catalog writes and linearizable reads per second, with p50 and
//! p99 latency, on a playground cluster of real processes, at several client concurrencies.
//! Clients spread over all nodes (a follower forwards writes to the leader, and takes a read
//! index from it for reads), as a deployment's clients would.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use mirage_format::{Algorithm, Digest};
use mirage_node::api::catalog::{BatchAnswer, BatchItem};
use serde::Serialize;

use crate::playground;

/// Options of `mirage-node bench catalog`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Nodes in the playground.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Concurrent clients, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Playground directory (default: a new one under /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// What a write is: `versions` (a new version of the client's own name: the name's
    /// record, holding its whole version chain, grows with every write) or `names` (a new
    /// named image per write).
    #[arg(long, default_value = "versions", value_parser = ["versions", "names"])]
    workload: String,
    /// Writes per request: above 1, each client sends its writes N at a time through
    /// `POST /v1/catalog/commands` (latencies are then per request).
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

/// What every client of a run does.
#[derive(Clone, Copy, Debug)]
struct Load {
    /// How long, seconds.
    seconds: f64,
    /// Each write a new name (`names`) rather than a new version of the client's name.
    new_names: bool,
    /// Writes per request.
    batch: usize,
}

/// One measured run.
#[derive(Debug, Serialize)]
pub struct Run {
    /// writes or reads.
    pub op: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// Operations completed.
    pub ops: u64,
    /// Operations per second.
    pub per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Failed operations.
    pub errors: u64,
    /// CPU time (user + system) the nodes spent per operation, µs.
    pub node_cpu_us_per_op: f64,
    /// CPU time the load generator spent per operation, µs.
    pub client_cpu_us_per_op: f64,
    /// Catalog log entries the run added (writes: each entry is one group commit).
    pub log_entries: u64,
}

/// CPU time (user + system) `pid` has used so far (`None`: its own process), in clock ticks;
/// 0 if it cannot be read (the process is gone).
fn cpu_ticks(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start at field 3, the state;
    // utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Clock ticks of the CPU counters in microseconds.
fn tick_us() -> f64 {
    1e6 / rustix::param::clock_ticks_per_second().max(1) as f64
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

async fn measure(
    op: &'static str,
    clients: usize,
    load: Load,
    urls: Arc<Vec<String>>,
    token: Arc<str>,
    pids: &[u32],
) -> Result<Run> {
    let nodes_cpu = || pids.iter().map(|&p| cpu_ticks(Some(p))).sum::<u64>();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients.max(1))
        .build()?;
    let log_before = last_log_index(&http, &urls[0]).await;
    let (nodes_before, client_before) = (nodes_cpu(), cpu_ticks(None));
    let Load {
        seconds,
        new_names,
        batch,
    } = load;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, urls, token) = (http.clone(), urls.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let base = &urls[c % urls.len()];
            let name = format!("bench/{clients}-{c}");
            let mut lat = Vec::new();
            let (mut ops, mut errors) = (0u64, 0u64);
            let mut i = 0u64;
            let mut write = || {
                i += 1;
                let image = Digest::of(Algorithm::Sha256, format!("{name}/{i}").as_bytes())
                    .unwrap_or_else(|_| unreachable_digest());
                let target = if new_names {
                    format!("{name}/{i}")
                } else {
                    name.clone()
                };
                serde_json::json!({"op": "checkin", "name": target, "image": image,
                                   "parent": null, "description": ""})
            };
            while Instant::now() < deadline {
                let (path, body, n) = if op == "writes" && batch > 1 {
                    let commands: Vec<_> = (0..batch).map(|_| write()).collect();
                    (
                        "/v1/catalog/commands",
                        serde_json::json!({ "commands": commands }),
                        batch as u64,
                    )
                } else if op == "writes" {
                    ("/v1/catalog/command", write(), 1)
                } else {
                    // The writes run before made this name (names: its first one).
                    let target = if new_names {
                        format!("{name}/1")
                    } else {
                        name.clone()
                    };
                    (
                        "/v1/catalog/query",
                        serde_json::json!({"q": "resolve", "reference": target}),
                        1,
                    )
                };
                let t = Instant::now();
                let r = http
                    .post(format!("{base}{path}"))
                    .bearer_auth(&*token)
                    .json(&body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let bytes = r.bytes().await.unwrap_or_default();
                        lat.push(t.elapsed());
                        // A batch answers each command on its own: count the refused ones.
                        let refused = if n > 1 {
                            serde_json::from_slice::<BatchAnswer>(&bytes).map_or(n, |b| {
                                b.answers
                                    .iter()
                                    .filter(|a| matches!(a, BatchItem::Error { .. }))
                                    .count() as u64
                            })
                        } else {
                            0
                        };
                        ops += n - refused;
                        errors += refused;
                    }
                    _ => errors += n,
                }
            }
            (lat, ops, errors)
        }));
    }
    let mut all = Vec::new();
    let (mut ops, mut errors) = (0, 0);
    for t in tasks {
        let (l, n, e) = t.await?;
        all.extend(l);
        ops += n;
        errors += e;
    }
    let per_op = |ticks: u64| ticks as f64 * tick_us() / ops.max(1) as f64;
    let node_cpu_us_per_op = per_op(nodes_cpu().saturating_sub(nodes_before));
    let client_cpu_us_per_op = per_op(cpu_ticks(None).saturating_sub(client_before));
    let log_entries = last_log_index(&http, &urls[0])
        .await
        .saturating_sub(log_before);
    all.sort_unstable();
    Ok(Run {
        op,
        clients,
        ops,
        per_sec: ops as f64 / seconds,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        errors,
        node_cpu_us_per_op,
        client_cpu_us_per_op,
        log_entries,
    })
}

/// The node's last catalog log index, from its `/metrics` (0 if it cannot be read).
async fn last_log_index(http: &reqwest::Client, base: &str) -> u64 {
    let Ok(r) = http.get(format!("{base}/metrics")).send().await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("mirage_raft_last_log_index "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn unreachable_digest() -> Digest {
    // SHA-256 of a short string cannot fail; this only satisfies the type.
    Digest::from_bytes(Algorithm::Sha256, &[0u8; 32]).unwrap_or_else(|| unreachable!())
}

/// Synced small writes on one disk.
#[derive(Debug, Serialize)]
pub struct Disk {
    /// Synced writes per second.
    pub per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

/// Writes 4 KiB and `fdatasync`s, over and over for `seconds`, in a file in `dir`.
fn fsync_probe(dir: &std::path::Path, seconds: f64) -> Result<Disk> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        lat.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    lat.sort_unstable();
    Ok(Disk {
        per_sec: lat.len() as f64 / seconds,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
    })
}

/// Runs the benchmark.
pub async fn run(args: Args) -> Result<()> {
    if args.clients.is_empty() || args.seconds <= 0.0 {
        bail!("give --clients N[,N…] and --seconds > 0");
    }
    let p = playground::start(&playground::Args {
        nodes: args.nodes,
        zones: 1,
        dir: args.dir.clone(),
        detach: false,
        replication: None,
        write_quorum: None,
        repair_every: 30,
        dead_after: 0,
    })
    .await?;
    // The baseline: what the disk under the nodes gives one synced writer. Every catalog
    // write waits for synced appends on a majority, so its stalls are the writes' tail.
    let probe_dir = p.dir.clone();
    let disk = tokio::task::spawn_blocking(move || fsync_probe(&probe_dir, 3.0)).await??;
    if !args.json {
        println!(
            "disk baseline (4 KiB write + fdatasync, one writer): {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.1} ms",
            disk.per_sec, disk.p50_ms, disk.p99_ms, disk.max_ms
        );
    }
    let urls = Arc::new(p.urls.clone());
    let pids = p.pids();
    let token: Arc<str> = Arc::from(p.token.as_str());
    let mut runs = Vec::new();
    for &c in &args.clients {
        for op in ["writes", "reads"] {
            let load = Load {
                seconds: args.seconds,
                new_names: args.workload == "names",
                batch: args.batch.max(1),
            };
            let r = measure(op, c, load, urls.clone(), token.clone(), &pids).await?;
            if !args.json {
                println!(
                    "catalog {:<6} {:>3} clients: {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} ops, {} errors)  CPU/op: nodes {:.0} µs, clients {:.0} µs{}",
                    r.op, r.clients, r.per_sec, r.p50_ms, r.p99_ms, r.ops, r.errors,
                    r.node_cpu_us_per_op, r.client_cpu_us_per_op,
                    if r.op == "writes" && r.log_entries > 0 {
                        format!("  ({:.1} writes per log entry)", r.ops as f64 / r.log_entries as f64)
                    } else {
                        String::new()
                    }
                );
            }
            runs.push(r);
        }
    }
    if args.json {
        let out = serde_json::json!({ "disk": disk, "runs": runs });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    drop(p);
    Ok(())
}
