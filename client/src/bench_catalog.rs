//! `mirage bench catalog`: catalog commands and queries per second in the embedded store
//! (each command is a synced RocksDB write of its log entry and state changes).

use std::time::Instant;

use anyhow::Result;
use mirage_format::{Algorithm, Digest};
use mirage_node::catalog::Command;
use mirage_node::{Store, StoreOptions};
use serde::Serialize;

/// What the benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct CatalogBench {
    /// Commands applied (new versions of 20 names, then default moves).
    pub commands: u64,
    /// Commands per second.
    pub commands_per_sec: f64,
    /// `NAME@VERSION` resolutions per second (ACL checked).
    pub resolves_per_sec: f64,
    /// Listings of every readable name per second.
    pub lists_per_sec: f64,
}

/// Runs `n` commands and as many queries in a fresh store under `work`.
pub fn bench_catalog(work: &std::path::Path, n: u64) -> Result<CatalogBench> {
    let dir = work.join("catalog-bench");
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(
        &dir,
        StoreOptions {
            create: true,
            ..Default::default()
        },
    )?;
    let c = store.catalog();
    c.submit(
        "bench",
        Command::AddUser {
            name: "bench".into(),
            admin: true,
            token_sha256: None,
        },
    )?;
    let t = Instant::now();
    for i in 0..n {
        let name = format!("image-{:02}", i % 20);
        let cmd = if i >= 20 && i % 5 == 4 {
            Command::SetDefault { name, version: 1 }
        } else {
            Command::Checkin {
                name,
                image: Digest::of(Algorithm::Sha256, &i.to_le_bytes())?,
                parent: None,
                description: String::new(),
            }
        };
        c.submit("bench", cmd)?;
    }
    let commands_per_sec = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        c.resolve("bench", &format!("image-{:02}@1", i % 20))?;
    }
    let resolves_per_sec = n as f64 / t.elapsed().as_secs_f64();
    let lists = (n / 10).max(1);
    let t = Instant::now();
    for _ in 0..lists {
        c.list("bench")?;
    }
    let lists_per_sec = lists as f64 / t.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(CatalogBench {
        commands: n,
        commands_per_sec,
        resolves_per_sec,
        lists_per_sec,
    })
}
