// An image held in memory, for fuzzing the parsers on raw bytes.
use mirage_image::image::{BlockSource, ImageError};

pub struct Mem(pub Vec<u8>);

impl BlockSource for Mem {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let start = usize::try_from(offset).map_err(|_| ImageError::Malformed("offset".into()))?;
        let end = start.checked_add(buf.len()).filter(|e| *e <= self.0.len()).ok_or_else(|| ImageError::Malformed("past the end".into()))?;
        buf.copy_from_slice(&self.0[start..end]);
        Ok(())
    }
    fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>, ImageError> {
        Ok(vec![(start, end.min(self.len()))])
    }
    fn format(&self) -> &'static str {
        "memory"
    }
}

/// Walks a filesystem reader, bounded in the number of nodes it visits.
#[allow(dead_code)]
pub fn walk(fs: &dyn mirage_image::fs::FsReader) {
    let mut stack = vec![fs.root()];
    let mut budget = 2000;
    while let Some(id) = stack.pop() {
        let Ok(entries) = fs.read_dir(id) else { continue };
        for (_, child) in entries {
            budget -= 1;
            if budget == 0 {
                return;
            }
            if let Ok(n) = fs.node(child) {
                if n.kind == mirage_format::EntryKind::Dir {
                    stack.push(child);
                } else {
                    let _ = fs.extents(child);
                    let _ = fs.inline_data(child);
                }
            }
        }
    }
}
