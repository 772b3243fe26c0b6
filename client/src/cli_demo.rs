//! `mirage demo`: the main job end to end on the embedded store — a generated tree stored and
//! restored, then a sample disk image built, checked in, listed, checked out, fscked and
//! checked in again.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use mirage_client::{demo, ingest, restore};
use mirage_node::StoreError;

use super::{default_threads, mb, open_or_create, print_json, Cli};

pub(super) fn run_demo(
    cli: &Cli,
    dir: &Path,
    scale: usize,
    keep: Option<&Path>,
) -> Result<ExitCode> {
    let tmp;
    let work = match keep {
        Some(k) => {
            std::fs::create_dir_all(k)?;
            k.to_path_buf()
        }
        None => {
            tmp = tempdir()?;
            tmp.0.clone()
        }
    };
    let src = work.join("generated");
    let out = work.join("restored");
    for p in [&src, &out] {
        if p.exists() {
            bail!("{} already exists", p.display());
        }
    }
    let gen = demo::generate(&src, 7, scale).context("generating demo data")?;
    let store = open_or_create(dir)?;
    let before = store.stats()?;
    let t = std::time::Instant::now();
    let (root, stats) = ingest::ingest_dir(&store, &src, default_threads())?;
    let ingest_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let restored = restore::restore_tree(&store, &root, &out)?;
    let restore_s = t.elapsed().as_secs_f64();
    let diffs = demo::compare(&src, &out)?;
    // The main job: a disk image in and out.
    let img = work.join("disk.img");
    let layout =
        demo::build_disk_image(&src, &img, gen.bytes).context("building the sample disk image")?;
    let t = std::time::Instant::now();
    let (image, checkin_stats) = mirage_client::indexer::checkin(&store, &img, default_threads())?;
    let checkin_s = t.elapsed().as_secs_f64();
    let listing: Vec<String> = mirage_client::browse::ls(&store, &image, None, "/")?
        .iter()
        .map(|e| mirage_client::browse::ls_line(e, true))
        .collect();
    let copy = work.join("checkout.img");
    let t = std::time::Instant::now();
    mirage_client::checkout::checkout(&store, &image, &copy, Default::default())?;
    let checkout_s = t.elapsed().as_secs_f64();
    let fsck = demo::fsck_disk(&copy, &layout)?;
    let (again, _) = mirage_client::indexer::checkin(&store, &copy, default_threads())?;
    let same = again == image;
    let report = store.verify(|_| {})?;
    let after = store.stats()?;
    let ok = diffs.is_empty() && report.damaged.is_empty() && same;
    if cli.json {
        print_json(&serde_json::json!({
            "store": dir, "root": root, "generated": gen, "ingest": stats, "ingest_seconds": ingest_s,
            "restore": restored, "restore_seconds": restore_s, "differences": diffs,
            "verify": report, "stats": after, "ok": ok,
            "image": image, "checkin": checkin_stats, "checkin_seconds": checkin_s, "listing": listing,
            "checkout_seconds": checkout_s, "fsck": fsck, "checkout_same_serial": same,
        }))?;
    } else {
        println!("store        {} ({})", dir.display(), store.algorithm());
        println!(
            "generated    {} files, {} in {}",
            gen.files,
            mb(gen.bytes),
            src.display()
        );
        println!(
            "stored       tree {} in {ingest_s:.2} s: {} items sent, {} new ({})",
            root.to_text(),
            stats.items_sent,
            stats.items_new,
            mb(stats.new_bytes)
        );
        let grew = after.stored_bytes.saturating_sub(before.stored_bytes);
        println!(
            "store grew   by {}: dedup, holes and compression keep {:.1}% of the file bytes (store now {} items, {})",
            mb(grew),
            100.0 * grew as f64 / gen.bytes.max(1) as f64,
            after.items,
            mb(after.stored_bytes),
        );
        println!(
            "restored     {} files, {} dirs, {} symlinks in {restore_s:.2} s into {}",
            restored.files,
            restored.dirs,
            restored.symlinks,
            out.display()
        );
        if diffs.is_empty() {
            println!("compared     identical: content, types, permission bits, sizes, mtimes (ns), symlink targets, hard links");
        } else {
            println!("compared     {} DIFFERENCES:", diffs.len());
            for d in diffs.iter().take(20) {
                println!("  {d}");
            }
        }
        println!(
            "disk image   {} ({} bytes: GPT, BIOS boot, FAT ESP, ext4 root) built with sfdisk, mkfs.fat, mke2fs -d",
            img.display(),
            checkin_stats.disk_bytes
        );
        println!(
            "checkin      {} in {checkin_s:.2} s: {} filesystems, {} objects, {} new items",
            image.to_text(),
            checkin_stats.filesystems,
            checkin_stats.objects,
            checkin_stats.items_new
        );
        println!(
            "ls /         {} entries in the root filesystem:",
            listing.len()
        );
        for l in &listing {
            println!("               {l}");
        }
        println!(
            "checkout     {} in {checkout_s:.2} s; {}",
            copy.display(),
            fsck.join(", ")
        );
        println!(
            "verified     checking the copy in gives {} serial number",
            if same { "the same" } else { "A DIFFERENT" }
        );
        println!(
            "verified     {} records re-hashed, {} damaged",
            report.records,
            report.damaged.len()
        );
    }
    if !ok {
        return Ok(ExitCode::FAILURE);
    }
    if let Err(StoreError::Closed) = store.checkpoint() {
        bail!("store closed unexpectedly");
    }
    Ok(ExitCode::SUCCESS)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir> {
    let base = std::env::temp_dir().join(format!("mirage-demo-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(TempDir(base))
}
