#![no_main]
//! The ext2/3/4 reader: superblock, group descriptors, inodes, extent trees, indirect maps,
//! directories and xattrs, walked on arbitrary bytes; a journal that needs recovery is
//! replayed first, as the indexer does.
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

#[path = "mem.rs"]
mod mem;

fuzz_target!(|data: &[u8]| {
    let src: Arc<dyn mirage_image::image::BlockSource> = Arc::new(mem::Mem(data.to_vec()));
    let len = src.len();
    let src = match mirage_image::fs::ext4::journal::recovered(&src, 0, len) {
        Ok(Some(view)) => view,
        Ok(None) => src,
        Err(_) => return,
    };
    if let Ok(fs) = mirage_image::fs::ext4::Ext4::open(src, 0, len) {
        mem::walk(&fs);
    }
});
