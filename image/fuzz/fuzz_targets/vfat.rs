#![no_main]
//! The FAT12/16/32 reader: boot sector, FAT chains, directories and long names, walked on
//! arbitrary bytes.
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

#[path = "mem.rs"]
mod mem;

fuzz_target!(|data: &[u8]| {
    let src: Arc<dyn mirage_image::image::BlockSource> = Arc::new(mem::Mem(data.to_vec()));
    let len = src.len();
    if let Ok(fs) = mirage_image::fs::vfat::Vfat::open(src, 0, len) {
        mem::walk(&fs);
    }
});
