//! `mirage-chaos`: chaos runs against real `mirage-node` processes (root: network namespaces
//! and loop-mounted disks), a history re-check, and the deterministic catalog simulation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mirage_chaos_tests::nemesis::Fault;
use mirage_chaos_tests::run::{self, RunConfig};
use mirage_chaos_tests::{check, harness, history};

/// Chaos tests for Mirage clusters.
#[derive(Parser, Debug)]
#[command(name = "mirage-chaos", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs a cluster in network namespaces under a concurrent workload and a seeded fault
    /// schedule, then heals it and runs every checker (needs root).
    Run(RunArgs),
    /// Runs the deterministic catalog simulation (turmoil) for a range of seeds; each seed's
    /// configuration varies as in the CI test (`SimConfig::varied`).
    Sim {
        /// First seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Seeds to run (seed, seed+1, …).
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Simulated seconds of faults and load per seed (default: the configuration's).
        #[arg(long)]
        secs: Option<u64>,
    },
    /// Checks a recorded history for linearizability again.
    Check {
        /// history.jsonl of a run.
        history: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Seed of the schedule and the workload (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Runs, with seeds seed, seed+1, …
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Time under faults per run: 90s, 10m, 2h.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Storage nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Zones.
    #[arg(long, default_value_t = 3)]
    zones: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Replicas per item.
    #[arg(long, default_value_t = 3)]
    replication: usize,
    /// Write quorum.
    #[arg(long, default_value_t = 2)]
    write_quorum: usize,
    /// Fault kinds (default: all): kill, pause, partition, isolate-leader, bridge,
    /// asymmetric, isolate-clients, disk-full, corrupt.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Working directory (default: a new directory under /tmp).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory of the mirage and mirage-node binaries (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Seconds the cluster may take to converge once the faults stop.
    #[arg(long, default_value_t = 60)]
    converge: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a number then s, m or h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

fn faults(names: &[String]) -> Result<Vec<Fault>> {
    if names.is_empty() {
        return Ok(Fault::WEIGHTS.iter().map(|(f, _)| *f).collect());
    }
    names
        .iter()
        .map(|n| {
            serde_json::from_value(serde_json::Value::String(n.replace('-', "_")))
                .with_context(|| format!("unknown fault kind {n:?}"))
        })
        .collect()
}

fn main() -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIRAGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Check { history } => {
            let (pairs, _) = history::read(&history)?;
            let events = run::catalog_events(&pairs);
            match check::linear::check(&events) {
                Ok(s) => {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(v) => {
                    println!("{v}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Sim { seed, seeds, secs } => {
            let mut failed = 0;
            for s in seed..seed.saturating_add(seeds) {
                let mut cfg = mirage_chaos_tests::sim::SimConfig::varied(s);
                if let Some(secs) = secs {
                    cfg.duration = Duration::from_secs(secs);
                }
                match mirage_chaos_tests::sim::run(s, &cfg) {
                    Ok(r) => println!("{}", serde_json::to_string(&r)?),
                    Err(e) => {
                        failed += 1;
                        eprintln!("FAILED: {e}");
                    }
                }
            }
            eprintln!("{} seeds, {failed} failed", seeds);
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Run(a) => {
            if !harness::privileged() {
                bail!("mirage-chaos run needs root (network namespaces, loop mounts)");
            }
            let bin_dir = match a.bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?
                    .parent()
                    .context("no directory of this binary")?
                    .to_path_buf(),
            };
            let seed = a.seed.unwrap_or_else(rand::random);
            let base = a.out.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("mirage-chaos-{}", std::process::id()))
            });
            let mut failed = false;
            for k in 0..a.runs {
                let cfg = RunConfig {
                    seed: seed.wrapping_add(k),
                    duration: a.duration,
                    nodes: a.nodes,
                    zones: a.zones,
                    clients: a.clients,
                    replication: a.replication,
                    write_quorum: a.write_quorum,
                    faults: faults(&a.faults)?,
                    dir: base.join(format!("seed-{}", seed.wrapping_add(k))),
                    bin_dir: bin_dir.clone(),
                    converge: Duration::from_secs(a.converge),
                    repair: Duration::from_secs(300),
                    final_checkouts: 10,
                };
                eprintln!(
                    "run {} of {}: seed {} in {}",
                    k + 1,
                    a.runs,
                    cfg.seed,
                    cfg.dir.display()
                );
                let s = run::run(&cfg)?;
                println!("{}", serde_json::to_string_pretty(&s)?);
                if !s.passed {
                    failed = true;
                    eprintln!("FAILED: seed {}; replay with: {}", s.seed, s.replay);
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
