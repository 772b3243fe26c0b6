#![no_main]
//! Partition tables (MBR with EBR chains, GPT with CRCs and backup header) on arbitrary bytes.
use libfuzzer_sys::fuzz_target;

#[path = "mem.rs"]
mod mem;

fuzz_target!(|data: &[u8]| {
    let src = mem::Mem(data.to_vec());
    let _ = mirage_image::image::table::parse(&src);
});
