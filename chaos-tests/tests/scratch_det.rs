#![allow(clippy::unwrap_used)]
use mirage_chaos_tests::sim::{self, SimConfig};

#[test]
fn scratch() {
    let seed: u64 = std::env::var("S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let cfg = SimConfig {
        nodes: if seed % 2 == 0 { 3 } else { 5 },
        ..SimConfig::default()
    };
    let file = std::sync::Mutex::new(std::fs::File::create("/tmp/scratch/o.log").unwrap());
    let filter = std::env::var("F").unwrap_or("openraft=info".into());
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_writer(file)
        .finish();
    let t = tracing::subscriber::with_default(sub, || sim::run_traced(seed, &cfg));
    let pat = std::env::var("P").unwrap_or("fault".into());
    for l in &t.trace {
        if pat.split('|').any(|p| l.contains(p)) {
            eprintln!("T {}", &l[..l.len().min(200)]);
        }
    }
    eprintln!("RESULT {:?}", t.result.map(|r| (r.final_term, r.ops_total)));
}
