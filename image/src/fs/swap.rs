//! Linux swap: recognised by its v1 signature (`SWAPSPACE2` in the last ten bytes of the first
//! page), kept by identity only (UUID, label), never by content.

use crate::image::{BlockSource, ImageError};

/// The signature at the end of a swap area's first page.
pub const SIGNATURE: &[u8; 10] = b"SWAPSPACE2";

/// The page size of the swap area at `start` (`size` bytes), `None` if it is not one: the
/// signature is looked for at the end of a first page of 4, 8, 16 or 64 KiB.
pub fn page_size(src: &dyn BlockSource, start: u64, size: u64) -> Result<Option<u64>, ImageError> {
    for page in [4096u64, 8192, 16384, 65536] {
        if size < page * 2 {
            continue;
        }
        let mut sig = [0u8; 10];
        src.read_at(&mut sig, start + page - 10)?;
        if &sig == SIGNATURE {
            return Ok(Some(page));
        }
    }
    Ok(None)
}
