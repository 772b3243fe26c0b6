//! `mirage demo`: generates a varied directory tree, stores it, restores it through location
//! tables, compares the result with the original, and verifies the store.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mirage_format::{Algorithm, Digest};

/// Deterministic pseudo-random bytes (xorshift).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What [`generate`] made.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Generated {
    /// Regular files.
    pub files: u64,
    /// Bytes in regular files.
    pub bytes: u64,
}

fn write(path: &Path, data: &[u8], g: &mut Generated) -> std::io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let mut f = File::create(path)?;
    f.write_all(data)?;
    g.files += 1;
    g.bytes += data.len() as u64;
    Ok(())
}

fn set_mtime(path: &Path, secs: i64, nanos: u32) -> std::io::Result<()> {
    let t = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            + Duration::from_nanos(u64::from(nanos))
    };
    File::options().write(true).open(path)?.set_modified(t)
}

/// Writes a tree that looks like a small system image: shared and unique small files, large
/// files with holes, zero runs and a small edit between two versions, symlinks, a hard link,
/// setuid bits, and timestamps before 1970 and after 2038. `scale` multiplies the sizes.
pub fn generate(root: &Path, seed: u64, scale: usize) -> std::io::Result<Generated> {
    let mut g = Generated::default();
    let scale = scale.max(1);
    let licence = b"Permission is hereby granted, free of charge, to any person obtaining a copy\n"
        .repeat(40);
    for pkg in 0..(40 * scale) {
        let doc = root.join(format!("usr/share/doc/pkg{pkg:03}"));
        write(&doc.join("copyright"), &licence, &mut g)?;
        let text = format!("package {pkg}\n").repeat(20 + pkg % 50);
        write(&doc.join("README"), text.as_bytes(), &mut g)?;
        write(
            &root.join(format!("usr/lib/pkg{pkg:03}.so")),
            &pseudo_random(seed ^ pkg as u64, 4096 * (1 + pkg % 60)),
            &mut g,
        )?;
    }
    for i in 0..(30 * scale) {
        let cfg = format!("# config {i}\nkey{i} = value{}\n", i * 7);
        write(
            &root.join(format!("etc/app{}/conf{i}.conf", i % 5)),
            cfg.as_bytes(),
            &mut g,
        )?;
    }
    // Two versions of a big file: random data, a 4 MiB zero run, a hole at the end; v2 differs
    // by 4 KiB in the middle, so it shares almost every chunk with v1.
    let mut big = pseudo_random(seed, 12 << 20);
    big[(4 << 20)..(8 << 20)].fill(0);
    let v1 = root.join("var/lib/images/disk-v1.img");
    write(&v1, &big, &mut g)?;
    File::options().write(true).open(&v1)?.set_len(16 << 20)?;
    g.bytes += 4 << 20;
    big[(10 << 20)..(10 << 20) + 4096].copy_from_slice(&pseudo_random(seed + 1, 4096));
    let v2 = root.join("var/lib/images/disk-v2.img");
    write(&v2, &big, &mut g)?;
    File::options().write(true).open(&v2)?.set_len(16 << 20)?;
    g.bytes += 4 << 20;
    // Special cases.
    let su = root.join("usr/bin/su");
    write(&su, &pseudo_random(seed + 2, 70_000), &mut g)?;
    std::fs::set_permissions(&su, std::fs::Permissions::from_mode(0o4755))?;
    std::fs::hard_link(&su, root.join("usr/bin/su-hardlink"))?;
    g.files += 1;
    std::os::unix::fs::symlink("su", root.join("usr/bin/switch-user"))?;
    std::os::unix::fs::symlink("../../nonexistent/target", root.join("etc/dangling"))?;
    write(&root.join("etc/empty"), b"", &mut g)?;
    set_mtime(&root.join("etc/empty"), -86_400 * 365 * 3, 5)?;
    write(&root.join("etc/future"), b"from the future\n", &mut g)?;
    set_mtime(&root.join("etc/future"), 4_102_444_800 + 17, 999_999_999)?;
    std::fs::create_dir_all(root.join("var/empty-dir"))?;
    let weird = root.join(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
            b"etc/name-\xff\xfe-not-utf8",
        ),
    );
    write(&weird, b"bytes, not text\n", &mut g)?;
    Ok(g)
}

/// A comparable description of one path.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    kind: &'static str,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    content: Option<Digest>,
    target: Option<PathBuf>,
    link_peers: usize,
}

fn describe(root: &Path) -> std::io::Result<BTreeMap<PathBuf, Shape>> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let m = std::fs::symlink_metadata(&p)?;
            let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            let ft = m.file_type();
            let (kind, content, target) = if ft.is_dir() {
                stack.push(p.clone());
                ("dir", None, None)
            } else if ft.is_symlink() {
                ("symlink", None, Some(std::fs::read_link(&p)?))
            } else {
                let data = std::fs::read(&p)?;
                let d = Digest::of(Algorithm::Sha256, &data).map_err(std::io::Error::other)?;
                ("file", Some(d), None)
            };
            if ft.is_file() {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            out.insert(
                rel,
                Shape {
                    kind,
                    mode: m.mode() & 0o7777,
                    size: if ft.is_dir() { 0 } else { m.size() },
                    mtime: if ft.is_symlink() {
                        (0, 0)
                    } else {
                        (m.mtime(), m.mtime_nsec())
                    },
                    content,
                    target,
                    link_peers: 0,
                },
            );
        }
    }
    for paths in inodes.values() {
        for p in paths {
            if let Some(s) = out.get_mut(p) {
                s.link_peers = paths.len();
            }
        }
    }
    Ok(out)
}

/// Compares two trees: type, permission bits, size, mtime to the nanosecond, content,
/// symlink targets and hard-link structure. Returns one line per difference.
pub fn compare(a: &Path, b: &Path) -> std::io::Result<Vec<String>> {
    let (da, db) = (describe(a)?, describe(b)?);
    let mut diffs = Vec::new();
    for (p, sa) in &da {
        match db.get(p) {
            None => diffs.push(format!("{}: missing", p.display())),
            Some(sb) if sb != sa => diffs.push(format!("{}: {sa:?} != {sb:?}", p.display())),
            Some(_) => {}
        }
    }
    for p in db.keys().filter(|p| !da.contains_key(*p)) {
        diffs.push(format!("{}: unexpected", p.display()));
    }
    Ok(diffs)
}

/// Writes a partition table with `sfdisk` from its script (no kernel involved).
pub fn sfdisk(img: &Path, script: &str) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("sfdisk stdin"))?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!("sfdisk: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Where [`build_disk_image`] put things.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DemoDisk {
    /// Byte offset of the FAT ESP.
    pub esp_offset: u64,
    /// Size of the ESP in bytes.
    pub esp_size: u64,
    /// Byte offset of the ext4 root filesystem.
    pub root_offset: u64,
}

fn tool(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Builds a small GPT disk image the way a cloud image is laid out — BIOS boot partition,
/// FAT ESP with a boot loader, ext4 root holding `tree` — with sfdisk, mkfs.fat, mtools and
/// mke2fs, no root privileges and no mounts.
pub fn build_disk_image(tree: &Path, img: &Path, tree_bytes: u64) -> anyhow::Result<DemoDisk> {
    let root_mib = (tree_bytes * 3 / (1 << 20)).max(128);
    let disk = (root_mib + 40) << 20;
    File::create(img)?.set_len(disk)?;
    let root_sectors = root_mib * 2048;
    let script = format!(
        "label: gpt\nstart=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=\"bios\"\n\
         start=4096, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"\n\
         start=69632, size={root_sectors}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root\"\n"
    );
    sfdisk(img, &script)?;
    // A BIOS boot partition holds boot-loader code: raw bytes Mirage keeps as they are.
    std::os::unix::fs::FileExt::write_all_at(
        &File::options().write(true).open(img)?,
        &pseudo_random(99, 400_000),
        2048 * 512,
    )?;
    tool(
        std::process::Command::new("mkfs.fat")
            .args([
                "-F", "16", "-i", "5eed1234", "-n", "EFI", "--offset", "4096",
            ])
            .arg(img)
            .arg("32768"),
    )?;
    let loader = img.with_extension("bootx64.efi");
    std::fs::write(&loader, pseudo_random(98, 180_000))?;
    let spec = format!("{}@@{}", img.display(), 4096 * 512);
    tool(
        std::process::Command::new("mmd")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &spec, "::/EFI", "::/EFI/BOOT"]),
    )?;
    tool(
        std::process::Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &spec])
            .arg(&loader)
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
    )?;
    std::fs::remove_file(&loader)?;
    tool(
        std::process::Command::new("mke2fs")
            .args([
                "-q",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-L",
                "root",
                "-E",
                &format!("offset={}", 69632 * 512),
                "-d",
            ])
            .arg(tree)
            .arg(img)
            .arg((root_sectors / 8).to_string()),
    )?;
    Ok(DemoDisk {
        esp_offset: 4096 * 512,
        esp_size: 65536 * 512,
        root_offset: 69632 * 512,
    })
}

/// Runs `e2fsck -fn` on the ext4 at `root_offset` and `fsck.fat -n` on a copy of the ESP;
/// returns one line per check.
pub fn fsck_disk(img: &Path, d: &DemoDisk) -> anyhow::Result<Vec<String>> {
    tool(std::process::Command::new("e2fsck").arg("-fn").arg(format!(
        "{}?offset={}",
        img.display(),
        d.root_offset
    )))?;
    let esp = img.with_extension("esp");
    let mut buf = vec![0u8; d.esp_size as usize];
    std::os::unix::fs::FileExt::read_exact_at(&File::open(img)?, &mut buf, d.esp_offset)?;
    std::fs::write(&esp, &buf)?;
    let r = tool(std::process::Command::new("fsck.fat").arg("-n").arg(&esp));
    std::fs::remove_file(&esp)?;
    r?;
    Ok(vec![
        "e2fsck -fn: clean".into(),
        "fsck.fat -n: clean".into(),
    ])
}
