//! Reading long spans of a volume past the page cache. Most of a store is written with direct
//! I/O (`store::group`), so a checkout usually finds it on disk; reading it through the page
//! cache costs a copy into freshly allocated page-cache pages, which on the project VM caps a
//! buffered cold read at about 570 MB/s of one core's system time, while a direct read of the
//! same volume runs at 1.6 GB/s with almost no CPU (docs/PERFORMANCE.md, checkout, "seventh session").
//! Other hosts stream buffered reads faster than direct ones, so each store measures which way
//! is cheaper (`store::read_way`). A span the page cache already holds in full (just written
//! through it, or read by someone else) is always read from there.

use std::fs::File;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::record::{align_up, ALIGN};

/// Spans of at least this many bytes are read with direct I/O unless they are cached.
pub(crate) const DIRECT_READ_MIN: u64 = 256 << 10;

/// Bytes read from a volume; for a direct read, a window of an aligned buffer.
#[derive(Debug)]
pub(crate) struct ReadBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl From<Vec<u8>> for ReadBuf {
    fn from(mem: Vec<u8>) -> Self {
        let len = mem.len();
        ReadBuf { mem, start: 0, len }
    }
}

impl Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

/// Reads `len` bytes at `offset` through `direct` (a handle opened with `O_DIRECT`): the
/// aligned span around them goes into an aligned buffer. `None` when the read fails or comes
/// up short in a way a buffered read might not (the caller then reads through the page cache,
/// which reports any real error).
pub(crate) fn read_direct(direct: &File, offset: u64, len: u64) -> Option<ReadBuf> {
    let first = offset - offset % ALIGN;
    let need = usize::try_from(offset + len - first).ok()?;
    let total = usize::try_from(align_up(offset + len) - first).ok()?;
    let mut mem: Vec<u8> = Vec::with_capacity(total + ALIGN as usize);
    let skip = mem.as_ptr().align_offset(ALIGN as usize);
    mem.resize(skip + total, 0);
    let mut got = 0;
    while got < need {
        // A short read can only end at the end of the file; a read that continues from an
        // unaligned place would be refused, so it ends the loop.
        if got % ALIGN as usize != 0 {
            return None;
        }
        match direct.read_at(&mut mem[skip + got..skip + total], first + got as u64) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got += n,
        }
    }
    Some(ReadBuf {
        mem,
        start: skip + (offset - first) as usize,
        len: len as usize,
    })
}

/// `cachestat(2)` (Linux 6.5): the same number on every architecture.
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Pages of `offset..offset + len` of `f` (page-aligned) that the page cache holds; `None`
/// when the kernel cannot tell (before 6.5).
// The one system call the libraries in use do not wrap.
#[allow(unsafe_code)]
fn cached_pages(f: &File, offset: u64, len: u64) -> Option<u64> {
    let range = CachestatRange { off: offset, len };
    let mut cs = Cachestat::default();
    // SAFETY: cachestat reads `range` and writes `cs`, both live `repr(C)` values laid out as
    // the kernel's `struct cachestat_range` and `struct cachestat`; the descriptor is open.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const CachestatRange,
            &mut cs as *mut Cachestat,
            0u32,
        )
    };
    (r == 0).then_some(cs.nr_cache)
}

/// Whether the page cache holds every page of `offset..offset + len` of `f`. False when the
/// kernel cannot tell, which sends long reads past the cache.
pub(crate) fn fully_cached(f: &File, offset: u64, len: u64) -> bool {
    let page = rustix::param::page_size() as u64;
    let first = offset - offset % page;
    let pages = (offset + len).div_ceil(page) - first / page;
    cached_pages(f, first, pages * page).is_some_and(|n| n >= pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn direct_reads_return_the_bytes_asked_for_at_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let data: Vec<u8> = (0..3 * ALIGN as usize + 777)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        File::create(&path).unwrap().write_all(&data).unwrap();
        let Ok(direct) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        else {
            return; // a filesystem without direct I/O (tmpfs): nothing to test
        };
        for (off, len) in [
            (0, 10),
            (5, 4096),
            (4095, 2),
            (100, data.len() as u64 - 100),
        ] {
            let Some(b) = read_direct(&direct, off, len) else {
                return; // the filesystem refuses 4 KiB-aligned direct reads
            };
            assert_eq!(
                &*b,
                &data[off as usize..(off + len) as usize],
                "{off}+{len}"
            );
            assert_eq!(b.as_ptr().align_offset(1), 0);
        }
        // Past the end of the file: no bytes made up.
        assert!(read_direct(&direct, data.len() as u64 - 10, 20).is_none());
    }

    #[test]
    fn a_file_just_written_through_the_page_cache_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![1u8; 64 << 10]).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&path).unwrap();
        // Kernels before 6.5 cannot tell, which only sends reads past the cache.
        if cached_pages(&f, 0, 4096).is_some() {
            assert!(fully_cached(&f, 100, 30_000));
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            // Clean pages of a disk filesystem go; tmpfs keeps them.
            let on_disk = rustix::fs::fstatfs(&f).unwrap().f_type != libc::TMPFS_MAGIC;
            assert_eq!(fully_cached(&f, 100, 30_000), !on_disk);
        }
    }
}
