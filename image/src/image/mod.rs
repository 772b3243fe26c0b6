//! Reading disk images: a [`BlockSource`] gives the logical bytes of a virtual disk whatever its
//! container (raw file, qcow2), plus the ranges that may hold data, so that holes and
//! unallocated clusters are never read. Every parser here takes untrusted bytes: errors, never
//! panics, and memory bounded by the image's own geometry.

pub mod patched;
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
    /// What the container holds that this view of it does not show (a qcow2 image's internal
    /// snapshots), for a warning.
    fn left_out(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Opens an image, detecting its container from its first bytes. A qcow2 image with a
/// backing file is refused: see [`open_with`].
pub fn open(path: &Path) -> Result<Box<dyn BlockSource>, ImageError> {
    open_with(path, false)
}

/// [`open`], and with `follow_backing` a qcow2 image with a backing file is read with its
/// backing chain (flattened by `qemu-img` into a temporary raw file). Only for images you
/// trust: the image names the files it is read with, which could be any file the process may
/// read.
pub fn open_with(path: &Path, follow_backing: bool) -> Result<Box<dyn BlockSource>, ImageError> {
    let io = |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    };
    // Before the open: opening a FIFO waits for a writer.
    image_kind(std::fs::metadata(path).map_err(io)?.file_type()).map_err(io)?;
    let f = std::fs::File::open(path).map_err(io)?;
    // The first sector, which every signature below is looked for in.
    let mut first = [0u8; 512];
    let n = std::os::unix::fs::FileExt::read_at(&f, &mut first, 0).map_err(io)?;
    let head = &first[..n];
    if let Some(fmt) = foreign_format(&f, head).map_err(io)? {
        return convert(path, fmt);
    }
    if let Some((what, how)) = wrapped(head) {
        return Err(ImageError::Unsupported(format!(
            "{} is {what}, not a disk image: {how}, and check in the disk image inside",
            path.display()
        )));
    }
    if head.starts_with(&qcow2::MAGIC) {
        // Only when asked: an image names the files it is read with.
        if follow_backing && qcow2::names_other_files(&f).map_err(io)? {
            return convert(path, "qcow2");
        }
        Ok(Box::new(qcow2::Qcow2::open(f, path)?))
    } else {
        Ok(Box::new(raw::RawFile::open(f, path)?))
    }
}

/// An image is a regular file or a block device: anything else (a pipe, a character device,
/// a directory) cannot be read at offsets.
fn image_kind(kind: std::fs::FileType) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_file() || kind.is_block_device() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file or a block device",
        ))
    }
}

/// Bytes in an image file: its length, or a block device's size (whose metadata says 0).
pub(crate) fn size_of(file: &std::fs::File) -> std::io::Result<u64> {
    let meta = file.metadata()?;
    image_kind(meta.file_type())?;
    if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
        return Ok(rustix::fs::seek(file, rustix::fs::SeekFrom::End(0))?);
    }
    Ok(meta.len())
}

/// Containers read through `qemu-img`: VMDK, VDI, VHDX, VHD, QED and qcow version 1, from
/// the file's first bytes `head` (and a VHD's footer).
fn foreign_format(f: &std::fs::File, head: &[u8]) -> std::io::Result<Option<&'static str>> {
    use std::os::unix::fs::FileExt;
    let len = size_of(f)?;
    let starts = |m: &[u8]| head.len() >= m.len() && &head[..m.len()] == m;
    if starts(b"KDMV") || starts(b"# Disk DescriptorFile") {
        return Ok(Some("vmdk"));
    }
    if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        return Ok(Some("vdi"));
    }
    if starts(b"vhdxfile") {
        return Ok(Some("vhdx"));
    }
    if starts(b"QED\0") {
        return Ok(Some("qed"));
    }
    if starts(&qcow2::MAGIC) && head.len() >= 8 && head[4..8] == [0, 0, 0, 1] {
        return Ok(Some("qcow"));
    }
    if starts(b"conectix") {
        return Ok(Some("vpc"));
    }
    if len >= 512 {
        let mut tail = [0u8; 8];
        f.read_exact_at(&mut tail, len - 512)?;
        if &tail == b"conectix" {
            return Ok(Some("vpc"));
        }
    }
    Ok(None)
}

/// A file that wraps a disk image rather than being one: compressed or archived, as images
/// are downloaded (`debian.raw.xz`, an OVA). Its bytes would check in as one opaque raw
/// disk, which is never what was meant. No disk starts with these signatures (its first
/// sector is boot code or zeros).
fn wrapped(head: &[u8]) -> Option<(&'static str, &'static str)> {
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        Some(("xz-compressed", "decompress it (`xz -d`)"))
    } else if starts(&[0x1F, 0x8B]) {
        Some(("gzip-compressed", "decompress it (`gzip -d`)"))
    } else if starts(&[0x28, 0xB5, 0x2F, 0xFD]) {
        Some(("zstd-compressed", "decompress it (`zstd -d`)"))
    } else if head.len() >= 4 && starts(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        Some(("bzip2-compressed", "decompress it (`bzip2 -d`)"))
    } else if starts(b"7z\xBC\xAF\x27\x1C") {
        Some(("a 7-Zip archive", "extract it (`7z x`)"))
    } else if starts(b"PK\x03\x04") {
        Some(("a zip archive", "extract it (`unzip`)"))
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(("a tar archive (an OVA?)", "extract it (`tar xf`)"))
    } else {
        None
    }
}

/// Converts a foreign container to a temporary raw file (unlinked at once: it lives as long as
/// the returned source).
fn convert(path: &Path, fmt: &'static str) -> Result<Box<dyn BlockSource>, ImageError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp_dir = std::env::temp_dir();
    let tmp = std::path::absolute(&tmp_dir)
        .unwrap_or(tmp_dir)
        .join(format!(
            "mirage-convert-{}-{n}.{fmt}.raw",
            std::process::id()
        ));
    // Run beside the image: qemu-img takes a relative external data file name from its
    // working directory (backing file names it takes from the image's directory anyway).
    let abs = std::path::absolute(path).map_err(|source| ImageError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut cmd = std::process::Command::new("qemu-img");
    cmd.args(["convert", "-f", fmt, "-O", "raw"])
        .arg(&abs)
        .arg(&tmp);
    if let Some(dir) = abs.parent() {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|source| ImageError::Io {
        path: "qemu-img".into(),
        source,
    })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(malformed(format!(
            "{}: qemu-img could not read it as {fmt}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let f = std::fs::File::open(&tmp).map_err(|source| ImageError::Io {
        path: tmp.display().to_string(),
        source,
    });
    let _ = std::fs::remove_file(&tmp);
    Ok(Box::new(raw::RawFile::open(f?, path)?))
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
