//! Recreating filesystems at checkout.

pub mod ext4;
pub mod vfat;
