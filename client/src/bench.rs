//! `mirage bench store`: the storage engine measured side by side with a baseline in the same
//! run — ingest vs `cp -a`, location-table reads vs index lookups, hashing vs coreutils.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mirage_format::{Algorithm, Digest, Hasher, Item};
use mirage_node::{ReadOptions, Store, StoreOptions};

use crate::ingest::ingest_dir;

/// Options.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Tree to ingest (a corpus root filesystem).
    pub tree: PathBuf,
    /// Scratch directory (same filesystem is best: both sides write there).
    pub work: PathBuf,
    /// Size of the hashing input.
    pub hash_mib: usize,
    /// Repetitions; medians are reported.
    pub runs: usize,
    /// Ingest worker threads.
    pub threads: usize,
    /// Extra small items added to the index before the read comparison, so that the index no
    /// longer fits in memory the way it would in a large library.
    pub index_items: u64,
}

/// One measured pair.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Pair {
    /// What was measured.
    pub what: String,
    /// Mirage median seconds.
    pub mirage_s: f64,
    /// Baseline median seconds.
    pub baseline_s: f64,
    /// Baseline name.
    pub baseline: String,
    /// Bytes processed per run (for throughput).
    pub bytes: u64,
    /// `baseline_s / mirage_s`: above 1 means Mirage is faster.
    pub speedup: f64,
    /// `mirage_s / baseline_s`, the "× cp" the targets are written in: below 1 means Mirage
    /// is faster.
    pub times_baseline: f64,
    /// Free-form notes (counts, sizes).
    pub notes: String,
}

impl Pair {
    /// A pair from the run times of both sides.
    pub fn new(
        what: &str,
        baseline: &str,
        m: &[f64],
        b: &[f64],
        bytes: u64,
        notes: String,
    ) -> Self {
        let (mirage_s, baseline_s) = (median(m), median(b));
        Pair {
            what: what.into(),
            mirage_s,
            baseline_s,
            baseline: baseline.into(),
            bytes,
            speedup: baseline_s / mirage_s,
            times_baseline: mirage_s / baseline_s,
            notes,
        }
    }

    /// One line for people.
    pub fn line(&self) -> String {
        let mbps = |s: f64| {
            if self.bytes > 0 {
                format!(" ({:.0} MB/s)", self.bytes as f64 / s / 1e6)
            } else {
                String::new()
            }
        };
        format!(
            "{:<38} mirage {:>8.3} s{}  |  {} {:>8.3} s{}  |  mirage = {:.2} x baseline \
             (baseline/mirage {:.2})  {}",
            self.what,
            self.mirage_s,
            mbps(self.mirage_s),
            self.baseline,
            self.baseline_s,
            mbps(self.baseline_s),
            self.times_baseline,
            self.speedup,
            self.notes
        )
    }
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t = Instant::now();
    let r = f()?;
    Ok((t.elapsed().as_secs_f64(), r))
}

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// Flushes every dirty page to disk.
pub(crate) fn sync() -> Result<()> {
    run(&mut Command::new("sync"))
}

/// CPU seconds (user and system, all threads) this process has used so far, from
/// `/proc/self/stat`; 0 where that cannot be read.
pub(crate) fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is the first; utime and
    // stime are the 12th and 13th, in clock ticks.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// Drops the page cache when allowed (root); returns whether it did.
fn drop_caches() -> bool {
    let _ = sync();
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n").is_ok()
}

fn warm(path: &Path) -> Result<u64> {
    // Read everything once so both sides start from the same warm page cache.
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    let mut buf = vec![0u8; 1 << 20];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p)?;
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        } else if m.is_file() {
            if let Ok(mut f) = std::fs::File::open(&p) {
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
            }
        }
    }
    Ok(total)
}

/// Runs every measurement and returns the pairs.
pub fn bench_store(o: &BenchOptions, mut say: impl FnMut(&str)) -> Result<Vec<Pair>> {
    if !o.tree.is_dir() {
        bail!(
            "{} is not a directory: build the corpus with ../shared/corpus/make-images.sh ~/.cache/mirage-corpus or pass --tree DIR",
            o.tree.display()
        );
    }
    std::fs::create_dir_all(&o.work).with_context(|| format!("creating {}", o.work.display()))?;
    let mut pairs = Vec::new();

    say(&format!("warming the page cache with {}", o.tree.display()));
    let bytes = warm(&o.tree)?;
    let (mut m, mut b) = (Vec::new(), Vec::new());
    let mut last_store = None;
    let mut notes = String::new();
    for r in 0..o.runs {
        let cp_dst = o.work.join(format!("cp-{r}"));
        let _ = std::fs::remove_dir_all(&cp_dst);
        // Start each timed step with nothing dirty in the page cache.
        sync()?;
        let (t, ()) = timed(|| {
            run(Command::new("cp").arg("-a").arg(&o.tree).arg(&cp_dst))?;
            sync()
        })?;
        b.push(t);
        std::fs::remove_dir_all(&cp_dst)?;
        let dir = o.work.join(format!("store-{r}"));
        let _ = std::fs::remove_dir_all(&dir);
        sync()?;
        let (t, (root, stats)) = timed(|| {
            let store = Store::open(
                &dir,
                StoreOptions {
                    create: true,
                    ..StoreOptions::default()
                },
            )?;
            let r = ingest_dir(&store, &o.tree, o.threads)?;
            store.checkpoint()?;
            Ok(r)
        })?;
        m.push(t);
        say(&format!(
            "run {r}: cp -a {:.2} s, mirage ingest {t:.2} s",
            b[r]
        ));
        let store = Store::open(&dir, StoreOptions::default())?;
        let st = store.stats()?;
        notes = format!(
            "{} files, {} items, logical {:.1} MB -> stored {:.1} MB",
            stats.files,
            st.items,
            st.logical_bytes as f64 / 1e6,
            st.stored_bytes as f64 / 1e6
        );
        drop(store);
        if let Some((old, _)) = last_store.replace((dir, root)) {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    pairs.push(Pair::new(
        "ingest tree (fsync'd)",
        "cp -a + sync",
        &m,
        &b,
        bytes,
        notes,
    ));
    let (dir, root) = last_store.context("no run")?;

    // Location tables vs index lookups, on the manifest with the most references and on the
    // whole tree (the checkout read pattern).
    let store = Store::open(&dir, StoreOptions::default())?;
    let (big, refs, trees) = biggest_tree(&store, &root)?;
    if o.index_items > 0 {
        say(&format!(
            "adding {} small items to the index",
            o.index_items
        ));
        pad_index(&store, o.index_items)?;
    }
    let index_size = store.stats()?.items;
    drop(store);
    let ropts = ReadOptions {
        verify_digest: false,
        ..ReadOptions::default()
    };
    for cold in [true, false] {
        let label = if cold { "cold" } else { "warm" };
        if cold && !drop_caches() {
            say("cannot drop the page cache (not root): cold runs are skipped");
            continue;
        }
        let (m, b, bytes) = table_vs_index(o.runs, cold, |use_table| {
            let store = Store::open(&dir, StoreOptions::default())?;
            if !cold {
                store.get_many(&refs, Some(&big), ropts, |_, _| {})?;
            }
            let ctx = use_table.then_some(&big);
            let (t, st) =
                timed(|| Ok(store.get_many(&refs, ctx, ropts, |_, r| assert!(r.is_ok()))?))?;
            Ok((t, st.bytes_read))
        })?;
        pairs.push(Pair::new(
            &format!("read one manifest's items ({label})"),
            "index lookups",
            &m,
            &b,
            bytes,
            format!(
                "{} items of tree {big:#}; index of {index_size} items",
                refs.len()
            ),
        ));
        let (m, b, bytes) = table_vs_index(o.runs, cold, |use_table| {
            let store = Store::open(&dir, StoreOptions::default())?;
            timed(|| read_all(&store, &trees, use_table, ropts))
        })?;
        pairs.push(Pair::new(
            &format!("read every item of the tree ({label})"),
            "index lookups",
            &m,
            &b,
            bytes,
            format!("{} trees; index of {index_size} items", trees.len()),
        ));
    }

    // Hashing vs coreutils on the same bytes.
    let input = o.work.join("hash-input.bin");
    let want = (o.hash_mib as u64) << 20;
    if std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0) != want {
        let mut f = std::fs::File::create(&input)?;
        for i in 0..o.hash_mib {
            std::io::Write::write_all(&mut f, &crate::demo::pseudo_random(i as u64, 1 << 20))?;
        }
    }
    warm(&input)?;
    for (alg, tool) in [
        (Algorithm::Sha256, "sha256sum"),
        (Algorithm::Sha1, "sha1sum"),
    ] {
        let (mut m, mut b) = (Vec::new(), Vec::new());
        for _ in 0..o.runs {
            let (t, ()) = timed(|| {
                run(Command::new(tool)
                    .arg(&input)
                    .stdout(std::process::Stdio::null()))
            })?;
            b.push(t);
            let (t, _) = timed(|| hash_file(&input, alg))?;
            m.push(t);
        }
        let note = if alg == Algorithm::Sha1 {
            "mirage: with collision detection"
        } else {
            ""
        };
        pairs.push(Pair::new(
            &format!("{alg} of {} MiB", o.hash_mib),
            tool,
            &m,
            &b,
            want,
            note.into(),
        ));
    }
    // Blobs of the average chunk size hashed four at a time (as a checkin hashes them)
    // against one at a time, in memory.
    let data = std::fs::read(&input)?;
    let blobs: Vec<&[u8]> = data.chunks(mirage_format::chunking::CHUNK_AVG).collect();
    let (mut m, mut b) = (Vec::new(), Vec::new());
    for _ in 0..o.runs {
        let (t, side) = timed(|| {
            Ok(mirage_format::item::blob_digests(
                Algorithm::Sha256,
                &blobs,
            )?)
        })?;
        m.push(t);
        let (t, alone) = timed(|| {
            blobs
                .iter()
                .map(|d| mirage_format::item::blob_digest(Algorithm::Sha256, d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::from)
        })?;
        b.push(t);
        anyhow::ensure!(
            side == alone,
            "blobs hashed side by side differ from one at a time"
        );
    }
    pairs.push(Pair::new(
        &format!("sha256 of {} blobs of 256 KiB, side by side", blobs.len()),
        "one at a time",
        &m,
        &b,
        want,
        "in memory; SHA-NI lanes (format::sha256_lanes)".into(),
    ));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(pairs)
}

/// Stores `n` distinct tiny blobs in large batches.
fn pad_index(store: &Store, n: u64) -> Result<()> {
    let mut i = 0u64;
    while i < n {
        let end = (i + 8192).min(n);
        let batch = (i..end)
            .map(|k| mirage_format::item::encode_blob(format!("index padding item {k}").as_bytes()))
            .collect();
        store.put_many(batch)?;
        i = end;
    }
    store.checkpoint()?;
    Ok(())
}

/// Runs `f(use_table)` `runs` times for each side, alternating, dropping the page cache first
/// when `cold`; returns the location-table times, the index-lookup times and the bytes read.
fn table_vs_index(
    runs: usize,
    cold: bool,
    mut f: impl FnMut(bool) -> Result<(f64, u64)>,
) -> Result<(Vec<f64>, Vec<f64>, u64)> {
    let (mut m, mut b, mut bytes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        for use_table in [true, false] {
            if cold {
                drop_caches();
            }
            let (t, n) = f(use_table)?;
            bytes = n;
            if use_table {
                m.push(t)
            } else {
                b.push(t)
            }
        }
    }
    Ok((m, b, bytes))
}

fn hash_file(path: &Path, alg: Algorithm) -> Result<Digest> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Hasher::new(alg);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize()?)
}

type TreeRefs = Vec<(Digest, Vec<Digest>)>;

/// Every tree under `root` with its references, and the one with the most.
fn biggest_tree(store: &Store, root: &Digest) -> Result<(Digest, Vec<Digest>, TreeRefs)> {
    let mut all = Vec::new();
    let mut stack = vec![*root];
    while let Some(d) = stack.pop() {
        let bytes = store.get(&d)?.with_context(|| format!("{d:#} missing"))?;
        let Item::Tree(t) = Item::decode(&bytes)? else {
            bail!("{d:#} is not a tree")
        };
        for e in &t.entries {
            if e.kind == mirage_format::EntryKind::Dir {
                stack.extend(e.content);
            }
        }
        all.push((d, Item::Tree(t).refs()));
    }
    let (big, refs) = all
        .iter()
        .max_by_key(|(_, r)| r.len())
        .cloned()
        .context("no trees")?;
    Ok((big, refs, all))
}

fn read_all(store: &Store, trees: &TreeRefs, use_table: bool, o: ReadOptions) -> Result<u64> {
    let mut bytes = 0;
    for (d, refs) in trees {
        let st = store.get_many(refs, use_table.then_some(d), o, |_, r| assert!(r.is_ok()))?;
        bytes += st.bytes_read;
    }
    Ok(bytes)
}
