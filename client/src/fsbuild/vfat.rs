//! Recreating a FAT12/16/32 filesystem in place, without root and without mounting:
//! `mkfs.fat` with the stored geometry and identity, `mcopy` of a staging tree (which gives
//! long names, short names and cluster chains), then the directory entries' attribute bytes
//! and times, the OEM name and the labels are written directly, at the entries Mirage's own
//! reader finds.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mirage_format::{EntryKind, Filesystem, Item, Param, Timestamp};
use mirage_node::Store;

use crate::browse::item;
use crate::fs::vfat::Vfat;
use crate::fs::FsReader;
use crate::image::BlockSource;

fn p(fs: &Filesystem, key: &str) -> Result<u64> {
    match fs.params.get(key) {
        Some(Param::U64(v)) => Ok(*v),
        _ => bail!("vfat parameter {key} is missing"),
    }
}

fn pb<'a>(fs: &'a Filesystem, key: &str) -> Option<&'a [u8]> {
    match fs.params.get(key) {
        Some(Param::Bytes(b)) => Some(b),
        _ => None,
    }
}

/// FAT date and time (and 10 ms units) of a timestamp, inverse of the reader's decoding.
fn fat_datetime(t: Timestamp) -> (u16, u16, u8) {
    if t.secs == 0 && t.nanos == 0 {
        return (0, 0, 0);
    }
    let days = t.secs.div_euclid(86_400);
    let sod = t.secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let y = (year - 1980).clamp(0, 127);
    let date = ((y as u16) << 9) | ((month as u16) << 5) | day as u16;
    let (h, m, s) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let time = ((h as u16) << 11) | ((m as u16) << 5) | (s / 2) as u16;
    let centis = ((s % 2) * 100) as u8 + (t.nanos / 10_000_000) as u8;
    (date, time, centis)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Recreates `fs` in `[offset, offset + len)` of the raw image file `image`.
pub fn recreate(store: &Store, fs: &Filesystem, image: &Path, offset: u64, len: u64) -> Result<()> {
    let bits = p(fs, "fat_bits")?;
    let sector = p(fs, "sector_size")?;
    let total = p(fs, "total_sectors")?;
    // mkfs.fat counts its --offset in the filesystem's own sectors.
    if sector == 0 || offset % sector != 0 || (total * sector) % 1024 != 0 || total * sector > len {
        bail!("a FAT filesystem of {total} sectors at byte {offset} cannot be recreated with mkfs.fat");
    }
    if bits == 32 {
        // mtools (4.0.x) reads such a volume but cannot add to it ("No directory slots").
        let meta = p(fs, "reserved_sectors")? + p(fs, "num_fats")? * p(fs, "sectors_per_fat")?;
        let clusters = total.saturating_sub(meta) / p(fs, "sectors_per_cluster")?.max(1);
        if clusters < 65_525 {
            bail!(
                "this FAT32 has {clusters} clusters, fewer than the 65,525 mcopy can write to: \
                 check it out without --rebuild (by its layout)"
            );
        }
    }
    let work = super::staging_dir(image, super::staged_bytes(store, &fs.root)?)?;
    let staging = work.path().join("root");
    crate::restore::restore_tree_with(store, &fs.root, &staging, true)
        .context("staging the tree")?;
    let volid = fs
        .uuid
        .iter()
        .rev()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let mut c = Command::new("mkfs.fat");
    c.args([
        "-F",
        &bits.to_string(),
        "-S",
        &sector.to_string(),
        "-s",
        &p(fs, "sectors_per_cluster")?.to_string(),
    ]);
    c.args([
        "-R",
        &p(fs, "reserved_sectors")?.to_string(),
        "-f",
        &p(fs, "num_fats")?.to_string(),
    ]);
    c.args([
        "-M",
        &p(fs, "media")?.to_string(),
        "-h",
        &p(fs, "hidden_sectors")?.to_string(),
    ]);
    c.args([
        "-g",
        &format!("{}/{}", p(fs, "heads")?, p(fs, "sectors_per_track")?),
        "-D",
        &p(fs, "drive_number")?.to_string(),
    ]);
    if bits == 32 {
        c.args(["-b", &p(fs, "backup_boot_sector")?.to_string()]);
    } else {
        c.args(["-r", &p(fs, "root_entries")?.to_string()]);
    }
    if !volid.is_empty() {
        c.args(["-i", &volid]);
    }
    if !fs.label.is_empty() {
        c.arg("-n")
            .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&fs.label));
    }
    c.args(["-a", "--offset", &(offset / sector).to_string()])
        .arg(image)
        .arg((total * sector / 1024).to_string());
    run(&mut c, "mkfs.fat")?;
    let top: Vec<_> = std::fs::read_dir(&staging)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    if !top.is_empty() {
        let spec = format!("{}@@{offset}", image.display());
        let mut m = Command::new("mcopy");
        m.env("MTOOLS_SKIP_CHECK", "1")
            .env("TZ", "UTC")
            .env("LC_ALL", "C.UTF-8");
        m.args(["-s", "-Q", "-i", &spec]).args(&top).arg("::/");
        run(&mut m, "mcopy")?;
    }
    // Attributes and times, entry by entry.
    let src: Arc<dyn BlockSource> = Arc::from(crate::image::open(image)?);
    let vf = Vfat::open(src, offset, len)?;
    warn_geometry(fs, &vf, offset);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)?;
    let mut stack = vec![(fs.root, vf.root())];
    while let Some((tree_d, dir)) = stack.pop() {
        let Item::Tree(tree) = item(store, &tree_d)? else {
            bail!("{} is not a tree", tree_d.to_text())
        };
        let made: HashMap<Vec<u8>, u64> = vf.read_dir(dir)?.into_iter().collect();
        for e in &tree.entries {
            let Some(&id) = made.get(&e.name) else {
                bail!(
                    "{:?} was not created by mcopy",
                    String::from_utf8_lossy(&e.name)
                );
            };
            let mut raw = [0u8; 32];
            file.read_exact_at(&mut raw, id)
                .context("reading a directory entry back")?;
            raw[11] = (raw[11] & 0x10) | (e.flags as u8 & !0x10 & 0x3f);
            let (cd, ct, cc) = e.crtime.map_or((0, 0, 0), fat_datetime);
            let (ad, _, _) = fat_datetime(e.atime);
            let (md, mt, _) = fat_datetime(e.mtime);
            raw[13] = cc;
            raw[14..16].copy_from_slice(&ct.to_le_bytes());
            raw[16..18].copy_from_slice(&cd.to_le_bytes());
            raw[18..20].copy_from_slice(&ad.to_le_bytes());
            raw[22..24].copy_from_slice(&mt.to_le_bytes());
            raw[24..26].copy_from_slice(&md.to_le_bytes());
            file.write_all_at(&raw, id)?;
            if e.kind == EntryKind::Dir {
                if let Some(c) = e.content {
                    stack.push((c, id));
                }
            }
        }
    }
    // OEM name and boot-sector label as stored (mkfs.fat writes its own).
    let boots: Vec<u64> = if bits == 32 {
        vec![0, p(fs, "backup_boot_sector")?]
    } else {
        vec![0]
    };
    for b in boots {
        let at = offset + b * sector;
        if let Some(oem) = pb(fs, "oem_name").filter(|o| o.len() == 8) {
            file.write_all_at(oem, at + 3)?;
        }
        if let Some(lbl) = pb(fs, "boot_label").filter(|l| l.len() == 11) {
            file.write_all_at(lbl, at + if bits == 32 { 71 } else { 43 })?;
        }
    }
    file.sync_all()?;
    Ok(())
}

/// Says where mkfs.fat laid the volume out otherwise than the original (it sizes the FAT
/// itself, and another formatter may have made it larger): the files are the same, the
/// layout is not.
fn warn_geometry(fs: &Filesystem, made: &Vfat, offset: u64) {
    const GEOMETRY: [&str; 5] = [
        "sectors_per_fat",
        "reserved_sectors",
        "root_entries",
        "sectors_per_cluster",
        "fat_bits",
    ];
    let made = &made.info().params;
    for key in GEOMETRY {
        if let (Some(Param::U64(was)), Some(Param::U64(now))) = (fs.params.get(key), made.get(key))
        {
            if was != now {
                tracing::warn!(
                    "the FAT filesystem rebuilt at byte {offset} has {key} {now} where the \
                     original has {was} (mkfs.fat lays the volume out itself): its files are \
                     the same; check out without --rebuild for the original layout"
                );
            }
        }
    }
}
