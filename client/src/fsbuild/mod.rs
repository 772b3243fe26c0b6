//! Recreating filesystems at checkout.

pub mod ext4;
pub mod layout;
mod output;
pub mod vfat;

use std::path::Path;

use anyhow::{Context, Result};

/// A staging directory for a tree of at most `bound` bytes: in `/dev/shm` when it has room to
/// spare (creating thousands of files there is two orders of magnitude cheaper than on a disk
/// filesystem), else next to the output image.
pub(crate) fn staging_dir(image: &Path, bound: u64) -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if let Ok(st) = rustix::fs::statvfs(shm) {
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free / 4 > bound {
            if let Ok(d) = tempfile::Builder::new()
                .prefix("mirage-staging-")
                .tempdir_in(shm)
            {
                return Ok(d);
            }
        }
    }
    let parent = image
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::Builder::new()
        .prefix(".mirage-staging-")
        .tempdir_in(parent)
        .context("creating a staging directory")
}
