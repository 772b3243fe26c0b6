//! Reading long spans of a volume past the page cache. Most of a store is written with direct
//! I/O (`store::group`), so a checkout usually finds it on disk; reading it through the page
//! cache costs a copy into freshly allocated page-cache pages, which on the project VM caps a
//! buffered cold read at about 570 MB/s of one core's system time, while a direct read of the
//! same volume runs at 1.6 GB/s with almost no CPU (docs/PERFORMANCE.md, checkout, "seventh session").
//! Other hosts stream buffered reads faster than direct ones, so each store measures which way
//! is cheaper (`store::read_way`). A span the page cache already holds in full (just written
//! through it, or read by someone else) is always read from there.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;

use super::read_bufs::ReadBufs;
use super::record::{align_up, ALIGN};

/// Spans of at least this many bytes are read with direct I/O unless they are cached.
pub(crate) const DIRECT_READ_MIN: u64 = 256 << 10;

/// Reads up to `want` bytes at `offset` of `f` into the spare capacity of `buf` (which must
/// have room for them), appending them without zeroing the memory first; returns how many
/// (0 at the end of the file). A read the signal interrupted is retried.
// The spare capacity is read into as it is: zeroing it first cost a checkout 2-3 % of its
// CPU (and the first touch of every page a second time).
#[allow(unsafe_code)]
pub(crate) fn pread_append(
    f: &File,
    buf: &mut Vec<u8>,
    want: usize,
    offset: u64,
) -> std::io::Result<usize> {
    loop {
        let spare = &mut buf.spare_capacity_mut()[..want];
        match rustix::io::pread(f, spare, offset) {
            Ok((got, _)) => {
                let n = got.len();
                // SAFETY: `pread` initialised the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads `len` bytes at `offset` through `direct` (a handle opened with `O_DIRECT`): the
/// aligned span around them goes into an aligned buffer, of which the bytes asked for are
/// returned (without a copy). `None` when the read fails or comes up short in a way a
/// buffered read might not (the caller then reads through the page cache, which reports any
/// real error).
pub(crate) fn read_direct(
    direct: &File,
    offset: u64,
    len: u64,
    bufs: &Arc<ReadBufs>,
) -> Option<Bytes> {
    let first = offset - offset % ALIGN;
    let need = usize::try_from(offset + len - first).ok()?;
    let total = usize::try_from(align_up(offset + len) - first).ok()?;
    let mut mem = bufs.take(total + ALIGN as usize);
    let skip = mem.as_ptr().align_offset(ALIGN as usize);
    mem.resize(skip, 0);
    while mem.len() - skip < need {
        let got = mem.len() - skip;
        // A short read can only end at the end of the file; a read that continues from an
        // unaligned place would be refused, so it ends the loop.
        if got % ALIGN as usize != 0 {
            return None;
        }
        match pread_append(direct, &mut mem, total - got, first + got as u64) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    let start = skip + (offset - first) as usize;
    Some(bufs.share(mem).slice(start..start + len as usize))
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
        let bufs = Arc::new(ReadBufs::default());
        for (off, len) in [
            (0, 10),
            (5, 4096),
            (4095, 2),
            (100, data.len() as u64 - 100),
        ] {
            let Some(b) = read_direct(&direct, off, len, &bufs) else {
                return; // the filesystem refuses 4 KiB-aligned direct reads
            };
            assert_eq!(
                &*b,
                &data[off as usize..(off + len) as usize],
                "{off}+{len}"
            );
        }
        // Past the end of the file: no bytes made up.
        assert!(read_direct(&direct, data.len() as u64 - 10, 20, &bufs).is_none());
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
