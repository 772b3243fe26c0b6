//! `mirage bench checkin`: checking in a family of images, each timed side by side with
//! `cp --sparse=always` of the same raw image (plus `sync`) in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mirage_format::Digest;
use mirage_node::{Store, StoreOptions};

use crate::bench::{cpu_seconds, median, sync, Pair};

/// Options.
#[derive(Clone, Debug)]
pub struct CheckinBenchOptions {
    /// Images in check-in order (the first goes into an empty store).
    pub images: Vec<PathBuf>,
    /// Scratch directory (same filesystem for both sides).
    pub work: PathBuf,
    /// Repetitions; medians are reported.
    pub runs: usize,
    /// Indexer worker threads.
    pub threads: usize,
    /// After the last run, compact its store at this zstd level and report the size (0: no).
    pub compact_level: i32,
    /// How the store compresses during checkin.
    pub codec: mirage_node::Codec,
}

fn allocated(p: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(p)?.blocks() * 512)
}

/// Runs both sides of run `run` and returns (mirage, baseline) times: the baseline first in
/// even runs, mirage first in odd ones, so that neither side always meets the memory and disk
/// state the other leaves behind (on a VM, freshly backed page-cache memory is slow to touch).
fn side_by_side<T>(
    run: usize,
    mut mirage: impl FnMut() -> Result<T>,
    mut baseline: impl FnMut() -> Result<f64>,
) -> Result<(T, f64)> {
    if run % 2 == 0 {
        let b = baseline()?;
        Ok((mirage()?, b))
    } else {
        let m = mirage()?;
        Ok((m, baseline()?))
    }
}

/// `cp --sparse=always IMG` into the scratch directory, then `sync`: seconds taken (the copy
/// is deleted and synced away afterwards).
fn timed_cp(img: &Path, work: &Path) -> Result<f64> {
    let copy = work.join("cp-copy.img");
    let _ = std::fs::remove_file(&copy);
    sync()?;
    let t = Instant::now();
    if !Command::new("cp")
        .arg("--sparse=always")
        .arg(img)
        .arg(&copy)
        .status()?
        .success()
    {
        bail!("cp failed");
    }
    sync()?;
    let took = t.elapsed().as_secs_f64();
    std::fs::remove_file(&copy)?;
    sync()?;
    Ok(took)
}

/// Per image: checkin time vs cp time (medians); then store size against the images.
pub fn bench_checkin(
    o: &CheckinBenchOptions,
    mut say: impl FnMut(&str),
) -> Result<(Vec<Pair>, serde_json::Value)> {
    for i in &o.images {
        if !i.is_file() {
            bail!("{} not found: build the corpus with ../shared/corpus/make-images.sh ~/.cache/mirage-corpus", i.display());
        }
    }
    std::fs::create_dir_all(&o.work).with_context(|| format!("creating {}", o.work.display()))?;
    let n = o.images.len();
    let mut mirage_t = vec![Vec::new(); n];
    let mut cp_t = vec![Vec::new(); n];
    let mut cpu_t: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut stored = 0u64;
    let mut compacted: Option<(u64, f64)> = None;
    let mut new_bytes = vec![0u64; n];
    for run in 0..o.runs {
        let dir = o.work.join(format!("checkin-store-{run}"));
        let _ = std::fs::remove_dir_all(&dir);
        for (k, img) in o.images.iter().enumerate() {
            // Warm the image in the page cache once for both sides.
            std::io::copy(&mut std::fs::File::open(img)?, &mut std::io::sink())?;
            let mut checkin = || -> Result<f64> {
                sync()?;
                let cpu = cpu_seconds();
                let t = Instant::now();
                // As `mirage checkin` does: the image is walked while the store opens.
                let (store, prepared) = crate::indexer::prepare_while(
                    || {
                        Store::open(
                            &dir,
                            StoreOptions {
                                create: true,
                                codec: o.codec,
                                ..StoreOptions::default()
                            },
                        )
                    },
                    img,
                    o.threads,
                );
                let store = store?;
                let opts = crate::indexer::CheckinOptions {
                    threads: o.threads,
                    hints: true,
                };
                let (_, stats) = crate::indexer::checkin_prepared(&store, prepared?, opts)?;
                store.checkpoint()?;
                drop(store);
                new_bytes[k] = stats.new_bytes;
                let took = t.elapsed().as_secs_f64();
                cpu_t[k].push(cpu_seconds() - cpu);
                Ok(took)
            };
            let (m, b) = side_by_side(run, &mut checkin, || timed_cp(img, &o.work))?;
            mirage_t[k].push(m);
            cp_t[k].push(b);
            say(&format!(
                "run {run} {}: cp {:.2} s, checkin {:.2} s ({:.2} s of CPU)",
                img.display(),
                cp_t[k][run],
                mirage_t[k][run],
                cpu_t[k][run],
            ));
        }
        let store = Store::open(&dir, StoreOptions::default())?;
        stored = store.stats()?.stored_bytes;
        if run + 1 == o.runs && o.compact_level != 0 {
            let t = Instant::now();
            store.compact(mirage_node::CompactOptions {
                level: o.compact_level,
                threads: o.threads,
            })?;
            compacted = Some((store.stats()?.stored_bytes, t.elapsed().as_secs_f64()));
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let mut pairs = Vec::new();
    let mut alloc_total = 0;
    for (k, img) in o.images.iter().enumerate() {
        let alloc = allocated(img)?;
        alloc_total += alloc;
        let name = img
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let what = if k == 0 {
            format!("checkin {name} (empty store)")
        } else {
            format!("checkin {name} (after the previous)")
        };
        pairs.push(Pair::new(
            &what,
            "cp --sparse=always + sync",
            &mirage_t[k],
            &cp_t[k],
            alloc,
            format!(
                "{:.1} MB new, {:.2} s of CPU",
                new_bytes[k] as f64 / 1e6,
                median(&cpu_t[k])
            ),
        ));
    }
    let summary = serde_json::json!({
        "images": o.images, "store_bytes": stored, "allocated_image_bytes": alloc_total,
        "store_vs_allocated": stored as f64 / alloc_total.max(1) as f64,
        "compact_level": o.compact_level, "codec": o.codec.to_string(),
        "compacted_store_bytes": compacted.map(|c| c.0),
        "compact_seconds": compacted.map(|c| c.1),
    });
    Ok((pairs, summary))
}

/// Whether a run starts with its input in the page cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cache {
    /// The image (for cp) and the store (for the checkout) were just read.
    Warm,
    /// Neither is in the page cache.
    Cold,
}

/// The regular files at `path` (itself, or everything under a directory).
fn files_at(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            files_at(&e?.path(), out)?;
        }
    } else if path.is_file() {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Puts `path` into the page cache (Warm) or takes it out (Cold, after a sync: dirty pages
/// cannot be dropped). Unprivileged: `posix_fadvise` on files the caller can open.
fn set_cache(path: &Path, cache: Cache) -> Result<()> {
    let mut files = Vec::new();
    files_at(path, &mut files)?;
    if cache == Cache::Cold {
        sync()?;
    }
    for p in files {
        let mut f = std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        match cache {
            Cache::Warm => {
                std::io::copy(&mut f, &mut std::io::sink())?;
            }
            Cache::Cold => rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?,
        }
    }
    Ok(())
}

/// Per image: checkout to raw vs `cp --sparse=always` of the original raw image (+ `sync`),
/// once with both inputs in the page cache (the image for cp, the store for the checkout) and
/// once with neither.
pub fn bench_checkout(o: &CheckinBenchOptions, mut say: impl FnMut(&str)) -> Result<Vec<Pair>> {
    std::fs::create_dir_all(&o.work)?;
    let dir = o.work.join("checkout-store");
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(
        &dir,
        StoreOptions {
            create: true,
            codec: o.codec,
            ..StoreOptions::default()
        },
    )?;
    let mut digests = Vec::new();
    for img in &o.images {
        digests.push(crate::indexer::checkin(&store, img, o.threads)?.0);
    }
    let store = reopened(store, &dir)?;
    let mut pairs = checkouts(o, &store, &dir, &digests, "", &mut say)?;
    // The store a library keeps: recompressed by `mirage store compact` (the store size of
    // `bench checkin` is measured so), read with fewer bytes and more CPU.
    let store = if o.compact_level != 0 {
        say(&format!(
            "compacting the store at zstd level {}",
            o.compact_level
        ));
        let t = Instant::now();
        let r = store.compact(mirage_node::CompactOptions {
            level: o.compact_level,
            threads: o.threads,
        })?;
        say(&format!(
            "compacted: {:.1} MB -> {:.1} MB in {:.0} s",
            r.bytes_before as f64 / 1e6,
            r.bytes_after as f64 / 1e6,
            t.elapsed().as_secs_f64()
        ));
        let store = reopened(store, &dir)?;
        let label = format!(", store compacted at zstd level {}", o.compact_level);
        pairs.extend(checkouts(o, &store, &dir, &digests, &label, &mut say)?);
        store
    } else {
        store
    };
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(pairs)
}

/// `store` closed and opened again, as a checkout process finds it after a checkin or a
/// compaction: the index's background work after the checkins (flushes, compactions) ran in
/// this process beside the first checkouts (base.img warm: 1.49 and 1.91 s of CPU, then
/// 0.77 s).
fn reopened(store: Store, dir: &Path) -> Result<Store> {
    drop(store);
    Ok(Store::open(dir, StoreOptions::default())?)
}

/// Each image checked out of `store` (at `dir`) against `cp` of it, warm then cold; `what`
/// ends each pair's label.
fn checkouts(
    o: &CheckinBenchOptions,
    store: &Store,
    dir: &Path,
    digests: &[Digest],
    what: &str,
    say: &mut impl FnMut(&str),
) -> Result<Vec<Pair>> {
    // One untimed round first, so that no measured run is the first after the store's open
    // or after the host's last large write (docs/PERFORMANCE.md, twenty-sixth session).
    if let (Some(img), Some(d)) = (o.images.first(), digests.first()) {
        let out = o.work.join("checkout.img");
        let _ = std::fs::remove_file(&out);
        crate::checkout::checkout(store, d, &out, Default::default())?;
        std::fs::remove_file(&out)?;
        timed_cp(img, &o.work)?;
        sync()?;
    }
    let mut pairs = Vec::new();
    for cache in [Cache::Warm, Cache::Cold] {
        let label = if cache == Cache::Warm { "warm" } else { "cold" };
        for (img, d) in o.images.iter().zip(digests) {
            let (mut m, mut b, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
            for run in 0..o.runs {
                let checkout = || -> Result<(f64, f64)> {
                    let out = o.work.join("checkout.img");
                    let _ = std::fs::remove_file(&out);
                    set_cache(dir, cache)?;
                    sync()?;
                    let c = cpu_seconds();
                    let t = Instant::now();
                    crate::checkout::checkout(store, d, &out, Default::default())?;
                    sync()?;
                    let took = t.elapsed().as_secs_f64();
                    let c = cpu_seconds() - c;
                    std::fs::remove_file(&out)?;
                    Ok((took, c))
                };
                let cp = || -> Result<f64> {
                    set_cache(img, cache)?;
                    timed_cp(img, &o.work)
                };
                let ((tm, c), tb) = side_by_side(run, checkout, cp)?;
                m.push(tm);
                b.push(tb);
                cpu.push(c);
                say(&format!(
                    "run {run} {} ({label}{what}): cp {:.2} s, checkout {:.2} s ({c:.2} s of CPU)",
                    img.display(),
                    b[run],
                    m[run]
                ));
            }
            let name = img
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            pairs.push(Pair::new(
                &format!("checkout {name} to raw ({label}{what})"),
                "cp --sparse=always + sync",
                &m,
                &b,
                allocated(img)?,
                format!("{:.2} s of CPU", median(&cpu)),
            ));
        }
    }
    Ok(pairs)
}
