//! Reading disk images: a [`BlockSource`] gives the logical bytes of a virtual disk whatever its
//! container (raw file, qcow2), plus the ranges that may hold data, so that holes and
//! unallocated clusters are never read. Every parser here takes untrusted bytes: errors, never
//! panics, and memory bounded by the image's own geometry.

pub mod qcow2;
pub mod raw;
pub mod regions;
pub mod table;

use std::path::Path;

/// Errors reading an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Image path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The container is malformed; the message names the problem.
    #[error("{0}")]
    Malformed(String),
    /// A valid feature this reader does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Shorthand for [`ImageError::Malformed`].
pub(crate) fn malformed(msg: impl Into<String>) -> ImageError {
    ImageError::Malformed(msg.into())
}

/// The logical bytes of a virtual disk.
pub trait BlockSource: Send + Sync {
    /// Virtual size in bytes.
    fn len(&self) -> u64;
    /// True for a zero-sized disk.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with the bytes at `offset` (holes read as zeros). Reading past the end is
    /// an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError>;
    /// Sorted, disjoint `[start, end)` ranges within `[start, end)` that may hold non-zero
    /// bytes; everything else is known to be zero.
    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>, ImageError>;
    /// Container name for messages (`raw`, `qcow2`).
    fn format(&self) -> &'static str;
}

/// Opens an image, detecting its container from its first bytes.
pub fn open(path: &Path) -> Result<Box<dyn BlockSource>, ImageError> {
    let f = std::fs::File::open(path).map_err(|source| ImageError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let n = std::os::unix::fs::FileExt::read_at(&f, &mut magic, 0).map_err(|source| {
        ImageError::Io {
            path: path.display().to_string(),
            source,
        }
    })?;
    if n == 4 && magic == qcow2::MAGIC {
        Ok(Box::new(qcow2::Qcow2::open(f, path)?))
    } else {
        Ok(Box::new(raw::RawFile::open(f, path)?))
    }
}

/// Merges overlapping or touching ranges (input sorted by start).
pub(crate) fn merge_ranges(v: &mut Vec<(u64, u64)>) {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for &(s, e) in v.iter() {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    *v = out;
}
