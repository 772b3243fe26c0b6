//! Each node's data disk: a small ext4 filesystem in a file, loop-mounted as the node's store
//! directory, so that "the disk is full" is a real ENOSPC from the kernel. Also the corruption
//! nemesis: bytes flipped inside the store's volume files (never in RocksDB or Raft files: the
//! harness damages item records, which scrub must find and replace from a good replica).

use std::path::{Path, PathBuf};

use rand::Rng;

use super::{sh, HarnessError};

/// A loop-mounted filesystem; unmounted and removed when dropped.
#[derive(Debug)]
pub struct Disk {
    image: PathBuf,
    mount: PathBuf,
    filler: PathBuf,
}

impl Disk {
    /// Makes an ext4 filesystem of `mb` MiB in `image` and mounts it on `mount`.
    pub fn create(image: &Path, mount: &Path, mb: u64) -> Result<Disk, HarnessError> {
        let f = std::fs::File::create(image).map_err(|e| HarnessError::io(image, e))?;
        f.set_len(mb << 20)
            .map_err(|e| HarnessError::io(image, e))?;
        drop(f);
        std::fs::create_dir_all(mount).map_err(|e| HarnessError::io(mount, e))?;
        let img = image.to_string_lossy();
        // No blocks reserved for root: the node runs as root and must see the disk full.
        sh("mkfs.ext4", &["-q", "-F", "-m", "0", &img])?;
        // discard: blocks freed on it are freed in the backing file too (a filled and freed
        // disk does not keep host space).
        sh(
            "mount",
            &["-o", "loop,discard", &img, &mount.to_string_lossy()],
        )?;
        Ok(Disk {
            image: image.to_path_buf(),
            mount: mount.to_path_buf(),
            filler: mount.join("chaos-filler"),
        })
    }

    /// The mounted directory.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Takes every free block (a file holding them); answers the bytes taken.
    pub fn fill(&self) -> Result<u64, HarnessError> {
        let free = free_bytes(&self.mount)?;
        if free == 0 {
            return Ok(0);
        }
        // fallocate may refuse the last few blocks (the file's own extent blocks): back off a
        // MiB at a time until it fits, so that less than a few MiB stay free.
        let mut want = free;
        for _ in 0..256 {
            if want == 0 {
                break;
            }
            let r = std::process::Command::new("fallocate")
                .args(["-l", &want.to_string()])
                .arg(&self.filler)
                .output()
                .map_err(|e| HarnessError::io(Path::new("fallocate"), e))?;
            if r.status.success() {
                return Ok(want);
            }
            want = want.saturating_sub(1 << 20);
        }
        Ok(0)
    }

    /// Gives the blocks [`Disk::fill`] took back.
    pub fn free(&self) -> Result<(), HarnessError> {
        match std::fs::remove_file(&self.filler) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HarnessError::io(&self.filler, e)),
        }
    }

    /// Flips `n` bytes at random places of the store's volume files; answers what it did.
    pub fn corrupt(&self, rng: &mut impl Rng, n: usize) -> Result<Vec<String>, HarnessError> {
        let mut vols = Vec::new();
        volume_files(&self.mount, &mut vols);
        vols.sort();
        let mut done = Vec::new();
        for _ in 0..n {
            if vols.is_empty() {
                break;
            }
            let path = &vols[rng.gen_range(0..vols.len())];
            let len = std::fs::metadata(path)
                .map_err(|e| HarnessError::io(path, e))?
                .len();
            if len < 2 {
                continue;
            }
            let at = rng.gen_range(0..len);
            flip(path, at).map_err(|e| HarnessError::io(path, e))?;
            done.push(format!("{}@{at}", path.display()));
        }
        Ok(done)
    }
}

fn flip(path: &Path, at: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at)?;
    b[0] ^= 0x5a;
    f.write_all_at(&b, at)?;
    f.sync_all()
}

fn volume_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            // RocksDB and Raft directories hold no volumes.
            volume_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "vol") {
            out.push(p);
        }
    }
}

fn free_bytes(path: &Path) -> Result<u64, HarnessError> {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .map_err(|e| HarnessError::io(path, e))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| HarnessError::Setup(format!("df {}: no free space figure", path.display())))
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = sh("umount", &["-l", &self.mount.to_string_lossy()]);
        let _ = std::fs::remove_file(&self.image);
    }
}
