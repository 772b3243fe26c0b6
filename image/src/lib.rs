//! Reading disk images in user space: containers ([`image`]: raw, qcow2, others through
//! qemu-img), partition tables, layout-independent raw regions, and filesystem readers
//! ([`fs`]: ext2/3/4, vfat). Everything here parses untrusted bytes: errors name the problem,
//! nothing panics, and memory stays bounded by the image's own geometry. This crate has no
//! storage engine, so its parsers can be fuzzed on their own (`image/fuzz`).

pub mod fs;
pub mod image;
mod le;
