//! Buffers of the read path, kept for reuse. A batch read brings each span of a volume into a
//! buffer of up to a few MiB and hands out its items as slices of it (`bytes::Bytes`, no
//! copy); a compressed item is decompressed into one. Freshly allocated, such a buffer is
//! first touched by the kernel's copy into it, a page fault per page: 73,000 faults and about
//! a sixth of the CPU of a checkout of base.img with the store in the page cache
//! (docs/PERFORMANCE.md, checkout, twenty-ninth session). A buffer whose last slice is dropped
//! goes back to the pool, up to [`KEEP_BYTES`], and the next read of its size class takes it.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

/// Buffers up to [`FINE_MAX`] bytes are pooled in classes this many bytes apart (a chunk of
/// 64 KiB to 1 MiB, decompressed, fits one within 64 KiB).
const FINE: usize = 64 << 10;
/// The largest of the fine classes (a chunk of 1 MiB with its item header lands in it).
const FINE_MAX: usize = 2 << 20;
/// Larger buffers are pooled in classes this many bytes apart, up to [`COARSE_MAX`].
const COARSE: usize = 1 << 20;
/// The largest class: a span of 8 MiB read past the cache needs 8 MiB and two alignment
/// blocks. Larger or smaller requests come from the allocator and go back to it.
const COARSE_MAX: usize = 9 << 20;
/// Classes in all.
const CLASSES: usize = FINE_MAX / FINE + (COARSE_MAX - FINE_MAX) / COARSE;
/// Requests below this many bytes are left to the allocator, which serves them from its own
/// free lists without faults.
const POOL_MIN: usize = 64 << 10;
/// Most bytes of capacity kept idle.
pub(crate) const KEEP_BYTES: usize = 64 << 20;

/// The pool. One per store.
#[derive(Debug, Default)]
pub(crate) struct ReadBufs {
    free: Mutex<Free>,
}

#[derive(Debug)]
struct Free {
    /// Idle buffers by class (see [`class_of`]).
    by_class: Vec<Vec<Vec<u8>>>,
    /// Their capacity in all.
    bytes: usize,
}

impl Default for Free {
    fn default() -> Self {
        Free {
            by_class: vec![Vec::new(); CLASSES],
            bytes: 0,
        }
    }
}

/// The class of a request of `len` bytes, if it is pooled: its index and its buffers'
/// capacity (the least multiple of the class step that holds `len`).
fn class_of(len: usize) -> Option<(usize, usize)> {
    if !(POOL_MIN..=COARSE_MAX).contains(&len) {
        return None;
    }
    Some(if len <= FINE_MAX {
        let k = len.div_ceil(FINE);
        (k - 1, k * FINE)
    } else {
        let k = len.div_ceil(COARSE);
        (FINE_MAX / FINE + k - FINE_MAX / COARSE - 1, k * COARSE)
    })
}

impl ReadBufs {
    /// An empty buffer with room for at least `len` bytes and at most about twice that: an
    /// idle one, else a new one of its class's full size (so that it can serve any request of
    /// the class later).
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let Some((c, cap)) = class_of(len) else {
            return Vec::with_capacity(len);
        };
        // An idle buffer of its class, else of a larger class up to twice the request: spans
        // come in every length, and a buffer taken again faults in no fresh pages.
        let last = class_of(len * 2).map_or(CLASSES - 1, |(last, _)| last);
        let mut free = self.free.lock();
        match (c..=last).find_map(|k| free.by_class[k].pop()) {
            Some(v) => {
                free.bytes -= v.capacity();
                v
            }
            None => Vec::with_capacity(cap),
        }
    }

    /// `buf` as shared bytes; once the last slice of them is dropped, the buffer comes back
    /// here (if its class is pooled and the pool has room).
    pub(crate) fn share(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            home: self.clone(),
        })
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        // Only a buffer of exactly its class's size: one the allocator made for a request
        // outside the pool, or one that grew, is freed.
        let Some((c, _)) = class_of(cap).filter(|(_, exact)| *exact == cap) else {
            return;
        };
        let mut free = self.free.lock();
        if free.bytes + cap <= KEEP_BYTES {
            buf.clear();
            free.bytes += cap;
            free.by_class[c].push(buf);
        }
    }

    /// Bytes of capacity kept idle.
    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.free.lock().bytes
    }
}

/// The owner of a shared buffer.
struct Pooled {
    buf: Vec<u8>,
    home: Arc<ReadBufs>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_slice_is_dropped_and_is_taken_again() {
        let pool = Arc::new(ReadBufs::default());
        let mut b = pool.take(3 << 20);
        assert!(b.is_empty());
        assert_eq!(b.capacity(), 3 << 20);
        b.extend_from_slice(&[7u8; 1000]);
        let addr = b.as_ptr();
        let bytes = pool.share(b);
        let a = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a slice still holds it");
        assert_eq!(&a[..], &[7u8; 10]);
        drop(a);
        assert_eq!(pool.idle_bytes(), 3 << 20);
        // Any request of the same class takes it, empty.
        let again = pool.take((2 << 20) + 1);
        assert_eq!(again.as_ptr(), addr);
        assert!(again.is_empty());
        assert_eq!(pool.idle_bytes(), 0);
        // A request of up to twice less takes it too; one for more than twice less does not.
        drop(pool.share(again));
        let half = pool.take(3 << 19);
        assert_eq!(half.as_ptr(), addr);
        drop(pool.share(half));
        let other = pool.take(1 << 20);
        assert_ne!(other.as_ptr(), addr);
        let larger = pool.take(5 << 20);
        assert_ne!(larger.as_ptr(), addr);
    }

    #[test]
    fn small_large_and_grown_buffers_are_not_kept_and_the_pool_is_bounded() {
        let pool = Arc::new(ReadBufs::default());
        let small = pool.take(1000);
        let large = pool.take(COARSE_MAX + 1);
        assert!(large.capacity() > COARSE_MAX);
        let mut grown = pool.take(1 << 20);
        grown.resize((3 << 20) + 5, 0);
        for b in [small, large, grown] {
            drop(pool.share(b));
        }
        assert_eq!(pool.idle_bytes(), 0);
        let many: Vec<Vec<u8>> = (0..2 * KEEP_BYTES / (8 << 20))
            .map(|_| pool.take(8 << 20))
            .collect();
        for b in many {
            drop(pool.share(b));
        }
        assert!(pool.idle_bytes() <= KEEP_BYTES);
        assert!(pool.idle_bytes() > KEEP_BYTES - (8 << 20));
    }

    #[test]
    fn classes_cover_the_pooled_range_exactly() {
        assert_eq!(class_of(POOL_MIN - 1), None);
        assert_eq!(class_of(POOL_MIN), Some((0, FINE)));
        assert_eq!(class_of(FINE + 1), Some((1, 2 * FINE)));
        // A chunk of 1 MiB and its item header: 64 KiB of room, not a second MiB.
        assert_eq!(class_of((1 << 20) + 2), Some((16, (1 << 20) + FINE)));
        assert_eq!(class_of(FINE_MAX), Some((FINE_MAX / FINE - 1, FINE_MAX)));
        assert_eq!(class_of(FINE_MAX + 1), Some((FINE_MAX / FINE, 3 << 20)));
        assert_eq!(class_of(COARSE_MAX), Some((CLASSES - 1, COARSE_MAX)));
        assert_eq!(class_of(COARSE_MAX + 1), None);
        // Every class index once, each capacity its own class.
        let mut seen = std::collections::BTreeMap::new();
        for len in (POOL_MIN..=COARSE_MAX).step_by(4096) {
            let (c, cap) = class_of(len).unwrap();
            assert!(cap >= len && cap - len < COARSE, "{len}");
            assert_eq!(class_of(cap), Some((c, cap)));
            assert_eq!(*seen.entry(c).or_insert(cap), cap);
        }
        assert_eq!(seen.len(), CLASSES);
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            (0..CLASSES).collect::<Vec<_>>()
        );
    }
}
