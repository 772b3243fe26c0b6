//! Raw images: the file is the disk. Holes are found with `SEEK_DATA`/`SEEK_HOLE`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::SeekFrom;

use super::{BlockSource, ImageError};

/// A raw image file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    len: u64,
    path: String,
}

impl RawFile {
    /// Wraps an open file.
    pub fn open(file: File, path: &Path) -> Result<Self, ImageError> {
        let path = path.display().to_string();
        let len = super::size_of(&file).map_err(|source| ImageError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(RawFile { file, len, path })
    }

    fn io(&self, source: std::io::Error) -> ImageError {
        ImageError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl BlockSource for RawFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(super::malformed(format!(
                "read of {} bytes at {offset} is past the end of the {}-byte image",
                buf.len(),
                self.len
            )));
        }
        self.file.read_exact_at(buf, offset).map_err(|e| self.io(e))
    }

    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>, ImageError> {
        let end = end.min(self.len);
        let mut out = Vec::new();
        let mut pos = start;
        while pos < end {
            let data = match rustix::fs::seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) => d,
                // ENXIO: no data at or after pos.
                Err(rustix::io::Errno::NXIO) => break,
                // Filesystems without hole reporting: treat everything as data.
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOTSUP) => {
                    out.push((pos, end));
                    break;
                }
                Err(e) => return Err(self.io(e.into())),
            };
            if data >= end {
                break;
            }
            let hole = match rustix::fs::seek(&self.file, SeekFrom::Hole(data)) {
                Ok(h) => h.min(end),
                Err(_) => end,
            };
            out.push((data, hole));
            pos = hole;
        }
        Ok(out)
    }

    fn format(&self) -> &'static str {
        "raw"
    }
}
