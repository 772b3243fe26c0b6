//! The `mirage` command line.

/// mimalloc: the content workers allocate chunk buffers that the store's committer frees, a
/// pattern glibc's malloc serves with arena-lock waits and fresh mmaps (PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mirage_client::context::Ctx;
use mirage_client::{bench, ingest, library, paths, restore};

mod cli_demo;
mod cli_transfer;
use cli_demo::run_demo;
use mirage_format::{Algorithm, Digest, Item};
use mirage_node::{Store, StoreOptions};

/// Mirage: a file-aware library of virtual-machine disk images.
#[derive(Parser, Debug)]
#[command(name = "mirage", version, about, long_about = None)]
struct Cli {
    /// Store directory (default: $MIRAGE_STORE, else ~/.local/share/mirage).
    #[arg(long, global = true, env = "MIRAGE_STORE", value_name = "DIR")]
    store: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Act as USER in the catalog (default: $MIRAGE_USER, else $USER; embedded store only:
    /// against a cluster the token says who you are).
    #[arg(long = "as", global = true, env = "MIRAGE_USER", value_name = "USER")]
    as_user: Option<String>,
    /// Run against a cluster (node URLs, comma-separated, e.g. http://10.0.0.1:7300; a node
    /// that does not answer is skipped) instead of the embedded store; --store is then the
    /// local cache (default ~/.cache/mirage/clusters/…).
    #[arg(long, global = true, env = "MIRAGE_CLUSTER", value_name = "URL")]
    cluster: Option<String>,
    /// Bearer token for --cluster (`mirage user add` prints one).
    #[arg(
        long,
        global = true,
        env = "MIRAGE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Your zone in the cluster (--cluster): items are read from storage nodes in this zone
    /// first, other zones only when they fail or time out.
    #[arg(long, global = true, env = "MIRAGE_ZONE", value_name = "ZONE")]
    zone: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    #[command(flatten)]
    Library(library::LibraryCmd),
    #[command(flatten)]
    Transfer(cli_transfer::TransferCmd),
    /// Create a store.
    Init {
        /// Digest algorithm, fixed for the store's lifetime.
        #[arg(long, default_value = "sha256", value_parser = ["sha256", "sha1"])]
        digest: String,
    },
    /// Inspect and check the store.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// Print one item in its JSON view.
    Item {
        /// Digest, e.g. sha256:<hex>.
        digest: String,
    },
    /// Check a disk image in (raw or qcow2); prints the image digest, its serial number.
    Checkin {
        /// Image file.
        image: PathBuf,
        /// Worker threads.
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
        /// Register the image as a new version of NAME (creating NAME, owned by you, if new).
        #[arg(long)]
        name: Option<String>,
        /// Provenance: the image this one derives from (NAME, NAME@VERSION or digest; default
        /// with --name: NAME's current default version).
        #[arg(long, requires = "name")]
        parent: Option<String>,
        /// Free text kept with the image in the catalog.
        #[arg(long, requires = "name", default_value = "")]
        description: String,
        /// Hash every file, using no checkin hints (for images that may have been crafted to
        /// collide with content the store holds; see docs/FORMAT.md, "Checkin hints").
        #[arg(long)]
        rehash: bool,
        /// Read a qcow2 image with the files it names: its backing chain or its external data
        /// file (through qemu-img). Only for images you trust: an image names the files it is
        /// read with.
        #[arg(long)]
        follow_backing: bool,
    },
    /// Recreate a disk image: partition table, raw regions, swap, ext2/3/4 and vfat filesystems.
    Checkout {
        /// NAME, NAME@VERSION or digest.
        reference: String,
        /// Output file (must not exist).
        #[arg(short, long)]
        output: PathBuf,
        /// Output format.
        #[arg(long, default_value = "raw", value_parser = ["raw", "qcow2"])]
        format: String,
        /// Rebuild every filesystem from its file tree (mke2fs and friends) instead of laying
        /// it out as it was checked in.
        #[arg(long)]
        rebuild: bool,
        /// Re-hash every file content read from the store (records are always CRC-checked).
        #[arg(long)]
        verify: bool,
    },
    /// Show an image: disks, partitions, filesystems, sizes, identities.
    Show {
        /// NAME, NAME@VERSION or digest.
        reference: String,
    },
    /// List a directory of a filesystem in an image: REF[:PART] [PATH].
    Ls {
        /// NAME, NAME@VERSION or digest, optionally with `:PART` (partition number).
        reference: String,
        /// Path inside the filesystem (any bytes: names need not be UTF-8).
        #[arg(default_value = "/")]
        path: std::ffi::OsString,
        /// Long listing with metadata.
        #[arg(short, long)]
        long: bool,
    },
    /// Print a file of a filesystem in an image: REF[:PART] PATH.
    Cat {
        /// NAME, NAME@VERSION or digest, optionally with `:PART` (partition number).
        reference: String,
        /// Path inside the filesystem (any bytes: names need not be UTF-8).
        path: std::ffi::OsString,
    },
    /// Store a directory tree; prints its root Tree digest.
    PutTree {
        /// Directory to store.
        dir: PathBuf,
        /// Worker threads.
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
    },
    /// Recreate a stored directory tree.
    GetTree {
        /// Root Tree digest.
        digest: String,
        /// Output directory (must not exist).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Generate data, store it, restore it, compare, and verify the store.
    Demo {
        /// Size multiplier for the generated tree.
        #[arg(long, default_value_t = 1)]
        scale: usize,
        /// Keep the generated and restored trees here instead of a temporary directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Benchmarks, each side by side with a baseline.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Cluster administration (with --cluster).
    Admin {
        #[command(subcommand)]
        cmd: mirage_client::admin::AdminCmd,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Items, logical bytes, stored bytes, volumes.
    Stats,
    /// Re-hash every item and report damage (exit status 3 when damage is found).
    Verify,
    /// Rewrite every volume, recompressing each item at LEVEL and dropping unreferenced
    /// copies (checkin writes at a fast level; this spends the CPU once for a smaller store).
    Compact {
        /// zstd level (1..=22; 19 is slow and small).
        #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
        /// Compression threads.
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
    },
}

/// Arguments of the image benchmarks.
#[derive(clap::Args, Debug)]
struct ImageBenchArgs {
    /// Images in order (default: the corpus base, derived-1, derived-2, derived-3).
    images: Vec<PathBuf>,
    /// Scratch directory.
    #[arg(long, default_value = "/var/tmp/mirage-bench")]
    work: PathBuf,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Indexer worker threads.
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    /// Compact at this zstd level (0: skip): checkin compacts the last run's store and
    /// reports its size; checkout measures every image again out of the compacted store.
    #[arg(long, default_value_t = 19)]
    compact_level: i32,
    /// How the bench's store compresses what it writes: auto, none, lz4, zstd or zstd:LEVEL.
    #[arg(long, default_value_t = StoreOptions::default().codec)]
    codec: mirage_node::Codec,
}

impl ImageBenchArgs {
    fn options(&self) -> mirage_client::bench_image::CheckinBenchOptions {
        mirage_client::bench_image::CheckinBenchOptions {
            images: corpus_images(&self.images),
            work: self.work.clone(),
            runs: self.runs.max(1),
            threads: self.threads,
            compact_level: self.compact_level,
            codec: self.codec,
        }
    }
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Catalog commands and queries per second in the embedded store.
    Catalog {
        /// Commands to apply (and queries to run).
        #[arg(long, default_value_t = 2000)]
        ops: u64,
        /// Scratch directory.
        #[arg(long, default_value = "/var/tmp/mirage-bench")]
        work: PathBuf,
    },
    /// Search by path, content and package over a library of many images (the corpus family
    /// plus derived variants).
    Search {
        /// Images in the library.
        #[arg(long, default_value_t = 1000)]
        images: u64,
        /// Scratch directory.
        #[arg(long, default_value = "/var/tmp/mirage-bench")]
        work: PathBuf,
        /// Source images (default: the four corpus images).
        sources: Vec<PathBuf>,
    },
    /// Checkout of an image family to raw, each image timed against cp --sparse=always.
    Checkout(ImageBenchArgs),
    /// Checkin of an image family, each image timed against cp --sparse=always.
    Checkin(ImageBenchArgs),
    /// Storage engine: ingest vs cp -a, location tables vs index lookups, hashing vs coreutils.
    Store {
        /// Tree to ingest (default: the corpus base root filesystem).
        #[arg(long)]
        tree: Option<PathBuf>,
        /// Scratch directory.
        #[arg(long, default_value = "/var/tmp/mirage-bench")]
        work: PathBuf,
        /// MiB hashed in the hashing comparison.
        #[arg(long, default_value_t = 1024)]
        hash_mib: usize,
        /// Repetitions (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Ingest worker threads.
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
        /// Extra small items put in the index before the read comparison (a large library).
        #[arg(long, default_value_t = 0)]
        index_items: u64,
    },
}

/// The given images, or the four corpus images.
fn corpus_images(images: &[PathBuf]) -> Vec<PathBuf> {
    if !images.is_empty() {
        return images.to_vec();
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    ["base", "derived-1", "derived-2", "derived-3"]
        .iter()
        .map(|n| home.join(format!(".cache/mirage-corpus/images/{n}.img")))
        .collect()
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn main() -> ExitCode {
    // `mirage ... | head`: a closed stdout ends the program quietly, like other Unix tools.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIRAGE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Before any thread or large allocation (mirage_node::memory says why).
    mirage_node::memory::no_transparent_huge_pages();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                // Errors that print their source already must not print it twice.
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("mirage: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn store_dir(cli: &Cli) -> PathBuf {
    match (&cli.store, &cli.cluster) {
        (Some(s), _) => s.clone(),
        (None, Some(url)) => paths::default_cache(url),
        (None, None) => paths::default_store(),
    }
}

/// Releases an upload lease; a failure only costs the lease running to its end.
fn release_lease(r: &mirage_client::remote::Remote, id: &str) {
    if let Err(e) = r.release(id) {
        tracing::warn!("releasing upload lease {id}: {e:#}");
    }
}

/// The cluster of `--cluster`, if any.
fn remote(cli: &Cli) -> Result<Option<mirage_client::remote::Remote>> {
    match &cli.cluster {
        None => Ok(None),
        Some(url) => {
            let token = cli
                .token
                .as_deref()
                .context("--cluster needs --token (or MIRAGE_TOKEN)")?;
            Ok(Some(
                mirage_client::remote::Remote::new(url, token)?.with_zone(cli.zone.clone()),
            ))
        }
    }
}

/// Opens the store, creating a SHA-256 store when there is none (zero set-up).
fn open_or_create(dir: &Path) -> Result<Store> {
    Store::open(
        dir,
        StoreOptions {
            create: true,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("opening store {}", dir.display()))
}

/// The store read verbs use: the embedded store (it must exist), or a cluster's local cache
/// (created on first use).
fn open_content(dir: &Path, remote: bool) -> Result<Store> {
    if remote {
        open_or_create(dir)
    } else {
        open_existing(dir)
    }
}

fn open_existing(dir: &Path) -> Result<Store> {
    Store::open(dir, StoreOptions::default())
        .with_context(|| format!("opening store {}", dir.display()))
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_pairs(json: bool, pairs: &[bench::Pair]) -> Result<()> {
    if json {
        return print_json(&pairs);
    }
    for p in pairs {
        println!("{}", p.line());
    }
    Ok(())
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let dir = store_dir(&cli);
    let caller = cli.as_user.clone().unwrap_or_else(library::default_caller);
    let remote = remote(&cli)?;
    // The content store (embedded, or the cluster's local cache) and where the catalog is.
    let ctx_of = |store| -> Result<Ctx<'_>> {
        match &remote {
            Some(r) => Ctx::remote(store, r),
            None => Ok(Ctx::local(store, &caller)),
        }
    };
    match &cli.cmd {
        Cmd::Transfer(t) => {
            use cli_transfer::TransferCmd as T;
            use mirage_client::transfer::Library;
            let pull = matches!(t, T::Pull { .. } | T::Restore { .. });
            let here = match remote {
                // A cluster is read through its cache when it is the source.
                Some(r) => Library::cluster(r, (!pull).then_some(dir.as_path()))?,
                None => Library::dir(&dir, &caller, pull)?,
            };
            cli_transfer::run(t, here, &caller, cli.json)?;
        }
        Cmd::Admin { cmd } => {
            let r = remote
                .as_ref()
                .context("mirage admin works on a cluster: give --cluster URL --token T")?;
            mirage_client::admin::run(r, cmd, cli.json)?;
        }
        Cmd::Init { digest } => {
            let alg: Algorithm = digest.parse()?;
            let existed = dir.join("index").join("CURRENT").exists();
            let store = Store::open(
                &dir,
                StoreOptions {
                    algorithm: Some(alg),
                    create: true,
                    ..StoreOptions::default()
                },
            )
            .with_context(|| format!("initializing store {}", dir.display()))?;
            if cli.json {
                print_json(
                    &serde_json::json!({"store": dir, "digest": store.algorithm().name(), "created": !existed}),
                )?;
            } else if existed {
                println!(
                    "store {} already exists ({})",
                    dir.display(),
                    store.algorithm()
                );
            } else {
                println!(
                    "initialized store {} ({})",
                    dir.display(),
                    store.algorithm()
                );
            }
        }
        Cmd::Store {
            cmd: StoreCmd::Stats,
        } => {
            let s = open_existing(&dir)?.stats()?;
            if cli.json {
                print_json(&s)?;
            } else {
                println!("store:          {}", dir.display());
                println!("digest:         {}", s.algorithm);
                println!("items:          {}", s.items);
                for (k, n) in &s.by_kind {
                    println!("  {k:<12}  {n}");
                }
                println!(
                    "logical bytes:  {} ({})",
                    s.logical_bytes,
                    mb(s.logical_bytes)
                );
                println!(
                    "stored bytes:   {} ({})",
                    s.stored_bytes,
                    mb(s.stored_bytes)
                );
                println!("volumes:        {} ({})", s.volumes, mb(s.volume_bytes));
            }
        }
        Cmd::Store {
            cmd: StoreCmd::Verify,
        } => {
            let store = open_existing(&dir)?;
            let r = store.verify(|_| {})?;
            if cli.json {
                print_json(&r)?;
            } else {
                println!("records read:  {}  ({})", r.records, mb(r.bytes));
                println!("items ok:      {}", r.items_ok);
                println!("damaged:       {}", r.damaged.len());
                for d in &r.damaged {
                    let who = d
                        .digest
                        .map_or_else(|| "(unknown item)".to_string(), |d| d.to_text());
                    println!(
                        "  {who} volume {} offset {}: {}",
                        d.volume, d.offset, d.reason
                    );
                }
            }
            if !r.damaged.is_empty() {
                return Ok(ExitCode::from(3));
            }
        }
        Cmd::Store {
            cmd: StoreCmd::Compact { level, threads },
        } => {
            let store = open_existing(&dir)?;
            let r = store.compact(mirage_node::CompactOptions {
                level: *level,
                threads: *threads,
            })?;
            if cli.json {
                print_json(&r)?;
            } else {
                println!(
                    "{} items rewritten at zstd level {level}, {} unreferenced copies dropped, {} volumes replaced",
                    r.items, r.dropped, r.volumes
                );
                println!("volumes: {} -> {}", mb(r.bytes_before), mb(r.bytes_after));
                if r.damaged > 0 {
                    println!(
                        "damaged records left in place: {} (see mirage store verify)",
                        r.damaged
                    );
                }
            }
        }
        Cmd::Item { digest } => {
            let d: Digest = digest.parse()?;
            let bytes = match &remote {
                Some(r) => {
                    let mut got = None;
                    r.get_each(&[d], None, &Default::default(), |b| {
                        got = Some(b);
                        Ok(())
                    })?;
                    let b =
                        got.with_context(|| format!("{} is not in {}", d.to_text(), r.url()))?;
                    if Digest::of(d.algorithm(), &b)? != d {
                        anyhow::bail!("{} sent bytes that do not hash to {}", r.url(), d.to_text());
                    }
                    b
                }
                None => open_existing(&dir)?
                    .get(&d)?
                    .with_context(|| format!("{} is not in the store", d.to_text()))?,
            };
            let item = Item::decode(&bytes)?;
            print_json(&item)?;
        }
        Cmd::Checkin {
            image,
            threads,
            rehash,
            follow_backing,
            name,
            parent,
            description,
        } => {
            // The image is read and its filesystems walked while the store opens.
            let (store, prepared) = mirage_client::indexer::prepare_while_with(
                || open_or_create(&dir),
                image,
                *threads,
                *follow_backing,
            );
            let store = store?;
            let ctx = ctx_of(&store)?;
            let parent = match (name, parent) {
                (Some(_), Some(p)) => Some(ctx.image_of(p)?),
                _ => None,
            };
            if name.is_some() && remote.is_none() {
                // Refuse before the work, not after it.
                library::ensure_caller(&store, &caller)?;
            }
            let opts = mirage_client::indexer::CheckinOptions {
                threads: *threads,
                hints: !*rehash,
            };
            let (root, stats) = prepared
                .and_then(|p| mirage_client::indexer::checkin_prepared(&store, p, opts))
                .with_context(|| format!("checking in {}", image.display()))?;
            // Package databases are read and kept now (cached by content), so inventory and
            // package searches never parse them on the query path.
            if let Err(e) = mirage_client::inventory::of_image(&store, &root) {
                tracing::warn!("package inventory of {}: {e:#}", root.to_text());
            }
            // Remote: the items go out under an upload lease, released once the image is
            // committed to the catalog (or the push failed).
            let lease = match &remote {
                Some(r) => Some(r.lease(&[root])?),
                None => None,
            };
            let sent = (|| -> Result<_> {
                let pushed = match &remote {
                    Some(r) => Some(
                        mirage_client::remote::sync::push(&store, r, &root).with_context(|| {
                            format!("sending {} to {}", root.to_text(), r.url())
                        })?,
                    ),
                    None => None,
                };
                let registered = match name {
                    Some(n) => Some(
                        ctx.submit(mirage_node::catalog::Command::Checkin {
                            name: n.clone(),
                            image: root,
                            parent,
                            description: description.clone(),
                        })?
                        .response,
                    ),
                    None => None,
                };
                Ok((pushed, registered))
            })();
            if let (Some(r), Some(id)) = (&remote, &lease) {
                release_lease(r, id);
            }
            let (pushed, registered) = sent?;
            if cli.json {
                print_json(
                    &serde_json::json!({"image": root, "stats": stats, "catalog": registered, "pushed": pushed}),
                )?;
            } else if let Some(r) = registered {
                println!(
                    "{}  {}@{}",
                    root.to_text(),
                    r.name.unwrap_or_default(),
                    r.version.unwrap_or_default()
                );
            } else {
                println!("{}", root.to_text());
            }
        }
        Cmd::Library(cmd) => {
            let store = open_or_create(&dir)?;
            library::run(&ctx_of(&store)?, cli.json, cmd)?;
        }
        Cmd::Checkout {
            reference,
            output,
            format,
            rebuild,
            verify,
        } => {
            let store = open_content(&dir, remote.is_some())?;
            let d = ctx_of(&store)?.image_with_content(reference)?;
            let opts = mirage_client::checkout::CheckoutOptions {
                format: if format == "qcow2" {
                    mirage_client::checkout::Format::Qcow2
                } else {
                    mirage_client::checkout::Format::Raw
                },
                rebuild: *rebuild,
                verify: *verify,
                ..Default::default()
            };
            let stats = mirage_client::checkout::checkout(&store, &d, output, opts)?;
            if cli.json {
                print_json(&stats)?;
            } else {
                println!(
                    "wrote {} ({} bytes, {} written)",
                    output.display(),
                    stats.disk_bytes,
                    stats.written_bytes
                );
            }
        }
        Cmd::Show { reference } => {
            let store = open_content(&dir, remote.is_some())?;
            let d = ctx_of(&store)?.image_with_content(reference)?;
            let v = mirage_client::browse::show(&store, &d)?;
            if cli.json {
                print_json(&v)?;
            } else {
                print!("{}", mirage_client::browse::show_text(&v));
            }
        }
        Cmd::Ls {
            reference,
            path,
            long,
        } => {
            let store = open_content(&dir, remote.is_some())?;
            let (r, part) = library::split_partition(reference);
            let d = ctx_of(&store)?.image_with_content(r)?;
            let entries = mirage_client::browse::ls(&store, &d, part, path.as_bytes())?;
            if cli.json {
                print_json(&entries)?;
            } else {
                for e in &entries {
                    println!("{}", mirage_client::browse::ls_line(e, *long));
                }
            }
        }
        Cmd::Cat { reference, path } => {
            let store = open_content(&dir, remote.is_some())?;
            let (r, part) = library::split_partition(reference);
            let d = ctx_of(&store)?.image_with_content(r)?;
            let mut out = std::io::stdout().lock();
            mirage_client::browse::cat(&store, &d, part, path.as_bytes(), &mut out)?;
        }
        Cmd::PutTree { dir: src, threads } => {
            let store = open_or_create(&dir)?;
            let (root, stats) = ingest::ingest_dir(&store, src, *threads)?;
            if let Some(r) = &remote {
                mirage_client::remote::sync::push(&store, r, &root)?;
            }
            if cli.json {
                print_json(&serde_json::json!({"root": root, "stats": stats}))?;
            } else {
                println!("{}", root.to_text());
            }
        }
        Cmd::GetTree { digest, output } => {
            let d: Digest = digest.parse()?;
            let store = open_content(&dir, remote.is_some())?;
            ctx_of(&store)?.content(&d)?;
            let stats = restore::restore_tree(&store, &d, output)?;
            if cli.json {
                print_json(&stats)?;
            } else {
                println!(
                    "restored {} files, {} dirs, {} symlinks ({}) into {}",
                    stats.files,
                    stats.dirs,
                    stats.symlinks,
                    mb(stats.bytes),
                    output.display()
                );
                if stats.skipped_special > 0 {
                    println!(
                        "skipped {} device nodes, fifos or sockets",
                        stats.skipped_special
                    );
                }
            }
        }
        Cmd::Demo { scale, keep } => return run_demo(&cli, &dir, *scale, keep.as_deref()),
        Cmd::Bench {
            cmd: BenchCmd::Checkout(args),
        } => {
            let o = args.options();
            let json = cli.json;
            let pairs = mirage_client::bench_image::bench_checkout(&o, |m| {
                if !json {
                    eprintln!("{m}")
                }
            })?;
            print_pairs(json, &pairs)?;
        }
        Cmd::Bench {
            cmd: BenchCmd::Checkin(args),
        } => {
            let o = args.options();
            let json = cli.json;
            let (pairs, summary) = mirage_client::bench_image::bench_checkin(&o, |m| {
                if !json {
                    eprintln!("{m}")
                }
            })?;
            if json {
                print_json(&serde_json::json!({"pairs": pairs, "summary": summary}))?;
            } else {
                for p in &pairs {
                    println!("{}", p.line());
                }
                println!(
                    "store after all images: {} bytes = {:.3} x the {} allocated image bytes",
                    summary["store_bytes"],
                    summary["store_vs_allocated"].as_f64().unwrap_or(f64::NAN),
                    summary["allocated_image_bytes"]
                );
                if let Some(c) = summary["compacted_store_bytes"].as_u64() {
                    println!(
                        "after mirage store compact --level {}: {c} bytes = {:.3} x the allocated image bytes ({:.1} s)",
                        summary["compact_level"],
                        c as f64 / summary["allocated_image_bytes"].as_f64().unwrap_or(f64::NAN),
                        summary["compact_seconds"].as_f64().unwrap_or(f64::NAN)
                    );
                }
            }
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Search {
                    images,
                    work,
                    sources,
                },
        } => {
            let r =
                mirage_client::bench_search::bench_search(&corpus_images(sources), work, *images)?;
            if cli.json {
                print_json(&r)?;
            } else {
                println!(
                    "{} images ({:.1} s to derive the variants)",
                    r.images, r.setup_seconds
                );
                for q in &r.queries {
                    println!(
                        "search {:<55} {:.3} s  {} images match, {} trees read",
                        q.query, q.seconds, q.matching_images, q.trees_read
                    );
                }
            }
        }
        Cmd::Bench {
            cmd: BenchCmd::Catalog { ops, work },
        } => {
            let r = mirage_client::bench_catalog::bench_catalog(work, *ops)?;
            if cli.json {
                print_json(&r)?;
            } else {
                println!(
                    "catalog: {} commands at {:.0}/s (each synced), {:.0} resolutions/s, {:.0} listings/s",
                    r.commands, r.commands_per_sec, r.resolves_per_sec, r.lists_per_sec
                );
            }
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Store {
                    tree,
                    work,
                    hash_mib,
                    runs,
                    threads,
                    index_items,
                },
        } => {
            let tree = tree.clone().unwrap_or_else(|| {
                let home =
                    std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
                home.join(".cache/mirage-corpus/rootfs/base")
            });
            let o = bench::BenchOptions {
                tree,
                work: work.clone(),
                hash_mib: *hash_mib,
                runs: (*runs).max(1),
                threads: *threads,
                index_items: *index_items,
            };
            let json = cli.json;
            let pairs = bench::bench_store(&o, |m| {
                if !json {
                    eprintln!("{m}")
                }
            })?;
            print_pairs(json, &pairs)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
