//! A bounded cache of inode-table pages. A walk reads every inode it reaches, and inodes a
//! directory names usually sit side by side in one group's table: one read of a page answers
//! the next ones instead of a system call per inode (58,000 of them for a Debian image, read
//! twice: by the walk and again for the file layouts).

use std::sync::Arc;

use parking_lot::Mutex;

/// Bytes of a page: 64 inodes of 256 bytes.
pub(crate) const PAGE: u64 = 16 << 10;
/// Pages kept (direct-mapped), so at most 32 MiB whatever the filesystem's size.
const SLOTS: usize = 2048;

/// The last page mapped to a slot: (group, page number in the group's table, bytes).
type Slot = Mutex<Option<(u64, u64, Arc<[u8]>)>>;

/// Inode-table pages, direct-mapped.
pub(crate) struct InodePages {
    slots: Vec<Slot>,
}

impl InodePages {
    pub(crate) fn new() -> Self {
        InodePages {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn slot(&self, group: u64, page: u64) -> &Slot {
        // Groups spread over the slots; pages of one group take neighbouring ones.
        let i = (group.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40).wrapping_add(page);
        &self.slots[(i % SLOTS as u64) as usize]
    }

    /// Page `page` of `group`'s table, read with `read` when it is not cached.
    pub(crate) fn get<E>(
        &self,
        group: u64,
        page: u64,
        read: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<[u8]>, E> {
        let slot = self.slot(group, page);
        if let Some((g, p, bytes)) = &*slot.lock() {
            if (*g, *p) == (group, page) {
                return Ok(bytes.clone());
            }
        }
        // Read without the lock held: another thread may read the same page meanwhile; both
        // read the same bytes.
        let bytes: Arc<[u8]> = read()?.into();
        *slot.lock() = Some((group, page, bytes.clone()));
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_read_once_and_evicted_by_their_slot_only() {
        let pages = InodePages::new();
        let reads = std::cell::Cell::new(0);
        let read = |fill: u8| {
            reads.set(reads.get() + 1);
            Ok::<_, ()>(vec![fill; 8])
        };
        assert_eq!(&*pages.get(3, 1, || read(1)).unwrap(), &[1u8; 8]);
        assert_eq!(&*pages.get(3, 1, || read(9)).unwrap(), &[1u8; 8]);
        assert_eq!(reads.get(), 1);
        // The page after it takes another slot.
        assert_eq!(&*pages.get(3, 2, || read(2)).unwrap(), &[2u8; 8]);
        assert_eq!(&*pages.get(3, 1, || read(9)).unwrap(), &[1u8; 8]);
        assert_eq!(reads.get(), 2);
        // A page that maps to the same slot replaces it: the old one is read again.
        assert_eq!(
            &*pages.get(3, 1 + SLOTS as u64, || read(5)).unwrap(),
            &[5u8; 8]
        );
        assert_eq!(&*pages.get(3, 1, || read(1)).unwrap(), &[1u8; 8]);
        assert_eq!(reads.get(), 4);
        // A failed read caches nothing.
        assert!(pages.get(7, 0, || Err::<Vec<u8>, ()>(())).is_err());
        assert_eq!(&*pages.get(7, 0, || read(7)).unwrap(), &[7u8; 8]);
    }
}
