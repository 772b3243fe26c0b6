//! CI smoke of the process-level harness: a few short seeded runs of a 5-node cluster in
//! network namespaces under every fault kind, each checker required to pass. Needs root (CI
//! runs as root); `MIRAGE_CHAOS_SEEDS` and `MIRAGE_CHAOS_SECS` widen it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn seeded_runs_under_every_fault_pass_every_checker() {
    assert!(
        mirage_chaos_tests::harness::privileged(),
        "the chaos smoke needs root: network namespaces, loop mounts"
    );
    let exe = Path::new(env!("CARGO_BIN_EXE_mirage-chaos"));
    let bin_dir = exe.parent().unwrap();
    for b in ["mirage", "mirage-node"] {
        assert!(
            bin_dir.join(b).exists(),
            "{b} is missing from {}: build the workspace first",
            bin_dir.display()
        );
    }
    let seeds: u64 = std::env::var("MIRAGE_CHAOS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let secs = std::env::var("MIRAGE_CHAOS_SECS").unwrap_or_else(|_| "40".into());
    // A different first seed each day, printed: a failure names the seed that replays it.
    let first: u64 = std::env::var("MIRAGE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                / 86_400
                * 1000
        });
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(exe)
        .args([
            "run",
            "--seed",
            &first.to_string(),
            "--runs",
            &seeds.to_string(),
        ])
        .args([
            "--duration",
            &format!("{secs}s"),
            "--nodes",
            "5",
            "--clients",
            "3",
        ])
        .arg("--out")
        .arg(out.path())
        .env("MIRAGE_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        // The runs' histories and node logs are what a failure is analysed from: kept.
        let kept = out.keep();
        panic!(
            "chaos smoke failed (seeds {first}..{}; histories and logs kept in {}):\n{stdout}\n{stderr}",
            first + seeds,
            kept.display()
        );
    }
    // Every run injected faults under load and every checker ran.
    let runs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(runs.len() as u64, seeds, "{stdout}");
    for r in &runs {
        assert!(r["counted_faults"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["checks"].as_array().unwrap().len(), 6, "{r}");
        let acked = r["ops"]["checkin"]["ok"].as_u64().unwrap_or(0);
        assert!(acked > 0, "no checkin succeeded: {r}");
    }
}
